"""The job on a real Spark standalone cluster (a master and two workers on 127.0.0.1, started
once per session from the pyspark installation: tests/conftest.py), launched through
./spark-submit.sh."""
from __future__ import annotations

import pytest

from afm_dist.dataset import SPLITS, load_metadata
from tests.conftest import spark_submit

from .util import read_all


@pytest.mark.slow
def test_frappe_on_a_standalone_cluster(standalone_cluster, data_dir, tmp_path):
    cluster = standalone_cluster
    out = tmp_path / "frappe"
    apps_before = set(cluster["work"].glob("app-*"))
    result = spark_submit("preprocess", ["--schema", "schemas/frappe.yaml",
                                         "--input", data_dir / "frappe" / "frappe_logs.tsv", "--output", out],
                          env=cluster["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    meta = load_metadata(out)
    assert meta.counts["input"] == 19063 and meta.counts["rejected"] == 0
    assert sum(meta.counts[s]["rows"] for s in SPLITS) == 3 * 19063
    rows = read_all(out)
    assert sum(len(rows[s]) for s in SPLITS) == 3 * 19063
    assert sum(r["label"] == 1.0 for s in SPLITS for r in rows[s]) == 19063
    # The work ran on the cluster's executor, not in the driver.
    assert set(cluster["work"].glob("app-*")) - apps_before, "no application ran on the workers"
    assert "stage: write splits" in result.stdout + result.stderr  # progress is shown
