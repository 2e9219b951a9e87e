"""The training state of a run (``checkpoint.pt`` in its model directory), for ``--resume``.

Written atomically every epoch by rank 0 and loaded weights-only (tensors and plain values; no
pickled code): model and optimizer state (Adagrad's accumulators), the history of epochs, the
early-stopping state and the place on the L2 path, and tail averaging's mean of the weights
(``average``: count and tensors; count 0 before the tail). No random number generator state:
the trainer seeds dropout and the data order by epoch, so a resumed epoch draws what it would
have drawn in one uninterrupted run.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from afm_dist.dataset import DatasetError, DatasetMetadata
from afm_dist.io import OutputPathError, atomic_path

CHECKPOINT = "checkpoint.pt"
# What ``resume`` reads from a checkpoint (afm_dist/training/artifacts.py writes them all).
CHECKPOINT_KEYS = ("model", "schema_hash", "num_features", "num_slots", "epoch", "model_state", "optimizer_state",
                   "history", "best", "bad_epochs")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training state so that an interrupted write leaves the previous file intact.

    Written through a Python file, so that a failing disk raises the ``OSError`` that says why
    (``torch.save`` to a path says only "unexpected pos")."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state written by save_checkpoint; tensors and plain values only.

    The tensors are memory-mapped from the file, not read into memory: ``load_state_dict`` then
    copies each into the model's own parameters, so resuming a run with a 10-million-row table
    holds one copy of it in memory, not two (the file's pages are page cache, reclaimable); a run
    resumed in tail averaging holds the mean besides, as the uninterrupted run did."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def open_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``load_checkpoint``, for ``--resume`` before Horovod starts: a file that is missing, cut
    short (an interrupted copy), empty or not a checkpoint of this trainer is refused in one line.
    Memory-mapped, so opening even a large checkpoint reads little of it.

    Raises:
        OutputPathError: naming the file, its size and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise OutputPathError(f"{path.parent}: no {CHECKPOINT} to resume from; run without --resume to start")
    advice = "restore it, or train again without --resume (--overwrite starts the directory afresh)"
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        raise OutputPathError(f"{path}: cannot be read ({e.strerror}); {advice}") from e
    try:
        state = load_checkpoint(path)
    # torch reports a cut or foreign file as any of these (an empty one as a misleading "mmap" error).
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise OutputPathError(f"{path} is truncated or not a checkpoint ({size} bytes); {advice}") from e
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise OutputPathError(f"{path} is not a checkpoint of afm_dist.train ({size} bytes, without "
                              f"{', '.join(missing)}); {advice}")
    return state


def checkpoint_embedding_dim(state: dict[str, Any]) -> int | None:
    """k of the checkpoint's feature embeddings (None for a model without that table)."""
    table = state["model_state"].get("embedding.embedding.weight")
    return None if table is None else int(table.shape[1])


def check_resume_compatible(state: dict[str, Any], model: str, data: str, meta: DatasetMetadata,
                            where: str, embedding_dim: int | None = None) -> None:
    """Refuse to resume a run with another model or data set than it was trained with.

    Raises:
        DatasetError: naming ``where`` (the checkpoint) and every difference.
    """
    problems = []
    if state["model"] != model:
        problems.append(f"model {state['model']!r} in the checkpoint, {model!r} asked for")
    if state["schema_hash"] != meta.schema_hash:
        problems.append("the data set's schema hash differs from the one the run was trained on")
    if state["num_features"] != meta.num_features or state["num_slots"] != meta.num_slots:
        problems.append(f"feature layout differs ({state['num_features']} features / {state['num_slots']} slots "
                        f"in the checkpoint, {meta.num_features} / {meta.num_slots} in {data})")
    saved_dim = checkpoint_embedding_dim(state)
    if embedding_dim is not None and saved_dim is not None and saved_dim != embedding_dim:
        problems.append(f"--embedding-dim {saved_dim} in the checkpoint, {embedding_dim} asked for")
    if problems:
        raise DatasetError(f"{where}: cannot resume: " + "; ".join(problems)
                           + ". Resume with the same --data, --model and --embedding-dim, or start a new --output.")
