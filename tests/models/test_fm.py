"""FM and HOFM against brute-force sums over pairs and triples of real slots."""
from __future__ import annotations

from itertools import combinations

import torch

from afm_dist.models import FM, HOFM


def _linear_reference(model, ids, vals, mask, b):
    w = model.linear.weight.weight[:, 0]
    return model.linear.bias[0] + sum(w[ids[b, i]] * vals[b, i] for i in range(ids.shape[1]) if mask[b, i])


def _pair_reference(table, ids, vals, mask, b):
    real = [i for i in range(ids.shape[1]) if mask[b, i]]
    return sum((table[ids[b, i]] * table[ids[b, j]]).sum() * vals[b, i] * vals[b, j]
               for i, j in combinations(real, 2))


def test_fm_fast_form_equals_double_sum_over_pairs(make_batch):
    torch.manual_seed(0)
    ids, vals, mask = make_batch(9, 6, 20, seed=1)
    fm = FM(20, 5, init_std=0.5).double().eval()
    torch.nn.init.normal_(fm.linear.weight.weight)
    torch.nn.init.normal_(fm.linear.bias)
    v = fm.embedding.weight
    expected = torch.stack([_linear_reference(fm, ids, vals, mask, b) + _pair_reference(v, ids, vals, mask, b)
                            for b in range(ids.shape[0])])
    torch.testing.assert_close(fm(ids, vals, mask), expected, rtol=1e-12, atol=1e-12)


def test_fm_ignores_what_padded_slots_hold(make_batch):
    ids, vals, mask = make_batch(8, 5, 20, seed=2)
    fm = FM(20, 4, init_std=0.5).double().eval()
    noisy_ids = ids.masked_fill(~mask, 7)
    noisy_vals = vals.masked_fill(~mask, 3.0)
    torch.testing.assert_close(fm(noisy_ids, noisy_vals, mask), fm(ids, vals, mask), rtol=0, atol=0)


def test_fm_dropout_acts_on_the_interaction_vector_only(make_batch):
    ids, vals, mask = make_batch(8, 5, 20, seed=3, padded=False)
    fm = FM(20, 4, dropout=1.0, init_std=0.5).double()
    torch.nn.init.normal_(fm.linear.weight.weight)
    fm.train()
    torch.manual_seed(0)
    # Every unit of the k-vector dropped: only the linear part is left.
    linear = fm.linear(ids, vals)
    torch.testing.assert_close(fm(ids, vals, mask), linear, rtol=0, atol=0)
    fm.eval()
    assert not torch.allclose(fm(ids, vals, mask), linear)


def test_hofm_order3_term_equals_triple_sum():
    torch.manual_seed(0)
    a = torch.randn(4, 6, 3, dtype=torch.float64)  # (B, M, k)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for i, j, l in combinations(range(6), 3):
        expected += a[:, i] * a[:, j] * a[:, l]
    torch.testing.assert_close(HOFM.order3(a), expected, rtol=1e-12, atol=1e-12)


def test_hofm_equals_brute_force_with_padding(make_batch):
    ids, vals, mask = make_batch(9, 6, 20, seed=4)
    hofm = HOFM(20, 4, init_std=0.5).double().eval()
    torch.nn.init.normal_(hofm.linear.weight.weight)
    v, u = hofm.embedding.weight, hofm.embedding3.weight
    expected = []
    for b in range(ids.shape[0]):
        real = [i for i in range(ids.shape[1]) if mask[b, i]]
        order3 = sum((u[ids[b, i]] * u[ids[b, j]] * u[ids[b, l]]).sum() * vals[b, i] * vals[b, j] * vals[b, l]
                     for i, j, l in combinations(real, 3))
        expected.append(_linear_reference(hofm, ids, vals, mask, b) + _pair_reference(v, ids, vals, mask, b) + order3)
    torch.testing.assert_close(hofm(ids, vals, mask), torch.stack(expected), rtol=1e-12, atol=1e-12)


def test_parameter_counts_by_hand():
    n, k = 30, 8
    assert FM(n, k).num_parameters() == n * k + n + 1  # v, w, w0
    assert HOFM(n, k).num_parameters() == 2 * n * k + n + 1  # one table per order, w, w0
