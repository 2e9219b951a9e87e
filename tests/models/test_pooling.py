"""Pooled fields (issue 26's bag fields): a field's slots enter the pair layer as one vector."""
from __future__ import annotations

import copy
from itertools import combinations

import pytest
import torch

from afm_dist.models import FM, ModelConfig, build_model, check_layout, init_from_fm
from afm_dist.models.layers import FeaturesEmbedding, Lookup, SlotPooling

N, K = 30, 4
# user (1 slot), item (1 slot), a bag of 3 slots pooled, a context field (1 slot): M = 6, G = 4.
GROUPS = (1, 1, 3, 1)
M = sum(GROUPS)


def _batch():
    ids = torch.tensor([[1, 5, 10, 11, 12, 20], [2, 6, 13, 0, 0, 21], [3, 7, 0, 0, 0, 22]])
    vals = torch.tensor([[1.0, 1.0, 0.5, 0.5, 0.25, 1.0], [1.0, 1.0, 0.7, 0.0, 0.0, 1.0],
                         [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    mask = ids.ne(0) | torch.tensor([[False] * 2 + [False] * 3 + [False]] * 3)
    mask[:, [0, 1, 5]] = True
    return ids, vals, mask


def _fm(groups, seed=0) -> FM:
    torch.manual_seed(seed)
    model = FM(N, K, init_std=0.5, slot_groups=groups).double().eval()
    torch.nn.init.normal_(model.linear.weight.weight)
    return model


def test_slot_pooling_sums_a_fields_slots_and_marks_an_empty_bag_padding():
    torch.manual_seed(0)
    table = FeaturesEmbedding(N, 2, init_std=1.0).double()
    ids = torch.tensor([[1, 2, 3, 3, 4, 5], [6, 7, 0, 0, 0, 8]])  # row 0's bag repeats id 3
    xs = torch.tensor([[1.0, 1.0, 0.5, 0.25, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False, True], [True, True, False, False, False, False]])
    pooled, real = SlotPooling(GROUPS)(table, ids, xs, mask)
    v = table.weight
    assert pooled.shape == (2, 4, 2)
    assert torch.allclose(pooled[0, 2], 0.75 * v[3], rtol=1e-12)  # 0.5 v_3 + 0.25 v_3 + 0 v_4
    assert torch.equal(pooled[0, 0], v[1]) and torch.equal(pooled[0, 3], v[5])
    assert torch.equal(pooled[1, 2], torch.zeros(2, dtype=torch.float64)) and torch.equal(pooled[1, 3], 0 * v[8])
    assert real.tolist() == [[True, True, True, True], [True, True, False, False]]
    same, same_mask = SlotPooling(None)(table, ids, xs, mask)  # no pooled field: the slots themselves
    assert torch.equal(same, table(ids, xs)) and same_mask is mask
    # The sparse gradient of the table holds each of the bag's distinct ids once.
    sparse = FeaturesEmbedding(N, 2, sparse=True)
    SlotPooling(GROUPS)(sparse, ids, xs.float(), mask)[0].sum().backward()
    rows = sparse.weight.grad._indices()[0].tolist()
    assert sorted(rows) == sorted(set(rows)) and {3, 4} <= set(rows)


@pytest.mark.parametrize("name", ["fm", "afm", "hofm", "wide_deep"])
def test_every_table_is_read_once_per_distinct_id_with_the_scores_and_gradients_of_a_read_per_slot(name, monkeypatch):
    """A model's tables are read at the batch's distinct ids (``Lookup``): a sparse table's gradient
    has one row per distinct id, and the scores and the summed gradient are those of reading every
    slot on its own (``table(ids, xs)``, ``linear(ids, xs)``)."""
    ids = torch.tensor([[1, 5, 7], [1, 6, 7], [2, 5, 7], [1, 5, 0]])  # ids repeat across rows
    vals = torch.tensor([[1.0, 0.5, 1.0], [1.0, 1.0, 2.0], [1.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    mask = torch.tensor([[True] * 3] * 3 + [[True, True, False]])
    cfg = ModelConfig(embedding_dim=K, attention_factor=K, interaction_dropout=0.0, sparse_embeddings=True)
    torch.manual_seed(3)
    model = build_model(name, N, 3, cfg).eval()
    scores = model(ids, vals, mask)
    scores.sum().backward()
    lookup = Lookup.of(ids)
    assert lookup.unique.tolist() == [0, 1, 2, 5, 6, 7] and torch.equal(lookup.unique[lookup.inverse], ids)
    for table in (model.embedding.weight, model.linear.weight.weight):
        rows = table.grad._indices()[0]
        assert rows.tolist() == lookup.unique.tolist()  # each distinct id once, not 12 rows
    # The same model reading every slot on its own (a lookup whose "distinct" ids are the slots).
    per_slot = copy.deepcopy(model)
    per_slot.zero_grad()
    monkeypatch.setattr(Lookup, "of", classmethod(lambda cls, i: cls(i.reshape(-1), torch.arange(i.numel()).view_as(i))))
    again = per_slot(ids, vals, mask)
    again.sum().backward()
    assert per_slot.embedding.weight.grad._indices().shape[1] == ids.numel()  # 12 rows, one a slot
    torch.testing.assert_close(again, scores, rtol=1e-6, atol=1e-7)
    for mine, theirs in ((model.embedding.weight, per_slot.embedding.weight),
                         (model.linear.weight.weight, per_slot.linear.weight.weight)):
        torch.testing.assert_close(mine.grad.to_dense(), theirs.grad.to_dense(), rtol=1e-5, atol=1e-7)


def test_a_table_that_changes_its_rows_changes_every_slot_and_bag_of_the_pair_layer():
    """``FeaturesEmbedding.rows`` is what the slots and the pooled fields read (a subclass that
    offsets the rows, as experiments/regularise.py's field means, changes both)."""
    class Offset(FeaturesEmbedding):
        def rows(self, ids):
            return self.embedding(ids) + 1.0
    torch.manual_seed(0)
    plain, offset = FeaturesEmbedding(N, 2).double(), Offset(N, 2).double()
    offset.load_state_dict(plain.state_dict())
    ids, vals, mask = _batch()
    xs = vals * mask
    for groups in (GROUPS, None):
        a, _ = SlotPooling(groups)(plain, ids, xs, mask, Lookup.of(ids))
        b, _ = SlotPooling(groups)(offset, ids, xs, mask, Lookup.of(ids))
        # each input moves by the sum of its slots' values (1 per unit of x)
        width = GROUPS if groups else (1,) * M
        sums = torch.stack([xs[:, s:s + w].sum(1) for s, w in zip([sum(width[:i]) for i in range(len(width))], width)], 1)
        torch.testing.assert_close(b - a, sums.unsqueeze(-1).expand_as(a))


def test_fm_with_a_pooled_field_pairs_the_bag_with_every_other_field_but_not_with_itself():
    ids, vals, mask = _batch()
    model = _fm(GROUPS)
    v, w = model.embedding.weight, model.linear.weight.weight[:, 0]
    for b in range(ids.shape[0]):
        real = [i for i in range(M) if mask[b, i]]
        e = {i: v[ids[b, i]] * vals[b, i] for i in real}
        y = model.linear.bias[0] + sum(w[ids[b, i]] * vals[b, i] for i in real)
        bag = {2, 3, 4}
        y = y + sum((e[i] * e[j]).sum() for i, j in combinations(real, 2) if not (i in bag and j in bag))
        assert model(ids, vals, mask)[b].item() == pytest.approx(y.item(), rel=1e-12)
    # Without pooling the within-bag pairs are there: row 0's differ by them.
    unpooled = _fm(None)
    e0 = [v[ids[0, i]] * vals[0, i] for i in (2, 3, 4)]
    within = sum((a * b).sum() for a, b in combinations(e0, 2))
    assert (unpooled(ids, vals, mask)[0] - model(ids, vals, mask)[0]).item() == pytest.approx(within.item())
    assert within.abs().item() > 1e-3


def test_afm_with_a_pooled_field_weighs_pairs_of_fields_and_starts_as_its_fm():
    ids, vals, mask = _batch()
    cfg = ModelConfig(embedding_dim=K, attention_factor=3, interaction_dropout=0.0, init_std=0.5,
                      sparse_embeddings=False)
    fm = _fm(GROUPS, seed=1)
    afm = init_from_fm(build_model("afm", N, M, cfg, GROUPS).double().eval(), fm)
    scores, attention = afm(ids, vals, mask, return_attention=True)
    assert attention.shape == (3, 6)  # G = 4 inputs: 6 pairs, not M = 6 slots' 15
    # Rows 0 and 1 have 4 real inputs (6 pairs), row 2 an empty bag (3 pairs): uniform attention.
    assert attention.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert (attention[2] > 0).sum().item() == 3
    assert torch.allclose(scores, fm(ids, vals, mask), rtol=1e-12, atol=1e-12)  # epoch 0 is the FM
    # The explanation's pair terms add up to the score with pooled inputs too.
    s, a, inter = afm.pair_terms(ids, vals, mask)
    assert torch.allclose(s, afm.linear(ids, vals * mask) + (a * inter).sum(1), rtol=1e-10)


@pytest.mark.parametrize("name", ["hofm", "wide_deep", "deep_cross"])
def test_other_models_take_a_pooled_field_as_one_input(name):
    ids, vals, mask = _batch()
    cfg = ModelConfig(embedding_dim=K, mlp_sizes=(8,), residual_sizes=(8,), sparse_embeddings=False)
    model = build_model(name, N, M, cfg, GROUPS).double().eval()
    out = model(ids, vals, mask)
    assert out.shape == (3,) and torch.isfinite(out).all()
    # A change to a padded bag slot's id (value 0) changes nothing; one to a real bag value does.
    ids2 = ids.clone()
    ids2[1, 3] = 29
    assert torch.equal(model(ids2, vals, mask), out)
    ids2[0, 3] = 29
    assert not torch.equal(model(ids2, vals, mask)[0], out[0])


def test_a_layout_whose_fields_pool_into_one_input_is_refused_for_afm():
    check_layout("afm", N, 3, (1, 2))
    with pytest.raises(ValueError, match="at least 2 inputs"):
        check_layout("afm", N, 3, (3,))
    with pytest.raises(ValueError, match="do not cover"):
        check_layout("fm", N, 4, (1, 2))


def test_feature_penalty_with_a_pooled_field_counts_every_real_slot_once():
    ids, vals, mask = _batch()
    ids = ids.clone()
    ids[0, 3] = ids[1, 2] = 10  # an id repeated within a bag and across rows
    model = _fm(GROUPS)
    emb, lin = model.feature_penalty(ids, mask)
    v, w = model.embedding.weight, model.linear.weight.weight[:, 0]
    m = mask.double()
    assert emb.item() == pytest.approx((((v[ids] ** 2).sum(-1) * m).sum(1).mean()).item(), rel=1e-12)
    assert lin.item() == pytest.approx(((w[ids] ** 2 * m).sum(1).mean()).item(), rel=1e-12)


@pytest.mark.parametrize("groups", [GROUPS, None])
def test_feature_penalty_weighs_each_occurrence_by_its_rows_weight(groups):
    """row_weight[i] multiplies every occurrence of row i (the smoothed weighting of
    experiments/regularise.py --smooth), on the pooled path and the slot path alike."""
    ids, vals, mask = _batch()
    ids = ids.clone()
    ids[0, 3] = ids[1, 2] = 10
    model = _fm(groups) if groups is not None else _fm(tuple([1] * ids.shape[1]))
    weight = torch.linspace(0.5, 3.0, N, dtype=model.embedding.weight.dtype)
    emb, lin = model.feature_penalty(ids, mask, weight)
    v, w = model.embedding.weight, model.linear.weight.weight[:, 0]
    m = mask.to(weight.dtype) * weight[ids]
    assert emb.item() == pytest.approx((((v[ids] ** 2).sum(-1) * m).sum(1).mean()).item(), rel=1e-12)
    assert lin.item() == pytest.approx(((w[ids] ** 2 * m).sum(1).mean()).item(), rel=1e-12)
    plain = model.feature_penalty(ids, mask)
    assert emb.item() != pytest.approx(plain[0].item(), rel=1e-3)  # the weights changed something
