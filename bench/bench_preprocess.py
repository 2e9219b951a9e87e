"""Spark preprocessing throughput on synthetic logs of 1M and 10M rows, on local[2].

    .venv/bin/python bench/bench_preprocess.py                      # 1M and 10M rows, both protocols
    .venv/bin/python bench/bench_preprocess.py --rows 1000000 --protocols explicit

The logs come from jobs/generate.py (afm_dist.synthetic: user, item, daytime, weekday, city,
device, rating; generated once per size and reused). Each run is the real job, launched as a
user launches it (``./spark-submit.sh jobs/preprocess.py``, ``AFM_SPARK_MASTER=local[2]``):

    explicit   schemas/synthetic.yaml: the rating as target, one instance per log
    implicit   the paper's Frappe protocol on the same logs: every log a positive, two negatives
               with the item replaced (three instances per log, negative sampling and its window)
    history    explicit plus each user's history (issue 26: ``{kind: history, of: user, items:
               item, max_values: 50}``), the bag of the user's other training-split items; its
               time against explicit's on the same logs is ``history_vs_explicit`` (goal: at most
               2 at 10M rows); no MLlib baseline

Reported per run: input rows per second over the job's own time (``metadata.extra.elapsed_s``:
Spark session up, from reading to the last split written) and over the whole command (JVM start
included), and for each protocol the time ratio of 10M to 1M rows (target: at most 12). The
machine is shared, so each run also records the 1-minute load average before and after it and
the CPU time of its Spark tasks (from the event log), whose ratio does not depend on the load.
Beside each run, the MLlib pipeline a Spark engineer would write for the same logs
(bench/mllib_preprocess.py: ``StringIndexer`` over the six fields, a seeded 70/20/10 split, three
Parquet outputs; for implicit, two sampled negatives per log), launched the same way right before
it: ``mllib_seconds`` and ``vs_mllib``, our job's time over the pipeline's (issue 28: at most 1.5).
Results: bench/results/preprocess.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, WORK, env, run, save  # noqa: E402

from afm_dist.dataset import METADATA_FILE, SPLITS, read_metadata  # noqa: E402

import yaml  # noqa: E402

IMPLICIT_SCHEMA = {
    "name": "synthetic_implicit",
    "description": "Synthetic logs under the Frappe protocol: two negatives per log, item replaced.",
    "format": {"type": "tsv", "header": True},
    "fields": [{"name": n, "kind": "categorical"} for n in ("user", "item", "daytime", "weekday", "city", "device")],
    "target": {"kind": "implicit", "negatives": {"per_positive": 2, "replace": "item"}},
    "split": {"train": 0.7, "validation": 0.2, "test": 0.1},
    "seed": 2017,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--protocols", nargs="+", choices=("explicit", "implicit", "history"),
                   default=["explicit", "implicit"])
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="6g", help="local mode: the driver is the only executor")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the MLlib pipeline and our job alternately this many times per size and protocol; the "
                        "figures are the medians (the machine is shared: single runs of the pipeline varied by 30%%)")
    p.add_argument("--keep", action="store_true", help="keep the preprocessed outputs (they are large)")
    p.add_argument("--merge", action="store_true",
                   help="keep the saved runs of the sizes and protocols not run this time (e.g. to re-measure "
                        "1M rows when the machine is as quiet as it was for 10M)")
    return p.parse_args(argv)


def load() -> float:
    return os.getloadavg()[0]


def task_seconds(event_dir: Path, runs: int = 1) -> dict[str, float]:
    """Executor run time and CPU time summed over all tasks of our job's Spark event logs (the
    MLlib pipeline's, in the same directory, left out), per run of ``runs``.

    On a shared machine the wall time swings with whatever else runs; the tasks' CPU time
    counts only the work of the job, so its ratio between sizes measures scaling more fairly.
    """
    run_ms, cpu_ns = 0, 0
    for log_file in event_dir.iterdir():
        with open(log_file, encoding="utf-8") as f:
            lines = f.readlines()
        if any('"SparkListenerApplicationStart"' in ln and '"App Name":"mllib-preprocess"' in ln for ln in lines):
            continue
        for line in lines:
            if '"SparkListenerTaskEnd"' not in line:
                continue
            metrics = json.loads(line).get("Task Metrics") or {}
            run_ms += metrics.get("Executor Run Time", 0)
            cpu_ns += metrics.get("Executor CPU Time", 0)
    return {"task_run_seconds": round(run_ms / 1e3 / runs, 1), "task_cpu_seconds": round(cpu_ns / 1e9 / runs, 1)}


def logs(rows: int) -> Path:
    path = WORK / "preprocess" / f"logs-{rows}"
    if not (path / "_SUCCESS").exists():
        run([REPO / "spark-submit.sh", "jobs/generate.py", "--rows", rows, "--output", path, "--overwrite"])
    return path


def mllib_seconds(src: Path, protocol: str) -> float:
    """The MLlib baseline on the same logs (bench/mllib_preprocess.py): its own seconds."""
    out = WORK / "preprocess" / "mllib"
    cmd = [REPO / "spark-submit.sh", "bench/mllib_preprocess.py", "--input", src, "--output", out,
           *(["--implicit"] if protocol == "implicit" else [])]
    print("+ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env(), check=True, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    return float(json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])["seconds"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # common.run passes this process's environment to the jobs.
    os.environ["AFM_SPARK_MASTER"] = args.master
    os.environ["AFM_SPARK_SUBMIT_ARGS"] = f"--driver-memory {args.driver_memory}"
    schemas = {"explicit": REPO / "schemas" / "synthetic.yaml", "implicit": WORK / "preprocess" / "implicit.yaml",
               "history": WORK / "preprocess" / "history.yaml"}
    schemas["implicit"].parent.mkdir(parents=True, exist_ok=True)
    schemas["implicit"].write_text(json.dumps(IMPLICIT_SCHEMA, indent=2))  # JSON is YAML
    history = yaml.safe_load(schemas["explicit"].read_text())
    history["name"] = "synthetic_history"
    history["fields"].append({"name": "history", "kind": "history", "of": "user", "items": "item", "max_values": 50})
    schemas["history"].write_text(json.dumps(history, indent=2))
    runs = []
    saved = RESULTS / "preprocess.json"
    if args.merge and saved.exists():
        runs = [r for r in json.loads(saved.read_text())["runs"]
                if r["rows"] not in args.rows or r["protocol"] not in args.protocols]
    for rows in sorted(args.rows):
        src = logs(rows)
        for protocol in args.protocols:
            out = WORK / "preprocess" / f"{protocol}-{rows}"
            events = WORK / "preprocess" / "events" / f"{protocol}-{rows}"
            shutil.rmtree(events, ignore_errors=True)
            events.mkdir(parents=True)
            os.environ["AFM_SPARK_SUBMIT_ARGS"] = (
                f"--driver-memory {args.driver_memory} "
                f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events} "
                # one plain file per application (Spark 4 rolls and compresses event logs by default)
                "--conf spark.eventLog.rolling.enabled=false --conf spark.eventLog.compress=false")
            before = load()
            baselined = protocol != "history"  # the MLlib pipeline has no history
            pairs = []  # (MLlib pipeline s, our job s, our wall s), alternately
            for _ in range(args.rounds):
                baseline = mllib_seconds(src, protocol) if baselined else None
                wall = run([REPO / "spark-submit.sh", "jobs/preprocess.py", "--schema", schemas[protocol],
                            "--input", src, "--output", out, "--overwrite"])
                pairs.append((baseline, float(read_metadata(out / METADATA_FILE).extra["elapsed_s"]), wall))
            meta = read_metadata(out / METADATA_FILE)
            baseline = statistics.median(p[0] for p in pairs) if baselined else None
            job_s, wall = (statistics.median(p[i] for p in pairs) for i in (1, 2))
            instances = sum(meta.split_rows(s) for s in SPLITS)
            runs.append({
                "protocol": protocol, "rows": rows, "instances": instances,
                "job_seconds": job_s, "wall_seconds": round(wall, 1),
                "mllib_seconds": baseline, "vs_mllib": round(job_s / baseline, 2) if baseline else None,
                "rows_per_s": round(rows / job_s), "rows_per_s_wall": round(rows / wall),
                "instances_per_s": round(instances / job_s),
                **task_seconds(events, args.rounds),
                "load_1min_before": round(before, 2), "load_1min_after": round(load(), 2),
                **({"rounds": [{"mllib_seconds": b, "job_seconds": j, "vs_mllib": round(j / b, 2) if b else None}
                               for b, j, _ in pairs]}
                   if args.rounds > 1 else {}),
            })
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
            report(args, argv, runs)  # after every run: a long benchmark stopped early keeps its figures
    return 0


def report(args: argparse.Namespace, argv: list[str] | None, runs: list[dict]) -> None:
    ratios = {}
    for protocol in sorted({r["protocol"] for r in runs}):
        by_rows = {r["rows"]: r for r in runs if r["protocol"] == protocol}
        if len(by_rows) >= 2:
            small, large = by_rows[min(by_rows)], by_rows[max(by_rows)]
            ratios[protocol] = {
                "rows_ratio": large["rows"] / small["rows"],
                "time_ratio": round(large["job_seconds"] / small["job_seconds"], 2),
                "time_ratio_wall": round(large["wall_seconds"] / small["wall_seconds"], 2),
                "task_cpu_ratio": round(large["task_cpu_seconds"] / small["task_cpu_seconds"], 2),
            }
    for r in runs:
        explicit = next((e for e in runs if e["protocol"] == "explicit" and e["rows"] == r["rows"]), None)
        if r["protocol"] == "history" and explicit:
            r["history_vs_explicit"] = round(r["job_seconds"] / explicit["job_seconds"], 2)
    save("preprocess", {
        "command": "bench/bench_preprocess.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "master": args.master, "driver_memory": args.driver_memory,
        "target": "10x the rows in at most 12x the time (issue 28: 10x); at most 1.5x the MLlib pipeline",
        "runs": runs, "ratios": ratios,
    })


if __name__ == "__main__":
    sys.exit(main())
