"""PNG figures people look at: training curves and attention heatmaps (matplotlib, no display)."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from afm_dist.io import atomic_path  # noqa: E402


def plot_training_curves(history: Sequence[dict], path: str | os.PathLike, *, title: str) -> None:
    """Train and validation RMSE per epoch (the paper's Figure 5); where the records carry the L2
    strength of the feature tables (``embedding_l2``, the regularisation path), each epoch that
    starts a new strength is marked and labelled; where they carry tail averaging's
    ``val_rmse_average``, the validation RMSE of the mean of the weights is a third curve."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, [h["train_rmse"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h.get("val_rmse_model", h["val_rmse"]) for h in history], marker="s", label="validation")
    averaged = [(h["epoch"], h["val_rmse_average"]) for h in history if "val_rmse_average" in h]
    if averaged:
        ax.plot(*zip(*averaged), marker="^", label="validation, mean of the tail's weights")
    best = min(history, key=lambda h: h["val_rmse"])
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
    strengths = [(h["epoch"], h["embedding_l2"]) for h in history if h.get("embedding_l2") is not None]
    for i, (epoch, l2) in enumerate(strengths):
        if i == 0 or l2 != strengths[i - 1][1]:
            ax.axvline(epoch - 0.5, color="tab:red", linestyle="--", alpha=0.4)
            ax.annotate(f"L2 {l2:g}", (epoch - 0.5, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=7, color="tab:red")
    ax.set_xlabel("epoch")
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_attention_heatmap(matrix: np.ndarray, fields: Sequence[str], path: str | os.PathLike, *,
                           title: str) -> None:
    """Symmetric field × field matrix of mean attention weights, annotated."""
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.5 + 0.7 * len(fields)), max(4.0, 1.0 + 0.6 * len(fields))), dpi=120)
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(fields)), labels=fields, rotation=45, ha="right")
    ax.set_yticks(range(len(fields)), labels=fields)
    finite = m[np.isfinite(m)]
    threshold = finite.max() / 2 if finite.size else 0.0
    for i in range(len(fields)):
        for j in range(len(fields)):
            if np.isfinite(m[i, j]) and i != j:
                ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="black" if m[i, j] > threshold else "white")
    fig.colorbar(im, ax=ax, label="mean attention")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_trials(trials: Sequence[tuple[str, float]], path: str | os.PathLike, *, title: str) -> None:
    """One horizontal bar per search trial: (label, validation RMSE), best first."""
    labels, values = zip(*trials)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(trials)), dpi=120)
    y = np.arange(len(trials))
    ax.barh(y, values, color=["tab:green"] + ["tab:blue"] * (len(trials) - 1))
    ax.set_yticks(y, labels=labels, fontsize=7)
    ax.invert_yaxis()
    lo, hi = min(values), max(values)
    ax.set_xlim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.4f}", va="center", fontsize=7)
    ax.set_xlabel("best validation RMSE")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG atomically (readers never see half a file) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
