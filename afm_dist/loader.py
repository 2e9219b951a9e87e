"""Petastorm readers over a preprocessed split, turned into fixed-size torch batches.

Training reads its shard of the train split pass after pass, each row once a pass, and the
trainer takes exactly ``steps_per_epoch`` batches from it, so every rank runs the same number of steps however
uneven the shards are and no collective waits for a rank that ran out of data. Evaluation reads
its shard once, every row exactly once across ranks.
"""
from __future__ import annotations

import itertools
import math
import queue
import threading
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import numpy as np
import pyarrow.parquet as pq

from afm_dist import petastorm_patch  # first: it makes Petastorm importable on pyarrow >= 16 / NumPy 2
from petastorm import make_batch_reader  # noqa: E402
from afm_dist.batch import Batch, fixed_width, to_batch, with_bags
from afm_dist.dataset import IDS, LABEL, MASK, ROW_ID, VALS, BagColumn, DatasetError, split_bag_columns

COLUMNS = (IDS, VALS, MASK, LABEL)
_DTYPES = {IDS: np.int64, VALS: np.float32, MASK: np.int8, LABEL: np.float32, ROW_ID: np.int64}


def _parquet_files(split_dir: Path) -> list[Path]:
    files = sorted(p for p in split_dir.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise DatasetError(f"{split_dir}: no Parquet files. Re-run jobs/preprocess.py.")
    return files


def row_group_sizes(split_dir: str | Path) -> list[int]:
    """Rows in each Parquet row group of a split, read from the file footers only."""
    sizes = []
    for f in _parquet_files(Path(split_dir)):
        meta = pq.ParquetFile(f).metadata
        sizes.extend(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return sizes


def label_mean(split_dir: str | Path) -> float:
    """Mean of a split's ``label`` column, read with pyarrow (that column alone).

    Raises:
        DatasetError: the split has no row.
    """
    import pyarrow.compute as pc

    files = _parquet_files(Path(split_dir))
    labels = [pq.read_table(f, columns=[LABEL]).column(LABEL) for f in files]
    rows = sum(len(c) for c in labels)
    if not rows:
        raise DatasetError(f"{split_dir}: no rows to take the mean target of")
    return sum(float(pc.sum(c).as_py() or 0.0) for c in labels) / rows


def _to_numpy(chunk, columns: tuple[str, ...], bags: Sequence[BagColumn] = ()) -> dict[str, np.ndarray]:
    """A Petastorm batch's columns as numpy arrays, list columns (rows, width), the split's bag
    columns put back into ids, vals and mask (``batch.with_bags``)."""
    out = {c: fixed_width(getattr(chunk, c), _DTYPES[c], name=c) for c in columns}
    if bags:
        out[IDS], out[VALS], out[MASK] = with_bags(out[IDS], out[VALS], out[MASK],
                                                   [(b, getattr(chunk, b.column)) for b in bags])
    return out


@contextmanager
def _reader(split_dir: Path, *, shard: int, shards: int, num_epochs: int | None, shuffle: bool, seed: int,
            columns: tuple[str, ...], workers: int, bags: Sequence[BagColumn] = ()):
    petastorm_patch.apply()  # without it a read can end one row group early (see the module)
    # Petastorm 0.13 uses pyarrow's legacy dataset API: pyarrow 14 warns; newer ones get petastorm_compat's.
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    # Horovod: each rank reads only its own row groups (cur_shard / shard_count).
    reader = make_batch_reader(
        f"file://{split_dir.resolve()}",
        schema_fields=list(columns) + [b.column for b in bags],
        cur_shard=shard,
        shard_count=shards,
        num_epochs=num_epochs,
        shuffle_row_groups=shuffle,
        seed=seed,
        workers_count=workers,
        reader_pool_type="thread",
    )
    try:
        yield reader
    finally:  # not the reader's own __exit__, which prints "Cache cleanup complete." every time
        reader.stop()
        reader.join()


def train_batches(split_dir: str | Path, *, rank: int, size: int, batch_size: int, steps: int, seed: int,
                  shuffle_buffer: int = 100_000, workers: int = 1, prefetch_rows: int = 65_536) -> Iterator[Batch]:
    """Yield exactly ``steps`` shuffled batches of ``batch_size`` rows from this rank's shard
    (none for ``steps`` <= 0).

    Rows are shuffled twice: Petastorm shuffles the order of row groups (seeded), and a buffer
    of ``shuffle_buffer`` rows is permuted before batches are cut from it. The seed should
    change every epoch (the trainer passes ``seed + epoch``), which is also what makes an
    epoch replayable on ``--resume``.

    The buffer is filled and the batches cut in a background thread, up to ``prefetch_rows``
    rows of batches ahead of the caller (at least 2 batches): the caller's step does not wait
    while the buffer takes in the next row group. Without it, each rank of a data-parallel run
    stalls at its own moments, and every stall of one rank is a wait of the others in the
    step's collective (the time a second rank lost end to end, BENCHMARKS.md).

    Raises:
        DatasetError: fewer Parquet row groups than ranks (at the call); an error of the reader
            is raised where the caller takes the next batch.
    """
    depth = max(2, prefetch_rows // batch_size)
    return prefetched(_shuffled_batches(Path(split_dir), rank=rank, size=size, batch_size=batch_size, steps=steps,
                                        seed=seed, shuffle_buffer=shuffle_buffer, workers=workers), depth)


T = TypeVar("T")


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items`` produced by a background thread, at most ``depth`` ahead of the caller.

    The producer's exception is raised to the caller where the item would have come. When the
    caller stops early (or the generator is closed), the producer stops and closes ``items``
    (its readers) before this returns.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:  # False: the caller has gone
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            put(_Failed(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # Run the first step of the producer now, so errors at the start (no row groups) are raised here.
    first = next(items, _END)
    if first is _END:
        return iter(())
    producer = threading.Thread(target=produce, name="afm-prefetch", daemon=True)
    producer.start()

    def consume() -> Iterator[T]:
        try:
            yield first
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()
            producer.join()

    batches = consume()
    # A generator dropped before its first item never runs its ``finally``: stop the producer then too.
    weakref.finalize(batches, stop.set)
    return batches


def _shuffled_batches(split_dir: Path, *, rank: int, size: int, batch_size: int, steps: int, seed: int,
                      shuffle_buffer: int, workers: int) -> Iterator[Batch]:
    """``train_batches``' batches, in the caller's thread.

    The shard is read pass after pass (one Petastorm reader a pass, its row groups in an order of
    the pass's own seed). Within a pass the buffer gives out half its rows each time it is full and
    keeps the other half to mix with the next row groups; at the pass's end it gives out all it
    holds but the last partial batch, before any row of the next pass comes in. So each pass
    yields every row of the shard once, and a shard no larger than the buffer is one uniform
    permutation a pass. (Reading the shard as one endless stream, a full buffer kept half of it
    into the next pass: on a shard the buffer holds whole, a fifth of an epoch's rows were
    repeats and as many were never seen, MovieLens ratings, 70,821 rows.)
    """
    sizes = row_group_sizes(split_dir)
    groups = len(sizes)
    if groups < size:
        raise DatasetError(
            f"{split_dir}: {groups} Parquet row groups for {size} workers; every worker needs at least one. "
            "Re-run jobs/preprocess.py with smaller row groups (more files), or use fewer workers."
        )
    if steps <= 0:  # an epoch gone on from a commit of its last step: nothing left to draw
        return
    bags = split_bag_columns(split_dir)
    rng = np.random.default_rng(seed * 1_000_003 + rank)
    capacity = max(2 * batch_size, min(shuffle_buffer, sum(sizes) // size))
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    produced = 0

    def cut(keep_half: bool) -> Iterator[Batch]:
        """Permute the buffer and give out its batches: half of it, or all but the last partial batch."""
        nonlocal pending, pending_rows
        buf = {c: np.concatenate([p[c] for p in pending]) for c in COLUMNS}
        order = rng.permutation(pending_rows)
        n_out = pending_rows // batch_size
        if keep_half:
            n_out = max(1, n_out - (capacity // batch_size) // 2)
        for b in range(n_out):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield to_batch({c: buf[c][idx] for c in COLUMNS})
        rest = order[n_out * batch_size:]
        pending = [{c: buf[c][rest] for c in COLUMNS}]
        pending_rows = len(rest)

    def emit(keep_half: bool):
        """``cut``'s batches up to the epoch's last; True when that one has gone out."""
        nonlocal produced
        for batch in cut(keep_half):
            yield batch
            produced += 1
            if produced == steps:
                return True
        return False

    for n in itertools.count():
        # Petastorm's seed for the row groups' order in pass n (32 bits: Petastorm seeds NumPy with it).
        pass_seed = int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
        with _reader(split_dir, shard=rank, shards=size, num_epochs=1, shuffle=True, seed=pass_seed,
                     columns=COLUMNS, workers=workers, bags=bags) as reader:
            for chunk in reader:
                pending.append(_to_numpy(chunk, COLUMNS, bags))
                pending_rows += len(pending[-1][LABEL])
                # The epoch's last batches (the one completed from the next pass): as soon as the
                # buffer holds them, not after a whole buffer of the next pass.
                last = pending_rows >= (steps - produced) * batch_size
                if pending_rows < capacity and not last:
                    continue
                if (yield from emit(keep_half=not last)):
                    return
        if pending_rows >= batch_size and (yield from emit(keep_half=False)):
            return


def eval_batches(split_dir: str | Path, *, rank: int, size: int, batch_size: int = 8192,
                 workers: int = 1, with_row_id: bool = False) -> Iterator[Batch | tuple[Batch, np.ndarray]]:
    """Yield this rank's share of a split once, unshuffled; across ranks every row exactly once.

    With fewer row groups than ranks, the ranks beyond the number of row groups read nothing.
    """
    split_dir = Path(split_dir)
    groups = len(row_group_sizes(split_dir))
    shards = min(size, groups)
    if rank >= shards:
        return
    columns = COLUMNS + ((ROW_ID,) if with_row_id else ())
    bags = split_bag_columns(split_dir)
    with _reader(split_dir, shard=rank, shards=shards, num_epochs=1, shuffle=False, seed=0,
                 columns=columns, workers=workers, bags=bags) as reader:
        for chunk in reader:
            arrays = _to_numpy(chunk, columns, bags)
            n = len(arrays[LABEL])
            for start in range(0, n, batch_size):
                part = {c: arrays[c][start:start + batch_size] for c in columns}
                batch = to_batch(part)
                yield (batch, part[ROW_ID]) if with_row_id else batch


def steps_per_epoch(train_rows: int, global_batch: int) -> int:
    """One epoch = the whole train split once, in global batches (the last one completed by wrapping)."""
    return max(1, math.ceil(train_rows / global_batch))
