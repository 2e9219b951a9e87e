"""The paper's Frappe protocol on the real logs (../shared/data/frappe/frappe_logs.tsv)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from afm_dist.dataset import (COMPLETE_MARKER, SPLITS, load_metadata, require_complete)
from afm_dist.schema import load_schema

from .util import REPO, read_all, read_delimited, row_groups, run_job, vocabulary

FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
ITEM = FIELDS.index("item")


@pytest.fixture(scope="module")
def frappe(spark, data_dir, tmp_path_factory):
    logs = data_dir / "frappe" / "frappe_logs.tsv"
    out = tmp_path_factory.mktemp("frappe") / "frappe"
    assert run_job(spark, "--schema", REPO / "schemas/frappe.yaml", "--input", logs, "--output", out) == 0
    return {"out": out, "logs": read_delimited(logs, "\t"), "splits": read_all(out), "meta": load_metadata(out)}


def test_three_instances_per_log_a_third_positive(frappe):
    n_logs = len(frappe["logs"])
    assert n_logs == 19063
    meta = frappe["meta"]
    assert (meta.counts["input"], meta.counts["rejected"], meta.counts["accepted"]) == (n_logs, 0, n_logs)
    rows = [r for s in SPLITS for r in frappe["splits"][s]]
    assert len(rows) == 3 * n_logs
    labels = Counter(r["label"] for r in rows)
    assert labels == {1.0: n_logs, -1.0: 2 * n_logs}
    assert sum(meta.counts[s]["positive"] for s in SPLITS) == n_logs
    assert sum(meta.counts[s]["negative"] for s in SPLITS) == 2 * n_logs
    assert len({r["row_id"] for r in rows}) == len(rows)  # row ids are unique
    assert meta.extra["negatives_unavailable"] == 0


def test_split_sizes_within_one_percent_of_70_20_10(frappe):
    total = sum(len(frappe["splits"][s]) for s in SPLITS)
    for split, target in zip(SPLITS, (0.7, 0.2, 0.1)):
        share = len(frappe["splits"][split]) / total
        assert abs(share - target) < 0.01, (split, share)
        assert frappe["meta"].counts[split]["rows"] == len(frappe["splits"][split])


def test_feature_count_is_the_distinct_values_summed_over_fields(frappe):
    distinct = {f: len({row[f] for row in frappe["logs"]}) for f in FIELDS}
    meta = frappe["meta"]
    assert meta.num_features == sum(distinct.values()) == 3189
    assert [(lay.name, lay.size, lay.width) for lay in meta.fields] == [(f, distinct[f], 1) for f in FIELDS]
    offsets = [lay.offset for lay in meta.fields]
    assert offsets == list(np.cumsum([0] + [distinct[f] for f in FIELDS[:-1]]))
    assert meta.num_slots == 10 and [lay.slot for lay in meta.fields] == list(range(10))


def test_positives_decode_back_to_the_logs(frappe):
    """The vocabulary maps each raw value to the id the splits hold: decoding the positives
    through it gives back exactly the logs of the file (as a multiset)."""
    vocab = vocabulary(frappe["out"])
    decode = {i: value for (_, value), i in vocab.items()}
    assert len(decode) == frappe["meta"].num_features  # ids are distinct, no out-of-vocabulary id
    positives = [r for s in SPLITS for r in frappe["splits"][s] if r["label"] == 1.0]
    decoded = Counter(tuple(decode[i] for i in r["ids"]) for r in positives)
    assert decoded == Counter(tuple(row[f] for f in FIELDS) for row in frappe["logs"])
    for r in positives[:100]:
        assert r["vals"] == [1.0] * 10 and r["mask"] == [1] * 10
    for (field, value), i in list(vocab.items())[:50]:  # ids fall in their field's range
        lay = next(lay for lay in frappe["meta"].fields if lay.name == field)
        assert lay.offset <= i < lay.offset + lay.size


def test_negatives_replace_only_the_item_and_are_not_observed_positives(frappe):
    rows = [r for s in SPLITS for r in frappe["splits"][s]]
    positives = {tuple(r["ids"]) for r in rows if r["label"] == 1.0}
    contexts = Counter(tuple(r["ids"][:ITEM] + r["ids"][ITEM + 1:]) for r in rows if r["label"] == 1.0)
    item = next(lay for lay in frappe["meta"].fields if lay.name == "item")
    negatives = [r for r in rows if r["label"] == -1.0]
    assert len(negatives) == 2 * len(frappe["logs"])
    for r in negatives:
        ids = tuple(r["ids"])
        assert ids not in positives
        assert ids[:ITEM] + ids[ITEM + 1:] in contexts  # user and context of a positive log
        assert item.offset <= ids[ITEM] < item.offset + item.size
    # The two negatives of a log differ in general, and items are drawn across the vocabulary.
    items = Counter(r["ids"][ITEM] for r in negatives)
    assert len(items) > 0.9 * item.size


def test_output_layout_marker_and_metadata(frappe):
    out = frappe["out"]
    assert require_complete(out) == out and (out / COMPLETE_MARKER).exists()
    meta = frappe["meta"]
    schema = load_schema(REPO / "schemas/frappe.yaml")
    assert meta.schema_hash == schema.hash() and meta.schema == schema.to_dict()
    assert meta.seed == 2017 and meta.inputs[0].endswith("frappe/frappe_logs.tsv")
    assert meta.target == {"kind": "implicit", "min": -1.0, "max": 1.0}
    assert not list(out.glob(".*staging*")) and not list(out.parent.glob(".*staging*"))
    import pyarrow.parquet as pq

    assert pq.read_table(out / "rejected").num_rows == 0
    assert pq.read_table(out / "rejected").column_names == ["source", "line", "raw", "reason"]
    types = {f.name: str(f.type) for f in pq.read_schema(next((out / "train").glob("*.parquet")))}
    assert types["row_id"] == "int64" and types["label"] == "float"
    assert types["ids"].startswith("list<") and "int32" in types["ids"]
    assert "float" in types["vals"] and "int8" in types["mask"]


def test_many_small_row_groups_per_split(frappe):
    for split in SPLITS:
        groups = row_groups(frappe["out"] / split)
        assert len(groups) >= 32, (split, len(groups))  # many more row groups than workers
        assert sum(groups) == len(frappe["splits"][split])


def test_petastorm_reads_a_split_as_dense_arrays(frappe):
    from petastorm import make_batch_reader

    url = f"file://{(frappe['out'] / 'validation').resolve()}"
    seen = 0
    with make_batch_reader(url, num_epochs=1, workers_count=1, reader_pool_type="dummy") as reader:
        for batch in reader:
            ids = np.stack(batch.ids) if batch.ids.dtype == object else batch.ids
            assert ids.ndim == 2 and ids.shape[1] == 10 and np.issubdtype(ids.dtype, np.integer)
            assert set(np.unique(batch.label)) <= {-1.0, 1.0}
            seen += ids.shape[0]
    assert seen == len(frappe["splits"]["validation"])
