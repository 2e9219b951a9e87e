"""AdaptiveL2: per-field L2 strengths learnt on validation batches (libFM's SGDA for Adagrad)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from afm_dist.models import ModelConfig, build_model
from afm_dist.training.optimizers import build_optimizer
from afm_dist.training.regularization import LOG_RANGE, AdaptiveL2

OFFSETS = [0, 3, 5]  # three fields: ids 0-2, 3-4, 5-8
N = 9


def fm(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("fm", N, 3, ModelConfig(embedding_dim=4, interaction_dropout=0.0, init_std=0.3))


def rows(seed: int, b: int = 16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, 3, (b,), generator=g), torch.randint(3, 5, (b,), generator=g),
                       torch.randint(5, 9, (b,), generator=g)], 1)
    mask = torch.ones(b, 3)
    mask[0, 2] = 0  # one padded slot: its feature is not penalised
    return ids, torch.ones(b, 3), mask, torch.randn(b, generator=g)


def test_field_of_maps_ids_to_their_field():
    reg = AdaptiveL2(OFFSETS, N)
    assert reg.field_of(torch.tensor([0, 2, 3, 4, 5, 8])).tolist() == [0, 0, 1, 1, 2, 2]


def test_bad_offsets_are_refused():
    with pytest.raises(ValueError, match="start at 0"):
        AdaptiveL2([1, 3], N)
    with pytest.raises(ValueError, match="ascend"):
        AdaptiveL2([0, 5, 3], N)


def test_penalty_by_hand():
    model = fm()
    ids, _, mask, _ = rows(1, b=4)
    reg = AdaptiveL2(OFFSETS, N)
    reg.log_lambda.copy_(torch.tensor([[0.1, 0.2, 0.3], [0.01, 0.02, 0.03]]).log())
    v, w = model.embedding.embedding.weight.detach(), model.linear.weight.weight.detach()[:, 0]
    lam_v, lam_w = [0.1, 0.2, 0.3], [0.01, 0.02, 0.03]
    expected = 0.0
    for b in range(4):
        for s in range(3):
            if mask[b, s]:
                i = int(ids[b, s])
                expected += lam_v[s] * float(v[i].square().sum()) + lam_w[s] * float(w[i] ** 2)
    assert reg.penalty(model, ids, mask).item() == pytest.approx(expected / 4, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_gradient_is_the_derivative_of_the_validation_loss_along_the_shrinking_step(optimizer):
    """dL_val/d lambda_g = d/de L_val(theta - e 2 alpha theta) on the validation rows of field g."""
    model = fm().double()  # float64: the finite difference below is exact to rel 1e-6
    opt = build_optimizer(optimizer, model, lr=0.1)
    ids, vals, mask, y = (t.double() if t.is_floating_point() else t for t in rows(2))
    F.mse_loss(model(ids, vals, mask), y).backward()
    opt.step()  # the accumulators exist from here
    vid, vvals, vmask, vy = (t.double() if t.is_floating_point() else t for t in rows(3))
    reg = AdaptiveL2(OFFSETS, N)
    grad = reg.gradient(model, opt, vid, vvals, vmask, vy, lr=0.1)
    assert all(p.grad is None for p in model.parameters())
    tables = (model.embedding.embedding.weight, model.linear.weight.weight)
    touched = torch.unique(vid[vmask > 0])
    for t, table in enumerate(tables):
        acc = opt.state[table]["sum"]
        alpha = 0.1 / (acc.sqrt() + 1e-10)
        alpha = alpha.unsqueeze(1) if alpha.dim() == 1 else alpha
        for field in range(3):
            sel = touched[reg.field_of(touched) == field]
            direction = torch.zeros_like(table)
            direction[sel] = -2 * alpha.expand_as(table)[sel] * table.detach()[sel]
            e = 1e-5
            with torch.no_grad():
                losses = []
                for sign in (1, -1):
                    table.add_(sign * e * direction)
                    losses.append(F.mse_loss(model.eval()(vid, vvals, vmask), vy).item())
                    table.sub_(sign * e * direction)
            assert grad[t, field].item() == pytest.approx((losses[0] - losses[1]) / (2 * e), rel=1e-6, abs=1e-12)
    assert grad.abs().sum() > 0


def test_a_table_before_its_first_step_gives_no_gradient():
    model = fm()
    opt = build_optimizer("adagrad", model, lr=0.1)
    grad = AdaptiveL2(OFFSETS, N).gradient(model, opt, *rows(3), lr=0.1)
    assert torch.equal(grad, torch.zeros(2, 3, dtype=torch.float64))


def test_apply_moves_against_the_gradient_by_at_most_the_step():
    reg = AdaptiveL2(OFFSETS, N, initial=1e-2, step=0.05)
    before = reg.log_lambda.clone()
    # validation loss falls with more shrinkage of field 0 (negative gradient): its strength grows;
    # it rises for field 1: the strength falls; field 2 has no gradient: it stays.
    reg.apply(torch.tensor([[-3.0, 2.0, 0.0], [-1e-6, 1e-9, 0.0]], dtype=torch.float64))
    moved = reg.log_lambda - before
    assert moved[0, 0].item() == pytest.approx(0.05, rel=1e-6)
    assert moved[0, 1].item() == pytest.approx(-0.05, rel=1e-6)
    assert moved[1, 0].item() == pytest.approx(0.05, rel=1e-6)  # normalised: the gradient's scale does not matter
    assert moved[:, 2].abs().max().item() == 0.0


def test_apply_keeps_the_strengths_in_range():
    reg = AdaptiveL2(OFFSETS, N, initial=9.9, step=1.0)
    for _ in range(5):
        reg.apply(torch.full((2, 3), -1.0, dtype=torch.float64))
    assert reg.lambdas().max().item() == pytest.approx(math.exp(LOG_RANGE[1]))


def test_learns_to_shrink_a_field_that_only_fits_noise():
    """Field 2's features carry no signal: the training labels give each of them a random offset
    that the validation labels lack. The learnt strength of field 2 ends above field 0's, whose
    features explain both splits."""
    torch.manual_seed(0)
    n, b = 2048, 64
    g = torch.Generator().manual_seed(5)
    signal = torch.randn(3, generator=g) * 2
    noise = torch.randn(200, generator=g) * 2

    def split(rows_, noisy):
        ids = torch.stack([torch.randint(0, 3, (rows_,), generator=g), torch.randint(3, 5, (rows_,), generator=g),
                           torch.randint(5, 205, (rows_,), generator=g)], 1)
        y = signal[ids[:, 0]] + (noise[ids[:, 2] - 5] if noisy else 0)
        return ids, torch.ones(rows_, 3), torch.ones(rows_, 3), y

    train, val = split(n, True), split(n, False)
    offsets = [0, 3, 5]
    model = build_model("fm", 205, 3, ModelConfig(embedding_dim=4, interaction_dropout=0.0))
    opt = build_optimizer("adagrad", model, lr=0.05)
    reg = AdaptiveL2(offsets, 205, initial=1e-3, step=0.02)
    for epoch in range(3):
        for i in range(0, n, b):
            ids, vals, mask, y = (t[i:i + b] for t in train)
            opt.zero_grad()
            (F.mse_loss(model(ids, vals, mask), y) + reg.penalty(model, ids, mask)).backward()
            opt.step()
            reg.apply(reg.gradient(model, opt, *(t[i:i + b] for t in val), lr=0.05))
    lam_w = reg.lambdas()[1]
    assert lam_w[2] > 10 * lam_w[0]
    assert lam_w[2] > 1e-3  # grew from its start
