"""A Gibbs-sampled FM (libFM's MCMC: Freudenthaler, Schmidt-Thieme and Rendle 2011; Rendle 2012,
"Factorization machines with libFM", section 4.3), data-parallel: each rank holds its shard of the
training split in memory and every sum over rows is added across ranks, so all ranks draw the same
chain.

Every parameter theta is drawn from its Gaussian conditional given all others: the FM is linear in
each (y_hat = g + theta h), so sigma^2 = 1 / (alpha sum h^2 + lambda) and mean = sigma^2 (alpha sum
h (e + theta h) + mu lambda), sums over the training rows; the residuals e and the sums q_f = sum_i
v_if x_i are updated after each draw. The features of a *colour class* never share a row (a one-hot
field is one class; a multi-valued field's features are coloured greedily by co-occurrence across
all ranks), so a class's features are drawn together, one allreduce for the class, and the chain is
still exact Gibbs. Hyperpriors with libFM's structure (fm_learn_mcmc.h): alpha ~ Gamma(1, 1); per
field and factor dimension lambda ~ Gamma(1, 1) and mu ~ N(0, 1 / lambda) (libFM's constants amount
to Gamma(1/2, 1/2) priors: the same draws up to half a count, which matters only for the smallest
groups); w0 under a flat prior; a feature without a training row is a draw from its field's prior.

The prediction is the mean of the samples' predictions (libFM's). ``S`` samples spaced evenly over
the chain, written side by side, are one FM of k * S whose prediction is exactly their mean
(``stack``): the product's FM class scores it, and an AFM starts from it. ``blend`` mixes it with
the SGD FM at the weight validation chooses, again as one FM.

Measured (docs/results/quality.md, issue 24's fourteenth and fifteenth steps; k = 8, 32 samples of
300 sweeps): on MovieLens the samples' FM is 1.3-1.7% below our SGD FM on validation and their
blend 1.7-2.1%; on the Frappe sets the samples alone are 6-11% worse, and the blend, which gives
them 1/8-1/4, 0.4-0.8% better.

Shapes: N rows of a shard, M slots, F features, k factor dimensions; float64 throughout.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch

from afm_dist.batch import Batch
from afm_dist.dataset import FieldLayout

Reduce = Callable[[torch.Tensor, str], torch.Tensor]  # the sum of a tensor over ranks (same shape), by name
Gather = Callable[[torch.Tensor, str], torch.Tensor]  # every rank's 1-d tensor, concatenated in rank order


class SamplerNotApplicable(ValueError):
    """The FM is not linear in each parameter on these rows (a feature twice in a row): no Gibbs sampler."""


def local_reduce(t: torch.Tensor, name: str) -> torch.Tensor:
    """``Reduce`` of a run of one rank."""
    return t


def local_gather(t: torch.Tensor, name: str) -> torch.Tensor:
    """``Gather`` of a run of one rank."""
    return t


def fm_predict(w0: torch.Tensor, w: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """(B,) float64 FM predictions (Rendle's eq. 1, pairs by his lemma 3.1) of parameters w0 (),
    w (F,), v (F, k) for rows ``ids``, ``vals``, ``mask`` (B, M); unclipped."""
    x = torch.where(mask, vals, torch.zeros_like(vals)).double()
    e = v[ids] * x.unsqueeze(-1)
    return w0 + (w[ids] * x).sum(1) + 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)


def colour_classes(ids: torch.Tensor, mask: torch.Tensor, fields: Sequence[FieldLayout], *, reduce: Reduce = local_reduce,
                   gather: Gather = local_gather) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The colour classes of the features: [((N,) the slot of the class's feature in each row of this
    shard, or -1; the class's feature ids, ascending)], the same classes on every rank.

    A one-hot field (width 1) is one class. A multi-valued field's features are coloured greedily,
    the most frequent first (over all ranks), each in the first class none of whose features shares
    a row with it anywhere (the co-occurring pairs of all ranks, gathered). A field's features
    without a training row join its first class. Every real slot of every row is in exactly one class.

    Raises:
        SamplerNotApplicable: a row of any rank holds a feature twice (on every rank).
    """
    out = []
    n = ids.shape[0]
    for f in fields:
        s0, width = f.slot, f.width
        if width == 1:
            slot = torch.where(mask[:, s0], torch.full((n,), s0), torch.full((n,), -1))
            out.append((slot, torch.arange(f.offset, f.offset + f.size)))
            continue
        present = mask[:, s0:s0 + width]
        block = torch.where(present, ids[:, s0:s0 + width] - f.offset, torch.zeros_like(ids[:, s0:s0 + width]))  # field-local ids
        # a feature twice in a row (two out-of-vocabulary values) puts v_i . v_i in the FM: not linear in v_i
        apart = torch.where(present, block, -1 - torch.arange(width)).sort(1).values
        twice = reduce(torch.tensor([float((apart[:, 1:] == apart[:, :-1]).any(1).sum())], dtype=torch.float64),
                       f"gibbs-twice-{f.name}")
        if twice[0] > 0:
            raise SamplerNotApplicable(f"field {f.name}: {int(twice[0])} training rows hold one of its features twice "
                                       "(two values mapped to one id, e.g. out-of-vocabulary): Gibbs sampling needs "
                                       "each feature at most once a row; train with --mcmc-sweeps 0 (--resume "
                                       "--mcmc-sweeps 0 keeps the SGD epochs)")
        counts = reduce(torch.bincount(block[present], minlength=f.size).double(), f"gibbs-count-{f.name}")
        # the pairs of field-local ids sharing a row (a < b), as codes a * size + b, of every rank
        a, b = block.unsqueeze(2), block.unsqueeze(1)
        both = present.unsqueeze(2) & present.unsqueeze(1) & (a < b)
        codes = torch.unique((a * f.size + b).expand(-1, width, width)[both])
        codes = torch.unique(gather(codes, f"gibbs-pairs-{f.name}"))
        neighbours: list[set[int]] = [set() for _ in range(f.size)]
        for code in codes.tolist():
            i, j = divmod(code, f.size)
            neighbours[i].add(j)
            neighbours[j].add(i)
        seen = torch.nonzero(counts > 0).squeeze(1)
        order = seen[torch.sort(-counts[seen], stable=True).indices].tolist()
        colour = torch.full((f.size,), -1, dtype=torch.long)
        members: list[list[int]] = []
        for i in order:
            taken = {int(colour[j]) for j in neighbours[i]}
            c = next(c for c in range(len(members) + 1) if c not in taken)
            if c == len(members):
                members.append([])
            members[c].append(i)
            colour[i] = c
        if not members:
            members.append([])
        unseen = torch.nonzero(counts == 0).squeeze(1).tolist()
        row_colour = torch.where(present, colour[block], torch.full_like(block, -1))
        for c, local in enumerate(members):
            slot = torch.full((n,), -1)
            for j in range(width):
                slot[row_colour[:, j] == c] = s0 + j
            local_ids = sorted(local + (unseen if c == 0 else []))
            out.append((slot, torch.tensor(local_ids, dtype=torch.long) + f.offset))
    return out


class GibbsFM:
    """The sampler's state over this rank's shard of the training split.

    Args:
        train: this rank's training rows (``Batch``; ids, vals, mask (N, M), label (N,)).
        fields: the data set's fields (``DatasetMetadata.fields``); their one-hot features' priors
            are per field.
        num_features: F.
        k: factor dimensions of one sample.
        seed: the chain's seed: the same on every rank, which draws the same numbers.
        reduce, gather: the sums and the concatenation across ranks (Horovod's allreduce and
            allgather; ``local_reduce`` / ``local_gather`` for one process).
        init_std: the standard deviation of the initial v (libFM's -init_stdev 0.1).

    Raises:
        SamplerNotApplicable: a row holds a feature twice (``colour_classes``).
    """

    def __init__(self, train: Batch, fields: Sequence[FieldLayout], num_features: int, k: int, seed: int, *,
                 reduce: Reduce = local_reduce, gather: Gather = local_gather, init_std: float = 0.1) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.reduce = reduce
        self.ids = train.ids
        self.x = torch.where(train.mask, train.vals, torch.zeros_like(train.vals)).double()
        self.y = train.label.double()
        self.n_features, self.k = num_features, k
        self.classes = []
        for slot, members in colour_classes(train.ids, train.mask, fields, reduce=reduce, gather=gather):
            rows = torch.nonzero(slot >= 0).squeeze(1)
            fid = train.ids[rows, slot[rows]]
            position = torch.full((num_features,), -1, dtype=torch.long)
            position[members] = torch.arange(len(members))
            self.classes.append((members, rows, position[fid], self.x[rows, slot[rows]]))
        self.n = float(reduce(torch.tensor([float(self.y.numel())], dtype=torch.float64), "gibbs-rows")[0])
        self.group_of = torch.zeros(num_features, dtype=torch.long)
        for fi, f in enumerate(fields):
            self.group_of[f.offset:f.offset + f.size] = fi
        self.group_size = torch.bincount(self.group_of, minlength=len(fields)).double()
        self.w0 = torch.tensor(float(reduce(self.y.sum().reshape(1), "gibbs-label-sum")[0]) / max(self.n, 1.0),
                               dtype=torch.float64)
        self.w = torch.zeros(num_features, dtype=torch.float64)
        self.v = torch.randn(num_features, k, generator=self.g, dtype=torch.float64) * init_std
        self.alpha = 1.0
        g = len(fields)
        self.mu_w, self.lam_w = torch.zeros(g, dtype=torch.float64), torch.zeros(g, dtype=torch.float64)
        self.mu_v, self.lam_v = torch.zeros(g, k, dtype=torch.float64), torch.zeros(g, k, dtype=torch.float64)

    def _normal(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return mean + var.sqrt() * torch.randn(mean.shape, generator=self.g, dtype=torch.float64)

    def _gamma(self, shape: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        return torch._standard_gamma(shape.expand_as(rate).contiguous(), generator=self.g) / rate

    def _hyper(self, theta: torch.Tensor, mu_old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, lambda) per field (G,) or (G, k) from ``theta`` (F,) or (F, k), libFM's order, under
        Gamma(1, 1) and N(0, 1 / lambda) hyperpriors: lambda ~ Gamma(1 + (m + 1) / 2,
        1 + (sum (t - mu)^2 + mu^2) / 2) at the current mu, then mu ~ N(sum t / (m + 1), 1 / ((m + 1) lambda))."""
        m = self.group_size.view(-1, *([1] * (theta.dim() - 1)))
        sq = torch.zeros_like(mu_old).index_add_(0, self.group_of, (theta - mu_old[self.group_of]).pow(2))
        lam = self._gamma(1 + (m + 1) / 2, 1 + 0.5 * (sq + mu_old.pow(2)))
        total = torch.zeros_like(mu_old).index_add_(0, self.group_of, theta)
        mu = self._normal(total / (m + 1), 1.0 / ((m + 1) * lam))
        return mu, lam

    def _draw(self, members: torch.Tensor, pos: torch.Tensor, h: torch.Tensor, e: torch.Tensor, theta: torch.Tensor,
              mu: torch.Tensor, lam: torch.Tensor, name: str) -> torch.Tensor:
        """The class's new values (len(members),) from its rows' h and residuals; one allreduce."""
        c = len(members)
        ab = torch.zeros(2, c, dtype=torch.float64)
        ab[0].index_add_(0, pos, h * h)
        ab[1].index_add_(0, pos, h * e)
        ab = self.reduce(ab, name)
        a, b = ab[0], ab[1] + ab[0] * theta
        var = 1.0 / (self.alpha * a + lam)
        return self._normal(var * (self.alpha * b + mu * lam), var)

    def sweep(self) -> float:
        """Draw every parameter once; returns the training RMSE of the sample before this sweep."""
        ids, x, y = self.ids, self.x, self.y
        # exact residuals and sums each sweep (no drift from the incremental updates)
        vx = self.v[ids] * x.unsqueeze(-1)
        q = vx.sum(1).T.contiguous()  # (k, N): one factor dimension a contiguous row
        vt = self.v.T.contiguous()  # (k, F)
        e = y - (self.w0 + (self.w[ids] * x).sum(1) + 0.5 * (q.pow(2).sum(0) - vx.pow(2).sum((1, 2))))
        sse = float(self.reduce(e.pow(2).sum().reshape(1), "gibbs-sse")[0])
        self.alpha = float(self._gamma(torch.tensor(1 + self.n / 2, dtype=torch.float64),
                                       torch.tensor(1 + 0.5 * sse, dtype=torch.float64)))
        self.mu_w, self.lam_w = self._hyper(self.w, self.mu_w)
        self.mu_v, self.lam_v = self._hyper(self.v, self.mu_v)
        # w0, flat prior (libFM's reg0 = 0)
        total = float(self.reduce(e.sum().reshape(1), "gibbs-w0")[0])
        new = self._normal(torch.tensor((total + self.n * float(self.w0)) / self.n, dtype=torch.float64),
                           torch.tensor(1.0 / (self.alpha * self.n), dtype=torch.float64))
        e -= new - self.w0
        self.w0 = new
        for ci, (members, rows, pos, xr) in enumerate(self.classes):
            g = self.group_of[members]
            new = self._draw(members, pos, xr, e[rows], self.w[members], self.mu_w[g], self.lam_w[g], f"gibbs-w-{ci}")
            delta = new - self.w[members]
            self.w[members] = new
            e[rows] -= delta[pos] * xr
        for f in range(self.k):
            vf, qf = vt[f], q[f]
            for ci, (members, rows, pos, xr) in enumerate(self.classes):
                g = self.group_of[members]
                old = vf[members]
                h = xr * (qf[rows] - old[pos] * xr)
                new = self._draw(members, pos, h, e[rows], old, self.mu_v[g, f], self.lam_v[g, f], f"gibbs-v-{ci}")
                d = (new - old)[pos]
                vf[members] = new
                e[rows] -= d * h
                qf[rows] += d * xr
        self.v = vt.T.contiguous()
        return math.sqrt(sse / max(self.n, 1.0))

    def state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A copy of the current sample: w0 (), w (F,), v (F, k)."""
        return self.w0.clone(), self.w.clone(), self.v.clone()


def stack(samples: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S samples as one FM of k * S whose prediction is exactly their predictions' mean: the mean w0
    and w, and v_i the samples' rows side by side, each / sqrt(S) (the pair term is a sum over
    factor dimensions). Returns w0 (), w (F,), v (F, k * S)."""
    s = len(samples)
    return (sum(t[0] for t in samples) / s, sum(t[1] for t in samples) / s,
            torch.cat([t[2] for t in samples], 1) / math.sqrt(s))


def blend(a: tuple[torch.Tensor, torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
          u: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FM whose prediction is u * FM a's + (1 - u) * FM b's: w0 and w mixed, v side by side,
    a's times sqrt(u), b's times sqrt(1 - u). Returns w0 (), w (F,), v (F, k_a + k_b)."""
    return (u * a[0] + (1 - u) * b[0], u * a[1] + (1 - u) * b[1],
            torch.cat([a[2] * math.sqrt(u), b[2] * math.sqrt(1 - u)], 1))


def sample(model: GibbsFM, *, sweeps: int, samples: int, validation: Batch | None = None,
           clip: tuple[float, float] | None = None, log: Callable[[str], None] | None = None,
           log_every: float = 10.0) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], list[dict]]:
    """Run ``sweeps`` sweeps, keep ``samples`` samples evenly spaced over them (the last sweep's
    the last), and return them stacked (``stack``) and one record per kept sample (sweep, training
    RMSE, and with ``validation`` (this rank's rows) the validation RMSE of the samples' mean so
    far, over all ranks). ``log``: progress lines (sweep, RMSE, alpha, sweeps/s, ETA) every
    ``log_every`` seconds."""
    keep = {round(sweeps * (i + 1) / samples) for i in range(samples)}
    kept, records = [], []
    val_sum = torch.zeros(validation.label.shape[0], dtype=torch.float64) if validation is not None else None
    start = last_log = time.time()
    for it in range(1, sweeps + 1):
        train_rmse = model.sweep()
        if it in keep:
            kept.append(model.state())
            record = {"sweep": it, "train_rmse": train_rmse}
            if validation is not None:
                val_sum += fm_predict(*kept[-1], *validation.inputs)
                pred = val_sum / len(kept)
                if clip is not None:
                    pred = pred.clamp(*clip)
                sums = model.reduce(torch.stack([(pred - validation.label.double()).pow(2).sum(),
                                                 torch.tensor(float(pred.numel()), dtype=torch.float64)]), "gibbs-val")
                record["val_rmse"] = math.sqrt(float(sums[0]) / max(float(sums[1]), 1.0))
            records.append(record)
        now = time.time()
        if log is not None and (now - last_log >= log_every or it == sweeps):
            last_log = now
            rate = it / (now - start)
            shown = f", validation RMSE of the {len(kept)} samples' mean {records[-1]['val_rmse']:.4f}" \
                if records and "val_rmse" in records[-1] else ""
            log(f"sampling: sweep {it}/{sweeps}, train RMSE {train_rmse:.4f}{shown}, alpha {model.alpha:.3g}, "
                f"{rate:.2f} sweeps/s, ETA {(sweeps - it) / rate:.0f}s")
    return stack(kept), records
