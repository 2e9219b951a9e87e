"""The per-step gradient exchange (afm_dist/training/exchange.py) under the real launcher
(horovodrun -np 2 --gloo)."""
from __future__ import annotations

import json

from tests.conftest import REPO, run_horovod
from tests.train.test_train import check


def test_exchange_gives_horovods_numbers_on_two_ranks(tmp_path):
    """One allgather a step (the small dense gradients in it), or a grouped allreduce and the
    allgather: the parameters of hvd.DistributedOptimizer's exchange (one collective a parameter)
    after several steps on overlapping rows, and those of the dense allreduce of whole tables;
    every rank ends with rank 0's parameters."""
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
    """One buffer per rank: each table's ids (int64 bits) and rows come back exactly, rank by
    rank, for float32 and float16 tables, with fewer rows than slots padded by -1 ids and zero
    rows; ``sum_rows`` then sums them per id, -1 left out."""
    import pytest
    import torch

    from afm_dist.training.exchange import _pack, _unpack, sum_rows

    for dtype in (torch.float32, torch.float16):
        big, big_rows = _table(1000, 4, dtype, [3, 999])
        small, small_rows = _table(5, 1, dtype, [0, 4])
        slots = [3, 5]  # min(max_rows, table rows)
        rank0 = _pack([big, small], slots)
        big.grad = torch.sparse_coo_tensor(torch.tensor([[999, 7, 999]]), big_rows[[0, 0, 1]] * 10, (1000, 4))
        rank1 = _pack([big, small], slots)
        assert rank0.dtype == dtype and rank0.shape == rank1.shape
        (ids_a, rows_a), (ids_b, rows_b) = _unpack(torch.stack([rank0, rank1]), [big, small], slots)
        assert ids_a.tolist() == [3, 999, -1, 999, 7, 999]
        assert torch.equal(rows_a, torch.cat([big_rows, torch.zeros(1, 4, dtype=dtype), big_rows[[0, 0, 1]] * 10]))
        assert ids_b.tolist() == [0, 4, -1, -1, -1] * 2
        (ids_a, sums_a), (ids_b, sums_b) = sum_rows([(ids_a, rows_a), (ids_b, rows_b)])
        assert ids_a.tolist() == [3, 7, 999]  # 999: rank 0's row and both of rank 1's
        assert torch.equal(sums_a, torch.stack([big_rows[0], big_rows[0] * 10, big_rows[1] * 11 + big_rows[0] * 10]))
        assert ids_b.tolist() == [0, 4] and torch.equal(sums_b, small_rows * 2)
    mixed_a, _ = _table(10, 2, torch.float16, [1])
    mixed_b, _ = _table(10, 2, torch.float32, [1])
    with pytest.raises(ValueError, match="different dtypes"):
        _pack([mixed_a, mixed_b], [2, 2])
    # A table looked up twice a step (e.g. by an L2 penalty on the batch's rows) has more rows
    # than slots: they are summed per id first, and refused only if still too many.
    twice, rows = _table(10, 2, torch.float32, [1, 2, 1, 2])
    buffer = _pack([twice], [2])
    (ids, sums), = sum_rows(list(_unpack(buffer.view(1, -1), [twice], [2])))
    assert ids.tolist() == [1, 2] and torch.equal(sums, rows[:2] + rows[2:])
    many, _ = _table(10, 2, torch.float32, [1, 2, 3])
    with pytest.raises(ValueError, match="3 rows, more than the step's 2"):
        _pack([many], [2])


def test_dense_prefix_of_odd_length_leaves_the_ids_exact():
    """The small dense gradients go first in the buffer (an FM's bias: one float32, so the ids'
    int64 bits start at an odd float): after the allgather they are cut off and every id and row
    comes back exactly, large ids included."""
    import torch

    from afm_dist.training.exchange import _pack, _unpack

    table = torch.zeros(1, 3).expand(2**40, 3)  # 2^40 rows, none allocated
    rows = torch.arange(1.0, 7.0).reshape(2, 3)
    table.grad = torch.sparse_coo_tensor(torch.tensor([[3, 2**33 + 5]]), rows, table.shape)
    dense = [torch.tensor([0.25]), torch.tensor([1.5, -2.0])]  # 3 values: odd
    slots = [4]
    rank0 = _pack([table], slots, prefix=dense)
    rank1 = _pack([table], slots, prefix=[d * 3 for d in dense])
    assert rank0.dtype == torch.float32 and rank0.numel() == 3 + 4 * 2 + 4 * 3
    gathered = torch.stack([rank0, rank1])
    assert torch.equal(gathered[:, :3].sum(dim=0) / 2, torch.tensor([0.5, 3.0, -4.0]))
    (ids, got), = _unpack(gathered[:, 3:], [table], slots)
    assert ids.tolist() == [3, 2**33 + 5, -1, -1] * 2
    assert torch.equal(got, torch.cat([rows, torch.zeros(2, 3)] * 2))


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
