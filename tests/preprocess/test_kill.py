"""A job killed mid-write leaves no directory that training would accept."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afm_dist.dataset import COMPLETE_MARKER, DatasetError, require_complete

from .util import REPO


def start_job(data_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--schema", str(REPO / "schemas/frappe.yaml"),
           "--input", str(data_dir / "frappe" / "frappe_logs.tsv"), "--output", str(out), *extra]
    env = {**os.environ, "AFM_SPARK_MASTER": "local[1]", "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"}
    # A session of its own, so that the kill reaches the job's JVM too.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_mid_write(proc: subprocess.Popen, parent: Path, name: str, timeout: float = 240) -> Path:
    """SIGKILL the job once its staging directory holds a first written part."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            staging = [p for p in parent.glob(f".{name}.staging-*") if (p / "rejected").exists()]
            if staging:
                assert proc.poll() is None, "the job finished before it could be killed"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return staging[0]
            if proc.poll() is not None:
                pytest.fail(f"the job exited ({proc.returncode}) before writing: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        pytest.fail("the job did not start writing in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_killed_job_leaves_nothing_training_accepts(data_dir, tmp_path):
    out = tmp_path / "frappe"
    staging = kill_mid_write(start_job(data_dir, out), tmp_path, "frappe")
    assert not out.exists()
    with pytest.raises(DatasetError, match="no such data set directory"):
        require_complete(out)
    assert not (staging / COMPLETE_MARKER).exists()  # the leftover is marked incomplete
    with pytest.raises(DatasetError, match="did not finish"):
        require_complete(staging)

    # Killed while replacing a complete data set with --overwrite: the old one stays as it was.
    out.mkdir()
    (out / "metadata.json").write_text("{\"old\": true}")
    (out / COMPLETE_MARKER).write_text("complete\n")
    kill_mid_write(start_job(data_dir, out, "--overwrite"), tmp_path, "frappe")
    assert require_complete(out) == out
    assert sorted(p.name for p in out.iterdir()) == [COMPLETE_MARKER, "metadata.json"]
    assert (out / "metadata.json").read_text() == "{\"old\": true}"
