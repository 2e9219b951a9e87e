"""Spark batch scoring rows/s on local[2] over at least a million rows, beside the same model's raw
inference rows/s in plain torch (2 threads, over the first million rows, tensors already in memory) in
the same run; goal: Spark reaches half of raw.

    .venv/bin/python bench/bench_score.py [--rows 10000000]

The model is an AFM (k = t = 64) trained for one epoch on the synthetic data set; the input is its
test split repeated to ``--rows`` rows (new row ids), as a preprocessed split of 16 files.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, VENV_BIN, WORK, env, run, save, synthetic_dataset  # noqa: E402

from afm_dist.dataset import COMPLETE_MARKER, METADATA_FILE, TEST  # noqa: E402
from afm_dist.spark.scoring import METRICS_FILE  # noqa: E402


def model_dir(data: Path) -> Path:
    out = WORK / "score-model-afm"
    if not (out / COMPLETE_MARKER).exists():
        run([VENV_BIN / "python", "-m", "afm_dist.train", "--data", data, "--model", "afm", "--output", out,
             "--overwrite", "--epochs", "1", "--batch-size", "512", "--embedding-dim", "64", "--attention-factor", "64"])
    return out


def big_split(data: Path, rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = WORK / f"score-input-{rows}"
    split = root / TEST
    if split.is_dir() and sum(pq.ParquetFile(f).metadata.num_rows for f in split.glob("*.parquet")) == rows:
        return split
    shutil.rmtree(root, ignore_errors=True)
    split.mkdir(parents=True)
    shutil.copy(data / METADATA_FILE, root / METADATA_FILE)
    base = pq.read_table(data / TEST)
    reps = -(-rows // base.num_rows)
    table = pa.concat_tables([base] * reps).slice(0, rows)
    table = table.set_column(table.schema.get_field_index("row_id"), "row_id", pa.array(np.arange(rows, dtype=np.int64)))
    files = 16
    for i in range(files):
        a, b = i * rows // files, (i + 1) * rows // files
        pq.write_table(table.slice(a, b - a), split / f"part-{i:05d}.parquet", row_group_size=50_000)
    return split


def raw_torch_rate(model_path: Path, split: Path, batch: int = 8192) -> float:
    import pyarrow.parquet as pq
    import torch

    from afm_dist.batch import to_batch
    from afm_dist.dataset import split_bag_columns
    from afm_dist.model_dir import TrainedModel

    torch.set_num_threads(2)
    model = TrainedModel.load(model_path).build()
    ids, vals, mask = to_batch(pq.read_table(split).slice(0, 1_000_000), split_bag_columns(split)).inputs  # a rate: a million rows are enough
    n = len(ids)
    start = time.time()
    with torch.inference_mode():
        for s in range(0, n, batch):
            model(ids[s:s + batch], vals[s:s + batch], mask[s:s + batch])
    return n / (time.time() - start)


def main() -> int:
    p = argparse.ArgumentParser()
    # 10M rows: at 1M the job's fixed costs (JVM start, Python workers importing torch, writing
    # and re-reading the predictions) are half of its time.
    p.add_argument("--rows", type=int, default=10_000_000)
    args = p.parse_args()
    data = synthetic_dataset(200_000)
    model = model_dir(data)
    split = big_split(data, args.rows)
    raw = raw_torch_rate(model, split)
    out = WORK / "score-output"
    cmd = [REPO / "spark-submit.sh", "jobs/score.py", "--model", model, "--input", split, "--output", out,
           "--overwrite"]
    start = time.time()
    run(cmd, env={**env(), "AFM_SPARK_MASTER": "local[2]"})
    wall = time.time() - start
    summary = json.loads((out / METRICS_FILE).read_text())
    assert summary["rows"] == args.rows, summary
    spark_rate = args.rows / summary["seconds"]
    save("score", {
        "command": f".venv/bin/python bench/bench_score.py --rows {args.rows}",
        "rows": args.rows,
        "model": "AFM k=64 t=64, M=6",
        "raw_torch_rows_per_s": raw,
        "spark_rows_per_s": spark_rate,
        "spark_rows_per_s_incl_startup": args.rows / wall,
        "spark_job_seconds": summary["seconds"],
        "spark_over_raw": spark_rate / raw,
        "goal": "spark_over_raw >= 0.5",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
