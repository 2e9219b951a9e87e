"""A data set made by the real pipeline: generated logs with a planted interaction, preprocessed."""
from __future__ import annotations

from pathlib import Path

import pytest

from afm_dist.synthetic import generate_logs
from tests.conftest import REPO, run_job

PLANTED_ROWS = 20_000


@pytest.fixture(scope="session")
def planted_data(spark, tmp_path_factory) -> Path:
    """Preprocessed synthetic ratings (user x item and item x daytime planted), 70/20/10 splits."""
    root = tmp_path_factory.mktemp("planted")
    logs = root / "logs"
    (generate_logs(spark, PLANTED_ROWS, seed=11, partitions=2)
     .write.option("header", True).option("sep", "\t").csv(str(logs)))
    out = root / "data"
    rc = run_job("preprocess", ["--schema", str(REPO / "schemas/synthetic.yaml"), "--input", str(logs),
                                "--output", str(out), "--rows-per-group", "1000"], spark)
    assert rc == 0
    return out
