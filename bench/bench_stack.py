"""The two stacks side by side (issue 29): the loader's rows/s and the trainer's examples/s under each
venv, in alternating rounds of one run; goal: the new stack at least 0.95x the old.

    .venv/bin/python bench/bench_stack.py --old OLD_VENV --new NEW_VENV [--rows 200000] [--rounds 3]

Each round runs, under one venv and then the other (the order swapped every round): the loader alone
(``bench_train.loader_rate``: one reader producing shuffled batches of 256 rows for 15 s) and AFM
training with ``horovodrun -np 2`` (k = t = 64, global batch 512; ``bench_train.train_rate``: the
median examples/s of the epochs after the first). Ratios are new / old per round; the figure is
their median. The data set is the synthetic one of bench_train, written once by the old venv.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, save, synthetic_dataset  # noqa: E402


def probe(data: Path, epochs: int) -> None:
    """In the venv being measured: the stack's versions, the loader's rows/s, AFM's examples/s."""
    import numpy
    import pandas
    import pyarrow
    import pyspark

    from bench_train import loader_rate, train_rate

    loader = loader_rate(data, 256, seconds=15.0)
    rate = train_rate(data, "afm", 2, epochs)[0]
    print("RESULT " + json.dumps({"pyspark": pyspark.__version__, "pyarrow": pyarrow.__version__,
                                  "numpy": numpy.__version__, "pandas": pandas.__version__,
                                  "loader_rows_per_s": loader, "afm_np2_examples_per_s": rate}), flush=True)


def measure(venv: Path, data: Path, epochs: int) -> dict:
    cmd = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--probe", "--data", str(data),
           "--epochs", str(epochs)]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               "AFM_VENV": str(venv), "HOME": str(Path.home())})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--old", type=Path, help="venv of the old stack (pyspark 3.5, pyarrow 14, NumPy 1)")
    p.add_argument("--new", type=Path, help="venv of the new stack")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.probe:
        probe(a.data, a.epochs)
        return 0
    if a.old is None or a.new is None:
        p.error("--old and --new name the two venvs")
    data = synthetic_dataset(a.rows)
    rounds = []
    for r in range(a.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        got = {name: measure((a.old if name == "old" else a.new).resolve(), data, a.epochs) for name in order}
        got["loader_ratio"] = got["new"]["loader_rows_per_s"] / got["old"]["loader_rows_per_s"]
        got["train_ratio"] = got["new"]["afm_np2_examples_per_s"] / got["old"]["afm_np2_examples_per_s"]
        print(json.dumps(got), file=sys.stderr, flush=True)
        rounds.append(got)
    result = {
        "command": f".venv/bin/python bench/bench_stack.py --old {a.old} --new {a.new} --rows {a.rows} "
                   f"--epochs {a.epochs} --rounds {a.rounds}",
        "old_stack": {k: rounds[0]["old"][k] for k in ("pyspark", "pyarrow", "numpy", "pandas")},
        "new_stack": {k: rounds[0]["new"][k] for k in ("pyspark", "pyarrow", "numpy", "pandas")},
        "rounds": rounds,
        "loader_new_over_old": statistics.median(r["loader_ratio"] for r in rounds),
        "train_new_over_old": statistics.median(r["train_ratio"] for r in rounds),
        "goal": "new stack >= 0.95x the old (loader rows/s, AFM examples/s with horovodrun -np 2)",
    }
    save("stack", result)
    print(json.dumps({k: result[k] for k in ("loader_new_over_old", "train_new_over_old")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
