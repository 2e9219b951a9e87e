"""Score a test split or raw logs with a trained model, on Spark executors.

    ./spark-submit.sh jobs/score.py --model out/models/afm --input out/frappe/test --output out/scores

``--input`` is either a split written by jobs/preprocess.py (a directory of Parquet with ids,
vals, mask) or raw logs in the model's dataset-schema format, encoded on the fly with the model's
own vocabulary (values never seen in training take the field's out-of-vocabulary id).

Output DIR: ``predictions/`` (Parquet: key columns, label where present, prediction),
``metrics.json`` (rows, RMSE, MAE; log loss and AUC for binary targets) when the input has targets,
``rejected/`` for malformed raw rows; moved into place with a completion marker only when complete.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from afm_dist.checkpoint import read_model_dir
from afm_dist.dataset import LABEL, DatasetError, mark_complete, strip_file_scheme
from afm_dist.paths import OutputPathError, publish_directory, validate_output_path


JOB = "score"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory written by afm_dist.train")
    p.add_argument("--input", required=True, nargs="+", help="a preprocessed split directory, or raw log files")
    p.add_argument("--output", required=True)
    p.add_argument("--no-clip", dest="clip", action="store_false",
                   help="do not bound predictions to the training target's range")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per torch inference batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads per Spark task")
    p.add_argument("--table", action="append", default=[], metavar="NAME=PATH",
                   help="raw input only: file(s) of a side table the model's schema joins (repeat per table)")
    p.add_argument("--max-rejected-fraction", type=float, default=0.01)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)
    try:
        info, _ = read_model_dir(args.model)
        out = validate_output_path(args.output, overwrite=args.overwrite)
    except (DatasetError, OutputPathError) as e:
        print(f"{JOB}: error: {e}", file=sys.stderr)
        return 2
    from afm_dist.spark.session import build_session

    spark = spark or build_session("afm-dist-score")
    try:
        summary = run(spark, args, info, out)
    except DatasetError as e:  # bad input found once Spark read it: nothing was published
        print(f"{JOB}: error: {e}", file=sys.stderr)
        return 2
    _print_table(summary, out)
    return 0


def run(spark, args: argparse.Namespace, info: dict, out: Path) -> dict:
    """Score into a staging directory, publish it complete, return the metrics summary."""
    from afm_dist.spark.inputs import check_encoded_split, is_encoded_split, load_encoded, parse_tables
    from afm_dist.spark.scoring import binary_metrics, regression_metrics, score, score_split

    start = time.time()
    target = info["dataset"]["target"]
    clip = (float(target["min"]), float(target["max"])) if args.clip and "min" in target else None
    with publish_directory(out, overwrite=args.overwrite) as staging:
        if is_encoded_split(args.input):  # its row groups are read by the Python workers themselves
            check_encoded_split(args.input[0], info)
            rejected = 0
            scored = score_split(spark, strip_file_scheme(args.input[0]), args.model, clip=clip,
                                 batch_size=args.batch_size, threads=args.threads)
        else:
            encoded, keys, rejected = load_encoded(spark, args.input, info, staging, model_dir=args.model,
                                                   tables=parse_tables(args.table),
                                                   max_rejected_fraction=args.max_rejected_fraction)
            scored = score(spark, encoded, args.model, keep=keys, clip=clip, batch_size=args.batch_size,
                           threads=args.threads)
        scored.write.parquet(str(staging / "predictions"))
        print(f"{JOB}: predictions written after {time.time() - start:.1f} s; computing metrics", file=sys.stderr,
              flush=True)
        predictions = spark.read.parquet(str(staging / "predictions"))
        summary = {"model": str(Path(args.model).resolve()), "inputs": args.input, "clipped_to": clip,
                   "rejected_rows": rejected}
        if LABEL in predictions.columns:
            summary.update(regression_metrics(predictions))
            if target.get("kind") == "implicit":
                summary.update(binary_metrics(predictions))
        else:
            summary["rows"] = predictions.count()
        summary["seconds"] = round(time.time() - start, 2)
        (staging / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        mark_complete(staging)
    return summary


def _print_table(summary: dict, out: Path) -> None:
    rows = [(k, summary[k]) for k in ("rows", "rmse", "mae", "logloss", "auc", "rejected_rows", "seconds") if k in summary]
    width = max(len(k) for k, _ in rows)
    print(f"scores written to {out}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v:.6f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
