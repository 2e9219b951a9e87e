"""The Gibbs-sampled FM (afm_dist/training/gibbs.py): colour classes, the stacked and blended FMs,
a chain that learns, in one process; then the trainer's sampling phase with horovodrun, whose
chain is the same on one rank and on two."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from afm_dist.batch import Batch
from afm_dist.dataset import FieldLayout
from afm_dist.model_dir import TrainedModel
from afm_dist.models import ModelConfig, build_model
from afm_dist.train import main
from afm_dist.training.gibbs import GibbsFM, SamplerNotApplicable, blend, colour_classes, fm_predict, sample, stack
from tests.conftest import run_horovod


def field(name: str, kind: str, offset: int, size: int, slot: int, width: int) -> FieldLayout:
    return FieldLayout(name=name, kind=kind, offset=offset, size=size, slot=slot, width=width)


def rows(ids: list[list[int]], mask: list[list[bool]], label: list[float] | None = None) -> Batch:
    ids_t = torch.tensor(ids)
    return Batch(ids=ids_t, vals=torch.ones(ids_t.shape), mask=torch.tensor(mask),
                 label=torch.tensor(label if label is not None else [0.0] * len(ids)))


def test_colour_classes_of_a_one_hot_and_a_multi_valued_field():
    # user: features 0-1 (slot 0); tags: features 2-6 (slots 1-2); tag 6 never occurs
    fields = [field("user", "categorical", 0, 2, 0, 1), field("tags", "multi_categorical", 2, 5, 1, 2)]
    b = rows([[0, 2, 3], [1, 3, 4], [0, 2, 5], [1, 4, 0]],
             [[True, True, True], [True, True, True], [True, True, True], [True, True, False]])
    classes = colour_classes(b.ids, b.mask, fields)
    # tags by frequency: 2 (2 rows), 3 (2), 4 (2), 5 (1); 2 -> c0; 3 meets 2 -> c1; 4 meets 3 -> c0;
    # 5 meets 2 -> c1; the unseen 6 joins c0
    assert [m.tolist() for _, m in classes] == [[0, 1], [2, 4, 6], [3, 5]]
    assert [s.tolist() for s, _ in classes] == [[0, 0, 0, 0], [1, 2, 1, 1], [2, 1, 2, -1]]
    covered = sum(int((s >= 0).sum()) for s, _ in classes)
    assert covered == int(b.mask.sum())
    # a feature twice in a row (two values mapped to one out-of-vocabulary id): no Gibbs sampler
    twice = rows([[0, 2, 3], [1, 4, 4]], [[True, True, True], [True, True, True]])
    with pytest.raises(SamplerNotApplicable, match="field tags: 1 training rows hold one of its features twice"):
        colour_classes(twice.ids, twice.mask, fields)
    padded = rows([[0, 2, 2]], [[True, True, False]])  # a padded slot repeating an id is no second value
    assert [m.tolist() for _, m in colour_classes(padded.ids, padded.mask, fields)][1] == [2, 3, 4, 5, 6]


def test_stacked_samples_and_blends_are_one_fm_with_the_mean_prediction():
    torch.manual_seed(0)
    f, m, k = 20, 4, 3
    ids = torch.randint(0, f, (50, m))
    b = Batch(ids=ids, vals=torch.rand(50, m), mask=torch.rand(50, m) > 0.2, label=None)
    samples = [(torch.randn((), dtype=torch.float64), torch.randn(f, dtype=torch.float64),
                torch.randn(f, k, dtype=torch.float64)) for _ in range(5)]
    mean = torch.stack([fm_predict(*s, *b.inputs) for s in samples]).mean(0)
    stacked = stack(samples)
    assert stacked[2].shape == (f, k * 5)
    assert torch.allclose(fm_predict(*stacked, *b.inputs), mean, atol=1e-10)
    mixed = blend(samples[0], stacked, 0.25)
    want = 0.25 * fm_predict(*samples[0], *b.inputs) + 0.75 * mean
    assert torch.allclose(fm_predict(*mixed, *b.inputs), want, atol=1e-10)
    # the product's FM class scores the stacked parameters as fm_predict does
    fm = build_model("fm", f, m, ModelConfig(embedding_dim=k * 5), None).eval()
    fm.load_state_dict({"linear.bias": stacked[0].reshape(1).float(), "linear.weight.weight": stacked[1][:, None].float(),
                        "embedding.embedding.weight": stacked[2].float()})
    with torch.no_grad():
        assert torch.allclose(fm(*b.inputs).double(), mean, atol=1e-4)


def planted(n: int, seed: int) -> tuple[Batch, list[FieldLayout]]:
    """Ratings of 30 users x 40 items from a known FM of k = 2, noise 0.1."""
    g = torch.Generator().manual_seed(5)
    w, v = torch.randn(70, generator=g) * 0.5, torch.randn(70, 2, generator=g)
    g.manual_seed(seed)
    ids = torch.stack([torch.randint(0, 30, (n,), generator=g), 30 + torch.randint(0, 40, (n,), generator=g)], 1)
    y = 3.0 + w[ids].sum(1) + (v[ids[:, 0]] * v[ids[:, 1]]).sum(1) + 0.1 * torch.randn(n, generator=g)
    fields = [field("user", "categorical", 0, 30, 0, 1), field("item", "categorical", 30, 40, 1, 1)]
    return Batch(ids=ids, vals=torch.ones(n, 2), mask=torch.ones(n, 2, dtype=torch.bool), label=y), fields


def test_the_chain_learns_a_planted_fm():
    train, fields = planted(1000, 1)
    validation, _ = planted(300, 2)
    model = GibbsFM(train, fields, 70, 4, seed=3)
    stacked, records = sample(model, sweeps=60, samples=10, validation=validation)
    spread = float(validation.label.std())
    assert spread > 1.0
    # the samples' mean predicts the held-out rows to about the noise (0.1), far below their spread
    assert records[-1]["val_rmse"] < 0.25
    assert len(records) == 10 and records[-1]["sweep"] == 60
    assert float((fm_predict(*stacked, *validation.inputs) - validation.label).pow(2).mean().sqrt()) == \
        pytest.approx(records[-1]["val_rmse"], rel=1e-6)
    assert 20 < model.alpha < 500  # the noise precision, 1 / 0.1^2 = 100


def pooled_planted(n: int, seed: int) -> tuple[Batch, list[FieldLayout]]:
    """Ratings of 30 users x 40 items with a pooled bag of 3 of 20 tags (x = 1/sqrt(3)), from a known
    FM of k = 2 whose pairs are those of the product's FM with the bag pooled (no tag x tag pair),
    noise 0.1."""
    g = torch.Generator().manual_seed(5)
    w, v = torch.randn(90, generator=g) * 0.5, torch.randn(90, 2, generator=g)
    g.manual_seed(seed)
    tags = 70 + torch.rand(n, 20, generator=g).argsort(1)[:, :3]  # 3 distinct tags a row
    ids = torch.cat([torch.randint(0, 30, (n, 1), generator=g), 30 + torch.randint(0, 40, (n, 1), generator=g), tags], 1)
    vals = torch.cat([torch.ones(n, 2), torch.full((n, 3), 3 ** -0.5)], 1)
    bag = (v[tags] * vals[:, 2:, None]).sum(1)
    pairs = (v[ids[:, 0]] * v[ids[:, 1]]).sum(1) + ((v[ids[:, 0]] + v[ids[:, 1]]) * bag).sum(1)
    y = 3.0 + (w[ids] * vals).sum(1) + pairs + 0.1 * torch.randn(n, generator=g)
    fields = [field("user", "categorical", 0, 30, 0, 1), field("item", "categorical", 30, 40, 1, 1),
              FieldLayout(name="tags", kind="history", offset=70, size=20, slot=2, width=3, pooled=True)]
    return Batch(ids=ids, vals=vals, mask=torch.ones(n, 5, dtype=torch.bool), label=y), fields


def test_a_pooled_field_has_no_pair_inside_it_and_the_chain_learns_it():
    train, fields = pooled_planted(1500, 1)
    validation, _ = pooled_planted(300, 2)
    groups = (1, 1, 3)
    # fm_predict of a pooled field: the product's FM with the same slot groups, and no tag x tag pair
    torch.manual_seed(0)
    params = (torch.randn((), dtype=torch.float64), torch.randn(90, dtype=torch.float64),
              torch.randn(90, 4, dtype=torch.float64))
    fm = build_model("fm", 90, 5, ModelConfig(embedding_dim=4), groups).eval()
    fm.load_state_dict({"linear.bias": params[0].reshape(1).float(), "linear.weight.weight": params[1][:, None].float(),
                        "embedding.embedding.weight": params[2].float()})
    with torch.no_grad():
        assert torch.allclose(fm(*validation.inputs).double(), fm_predict(*params, *validation.inputs, groups), atol=1e-4)
    e = params[2][validation.ids] * validation.vals.double().unsqueeze(-1)
    tag_pairs = 0.5 * (e[:, 2:].sum(1).pow(2) - e[:, 2:].pow(2).sum(1)).sum(1)
    assert torch.allclose(fm_predict(*params, *validation.inputs) - fm_predict(*params, *validation.inputs, groups),
                          tag_pairs, atol=1e-10)
    assert float(tag_pairs.abs().mean()) > 0.1
    # the chain draws the pooled FM: it predicts held-out rows to about the noise (0.1)
    model = GibbsFM(train, fields, 90, 4, seed=3)
    assert model.slot_groups == groups
    stacked, records = sample(model, sweeps=80, samples=10, validation=validation)
    assert float(validation.label.std()) > 1.0
    assert records[-1]["val_rmse"] < 0.25
    assert 20 < model.alpha < 500
    assert float((fm_predict(*stacked, *validation.inputs, groups) - validation.label).pow(2).mean().sqrt()) == \
        pytest.approx(records[-1]["val_rmse"], rel=1e-6)
    # k = 12: w_i and v_i in two blocks (9 + 4 parameters, two draws and allreduces a class), learns as well
    wide = GibbsFM(train, fields, 90, 12, seed=3)
    assert wide.blocks == [(0, 9), (9, 13)]
    _, records12 = sample(wide, sweeps=80, samples=10, validation=validation)
    assert records12[-1]["val_rmse"] < 0.25 and 20 < wide.alpha < 500
    # drawn as if every pair of slots were a pair, the chain would be another model: the pooled one fits better
    flat = [dataclasses.replace(f, pooled=False) for f in fields]
    _, other = sample(GibbsFM(train, flat, 90, 4, seed=3), sweeps=80, samples=10, validation=validation)
    assert other[-1]["val_rmse"] > records[-1]["val_rmse"]


def test_every_draw_sees_the_exact_residuals_and_derivatives():
    """Each class's draw gets the residuals y - y_hat of the current parameters and z = dy/d(w_i, v_i)
    (autograd of fm_predict), whatever the layout: a multi-valued field, two pooled fields side by
    side, a one-hot field after them, padded slots, and k = 3 (one block) or 12 (two)."""
    def lay(name, off, size, slot, width, kind="categorical", pooled=False):
        return FieldLayout(name=name, kind=kind, offset=off, size=size, slot=slot, width=width, pooled=pooled)

    fields = [lay("user", 0, 4, 0, 1), lay("tags", 4, 5, 1, 2, "multi_categorical"),
              lay("bag_a", 9, 6, 3, 3, "history", True), lay("bag_b", 15, 5, 6, 2, "history", True),
              lay("item", 20, 4, 8, 1)]
    groups = (1, 1, 1, 3, 2, 1)
    g = torch.Generator().manual_seed(0)
    n = 30
    ids = torch.cat([torch.randint(0, 4, (n, 1), generator=g), 4 + torch.rand(n, 5, generator=g).argsort(1)[:, :2],
                     9 + torch.rand(n, 6, generator=g).argsort(1)[:, :3], 15 + torch.rand(n, 5, generator=g).argsort(1)[:, :2],
                     20 + torch.randint(0, 4, (n, 1), generator=g)], 1)
    mask = torch.ones(n, 9, dtype=torch.bool)
    mask[:5, 4:6] = False
    mask[5:9, 7] = False
    vals, y = torch.rand(n, 9, generator=g) + 0.5, torch.randn(n, generator=g)
    for k in (3, 12):
        model = GibbsFM(Batch(ids=ids, vals=vals, mask=mask, label=y), fields, 24, k, seed=1)
        assert model.slot_groups == groups and len(model.blocks) == (1 if k == 3 else 2)
        draw, seen, full = model._draw_block, [], {}

        def checked(members, pos, z, e, theta, mu, lam, name, outer=None):
            ci, lo = (int(t) for t in name.split("-")[1:])
            rows = model.classes[ci][1]
            if lo == 0:  # the class's first block: the parameters are the sweep's so far
                w, v = model.w.clone().requires_grad_(), model.v.clone().requires_grad_()
                pred = fm_predict(model.w0, w, v, ids, vals, mask, groups)
                assert torch.allclose(e, (y.double() - pred.detach())[rows], atol=1e-10), (k, ci)
                full[ci] = torch.stack([torch.cat([gw[f].reshape(1), gv[f]]) for r, f in zip(rows.tolist(), members[pos].tolist())
                                        for gw, gv in [torch.autograd.grad(pred[r], (w, v), retain_graph=True)]]) \
                    if len(rows) else torch.zeros(0, k + 1, dtype=torch.float64)
            # a later block's z is the class start's: the other blocks move other dimensions of q and v_i
            assert torch.allclose(z, full[ci][:, lo:lo + z.shape[1]], atol=1e-10), (k, ci, lo)
            if outer is not None:
                upper = torch.triu_indices(z.shape[1], z.shape[1])
                assert torch.allclose(outer, z[:, upper[0]] * z[:, upper[1]], atol=1e-10)
            seen.append((ci, lo))
            return draw(members, pos, z, e, theta, mu, lam, name, outer=outer)

        model._draw_block = checked
        for _ in range(2):
            model.sweep()
        assert len(seen) == 2 * len(model.classes) * len(model.blocks)
        assert [c[4] for c in model.classes].count(0) >= 3 and 1 in [c[4] for c in model.classes]


def test_a_block_draw_has_the_conditional_mean_and_covariance():
    """20,000 features with the same rows: their draws' mean and covariance are precision^-1 r and
    precision^-1, precision = alpha sum z z^T + diag(lambda), r = alpha sum z (e + z theta) + lambda mu."""
    model = GibbsFM(rows([[0]], [[True]], [1.0]), [field("f", "categorical", 0, 1, 0, 1)], 1, 2, seed=7)
    model.alpha = 2.0
    c, per = 20000, 4
    g = torch.Generator().manual_seed(1)
    z0, e0 = torch.randn(per, 3, generator=g, dtype=torch.float64), torch.randn(per, generator=g, dtype=torch.float64)
    theta0 = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    mu0, lam0 = torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    pos = torch.arange(c).repeat_interleave(per)
    drawn = model._draw_block(torch.arange(c), pos, z0.repeat(c, 1), e0.repeat(c), theta0.repeat(c, 1),
                              mu0.repeat(c, 1), lam0.repeat(c, 1), "moments")
    precision = 2.0 * z0.T @ z0 + torch.diag(lam0)
    cov = torch.linalg.inv(precision)
    mean = cov @ (2.0 * z0.T @ (e0 + z0 @ theta0) + lam0 * mu0)
    spread = cov.diagonal().sqrt()
    assert ((drawn.mean(0) - mean).abs() < 4 * spread / c ** 0.5).all()
    assert torch.allclose(torch.cov(drawn.T), cov, atol=0.05 * float(spread.max()) ** 2)


def train_fm(data: Path, out: Path, np: int, *extra: str) -> None:
    proc = run_horovod(["-m", "afm_dist.train", "--data", str(data), "--model", "fm", "--output", str(out),
                        "--epochs", "3", "--batch-size", "128", "--embedding-dim", "8", "--log-every", "1000",
                        "--mcmc-sweeps", "30", "--mcmc-dim", "4", "--mcmc-samples", "6", *extra], np=np)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_sampling_after_sgd_is_one_chain_on_one_rank_and_two(planted_data, tmp_path, capsys):
    one, two = tmp_path / "fm1", tmp_path / "fm2"
    train_fm(planted_data, one, 1)
    train_fm(planted_data, two, 2)
    last = {d: json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (one, two)}
    for d in (one, two):
        assert last[d]["phase"] == "mcmc" and last[d]["sweeps"] == 30
    # the same chain: the sums are added across ranks in another order, nothing else differs
    assert last[two]["val_rmse_mcmc"] == pytest.approx(last[one]["val_rmse_mcmc"], rel=1e-5)
    # the planted data's pairs are what the FM needs: the blend wins, and the model directory holds it
    assert last[two]["sgd_share"] < 1 and last[two]["val_rmse"] < last[two]["val_rmse_sgd"]
    model = TrainedModel.load(two)
    assert model.config.embedding_dim == 8 + 4 * 6
    assert model.best["val_rmse"] == pytest.approx(last[two]["val_rmse"])
    assert validation_rmse(two, planted_data) == pytest.approx(last[two]["val_rmse"], rel=1e-4)
    # the SGD FM's best weights are kept apart: --resume goes on from them, and samples the same chain again
    assert (two / "sgd.safetensors").exists()
    before = (two / "metrics.jsonl").read_text().splitlines()
    train_fm(planted_data, two, 2, "--resume")
    after = (two / "metrics.jsonl").read_text().splitlines()
    assert len(after) == len(before) and after[:-1] == before[:-1]
    again = json.loads(after[-1])
    assert (again["val_rmse"], again["sgd_share"]) == (pytest.approx(last[two]["val_rmse"], rel=1e-6), last[two]["sgd_share"])
    assert TrainedModel.load(two).config.embedding_dim == 32
    check_afm_from_blend(planted_data, two, last[two], tmp_path, capsys)


def validation_rmse(model_dir: Path, data: Path) -> float:
    """The clipped validation RMSE of the model in ``model_dir``, scored here from its files."""
    from afm_dist.batch import read_split

    model = TrainedModel.load(model_dir)
    b = read_split(data / "validation")
    lo, hi = model.dataset.target_range()
    with torch.no_grad():
        return float((model.build()(*b.inputs).clamp(lo, hi) - b.label).pow(2).mean().sqrt())


def train_afm(data: Path, out: Path, *extra: str) -> list[dict]:
    proc = run_horovod(["-m", "afm_dist.train", "--data", str(data), "--model", "afm", "--output", str(out), "--epochs", "1", "--batch-size", "128", "--attention-factor", "8",
                        "--log-every", "1000", *extra], np=2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_afm_from_blend(data: Path, fm: Path, sampled: dict, tmp_path: Path, capsys) -> None:
    """An AFM --init-from an FM whose model is its blend starts from the SGD FM (its size, its
    validation RMSE) and ends no worse than the blend on validation."""
    from safetensors import safe_open

    # at a rate too small to move it, the AFM stays the SGD FM, and the blend is kept as the AFM
    afm = tmp_path / "afm"
    records = train_afm(data, afm, "--init-from", str(fm), "--lr", "1e-9")
    assert records[0]["epoch"] == 0 and records[0]["val_rmse"] == pytest.approx(sampled["val_rmse_sgd"], rel=1e-5)
    end = records[-1]
    assert end["phase"] == "init" and end["val_rmse"] == pytest.approx(sampled["val_rmse"], rel=1e-5)
    assert end["val_rmse_trained"] == pytest.approx(sampled["val_rmse_sgd"], rel=1e-4)
    assert end["val_rmse_trained"] > end["val_rmse"]
    model = TrainedModel.load(afm)
    assert (model.name, model.config.embedding_dim, model.best["epoch"]) == ("afm", 32, end["epoch"])
    assert validation_rmse(afm, data) == pytest.approx(sampled["val_rmse"], rel=1e-4)
    with safe_open(str(afm / "sgd.safetensors"), framework="pt") as f:  # the AFM's own best epoch, k = 8
        assert f.get_slice("embedding.embedding.weight").get_shape()[1] == 8
    # --resume goes on from the AFM's own weights (k = 8) for one more epoch, and keeps the blend again
    again = train_afm(data, afm, "--lr", "1e-9", "--resume", "--epochs", "2")
    assert again[:2] == records[:2] and again[2]["epoch"] == 2 and "phase" not in again[2]
    assert again[2]["val_rmse"] == pytest.approx(records[1]["val_rmse"], rel=1e-4)
    assert again[-1]["phase"] == "init" and again[-1]["val_rmse"] == pytest.approx(end["val_rmse"], rel=1e-6)
    assert TrainedModel.load(afm).config.embedding_dim == 32
    with safe_open(str(afm / "sgd.safetensors"), framework="pt") as f:
        assert f.get_slice("embedding.embedding.weight").get_shape()[1] == 8
    # another size than the checkpoint's is refused in one line, before Horovod starts
    assert main(["--data", str(data), "--model", "afm", "--output", str(afm), "--resume", "--embedding-dim", "16"]) == 2
    assert "cannot resume: --embedding-dim 8 in the checkpoint, 16 asked for" in capsys.readouterr().err
    # where the directory's model is worse than the trained AFM, the AFM is kept
    worse = tmp_path / "fm_worse"
    shutil.copytree(fm, worse)
    weights = load_file(str(worse / "model.safetensors"))
    weights["embedding.embedding.weight"].zero_()
    save_file(weights, str(worse / "model.safetensors"))
    kept = tmp_path / "afm_kept"
    end = train_afm(data, kept, "--init-from", str(worse))[-1]
    assert end["phase"] == "init" and end["val_rmse"] > end["val_rmse_trained"]
    model = TrainedModel.load(kept)
    assert model.config.embedding_dim == 8 and model.best["val_rmse"] == pytest.approx(end["val_rmse_trained"])
    assert not (kept / "sgd.safetensors").exists()
    # with the blend's size, the AFM starts from the blend, as it is
    whole = tmp_path / "afm_whole"
    first = train_afm(data, whole, "--init-from", str(fm), "--embedding-dim", "32")[0]
    assert first["epoch"] == 0 and first["val_rmse"] == pytest.approx(sampled["val_rmse"], rel=1e-5)
    assert TrainedModel.load(whole).config.embedding_dim == 32
    # a run whose FM is gone cannot end as it would have: --resume is refused in one line
    fm.rename(fm.with_name("fm_moved"))
    capsys.readouterr()
    assert main(["--data", str(data), "--model", "afm", "--output", str(afm), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the run started from the FM in {fm}" in err and "Traceback" not in err
