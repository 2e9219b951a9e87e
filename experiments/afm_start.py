"""Issue 24: does AFM start as its FM, and end below it?

FM (k = 64), then AFM initialised from it with eq. 5's attention scale ("one": weights summing to 1)
and with the default ("pairs": weights summing to |R_x|, h starting at 0), on one preprocessed data
set, in one process with the product's model classes and Adagrad (no Horovod, no Petastorm: a quick
look at the recipe, not the product's run). Prints the best epoch's validation and test RMSE and the
validation RMSE after every epoch (epoch 0: before any step). Predictions clipped to the target range.

    .venv/bin/python experiments/afm_start.py DATA_DIR BATCH AFM_EPOCHS
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from afm_dist.batch import Batch, read_split
from afm_dist.dataset import load_metadata
from afm_dist.models import ModelConfig, build_model, init_from_fm
from afm_dist.training.optimizers import build_optimizer


def rmse(model: torch.nn.Module, b: Batch, clip: tuple[float, float] | None, chunk: int = 8192) -> float:
    model.eval()
    se = 0.0
    with torch.no_grad():
        for i in range(0, len(b), chunk):
            s = model(b.ids[i:i + chunk], b.vals[i:i + chunk], b.mask[i:i + chunk]).double()
            s = s.clamp(*clip) if clip else s
            se += ((s - b.label[i:i + chunk].double()) ** 2).sum().item()
    return math.sqrt(se / len(b))


def fit(model, data, clip, *, epochs: int, batch: int, lr: float = 0.05, patience: int = 3, seed: int = 1,
        eval0: bool = False) -> dict:
    """Adagrad on the squared loss, shuffled batches, early stopping on validation RMSE; the best
    epoch's weights are kept (epoch 0, the initial model, too with ``eval0``)."""
    train = data["train"]
    opt = build_optimizer("adagrad", model, lr)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    curve, best, bad = [], (math.inf, 0, None), 0
    for epoch in range(0 if eval0 else 1, epochs + 1):
        if epoch:
            model.train()
            perm = torch.randperm(len(train), generator=g)
            for i in range(0, len(train) - batch + 1, batch):
                idx = perm[i:i + batch]
                opt.zero_grad()
                F.mse_loss(model(train.ids[idx], train.vals[idx], train.mask[idx]), train.label[idx]).backward()
                opt.step()
        val = rmse(model, data["validation"], clip)
        curve.append(round(val, 4))
        if val < best[0]:
            best, bad = (val, epoch, copy.deepcopy(model.state_dict())), 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best[2])
    return {"val": round(best[0], 4), "epoch": best[1], "test": round(rmse(model, data["test"], clip), 4),
            "curve": curve}


def main(directory: str, batch: int, afm_epochs: int) -> None:
    torch.set_num_threads(2)
    meta = load_metadata(directory)
    data = {s: read_split(Path(directory) / s) for s in ("train", "validation", "test")}
    clip = meta.target_range()
    torch.manual_seed(2017)
    fm = build_model("fm", meta.num_features, meta.num_slots, ModelConfig(embedding_dim=64))
    print(directory, "FM", fit(fm, data, clip, epochs=20, batch=batch), flush=True)
    for scale in ("one", "pairs"):
        torch.manual_seed(2017)
        config = ModelConfig(embedding_dim=64, attention_factor=64, attention_scale=scale)
        afm = init_from_fm(build_model("afm", meta.num_features, meta.num_slots, config), fm)
        print(directory, "AFM", scale, fit(afm, data, clip, epochs=afm_epochs, batch=batch, eval0=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
