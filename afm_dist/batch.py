"""Rows of a preprocessed split (afm_dist/dataset.py) as torch tensors: the one conversion that the
loader, the scoring and explanation tasks, the tests and the benchmarks all use.

Columns arrive as Arrow list arrays (pyarrow tables and record batches: scoring, tests,
benchmarks), as 2-D numpy arrays, or as numpy arrays of per-row arrays (Petastorm). Whatever
they arrive as, ``to_batch`` makes a ``Batch`` of dense tensors. B: rows, M: slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import torch

from afm_dist.dataset import IDS, LABEL, MASK, VALS


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


def to_batch(columns: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> Batch:
    """``ids``, ``vals``, ``mask`` and, when present, ``label`` of split rows as a ``Batch``.

    ``columns``: a pyarrow Table or RecordBatch, or a mapping from column name to an Arrow
    array or numpy array (extra columns are ignored).

    Raises:
        ValueError: a list column that is not fixed-width.
        KeyError: ``ids``, ``vals`` or ``mask`` is missing.
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
    return Batch(ids=torch.from_numpy(fixed_width(get(IDS), np.int64, name=IDS)),
                 vals=torch.from_numpy(fixed_width(get(VALS), np.float32, name=VALS)),
                 mask=torch.from_numpy(fixed_width(get(MASK), np.int8, name=MASK) != 0),
                 label=label)
