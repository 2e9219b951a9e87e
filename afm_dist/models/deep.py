"""The deep baselines of the AFM paper: Wide&Deep (Cheng et al. 2016), DeepCross (Shan et al. 2016).

Notation: B batch size, M slots, N features, k embedding size, d = M k. Both models stack the
slots' embeddings e_i = v_i x_i into one (B, d) vector (so they need M at construction), and both
keep the linear part w0 + sum_i w_i x_i so that an FM can initialise them (``init_from_fm``).
"""
from __future__ import annotations

import torch
from torch import nn

from afm_dist.models.base import ScoringModel
from afm_dist.models.layers import MLP, Lookup, ResidualUnit, SlotPooling, masked_values


class WideDeep(ScoringModel):
    """Wide&Deep: y = w0 + sum_i w_i x_i + MLP([e_1, ..., e_M]).

    Args (num_features, embedding_dim, init_std, sparse_embeddings: see ``ScoringModel``):
        num_slots: M.
        hidden_sizes: widths of the MLP's hidden layers (then a linear layer to 1).
        dropout: dropout after each hidden layer.
        slot_groups: as FM's (``SlotPooling``): a pooled field is stacked as one vector, d = G k.
    """

    def __init__(self, num_features: int, num_slots: int, embedding_dim: int, hidden_sizes: tuple[int, ...],
                 dropout: float = 0.0, init_std: float = 0.01, sparse_embeddings: bool = False,
                 slot_groups: tuple[int, ...] | None = None) -> None:
        super().__init__(num_features, embedding_dim, init_std, sparse_embeddings)
        self.pool = SlotPooling(slot_groups)
        self.mlp = MLP((self.pool.num_groups if self.pool.pooling else num_slots) * embedding_dim, hidden_sizes,
                       dropout)

    def forward(self, ids: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,)."""
        xs = masked_values(vals, mask)  # (B, M)
        lookup = Lookup.of(ids)  # every table read once per distinct id
        stacked = self.pool(self.embedding, ids, xs, mask, lookup)[0].flatten(start_dim=1)  # (B, G k)
        return self.linear(ids, xs, lookup) + self.mlp(stacked)  # (B,)


class DeepCross(ScoringModel):
    """DeepCross: stacking layer [e_1, ..., e_M], residual units, then a linear layer to 1.

        y = w0 + sum_i w_i x_i + w^T R_L(... R_1([e_1, ..., e_M])) + c,
        R(x) = x + W2 ReLU(W1 x + b1) + b2

    Args (num_features, embedding_dim, init_std, sparse_embeddings: see ``ScoringModel``):
        num_slots: M.
        residual_sizes: inner width of each residual unit (each unit maps d to d).
        dropout: dropout after each residual unit.
        slot_groups: as FM's (``SlotPooling``): a pooled field is stacked as one vector, d = G k.
    """

    def __init__(self, num_features: int, num_slots: int, embedding_dim: int, residual_sizes: tuple[int, ...],
                 dropout: float = 0.0, init_std: float = 0.01, sparse_embeddings: bool = False,
                 slot_groups: tuple[int, ...] | None = None) -> None:
        super().__init__(num_features, embedding_dim, init_std, sparse_embeddings)
        self.pool = SlotPooling(slot_groups)
        width = (self.pool.num_groups if self.pool.pooling else num_slots) * embedding_dim
        self.residual = nn.Sequential(*(nn.Sequential(ResidualUnit(width, size), nn.Dropout(dropout))
                                        for size in residual_sizes))
        self.output = nn.Linear(width, 1)

    def forward(self, ids: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,)."""
        xs = masked_values(vals, mask)  # (B, M)
        lookup = Lookup.of(ids)  # every table read once per distinct id
        stacked = self.pool(self.embedding, ids, xs, mask, lookup)[0].flatten(start_dim=1)  # (B, G k)
        return self.linear(ids, xs, lookup) + self.output(self.residual(stacked)).squeeze(-1)  # (B,)
