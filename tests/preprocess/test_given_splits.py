"""Given splits (the paper's protocol with published files): --train/--validation/--test files are
encoded in one feature space and every row stays in its file's split."""
from __future__ import annotations

from collections import Counter

import pytest
import yaml

from afm_dist.dataset import SPLITS, load_metadata

from .util import read_all, run_job, vocabulary, write_lines

IMPLICIT = {
    "name": "given_implicit",
    "format": {"type": "tsv", "header": True},
    "fields": [{"name": "user", "kind": "categorical", "oov": False},
               {"name": "item", "kind": "categorical", "oov": False}],
    "target": {"kind": "implicit", "negatives": {"per_positive": 2, "replace": "item", "max_tries": 10}},
    "seed": 3,
}


def _logs(users: range, items: int, offset: int = 0) -> list[str]:
    return ["user\titem"] + [f"u{u}\ti{(u * 3 + offset) % items}" for u in users]


@pytest.fixture(scope="module")
def implicit_run(spark, tmp_path_factory):
    d = tmp_path_factory.mktemp("given")
    schema = d / "schema.yaml"
    schema.write_text(yaml.safe_dump(IMPLICIT))
    files = {
        "train": write_lines(d / "train.tsv", _logs(range(0, 60), 20)),
        # u60..u69 and item i99 occur only in the validation and test files: one feature space
        "validation": write_lines(d / "validation.tsv", _logs(range(60, 70), 20, offset=1) + ["u1\ti99"]),
        "test": write_lines(d / "test.tsv", _logs(range(60, 70), 20, offset=2) + ["u2\ti99"]),
    }
    out = d / "out"
    args = ["--schema", schema, "--output", out]
    for name, path in files.items():
        args += [f"--{name}", path]
    assert run_job(spark, *map(str, args)) == 0
    return {"out": out, "files": files, "splits": read_all(out), "meta": load_metadata(out)}


def _decoded_positives(run) -> dict[str, Counter]:
    by_id = {i: value for (field, value), i in vocabulary(run["out"]).items()}
    return {s: Counter(tuple(by_id[i] for i in r["ids"]) for r in run["splits"][s] if r["label"] > 0)
            for s in SPLITS}


def test_every_log_stays_in_its_files_split(implicit_run):
    positives = _decoded_positives(implicit_run)
    for split, path in implicit_run["files"].items():
        logs = Counter(tuple(line.split("\t")) for line in path.read_text().splitlines()[1:])
        assert positives[split] == logs, split


def test_negatives_follow_their_positive_and_one_feature_space(implicit_run):
    meta, splits = implicit_run["meta"], implicit_run["splits"]
    for s in SPLITS:
        rows = splits[s]
        assert meta.counts[s]["rows"] == len(rows)
        assert meta.counts[s]["negative"] == 2 * meta.counts[s]["positive"]
    assert [meta.counts[s]["positive"] for s in SPLITS] == [60, 11, 11]
    vocab = vocabulary(implicit_run["out"])
    # every user of the three files and item i99 (validation and test only) have ids
    assert {v for (f, v) in vocab if f == "user"} == {f"u{u}" for u in range(70)}
    assert ("item", "i99") in vocab
    assert meta.num_features == 70 + 21
    assert set(meta.extra["split_files"]) == set(SPLITS)


@pytest.fixture(scope="module")
def libfm_run(spark, tmp_path_factory):
    """libFM files with remapped ids, no validation file: validation is drawn from --train."""
    d = tmp_path_factory.mktemp("given_libfm")
    schema = d / "schema.yaml"
    schema.write_text(yaml.safe_dump({"name": "given_libfm", "format": {"type": "libfm", "ids": "remap"},
                                      "target": {"kind": "explicit"},
                                      "split": {"train": 0.6, "validation": 0.3, "test": 0.1}, "seed": 5}))
    # labels are unique, so a row can be traced to its file
    train = write_lines(d / "train.libfm", [f"{i} {1000 + i % 17}:1 {2000 + i % 5}:0.5" for i in range(300)])
    test = write_lines(d / "test.libfm", [f"{-1 - i} {1000 + i % 17}:1 {9000 + i % 3}:1" for i in range(40)])
    out = d / "out"
    assert run_job(spark, "--schema", str(schema), "--train", str(train), "--test", str(test),
                   "--output", str(out)) == 0
    return {"out": out, "splits": read_all(out), "meta": load_metadata(out)}


def test_libfm_validation_drawn_from_train_in_the_schemas_ratio(libfm_run):
    splits = libfm_run["splits"]
    train_labels = [r["label"] for s in ("train", "validation") for r in splits[s]]
    assert sorted(train_labels) == list(range(300))
    assert sorted(r["label"] for r in splits["test"]) == list(range(-40, 0))
    share = len(splits["validation"]) / 300  # 0.3 / (0.6 + 0.3) expected
    assert abs(share - 1 / 3) < 0.08, share
    # 17 + 5 ids of the train file, 3 more only in the test file, numbered in one space
    assert libfm_run["meta"].num_features == 17 + 5 + 3
    ids = {i for s in SPLITS for r in splits[s] for i, m in zip(r["ids"], r["mask"]) if m}
    assert ids == set(range(25))


@pytest.mark.parametrize("args, message", [
    (["--input", "{train}", "--train", "{train}", "--test", "{test}"], "exclude each other"),
    (["--train", "{train}"], "need --test"),
    (["--train", "{train}", "--test", "{train}"], "both --train and --test"),
    ([], "--train and --test"),
])
def test_impossible_split_arguments_are_refused_before_spark(tmp_path, capsys, args, message):
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(IMPLICIT))
    train = write_lines(tmp_path / "train.tsv", _logs(range(5), 3))
    test = write_lines(tmp_path / "test.tsv", _logs(range(5, 8), 3))
    args = [a.format(train=train, test=test) for a in args]
    # spark=None: the job would start its own session; these are refused before one starts
    assert run_job(None, "--schema", str(schema), *args, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
