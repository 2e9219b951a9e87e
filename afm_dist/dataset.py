"""The on-disk contract of a preprocessed data set, shared by preprocessing, training and scoring.

A data set directory written by ``jobs/preprocess.py`` looks like::

    DIR/
      train/ validation/ test/   Parquet, one row per instance (columns below), and _dataset.json:
                                 the data set's schema hash and feature count (a copied split keeps them)
      vocabulary/                Parquet: field, value, id, count (raw value -> global feature id)
      history/                   with a history field only. Parquet: owner, field, bag: each owner's
                                 training bag (item local ids, capped), for scoring raw logs
      rejected/                  Parquet: source, line, raw, reason (every malformed input row)
      metadata.json              schema, schema hash, feature layout, counts, seed, inputs
      _AFM_COMPLETE              written last: training and scoring refuse a directory without it

Split columns (the list columns fixed width but the bags, so a Petastorm batch is a set of dense
arrays once the bags are put back):

    row_id  int64            stable id of the instance (hash of its source and position)
    ids     list<int32>[M]   global feature ids, one slot per feature position
    vals    list<float32>[M] feature values x_i (1.0 for one-hot, the real value for numerics,
                             0.0 in padded slots)
    mask    list<int8>[M]    1 for a real slot, 0 for padding (multi-valued fields are padded)
    label   float32          target: a rating, or +1 / -1 for implicit feedback
    bag_F   list<int32>      with a history field F only: the row's bag, its global feature ids
                             (0 to max_values of them, no padding). Its slots are not in ids, vals
                             and mask (its ids are the bag, each value 1/sqrt(n), each mask 1):
                             ``batch.with_bags`` puts them back at the field's slots, so that a
                             batch has the M slots. Writing three arrays of max_values slots a row
                             took the preprocessing job most of its time with a history
                             (BENCHMARKS.md). Data sets of format 2 have them
                             (``DatasetMetadata.bag_columns``, from the layout).

M (``num_slots``) is the sum of the fields' widths: 1 for a categorical or numeric field,
``max_values`` for a multi-valued or history field. ids, vals and mask hold M slots less the
bag columns' widths (data sets written before bag columns hold all M).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from afm_dist.io import strip_file_scheme, write_text_atomic

COMPLETE_MARKER = "_AFM_COMPLETE"
METADATA_FILE = "metadata.json"
SPLIT_IDENTITY = "_dataset.json"  # in each split directory: which data set its feature ids belong to
# Split names: the single place they are spelled (the schema's split fractions, the split
# writer's directories, the trainer and the benchmarks all take them from here).
TRAIN, VALIDATION, TEST = SPLITS = ("train", "validation", "test")
VOCABULARY = "vocabulary"  # directory of the value -> feature id table (data set and model directory)
# Directory of the history fields' training bags (data set and model directory), and its columns:
# the owner's local id, the history field's name, the bag (array<int> of item local ids, in the cap's order).
HISTORY = "history"
HISTORY_OWNER, HISTORY_FIELD, HISTORY_BAG = "owner", "field", "bag"
REJECTED = "rejected"  # directory of the malformed input rows (data set and scoring output)
REJECTED_COLUMNS = "source string, line bigint, raw string, reason string"  # its Parquet schema
# The format a data set is written in: 1, or 2 for splits with bag columns (a history field), which
# an afm-dist that reads only 1 would read as rows without their bags. This one reads both.
BAG_COLUMNS_VERSION = 2
READABLE_VERSIONS = (1, 2)

# Column names of a split: the single place they are spelled.
ROW_ID, IDS, VALS, MASK, LABEL = "row_id", "ids", "vals", "mask", "label"
BAG_PREFIX = "bag_"  # + a history field's name: the column of its bags


class DatasetError(Exception):
    """A data set directory that cannot be used, with what to do about it in the message."""


@dataclass(frozen=True)
class FieldLayout:
    """Where one schema field lives in the global feature-id space and in the slot vector."""

    name: str
    kind: str  # categorical | multi_categorical | numeric | history (a bag built from the training split)
    offset: int  # first global feature id of this field
    size: int  # number of feature ids (vocabulary incl. out-of-vocabulary id, or buckets)
    slot: int  # first slot (column of ids/vals/mask) of this field
    width: int  # number of slots: 1, or max_values for a multi-valued or history field
    # The field's slots enter the pair layer as one vector, the sum of their e_i = v_i x_i (a bag
    # field: its values are not paired with each other); False: every slot is paired on its own.
    pooled: bool = False


def slot_groups(fields: Sequence[FieldLayout]) -> tuple[int, ...]:
    """Widths of the pair layer's inputs, in slot order: a pooled field's width (its slots summed
    into one vector), 1 for every other slot. Sums to the slots; all ones when no field is pooled."""
    out: list[int] = []
    for f in fields:
        out += [f.width] if f.pooled else [1] * f.width
    return tuple(out)


@dataclass(frozen=True)
class BagColumn:
    """A split column that holds a history field's bags apart from ids, vals and mask."""

    column: str  # BAG_PREFIX + the field's name
    slot: int  # the field's first slot in a batch (its FieldLayout.slot)
    width: int  # its slots in a batch: the field's max_values


@dataclass
class DatasetMetadata:
    """Everything training and scoring need to know about a preprocessed data set."""

    schema: dict[str, Any]
    schema_hash: str
    fields: list[FieldLayout]
    num_features: int
    num_slots: int
    target: dict[str, Any]  # {"kind": "explicit"|"implicit", "min": float, "max": float}
    counts: dict[str, Any]  # input, rejected, and per split: rows, positive, negative, label_sum
    seed: int
    inputs: list[str]
    format_version: int = 1  # a data set with bag columns is written with BAG_COLUMNS_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetMetadata":
        d = dict(d)
        d["fields"] = [FieldLayout(**f) for f in d["fields"]]
        return cls(**d)

    def target_range(self) -> tuple[float, float] | None:
        """(min, max) of the training target, the range predictions are clipped to for RMSE and
        MAE as in the paper's evaluation; None when the metadata has none."""
        if "min" not in self.target:
            return None
        return float(self.target["min"]), float(self.target["max"])

    def slot_groups(self) -> tuple[int, ...]:
        """Widths of the pair layer's inputs, in slot order (``slot_groups`` of the fields)."""
        return slot_groups(self.fields)

    @property
    def bag_columns(self) -> tuple[BagColumn, ...]:
        """The splits' bag columns, in slot order: one per history field of a format-2 data set
        (none for a data set without a history field, or of format 1, whose splits hold the bags
        in their slots): what ``batch.with_bags`` takes."""
        if self.format_version < BAG_COLUMNS_VERSION:
            return ()
        return tuple(BagColumn(column=BAG_PREFIX + f.name, slot=f.slot, width=f.width)
                     for f in self.fields if f.kind == "history")

    def target_mean(self, split: str) -> float | None:
        """Mean target of ``split``'s rows, from the label sum its write counted; None for an
        empty split or a data set written before the sum was counted."""
        counts = self.counts.get(split, {})
        if "label_sum" not in counts or not counts.get("rows"):
            return None
        return float(counts["label_sum"]) / int(counts["rows"])

    def split_rows(self, split: str) -> int:
        """Rows (instances) written to ``split``."""
        return int(self.counts[split]["rows"])

    def save(self, directory: str | os.PathLike) -> None:
        """``metadata.json`` in ``directory``, and in each split directory its identity
        (``SPLIT_IDENTITY``: the schema hash, the feature count and any bag columns), so that a
        split copied without the data set still says which data set its feature ids belong to,
        and how its rows are read."""
        write_text_atomic(Path(directory) / METADATA_FILE, self.to_json())
        for split in SPLITS:
            if (Path(directory) / split).is_dir():
                write_text_atomic(Path(directory) / split / SPLIT_IDENTITY, json.dumps(self._identity(split)) + "\n")

    def _identity(self, split: str) -> dict[str, Any]:
        out = {"split": split, "schema_hash": self.schema_hash, "num_features": self.num_features}
        if self.bag_columns:
            out["bag_columns"] = [asdict(b) for b in self.bag_columns]
        return out




def read_split_identity(split_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A split directory's identity (``split``, ``schema_hash``, ``num_features`` and, with bag
    columns, ``bag_columns``), from its own ``SPLIT_IDENTITY`` file or else from the
    ``metadata.json`` of the data set around it (splits written before the file existed); None
    when neither is there."""
    d = Path(split_dir)
    own, around = d / SPLIT_IDENTITY, d.parent / METADATA_FILE
    try:
        if own.exists():
            return json.loads(own.read_text())
        if around.exists():
            return read_metadata(around)._identity(d.name)
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{own if own.exists() else around}: unreadable ({e}); preprocess the data set again") from e
    return None


def split_bag_columns(split_dir: str | os.PathLike) -> tuple[BagColumn, ...]:
    """The bag columns of a split directory (``read_split_identity``), to read its rows with
    (``batch.to_batch``); none for a split without them, or without an identity.

    Raises:
        DatasetError: an identity file that cannot be read.
    """
    identity = read_split_identity(split_dir) or {}
    return tuple(BagColumn(**b) for b in identity.get("bag_columns", ()))


def mark_complete(directory: str | os.PathLike) -> None:
    """Write the completion marker: the last step of a job that produced ``directory``."""
    write_text_atomic(Path(directory) / COMPLETE_MARKER, "complete\n")


def require_complete(directory: str | os.PathLike) -> Path:
    """Return ``directory`` as a Path if a job finished writing it, else raise DatasetError."""
    d = Path(strip_file_scheme(str(directory)))
    if not d.is_dir():
        raise DatasetError(f"{d}: no such data set directory. Run jobs/preprocess.py to create it.")
    if not (d / COMPLETE_MARKER).exists():
        raise DatasetError(
            f"{d}: no {COMPLETE_MARKER} marker, so the job that wrote it did not finish "
            "(killed or failed). Re-run jobs/preprocess.py with --overwrite."
        )
    return d


def load_metadata(directory: str | os.PathLike) -> DatasetMetadata:
    """Load the metadata of a complete data set directory.

    Raises:
        DatasetError: the directory is missing, unfinished, or its metadata unreadable.
    """
    return read_metadata(require_complete(directory) / METADATA_FILE)


def read_metadata(path: str | os.PathLike) -> DatasetMetadata:
    """Read a ``metadata.json`` (without checking that its data set is complete).

    Raises:
        DatasetError: unreadable, or written by another format version.
    """
    path = Path(path)
    try:
        meta = DatasetMetadata.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DatasetError(f"{path}: unreadable metadata ({e}). Re-run jobs/preprocess.py.") from e
    if meta.format_version not in READABLE_VERSIONS:
        raise DatasetError(
            f"{path}: format_version {meta.format_version}, this afm-dist reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Re-run jobs/preprocess.py with this version."
        )
    return meta


def split_path(directory: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(directory) / split

