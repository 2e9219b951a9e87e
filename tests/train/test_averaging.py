"""Tail averaging of the weights (afm_dist/training/averaging.py) and the trainer's use of it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from afm_dist.batch import to_batch
from afm_dist.model_dir import TrainedModel
from afm_dist.models import ModelConfig, build_model
from afm_dist.training.averaging import TailAverage
from afm_dist.training.checkpoint import CHECKPOINT, load_checkpoint
from tests.conftest import SMALL_MODEL, run_horovod


def _set(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_mean_of_the_weights_swapped_in_and_out():
    model = build_model("afm", 20, 3, ModelConfig(embedding_dim=4, attention_factor=4))
    tail = TailAverage()
    for value in (1.0, 2.0, 6.0):
        _set(model, value)
        tail.add(model)
    with tail.swapped_in(model):
        for name, p in model.named_parameters():
            assert torch.allclose(p, torch.full_like(p, 3.0)), name  # (1 + 2 + 6) / 3
    for name, p in model.named_parameters():
        assert torch.equal(p, torch.full_like(p, 6.0)), name  # the model's own weights again
    # A checkpoint's copy goes on as the original would.
    again = TailAverage()
    again.load_state_dict(tail.state_dict(), device=torch.device("cpu"))
    _set(model, 7.0)
    tail.add(model), again.add(model)
    assert again.count == tail.count == 4
    for name, mean in tail.mean.items():
        assert torch.allclose(again.mean[name], mean) and torch.allclose(mean, torch.full_like(mean, 4.0)), name
    with pytest.raises(RuntimeError, match="before any add"):
        with TailAverage().swapped_in(model):
            pass
    # A checkpoint written before tail averaging existed has no mean: nothing averaged yet.
    old = TailAverage()
    old.load_state_dict(None)
    assert old.count == 0 and not old.started and old.mean == {}


def _metrics(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


def _val_rmse(model_dir: Path, split: Path) -> float:
    """The validation RMSE of the directory's model.safetensors, in plain torch."""
    info = TrainedModel.load(model_dir)
    batch = to_batch(pq.read_table(split))
    with torch.inference_mode():
        pred = info.build()(*batch.inputs).double().numpy()
    lo, hi = info.dataset.target_range()
    return float(np.sqrt(np.mean((np.clip(pred, lo, hi) - batch.label.double().numpy()) ** 2)))


def test_trainer_keeps_the_mean_where_it_is_better_and_resumes_it_exactly(planted_data, tmp_path):
    """From the first epoch at the last L2 strength that does not improve, each epoch scores the
    mean of the weights since then too; the better of the two is the epoch's validation RMSE and,
    when best, model.safetensors. A run stopped and resumed in the tail ends with the same mean.
    Two workers: each keeps its own mean (no collective), and the split evaluation of it across
    both must equal rank 0's written mean scored in plain torch."""
    common = ["-m", "afm_dist.train", "--data", str(planted_data), "--model", "fm", *SMALL_MODEL,
              "--batch-size", "128", "--lr", "0.6", "--l2-schedule", "3", "--patience", "20", "--seed", "3"]
    whole = tmp_path / "whole"
    proc = run_horovod(common + ["--output", str(whole), "--epochs", "7"], np=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = _metrics(whole)
    lowest, start = float("inf"), None  # start: the first epoch that did not improve, the tail's first
    for h in history:
        if h["val_rmse"] < lowest:
            lowest = h["val_rmse"]
        elif start is None:
            start = h["epoch"]
    assert start is not None and start + 2 <= 7, history  # the premise: epochs left to average
    for h in history:
        if h["epoch"] <= start:
            assert "averaged_epochs" not in h, h
        else:
            assert h["averaged_epochs"] == h["epoch"] - start + 1, h
            assert h["val_rmse"] == min(h["val_rmse_model"], h["val_rmse_average"]), h
            assert h["weights"] == ("average" if h["val_rmse_average"] < h["val_rmse_model"] else "model"), h
    best = min(history, key=lambda h: h["val_rmse"])
    assert best.get("weights") == "average", history  # the premise: the mean won on these epochs
    # The written weights are the mean that scored best: its RMSE, recomputed in plain torch.
    assert _val_rmse(whole, planted_data / "validation") == pytest.approx(best["val_rmse"], abs=1e-6)

    # Stopped at the tail's first epoch, then resumed one epoch at a time: the checkpoint's mean is
    # the mean of the epochs' own weights, and the curve is the uninterrupted run's.
    part, own = tmp_path / "part", []
    for epochs in range(start, start + 3):
        extra = ["--resume"] if epochs > start else []
        proc = run_horovod(common + ["--output", str(part), "--epochs", str(epochs), *extra], np=2)
        assert proc.returncode == 0, proc.stderr[-4000:]
        saved = load_checkpoint(part / CHECKPOINT)
        own.append({k: v.clone() for k, v in saved["model_state"].items()})
        assert saved["average"]["count"] == len(own)
        for name, mean in saved["average"]["mean"].items():
            expected = torch.stack([w[name] for w in own]).mean(0)
            assert torch.allclose(mean, expected, atol=1e-6), name
    assert [h["val_rmse"] for h in _metrics(part)] == pytest.approx(
        [h["val_rmse"] for h in history[:start + 2]], rel=1e-6)

    # --average-tail false: the model's own weights every epoch, as before.
    off = tmp_path / "off"
    proc = run_horovod(common + ["--output", str(off), "--epochs", str(start + 2), "--average-tail", "false"], np=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert all("averaged_epochs" not in h for h in _metrics(off))
    assert [h["val_rmse"] for h in _metrics(off)] == pytest.approx(
        [h.get("val_rmse_model", h["val_rmse"]) for h in history[:start + 2]], rel=1e-6)
    # ... also when a run resumed in the tail is told so: the model's own weights from there on.
    proc = run_horovod(common + ["--output", str(part), "--epochs", str(start + 3), "--resume",
                                 "--average-tail", "false"], np=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "averaged_epochs" not in _metrics(part)[-1]
