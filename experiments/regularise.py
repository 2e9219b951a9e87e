"""Issue 24: which regularisation and averaging generalise at the defaults, chosen on validation.

FM (and AFM from it) on one preprocessed data set, in one process with the product's model classes,
Adagrad and regulariser (no Horovod, no Petastorm: quick looks at recipes before the product runs
them). Each recipe prints the best validation RMSE, its epoch and the test RMSE there, and the
validation curve. Recipes: ``none`` (no L2), ``l2=X`` (fixed --embedding-l2/--linear-l2 X),
``adaptive`` (per-field strengths learnt on validation, experiments/sgda.py);
each with ``+swa`` (the average of the epochs' weights from the first epoch that did not improve);
an AFM recipe ending ``+carry`` starts its tables' Adagrad accumulators at the FM's last ones,
``+fixp`` keeps p at its ones, ``+honest`` fits on the first half of validation (rows the FM
never saw) and judges on its second half, ``+tailpat`` (with ``+swa``) does not count a tail epoch whose mean beats the mean's best so far
towards early stopping, ``+swaall`` (with ``+swa``) averages the plateau of every strength of the
path (from its first bad epoch, moving on when neither the weights nor their mean improve), ``+centre`` starts w0 at the training split's mean target, ``+clipres`` computes the
residual from the prediction clipped to the target range (libFM's SGD, fm_learn_sgd_element.h), ``+acc0`` starts Adagrad's
accumulators at the paper's code's value (``paper_accumulator``; ``--fm-acc0`` for the FM an AFM
starts from), ``+frozen`` trains only the attention network and p (the FM's tables fixed, the paper's section 5.4),
``+uniform`` holds the AFM's h at 0 (its attention uniform: the fine-tuning without attention),
``+fieldmean`` offsets every row's embedding by an unpenalised vector of its field (rows shrunk
towards their field's mean, not 0), ``+fieldbias`` adds a learnt logit per field pair to the attention (FwFM's field-pair weights, Pan et
al., WWW 2018, inside AFM's softmax), ``+fieldscale`` multiplies each pair's weight by a learnt scalar per field pair
starting at 1 (the same weights outside the softmax); ``path=X/P`` starts the path at X (one of 1, 0.3, 0.1, 0.03,
0.01) with P epochs of patience a strength. ``--fm-cache PATH`` keeps the FM an AFM starts from between runs.

    .venv/bin/python experiments/regularise.py DATA_DIR RECIPE [RECIPE ...] [--model afm --init-from RECIPE]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from afm_dist.batch import Batch, read_split
from afm_dist.dataset import load_metadata
from afm_dist.models import ModelConfig, build_model, init_from_fm
from afm_dist.models.layers import FeaturesEmbedding
from afm_dist.training.optimizers import build_optimizer
from afm_start import rmse  # experiments/afm_start.py: RMSE over a split, clipped
from sgda import AdaptiveL2  # experiments/sgda.py


class FieldMeanEmbedding(FeaturesEmbedding):
    """e_i = (mu_F(i) + v_i) x_i: every row of field F offset by the field's own vector mu_F, which the
    L2 penalty (on v_i, ``feature_penalty``) leaves alone, so a row is shrunk towards its field's mean
    rather than towards 0: the group mean of libFM MCMC's hierarchical prior (Freudenthaler, Schmidt-
    Thieme and Rendle, 2011), as a point estimate."""

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids) + self.field_mean[self.field_of[ids]]

    def forward(self, ids: torch.Tensor, xs: torch.Tensor, lookup=None) -> torch.Tensor:
        return self.rows(ids) * xs.unsqueeze(-1)


def add_field_mean(model, meta) -> None:
    """``FieldMeanEmbedding`` in place of the model's (order-2) embedding, mu_F starting at 0."""
    emb = model.embedding
    field_of = torch.zeros(meta.num_features, dtype=torch.long)
    for n, f in enumerate(meta.fields):
        field_of[f.offset:f.offset + f.size] = n
    emb.field_mean = torch.nn.Parameter(torch.zeros(len(meta.fields), emb.weight.shape[1]))
    emb.register_buffer("field_of", field_of, persistent=False)
    emb.__class__ = FieldMeanEmbedding


def add_field_bias(model, meta, scale: bool = False) -> None:
    """AFM logits a'_ij + c_{F(i) F(j)}: one learnt scalar per field pair (naive attention path);
    ``scale``: instead, each pair's weight times a learnt r_{F(i) F(j)} starting at 1 (FwFM's field-pair
    weights, Pan et al. WWW 2018, outside the softmax)."""
    import torch.nn.functional as F_
    from afm_dist.models.layers import masked_softmax
    field_of_slot = torch.tensor([n for n, f in enumerate(meta.fields) for _ in range(f.width)])
    att = model.attention
    att.naive = True
    nf = len(meta.fields)
    fi, fj = field_of_slot[att.pairs.rows], field_of_slot[att.pairs.cols]
    pair_field = torch.minimum(fi, fj) * nf + torch.maximum(fi, fj)  # (P,)
    att.field_pair = torch.nn.Parameter(torch.full((nf * nf,), 1.0 if scale else 0.0))

    def forward(e, mask):
        valid = att.pairs.pair_mask(mask)
        pairs = att.pairs(e)
        per_pair = att.field_pair[pair_field]  # (P,)
        logits = F_.relu(F_.linear(pairs, att.weight, att.bias)) @ att.h
        attention = masked_softmax(logits if scale else logits + per_pair, valid)
        weights = att.attention_dropout(attention) * (per_pair if scale else 1.0)
        return (weights.unsqueeze(-1) * pairs).sum(dim=1), attention
    att.forward = forward


def load_data(path: str) -> tuple:
    """(metadata, the schema's batch, {split: Batch} of the three splits, the clip range) of a data set."""
    meta = load_metadata(path)
    batch = int(meta.schema.get("training", {}).get("batch_size", 128))
    data = {s: read_split(Path(path) / s) for s in ("train", "validation", "test")}
    return meta, batch, data, meta.target_range()


def smoothed_row_weights(meta, train: Batch, smooth: float) -> torch.Tensor | None:
    """(num_features,) weights of each row's L2 occurrences: (1 - smooth) + smooth * n_F / n_i, with n_i
    the row's occurrences in the training split and n_F their mean over the field's rows that occur,
    so that over an epoch row i is penalised ((1 - smooth) n_i + smooth n_F) ||v_i||^2: the smoothed
    weighted trace norm of Foygel, Salakhutdinov, Shamir and Srebro (NIPS 2011) in factored form
    (smooth 0: libFM SGD's per-occurrence L2, as the product; 1: every row of a field alike, as a
    Gaussian prior per field); None for smooth 0."""
    if not smooth:
        return None
    n = torch.bincount(train.ids[train.mask], minlength=meta.num_features).double()
    w = torch.ones(meta.num_features, dtype=torch.float64)
    for f in meta.fields:
        c = n[f.offset:f.offset + f.size]
        seen = c > 0
        if seen.any():
            mean = c[seen].mean()
            w[f.offset:f.offset + f.size] = (1 - smooth) + smooth * mean / c.clamp(min=1)
    return w.float()


def pool_multi_valued(meta, data: dict, weighting: str) -> tuple[int, ...]:
    """Slot groups pooling every multi-valued field into one input (the product's ``SlotPooling``);
    ``mean`` / ``sqrt`` scale those fields' values in ``data`` by 1/n / 1/sqrt(n) (``sum``: as they are)."""
    groups: list[int] = []
    for f in meta.fields:
        multi = f.kind == "multi_categorical"
        groups += [f.width] if multi else [1] * f.width
        if multi and weighting != "sum":
            for b in data.values():
                cols = slice(f.slot, f.slot + f.width)
                n = b.mask[:, cols].sum(1, keepdim=True).clamp(min=1).to(b.vals.dtype)
                b.vals[:, cols] *= 1 / n if weighting == "mean" else n.rsqrt()
    return tuple(groups)


def paper_accumulator(batch_size: int) -> float:
    """Adagrad's starting accumulator of the paper's code (hexiangnan/attentional_factorization_machine,
    code/AFM.py and FM.py: ``tf.train.AdagradOptimizer(initial_accumulator_value=1e-8)``) on the batch's
    summed half squared error, whose gradients are B/2 times those of our mean squared error: 1e-8 (2/B)^2."""
    return 1e-8 * (2.0 / batch_size) ** 2


def fit(model, data, meta, clip, recipe: str, *, epochs: int, batch: int, lr: float = 0.05, patience: int = 3,
        seed: int = 1, eval0: bool = False, adaptive_kw: dict | None = None, carry: dict | None = None,
        frozen: bool = False, fixp: bool = False, linear_factor: float = 1.0, attention_l2: float = 0.0,
        row_weight: torch.Tensor | None = None, acc0: float = 0.0, attention_kl: float = 0.0) -> dict:
    """``carry``: Adagrad accumulators of the feature tables to start from, by table name (the FM's);
    ``attention_kl``: the AFM's loss plus that times the rows' mean KL(a || uniform over the row's
    real pairs), shrinking the attention towards the FM's equal weights;
    ``frozen``: the feature tables (embeddings, linear weights, bias) are not trained."""
    train, val = data["train"], data["validation"]
    if frozen:
        for n, q in model.named_parameters():
            q.requires_grad_(not n.startswith(("embedding.", "linear.")))
    if fixp:
        model.p.requires_grad_(False)
    opt = build_optimizer("adagrad", model, lr, initial_accumulator_value=acc0)
    for name, acc in (carry or {}).items():
        opt.state[dict(model.named_parameters())[name]]["sum"] = acc.clone()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base, _, swa = recipe.partition("+")
    tailpat = "tailpat" in swa.split("+")  # in the tail, an epoch whose mean beats the mean's best so far is not a bad one
    swaall = "swaall" in swa.split("+")  # a mean from the first bad epoch at every strength, each strength's own
    # libFM's SGD residual: the prediction clipped to the target range, its gradient passed through
    clipres = "clipres" in swa.split("+") and clip is not None
    fixed = float(base.split("=")[1]) if base.startswith("l2=") else 0.0
    # raised at each plateau: "ladder" from 0, "ladder=X" from X, "ladder/P" after P epochs without improvement
    base, _, rung_patience = base.partition("/")
    rung_patience = int(rung_patience or 1)
    ladder = [x for x in (0.0, 0.01, 0.03, 0.1, 0.3) if x >= float(base.partition("=")[2] or 0)] \
        if base.startswith("ladder") else None
    if base.startswith("path"):  # lowered at each plateau: "path" from 0.3, "path=X" from X, down to 0
        ladder = [x for x in (1.0, 0.3, 0.1, 0.03, 0.01, 0.0) if x <= float(base.partition("=")[2] or 0.3)]
    fixed = ladder[0] if ladder else fixed
    rung = 0
    reg = AdaptiveL2([f.offset for f in meta.fields], meta.num_features, **(adaptive_kw or {})) \
        if base == "adaptive" else None
    curve, best, bad = [], (math.inf, 0, None), 0
    avg, n_avg, averaging, best_avg, mean_improved = None, 0, False, math.inf, False
    t0 = time.time()
    for epoch in range(0 if eval0 else 1, epochs + 1):
        if epoch:
            model.train()
            perm = torch.randperm(len(train), generator=g)
            vperm = torch.randperm(len(val), generator=g)
            vpos = 0
            for i in range(0, len(train) - batch + 1, batch):
                idx = perm[i:i + batch]
                opt.zero_grad()
                ids, mask = train.ids[idx], train.mask[idx]
                if attention_kl:
                    scores, a = model(ids, train.vals[idx], mask, return_attention=True)  # a (B, P)
                    real = (a > 0).sum(dim=1).clamp(min=1).to(a.dtype)  # |R_x|
                    kl = (torch.special.xlogy(a, a).sum(dim=1) + real.log()).mean()
                else:
                    scores = model(ids, train.vals[idx], mask)
                if clipres:
                    scores = scores + (scores.clamp(*clip) - scores).detach()
                loss = F.mse_loss(scores, train.label[idx])
                if attention_kl:
                    loss = loss + attention_kl * kl
                if attention_l2:
                    loss = loss + attention_l2 * model.l2_penalty()
                if fixed:
                    e, w = model.feature_penalty(ids, mask, row_weight)
                    loss = loss + fixed * (e + linear_factor * w)
                if reg is not None:
                    loss = loss + reg.penalty(model, ids, mask)
                loss.backward()
                opt.step()
                if reg is not None:
                    if vpos + batch > len(val):
                        vperm, vpos = torch.randperm(len(val), generator=g), 0
                    vi = vperm[vpos:vpos + batch]
                    vpos += batch
                    reg.apply(reg.gradient(model, opt, val.ids[vi], val.vals[vi], val.mask[vi], val.label[vi], lr, clip))
        v = rmse(model, val, clip)
        tag = ""
        if swa and averaging:
            state = model.state_dict()
            n_avg += 1
            for k in avg:
                avg[k].mul_((n_avg - 1) / n_avg).add_(state[k], alpha=1 / n_avg)
            shadow = copy.deepcopy(model)
            shadow.load_state_dict(avg)
            v_avg = rmse(shadow, val, clip)
            tag = f"avg{n_avg}:{v_avg:.4f}"
            mean_improved, best_avg = v_avg < best_avg, min(best_avg, v_avg)
            if v_avg < v:
                v, cand = v_avg, copy.deepcopy(avg)
            else:
                cand = copy.deepcopy(model.state_dict())
        else:
            cand = copy.deepcopy(model.state_dict())
        curve.append(f"{v:.4f}" + (f"({tag})" if tag else ""))
        if v < best[0]:
            best, bad = (v, epoch, cand), 0
        elif swaall and averaging and mean_improved:  # the plateau's mean still falling: not a bad epoch
            bad = 0
        elif ladder is not None and rung + 1 < len(ladder) and bad + 1 < rung_patience:
            bad += 1
            if swaall and not averaging:  # every strength's plateau averaged, not only the last's
                averaging, avg, n_avg, best_avg = True, copy.deepcopy(model.state_dict()), 1, math.inf
        elif ladder is not None and rung + 1 < len(ladder):
            rung, bad = rung + 1, 0
            fixed = ladder[rung]
            model.load_state_dict(best[2])
            curve.append(f"[l2={fixed}]")
            averaging, mean_improved = False, False
            continue
        elif tailpat and averaging and mean_improved:
            bad = 0
        else:
            bad += 1
            if swa and not averaging and epoch:
                averaging, avg, n_avg = True, copy.deepcopy(model.state_dict()), 1
            if bad >= patience:
                break
    model.load_state_dict(best[2])
    out = {"recipe": recipe, "val": round(best[0], 4), "epoch": best[1], "test": round(rmse(model, data["test"], clip), 4),
           "epochs_run": sum(not c.startswith("[") for c in curve), "seconds": round(time.time() - t0), "curve": " ".join(curve)}
    out["accumulators"] = {n: opt.state[p]["sum"] for n, p in model.named_parameters()
                           if n.startswith(("embedding.", "linear.weight")) and "sum" in opt.state[p]}
    if reg is not None:
        out["lambda_v"] = [float(f"{x:.3g}") for x in reg.lambdas()[0]]
        out["lambda_w"] = [float(f"{x:.3g}") for x in reg.lambdas()[1]]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--model", default="fm")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--t", type=int, help="the AFM's attention factor (default: k)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int)
    p.add_argument("--fm-recipe", default="none", help="the FM an AFM starts from")
    p.add_argument("--initial", type=float, default=1e-3)
    p.add_argument("--step", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--afm-lr", type=float, help="the AFM's learning rate (default --lr)")
    p.add_argument("--floor", type=float, default=1e-6)
    p.add_argument("--dropout", type=float, default=ModelConfig.interaction_dropout)
    p.add_argument("--linear-factor", type=float, default=1.0,
                   help="the linear weights' L2 as a multiple of the embeddings' (default 1: the same)")
    p.add_argument("--attention-l2", type=float, default=0.0, help="the AFM's --attention-l2")
    p.add_argument("--attention-scale", default=ModelConfig.attention_scale, help="the AFM's --attention-scale")
    p.add_argument("--attention-dropout", type=float, default=ModelConfig.attention_dropout,
                   help="the AFM's --attention-dropout (dropout on the pair weights a_ij)")
    p.add_argument("--seed", type=int, default=1, help="the batch order's and dropout's seed of each recipe's run")
    p.add_argument("--attention-kl", type=float, default=0.0,
                   help="the AFM's attention shrunk towards uniform: loss + this times mean KL(a || uniform)")
    p.add_argument("--attention-stop-gradient", action="store_true",
                   help="the AFM's --attention-stop-gradient true (its logits send no gradient into the embeddings)")
    p.add_argument("--pool", choices=("sum", "mean", "sqrt"),
                   help="multi-valued fields pooled to one vector each in the pair layer (FM and AFM)")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="L2 occurrences weighted (1 - s) + s n_F / n_i (smoothed weighted trace norm; 0: per occurrence)")
    p.add_argument("--fm-cache", help="file of the FM an AFM starts from (written if missing)")
    p.add_argument("--fm-centre", action="store_true", help="the FM an AFM starts from starts w0 at the mean target")
    p.add_argument("--fm-acc0", action="store_true",
                   help="the FM an AFM starts from starts Adagrad's accumulators at the paper's (paper_accumulator)")
    a = p.parse_args()
    torch.set_num_threads(2)
    meta, batch, data, clip = load_data(a.data)
    batch = a.batch or batch
    kw = {"initial": a.initial, "step": a.step, "bounds": (a.floor, 10.0)}
    cfg = ModelConfig(embedding_dim=a.k, attention_factor=a.t or a.k, interaction_dropout=a.dropout,
                      attention_scale=a.attention_scale, attention_dropout=a.attention_dropout,
                      attention_stop_gradient=a.attention_stop_gradient)
    groups = pool_multi_valued(meta, data, a.pool) if a.pool else None
    row_weight = smoothed_row_weights(meta, data["train"], a.smooth)
    fm_state, fm_acc = None, None
    if a.model != "fm":
        torch.manual_seed(2017)
        fm = build_model("fm", meta.num_features, meta.num_slots, cfg, groups)
        if a.fm_cache and Path(a.fm_cache).exists():
            saved = torch.load(a.fm_cache, weights_only=True)
            fm.load_state_dict(saved["model"])
            fm_acc = saved["accumulators"]
        else:
            if a.fm_centre:
                fm.linear.bias.data.fill_(float(data["train"].label.mean()))
            r = fit(fm, data, meta, clip, a.fm_recipe, epochs=a.epochs, batch=batch, adaptive_kw=kw, lr=a.lr,
                    row_weight=row_weight, acc0=paper_accumulator(batch) if a.fm_acc0 else 0.0)
            fm_acc = r.pop("accumulators")
            print(json.dumps({"data": a.data, "model": "fm", **({"pool": a.pool} if a.pool else {}), **r}), flush=True)
            if a.fm_cache:
                torch.save({"model": fm.state_dict(), "accumulators": fm_acc}, a.fm_cache)
        fm_state = fm
    for recipe in a.recipes:
        torch.manual_seed(2017)
        model = build_model(a.model, meta.num_features, meta.num_slots, cfg, groups)
        if fm_state is not None:
            init_from_fm(model, fm_state)
        flags = recipe.split("+")
        if "fieldbias" in flags or "fieldscale" in flags:
            add_field_bias(model, meta, scale="fieldscale" in flags)
        if "fieldmean" in flags:
            add_field_mean(model, meta)
        if "uniform" in flags:  # h held at 0: the attention stays uniform, the AFM without attention
            if a.attention_scale != "pairs" or "frozen" in flags:
                raise SystemExit("+uniform holds h at 0: only with --attention-scale pairs, and not with +frozen")
            model.attention.h.data.zero_()
            model.attention.h.requires_grad_(False)
        if "centre" in flags:  # w0 starts at the training split's mean target instead of 0
            model.linear.bias.data.fill_(float(data["train"].label.mean()))
        base = "+".join(f for f in flags if f not in ("carry", "frozen", "fieldbias", "fieldscale", "fieldmean", "fixp", "honest", "centre",
                                                      "acc0", "uniform"))
        run_data = data
        if "honest" in flags:  # attention fitted on rows the FM never saw: validation's first half, judged on its second
            v, h = data["validation"], len(data["validation"]) // 2
            half = lambda a, b: Batch(ids=v.ids[a:b], vals=v.vals[a:b], mask=v.mask[a:b], label=v.label[a:b])
            run_data = {"train": half(0, h), "validation": half(h, len(v)), "test": data["test"]}
        carry = "carry" in flags
        r = fit(model, run_data, meta, clip, base, epochs=a.epochs, batch=batch, eval0=fm_state is not None,
                lr=a.afm_lr if a.afm_lr and fm_state is not None else a.lr,
                adaptive_kw=kw, carry=fm_acc if carry else None, frozen="frozen" in flags,
                fixp="fixp" in flags, linear_factor=a.linear_factor, attention_l2=a.attention_l2,
                row_weight=row_weight, acc0=paper_accumulator(batch) if "acc0" in flags else 0.0,
                attention_kl=a.attention_kl, seed=a.seed)
        r.pop("accumulators")
        r["recipe"] = recipe
        print(json.dumps({"data": a.data, "model": a.model, "k": a.k, **({"t": a.t} if a.t else {}),
                          **({"attention_kl": a.attention_kl} if a.attention_kl else {}),
                          **({"seed": a.seed} if a.seed != 1 else {}),
                          **({"attention_stop_gradient": True} if a.attention_stop_gradient else {}), "lr": a.afm_lr if a.afm_lr and fm_state is not None else a.lr, "dropout": a.dropout,
                          **({"linear_factor": a.linear_factor} if a.linear_factor != 1 else {}),
                          **({"smooth": a.smooth} if a.smooth else {}),
                          **({"attention_l2": a.attention_l2} if a.attention_l2 else {}),
                          **({"attention_dropout": a.attention_dropout} if a.attention_dropout else {}), **({"pool": a.pool} if a.pool else {}),
                          **({"attention_scale": a.attention_scale} if a.attention_scale != ModelConfig.attention_scale else {}), **({"step": a.step, "floor": a.floor} if "adaptive" in recipe else {}), **r}), flush=True)


if __name__ == "__main__":
    main()
