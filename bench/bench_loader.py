"""The training loader of this tree against the one of another revision, side by side: rows/s, and
how many of an epoch's rows are distinct (an epoch is rows / batch steps of one rank's shard).

    .venv/bin/python bench/bench_loader.py --against 65be6e8 [--data DIR ...] [--rows 200000] [--rounds 3]

65be6e8 is the revision before the loader read its shard pass by pass (docs/results/quality.md,
"Why the product's FM was worse than the harness's on MovieLens"). Each data set is the train split
of a preprocessed data set (``--data``, any number), and bench_train's synthetic one of ``--rows``
rows. Each round times both loaders on each data set, the order swapped every round: ``epochs``
epochs of one rank (size 1, batch 256, a new seed an epoch, as the trainer calls it), rows/s over
the whole, then, untimed, the share of distinct rows in one more epoch. Ratios are this tree's / the other's per round;
the figure is their median.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, save, synthetic_dataset  # noqa: E402

from afm_dist import loader as current  # noqa: E402
from afm_dist.dataset import TRAIN  # noqa: E402


def loader_at(rev: str):
    """afm_dist/loader.py as it was at ``rev``, imported as a module of its own."""
    text = subprocess.run(["git", "show", f"{rev}:afm_dist/loader.py"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"loader_{rev}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"loader_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(module, split: Path, batch: int, epochs: int) -> dict:
    """``epochs`` epochs timed (rows/s over all of them), then the distinct rows of one more, untimed."""
    rows = sum(module.row_group_sizes(split))
    steps = module.steps_per_epoch(rows, batch)
    start, drawn = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        for b in module.train_batches(split, rank=0, size=1, batch_size=batch, steps=steps, seed=2017 + epoch):
            drawn += len(b)
    rate = drawn / (time.perf_counter() - start)
    seen = [b.ids.numpy() for b in module.train_batches(split, rank=0, size=1, batch_size=batch, steps=steps, seed=2017)]
    return {"rows_per_s": rate, "distinct": len(np.unique(np.concatenate(seen), axis=0)) / (steps * batch),
            "split_rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", default="65be6e8", help="the other revision (default %(default)s)")
    p.add_argument("--data", type=Path, nargs="*", default=[], help="preprocessed data sets (their train split)")
    p.add_argument("--rows", type=int, default=200_000, help="rows of the synthetic data set (0: none)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    other = loader_at(a.against)
    sets = {d.name: d / TRAIN for d in a.data}
    if a.rows:
        sets[f"synthetic-{a.rows}"] = synthetic_dataset(a.rows) / TRAIN
    results = {}
    for name, split in sets.items():
        rounds = []
        for r in range(a.rounds):
            pair = [("this", current), (a.against, other)]
            got = dict((label, measure(m, split, a.batch, a.epochs)) for label, m in (pair if r % 2 == 0 else pair[::-1]))
            got["ratio"] = got["this"]["rows_per_s"] / got[a.against]["rows_per_s"]
            print(name, r + 1, {k: (v if k == "ratio" else {kk: round(vv, 4) for kk, vv in v.items()})
                                for k, v in got.items()}, file=sys.stderr, flush=True)
            rounds.append(got)
        results[name] = {"rounds": rounds, "median_ratio": statistics.median(g["ratio"] for g in rounds),
                         "distinct_this": rounds[0]["this"]["distinct"],
                         "distinct_other": rounds[0][a.against]["distinct"],
                         "split_rows": rounds[0]["this"]["split_rows"]}
    save("loader_passes", {"against": a.against, "batch": a.batch, "epochs": a.epochs, "sets": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
