"""Input-reader faults (issue 14), each kind in every format it can occur in: quoted values holding
line breaks, byte-order marks, blank lines, libFM lines repeating an id, values float32 cannot
hold, libFM id spaces that are mostly unused.

Preprocessing runs the job; raw scoring input is read by the same ``read_records`` (with its
default, which finds quoted line breaks itself), tested here directly.
"""
from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import yaml

from afm_dist.dataset import SPLITS, load_metadata
from afm_dist.inputs import InputError, plan
from afm_dist.schema import parse_schema
from afm_dist.spark import parse
from afm_dist.spark.records import accepted_row, read_records, summarize_input, summarize_tables, write_rejected

from .util import read_all, run_job, vocabulary, write_lines

UNBALANCED = parse.UNBALANCED_QUOTE


def schema_file(tmp_path, d: dict, name: str = "schema.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def ratings_schema(fmt: dict, fields=("user", "item"), **extra) -> dict:
    return {"name": "faults", "format": fmt,
            "fields": [{"name": f, "kind": "categorical"} for f in fields],
            "target": {"kind": "explicit", "column": "rating"}, "seed": 5, **extra}


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def rejected_rows(out) -> list[tuple]:
    return [(r["line"], r["raw"], r["reason"]) for r in pq.read_table(out / "rejected").to_pylist()]


def raw_read(spark, tmp_path, schema: dict, inputs, tables=None, quoted_line_breaks=None):
    """Read as raw scoring does (``read_records``, ``summarize_input``, ``summarize_tables``,
    ``write_rejected``): the summary, the accepted rows and the rejected rows (line, raw, reason)
    of the logs and side tables."""
    s = parse_schema(schema)
    raw_plan = plan(s, [str(p) for p in inputs], tables)
    records = read_records(spark, raw_plan, quoted_line_breaks=quoted_line_breaks)
    summary = summarize_input(records, s)
    rejected_dir = tmp_path / f"rejected-{len(list(tmp_path.glob('rejected-*')))}"
    write_rejected(spark, records, summary, rejected_dir, summarize_tables(spark, raw_plan))
    accepted = records.filter(accepted_row()).collect()
    summary.blocks.unpersist()
    return summary, accepted, [(r["line"], r["raw"], r["reason"]) for r in pq.read_table(rejected_dir).to_pylist()]


# -- 01: quoted values holding line breaks -------------------------------------------------------


def test_quoted_line_breaks_make_one_record(spark, tmp_path, small_blocks):
    lines = [
        "user,item,note,rating",  # 1
        "u1,i1,plain,4",  # 2
        'u2,i2,"first line',  # 3  a note on two lines
        'second line",3',  # 4
        'u3,i3,"say ""hi""',  # 5  a note on four lines, a doubled quote, an empty line inside
        "",  # 6
        'more ""text""',  # 7
        'end",2',  # 8
        '"u4,i1,x,1',  # 9  a quote never closed: one rejected row, the next lines are read
        'u5,i2,"opens,here',  # 10
        'closes",5',  # 11
        "u6,i3,plain,1",  # 12
        "u7,i1,plain,x",  # 13
    ] + [f"f{i},i{i % 3},plain,{i % 5 + 1}" for i in range(40)]
    logs = tmp_path / "logs.csv"
    logs.write_bytes("".join(line + "\r\n" for line in lines).encode())
    schema = schema_file(tmp_path, ratings_schema({"type": "csv"}, fields=("user", "item", "note")))
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema, "--input", logs, "--output", out,
                   "--max-rejected-fraction", "0.1", "--min-row-groups", "2") == 0
    assert rejected_rows(out) == [(9, '"u4,i1,x,1', UNBALANCED),
                                  (13, "u7,i1,plain,x", "label 'rating': 'x' is not a number")]
    counts = load_metadata(out).counts
    assert (counts["input"], counts["accepted"], counts["rejected"]) == (47, 45, 2)
    assert (counts["continuation_lines"], counts["blank_lines"]) == (5, 0)
    notes = {v for (f, v) in vocabulary(out) if f == "note"}
    assert {"first line\nsecond line", 'say "hi"\n\nmore "text"\nend', "opens,here\ncloses"} <= notes
    assert len([r for s in SPLITS for r in read_all(out)[s]]) == 45


def test_quoted_line_breaks_in_side_tables_and_raw_input(spark, tmp_path):
    logs = tmp_path / "logs.tsv"
    logs.write_text('user\titem\tcomment\trating\nu1\ti1\t"two\nlines"\t4\nu2\ti2\tplain\t3\n')
    items = tmp_path / "items.csv"
    items.write_text('item_id,title\ni1,"Title\ncontinued"\ni2,Plain\ni3\n')  # line 5: one column of 2
    schema = ratings_schema({"type": "tsv", "quote": '"'}, fields=("user", "item", "comment"),
                            tables=[{"name": "items", "format": {"type": "csv"}, "key": "item_id", "log_key": "item"}])
    schema["fields"].append({"name": "title", "kind": "categorical", "table": "items"})
    summary, accepted, rejected = raw_read(spark, tmp_path, schema, [logs], {"items": [str(items)]})
    assert (summary.rows, summary.rejected, summary.continued) == (2, 0, 1)
    assert rejected == [(5, "i3", "table 'items': found 1 columns, expected 2")]  # the table's, kept aside
    assert sorted((r["user"], r["comment"], r["title"]) for r in accepted) == [
        ("u1", "two\nlines", "Title\ncontinued"), ("u2", "plain", "Plain")]
    # Read one record per line (how preprocessing reads first): the summary finds the odd quotes.
    summary, _, rejected = raw_read(spark, tmp_path, schema, [logs], {"items": [str(items)]},
                                    quoted_line_breaks=False)
    assert (summary.rows, summary.rejected, summary.odd_quotes) == (3, 2, 2)
    assert sorted(r[0] for r in rejected if not r[2].startswith("table")) == [2, 3]


# -- 02: byte-order marks ------------------------------------------------------------------------


def test_byte_order_marks_are_ignored(spark, tmp_path):
    bom = "\ufeff"
    a = write_lines(tmp_path / "a.csv", [bom + "user,item,rating", "u1,i1,4", "u2,i2,3"])
    b = write_lines(tmp_path / "b.csv", [bom + "user,item,rating", "u3,i1,5", "u1,i2,1"])
    schema = schema_file(tmp_path, ratings_schema({"type": "csv"}))
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema, "--input", a, b, "--output", out) == 0
    meta = load_metadata(out)
    assert (meta.counts["input"], meta.counts["rejected"]) == (4, 0)
    assert {v for (f, v) in vocabulary(out) if f == "user"} == {None, "u1", "u2", "u3"}

    # JSON lines, a header-less tsv (the mark before a data line), and cat-ed csv files (a
    # header with its mark in the middle of a file), read as raw scoring reads them.
    js = write_lines(tmp_path / "r.json", [bom + '{"user": "u1", "item": "i1", "rating": 4}', '{"user": "u2", '
                                           '"item": "i2", "rating": 2}'])
    summary, accepted, rejected = raw_read(spark, tmp_path, ratings_schema({"type": "json"}), [js])
    assert (summary.rows, summary.rejected) == (2, 0) and {r["user"] for r in accepted} == {"u1", "u2"}
    tsv = write_lines(tmp_path / "r.tsv", [bom + "u1\ti1\t4", "u2\ti2\t2"])
    fmt = {"type": "tsv", "header": False, "columns": ["user", "item", "rating"]}
    summary, accepted, rejected = raw_read(spark, tmp_path, ratings_schema(fmt), [tsv])
    assert (summary.rows, summary.rejected) == (2, 0) and {r["user"] for r in accepted} == {"u1", "u2"}
    both = write_lines(tmp_path / "both.csv",
                       [bom + "user,item,rating", "u1,i1,4", bom + "user,item,rating", "u2,i2,3"])
    summary, accepted, rejected = raw_read(spark, tmp_path, ratings_schema({"type": "csv"}), [both])
    assert (summary.rows, summary.rejected) == (2, 0)


def test_utf16_input_is_refused_naming_the_file(spark, tmp_path, capsys):
    logs = write_bytes(tmp_path / "r.csv", "user,item,rating\nu1,i1,4\n".encode("utf-16"))
    schema = ratings_schema({"type": "csv"})
    with pytest.raises(InputError, match=r"r\.csv: the file is UTF-16 .* convert it, e\.g\. iconv -f UTF-16"):
        plan(parse_schema(schema), [str(logs)])
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema_file(tmp_path, schema), "--input", logs, "--output", out) == 2
    err = capsys.readouterr().err
    assert f"{logs}: the file is UTF-16" in err and "Traceback" not in err
    assert not out.exists()


# -- 03: blank lines -----------------------------------------------------------------------------


def test_blank_lines_are_not_rows(spark, tmp_path):
    logs = tmp_path / "r.csv"
    logs.write_bytes(b"  \r\nuser,item,rating\r\nu1,i1,4\r\n\r\n \t \r\nu2,i2,3\r\n\r\nu3,i1,2\r\n\r\n")
    schema = schema_file(tmp_path, ratings_schema({"type": "csv"}))
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema, "--input", logs, "--output", out) == 0
    counts = load_metadata(out).counts
    assert (counts["input"], counts["rejected"], counts["accepted"], counts["blank_lines"]) == (3, 0, 3, 5)
    assert rejected_rows(out) == []

    # Every line format, read as raw scoring reads it; a line of spaces is as blank as an empty one.
    cases = [
        ({"type": "tsv"}, "user\titem\trating\n\nu1\ti1\t4\n   \nu2\ti2\tx\n"),
        ({"type": "json"},
         '{"user": "u1", "item": "i1", "rating": 4}\n\n  \n{"user": "u2", "item": "i2", "rating": "x"}\n'),
    ]
    for i, (fmt, text) in enumerate(cases):
        path = tmp_path / f"case{i}.{fmt['type']}"
        path.write_text(text)
        summary, accepted, rejected = raw_read(spark, tmp_path, ratings_schema(fmt), [path])
        assert (summary.rows, summary.rejected, summary.blank) == (2, 1, 2), fmt
        assert [r["user"] for r in accepted] == ["u1"]
        assert [(line, reason) for line, _, reason in rejected] == \
            [(5 if i == 0 else 4, "label 'rating': 'x' is not a number")]
    libfm = write_lines(tmp_path / "r.libfm", ["1 3:1 4:1", "", "\t", "-1 3:1 5:1"])
    summary, accepted, rejected = raw_read(spark, tmp_path, {"name": "l", "format": {"type": "libfm"},
                                                             "target": {"kind": "explicit"}}, [libfm])
    assert (summary.rows, summary.rejected, summary.blank) == (2, 0, 2)


# -- 04: libFM lines repeating an id; 05: values float32 cannot hold (libFM) --------------------


def test_libfm_repeated_ids_and_values_beyond_float32_are_rejected(spark, tmp_path):
    lines = [
        "1 3:1 4:1 5:1",  # 1
        "-1\t11:1\t12:1\t4:1\t11:1  ",  # 2  id 11 twice
        "1 3:1 3:0.5",  # 3  id 3 twice
        "1 3:1 4:5e38",  # 4  a value float32 cannot hold
        "4e38 3:1 4:1",  # 5  a label float32 cannot hold
        "",  # 6
        "-1 5:3.4e38 4:1",  # 7  the largest float32: kept
    ] + [f"{(-1) ** i} {i % 7}:1 {7 + i % 5}:0.5" for i in range(30)]
    logs = write_lines(tmp_path / "train.libfm", lines)
    schema = schema_file(tmp_path, {"name": "l", "format": {"type": "libfm"}, "target": {"kind": "explicit"}})
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema, "--input", logs, "--output", out, "--max-rejected-fraction", "0.2") == 0
    beyond = "beyond the float32 range (+-3.4e38) of the data set"
    assert rejected_rows(out) == [
        (2, lines[1], "libfm: feature id 11 appears more than once on the line; give each id once (sum its values)"),
        (3, lines[2], "libfm: feature id 3 appears more than once on the line; give each id once (sum its values)"),
        (4, lines[3], f"libfm: token '4:5e38' has a value {beyond}; scale the values"),
        (5, lines[4], f"label: '4e38' is {beyond}; rescale the labels"),
    ]
    meta = load_metadata(out)
    assert (meta.counts["input"], meta.counts["rejected"], meta.counts["blank_lines"]) == (36, 4, 1)
    rows = [r for s in SPLITS for r in read_all(out)[s]]
    assert len(rows) == 32 and all(math.isfinite(v) for r in rows for v in r["vals"])
    assert any(r["ids"][:2] == [5, 4] and r["vals"][0] == pytest.approx(3.4e38, rel=1e-6) for r in rows)


# -- 05: numeric fields and labels float32 cannot hold -------------------------------------------


def test_numbers_beyond_float32_are_rejected_after_their_transform(spark, tmp_path):
    lines = ["user\titem\tprice\tseen_at\trating",
             "u1\ti1\t10\t100\t3",  # 2
             "u2\ti2\t5e38\t100\t3",  # 3  price: +inf in float32
             "u3\ti1\t10\t5e38\t4",  # 4  seen_at takes log: 89.1, kept
             "u4\ti2\t-4e38\t100\t2",  # 5
             "u5\ti1\t10\t100\t5e38",  # 6  the label
             "u6\ti2\t3.4e38\t100\t1"]  # 7  below the largest float32: kept
    lines += [f"f{i}\ti{i % 2 + 1}\t{i}\t{i + 1}\t{i % 5 + 1}" for i in range(40)]
    logs = write_lines(tmp_path / "r.tsv", lines)
    schema = ratings_schema({"type": "tsv"})
    schema["fields"] += [{"name": "price", "kind": "numeric"},
                         {"name": "seen_at", "kind": "numeric", "transform": "log"}]
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema_file(tmp_path, schema), "--input", logs, "--output", out,
                   "--max-rejected-fraction", "0.1") == 0
    beyond = "is beyond the float32 range (+-3.4e38) of the data set"
    assert rejected_rows(out) == [
        (3, lines[2], f"field 'price': '5e38' {beyond}; scale the column, or add transform: log"),
        (5, lines[4], f"field 'price': '-4e38' {beyond}; scale the column, or add transform: log"),
        (6, lines[5], f"label 'rating': '5e38' {beyond}; rescale the labels"),
    ]
    vocab = vocabulary(out)
    rows = {r["ids"][0]: r for s in SPLITS for r in read_all(out)[s]}
    assert rows[vocab[("user", "u3")]]["vals"][3] == pytest.approx(math.log(5e38), rel=1e-6)
    assert rows[vocab[("user", "u6")]]["vals"][2] == pytest.approx(3.4e38, rel=1e-6)
    assert load_metadata(out).counts["accepted"] == 43


def test_values_too_large_to_standardise_fail_the_job_naming_the_field(spark, tmp_path, capsys):
    lines = ["user\titem\tprice\trating"] + [f"u{i}\ti{i % 3}\t{2e10 * (i + 1)}\t{i % 5 + 1}" for i in range(20)]
    schema = ratings_schema({"type": "tsv"})
    schema["fields"].append({"name": "price", "kind": "numeric", "standardize": True})
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema_file(tmp_path, schema), "--input", write_lines(tmp_path / "r.tsv", lines),
                   "--output", out) == 2
    err = capsys.readouterr().err
    assert ("field 'price': values too large (beyond 1e10) to standardise exactly; add transform: log, "
            "or scale the column") in err
    assert "Traceback" not in err and not out.exists()


# -- 11: libFM id spaces that are mostly unused --------------------------------------------------


LIBFM_SPARSE = ["1 3:1 5000000:0.5", "-1 7:1 3:2", "1 5000000:1 12:1", "-1 12:1 7:0.25 3:1"] * 10


def test_sparse_libfm_id_space_is_refused_with_the_table_size(spark, tmp_path, capsys):
    logs = write_lines(tmp_path / "hashed.libfm", LIBFM_SPARSE)
    schema = schema_file(tmp_path, {"name": "h", "format": {"type": "libfm"}, "target": {"kind": "explicit"}})
    out = tmp_path / "out"
    assert run_job(spark, "--schema", schema, "--input", logs, "--output", out) == 2
    err = capsys.readouterr().err
    assert ("libfm: the largest feature id is 5,000,000, so the feature tables would have 5,000,001 rows "
            "(5.1 GB of float32 weights at --embedding-dim 256, 0.02 GB per dimension), but only 4 distinct ids "
            "occur; set format.ids: remap in the schema to number the ids used 0..3, "
            "or format.num_features: 5000001 to accept the table") in err
    assert "Traceback" not in err and not out.exists()


def test_libfm_ids_remapped_to_the_ids_used(spark, tmp_path):
    logs = write_lines(tmp_path / "hashed.libfm", LIBFM_SPARSE)
    outs = {}
    for ids, extra in (("remap", {}), ("keep", {"num_features": 5000001})):
        schema = schema_file(tmp_path, {"name": "h", "format": {"type": "libfm", "ids": ids, **extra},
                                        "target": {"kind": "explicit"}, "seed": 3}, f"{ids}.yaml")
        outs[ids] = tmp_path / ids
        assert run_job(spark, "--schema", schema, "--input", logs, "--output", outs[ids], "--min-row-groups", "2") == 0
    vocab = vocabulary(outs["remap"])
    assert vocab == {("features", "3"): 0, ("features", "7"): 1, ("features", "12"): 2, ("features", "5000000"): 3}
    meta = load_metadata(outs["remap"])
    assert meta.num_features == 4 and meta.num_slots == 3 and meta.extra["libfm_ids"] == "remap"
    assert [(f.name, f.size, f.width) for f in meta.fields] == [("features", 4, 3)]
    assert load_metadata(outs["keep"]).num_features == 5000001
    # The same rows in the same splits, the file's ids replaced by the vocabulary's, in line order.
    new_id = {int(v): i for (_, v), i in vocab.items()}
    for s in SPLITS:
        remapped, kept = read_all(outs["remap"])[s], read_all(outs["keep"])[s]
        assert [r["row_id"] for r in remapped] == [r["row_id"] for r in kept]
        for a, b in zip(remapped, kept):
            n = sum(b["mask"])
            assert a["ids"][:n] == [new_id[i] for i in b["ids"][:n]]
            assert (a["vals"], a["mask"], a["label"]) == (b["vals"], b["mask"], b["label"])
    assert sum(len(read_all(outs["remap"])[s]) for s in SPLITS) == 40


def test_libfm_ids_of_hashed_64_bit_spaces_are_remapped_or_refused_by_what_limits_them(spark, tmp_path, capsys):
    """bugcases2 case 14: ids of 10 or more digits were 'not id:value' even with ids: remap."""
    big = [3_000_000_039, 4_294_967_000, 123_456_789_012_345_678]
    lines = [f"{(-1) ** i} {big[i % 3]}:1 {big[(i + 1) % 3]}:0.5" for i in range(30)]
    lines.append("1 1234567890123456789:1")  # 19 digits: past int64's always-safe width
    logs = write_lines(tmp_path / "hashed.libfm", lines)
    outs = {}
    for ids in ("remap", "keep"):
        schema = schema_file(tmp_path, {"name": "h", "format": {"type": "libfm", "ids": ids},
                                        "target": {"kind": "explicit"}, "seed": 3}, f"{ids}.yaml")
        outs[ids] = tmp_path / ids
        outs[ids + "_rc"] = run_job(spark, "--schema", schema, "--input", logs, "--output", outs[ids],
                                    "--max-rejected-fraction", "0.05" if ids == "remap" else "1")
    assert outs["remap_rc"] == 0
    assert vocabulary(outs["remap"]) == {("features", str(v)): i for i, v in enumerate(sorted(big))}
    assert rejected_rows(outs["remap"]) == [
        (31, lines[30], "libfm: token '1234567890123456789:1' has an id of more than 18 digits; hash the ids into "
                        "a smaller space")]
    assert sum(len(read_all(outs["remap"])[s]) for s in SPLITS) == 30
    # Kept as they are, the ids index the feature tables (int32): every line is set aside, saying so.
    assert outs["keep_rc"] == 2
    err = capsys.readouterr().err
    assert "is above 2147483647, the largest id kept as it is; set format.ids: remap" in err, err[-3000:]
    assert "Traceback" not in err and not outs["keep"].exists()
