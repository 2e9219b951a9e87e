"""Rows of a preprocessed split (afm_dist/dataset.py) as torch tensors: the one conversion that the
loader, the scoring and explanation tasks, the tests and the benchmarks all use.

Columns arrive as Arrow list arrays (pyarrow tables and record batches: scoring, tests,
benchmarks), as 2-D numpy arrays, or as numpy arrays of per-row arrays (Petastorm). Whatever
they arrive as, ``to_batch`` makes a ``Batch`` of dense tensors. B: rows, M: slots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from afm_dist.dataset import IDS, LABEL, MASK, VALS, BagColumn, split_bag_columns


@dataclass
class Batch:
    """One batch as dense tensors."""

    ids: torch.Tensor  # (B, M) int64 global feature ids
    vals: torch.Tensor  # (B, M) float32 feature values x_i
    mask: torch.Tensor  # (B, M) bool, False for a padded slot
    label: torch.Tensor | None  # (B,) float32 target, None for rows without one

    def to(self, device: torch.device) -> "Batch":
        """The same batch on ``device`` (itself on the CPU)."""
        if device.type == "cpu":
            return self
        return Batch(*(None if t is None else t.to(device, non_blocking=True)
                       for t in (self.ids, self.vals, self.mask, self.label)))

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, vals, mask): the arguments of every model's forward."""
        return self.ids, self.vals, self.mask

    def __len__(self) -> int:
        return self.ids.shape[0]


def list_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """An Arrow list column as a (rows, width) array read from its flat values (no per-row work;
    it shares Arrow's memory, so it may be read-only), or None when it is not a list column, or
    its rows differ in width or hold nulls."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        return None
    flat, rows = column.flatten(), len(column)
    if column.null_count or flat.null_count:
        return None
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if rows else 0
        if rows and not (lengths == width).all():
            return None
    return flat.to_numpy(zero_copy_only=False).reshape(rows, width)


def ragged_matrix(column: pa.Array | pa.ChunkedArray, *, pad: int = -1) -> np.ndarray:
    """An Arrow list column of ints whose rows differ in length (a split's bag column) as a
    (rows, longest row) int64 array, each row's values first, then ``pad`` (a null row: no
    values). Vectorised over the flat values, no per-row work."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows, width = len(lengths), int(lengths.max()) if len(lengths) else 0
    out = np.full((rows, width), pad, dtype=np.int64)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    starts = np.cumsum(lengths) - lengths
    within = np.arange(len(flat)) - np.repeat(starts, lengths)
    out[np.repeat(np.arange(rows), lengths), within] = flat
    return out


def _bag_matrix(column: Any) -> np.ndarray:
    """A bag column (Arrow list, numpy array of per-row arrays, or an already padded (rows, w)
    array) as a (rows, w) int64 array padded with -1."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return ragged_matrix(column)
    out = np.asarray(column)
    if out.dtype == object:
        return ragged_matrix(pa.array(list(out), type=pa.list_(pa.int64())))
    return out.astype(np.int64, copy=False)


def with_bags(ids: np.ndarray, vals: np.ndarray, mask: np.ndarray,
              bags: Sequence[tuple[BagColumn, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's ids, vals and mask with its history fields' bags put back at their slots: the
    (B, M) arrays that a data set written with the bags in their slots would hold.

    ``ids``, ``vals``, ``mask``: (B, M - widths) arrays, the slots outside the bags; ``bags``:
    each bag column's ``BagColumn`` and the column as it was read (an Arrow list, a numpy array
    of per-row arrays, or (B, w) ids padded with -1; w at most the field's width). A bag of n ids
    gets value 1/sqrt(n) (float64 rounded to float32, as the preprocessing job computes it) and
    mask 1 in its first n slots, id 0, value 0 and mask 0 in the rest. Zero rows come back as
    they are.

    Raises:
        ValueError: the arrays' widths do not add up to the bag columns' layout, or a row's bag
            is longer than its field's width.
    """
    rows = ids.shape[0]
    if rows == 0:  # an empty split: no widths to check (its columns read as (0, 0))
        return ids, vals, mask
    slots = ids.shape[1] + sum(b.width for b, _ in bags)
    rest = np.ones(slots, dtype=bool)
    for b, _ in bags:
        rest[b.slot:b.slot + b.width] = False
    if int(rest.sum()) != ids.shape[1] or any(b.slot + b.width > slots for b, _ in bags):
        raise ValueError(f"a split with {ids.shape[1]} slots besides bag columns "
                         f"{[(b.column, b.slot, b.width) for b, _ in bags]} does not add up to {slots} slots: "
                         "read the split with the bag columns of its own data set's metadata.json")
    out_ids = np.zeros((rows, slots), dtype=ids.dtype)
    out_vals = np.zeros((rows, slots), dtype=vals.dtype)
    out_mask = np.zeros((rows, slots), dtype=mask.dtype)
    out_ids[:, rest], out_vals[:, rest], out_mask[:, rest] = ids, vals, mask
    for b, column in bags:
        matrix = _bag_matrix(column)
        if matrix.shape[1] > b.width:
            raise ValueError(f"column {b.column!r}: a bag of {matrix.shape[1]} values, above its field's "
                             f"{b.width} slots")
        present = matrix >= 0
        n = present.sum(axis=1)
        weight = (1.0 / np.sqrt(np.maximum(n, 1))).astype(np.float32)
        cut = slice(b.slot, b.slot + matrix.shape[1])
        out_ids[:, cut] = np.where(present, matrix, 0)
        out_vals[:, cut] = present * weight[:, None]
        out_mask[:, cut] = present
    return out_ids, out_vals, out_mask


def fixed_width(column: Any, dtype: np.dtype | type, *, name: str = "column") -> np.ndarray:
    """A fixed-width list column as a writable (rows, width) array of ``dtype``.

    Arrow list arrays are reshaped from their flat values (no per-row work); numpy arrays of
    per-row arrays are stacked.

    Raises:
        ValueError: rows of different lengths, or null rows, naming the column.
    """
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        out = list_matrix(column)
        if out is None:
            raise ValueError(f"column {name!r} is not a fixed-width list (rows of different lengths or nulls): "
                             "read a split written by jobs/preprocess.py or raw logs of the model's schema")
    else:
        out = np.asarray(column)
        if out.dtype == object:  # a list column that Petastorm left as an array of arrays
            out = np.stack(out) if len(out) else out.reshape(0, 0)
    out = np.ascontiguousarray(out, dtype=dtype)
    return out if out.flags.writeable else out.copy()  # torch wants writable memory (Arrow's is not)


def to_batch(columns: Mapping[str, Any] | pa.Table | pa.RecordBatch, bags: Sequence[BagColumn] = ()) -> Batch:
    """``ids``, ``vals``, ``mask`` and, when present, ``label`` of split rows as a ``Batch``.

    ``columns``: a pyarrow Table or RecordBatch, or a mapping from column name to an Arrow
    array or numpy array (extra columns are ignored). ``bags``: the split's bag columns (its
    data set's ``DatasetMetadata.bag_columns``), put back at their slots (``with_bags``).

    Raises:
        ValueError: a list column that is not fixed-width, or widths that do not fit ``bags``.
        KeyError: ``ids``, ``vals``, ``mask`` or a bag column is missing.
    """
    if isinstance(columns, (pa.Table, pa.RecordBatch)):
        names = set(columns.schema.names)
        get = columns.column
    else:
        names = set(columns)
        get = columns.__getitem__
    label = None
    if LABEL in names:
        raw = get(LABEL)
        raw = raw.to_numpy() if isinstance(raw, (pa.Array, pa.ChunkedArray)) else raw
        label = torch.from_numpy(np.array(raw, dtype=np.float32))  # a writable copy
    ids, vals, mask = (fixed_width(get(IDS), np.int64, name=IDS), fixed_width(get(VALS), np.float32, name=VALS),
                       fixed_width(get(MASK), np.int8, name=MASK))
    if bags:
        ids, vals, mask = with_bags(ids, vals, mask, [(b, get(b.column)) for b in bags])
    return Batch(ids=torch.from_numpy(ids), vals=torch.from_numpy(vals), mask=torch.from_numpy(mask != 0),
                 label=label)


def read_split(split_dir: str | os.PathLike) -> Batch:
    """Every row of a split directory as one ``Batch``, its bag columns put back at their slots
    (``dataset.split_bag_columns``): for experiments, benchmarks and tests on data that fits in
    memory (training reads through the loader)."""
    import pyarrow.parquet as pq

    return to_batch(pq.read_table(split_dir), split_bag_columns(split_dir))
