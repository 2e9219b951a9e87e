"""AFM's attention-based pooling (Xiao et al. 2017, eq. 3-5) and its memory-efficient path.

``AttentionPooling`` is the module the AFM uses; by default it runs ``_EfficientAttentionPooling``,
a hand-differentiated autograd function that walks over chunks of slot pairs and keeps no (B, P, k)
tensor, with its chunk-sized scratch tensors taken from and handed back to a ``ScratchPool``.

Notation as in afm_dist/models/layers.py: B batch size, M slots, P = M (M - 1) / 2 slot pairs in
``torch.triu_indices(M, M, 1)`` order, C slot pairs in one chunk, k embedding size, t attention factor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afm_dist.models.layers import PairwiseInteraction, masked_softmax


def pair_runs(num_slots: int, start: int, stop: int) -> list[tuple[int, int, int, int]]:
    """Pairs start .. stop - 1 (``triu_indices`` order) as runs that share their first slot.

    Returns (i, j0, j1, offset) per run: pairs (i, j0), ..., (i, j1 - 1) are the pairs offset ..
    offset + j1 - j0 - 1 counted from ``start``. Row i of the triangle starts at pair
    i M - i (i + 1) / 2 and holds M - 1 - i pairs, so a run's partners are a slice of slots.
    """
    runs = []
    for i in range(num_slots - 1):
        row_start = i * num_slots - i * (i + 1) // 2
        lo, hi = max(start, row_start), min(stop, row_start + num_slots - 1 - i)
        if lo < hi:
            runs.append((i, i + 1 + lo - row_start, i + 1 + hi - row_start, lo - start))
    return runs


class ScratchPool:
    """Scratch tensors of the memory-efficient attention, handed back after use and reused.

    The attention's large tensors ((B, C, k) pair products and (B C, t) hidden layer) are the same
    shapes at every step. Allocated afresh, each lands in memory that is in no cache (and that the
    allocator may have given back to the OS and must fault in again): writing it costs as much as
    the arithmetic on it. Reused, the same few buffers stay in cache from step to step.

    At most ``per_shape`` free tensors per (shape, dtype, device, inference mode) and ``max_shapes``
    such keys are kept (the oldest key goes first), so the pool holds at most a couple of chunks'
    scratch. It is not state: copies and pickles of a module start with an empty pool. ``take`` and
    ``give`` are built from single list and dict operations, so threads that share a module never
    get the same tensor (under the GIL; a race can only make the pool keep one tensor more or less).
    """

    def __init__(self, per_shape: int = 2, max_shapes: int = 4) -> None:
        self.per_shape = per_shape
        self.max_shapes = max_shapes
        self._free: dict[tuple, list[torch.Tensor]] = {}

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A free tensor of ``shape`` with ``like``'s dtype and device (contents undefined)."""
        # Inference tensors cannot be written outside inference mode: they are kept apart.
        free = self._free.get((tuple(shape), like.dtype, like.device, torch.is_inference_mode_enabled()))
        if free:
            try:
                return free.pop()
            except IndexError:  # another thread took the last one
                pass
        return like.new_empty(shape)

    def give(self, *tensors: torch.Tensor) -> None:
        """Hand tensors back; the caller must hold no view of them any more."""
        for t in tensors:
            free = self._free.setdefault((tuple(t.shape), t.dtype, t.device, t.is_inference()), [])
            if len(free) < self.per_shape:
                free.append(t)
        while len(self._free) > self.max_shapes:
            try:
                self._free.pop(next(iter(self._free)), None)
            except (RuntimeError, StopIteration):  # another thread changed the dict meanwhile
                break

    def __deepcopy__(self, memo: dict) -> "ScratchPool":
        return ScratchPool(self.per_shape, self.max_shapes)

    def __reduce__(self):
        return ScratchPool, (self.per_shape, self.max_shapes)


def _pair_products(e: torch.Tensor, runs: list[tuple[int, int, int, int]], out: torch.Tensor) -> torch.Tensor:
    """e_i * e_j for consecutive pairs given as runs, into ``out``: e (B, M, k) -> out (B, C, k).

    Written run by run from slices of e (which stays in cache): the products are the only large
    tensor written, where gathering e_i and e_j first would write two more.
    """
    for i, j0, j1, off in runs:
        torch.mul(e[:, i:i + 1], e[:, j0:j1], out=out[:, off:off + j1 - j0])
    return out


def _upper_triangular(weights: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Pair weights (B, P) as the (B, M, M) matrix with a_ij at (i, j), i < j, zeros elsewhere."""
    B = weights.shape[0]
    flat = rows * num_slots + cols  # (P,)
    return weights.new_zeros(B, num_slots * num_slots).index_copy_(1, flat, weights).view(B, num_slots, num_slots)


def _attention_hidden(e: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, runs: list[tuple[int, int, int, int]],
                      count: int, pool: ScratchPool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair products q (B, C, k) of ``count`` pairs and the hidden layer r = ReLU(W q + b) (B C, t)."""
    B, _, k = e.shape
    pairs = _pair_products(e, runs, pool.take((B, count, k), e))  # q, (B, C, k)
    hidden = torch.addmm(bias, pairs.view(-1, k), weight.t(), out=pool.take((B * count, weight.shape[0]), e))
    return pairs, hidden.relu_()  # r, (B C, t)


def _efficient_pooling_forward(e: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor | None, weight: torch.Tensor,
                               bias: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chunk: int,
                               pool: ScratchPool, keep_scratch: bool):
    """Forward of ``_EfficientAttentionPooling`` (see there), without autograd.

    Returns pooled (B, k), attention (B, P) and, with ``keep_scratch`` and all pairs in one chunk,
    that chunk's (q, r) (else None; the scratch goes back to ``pool``).
    """
    B, M, k = e.shape
    P = rows.numel()
    logits = e.new_empty(B, P)  # (B, P)
    pairs = hidden = None
    for start in range(0, P, chunk):
        C = min(P, start + chunk) - start
        pairs, hidden = _attention_hidden(e, weight, bias, pair_runs(M, start, start + C), C, pool)
        logits[:, start:start + C] = torch.mv(hidden, h).view(B, C)  # (B, C)
        if C < P:
            pool.give(pairs, hidden)
    attention = masked_softmax(logits, valid)  # (B, P)
    weighted = attention if keep is None else attention * keep  # a~, (B, P)
    if P <= chunk:  # q of every pair at hand: sum_n a~_n q_n as B (1, P) x (P, k) products
        pooled = torch.bmm(weighted.unsqueeze(1), pairs).squeeze(1)  # (B, k)
        if keep_scratch:
            return pooled, attention, (pairs, hidden)
        pool.give(pairs, hidden)
        return pooled, attention, None
    upper = _upper_triangular(weighted, rows, cols, M)  # A, (B, M, M)
    return (e * torch.bmm(upper, e)).sum(dim=1), attention, None  # sum_i e_i * (A e)_i, (B, k)


class _EfficientAttentionPooling(torch.autograd.Function):
    """AFM's attention pooling with a hand-written backward that keeps no (B, P, k) tensor.

    Inputs: e (B, M, k), valid (B, P) bool, keep (B, P) dropout multipliers of the attention or
    None, W (t, k), b (t,), h (t,), the pair index (rows, cols), the chunk size C and a
    ``ScratchPool`` for the (B, C, k) and (B C, t) tensors.
    Outputs: pooled (B, k), attention (B, P).

    On CPU this is bound by memory traffic over (B, P, k)-sized tensors, so it writes as few of
    them as it can. Forward walks over chunks of C pairs, so at most one chunk's (B, C, k) and
    (B, C, t) tensors exist at a time: it writes the pair products q (``_pair_products``) and the
    hidden layer r = ReLU(W q + b), and reads r once for the logits. When all pairs fit in one
    chunk (the usual case: the chunk is sized by a memory budget), q and r are kept for backward,
    the pooling is sum_n a~_n q_n (B products of (1, P) by (P, k)), and backward takes
    da_n = gp . q_n from q. Otherwise backward recomputes each chunk from e, all that is saved
    besides (B, P) ones, and the pooling goes through A, the (B, M, M) upper-triangular matrix of
    a~_ij: sum_n a~_n q_n = sum_i e_i * (A e)_i and gp . (e_i * e_j) = ((e * gp) e^T)_ij, touching
    only (B, M, M) and (B, M, k) tensors. Backward overwrites q and r in place (r becomes g, q
    becomes dq) and hands them back to the pool; a second backward through the same graph
    (``retain_graph``) recomputes them, and takes the same path as the first, so that it gives
    the same numbers to the bit.

    Backward, with gp = dL/dpooled, a the attention, a~ = a * keep, per pair n = (i, j):

        da_n = keep_n gp . q_n (+ dL/da_n)          ds = a * (da - sum_n a_n da_n)   (softmax)
        g_n  = ds_n [r_n > 0]  (B C, t)             G  = sum_n g_n q_n^T  (t, k)
        db   = h * sum_n g_n                        dW = h[:, None] * G
        dh   = sum_n ds_n r_n = rowsum(W * G) + b * sum_n g_n     (r_n = W q_n + b where g_n != 0)
        dq_n = g_n (h[:, None] * W) + a~_n gp       (the second term is the pooling's own; the only
                                                     one with ``stop_gradient``)
        de_i += dq_n * e_j,  de_j += dq_n * e_i

    two matmuls per chunk and no pass over r for dh; h folded into W once; g written over r and dq
    over q; de_j run by run (slices again), de_i from dq * e_j in place and one index_add.
    """

    @staticmethod
    def forward(ctx, e: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor, h: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                chunk: int, pool: ScratchPool, stop_gradient: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, attention, kept = _efficient_pooling_forward(e, valid, keep, weight, bias, h, rows, cols, chunk, pool,
                                                             keep_scratch=True)
        ctx.kept = kept  # on ctx, not saved: backward overwrites them
        ctx.chunk = chunk
        ctx.pool = pool
        ctx.stop_gradient = stop_gradient
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(e, keep, weight, bias, h, rows, cols, attention)
        return pooled, attention

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pooled: torch.Tensor | None, grad_attention: torch.Tensor | None):
        e, keep, weight, bias, h, rows, cols, attention = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None  # overwritten below: a second backward recomputes them
        pool = ctx.pool
        B, M, k = e.shape
        P = rows.numel()
        if grad_pooled is None and grad_attention is None:
            return (None,) * 11
        if kept is None and P <= ctx.chunk:  # a second backward: recompute the one chunk
            kept = _attention_hidden(e, weight, bias, pair_runs(M, 0, P), P, pool)
        if grad_attention is not None:
            # A pair of weight 0 (padding) passes no gradient to the logits whatever dL/da says there:
            # a loss such as sum a log a gives NaN at a = 0, which the naive path's masked softmax
            # drops too. (dL/da from the pooling is finite: only this input needs it.)
            grad_attention = grad_attention.masked_fill(attention == 0, 0.0)
        # Through the pooling and the softmax to the logits.
        grad_e = torch.zeros_like(e)  # (B, M, k)
        weighted = attention if keep is None else attention * keep  # a~, (B, P)
        if grad_pooled is None:
            grad_a = grad_attention  # (B, P)
        else:
            if kept is not None:  # all pairs in one chunk: gp . q_n from q
                grad_a = torch.bmm(grad_pooled.unsqueeze(1), kept[0].transpose(1, 2)).squeeze(1)  # (B, P)
            else:  # gp . (e_i * e_j) from the (B, M, M) Gram matrix of e weighted by gp
                gram = torch.bmm(e * grad_pooled.unsqueeze(1), e.transpose(1, 2))  # (B, M, M)
                grad_a = gram.view(B, M * M).index_select(1, rows * M + cols)  # (B, P)
            if keep is not None:
                grad_a = grad_a * keep
            if grad_attention is not None:
                grad_a = grad_a + grad_attention
        grad_logits = attention * (grad_a - (attention * grad_a).sum(dim=1, keepdim=True))  # (B, P)

        grad_w = torch.zeros_like(weight)  # (t, k), G = sum_n g_n q_n^T until scaled by h
        grad_b = torch.zeros_like(bias)  # (t,), sum_n g_n until scaled by h
        h_weight = h.unsqueeze(1) * weight  # (t, k)
        for start in range(0, P, ctx.chunk):
            C = min(P, start + ctx.chunk) - start
            runs = pair_runs(M, start, start + C)
            pairs, hidden = kept if kept is not None else _attention_hidden(e, weight, bias, runs, C, pool)
            ds = grad_logits[:, start:start + C].reshape(-1, 1)  # (B C, 1)
            g = torch.ops.aten.threshold_backward.grad_input(ds.expand_as(hidden), hidden, 0,
                                                             grad_input=hidden)  # over r, (B C, t)
            grad_b.add_(g.sum(dim=0))
            grad_w.addmm_(g.t(), pairs.view(-1, k))
            if ctx.stop_gradient:  # the logits' term stops at q: dq_n is the pooling's own, a~_n gp
                grad_pairs = pairs.view(B, C, k)
                if grad_pooled is None:
                    grad_pairs.zero_()
                else:
                    torch.mul(weighted[:, start:start + C].unsqueeze(2), grad_pooled.unsqueeze(1), out=grad_pairs)
            else:
                grad_pairs = torch.mm(g, h_weight, out=pairs.view(-1, k)).view(B, C, k)  # dq over q, (B, C, k)
                if grad_pooled is not None:  # the pooling's own term: dq_n += a~_n gp
                    grad_pairs.addcmul_(weighted[:, start:start + C].unsqueeze(2), grad_pooled.unsqueeze(1))
            for i, j0, j1, off in runs:
                block = grad_pairs[:, off:off + j1 - j0]  # (B, j1 - j0, k)
                grad_e[:, j0:j1].addcmul_(block, e[:, i:i + 1])  # de_j += dq_n * e_i
                block.mul_(e[:, j0:j1])  # dq_n * e_j, summed into de_i below
            grad_e.index_add_(1, rows[start:start + C], grad_pairs)
            del g, grad_pairs, block
            pool.give(pairs, hidden)
        # dh = sum_n ds_n r_n = sum_n g_n * (W q_n + b), as r_n = W q_n + b wherever g_n is not 0:
        # from G and sum_n g_n, with no pass over r.
        grad_h = (weight * grad_w).sum(dim=1) + bias * grad_b  # (t,)
        grad_w.mul_(h.unsqueeze(1))
        grad_b.mul_(h)
        return grad_e, None, None, grad_w, grad_b, grad_h, None, None, None, None, None


class AttentionPooling(nn.Module):
    """AFM's attention-based pooling (Xiao et al. 2017, eq. 3-5) over all pairs of real slots.

        a'_ij = h^T ReLU(W (e_i * e_j) + b),   a_ij = softmax over the row's real pairs of a'_ij
        out   = sum_{i<j} a_ij (e_i * e_j)

    with W (t, k), b (t,), h (t,). Pairs with a padded slot get a_ij = 0 exactly. Dropout on the
    attention, when on, multiplies a_ij inside the sum; the attention returned is a_ij itself.

    Two paths with the same numbers (up to floating-point rounding):

    - naive: materialise the (B, P, k) pair products and let autograd keep every activation
      (pair products, both gathered operands, the (B, P, t) hidden layer) for backward;
    - memory-efficient (default): ``_EfficientAttentionPooling``, which keeps at most one chunk of
      C pairs alive, recomputes in backward and writes the gradients out by hand. Peak memory is
      O(B M k + B M^2 + B C max(k, t)) instead of O(B P (k + t)). Its chunk-sized scratch tensors
      come from a ``ScratchPool`` and go back to it, so that steps reuse them (the pool then holds
      up to two chunks' worth between steps).

    Args:
        num_slots: M.
        embedding_dim: k.
        attention_factor: t.
        attention_dropout: dropout on the attention weights a_ij (the reference code's keep[0]).
        naive: use the naive path.
        stop_gradient: the logits read the pair products as constants: W, b and h learn from them,
            but e gets its gradient only through the pooled sum a_ij (e_i * e_j), so the embeddings
            are not moved to make the attention fit the training rows.
        chunk_elements: memory budget of the efficient path, in elements of one (B C, max(k, t))
            tensor: C = max(1, chunk_elements // (B max(k, t))).
    """

    def __init__(self, num_slots: int, embedding_dim: int, attention_factor: int, attention_dropout: float = 0.0,
                 naive: bool = False, chunk_elements: int = 1 << 22, stop_gradient: bool = False) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.naive = naive
        self.stop_gradient = stop_gradient
        self.chunk_elements = chunk_elements
        self.pairs = PairwiseInteraction(num_slots)
        self.weight = nn.Parameter(torch.empty(attention_factor, embedding_dim))  # W, (t, k)
        self.bias = nn.Parameter(torch.empty(attention_factor))  # b, (t,)
        self.h = nn.Parameter(torch.empty(attention_factor))  # h, (t,)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.scratch = ScratchPool()
        # The reference implementation's initialisation: Glorot normal for W and b, standard normal h.
        glorot = (2.0 / (attention_factor + embedding_dim)) ** 0.5
        nn.init.normal_(self.weight, std=glorot)
        nn.init.normal_(self.bias, std=glorot)
        nn.init.normal_(self.h, std=1.0)

    def forward(self, e: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e (B, M, k), mask (B, M) bool -> pooled (B, k), attention a_ij (B, P)."""
        if e.shape[1] != self.num_slots:
            raise ValueError(f"AttentionPooling was built for {self.num_slots} slots, got e of shape {tuple(e.shape)}")
        valid = self.pairs.pair_mask(mask)  # (B, P)
        if self.naive:
            pairs = self.pairs(e)  # (B, P, k)
            logits = F.relu(F.linear(pairs.detach() if self.stop_gradient else pairs, self.weight,
                                     self.bias)) @ self.h  # (B, P)
            attention = masked_softmax(logits, valid)  # (B, P)
            pooled = (self.attention_dropout(attention).unsqueeze(-1) * pairs).sum(dim=1)  # (B, k)
            return pooled, attention
        B, M, k = e.shape
        chunk = max(1, self.chunk_elements // (B * max(k, self.weight.shape[0])))
        keep = None
        if self.training and self.attention_dropout.p > 0:
            keep = self.attention_dropout(e.new_ones(B, self.pairs.rows.numel()))  # (B, P) 0 or 1 / (1 - p)
        args = (e, valid, keep, self.weight, self.bias, self.h, self.pairs.rows, self.pairs.cols, chunk, self.scratch)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (e, self.weight, self.bias, self.h)):
            return _EfficientAttentionPooling.apply(*args, self.stop_gradient)
        pooled, attention, _ = _efficient_pooling_forward(*args, keep_scratch=False)  # nothing to keep
        return pooled, attention
