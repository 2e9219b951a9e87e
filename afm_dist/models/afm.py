"""Attentional Factorization Machine, Xiao et al., IJCAI 2017, eq. 2-6.

    y    = w0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i * v_j) x_i x_j
    a'_ij = h^T ReLU(W (v_i * v_j) x_i x_j + b)
    a_ij = exp(a'_ij) / sum_{(i,j) in R_x} exp(a'_ij)

Notation: B batch size, M slots, P = M (M - 1) / 2 slot pairs in ``torch.triu_indices(M, M, 1)``
order, N features, k embedding size, t attention factor; W (t, k), b (t,), h (t,), p (k,).
R_x, the pairs the softmax runs over, is every pair of real (mask True) slots of the row.

The training objective adds lambda ||W||^2 (``l2_penalty``); the trainer owns the loss.

Scale of the attention (``attention_scale``). Eq. 5 as printed takes the attention-weighted *mean*
of the pairs (a_ij sums to 1 over R_x), where the FM of eq. 1 takes their *sum*: an AFM initialised
from a trained FM (the paper's pre-training) then starts from 1/|R_x| of the FM's pair term (1/45 on
Frappe) and re-learns the scale with fresh steps on the pre-trained embeddings, overfitting as it does
(docs/RESULTS.md). By default (``"pairs"``) the weights are |R_x| a_ij, which sum to |R_x|, and h
starts at 0: the attention starts uniform, every weight 1, so that an AFM initialised from an FM
computes exactly that FM before its first step (section 5.4 of the paper: "attention fixed to uniform
simulates FM"), and learns only how far to move each pair's weight from 1. ``"one"`` is eq. 5 as
printed (h initialised N(0, 1) as the reference code).
"""
from __future__ import annotations

import torch
from torch import nn

from afm_dist.models.attention import AttentionPooling
from afm_dist.models.base import ScoringModel
from afm_dist.models.layers import Lookup, SlotPooling, masked_values, pair_index


ATTENTION_SCALES = ("pairs", "one")


class AFM(ScoringModel):
    """AFM returning raw scores (B,).

    Args (num_features, embedding_dim, init_std, sparse_embeddings: see ``ScoringModel``):
        num_slots: M (the attention's pair index is built once for it).
        attention_factor: t.
        dropout: dropout on the attention-based pooling output (k,), before p: the paper's
            dropout on the pair-wise interaction layer.
        attention_dropout: dropout on the attention weights a_ij.
        naive: materialise the (B, P, k) pair products and keep every activation for backward
            (reference path); by default the memory-efficient path of ``AttentionPooling``.
        chunk_elements: memory budget of the efficient path (see ``AttentionPooling``).
        attention_scale: ``"pairs"`` (default): the pair weights are |R_x| a_ij (sum |R_x|, 1 each
            when uniform) and h starts at 0, so the model starts as the FM its embeddings come
            from; ``"one"``: eq. 5 as printed, weights a_ij summing to 1.
        attention_stop_gradient: the attention's logits send no gradient into the embeddings
            (``AttentionPooling``'s ``stop_gradient``).
        slot_groups: widths of the pair layer's inputs in slot order (``SlotPooling``): a pooled
            field is one input, the sum of its slots' e_i, and the attention weighs pairs of the
            G inputs (P = G (G - 1) / 2); None: every slot is an input (G = M).

    Raises:
        ValueError: an unknown ``attention_scale``, or ``slot_groups`` not covering the M slots.
    """

    def __init__(self, num_features: int, num_slots: int, embedding_dim: int, attention_factor: int,
                 dropout: float = 0.0, attention_dropout: float = 0.0, init_std: float = 0.01, naive: bool = False,
                 chunk_elements: int = 1 << 22, sparse_embeddings: bool = False,
                 attention_scale: str = "pairs", slot_groups: tuple[int, ...] | None = None,
                 attention_stop_gradient: bool = False) -> None:
        super().__init__(num_features, embedding_dim, init_std, sparse_embeddings)
        if attention_scale not in ATTENTION_SCALES:
            raise ValueError(f"attention_scale {attention_scale!r}: expected one of {ATTENTION_SCALES}")
        if slot_groups and sum(slot_groups) != num_slots:
            raise ValueError(f"slot groups {tuple(slot_groups)} do not cover the {num_slots} slots")
        self.num_slots = num_slots
        self.pool = SlotPooling(slot_groups)
        self.num_inputs = self.pool.num_groups if self.pool.pooling else num_slots  # G
        self.attention_scale = attention_scale
        self.attention = AttentionPooling(self.num_inputs, embedding_dim, attention_factor, attention_dropout, naive,
                                          chunk_elements, attention_stop_gradient)
        if attention_scale == "pairs":
            with torch.no_grad():
                self.attention.h.zero_()  # every logit 0: uniform attention, the FM's equal pair weights
        self.dropout = nn.Dropout(dropout)
        # Ones, as the reference implementation: at start the pair term is the attention-weighted
        # sum of <v_i, v_j> x_i x_j; with "pairs" and h = 0 every weight is 1, the FM's own sum.
        self.p = nn.Parameter(torch.ones(embedding_dim))  # (k,)

    def pair_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (i, j) of each attention column: two (P,) int64, ``torch.triu_indices(G, G, 1)``
        (slots when no field is pooled)."""
        return pair_index(self.num_inputs)

    def l2_penalty(self) -> torch.Tensor:
        """||W||^2 of the attention network (the reference code's lambda_attention regulariser)."""
        return self.attention.weight.square().sum()

    def forward(self, ids: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,),
        or (scores (B,), attention a_ij (B, P)) with ``return_attention``.

        A row with fewer than two real slots has no pair: its pair term is 0 and its attention row 0.
        """
        scores, attention, _, _ = self._scores(ids, vals, mask)
        if return_attention:
            return scores, attention
        return scores

    def pair_terms(self, ids: torch.Tensor, vals: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores and their pair terms, for explanations (the paper's Table 1).

        ids (B, M) int64, vals (B, M) float, mask (B, M) bool -> scores (B,) as ``forward``,
        attention a_ij (B, P) as ``forward(..., return_attention=True)``, and the interaction score
        of every slot pair (B, P), pairs in ``torch.triu_indices(M, M, 1)`` order:

            y = w0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i * v_j) x_i x_j      (Xiao et al. 2017, eq. 5)
              = w0 + sum_i w_i x_i + sum_{i<j} a_ij s_ij,      s_ij = p^T (v_i * v_j) x_i x_j

        With ``attention_scale="pairs"`` the interaction score carries the row's |R_x|:
        s_ij = |R_x| p^T (v_i * v_j) x_i x_j, so that the same sum holds with the attention a_ij
        (summing to 1) that ``forward`` returns and the heatmaps show.

        s_ij is 0 for a pair with a padded slot (its x is 0), as is a_ij. In eval mode (no dropout)
        the scores equal the linear part plus ``(attention * interaction).sum(1)``, up to
        floating-point rounding.
        """
        scores, attention, e, real = self._scores(ids, vals, mask)
        B, M, _ = e.shape  # M: the pair layer's inputs (G with pooled fields)
        rows, cols = self.attention.pairs.rows, self.attention.pairs.cols  # (P,)
        # p^T (e_i * e_j) = sum_f e_if p_f e_jf: entry (i, j) of the (B, M, M) matrix (e p) e^T,
        # with no (B, P, k) tensor of pair products.
        gram = torch.bmm(e * self.p, e.transpose(1, 2))  # (B, M, M)
        interaction = gram.view(B, M * M).index_select(1, rows * M + cols)  # (B, P)
        if self.attention_scale == "pairs":
            interaction = interaction * self._num_pairs(real).to(interaction.dtype).unsqueeze(1)
        return scores, attention, interaction

    @staticmethod
    def _num_pairs(mask: torch.Tensor) -> torch.Tensor:
        """|R_x|, the row's pairs of real slots: mask (B, M) bool -> (B,) int64."""
        real = mask.sum(dim=1)
        return real * (real - 1) // 2

    def _scores(self, ids: torch.Tensor, vals: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores (B,), attention a_ij (B, P), the pair layer's inputs e (B, G, k) (e_i = v_i x_i,
        a pooled field's summed) and their mask (B, G) bool."""
        xs = masked_values(vals, mask)  # (B, M)
        lookup = Lookup.of(ids)  # every table read once per distinct id
        e, real = self.pool(self.embedding, ids, xs, mask, lookup)  # (B, G, k), (B, G)
        pooled, attention = self.attention(e, real)  # (B, k), (B, P)
        if self.attention_scale == "pairs":
            pooled = pooled * self._num_pairs(real).to(pooled.dtype).unsqueeze(1)  # sum_ij |R_x| a_ij q_ij
        scores = self.linear(ids, xs, lookup) + self.dropout(pooled) @ self.p  # (B,)
        return scores, attention, e, real
