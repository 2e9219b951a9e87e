"""Data-parallel training with Horovod over Petastorm shards of a preprocessed data set.

Launch (2 CPU workers on this machine; Gloo)::

    horovodrun -np 2 -H localhost:2 --gloo \\
        python -m afm_dist.train --data out/frappe --model fm --output out/models/fm
    horovodrun -np 2 -H localhost:2 --gloo \\
        python -m afm_dist.train --data out/frappe --model afm --init-from out/models/fm \\
        --output out/models/afm

On GPU hosts (one GPU per local rank, NCCL when Horovod has it)::

    horovodrun -np 8 -H node1:4,node2:4 python -m afm_dist.train --data ... --model afm ...

A single process without horovodrun also works (size 1). ``--batch-size`` is the *global* batch:
each of N workers takes batch/N rows a step and Horovod averages the gradients, so results do not
depend on the number of workers and the learning rate needs no scaling.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import numpy as np
import torch

from afm_dist import metrics as M
from afm_dist.checkpoint import (CHECKPOINT, CURVES, METRICS, MODEL_INFO, MODEL_WEIGHTS, load_checkpoint,
                                 read_model_dir, save_checkpoint, save_info, save_weights)
from afm_dist.dataset import (VOCABULARY, DatasetError, DatasetMetadata, load_metadata, mark_complete, split_path,
                              write_text_atomic)
from afm_dist.loader import eval_batches, steps_per_epoch, train_batches
from afm_dist.models import MODEL_NAMES, ModelConfig, build_model, init_from_fm
from afm_dist.paths import OutputPathError, validate_output_path
from afm_dist.plots import plot_training_curves


@dataclass
class TrainConfig:
    """Training settings. Defaults follow the paper where it gives them."""

    data: str
    model: str
    output: str
    init_from: str | None = None
    epochs: int = 20
    # Paper: Frappe 128, MovieLens 4096; a dataset schema may set its own (training.batch_size).
    batch_size: int | None = None
    optimizer: str = "adagrad"  # the paper's mini-batch Adagrad; adam as an option
    lr: float = 0.05
    loss: str = "squared"  # the paper's squared loss; "logistic" for binary log loss
    patience: int = 3  # early stopping on validation RMSE
    # lambda of the L2 penalty lambda * ||W||^2 on AFM's attention network (added to the mean loss).
    attention_l2: float = 0.0
    seed: int = 2017
    shuffle_buffer: int = 100_000
    clip_predictions: bool = True  # bound predictions to the training target range, as the paper's evaluation
    log_every: float = 10.0  # seconds between progress lines on rank 0
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    model_config: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m afm_dist.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output directory of jobs/preprocess.py")
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--init-from", help="a trained FM model directory whose embeddings and linear part initialise this model")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the schema's, else 128)")
    p.add_argument("--optimizer", choices=["adagrad", "adam"], default=TrainConfig.optimizer)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--loss", choices=["squared", "logistic"], default=TrainConfig.loss)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--attention-l2", type=float, default=TrainConfig.attention_l2,
                   help="lambda of the L2 penalty lambda*||W||^2 on AFM's attention weights W, added to the "
                        "batch's MEAN loss. The paper's reference code adds it to the batch's sum of squared "
                        "errors (both halved), so its lambda equals this one times the global batch size: "
                        "the paper's lambda 8 at batch 128 is --attention-l2 0.0625")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--shuffle-buffer", type=int, default=TrainConfig.shuffle_buffer)
    p.add_argument("--no-clip-predictions", dest="clip_predictions", action="store_false")
    p.add_argument("--log-every", type=float, default=TrainConfig.log_every)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / local workers)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_bool, default=value, metavar="BOOL")
        elif isinstance(value, (int, float)):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
        elif isinstance(value, tuple):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_ints, default=value, metavar="N,N,...")
    ns = vars(p.parse_args(argv))
    model_config = ModelConfig(**{f.name: ns.pop(f.name) for f in dataclasses.fields(ModelConfig) if f.name in ns})
    return TrainConfig(**ns, model_config=model_config)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _parse_ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e


class Progress:
    """Rank 0's progress lines: epoch, step, examples/s, loss, ETA."""

    def __init__(self, enabled: bool, every: float, steps: int, global_batch: int, epochs: int):
        self.enabled, self.every, self.steps, self.global_batch, self.epochs = enabled, every, steps, global_batch, epochs
        self.last = time.time()

    def step(self, epoch: int, step: int, loss: float, epoch_start: float) -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every and step != self.steps):
            return
        self.last = now
        elapsed = now - epoch_start
        rate = step * self.global_batch / max(elapsed, 1e-9)
        eta = (self.steps - step) * elapsed / max(step, 1)
        log(f"epoch {epoch}/{self.epochs} step {step}/{self.steps} ({100 * step / self.steps:.0f}%) "
            f"{rate:,.0f} examples/s loss {loss:.4f} epoch ETA {_hms(eta)}")


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def _default_batch_size(meta: DatasetMetadata) -> int:
    return int(meta.schema.get("training", {}).get("batch_size", 128))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))


def _check_resume_compatible(state: dict[str, Any], cfg: TrainConfig, meta: DatasetMetadata) -> None:
    problems = []
    if state["model"] != cfg.model:
        problems.append(f"model {state['model']!r} in the checkpoint, {cfg.model!r} asked for")
    if state["schema_hash"] != meta.schema_hash:
        problems.append("the data set's schema hash differs from the one the run was trained on")
    if state["num_features"] != meta.num_features or state["num_slots"] != meta.num_slots:
        problems.append(f"feature layout differs ({state['num_features']} features / {state['num_slots']} slots "
                        f"in the checkpoint, {meta.num_features} / {meta.num_slots} in {cfg.data})")
    if problems:
        raise DatasetError(f"{cfg.output}/{CHECKPOINT}: cannot resume: " + "; ".join(problems)
                           + ". Resume with the same --data and --model, or start a new --output.")


def _prepare_output(cfg: TrainConfig) -> Path:
    out = Path(cfg.output)
    if cfg.resume:
        if not (out / CHECKPOINT).exists():
            raise OutputPathError(f"{out}: no {CHECKPOINT} to resume from; run without --resume to start")
        return out.resolve()
    out = validate_output_path(cfg.output, overwrite=cfg.overwrite)
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one model; every Horovod rank calls this. Returns the best epoch's metrics."""
    # Horovod: initialise, then pin one GPU per local rank when there are GPUs.
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        device = torch.device("cuda", hvd.local_rank())
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // hvd.local_size()))

    meta = load_metadata(cfg.data)
    binary_target = meta.target.get("kind") == "implicit" or cfg.loss == "logistic"
    clip = (float(meta.target["min"]), float(meta.target["max"])) if cfg.clip_predictions and "min" in meta.target else None
    global_batch = cfg.batch_size or _default_batch_size(meta)
    if global_batch % size:
        raise ValueError(f"--batch-size {global_batch} is not divisible by the {size} workers")
    local_batch = global_batch // size
    train_rows = meta.split_rows("train")
    steps = steps_per_epoch(train_rows, global_batch)

    # Rank 0 checks and prepares the output; the others learn its verdict, so all fail together.
    out, problem = Path(cfg.output).resolve(), None
    if rank == 0:
        try:
            out = _prepare_output(cfg)
        except OutputPathError as e:
            problem = str(e)
    problem = hvd.broadcast_object(problem, root_rank=0, name="output-check")
    if problem:
        raise OutputPathError(problem)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, meta.num_features, meta.num_slots, cfg.model_config)
    if cfg.init_from:
        fm_info, fm_weights = read_model_dir(cfg.init_from)
        if fm_info["model"] != "fm":
            raise DatasetError(f"{cfg.init_from}: --init-from needs an FM model directory, it holds {fm_info['model']!r}")
        fm = build_model("fm", fm_info["num_features"], fm_info["num_slots"], ModelConfig(**fm_info["model_config"]))
        fm.load_state_dict(fm_weights)
        init_from_fm(model, fm)
    model.to(device)

    opt_cls = torch.optim.Adagrad if cfg.optimizer == "adagrad" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr)

    start_epoch, history = 1, []
    best = {"val_rmse": math.inf, "epoch": 0}
    bad_epochs = 0
    if cfg.resume:
        state = load_checkpoint(out / CHECKPOINT)
        _check_resume_compatible(state, cfg, meta)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        start_epoch, history, best, bad_epochs = state["epoch"] + 1, state["history"], state["best"], state["bad_epochs"]
        _set_rng_state(state["rng"])
        if rank == 0:
            log(f"resuming {out} after epoch {state['epoch']} (best epoch {best['epoch']}, val RMSE {best['val_rmse']:.4f})")

    # Horovod: every rank starts from rank 0's parameters and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    # Horovod: gradients are averaged across ranks by the wrapped optimizer.
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    # Dropout draws differ per rank, as they would across the rows of one large batch.
    torch.manual_seed(cfg.seed * 7919 + rank + 1000 * start_epoch)

    if rank == 0:
        log(f"{cfg.model}: {model.num_parameters():,} parameters; {meta.num_features:,} features, {meta.num_slots} slots; "
            f"{size} worker(s) on {device.type}; global batch {global_batch}; {steps} steps/epoch; {train_rows:,} train rows")

    progress = Progress(rank == 0, cfg.log_every, steps, global_batch, cfg.epochs)
    attention_l2 = getattr(model, "l2_penalty", None)
    lam = cfg.attention_l2
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        epoch_start = time.time()
        train_sums = M.new_sums(device)
        for step, batch in enumerate(train_batches(split_path(cfg.data, "train"), rank=rank, size=size,
                                                   batch_size=local_batch, steps=steps, seed=cfg.seed + epoch,
                                                   shuffle_buffer=cfg.shuffle_buffer), start=1):
            batch = batch.to(device)
            optimizer.zero_grad()
            scores = model(batch.ids, batch.vals, batch.mask)
            loss = _loss(scores, batch.label, cfg.loss)
            if attention_l2 is not None and lam > 0:
                loss = loss + lam * attention_l2()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch} step {step} on rank {rank}; "
                    "lower --lr or check the data for extreme values")
            loss.backward()
            optimizer.step()
            M.accumulate(train_sums, scores, batch.label, clip=None, binary=False)
            progress.step(epoch, step, loss.item(), epoch_start)
        train_m = M.finish(hvd.allreduce(train_sums, op=hvd.Sum, name="train-sums"), binary=False)
        val_m = evaluate(model, split_path(cfg.data, "validation"), rank=rank, size=size, device=device,
                         clip=clip, binary=binary_target)
        if val_m.get("rows", 0) != meta.split_rows("validation"):  # every row, exactly once
            raise DatasetError(f"{cfg.data}/validation: evaluation read {val_m.get('rows', 0)} rows, the metadata "
                               f"says {meta.split_rows('validation')}; the split changed since preprocessing")
        record = {"epoch": epoch, "train_rmse": train_m["rmse"], "val_rmse": val_m["rmse"],
                  **{f"val_{k}": v for k, v in val_m.items() if k != "rmse"},
                  "seconds": time.time() - epoch_start,
                  "examples_per_s": steps * global_batch / (time.time() - epoch_start)}
        history.append(record)
        improved = record["val_rmse"] < best["val_rmse"]
        if improved:
            best, bad_epochs = {"val_rmse": record["val_rmse"], "epoch": epoch, "metrics": record}, 0
        else:
            bad_epochs += 1
        if rank == 0:
            log(f"epoch {epoch}: train RMSE {record['train_rmse']:.4f}, validation RMSE {record['val_rmse']:.4f}"
                + ("  (best)" if improved else f"  (no improvement for {bad_epochs})")
                + f", {record['seconds']:.1f}s")
            # Rewritten whole from the history, so a resumed run never repeats or loses a line.
            write_text_atomic(out / METRICS, "".join(json.dumps(h) + "\n" for h in history))
            if improved:
                save_weights(model, out / MODEL_WEIGHTS)
                save_info(_model_info(cfg, meta, model, best, global_batch), out / MODEL_INFO)
            save_checkpoint({
                "model": cfg.model, "schema_hash": meta.schema_hash, "num_features": meta.num_features,
                "num_slots": meta.num_slots, "epoch": epoch, "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(), "history": history, "best": best,
                "bad_epochs": bad_epochs, "rng": _rng_state(), "data_position": {"epoch": epoch, "seed": cfg.seed},
            }, out / CHECKPOINT)
            plot_training_curves(history, out / CURVES, title=f"{cfg.model.upper()} on {Path(cfg.data).name}")
        if bad_epochs >= cfg.patience:
            if rank == 0:
                log(f"early stop: validation RMSE has not improved for {cfg.patience} epochs")
            break
    if rank == 0:
        save_info(_model_info(cfg, meta, model, best, global_batch, finished=True), out / MODEL_INFO)
        _copy_vocabulary(Path(cfg.data), out)
        mark_complete(out)
        log(f"done: best epoch {best['epoch']}, validation RMSE {best['val_rmse']:.4f} -> {out}")
    hvd.barrier()
    return best


def _copy_vocabulary(data_dir: Path, out: Path) -> None:
    """Scoring raw logs needs the training vocabulary: the model directory carries its own copy."""
    src, dst = data_dir / VOCABULARY, out / VOCABULARY
    if src.is_dir():
        tmp = out / f".{VOCABULARY}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)


def _loss(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "squared":
        return torch.nn.functional.mse_loss(scores, labels)
    return torch.nn.functional.binary_cross_entropy_with_logits(scores, (labels > 0).float())


@torch.no_grad()
def evaluate(model: torch.nn.Module, split_dir: Path, *, rank: int, size: int, device: torch.device,
             clip: tuple[float, float] | None, binary: bool) -> dict[str, float]:
    """Metrics of ``model`` over a whole split, each rank scoring its shard; one allreduce."""
    model.eval()
    sums = M.new_sums(device)
    for batch in eval_batches(split_dir, rank=rank, size=size):
        batch = batch.to(device)
        M.accumulate(sums, model(batch.ids, batch.vals, batch.mask), batch.label, clip=clip, binary=binary)
    # Horovod: add every rank's sums.
    return M.finish(hvd.allreduce(sums, op=hvd.Sum, name="eval-sums"), binary=binary)


def _model_info(cfg: TrainConfig, meta: DatasetMetadata, model: torch.nn.Module, best: dict, global_batch: int,
                finished: bool = False) -> dict[str, Any]:
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model_config"}
    return {
        "model": cfg.model,
        "model_config": dataclasses.asdict(cfg.model_config),
        "num_features": meta.num_features,
        "num_slots": meta.num_slots,
        "num_parameters": model.num_parameters(),
        "dataset": json.loads(meta.to_json()),
        "train_config": {**train_cfg, "global_batch": global_batch},
        "best": best,
        "finished": finished,
    }


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (DatasetError, OutputPathError, FloatingPointError, ValueError) as e:
        log(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
