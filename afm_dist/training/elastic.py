"""What a run holds between steps, and what elastic training commits and restores (issue 27).

``TrainingState`` is the state of one run on one rank: the model, the optimizer (Adagrad's
accumulators and step counts), tail averaging's mean, where the run is (``RunState``: epochs done,
history, best epoch, early stopping's counter, the place on the L2 path) and where the epoch in
progress is (``EpochProgress``: its steps done and the training metrics' sums over them). The
trainer runs the same code with or without elasticity; what differs is who calls it.

Static (``horovodrun -np N``): ``sync`` once, from rank 0, and nothing is committed; a lost rank
ends the run, which ``--resume`` continues from the last epoch's checkpoint.

Elastic (``horovodrun --min-np A --max-np B --host-discovery-script S``, which sets
``HOROVOD_ELASTIC=1`` for its workers): the trainer runs under ``hvd.elastic.run`` with this state
(a ``horovod.common.elastic.State``). ``commit`` keeps an in-memory copy every ``commit_every``
steps and at every epoch's end; when a rank is lost the others get ``HorovodInternalError`` at
their next collective, ``restore`` the last commit, Horovod forms the new world (the oldest worker
becomes rank 0) and ``sync`` broadcasts rank 0's state; the epoch goes on from the committed step
with the same global batch, split over the new number of ranks, each reading a new Petastorm shard.
A host that the discovery script adds joins at the next commit (``HostsUpdatedInterrupt``).

The cost of elasticity: one copy of the model and optimizer state in host memory, refreshed at each
commit (a copy of every table: keep ``--commit-every`` large for large tables), and one tiny
allreduce per commit (the training metrics' sums, made global so that a lost rank loses none).
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

import horovod.torch as hvd
import torch
from horovod.common.elastic import State

from afm_dist import metrics as M
from afm_dist.training.artifacts import RunState
from afm_dist.training.averaging import TailAverage
from afm_dist.training.exchange import wait


def elastic_launch() -> bool:
    """Whether horovodrun started this process in elastic mode (it sets ``HOROVOD_ELASTIC=1``)."""
    return os.environ.get("HOROVOD_ELASTIC", "") == "1"


def local_batch_size(global_batch: int, rank: int, size: int) -> int:
    """This rank's rows of each global batch: ``global_batch // size``, one more for the first
    ``global_batch % size`` ranks, so that any number of ranks takes exactly ``global_batch`` rows
    (an elastic run's world changes; a static run checks that the batch divides evenly)."""
    return global_batch // size + (1 if rank < global_batch % size else 0)


def broadcast_optimizer_tensors(optimizer: torch.optim.Optimizer) -> None:
    """Horovod: rank 0's optimizer state (Adagrad's accumulators) on every rank, broadcast in place.

    ``hvd.broadcast_optimizer_state`` reloads the whole state through ``load_state_dict``, which
    deep-copies it: a second copy of a large table's accumulators. Here the tensors are broadcast
    where they are. The optimizers make their state at a parameter's first step, so a rank that has
    not stepped yet (one that joins an elastic run) first learns from rank 0 which tensors exist,
    their shapes and dtypes, and makes them.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    layout = {i: {key: (tuple(v.shape), v.dtype) for key, v in optimizer.state[p].items() if torch.is_tensor(v)}
              for i, p in enumerate(params) if p in optimizer.state}
    layout = hvd.broadcast_object(layout, root_rank=0, name="optimizer-layout")
    tensors = []
    for i, keys in sorted(layout.items()):
        state = optimizer.state[params[i]]
        for key, (shape, dtype) in sorted(keys.items()):
            if key not in state:
                state[key] = torch.zeros(shape, dtype=dtype, device=params[i].device)
            tensors.append((f"optimizer.{i}.{key}", state[key]))
    hvd.broadcast_parameters(tensors, root_rank=0)


@dataclass
class EpochProgress:
    """The epoch in progress: ``epoch`` (0 before the first), its ``steps`` done, and the training
    metrics' sums (``afm_dist.metrics``) over them, summed over the ranks up to the last commit."""

    epoch: int = 0
    steps: int = 0
    sums: torch.Tensor = field(default_factory=M.new_sums)

    def start(self, epoch: int) -> None:
        """Begin ``epoch`` unless it is the one in progress (a restored commit goes on where it was)."""
        if self.epoch != epoch:
            self.epoch, self.steps, self.sums = epoch, 0, M.new_sums()


class TrainingState(State):
    """One rank's run: what ``commit`` keeps, ``restore`` brings back and ``sync`` makes equal.

    Args:
        model, optimizer: the run's; their tensors are updated in place by ``restore`` and ``sync``.
        tail: tail averaging's running mean (``afm_dist/training/averaging.py``).
        run: where the run stands after its last epoch (fresh, or read by ``--resume``).
        commit_every: steps between commits within an epoch; 0: never (a static run).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tail: TailAverage, run: RunState,
                 commit_every: int = 0) -> None:
        self.model, self.optimizer, self.tail, self.run = model, optimizer, tail, run
        self.progress = EpochProgress()
        self.prepared = False  # rank 0 has checked and prepared the output directory
        self.commit_every = commit_every
        self.commits = 0
        self.resets = 0  # the world changes this rank went through (not committed: a count, not state)
        self.commit_seconds = 0.0  # wall seconds this rank spent committing (the copy, the host check, the sums)
        self._saved: dict[str, Any] = {}
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
        if commit_every:
            self.save()

    # -- horovod.common.elastic.State ------------------------------------------------------------
    def save(self) -> None:
        """The in-memory commit: a copy of every tensor and value (the model's and optimizer's
        tables included), on the host."""
        self._saved = copy.deepcopy({
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "tail": self.tail.state_dict(), "run": self.run,
            "progress": self.progress, "prepared": self.prepared})
        self.commits += 1

    def restore(self) -> None:
        """Back to the last commit (a rank was lost: what was done since is redone)."""
        saved = copy.deepcopy(self._saved)  # the commit stays intact for a second failure before the next
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.tail.load_state_dict(saved["tail"], device=next(self.model.parameters()).device)
        self.run, self.progress, self.prepared = saved["run"], saved["progress"], saved["prepared"]

    def sync(self) -> None:
        """Every rank takes rank 0's state: the weights and optimizer tensors broadcast in place,
        the rest as one object. A rank that joins has built the model from the same seed; it
        receives everything here."""
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        broadcast_optimizer_tensors(self.optimizer)
        self.run, self.progress, self.prepared, count = hvd.broadcast_object(
            (self.run, self.progress, self.prepared, self.tail.count), root_rank=0, name="run-state")
        if count and not self.tail.started:  # a rank without the mean (one that joined): room for rank 0's
            self.tail.mean = {k: torch.zeros_like(v) for k, v in self.model.state_dict().items()
                              if v.is_floating_point()}
        self.tail.count = count
        if count:
            hvd.broadcast_parameters([(f"average.{k}", v) for k, v in sorted(self.tail.mean.items())], root_rank=0)
        else:
            self.tail.mean = {}

    # -- the trainer's calls ---------------------------------------------------------------------
    def commit_step(self, local_sums: torch.Tensor) -> torch.Tensor:
        """After a step: every ``commit_every`` steps of the epoch, add every rank's training sums
        since the last commit into the progress (one small allreduce) and commit. Returns the
        local sums to go on adding to (zeroed after a commit). A static run commits nothing."""
        if not self.commit_every or self.progress.steps % self.commit_every:
            return local_sums
        start = time.perf_counter()
        try:
            self.gather_sums(local_sums)
            self.commit()
        finally:
            self.commit_seconds += time.perf_counter() - start
        return M.new_sums(local_sums.device)

    def gather_sums(self, local_sums: torch.Tensor) -> None:
        """Add every rank's ``local_sums`` into the progress's (one allreduce)."""
        # Horovod: the ranks' sums added (waiting without spinning: exchange.wait).
        total = wait(hvd.allreduce_async(local_sums, op=hvd.Sum, name="train-sums"))
        self.progress.sums = self.progress.sums + total.cpu()

    def commit_epoch(self) -> None:
        """At an epoch's end (and after the preparations before the first): commit when elastic."""
        if self.commit_every:
            start = time.perf_counter()
            try:
                self.commit()
            finally:
                self.commit_seconds += time.perf_counter() - start
