"""Field kinds, vocabulary options, numeric transforms and input formats, value by value."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from afm_dist.dataset import SPLITS, load_metadata

from .util import run_job, write_lines

N = 240
COLUMNS = ["user", "item", "genres", "age", "score", "rating"]


def make_rows() -> list[dict[str, str]]:
    """Deterministic logs: users u0..u59 (u50.. seen once), items, genre lists, numbers; the
    rating is unique per row, so an output row can be traced back to its log."""
    rows = []
    for i in range(N):
        user = f"u{i % 50}" if i < 200 else f"u{i}"  # u200..u239 are seen once: out of vocabulary
        genres = ["g1;g2", "g3", "g2;g2;g4;g5", "g1", "g5;g1"][i % 5]
        rows.append({"user": user, "item": f"i{i % 7}", "genres": genres, "age": str(i % 60 + 1),
                     "score": "" if i % 4 == 0 else f"{(i % 9) / 2}", "rating": str(1000 + i)})
    return rows


SCHEMA = {
    "name": "features",
    "format": {"type": "csv", "header": True},
    "fields": [
        {"name": "user", "kind": "categorical", "min_count": 2},
        {"name": "item", "kind": "categorical", "hash_buckets": 16},
        {"name": "genres", "kind": "multi_categorical", "delimiter": ";", "max_values": 2, "normalize": True},
        {"name": "age", "kind": "numeric", "transform": "log1p", "standardize": True},
        {"name": "score", "kind": "numeric", "required": False},
    ],
    "target": {"kind": "explicit", "column": "rating"},
    "seed": 7,
}


class CollectSpy:
    """Records how many rows every DataFrame action brings to the driver."""

    def __init__(self):
        self.sizes: list[int] = []
        self.strings: set[str] = set()
        self.forbidden: list[str] = []


@pytest.fixture(scope="module")
def csv_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    rows = make_rows()
    logs = write_lines(tmp / "logs.csv", [",".join(COLUMNS)] + [",".join(r[c] for c in COLUMNS) for r in rows])
    schema = tmp / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA))
    out = tmp / "out"
    spy = CollectSpy()
    # The class of the session's DataFrames: pyspark.sql.DataFrame on Spark 3.5, its classic subclass
    # (which defines its own collect) on Spark 4.
    frame = type(spark.range(1))
    original_collect = frame.collect

    def collect(self):
        result = original_collect(self)
        spy.sizes.append(len(result))
        spy.strings.update(v for row in result for v in row if isinstance(v, str))
        return result

    def forbidden(name):
        def f(self, *a, **k):
            spy.forbidden.append(name)
            raise AssertionError(f"{name} brings data to the driver")
        return f

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frame, "collect", collect)
        for name in ("toPandas", "toLocalIterator"):
            mp.setattr(frame, name, forbidden(name))
        assert run_job(spark, "--schema", schema, "--input", logs, "--output", out, "--min-row-groups", "4") == 0
    return {"rows": rows, "out": out, "tmp": tmp, "spy": spy, "schema": schema, "logs": logs}


def output_by_rating(out) -> dict[float, dict]:
    got = {}
    for s in SPLITS:
        for r in pq.read_table(out / s).to_pylist():
            got[r["label"]] = dict(r, split=s)
    return got


def test_only_counts_and_sizes_reach_the_driver(csv_run):
    spy = csv_run["spy"]
    assert not spy.forbidden
    assert spy.sizes and sum(spy.sizes) < 40, spy.sizes  # a few count rows, never the data (240 rows)
    # The only strings are field names (vocabulary sizes) and output files (rows per file).
    names = {f["name"] for f in SCHEMA["fields"]} | {"genres\u0000lists"}
    assert all(v in names or v.startswith("file:") and v.endswith(".parquet") for v in spy.strings), spy.strings


def test_layout_and_vocabulary_options(csv_run, spark):
    meta = load_metadata(csv_run["out"])
    rows = csv_run["rows"]
    user_counts = Counter(r["user"] for r in rows)
    kept = sorted((u for u, c in user_counts.items() if c >= 2), key=lambda u: (-user_counts[u], u))
    genre_lists = [list(dict.fromkeys(r["genres"].split(";")))[:2] for r in rows]
    genres = Counter(g for gs in genre_lists for g in gs)
    assert [(f.name, f.kind, f.size, f.width) for f in meta.fields] == [
        ("user", "categorical", len(kept) + 1, 1),  # + the out-of-vocabulary id
        ("item", "categorical", 16, 1),
        ("genres", "multi_categorical", len(genres) + 1, 2),
        ("age", "numeric", 1, 1),
        ("score", "numeric", 1, 1),
    ]
    assert meta.num_slots == 6 and meta.num_features == len(kept) + 1 + 16 + len(genres) + 1 + 2
    vocab = pq.read_table(csv_run["out"] / "vocabulary").to_pylist()
    user = [(r["value"], r["id"], r["count"]) for r in vocab if r["field"] == "user"]
    # Most frequent first, ties by value; id 0 of the field (global id = offset) is out of vocabulary.
    assert user == [(None, 0, 40)] + [(u, i + 1, user_counts[u]) for i, u in enumerate(kept)]
    assert not [r for r in vocab if r["field"] == "item"]  # hashed: no vocabulary
    assert meta.target == {"kind": "explicit", "min": 1000.0, "max": 1000.0 + N - 1}


def test_values_row_by_row(csv_run, spark):
    meta = load_metadata(csv_run["out"])
    lay = {f.name: f for f in meta.fields}
    vocab = {(r["field"], r["value"]): r["id"] for r in pq.read_table(csv_run["out"] / "vocabulary").to_pylist()}
    got = output_by_rating(csv_run["out"])
    rows = csv_run["rows"]
    assert len(got) == N
    buckets = {r["i"]: r["b"] for r in spark.sql(  # Spark's xxhash64 (seed 42) is the hashing contract
        "SELECT concat('i', id) AS i, pmod(xxhash64(concat('i', id)), 16) AS b FROM range(7)").collect()}
    train_ages = [math.log1p(float(r["age"])) for r in rows if got[1000.0 + rows.index(r)]["split"] == "train"]
    mean, std = float(np.mean(train_ages)), float(np.std(train_ages))
    stats = meta.extra["numeric_statistics"]["age"]
    assert stats["mean"] == pytest.approx(mean, rel=1e-9) and stats["std"] == pytest.approx(std, rel=1e-9)
    assert stats["count"] == len(train_ages)
    for i, r in enumerate(rows):
        out = got[1000.0 + i]
        user_id = vocab.get(("user", r["user"]), lay["user"].offset)
        genres = list(dict.fromkeys(r["genres"].split(";")))[:2]
        n = len(genres)
        expected_ids = [user_id, lay["item"].offset + buckets[r["item"]]]
        expected_ids += [vocab[("genres", g)] for g in genres] + [0] * (2 - n)
        expected_ids += [lay["age"].offset, lay["score"].offset]
        assert out["ids"] == expected_ids, (i, r)
        age = (math.log1p(float(r["age"])) - mean) / std
        score = float(r["score"]) if r["score"] else 0.0
        assert out["vals"][:4] == [1.0, 1.0] + [pytest.approx(1.0 / n)] * n + [0.0] * (2 - n)
        assert out["vals"][4] == pytest.approx(age, rel=1e-5, abs=1e-6) and out["vals"][5] == score
        assert out["mask"] == [1, 1] + [1] * n + [0] * (2 - n) + [1, 1]


def _rows_as_multiset(out):
    return Counter((tuple(r["ids"]), tuple(round(v, 5) for v in r["vals"]), tuple(r["mask"]), r["label"])
                   for s in SPLITS for r in pq.read_table(out / s).to_pylist())


# The age statistics depend on the split (row ids hash each format's text), so the format
# comparison leaves standardisation out.
PLAIN = dict(SCHEMA, fields=[dict(f, standardize=False) if f["name"] == "age" else f for f in SCHEMA["fields"]])


@pytest.fixture(scope="module")
def plain_csv(csv_run, spark):
    tmp = csv_run["tmp"] / "plain"
    tmp.mkdir()
    (tmp / "csv.yaml").write_text(yaml.safe_dump(PLAIN))
    assert run_job(spark, "--schema", tmp / "csv.yaml", "--input", csv_run["logs"], "--output", tmp / "out",
                   "--min-row-groups", "2") == 0
    return _rows_as_multiset(tmp / "out")


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv_headerless"])  # TSV: test_frappe
def test_every_input_format_gives_the_same_instances(csv_run, plain_csv, spark, fmt):
    """The same logs as JSON lines, Parquet and headerless CSV encode to the same instances as
    CSV with a header (rows only: the split of each row may differ)."""
    tmp, rows = csv_run["tmp"] / fmt, csv_run["rows"]
    tmp.mkdir()
    if fmt == "json":
        logs = write_lines(tmp / "logs.jsonl", [json.dumps({**r, "age": float(r["age"])}) for r in rows])
        format_ = {"type": "json"}
    elif fmt == "parquet":
        logs = tmp / "logs.parquet"
        table = pa.table({c: [r[c] for r in rows] for c in COLUMNS})
        table = table.set_column(COLUMNS.index("genres"), "genres", pa.array([r["genres"].split(";") for r in rows]))
        pq.write_table(table, logs)
        format_ = {"type": "parquet"}
    else:
        logs = write_lines(tmp / "logs.csv", [",".join(r[c] for c in COLUMNS) for r in rows])
        format_ = {"type": "csv", "header": False, "columns": COLUMNS}
    (tmp / "schema.yaml").write_text(yaml.safe_dump(dict(PLAIN, format=format_)))
    out = tmp / "out"
    assert run_job(spark, "--schema", tmp / "schema.yaml", "--input", logs, "--output", out,
                   "--min-row-groups", "2") == 0
    assert sum(plain_csv.values()) == N
    assert _rows_as_multiset(out) == plain_csv
