"""Turn raw logs into the training data set, as a dataset schema declares.

Launch (the wrapper runs .venv/bin/spark-submit --master "${AFM_SPARK_MASTER:-local[*]}"
--py-files <zip of afm_dist> with the Spark UI off)::

    ./spark-submit.sh jobs/preprocess.py --schema schemas/frappe.yaml \\
        --input ../shared/data/frappe/frappe_logs.tsv --output out/frappe

    ./spark-submit.sh jobs/preprocess.py --schema schemas/movielens_ratings.yaml \\
        --input ../shared/data/movielens-latest-small/ratings.csv \\
        --table movies=../shared/data/movielens-latest-small/movies.csv --output out/ml-ratings

Given splits, as the paper's published files (one feature space, each row in its file's split)::

    ./spark-submit.sh jobs/preprocess.py --schema schemas/frappe_libfm.yaml \\
        --train frappe.train.libfm --validation frappe.validation.libfm --test frappe.test.libfm \\
        --output out/frappe-libfm

On a standalone cluster: ``AFM_SPARK_MASTER=spark://HOST:7077 ./spark-submit.sh ...`` (the
input and output paths must be visible to every worker at the same path).

``out/frappe`` then holds train/ validation/ test/ vocabulary/ rejected/, metadata.json and,
written last, the completion marker (see ``afm_dist.dataset``). The directory is built aside and
moved into place only when complete; an existing one is replaced only with ``--overwrite``.
Exit status (afm_dist/cli.py): 0 done; 2 bad schema, input or arguments (found before Spark
starts), or too many malformed rows (found while reading).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from afm_dist import cli, inputs, preprocess
from afm_dist.dataset import SPLITS, VALIDATION
from afm_dist.schema import load_schema

log = logging.getLogger("afm_dist.jobs.preprocess")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs/preprocess.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--schema", required=True, help="dataset schema (YAML), e.g. schemas/frappe.yaml")
    cli.add_input(p, help="log files or directories, split at random into train, validation and test in the "
                          "schema's proportions", raw_only_tables=False, required=False)
    given = p.add_argument_group("given splits (instead of --input: the paper's protocol with published files)")
    for name in SPLITS:
        given.add_argument(f"--{name}", nargs="+", default=[], metavar="PATH",
                           help=f"files or directories of the {name} split" + (
                               " (optional: without it, validation rows are drawn from the --train files)"
                               if name == VALIDATION else ""))
    cli.add_output(p, "data set directory to create")
    p.add_argument("--seed", type=int, default=None, help="override the schema's seed")
    cli.add_max_rejected_fraction(p)
    p.add_argument("--rows-per-group", type=int, default=preprocess.Options.rows_per_group,
                   help="Parquet rows per row group of the training split (default %(default)s)")
    p.add_argument("--min-row-groups", type=int, default=preprocess.Options.min_row_groups,
                   help="row groups per split at least (default %(default)s)")
    p.add_argument("--history-broadcast-ids", type=int, default=preprocess.Options.history_broadcast_ids,
                   help="a history field's bags are broadcast to the rows (no shuffle) when its owners x "
                        "(max_values + 1) is at most this; larger ones are joined by a shuffle (default %(default)s)")
    p.add_argument("--partitions", type=int, default=None,
                   help="spark.sql.shuffle.partitions of the small aggregations (default: 2 per core)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)

    def prepare() -> tuple[inputs.Plan, preprocess.Options]:  # everything checkable before Spark starts
        if args.rows_per_group < 1 or args.min_row_groups < 1:
            raise inputs.InputError("--rows-per-group and --min-row-groups must be positive")
        if args.history_broadcast_ids < 0:
            raise inputs.InputError("--history-broadcast-ids must be 0 (never broadcast) or more")
        if not args.input and not any(getattr(args, s) for s in SPLITS):
            raise inputs.InputError("give the logs with --input (split at random), or --train and --test "
                                    "(and optionally --validation) for given splits")
        schema = load_schema(args.schema)
        splits = {s: getattr(args, s) for s in SPLITS if getattr(args, s)}
        plan = inputs.plan(schema, args.input, cli.tables(args), splits=splits or None)
        options = preprocess.Options(seed=schema.seed if args.seed is None else args.seed,
                                     max_rejected_fraction=args.max_rejected_fraction,
                                     rows_per_group=args.rows_per_group, min_row_groups=args.min_row_groups,
                                     history_broadcast_ids=args.history_broadcast_ids)
        log.info("schema %s (%s), %d input file(s), output %s, seed %d", schema.name, args.schema,
                 len(plan.logs.paths), args.output, options.seed)
        return plan, options

    def work(session, staging, prepared):
        plan, options = prepared
        if args.partitions:
            session.conf.set("spark.sql.shuffle.partitions", str(args.partitions))
        log.info("writing into %s", staging)
        metadata = preprocess.build(session, plan, staging, options)
        metadata.save(staging)
        return metadata

    def report(metadata, output) -> None:
        log.info("done: %s (%d features, %d slots)", output, metadata.num_features, metadata.num_slots)

    def on_start(session) -> None:
        # The large shuffles set their own partition counts (one per output file); the small
        # aggregations (counts, vocabulary) need no more than a few per core.
        if not args.partitions:
            session.conf.set("spark.sql.shuffle.partitions", str(max(4, 2 * session.sparkContext.defaultParallelism)))

    return cli.run_spark_job("preprocess", args, work, prepare=prepare, report=report, spark=spark, on_start=on_start)


if __name__ == "__main__":
    sys.exit(main())
