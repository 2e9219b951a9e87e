"""``ScoringModel``, the base class of every model of this package.

Notation: B batch size, M slots, N features, k embedding size; x_i the value of slot i (0 for a
padded slot), v_i the embedding of its feature, e_i = v_i x_i.
"""
from __future__ import annotations

import torch
from torch import nn

from afm_dist.models.layers import FeaturesEmbedding, FeaturesLinear


class ScoringModel(nn.Module):
    """What every model of this package offers besides ``forward(ids, vals, mask) -> (B,)``.

    Every model has the linear part w0 + sum_i w_i x_i (``linear``) and the embedding table of the
    pair terms, e_i = v_i x_i (``embedding``), built here before anything a subclass adds; an FM
    can initialise the others through them (``init_from_fm``). The constructor arguments every
    model shares, documented here once (each model's Args list only its own):

    Args:
        num_features: N.
        embedding_dim: k.
        init_std: standard deviation of the embeddings' normal initialisation.
        sparse_embeddings: sparse gradients for the embedding table(s) and the linear weights w_i:
            a training step then reads and updates only the rows of its batch's feature ids.
    """

    def __init__(self, num_features: int, embedding_dim: int, init_std: float = 0.01,
                 sparse_embeddings: bool = False) -> None:
        super().__init__()
        self.linear = FeaturesLinear(num_features, sparse_embeddings)
        self.embedding = FeaturesEmbedding(num_features, embedding_dim, init_std, sparse_embeddings)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def l2_penalty(self) -> torch.Tensor:
        """The regularised squared norm the trainer multiplies by lambda; 0 unless a model says otherwise."""
        return next(self.parameters()).new_zeros(())

    def feature_penalty(self, ids: torch.Tensor, mask: torch.Tensor,
                        row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The squared norms of the batch's feature rows, as libFM's SGD regularises: only the rows
        a step touches, each as often as it occurs (so the gradient stays sparse).

        Args:
            ids: (B, M) feature ids.
            mask: (B, M), 1 for a slot that holds a feature, 0 for padding.
            row_weight: (num_features,) or None: each row's occurrences weighted by it (the
                trainer passes None; ``experiments/regularise.py`` measures weightings with it).

        Returns:
            (embedding, linear): scalars, the batch means of sum_i mask_i ||v_i||^2 and of
            sum_i mask_i w_i^2; the trainer multiplies them by --embedding-l2 and --linear-l2.
        """
        # Each distinct id of the batch once, weighted by its number of real slots: the same sums,
        # and a gradient of one row per distinct id, as the forward's (layers.Lookup).
        unique, inverse = torch.unique(ids[mask.bool()], return_inverse=True)  # (U,), (R,)
        counts = torch.bincount(inverse, minlength=unique.numel()).float()  # (U,), exact to 2^24 whatever the model's dtype
        if row_weight is not None:
            counts = counts * row_weight[unique]
        v, w = self.embedding.embedding(unique), self.linear.weight(unique).squeeze(-1)  # (U, k), (U,)
        return (counts * (v * v).sum(-1)).sum() / ids.shape[0], (counts * w * w).sum() / ids.shape[0]
