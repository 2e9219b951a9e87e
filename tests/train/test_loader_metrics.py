"""Petastorm loading of preprocessed splits, and metrics that are summed across ranks."""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow.parquet as pq
import torch

from afm_dist import metrics as M
from afm_dist.loader import eval_batches, row_group_sizes, steps_per_epoch, train_batches


def test_eval_batches_cover_split_exactly_once_across_ranks(planted_data):
    split = planted_data / "validation"
    expected = np.sort(pq.read_table(split, columns=["row_id"])["row_id"].to_numpy())
    seen = []
    for rank in range(2):
        for batch, row_ids in eval_batches(split, rank=rank, size=2, batch_size=500, with_row_id=True):
            assert batch.ids.dtype == torch.int64 and batch.ids.shape == (len(row_ids), 6)
            assert batch.mask.dtype == torch.bool
            seen.append(row_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), expected)


def test_train_batches_same_step_count_on_every_rank(planted_data):
    split = planted_data / "train"
    rows = sum(row_group_sizes(split))
    steps = steps_per_epoch(rows, 2 * 100)
    counts = []
    for rank in range(2):
        batches = list(train_batches(split, rank=rank, size=2, batch_size=100, steps=steps, seed=3, shuffle_buffer=2000))
        assert all(len(b) == 100 for b in batches)
        counts.append(len(batches))
    assert counts == [steps, steps]


def _numbered_split(directory, sizes: list[int]):
    """A train split of one row group per file, ``sizes`` rows each; row r has ids [r, r + 1]."""
    import pyarrow as pa

    directory.mkdir()
    start = 0
    for i, n in enumerate(sizes):
        r = np.arange(start, start + n)
        pq.write_table(pa.table({"row_id": pa.array(r), "ids": pa.array([[int(x), int(x) + 1] for x in r]),
                                 "vals": pa.array([[1.0, 1.0]] * n, pa.list_(pa.float32())),
                                 "mask": pa.array([[1, 1]] * n, pa.list_(pa.int8())),
                                 "label": pa.array(r.astype(np.float32))}), directory / f"part-{i}.parquet")
        start += n
    return directory, start


def test_an_epoch_of_train_batches_holds_every_row_of_the_shard_once(tmp_path):
    """Rows are drawn without replacement: an epoch of rows / batch steps is a permutation of the
    shard, whether the shard fits in the shuffle buffer or not, and the next epoch (another seed)
    another one."""
    split, rows = _numbered_split(tmp_path / "train", [50, 60, 55, 45, 52, 58])  # 320 rows
    for buffer in (100_000, 64):  # the whole shard in the buffer; a buffer of a fifth of it
        orders = []
        for seed in (11, 12):
            batches = list(train_batches(split, rank=0, size=1, batch_size=32, steps=10, seed=seed,
                                         shuffle_buffer=buffer))
            seen = torch.cat([b.ids[:, 0] for b in batches]).numpy()
            np.testing.assert_array_equal(np.sort(seen), np.arange(rows))
            orders.append(seen)
        assert not np.array_equal(orders[0], orders[1])
    # Two ranks: each reads its own row groups, none twice before it has read them all.
    for rank in range(2):
        seen = torch.cat([b.ids[:, 0] for b in train_batches(split, rank=rank, size=2, batch_size=16, steps=9,
                                                               seed=3)]).numpy()
        assert len(np.unique(seen)) == len(seen) == 144


def test_no_step_left_in_the_epoch_gives_no_batch(tmp_path):
    """An elastic run that goes on from the commit of an epoch's last step asks for 0 more steps:
    it gets none (the loader drew batches without end, and the epoch never ended)."""
    split, _ = _numbered_split(tmp_path / "train", [50, 60, 55])
    for steps in (0, -1):
        assert list(itertools.islice(train_batches(split, rank=0, size=1, batch_size=32, steps=steps, seed=1), 3)) == []
    assert len(list(train_batches(split, rank=0, size=1, batch_size=32, steps=1, seed=1))) == 1


def test_train_batches_are_shuffled_and_seeded(planted_data):
    split = planted_data / "train"
    first = [next(train_batches(split, rank=0, size=1, batch_size=64, steps=1, seed=s)).label for s in (1, 1, 2)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], first[2])


def test_histogram_auc_matches_exact_auc():
    g = torch.Generator().manual_seed(0)
    labels = torch.where(torch.rand(4000, generator=g) < 0.3, 1.0, -1.0)
    scores = labels * 0.8 + torch.randn(4000, generator=g)
    sums = M.new_sums()
    M.accumulate(sums, scores[:1000], labels[:1000], clip=None, binary=True)
    M.accumulate(sums, scores[1000:], labels[1000:], clip=None, binary=True)  # two "ranks", added
    got = M.finish(sums, binary=True)
    pos, neg = scores[labels > 0].numpy(), scores[labels < 0].numpy()
    exact = (pos[:, None] > neg[None, :]).mean()
    assert abs(got["auc"] - exact) < 1e-3
    assert abs(got["rmse"] - float(torch.sqrt(((scores.double() - labels.double()) ** 2).mean()))) < 1e-9
    ll = torch.nn.functional.binary_cross_entropy_with_logits(scores, (labels > 0).float()).item()
    assert abs(got["logloss"] - ll) < 1e-6


def test_clipping_bounds_predictions_before_the_error():
    sums = M.new_sums()
    M.accumulate(sums, torch.tensor([10.0, -10.0]), torch.tensor([5.0, 1.0]), clip=(1.0, 5.0), binary=False)
    assert M.finish(sums, binary=False)["rmse"] == 0.0


def test_prefetched_batches_keep_order_raise_the_producer_s_error_and_close_the_source():
    """The background producer of train_batches: items in order, at most ``depth`` ahead; an
    error of the source reaches the caller at the item where it happened; a caller that stops
    early stops the producer and the source is closed (its Petastorm reader stopped)."""
    import threading

    import pytest

    from afm_dist.loader import prefetched

    made, closed = [], threading.Event()

    def source(n, fail_at=None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise OSError(f"row group {i} unreadable")
                made.append(i)
                yield i
        finally:
            closed.set()

    assert list(prefetched(source(10), depth=3)) == list(range(10))
    assert closed.is_set()

    made.clear()
    closed.clear()
    items = prefetched(source(10, fail_at=6), depth=2)
    got = []
    with pytest.raises(OSError, match="row group 6 unreadable"):
        for i in items:
            got.append(i)
    assert got == [0, 1, 2, 3, 4, 5] and closed.is_set()

    made.clear()
    closed.clear()
    items = prefetched(source(1000), depth=4)
    assert [next(items), next(items)] == [0, 1]
    items.close()  # the caller stops early
    assert closed.is_set()
    assert len(made) <= 2 + 4 + 2  # taken, queued, and at most one in hand and one being put
    assert list(prefetched(source(0), depth=2)) == []

    # Dropped before its first item is taken (a generator that never started runs no ``finally``).
    made.clear()
    closed.clear()
    items = prefetched(source(1000), depth=4)
    del items
    assert closed.wait(timeout=5)  # the producer stopped and closed the source
    assert len(made) <= 1 + 4 + 1


def test_train_batches_from_the_background_thread_match_the_caller_s_thread(planted_data):
    """The prefetching thread changes when batches are made, not which: the same rows in the same
    order as the shuffling generator run in the caller's thread."""
    from pathlib import Path

    from afm_dist.loader import _shuffled_batches

    args = dict(rank=0, size=2, batch_size=16, steps=9, seed=4)
    background = list(train_batches(planted_data / "train", **args))
    direct = list(_shuffled_batches(Path(planted_data / "train"), shuffle_buffer=100_000, workers=1, **args))
    assert len(background) == len(direct) == 9
    for a, b in zip(background, direct):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.label, b.label)


def _read_all(path, convert):
    """Every column of a Parquet directory through ``make_batch_reader``, with ``convert`` as
    Petastorm's conversion of a row group to numpy."""
    from petastorm import arrow_reader_worker, make_batch_reader

    from afm_dist import petastorm_patch

    petastorm_patch.apply()
    arrow_reader_worker.convert_arrow_table_to_numpy_dict = convert
    try:
        with make_batch_reader(f"file://{path}", num_epochs=1, shuffle_row_groups=False, workers_count=1,
                               reader_pool_type="thread") as reader:
            chunks = list(reader)
    finally:
        petastorm_patch.apply()
    return {c: np.concatenate([getattr(x, c) for x in chunks]) for c in chunks[0]._fields}


def test_list_columns_read_from_arrow_match_petastorm_s_own_conversion(tmp_path, monkeypatch):
    """A split's columns (row_id, ids int32, vals float32, mask int8 lists, label) through
    ``make_batch_reader``: the list columns are read from Arrow, never by Petastorm's conversion,
    and every column equals what Petastorm's conversion gives."""
    import pyarrow as pa

    from afm_dist import petastorm_patch

    rows = 1000
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 50, size=(rows, 4)).astype(np.int32)
    vals = rng.random((rows, 4)).astype(np.float32)
    mask = (rng.random((rows, 4)) < 0.8).astype(np.int8)
    table = pa.table({"row_id": pa.array(np.arange(rows, dtype=np.int64)),
                      "ids": pa.array(list(ids), type=pa.list_(pa.int32())),
                      "vals": pa.array(list(vals), type=pa.list_(pa.float32())),
                      "mask": pa.array(list(mask), type=pa.list_(pa.int8())),
                      "label": pa.array(rng.random(rows).astype(np.float32))})
    (tmp_path / "d").mkdir()
    pq.write_table(table, tmp_path / "d" / "part-0.parquet", row_group_size=300)  # 4 row groups

    petastorm_converts = petastorm_patch._PETASTORM_CONVERT
    handed = set()

    def spy(table, schema):
        handed.update(table.column_names)
        return petastorm_converts(table, schema)

    monkeypatch.setattr(petastorm_patch, "_PETASTORM_CONVERT", spy)
    ours = _read_all(tmp_path / "d", petastorm_patch.convert_lists)
    assert handed == {"row_id", "label"}  # the list columns never went through Petastorm's conversion
    theirs = _read_all(tmp_path / "d", petastorm_converts)
    assert sorted(ours) == sorted(theirs) == ["ids", "label", "mask", "row_id", "vals"]
    for c in ours:
        assert ours[c].dtype == theirs[c].dtype and ours[c].shape == theirs[c].shape
        np.testing.assert_array_equal(ours[c], theirs[c])
    np.testing.assert_array_equal(ours["ids"], ids)  # row groups in order: the file's rows
    np.testing.assert_array_equal(ours["vals"], vals)
    np.testing.assert_array_equal(ours["mask"], mask)


def test_list_columns_of_ragged_or_null_rows_go_through_petastorm_s_conversion():
    import pyarrow as pa
    import pytest

    from afm_dist import petastorm_patch

    class Field:
        shape = (None,)

    schema = type("S", (), {"fields": {"ids": Field(), "label": Field()}})()
    ragged = pa.table({"ids": pa.array([[1, 2], [3]], type=pa.list_(pa.int32())), "label": [1.0, 0.0]})
    with pytest.raises(RuntimeError, match="same length"):
        petastorm_patch.convert_lists(ragged, schema)
    # a null element: Petastorm's conversion gives floats with NaN, never the null's raw bytes
    nulls = pa.table({"ids": pa.array([[1, None], [3, 4]], type=pa.list_(pa.int32())), "label": [1.0, 0.0]})
    out = petastorm_patch.convert_lists(nulls, schema)
    assert out["ids"].shape == (2, 2) and np.isnan(out["ids"][0, 1]) and out["ids"][1, 1] == 4
    # a sliced table (offsets into the flat values) reads its own rows only
    sliced = pa.table({"ids": pa.array([[1, 2], [3, 4], [5, 6]], type=pa.list_(pa.int32())),
                       "label": [1.0, 0.0, 1.0]}).slice(1, 2)
    np.testing.assert_array_equal(petastorm_patch.convert_lists(sliced, schema)["ids"], [[3, 4], [5, 6]])


def test_fixed_width_refuses_ragged_rows_even_when_their_total_divides_evenly():
    """[[1, 2, 3], [4]]: 4 values over 2 rows looks like width 2 by the total alone; every row's
    own length is checked, and the error names the column. Regular, sliced, chunked and
    fixed-size lists are read as (rows, width)."""
    import pyarrow as pa
    import pytest

    from afm_dist.batch import fixed_width

    with pytest.raises(ValueError, match="'ids' is not a fixed-width list"):
        fixed_width(pa.array([[1, 2, 3], [4]], type=pa.list_(pa.int32())), np.int64, name="ids")
    with pytest.raises(ValueError, match="'ids' is not a fixed-width list"):
        fixed_width(pa.array([[1, 2], None], type=pa.list_(pa.int32())), np.int64, name="ids")
    regular = pa.array([[1, 2], [3, 4], [5, 6]], type=pa.list_(pa.int32()))
    np.testing.assert_array_equal(fixed_width(regular.slice(1), np.int64), [[3, 4], [5, 6]])
    np.testing.assert_array_equal(fixed_width(pa.chunked_array([regular[:1], regular[1:]]), np.int64),
                                  [[1, 2], [3, 4], [5, 6]])
    fixed = pa.array([[1.5, 2.5], [3.5, 4.5]], type=pa.list_(pa.float32(), 2))
    out = fixed_width(fixed, np.float32)
    assert out.flags.writeable and out.tolist() == [[1.5, 2.5], [3.5, 4.5]]


def test_ragged_bag_rows_are_padded_with_minus_one_from_their_flat_values():
    """A bag column's rows differ in length by design: (rows, longest) int64, values first, then
    -1; a null row is an empty bag; a sliced or chunked column reads its own rows only."""
    import pyarrow as pa

    from afm_dist.batch import ragged_matrix

    column = pa.array([[7, 8, 9], [], None, [4], [5, 6]], type=pa.list_(pa.int32()))
    np.testing.assert_array_equal(ragged_matrix(column), [[7, 8, 9], [-1, -1, -1], [-1, -1, -1], [4, -1, -1],
                                                          [5, 6, -1]])
    np.testing.assert_array_equal(ragged_matrix(column.slice(3)), [[4, -1], [5, 6]])
    np.testing.assert_array_equal(ragged_matrix(pa.chunked_array([column[:1], column[3:]])),
                                  [[7, 8, 9], [4, -1, -1], [5, 6, -1]])
    assert ragged_matrix(pa.array([[]], type=pa.list_(pa.int32()))).shape == (1, 0)


def test_bags_go_back_to_their_slots_weighted_one_over_sqrt_n():
    """Slots 0-1 and 5 of a 6-slot batch are plain; a bag of width 3 sits at slots 2-4. Rows with
    3, 1 and 0 bag values get them at their field's first slots, value 1/sqrt(n) as float32, mask
    1, and id 0 / value 0 / mask 0 after them; the plain slots keep their columns."""
    import pytest

    from afm_dist.batch import with_bags
    from afm_dist.dataset import BagColumn

    bag = BagColumn(column="bag_history", slot=2, width=3)
    ids = np.array([[1, 2, 9], [3, 4, 9], [5, 6, 9]])
    vals = np.array([[1.0, 0.5, 2.0]] * 3, dtype=np.float32)
    mask = np.ones((3, 3), dtype=np.int8)
    matrix = np.array([[10, 11, 12], [13, -1, -1], [-1, -1, -1]])
    out_ids, out_vals, out_mask = with_bags(ids, vals, mask, [(bag, matrix)])
    assert out_ids.tolist() == [[1, 2, 10, 11, 12, 9], [3, 4, 13, 0, 0, 9], [5, 6, 0, 0, 0, 9]]
    w3 = float(np.float32(1 / np.sqrt(3.0)))
    assert out_vals.tolist() == [[1.0, 0.5, w3, w3, w3, 2.0], [1.0, 0.5, 1.0, 0.0, 0.0, 2.0],
                                 [1.0, 0.5, 0.0, 0.0, 0.0, 2.0]]
    assert out_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1]]
    # a narrower matrix (the batch's longest bag is shorter than the field) fills the first slots
    narrow_ids, _, _ = with_bags(ids[1:], vals[1:], mask[1:], [(bag, matrix[1:, :1])])
    assert narrow_ids.tolist() == [[3, 4, 13, 0, 0, 9], [5, 6, 0, 0, 0, 9]]
    empty = np.zeros((0, 0), dtype=np.int64)  # an empty split's columns
    assert [a.shape for a in with_bags(empty, empty.astype(np.float32), empty.astype(np.int8),
                                       [(bag, np.zeros((0, 0), dtype=np.int64))])] == [(0, 0)] * 3
    with pytest.raises(ValueError, match="above its field's 3 slots"):
        with_bags(ids, vals, mask, [(bag, np.zeros((3, 4), dtype=np.int64))])
    with pytest.raises(ValueError, match="does not add up"):
        with_bags(ids, vals, mask, [(BagColumn(column="bag_history", slot=5, width=3), matrix)])


def test_the_loader_reads_a_split_with_a_bag_column_as_all_its_slots(tmp_path):
    """A split with a bag column (its identity file lists it) through Petastorm: train and eval
    batches hold the M slots, bags put back as ``to_batch`` puts them back from the file."""
    import pyarrow as pa

    from afm_dist.batch import read_split
    from afm_dist.dataset import SPLIT_IDENTITY

    rows = 400
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 5, size=rows)
    bags = [list(rng.integers(100, 200, size=n)) for n in lengths]
    table = pa.table({"row_id": pa.array(np.arange(rows, dtype=np.int64)),
                      "ids": pa.array([[i, 7] for i in range(rows)], type=pa.list_(pa.int32())),
                      "vals": pa.array([[1.0, 1.0]] * rows, type=pa.list_(pa.float32())),
                      "mask": pa.array([[1, 1]] * rows, type=pa.list_(pa.int8())),
                      "label": pa.array(rng.random(rows).astype(np.float32)),
                      "bag_history": pa.array(bags, type=pa.list_(pa.int32()))})
    split = tmp_path / "train"
    split.mkdir()
    for g in range(4):
        pq.write_table(table.slice(g * 100, 100), split / f"part-{g}.parquet")
    (split / SPLIT_IDENTITY).write_text('{"split": "train", "schema_hash": "x", "num_features": 200, '
                                        '"bag_columns": [{"column": "bag_history", "slot": 1, "width": 4}]}')
    whole = read_split(split)
    assert whole.ids.shape == (rows, 6)
    for r in (0, 1, 2, 3):
        n = int(lengths[r])
        assert whole.ids[r].tolist() == [r] + bags[r] + [0] * (4 - n) + [7]
        assert whole.mask[r].tolist() == [True] + [True] * n + [False] * (4 - n) + [True]
    evaluated = list(eval_batches(split, rank=0, size=1, batch_size=64))
    got = torch.cat([b.ids for b in evaluated])
    order = got[:, 0].argsort()
    assert torch.equal(got[order], whole.ids) and torch.equal(torch.cat([b.vals for b in evaluated])[order], whole.vals)
    trained = torch.cat([b.ids for b in train_batches(split, rank=0, size=1, batch_size=50, steps=8, seed=1)])
    assert torch.equal(trained[trained[:, 0].argsort()], whole.ids)
