"""Training inside Spark (jobs/train.py, horovod.spark.run) against horovodrun, on the same data in
the same run; goal: jobs/train.py --num-proc 2 reaches at least 0.9x horovodrun -np 2's examples/s.

    flock /tmp/afm-test.lock .venv/bin/python bench/bench_spark_train.py [--rows 200000] [--epochs 2]

Three launches of the same trainer with the same flags (AFM, k = t = 64, global batch 512, as
bench/bench_train.py): horovodrun -np 2 -H localhost:2 --gloo; ./spark-submit.sh jobs/train.py
--num-proc 2 on local[2]; the same on a Spark standalone cluster of two one-core workers on
127.0.0.1 (afm_dist.spark.standalone). Throughput is the trainer's own examples/s of the last epoch
(the first warms caches), so every launcher is measured the same way; the job's wall time,
startup included, is recorded beside it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, VENV_BIN, WORK, env, history, horovodrun, run, save, synthetic_dataset  # noqa: E402

from afm_dist.spark.standalone import standalone_cluster  # noqa: E402

TRAINER = ["--model", "afm", "--overwrite", "--batch-size", "512", "--embedding-dim", "64", "--attention-factor", "64",
           "--log-every", "30"]


def measure(name: str, cmd: list, out: Path, launch_env: dict[str, str]) -> dict:
    seconds = run(cmd, env=launch_env)
    epochs = history(out)
    return {"launcher": name, "examples_per_s": epochs[-1]["examples_per_s"], "job_seconds": round(seconds, 1),
            "epochs": len(epochs), "val_rmse": epochs[-1]["val_rmse"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    data = synthetic_dataset(args.rows)
    flags = ["--data", data, "--epochs", args.epochs, *TRAINER]
    runs = []
    out = WORK / "spark-train-horovodrun"
    runs.append(measure("horovodrun -np 2", [*horovodrun(2), VENV_BIN / "python", "-m", "afm_dist.train",
                                             *flags, "--output", out], out, env()))
    out = WORK / "spark-train-local2"
    runs.append(measure("jobs/train.py --num-proc 2, local[2]",
                        [REPO / "spark-submit.sh", "jobs/train.py", *flags, "--output", out, "--num-proc", "2"], out,
                        {**env(), "AFM_SPARK_MASTER": "local[2]"}))
    with tempfile.TemporaryDirectory(prefix="afm-bench-cluster-") as tmp:
        start = time.time()
        with standalone_cluster(Path(tmp), workers=2, cores=1) as cluster:
            started = time.time() - start
            out = WORK / "spark-train-standalone"
            runs.append(measure("jobs/train.py --num-proc 2, standalone (2 workers x 1 core)",
                                [REPO / "spark-submit.sh", "jobs/train.py", *flags, "--output", out, "--num-proc", "2"],
                                out, {**cluster.env, "PATH": env()["PATH"], "PYTHONPATH": str(REPO)}))
            runs[-1]["cluster_start_seconds"] = round(started, 1)
    base = runs[0]["examples_per_s"]
    for r in runs:
        r["over_horovodrun"] = r["examples_per_s"] / base
    save("spark_train", {
        "command": f"flock /tmp/afm-test.lock .venv/bin/python bench/bench_spark_train.py --rows {args.rows} "
                   f"--epochs {args.epochs}",
        "data_rows": args.rows, "model": "afm k=t=64, global batch 512", "runs": runs,
        "goal": "jobs/train.py --num-proc 2 >= 0.9x horovodrun -np 2 examples/s"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
