"""Attentional Factorization Machine, Xiao et al., IJCAI 2017, eq. 2-6.

    y    = w0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i * v_j) x_i x_j
    a'_ij = h^T ReLU(W (v_i * v_j) x_i x_j + b)
    a_ij = exp(a'_ij) / sum_{(i,j) in R_x} exp(a'_ij)

Notation: B batch size, M slots, P = M (M - 1) / 2 slot pairs in ``torch.triu_indices(M, M, 1)``
order, N features, k embedding size, t attention factor; W (t, k), b (t,), h (t,), p (k,).
R_x, the pairs the softmax runs over, is every pair of real (mask True) slots of the row.

The training objective adds lambda ||W||^2 (``l2_penalty``); the trainer owns the loss.
"""
from __future__ import annotations

import torch
from torch import nn

from afm_dist.models.fm import ScoringModel
from afm_dist.models.layers import AttentionPooling, FeaturesEmbedding, FeaturesLinear, masked_values, pair_index


class AFM(ScoringModel):
    """AFM returning raw scores (B,).

    Args:
        num_features: N.
        num_slots: M (the attention's pair index is built once for it).
        embedding_dim: k.
        attention_factor: t.
        dropout: dropout on the attention-based pooling output (k,), before p: the paper's
            dropout on the pair-wise interaction layer.
        attention_dropout: dropout on the attention weights a_ij.
        init_std: standard deviation of the embeddings' normal initialisation.
        naive: materialise the (B, P, k) pair products and keep every activation for backward
            (reference path); by default the memory-efficient path of ``AttentionPooling``.
        chunk_elements: memory budget of the efficient path (see ``AttentionPooling``).
        sparse_embeddings: sparse gradients for the embedding tables.
    """

    def __init__(self, num_features: int, num_slots: int, embedding_dim: int, attention_factor: int,
                 dropout: float = 0.0, attention_dropout: float = 0.0, init_std: float = 0.01, naive: bool = False,
                 chunk_elements: int = 1 << 22, sparse_embeddings: bool = False) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.linear = FeaturesLinear(num_features)
        self.embedding = FeaturesEmbedding(num_features, embedding_dim, init_std, sparse_embeddings)
        self.attention = AttentionPooling(num_slots, embedding_dim, attention_factor, attention_dropout, naive,
                                          chunk_elements)
        self.dropout = nn.Dropout(dropout)
        # Ones, as the reference implementation: at start the pair term is the attention-weighted
        # sum of <v_i, v_j> x_i x_j, an FM with its pair weights normalised by the attention.
        self.p = nn.Parameter(torch.ones(embedding_dim))  # (k,)

    def pair_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots (i, j) of each attention column: two (P,) int64, ``torch.triu_indices(M, M, 1)``."""
        return pair_index(self.num_slots)

    def l2_penalty(self) -> torch.Tensor:
        """||W||^2 of the attention network (the reference code's lambda_attention regulariser)."""
        return self.attention.weight.square().sum()

    def forward(self, ids: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,),
        or (scores (B,), attention a_ij (B, P)) with ``return_attention``.

        A row with fewer than two real slots has no pair: its pair term is 0 and its attention row 0.
        """
        xs = masked_values(vals, mask)  # (B, M)
        e = self.embedding(ids, xs)  # (B, M, k)
        pooled, attention = self.attention(e, mask)  # (B, k), (B, P)
        scores = self.linear(ids, xs) + self.dropout(pooled) @ self.p  # (B,)
        if return_attention:
            return scores, attention
        return scores
