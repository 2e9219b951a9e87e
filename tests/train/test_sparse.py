"""Large feature tables: a step reads and updates only its batch's rows, the sparse path gives the
dense path's parameters, and row-wise Adagrad keeps one accumulator per row."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from afm_dist.models import MODEL_NAMES, ModelConfig, build_model
from afm_dist.training.checkpoint import CHECKPOINT, load_checkpoint
from afm_dist.training.optimizers import RowWiseAdagrad, build_optimizer, feature_tables
from tests.conftest import run_horovod
from tests.train.test_train import check, metrics, train_args

N, M = 500, 5


def batch(seed: int, rows: int = 32, high: int = N):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, high, (rows, M), generator=g), torch.rand(rows, M, generator=g) + 0.5,
            torch.ones(rows, M, dtype=torch.bool), torch.randn(rows, generator=g))


def pair(name: str):
    config = {s: ModelConfig(embedding_dim=8, attention_factor=8, interaction_dropout=0.0, sparse_embeddings=s)
              for s in (False, True)}
    torch.manual_seed(1)
    dense = build_model(name, N, M, config[False])
    sparse = build_model(name, N, M, config[True])
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def step(model, optimizer, data) -> None:
    ids, vals, mask, y = data
    optimizer.zero_grad()
    F.mse_loss(model(ids, vals, mask), y).backward()
    optimizer.step()


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_step_sparse_equals_dense(name, optimizer):
    dense, sparse = pair(name)
    od, osp = build_optimizer(optimizer, dense, 0.05), build_optimizer(optimizer, sparse, 0.05)
    data = batch(3)
    step(dense, od, data)
    step(sparse, osp, data)
    for (key, a), b in zip(dense.state_dict().items(), sparse.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=key)


def test_a_sparse_step_touches_only_the_batch_rows():
    _, model = pair("afm")
    optimizer = build_optimizer("adagrad", model, 0.05)
    before = copy.deepcopy(model.state_dict())
    data = batch(4, high=50)  # ids below 50 only
    step(model, optimizer, data)
    table = model.embedding.weight
    touched = torch.zeros(N, dtype=torch.bool)
    touched[data[0].unique()] = True
    assert torch.equal(table[~touched], before["embedding.embedding.weight"][~touched])
    assert not torch.equal(table[touched], before["embedding.embedding.weight"][touched])
    assert torch.count_nonzero(optimizer.state[table]["sum"][~touched]) == 0  # lazy: untouched accumulators stay 0
    # The accumulators' rows are those of the batch's distinct ids.
    assert torch.count_nonzero(optimizer.state[table]["sum"][touched].sum(dim=1)) == data[0].unique().numel()


def test_rowwise_adagrad_by_hand():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    bias = torch.nn.Parameter(torch.tensor([0.5]))
    opt = RowWiseAdagrad([{"params": [w], "rowwise": True}, {"params": [bias]}], lr=0.1)
    assert "sum" not in opt.state[w]  # made at the first step
    # Row 1 occurs twice in the batch: its gradient rows are summed.
    w.grad = torch.sparse_coo_tensor([[1, 2, 1]], [[1.0, 1.0], [2.0, 0.0], [1.0, 3.0]], (3, 2))
    bias.grad = torch.tensor([2.0])
    opt.step()
    g1, g2 = torch.tensor([2.0, 4.0]), torch.tensor([2.0, 0.0])
    s1, s2 = float((g1 ** 2).mean()), float((g2 ** 2).mean())  # 10 and 2
    assert opt.state[w]["sum"].shape == (3,)  # one accumulator per row
    assert opt.state[w]["sum"].tolist() == pytest.approx([0.0, s1, s2])
    torch.testing.assert_close(w.detach(), torch.stack([torch.tensor([1.0, 2.0]),
                                                        torch.tensor([3.0, 4.0]) - 0.1 * g1 / s1 ** 0.5,
                                                        torch.tensor([5.0, 6.0]) - 0.1 * g2 / s2 ** 0.5]))
    torch.testing.assert_close(bias.detach(), torch.tensor([0.5 - 0.1 * 2.0 / 2.0]))  # elementwise Adagrad
    assert [t.shape[1] for t in feature_tables(build_model("fm", N, M, ModelConfig(embedding_dim=8)))] == [1, 8]


def test_sparse_path_equals_dense_path_under_horovod(planted_data, tmp_path):
    """Plain Adagrad, two ranks: rows exchanged by allgather give the parameters of the dense
    allreduce of the whole table, after an epoch of steps. With w0 from 0: from the mean, at step
    19 one embedding coordinate's first gradient was a near-cancellation, -1.1e-10 on the sparse
    path and +1.5e-11 on the dense one (the paths' weights already differed by 2e-6: rounding of
    the ranks' rows added in other orders), and Adagrad, whose first step is lr * g / (|g| + 1e-10)
    whatever g's size, moved it by -0.027 and +0.006 (RESULTS.md, issue 24's tenth step)."""
    common = ["--epochs", "2", "--batch-size", "128", "--interaction-dropout", "0", "--seed", "4", "--w0-init", "zero"]
    for mode in ("true", "false"):
        check(run_horovod(train_args(planted_data, "fm", tmp_path / mode, "--sparse-embeddings", mode, *common), np=2))
    sparse, dense = load_checkpoint(tmp_path / "true" / CHECKPOINT), load_checkpoint(tmp_path / "false" / CHECKPOINT)
    for name, tensor in dense["model_state"].items():
        torch.testing.assert_close(sparse["model_state"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert [h["val_rmse"] for h in metrics(tmp_path / "true")] == pytest.approx(
        [h["val_rmse"] for h in metrics(tmp_path / "false")], rel=1e-4)


def test_rowwise_adagrad_trains_under_horovod(planted_data, tmp_path):
    out = tmp_path / "rowwise"
    check(run_horovod(train_args(planted_data, "afm", out, "--optimizer", "rowwise_adagrad", "--epochs", "2"), np=2))
    state = load_checkpoint(out / CHECKPOINT)["optimizer_state"]["state"]
    shapes = sorted(tuple(s["sum"].shape) for s in state.values())
    assert any(len(shape) == 1 and shape[0] > 1000 for shape in shapes)  # the (N, k) table's accumulator is (N,)
    history = metrics(out)
    assert history[-1]["val_rmse"] < history[0]["train_rmse"]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", ["fm", "wide_deep"])
def test_adagrad_is_torchs_update(name, sparse):
    """``--optimizer adagrad`` (our lazy implementation, torch's fused kernel on the touched rows)
    computes torch.optim.Adagrad's steps (fused, the reference's gradients all dense).
    (Not AFM over several steps: Adagrad divides its attention's ~1e-12 gradients by their own
    size, so rounding in the last bit of either implementation flips their sign.)"""
    _, model = pair(name)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = sparse
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = False
    ours, torchs = build_optimizer("adagrad", model, 0.05), torch.optim.Adagrad(reference.parameters(), lr=0.05,
                                                                                fused=True)
    for seed in range(3):
        step(model, ours, batch(seed))
        step(reference, torchs, batch(seed))
    for (key, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=key)
        if name == "fm":  # the lazy row update: the same bits as torch's update of every row
            assert torch.equal(b, a), key


def test_adagrad_steps_a_non_contiguous_gradient_right():
    """torch's fused Adagrad kernel ignores strides; a gradient that is a transposed view must
    still give Adagrad's step (the update then takes the unfused path)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    reference = torch.nn.Parameter(w.detach().clone())
    g = torch.randn(3, 4).t()  # (4, 3), not contiguous
    assert not g.is_contiguous()
    w.grad, reference.grad = g, g.contiguous()
    ours, torchs = RowWiseAdagrad([w], lr=0.1), torch.optim.Adagrad([reference], lr=0.1)
    for _ in range(2):
        ours.step()
        torchs.step()
    torch.testing.assert_close(w.detach(), reference.detach())
    torch.testing.assert_close(ours.state[w]["sum"], torchs.state[reference]["sum"])
