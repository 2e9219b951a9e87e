"""A job whose output filesystem fills up while it writes (bugcases2 case 15) ends with one line
naming the output and "No space left on device", exit status 1, and leaves nothing behind: the
real ./spark-submit.sh job, its output on a 1 MiB tmpfs mounted in a private mount namespace
(``unshare``: root or unprivileged user namespaces)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from afm_dist.io import storage_failure
from tests.conftest import REPO, SMALL_MODEL, horovod_command


def _unshare_works(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True)
    return probe.returncode == 0


def test_storage_failure_finds_the_cause_in_the_chain():
    try:
        try:
            raise OSError(28, "No space left on device", "/data/out/part-0")
        except OSError as inner:
            raise RuntimeError("basic_ios::clear: iostream error") from inner
    except RuntimeError as e:
        assert storage_failure(e) == "/data/out/part-0: No space left on device"
    java = RuntimeError("An error occurred while calling o57.parquet.\n: org.apache.spark.SparkException: Job "
                        "aborted.\nCaused by: java.io.IOException: No space left on device\n\tat ...")
    assert storage_failure(java) == "No space left on device"
    assert storage_failure(ValueError("a bug")) is None


def test_preprocessing_onto_a_full_disk_fails_in_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    if not _unshare_works(full):
        pytest.skip("no private mount namespace here (unshare -rm): cannot fill a filesystem without root")
    logs = tmp_path / "ratings.tsv"
    logs.write_text("user\titem\tdaytime\tweekday\tcity\tdevice\trating\n" + "".join(
        f"u{i % 97}\ti{i % 89}\td{i % 5}\tw{i % 7}\tc{i % 11}\tv{i % 3}\t{1 + i % 5}\n" for i in range(20000)))
    out = full / "data"
    script = (f"mount -t tmpfs -o size=1m tmpfs {full} && "
              f"dd if=/dev/zero of={full}/filler bs=1k count=900 status=none && "
              f"bash {REPO}/spark-submit.sh jobs/preprocess.py --schema {REPO}/schemas/synthetic.yaml "
              f"--input {logs} --output {out}; rc=$?; echo left: $(ls -A {full}); exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "AFM_SPARK_MASTER": "local[2]"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    # spark-submit merges the Python driver's stderr into its stdout; Spark's own log is on stderr.
    *_, error, left = proc.stdout.strip().splitlines()
    assert error.startswith(f"preprocess: error: writing {out} failed: No space left on device"), proc.stdout[-3000:]
    assert left == "left: filler"  # the staging directory is gone: nothing looks complete
    assert "Traceback" not in proc.stdout and "\tat org.apache" not in proc.stderr, proc.stderr[-3000:]


def test_training_onto_a_full_disk_fails_in_one_line(planted_data, tmp_path):
    """horovodrun -np 2 with the model directory on a disk with 24 KiB left: rank 0's first
    checkpoint does not fit; its one line says so (not torch's "unexpected pos"), nothing complete."""
    full = tmp_path / "full"
    full.mkdir()
    if not _unshare_works(full):
        pytest.skip("no private mount namespace here (unshare -rm): cannot fill a filesystem without root")
    out = full / "fm"
    cmd, env = horovod_command(["-m", "afm_dist.train", "--data", str(planted_data), "--model", "fm",
                                "--output", str(out), "--epochs", "2", *SMALL_MODEL])
    script = (f"mount -t tmpfs -o size=256k tmpfs {full} && "
              f"dd if=/dev/zero of={full}/filler bs=1k count=232 status=none && "
              f"{shlex.join(cmd)}; rc=$?; echo left: $(ls -A {out} 2>/dev/null); exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "error: writing" in line]
    assert lines and f"error: writing {out} failed: " in lines[0] and "No space left on device" in lines[0], \
        proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "unexpected pos" not in proc.stdout + proc.stderr
    # Rank 1 stops in one line too, unless horovodrun ended it first: never with a traceback.
    assert "HorovodInternalError" not in proc.stdout + proc.stderr and "<stderr>:Traceback" not in proc.stdout
    assert "_AFM_COMPLETE" not in proc.stdout.strip().splitlines()[-1]  # the "left:" listing
