"""Petastorm's make_batch_reader on whichever stack this venv has (pyarrow 14 + NumPy 1 as Petastorm
expects; pyarrow 25 + NumPy 1 or pyarrow 26 + NumPy 2 through afm_dist/petastorm_compat.py): the row groups each shard gets, their order under a
seed, every row once, streaming epochs, Hive partitions. The expected values are derived here from
the rules Petastorm 0.13.1 documents (row groups in path order, sharded by index after a seeded
shuffle, ventilated in a seeded permutation), not read back from Petastorm."""
import importlib.util
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_dist import petastorm_compat, petastorm_patch  # first: makes Petastorm importable on pyarrow >= 16
from petastorm import make_batch_reader  # noqa: E402

ROWS = 10  # a row group
FILES = {"part-00000.parquet": 3, "part-00001.parquet": 4}  # file -> row groups (sorted by path: 7 in all)


@pytest.fixture
def split(tmp_path):
    """A split as Spark leaves it: two Parquet files of 3 and 4 row groups, row_id = 10 * group + row,
    and the marker and side files that are not data."""
    d = tmp_path / "train"
    d.mkdir()
    group = 0
    for name, groups in FILES.items():
        ids = np.arange(group * ROWS, (group + groups) * ROWS, dtype=np.int64)
        table = pa.table({"row_id": ids, "ids": pa.array([[int(i), int(i) + 1] for i in ids], pa.list_(pa.int64())),
                          "label": (ids % 5).astype(np.float32)})
        pq.write_table(table, d / name, row_group_size=ROWS)
        group += groups
    (d / "_SUCCESS").write_text("")
    (d / "_dataset.json").write_text("{}")
    (d / ".part-00000.parquet.crc").write_bytes(b"\0")
    return d


def _groups(url, **kw):
    """The row groups a reader returns, in order, as their first row_id // ROWS (one batch a row group)."""
    limit = kw.pop("limit", None)
    petastorm_patch.apply()
    out = []
    with make_batch_reader(url, schema_fields=["row_id", "ids", "label"], workers_count=1,
                           reader_pool_type="thread", **kw) as reader:
        for batch in reader:
            rows = np.asarray(batch.row_id)
            assert len(rows) == ROWS and (rows == rows[0] + np.arange(ROWS)).all()
            assert (np.asarray(batch.ids)[:, 1] == rows + 1).all() and (np.asarray(batch.label) == rows % 5).all()
            out.append(int(rows[0]) // ROWS)
            if limit is not None and len(out) >= limit:
                break
    return out


def _expected(seed: int, shard: int, shards: int) -> list[int]:
    groups = list(range(sum(FILES.values())))          # row groups in path order
    random.Random(seed).shuffle(groups)                 # reader._partition_row_groups, seeded
    mine = [g for g in groups if g % shards == shard]   # this shard's
    return [mine[i] for i in np.random.default_rng(seed).permutation(len(mine))]  # the ventilator's order


@pytest.mark.stack
@pytest.mark.parametrize("seed", [7, 2017])
def test_shards_get_their_row_groups_in_the_seeded_order_and_every_row_once(split, seed):
    got = {s: _groups(f"file://{split}", cur_shard=s, shard_count=2, seed=seed, shuffle_row_groups=True,
                      num_epochs=1) for s in (0, 1)}
    assert got == {s: _expected(seed, s, 2) for s in (0, 1)}
    assert sorted(got[0] + got[1]) == list(range(7))  # 70 rows, each once


@pytest.mark.stack
def test_unshuffled_reads_in_path_order_and_streams_epochs(split):
    assert _groups(f"file://{split}", num_epochs=1, shuffle_row_groups=False) == list(range(7))
    # num_epochs=None streams: the same permutation every epoch (the ventilator draws it once)
    order = _expected(3, 1, 2)
    streamed = _groups(f"file://{split}", cur_shard=1, shard_count=2, seed=3, num_epochs=None, limit=3 * len(order))
    assert streamed == order * 3


@pytest.mark.stack
def test_hive_partitions_become_columns(tmp_path):
    d = tmp_path / "parted"
    for day in (3, 11):
        (d / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"row_id": np.arange(4, dtype=np.int64) + 100 * day}), d / f"day={day}" / "p.parquet")
    petastorm_patch.apply()
    seen = {}
    with make_batch_reader(f"file://{d}", schema_fields=["row_id", "day"], workers_count=1, num_epochs=1,
                           shuffle_row_groups=False) as reader:
        for batch in reader:
            for r, day in zip(np.asarray(batch.row_id), np.asarray(batch.day)):
                seen[int(r)] = int(day)
    assert seen == {100 * day + i: day for day in (3, 11) for i in range(4)}


@pytest.mark.stack
def test_the_shims_leave_pyarrow_and_numpy_as_they_are():
    """install() stands in for removed names only inside Petastorm's modules."""
    legacy_pyarrow = int(pa.__version__.split(".")[0]) < 16
    assert (importlib.util.find_spec("pyarrow.filesystem") is not None) == legacy_pyarrow
    assert hasattr(np, "unicode_") == (int(np.__version__.split(".")[0]) < 2)
    assert ("pyarrow.filesystem" in petastorm_compat.installed()) == (not legacy_pyarrow)


@pytest.mark.stack
def test_partitions_and_pieces_in_pyarrow_14s_order(tmp_path):
    """pyarrow 14 sorted the pieces by their whole path: day=1-x/ before day=1/ ('-' < '/'), and
    gave partition codes in each level's sorted listing, directories without data included."""
    d = tmp_path / "parted"
    for n, day in enumerate(["1", "1-x", "11", "3"]):
        (d / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"row_id": np.array([n], dtype=np.int64)}), d / f"day={day}" / "p.parquet")
    (d / "day=0").mkdir()  # no data: still a partition value
    petastorm_patch.apply()
    with make_batch_reader(f"file://{d}", schema_fields=["row_id", "day"], workers_count=1, num_epochs=1,
                           shuffle_row_groups=False) as reader:
        got = [(int(b.row_id[0]), str(b.day[0])) for b in reader]
    assert got == [(1, "1-x"), (0, "1"), (2, "11"), (3, "3")]


@pytest.mark.stack
def test_a_summary_metadata_file_alone_is_read_as_the_common_metadata(split):
    """A split with a _metadata summary (Spark's summary files) and no _common_metadata reads all its rows."""
    files = sorted(split.glob("part-*.parquet"))
    metas = []
    for f in files:
        meta = pq.read_metadata(f)
        meta.set_file_path(f.name)
        metas.append(meta)
    for m in metas[1:]:
        metas[0].append_row_groups(m)
    metas[0].write_metadata_file(split / "_metadata")
    assert sorted(_groups(f"file://{split}", num_epochs=1, shuffle_row_groups=False)) == list(range(7))
