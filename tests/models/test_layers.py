"""The blocks: pair bookkeeping, masked softmax, FM's bi-interaction, the efficient attention."""
from __future__ import annotations

import torch

from afm_dist.models.attention import AttentionPooling, pair_runs
from afm_dist.models.layers import BiInteraction, PairwiseInteraction, masked_softmax, pair_index


def test_pair_index_is_triu_indices():
    rows, cols = pair_index(5)
    expected = torch.triu_indices(5, 5, 1)
    assert torch.equal(rows, expected[0]) and torch.equal(cols, expected[1])


def test_pair_runs_cover_any_range_of_pairs_in_triu_order():
    M = 6
    rows, cols = pair_index(M)
    P = rows.numel()
    for start in range(P):
        for stop in range(start + 1, P + 1):
            got = [(i, j, start + off + j - j0) for i, j0, j1, off in pair_runs(M, start, stop) for j in range(j0, j1)]
            assert got == [(rows[n].item(), cols[n].item(), n) for n in range(start, stop)]


def test_masked_softmax():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 9.0], [4.0, 5.0, 6.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [True, False, True], [False, False, False], [False, True, False]])
    out = masked_softmax(logits, valid)
    torch.testing.assert_close(out[0], torch.softmax(logits[0], 0))
    torch.testing.assert_close(out[1, [0, 2]], torch.softmax(logits[1, [0, 2]], 0))
    assert out[1, 1] == 0.0 and torch.all(out[2] == 0.0)  # masked entries and empty rows: exactly 0
    torch.testing.assert_close(out[3], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    logits.requires_grad_(True)
    masked_softmax(logits, valid).pow(2).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[2] == 0.0)


def test_bi_interaction_is_sum_of_pair_products():
    e = torch.randn(3, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(BiInteraction()(e), PairwiseInteraction(6)(e).sum(1))


def test_bi_interaction_values_and_gradient_are_those_of_the_squares_bit_for_bit():
    # The layer squares by products (faster to differentiate on CPU); its output and gradient are
    # exactly those of Rendle's formula written with square().
    torch.manual_seed(3)
    e = torch.randn(64, 5, 16, dtype=torch.float32)
    weights = torch.randn(16)
    ours, textbook = e.clone().requires_grad_(True), e.clone().requires_grad_(True)
    out = BiInteraction()(ours)
    expected = 0.5 * (textbook.sum(dim=1).square() - textbook.square().sum(dim=1))
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.equal(out, expected)
    assert torch.equal(ours.grad, textbook.grad)


def test_efficient_attention_keeps_only_chunk_sized_tensors_for_backward():
    """With several chunks, what backward keeps is e, the (B, P) and (B, M, M) tensors and the
    the [W, b] matrix, never a (B, P, k) or (B, P, t) one; the naive path keeps several."""
    B, M, k, t = 8, 12, 16, 16
    P = M * (M - 1) // 2
    e = torch.randn(B, M, k, requires_grad=True)
    mask = torch.ones(B, M, dtype=torch.bool)

    def largest_saved(module: AttentionPooling) -> int:
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
            module(e, mask)
        return max(sizes)

    naive = AttentionPooling(M, k, t, naive=True)
    efficient = AttentionPooling(M, k, t, chunk_elements=B * 16 * 10)  # 10 pairs per chunk
    assert largest_saved(naive) >= B * P * k
    assert largest_saved(efficient) <= max(B * M * M, B * P, B * M * k)
