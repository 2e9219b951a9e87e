"""Issue 24: how much of libFM MCMC's lead is averaging? Several FMs (or AFMs) trained with different
seeds by one recipe, and the average of their predictions, in one process with the product's
model classes (experiments/regularise.py's ``fit``). Prints each member's and the average's
validation and test RMSE (the average of n members for n = 1, 2, ...), one JSON line. With
``--fm-cache`` the members are AFMs fine-tuned from that FM (experiments/regularise.py's cache),
seeds 1..n, and the line also has their weights averaged (a "model soup", Wortsman et al., ICML
2022: fine-tunes of one pre-trained model averaged).

    .venv/bin/python experiments/ensemble.py DATA_DIR --recipe path=0.1/2 --members 4 --k 64 --epochs 50
    .venv/bin/python experiments/ensemble.py /tmp/q/d/fr1 --recipe "path=0.1/2+swa" --members 3 --k 256 \
        --fm-cache /tmp/q/fmc_fr1_k256_centre.pt --lr 0.02
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from afm_dist.batch import Batch
from afm_dist.models import ModelConfig, build_model, init_from_fm
from regularise import fit, load_data  # experiments/regularise.py


def predictions(model: torch.nn.Module, b: Batch, chunk: int = 8192) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.ids[i:i + chunk], b.vals[i:i + chunk], b.mask[i:i + chunk]).double()
                          for i in range(0, len(b), chunk)])


def rmse(pred: torch.Tensor, b: Batch, clip) -> float:
    p = pred.clamp(*clip) if clip else pred
    return math.sqrt(((p - b.label.double()) ** 2).mean().item())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--recipe", default="path=0.1/2")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--fm-cache", help="members are AFMs fine-tuned from this cached FM (experiments/regularise.py --fm-cache)")
    a = p.parse_args()
    torch.set_num_threads(2)
    meta, batch, data, clip = load_data(a.data)
    cfg = ModelConfig(embedding_dim=a.k, attention_factor=a.k)
    sums = {"validation": 0.0, "test": 0.0}
    members, average, states = [], [], []
    name = "afm" if a.fm_cache else "fm"
    fm = None
    if a.fm_cache:
        fm = build_model("fm", meta.num_features, meta.num_slots, cfg)
        fm.load_state_dict(torch.load(a.fm_cache, weights_only=True)["model"])
    t0 = time.time()
    for n in range(1, a.members + 1):
        torch.manual_seed(2017 if fm else 2017 + n)  # AFMs: one start (the FM, the same attention network)
        model = build_model(name, meta.num_features, meta.num_slots, cfg)
        if fm is not None:
            init_from_fm(model, fm)
        r = fit(model, data, meta, clip, a.recipe, epochs=a.epochs, batch=batch, lr=a.lr, seed=n, eval0=fm is not None)
        members.append({"val": r["val"], "test": r["test"], "epoch": r["epoch"]})
        states.append(copy.deepcopy(model.state_dict()))
        for s in sums:
            sums[s] = sums[s] + predictions(model, data[s])
        average.append({"members": n, "val": round(rmse(sums["validation"] / n, data["validation"], clip), 4),
                        "test": round(rmse(sums["test"] / n, data["test"], clip), 4)})
        print(json.dumps(average[-1]), flush=True)
    soup = {}
    if fm is not None:  # the members' weights averaged
        model.load_state_dict({k: sum(st[k].double() for st in states).div(len(states)).to(v.dtype)
                               for k, v in states[0].items()})
        soup = {"soup": {"val": round(rmse(predictions(model, data["validation"]), data["validation"], clip), 4),
                         "test": round(rmse(predictions(model, data["test"]), data["test"], clip), 4)}}
    print(json.dumps({"data": a.data, "experiment": "ensemble", "model": name, "k": a.k, "recipe": a.recipe,
                      "lr": a.lr, "members": members, "average": average, **soup,
                      "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
