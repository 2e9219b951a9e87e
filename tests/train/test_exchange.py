"""The per-step gradient exchange (afm_dist/training/exchange.py) under the real launcher
(horovodrun -np 2 --gloo)."""
from __future__ import annotations

import json

from tests.conftest import REPO, run_horovod
from tests.train.test_train import check


def test_exchange_gives_horovods_numbers_on_two_ranks(tmp_path):
    """One allgather a step (the small dense gradients in it), or a grouped allreduce and the
    allgather, its buffers padded to the batch's lookups or holding only each rank's distinct rows
    (lengths that differ between ranks and steps): the parameters of hvd.DistributedOptimizer's
    exchange (one collective a parameter) after several steps on overlapping rows, and those of
    the dense allreduce of whole tables; every rank ends with rank 0's parameters."""
    check(run_horovod([str(REPO / "tests/scripts/exchange_check.py"), str(tmp_path)], np=2, timeout=240))
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["size"] == 2
        for name in ("fm", "wide_deep", "afm"):
            r = result[name]
            assert r["moved"] > 1e-2, (name, r)  # the steps did train
            assert r["vs_horovod"] <= 1e-8, (name, r)  # float64: the same numbers but for the order of sums
            assert r["vs_dense"] <= 1e-8, (name, r)
            assert r["vs_dense_allreduced"] <= 1e-8, (name, r)
            assert r["vs_distinct_only"] <= 1e-8, (name, r)
            assert r["padded"] == [True, False], (name, r)  # small here: padded by default; never at limit 0
            assert r["vs_rank0"] == 0.0, (name, r)
        # FM's bias and AFM's attention network are small: gathered; Wide&Deep's MLP is allreduced
        assert [result[name]["dense_in_gather"] for name in ("fm", "wide_deep", "afm")] == [True, False, True]


def _table(rows: int, k: int, dtype, ids: list[int]):
    import torch

    p = torch.nn.Parameter(torch.zeros(rows, k, dtype=dtype))
    values = torch.arange(1, len(ids) * k + 1, dtype=dtype).reshape(len(ids), k)
    p.grad = torch.sparse_coo_tensor(torch.tensor([ids]), values, (rows, k))
    return p, values


def test_pack_and_unpack_round_trip_every_rank_s_rows():
    """One buffer per rank, as long as its distinct rows (not the batch's lookups): its tables' row
    counts, then each table's ids (int64 bits) and rows. Buffers of different lengths, gathered one
    after the other, come back exactly, rank by rank, for float32 and float16 tables, a table with
    no rows on a rank included; ``sum_rows`` then sums them per id."""
    import pytest
    import torch

    from afm_dist.training.exchange import _pack, _padded, _rows, _unpack, sum_rows

    for dtype in (torch.float32, torch.float16):
        big, big_rows = _table(1000, 4, dtype, [3, 999])
        small, small_rows = _table(5, 1, dtype, [0, 4])
        rank0 = _pack(sum_rows([_rows(big), _rows(small)]), [big, small])
        # rank 1 looks 999 up twice: summed on the rank first, so its buffer holds 3 distinct rows
        big.grad = torch.sparse_coo_tensor(torch.tensor([[999, 7, 999, 5]]), big_rows[[0, 0, 1, 1]] * 10, (1000, 4))
        small.grad = None  # no rows of this table on rank 1
        rank1 = _pack(sum_rows([_rows(big), _rows(small)]), [big, small])
        word = 8 // torch.empty((), dtype=dtype).element_size()  # elements of an int64
        assert rank0.dtype == dtype and rank0.numel() == 2 * word + 2 * word + 2 * 4 + 2 * word + 2 * 1
        assert rank1.numel() == 2 * word + 3 * word + 3 * 4
        prefixes, [(ids_a, rows_a), (ids_b, rows_b)] = _unpack(torch.cat([rank0, rank1]), [big, small], 2, 0)
        assert prefixes.shape == (2, 0)
        assert ids_a.tolist() == [3, 999, 5, 7, 999]
        assert torch.equal(rows_a, torch.cat([big_rows, big_rows[1:] * 10, big_rows[:1] * 10,
                                              (big_rows[0] + big_rows[1]).unsqueeze(0) * 10]))
        assert ids_b.tolist() == [0, 4] and torch.equal(rows_b, small_rows)
        (ids_a, sums_a), (ids_b, sums_b) = sum_rows([(ids_a, rows_a), (ids_b, rows_b)])
        assert ids_a.tolist() == [3, 5, 7, 999]  # 999: rank 0's row and both of rank 1's
        assert torch.equal(sums_a, torch.stack([big_rows[0], big_rows[1] * 10, big_rows[0] * 10,
                                                big_rows[1] + (big_rows[0] + big_rows[1]) * 10]))
        assert ids_b.tolist() == [0, 4] and torch.equal(sums_b, small_rows)
        # padded to 4 and 5 rows a table: every buffer as long, read without its counts
        padded = [_pack([_padded(i, r, n) for (i, r), n in zip(sum_rows([_rows(big), _rows(small)]), (4, 5))],
                        [big, small]) for _ in range(2)]
        assert padded[0].numel() == 2 * word + 4 * (word + 4) + 5 * (word + 1)
        _, [(ids_a, rows_a), (ids_b, _)] = _unpack(torch.cat(padded), [big, small], 2, 0, slots=[4, 5])
        assert ids_a.tolist() == [5, 7, 999, -1] * 2 and ids_b.tolist() == [-1] * 10
        assert torch.equal(rows_a[3], torch.zeros(4, dtype=dtype))
        # ranks that padded to different slots: refused, never read as garbage ids
        other = _pack([_padded(i, r, n) for (i, r), n in zip(sum_rows([_rows(big), _rows(small)]), (3, 6))],
                      [big, small])
        with pytest.raises(RuntimeError, match="padded to different slots"):
            _unpack(torch.cat([padded[0], other]), [big, small], 2, 0, slots=[4, 5])
    mixed_a, _ = _table(10, 2, torch.float16, [1])
    mixed_b, _ = _table(10, 2, torch.float32, [1])
    with pytest.raises(ValueError, match="different dtypes"):
        _pack(sum_rows([_rows(mixed_a), _rows(mixed_b)]), [mixed_a, mixed_b])


def test_dense_prefix_of_odd_length_leaves_the_ids_exact():
    """The small dense gradients go after the counts (an FM's bias: one float32, so the ids' int64
    bits start at an odd float): after the allgather every rank's prefix, id and row comes back
    exactly, large ids included."""
    import torch

    from afm_dist.training.exchange import _pack, _unpack

    table = torch.zeros(1, 3).expand(2**40, 3)  # 2^40 rows, none allocated
    rows = torch.arange(1.0, 7.0).reshape(2, 3)
    dense = [torch.tensor([0.25]), torch.tensor([1.5, -2.0])]  # 3 values: odd
    rank0 = _pack([(torch.tensor([3, 2**33 + 5]), rows)], [table], prefix=dense)
    rank1 = _pack([(torch.tensor([2**33 + 5]), rows[1:] * 3)], [table], prefix=[d * 3 for d in dense])
    assert rank0.dtype == torch.float32 and rank0.numel() == 2 + 3 + 2 * 2 + 2 * 3
    prefixes, [(ids, got)] = _unpack(torch.cat([rank0, rank1]), [table], 2, 3)
    assert torch.equal(prefixes.sum(dim=0) / 2, torch.tensor([0.5, 3.0, -4.0]))
    assert ids.tolist() == [3, 2**33 + 5, 2**33 + 5]
    assert torch.equal(got, torch.cat([rows, rows[1:] * 3]))


def test_dense_gradients_ride_in_the_allgather_only_when_few_for_the_ranks():
    """An AFM's dense gradients (k = t = 64: W, b, h, p and the bias, 4,289 values) travel in the
    allgather on 2 and on 30 ranks, and take their own allreduce on 31 (each rank would receive
    over 128k values); an MLP of 400 x 400 never rides; a limit of 0 always allreduces."""
    from afm_dist.models import ModelConfig, build_model
    from afm_dist.training.exchange import GradientExchange

    afm = build_model("afm", 1000, 6, ModelConfig(embedding_dim=64, attention_factor=64))
    exchange = GradientExchange(afm)
    assert sum(p.numel() for p in exchange.dense) == 4289
    assert [exchange.gathers_dense(n) for n in (1, 2, 30, 31)] == [True, True, True, False]
    assert not GradientExchange(afm, dense_gather_limit=0).gathers_dense(2)
    deep = build_model("wide_deep", 1000, 6, ModelConfig(embedding_dim=64, mlp_sizes=(400, 400)))
    assert not GradientExchange(deep).gathers_dense(2)


def test_sum_rows_shares_one_unique_between_tables_of_the_same_ids():
    """Per table the rows summed per id, as ``coalesce`` does, whether or not the tables share ids."""
    import torch

    from afm_dist.training.exchange import sum_rows

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(-1, 40, (300,), generator=g)
    other = torch.randint(0, 40, (300,), generator=g)
    a, b, c = (torch.randn(300, k, generator=g) for k in (8, 1, 3))
    a[ids < 0] = 0.0
    b[ids < 0] = 0.0
    for (got_ids, got), (i, rows) in zip(sum_rows([(ids, a), (ids.clone(), b), (other, c)]),
                                          [(ids, a), (ids, b), (other, c)]):
        used = i >= 0
        want = torch.sparse_coo_tensor(i[used][None], rows[used], (40, rows.shape[1])).coalesce()
        assert torch.equal(got_ids, want.indices()[0])
        torch.testing.assert_close(got, want.values())
