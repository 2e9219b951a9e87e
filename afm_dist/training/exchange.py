"""Horovod: the gradient exchange of one training step, in one or two collectives whatever the model.

``hvd.DistributedOptimizer`` starts one collective per parameter as backward produces its
gradient: an allreduce per dense parameter and, per sparse feature table, two allgathers (the
batch's row ids and the rows, whose lengths change every step), each negotiated by Horovod's
background thread, and it waits for each by spinning (see ``wait``). Here, after backward, every
gradient is queued at once:

- one grouped allreduce (averaging, in place) of the dense gradients, fused into one buffer;
  unless they are few (D values with D x ranks at most ``DENSE_IN_GATHER``: an FM's bias, an
  AFM's attention network, p and bias on up to 30 ranks at k = t = 64) and of the tables' dtype: then they
  travel in the sparse allgather's buffer and each rank averages the ranks' copies itself. A step
  then waits for one collective, not two: each costs Horovod's cycle, its coordination and Gloo's
  round trips between the ranks, which on ranks sharing a small host's cores is a few ms.
  Allgathering D values has each rank receive ranks x D where an allreduce's ring moves about
  2 D, hence the bound: large dense parts (an MLP), or many ranks, keep the allreduce;
- one allgather of every sparse table's ids and rows, packed in one buffer: each rank adds the
  others' rows of the batch to its own, never the whole table (TorchRec's habit, and Horovod's
  own sparse path). The buffer has the same length every step (``B * M`` slots a table, padded),
  so that Horovod's response cache recognises it: a collective whose shape changes from step to
  step is negotiated anew each step, over several round trips between the ranks. The price is
  bandwidth: every slot travels whether the batch's ids repeat or not, B * M * (k + 2) floats a
  table and rank for float32 (0.4 MB at B = 256, M = 6, k = 64; 42 MB at the paper's B = 4096,
  M = 39), where the distinct rows alone may be several times fewer.

Backward's sparse gradients are not coalesced before the exchange (the buffer's length is fixed
whether they are or not); each rank sums the gathered rows per feature id once, every table
looked up by the same ids at one sort (``sum_rows``). With one rank the exchange is only that sum.

The numbers are those of ``hvd.DistributedOptimizer``: the dense gradients averaged by Horovod,
and a sparse table's gradient the union of every rank's rows divided by the number of ranks (a
row two ranks touched is the sum of both, once coalesced).
"""
from __future__ import annotations

import time
from typing import Any

import horovod.torch as hvd
import torch
from torch import nn


class GradientExchange:
    """Average the gradients of ``model``'s parameters over the Horovod ranks, in place.

    Call it between ``loss.backward()`` and ``optimizer.step()``; every rank must call it at the
    same step. Sparse tables are the ``nn.Embedding(sparse=True)`` weights; a parameter without a
    gradient on this rank takes part with zeros (no rows), so that the ranks' collectives match.

    Args:
        model: the model whose gradients to exchange.
        name: the base name of the collectives (unique among the collectives in flight).
        dense_gather_limit: the dense gradients travel in the sparse allgather when their number
            of values times the number of ranks is at most this (default ``DENSE_IN_GATHER``;
            0: they are always allreduced).
    """

    def __init__(self, model: nn.Module, name: str = "grads", dense_gather_limit: int | None = None) -> None:
        sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
        params = [p for p in model.parameters() if p.requires_grad]
        self.dense = [p for p in params if id(p) not in sparse_ids]
        self.sparse = [p for p in params if id(p) in sparse_ids]
        self.name = name
        self.wait_seconds = 0.0  # wall seconds spent waiting for the collectives, over every call
        self.dense_gather_limit = DENSE_IN_GATHER if dense_gather_limit is None else dense_gather_limit
        self._dense_values = sum(p.numel() for p in self.dense)
        self._one_dtype = bool(self.sparse) and {p.dtype for p in self.dense + self.sparse} == {self.sparse[0].dtype}

    def gathers_dense(self, size: int) -> bool:
        """Whether, on ``size`` ranks, the dense gradients travel in the sparse allgather (they are
        few, and of the tables' dtype) rather than in an allreduce of their own."""
        return bool(self.dense) and self._one_dtype and self._dense_values * size <= self.dense_gather_limit

    def __call__(self, max_rows: int) -> None:
        """Average the gradients in place.

        ``max_rows``: the same bound on every rank of the rows a table's gradient has this step:
        the batch's number of feature ids (B * M), as every table is looked up by them.

        Raises:
            ValueError: a table's gradient has more rows than ``max_rows``.
        """
        size = hvd.size()
        in_gather = self.gathers_dense(size)
        dense_handle = sparse_handle = None
        if self.dense and size > 1:
            for p in self.dense:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if not in_gather:
                # Horovod: every dense gradient averaged in one fused allreduce.
                dense_handle = hvd.grouped_allreduce_async_([p.grad for p in self.dense],
                                                            name=f"{self.name}.dense", op=hvd.Average)
        if self.sparse:
            if size == 1:  # nothing to exchange: this rank's rows, summed per id
                entries = [_rows(p) for p in self.sparse]
            else:
                slots = [min(max_rows, p.shape[0]) for p in self.sparse]
                dense = [p.grad.reshape(-1) for p in self.dense] if in_gather else []
                # Horovod: every table's ids and rows (and the small dense gradients) gathered from
                # every rank in one allgather of one buffer whose length is the same every step,
                # so that Horovod's response cache knows it and the step's exchange is not
                # negotiated again.
                sparse_handle = hvd.allgather_async(_pack(self.sparse, slots, prefix=dense),
                                                    name=f"{self.name}.sparse")
        start = time.perf_counter()
        if dense_handle is not None:
            wait(dense_handle)
        if sparse_handle is not None:
            gathered = wait(sparse_handle).view(size, -1)  # (ranks, dense values + packed tables)
        if dense_handle is not None or sparse_handle is not None:
            self.wait_seconds += time.perf_counter() - start
        if sparse_handle is not None:
            offset = 0
            if in_gather:
                # the ranks' copies averaged: Horovod's Average bit for bit on 2 ranks; on more,
                # within a few ulps of it (its ring adds in another order), the same on every rank
                for p in self.dense:
                    n = p.numel()
                    p.grad.copy_(gathered[:, offset:offset + n].sum(dim=0).div_(size).view_as(p))
                    offset += n
            entries = list(_unpack(gathered[:, offset:], self.sparse, slots))
        if self.sparse:
            for p, (ids, rows) in zip(self.sparse, sum_rows(entries)):
                if size == 1 and p.grad is None:  # a table this step did not use keeps no gradient
                    continue
                rows = rows.div_(size) if size > 1 else rows
                p.grad = torch.sparse_coo_tensor(ids.unsqueeze(0), rows, p.shape, is_coalesced=True,
                                                 check_invariants=False)  # sum_rows made them so


def sum_rows(entries: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per table, its rows summed per feature id: what ``coalesce`` gives, for every table at once.

    ``entries``: per table, ids (R,) int64 and rows (R, ...), ids repeating and -1 for an unused
    slot (a zero row). Returns per table the distinct ids (U,), ascending, -1 left out, and the
    sums of their rows (U, ...). Tables looked up by the same ids (an FM's linear weights and
    embeddings) share one ``torch.unique``: one sort a step instead of one a table, and an
    ``index_add`` of the rows instead of a sparse tensor's coalescing, about half its time.
    """
    out, seen = [], []  # seen: (ids, distinct ids, inverse) of the tables so far
    for ids, rows in entries:
        for known, distinct, inverse in seen:
            if known.shape == ids.shape and torch.equal(known, ids):
                break
        else:
            distinct, inverse = torch.unique(ids, return_inverse=True)
            seen.append((ids, distinct, inverse))
        sums = torch.zeros((distinct.numel(), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        sums.index_add_(0, inverse, rows)
        used = int(torch.searchsorted(distinct, 0))  # -1 (unused slots) sorts first
        out.append((distinct[used:], sums[used:]))
    return out


def _pack(tables: list[nn.Parameter], slots: list[int], prefix: list[torch.Tensor] = ()) -> torch.Tensor:
    """Every table's sparse gradient in one 1-D buffer of the tables' dtype: the 1-D ``prefix``
    tensors first (the dense gradients that travel with them), then per table ``slots`` ids (int64
    bits, -1 for an unused slot) and ``slots`` rows (zeros for an unused slot).

    Raises:
        ValueError: tables of different dtypes (one buffer holds the ids' bits in the tables'
            dtype, and concatenating mixed dtypes would convert them), or a gradient with more
            rows than its slots.
    """
    dtypes = {p.dtype for p in tables}
    if len(dtypes) > 1:
        raise ValueError(f"the sparse feature tables have different dtypes {sorted(map(str, dtypes))}; "
                         "the gradient exchange packs them in one buffer: give every table one dtype")
    parts = list(prefix)
    for p, n in zip(tables, slots):
        ids, values = _rows(p)
        if ids.numel() > n:  # a table looked up more than once a step: its rows summed per id first
            (ids, values), = sum_rows([(ids, values)])
        r = ids.numel()
        if r > n:
            raise ValueError(f"a sparse table's gradient has {r} rows, more than the step's {n} feature ids")
        if r < n:  # padded to the same length every step
            ids = torch.cat([ids, torch.full((n - r,), -1, dtype=torch.int64, device=p.device)])
            values = torch.cat([values, torch.zeros((n - r, *p.shape[1:]), dtype=p.dtype, device=p.device)])
        parts += [ids.view(p.dtype), values.reshape(-1)]  # the ids' bytes travel untouched
    return torch.cat(parts)


def _unpack(gathered: torch.Tensor, tables: list[nn.Parameter], slots: list[int]):
    """``_pack``'s inverse over every rank's buffer (``gathered``: (ranks, L)): per table, every
    slot's id (ranks * n,), -1 for an unused one, and row (ranks * n, k), rank 0's first."""
    offset = 0
    for p, n in zip(tables, slots):
        id_width = n * torch.empty((), dtype=torch.int64).element_size() // gathered.element_size()
        ids = gathered[:, offset:offset + id_width].contiguous().view(torch.int64).reshape(-1)  # (ranks * n,)
        offset += id_width
        width = n * p[0].numel()
        rows = gathered[:, offset:offset + width].reshape(-1, *p.shape[1:])  # (ranks * n, k)
        offset += width
        yield ids, rows


# The dense gradients travel in the sparse allgather rather than an allreduce of their own when
# their values times the ranks (what each rank receives) are at most this (see the module): 128k
# values, 512 KB in float32. An AFM's attention network, p and bias at k = t = 64 have 4,289.
DENSE_IN_GATHER = 131_072

# Seconds between two looks at a collective in flight (see ``wait``): a few percent of a step.
POLL_INTERVAL = 1e-4


def wait(handle: int) -> Any:
    """``hvd.synchronize(handle)`` without spinning: its output once the collective is done.

    Horovod's own wait loops on ``sched_yield`` until the background thread marks the handle
    done, which keeps a core busy for as long as the other ranks take to reach the collective:
    where ranks share the cores (several ranks on one CPU host) it takes that core from the very
    rank being waited for. Sleeping between polls leaves it to them.
    """
    while not hvd.poll(handle):
        time.sleep(POLL_INTERVAL)
    return hvd.synchronize(handle)


def _rows(p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    """``p``'s sparse gradient as it is, ids (R,) and rows (R, ...), an id once per lookup of
    it (backward's output: not coalesced); no rows when it has none.

    Raises:
        TypeError: the gradient of the sparse table is dense.
    """
    if p.grad is None:
        return (torch.zeros(0, dtype=torch.int64, device=p.device),
                torch.zeros(0, *p.shape[1:], dtype=p.dtype, device=p.device))
    if not p.grad.is_sparse:
        raise TypeError(f"a sparse table's gradient is dense (shape {tuple(p.shape)}); its nn.Embedding "
                        "has sparse=True, so something replaced the gradient")
    return p.grad._indices()[0], p.grad._values()
