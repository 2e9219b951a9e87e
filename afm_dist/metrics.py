"""Evaluation metrics as sums that can be added across ranks (one allreduce), then finished.

RMSE and MAE need sums of squared and absolute errors; log loss a sum; AUC a histogram of
scores per class (``AUC_BINS`` bins over the sigmoid's [0, 1]), so no rank ever gathers
predictions. The histogram AUC differs from the exact one only for scores within one bin.
"""
from __future__ import annotations

import math

import torch

AUC_BINS = 10_000
# Layout of the summed vector: n, sse, sae, logloss, then positive and negative histograms.
_N, _SSE, _SAE, _LOGLOSS = range(4)
_HEAD = 4


def is_binary(target: dict, loss: str) -> bool:
    """Whether log loss and AUC apply: an implicit target (labels +1 / -1), or training with the
    logistic loss (positive means label > 0)."""
    return target.get("kind") == "implicit" or loss == "logistic"


def new_sums(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(_HEAD + 2 * AUC_BINS, dtype=torch.float64, device=device)


def accumulate(sums: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, clip: tuple[float, float] | None,
               binary: bool) -> None:
    """Add one batch's contribution. ``scores`` are raw model outputs, ``labels`` the targets."""
    pred = scores.detach().double()
    y = labels.double()
    if clip is not None:
        pred = pred.clamp(clip[0], clip[1])  # as the paper's evaluation: predictions bounded to the target range
    err = pred - y
    sums[_N] += y.numel()
    sums[_SSE] += (err * err).sum()
    sums[_SAE] += err.abs().sum()
    if binary:
        positive = y > 0
        raw = scores.detach().double()
        # log loss of sigmoid(score) against {0, 1}, in the numerically stable form.
        z = torch.where(positive, raw, -raw)
        sums[_LOGLOSS] += torch.nn.functional.softplus(-z).sum()
        prob = torch.sigmoid(raw)
        bins = (prob * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
        sums[_HEAD:_HEAD + AUC_BINS] += torch.bincount(bins[positive], minlength=AUC_BINS).double()
        sums[_HEAD + AUC_BINS:] += torch.bincount(bins[~positive], minlength=AUC_BINS).double()


def finish(sums: torch.Tensor, *, binary: bool) -> dict[str, float]:
    """Turn (allreduced) sums into metrics: ``rows``, and when there are rows ``rmse``, ``mae``
    and, with ``binary``, ``logloss`` and ``auc`` (when both classes occur)."""
    s = sums.cpu()
    n = float(s[_N])
    if n == 0:
        return {"rows": 0}
    out = {"rows": int(n), "rmse": math.sqrt(float(s[_SSE]) / n), "mae": float(s[_SAE]) / n}
    if binary:
        out["logloss"] = float(s[_LOGLOSS]) / n
        auc = auc_from_histograms(s[_HEAD:_HEAD + AUC_BINS], s[_HEAD + AUC_BINS:])
        if auc == auc:  # AUC needs rows of both classes: not reported otherwise (never NaN)
            out["auc"] = auc
    return out


def auc_from_histograms(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted one half."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = torch.cumsum(neg, 0) - neg  # negatives in strictly lower bins
    wins = (pos * neg_below).sum() + 0.5 * (pos * neg).sum()
    return float(wins) / (n_pos * n_neg)
