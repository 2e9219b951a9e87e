"""AFM: eq. 2-6 against a brute-force reference, its masking, the memory-efficient path, a fit."""
from __future__ import annotations

from itertools import combinations

import pytest
import torch

from afm_dist.models import AFM, FM, init_from_fm
from afm_dist.models.attention import AttentionPooling, ScratchPool, _EfficientAttentionPooling

N, M, K, T = 20, 6, 5, 3


def _afm(naive: bool = False, chunk_elements: int = 1 << 22, seed: int = 0, **kw) -> AFM:
    torch.manual_seed(seed)
    kw.setdefault("attention_scale", "one")  # eq. 5 as printed, random h: the reference below
    model = AFM(N, M, K, T, init_std=0.5, naive=naive, chunk_elements=chunk_elements, **kw).double().eval()
    torch.nn.init.normal_(model.linear.weight.weight)
    torch.nn.init.normal_(model.p)
    return model


def _reference(model: AFM, ids, vals, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2-6 one row and one pair at a time, the softmax over the row's real pairs only."""
    v, w = model.embedding.weight, model.linear.weight.weight[:, 0]
    att = model.attention
    rows, cols = model.pair_index()
    scores, attention = [], torch.zeros(ids.shape[0], rows.numel(), dtype=torch.float64)
    for b in range(ids.shape[0]):
        real = [i for i in range(M) if mask[b, i]]
        y = model.linear.bias[0] + sum(w[ids[b, i]] * vals[b, i] for i in real)
        pairs = list(combinations(real, 2))
        if pairs:
            q = torch.stack([v[ids[b, i]] * v[ids[b, j]] * vals[b, i] * vals[b, j] for i, j in pairs])  # (R, k)
            logits = torch.relu(q @ att.weight.t() + att.bias) @ att.h  # (R,)
            a = torch.exp(logits) / torch.exp(logits).sum()
            y = y + model.p @ (a[:, None] * q).sum(0)
            for (i, j), a_ij in zip(pairs, a):
                attention[b, ((rows == i) & (cols == j)).nonzero().item()] = a_ij
        scores.append(y)
    return torch.stack(scores), attention


@pytest.mark.parametrize("naive", [True, False])
def test_afm_equals_equations_2_to_6(make_batch, naive):
    ids, vals, mask = make_batch(10, M, N, seed=1)
    model = _afm(naive)
    expected_scores, expected_attention = _reference(model, ids, vals, mask)
    scores, attention = model(ids, vals, mask, return_attention=True)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention, expected_attention, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("naive", [True, False])
def test_pairs_scale_is_eq_5_times_the_number_of_real_pairs(make_batch, naive):
    """attention_scale "pairs": weights |R_x| a_ij, so the pair term is |R_x| times eq. 5's."""
    ids, vals, mask = make_batch(10, M, N, seed=4)
    one = _afm(naive, seed=5)
    pairs = _afm(naive, seed=5, attention_scale="pairs")
    with torch.no_grad():
        pairs.attention.h.copy_(one.attention.h)  # "pairs" starts h at 0; the same network as "one" here
    real = mask.sum(1)
    num_pairs = (real * (real - 1) // 2).to(torch.float64)
    linear = one.linear(ids, vals * mask)
    expected, attention = _reference(one, ids, vals, mask)
    scores, got_attention = pairs(ids, vals, mask, return_attention=True)
    torch.testing.assert_close(scores - linear, num_pairs * (expected - linear), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_attention, attention, rtol=1e-12, atol=1e-12)  # a_ij still sums to 1


@pytest.mark.parametrize("naive", [True, False])
def test_afm_initialised_from_fm_starts_as_that_fm(make_batch, naive):
    """The default AFM (h = 0 at construction, weights |R_x| a_ij, p = 1) initialised from an FM
    gives that FM's scores before any step, padded slots and rows without pairs included."""
    ids, vals, mask = make_batch(16, M, N, seed=6)
    torch.manual_seed(7)
    fm = FM(N, K, init_std=0.5).double().eval()
    torch.nn.init.normal_(fm.linear.weight.weight)
    afm = init_from_fm(AFM(N, M, K, T, naive=naive).double().eval(), fm)
    assert torch.all(afm.attention.h == 0)
    torch.testing.assert_close(afm(ids, vals, mask), fm(ids, vals, mask), rtol=1e-12, atol=1e-12)
    # Not the FM by construction: the paper's eq. 5 (weights summing to 1) starts elsewhere.
    eq5 = init_from_fm(AFM(N, M, K, T, naive=naive, attention_scale="one").double().eval(), fm)
    assert not torch.allclose(eq5(ids, vals, mask), fm(ids, vals, mask))


def test_unknown_attention_scale_is_refused():
    with pytest.raises(ValueError, match="attention_scale 'sum'"):
        AFM(N, M, K, T, attention_scale="sum")


@pytest.mark.parametrize("scale", ["pairs", "one"])
@pytest.mark.parametrize("naive", [True, False])
def test_pair_terms_split_the_scores_pair_by_pair(naive, scale):
    """pair_terms: forward's scores and attention, and p^T (v_i * v_j) x_i x_j of every pair from the
    table and p directly; scores = linear part + sum_P attention * interaction (eq. 5)."""
    ids = torch.tensor([[1, 4, 7, 9], [2, 5, 0, 8], [3, 6, 0, 0]])
    vals = torch.tensor([[1.0, 0.5, -0.25, 1.5], [0.75, 1.0, 0.0, -0.5], [1.25, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, True, False, True], [True, False, False, False]])
    vals[1, 2] = 0.8  # a value under a padded slot: the mask must drop it
    torch.manual_seed(3)
    model = AFM(10, 4, K, T, init_std=0.5, naive=naive, attention_scale=scale).double().eval()
    torch.nn.init.normal_(model.linear.weight.weight)
    torch.nn.init.normal_(model.p)
    torch.nn.init.normal_(model.attention.h)  # non-uniform attention
    with torch.no_grad():
        scores, attention, interaction = model.pair_terms(ids, vals, mask)
        forward_scores, forward_attention = model(ids, vals, mask, return_attention=True)
    v, w = model.embedding.weight.detach(), model.linear.weight.weight.detach()[:, 0]
    pairs = list(combinations(range(4), 2))  # torch.triu_indices(4, 4, 1) order
    expected = torch.zeros(3, len(pairs), dtype=torch.float64)
    for b in range(3):
        for n, (i, j) in enumerate(pairs):
            if mask[b, i] and mask[b, j]:
                expected[b, n] = model.p.detach() @ (v[ids[b, i]] * v[ids[b, j]]) * vals[b, i] * vals[b, j]
                if scale == "pairs":  # s_ij carries |R_x|
                    real = int(mask[b].sum())
                    expected[b, n] *= real * (real - 1) // 2
    assert interaction.shape == attention.shape == (3, 6) and scores.shape == (3,)
    torch.testing.assert_close(interaction, expected, rtol=1e-12, atol=1e-12)
    assert torch.all(interaction[1, [1, 3, 5]] == 0.0) and torch.all(interaction[2] == 0.0)  # padded slot 2; one slot
    torch.testing.assert_close(scores, forward_scores, rtol=0, atol=0)
    torch.testing.assert_close(attention, forward_attention, rtol=0, atol=0)
    linear = model.linear.bias.detach() + (w[ids] * vals * mask).sum(1)  # (B,)
    torch.testing.assert_close(scores, linear + (attention * interaction).sum(1), rtol=1e-12, atol=1e-12)


def test_pair_index_is_triu_order():
    rows, cols = _afm().pair_index()
    expected = torch.triu_indices(M, M, 1)
    assert torch.equal(rows, expected[0]) and torch.equal(cols, expected[1])
    assert rows.numel() == M * (M - 1) // 2


def test_uniform_attention_and_unit_p_is_fm_over_number_of_pairs(make_batch):
    ids, vals, mask = make_batch(12, M, N, seed=2)
    fm = FM(N, K, init_std=0.5).double().eval()
    torch.nn.init.normal_(fm.linear.weight.weight)
    afm = init_from_fm(_afm(), fm)
    with torch.no_grad():
        afm.attention.h.zero_()  # every logit 0: the softmax is uniform over the row's real pairs
        afm.p.fill_(1.0)
    linear = fm.linear(ids, vals)
    real = mask.sum(1)
    num_pairs = (real * (real - 1) // 2).to(torch.float64)
    fm_pair_term = fm(ids, vals, mask) - linear
    expected = torch.where(num_pairs > 0, fm_pair_term / num_pairs.clamp_min(1), 0.0)
    torch.testing.assert_close(afm(ids, vals, mask) - linear, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("naive", [True, False])
def test_attention_masking_and_rows_without_pairs(make_batch, naive):
    ids, vals, mask = make_batch(16, M, N, seed=3)  # rows 0, 1, 2 have 0, 1, 2 real slots
    model = _afm(naive)
    scores, attention = model(ids, vals, mask, return_attention=True)
    rows, cols = model.pair_index()
    real_pair = mask[:, rows] & mask[:, cols]  # (B, P)
    has_pair = real_pair.any(1)
    assert has_pair.tolist()[:3] == [False, False, True]
    torch.testing.assert_close(attention.sum(1)[has_pair], torch.ones(int(has_pair.sum()), dtype=torch.float64))
    assert torch.all(attention[~real_pair] == 0.0)
    assert torch.all(attention[0] == 0.0) and torch.all(attention[1] == 0.0)
    assert torch.isfinite(scores).all()
    # The pair term of a row without pairs is exactly 0: the score is the linear part.
    torch.testing.assert_close(scores[:2], model.linear(ids, vals * mask)[:2], rtol=0, atol=0)
    scores.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _grads(model: AFM, ids, vals, mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    scores, attention = model(ids, vals, mask, return_attention=True)
    # Weight the rows, and use the attention too, so that every gradient path is exercised.
    row_weights = torch.linspace(-1, 2, len(scores), dtype=scores.dtype)
    pair_weights = torch.linspace(0.5, -0.5, attention.numel(), dtype=scores.dtype).view_as(attention)
    ((scores * row_weights).sum() + (attention * pair_weights).sum()).backward()
    return torch.cat([scores, attention.flatten()]), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk_elements", [1 << 22, 2 * 5 * 16, 1])  # one chunk, several chunks, one pair each
def test_memory_efficient_path_equals_naive(make_batch, chunk_elements):
    ids, vals, mask = make_batch(16, M, N, seed=4)
    naive_out, naive_grads = _grads(_afm(naive=True), ids, vals, mask)
    fast = _afm(naive=False, chunk_elements=chunk_elements)
    fast_out, fast_grads = _grads(fast, ids, vals, mask)
    torch.testing.assert_close(fast_out, naive_out, rtol=1e-12, atol=1e-14)
    assert naive_grads.keys() == fast_grads.keys()
    for name in naive_grads:
        torch.testing.assert_close(fast_grads[name], naive_grads[name], rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 2 * 5 * 16, 1])
def test_stop_gradient_leaves_the_scores_and_the_attention_networks_gradient_and_drops_the_logits_path_into_e(
        make_batch, chunk_elements):
    ids, vals, mask = make_batch(16, M, N, seed=4)
    plain_out, plain = _grads(_afm(naive=True), ids, vals, mask)
    naive_out, naive = _grads(_afm(naive=True, attention_stop_gradient=True), ids, vals, mask)
    fast_out, fast = _grads(_afm(naive=False, chunk_elements=chunk_elements, attention_stop_gradient=True),
                            ids, vals, mask)
    # the same scores and attention, and the same gradient for W, b, h, p and the linear part
    torch.testing.assert_close(naive_out, plain_out, rtol=0, atol=0)
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-12, atol=1e-14)
    for name in plain:
        if name != "embedding.embedding.weight":
            torch.testing.assert_close(naive[name], plain[name], rtol=1e-12, atol=1e-14, msg=name)
            torch.testing.assert_close(fast[name], plain[name], rtol=1e-10, atol=1e-13, msg=name)
    # the embeddings' gradient: by hand, the row's pair sum with a_ij held constant
    model = _afm(naive=True)
    a = model(ids, vals, mask, return_attention=True)[1].detach()  # (B, P)
    xs = vals * mask
    e = model.embedding(ids, xs)  # (B, M, k)
    rows, cols = model.pair_index()
    row_weights = torch.linspace(-1, 2, len(ids), dtype=torch.float64)
    pooled = (a.unsqueeze(-1) * e[:, rows] * e[:, cols]).sum(dim=1)  # (B, k)
    ((pooled @ model.p) * row_weights).sum().backward()
    want = model.embedding.embedding.weight.grad
    torch.testing.assert_close(naive["embedding.embedding.weight"], want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast["embedding.embedding.weight"], want, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(plain["embedding.embedding.weight"], want)  # without it the logits add to it


@pytest.mark.parametrize("chunk_elements", [1 << 22, 2 * 5 * 16])
def test_stop_gradient_with_a_loss_on_the_attention_alone(make_batch, chunk_elements):
    """A loss on the attention alone, sum a log a (its derivative is NaN where a = 0, at padded
    pairs): the embeddings get no gradient at all, the attention network a finite one, both paths."""
    ids, vals, mask = make_batch(16, M, N, seed=6)
    assert not mask.all()  # padded slots: pairs of weight 0
    for naive in (True, False):
        model = _afm(naive=naive, chunk_elements=chunk_elements, attention_stop_gradient=True)
        _, attention = model(ids, vals, mask, return_attention=True)
        assert (attention == 0).any()
        torch.special.xlogy(attention, attention).sum().backward()
        grad = model.embedding.embedding.weight.grad  # None on the naive path: no path reaches it
        assert grad is None or torch.equal(grad, torch.zeros_like(grad))
        assert naive or grad is not None
        assert torch.isfinite(model.attention.weight.grad).all() and model.attention.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_attention_dropout_same_on_both_paths(make_batch, stop_gradient):
    ids, vals, mask = make_batch(16, M, N, seed=8)
    outs = []
    for naive in (True, False):
        model = _afm(naive=naive, attention_dropout=0.5, attention_stop_gradient=stop_gradient).train()
        torch.manual_seed(1)  # the same dropout mask on both paths
        outs.append(_grads(model, ids, vals, mask))
    (naive_out, naive_grads), (fast_out, fast_grads) = outs
    torch.testing.assert_close(fast_out, naive_out, rtol=1e-12, atol=1e-14)
    for name in naive_grads:
        torch.testing.assert_close(fast_grads[name], naive_grads[name], rtol=1e-10, atol=1e-13, msg=name)
    model.eval()
    assert not torch.equal(model(ids, vals, mask), fast_out[:16])  # dropout was on in training


@pytest.mark.parametrize("stop_gradient", [False, True])
@pytest.mark.parametrize("chunk_elements", [1 << 22, 8 * K * 4])
def test_backward_twice_through_the_same_graph(make_batch, chunk_elements, stop_gradient):
    """The first backward overwrites what forward kept; a second (retain_graph) recomputes it."""
    ids, vals, mask = make_batch(8, M, N, seed=9)
    model = _afm(chunk_elements=chunk_elements, attention_stop_gradient=stop_gradient)
    scores = model(ids, vals, mask)
    scores.sum().backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    scores.sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[name], msg=name)


def test_scratch_is_reused_across_steps_and_graphs_stay_apart(make_batch):
    """Steps reuse the pool's tensors; two graphs alive at once (gradient accumulation) get their own,
    and inference in between (inference tensors) changes nothing."""
    batches = [make_batch(8, M, N, seed=s) for s in (10, 11)]
    naive, fast = _afm(naive=True), _afm()
    for model in (naive, fast):  # two forwards, then both backwards
        losses = [model(*batch).square().sum() for batch in batches]
        sum(losses).backward()
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, dict(naive.named_parameters())[name].grad, rtol=1e-10, atol=1e-12,
                                   msg=name)
    pool = fast.attention.scratch

    def free() -> set[int]:  # ids of the free tensors that training can use (not inference tensors)
        return {id(t) for key, ts in pool._free.items() if not key[-1] for t in ts}

    before = free()
    assert len(before) == 4  # each graph's pair products and hidden layer, handed back by its backward
    with torch.inference_mode():
        inferred = fast(*batches[0])
    fast.zero_grad()
    loss = fast(*batches[0]).square().sum()
    assert len(free()) == 2  # the step took two of them
    loss.backward()
    assert free() == before  # and gave them back
    torch.testing.assert_close(inferred, fast(*batches[0]).detach(), rtol=0, atol=0)


def test_threads_sharing_a_model_get_their_own_scratch(make_batch):
    """Inference from several threads at once (torch releases the GIL inside ops) gives each call's
    own numbers: no two calls write into the same pooled tensor."""
    from concurrent.futures import ThreadPoolExecutor

    model = _afm()
    batches = [make_batch(64, M, N, seed=20 + s) for s in range(8)]
    with torch.no_grad():
        expected = [model(*batch) for batch in batches]

    def score(batch):
        with torch.no_grad():
            return [model(*batch) for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(score, batches))
    for got, want in zip(results, expected):
        for scores in got:
            torch.testing.assert_close(scores, want, rtol=0, atol=0)


def test_modules_copy_without_their_scratch(make_batch):
    import copy
    import pickle

    model = _afm()
    model(*make_batch(8, M, N, seed=12)).sum().backward()
    assert model.attention.scratch._free
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(clone.attention.scratch, ScratchPool) and not clone.attention.scratch._free


def test_memory_efficient_path_equals_naive_in_float32(make_batch):
    ids, vals, mask = make_batch(64, M, N, seed=5, dtype=torch.float32)
    naive, fast = _afm(naive=True).float(), _afm(naive=False, chunk_elements=64 * 5 * 7).float()
    naive_out, naive_grads = _grads(naive, ids, vals, mask)
    fast_out, fast_grads = _grads(fast, ids, vals, mask)
    torch.testing.assert_close(fast_out, naive_out, rtol=1e-5, atol=1e-6)
    for name in naive_grads:
        torch.testing.assert_close(fast_grads[name], naive_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("chunk, with_keep", [
    (100, True),  # one chunk (activations kept), attention dropout
    (100, False),
    (4, False),  # several chunks, recomputed in backward, runs cut by chunk edges
    (1, True),  # a pair per chunk
])
def test_gradcheck_efficient_attention_pooling(chunk, with_keep):
    torch.manual_seed(0)
    e = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rows, cols = torch.triu_indices(5, 5, 1)
    mask = torch.tensor([[True] * 5, [True, False, True, True, False], [False, False, False, True, False]])
    valid = mask[:, rows] & mask[:, cols]  # rows with 10, 3 and 0 real pairs
    keep = torch.rand(3, 10, dtype=torch.float64) * 2 if with_keep else None  # stands for a dropout mask
    pool = ScratchPool()  # gradcheck runs backward many times over one graph: reuse must not show

    def pooling(*x):
        return _EfficientAttentionPooling.apply(x[0], valid, keep, *x[1:], rows, cols, chunk, pool)

    # The full Jacobian once; the other cases in fast mode (random projections of it).
    assert torch.autograd.gradcheck(pooling, (e, weight, bias, h), fast_mode=(chunk, with_keep) != (100, True))


@pytest.mark.parametrize("naive", [True, False])
def test_gradcheck_afm(make_batch, naive):
    ids, vals, mask = make_batch(6, 4, 10, seed=6)
    torch.manual_seed(0)
    model = AFM(10, 4, 3, 2, init_std=0.5, naive=naive, chunk_elements=6 * 3 * 2).double().eval()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def scores(*values):
        return torch.func.functional_call(model, dict(zip(names, values)), (ids, vals, mask))

    assert torch.autograd.gradcheck(scores, params)


def test_l2_penalty_is_squared_norm_of_w():
    model = _afm()
    torch.testing.assert_close(model.l2_penalty(), (model.attention.weight ** 2).sum())
    model.l2_penalty().backward()
    torch.testing.assert_close(model.attention.weight.grad, 2 * model.attention.weight)


def test_dropout_on_the_pooled_vector_only(make_batch):
    ids, vals, mask = make_batch(8, M, N, seed=7)
    model = _afm(dropout=1.0).train()
    torch.testing.assert_close(model(ids, vals, mask), model.linear(ids, vals * mask), rtol=0, atol=0)


def test_parameter_count_by_hand():
    n, k, t = 30, 8, 4
    model = AFM(n, 7, k, t)
    assert model.num_parameters() == n * k + n + 1 + t * k + t + t + k  # v, w, w0, W, b, h, p


def test_attention_pooling_rejects_wrong_number_of_slots():
    with pytest.raises(ValueError, match="built for 4 slots"):
        AttentionPooling(4, 3, 2)(torch.zeros(2, 5, 3), torch.ones(2, 5, dtype=torch.bool))


def test_fits_a_planted_field_interaction():
    """Target = T[field 0, field 1] only (zero-mean rows and columns, so no linear part can help):
    a small AFM reaches near-zero training MSE and puts its largest mean attention on that pair."""
    g = torch.Generator().manual_seed(0)
    fields, vocab = 4, 5
    table = torch.randn(vocab, vocab, generator=g)
    table = table - table.mean(0, keepdim=True) - table.mean(1, keepdim=True) + table.mean()
    values = torch.randint(0, vocab, (256, fields), generator=g)
    ids = values + torch.arange(fields) * vocab  # field f's values are features f*vocab .. f*vocab+4
    vals, mask = torch.ones(256, fields), torch.ones(256, fields, dtype=torch.bool)
    target = table[values[:, 0], values[:, 1]]
    torch.manual_seed(0)
    model = AFM(fields * vocab, fields, 8, 8, init_std=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(120):  # seeds 0-5 all pass by step 100
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(ids, vals, mask), target)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        scores, attention = model(ids, vals, mask, return_attention=True)
    mse = torch.nn.functional.mse_loss(scores, target).item()
    assert mse < 0.01 * target.var().item(), mse
    rows, cols = model.pair_index()
    planted = ((rows == 0) & (cols == 1)).nonzero().item()
    assert attention.mean(0).argmax().item() == planted, attention.mean(0)
