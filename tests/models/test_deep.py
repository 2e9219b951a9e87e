"""Wide&Deep and DeepCross: their numbers against the formulas, and their sizes."""
from __future__ import annotations

import torch

from afm_dist.models import DeepCross, ModelConfig, WideDeep


def test_wide_deep_is_linear_plus_mlp_of_stacked_embeddings(make_batch):
    ids, vals, mask = make_batch(7, 4, 15, seed=1)
    torch.manual_seed(0)
    model = WideDeep(15, 4, 3, (6, 5)).double().eval()
    torch.nn.init.normal_(model.linear.weight.weight)
    x = (model.embedding.weight[ids] * (vals * mask)[..., None]).flatten(1)  # (B, M k)
    first, second, out = model.mlp.net[0], model.mlp.net[3], model.mlp.net[6]
    deep = out(torch.relu(second(torch.relu(first(x))))).squeeze(-1)
    torch.testing.assert_close(model(ids, vals, mask), model.linear(ids, vals * mask) + deep, rtol=1e-12, atol=1e-12)


def test_deep_cross_residual_units(make_batch):
    ids, vals, mask = make_batch(7, 4, 15, seed=2)
    torch.manual_seed(0)
    model = DeepCross(15, 4, 3, (6, 5)).double().eval()
    x = (model.embedding.weight[ids] * (vals * mask)[..., None]).flatten(1)  # (B, M k)
    for unit in model.residual:
        inner, outer = unit[0].inner, unit[0].outer
        x = x + torch.relu(x @ inner.weight.t() + inner.bias) @ outer.weight.t() + outer.bias
    expected = model.linear(ids, vals * mask) + model.output(x).squeeze(-1)
    torch.testing.assert_close(model(ids, vals, mask), expected, rtol=1e-12, atol=1e-12)


def test_parameter_counts_by_hand():
    n, m, k = 30, 5, 8
    d = m * k
    linear = n + 1  # w, w0
    cfg = ModelConfig()
    wide_deep = WideDeep(n, m, k, cfg.mlp_sizes)  # 1024-512-256
    expected = n * k + linear + (d * 1024 + 1024) + (1024 * 512 + 512) + (512 * 256 + 256) + (256 + 1)
    assert wide_deep.num_parameters() == expected
    deep_cross = DeepCross(n, m, k, cfg.residual_sizes)  # 512, 512, 256, 128, 64
    units = sum(d * h + h + h * d + d for h in (512, 512, 256, 128, 64))
    assert deep_cross.num_parameters() == n * k + linear + units + d + 1
