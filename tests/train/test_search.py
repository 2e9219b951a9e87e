"""The one-command grid search: trials are the product's own training runs, chosen by validation RMSE."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from afm_dist.model_dir import TrainedModel
from tests.conftest import REPO


def _search(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afm_dist.search", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_grid_search_picks_the_lowest_validation_rmse_and_continues(planted_data, tmp_path):
    out = tmp_path / "search"
    args = ["--data", planted_data, "--model", "fm", "--output", out, "--grid", "lr=0.002,0.1",
            "--grid", "embedding-l2=0,0.01", "--parallel", "2", "--",
            "--epochs", "2", "--embedding-dim", "8", "--batch-size", "256", "--log-every", "1000"]
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
