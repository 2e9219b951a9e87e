"""Input files as users have them (issue 25): compressed logs (bugcases2 case 01), directories that
Hadoop jobs left behind with checksum side files (case 02), names with characters that Hadoop
paths and Spark globs treat specially (case 03). Each is read like the plain file, or refused
before Spark starts in one line naming the file."""
from __future__ import annotations

import bz2
import gzip

import pytest
import yaml

from afm_dist.dataset import SPLITS, load_metadata
from afm_dist.inputs import InputError, plan
from afm_dist.schema import parse_schema

from .util import read_all, run_job

RATINGS = {"name": "r", "format": {"type": "csv", "header": True},
           "fields": [{"name": "user", "kind": "categorical"}, {"name": "item", "kind": "categorical"}],
           "target": {"kind": "explicit", "column": "rating"}, "seed": 5}
LINES = ["user,item,rating", *(f"u{i % 7},i{i % 5},{1 + i % 5}" for i in range(40))]


def _text() -> bytes:
    return ("\n".join(LINES) + "\n").encode()


def _rows(out):
    """Every split's rows as (ids, label), in one sorted list: what the data set holds."""
    return sorted((tuple(r["ids"]), r["label"]) for s in SPLITS for r in read_all(out)[s])


def test_gzip_and_bzip2_logs_read_like_the_plain_file(spark, tmp_path):
    schema = tmp_path / "r.yaml"
    schema.write_text(yaml.safe_dump(RATINGS))
    files = {"plain": tmp_path / "r.csv", "gz": tmp_path / "r.csv.gz", "bz2": tmp_path / "r.csv.bz2"}
    files["plain"].write_bytes(_text())
    files["gz"].write_bytes(gzip.compress(_text()))
    files["bz2"].write_bytes(bz2.compress(_text()))
    rows = {}
    for name, path in files.items():
        out = tmp_path / f"out-{name}"
        assert run_job(spark, "--schema", str(schema), "--input", str(path), "--output", str(out)) == 0
        assert load_metadata(out).counts["accepted"] == 40
        rows[name] = _rows(out)
    assert rows["gz"] == rows["plain"] and rows["bz2"] == rows["plain"]


@pytest.mark.parametrize("name, data, message", [
    ("r.csv.zst", b"(\xb5/\xfd...", ".zst files are not read (compressed input is read when it is gzip (.gz) or bzip2"),
    ("r.csv.gz", b"user,item,rating\n", "cannot be decompressed as its name says"),  # named .gz, not gzip
    ("r.csv.gz", gzip.compress(b"user,item,rating\nu1,i1,3\n" * 50)[:20], "cannot be decompressed as its name says"),
])
def test_compressed_input_that_cannot_be_read_is_refused_by_name(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        plan(parse_schema(RATINGS), [str(path)])
    assert str(e.value).startswith(f"--input {path}: ") and message in str(e.value), str(e.value)
