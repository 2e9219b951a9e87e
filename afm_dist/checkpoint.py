"""Atomic, weights-only checkpoints and trained-model directories.

A trained model directory (``--output`` of afm_dist.train) holds:

    model.safetensors  the best epoch's weights
    model.json         model name and configuration, feature layout, the data set's metadata,
                       training configuration and best validation metrics: all scoring needs
    metrics.jsonl      one JSON line per epoch
    curves.png         train and validation RMSE per epoch
    checkpoint.pt      the last epoch's full training state (for --resume), weights-only
    _AFM_COMPLETE      written last, when training finished
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from afm_dist.dataset import COMPLETE_MARKER, DatasetError

MODEL_WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training state so that an interrupted write leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    _fsync_replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state written by save_checkpoint; tensors and plain values only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    _fsync_replace(tmp, path)


def save_info(info: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str), encoding="utf-8")
    _fsync_replace(tmp, path)


def read_model_dir(model_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return (model.json content, weights) of a finished training run, or raise DatasetError."""
    d = Path(model_dir)
    if not (d / COMPLETE_MARKER).exists():
        raise DatasetError(
            f"{d}: not a finished model directory (no {COMPLETE_MARKER}); train with afm_dist.train "
            "or finish the run with --resume."
        )
    info = json.loads((d / MODEL_INFO).read_text(encoding="utf-8"))
    weights = load_file(str(d / MODEL_WEIGHTS))
    return info, weights


def model_from_parts(info: dict[str, Any], weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Rebuild a trained model (eval mode) from model.json content and its weights."""
    from afm_dist.models import ModelConfig, build_model

    model = build_model(info["model"], info["num_features"], info["num_slots"], ModelConfig(**info["model_config"]))
    model.load_state_dict(weights)
    return model.eval()


def load_trained_model(model_dir: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best model of a finished training run, in eval mode, and its model.json content."""
    info, weights = read_model_dir(model_dir)
    return model_from_parts(info, weights), info
