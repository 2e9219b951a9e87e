"""What preprocessing cannot keep is counted, never dropped without a trace (issue 25): values past
a multi-valued field's max_values (bugcases2 case 06), negatives that cannot be drawn (case 10)."""
from __future__ import annotations

import logging

import yaml

from afm_dist.dataset import SPLITS, load_metadata

from .util import read_all, run_job, write_lines


def _schema(tmp_path, d: dict):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_values_past_max_values_are_counted_and_logged(spark, tmp_path, caplog):
    schema = _schema(tmp_path, {
        "name": "tags", "format": {"type": "tsv", "header": True},
        "fields": [{"name": "user", "kind": "categorical"},
                   {"name": "tags", "kind": "multi_categorical", "delimiter": "|", "max_values": 2}],
        "target": {"kind": "explicit", "column": "rating"}, "seed": 1})
    lines = ["user\ttags\trating",
             "u1\tt1|t2|t3|t4\t1",  # 2 values cut
             "u2\tt1|t1|t2\t2",  # a repeated value is not a value cut: 2 distinct
             "u3\tt5|t6|t7\t3",  # 1 cut
             "u4\tt1\t4",
             *(f"u{i}\tt2\t5" for i in range(5, 25))]
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="afm_dist"):
        assert run_job(spark, "--schema", str(schema), "--input", str(write_lines(tmp_path / "logs.tsv", lines)),
                       "--output", str(out)) == 0
    meta = load_metadata(out)
    assert meta.counts["truncated"] == {"tags": {"rows": 2, "values": 3, "widest": 4, "max_values": 2}}
    assert "field 'tags': 2 row(s) had more than max_values 2 distinct values (at most 4): 3 value(s)" in caplog.text
    rows = [r for s in SPLITS for r in read_all(out)[s]]
    assert sum(r["mask"].count(1) for r in rows) == 24 + (2 + 2 + 2 + 1 + 20)  # users, and the tags kept


def test_implicit_logs_where_no_negative_can_be_drawn_are_refused(spark, tmp_path, capfd):
    base = {"name": "full", "format": {"type": "tsv", "header": True},
            "fields": [{"name": "user", "kind": "categorical"}, {"name": "item", "kind": "categorical"}],
            "target": {"kind": "implicit", "negatives": {"per_positive": 1, "replace": "item", "max_tries": 5}},
            "seed": 3}
    # Every user has every item: no item is left to be a negative of any positive.
    logs = write_lines(tmp_path / "full.tsv", ["user\titem", *(f"u{u}\ti{i}" for u in range(6) for i in range(3))])
    out = tmp_path / "full"
    assert run_job(spark, "--schema", str(_schema(tmp_path, base)), "--input", str(logs), "--output", str(out)) == 2
    assert not out.exists()
    err = capfd.readouterr().err
    assert "preprocess: error: 0 of" in err and "negatives could be sampled, none for the train split" in err, err[-2000:]
    assert "field 'item'" in err and "Traceback" not in err


def test_negatives_short_of_the_request_are_counted(spark, tmp_path, caplog):
    schema = _schema(tmp_path, {
        "name": "short", "format": {"type": "tsv", "header": True},
        "fields": [{"name": "user", "kind": "categorical"}, {"name": "item", "kind": "categorical"}],
        "target": {"kind": "implicit", "negatives": {"per_positive": 1, "replace": "item", "max_tries": 50}},
        "seed": 3})
    # u0 has every item (its 3 positives get no negative); u1..u29 have one item each (2 left).
    lines = ["user\titem", *(f"u0\ti{i}" for i in range(3)), *(f"u{u}\ti{u % 3}" for u in range(1, 30))]
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="afm_dist"):
        assert run_job(spark, "--schema", str(schema), "--input", str(write_lines(tmp_path / "logs.tsv", lines)),
                       "--output", str(out)) == 0
    meta = load_metadata(out)
    assert meta.extra["negatives_unavailable"] == 3
    assert sum(meta.counts[s]["positive"] - meta.counts[s]["negative"] for s in SPLITS) == 3
    assert "3 of 32 negatives could not be sampled" in caplog.text and "field 'item'" in caplog.text
