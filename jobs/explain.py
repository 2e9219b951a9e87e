"""Explain an AFM's predictions with its attention weights, on Spark executors.

    ./spark-submit.sh jobs/explain.py --model out/models/afm --input out/frappe/test --output out/explain

Output DIR (complete or absent):
  field_pairs.csv         mean attention of every field pair over the whole input, largest first
  attention_heatmap.png   the same as a field x field heatmap
  rows.csv, rows/         for a sample of ``--rows`` rows: every active feature pair with both raw
                          values, its attention weight a_ij, its interaction score
                          pᵀ(v_i ⊙ v_j) x_i x_j and their product (the paper's Table 1)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from afm_dist import cli
from afm_dist.dataset import DatasetError
from afm_dist.model_dir import TrainedModel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.model_job_parser("jobs/explain.py", __doc__, "an AFM model directory written by afm_dist.train")
    p.add_argument("--rows", type=int, default=20, help="rows explained pair by pair (a deterministic sample)")
    p.add_argument("--seed", type=int, default=2017, help="seed of the row sample")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)

    def prepare() -> TrainedModel:  # before Spark starts: every file of the model that this input needs
        from afm_dist.spark.model_input import check_raw_logs, is_encoded_split

        model = TrainedModel.load(args.model)
        if model.name != "afm":
            raise DatasetError(f"{args.model}: explanations need an AFM (attention weights); this is {model.name!r}")
        if not is_encoded_split(args.input):
            check_raw_logs(model, ", ".join(args.input))
            model.check_raw_input()
        return model

    def work(session, staging: Path, model: TrainedModel):
        from afm_dist.spark.explain import explain_input

        return explain_input(session, args.input, model, staging, rows=args.rows, seed=args.seed, threads=args.threads,
                             tables=cli.tables(args), max_rejected_fraction=args.max_rejected_fraction)

    return cli.run_spark_job("explain", args, work, prepare=prepare, report=_print_table, spark=spark)


def _print_table(table, out: Path) -> None:
    print(f"explanations written to {out}")
    print(f"  {'field pair':<30} {'mean attention':>14}")
    for pair in table[:10]:
        print(f"  {pair.field_a + ' x ' + pair.field_b:<30} {pair.mean_attention:>14.4f}")


if __name__ == "__main__":
    sys.exit(main())
