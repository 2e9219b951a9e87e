"""Data-parallel training with Horovod over Petastorm shards, in the order of Horovod's examples:
initialise and pin the device, build the model and optimizer (``--init-from``, ``--resume``),
broadcast from rank 0, then per epoch ``train_epoch`` (each step averaging the gradients across
ranks: afm_dist/training/exchange.py) and ``evaluate``, and rank 0 writes the model directory
(afm_dist/training/artifacts.py). What a run holds between steps is a ``TrainingState``
(afm_dist/training/elastic.py): synced once in a static run, committed and restored under an
elastic horovodrun (``hvd.elastic.run``).

The model knows nothing of distribution: every distribution-specific line here says so with a
``# Horovod:`` comment.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from afm_dist import metrics as M
from afm_dist.batch import Batch
from afm_dist.dataset import TRAIN, VALIDATION, DatasetError, DatasetMetadata, load_metadata, split_path
from afm_dist.io import OutputPathError, check_apart
from afm_dist.loader import eval_batches, label_mean, steps_per_epoch, train_batches
from afm_dist.model_dir import MODEL_WEIGHTS, TrainedModel, check_weights
from afm_dist.models import ScoringModel, build_model, check_layout, init_from_fm
from afm_dist.training import artifacts, gibbs
from afm_dist.training.artifacts import RunState
from afm_dist.training.averaging import TailAverage
from afm_dist.training.checkpoint import CHECKPOINT, check_resume_compatible, load_checkpoint, open_checkpoint
from afm_dist.training.config import TrainConfig
from afm_dist.training.elastic import TrainingState, broadcast_optimizer_tensors, elastic_launch, local_batch_size
from afm_dist.training.exchange import GradientExchange, wait
from afm_dist.training.optimizers import build_optimizer


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


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


def loss_fn(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared error (the paper's), or binary log loss of sigmoid(scores) against label > 0."""
    if kind == "squared":
        return F.mse_loss(scores, labels)
    return F.binary_cross_entropy_with_logits(scores, (labels > 0).float())


# An epoch whose (unclipped) train RMSE exceeds this many times the target's range has diverged: a
# model that predicts the mean is within one range of every label.
DIVERGED_FACTOR = 1e3


def launched_workers() -> int:
    """The number of ranks this process was started among, before ``hvd.init``: horovodrun's
    ``HOROVOD_SIZE`` (set for each rank), mpirun's ``OMPI_COMM_WORLD_SIZE``, else 1."""
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def global_batch_size(cfg: TrainConfig, meta: DatasetMetadata) -> int:
    """``--batch-size``, else the data set schema's ``training.batch_size``, else 128."""
    return cfg.batch_size or int(meta.schema.get("training", {}).get("batch_size", 128))


def check_batch(cfg: TrainConfig, meta: DatasetMetadata, workers: int) -> int:
    """The global batch, which ``workers`` ranks must split evenly (each takes batch / workers rows).

    Raises:
        ValueError: naming the batch size, where it comes from, and a size that works.
    """
    batch = global_batch_size(cfg, meta)
    if batch % workers:
        given = (f"--batch-size {batch}" if cfg.batch_size else
                 f"the data set's batch size {batch} (training.batch_size of its schema; no --batch-size given)")
        raise ValueError(f"{given} is not divisible by the {workers} workers, which each take an equal share of "
                         f"every batch: pass --batch-size {-(-batch // workers) * workers} (a multiple of {workers}), "
                         "or another number of workers")
    return batch


def check_run(cfg: TrainConfig, workers: int | None = None, *, elastic: bool = False) -> DatasetMetadata:
    """What can be refused before Horovod starts: the data set, and the model against its layout.

    ``workers``: the ranks the run will have (``--num-proc``, a search's ``--np``); by default the
    ranks this process was started among (``launched_workers``: horovodrun's ``-np``). ``elastic``
    (or an elastic horovodrun's rank): the number of ranks changes and they split each global
    batch as they are (``local_batch_size``), so it need not divide evenly.

    Raises:
        DatasetError: the data set is unusable, or its train or validation split is empty.
        DatasetError: ``--loss logistic`` on a target that is not two classes (``check_loss``).
        OutputPathError: ``--output`` is, holds or lies inside ``--data`` or ``--init-from``; or, with
            ``--resume``, its ``checkpoint.pt`` is missing, cut short, empty or not a checkpoint.
        DatasetError: with ``--resume``, the checkpoint is of another model, data set or embedding
            size, the best epoch's ``model.safetensors`` that it goes back to is missing or cut
            short, or the FM the run started from no longer loads; an ``--init-from`` directory
            without its weights (``TrainedModel.load``).
        ValueError: the model cannot work on the data set's layout (e.g. AFM with one slot), the
            ``--init-from`` FM does not fit it (another embedding size or feature count), or the
            global batch is not divisible by the workers (``check_batch``).
    """
    check_apart(Path(cfg.output).expanduser().resolve(), cfg.input_paths())
    meta = load_metadata(cfg.data)
    check_layout(cfg.model, meta.num_features, meta.num_slots, meta.slot_groups())
    if not (elastic or elastic_launch()):
        check_batch(cfg, meta, workers if workers is not None else launched_workers())
    if cfg.init_from:
        fm = TrainedModel.load(cfg.init_from)
        if fm.name != "fm":
            raise DatasetError(f"{cfg.init_from}: --init-from needs an FM model directory, it holds {fm.name!r}")
        sizes = {fm.config.embedding_dim, fm.sgd_embedding_dim or fm.config.embedding_dim}
        if cfg.model_config.embedding_dim not in sizes or fm.num_features != meta.num_features:
            sgd = f" ({fm.sgd_embedding_dim}: its SGD weights)" if len(sizes) > 1 else ""
            raise ValueError(f"--init-from {cfg.init_from}: the FM has --embedding-dim "
                             f"{fm.config.embedding_dim}{sgd} and "
                             f"{fm.num_features} features; this run has --embedding-dim "
                             f"{cfg.model_config.embedding_dim} and {meta.num_features} features: train an FM of "
                             "this size on this data set first")
    if cfg.mcmc_sweeps:  # given: refused where it cannot work (by default it is off there)
        if elastic or elastic_launch():
            raise ValueError("--mcmc-sweeps: the sampler holds each rank's shard in memory and its chain cannot "
                             "lose a rank; run it without --min-np/--max-np (a static horovodrun), or --mcmc-sweeps 0")
    if cfg.resume:  # every rank, before Horovod starts: the checkpoint opens, and is of this run
        saved = open_checkpoint(Path(cfg.output) / CHECKPOINT)
        check_resume_compatible(saved, cfg.model, cfg.data, meta, where=f"{cfg.output}/{CHECKPOINT}",
                                embedding_dim=cfg.model_config.embedding_dim)
        if saved["history"]:  # an epoch ran, so its best weights were written: the L2 path and the end read them
            check_weights(Path(cfg.output), "restore it, or train again without --resume")
        if saved.get("floor_from"):  # its end scores the FM it started from (keep_init_floor)
            try:
                TrainedModel.load(saved["floor_from"])
            except DatasetError as e:
                raise DatasetError(f"{cfg.output}/{CHECKPOINT}: the run started from the FM in {saved['floor_from']}, "
                                   f"which its end compares with, and that no longer loads ({e}); restore it, or "
                                   "train again without --resume") from e
    check_loss(cfg.loss, meta)
    for split, why in ((TRAIN, "nothing to train on"),
                       (VALIDATION, "training needs it to keep the best epoch and stop early")):
        if meta.split_rows(split) == 0:
            raise DatasetError(f"{cfg.data}/{split}: the split is empty ({why}); preprocess again with a "
                               f"{split} fraction above 0 in the schema's split section, or with more rows")
    return meta


def check_loss(loss: str, meta: DatasetMetadata) -> None:
    """Refuse the logistic loss on a target that is not two classes: it reads label > 0 as a
    positive, so on star ratings every row is a positive and the model learns one class.

    Two classes: an implicit target (+1 / -1), or an explicit one whose labels range over 0/1 or
    -1/1 with both a positive and a non-positive label in the train split.

    Raises:
        DatasetError: naming the target's range and what to use instead.
    """
    if loss != "logistic" or meta.target.get("kind") == "implicit":
        return
    lo, hi = meta.target.get("min"), meta.target.get("max")
    if lo not in (-1.0, 0.0, 1.0) or hi not in (-1.0, 0.0, 1.0):  # the range of labels 0/1 or -1/1
        raise DatasetError(f"--loss logistic needs binary labels (an implicit target, or labels 0/1 or -1/1); this "
                           f"data set's target is explicit in [{lo:g}, {hi:g}]: use --loss squared")
    train = meta.counts.get(TRAIN, {})
    if not train.get("positive") or not train.get("negative"):
        raise DatasetError(f"--loss logistic: the train split has {train.get('positive', 0)} positive and "
                           f"{train.get('negative', 0)} non-positive labels: one class only, nothing to separate")


def check_diverged(epoch: int, train_m: dict[str, float], val_m: dict[str, float], meta: DatasetMetadata) -> None:
    """Stop a run whose model has diverged, before it is published.

    Raises:
        FloatingPointError: a metric is not finite, or the train RMSE is over ``DIVERGED_FACTOR``
            times the target's range; the message says what to change.
    """
    lo, hi = meta.target_range() or (0.0, 1.0)
    limit = DIVERGED_FACTOR * max(1.0, hi - lo)
    bad = {f"train {k}": v for k, v in train_m.items() if k != "rows" and not math.isfinite(v)}
    bad |= {f"validation {k}": v for k, v in val_m.items() if k != "rows" and not math.isfinite(v)}
    if not bad and train_m["rmse"] <= limit:
        return
    shown = ", ".join(f"{k} {v}" for k, v in bad.items()) or f"train RMSE {train_m['rmse']:.4g} (over {limit:g})"
    raise FloatingPointError(
        f"training diverged at epoch {epoch}: {shown}, for targets in [{lo:g}, {hi:g}]. Numeric fields with "
        "large raw values need 'standardize: true' or 'transform: log1p' in the schema; else lower --lr")


def train(cfg: TrainConfig, meta: DatasetMetadata | None = None) -> dict[str, Any]:
    """Train one model; every Horovod rank calls this. Returns the best epoch's metrics.

    ``meta``: what ``check_run(cfg)`` returned, when the caller already checked (else it checks).

    Started by an elastic horovodrun (``elastic_launch``), the epochs run under
    ``hvd.elastic.run``: a lost rank's survivors go back to the last commit and go on
    (afm_dist/training/elastic.py); otherwise a lost rank ends the run.

    Raises:
        DatasetError, OutputPathError, ValueError: unusable data, output or settings (all ranks).
        FloatingPointError: a non-finite loss, naming the epoch, step and rank.
    """
    # Horovod: initialise, then pin one GPU per local rank when there are GPUs.
    hvd.init()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        device = torch.device("cuda", hvd.local_rank())
    # Horovod: the cores are shared by the local ranks.
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // hvd.local_size()))

    meta = meta if meta is not None else check_run(cfg)
    elastic = elastic_launch()
    # The ranks split each global batch (local_batch_size); a static run checked that it divides
    # evenly (check_run), here against Horovod's size; an elastic run's size changes.
    global_batch = global_batch_size(cfg, meta) if elastic else check_batch(cfg, meta, hvd.size())

    torch.manual_seed(cfg.seed)  # the same initial parameters on every rank (rank 0's are broadcast anyway)
    model = build_model(cfg.model, meta.num_features, meta.num_slots, cfg.model_config, meta.slot_groups())
    if cfg.init_from:
        init_from(model, cfg.init_from, cfg.model_config.embedding_dim)
    elif cfg.w0_init == "mean" and not cfg.resume:  # a resumed run loads its checkpoint's w0 below
        centre_bias(model, cfg, meta)
    model.to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.lr)
    # Every rank keeps the same mean of the same weights (the ranks' weights are equal after each
    # step), so averaging needs no collective.
    tail = TailAverage()
    out = Path(cfg.output).resolve()
    run = resume(out, cfg, meta, model, optimizer, tail) if cfg.resume else RunState(floor_from=floor_source(cfg))
    state = TrainingState(model, optimizer, tail, run, commit_every=cfg.commit_every if elastic else 0)
    if elastic:
        # Horovod: no collective before this; each (re)start syncs rank 0's state, then runs.
        return hvd.elastic.run(_run)(state, cfg, meta, device, global_batch)
    # Horovod: every rank starts from rank 0's parameters, optimizer state and place in the run.
    state.sync()
    return _run(state, cfg, meta, device, global_batch)


def _run(state: TrainingState, cfg: TrainConfig, meta: DatasetMetadata, device: torch.device,
         global_batch: int) -> dict[str, Any]:
    """The run from where ``state`` stands (the start, a resumed checkpoint, or an elastic commit)."""
    rank, size = hvd.rank(), hvd.size()
    model, optimizer = state.model, state.optimizer
    steps = steps_per_epoch(meta.split_rows(TRAIN), global_batch)
    out = Path(cfg.output).resolve()
    if not state.prepared:
        # Horovod: rank 0 checks and prepares the output; the others learn its verdict, so all fail together.
        problem = None
        if rank == 0:
            try:
                out = artifacts.prepare_output(cfg)
            except OutputPathError as e:
                problem = str(e)
        problem = hvd.broadcast_object(problem, root_rank=0, name="output-check")
        if problem:
            raise OutputPathError(problem)
        state.prepared = True
        if rank == 0 and cfg.resume:
            artifacts.restore_sgd(out)
        if rank == 0 and state.run.epoch:
            log(f"resuming {out} after epoch {state.run.epoch} (best epoch {state.run.best['epoch']}, "
                f"val RMSE {state.run.best['val_rmse']:.4f})")
        if rank == 0:
            log(f"{cfg.model}: {model.num_parameters():,} parameters; {meta.num_features:,} features, "
                f"{meta.num_slots} slots; {size} worker(s) on {device.type}; global batch {global_batch}; "
                f"{steps} steps/epoch; {meta.split_rows(TRAIN):,} train rows"
                + (f"; elastic, a commit every {cfg.commit_every} steps" if state.commit_every else ""))
        state.commit_epoch()
    elif state.commit_every:  # elastic: the world changed; the state is the last commit's, synced
        state.resets += 1
        if rank == 0:
            where = (f"epoch {state.progress.epoch}, step {state.progress.steps} of {steps}"
                     if state.progress.epoch > state.run.epoch else f"the start of epoch {state.run.epoch + 1}")
            log(f"{size} worker(s) now: going on from {where} (the last commit)")
    # Gradients averaged across ranks before each step in one allgather of the batch's feature-table
    # rows and of the small dense gradients, and a grouped allreduce of large dense ones (exchange.py).
    # Made here: a change of the world changes how they travel.
    exchange = GradientExchange(model)
    progress = Progress(rank == 0, cfg.log_every, steps, global_batch, cfg.epochs)
    clip = meta.target_range() if cfg.clip_predictions else None
    binary = M.is_binary(meta.target, cfg.loss)
    tail = state.tail
    if cfg.init_from and not state.run.history:
        # Epoch 0: the model as initialised from the FM, before any step. An AFM starts as the FM
        # whose weights it took (attention_scale "pairs"), so keeping the best epoch from here on
        # means that its validation RMSE never ends above that FM's; where those were the SGD
        # weights of the directory's Gibbs blend, keep_init_floor scores the blend at the end.
        epoch_start = time.time()
        train_m = evaluate(model, split_path(cfg.data, TRAIN), device=device, clip=None, binary=False)
        val_m = evaluate(model, split_path(cfg.data, VALIDATION), device=device, clip=clip, binary=binary)
        check_diverged(0, train_m, val_m, meta)
        seconds = time.time() - epoch_start
        state.run.record({"epoch": 0, "train_rmse": train_m["rmse"], "val_rmse": val_m["rmse"],
                          **{f"val_{k}": v for k, v in val_m.items() if k != "rmse"},
                          "seconds": seconds, "examples_per_s": 0.0, "train_seconds": 0.0, "exchange_wait_s": 0.0,
                          "exchange_values": 0.0})
        if rank == 0:
            log(f"epoch 0 (initialised from {cfg.init_from}, before any step): train RMSE {train_m['rmse']:.4f}, "
                f"validation RMSE {val_m['rmse']:.4f}")
            artifacts.write_epoch(out, cfg, meta, model, optimizer, state.run, tail, improved=True,
                                  global_batch=global_batch)
        state.commit_epoch()
    # a run resumed after its early stop (in its sampling, or to sample again) trains no further epoch
    stopped = state.run.bad_epochs >= cfg.patience and not cfg.l2_path_goes_on(state.run.l2_step)
    for epoch in range(state.run.epoch + 1, cfg.epochs + 1 if not stopped else 0):
        state.progress.start(epoch)
        run = state.run
        epoch_start, commit_seconds_before = time.time(), state.commit_seconds
        l2 = cfg.l2_at(run.l2_step)
        train_m = train_epoch(model, optimizer, cfg, epoch, steps=steps, global_batch=global_batch,
                              device=device, progress=progress, exchange=exchange, l2=l2, state=state)
        train_seconds = time.time() - epoch_start  # the steps alone, before the validation
        val_m = evaluate(model, split_path(cfg.data, VALIDATION), device=device, clip=clip, binary=binary)
        if val_m.get("rows", 0) != meta.split_rows(VALIDATION):  # every row, exactly once
            raise DatasetError(f"{cfg.data}/{VALIDATION}: evaluation read {val_m.get('rows', 0)} rows, the metadata "
                               f"says {meta.split_rows(VALIDATION)}; the split changed since preprocessing")
        check_diverged(epoch, train_m, val_m, meta)
        at_last_strength = not cfg.l2_path_goes_on(run.l2_step)  # before this epoch's move on the path
        chosen, averaged = val_m, {}
        if cfg.average_tail and tail.started:  # tail averaging: the mean of the weights so far is a candidate too
            tail.add(model)
            with tail.swapped_in(model):
                mean_m = evaluate(model, split_path(cfg.data, VALIDATION), device=device, clip=clip, binary=binary)
            averaged = {"val_rmse_model": val_m["rmse"], "val_rmse_average": mean_m["rmse"],
                        "averaged_epochs": tail.count, "weights": "model"}
            if mean_m["rmse"] < val_m["rmse"]:
                chosen, averaged["weights"] = mean_m, "average"
        seconds = time.time() - epoch_start
        # elastic: the steps the epoch took in all, the world at its end, and the run's world changes so far
        elastic_m = ({"steps": state.progress.steps, "workers": size, "resets": state.resets,
                      "commit_s": state.commit_seconds - commit_seconds_before} if state.commit_every else {})
        improved = run.record({"epoch": epoch, "train_rmse": train_m["rmse"], "val_rmse": chosen["rmse"],
                               **{f"val_{k}": v for k, v in chosen.items() if k != "rmse"}, **averaged,
                               "embedding_l2": l2[0], "linear_l2": l2[1],
                               "seconds": seconds, "examples_per_s": steps * global_batch / seconds,
                               "train_seconds": train_seconds, "exchange_wait_s": train_m["exchange_wait_s"],
                               "exchange_values": train_m["exchange_values"],
                               **elastic_m})
        if rank == 0:
            shown = f"validation RMSE {val_m['rmse']:.4f}"
            if averaged:
                shown += f", of the mean of the last {tail.count} epochs' weights {averaged['val_rmse_average']:.4f}"
            log(f"epoch {epoch}: train RMSE {train_m['rmse']:.4f}, {shown}"
                + ("  (best)" if improved else f"  (no improvement for {run.bad_epochs})") + f", {seconds:.1f}s"
                + (f", L2 {l2[0]:g}" if cfg.scheduled_l2 else ""))
        if cfg.average_tail and not improved and at_last_strength and not tail.started:
            tail.add(model)  # the first epoch of the tail: the mean is scored from the next epoch on
            if rank == 0:
                log(f"averaging the weights of epoch {epoch} and those after it")
        if run.bad_epochs >= cfg.l2_patience and cfg.l2_path_goes_on(run.l2_step):
            # The regularisation path: back to the best epoch's weights, on with the next strength.
            run.l2_step, run.bad_epochs = run.l2_step + 1, 0
            rollback_to_best(model, out)
            if rank == 0:
                log(f"back to epoch {run.best['epoch']}'s weights; L2 of the embeddings and linear weights "
                    f"now {cfg.l2_schedule[run.l2_step]:g}")
        if rank == 0:
            artifacts.write_epoch(out, cfg, meta, model, optimizer, run, tail, improved=improved,
                                  best_is_mean=averaged.get("weights") == "average", global_batch=global_batch)
        state.commit_epoch()
        if run.bad_epochs >= cfg.patience and not cfg.l2_path_goes_on(run.l2_step):
            if rank == 0:
                log(f"early stop: validation RMSE has not improved for {cfg.patience} epochs")
            break
    run = state.run
    sweeps = cfg.sampling_sweeps(bool(state.commit_every))
    if sweeps:
        cfg, model = sample_and_blend(model, dataclasses.replace(cfg, mcmc_sweeps=sweeps), meta, run, out,
                                      global_batch, device, given=cfg.mcmc_sweeps is not None)
    if run.floor_from:
        cfg, model = keep_init_floor(model, cfg, meta, run, out, global_batch, device)
    if rank == 0:
        artifacts.write_final(out, cfg, meta, model, run, global_batch)
        kept = run.best.get("metrics", {})
        mean_of = (f" (the mean of epochs {run.best['epoch'] - kept['averaged_epochs'] + 1}-{run.best['epoch']})"
                   if kept.get("weights") == "average" else "")
        log(f"done: best epoch {run.best['epoch']}{mean_of}, validation RMSE {run.best['val_rmse']:.4f} -> {out}")
    # Horovod: no rank leaves before rank 0 has published the model directory.
    hvd.barrier()
    return run.best


def sample_and_blend(model: ScoringModel, cfg: TrainConfig, meta: DatasetMetadata, run: RunState, out: Path,
                     global_batch: int, device: torch.device, *, given: bool) -> tuple[TrainConfig, ScoringModel]:
    """After SGD: the Gibbs-sampled FM (afm_dist/training/gibbs.py), blended with the SGD FM's best
    weights at the weight u in {0, 1/8, ..., 1} that validation chooses (u: the SGD FM's share), one
    record in the run's history; where the blend beats the best epoch on validation, rank 0 writes it
    as the model (an FM of embedding_dim + mcmc_dim * mcmc_samples). Returns the settings and model
    the run ends with (the SGD FM's where the blend does not win, or where the sampler does not apply).

    Raises:
        gibbs.SamplerNotApplicable: ``given`` (--mcmc-sweeps), and a row holds a feature twice; by
            default the run ends with the SGD FM instead.
    """
    rank, size = hvd.rank(), hvd.size()
    start = time.time()
    rollback_to_best(model, out)
    model.eval()

    def shard(split: str) -> Batch:
        # Horovod: each rank holds its own row groups of the split.
        parts = list(eval_batches(split_path(cfg.data, split), rank=rank, size=size))
        if not parts:
            m = meta.num_slots
            return Batch(torch.zeros(0, m, dtype=torch.long), torch.zeros(0, m), torch.zeros(0, m, dtype=torch.bool),
                         torch.zeros(0))
        return Batch(*(torch.cat([getattr(b, n) for b in parts]) for n in ("ids", "vals", "mask", "label")))

    def reduce(t: torch.Tensor, name: str) -> torch.Tensor:
        # Horovod: the sum over ranks (one chain: every rank then draws the same numbers).
        return hvd.allreduce(t, op=hvd.Sum, name=name) if size > 1 else t

    def gather(t: torch.Tensor, name: str) -> torch.Tensor:
        # Horovod: every rank's tensor, concatenated.
        return hvd.allgather(t, name=name) if size > 1 else t

    train_rows, val_rows = shard(TRAIN), shard(VALIDATION)
    clip = meta.target_range() if cfg.clip_predictions else None
    try:
        sampler = gibbs.GibbsFM(train_rows, meta.fields, meta.num_features, cfg.mcmc_dim, cfg.seed,
                                reduce=reduce, gather=gather)
    except gibbs.SamplerNotApplicable as e:  # every rank raises it
        if given:
            raise
        if rank == 0:
            log(f"no Gibbs sampling: {e}")
        return dataclasses.replace(cfg, mcmc_sweeps=0), model
    if rank == 0:
        log(f"sampling an FM of k = {cfg.mcmc_dim} (libFM's MCMC): {cfg.mcmc_sweeps} sweeps, {len(sampler.classes)} "
            f"colour classes, {cfg.mcmc_samples} samples kept as one FM of k = {cfg.mcmc_dim * cfg.mcmc_samples}")
    sampled, records = gibbs.sample(sampler, sweeps=cfg.mcmc_sweeps, samples=cfg.mcmc_samples, validation=val_rows,
                                    clip=clip, log=log if rank == 0 else None, log_every=cfg.log_every)
    trained = {k: t.detach().double().cpu() for k, t in model.state_dict().items()}
    sgd = (trained["linear.bias"][0], trained["linear.weight.weight"][:, 0], trained["embedding.embedding.weight"])
    chunks = [Batch(*(t[i:i + 8192] for t in (val_rows.ids, val_rows.vals, val_rows.mask, val_rows.label)))
              for i in range(0, len(val_rows), 8192)]
    with torch.no_grad():
        p_sgd = torch.cat([model(*c.to(device).inputs).double().cpu() for c in chunks] or [torch.zeros(0).double()])
    p_mc = torch.cat([gibbs.fm_predict(*sampled, *c.inputs, meta.slot_groups()) for c in chunks] or [torch.zeros(0).double()])
    shares = torch.linspace(0, 1, 9, dtype=torch.float64)
    pred = shares[:, None] * p_sgd + (1 - shares[:, None]) * p_mc  # (9, N)
    if clip is not None:
        pred = pred.clamp(*clip)
    sse = reduce((pred - val_rows.label.double()).pow(2).sum(1), "gibbs-blend")
    u = float(shares[int(torch.argmin(sse))])
    blended_cfg = dataclasses.replace(cfg, model_config=dataclasses.replace(
        cfg.model_config, embedding_dim=cfg.model_config.embedding_dim + sampled[2].shape[1]))
    blended = build_model("fm", meta.num_features, meta.num_slots, blended_cfg.model_config, meta.slot_groups())
    w0, w, v = gibbs.blend(sgd, sampled, u)
    blended.load_state_dict({"linear.bias": w0.reshape(1).float(), "linear.weight.weight": w.unsqueeze(1).float(),
                             "embedding.embedding.weight": v.float()})
    blended.to(device)
    sgd_rmse = run.best["val_rmse"]
    val_m = (evaluate(blended, split_path(cfg.data, VALIDATION), device=device, clip=clip,
                      binary=M.is_binary(meta.target, cfg.loss)) if u < 1 else {"rmse": sgd_rmse})
    improved = run.record({
        "epoch": run.epoch + 1, "phase": "mcmc", "train_rmse": records[-1]["train_rmse"], "val_rmse": val_m["rmse"],
        **{f"val_{k}": v for k, v in val_m.items() if k not in ("rmse", "rows")}, "sgd_share": u,
        "val_rmse_sgd": sgd_rmse, "val_rmse_mcmc": records[-1]["val_rmse"], "sweeps": cfg.mcmc_sweeps,
        "samples": cfg.mcmc_samples, "mcmc_dim": cfg.mcmc_dim, "seconds": time.time() - start,
        "examples_per_s": 0.0, "train_seconds": time.time() - start, "exchange_wait_s": 0.0, "exchange_values": 0.0})
    if rank == 0:
        log(f"sampled FM: validation RMSE {records[-1]['val_rmse']:.4f} (the SGD FM {sgd_rmse:.4f}); "
            + (f"the blend ({u:g} SGD) {val_m['rmse']:.4f}, kept as the model (k = {blended_cfg.model_config.embedding_dim})"
               if improved else "the SGD FM kept (no blend is better on validation)") + f"; {time.time() - start:.1f}s")
        artifacts.write_replacement(out, blended_cfg, meta, blended if improved else None, run, global_batch)
    return (blended_cfg, blended) if improved else (cfg, model)


def floor_source(cfg: TrainConfig) -> str | None:
    """The --init-from directory (resolved) whose model the run's end scores as its floor
    (``keep_init_floor``): an AFM with attention summing to |R_x| (``attention_scale`` "pairs": it can
    be that FM exactly) started from the SGD weights of the directory's Gibbs blend. None otherwise:
    a run started from the directory's model has it as its epoch 0 already."""
    if not cfg.init_from or cfg.model != "afm" or cfg.model_config.attention_scale != "pairs":
        return None
    fm = TrainedModel.load(cfg.init_from)
    k = cfg.model_config.embedding_dim
    started_from_sgd = k != fm.config.embedding_dim and fm.sgd_embedding_dim == k
    return str(Path(cfg.init_from).resolve()) if started_from_sgd else None


def keep_init_floor(model: ScoringModel, cfg: TrainConfig, meta: DatasetMetadata, run: RunState, out: Path,
                    global_batch: int, device: torch.device) -> tuple[TrainConfig, ScoringModel]:
    """After the epochs of an AFM started from an --init-from FM's SGD weights (``run.floor_from``,
    whose model is their Gibbs blend, of another embedding size): the directory's model as this AFM
    (attention summing to |R_x| with h = 0: that FM exactly, ``init_from_fm``), scored on validation
    in one more record of the run's history (phase "init"); where it is lower than the best epoch,
    rank 0 writes it as the model. So the AFM never ends above the directory's model on validation.
    Returns the settings and model the run ends with.

    Raises:
        DatasetError: the directory is no longer a finished FM model directory.
    """
    fm = TrainedModel.load(run.floor_from)
    rank, start = hvd.rank(), time.time()
    floor_cfg = dataclasses.replace(cfg, model_config=dataclasses.replace(
        cfg.model_config, embedding_dim=fm.config.embedding_dim))
    floor = init_from_fm(build_model(cfg.model, meta.num_features, meta.num_slots, floor_cfg.model_config,
                                     meta.slot_groups()), fm.build()).to(device)
    clip = meta.target_range() if cfg.clip_predictions else None
    train_m = evaluate(floor, split_path(cfg.data, TRAIN), device=device, clip=None, binary=False)
    val_m = evaluate(floor, split_path(cfg.data, VALIDATION), device=device, clip=clip,
                     binary=M.is_binary(meta.target, cfg.loss))
    trained = run.best["val_rmse"]
    improved = run.record({
        "epoch": run.epoch + 1, "phase": "init", "train_rmse": train_m["rmse"], "val_rmse": val_m["rmse"],
        **{f"val_{k}": v for k, v in val_m.items() if k not in ("rmse", "rows")}, "val_rmse_trained": trained,
        "seconds": time.time() - start, "examples_per_s": 0.0, "train_seconds": 0.0, "exchange_wait_s": 0.0,
        "exchange_values": 0.0})
    if rank == 0:
        log(f"the --init-from FM as the {cfg.model} (k = {fm.config.embedding_dim}): validation RMSE "
            f"{val_m['rmse']:.4f}, the best epoch {trained:.4f}: "
            + ("the FM kept as the model" if improved else "the best epoch kept"))
        artifacts.write_replacement(out, floor_cfg, meta, floor if improved else None, run, global_batch)
    return (floor_cfg, floor) if improved else (cfg, model)


def rollback_to_best(model: ScoringModel, out: Path) -> None:
    """Every rank's ``model`` back to the best epoch's weights, which rank 0 wrote into ``out``.

    The optimizer's state (Adagrad's accumulators) is kept: the steps after the rollback stay as
    small as the run had made them."""
    if hvd.rank() == 0:
        model.load_state_dict(load_file(str(out / MODEL_WEIGHTS)))
    # Horovod: rank 0's weights on every rank.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)


def centre_bias(model: ScoringModel, cfg: TrainConfig, meta: DatasetMetadata) -> float:
    """Start w0 at the training split's mean target rather than 0, and return it.

    From 0, the first steps spend themselves on the mean: every residual is off by it, so the
    embeddings and linear weights take large steps that w0 alone should take, and Adagrad's
    accumulators keep the size of those steps, shrinking every later step of the same rows. The
    rating models of Koren (KDD 2008, "Factorization meets the neighborhood") hold the overall
    mean fixed as their first term for the same reason; here w0 only starts there and is trained.
    Measured: docs/RESULTS.md, "Issue 24, ninth step". The mean comes from the label sum the
    preprocessing counted (``DatasetMetadata.target_mean``), else from the split's label column.

    Raises:
        DatasetError: the training split has no Parquet file or no row.
    """
    mean = meta.target_mean(TRAIN)
    if mean is None:  # a data set written before its label sums were counted
        mean = label_mean(split_path(cfg.data, TRAIN))
    with torch.no_grad():
        model.linear.bias.fill_(mean)
    return mean


def init_from(model: ScoringModel, fm_dir: str, embedding_dim: int) -> None:
    """Copy a trained FM's embeddings and linear part into ``model`` (the paper's pre-training):
    the SGD FM's weights (``sgd.safetensors``) where the directory's model is its Gibbs blend and
    ``embedding_dim`` is theirs, else the directory's model.

    Raises:
        DatasetError: ``fm_dir`` is not a finished FM model directory.
    """
    fm = TrainedModel.load(fm_dir)
    if fm.name != "fm":
        raise DatasetError(f"{fm_dir}: --init-from needs an FM model directory, it holds {fm.name!r}")
    sgd = embedding_dim != fm.config.embedding_dim and fm.sgd_embedding_dim == embedding_dim
    init_from_fm(model, fm.build_sgd() if sgd else fm.build())


def resume(out: Path, cfg: TrainConfig, meta: DatasetMetadata, model: ScoringModel,
           optimizer: torch.optim.Optimizer, tail: TailAverage | None = None) -> RunState:
    """Load the run's checkpoint into ``model``, ``optimizer`` and ``tail`` (the mean of the
    weights so far, when averaging had started); its state so far.

    Raises:
        DatasetError: the checkpoint is of another model or data set.
    """
    saved = load_checkpoint(out / CHECKPOINT)
    check_resume_compatible(saved, cfg.model, cfg.data, meta, where=f"{cfg.output}/{CHECKPOINT}")
    model.load_state_dict(saved["model_state"])
    optimizer.load_state_dict(saved["optimizer_state"])  # Adagrad's accumulators, Adam's moments
    # torch restores the learning rate with the state: the run goes on at the rate it started with
    # (an AFM fine-tuned from --init-from at AFM_FINE_TUNE_LR), and model.json says so.
    cfg.lr = optimizer.param_groups[0]["lr"]
    if tail is not None and cfg.average_tail:  # resumed with --average-tail false: nothing averaged from here
        tail.load_state_dict(saved.get("average"), device=next(model.parameters()).device)
    return RunState(epoch=saved["epoch"], history=saved["history"], best=saved["best"], bad_epochs=saved["bad_epochs"],
                    l2_step=int(saved.get("l2_step", 0)), floor_from=saved.get("floor_from"))


def train_epoch(model: ScoringModel, optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, *, steps: int,
                global_batch: int, device: torch.device, progress: Progress,
                exchange: GradientExchange | None = None, l2: tuple[float, float] | None = None,
                state: TrainingState | None = None) -> dict[str, float]:
    """One epoch: ``steps`` global batches of ``global_batch`` rows, each rank taking its
    ``local_batch_size`` rows of each from its shard.

    ``l2``: the (embedding, linear) L2 strengths of this epoch (``cfg.l2_at(0)`` when not given).

    ``exchange``: what averages the gradients across ranks before each step (made from ``model``
    when not given).

    ``state``: the run's (afm_dist/training/elastic.py): the epoch goes on from its progress's
    steps (those of a restored commit; 0 in a new epoch), and an elastic run commits every
    ``commit_every`` steps. Each rank's loss is scaled by its share of the global batch, so the
    averaged gradient is the global batch's mean whatever the split (a factor of 1 when the
    ranks' shares are equal).

    Returns the epoch's training metrics over every rank (unclipped RMSE of the scores), and
    ``exchange_wait_s``: the seconds this rank waited for the gradient exchange's collectives (the
    other ranks' lag and the collectives' own time), and ``exchange_values``: the values of this
    rank's allgather buffer a step, on average (0 on one rank; ``GradientExchange``).

    Raises:
        FloatingPointError: a non-finite loss, naming the epoch, step and rank.
    """
    model.train()
    rank, size = hvd.rank(), hvd.size()
    exchange = exchange or GradientExchange(model)
    state = state or TrainingState(model, optimizer, TailAverage(), RunState())
    state.progress.start(epoch)
    start_step = state.progress.steps
    local_batch = local_batch_size(global_batch, rank, size)
    share = local_batch * size / global_batch  # 1.0 when the batch divides evenly
    max_local = -(-global_batch // size)  # the largest rank's rows: the exchange's bound is the same on every rank
    waited_before, sent_before = exchange.wait_seconds, exchange.sent_values
    epoch_start = time.time()
    sums = M.new_sums(device)
    emb_l2, lin_l2 = l2 if l2 is not None else cfg.l2_at(0)
    # Horovod: dropout draws differ per rank, as across the rows of one large batch; seeded by epoch
    # (and the step it goes on from), so that a resumed run draws what the uninterrupted run drew.
    torch.manual_seed(cfg.seed * 7919 + 1000 * epoch + rank + 7_000_003 * start_step)
    # A new epoch reads its data order from seed + epoch (what --resume replays); an epoch that goes
    # on from a commit on another number of ranks reads new shards in an order of its own.
    seed = cfg.seed + epoch + (1_000_003 * start_step if start_step else 0)
    for step, batch in enumerate(train_batches(split_path(cfg.data, TRAIN), rank=rank, size=size,
                                               batch_size=local_batch, steps=steps - start_step, seed=seed,
                                               shuffle_buffer=cfg.shuffle_buffer), start=start_step + 1):
        batch = batch.to(device)
        optimizer.zero_grad()
        scores = model(*batch.inputs)
        loss = loss_fn(scores, batch.label, cfg.loss)
        if cfg.attention_l2 > 0:
            loss = loss + cfg.attention_l2 * model.l2_penalty()
        if emb_l2 > 0 or lin_l2 > 0:
            emb, lin = model.feature_penalty(batch.ids, batch.mask)
            loss = loss + emb_l2 * emb + lin_l2 * lin
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at epoch {epoch} step {step} on rank {rank}; "
                "lower --lr, or give numeric fields with large raw values 'standardize: true' or "
                "'transform: log1p' in the schema")
        (loss * share if share != 1.0 else loss).backward()
        exchange(max_rows=max_local * batch.ids.shape[1])  # Horovod: the gradients averaged over the ranks.
        optimizer.step()
        M.accumulate(sums, scores, batch.label, clip=None, binary=False)
        progress.step(epoch, step, loss.item(), epoch_start)
        state.progress.steps = step
        sums = state.commit_step(sums)  # elastic: every commit_every steps
    state.gather_sums(sums)  # Horovod: every rank's sums since the last commit added
    result = M.finish(state.progress.sums, binary=False)
    steps_run = max(1, state.progress.steps - start_step)
    return {**result, "exchange_wait_s": exchange.wait_seconds - waited_before,
            "exchange_values": (exchange.sent_values - sent_before) / steps_run}


@torch.no_grad()
def evaluate(model: ScoringModel, split_dir: Path, *, device: torch.device, clip: tuple[float, float] | None,
             binary: bool) -> dict[str, float]:
    """Metrics of ``model`` over a whole split, each rank scoring its shard; one allreduce."""
    model.eval()
    sums = M.new_sums(device)
    # Horovod: each rank reads its own row groups of the split.
    for batch in eval_batches(split_dir, rank=hvd.rank(), size=hvd.size()):
        batch = batch.to(device)
        M.accumulate(sums, model(*batch.inputs), batch.label, clip=clip, binary=binary)
    # Horovod: add every rank's sums (waiting without spinning: exchange.wait).
    return M.finish(wait(hvd.allreduce_async(sums, op=hvd.Sum, name="eval-sums")), binary=binary)
