"""The two ways ranks are started, one training code path.

``run``: one rank's whole run (check, ``train``) with the trainer's exit statuses; every rank
runs it, whether horovodrun started it (``python -m afm_dist.train``) or a Spark task did.

``run_on_spark``: start N ranks as Spark tasks of the running application with
``horovod.spark.run`` (Gloo), as Horovod's Spark examples do: no SSH and no host list, the
executors are the hosts. Each task's Horovod process runs ``spark_rank`` (``run``) and reads its
own Petastorm shard. Horovod forwards a rank's output to the driver in 64 KiB blocks (its
``shutil.copyfileobj`` over the task service), which would hold back the progress lines until
the end, so a rank's Python-level stderr goes to the driver line by line over a socket of its own
(``driver_lines``); Horovod still forwards what native code writes.
"""
from __future__ import annotations

import io
import os
import socket
import socketserver
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from horovod.common.exceptions import HorovodInternalError

from afm_dist.dataset import DatasetError, DatasetMetadata
from afm_dist.io import OutputPathError, UnsupportedSchemeError, storage_failure
from afm_dist.training.config import TrainConfig
from afm_dist.training.loop import check_run, log, train

# What a run reports in one line (exit status 2): unusable data, output or settings, a diverged run.
TRAIN_ERRORS = (DatasetError, OutputPathError, UnsupportedSchemeError, FloatingPointError, ValueError)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class RankFailed(RuntimeError):
    """A rank started by ``run_on_spark`` failed or was killed; its own error is in the output above."""


def run(cfg: TrainConfig, meta: DatasetMetadata | None = None) -> int:
    """Train on this rank; return the exit status: 0 done, 2 unusable data, output or settings,
    or a diverged run, 1 a failure of the storage written to (``storage_failure``: a full disk,
    ...) or of another rank (this one then stops at its next collective operation); the error on
    stderr in one line, no traceback.

    ``meta``: what ``check_run(cfg)`` returned, when the caller already checked (else it checks
    here, before Horovod starts).
    """
    try:
        train(cfg, meta if meta is not None else check_run(cfg))
    except TRAIN_ERRORS as e:
        log(f"error: {e}")
        return EXIT_USAGE
    except HorovodInternalError:  # another rank failed first and said why above
        log("error: stopped because another rank failed (its error is above)")
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - a failing disk is reported in one line; anything else is a bug
        cause = storage_failure(e)
        if cause is None:
            raise
        log(f"error: writing {cfg.output} failed: {cause}; the run is not complete (free space, then train "
            "again, or --resume from the last checkpoint written)")
        return EXIT_FAILED
    return EXIT_OK


def spark_rank(cfg: TrainConfig, meta: DatasetMetadata, driver_stderr: tuple[str, int]) -> None:
    """The function each Spark task's Horovod process runs: ``run``, and a failed run ends the
    process with its status, so that Horovod stops the other ranks and the driver learns of it.
    ``driver_stderr``: where ``driver_lines`` listens; this rank's stderr goes there."""
    sys.stderr = LinesToDriver(driver_stderr, rank=os.environ.get("HOROVOD_RANK", "?"))
    status = run(cfg, meta)
    if status != EXIT_OK:
        sys.exit(status)


class LinesToDriver(io.TextIOBase):
    """A rank's ``sys.stderr`` under Spark: each complete line is sent to the driver at once,
    prefixed with the rank as horovodrun prefixes it."""

    def __init__(self, address: tuple[str, int], rank: str):
        self._socket = socket.create_connection(address, timeout=60)
        self._prefix, self._pending = f"[{rank}]<stderr>:", ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        if lines:
            self._socket.sendall("".join(f"{self._prefix}{line}\n" for line in lines).encode("utf-8"))
        return len(text)


class _PrintLines(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            sys.stderr.write(line.decode("utf-8", "replace"))
            sys.stderr.flush()


@contextmanager
def driver_lines(host: str) -> Iterator[tuple[str, int]]:
    """Print on the driver's stderr the lines that ranks send (``LinesToDriver``), while the block
    runs; yields the (host, port) it listens on."""
    server = socketserver.ThreadingTCPServer((host, 0), _PrintLines)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="afm-rank-lines", daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()


def run_on_spark(cfg: TrainConfig, meta: DatasetMetadata, num_proc: int, *, start_timeout: int | None = None,
                 min_proc: int | None = None, elastic_timeout: int | None = None) -> None:
    """Train with ``num_proc`` ranks, each a Spark task of the active SparkContext (Gloo).

    The ranks' Python is the executors' (``PYSPARK_PYTHON``, else the driver's); ``start_timeout``
    (seconds, default Horovod's 600 or ``HOROVOD_SPARK_START_TIMEOUT``) bounds the wait for
    ``num_proc`` concurrent task slots.

    ``min_proc``: elastic (``horovod.spark.run_elastic``): a rank whose task fails or is killed does
    not end the run; the others go back to the last commit and go on (afm_dist/training/elastic.py)
    while Spark retries the task, whose new rank joins at the next commit. The run ends when fewer
    than ``min_proc`` ranks remain for ``elastic_timeout`` seconds (default 600).

    Raises:
        RankFailed: a rank exited non-zero or was killed, or the tasks could not all start; the
            message is Horovod's (which process, its exit status), the rank's error is above it.
    """
    import horovod.spark
    from pyspark import SparkContext

    driver_host = SparkContext.getOrCreate().getConf().get("spark.driver.host", socket.gethostname())
    try:
        with driver_lines(driver_host) as lines:
            # Horovod: one Spark task per rank; what they write is forwarded to the driver.
            if min_proc is None:
                horovod.spark.run(spark_rank, args=(cfg, meta, lines), num_proc=num_proc, use_gloo=True,
                                  start_timeout=start_timeout, stdout=sys.stdout, stderr=sys.stderr,
                                  executable=os.environ.get("PYSPARK_PYTHON") or sys.executable)
            else:  # Horovod: elastic; its workers run with HOROVOD_ELASTIC=1, which the trainer reads
                horovod.spark.run_elastic(spark_rank, args=(cfg, meta, lines), num_proc=num_proc,
                                          min_num_proc=min_proc, max_num_proc=num_proc, start_timeout=start_timeout,
                                          elastic_timeout=elastic_timeout, stdout=sys.stdout, stderr=sys.stderr)
    except Exception as e:  # Horovod raises plain Exception / RuntimeError for a failed rank or Spark job
        message = " ".join(str(e).split())
        raise RankFailed(f"training failed: {message} (the rank's own error, if it had time to report one, "
                         "is above)") from e
