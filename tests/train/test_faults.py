"""Faults of issue 14 on the training and scoring side, each with its own small input: option
combinations and data layouts refused before Horovod starts, empty splits, a diverging model that
is never published, a resumed run equal to the uninterrupted one, and one definition of each
metric for the trainer and the scoring job."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from afm_dist import metrics as M
from afm_dist.dataset import COMPLETE_MARKER, METADATA_FILE, TEST, VOCABULARY
from afm_dist.model_dir import MODEL_WEIGHTS
from afm_dist.training.checkpoint import CHECKPOINT, load_checkpoint
from tests.conftest import job_module, run_horovod, run_job
from tests.train.test_train import check, metrics, train_args

RATINGS = ["u1\ti1\t4.0", "u2\ti2\t3.0", "u3\ti1\t5.0", "u1\ti3\t2.0", "u2\ti1\t3.5", "u4\ti2\t1.0",
           "u3\ti3\t4.5", "u4\ti1\t2.5", "u5\ti2\t3.0", "u5\ti3\t4.0"] * 6  # 60 rows, ratings 1 to 5


def preprocess(spark, tmp_path, name: str, header: str, lines: list[str], fields: list[str], *,
               split: str = "{train: 0.6, validation: 0.2, test: 0.2}", numeric: tuple[str, ...] = (),
               training: str | None = None):
    """A data set of its own: the lines as a TSV, the schema written here (``training``: its
    training section, e.g. "{batch_size: 7}"), jobs/preprocess.py."""
    logs = tmp_path / f"{name}.tsv"
    logs.write_text("\n".join([header, *lines]) + "\n")
    kinds = [f"  - {{name: {f}, kind: {'numeric' if f in numeric else 'categorical'}}}" for f in fields]
    schema = tmp_path / f"{name}.yaml"
    schema.write_text("\n".join([f"name: {name}", "format: {type: tsv, header: true}", "fields:", *kinds,
                                 "target: {kind: explicit, column: rating}", f"split: {split}", "seed: 3",
                                 *([f"training: {training}"] if training else [])]) + "\n")
    out = tmp_path / f"{name}-data"
    assert run_job("preprocess", ["--schema", schema, "--input", logs, "--output", out, "--min-row-groups", "2"],
                   spark) == 0
    return out


def test_incompatible_options_refused_before_any_work(tmp_path, capsys):
    from afm_dist.train import parse_args

    base = ["--data", str(tmp_path / "none"), "--output", str(tmp_path / "m")]
    cases = [
        (["--model", "fm", "--sparse-embeddings", "true", "--optimizer", "adam"],
         "--sparse-embeddings true works with --optimizer adagrad or rowwise_adagrad"),
        (["--model", "fm", "--resume", "--overwrite"], "--resume continues the run in --output"),
        (["--model", "afm", "--resume", "--init-from", "x"], "drop --init-from"),
        (["--model", "hofm", "--init-from", "x"], "not hofm"),
        (["--model", "fm", "--batch-size", "0"], "--batch-size must be positive"),
        (["--model", "afm", "--interaction-dropout", "1.0"], "--interaction-dropout is a probability"),
        (["--model", "fm", "--l2-schedule", "0.1,0.01,0.1"], "--l2-schedule takes distinct strengths"),
        (["--model", "fm", "--l2-schedule=-0.1,0"], "--l2-schedule takes distinct strengths"),
        (["--model", "fm", "--l2-patience", "0"], "--l2-patience must be positive"),
        (["--model", "fm", "--l2-schedule", "0.1,0", "--linear-l2", "0.01"], "pass one or the other"),
        (["--model", "fm", "--l2-schedule", "0,x"], "expected comma-separated numbers"),
        (["--model", "afm", "--mcmc-sweeps", "100"], "it works with --model fm, not afm"),
        (["--model", "fm", "--mcmc-sweeps", "100", "--loss", "logistic"], "it works with --loss squared"),
        (["--model", "fm", "--mcmc-sweeps", "10", "--mcmc-samples", "20"], "keep at most one a sweep"),
        (["--model", "fm", "--mcmc-samples", "301"], "than the 300 sweeps drawn"),
        (["--model", "fm", "--mcmc-sweeps=-1"], "--mcmc-sweeps takes 0 (off) or more"),
    ]
    for flags, words in cases:
        with pytest.raises(SystemExit) as exit_info:
            parse_args(base + flags)
        assert exit_info.value.code == 2
        assert words in capsys.readouterr().err, flags
    assert parse_args(base + ["--model", "fm", "--sparse-embeddings", "true"]).model_config.sparse_embeddings
    assert not parse_args(base + ["--model", "afm"]).model_config.attention_stop_gradient
    assert parse_args(base + ["--model", "afm", "--attention-stop-gradient", "true"]).model_config.attention_stop_gradient
    # Gibbs sampling after SGD: by default for an FM under the squared loss in a static run (pooled
    # history fields included); off otherwise; a given number of sweeps is that number.
    fm = parse_args(base + ["--model", "fm"])
    assert (fm.mcmc_sweeps, fm.sampling_sweeps(False)) == (None, 300)
    assert fm.sampling_sweeps(True) == 0
    assert parse_args(base + ["--model", "afm"]).sampling_sweeps(False) == 0
    assert parse_args(base + ["--model", "fm", "--loss", "logistic"]).sampling_sweeps(False) == 0
    assert parse_args(base + ["--model", "fm", "--mcmc-sweeps", "0"]).sampling_sweeps(False) == 0
    assert parse_args(base + ["--model", "fm", "--mcmc-sweeps", "40"]).sampling_sweeps(False) == 40
    # The default L2 follows the schedule; a fixed strength for either table turns it off.
    assert parse_args(base + ["--model", "fm"]).l2_at(1) == (0.03, 0.03)
    assert parse_args(base + ["--model", "fm", "--embedding-l2", "0.02"]).l2_at(3) == (0.02, 0.0)


def test_an_afm_from_a_trained_fm_fine_tunes_at_the_lower_rate(tmp_path):
    from afm_dist.train import parse_args
    from afm_dist.training import TrainConfig

    base = ["--data", str(tmp_path / "none"), "--output", str(tmp_path / "m")]
    fm = str(tmp_path / "fm")
    assert parse_args(base + ["--model", "fm"]).lr == 0.05
    assert parse_args(base + ["--model", "afm"]).lr == 0.05  # from random tables: the FM's rate
    assert parse_args(base + ["--model", "afm", "--init-from", fm]).lr == 0.02
    assert parse_args(base + ["--model", "afm", "--init-from", fm, "--lr", "0.1"]).lr == 0.1
    assert parse_args(base + ["--model", "deep_cross", "--init-from", fm]).lr == 0.05  # measured for AFM only
    assert TrainConfig(data="d", model="afm", output="o", init_from=fm).lr == 0.02


def test_a_new_run_starts_w0_at_the_training_splits_mean_target(spark, tmp_path):
    """The preprocessing counts each split's label sum; a run not started from an FM starts w0 at
    the training split's mean (from that sum, or from the labels of a data set written before it
    was counted); an AFM from an FM keeps the FM's w0."""
    from afm_dist.dataset import TRAIN, load_metadata
    from afm_dist.models import ModelConfig, build_model
    from afm_dist.training import TrainConfig
    from afm_dist.training.loop import centre_bias

    data = preprocess(spark, tmp_path, "centre", "user\titem\trating", RATINGS, ["user", "item"])
    labels = pq.read_table(data / TRAIN, columns=["label"]).column("label").to_pylist()
    meta = load_metadata(data)
    assert meta.counts[TRAIN]["rows"] == len(labels)
    assert meta.counts[TRAIN]["label_sum"] == pytest.approx(sum(labels))
    mean = sum(labels) / len(labels)
    assert 2.5 < mean < 4.0  # the ratings' mean is 3.25: a wrong column or split would miss it
    assert sum(meta.counts[s]["label_sum"] for s in ("train", "validation", "test")) == pytest.approx(3.25 * 60)
    cfg = TrainConfig(data=str(data), model="fm", output=str(tmp_path / "m"))
    model = build_model("fm", meta.num_features, meta.num_slots, ModelConfig(embedding_dim=4))
    assert centre_bias(model, cfg, meta) == pytest.approx(mean)
    assert model.linear.bias.item() == pytest.approx(mean)
    del meta.counts[TRAIN]["label_sum"]  # written before the sums were counted: the labels themselves
    model.linear.bias.data.zero_()
    assert centre_bias(model, cfg, meta) == pytest.approx(mean) and model.linear.bias.item() == pytest.approx(mean)
    # the trainer does it: one epoch at a rate that barely moves w0 ends next to the mean
    check(run_horovod(train_args(data, "fm", tmp_path / "fm", "--epochs", "1", "--batch-size", "6", "--lr", "1e-9",
                                 "--embedding-dim", "4"), np=1))
    w0 = load_file(str(tmp_path / "fm" / MODEL_WEIGHTS))["linear.bias"].item()
    assert w0 == pytest.approx(mean, abs=1e-4)


def test_afm_on_one_field_refused_before_training(spark, tmp_path, capsys):
    from afm_dist.train import main

    data = preprocess(spark, tmp_path, "one_field", "user\trating", [r.split("\t")[0] + "\t" + r.split("\t")[2]
                                                                    for r in RATINGS], ["user"])
    assert main(["--data", str(data), "--model", "afm", "--output", str(tmp_path / "afm")]) == 2
    err = capsys.readouterr().err
    assert "AFM needs at least 2 slots" in err and "this data set has 1: use --model fm" in err
    assert not (tmp_path / "afm").exists()  # refused before the output was made


def test_logistic_loss_on_a_target_that_is_not_two_classes_is_refused(spark, tmp_path, capsys):
    """bugcases2 case 11: --loss logistic reads label > 0 as a positive, so on star ratings every row
    was a positive and a one-class model was published."""
    from afm_dist.train import main
    from afm_dist.training import TrainConfig, check_run

    stars = preprocess(spark, tmp_path, "stars", "user\titem\trating", RATINGS, ["user", "item"])
    assert main(["--data", str(stars), "--model", "fm", "--loss", "logistic", "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "--loss logistic needs binary labels" in err and "explicit in [1, 5]: use --loss squared" in err, err
    assert not (tmp_path / "m").exists()
    ones = preprocess(spark, tmp_path, "ones", "user\titem\trating", [r.rsplit("\t", 1)[0] + "\t1" for r in RATINGS],
                      ["user", "item"])
    assert main(["--data", str(ones), "--model", "fm", "--loss", "logistic", "--output", str(tmp_path / "m")]) == 2
    assert "one class only" in capsys.readouterr().err
    clicks = preprocess(spark, tmp_path, "clicks", "user\titem\trating",
                        [r.rsplit("\t", 1)[0] + f"\t{i % 2}" for i, r in enumerate(RATINGS)], ["user", "item"])
    assert check_run(TrainConfig(data=str(clicks), model="fm", output=str(tmp_path / "m"), loss="logistic"))


def test_empty_validation_split_refused_up_front(spark, tmp_path, capsys):
    from afm_dist.train import main

    data = preprocess(spark, tmp_path, "no_val", "user\titem\trating", RATINGS, ["user", "item"],
                      split="{train: 0.8, validation: 0.0, test: 0.2}")
    assert main(["--data", str(data), "--model", "fm", "--output", str(tmp_path / "fm")]) == 2
    assert "validation: the split is empty" in capsys.readouterr().err
    assert not (tmp_path / "fm").exists()


def test_scoring_an_empty_split_is_an_error_not_rmse_zero(spark, planted_data, planted_models, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / TEST).mkdir(parents=True)
    (empty / METADATA_FILE).write_bytes((planted_data / METADATA_FILE).read_bytes())  # the model's data set
    schema = pq.read_schema(next((planted_data / TEST).glob("*.parquet")))
    pq.write_table(schema.empty_table(), empty / TEST / "part-0.parquet")
    out = tmp_path / "scores"
    assert run_job("score", ["--model", planted_models["fm"], "--input", empty / TEST, "--output", out], spark) == 2
    assert "no row to score" in capsys.readouterr().err
    assert not out.exists()


def test_scoring_metrics_are_the_trainers(spark):
    """Clipping applies to RMSE and MAE only; log loss and AUC read the raw scores (as training)."""
    from afm_dist.spark.scoring import LABEL, SCORE, prediction_metrics

    scores, labels = [3.0, -2.0, 0.5, -0.25], [1.0, -1.0, -1.0, 1.0]
    df = spark.createDataFrame(list(zip(scores, labels)), f"{SCORE} double, {LABEL} float")
    got = prediction_metrics(df, clip=(-1.0, 1.0), binary=True)
    clipped = [min(max(s, -1.0), 1.0) for s in scores]
    assert got["rows"] == 4
    assert got["rmse"] == pytest.approx(math.sqrt(sum((p - y) ** 2 for p, y in zip(clipped, labels)) / 4))
    assert got["mae"] == pytest.approx(sum(abs(p - y) for p, y in zip(clipped, labels)) / 4)
    # log(1 + exp(-z)), z = score for a positive and -score for a negative: unclipped scores.
    expected_logloss = sum(math.log1p(math.exp(-(s if y > 0 else -s))) for s, y in zip(scores, labels)) / 4
    assert got["logloss"] == pytest.approx(expected_logloss, rel=1e-9)
    assert got["auc"] == pytest.approx(0.75)  # positives 3.0, -0.25 against negatives -2.0, 0.5: 3 of 4 pairs
    sums = M.new_sums()
    M.accumulate(sums, torch.tensor(scores), torch.tensor(labels), clip=(-1.0, 1.0), binary=True)
    assert got == pytest.approx(M.finish(sums, binary=True))


def test_diverging_model_stops_and_is_never_published(spark, tmp_path):
    lines = [f"{r.split(chr(9))[0]}\t{r.split(chr(9))[1]}\t{5_000_000 + 137_000 * i:.2f}\t{r.split(chr(9))[2]}"
             for i, r in enumerate(RATINGS)]
    data = preprocess(spark, tmp_path, "raw_price", "user\titem\tprice\trating", lines, ["user", "item", "price"],
                      numeric=("price",))
    out = tmp_path / "fm"
    proc = run_horovod(train_args(data, "fm", out, "--epochs", "2", "--batch-size", "8"), np=2)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "'standardize: true' or" in text and "'transform: log1p'" in text, text[-3000:]
    assert not (out / COMPLETE_MARKER).exists()


def test_resumed_run_equals_the_uninterrupted_run(planted_data, tmp_path):
    common = ["--batch-size", "128", "--interaction-dropout", "0", "--patience", "5", "--seed", "9"]
    check(run_horovod(train_args(planted_data, "fm", tmp_path / "whole", "--epochs", "3", *common), np=2))
    check(run_horovod(train_args(planted_data, "fm", tmp_path / "parts", "--epochs", "1", *common), np=2))
    check(run_horovod(train_args(planted_data, "fm", tmp_path / "parts", "--epochs", "3", "--resume", *common), np=2))
    whole, parts = load_checkpoint(tmp_path / "whole" / CHECKPOINT), load_checkpoint(tmp_path / "parts" / CHECKPOINT)
    assert parts["epoch"] == whole["epoch"] == 3
    for name, tensor in whole["model_state"].items():
        torch.testing.assert_close(parts["model_state"][name], tensor, rtol=1e-5, atol=1e-6)
    accumulators = [s["sum"] for s in whole["optimizer_state"]["state"].values()]  # Adagrad's, restored too
    for got, want in zip([s["sum"] for s in parts["optimizer_state"]["state"].values()], accumulators):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert [h["val_rmse"] for h in metrics(tmp_path / "parts")] == pytest.approx(
        [h["val_rmse"] for h in metrics(tmp_path / "whole")], rel=1e-5)
    best = load_file(str(tmp_path / "whole" / MODEL_WEIGHTS))
    assert set(best) == set(whole["model_state"])


def test_resume_from_a_cut_or_empty_checkpoint_is_refused_in_one_line(spark, tmp_path, capsys):
    """bugcases2 case 08: a checkpoint.pt cut short (an interrupted copy), empty or foreign gave torch
    tracebacks on every rank after Horovod started; now one line naming the file and its size, exit 2,
    before Horovod (horovodrun's ranks), before Spark (jobs/train.py), and the directory untouched."""
    from afm_dist.train import main

    data = preprocess(spark, tmp_path, "ckpt", "user\titem\trating", RATINGS, ["user", "item"])
    out = tmp_path / "fm"
    assert main(train_args(data, "fm", out, "--epochs", "1", "--batch-size", "8")[2:]) == 0
    capsys.readouterr()
    whole = (out / CHECKPOINT).read_bytes()
    resume = train_args(data, "fm", out, "--epochs", "2", "--batch-size", "8", "--resume")
    advice = "; restore it, or train again without --resume"
    torch.save({"epoch": 1, "w": torch.zeros(3)}, tmp_path / "other.pt")  # a checkpoint, not of this trainer
    variants = {"cut": whole[: len(whole) // 2], "empty": b"", "text": b"not a checkpoint\n",
                "foreign": (tmp_path / "other.pt").read_bytes()}
    for name, content in variants.items():
        (out / CHECKPOINT).write_bytes(content)
        assert main(resume[2:]) == 2, name
        err = capsys.readouterr().err
        what = "is not a checkpoint of afm_dist.train" if name == "foreign" else "is truncated or not a checkpoint"
        assert err.count("\n") == 1 and f"{out / CHECKPOINT} {what} ({len(content)} bytes" in err, (name, err)
        assert advice in err, err
    # Under horovodrun: each rank refuses before hvd.init, exit 2, without a traceback of its own (the
    # first rank to exit makes horovodrun end the other, which may not have printed its line yet).
    (out / CHECKPOINT).write_bytes(whole[:1000])
    proc = run_horovod(resume, np=2)
    text = proc.stdout + proc.stderr
    assert any((f"[{rank}]<stderr>:[train] error: {out / CHECKPOINT} is truncated or not a checkpoint (1000 bytes)"
                + advice) in text for rank in (0, 1)), text[-3000:]
    assert "<stderr>:Traceback" not in text
    assert "exit with status code 2" in text
    # jobs/train.py: refused before Spark starts (no session is given, none is built).
    assert job_module("train").main([*resume[2:], "--num-proc", "2"]) == 2
    assert "train: error: " in capsys.readouterr().err
    # Nothing was trained or touched: the earlier complete model stays as it was.
    assert (out / COMPLETE_MARKER).exists() and len(metrics(out)) == 1
    assert (out / CHECKPOINT).read_bytes() == whole[:1000]


def test_incomplete_copy_of_a_model_directory_is_refused_before_any_work(spark, tmp_path, capsys):
    """bugcases2 case 13: a model directory copied without model.safetensors passed TrainedModel.load
    and failed after Spark started (FileNotFoundError); now every file a job needs is checked first:
    the weights for scoring, explanation, --init-from and --resume, vocabulary/ for raw logs only."""
    from afm_dist.train import main

    data = preprocess(spark, tmp_path, "copies", "user\titem\trating", RATINGS, ["user", "item"])
    models = {name: tmp_path / name for name in ("fm", "afm")}
    for name, directory in models.items():
        assert main(train_args(data, name, directory, "--epochs", "1", "--batch-size", "8")[2:]) == 0
    capsys.readouterr()

    def copy(name: str, new: str, *, without: str = "", cut: str = "") -> Path:
        shutil.copytree(models[name], tmp_path / new, ignore=shutil.ignore_patterns(without) if without else None)
        if cut:
            whole = (tmp_path / new / cut).read_bytes()
            (tmp_path / new / cut).write_bytes(whole[: len(whole) // 2])
        return tmp_path / new

    fm_noweights, afm_noweights = copy("fm", "fm_noweights", without=MODEL_WEIGHTS), copy("afm", "afm_noweights",
                                                                                          without=MODEL_WEIGHTS)
    fm_cut, fm_novocab = copy("fm", "fm_cut", cut=MODEL_WEIGHTS), copy("fm", "fm_novocab", without=VOCABULARY)
    half = (fm_cut / MODEL_WEIGHTS).stat().st_size
    raw = tmp_path / "copies.tsv"  # the logs the data set was made from
    missing, advice = "model.safetensors is missing; copy the whole model directory", "copy the whole model directory"
    refusals = [("score", fm_noweights, data / TEST, f"{fm_noweights}: {missing}"),
                ("score", fm_noweights, raw, f"{fm_noweights}: {missing}"),
                ("explain", afm_noweights, data / TEST, f"{afm_noweights}: {missing}"),
                ("score", fm_cut, data / TEST,
                 f"{fm_cut / MODEL_WEIGHTS} is truncated or not a safetensors file ({half} bytes); {advice}"),
                ("score", fm_novocab, raw, f"{fm_novocab}: no vocabulary/ to encode raw logs with: the directory is "
                                           f"most likely an incomplete copy ({advice})")]
    for i, (job, model, inputs, words) in enumerate(refusals):
        out = tmp_path / f"out{i}"
        # No Spark session is given: a refusal comes before one is built.
        assert job_module(job).main(["--model", str(model), "--input", str(inputs), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{job}: error: {words}" in err, (job, model, err)
        assert not out.exists()
    # The vocabulary is for raw logs only: the copy without it scores the data set's own split.
    assert run_job("score", ["--model", fm_novocab, "--input", data / TEST, "--output", tmp_path / "scores"], spark) == 0
    assert json.loads((tmp_path / "scores" / "metrics.json").read_text())["rows"] == 8  # the test split's rows
    capsys.readouterr()
    # --init-from an FM without weights, and --resume a run whose best weights were cut: before Horovod.
    assert main(train_args(data, "afm", tmp_path / "afm2", "--init-from", str(fm_noweights))[2:]) == 2
    assert f"{fm_noweights}: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "afm2").exists()
    assert main(train_args(data, "fm", fm_cut, "--epochs", "2", "--batch-size", "8", "--resume")[2:]) == 2
    assert (f"{fm_cut / MODEL_WEIGHTS} is truncated or not a safetensors file ({half} bytes); restore it, or train "
            "again without --resume") in capsys.readouterr().err
    assert len(metrics(fm_cut)) == 1


def test_a_batch_the_workers_cannot_split_is_refused_before_start(spark, tmp_path, capsys, monkeypatch):
    """bugcases2 case 16: --batch-size 7 on 2 ranks was refused only in train(), after hvd.init (and
    under jobs/train.py after Spark and its ranks started); now before start, the schema's default
    batch size included."""
    from afm_dist.training import TrainConfig, check_run

    data = preprocess(spark, tmp_path, "odd", "user\titem\trating", RATINGS, ["user", "item"],
                      training="{batch_size: 7}")
    out = tmp_path / "fm"
    given = "--batch-size 7 is not divisible by the 2 workers, which each take an equal share of every batch: " \
            "pass --batch-size 8 (a multiple of 2), or another number of workers"
    schema_default = "the data set's batch size 7 (training.batch_size of its schema; no --batch-size given) is " \
                     "not divisible by the 2 workers"
    # Under horovodrun each rank knows the size from HOROVOD_SIZE before hvd.init: check_run refuses.
    monkeypatch.setenv("HOROVOD_SIZE", "2")
    with pytest.raises(ValueError) as refused:
        check_run(TrainConfig(data=str(data), model="fm", output=str(out), batch_size=7))
    assert str(refused.value) == given
    with pytest.raises(ValueError, match=schema_default.replace("(", r"\(").replace(")", r"\)")):
        check_run(TrainConfig(data=str(data), model="fm", output=str(out)))
    assert check_run(TrainConfig(data=str(data), model="fm", output=str(out), batch_size=8)).num_features == 10
    monkeypatch.delenv("HOROVOD_SIZE")
    assert check_run(TrainConfig(data=str(data), model="fm", output=str(out))).num_features == 10  # one process
    # A search's --np or jobs/train.py's --num-proc is passed as the number of workers.
    with pytest.raises(ValueError, match="not divisible by the 3 workers"):
        check_run(TrainConfig(data=str(data), model="fm", output=str(out), batch_size=8), workers=3)
    # Through the real launchers: a rank's one line, exit 2 (the first rank to exit makes horovodrun
    # end the other, which may not have printed its own line yet); jobs/train.py before Spark starts.
    proc = run_horovod(train_args(data, "fm", out, "--epochs", "1"), np=2)
    text = proc.stdout + proc.stderr
    assert any(f"[{rank}]<stderr>:[train] error: {schema_default}" in text for rank in (0, 1)), text[-3000:]
    assert "<stderr>:Traceback" not in text
    assert "exit with status code 2" in text
    assert job_module("train").main([*train_args(data, "fm", out, "--batch-size", "7")[2:], "--num-proc", "2"]) == 2
    assert f"train: error: {given}" in capsys.readouterr().err
    assert not out.exists()
