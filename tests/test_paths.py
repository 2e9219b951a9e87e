"""Paths of every job: local and shared-mount paths and file:// URIs are accepted, any other URL
scheme is refused before any work, naming the flag (afm_dist.io.local_path, afm_dist.cli)."""
from __future__ import annotations

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
