"""Reusable blocks of the factorization-machine family; the models in this package combine them.

AFM's attention-based pooling, with its memory-efficient path, is in afm_dist/models/attention.py.

Notation used in every docstring and shape comment:

    B: batch size
    M: number of slots (columns of ``ids`` / ``vals`` / ``mask``, see afm_dist/dataset.py)
    P: number of slot pairs, M (M - 1) / 2, in ``torch.triu_indices(M, M, 1)`` order
    C: number of slot pairs in one chunk of the memory-efficient attention
    N: number of features (rows of the embedding tables)
    k: embedding size
    t: attention factor (hidden size of the attention network)

A slot with ``mask`` False is padding: every block multiplies its value x_i by the mask, so a
padded slot contributes nothing, and the attention gives it no weight.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def masked_values(vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_i with padded slots set to 0: (B, M) float, (B, M) bool -> (B, M)."""
    return vals * mask.to(vals.dtype)


def pair_index(num_slots: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots (i, j), i < j, of every pair in ``torch.triu_indices(M, M, 1)`` order: two (P,) int64."""
    rows, cols = torch.triu_indices(num_slots, num_slots, offset=1, device=device)
    return rows, cols


class Lookup(NamedTuple):
    """A batch's distinct feature ids, so that every table is read once per distinct id.

    A model looks its tables up at ``unique`` (U rows each) and takes each slot's row from them
    (``at``): a sparse table's gradient then has one row per distinct id, summed in backward,
    instead of one per slot (B M rows, which the gradient exchange and the optimizer would sort and
    sum), and a history bag's many repeats of the same items cost one table row each.

    Fields:
        unique: (U,) int64, the batch's distinct feature ids, ascending.
        inverse: (B, M) int64, each slot's position in ``unique``.
    """

    unique: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def of(cls, ids: torch.Tensor) -> "Lookup":
        """ids (B, M) int64 -> the lookup of its distinct ids."""
        unique, inverse = torch.unique(ids, return_inverse=True)  # (U,), (B, M)
        return cls(unique, inverse)

    def at(self, rows: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """rows (U, d) of ``unique`` -> the rows of slots start..stop (B, stop - start, d)."""
        inverse = self.inverse[:, start:stop]
        if rows.device.type == "cpu":  # index_select's backward (an index_add) is the faster there
            return rows.index_select(0, inverse.reshape(-1)).view(*inverse.shape, rows.shape[1])
        # elsewhere an embedding's backward sorts, and so gives the same bits every run (an
        # index_add on CUDA adds atomically, in any order)
        return F.embedding(inverse, rows)


class FeaturesLinear(nn.Module):
    """The linear part of every model: w0 + sum_i w_i x_i.

    Args:
        num_features: N, rows of the weight table (global feature ids are 0..N-1).
        sparse: sparse gradients for the table: a step touches only the rows of its batch.
    """

    def __init__(self, num_features: int, sparse: bool = False) -> None:
        super().__init__()
        self.weight = nn.Embedding(num_features, 1, sparse=sparse)  # w_i, (N, 1)
        self.bias = nn.Parameter(torch.zeros(1))  # w0
        # Zeros, as the reference implementation: the linear part starts as the constant 0.
        nn.init.zeros_(self.weight.weight)

    def forward(self, ids: torch.Tensor, xs: torch.Tensor, lookup: Lookup | None = None) -> torch.Tensor:
        """ids (B, M) int64, xs (B, M) masked values -> (B,); with ``lookup`` (of ``ids``) the
        table is read once per distinct id."""
        w = (self.weight(ids) if lookup is None else lookup.at(self.weight(lookup.unique))).squeeze(-1)  # (B, M)
        return self.bias + (w * xs).sum(dim=1)  # (B,)


class FeaturesEmbedding(nn.Module):
    """Embeddings scaled by their feature values: e_i = v_i x_i.

    Args:
        num_features: N, rows of the table.
        embedding_dim: k.
        init_std: standard deviation of the normal initialisation.
        sparse: sparse gradients for the table: a step touches only the rows of its batch (only
            optimizers that accept them: SGD, Adagrad, afm_dist.training.optimizers.RowWiseAdagrad).
    """

    def __init__(self, num_features: int, embedding_dim: int, init_std: float = 0.01, sparse: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_features, embedding_dim, sparse=sparse)  # v_i, (N, k)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=init_std)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, ids: torch.Tensor, xs: torch.Tensor, lookup: Lookup | None = None) -> torch.Tensor:
        """ids (B, M) int64, xs (B, M) masked values -> e (B, M, k); with ``lookup`` (of ``ids``)
        the table is read once per distinct id."""
        v = self.embedding(ids) if lookup is None else lookup.at(self.rows(lookup.unique))  # (B, M, k)
        return v * xs.unsqueeze(-1)  # (B, M, k)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """v_i of the given ids: (U,) int64 -> (U, k). What a pooled field's sum and every slot read
        (a subclass that changes the rows changes them here)."""
        return self.embedding(ids)


def bag_sum(rows: torch.Tensor, inverse: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """sum_i v_i x_i over each row's slots: rows (U, k) the batch's distinct rows, inverse (B, W)
    int64 each slot's row among them, xs (B, W) -> (B, k).

    ``F.embedding_bag`` sums the rows without a (B, W, k) tensor.
    """
    return F.embedding_bag(inverse, rows, per_sample_weights=xs.to(rows.dtype), mode="sum")


class SlotPooling(nn.Module):
    """The pair layer's inputs: every slot on its own, or a pooled field's slots summed into one vector.

    A bag field (a user's history) enters the pair layer as sum_{i in field} e_i = sum_i v_i x_i,
    so its values are paired with the other fields but not with each other, and the pairs are of G
    inputs instead of M slots. The weights of the sum (1/sqrt(n)) are the slots' values x_i, set at
    preprocessing; a padded slot has x_i = 0.

    Args:
        slot_groups: widths of the G inputs in slot order (summing to M): 1 for a slot on its own,
            a pooled field's width; None or all ones: no pooling.

    Raises:
        ValueError: a width below 1.
    """

    def __init__(self, slot_groups: tuple[int, ...] | None = None) -> None:
        super().__init__()
        groups = tuple(slot_groups or ())
        if any(w < 1 for w in groups):
            raise ValueError(f"slot groups {groups}: every width must be 1 or more")
        self.slot_groups = groups
        self.num_groups = len(groups)
        self.pooling = any(w > 1 for w in groups)
        # Runs of slots (start, stop, pooled): consecutive single slots together, each pooled field alone.
        self.runs: list[tuple[int, int, bool]] = []
        slot = 0
        for w in groups:
            if w == 1 and self.runs and not self.runs[-1][2]:
                self.runs[-1] = (self.runs[-1][0], slot + 1, False)
            else:
                self.runs.append((slot, slot + w, w > 1))
            slot += w

    def forward(self, table: FeaturesEmbedding, ids: torch.Tensor, xs: torch.Tensor,
                mask: torch.Tensor, lookup: Lookup | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, M) int64, xs (B, M) masked values, mask (B, M) bool -> the inputs e (B, G, k)
        (e_i = v_i x_i of ``table``, a pooled field's summed) and their mask (B, G) bool (a pooled
        field is real if any of its slots is). ``lookup``: that of ``ids``, shared with the model's
        other tables (made here when None and a field is pooled)."""
        if not self.pooling:
            return table(ids, xs, lookup), mask
        lookup = lookup if lookup is not None else Lookup.of(ids)
        v = table.rows(lookup.unique)  # (U, k): each distinct id's row, read once
        parts, real = [], []
        for a, b, pooled in self.runs:
            if pooled:
                parts.append(bag_sum(v, lookup.inverse[:, a:b], xs[:, a:b]).unsqueeze(1))  # (B, 1, k)
                real.append(mask[:, a:b].any(dim=1, keepdim=True))
            else:
                parts.append(lookup.at(v, a, b) * xs[:, a:b].unsqueeze(-1))  # (B, b - a, k)
                real.append(mask[:, a:b])
        return torch.cat(parts, dim=1), torch.cat(real, dim=1)


class BiInteraction(nn.Module):
    """FM's pair term before summing over k: sum_{i<j} e_i * e_j, in O(M k) (Rendle 2010, lemma 3.1).

    sum_{i<j} e_i * e_j = 1/2 [(sum_i e_i)^2 - sum_i e_i^2], elementwise in k. Padded slots have
    e_i = 0 and so drop out of both sums.
    """

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e (B, M, k) -> (B, k)."""
        # x * x, not x.square(): the same values, and the same gradients bit for bit (2 g x, as
        # g x + g x), but autograd's backward of a product is about twice as fast on CPU as
        # that of pow(x, 2), which builds pow(x, 1) first.
        s = e.sum(dim=1)  # (B, k)
        square_of_sum = s * s  # (B, k)
        sum_of_squares = (e * e).sum(dim=1)  # (B, k)
        return 0.5 * (square_of_sum - sum_of_squares)  # (B, k)


class PairwiseInteraction(nn.Module):
    """Every pair product e_i * e_j, i < j, materialised: (B, M, k) -> (B, P, k).

    Args:
        num_slots: M.
    """

    def __init__(self, num_slots: int) -> None:
        super().__init__()
        rows, cols = pair_index(num_slots)
        self.register_buffer("rows", rows, persistent=False)  # (P,)
        self.register_buffer("cols", cols, persistent=False)  # (P,)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e (B, M, k) -> (B, P, k)."""
        return e.index_select(1, self.rows) * e.index_select(1, self.cols)  # (B, P, k)

    def pair_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Slot mask (B, M) bool -> pair mask (B, P) bool: both slots of the pair are real."""
        return mask.index_select(1, self.rows) & mask.index_select(1, self.cols)  # (B, P)


def masked_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 of the entries where ``valid`` is True; exactly 0 elsewhere.

    Invalid logits are set to -inf, so they take no part in the normaliser. A row without any valid
    entry (a row with fewer than two real slots has no pair) would be 0/0: its logits are set to 0
    instead, so that softmax stays finite (and so do the gradients), and its weights are all 0.

    logits (B, P), valid (B, P) bool -> (B, P)
    """
    if bool(valid.all()):  # no padding in the batch: nothing to mask
        return F.softmax(logits, dim=1)
    has_valid = valid.any(dim=1, keepdim=True)  # (B, 1)
    logits = logits.masked_fill(~valid, float("-inf")).masked_fill(~has_valid, 0.0)  # (B, P)
    return F.softmax(logits, dim=1).masked_fill(~valid, 0.0)  # (B, P)


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout for each hidden size, then a linear layer to one output.

    Args:
        in_features: input width.
        hidden_sizes: width of each hidden layer.
        dropout: dropout after each hidden layer.
    """

    def __init__(self, in_features: int, hidden_sizes: tuple[int, ...], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_features) -> (B,)."""
        return self.net(x).squeeze(-1)  # (B,)


class ResidualUnit(nn.Module):
    """Deep Crossing's residual unit: x + W2 ReLU(W1 x + b1) + b2 (Shan et al. 2016).

    Args:
        width: input and output width d.
        hidden_size: width of the inner layer.
    """

    def __init__(self, width: int, hidden_size: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, hidden_size)  # W1, b1
        self.outer = nn.Linear(hidden_size, width)  # W2, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, d) -> (B, d)."""
        return x + self.outer(F.relu(self.inner(x)))  # (B, d)
