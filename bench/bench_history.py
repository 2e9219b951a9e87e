"""Training throughput with a history bag field against the same rows without it (issue 26).

    .venv/bin/python bench/bench_history.py --data DATA [DATA ...] --out bench/results/history.json

Each DATA is a preprocessed data set with a history field (``kind: history``, pooled), e.g. from
``schemas/movielens_ratings_history.yaml``. Its training split is read once; "without" is the same
rows with the history field's slots dropped (the data set the schema makes without that field),
"with" all of them, the bag pooled into one input of the pair layer as the trainer builds it. For
FM and AFM at the product's defaults (k = t = 256, the schema's batch, Adagrad, dropout 0.5, the
L2 penalty on the batch's feature rows), a training step as the trainer's (forward, loss,
backward, step) in one process, ``torch.set_num_threads(2)``; the variants interleaved over
``--passes`` passes so that load on the shared machine falls on all of them alike, and each
variant's best pass reported (examples/s). The ratio with/without is the issue's figure (goal: at
least 0.5 for a bag of up to 200 values).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from afm_dist.batch import Batch, read_split  # noqa: E402
from afm_dist.dataset import TRAIN, load_metadata  # noqa: E402
from afm_dist.io import write_text_atomic  # noqa: E402
from afm_dist.models import ModelConfig, build_model  # noqa: E402
from afm_dist.training.optimizers import build_optimizer  # noqa: E402
from common import machine  # noqa: E402


def variants(data: Path) -> tuple[dict, dict]:
    """(with, without): Batch of the training split, N, M, slot groups and the bag's width."""
    meta = load_metadata(data)
    rows = read_split(data / TRAIN)
    bags = [f for f in meta.fields if f.pooled]
    if not bags:
        raise SystemExit(f"{data}: no pooled (history) field; preprocess with a schema that declares one")
    keep = torch.tensor([s for f in meta.fields if not f.pooled for s in range(f.slot, f.slot + f.width)])
    plain = Batch(ids=rows.ids[:, keep], vals=rows.vals[:, keep], mask=rows.mask[:, keep], label=rows.label)
    with_bag = {"rows": rows, "N": meta.num_features, "M": meta.num_slots, "groups": meta.slot_groups(),
                "bag": sum(f.width for f in bags)}
    without = {"rows": plain, "N": meta.num_features, "M": int(keep.numel()), "groups": None, "bag": 0}
    return with_bag, without


def steps_per_second(model_name: str, v: dict, cfg: ModelConfig, batch: int, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model(model_name, v["N"], v["M"], cfg, v["groups"])
    opt = build_optimizer("adagrad", model, 0.05)
    rows = v["rows"]
    order = torch.randperm(len(rows))
    model.train()

    def step(i: int) -> None:
        idx = order[(i * batch) % (len(rows) - batch):][:batch]
        ids, vals, mask, label = rows.ids[idx], rows.vals[idx], rows.mask[idx], rows.label[idx]
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(ids, vals, mask), label)
        emb, lin = model.feature_penalty(ids, mask)
        (loss + 0.01 * (emb + lin)).backward()
        opt.step()

    for i in range(3):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i + 3)
    return steps / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True)
    p.add_argument("--models", nargs="+", default=["fm", "afm"])
    p.add_argument("--k", type=int, default=ModelConfig.embedding_dim)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(2)
    cfg = ModelConfig(embedding_dim=a.k, attention_factor=a.k)
    results = []
    for data in a.data:
        meta = load_metadata(data)
        batch = int(meta.schema.get("training", {}).get("batch_size", 128))
        with_bag, without = variants(data)
        best: dict[tuple[str, str], float] = {}
        for _ in range(a.passes):
            for model_name in a.models:
                for name, v in (("without", without), ("with", with_bag)):
                    sps = steps_per_second(model_name, v, cfg, batch, a.steps, seed=1)
                    best[model_name, name] = max(best.get((model_name, name), 0.0), sps * batch)
        for model_name in a.models:
            r = {"data": str(data), "model": model_name, "k": a.k, "batch": batch, "bag": with_bag["bag"],
                 "slots_without": without["M"], "slots_with": with_bag["M"],
                 "examples_per_s_without": round(best[model_name, "without"]),
                 "examples_per_s_with": round(best[model_name, "with"]),
                 "ratio": round(best[model_name, "with"] / best[model_name, "without"], 3)}
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| data set | model | bag | slots without / with | examples/s without | with | with / without |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in results:
        print(f"| {Path(r['data']).name} | {r['model'].upper()} | {r['bag']} | {r['slots_without']} / {r['slots_with']} "
              f"| {r['examples_per_s_without']:,} | {r['examples_per_s_with']:,} | {r['ratio']:.2f} |")
    if a.out:
        write_text_atomic(a.out, json.dumps({"machine": machine(), "threads": 2, "passes": a.passes,
                                             "steps": a.steps, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
