"""A Spark standalone cluster on this machine: a master and workers on 127.0.0.1, started from the
pyspark installation. For the tests and benchmarks that run jobs as on a real cluster (executors
in their own JVMs and working directories, tasks scheduled by the master)::

    with standalone_cluster(Path("/tmp/cluster"), workers=2, cores=1) as cluster:
        subprocess.run(["./spark-submit.sh", "jobs/train.py", ...], env=cluster.env)

Web UIs bind to free ports on 127.0.0.1 only through SPARK_LOCAL_IP; nothing listens elsewhere.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator


@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:PORT
    env: dict[str, str]  # the environment to launch ./spark-submit.sh in (AFM_SPARK_MASTER set)
    work: Path  # the workers' directory: one app-* directory per application
    procs: list[subprocess.Popen] = field(default_factory=list)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate: Callable[[], bool], timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        exited = [p.returncode for p in procs if p.poll() is not None]
        if exited:
            raise RuntimeError(f"{what}: a cluster process exited with {exited[0]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.5)


@contextmanager
def standalone_cluster(directory: Path, *, workers: int = 2, cores: int = 1, memory: str = "2g",
                       timeout: float = 120) -> Iterator[Cluster]:
    """Start a master and ``workers`` workers of ``cores`` cores each; stop them (by pid) on exit.
    Logs and the workers' directory go under ``directory``.

    Raises:
        RuntimeError: pyspark has no ``bin/spark-class``, or a process exited or was not ready
            within ``timeout`` seconds (its log is under ``directory``).
    """
    import pyspark

    spark_home = Path(pyspark.__file__).resolve().parent
    spark_class = spark_home / "bin" / "spark-class"
    if not spark_class.exists():
        raise RuntimeError(f"{spark_class} not found: the pyspark installation has no spark-class")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_WORKER_DIR": str(directory / "work"), "SPARK_LOG_DIR": str(directory / "logs")}
    url, master_log = f"spark://127.0.0.1:{port}", directory / "master.log"
    procs: list[subprocess.Popen] = []
    try:
        with open(master_log, "w") as log:
            procs.append(subprocess.Popen(
                [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(free_port())], env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait(lambda: "I have been elected leader" in master_log.read_text(), timeout, "the master", procs)
        for i in range(workers):
            with open(directory / f"worker{i}.log", "w") as log:
                procs.append(subprocess.Popen(
                    [str(spark_class), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                     "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()), url],
                    env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait(lambda: master_log.read_text().count("Registering worker") >= workers, timeout, "the workers", procs)
        launch_env = {**env, "AFM_SPARK_MASTER": url}
        launch_env.pop("SPARK_HOME")  # ./spark-submit.sh finds its own Spark
        yield Cluster(url=url, env=launch_env, work=directory / "work", procs=procs)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
