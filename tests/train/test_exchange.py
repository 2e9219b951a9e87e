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
