"""The per-step gradient exchange (afm_dist/training/exchange.py) under the real launcher
(horovodrun -np 2 --gloo)."""
from __future__ import annotations

import json

from tests.conftest import REPO, run_horovod
from tests.train.test_train import check


def test_exchange_gives_horovods_numbers_on_two_ranks(tmp_path):
    """One grouped allreduce + one allgather a step: the parameters of hvd.DistributedOptimizer's exchange
    (one collective a parameter) after several steps on overlapping rows, and those of the dense
    allreduce of whole tables; every rank ends with rank 0's parameters."""
    check(run_horovod([str(REPO / "tests/scripts/exchange_check.py"), str(tmp_path)], np=2, timeout=240))
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["size"] == 2
        for name in ("fm", "wide_deep", "afm"):
            r = result[name]
            assert r["moved"] > 1e-2, (name, r)  # the steps did train
            assert r["vs_horovod"] <= 1e-6, (name, r)
            assert r["vs_rank0"] == 0.0, (name, r)
            if name == "fm":
                assert r["vs_dense"] <= 1e-5, (name, r)


def _table(rows: int, k: int, dtype, ids: list[int]):
    import torch

    p = torch.nn.Parameter(torch.zeros(rows, k, dtype=dtype))
    values = torch.arange(1, len(ids) * k + 1, dtype=dtype).reshape(len(ids), k)
    p.grad = torch.sparse_coo_tensor(torch.tensor([ids]), values, (rows, k))
    return p, values


def test_pack_and_unpack_round_trip_every_rank_s_rows():
    """One buffer per rank: each table's ids (int64 bits) and rows come back exactly, rank by
    rank, for float32 and float16 tables, with fewer rows than slots and -1 padding dropped."""
    import pytest
    import torch

    from afm_dist.training.exchange import _pack, _unpack

    for dtype in (torch.float32, torch.float16):
        big, big_rows = _table(1000, 4, dtype, [3, 999])
        small, small_rows = _table(5, 1, dtype, [0, 4])
        slots = [6, 5]  # min(max_rows, table rows)
        rank0 = _pack([big, small], slots)
        big.grad = torch.sparse_coo_tensor(torch.tensor([[7]]), big_rows[:1] * 10, (1000, 4))
        rank1 = _pack([big, small], slots)
        assert rank0.dtype == dtype and rank0.shape == rank1.shape
        (ids_a, rows_a), (ids_b, rows_b) = _unpack(torch.stack([rank0, rank1]), [big, small], slots)
        assert ids_a.tolist() == [3, 999, 7]
        assert torch.equal(rows_a, torch.cat([big_rows, big_rows[:1] * 10]))
        assert ids_b.tolist() == [0, 4, 0, 4]
        assert torch.equal(rows_b, torch.cat([small_rows, small_rows]))
    mixed_a, _ = _table(10, 2, torch.float16, [1])
    mixed_b, _ = _table(10, 2, torch.float32, [1])
    with pytest.raises(ValueError, match="different dtypes"):
        _pack([mixed_a, mixed_b], [2, 2])
