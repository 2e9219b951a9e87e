"""The one-command grid search: trials are the product's own training runs, chosen by validation RMSE."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from afm_dist.model_dir import TrainedModel
from tests.conftest import REPO, SMALL_MODEL


def _search(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afm_dist.search", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_grid_search_picks_the_lowest_validation_rmse_and_continues(planted_data, tmp_path):
    out = tmp_path / "search"
    args = ["--data", planted_data, "--model", "fm", "--output", out, "--grid", "lr=0.002,0.1",
            "--grid", "embedding-l2=0,0.01", "--parallel", "2", "--",
            "--epochs", "2", "--embedding-dim", "8", "--batch-size", "256", "--log-every", "1000",
            "--mcmc-sweeps", "0"]  # the SGD settings alone: with the sampled FM every trial chose it (one chain, one seed)
    proc = _search(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["lr"], r["embedding-l2"]) for r in rows] == [("0.002", "0"), ("0.002", "0.01"), ("0.1", "0"),
                                                             ("0.1", "0.01")]
    # every trial's row holds what its model directory says
    vals = {}
    for r in rows:
        model = TrainedModel.load(out / "trials" / f"{int(r['trial']):03d}")
        assert model.train_config["lr"] == float(r["lr"])
        assert model.train_config["embedding_l2"] == float(r["embedding-l2"])
        assert float(r["val_rmse"]) == model.best["val_rmse"]
        vals[int(r["trial"])] = model.best["val_rmse"]
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == min(vals, key=vals.get)
    assert vals[best["trial"]] < max(vals.values())  # lr 0.002 for 2 epochs is far from converged
    assert (out / "trials.png").stat().st_size > 0
    assert "| trial | lr | embedding-l2 |" in (out / "trials.md").read_text()
    # a second run finds every trial complete and trains none again
    again = _search(*args)
    assert again.returncode == 0 and again.stderr.count("done (earlier run)") == 4


def test_grid_point_the_trainer_refuses_stops_the_search_before_any_trial(planted_data, tmp_path):
    out = tmp_path / "search"
    proc = _search("--data", planted_data, "--model", "fm", "--output", out,
                   "--grid", "interaction-dropout=0.3,1.5")
    assert proc.returncode == 2
    assert "--interaction-dropout is a probability" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "trials").exists()


def test_every_grid_point_is_checked_before_the_first_trial(spark, tmp_path, capsys):
    """bugcases2 case 17: a grid value of the wrong type, an unknown flag or a negative L2 exited with
    the trainer's usage, not naming --grid, and a batch size that the trial's --np workers cannot
    split failed only when its trial ran, after the others trained; now every grid point is refused
    before the first trial, in one line naming it. And trials.csv has one column per name."""
    from afm_dist.search import main, parse_args, plan_trials
    from tests.train.test_faults import RATINGS, preprocess

    data = preprocess(spark, tmp_path, "grid", "user\titem\trating", RATINGS, ["user", "item"],
                      training="{batch_size: 7}")  # the data set's own batch size: 2 workers cannot split it
    base, small = ["--data", str(data), "--model", "fm"], ["--epochs", "1", *SMALL_MODEL]
    refusals = [
        (["--grid", "lr=0.05,abc"], small, "--grid point lr=abc (trial 2): argument --lr: invalid float value: 'abc'"),
        (["--grid", "no-such-flag=1,2"], small,
         "--grid point no-such-flag=1 (trial 1): unrecognized arguments: --no-such-flag 1"),
        (["--grid", "embedding-l2=0.01,-1"], small,
         "--grid point embedding-l2=-1 (trial 2): --embedding-l2 must be 0 or more, got -1.0"),
        (["--grid", "batch-size=8,7", "--np", "2"], small,
         "--grid point batch-size=7 (trial 2) with --np 2: --batch-size 7 is not divisible by the 2 workers"),
        (["--grid", "lr=0.05,0.1", "--np", "2"], small,  # no grid point sets it: the schema's 7 applies to all
         "the data set's batch size 7 (training.batch_size of its schema; no --batch-size given) is not divisible "
         "by the 2 workers"),
        (["--grid", "lr=0.05,0.1"], [*small, "--no-such", "1"],
         f"the flags after -- ({' '.join(small)} --no-such 1): unrecognized arguments: --no-such 1"),
    ]
    for i, (grid, common, words) in enumerate(refusals):
        out = tmp_path / f"refused{i}"
        assert main([*base, "--output", str(out), *grid, "--", *common]) == 2, grid
        err = capsys.readouterr().err
        assert err.startswith(f"[search] error: {words}") and err.count("\n") == 1, (grid, err)
        assert not out.exists()
    # Batch sizes that two workers split are planned, the schema's 7 notwithstanding.
    args, common = parse_args([*base, "--output", str(tmp_path / "planned"), "--grid", "batch-size=8,16", "--np", "2"])
    assert [t.flags for t in plan_trials(args, common)] == [{"batch-size": "8"}, {"batch-size": "16"}]
    # One trial for real: trials.csv names the best epoch's seconds and the trial's wall time apart.
    out = tmp_path / "search"
    assert main([*base, "--output", str(out), "--grid", "batch-size=8", "--", *small]) == 0
    with open(out / "trials.csv", newline="") as f:
        header, values = list(csv.reader(f))
    row = dict(zip(header, values))
    assert len(header) == len(set(header)) and {"seconds", "trial_seconds"} <= set(header), header
    best = TrainedModel.load(out / "trials" / "001").best["metrics"]
    assert float(row["seconds"]) == best["seconds"]  # the best epoch's, as in metrics.jsonl
    assert float(row["trial_seconds"]) >= best["seconds"]  # the whole trial's wall time


def test_trials_that_kept_their_fm_as_the_floor_are_ranked_by_their_own_best_epoch(tmp_path):
    """Two AFMs whose --init-from blend was lower than their own best epoch both end at the blend's
    validation RMSE; the one whose own best epoch was lower is the best trial."""
    from afm_dist.search import Trial, write_report

    floor = {"epoch": 12, "val_rmse": 0.8206, "phase": "init"}
    trials = [Trial(1, {"lr": "0.1"}, [], tmp_path / "t1", "done", {**floor, "val_rmse_trained": 0.8441}),
              Trial(2, {"lr": "0.02"}, [], tmp_path / "t2", "done", {**floor, "val_rmse_trained": 0.8381}),
              Trial(3, {"lr": "0.5"}, [], tmp_path / "t3", "done", {"epoch": 3, "val_rmse": 0.8300})]
    assert write_report(tmp_path, trials, 1).number == 2
    assert json.loads((tmp_path / "best.json").read_text())["flags"] == {"lr": "0.02"}
    assert [line.split("|")[1].strip() for line in (tmp_path / "trials.md").read_text().splitlines()[2:]] == ["2", "1", "3"]
