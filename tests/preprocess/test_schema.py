"""The schema language: shipped schemas, hashing, and mistakes found before Spark starts."""
from __future__ import annotations

import copy

import pytest
import yaml

from afm_dist import inputs
from afm_dist.schema import SchemaError, load_schema, parse_schema, schema_from_dict

from tests.conftest import job_module

from .util import REPO, write_lines

SHIPPED = ["frappe", "frappe_libfm", "movielens_tags", "movielens_ratings"]

BASE = {
    "name": "t",
    "format": {"type": "csv", "header": True},
    "fields": [
        {"name": "user", "kind": "categorical"},
        {"name": "item", "kind": "categorical"},
        {"name": "genres", "kind": "multi_categorical", "delimiter": "|", "max_values": 3},
        {"name": "age", "kind": "numeric", "transform": "log1p", "standardize": True},
    ],
    "target": {"kind": "implicit", "negatives": {"per_positive": 2, "replace": "item"}},
}


def with_change(change) -> dict:
    d = copy.deepcopy(BASE)
    change(d)
    return d


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_schemas_load_and_round_trip(name):
    s = load_schema(REPO / "schemas" / f"{name}.yaml")
    assert s.name == name
    again = schema_from_dict(s.to_dict())
    assert again == s and again.hash() == s.hash()


def test_shipped_schemas_declare_the_protocols():
    frappe = load_schema(REPO / "schemas/frappe.yaml")
    assert [f.name for f in frappe.fields] == ["user", "item", "daytime", "weekday", "isweekend", "homework",
                                              "cost", "weather", "country", "city"]
    assert frappe.format.type == "tsv" and frappe.format.delimiter == "\t" and frappe.format.quote is None
    assert (frappe.target.kind, frappe.target.negatives.per_positive, frappe.target.negatives.replace) == \
        ("implicit", 2, "item")
    assert (frappe.split.train, frappe.split.validation, frappe.split.test) == (0.7, 0.2, 0.1)
    tags = load_schema(REPO / "schemas/movielens_tags.yaml")
    assert tags.target.negatives.replace == "tag" and [f.column for f in tags.fields] == ["userId", "movieId", "tag"]
    ratings = load_schema(REPO / "schemas/movielens_ratings.yaml")
    genres = ratings.field("genres")
    assert (genres.kind, genres.table, genres.delimiter, genres.width) == ("multi_categorical", "movies", "|", 10)
    assert ratings.target.column == "rating" and ratings.table("movies").log_key == "movieId"
    libfm = load_schema(REPO / "schemas/frappe_libfm.yaml")
    assert (libfm.format.type, libfm.format.num_features, libfm.fields) == ("libfm", 5382, ())


def test_hash_ignores_formatting_but_not_content(tmp_path):
    a = parse_schema(BASE)
    text = yaml.safe_dump(BASE, default_flow_style=True)
    (tmp_path / "s.yaml").write_text("# comment\n" + text)
    assert load_schema(tmp_path / "s.yaml").hash() == a.hash()
    assert parse_schema(with_change(lambda d: d.update(seed=1))).hash() != a.hash()
    assert len(a.hash()) == 64


def test_defaults():
    s = parse_schema(BASE)
    assert s.format.delimiter == "," and s.format.quote == '"'
    assert s.field("user").min_count == 1 and s.field("user").oov and s.field("user").first_id == 1
    assert s.field("genres").width == 3 and s.field("age").width == 1
    assert s.target.negatives.max_tries == 10 and s.seed == 2017


@pytest.mark.parametrize("change, message", [
    (lambda d: d["fields"][0].update(min_cout=2), "field 'user': unknown key 'min_cout'"),
    (lambda d: d["fields"][0].update(kind="categoric"), "field 'user': unknown kind 'categoric'"),
    (lambda d: d["fields"].append({"name": "user", "kind": "numeric"}), "field 'user': the name is used by more"),
    (lambda d: d["fields"][3].update(delimiter="|"), "field 'age': key 'delimiter' does not apply to a numeric"),
    (lambda d: d["fields"][2].pop("delimiter"), "field 'genres': a multi_categorical field needs delimiter"),
    (lambda d: d["fields"][2].update(max_values=0), "field 'genres'.max_values: must be at least 1"),
    (lambda d: d["fields"][3].update(transform="sqrt"), "field 'age': unknown transform 'sqrt'"),
    (lambda d: d["fields"][0].update(hash_buckets=64, min_count=3), "field 'user': hash_buckets replaces"),
    (lambda d: d["fields"][0].update(oov=False, min_count=3), "field 'user': min_count 3 sends rare values"),
    (lambda d: d["fields"][0].update(oov=False, required=False), "field 'user': a missing value"),
    (lambda d: d["fields"][0].update(table="users"), "field 'user': table 'users' is not declared"),
    (lambda d: d["fields"][0].update(name="_user"), "field '_user': the name must be an identifier"),
    (lambda d: d["target"]["negatives"].update(replace="genres"),
     "field 'genres': negatives replace it, so it must be categorical, not multi_categorical"),
    (lambda d: d["target"]["negatives"].update(replace="nope"), "target.negatives.replace: no field named 'nope'"),
    (lambda d: d["target"].update(kind="explicit"), "target.negatives: negative sampling applies to implicit"),
    (lambda d: d.update(target={"kind": "explicit", "column": "user"}),
     "field 'user': reads column 'user', which is the target"),
    (lambda d: d.update(split={"train": 0.7, "validation": 0.2, "test": 0.2}), "split: fractions add up to 1.1"),
    (lambda d: d.update(split={"train": 1.5}), "split.train: expected a fraction between 0 and 1"),
    (lambda d: d.update(split={"train": 0.0, "validation": 0.5, "test": 0.5}), "split.train: the training split"),
    (lambda d: d.update(format={"type": "xml"}), "format.type: unknown input format 'xml'"),
    (lambda d: d.update(format={"type": "csv", "header": False}), "format.columns: a file without header needs"),
    (lambda d: d.update(format={"type": "csv", "header": False, "columns": ["user", "item", "genres"]}),
     "field 'age': column 'age' is not in format.columns"),
    (lambda d: d.update(format={"type": "json", "delimiter": ","}), "format.delimiter: only applies to csv and tsv"),
    (lambda d: d.update(format={"type": "libfm"}), "fields: a libfm schema declares no fields"),
    (lambda d: d.update(colour="red"), "schema: unknown key 'colour'"),
    (lambda d: d.pop("target"), "schema: missing required key 'target'"),
    (lambda d: d.update(seed=-1), "seed: must be at least 0"),
    (lambda d: d.update(tables=[{"name": "m", "format": {"type": "csv"}, "key": "id", True: "item"}]),
     "YAML reads unquoted on/off/yes/no as booleans"),
])
def test_mistakes_name_the_field_and_the_problem(change, message):
    with pytest.raises(SchemaError) as e:
        parse_schema(with_change(change), source="s.yaml")
    assert str(e.value).startswith("s.yaml: ")
    assert message in str(e.value)


def test_negatives_cannot_replace_a_side_table_join_key():
    d = with_change(lambda d: d.update(tables=[{"name": "items", "format": {"type": "csv"}, "key": "id",
                                                "log_key": "item"}]))
    d["fields"][2]["table"] = "items"
    with pytest.raises(SchemaError, match="field 'genres': comes from table 'items' joined on column 'item'"):
        parse_schema(d)


def test_yaml_syntax_error_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SchemaError, match="bad.yaml: not valid YAML"):
        load_schema(p)


# -- input planning (no Spark) -----------------------------------------------------------------


def test_plan_checks_headers_against_the_schema(tmp_path):
    schema = parse_schema(BASE)
    good = write_lines(tmp_path / "a.csv", ["user,item,genres,age", "u1,i1,a|b,3"])
    p = inputs.plan(schema, [str(good)])
    assert p.logs.columns == ("user", "item", "genres", "age") and p.logs.header_lines == ("user,item,genres,age",)
    bad = write_lines(tmp_path / "b.csv", ["user,item,genre,age", "u1,i1,a|b,3"])
    with pytest.raises(inputs.InputError,
                       match=r"field 'genres': column 'genres' is not in the header of .*b\.csv"):
        inputs.plan(schema, [str(bad)])
    other = write_lines(tmp_path / "c.csv", ["item,user,genres,age"])
    with pytest.raises(inputs.InputError, match="all files of one input must share the header"):
        inputs.plan(schema, [str(good), str(other)])
    with pytest.raises(inputs.InputError, match="no such file or directory"):
        inputs.plan(schema, [str(tmp_path / "missing.csv")])


def test_plan_needs_every_side_table(tmp_path):
    schema = load_schema(REPO / "schemas/movielens_ratings.yaml")
    logs = write_lines(tmp_path / "r.csv", ["userId,movieId,rating,timestamp"])
    with pytest.raises(inputs.InputError, match=r"table 'movies': pass its file\(s\) with --table movies=PATH"):
        inputs.plan(schema, [str(logs)])
    movies = write_lines(tmp_path / "m.csv", ["movieId,title"])
    with pytest.raises(inputs.InputError, match="field 'genres': column 'genres' is not in the header"):
        inputs.plan(schema, [str(logs)], {"movies": [str(movies)]})


def test_job_fails_before_spark_starts(tmp_path, monkeypatch, capsys):
    import afm_dist.spark.session as session

    def no_spark(*a, **k):
        raise AssertionError("Spark started for a job that had to fail first")

    monkeypatch.setattr(session, "build_session", no_spark)
    job = job_module("preprocess")
    schema = tmp_path / "s.yaml"
    schema.write_text(yaml.safe_dump(with_change(lambda d: d["fields"][1].update(kind="numerical"))))
    logs = write_lines(tmp_path / "a.csv", ["user,item,genres,age"])
    rc = job.main(["--schema", str(schema), "--input", str(logs), "--output", str(tmp_path / "out")])
    assert rc == 2
    assert "field 'item': unknown kind 'numerical'" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    partial = write_lines(tmp_path / "p.tsv", ["user\titem\tweekday"])
    rc = job.main(["--schema", str(REPO / "schemas/frappe.yaml"), "--input", str(partial),
                   "--output", str(tmp_path / "out")])
    assert rc == 2 and "field 'daytime': column 'daytime' is not in the header" in capsys.readouterr().err
    good = write_lines(tmp_path / "f.tsv", ["\t".join(["user", "item", "daytime", "weekday", "isweekend",
                                                      "homework", "cost", "weather", "country", "city"])])
    rc = job.main(["--schema", str(REPO / "schemas/frappe.yaml"), "--input", str(good),
                   "--output", str(tmp_path / "out")])
    assert rc == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
