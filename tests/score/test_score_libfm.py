"""Scoring raw libFM files with a model trained on libFM data (ids kept, or remapped)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, run_job


def _lines(n: int, start: int, rng: np.random.Generator) -> list[str]:
    """Lines with a unique label each: features a in 100..119 and b in 200..209."""
    out = []
    for i in range(n):
        a, b = 100 + int(rng.integers(20)), 200 + int(rng.integers(10))
        label = (a - 110) / 10 + (b - 205) / 5 + start + i * 1e-4
        out.append(f"{label:.4f} {a}:1 {b}:1")
    return out


@pytest.mark.parametrize("ids", ["keep", "remap"])
def test_score_raw_libfm_equals_scoring_its_split(spark, tmp_path, ids):
    rng = np.random.default_rng(3)
    schema = tmp_path / "schema.yaml"
    fmt = {"type": "libfm", "ids": ids, "max_features": 2} | ({"num_features": 210} if ids == "keep" else {})
    schema.write_text(yaml.safe_dump({"name": "libfm_scoring", "format": fmt, "target": {"kind": "explicit"},
                                      "seed": 1}))
    train, test = tmp_path / "train.libfm", tmp_path / "test.libfm"
    train.write_text("\n".join(_lines(600, 0, rng)) + "\n")
    test_lines = _lines(50, 0, rng)
    test.write_text("\n".join(test_lines) + "\n")
    data, model = tmp_path / "data", tmp_path / "model"
    assert run_job("preprocess", ["--schema", schema, "--train", train, "--test", test, "--output", data], spark) == 0
    proc = subprocess.run([sys.executable, "-m", "afm_dist.train", "--data", str(data), "--model", "fm",
                           "--output", str(model), "--epochs", "2", "--embedding-dim", "4", "--log-every", "1000"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the test file as raw libFM, plus lines the model cannot score
    unknown = "1.0 100:1 215:1" if ids == "keep" else "1.0 100:1 999:1"
    raw = tmp_path / "raw.libfm"
    raw.write_text("\n".join(test_lines + [unknown, "2.0 101:1 201:1 202:1"]) + "\n")
    by_raw, by_split = tmp_path / "scored_raw", tmp_path / "scored_split"
    assert run_job("score", ["--model", model, "--input", raw, "--output", by_raw,
                             "--max-rejected-fraction", "0.1"], spark) == 0
    assert run_job("score", ["--model", model, "--input", data / "test", "--output", by_split], spark) == 0

    raw_metrics = json.loads((by_raw / "metrics.json").read_text())
    split_metrics = json.loads((by_split / "metrics.json").read_text())
    assert raw_metrics["rows"] == split_metrics["rows"] == 50
    assert raw_metrics["rejected_rows"] == 2
    assert raw_metrics["rmse"] == pytest.approx(split_metrics["rmse"], abs=1e-6)
    raw_preds = {round(r["label"], 4): r["prediction"] for r in spark.read.parquet(str(by_raw / "predictions")).collect()}
    split_preds = {round(r["label"], 4): r["prediction"]
                   for r in spark.read.parquet(str(by_split / "predictions")).collect()}
    assert raw_preds.keys() == split_preds.keys() and len(raw_preds) == 50
    for label, p in raw_preds.items():
        assert p == pytest.approx(split_preds[label], abs=1e-5)
    lines_kept = {r["raw_line"] for r in spark.read.parquet(str(by_raw / "predictions")).collect()}
    assert lines_kept == set(test_lines)
    reasons = {r["line"]: r["reason"] for r in spark.read.parquet(str(by_raw / "rejected")).collect()}
    assert set(reasons) == {51, 52}
    assert ("215" if ids == "keep" else "999") in reasons[51]
    assert "3 features" in reasons[52]
