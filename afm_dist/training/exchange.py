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
  own sparse path). The buffer holds each table's number of rows, the small dense gradients
  that ride along, then each table's ids and rows, (k + 2) floats a row for float32. While small
  (``PAD_LIMIT``) it has one slot per lookup of the batch, B * M a table (backward's rows as they
  are, an id once per read of the table: the forward's distinct ids and the L2 penalty's; summed
  per id on the rank only where they outnumber the slots), padded by -1 ids, so that its length
  is the same at every step and Horovod's response cache recognises the collective (one
  negotiated at each step costs a round of messages between the ranks). Above, each rank sums its rows per id first
  (``sum_rows``) and only those distinct rows travel: a batch's slots repeat ids 3 to 6 times
  on the data sets measured (BENCHMARKS.md; the models read each distinct id once, so what is
  left to sum is a table's two reads, the forward's and the L2 penalty's), and padded, the
  paper's B = 4096, M = 39, k = 64 would send 42 MB a rank and step.

Each rank sums the gathered rows per feature id, every table looked up by the same ids at one
sort (``sum_rows``). With one rank the exchange is only that sum.

The numbers are those of ``hvd.DistributedOptimizer`` up to the order of the sums: the dense
gradients averaged by Horovod, and a sparse table's gradient the union of every rank's rows
divided by the number of ranks (a row two ranks touched is the sum of both, once coalesced).
Summing a rank's rows before the gather (above ``PAD_LIMIT``) adds them in another order: the
last bit of a row can differ from the padded buffer's.
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
        pad_limit: a rank's buffer is padded to the batch's lookups while that is at most this
            many values (default ``PAD_LIMIT``; 0: never padded, only the distinct rows travel).
    """

    def __init__(self, model: nn.Module, name: str = "grads", dense_gather_limit: int | None = None,
                 pad_limit: int | None = None) -> None:
        sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
        params = [p for p in model.parameters() if p.requires_grad]
        self.dense = [p for p in params if id(p) not in sparse_ids]
        self.sparse = [p for p in params if id(p) in sparse_ids]
        self.name = name
        self.wait_seconds = 0.0  # wall seconds spent waiting for the collectives, over every call
        self.sent_values = 0  # values of this rank's allgather buffers, over every call
        self.dense_gather_limit = DENSE_IN_GATHER if dense_gather_limit is None else dense_gather_limit
        self.pad_limit = PAD_LIMIT if pad_limit is None else pad_limit
        self._dense_values = sum(p.numel() for p in self.dense)
        self._one_dtype = bool(self.sparse) and {p.dtype for p in self.dense + self.sparse} == {self.sparse[0].dtype}

    def gathers_dense(self, size: int) -> bool:
        """Whether, on ``size`` ranks, the dense gradients travel in the sparse allgather (they are
        few, and of the tables' dtype) rather than in an allreduce of their own."""
        return bool(self.dense) and self._one_dtype and self._dense_values * size <= self.dense_gather_limit

    def pads(self, slots: list[int], dense_values: int) -> bool:
        """Whether a step's buffer is padded to ``slots`` rows a table (its length the same at every
        step, so Horovod's response cache knows the collective) rather than as long as the rank's
        distinct rows (negotiated at each step): padded while that buffer (``_padded_length``) is at
        most ``pad_limit`` values."""
        return _padded_length(self.sparse, slots, dense_values) <= self.pad_limit

    def __call__(self, max_rows: int) -> None:
        """Average the gradients in place.

        ``max_rows``: the same bound on every rank of the distinct rows a table's gradient has
        this step: the batch's number of feature ids (B * M, of the largest rank's batch), as
        every table is looked up by them. It sets the padded buffer's slots, and whether the
        buffer is padded: ranks given different bounds would gather different buffers.

        Raises:
            ValueError: padded, a table's gradient has more distinct rows than its slots.
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
                padded = self.pads(slots, sum(d.numel() for d in dense))
                local = [_rows(p) for p in self.sparse]  # backward's rows, an id once per read of the table
                if padded:  # summed per id only where the lookups outnumber the slots (e.g. a table looked up twice)
                    local = [sum_rows([e])[0] if e[0].numel() > n else e for e, n in zip(local, slots)]
                    for (ids, _), n in zip(local, slots):
                        if ids.numel() > n:
                            raise ValueError(f"a sparse table's gradient has {ids.numel()} distinct rows, more "
                                             f"than the step's {n} feature ids")
                    local = [_padded(ids, rows, n) for (ids, rows), n in zip(local, slots)]  # as long every step
                else:  # only this rank's distinct rows travel
                    local = sum_rows(local)
                # Horovod: every table's ids and rows (and the small dense gradients) gathered from
                # every rank in one allgather of one buffer.
                buffer = _pack(local, self.sparse, prefix=dense)
                self.sent_values += buffer.numel()
                sparse_handle = hvd.allgather_async(buffer, name=f"{self.name}.sparse" + (".padded" if padded else ""))
        start = time.perf_counter()
        if dense_handle is not None:
            wait(dense_handle)
        if sparse_handle is not None:
            gathered = wait(sparse_handle)  # the ranks' buffers one after the other, rank 0's first
        if dense_handle is not None or sparse_handle is not None:
            self.wait_seconds += time.perf_counter() - start
        if sparse_handle is not None:
            prefixes, entries = _unpack(gathered, self.sparse, size, self._dense_values if in_gather else 0,
                                        slots if padded else None)
            if in_gather:
                # the ranks' copies averaged: Horovod's Average bit for bit on 2 ranks; on more,
                # within a few ulps of it (its ring adds in another order), the same on every rank
                mean = prefixes.sum(dim=0).div_(size)  # (dense values,)
                offset = 0
                for p in self.dense:
                    n = p.numel()
                    p.grad.copy_(mean[offset:offset + n].view_as(p))
                    offset += n
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


def _pack(entries: list[tuple[torch.Tensor, torch.Tensor]], tables: list[nn.Parameter],
          prefix: list[torch.Tensor] = ()) -> torch.Tensor:
    """This rank's buffer for the allgather, 1-D, of the tables' dtype: each table's number of rows
    (int64 bits), the 1-D ``prefix`` tensors (the dense gradients that travel with them), then per
    table its ids (int64 bits) and rows. ``entries``: per table, ids (R,) and rows (R, ...): the
    rank's distinct rows (``sum_rows``), whose number changes from step to step, or rows padded to
    a fixed number by -1 ids (``_padded``), which make a buffer of the same length at every step.

    Raises:
        ValueError: tables of different dtypes (one buffer holds the ids' bits in the tables'
            dtype, and concatenating mixed dtypes would convert them).
    """
    dtypes = {p.dtype for p in tables}
    if len(dtypes) > 1:
        raise ValueError(f"the sparse feature tables have different dtypes {sorted(map(str, dtypes))}; "
                         "the gradient exchange packs them in one buffer: give every table one dtype")
    dtype, device = tables[0].dtype, tables[0].device
    counts = torch.tensor([ids.numel() for ids, _ in entries], dtype=torch.int64, device=device)
    parts = [counts.view(dtype), *prefix]  # the ids' and counts' bytes travel untouched
    for ids, rows in entries:
        parts += [ids.view(dtype), rows.reshape(-1)]
    return torch.cat(parts)


def _id_width(dtype: torch.dtype) -> int:
    """Elements of ``dtype`` that an int64 (an id, a row count) takes in the buffer."""
    return torch.empty((), dtype=torch.int64).element_size() // torch.empty((), dtype=dtype).element_size()


def _padded_length(tables: list[nn.Parameter], slots: list[int], prefix_values: int) -> int:
    """Values of a buffer padded to ``slots`` rows a table: the row counts, the prefix, the ids and rows."""
    word = _id_width(tables[0].dtype)
    return len(tables) * word + prefix_values + sum(n * (word + p[0].numel()) for p, n in zip(tables, slots))


def _padded(ids: torch.Tensor, rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` (R,) and ``rows`` (R, ...) padded to ``n`` by -1 ids and zero rows (``sum_rows`` leaves them out)."""
    r = ids.numel()
    if r == n:
        return ids, rows
    return (torch.cat([ids, torch.full((n - r,), -1, dtype=ids.dtype, device=ids.device)]),
            torch.cat([rows, rows.new_zeros((n - r, *rows.shape[1:]))]))


def _unpack(gathered: torch.Tensor, tables: list[nn.Parameter], ranks: int, prefix_values: int,
            slots: list[int] | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``_pack``'s inverse over the allgather's output (every rank's buffer in rank order):
    the ranks' prefixes (ranks, prefix_values), and per table every rank's ids and rows together,
    ids (sum of the ranks' R,) and rows (same, ...), rank 0's first. ``slots``: every rank's rows
    a table when the buffers were padded to them (their layout known: the counts are not read)."""
    word = _id_width(gathered.dtype)
    header = len(tables) * word
    if slots is not None:
        length = _padded_length(tables, slots, prefix_values)
        if gathered.numel() != ranks * length:
            raise RuntimeError(f"the gathered gradient buffer has {gathered.numel()} values, {ranks} padded buffers "
                               f"of {length}: the ranks padded to different slots")
        per_rank = gathered.view(ranks, -1)  # (ranks, L), every buffer as long
        offset = header + prefix_values
        entries = []
        for p, n in zip(tables, slots):
            ids = per_rank[:, offset:offset + n * word].clone().view(torch.int64).reshape(-1)  # (ranks * n,)
            offset += n * word
            width = n * p[0].numel()
            entries.append((ids, per_rank[:, offset:offset + width].reshape(-1, *p.shape[1:])))  # (ranks * n, ...)
            offset += width
        return per_rank[:, header:header + prefix_values], entries
    prefixes, ids_parts, rows_parts = [], [[] for _ in tables], [[] for _ in tables]
    offset = 0
    for _ in range(ranks):
        counts = gathered[offset:offset + header].clone().view(torch.int64).tolist()  # one read a rank (a copy: aligned)
        offset += header
        prefixes.append(gathered[offset:offset + prefix_values])
        offset += prefix_values
        for t, (p, n) in enumerate(zip(tables, counts)):
            ids_parts[t].append(gathered[offset:offset + n * word].clone().view(torch.int64))
            offset += n * word
            width = n * p[0].numel()
            rows_parts[t].append(gathered[offset:offset + width].reshape(-1, *p.shape[1:]))
            offset += width
    if offset != gathered.numel():
        raise RuntimeError(f"the gathered gradient buffer has {gathered.numel()} values, its headers "
                           f"account for {offset}")
    entries = [(torch.cat(i), torch.cat(r)) for i, r in zip(ids_parts, rows_parts)]
    return torch.stack(prefixes), entries


# The dense gradients travel in the sparse allgather rather than an allreduce of their own when
# their values times the ranks (what each rank receives) are at most this (see the module): 128k
# values, 512 KB in float32. An AFM's attention network, p and bias at k = t = 64 have 4,289.
DENSE_IN_GATHER = 131_072

# A rank's buffer is padded to the batch's B * M lookups a table (the same length at every step: Horovod
# finds the collective in its response cache) while that is at most this many values, 2 MB in float32;
# above, only the distinct rows travel, in a buffer negotiated at each step. Measured with 2 ranks on
# this 2-core host (bench/bench_exchange.py, BENCHMARKS.md), FM k = 256, a step's time distinct / padded:
# 1.14 at 0.17M values (Frappe logs, M = 10), 0.89 at 0.4M (MovieLens, M = 12; whole runs of the trainer
# were as fast or slower: 19,400-24,400 examples/s against 22,900-24,900), 0.41 at 1.0M and 0.70 at
# 2.1M (the same with a history bag of 50).
PAD_LIMIT = 1 << 19

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
    """``p``'s sparse gradient as it is, ids (R,) and rows (R, ...), an id once per read of the
    table (backward's output: not coalesced); no rows when it has none.

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
