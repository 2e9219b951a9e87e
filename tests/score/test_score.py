"""Batch scoring and explanations on Spark local[2], on real pipeline output."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from afm_dist.batch import to_batch
from afm_dist.dataset import COMPLETE_MARKER, SPLIT_IDENTITY
from afm_dist.model_dir import TrainedModel
from afm_dist.synthetic import PLANTED_PAIRS
from tests.conftest import run_job


def direct_rmse(model_dir, split_dir, clip) -> tuple[float, int]:
    """RMSE with the model in plain torch, no Spark and no Petastorm."""
    model = TrainedModel.load(model_dir).build()
    batch = to_batch(pq.read_table(split_dir))
    y = batch.label.double().numpy()
    with torch.inference_mode():
        pred = model(*batch.inputs).double().numpy()
    pred = np.clip(pred, *clip)
    return float(np.sqrt(np.mean((pred - y) ** 2))), len(y)


@pytest.mark.stack
@pytest.mark.parametrize("model_name", ["fm", "afm"])
def test_score_rmse_equals_torch_and_training(spark, planted_data, planted_models, tmp_path, model_name):
    model_dir = planted_models[model_name]
    out = tmp_path / "scores"
    assert run_job("score", ["--model", str(model_dir), "--input", str(planted_data / "validation"),
                             "--output", str(out)], spark) == 0
    assert (out / COMPLETE_MARKER).exists()
    summary = json.loads((out / "metrics.json").read_text())
    info = json.loads((model_dir / "model.json").read_text())
    clip = (info["dataset"]["target"]["min"], info["dataset"]["target"]["max"])
    rmse, rows = direct_rmse(model_dir, planted_data / "validation", clip)
    assert summary["rows"] == rows
    assert summary["rmse"] == pytest.approx(rmse, abs=1e-6)
    # Training evaluated the same best weights on the same split.
    assert summary["rmse"] == pytest.approx(info["best"]["val_rmse"], abs=1e-6)
    preds = spark.read.parquet(str(out / "predictions"))
    assert set(preds.columns) == {"row_id", "label", "score", "prediction"}
    assert preds.count() == rows


def test_score_refuses_existing_output_and_unfinished_model(spark, planted_data, planted_models, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = ["--model", str(planted_models["fm"]), "--input", str(planted_data / "test"), "--output", str(out)]
    assert run_job("score", args, spark) == 2
    assert (out / "keep.txt").read_text() == "user data"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    assert run_job("score", ["--model", str(unfinished), "--input", str(planted_data / "test"),
                             "--output", str(tmp_path / "o")], spark) == 2
    assert not (tmp_path / "o").exists()


def test_score_refuses_a_split_that_is_not_of_the_models_data_set(spark, planted_data, planted_models, tmp_path,
                                                                     capfd):
    """bugcases2 case 12: a split copied away from its data set keeps its identity (its own
    _dataset.json) and scores as before; without it, with another data set's identity, or with a
    feature id past the model's table it is refused in one line (exit 2), nothing published."""
    model_dir = planted_models["fm"]
    features = TrainedModel.load(model_dir).num_features
    copied = tmp_path / "copied"
    shutil.copytree(planted_data / "test", copied)
    assert run_job("score", ["--model", model_dir, "--input", copied, "--output", tmp_path / "ok"], spark) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["rows"] == pq.read_table(copied).num_rows

    def refused(split, expected):
        out = tmp_path / f"out-{split.name}"
        assert run_job("score", ["--model", model_dir, "--input", split, "--output", out], spark) == 2
        err = capfd.readouterr().err
        assert expected in err and "Traceback" not in err, err[-2000:]
        assert not out.exists()

    anonymous = tmp_path / "anonymous"
    shutil.copytree(copied, anonymous)
    (anonymous / SPLIT_IDENTITY).unlink()
    refused(anonymous, "says nothing of the data set")
    foreign = tmp_path / "foreign"
    shutil.copytree(copied, foreign)
    (foreign / SPLIT_IDENTITY).write_text(json.dumps({"split": "test", "schema_hash": "0" * 16, "num_features": 19}))
    refused(foreign, "is not of the data set the model was trained on")
    # Same identity, but an id the model has no feature for (a split edited or of a larger vocabulary).
    beyond = tmp_path / "beyond"
    beyond.mkdir()
    shutil.copy(copied / SPLIT_IDENTITY, beyond / SPLIT_IDENTITY)
    table = pq.read_table(copied)
    ids = table.column("ids").to_pylist()
    ids[0][0] = features + 4
    pq.write_table(table.set_column(table.schema.get_field_index("ids"), "ids",
                                    pa.array(ids, type=table.schema.field("ids").type)), beyond / "part-0.parquet")
    refused(beyond, f"feature id {features + 4} is beyond the model's {features} features")


@pytest.mark.stack
def test_explain_heatmap_peaks_on_a_planted_pair(spark, planted_data, planted_models, tmp_path):
    out = tmp_path / "explain"
    assert run_job("explain", ["--model", str(planted_models["afm"]), "--input", str(planted_data / "test"),
                               "--output", str(out), "--rows", "5"], spark) == 0
    assert (out / "attention_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "field_pairs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 15  # 6 fields: every pair of distinct fields, each slot pair once
    top = table[0]
    assert float(top["mean_attention"]) == max(float(r["mean_attention"]) for r in table)
    planted = {frozenset((a, b)) for a, b, _ in PLANTED_PAIRS}
    assert frozenset((top["field_a"], top["field_b"])) in planted, table[:3]

    with open(out / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_row = {}
    for r in rows:
        by_row.setdefault(r["row_id"], []).append(r)
    assert len(by_row) == 5
    for pairs in by_row.values():
        assert len(pairs) == 15
        assert sum(float(p["attention"]) for p in pairs) == pytest.approx(1.0, abs=1e-5)
        # Raw values from the vocabulary, with the generator's field prefixes.
        users = {p["value_a"] for p in pairs if p["field_a"] == "user"}
        assert users and all(u.startswith("u") for u in users)


@pytest.mark.stack
def test_score_raw_logs_with_unseen_values_and_malformed_lines(spark, planted_models, tmp_path):
    model_dir = planted_models["afm"]
    info = json.loads((model_dir / "model.json").read_text())
    fields = {f["name"]: f for f in info["dataset"]["fields"]}
    header = "user\titem\tdaytime\tweekday\tcity\tdevice\trating"
    lines = [
        header,
        "u1\ti0\td2\tw3\tc5\tv1\t3.5",         # 1: known values
        "u2\ti1\td0\tw0\tc0\tv0\t2.0",         # 2: known values
        "u_never_seen\ti0\td2\tw3\tc5\tv1\t4.0",  # 3: unseen user -> the field's out-of-vocabulary id
        "u1\ti0\td2\tw3\tc5",                  # 4: wrong column count
        "u1\ti0\td2\tw3\tc5\tv1\tfive",        # 5: rating not a number
    ]
    raw = tmp_path / "raw.tsv"
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scored"
    assert run_job("score", ["--model", str(model_dir), "--input", str(raw), "--output", str(out),
                             "--max-rejected-fraction", "0.5"], spark) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["rows"] == 3 and summary["rejected_rows"] == 2
    rejected = {r["line"]: r["reason"] for r in spark.read.parquet(str(out / "rejected")).collect()}
    assert set(rejected) == {5, 6}  # file line numbers, header = line 1
    assert "rating" in rejected[6]

    preds = {r["raw_user"]: r["prediction"] for r in spark.read.parquet(str(out / "predictions")).collect()}
    assert set(preds) == {"u1", "u2", "u_never_seen"}
    # The unseen user is scored as the user field's out-of-vocabulary id (local id 0).
    model = TrainedModel.load(model_dir).build()
    vocab = {(r["field"], r["value"]): r["id"] for r in spark.read.parquet(str(model_dir / "vocabulary")).collect()}
    ids = [fields["user"]["offset"]] + [vocab[(f, v)] for f, v in
                                        zip(["item", "daytime", "weekday", "city", "device"], ["i0", "d2", "w3", "c5", "v1"])]
    with torch.inference_mode():
        expected = model(torch.tensor([ids]), torch.ones(1, 6), torch.ones(1, 6, dtype=torch.bool)).item()
    lo, hi = info["dataset"]["target"]["min"], info["dataset"]["target"]["max"]
    assert preds["u_never_seen"] == pytest.approx(min(max(expected, lo), hi), abs=1e-5)


def test_score_refuses_too_many_malformed_raw_rows(spark, planted_models, tmp_path):
    raw = tmp_path / "bad.tsv"
    raw.write_text("user\titem\tdaytime\tweekday\tcity\tdevice\trating\n" + "u1\ti0\n" * 5 + "u1\ti0\td2\tw3\tc5\tv1\t3\n")
    out = tmp_path / "o"
    assert run_job("score", ["--model", str(planted_models["afm"]), "--input", str(raw), "--output", str(out)],
                   spark) == 2
    assert not out.exists()


def test_executors_get_the_models_description_not_its_weights(planted_models):
    """A table of millions of rows is read by each executor from the model directory, never
    pickled into the broadcast."""
    import pickle

    from afm_dist.spark.scoring import ModelPayload

    model = TrainedModel.load(planted_models["afm"])
    payload = pickle.dumps(ModelPayload(model))
    assert len(payload) < 32_000 < model.weights_path.stat().st_size
    rebuilt = TrainedModel.from_json(pickle.loads(payload).info_json, path=model.path).build()
    for (name, a), b in zip(model.build().state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_attentions_stop_gradient_is_kept_in_model_json_and_absent_means_off(planted_models):
    """model.json keeps ``attention_stop_gradient`` (what the AFM was trained with, so that resuming
    or fine-tuning it goes on the same way); one written before the option (no such key) was
    trained with the gradient through the logits and loads with it off."""
    model = TrainedModel.load(planted_models["afm"])
    info = json.loads(model.to_json())
    assert info["model_config"]["attention_stop_gradient"] is False  # the default it was trained with
    info["model_config"]["attention_stop_gradient"] = True
    on = TrainedModel.from_json(json.dumps(info), path=model.path)
    assert on.config.attention_stop_gradient is True and on.build().attention.stop_gradient is True
    del info["model_config"]["attention_stop_gradient"]
    older = TrainedModel.from_json(json.dumps(info), path=model.path)
    assert older.config.attention_stop_gradient is False and older.build().attention.stop_gradient is False


def test_generator_cardinalities(spark):
    from afm_dist.synthetic import generate_logs

    logs = generate_logs(spark, 3000, seed=5, users=20, items=100_000, uniform=True)
    users = {r["user"] for r in logs.select("user").distinct().collect()}
    items = logs.select("item").distinct().count()
    assert users == {f"u{i}" for i in range(20)}  # 3000 uniform draws over 20 users: every one occurs
    assert 2900 <= items <= 3000  # 3000 draws over 100,000 items: almost all distinct
