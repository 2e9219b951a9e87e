"""Fixtures of the preprocessing tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def small_blocks(spark):
    """Split input files into many small blocks, so records and line numbers cross block boundaries."""
    spark.conf.set("spark.sql.files.maxPartitionBytes", "200")
    yield
    spark.conf.unset("spark.sql.files.maxPartitionBytes")
