"""Distributed training with the real launcher (horovodrun -np 2 --gloo) on preprocessed data."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from afm_dist.training.checkpoint import CHECKPOINT, load_checkpoint
from afm_dist.dataset import COMPLETE_MARKER, METADATA_FILE
from afm_dist.model_dir import TrainedModel
from tests.conftest import REPO, SMALL_MODEL as SMALL, horovod_command, run_horovod



def train_args(data: Path, model: str, out: Path, *extra: str) -> list[str]:
    return ["-m", "afm_dist.train", "--data", str(data), "--model", model, "--output", str(out), *SMALL, *extra]


def metrics(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.mark.stack
def test_fm_then_afm_from_fm_on_two_workers(planted_models):
    fm_dir, afm_dir = planted_models["fm"], planted_models["afm"]  # trained by the fixture, 2 workers
    for d in (fm_dir, afm_dir):
        assert (d / COMPLETE_MARKER).exists()
        assert (d / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (d / "vocabulary").is_dir()  # scoring raw logs needs nothing but the model directory
        info = json.loads((d / "model.json").read_text())
        assert info["dataset"]["num_features"] == info["num_features"]
        history = metrics(d)
        first = 0 if d == afm_dir else 1  # --init-from: epoch 0 is the model before its first step
        assert [h["epoch"] for h in history] == list(range(first, first + len(history)))
        assert info["best"]["val_rmse"] == pytest.approx(min(h["val_rmse"] for h in history))
    fm_best = min(h["val_rmse"] for h in metrics(fm_dir))
    afm_history = metrics(afm_dir)
    # Initialised from FM, AFM starts exactly as its FM (attention_scale "pairs"): the same
    # validation RMSE before its first step, computed by the AFM's own attention network.
    assert afm_history[0]["val_rmse"] == pytest.approx(fm_best, rel=1e-5)
    assert afm_history[0]["val_rmse"] < metrics(fm_dir)[0]["val_rmse"]
    # Keeping the best epoch from epoch 0 on, AFM never ends above its FM on validation.
    assert min(h["val_rmse"] for h in afm_history) <= fm_best * (1 + 1e-5)


def test_one_and_two_workers_agree_after_one_epoch(planted_data, tmp_path):
    # A small learning rate keeps one epoch close to the full-batch trajectory, so what is left of
    # the difference is the order rows are drawn in, not the number of workers.
    common = ["--epochs", "1", "--batch-size", "64", "--seed", "5", "--interaction-dropout", "0", "--lr", "0.01"]
    one = run_horovod(train_args(planted_data, "fm", tmp_path / "one", *common), np=1)
    two = run_horovod(train_args(planted_data, "fm", tmp_path / "two", *common), np=2)
    check(one), check(two)
    r1, r2 = metrics(tmp_path / "one")[0]["val_rmse"], metrics(tmp_path / "two")[0]["val_rmse"]
    untrained = float(np.std(pq.read_table(planted_data / "validation", columns=["label"])["label"].to_numpy()))
    assert r1 < 0.95 * untrained, ("one epoch should learn something", r1, r2, untrained)
    # Same global batch, same seed: the two runs differ only in the order rows are drawn.
    assert abs(r1 - r2) / r1 < 0.01, (r1, r2)
    # rank 0's time waiting for the gradient exchange: none with one worker (no collective), some
    # of the training steps' time with two, which is part of the epoch's
    e1, e2 = metrics(tmp_path / "one")[0], metrics(tmp_path / "two")[0]
    assert e1["exchange_wait_s"] == 0.0 and 0.0 < e1["train_seconds"] < e1["seconds"], e1
    assert 0.0 < e2["exchange_wait_s"] < e2["train_seconds"] < e2["seconds"], e2
    # what rank 0 sent a step: its allgather buffer, padded (small): 2 row counts (int64, 2 floats
    # each), FM's bias, then per table (linear k = 1, embeddings k = 16) min(32 M, N) slots of an id
    # (2 floats) and a row
    meta = json.loads((planted_data / METADATA_FILE).read_text())
    slots = min(32 * meta["num_slots"], meta["num_features"])
    assert e1["exchange_values"] == 0.0
    assert e2["exchange_values"] == 2 * 2 + 1 + slots * (2 + 1) + slots * (2 + 16), (e2, slots)


def test_uneven_shards_finish(planted_data, tmp_path):
    data = tmp_path / "uneven"
    shutil.copytree(planted_data, data)
    train = pq.read_table(data / "train")
    shutil.rmtree(data / "train")
    (data / "train").mkdir()
    # One big row group and a few tiny ones: one rank holds almost everything.
    n = train.num_rows
    cuts = [0, n - 30, n - 20, n - 10, n]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        pq.write_table(train.slice(a, b - a), data / "train" / f"part-{i}.parquet", row_group_size=n)
    proc = run_horovod(train_args(data, "fm", tmp_path / "m", "--epochs", "2", "--batch-size", "256"), timeout=240)
    check(proc)
    assert len(metrics(tmp_path / "m")) == 2


def test_killed_rank_fails_fast_and_resume_finishes(planted_data, tmp_path):
    out = tmp_path / "m"
    args = train_args(planted_data, "afm", out, "--epochs", "4", "--batch-size", "128", "--patience", "10")
    cmd, env = horovod_command(args + ["--lr", "0.03"], np=2)
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not (out / CHECKPOINT).exists():
        assert launcher.poll() is None and time.time() < deadline, "no checkpoint after the first epoch"
        time.sleep(0.2)
    time.sleep(0.5)  # into the second epoch
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
             if "afm_dist.train" in " ".join(p.cmdline()) and "horovodrun" not in " ".join(p.cmdline())]
    assert len(ranks) >= 2, [p.cmdline() for p in ranks]
    killed_at = time.time()
    ranks[-1].send_signal(signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.time() - killed_at < 60, "the job must stop soon after a rank dies"
    assert not (out / COMPLETE_MARKER).exists()
    done_before = load_checkpoint(out / CHECKPOINT)["epoch"]
    assert 1 <= done_before < 4

    check(run_horovod(args + ["--resume"], np=2))  # without --lr: the run goes on at its own rate
    history = metrics(out)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert (out / COMPLETE_MARKER).exists()
    assert TrainedModel.load(out).train_config["lr"] == 0.03
    assert load_checkpoint(out / CHECKPOINT)["optimizer_state"]["param_groups"][0]["lr"] == 0.03


def test_l2_schedule_moves_on_at_a_plateau_from_the_best_weights(planted_data, tmp_path):
    """The regularisation path (the default): --l2-patience epochs whose validation RMSE does not
    improve send the run back to the best epoch's weights, on with the next L2 strength; patience
    counts only at the last strength."""
    schedule = [3.0, 0.1, 0.0]  # 3: so strong that the first strength soon stops improving
    common = ["--batch-size", "128", "--lr", "0.3", "--l2-schedule", ",".join(map(str, schedule)),
              "--l2-patience", "1", "--patience", "2", "--seed", "3"]
    first = tmp_path / "whole"
    check(run_horovod(train_args(planted_data, "fm", first, "--epochs", "10", *common), np=1))
    history = metrics(first)
    strengths = [h["embedding_l2"] for h in history]
    assert [h["linear_l2"] for h in history] == strengths
    assert len(set(strengths)) >= 2, history  # the premise: a plateau within the run
    best, moved_at = float("inf"), None
    for h, after in zip(history, history[1:]):
        improved, best = h["val_rmse"] < best, min(best, h["val_rmse"])
        step = schedule.index(h["embedding_l2"])
        if not improved and step + 1 < len(schedule):
            assert after["embedding_l2"] == schedule[step + 1], history
            moved_at = moved_at or h["epoch"]
        else:
            assert after["embedding_l2"] == h["embedding_l2"], history
    # Tail averaging starts only at the last strength, with its first epoch that does not improve.
    lowest, tail_start = float("inf"), None
    for h in history:
        if tail_start is not None:
            assert h.get("averaged_epochs") == h["epoch"] - tail_start + 1, history
            assert h["embedding_l2"] == schedule[-1], history
        else:
            assert "averaged_epochs" not in h, history
            if h["val_rmse"] >= lowest and h["embedding_l2"] == schedule[-1]:
                tail_start = h["epoch"]
        lowest = min(lowest, h["val_rmse"])
    # The same run stopped at the first move: its checkpoint, what the next epoch starts from, holds
    # the best epoch's weights, not the last epoch's, and the next strength.
    stopped = tmp_path / "stopped"
    check(run_horovod(train_args(planted_data, "fm", stopped, "--epochs", str(moved_at), *common), np=1))
    assert [h["val_rmse"] for h in metrics(stopped)] == pytest.approx(
        [h["val_rmse"] for h in history[:moved_at]], rel=1e-6)
    saved, best_weights = load_checkpoint(stopped / CHECKPOINT), load_file(str(stopped / "model.safetensors"))
    assert saved["l2_step"] == 1 and saved["best"]["epoch"] < moved_at
    for name, tensor in best_weights.items():
        assert torch.equal(saved["model_state"][name], tensor), name


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
    """SIGKILL a process while it writes a large checkpoint over a small one."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys, torch\n"
        "from afm_dist.training.checkpoint import save_checkpoint\n"
        "p = sys.argv[1]\n"
        "save_checkpoint({'epoch': 1, 'w': torch.arange(10.0)}, p)\n"
        "print('first', flush=True)\n"
        "save_checkpoint({'epoch': 2, 'w': torch.zeros(400_000_000)}, p)\n"  # 1.6 GB: takes a while
        "print('second', flush=True)\n")
    ckpt = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen([str(Path(os.sys.executable)), str(script), str(ckpt)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "first"
    deadline = time.time() + 60
    while not any(p.name.startswith(".checkpoint.pt.tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1
    assert state["w"].tolist() == list(range(10))


def test_nan_loss_stops_with_epoch_and_step(planted_data, tmp_path):
    proc = run_horovod(train_args(planted_data, "fm", tmp_path / "m", "--epochs", "2", "--lr", "1e30",
                                  "--optimizer", "adam"), np=2)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "non-finite loss" in text and "at epoch 1 step" in text, text[-3000:]
    assert not (tmp_path / "m" / COMPLETE_MARKER).exists()


def test_refuses_incomplete_data_and_mismatched_resume(planted_data, tmp_path):
    from afm_dist.train import main

    broken = tmp_path / "broken"
    shutil.copytree(planted_data, broken)
    (broken / COMPLETE_MARKER).unlink()
    assert main(train_args(broken, "fm", tmp_path / "a", "--epochs", "1")[2:]) == 2

    out = tmp_path / "b"
    assert main(train_args(planted_data, "fm", out, "--epochs", "1")[2:]) == 0
    other = tmp_path / "other"
    shutil.copytree(planted_data, other)
    meta = json.loads((other / METADATA_FILE).read_text())
    meta["schema_hash"] = "0" * 64
    (other / METADATA_FILE).write_text(json.dumps(meta))
    rc = main(train_args(other, "fm", out, "--epochs", "2", "--resume")[2:])
    assert rc == 2
    assert len(metrics(out)) == 1  # nothing was trained on the wrong data
