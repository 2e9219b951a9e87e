"""The gradient exchange's two buffers, side by side: padded to the batch's lookups (the same length
at every step, found in Horovod's response cache) or holding only each rank's distinct rows
(negotiated at every step), on real data sets, 2 Horovod ranks on this host.

    .venv/bin/python bench/bench_exchange.py --data DATA [DATA ...] [--models fm afm] [--steps 150]

Each rank trains the product's model (k = t = 256, the schema's batch split over the ranks, Adagrad,
dropout 0.5, the L2 penalty on the batch's rows as the trainer's path adds it) on random batches of
its own from the data set's training split, ``GradientExchange`` with ``pad_limit`` huge (padded) or
0 (distinct rows only); reported from rank 0: the median ms of a whole step (forward, backward,
exchange, Adagrad) and of its wait for the collectives, and the values its buffer sent a step (what
each rank sends; it receives ranks times that). The modes alternate over ``--passes`` passes so
that load on the shared machine falls on both; each mode's best pass is reported. What the trainer
picks by default (``PAD_LIMIT``) is given beside.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import result_line, run_ranks, save  # noqa: E402

MODES = {"padded": 1 << 62, "distinct": 0}


def probe(data: Path, model_name: str, pad_limit: int, steps: int) -> None:
    import horovod.torch as hvd
    import torch
    import torch.nn.functional as F

    from afm_dist.batch import read_split
    from afm_dist.dataset import TRAIN, load_metadata
    from afm_dist.models import ModelConfig, build_model
    from afm_dist.training.exchange import PAD_LIMIT, GradientExchange
    from afm_dist.training.optimizers import build_optimizer

    hvd.init()
    torch.set_num_threads(1)
    meta = load_metadata(data)
    rows = read_split(data / TRAIN)
    local = int(meta.schema.get("training", {}).get("batch_size", 128)) // hvd.size()
    torch.manual_seed(0)
    model = build_model(model_name, meta.num_features, meta.num_slots,
                        ModelConfig(embedding_dim=256, attention_factor=256, sparse_embeddings=True),
                        meta.slot_groups())
    optimizer = build_optimizer("adagrad", model, 0.05)
    exchange = GradientExchange(model, name=f"bench.{model_name}", pad_limit=pad_limit)
    default = GradientExchange(model)
    slots = [min(local * meta.num_slots, p.shape[0]) for p in exchange.sparse]
    dense = default._dense_values if default.gathers_dense(hvd.size()) else 0
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    g = torch.Generator().manual_seed(100 + hvd.rank())
    step_ms, wait_ms, sent = [], [], []
    for i in range(steps + 10):
        idx = torch.randint(0, len(rows), (local,), generator=g)
        ids, vals, mask, label = rows.ids[idx], rows.vals[idx], rows.mask[idx], rows.label[idx]
        start, waited, values = time.perf_counter(), exchange.wait_seconds, exchange.sent_values
        optimizer.zero_grad()
        emb, lin = model.feature_penalty(ids, mask)
        (F.mse_loss(model(ids, vals, mask), label) + 0.01 * (emb + lin)).backward()
        exchange(max_rows=ids.numel())
        optimizer.step()
        if i >= 10:  # the first steps warm up
            step_ms.append((time.perf_counter() - start) * 1e3)
            wait_ms.append((exchange.wait_seconds - waited) * 1e3)
            sent.append(exchange.sent_values - values)
    if hvd.rank() == 0:
        result_line({"step_ms": statistics.median(step_ms), "wait_ms": statistics.median(wait_ms),
                     "sent_values": statistics.mean(sent), "padded_values": sent[0] if pad_limit else None,
                     "default_pads": default.pads(slots, dense), "slots": slots, "pad_limit": PAD_LIMIT})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+")
    p.add_argument("--models", nargs="+", default=["fm"])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.probe:
        data, model_name, pad_limit, steps = a.probe
        probe(Path(data), model_name, int(pad_limit), int(steps))
        return 0
    runs = []
    for data in a.data:
        for model_name in a.models:
            best: dict[str, dict] = {}
            for _ in range(a.passes):
                for mode, limit in MODES.items():
                    r = run_ranks(2, [Path(__file__).resolve(), "--probe", data.resolve(), model_name, limit, a.steps])
                    if mode not in best or r["step_ms"] < best[mode]["step_ms"]:
                        best[mode] = r
            run = {"data": str(data), "model": model_name, "slots": best["padded"]["slots"],
                   "default": "padded" if best["padded"]["default_pads"] else "distinct",
                   **{f"{m}_{k}": round(best[m][k], 2) for m in MODES for k in ("step_ms", "wait_ms", "sent_values")}}
            run["sent_ratio"] = round(run["distinct_sent_values"] / run["padded_sent_values"], 3)
            run["step_ratio"] = round(run["distinct_step_ms"] / run["padded_step_ms"], 3)
            runs.append(run)
            print(json.dumps(run), flush=True)
    print("\n| data set | model | slots a table | padded: values sent a step, ms a step (wait) | distinct rows only | "
          "values sent, distinct / padded | step time, distinct / padded | the trainer's choice |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in runs:
        print(f"| {Path(r['data']).name} | {r['model'].upper()} | {r['slots'][0]:,} | "
              f"{r['padded_sent_values']:,.0f}, {r['padded_step_ms']:.1f} ({r['padded_wait_ms']:.1f}) | "
              f"{r['distinct_sent_values']:,.0f}, {r['distinct_step_ms']:.1f} ({r['distinct_wait_ms']:.1f}) | "
              f"{r['sent_ratio']:.2f} | {r['step_ratio']:.2f} | {r['default']} |")
    save("exchange", {"command": "bench/bench_exchange.py " + " ".join(sys.argv[1:]), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
