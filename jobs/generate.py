"""Write synthetic interaction logs drawn from a planted ground-truth AFM (see afm_dist.synthetic).

    ./spark-submit.sh jobs/generate.py --rows 300000 --output out/synthetic_logs [--seed 2017]

    # a log with millions of distinct features (about 4M users and 2M items occur):
    ./spark-submit.sh jobs/generate.py --rows 8000000 --users 5000000 --items 2000000 --uniform \
        --output out/big_logs

Output: tab-separated text files with a header line (columns user, item, daytime, weekday, city,
device, rating), read by schemas/synthetic.yaml; the directory appears only when complete
(with Spark's _SUCCESS and afm-dist's completion marker).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from afm_dist import cli
from afm_dist.inputs import InputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs/generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, required=True, help="number of log lines")
    cli.add_output(p)
    p.add_argument("--seed", type=int, default=2017)
    p.add_argument("--partitions", type=int, default=None, help="output files (default: scales with rows)")
    p.add_argument("--users", type=int, default=None, help="distinct users to draw from (default: rows / 40)")
    p.add_argument("--items", type=int, default=None, help="distinct items to draw from (default: rows / 100)")
    p.add_argument("--uniform", action="store_true",
                   help="every user and item equally likely (default: Zipf-like popularity)")
    p.add_argument("--malformed-fraction", type=float, default=0.0,
                   help="share of lines with a non-number rating (to exercise rejected-row handling)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    args = parse_args(argv)
    start = time.time()

    def prepare() -> None:
        for flag, value in (("--rows", args.rows), ("--users", args.users), ("--items", args.items)):
            if value is not None and value < 1:
                raise InputError(f"{flag} must be at least 1")
        if not 0.0 <= args.malformed_fraction <= 1.0:
            raise InputError("--malformed-fraction must be between 0 and 1")

    def work(session, staging: Path, _) -> None:
        from afm_dist.synthetic import generate_logs

        logs = generate_logs(session, args.rows, seed=args.seed, partitions=args.partitions,
                             malformed_fraction=args.malformed_fraction, users=args.users, items=args.items,
                             uniform=args.uniform)
        logs.write.mode("overwrite").option("header", True).option("sep", "\t").csv(str(staging))

    def report(_, out: Path) -> None:
        print(f"generate: {args.rows:,} rows in {time.time() - start:.1f}s -> {out}", file=sys.stderr)

    return cli.run_spark_job("generate", args, work, prepare=prepare, report=report, spark=spark)


if __name__ == "__main__":
    sys.exit(main())
