"""Issue 24, fifteenth step: the FM and the AFM at the defaults with the Gibbs-sampled FM after SGD, on the
six data sets of docs/results/defaults.json, against that file's runs (the SGD FM alone) and libFM.

The model directories are the product's, trained as a user would (``horovodrun -np 2 ... python -m
afm_dist.train --data WORK/data/SET --model fm --output MODELS/SET_fm``, then ``--model afm --init-from
MODELS/SET_fm --output MODELS/SET_afm``); each is scored here on validation and test with its own
model class, clipped to the target range as the scoring job does, and recorded in
``docs/results/sampled.json``; the SGD FM of each run is scored from its ``sgd.safetensors``.
``--report`` draws the record's figure (``sampled.png``) from it.

    .venv/bin/python experiments/sampled_defaults.py --data /tmp/q/d --models /tmp/p fl1 fl2 fr1 fr2 ml1 ml2
    .venv/bin/python experiments/sampled_defaults.py --report

Issue 26, sixth step (the sampler drawing each feature's vector whole, and the history sets, whose
libFM baseline is libFM on the same rows without the history field):

    .venv/bin/python experiments/sampled_defaults.py --data /tmp/q/d --models /tmp/p18 \
        --record docs/results/sampled_history.json fl1 fl2 fr1 fr2 ml1 ml2 mh1 mh2 fh1 fh2

The AFM started from the SGD FM with the sampled FM as its floor (an AFM's ``"phase": "init"``
record: ``kept``, and the AFM's own best epoch scored from its ``sgd.safetensors`` where the blend
was kept), drawn against the AFMs from the blend:

    .venv/bin/python experiments/sampled_defaults.py --data /tmp/q/d --models /tmp/p20rec \
        --record docs/results/afm_start.json --compare docs/results/sampled_history.json \
        --compare docs/results/sampled.json fl1 fl2 fr1 fr2 ml1 ml2 mh1 mh2 fh1 fh2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]
from afm_dist.batch import read_split  # noqa: E402
from afm_dist.dataset import load_metadata  # noqa: E402
from afm_dist.io import write_text_atomic  # noqa: E402
from afm_dist.model_dir import METRICS, SGD_WEIGHTS, TrainedModel  # noqa: E402
from afm_dist.models import build_model  # noqa: E402

RECORD = REPO / "docs" / "results" / "sampled.json"
BEFORE = REPO / "docs" / "results" / "defaults.json"


def clipped_rmse(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], label: torch.Tensor, lo: float,
                 hi: float) -> float:
    """RMSE of ``model`` on the rows ``inputs`` (a Batch's inputs), predictions clipped to [lo, hi]."""
    with torch.no_grad():
        p = torch.cat([model.eval()(*(t[i:i + 8192] for t in inputs)) for i in range(0, len(label), 8192)])
    return float((p.clamp(lo, hi) - label).pow(2).mean().sqrt())


def rmse(model: torch.nn.Module, data: Path) -> dict[str, float]:
    """Validation and test RMSE of ``model`` on the data set ``data``, clipped to its target range."""
    lo, hi = load_metadata(data).target_range()
    out = {}
    for split in ("validation", "test"):
        b = read_split(data / split)
        out[split] = round(clipped_rmse(model, b.inputs, b.label, lo, hi), 5)
    return out


def collect(data_root: Path, models: Path, sets: list[str], path: Path = RECORD) -> dict:
    record = json.loads(path.read_text()) if path.exists() else {}
    for s in sets:
        data = data_root / s
        for kind in ("fm", "afm"):
            d = models / f"{s}_{kind}"
            if not (d / "_AFM_COMPLETE").exists():
                continue
            trained = TrainedModel.load(d)
            history = [json.loads(line) for line in (d / METRICS).read_text().splitlines()]
            r = {"k": trained.config.embedding_dim, **rmse(trained.build(), data), "best_epoch": trained.best["epoch"],
                 "epochs": sum(1 for h in history if h["epoch"] > 0 and h.get("phase") not in ("mcmc", "init")),
                 "minutes": round(sum(h["seconds"] for h in history) / 60, 1)}
            sampled = [h for h in history if h.get("phase") == "mcmc"]
            if sampled:
                h = sampled[-1]
                r |= {"sgd_share": h["sgd_share"], "val_sgd": round(h["val_rmse_sgd"], 5),
                      "val_samples": round(h["val_rmse_mcmc"], 5), "sampling_minutes": round(h["seconds"] / 60, 1)}
                if (d / SGD_WEIGHTS).exists():
                    meta = load_metadata(data)
                    config = dataclasses.replace(trained.config, embedding_dim=trained.config.embedding_dim - h["mcmc_dim"] * h["samples"])
                    sgd = build_model("fm", meta.num_features, meta.num_slots, config, meta.slot_groups())
                    sgd.load_state_dict(load_file(str(d / SGD_WEIGHTS)))
                    r["sgd"] = rmse(sgd, data)
            floor = [h for h in history if h.get("phase") == "init"]
            if floor:  # an AFM from the SGD FM, with the FM directory's blend as its floor
                h = floor[-1]
                r |= {"val_trained": round(h["val_rmse_trained"], 5), "val_blend": round(h["val_rmse"], 5),
                      "kept": "blend" if trained.best["epoch"] == h["epoch"] else "trained"}
                if (d / SGD_WEIGHTS).exists():  # the blend kept: the AFM's own best epoch, scored too
                    r["trained"] = {"k": trained.sgd_embedding_dim, **rmse(trained.build_sgd(), data)}
            record.setdefault(s, {})[kind] = r
            print(s, kind, json.dumps(r))
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def plot(record: dict, path: Path, compare: list[Path] = ()) -> None:
    """Test RMSE relative to the SGD FM's (defaults.json, the defaults before): the FM and the AFM
    now, the AFM before (defaults.json's, or with ``compare`` the first of those records that has
    the set's AFM), libFM's MCMC; below 1 is better."""
    from defaults import relative_bars

    before = json.loads(BEFORE.read_text())
    earlier = [json.loads(c.read_text()) for c in compare]

    def afm_before(s: str) -> float:
        for r in earlier:
            if "afm" in r.get(s, {}):
                return r[s]["afm"]["test"]
        return float("nan") if earlier else before[s]["afm"]["test_rmse"]

    sets = [s for s in ("fl1", "fl2", "fr1", "fr2", "ml1", "ml2", "mh1", "mh2", "fh1", "fh2") if "fm" in record.get(s, {})]
    plain = {"mh1": "ml1", "mh2": "ml2", "fh1": "fr1", "fh2": "fr2"}  # libFM on the same rows, without the history
    series = {"FM now (SGD + samples)": lambda s: record[s]["fm"]["test"],
              ("AFM before (" + ", ".join(c.name for c in compare) + ")" if compare else "AFM before"): afm_before,
              "AFM now": lambda s: record[s].get("afm", {}).get("test", float("nan")),
              "libFM MCMC": lambda s: before[plain.get(s, s)]["libfm"]["mcmc"]["test_rmse"]}
    relative_bars(sets, {name: [get(s) / before[s]["fm"]["test_rmse"] for s in sets] for name, get in series.items()},
                  baseline="SGD FM (before)", title="Defaults with the Gibbs-sampled FM after SGD (lower is better)",
                  ylabel="test RMSE / the SGD FM's", path=path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="*")
    p.add_argument("--data", type=Path, help="the data sets' directory (bash experiments/quality_data.sh makes them)")
    p.add_argument("--models", type=Path, help="the model directories SET_fm and SET_afm")
    p.add_argument("--record", type=Path, default=RECORD, help="the record written (default %(default)s)")
    p.add_argument("--report", action="store_true")
    p.add_argument("--compare", type=Path, action="append", default=[],
                   help="an earlier record whose AFMs the figure draws as 'AFM before' (repeated: the first that "
                        "has the set's)")
    a = p.parse_args()
    record = collect(a.data, a.models, a.sets, a.record) if a.sets else json.loads(a.record.read_text())
    if a.report or a.sets:
        plot(record, a.record.with_suffix(".png"), a.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
