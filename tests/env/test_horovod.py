"""The real launcher: horovodrun -np 2 with Gloo on this machine."""
import json

import pytest

from tests.conftest import run_horovod


@pytest.mark.stack
def test_horovodrun_two_ranks_allreduce(tmp_path, repo_root):
    proc = run_horovod([str(repo_root / "tests/scripts/allreduce_check.py"), str(tmp_path)], np=2, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r
        assert res["size"] == 2
        # (1 + 2) * [1, 2, 3]: both ranks must see the sum of both contributions.
        assert res["sum"] == [3.0, 6.0, 9.0]
        assert res["ranks"] == [0, 1]
