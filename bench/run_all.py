"""Run every benchmark, then write BENCHMARKS.md from bench/results/*.json.

    make bench                         # all of them (long: tens of minutes on 2 cores)
    .venv/bin/python bench/run_all.py --only train score
    .venv/bin/python bench/run_all.py --report-only   # re-render BENCHMARKS.md from saved results

Each benchmark measures its ratios within one run (these machines are shared and noisy), and
records the command that produced it.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHES = {
    "models": ["bench/bench_models.py", "--out", "bench/results/models.json"],
    "preprocess": ["bench/bench_preprocess.py"],
    "train": ["bench/bench_train.py"],
    "score": ["bench/bench_score.py"],
}
TITLES = {
    "models": "Models: AFM throughput against DeepCTR-Torch and FuxiCTR, and peak training memory (issue: models)",
    "preprocess": "Spark preprocessing rows/s at 1M and 10M rows on local[2] (issue: preprocessing)",
    "train": "Training examples/s with 1 and 2 Horovod workers, and the Petastorm loader alone (issue: training)",
    "score": "Spark batch scoring rows/s against raw torch inference (issue: scoring)",
}


def run(names: list[str]) -> None:
    for name in names:
        cmd = [sys.executable, *BENCHES[name]]
        print(f"=== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if k in ("benchmark", "machine", "command", "date"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, list):
            rows.append((key, json.dumps(v)[:200]))
        else:
            rows.append((key, v))
    return rows


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def report() -> Path:
    import torch

    lines = ["# Benchmarks", "",
             "Written by `make bench` (`bench/run_all.py`) from `bench/results/*.json`. Every ratio is measured",
             "within one run of its benchmark on the same machine; absolute figures depend on the machine and",
             "on whatever else it was doing.", "",
             f"Rendered on: {platform.node()} — Python {platform.python_version()}, torch {torch.__version__}.", ""]
    for name in BENCHES:
        path = RESULTS / f"{name}.json"
        lines += [f"## {TITLES[name]}", ""]
        if not path.exists():
            lines += [f"Not run yet: `.venv/bin/python {' '.join(BENCHES[name])}`.", ""]
            continue
        result = json.loads(path.read_text())
        machine = result.get("machine", {})
        lines += [f"Command: `{result.get('command', ' '.join(BENCHES[name]))}`  ",
                  f"Run: {result.get('date', '?')}; machine: "
                  + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
                  "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(result)]
        lines.append("")
    out = REPO / "BENCHMARKS.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benchmarks")
    p.add_argument("--report-only", action="store_true", help="only re-render BENCHMARKS.md")
    args = p.parse_args()
    if not args.report_only:
        run(args.only or list(BENCHES))
    print(f"wrote {report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
