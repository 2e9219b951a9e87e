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
import sys
from pathlib import Path

from afm_dist import cli
from afm_dist.model_dir import TrainedModel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.model_job_parser("jobs/score.py", __doc__, "model directory written by afm_dist.train")
    p.add_argument("--no-clip", dest="clip", action="store_false",
                   help="do not bound predictions to the training target's range (RMSE, MAE)")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per torch inference batch")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)

    def prepare() -> TrainedModel:  # before Spark starts: every file of the model that this input needs
        from afm_dist.spark.model_input import check_raw_logs, is_encoded_split

        model = TrainedModel.load(args.model)
        if not is_encoded_split(args.input):
            check_raw_logs(model, ", ".join(args.input))
            model.check_raw_input()
        return model

    def work(session, staging: Path, model: TrainedModel) -> dict:
        from afm_dist.spark.scoring import score_input

        return score_input(session, args.input, model, staging, clip=args.clip, batch_size=args.batch_size,
                           threads=args.threads, tables=cli.tables(args),
                           max_rejected_fraction=args.max_rejected_fraction)

    return cli.run_spark_job("score", args, work, prepare=prepare, report=_print_table,
                             spark=spark)


def _print_table(summary: dict, out: Path) -> None:
    rows = [(k, summary[k]) for k in ("rows", "rmse", "mae", "logloss", "auc", "rejected_rows", "seconds") if k in summary]
    width = max(len(k) for k, _ in rows)
    print(f"scores written to {out}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v:.6f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
