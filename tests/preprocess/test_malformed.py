"""Malformed rows go to rejected/ with their line and reason; too many fail the job."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from afm_dist.dataset import SPLITS, load_metadata
from afm_dist.spark.parse import UNBALANCED_QUOTE

from .util import run_job, write_lines

SCHEMA = {
    "name": "malformed",
    "format": {"type": "csv", "header": True},
    "tables": [{"name": "items", "format": {"type": "csv", "header": True}, "key": "item_id", "log_key": "item"}],
    "fields": [
        {"name": "user", "kind": "categorical"},
        {"name": "item", "kind": "categorical"},
        {"name": "tags", "kind": "multi_categorical", "table": "items", "column": "tags", "delimiter": "|",
         "max_values": 3},
        {"name": "age", "kind": "numeric", "transform": "log1p"},
    ],
    "target": {"kind": "explicit", "column": "rating"},
}

# line number (1 = header) -> (text, expected reason); None: a good row.
BAD = {
    4: ("u3,i1,abc,2", "field 'age': 'abc' is not a number"),
    5: ("u4,i2,25", "found 3 columns, expected 4"),
    6: ("u5,,40,1", "field 'item': empty value"),
    7: ("u6,i3,22,x", "label 'rating': 'x' is not a number"),
    8: ('"u7,i1,22,1', UNBALANCED_QUOTE),
    9: ("u8,i9,22,1", "field 'tags': item 'i9' not found in table 'items'"),
    10: ("u9,i1,-5,1", "field 'age': log1p needs a value above -1, got '-5'"),
    11: ("u10,i1,22,1,extra", "found 5 columns, expected 4"),
    12: ("u11,i2,1e999,3", "field 'age': '1e999' is out of range"),
    14: ("u12,i1,  ,4", "field 'age': empty value"),
}
# Malformed rows of the side table (line -> (text, reason)): counted and written to rejected/ too.
TABLE_BAD = {5: ("bad line,,,", "table 'items': found 4 columns, expected 2"),
             6: ("  ,z", "table 'items': key column 'item_id' is empty")}
# A key listed again (line 15): the join uses i2's first, smaller row ("b"); this one is kept aside.
TABLE_DUPLICATE = {15: ("i2,zz", "table 'items': key 'i2' listed again; the join uses one row of it")}
GOOD = {2: "u1,i1,20,4.5", 3: "u2,i2,30,3", 15: '"u,13",i2,35,5', 16: 'u14,"i3",7,2'}
BLANK = {13: ""}  # not a row: neither accepted nor rejected


def write_inputs(tmp_path, n_filler: int = 0):
    lines = {1: "user,item,age,rating", **{k: v for k, (v, _) in BAD.items()}, **GOOD, **BLANK}
    body = [lines[i] for i in sorted(lines)]
    body += [f"f{i},i{i % 3 + 1},{i % 50},{i % 5 + 1}" for i in range(n_filler)]
    logs = write_lines(tmp_path / "logs.csv", body)
    items = write_lines(tmp_path / "items.csv", ["item_id,tags", "i1,a|b", "i2,b", "i3,c|a|d|e",
                                                 *[k for k, _ in TABLE_BAD.values()], *[f"j{i},x" for i in range(8)],
                                                 TABLE_DUPLICATE[15][0]])
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA))
    return schema, logs, items


@pytest.mark.stack
def test_rejected_rows_with_line_and_reason(spark, tmp_path, small_blocks):
    schema, logs, items = write_inputs(tmp_path, n_filler=200)
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema, "--input", logs, "--table", f"items={items}", "--output", out,
                   "--max-rejected-fraction", "0.2", "--min-row-groups", "4") == 0
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert [(r["source"], r["line"], r["raw"], r["reason"]) for r in rejected] == \
        [(str(items), line, text, reason) for line, (text, reason) in sorted({**TABLE_BAD, **TABLE_DUPLICATE}.items())] + \
        [(str(logs), line, text, reason) for line, (text, reason) in sorted(BAD.items())]
    meta = load_metadata(out)
    assert meta.counts["tables"] == {"items": {"rows": 3 + len(TABLE_BAD) + 8 + 1, "rejected": len(TABLE_BAD),
                                               "duplicate_keys": 1}}
    n_input = len(BAD) + len(GOOD) + 200
    assert meta.counts["input"] == n_input and meta.counts["rejected"] == len(BAD)
    assert meta.counts["accepted"] == len(GOOD) + 200 and meta.counts["blank_lines"] == 1
    assert sum(meta.counts[s]["rows"] for s in SPLITS) == meta.counts["accepted"]  # input = accepted + rejected
    rows = [r for s in SPLITS for r in pq.read_table(out / s).to_pylist()]
    assert len(rows) == len(GOOD) + 200
    vocab = {(r["field"], r["value"]): r["id"] for r in pq.read_table(out / "vocabulary").to_pylist()}
    assert ("user", "u,13") in vocab and ("item", "i3") in vocab  # quoted values are unquoted
    # i3's tags are truncated to max_values, in their order: c, a, d.
    i3 = [r for r in rows if r["ids"][1] == vocab[("item", "i3")]]
    assert len(i3) == 1 + sum(1 for i in range(200) if i % 3 == 2)
    assert all(r["ids"][2:5] == [vocab[("tags", t)] for t in "cad"] and r["mask"] == [1] * 6 for r in i3)


def test_a_side_table_with_too_many_malformed_rows_fails_naming_it(spark, tmp_path, capsys):
    schema, logs, _ = write_inputs(tmp_path)
    items = write_lines(tmp_path / "items.csv", ["item_id,tags", "i1,a", "i2;b", "i3;c"])  # wrong delimiter
    # The logs use every key: the table is named (not "no usable input row" for the logs).
    logs = write_lines(tmp_path / "logs.csv", ["user,item,age,rating", *[f"u{i},i{i % 3 + 1},20,3" for i in range(20)]])
    out = tmp_path / "out"
    rc = run_job(spark, "--schema", schema, "--input", logs, "--table", f"items={items}", "--output", out,
                 "--max-rejected-fraction", "0.5")
    assert rc == 2
    err = capsys.readouterr().err
    assert "table 'items': 2 of 3 rows (66.67%) are malformed, more than --max-rejected-fraction 0.5" in err
    assert f"{items}:3: table 'items': found 1 columns, expected 2: 'i2;b'" in err
    assert not out.exists() and not list(tmp_path.glob(".out.staging-*"))


def test_too_many_malformed_rows_fail_with_examples(spark, tmp_path, capsys):
    schema, logs, items = write_inputs(tmp_path, n_filler=100)
    write_lines(items, ["item_id,tags", "i1,a|b", "i2,b", "i3,c|a|d|e"])  # a clean table: the logs' limit fails
    out = tmp_path / "out"
    rc = run_job(spark, "--schema", schema, "--input", logs, "--table", f"items={items}", "--output", out)
    assert rc == 2  # one exit status for unusable input in every job (afm_dist/cli.py)
    err = capsys.readouterr().err
    assert f"{len(BAD)} of {len(BAD) + len(GOOD) + 100} input rows" in err
    assert "more than --max-rejected-fraction 0.01" in err
    assert f"{logs}:4: field 'age': 'abc' is not a number" in err  # examples with file and line
    assert not out.exists() and not list(tmp_path.glob(".out.staging-*"))
