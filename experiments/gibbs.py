"""Issue 24: a Gibbs-sampled FM (libFM's MCMC, Freudenthaler, Schmidt-Thieme and Rendle 2011;
Rendle 2012, "Factorization machines with libFM", section 4.3) on the product's preprocessed splits,
in torch: how far its predictive mean is from SGD's FM on the same rows, and what it offers the AFM.

Every parameter theta is drawn from its Gaussian conditional given all others (y_hat is linear in
theta: y_hat = g + theta h), sigma^2 = 1 / (alpha sum h^2 + lambda), mean = sigma^2 (alpha sum h (e +
theta h) + mu lambda), and the residuals e and the sums q_f = sum_i v_if x_i are updated after each
draw. The features of a *colour class* never share a row (a one-hot field is one class; a
multi-valued field's features are coloured greedily by co-occurrence), so a class's features are
drawn together and the draw is still exact Gibbs. Hyperpriors as libFM's (fm_learn_mcmc.h):
alpha ~ Gamma(1, 1); per group (per field, or one group with ``--one-group``, libFM without -meta)
and factor dimension lambda ~ Gamma(1, 1) and mu ~ N(0, 1 / lambda); a feature without a training
row is drawn from its prior. Reported, clipped to the target range, for the sweeps from 1, 1/4, 1/2
and 3/4 of the chain on: the mean of the samples' predictions (libFM's, from 1) and the prediction of
the samples' mean parameters (one FM of k); with ``--stack S``, S samples spaced evenly over the
chain written side by side as one FM of k * S, whose prediction is exactly their mean (the product's
FM class scores it, and an AFM can start from it).

    .venv/bin/python experiments/gibbs.py DATA_DIR [--k 64] [--sweeps 300] [--one-group] [--stack S --save F.pt]
    .venv/bin/python experiments/gibbs.py -- --report      # docs/results/gibbs.png from docs/results/gibbs.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from afm_dist.batch import read_split
from afm_dist.dataset import FieldLayout, load_metadata
from afm_dist.training.gibbs import fm_predict  # the product's sampler predicts as this one


def colour_classes(ids: torch.Tensor, mask: torch.Tensor, fields: list[FieldLayout]) -> list[tuple[torch.Tensor, list[int]]]:
    """[((N,) slot of the class's feature in each row or -1, the class's feature ids)] for every colour
    class; a field's features without a training row belong to its first class."""
    out = []
    n = ids.shape[0]
    for f in fields:
        s0, w = f.slot, f.width
        everything = list(range(f.offset, f.offset + f.size))
        if w == 1:
            slot = torch.where(mask[:, s0], torch.full((n,), s0), torch.full((n,), -1))
            out.append((slot, everything))
            continue
        block_ids, block_mask = ids[:, s0:s0 + w], mask[:, s0:s0 + w]
        feats = torch.unique(block_ids[block_mask]).tolist()
        # co-occurrence of the field's features, greedy colouring by descending frequency
        present = {}
        for j in range(w):
            for fid in torch.unique(block_ids[block_mask[:, j], j]).tolist():
                present.setdefault(fid, torch.zeros(n, dtype=torch.bool))
                present[fid] |= (block_ids[:, j] == fid) & block_mask[:, j]
        order = sorted(feats, key=lambda fid: -int(present[fid].sum()))
        colours: list[list[int]] = []
        cover: list[torch.Tensor] = []
        for fid in order:
            for c, members in enumerate(colours):
                if not (cover[c] & present[fid]).any():
                    members.append(fid)
                    cover[c] |= present[fid]
                    break
            else:
                colours.append([fid])
                cover.append(present[fid].clone())
        unseen = sorted(set(everything) - set(feats))
        for c, members in enumerate(colours):
            slot = torch.full((n,), -1)
            member = torch.zeros(int(ids.max()) + 1, dtype=torch.bool)
            member[members] = True
            for j in range(w):
                hit = block_mask[:, j] & member[block_ids[:, j]]
                slot[hit] = s0 + j
            out.append((slot, members + (unseen if c == 0 else [])))
    return out


class GibbsFM:
    """FM parameters, hyperparameters and the sampler's state over one training split."""

    def __init__(self, ids, vals, mask, y, meta, k: int, init_stdev: float, seed: int, field_groups: bool):
        self.g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # torch._standard_gamma draws from the global generator (the runs in gibbs.jsonl did not seed it)
        self.ids, self.x, self.y = ids, torch.where(mask, vals, torch.zeros_like(vals)).double(), y.double()
        self.n_features = meta.num_features
        fields = meta.fields
        self.classes = []
        for slot, members in colour_classes(ids, mask, fields):
            rows = torch.nonzero(slot >= 0).squeeze(1)
            s = slot[rows]
            member = torch.zeros(self.n_features, dtype=torch.bool)
            member[members] = True
            self.classes.append((member, rows, ids[rows, s], self.x[rows, s]))
        # the classes partition the training split's nonzeros: every real slot of every row in exactly one class
        covered = sum(int(rows.numel()) for _, rows, _, _ in self.classes)
        if covered != int(mask.sum()):
            raise AssertionError(f"colour classes cover {covered} of {int(mask.sum())} nonzeros (a row holds a feature twice?)")
        self.n_groups = len(fields) if field_groups else 1
        self.group_of = torch.zeros(self.n_features, dtype=torch.long)
        if field_groups:
            for fi, f in enumerate(fields):
                self.group_of[f.offset:f.offset + f.size] = fi
        self.k = k
        self.w0 = torch.tensor(0.0, dtype=torch.float64)
        self.w = torch.zeros(self.n_features, dtype=torch.float64)
        self.v = torch.randn(self.n_features, k, generator=self.g, dtype=torch.float64) * init_stdev
        self.alpha = 1.0
        self.mu_w = torch.zeros(self.n_groups, dtype=torch.float64)
        self.lam_w = torch.zeros(self.n_groups, dtype=torch.float64)
        self.mu_v = torch.zeros(self.n_groups, k, dtype=torch.float64)
        self.lam_v = torch.zeros(self.n_groups, k, dtype=torch.float64)

    def _normal(self, mean, var):
        return mean + var.sqrt() * torch.randn(mean.shape, generator=self.g, dtype=torch.float64)

    def _gamma(self, shape, rate):
        shape = torch.as_tensor(shape, dtype=torch.float64)
        return torch._standard_gamma(shape.expand_as(torch.as_tensor(rate))) / rate

    def _hyper(self, theta: torch.Tensor, mu_old: torch.Tensor):
        """(mu, lambda) per group drawn from the rows ``theta`` (F,) or (F, k) of all its features (libFM's;
        those without a training row are draws from the prior), libFM's order: lambda ~ Gamma(1 + (m + 1) / 2, 1 + (sum (t - mu)^2 + mu^2) / 2) at the
        current mu, then mu ~ N(sum t / (m + 1), 1 / ((m + 1) lambda)) (gamma0 = 1, mu0 = 0)."""
        mu, lam = torch.zeros_like(mu_old), torch.zeros_like(mu_old)
        for gi in range(self.n_groups):
            t = theta[self.group_of == gi]
            m = t.shape[0]
            lam[gi] = self._gamma(1 + (m + 1) / 2, 1 + 0.5 * ((t - mu_old[gi]).pow(2).sum(0) + mu_old[gi].pow(2)))
            mu[gi] = self._normal(t.sum(0) / (m + 1), 1.0 / ((m + 1) * lam[gi]))
        return mu, lam

    def sweep(self):
        ids, x, y = self.ids, self.x, self.y
        # exact residuals and sums each sweep (no drift from the incremental updates)
        vx = self.v[ids] * x.unsqueeze(-1)
        q = vx.sum(1).T.contiguous()  # (k, N): one factor dimension a contiguous row
        vt = self.v.T.contiguous()  # (k, F)
        e = y - (self.w0 + (self.w[ids] * x).sum(1) + 0.5 * (q.pow(2).sum(0) - vx.pow(2).sum((1, 2))))
        n = y.shape[0]
        self.alpha = float(self._gamma(1 + n / 2, 1 + 0.5 * e.pow(2).sum()))
        self.mu_w, self.lam_w = self._hyper(self.w, self.mu_w)
        self.mu_v, self.lam_v = self._hyper(self.v, self.mu_v)
        # w0, flat prior (libFM's reg0 = 0)
        mean = (e + self.w0).sum() / n
        new = self._normal(mean, torch.tensor(1.0 / (self.alpha * n), dtype=torch.float64))
        e -= new - self.w0
        self.w0 = new
        # w_i, per colour class
        for member, rows, fid, xr in self.classes:
            a = torch.zeros(self.n_features, dtype=torch.float64).index_add_(0, fid, xr * xr)
            b = torch.zeros(self.n_features, dtype=torch.float64).index_add_(0, fid, xr * (e[rows] + self.w[fid] * xr))
            lam, mu = self.lam_w[self.group_of], self.mu_w[self.group_of]
            var = 1.0 / (self.alpha * a + lam)
            new = self._normal(var * (self.alpha * b + mu * lam), var)
            # the class's features (those without a training row: a draw from their prior, as libFM)
            delta = torch.where(member, new - self.w, torch.zeros_like(new))
            self.w += delta
            e[rows] -= delta[fid] * xr
        # v_if, per factor dimension and colour class
        for f in range(self.k):
            lam_all, mu_all = self.lam_v[self.group_of, f], self.mu_v[self.group_of, f]
            for member, rows, fid, xr in self.classes:
                vf, qf = vt[f], q[f]
                h = xr * (qf[rows] - vf[fid] * xr)
                a = torch.zeros(self.n_features, dtype=torch.float64).index_add_(0, fid, h * h)
                b = torch.zeros(self.n_features, dtype=torch.float64).index_add_(0, fid, h * (e[rows] + vf[fid] * h))
                var = 1.0 / (self.alpha * a + lam_all)
                new = self._normal(var * (self.alpha * b + mu_all * lam_all), var)
                delta = torch.where(member, new - vf, torch.zeros_like(new))
                vf += delta
                d = delta[fid]
                e[rows] -= d * h
                qf[rows] += d * xr
        self.v = vt.T.contiguous()
        return float(e.pow(2).mean().sqrt())


# our SGD FM (the defaults' recipe, k = 256, docs/results/quality.md's ninth step) on validation, for the figure
SGD_FM_VALIDATION = {"ml1": 0.8376, "ml2": 0.8444, "fr1": 0.5648, "fl1": 0.4762}


def report(log: str, path: str) -> None:
    """The running mean's validation RMSE (every 10 sweeps) of each 300-sweep chain in ``log``, one panel
    a data set, our SGD FM as a dashed line: docs/results/gibbs.png."""
    import matplotlib.pyplot as plt
    from afm_dist.plots import save_figure

    runs = [json.loads(line) for line in open(log)]
    runs = [r for r in runs if "windows" in r and r["sweeps"] == 300]
    sets = [s for s in SGD_FM_VALIDATION if any(r["data"].endswith(s) for r in runs)]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6))
    for ax, name in zip(axes, sets):
        for r in runs:
            if r["data"].endswith(name):
                ax.plot(range(10, 301, 10), r["curve_every_10"], label=f"Gibbs k = {r['k']}, {r['groups']} prior")
        ax.axhline(SGD_FM_VALIDATION[name], color="k", ls="--", label="our SGD FM (k = 256)")
        ax.set(title=name, xlabel="sweeps", ylabel="validation RMSE of the mean prediction")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a preprocessed data set, or --report")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--sweeps", type=int, default=300)
    p.add_argument("--init-stdev", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-group", action="store_true", help="one prior group for all features (libFM without -meta)")
    p.add_argument("--save", help="write the posterior mean of the parameters over the window validation chose, "
                   "as an FM (the harness's --fm-cache format), here (.pt)")
    p.add_argument("--stack", type=int, default=0, help="also keep this many samples evenly spaced over the chain and "
                   "report them as one FM of k * S (their predictions' mean, exactly); --save writes it instead of the mean parameters")
    p.add_argument("--log", default="docs/results/gibbs.jsonl")
    a = p.parse_args()
    if a.data == "--report":
        report(a.log, "docs/results/gibbs.png")
        return
    torch.set_num_threads(2)
    meta = load_metadata(a.data)
    lo, hi = meta.target_range()
    data = {s: read_split(Path(a.data) / s) for s in ("train", "validation", "test")}
    tr = data["train"]
    model = GibbsFM(tr.ids, tr.vals, tr.mask, tr.label, meta, a.k, a.init_stdev, a.seed, not a.one_group)
    evals = ("validation", "test")
    labels = {s: data[s].label.double() for s in evals}

    def err(pred, s):
        return float((pred.clamp(lo, hi) - labels[s]).pow(2).mean().sqrt())

    # windows [start, end]: the mean over the sweeps after `start` (libFM: start 0)
    starts = sorted({0, a.sweeps // 4, a.sweeps // 2, 3 * a.sweeps // 4})
    preds = {s: [] for s in evals}
    param_sum = [torch.zeros(()), torch.zeros(model.n_features), torch.zeros(model.n_features, a.k)]
    param_sum = [t.double() for t in param_sum]
    param_at = {0: [t.clone() for t in param_sum]}
    stack_at = {round(a.sweeps * (i + 1) / a.stack) for i in range(a.stack)} if a.stack else set()
    samples = []
    start = time.time()
    curve = []
    for it in range(1, a.sweeps + 1):
        train_rmse = model.sweep()
        for s in evals:
            b = data[s]
            preds[s].append(fm_predict(model.w0, model.w, model.v, *b.inputs))
        for acc, t in zip(param_sum, (model.w0, model.w, model.v)):
            acc += t
        if it in stack_at:
            samples.append((model.w0.clone(), model.w.clone(), model.v.clone()))
        if it in starts:
            param_at[it] = [t.clone() for t in param_sum]
        r = {s: err(torch.stack(preds[s]).mean(0), s) for s in evals}
        curve.append(round(r["validation"], 5))
        if it % 10 == 0 or it == a.sweeps:
            el = time.time() - start
            print(f"sweep {it}/{a.sweeps}: train {train_rmse:.4f} validation {r['validation']:.4f} test {r['test']:.4f} "
                  f"alpha {model.alpha:.2f} ({el:.0f} s, ETA {el / it * (a.sweeps - it):.0f} s)", flush=True)
    windows = []
    for w in starts:
        n = a.sweeps - w
        point = tuple((e - b) / n for e, b in zip(param_sum, param_at[w]))
        pred = {s: torch.stack(preds[s][w:]).mean(0) for s in evals}
        pt = {s: err(fm_predict(*point, *data[s].inputs), s) for s in evals}
        windows.append({"from": w, "predictive_validation": round(err(pred["validation"], "validation"), 5),
                        "predictive_test": round(err(pred["test"], "test"), 5),
                        "point_validation": round(pt["validation"], 5), "point_test": round(pt["test"], 5),
                        "state": point})
        print(f"sweeps {w + 1}-{a.sweeps}: mean prediction {windows[-1]['predictive_validation']:.4f} / "
              f"{windows[-1]['predictive_test']:.4f}, mean parameters {pt['validation']:.4f} / {pt['test']:.4f} (validation / test)")
    stacked = None
    if samples:
        # the mean of S FMs' predictions is one FM: the mean w0 and w, and v_i the samples' rows side by side / sqrt(S)
        S = len(samples)
        stacked = (sum(t[0] for t in samples) / S, sum(t[1] for t in samples) / S,
                   torch.cat([t[2] for t in samples], 1) / math.sqrt(S))
        st = {s: err(fm_predict(*stacked, *data[s].inputs), s) for s in evals}
        print(f"{S} samples as one FM of k = {a.k * S}: {st['validation']:.4f} / {st['test']:.4f} (validation / test)")
    best = min(windows, key=lambda w: w["point_validation"])
    out = {"data": a.data, "k": a.k, "sweeps": a.sweeps, "init_stdev": a.init_stdev, "seed": a.seed,
           "groups": "one" if a.one_group else "field", "windows": [{k: v for k, v in w.items() if k != "state"} for w in windows],
           **({"stack": len(samples), "stack_validation": round(st["validation"], 5), "stack_test": round(st["test"], 5)} if samples else {}),
           "wall_s": round(time.time() - start, 1), "curve_every_10": curve[9::10]}
    print(json.dumps(out))
    with open(a.log, "a") as fh:
        fh.write(json.dumps(out) + "\n")
    if a.save:
        w0, w, v = stacked if stacked is not None else best["state"]
        state = {"linear.bias": w0.reshape(1).float(), "linear.weight.weight": w.unsqueeze(1).float(),
                 "embedding.embedding.weight": v.float()}
        torch.save({"model": state, "accumulators": {k: torch.zeros_like(t) for k, t in state.items() if k != "linear.bias"}}, a.save)
        print(f"wrote {a.save}: " + (f"{len(samples)} samples as one FM" if stacked is not None else
              f"the mean parameters of sweeps {best['from'] + 1}-{a.sweeps} (validation {best['point_validation']:.4f})"))


if __name__ == "__main__":
    main()
