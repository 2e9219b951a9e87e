"""Training-step examples/s against the number of features N (issue: large vocabularies).

AFM (k = t = 64, M = 10 slots), global batch 512, random feature ids uniform over N, the trainer's
own optimizer construction and gradient exchange (afm_dist.training.optimizers and exchange), one
process and ``horovodrun -np 2`` (Gloo). For every N, the paths run side by side in one run:

    dense    --sparse-embeddings false, Adagrad: dense table gradients, dense update, allreduce
    sparse   the default: sparse table gradients, lazy Adagrad, allgather of the batch's rows
    rowwise  sparse + --optimizer rowwise_adagrad: one accumulator per table row

Each configuration runs in its own process(es), so its peak resident memory (ru_maxrss, the
largest rank's) is its own; it is set beside the bytes of parameters plus optimizer state.

    .venv/bin/python bench/bench_sparse.py [--sizes 10000 1000000 10000000] [--rounds 3]

The headline ratio N = largest / N = smallest of the default (sparse) path is the median over
``--rounds`` rounds, each running the two sizes one after the other; the table shows round 1.

A dense run whose memory estimate exceeds --dense-memory-gb (two ranks each hold parameters,
gradients, Adagrad state and Horovod's buffer) is not run, and is recorded as such.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_id_step, result_line, run_ranks, save  # noqa: E402

SLOTS, DIM, GLOBAL_BATCH = 10, 64, 512
PATHS = {"dense": ("adagrad", "false"), "sparse": ("adagrad", "true"), "rowwise": ("rowwise_adagrad", "true")}


def worker(args: argparse.Namespace) -> None:
    """One rank: build, broadcast and exchange as the trainer does, then time steps on random ids."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    optimizer_name, sparse = PATHS[args.path]
    model, optimizer, _, step = random_id_step("afm", args.features, SLOTS, GLOBAL_BATCH, dim=DIM,
                                               optimizer_name=optimizer_name, sparse=sparse == "true")
    for _ in range(2):  # warm-up: allocator, Horovod's first negotiation
        step()
    steps, start = 0, time.perf_counter()
    while steps < args.min_steps or (time.perf_counter() - start < args.seconds and steps < 200):
        step()
        steps += 1
    elapsed = time.perf_counter() - start
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    peak = hvd.allgather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if hvd.rank() == 0:
        result_line({"examples_per_s": steps * GLOBAL_BATCH / elapsed, "steps": steps,
                     "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                     "optimizer_state_bytes": state_bytes, "peak_rss_bytes": max(peak)})


def run_config(features: int, np_: int, path: str, args: argparse.Namespace) -> dict:
    result = run_ranks(np_, [Path(__file__).resolve(), "--worker", "--features", features, "--path", path,
                             "--seconds", args.seconds, "--min-steps", args.min_steps],
                       env_extra={"OMP_NUM_THREADS": "1"})
    print(f"  N={features:,} np={np_} {path}: {result['examples_per_s']:,.0f} examples/s, "
          f"peak {result['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per configuration")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of the sparse path at the smallest and largest N, alternated, for the N ratio "
                        "(the median of the rounds' ratios; the sweep is round 1)")
    p.add_argument("--dense-memory-gb", type=float, default=16.0,
                   help="skip a dense run whose estimated memory (all ranks) is above this")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--features", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", choices=list(PATHS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    runs = []
    for features in args.sizes:
        for np_ in args.procs:
            for path in PATHS:
                # Dense: parameters, gradients, Adagrad state and an allreduce buffer per rank.
                estimate = 4 * features * (DIM + 1) * 4 * np_ / 2**30
                if path == "dense" and estimate > args.dense_memory_gb:
                    runs.append({"features": features, "np": np_, "path": path,
                                 "skipped": f"estimated {estimate:.0f} GiB > --dense-memory-gb {args.dense_memory_gb:g}"})
                    continue
                runs.append({"features": features, "np": np_, "path": path, **run_config(features, np_, path, args)})
    by = {(r["features"], r["np"], r["path"]): r for r in runs}
    ratios = {}
    small, large = min(args.sizes), max(args.sizes)
    for np_ in args.procs:
        for path in PATHS:
            a, b = by.get((large, np_, path), {}), by.get((small, np_, path), {})
            if "examples_per_s" in a and "examples_per_s" in b:
                ratios[f"np{np_}_{path}_largest_over_smallest"] = a["examples_per_s"] / b["examples_per_s"]
        # The headline ratio of the default path: a single 15-second run at 10M features varies by
        # 20% between runs on a shared machine, so more rounds, each small and large side by side.
        first = ratios.get(f"np{np_}_sparse_largest_over_smallest")
        if first is not None and small != large and args.rounds > 1:
            rounds = [first]
            for _ in range(args.rounds - 1):
                b = run_config(small, np_, "sparse", args)["examples_per_s"]
                a = run_config(large, np_, "sparse", args)["examples_per_s"]
                rounds.append(a / b)
            ratios[f"np{np_}_sparse_largest_over_smallest_rounds"] = rounds
            ratios[f"np{np_}_sparse_largest_over_smallest"] = statistics.median(rounds)
        s, d = by.get((small, np_, "sparse"), {}), by.get((small, np_, "dense"), {})
        if "examples_per_s" in s and "examples_per_s" in d:
            ratios[f"np{np_}_smallest_sparse_over_dense"] = s["examples_per_s"] / d["examples_per_s"]
        big = by.get((large, np_, "sparse"), {})
        if "peak_rss_bytes" in big:
            ratios[f"np{np_}_largest_sparse_peak_over_params_and_state"] = (
                big["peak_rss_bytes"] / (big["param_bytes"] + big["optimizer_state_bytes"]))
    save("sparse", {"command": " ".join([".venv/bin/python bench/bench_sparse.py", *sys.argv[1:]]), "model": "AFM k=64 t=64 M=10",
                    "global_batch": GLOBAL_BATCH, "runs": runs, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
