"""Turn raw logs into the training data set, as a dataset schema declares.

Launch (the wrapper runs .venv/bin/spark-submit --master "${AFM_SPARK_MASTER:-local[*]}"
--py-files <zip of afm_dist> with the Spark UI off)::

    ./spark-submit.sh jobs/preprocess.py --schema schemas/frappe.yaml \\
        --input ../shared/data/frappe/frappe_logs.tsv --output out/frappe

    ./spark-submit.sh jobs/preprocess.py --schema schemas/movielens_ratings.yaml \\
        --input ../shared/data/movielens-latest-small/ratings.csv \\
        --table movies=../shared/data/movielens-latest-small/movies.csv --output out/ml-ratings

On a standalone cluster: ``AFM_SPARK_MASTER=spark://HOST:7077 ./spark-submit.sh ...`` (the
input and output paths must be visible to every worker at the same path).

``out/frappe`` then holds train/ validation/ test/ vocabulary/ rejected/, metadata.json and,
written last, the completion marker (see ``afm_dist.dataset``). The directory is built aside and
moved into place only when complete; an existing one is replaced only with ``--overwrite``.
Exit status: 0 done, 2 bad schema, input or arguments (found before Spark starts), 1 too many
malformed rows or another failure.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from afm_dist import preprocess
from afm_dist.dataset import mark_complete
from afm_dist.paths import OutputPathError, publish_directory, validate_output_path
from afm_dist.schema import SchemaError, load_schema

log = logging.getLogger("afm_dist.jobs.preprocess")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs/preprocess.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--schema", required=True, help="dataset schema (YAML), e.g. schemas/frappe.yaml")
    p.add_argument("--input", required=True, nargs="+", help="log files or directories")
    p.add_argument("--table", action="append", default=[], metavar="NAME=PATH",
                   help="file(s) of a side table the schema declares (repeat per table; PATH may be a directory)")
    p.add_argument("--output", required=True, help="data set directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--seed", type=int, default=None, help="override the schema's seed")
    p.add_argument("--max-rejected-fraction", type=float, default=0.01,
                   help="fail when more than this fraction of input rows is malformed (default 0.01)")
    p.add_argument("--rows-per-group", type=int, default=preprocess.Options.rows_per_group,
                   help="Parquet rows per row group of the training split (default %(default)s)")
    p.add_argument("--min-row-groups", type=int, default=preprocess.Options.min_row_groups,
                   help="row groups per split at least (default %(default)s)")
    p.add_argument("--partitions", type=int, default=None,
                   help="spark.sql.shuffle.partitions of the small aggregations (default: 2 per core)")
    return p.parse_args(argv)


def _tables(specs: Sequence[str]) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise preprocess.InputError(f"--table {spec!r}: expected NAME=PATH, e.g. movies=movies.csv")
        tables.setdefault(name, []).append(path)
    return tables


def main(argv: Sequence[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("afm_dist").setLevel(logging.INFO)
    # Everything that can be checked without Spark is checked before the session starts.
    try:
        if not 0.0 <= args.max_rejected_fraction <= 1.0:
            raise preprocess.InputError("--max-rejected-fraction must be between 0 and 1")
        if args.rows_per_group < 1 or args.min_row_groups < 1:
            raise preprocess.InputError("--rows-per-group and --min-row-groups must be positive")
        schema = load_schema(args.schema)
        plan = preprocess.plan(schema, args.input, _tables(args.table))
        output = validate_output_path(args.output, overwrite=args.overwrite)
    except (SchemaError, preprocess.InputError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = preprocess.Options(
        seed=schema.seed if args.seed is None else args.seed,
        max_rejected_fraction=args.max_rejected_fraction,
        rows_per_group=args.rows_per_group,
        min_row_groups=args.min_row_groups,
    )
    log.info("schema %s (%s), %d input file(s), output %s, seed %d", schema.name, args.schema,
             len(plan.logs.paths), output, options.seed)

    owned = spark is None
    if owned:
        from afm_dist.spark.session import build_session

        conf = {"spark.sql.shuffle.partitions": str(args.partitions)} if args.partitions else {}
        spark = build_session("afm-preprocess", conf=conf)
        spark.sparkContext.setLogLevel("WARN")
        if not args.partitions:
            # The large shuffles set their own partition counts (one per output file); the
            # small aggregations (counts, vocabulary) need no more than a few per core.
            spark.conf.set("spark.sql.shuffle.partitions", str(max(4, 2 * spark.sparkContext.defaultParallelism)))
    elif args.partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(args.partitions))
    try:
        with publish_directory(output, overwrite=args.overwrite) as staging:
            log.info("writing into %s", staging)
            metadata = preprocess.build(spark, plan, staging, options)
            metadata.save(staging)
            mark_complete(staging)  # last: training and scoring refuse a directory without it
    except (preprocess.RejectedRowsError, preprocess.InputError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if owned:
            spark.stop()
    log.info("done: %s (%d features, %d slots)", output, metadata.num_features, metadata.num_slots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
