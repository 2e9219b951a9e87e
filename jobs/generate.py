"""Write synthetic interaction logs drawn from a planted ground-truth AFM (see afm_dist.synthetic).

    ./spark-submit.sh jobs/generate.py --rows 300000 --output out/synthetic_logs [--seed 2017]

Output: tab-separated text files with a header line (columns user, item, daytime, weekday, city,
device, rating), read by schemas/synthetic.yaml; a _SUCCESS marker (Spark's) and the directory
appear only when complete.
"""
from __future__ import annotations

import argparse
import sys
import time

from afm_dist.paths import publish_directory, validate_output_path
from afm_dist.synthetic import generate_logs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, required=True, help="number of log lines")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=2017)
    p.add_argument("--partitions", type=int, default=None, help="output files (default: scales with rows)")
    p.add_argument("--malformed-fraction", type=float, default=0.0,
                   help="share of lines with a non-number rating (to exercise rejected-row handling)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)
    out = validate_output_path(args.output, overwrite=args.overwrite)
    from afm_dist.spark.session import build_session

    spark = spark or build_session("afm-dist-generate")
    start = time.time()
    with publish_directory(out, overwrite=args.overwrite) as staging:
        logs = generate_logs(spark, args.rows, seed=args.seed, partitions=args.partitions,
                             malformed_fraction=args.malformed_fraction)
        (logs.write.mode("overwrite").option("header", True).option("sep", "\t")
         .csv(str(staging)))
    print(f"generate: {args.rows:,} rows in {time.time() - start:.1f}s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
