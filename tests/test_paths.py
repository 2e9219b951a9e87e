"""Paths of every job: local and shared-mount paths and file:// URIs are accepted, any other URL
scheme is refused before any work, naming the flag (afm_dist.io.local_path, afm_dist.cli)."""
from __future__ import annotations

import importlib

import pytest

from afm_dist.io import UnsupportedSchemeError, local_path
from tests.conftest import REPO, job_module


def test_local_path():
    assert local_path("file:///data/frappe", "--data") == "/data/frappe"
    assert local_path("/mnt/shared/frappe", "--data") == "/mnt/shared/frappe"
    assert local_path("out/frappe", "--data") == "out/frappe"
    for url in ("hdfs://namenode:8020/frappe", "s3://bucket/frappe", "s3a://bucket/frappe", "gs://b/f"):
        with pytest.raises(UnsupportedSchemeError, match=f"--data {url}: {url.split(':')[0]}:// paths are not supported"):
            local_path(url, "--data")


@pytest.mark.parametrize("job, argv, flag", [
    ("preprocess", ["--schema", "hdfs://nn/synthetic.yaml", "--input", "logs.tsv", "--output", "OUT"], "--schema"),
    ("preprocess", ["--schema", "schemas/synthetic.yaml", "--input", "s3://bucket/logs", "--output", "OUT"], "--input"),
    ("preprocess", ["--schema", "schemas/movielens_ratings.yaml", "--input", "ratings.csv",
                    "--table", "movies=gs://bucket/movies.csv", "--output", "OUT"], "--table movies"),
    ("score", ["--model", "hdfs://nn/models/afm", "--input", "split", "--output", "OUT"], "--model"),
    ("explain", ["--model", "models/afm", "--input", "split", "--output", "s3://bucket/explain"], "--output"),
    ("generate", ["--rows", "10", "--output", "abfs://container/logs"], "--output"),
])
def test_every_job_refuses_other_schemes_before_any_work(job, argv, flag, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert job_module(job).main(argv) == 2
    err = capsys.readouterr().err
    assert f"{job}: error: {flag} " in err and "paths are not supported" in err, err
    assert not (tmp_path / "out").exists()


def test_file_uris_reach_the_job_as_paths(tmp_path, capsys):
    """A file:// schema and input are read as the paths they name (the refusal comes from the
    content: an input that does not exist), never as URLs."""
    missing = tmp_path / "no-such-logs.tsv"
    argv = ["--schema", f"file://{REPO}/schemas/synthetic.yaml", "--input", f"file://{missing}",
            "--output", f"file://{tmp_path / 'out'}"]
    assert job_module("preprocess").main(argv) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file or directory" in err, err


@pytest.mark.parametrize("module, argv, flag, why", [
    # bugcases2 case 07: scoring a data set's test split into itself replaced the split with scores
    ("score", ["--model", "M", "--input", "D/test", "--output", "D/test", "--overwrite"], "--input", "is the"),
    ("explain", ["--model", "M", "--input", "D/test", "--output", "D", "--overwrite"], "--input", "contains the"),
    ("score", ["--model", "M", "--input", "D/test", "--output", "M/scores"], "--model", "lies inside the"),
    # a preprocessing rerun read its own earlier output as logs
    ("preprocess", ["--schema", "schemas/synthetic.yaml", "--input", "D", "--output", "D/prep"], "--input",
     "lies inside the"),
    ("preprocess", ["--schema", "schemas/synthetic.yaml", "--train", "D/test/a.parquet", "--validation", "D/v",
                    "--test", "D/t", "--output", "D", "--overwrite"], "--train", "contains the"),
    ("preprocess", ["--schema", "schemas/movielens_ratings.yaml", "--input", "D/test/a.parquet",
                    "--table", "movies=M", "--output", "M/out"], "--table movies", "lies inside the"),
    ("train", ["--data", "D", "--model", "fm", "--num-proc", "1", "--output", "D/model"], "--data", "lies inside the"),
    ("afm_dist.train", ["--data", "D", "--model", "afm", "--init-from", "M", "--output", "M", "--overwrite"],
     "--init-from", "is the"),
    ("afm_dist.search", ["--data", "D", "--model", "fm", "--grid", "lr=0.1", "--output", "D/search"], "--data",
     "lies inside the"),
])
def test_every_job_refuses_an_output_that_is_holds_or_lies_inside_an_input(module, argv, flag, why, tmp_path, capsys):
    """An output directory that is, contains or lies inside an input is refused before any work
    (exit 2, one line naming the flag and the input), and the input is left as it was."""
    data, model = tmp_path / "D", tmp_path / "M"
    (data / "test").mkdir(parents=True)
    (data / "test" / "a.parquet").write_text("rows")
    model.mkdir()
    argv = [str(data) + a[1:] if a.startswith("D") else str(model) + a[1:] if a.startswith("M") else
            a.replace("=M", f"={model}") for a in argv]
    if module.startswith("afm_dist."):
        main = importlib.import_module(module).main
    else:
        main = job_module(module).main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f" {why} {flag}" in err and "error" in err and "Traceback" not in err, err
    assert (data / "test" / "a.parquet").read_text() == "rows"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["D", "M", "a.parquet", "test"]
