"""Train inside the Spark application: the trainer of ``python -m afm_dist.train``, run as
``--num-proc`` Horovod ranks that are Spark tasks (``horovod.spark.run``, Gloo), each reading its
Petastorm shard. For clusters without SSH between nodes or a host list (YARN, Kubernetes, Spark
standalone)::

    ./spark-submit.sh jobs/train.py --data out/frappe --model fm --output out/models/fm --num-proc 2
    ./spark-submit.sh jobs/train.py --data out/frappe --model afm --init-from out/models/fm \\
        --output out/models/afm --num-proc 2

    AFM_SPARK_MASTER=yarn AFM_SPARK_SUBMIT_ARGS="--num-executors 4 --executor-cores 1" \\
        ./spark-submit.sh jobs/train.py --data /shared/frappe --model afm ... --num-proc 4

The Spark application needs ``--num-proc`` task slots at once (one core per task by default).
Every other flag is the trainer's, with the same meaning, outputs, progress lines (on the
driver's stderr), checkpoints, ``--resume`` and early stopping. Paths are local or shared-mount
paths (every executor sees them at the same place) or ``file://`` URIs.

With ``--min-proc N`` the run is elastic (``horovod.spark.run_elastic``): a rank whose task fails
or is killed does not end it while N ranks remain; the others go back to the last commit
(``--commit-every`` steps) and go on, and Spark retries the task, whose rank joins again.

Exit status: 0 done; 2 unusable flags (a global batch that ``--num-proc`` ranks cannot split
evenly included), data set, model layout or output path, refused before Spark starts (one line on stderr, no traceback); 1 a rank failed, refused its work or was killed
(Horovod ends the others; the rank's error is above the job's one line). A failed run leaves no
model directory that looks complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from afm_dist import cli
from afm_dist.dataset import DatasetMetadata
from afm_dist.inputs import InputError
from afm_dist.train import build_parser, config_from
from afm_dist.training import TrainConfig, check_run
from afm_dist.training.artifacts import check_output
from afm_dist.training.launch import RankFailed, run_on_spark


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    """The trainer's settings, and this launcher's own (``--num-proc``, ``--start-timeout``)."""
    p = build_parser(prog="jobs/train.py", description=__doc__)
    p.add_argument("--num-proc", type=int, required=True, help="Horovod ranks, one Spark task each")
    p.add_argument("--start-timeout", type=int, default=None,
                   help="seconds to wait for --num-proc concurrent Spark tasks (default 600)")
    p.add_argument("--min-proc", type=int, default=None,
                   help="elastic training (horovod.spark.run_elastic): a rank lost with its task does not end the "
                        "run as long as this many ranks remain; Spark retries the task and its rank joins again")
    p.add_argument("--elastic-timeout", type=int, default=None,
                   help="with --min-proc: seconds the run waits below --min-proc ranks before it fails (default 600)")
    ns = vars(p.parse_args(argv))
    launch = argparse.Namespace(num_proc=ns.pop("num_proc"), start_timeout=ns.pop("start_timeout"),
                                min_proc=ns.pop("min_proc"), elastic_timeout=ns.pop("elastic_timeout"))
    if launch.num_proc < 1:
        p.error(f"--num-proc must be at least 1, got {launch.num_proc}")
    if launch.start_timeout is not None and launch.start_timeout < 1:
        p.error(f"--start-timeout must be at least 1 second, got {launch.start_timeout}")
    if launch.min_proc is not None and not 1 <= launch.min_proc <= launch.num_proc:
        p.error(f"--min-proc must be between 1 and --num-proc ({launch.num_proc}), got {launch.min_proc}")
    if launch.elastic_timeout is not None and (launch.min_proc is None or launch.elastic_timeout < 1):
        p.error("--elastic-timeout takes a number of seconds of at least 1, and only with --min-proc (elastic)")
    return config_from(ns, p), launch


def main(argv: list[str] | None = None, *, spark=None) -> int:
    """Run the job; ``spark``: an existing session to use (and leave running), as tests do."""
    cfg, launch = parse_args(argv)

    def prepare() -> DatasetMetadata:  # the trainer's own checks, before Spark starts
        try:
            # elastic: the ranks split each batch as they are (their number changes), nothing to divide evenly
            meta = check_run(cfg, workers=None if launch.min_proc else launch.num_proc, elastic=bool(launch.min_proc))
        except ValueError as e:  # a model that cannot work on the data set's layout, a batch the ranks cannot split
            raise InputError(str(e)) from e
        check_output(cfg)
        return meta

    def work(session, output: Path, meta: DatasetMetadata) -> dict:
        slots = session.sparkContext.defaultParallelism
        if session.sparkContext.master.startswith("local") and slots < launch.num_proc:
            raise InputError(f"--num-proc {launch.num_proc}: the Spark master {session.sparkContext.master} runs "
                             f"{slots} tasks at once; use local[{launch.num_proc}] (AFM_SPARK_MASTER) or a lower "
                             "--num-proc")
        run_on_spark(cfg, meta, launch.num_proc, start_timeout=launch.start_timeout, min_proc=launch.min_proc,
                     elastic_timeout=launch.elastic_timeout)
        return {}

    return cli.run_spark_job("train", argparse.Namespace(output=cfg.output, overwrite=cfg.overwrite), work,
                             prepare=prepare, spark=spark, publish=False, failures=(RankFailed,))


if __name__ == "__main__":
    sys.exit(main())
