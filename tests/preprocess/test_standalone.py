"""The job on a real Spark standalone cluster (a master and one worker on 127.0.0.1, started
from the pyspark installation), launched through ./spark-submit.sh."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afm_dist.dataset import SPLITS, load_metadata

from .util import REPO, read_all

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: a cluster process exited with {p.returncode}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Start a standalone master and worker; stop them (by pid) when the module is done."""
    spark_class = SPARK_HOME / "bin" / "spark-class"
    if not spark_class.exists():
        pytest.fail(f"{spark_class} not found: the pyspark installation has no spark-class")
    tmp = tmp_path_factory.mktemp("cluster")
    port = free_port()
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_WORKER_DIR": str(tmp / "work"), "SPARK_LOG_DIR": str(tmp / "logs")}
    master_log, worker_log = tmp / "master.log", tmp / "worker.log"
    procs = []
    try:
        with open(master_log, "w") as log:
            procs.append(subprocess.Popen(
                [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(free_port())],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        url = f"spark://127.0.0.1:{port}"
        wait_for(lambda: "I have been elected leader" in master_log.read_text(), 120, "the master", procs)
        with open(worker_log, "w") as log:
            procs.append(subprocess.Popen(
                [str(spark_class), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--cores", "2", "--memory", "2g", "--webui-port", str(free_port()), url],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        wait_for(lambda: "Registering worker" in master_log.read_text(), 120, "the worker", procs)
        yield {"url": url, "env": env, "work": tmp / "work", "procs": procs}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_frappe_on_a_standalone_cluster(cluster, data_dir, tmp_path):
    out = tmp_path / "frappe"
    submit = REPO / "spark-submit.sh"
    launcher = ["bash", str(submit)] if submit.exists() else [str(Path(sys.executable).parent / "spark-submit"),
                                                                "--master", cluster["url"]]
    env = {**cluster["env"], "AFM_SPARK_MASTER": cluster["url"]}
    env.pop("SPARK_HOME")  # the wrapper finds its own Spark
    result = subprocess.run(
        [*launcher, "jobs/preprocess.py", "--schema", "schemas/frappe.yaml",
         "--input", str(data_dir / "frappe" / "frappe_logs.tsv"), "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    meta = load_metadata(out)
    assert meta.counts["input"] == 19063 and meta.counts["rejected"] == 0
    assert sum(meta.counts[s]["rows"] for s in SPLITS) == 3 * 19063
    rows = read_all(out)
    assert sum(len(rows[s]) for s in SPLITS) == 3 * 19063
    assert sum(r["label"] == 1.0 for s in SPLITS for r in rows[s]) == 19063
    # The work ran on the cluster's executor, not in the driver.
    apps = list(cluster["work"].glob("app-*"))
    assert apps, "no application ran on the worker"
    assert "stage: write splits" in result.stdout + result.stderr  # progress is shown
