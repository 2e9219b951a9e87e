"""History bag fields (schema kind ``history``, issue 26): each row's bag of its user's other
training-split items, built by the preprocessing job. The splits are given as files, so every row's
split is known and its bag can be derived by hand from the logs."""
from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from afm_dist.dataset import HISTORY, HISTORY_BAG, HISTORY_FIELD, HISTORY_OWNER, SPLITS, TRAIN, DatasetError, \
    load_metadata, read_metadata, split_bag_columns
from afm_dist.model_dir import TrainedModel, save_weights
from afm_dist.models import ModelConfig
from afm_dist.schema import SchemaError, load_schema
from afm_dist.spark.model_input import encode_raw_logs
from afm_dist.training.artifacts import RunState, write_final
from afm_dist.training.config import TrainConfig

from tests.conftest import SMALL_MODEL, run_horovod, run_job as run_any_job

from .util import read_all, read_delimited, run_job, vocabulary, write_lines

# Markers: items that occur only in validation (mv) or test (mt) rows; no bag may hold them.
MARKERS = ("mv", "mt")
EXPLICIT = {  # user, movie, rating, time
    TRAIN: [("u1", "m1", 4, 10), ("u1", "m2", 3, 20), ("u1", "m2", 5, 25), ("u1", "m3", 2, 30), ("u1", "m4", 1, 40),
            ("u2", "m1", 5, 5), ("u2", "m5", 3, 6), ("u3", "m6", 4, 1)],
    "validation": [("u1", "mv", 3, 50), ("u2", "m2", 4, 7), ("u4", "m1", 2, 3)],
    "test": [("u1", "mt", 5, 60), ("u2", "mt", 1, 8), ("u3", "m1", 3, 2), ("u4", "mv", 2, 4)],
}
EXPLICIT_SCHEMA = {
    "name": "history", "format": {"type": "tsv", "header": True},
    "fields": [
        {"name": "user", "kind": "categorical"},
        {"name": "history", "kind": "history", "of": "user", "items": "movie", "max_values": 10},
        {"name": "movie", "kind": "categorical"},
        {"name": "sample", "kind": "history", "of": "user", "items": "movie", "max_values": 2},
        {"name": "recent", "kind": "history", "of": "user", "items": "movie", "max_values": 2, "order_by": "ts"},
    ],
    "target": {"kind": "explicit", "column": "rating"},
    "seed": 11,
}
# Implicit: every log a positive, two negatives each (item replaced); bags from positives only.
IMPLICIT = {
    TRAIN: [("u1", "i1"), ("u1", "i2"), ("u1", "i3"), ("u2", "i1"), ("u2", "i4"), ("u3", "i5")],
    "validation": [("u1", "mv"), ("u2", "i2")],
    "test": [("u1", "mt"), ("u3", "i1"), ("u4", "i2")],
}
IMPLICIT_SCHEMA = {
    "name": "history_implicit", "format": {"type": "tsv", "header": True},
    "fields": [
        {"name": "user", "kind": "categorical"},
        {"name": "item", "kind": "categorical"},
        {"name": "history", "kind": "history", "of": "user", "items": "item", "max_values": 5},
    ],
    "target": {"kind": "implicit", "negatives": {"per_positive": 2, "replace": "item"}},
    "seed": 3,
}


def build(spark, directory, schema: dict, logs: dict, out_name: str = "out", extra: tuple[str, ...] = ()):
    """Preprocess ``logs`` (split -> rows) given as one file per split, with the job's ``extra``
    options; return what was written."""
    directory.mkdir(exist_ok=True)
    header = "\t".join(["user", "movie", "rating", "ts"] if schema["target"]["kind"] == "explicit" else ["user", "item"])
    args = ["--schema", str(write_lines(directory / "schema.yaml", [yaml.safe_dump(schema)]))]
    for split, rows in logs.items():
        lines = [header] + ["\t".join(map(str, r)) for r in rows]
        args += [f"--{split}", str(write_lines(directory / f"{split}.tsv", lines))]
    out = directory / out_name
    assert run_job(spark, *args, "--output", str(out), "--min-row-groups", "2", *extra) == 0
    return {"out": out, "splits": read_all(out), "meta": load_metadata(out), "vocabulary": vocabulary(out)}


@pytest.fixture(scope="module")
def explicit(spark, tmp_path_factory):
    return build(spark, tmp_path_factory.mktemp("explicit"), EXPLICIT_SCHEMA, EXPLICIT)


@pytest.fixture(scope="module")
def implicit(spark, tmp_path_factory):
    return build(spark, tmp_path_factory.mktemp("implicit"), IMPLICIT_SCHEMA, IMPLICIT)


def decoded(data, owner: str, item: str, bag: str) -> list[dict]:
    """Every row of every split as {split, user, item, label, bag: [item values], ids, vals}."""
    layouts = {lay.name: lay for lay in data["meta"].fields}
    value_of = {i: v for (f, v), i in data["vocabulary"].items() if f in (owner, item)}
    items, history = layouts[item], layouts[bag]
    out = []
    for split, rows in data["splits"].items():
        for r in rows:
            slots = range(history.slot, history.slot + history.width)
            ids = [r["ids"][s] for s in slots if r["mask"][s]]
            out.append({
                "split": split, "row_id": r["row_id"], "user": value_of[r["ids"][layouts[owner].slot]],
                "item": value_of[r["ids"][items.slot]], "label": r["label"],
                # a history id is its item's id moved from the items' range to the history's
                "bag": [value_of[i - history.offset + items.offset] for i in ids], "ids": ids,
                "vals": [r["vals"][s] for s in slots if r["mask"][s]],
                "padding": [(r["ids"][s], r["vals"][s]) for s in slots if not r["mask"][s]],
            })
    return out


def expected_bag(logs: dict, user: str, item: str, split: str, feeds_itself: bool) -> set[str]:
    """By hand: the user's distinct training items, less the row's own occurrence when it fed the bags."""
    seen = Counter((r[0], r[1]) for r in logs[TRAIN])
    return {m for (u, m), n in seen.items() if u == user and not (feeds_itself and m == item and n == 1)}


def test_bags_are_the_users_other_training_items_weighted_one_over_sqrt_n(explicit):
    rows = decoded(explicit, "user", "movie", "history")
    assert len(rows) == sum(len(v) for v in EXPLICIT.values())
    for r in rows:
        want = expected_bag(EXPLICIT, r["user"], r["item"], r["split"], feeds_itself=r["split"] == TRAIN)
        assert set(r["bag"]) == want and len(r["bag"]) == len(want), r
        assert r["vals"] == pytest.approx([1 / math.sqrt(len(want))] * len(want) if want else []), r
        assert set(r["padding"]) <= {(0, 0.0)}, r
    by_key = {(r["split"], r["user"], r["item"]): r for r in rows}
    # A training row's bag lacks its own item ...
    assert sorted(by_key[(TRAIN, "u1", "m1")]["bag"]) == ["m2", "m3", "m4"]
    assert by_key[(TRAIN, "u1", "m1")]["vals"] == pytest.approx([3 ** -0.5] * 3)
    # ... only its own occurrence of it: u1 has m2 in another training row too.
    assert all(sorted(r["bag"]) == ["m1", "m2", "m3", "m4"]
               for r in rows if (r["split"], r["user"], r["item"]) == (TRAIN, "u1", "m2"))
    # Validation and test rows get all the user's training items; none for a user without any.
    assert sorted(by_key[("validation", "u1", "mv")]["bag"]) == ["m1", "m2", "m3", "m4"]
    assert by_key[("validation", "u1", "mv")]["vals"] == pytest.approx([0.5] * 4)
    assert sorted(by_key[("test", "u2", "mt")]["bag"]) == ["m1", "m5"]
    assert by_key[("test", "u3", "m1")]["bag"] == ["m6"] and by_key[("test", "u3", "m1")]["vals"] == [1.0]
    for key in [(TRAIN, "u3", "m6"), ("validation", "u4", "m1"), ("test", "u4", "mv")]:
        assert by_key[key]["bag"] == [] and by_key[key]["vals"] == [], key


def test_bags_joined_by_a_shuffle_equal_the_broadcast_ones(explicit, implicit, spark, tmp_path):
    """Small bag tables are broadcast to the rows (no shuffle, the rows keep their files); with
    ``--history-broadcast-ids 0`` they are joined by a shuffle on the owner. Both must write the
    same rows, bags and counts: the own-item rule (a row leaves out its item only when it alone
    put it there, as u1's two m2 rows do not) is the same expression on both paths."""
    for data, schema, logs in ((explicit, EXPLICIT_SCHEMA, EXPLICIT), (implicit, IMPLICIT_SCHEMA, IMPLICIT)):
        shuffled = build(spark, tmp_path / schema["name"], schema, logs, extra=("--history-broadcast-ids", "0"))
        names = [f["name"] for f in schema["fields"] if f["kind"] == "history"]
        assert data["meta"].extra["history_join"] == {n: "broadcast" for n in names}
        assert shuffled["meta"].extra["history_join"] == {n: "shuffle" for n in names}
        for s in SPLITS:
            assert sorted(shuffled["splits"][s], key=lambda r: r["row_id"]) == \
                sorted(data["splits"][s], key=lambda r: r["row_id"])
        assert shuffled["meta"].counts["history"] == data["meta"].counts["history"]


def test_an_items_bag_holds_its_other_training_users(spark, tmp_path):
    """The other direction (``of: movie, items: user``): each row's bag is the movie's other users
    in the training split, by the same rules as the user's items."""
    schema = {**EXPLICIT_SCHEMA, "fields": [
        {"name": "user", "kind": "categorical"}, {"name": "movie", "kind": "categorical"},
        {"name": "raters", "kind": "history", "of": "movie", "items": "user", "max_values": 10}]}
    data = build(spark, tmp_path, schema, EXPLICIT)
    swapped = {split: [(m, u) for u, m, *_ in rows] for split, rows in EXPLICIT.items()}
    rows = decoded(data, "movie", "user", "raters")  # "user" holds the row's movie, "item" its user
    assert len(rows) == sum(len(v) for v in EXPLICIT.values())
    for r in rows:
        want = expected_bag(swapped, r["user"], r["item"], r["split"], feeds_itself=r["split"] == TRAIN)
        assert set(r["bag"]) == want and len(r["bag"]) == len(want), r
        assert r["vals"] == pytest.approx([1 / math.sqrt(len(want))] * len(want) if want else []), r
    by_key = {(r["split"], r["item"], r["user"]): r for r in rows}  # (split, user, movie)
    # m1 was rated in training by u1 and u2: u2's training row of m1 gets u1 only; u3's test row both.
    assert by_key[(TRAIN, "u2", "m1")]["bag"] == ["u1"] and by_key[(TRAIN, "u2", "m1")]["vals"] == [1.0]
    assert sorted(by_key[("test", "u3", "m1")]["bag"]) == ["u1", "u2"]
    # u1 rated m2 twice in training: each of those rows keeps u1 in m2's bag.
    assert all(r["bag"] == ["u1"] for r in rows if (r["split"], r["item"], r["user"]) == (TRAIN, "u1", "m2"))
    assert by_key[("validation", "u2", "m2")]["bag"] == ["u1"]
    # mt and mv have no training rows: empty bags.
    assert by_key[("test", "u1", "mt")]["bag"] == [] and by_key[("validation", "u1", "mv")]["bag"] == []


def test_layout_gives_history_its_own_pooled_id_range(explicit):
    meta = explicit["meta"]
    lay = {f.name: f for f in meta.fields}
    assert [f.name for f in meta.fields] == ["user", "history", "movie", "sample", "recent"]  # the schema's order
    movie = lay["movie"]
    for name, width in [("history", 10), ("sample", 2), ("recent", 2)]:
        h = lay[name]
        assert (h.kind, h.size, h.width, h.pooled) == ("history", movie.size, width, True)
    assert lay["history"].offset == lay["user"].size and lay["history"].slot == 1
    assert movie.offset == lay["history"].offset + movie.size and movie.slot == 11
    assert lay["sample"].offset == movie.offset + movie.size and lay["sample"].slot == 12
    assert lay["recent"].offset == lay["sample"].offset + movie.size and lay["recent"].slot == 14
    assert (meta.num_features, meta.num_slots) == (lay["user"].size + 4 * movie.size, 16)
    assert not lay["user"].pooled and not movie.pooled
    assert meta.slot_groups() == (1, 10, 1, 2, 2)
    # The vocabulary names the history's ids by their items.
    vocab = explicit["vocabulary"]
    movies = {v for (f, v) in vocab if f == "movie" and v is not None}
    assert {v for (f, v) in vocab if f == "history"} == movies
    assert all(vocab[("history", v)] == vocab[("movie", v)] - movie.offset + lay["history"].offset for v in movies)


def test_splits_keep_the_bags_in_columns_of_their_own(explicit):
    """The split format (afm_dist/dataset.py): ids, vals and mask hold the 2 plain slots; each
    history field's bag is its own column of global ids, unpadded (as many as the row's bag has);
    the metadata and each split's identity file list the columns with their slots."""
    meta, out = explicit["meta"], explicit["out"]
    lay = {f.name: f for f in meta.fields}
    expected = [{"column": f"bag_{n}", "slot": lay[n].slot, "width": lay[n].width}
                for n in ("history", "sample", "recent")]
    assert [vars(b) for b in meta.bag_columns] == expected
    assert [vars(b) for b in split_bag_columns(out / "test")] == expected
    for split in SPLITS:
        table = pq.read_table(out / split)
        assert table.column_names == ["row_id", "ids", "vals", "mask", "label", "bag_history", "bag_sample",
                                      "bag_recent"]
        assert {len(r) for r in table.column("ids").to_pylist()} == {2}
        full = {r["row_id"]: r for r in explicit["splits"][split]}
        for r in table.to_pylist():  # the bag column is the masked-in ids of the field's slots
            for b in expected:
                slots = range(b["slot"], b["slot"] + b["width"])
                assert r[b["column"]] == [full[r["row_id"]]["ids"][s] for s in slots if full[r["row_id"]]["mask"][s]]
    assert any(len(r) for r in pq.read_table(out / "train").column("bag_history").to_pylist())


def test_no_value_of_a_validation_or_test_row_reaches_any_bag(explicit, implicit):
    for data, item in [(explicit, "movie"), (implicit, "item")]:
        lay = {f.name: f for f in data["meta"].fields}
        items = lay[item]
        histories = [f for f in data["meta"].fields if f.kind == "history"]
        marker_ids = {data["vocabulary"][(item, m)] - items.offset + h.offset for m in MARKERS for h in histories}
        assert len(marker_ids) == len(MARKERS) * len(histories)
        for split in SPLITS:
            for r in data["splits"][split]:
                for h in histories:
                    assert not marker_ids & set(r["ids"][h.slot:h.slot + h.width]), (split, r)


def test_the_cap_keeps_a_seeded_sample_of_max_values(explicit, spark, tmp_path):
    rows = decoded(explicit, "user", "movie", "sample")
    full = {(r["split"], r["user"], r["item"], r["label"]): r["bag"]
            for r in decoded(explicit, "user", "movie", "history")}
    for r in rows:
        bag = full[(r["split"], r["user"], r["item"], r["label"])]
        n = min(len(bag), 2)
        assert len(r["bag"]) == n and set(r["bag"]) <= set(bag), r
        assert r["vals"] == pytest.approx([n ** -0.5] * n if n else []), r
    # One order per user: the rows that fed no bag share one sample; a training row's differs only
    # where its own item was in it.
    u1 = {tuple(r["bag"]) for r in rows if r["user"] == "u1" and r["split"] != TRAIN}
    assert len(u1) == 1
    (sample,) = u1
    for r in rows:
        if r["user"] == "u1" and r["split"] == TRAIN and r["item"] not in sample:
            assert tuple(r["bag"]) == sample, r
    capped = explicit["meta"].counts["history"]
    # u1's rows have 3 or 4 values for 2 slots; u2's validation row has exactly 2.
    assert capped["sample"] == {TRAIN: {"rows_empty": 1, "rows_capped": 5},
                                "validation": {"rows_empty": 1, "rows_capped": 1},
                                "test": {"rows_empty": 1, "rows_capped": 1}}
    assert capped["history"] == {s: {"rows_empty": 1, "rows_capped": 0} for s in SPLITS}
    assert capped["recent"] == capped["sample"]
    # The same logs again: the same rows, bags in the same order.
    again = build(spark, tmp_path, EXPLICIT_SCHEMA, EXPLICIT, out_name="again")
    assert again["splits"] == explicit["splits"]


def test_order_by_keeps_the_latest_training_items(explicit):
    """u1's training items, latest first: m4 (40), m3 (30), m2 (25, and 20), m1 (10); u2's: m5, m1."""
    bags = {(r["split"], r["user"], r["item"], r["label"]): r["bag"]
            for r in decoded(explicit, "user", "movie", "recent")}
    assert bags[("validation", "u1", "mv", 3)] == bags[("test", "u1", "mt", 5)] == ["m4", "m3"]
    assert bags[(TRAIN, "u1", "m4", 1)] == ["m3", "m2"]  # its own item left out
    assert bags[(TRAIN, "u1", "m3", 2)] == ["m4", "m2"]
    assert bags[(TRAIN, "u1", "m2", 3)] == bags[(TRAIN, "u1", "m1", 4)] == ["m4", "m3"]
    assert bags[("validation", "u2", "m2", 4)] == ["m5", "m1"] and bags[("test", "u3", "m1", 3)] == ["m6"]
    assert bags[(TRAIN, "u3", "m6", 4)] == [] and bags[("test", "u4", "mv", 2)] == []


def test_implicit_bags_come_from_positive_training_rows_only(implicit):
    rows = decoded(implicit, "user", "item", "history")
    assert {r["label"] for r in rows if r["split"] == TRAIN} == {1.0, -1.0}
    for r in rows:
        fed = r["split"] == TRAIN and r["label"] > 0  # a negative fed nothing: it keeps every value
        want = expected_bag(IMPLICIT, r["user"], r["item"], r["split"], feeds_itself=fed)
        assert set(r["bag"]) == want and len(r["bag"]) == len(want), r
        assert r["vals"] == pytest.approx([len(want) ** -0.5] * len(want) if want else []), r
    negatives = [r for r in rows if r["split"] == TRAIN and r["label"] < 0 and r["user"] == "u1"]
    assert negatives and all(sorted(r["bag"]) == ["i1", "i2", "i3"] for r in negatives)
    empty = implicit["meta"].counts["history"]["history"]
    assert empty["test"]["rows_empty"] == 3 and empty["validation"]["rows_empty"] == 0  # u4's positive, negatives


@pytest.mark.parametrize("change, message", [
    (lambda fs: fs[1].update(of="nobody"), "field 'history': of: no field named 'nobody'"),
    (lambda fs: fs.append({"name": "age", "kind": "numeric"}) or fs[1].update(items="age"),
     "field 'history': items: field 'age' is numeric"),
    (lambda fs: fs[1].update(items="user"), "of and items both name 'user'"),
    (lambda fs: fs[1].update(max_values=0), "field 'history'.max_values: must be at least 1"),
    (lambda fs: fs[1].update(column="x"), "key 'column' does not apply to a history field"),
    (lambda fs: fs[0].update(hash_buckets=8), "of: field 'user' is hashed"),
    (lambda fs: fs[1].update(order_by=5), "field 'history'.order_by: expected a non-empty string"),
])
def test_schema_mistakes_name_the_file_and_field(tmp_path, change, message):
    schema = yaml.safe_load(yaml.safe_dump(EXPLICIT_SCHEMA))
    change(schema["fields"])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(schema))
    with pytest.raises(SchemaError, match="^" + re.escape(str(path)) + ": ") as e:
        load_schema(path)
    assert message in str(e.value)


def test_a_libfm_schema_refuses_a_history_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "l", "format": {"type": "libfm"}, "target": {"kind": "explicit"},
                                    "fields": [{"name": "h", "kind": "history", "of": "a", "items": "b",
                                                "max_values": 3}]}))
    with pytest.raises(SchemaError, match=r"s\.yaml: field 'h': a history field needs categorical fields of the "
                                          r"logs, and a libfm schema has none"):
        load_schema(path)


def test_schemas_without_history_keep_their_hash():
    """The history's keys stay out of other fields' canonical form: data sets and models built before
    keep matching their schema (hashes from before the history field existed)."""
    from tests.preprocess.util import REPO

    assert load_schema(REPO / "schemas/frappe.yaml").hash().startswith("b75cbb56d8b3")
    assert load_schema(REPO / "schemas/movielens_ratings.yaml").hash().startswith("8bb0aa8be0a9")


def model_of(data, directory, name: str = "fm"):
    """A model directory of ``data``'s layout as the trainer finishes one (``write_final``: model.json,
    vocabulary/ and history/ copied, the marker), its weights drawn from N(0, 1) so that every slot,
    each bag's included, moves the score."""
    directory.mkdir()
    cfg = TrainConfig(data=str(data["out"]), model=name, output=str(directory),
                      model_config=ModelConfig(embedding_dim=4, attention_factor=4))
    model = TrainedModel(name=name, config=cfg.model_config, dataset=data["meta"]).new_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    save_weights(model, directory)
    state = RunState(best={"val_rmse": 1.0, "epoch": 1, "metrics": {"val_rmse": 1.0}})
    write_final(directory, cfg, data["meta"], model, state, global_batch=8)
    return directory


def raw_test_logs(data, directory):
    """The data set's test file's lines, plus a row of a user never seen (out of vocabulary)."""
    lines = (data["out"].parent / "test.tsv").read_text().splitlines() + ["u9\tm1\t3\t70"]
    return write_lines(directory / "raw_test.tsv", lines)


def test_history_dir_holds_each_owners_bag_as_a_test_row_got_it(explicit, implicit):
    """history/: one row per owner with training values and field, its bag in the cap's order,
    the bag every validation and test row of that owner got."""
    for data, item in [(explicit, "movie"), (implicit, "item")]:
        lay = {f.name: f for f in data["meta"].fields}
        value_of = {i: v for (f, v), i in data["vocabulary"].items() if f in ("user", item)}
        table = pq.read_table(data["out"] / HISTORY).to_pylist()
        assert set(table[0]) == {HISTORY_OWNER, HISTORY_FIELD, HISTORY_BAG}
        written = {(r[HISTORY_FIELD], value_of[r[HISTORY_OWNER] + lay["user"].offset]):
                   [value_of[i + lay[item].offset] for i in r[HISTORY_BAG]] for r in table}
        assert len(written) == len(table)
        histories = [f.name for f in data["meta"].fields if f.kind == "history"]
        assert {u for _, u in written} == {"u1", "u2", "u3"}  # u4 has no training row
        for h in histories:
            for r in decoded(data, "user", item, h):
                if r["split"] != TRAIN:
                    assert written.get((h, r["user"]), []) == r["bag"], (h, r)
        assert len(table) == 3 * len(histories)
    assert explicit["meta"].extra["history_bags"]["directory"] == HISTORY


def test_raw_logs_get_the_bags_and_scores_of_the_preprocessed_test_split(explicit, spark, tmp_path):
    """Raw test lines scored with the model's history/ get, row by row, the ids and values of the
    same rows of the preprocessed test split, hence the same scores; an unseen user gets empty bags."""
    model_dir = model_of(explicit, tmp_path / "model")
    assert (model_dir / HISTORY).is_dir() and TrainedModel.load(model_dir).history_path == model_dir / HISTORY
    raw = raw_test_logs(explicit, tmp_path)
    # What scoring feeds the model: the encoded raw rows.
    encoded, keys, rejected = encode_raw_logs(spark, [str(raw)], TrainedModel.load(model_dir), tmp_path / "staging",
                                              max_rejected_fraction=0.0)
    assert rejected == 0 and {"raw_user", "raw_movie"} <= set(keys)
    scored_rows = {(r["raw_user"], r["raw_movie"], r["label"]): r for r in encoded.collect()}
    assert len(scored_rows) == len(EXPLICIT["test"]) + 1
    test_rows = {r["row_id"]: r for r in explicit["splits"]["test"]}
    split_rows = {(r["user"], r["item"], r["label"]): test_rows[r["row_id"]]
                  for r in decoded(explicit, "user", "movie", "history") if r["split"] == "test"}
    for key, row in scored_rows.items():
        if key[0] != "u9":  # every slot as in the split: the bags of all three history fields, in order
            assert [row[c] for c in ("ids", "vals", "mask")] == [split_rows[key][c] for c in ("ids", "vals", "mask")]
    unseen = scored_rows[("u9", "m1", 3.0)]
    for h in (f for f in explicit["meta"].fields if f.kind == "history"):
        slots = slice(h.slot, h.slot + h.width)
        empty = ([0] * h.width, [0.0] * h.width, [0] * h.width)  # padding only
        assert (unseen["ids"][slots], unseen["vals"][slots], unseen["mask"][slots]) == empty, h.name
        assert any(split_rows[k]["mask"][slots] != [0] * h.width for k in split_rows)  # some bags are not empty
    # The job: raw lines and the split score the same rows the same.
    assert run_any_job("score", ["--model", model_dir, "--input", raw, "--output", tmp_path / "raw"], spark) == 0
    assert run_any_job("score", ["--model", model_dir, "--input", explicit["out"] / "test",
                                 "--output", tmp_path / "split"], spark) == 0
    by_id = {r["row_id"]: r for r in decoded(explicit, "user", "movie", "history") if r["split"] == "test"}
    from_split = {(by_id[r["row_id"]]["user"], by_id[r["row_id"]]["item"], r["label"]): r["score"]
                  for r in pq.read_table(tmp_path / "split" / "predictions").to_pylist()}
    from_raw = {(r["raw_user"], r["raw_movie"], r["label"]): r["score"]
                for r in pq.read_table(tmp_path / "raw" / "predictions").to_pylist()}
    assert len(from_split) == len(EXPLICIT["test"]) and set(from_raw) == set(from_split) | {("u9", "m1", 3.0)}
    for key, score in from_split.items():
        assert from_raw[key] == pytest.approx(score, abs=1e-5), key
    assert len(set(round(v, 4) for v in from_split.values())) == len(from_split)  # the rows do differ


def test_raw_logs_are_explained_as_the_preprocessed_test_split(explicit, spark, tmp_path):
    """An AFM explains the raw test lines as it explains the same rows of the split: the same mean
    attention for every field pair, the history's included."""
    model_dir = model_of(explicit, tmp_path / "afm", "afm")
    tables = {}
    for name, given in [("raw", explicit["out"].parent / "test.tsv"), ("split", explicit["out"] / "test")]:
        assert run_any_job("explain", ["--model", model_dir, "--input", given, "--output", tmp_path / name,
                                       "--rows", "2"], spark) == 0
        tables[name] = {(r["field_a"], r["field_b"]): (float(r["mean_attention"]), int(r["rows"]))
                        for r in read_delimited(tmp_path / name / "field_pairs.csv")}
    assert ("user", "history") in tables["split"] and tables["raw"].keys() == tables["split"].keys()
    for pair, (attention, rows) in tables["split"].items():
        assert tables["raw"][pair][0] == pytest.approx(attention, abs=1e-6) and tables["raw"][pair][1] == rows, pair


def test_raw_logs_are_refused_by_a_model_without_history(explicit, tmp_path, capsys):
    """A model directory of a data set with a history field but no history/ (trained before the
    bags were written): raw logs refused by scoring and explanation before Spark starts, in one
    line; nothing written."""
    raw = explicit["out"].parent / "test.tsv"
    for job, name in [("score", "fm"), ("explain", "afm")]:
        model_dir = model_of(explicit, tmp_path / f"{job}-model", name)
        shutil.rmtree(model_dir / HISTORY)
        code = run_any_job(job, ["--model", model_dir, "--input", raw, "--output", tmp_path / job], None)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and "Traceback" not in "\n".join(err)
        assert err[-1].endswith(f"{model_dir}: no history/ (the training bags of history field 'history'), so raw "
                                f"logs ({raw}) cannot get their bags; train the model again from a data set "
                                "preprocessed with this afm-dist, or score a preprocessed split (--input DATA/test)")
        assert not (tmp_path / job).exists()


def test_training_reads_the_bag_columns_as_scoring_does(explicit, spark, tmp_path):
    """The trainer (horovodrun -np 2, Petastorm: the loader puts each split's bag columns back at
    their slots) and the scoring job (each task reads its row groups with pyarrow) see the same
    rows: the scoring job's RMSE on the validation split is the trainer's best validation RMSE.
    An FM without its bags' slots would see other rows (its pooled history input empty)."""
    model = tmp_path / "fm"
    proc = run_horovod(["-m", "afm_dist.train", "--data", str(explicit["out"]), "--model", "fm",
                        "--output", str(model), "--epochs", "3", "--batch-size", "4", *SMALL_MODEL], np=2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    info = json.loads((model / "model.json").read_text())
    out = tmp_path / "scores"
    assert run_any_job("score", ["--model", str(model), "--input", str(explicit["out"] / "validation"),
                                 "--output", str(out)], spark) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["rows"] == len(EXPLICIT["validation"])
    assert summary["rmse"] == pytest.approx(info["best"]["val_rmse"], abs=1e-6)


def test_bag_columns_are_format_2_and_a_split_without_them_is_refused(explicit, spark, tmp_path, capsys):
    """A data set with bag columns is written as format 2, which an afm-dist reading only format 1
    would read as rows without their bags; this one reads 1 and 2 and refuses others, naming the
    file. A split whose files lack a bag column its identity lists is refused by the scoring job
    in one line, before a task reads it, and nothing is left that looks complete."""
    assert explicit["meta"].format_version == 2
    for version, readable in ((1, True), (2, True), (3, False)):
        d = tmp_path / f"v{version}"
        d.mkdir()
        meta = json.loads((explicit["out"] / "metadata.json").read_text())
        (d / "metadata.json").write_text(json.dumps({**meta, "format_version": version}))
        if readable:
            assert read_metadata(d / "metadata.json").format_version == version
        else:
            with pytest.raises(DatasetError, match=rf"{d / 'metadata.json'}: format_version 3, this afm-dist reads "
                                                   r"1, 2\. Re-run jobs/preprocess.py"):
                read_metadata(d / "metadata.json")
    split = tmp_path / "data" / "test"
    shutil.copytree(explicit["out"] / "test", split)
    for f in split.glob("*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["bag_sample"]), f)
    model_dir = model_of(explicit, tmp_path / "model", "fm")
    code = run_any_job("score", ["--model", model_dir, "--input", split, "--output", tmp_path / "scores"], spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].endswith(f"{split}: Parquet without the bag columns ['bag_sample'] that its _dataset.json lists "
                            "(a history field's bags); score the split as jobs/preprocess.py wrote it, or raw logs")
    assert not (tmp_path / "scores").exists()


def test_the_sampled_fm_of_pooled_history_fields_scores_as_recorded(explicit, tmp_path):
    """Gibbs sampling on a data set with three pooled bags (no pair inside a bag) runs by default
    under horovodrun (it was refused before), and the run ends with the better of the SGD FM and the
    blend on validation, whose model directory scores the validation rows as recorded. These 8 rows
    are too few for the samples to win (validation keeps the SGD FM); the sampler's pairs are checked
    against the product's FM, draw by draw, in tests/train/test_gibbs.py."""
    from afm_dist.batch import read_split

    out = tmp_path / "fm"
    proc = run_horovod(["-m", "afm_dist.train", "--data", str(explicit["out"]), "--model", "fm", "--output", str(out),
                        "--epochs", "2", "--batch-size", "4", "--embedding-dim", "4", "--log-every", "1000",
                        "--mcmc-dim", "2", "--mcmc-samples", "4"], np=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["phase"] == "mcmc" and last["sweeps"] == 300 and math.isfinite(last["val_rmse_mcmc"])
    model = TrainedModel.load(out)
    assert model.config.embedding_dim == (4 + 2 * 4 if last["sgd_share"] < 1 else 4)
    fm = model.build().eval()
    b = read_split(explicit["out"] / "validation")
    lo, hi = model.dataset.target_range()
    with torch.no_grad():
        rmse = float((fm(*b.inputs).clamp(lo, hi) - b.label).pow(2).mean().sqrt())
    assert rmse == pytest.approx(model.best["val_rmse"], rel=1e-4)
    assert model.best["val_rmse"] == pytest.approx(min(last["val_rmse"], last["val_rmse_sgd"]), rel=1e-9)
