"""jobs/train.py: the trainer as Horovod ranks inside a Spark application (horovod.spark.run, Gloo),
on local[2] and on the standalone cluster, launched with ./spark-submit.sh, against horovodrun's
run on the same data and seed (the planted_models fixture)."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from afm_dist.dataset import COMPLETE_MARKER
from afm_dist.model_dir import TrainedModel
from tests.conftest import REPO, SMALL_MODEL, job_module, spark_submit, wait_for
from tests.train.test_train import metrics

# The settings planted_models trained with under horovodrun -np 2 (tests/conftest.py).
PLANTED = ["--batch-size", "128", *SMALL_MODEL]


def job_args(data, model: str, out, *extra: str) -> list:
    return ["--data", data, "--model", model, "--output", out, "--num-proc", "2", *PLANTED, *extra]


def check(proc: subprocess.CompletedProcess) -> str:
    """The job's whole output (spark-submit sends the Python driver's stderr to its stdout)."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    return text


def test_refused_before_spark_starts(planted_data, tmp_path, capsys):
    job = job_module("train")
    out = tmp_path / "m"

    def argv(**flags) -> list[str]:
        given = {"--data": planted_data, "--model": "fm", "--output": out, "--num-proc": 2, **flags}
        return [str(a) for kv in given.items() for a in kv if a is not None]

    usage_errors = [({"--num-proc": 0}, "--num-proc must be at least 1"),
                    ({"--data": "hdfs://namenode/frappe"}, "--data hdfs://namenode/frappe: hdfs:// paths are not supported"),
                    ({"--output": "s3://bucket/fm"}, "--output s3://bucket/fm: s3:// paths are not supported"),
                    ({"--init-from": "gs://bucket/fm", "--model": "afm"}, "--init-from gs://bucket/fm: gs://"),
                    ({"--resume": None, "--overwrite": None}, "--resume continues the run in --output"),
                    ({"--min-proc": 3}, "--min-proc must be between 1 and --num-proc (2), got 3"),
                    ({"--elastic-timeout": 30}, "only with --min-proc (elastic)"),
                    ({"--commit-every": 0}, "--commit-every must be positive")]
    for flags, words in usage_errors:
        with pytest.raises(SystemExit) as exit_info:
            job.main(argv(**flags))
        assert exit_info.value.code == 2
        assert words in capsys.readouterr().err, flags
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("someone's work\n")
    refusals = [({"--data": tmp_path / "none"}, f"{tmp_path / 'none'}"),
                ({"--output": existing}, "already exists; pass --overwrite"),
                ({"--resume": None}, "no checkpoint.pt to resume from")]
    for flags, words in refusals:
        assert job.main(argv(**flags)) == 2, flags
        err = capsys.readouterr().err
        assert "train: error: " in err and words in err, (flags, err)
    assert not out.exists() and (existing / "notes.txt").exists()
    # Through the real launcher: one line, exit 2, no traceback.
    proc = spark_submit("train", argv(**{"--output": "hdfs://namenode/models/fm"}))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-4000:]
    assert "hdfs:// paths are not supported" in text and "Traceback" not in text


@pytest.mark.stack
def test_on_local2_resumed_with_file_uris_equals_horovodrun(planted_data, planted_models, tmp_path):
    """One epoch, then --resume to a second, paths given as file:// URIs: the same epochs as
    horovodrun's uninterrupted run with the same data, settings and seed."""
    out = tmp_path / "fm"
    first = check(spark_submit("train", job_args(f"file://{planted_data}", "fm", f"file://{out}", "--epochs", "1")))
    assert "[train] epoch 1/1 step" in first  # rank 0's progress lines reach the driver's output
    assert (out / COMPLETE_MARKER).exists()
    second = check(spark_submit("train", job_args(f"file://{planted_data}", "fm", f"file://{out}", "--epochs", "2",
                                                  "--resume")))
    assert f"resuming {out} after epoch 1" in second
    history, reference = metrics(out), metrics(planted_models["fm"])[:2]
    assert [h["epoch"] for h in history] == [1, 2]
    for ours, theirs in zip(history, reference):
        assert ours["val_rmse"] == pytest.approx(theirs["val_rmse"], rel=0.01), (history, reference)
    assert TrainedModel.load(out).best["epoch"] == min(history, key=lambda h: h["val_rmse"])["epoch"]


@pytest.mark.slow
def test_fm_then_afm_on_the_standalone_cluster(standalone_cluster, planted_data, planted_models, tmp_path):
    """The paper's recipe inside the cluster: validation RMSE within 1% of horovodrun's."""
    cluster, dirs = standalone_cluster, {"fm": tmp_path / "fm", "afm": tmp_path / "afm"}
    apps_before = set(cluster["work"].glob("app-*"))
    for name, extra in (("fm", []), ("afm", ["--init-from", str(dirs["fm"])])):
        text = check(spark_submit("train", job_args(planted_data, name, dirs[name], "--epochs", "8", *extra),
                                  env=cluster["env"]))
        assert "[train] done: best epoch" in text
        ours, theirs = TrainedModel.load(dirs[name]).best, TrainedModel.load(planted_models[name]).best
        assert ours["val_rmse"] == pytest.approx(theirs["val_rmse"], rel=0.01), (name, ours, theirs)
        assert len(metrics(dirs[name])) == len(metrics(planted_models[name]))  # early stopping alike
    # The ranks ran as tasks of the cluster's executors (one application per job).
    assert len(set(cluster["work"].glob("app-*")) - apps_before) == 2


def rank_processes(cluster_work: Path) -> list[psutil.Process]:
    """The Horovod processes that the cluster's executors started (their working directory is
    under the workers' directory)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        if "horovod.spark.task.gloo_exec_fn" in (p.info["cmdline"] or []) and \
                str(p.info["cwd"] or "").startswith(str(cluster_work)):
            found.append(p)
    return found


@pytest.mark.slow
def test_a_killed_rank_fails_the_spark_job(standalone_cluster, planted_data, tmp_path):
    cluster, out, log = standalone_cluster, tmp_path / "fm", tmp_path / "driver.log"
    with open(log, "w") as f:
        driver = subprocess.Popen(
            ["bash", str(REPO / "spark-submit.sh"), "jobs/train.py",
             *map(str, job_args(planted_data, "fm", out, "--epochs", "3", "--batch-size", "16", "--log-every", "0.2"))],
            cwd=REPO, env=cluster["env"], stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "[train] epoch 1/3 step" in log.read_text(), 240, "rank 0's first progress line", [driver])
        ranks = {p.environ().get("HOROVOD_RANK"): p for p in rank_processes(cluster["work"])}
        assert set(ranks) == {"0", "1"}, ranks
        ranks["1"].kill()
        killed = time.monotonic()
        driver.wait(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text()
    assert driver.returncode == 1, text[-6000:]
    assert elapsed < 60
    assert "train: error: training failed" in text and "Exit code" in text, text[-6000:]
    assert "epoch 1: train RMSE" not in text  # it died mid-epoch
    assert not (out / COMPLETE_MARKER).exists()
    with pytest.raises(Exception):
        TrainedModel.load(out)
    # Horovod ended the other rank too: nothing is left running on the executors.
    wait_for(lambda: not rank_processes(cluster["work"]), 60, "the surviving rank to end")


@pytest.mark.slow
def test_an_elastic_job_goes_on_when_a_rank_is_killed(standalone_cluster, planted_data, tmp_path):
    """jobs/train.py --min-proc 1 (horovod.spark.run_elastic): rank 1's process killed mid-epoch;
    the other rank goes back to the last commit and goes on alone; Spark retries the failed task
    (spark.task.maxFailures), whose new rank joins at a commit; the job ends complete, every epoch
    in full."""
    from afm_dist.dataset import TRAIN, load_metadata
    from afm_dist.loader import steps_per_epoch

    cluster, out, log = standalone_cluster, tmp_path / "fm", tmp_path / "driver.log"
    with open(log, "w") as f:
        driver = subprocess.Popen(
            ["bash", str(REPO / "spark-submit.sh"), "jobs/train.py",
             # 15 epochs: after the kill rank 0 alone runs an epoch in about half a second, and Spark's
             # retry of the task (a new executor process, imports, Horovod's rendezvous) joined 4-6
             # epochs later in the runs seen
             *map(str, job_args(planted_data, "fm", out, "--epochs", "15", "--patience", "15", "--l2-patience", "15",
                                "--batch-size", "64", "--log-every", "0.2",
                                "--min-proc", "1", "--elastic-timeout", "60", "--commit-every", "20"))],
            cwd=REPO, env=cluster["env"], stdout=f, stderr=subprocess.STDOUT)
    try:
        # past epoch 2's first commits (every 20 steps), before its end (219 steps)
        wait_for(lambda: re.search(r"\[train\] epoch 2/15 step ([3-9]\d|1\d\d)/", log.read_text()), 300,
                 "rank 0's progress in the middle of epoch 2", [driver])
        ranks = {p.environ().get("HOROVOD_RANK"): p for p in rank_processes(cluster["work"])}
        assert set(ranks) == {"0", "1"}, ranks
        ranks["1"].kill()
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text()
    assert driver.returncode == 0, text[-6000:]
    resumed = re.search(r"1 worker\(s\) now: going on from epoch 2, step (\d+) of", text)
    assert resumed and int(resumed.group(1)) % 20 == 0 and int(resumed.group(1)) >= 20, text[-6000:]
    # The retried task's rank (a new Horovod host name: each task attempt is a host of its own, so
    # the blacklist of the killed one does not keep it out) joins the world at a commit.
    assert re.search(r"2 worker\(s\) now: going on from (epoch \d+, step|the start of epoch \d+)",
                     text[resumed.end():]), text[-6000:]
    assert (out / COMPLETE_MARKER).exists()
    history = metrics(out)
    steps = steps_per_epoch(load_metadata(planted_data).split_rows(TRAIN), 64)
    assert [h["epoch"] for h in history] == list(range(1, 16)) and all(h["steps"] == steps for h in history)
    assert history[0]["workers"] == 2 and history[-1]["resets"] >= 2 and history[-1]["workers"] == 2
