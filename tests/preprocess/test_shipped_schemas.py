"""The other shipped schemas on the real data: libFM Frappe, MovieLens tags, MovieLens ratings."""
from __future__ import annotations

from collections import Counter

import pytest

from afm_dist.dataset import SPLITS, load_metadata

from .util import REPO, read_all, read_delimited, run_job, vocabulary


def all_rows(splits):
    return [r for s in SPLITS for r in splits[s]]


@pytest.fixture(scope="module")
def libfm(spark, data_dir, tmp_path_factory):
    src = data_dir / "frappe" / "frappe.validation.libfm"
    out = tmp_path_factory.mktemp("libfm") / "out"
    assert run_job(spark, "--schema", REPO / "schemas/frappe_libfm.yaml", "--input", src, "--output", out,
                   "--min-row-groups", "8") == 0
    return src, out


def test_libfm_keeps_ids_labels_and_values(libfm):
    src, out = libfm
    lines = src.read_text().splitlines()  # CRLF line endings, as published
    expected = Counter()
    for line in lines:
        tokens = line.split()
        expected[(float(tokens[0]), tuple(int(t.split(":")[0]) for t in tokens[1:]))] += 1
    rows = all_rows(read_all(out))
    got = Counter((r["label"], tuple(r["ids"])) for r in rows)
    assert got == expected
    assert all(r["vals"] == [1.0] * 10 and r["mask"] == [1] * 10 for r in rows)
    meta = load_metadata(out)
    assert (meta.counts["input"], meta.counts["rejected"]) == (57722, 0)
    assert meta.num_features == 5382 and meta.num_slots == 10
    assert [(f.name, f.offset, f.size, f.width) for f in meta.fields] == [("features", 0, 5382, 10)]
    assert meta.target == {"kind": "explicit", "min": -1.0, "max": 1.0}
    assert sum(meta.counts[s]["positive"] for s in SPLITS) == sum(1 for line in lines if line.startswith("1 "))


@pytest.fixture(scope="module")
def tags(spark, data_dir, tmp_path_factory):
    src = data_dir / "movielens-latest-small" / "tags.csv"
    out = tmp_path_factory.mktemp("tags") / "out"
    assert run_job(spark, "--schema", REPO / "schemas/movielens_tags.yaml", "--input", src, "--output", out,
                   "--min-row-groups", "8") == 0
    return src, out


def test_tags_negatives_replace_the_tag(tags):
    src, out = tags
    logs = read_delimited(src)
    rows = all_rows(read_all(out))
    meta = load_metadata(out)
    assert meta.counts["input"] == len(logs) == 3683 and meta.counts["rejected"] == 0
    assert len(rows) == 3 * len(logs)
    vocab = vocabulary(out)
    decode = {i: v for (_, v), i in vocab.items()}
    # Quoted CSV values are read as CSV: '"""artsy"""' is the tag '"artsy"'.
    positives = Counter(tuple(decode[i] for i in r["ids"]) for r in rows if r["label"] == 1.0)
    assert positives == Counter((t["userId"], t["movieId"], t["tag"]) for t in logs)
    observed = {tuple(r["ids"]) for r in rows if r["label"] == 1.0}
    pairs = {tuple(r["ids"][:2]) for r in rows if r["label"] == 1.0}
    tag = next(f for f in meta.fields if f.name == "tag")
    for r in rows:
        if r["label"] == -1.0:
            assert tuple(r["ids"]) not in observed and tuple(r["ids"][:2]) in pairs
            assert tag.offset + 1 <= r["ids"][2] < tag.offset + tag.size  # never the out-of-vocabulary id
    # Every field has an out-of-vocabulary id (oov defaults to true): sizes are distinct + 1.
    assert [f.size for f in meta.fields] == [len({t[c] for t in logs}) + 1 for c in ("userId", "movieId", "tag")]


@pytest.fixture(scope="module")
def ratings(spark, data_dir, tmp_path_factory):
    d = data_dir / "movielens-latest-small"
    out = tmp_path_factory.mktemp("ratings") / "out"
    assert run_job(spark, "--schema", REPO / "schemas/movielens_ratings.yaml", "--input", d / "ratings.csv",
                   "--table", f"movies={d / 'movies.csv'}", "--output", out) == 0
    return d, out


def test_ratings_with_genres_as_a_multi_valued_field(ratings):
    d, out = ratings
    logs = read_delimited(d / "ratings.csv")
    genres = {m["movieId"]: m["genres"].split("|") for m in read_delimited(d / "movies.csv")}
    meta = load_metadata(out)
    assert meta.counts["input"] == len(logs) == 100836 and meta.counts["rejected"] == 0
    assert [(f.name, f.kind, f.width) for f in meta.fields] == [
        ("user", "categorical", 1), ("movie", "categorical", 1), ("genres", "multi_categorical", 10)]
    assert meta.num_slots == 12
    assert meta.target == {"kind": "explicit", "min": 0.5, "max": 5.0}
    g = meta.fields[2]
    assert g.size == len({x for v in genres.values() for x in v}) + 1  # + out-of-vocabulary id
    vocab = vocabulary(out)
    decode = {i: v for (_, v), i in vocab.items()}
    rows = all_rows(read_all(out))
    assert len(rows) == len(logs)
    got = Counter()
    for r in rows:
        n = sum(r["mask"])
        assert r["mask"] == [1, 1] + [1] * (n - 2) + [0] * (12 - n)
        assert r["vals"] == [1.0] * n + [0.0] * (12 - n) and r["ids"][n:] == [0] * (12 - n)
        user, movie = decode[r["ids"][0]], decode[r["ids"][1]]
        assert [decode[i] for i in r["ids"][2:n]] == genres[movie]  # in movies.csv order
        got[(user, movie, r["label"])] += 1
    assert got == Counter((x["userId"], x["movieId"], float(x["rating"])) for x in logs)
