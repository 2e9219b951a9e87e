"""The whole pipeline on a log with millions of distinct features (issue: large vocabularies):
generate, preprocess, train AFM one epoch with horovodrun -np 2 (sparse tables, the default), score
the test split; the time of each step, the number of features, the model's size and the peak
memory of the training and scoring processes.

    .venv/bin/python bench/bench_large_pipeline.py [--rows 7000000 --users 5000000 --items 1500000]

Uniform popularity: about users (1 - exp(-rows / users)) users and items (1 - exp(-rows / items))
items occur, every one of them a feature (5.3 million with the defaults). k = t = 64.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, VENV_BIN, WORK, env, history, horovodrun, run, save  # noqa: E402

from afm_dist.dataset import METADATA_FILE, TEST, TRAIN, read_metadata  # noqa: E402
from afm_dist.spark.scoring import METRICS_FILE  # noqa: E402


def timed(cmd: list, **kw) -> tuple[float, int]:
    """Seconds and peak resident memory (bytes, largest child process) of a command, by GNU time."""
    log = WORK / "time.log"
    seconds = run(["/usr/bin/time", "-f", "%M", "-o", log, *cmd], **kw)
    return seconds, int(re.findall(r"^(\d+)$", log.read_text(), re.M)[-1]) * 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=7_000_000)
    p.add_argument("--users", type=int, default=5_000_000)
    p.add_argument("--items", type=int, default=1_500_000)
    p.add_argument("--driver-memory", default="10g", help="Spark driver memory (local[2]: also the executors')")
    args = p.parse_args()
    root = WORK / f"large-{args.rows}"
    logs, data, model, scores = root / "logs", root / "data", root / "afm", root / "scores"
    spark_env = {**env(), "AFM_SPARK_MASTER": "local[2]", "AFM_SPARK_SUBMIT_ARGS": f"--driver-memory {args.driver_memory}"}
    result: dict = {"command": "bench/bench_large_pipeline.py " + " ".join(sys.argv[1:]), "rows": args.rows,
                    "users": args.users, "items": args.items, "model": "AFM k=64 t=64, sparse tables, Adagrad",
                    "seconds": {}, "peak_rss_bytes": {}}
    steps = {
        "generate": [REPO / "spark-submit.sh", "jobs/generate.py", "--rows", args.rows, "--users", args.users,
                     "--items", args.items, "--uniform", "--output", logs, "--overwrite"],
        "preprocess": [REPO / "spark-submit.sh", "jobs/preprocess.py", "--schema", "schemas/synthetic.yaml",
                       "--input", logs, "--output", data, "--overwrite"],
        "train_np2_one_epoch": [*horovodrun(2), VENV_BIN / "python", "-m", "afm_dist.train", "--data",
                                data, "--model", "afm", "--output", model, "--overwrite", "--epochs", 1,
                                "--batch-size", 512, "--embedding-dim", 64, "--attention-factor", 64, "--log-every", 60],
        "score_test": [REPO / "spark-submit.sh", "jobs/score.py", "--model", model, "--input", data / TEST,
                       "--output", scores, "--overwrite"],
    }
    for name, cmd in steps.items():
        started = time.strftime("%H:%M:%S")
        seconds, peak = timed(cmd, env=spark_env)
        result["seconds"][name] = round(seconds, 1)
        result["peak_rss_bytes"][name] = peak
        print(f"== {name}: {seconds:.0f} s (started {started}), peak {peak / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    meta = read_metadata(data / METADATA_FILE)
    result["num_features"] = meta.num_features
    result["train_rows"] = meta.split_rows(TRAIN)
    result["test_rows"] = meta.split_rows(TEST)
    result["model_bytes"] = (model / "model.safetensors").stat().st_size
    epoch = history(model)[-1]
    result["train_examples_per_s"] = epoch["examples_per_s"]
    result["val_rmse"] = epoch["val_rmse"]
    result["score"] = {k: v for k, v in json.loads((scores / METRICS_FILE).read_text()).items()
                       if k in ("rows", "rmse", "mae", "seconds")}
    save("large_pipeline", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
