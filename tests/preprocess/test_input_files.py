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


def test_a_stale_hadoop_checksum_beside_an_input_is_not_verified(spark, tmp_path):
    """bugcases2 case 02: a .crc left from an older version of the file failed the job with a
    ChecksumException traceback; local input is read without Hadoop's checksum layer."""
    schema = tmp_path / "r.yaml"
    schema.write_text(yaml.safe_dump(RATINGS))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "part-00000.csv").write_bytes(_text())
    (logs / ".part-00000.csv.crc").write_bytes(b"crc\x00\x00\x00\x02\x00\xde\xad\xbe\xef")  # matches nothing
    (logs / "_SUCCESS").write_bytes(b"")
    (logs / "part-00001.csv._COPYING_").write_bytes(_text()[:50])  # a copy in progress: not input
    out = tmp_path / "out"
    assert run_job(spark, "--schema", str(schema), "--input", str(logs), "--output", str(out)) == 0
    meta = load_metadata(out)
    assert meta.counts["accepted"] == 40
    assert [p.rsplit("/", 1)[-1] for p in meta.inputs] == ["part-00000.csv"]


def test_file_names_with_colons_and_glob_characters_are_read_as_themselves(spark, tmp_path):
    """bugcases2 case 03: ':' (ISO timestamps) failed in Hadoop's Path, '[1]' was read as a glob
    pattern that matches no file; both after the plan had accepted the files."""
    schema = tmp_path / "r.yaml"
    schema.write_text(yaml.safe_dump(RATINGS))
    header, rows = LINES[0], LINES[1:]
    names = ["logs-2026-01-01T10:00.csv", "logs[1].csv", "logs{a,b}*?.csv"]
    for n, name in enumerate(names):
        (tmp_path / name).write_text("\n".join([header, *rows[n::3]]) + "\n")
    (tmp_path / "logs1.csv").write_text(header + "\nu9,i9,5\n")  # what the glob logs[1].csv would match
    out = tmp_path / "out[1]"
    assert run_job(spark, "--schema", str(schema), "--input", *[str(tmp_path / n) for n in names],
                   "--output", str(out)) == 0
    meta = load_metadata(out)
    assert meta.counts["accepted"] == 40 and sum(meta.counts[s]["rows"] for s in SPLITS) == 40
    assert _rows(out) == _rows_of_plain(spark, tmp_path, schema)


def test_a_path_with_both_a_colon_and_a_glob_character_is_refused_before_spark(tmp_path, capsys):
    """The one kind of name Spark cannot be handed: escaped glob characters make Hadoop walk the
    path name by name, and it reads a name holding ':' as a URI scheme."""
    from tests.conftest import job_module

    schema = tmp_path / "r.yaml"
    schema.write_text(yaml.safe_dump(RATINGS))
    odd = tmp_path / "logs[2026-01-01T10:00].csv"
    odd.write_bytes(_text())
    plain = tmp_path / "r.csv"
    plain.write_bytes(_text())
    for inputs, output in (([odd], tmp_path / "out"), ([plain], tmp_path / "o[1]:x")):
        assert job_module("preprocess").main(["--schema", str(schema), "--input", *map(str, inputs),
                                              "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert "Spark cannot read a path that holds both ':' and '['" in err and "Traceback" not in err, err
        assert not output.exists()
    with pytest.raises(InputError, match=r"--input .*logs\[2026-01-01T10:00\]\.csv: Spark cannot read"):
        plan(parse_schema(RATINGS), [str(tmp_path)])  # found inside a directory


def _rows_of_plain(spark, tmp_path, schema):
    plain = tmp_path / "plain.csv"
    plain.write_bytes(_text())
    out = tmp_path / "plain-out"
    assert run_job(spark, "--schema", str(schema), "--input", str(plain), "--output", str(out)) == 0
    return _rows(out)
