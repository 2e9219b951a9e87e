"""Same input, schema and seed -> identical rows in each split, whatever the number of shuffle
partitions, file blocks or input files, and the order of the lines. (That another seed gives
another split is shown on the transform itself, in test_transforms.)"""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from afm_dist.dataset import SPLITS, load_metadata

from .util import read_all, run_job, write_lines

HEADER = "user\titem\tctx"
SCHEMA = {
    "name": "determinism",
    "format": {"type": "tsv", "header": True},
    "fields": [
        {"name": "user", "kind": "categorical"},
        {"name": "item", "kind": "categorical", "min_count": 2},
        {"name": "ctx", "kind": "categorical"},
    ],
    "target": {"kind": "implicit", "negatives": {"per_positive": 2, "replace": "item", "max_tries": 3}},
    "seed": 11,
}


def logs() -> list[str]:
    lines = [f"u{i % 97}\ti{(i * 7919) % 331}\tc{i % 5}" for i in range(2400)]
    return lines + lines[:150]  # 150 duplicated logs: each copy is an instance of its own


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("determinism")
    schema = tmp / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA))
    one = write_lines(tmp / "one.tsv", [HEADER] + logs())
    shuffled = sorted(logs(), key=lambda line: hash(line) % 1000)  # another order
    parts = [write_lines(tmp / f"part{k}.tsv", [HEADER] + shuffled[k::3]) for k in range(3)]
    return tmp, schema, one, parts


def run(spark, tmp, schema, files, name, *extra, partitions: int, block_bytes: int | None = None):
    out = tmp / name
    if block_bytes:
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(block_bytes))
    try:
        assert run_job(spark, "--schema", schema, "--input", *files, "--output", out, "--partitions",
                       str(partitions), "--min-row-groups", "3", *extra) == 0
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        spark.conf.set("spark.sql.shuffle.partitions", "4")
    return out


def test_identical_rows_whatever_the_partitioning_and_files(spark, inputs):
    tmp, schema, one, parts = inputs
    a = run(spark, tmp, schema, [one], "a", partitions=1)
    b = run(spark, tmp, schema, parts, "b", partitions=7, block_bytes=4096)
    rows_a, rows_b = read_all(a), read_all(b)
    n = len(logs())
    assert sum(len(rows_a[s]) for s in SPLITS) == 3 * n
    for s in SPLITS:
        assert rows_a[s] == rows_b[s], s  # sorted by row_id: equal row by row
    assert pq.read_table(a / "vocabulary").to_pylist() == pq.read_table(b / "vocabulary").to_pylist()
    meta_a, meta_b = load_metadata(a), load_metadata(b)
    assert {s: meta_a.counts[s] for s in SPLITS} == {s: meta_b.counts[s] for s in SPLITS}
    assert meta_a.schema_hash == meta_b.schema_hash and meta_a.fields == meta_b.fields
    # Duplicated logs are instances of their own, with distinct ids.
    ids = [r["row_id"] for s in SPLITS for r in rows_a[s]]
    assert len(set(ids)) == len(ids)
    # Rare items share the out-of-vocabulary id, and negatives never draw it.
    item = next(f for f in meta_a.fields if f.name == "item")
    negatives = [r["ids"][1] for s in SPLITS for r in rows_a[s] if r["label"] == -1.0]
    assert min(negatives) == item.offset + 1 and max(negatives) < item.offset + item.size

