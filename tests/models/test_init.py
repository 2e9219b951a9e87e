"""The registry and FM pre-training: build_model, init_from_fm."""
from __future__ import annotations

import pytest
import torch

from afm_dist.models import AFM, FM, HOFM, MODEL_NAMES, DeepCross, ModelConfig, WideDeep, build_model, init_from_fm

SMALL = ModelConfig(embedding_dim=4, attention_factor=3, mlp_sizes=(8, 4), residual_sizes=(6, 5),
                    interaction_dropout=0.0)


@pytest.mark.parametrize("name, cls", [("fm", FM), ("afm", AFM), ("hofm", HOFM), ("wide_deep", WideDeep),
                                       ("deep_cross", DeepCross)])
def test_build_model_by_name(name, cls):
    assert isinstance(build_model(name, 20, 5, SMALL), cls)


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'nfm'"):
        build_model("nfm", 20, 5, SMALL)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_scores_a_batch_and_ignores_padding(make_batch, name):
    ids, vals, mask = make_batch(9, 5, 20, seed=1, dtype=torch.float32)
    torch.manual_seed(0)
    model = build_model(name, 20, 5, SMALL).eval()
    scores = model(ids, vals, mask)
    assert scores.shape == (9,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    noisy = model(ids.masked_fill(~mask, 11), vals.masked_fill(~mask, 2.5), mask)
    torch.testing.assert_close(noisy, scores, rtol=0, atol=0)
    scores.sum().backward()
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_naive_attention_flag_reaches_the_model():
    assert build_model("afm", 20, 5, ModelConfig(naive_attention=True)).attention.naive
    assert not build_model("afm", 20, 5, ModelConfig()).attention.naive


@pytest.mark.parametrize("name", ["afm", "wide_deep", "deep_cross"])
def test_init_from_fm_copies_embeddings_linear_weights_and_bias(name):
    torch.manual_seed(0)
    fm = build_model("fm", 20, 5, SMALL)
    with torch.no_grad():
        fm.linear.weight.weight.normal_()
        fm.linear.bias.fill_(0.75)
    model = build_model(name, 20, 5, SMALL)
    assert not torch.equal(model.embedding.weight, fm.embedding.weight)
    assert init_from_fm(model, fm) is model
    assert torch.equal(model.embedding.weight, fm.embedding.weight)
    assert torch.equal(model.linear.weight.weight, fm.linear.weight.weight)
    assert torch.equal(model.linear.bias, fm.linear.bias)
    # A copy, not a shared tensor: training the model leaves the FM alone.
    with torch.no_grad():
        model.embedding.weight.add_(1.0)
    assert not torch.equal(model.embedding.weight, fm.embedding.weight)


def test_init_from_fm_rejects_mismatched_sizes():
    fm = build_model("fm", 20, 5, SMALL)
    with pytest.raises(ValueError, match="num_features=20.*21"):
        init_from_fm(build_model("afm", 21, 5, SMALL), fm)
    with pytest.raises(ValueError, match="embedding_dim=4.*8"):
        init_from_fm(build_model("afm", 20, 5, ModelConfig(embedding_dim=8, attention_factor=3)), fm)
    with pytest.raises(TypeError, match="HOFM"):
        init_from_fm(build_model("hofm", 20, 5, SMALL), fm)
    with pytest.raises(TypeError, match="must be an FM"):
        init_from_fm(build_model("afm", 20, 5, SMALL), build_model("afm", 20, 5, SMALL))
