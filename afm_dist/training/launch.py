"""The two ways ranks are started, one training code path.

``run``: one rank's whole run (check, ``train``) with the trainer's exit statuses; every rank
runs it, whether horovodrun started it (``python -m afm_dist.train``) or a Spark task did.

``run_on_spark``: start N ranks as Spark tasks of the running application with
``horovod.spark.run`` (Gloo), as Horovod's Spark examples do: no SSH and no host list, the
executors are the hosts. Each task's Horovod process runs ``spark_rank`` (``run``), reads its own
Petastorm shard and streams its output to the driver's stdout and stderr.
"""
from __future__ import annotations

import os
import sys

from afm_dist.dataset import DatasetError, DatasetMetadata
from afm_dist.io import OutputPathError, UnsupportedSchemeError
from afm_dist.training.config import TrainConfig
from afm_dist.training.loop import check_run, log, train

# What a run reports in one line (exit status 2): unusable data, output or settings, a diverged run.
TRAIN_ERRORS = (DatasetError, OutputPathError, UnsupportedSchemeError, FloatingPointError, ValueError)
EXIT_OK, EXIT_USAGE = 0, 2


class RankFailed(RuntimeError):
    """A rank started by ``run_on_spark`` failed or was killed; its own error is in the output above."""


def run(cfg: TrainConfig, meta: DatasetMetadata | None = None) -> int:
    """Train on this rank; return the exit status: 0 done, 2 unusable data, output or settings,
    or a diverged run (the error on stderr in one line, no traceback).

    ``meta``: what ``check_run(cfg)`` returned, when the caller already checked (else it checks
    here, before Horovod starts).
    """
    try:
        train(cfg, meta if meta is not None else check_run(cfg))
    except TRAIN_ERRORS as e:
        log(f"error: {e}")
        return EXIT_USAGE
    return EXIT_OK


def spark_rank(cfg: TrainConfig, meta: DatasetMetadata) -> None:
    """The function each Spark task's Horovod process runs: ``run``, and a failed run ends the
    process with its status, so that Horovod stops the other ranks and the driver learns of it."""
    status = run(cfg, meta)
    if status != EXIT_OK:
        sys.exit(status)


def run_on_spark(cfg: TrainConfig, meta: DatasetMetadata, num_proc: int, *, start_timeout: int | None = None) -> None:
    """Train with ``num_proc`` ranks, each a Spark task of the active SparkContext (Gloo).

    The ranks' Python is the executors' (``PYSPARK_PYTHON``, else the driver's); ``start_timeout``
    (seconds, default Horovod's 600 or ``HOROVOD_SPARK_START_TIMEOUT``) bounds the wait for
    ``num_proc`` concurrent task slots.

    Raises:
        RankFailed: a rank exited non-zero or was killed, or the tasks could not all start; the
            message is Horovod's (which process, its exit status), the rank's error is above it.
    """
    import horovod.spark

    try:
        # Horovod: one Spark task per rank; their stdout and stderr are streamed to the driver's.
        horovod.spark.run(spark_rank, args=(cfg, meta), num_proc=num_proc, use_gloo=True, start_timeout=start_timeout,
                          stdout=sys.stdout, stderr=sys.stderr,
                          executable=os.environ.get("PYSPARK_PYTHON") or sys.executable)
    except Exception as e:  # Horovod raises plain Exception / RuntimeError for a failed rank or Spark job
        message = " ".join(str(e).split())
        raise RankFailed(f"training failed: {message} (the rank's own error, if it had time to report one, "
                         "is above)") from e
