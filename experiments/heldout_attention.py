"""Issue 24: does a trained AFM's attention gain when it is fitted again on rows its tables never saw?

The third step (docs/results/quality.md) found on MovieLens that attention fitted on training rows
learns the FM's overfitting, and that fitted on half of validation it gains 0.2% on the other half.
This asks the same of a product AFM (a model directory of ``python -m afm_dist.train --model afm``):
its tables, linear weights and p frozen, the attention network (W, b, h) trained with Adagrad on one
half of the validation split (a seeded half) and judged on the other half each epoch, both ways
round; the test RMSE at the judged half's best epoch is only reported. Predictions are clipped to the
training target range, as the scoring job does.

    .venv/bin/python experiments/heldout_attention.py /tmp/q/d/fr1 /tmp/p19/fr1_afm --lr 0.02 0.005
"""
from __future__ import annotations

import argparse

import torch

from afm_dist.batch import Batch, read_split
from afm_dist.dataset import load_metadata
from afm_dist.model_dir import TrainedModel
from sampled_defaults import clipped_rmse  # experiments/sampled_defaults.py

ATTENTION = ("attention.weight", "attention.bias", "attention.h")


def rmse(model: torch.nn.Module, batch: Batch, rows: torch.Tensor | None, lo: float, hi: float) -> float:
    """RMSE of ``model`` on ``batch`` (its ``rows`` only, when given), clipped to [lo, hi]."""
    if rows is None:
        return clipped_rmse(model, batch.inputs, batch.label, lo, hi)
    return clipped_rmse(model, tuple(t[rows] for t in batch.inputs), batch.label[rows], lo, hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("model_dir")
    ap.add_argument("--lr", type=float, nargs="+", default=[0.02])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    lo, hi = load_metadata(a.data).target_range()
    val, test = read_split(f"{a.data}/validation"), read_split(f"{a.data}/test")
    torch.manual_seed(a.seed)  # the dropout masks
    g = torch.Generator().manual_seed(a.seed)  # the halves and the epochs' order
    perm = torch.randperm(len(val), generator=g)
    half = len(val) // 2
    for lr in a.lr:
        for fold, (fit, judge) in enumerate(((perm[:half], perm[half:]), (perm[half:], perm[:half]))):
            model = TrainedModel.load(a.model_dir).build()
            for name, p in model.named_parameters():
                p.requires_grad_(name in ATTENTION)
            opt = torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=lr)
            start = (rmse(model, val, judge, lo, hi), rmse(model, test, None, lo, hi))
            best = (*start, 0)
            for epoch in range(1, a.epochs + 1):
                model.train()
                order = fit[torch.randperm(len(fit), generator=g)]
                for i in range(0, len(order), a.batch_size):
                    rows = order[i:i + a.batch_size]
                    loss = (model(*(t[rows] for t in val.inputs)) - val.label[rows]).pow(2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                judged = rmse(model, val, judge, lo, hi)
                if judged < best[0]:
                    best = (judged, rmse(model, test, None, lo, hi), epoch)
            print(f"lr {lr} fold {fold}: judged half {start[0]:.4f} -> {best[0]:.4f} (epoch {best[2]}, "
                  f"{100 * (best[0] / start[0] - 1):+.2f}%); test {start[1]:.4f} -> {best[1]:.4f} "
                  f"({100 * (best[1] / start[1] - 1):+.2f}%)", flush=True)


if __name__ == "__main__":
    main()
