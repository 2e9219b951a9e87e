"""Factorization machines: FM (Rendle 2010) and the order-3 higher-order FM (Blondel et al. 2016).

Notation: B batch size, M slots, N features, k embedding size; x_i the value of slot i (0 for a
padded slot), v_i the embedding of its feature, e_i = v_i x_i.

Every model here maps (ids, vals, mask) to raw scores (B,): no sigmoid, no loss.
"""
from __future__ import annotations

import torch
from torch import nn

from afm_dist.models.base import ScoringModel
from afm_dist.models.layers import BiInteraction, FeaturesEmbedding, Lookup, SlotPooling, masked_values


class FM(ScoringModel):
    """Factorization machine, eq. 1 of Xiao et al. 2017:

        y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j

    computed in O(M k) as 1^T [1/2 ((sum_i e_i)^2 - sum_i e_i^2)], the bi-interaction vector (k,)
    projected by ones, as the AFM paper's FM; dropout acts on that k-vector (its interaction layer).

    A pooled field (``slot_groups``) is one input of the pair term, the sum of its slots' e_i: its
    values are paired with the other fields, not with each other.

    Args (num_features, embedding_dim, init_std, sparse_embeddings: see ``ScoringModel``):
        dropout: dropout on the bi-interaction vector.
        slot_groups: widths of the pair term's inputs in slot order (``SlotPooling``); None: every slot.
    """

    def __init__(self, num_features: int, embedding_dim: int, dropout: float = 0.0, init_std: float = 0.01,
                 sparse_embeddings: bool = False, slot_groups: tuple[int, ...] | None = None) -> None:
        super().__init__(num_features, embedding_dim, init_std, sparse_embeddings)
        self.pool = SlotPooling(slot_groups)
        self.interaction = BiInteraction()
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,)."""
        xs = masked_values(vals, mask)  # (B, M)
        lookup = Lookup.of(ids)  # every table read once per distinct id
        e, _ = self.pool(self.embedding, ids, xs, mask, lookup)  # (B, G, k); G = M without pooled fields
        pair_term = self.dropout(self.interaction(e)).sum(dim=1)  # (B,)
        return self.linear(ids, xs, lookup) + pair_term  # (B,)


class HOFM(ScoringModel):
    """Higher-order factorization machine of order 3, one embedding table per order:

        y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j
            + sum_{i<j<l} sum_f u_if u_jf u_lf x_i x_j x_l

    The order-3 term is the ANOVA kernel of degree 3, evaluated per factor f from the power sums
    p_m = sum_i a_i^m of a_i = u_if x_i with Newton's identity for the elementary symmetric
    polynomial: e_3 = (p_1^3 - 3 p_1 p_2 + 2 p_3) / 6. O(M k), no loop over triples.

    Args (num_features, embedding_dim, init_std, sparse_embeddings: see ``ScoringModel``; the
    order-3 table u has the same size k, initialisation and gradients as the order-2 table v):
        dropout: dropout on each order's interaction vector (k,) before summing.
        slot_groups: as FM's; a pooled field is one input of both orders.
    """

    def __init__(self, num_features: int, embedding_dim: int, dropout: float = 0.0, init_std: float = 0.01,
                 sparse_embeddings: bool = False, slot_groups: tuple[int, ...] | None = None) -> None:
        super().__init__(num_features, embedding_dim, init_std, sparse_embeddings)  # self.embedding: v, order 2
        self.pool = SlotPooling(slot_groups)
        self.embedding3 = FeaturesEmbedding(num_features, embedding_dim, init_std, sparse_embeddings)  # u, order 3
        self.interaction = BiInteraction()
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def order3(a: torch.Tensor) -> torch.Tensor:
        """sum_{i<j<l} a_i * a_j * a_l per factor: a (B, M, k) -> (B, k)."""
        p1 = a.sum(dim=1)  # (B, k)
        p2 = a.square().sum(dim=1)  # (B, k)
        p3 = a.pow(3).sum(dim=1)  # (B, k)
        return (p1.pow(3) - 3.0 * p1 * p2 + 2.0 * p3) / 6.0  # (B, k)

    def forward(self, ids: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,)."""
        xs = masked_values(vals, mask)  # (B, M)
        lookup = Lookup.of(ids)  # every table read once per distinct id
        order2 = self.dropout(self.interaction(self.pool(self.embedding, ids, xs, mask, lookup)[0])).sum(dim=1)  # (B,)
        order3 = self.dropout(self.order3(self.pool(self.embedding3, ids, xs, mask, lookup)[0])).sum(dim=1)  # (B,)
        return self.linear(ids, xs, lookup) + order2 + order3  # (B,)
