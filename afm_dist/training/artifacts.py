"""What rank 0 writes into the model directory (afm_dist/model_dir.py describes its layout)."""
from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from afm_dist.dataset import COMPLETE_MARKER, HISTORY, VOCABULARY, DatasetMetadata, mark_complete
from afm_dist.io import OutputPathError, replace_directory, validate_output_path, write_text_atomic
from afm_dist.model_dir import CURVES, METRICS, MODEL_WEIGHTS, SGD_WEIGHTS, TrainedModel, save_weights
from afm_dist.plots import plot_training_curves
from afm_dist.training.averaging import TailAverage
from afm_dist.training.checkpoint import CHECKPOINT, open_checkpoint, save_checkpoint
from afm_dist.training.config import TrainConfig


@dataclass
class RunState:
    """Where a run stands after an epoch: what a checkpoint holds besides the weights."""

    epoch: int = 0  # the last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    best: dict[str, Any] = field(default_factory=lambda: {"val_rmse": float("inf"), "epoch": 0})
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    l2_step: int = 0  # where the run is in TrainConfig.l2_schedule
    # the --init-from FM (resolved) whose model the run's end scores as its floor (loop.keep_init_floor), or None
    floor_from: str | None = None

    def record(self, record: dict[str, Any]) -> bool:
        """Add an epoch's record; True when it is the best so far."""
        self.epoch = record["epoch"]
        self.history.append(record)
        if record["val_rmse"] < self.best["val_rmse"]:
            self.best, self.bad_epochs = {"val_rmse": record["val_rmse"], "epoch": record["epoch"],
                                          "metrics": record}, 0
            return True
        self.bad_epochs += 1
        return False


def check_output(cfg: TrainConfig) -> Path:
    """The model directory, checked but not touched: a checkpoint to ``--resume`` from, or a
    path a new run may (over)write. Returns it resolved.

    Raises:
        OutputPathError: no readable checkpoint to ``--resume`` from (missing, cut short, empty or
            not a checkpoint: ``open_checkpoint``), or an output that must not be written.
        UnsupportedSchemeError: the output is a URL other than ``file://``.
    """
    out = Path(cfg.output)
    if cfg.resume:
        open_checkpoint(out / CHECKPOINT)
        return out.resolve()
    return validate_output_path(cfg.output, overwrite=cfg.overwrite)


def prepare_output(cfg: TrainConfig) -> Path:
    """The model directory, checked (``check_output``) and created (rank 0, before any work).

    Raises:
        OutputPathError, UnsupportedSchemeError: see ``check_output``.
    """
    out = check_output(cfg)
    if cfg.resume:
        return out
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def describe(cfg: TrainConfig, meta: DatasetMetadata, model: torch.nn.Module, state: RunState, global_batch: int,
             *, finished: bool = False) -> TrainedModel:
    """The model directory's ``model.json`` for this run."""
    return TrainedModel(name=cfg.model, config=cfg.model_config, dataset=meta, num_parameters=model.num_parameters(),
                        train_config={**cfg.to_dict(), "global_batch": global_batch}, best=state.best,
                        finished=finished)


def write_epoch(out: Path, cfg: TrainConfig, meta: DatasetMetadata, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, state: RunState, tail: TailAverage, *, improved: bool,
                global_batch: int, best_is_mean: bool = False) -> None:
    """After each epoch: metrics.jsonl, the best weights and model.json when ``improved`` (the
    model's own, or ``tail``'s mean with ``best_is_mean``), the checkpoint (the model's own
    weights, and the mean so far), and the curves; every file replaced atomically."""
    # Rewritten whole from the history, so a resumed run never repeats or loses a line.
    write_text_atomic(out / METRICS, "".join(json.dumps(h) + "\n" for h in state.history))
    if improved:
        with tail.swapped_in(model) if best_is_mean else nullcontext():
            save_weights(model, out)
            describe(cfg, meta, model, state, global_batch).save(out)
    save_checkpoint({
        "model": cfg.model, "schema_hash": meta.schema_hash, "num_features": meta.num_features,
        "num_slots": meta.num_slots, "epoch": state.epoch, "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(), "history": state.history, "best": state.best,
        "bad_epochs": state.bad_epochs, "l2_step": state.l2_step, "average": tail.state_dict(),
        "floor_from": state.floor_from,
    }, out / CHECKPOINT)
    plot_training_curves(state.history, out / CURVES, title=f"{cfg.model.upper()} on {Path(cfg.data).name}")


def write_replacement(out: Path, cfg: TrainConfig, meta: DatasetMetadata, model: torch.nn.Module | None,
                      state: RunState, global_batch: int) -> None:
    """After the epochs, a model other than the best epoch's weights scored (``loop.sample_and_blend``'s
    Gibbs blend, ``loop.keep_init_floor``'s --init-from FM): metrics.jsonl with its record, and the
    curves; with ``model`` (where it is the best), its weights and model.json (``cfg``: its embedding
    size), the best epoch's weights moved to sgd.safetensors first (``restore_sgd`` puts them back).
    The checkpoint stays the last epoch's: a resumed run scores it again."""
    write_text_atomic(out / METRICS, "".join(json.dumps(h) + "\n" for h in state.history))
    if model is not None:
        if not (out / SGD_WEIGHTS).exists():  # once: an elastic run that restarts after it keeps the best epoch's
            (out / MODEL_WEIGHTS).replace(out / SGD_WEIGHTS)
        save_weights(model, out)
        describe(cfg, meta, model, state, global_batch).save(out)
    plot_training_curves(state.history, out / CURVES, title=f"{cfg.model.upper()} on {Path(cfg.data).name}")


def restore_sgd(out: Path) -> None:
    """A resumed run whose model was not its own weights (an FM's blend, an AFM's --init-from FM) goes
    on from its best epoch's weights: sgd.safetensors back to model.safetensors (``write_replacement``),
    the directory first unmarked
    complete (its model.json still describes the blend until the run ends)."""
    if (out / SGD_WEIGHTS).exists():
        (out / COMPLETE_MARKER).unlink(missing_ok=True)
        (out / SGD_WEIGHTS).replace(out / MODEL_WEIGHTS)


def write_final(out: Path, cfg: TrainConfig, meta: DatasetMetadata, model: torch.nn.Module, state: RunState,
                global_batch: int) -> None:
    """At the end: model.json marked finished, the data set's vocabulary and history bags (scoring
    raw logs needs them), then the completion marker, last: only when the best epoch's weights are
    there and every metric it reports is finite.

    Raises:
        FloatingPointError: no epoch gave weights with finite metrics; nothing is marked complete.
    """
    best = state.best.get("metrics", {})
    # val_rmse is the chosen weights' (the model's or, with tail averaging, the mean's): the other's may be anything
    finite = all(math.isfinite(v) for k, v in best.items()
                 if isinstance(v, float) and k not in ("seconds", "val_rmse_model", "val_rmse_average"))
    if not (out / MODEL_WEIGHTS).exists() or not best or not finite:
        raise FloatingPointError(f"{out}: no epoch produced weights with finite validation metrics "
                                 f"(best: {best or 'none'}); the model directory is not marked complete")
    describe(cfg, meta, model, state, global_batch, finished=True).save(out)
    for name in (VOCABULARY, HISTORY):  # what scoring raw logs reads (history/: only with a history field)
        if (Path(cfg.data) / name).is_dir():
            replace_directory(Path(cfg.data) / name, out / name)
    mark_complete(out)
