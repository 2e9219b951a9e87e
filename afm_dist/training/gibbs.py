"""A Gibbs-sampled FM (libFM's MCMC: Freudenthaler, Schmidt-Thieme and Rendle 2011; Rendle 2012,
"Factorization machines with libFM", section 4.3), data-parallel: each rank holds its shard of the
training split in memory and every sum over rows is added across ranks, so all ranks draw the same
chain.

The FM is linear in each feature's parameters (w_i, v_i) jointly, since its pairs are with *other*
inputs of the pair layer (y_hat = g + z . theta, z = (x_i, x_i (q - x_i v_i))), so their conditional
given all others is one Gaussian of k + 1 dimensions: precision alpha sum z z^T + diag(lambda), mean
precision^-1 (alpha sum z (e + z . theta) + lambda mu), sums over the training rows; it is drawn
in blocks of at most BLOCK = 9 parameters (whole at k <= 8), as BPMF draws a user's vector
(Salakhutdinov and Mnih 2008), where libFM draws one coordinate at a time. The features of a *colour
class* never share a row (a one-hot field is one class; a multi-valued field's features are coloured
greedily by co-occurrence across all ranks), so a class's features are drawn together, one allreduce
for the class and block a sweep, and the chain is still exact Gibbs; the residuals e and the sums
q = sum_i v_i x_i are updated after each class. A pooled field (a history bag) is one input of the
pair layer, as in the product's FM: there z = (x_i, x_i (q - the bag's vector)). Hyperpriors with
libFM's structure (fm_learn_mcmc.h): alpha ~ Gamma(1, 1); per
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
from afm_dist.dataset import FieldLayout, slot_groups

BLOCK = 9  # the most parameters of a feature drawn as one Gaussian: w_i and 8 factor dimensions
Reduce = Callable[[torch.Tensor, str], torch.Tensor]  # the sum of a tensor over ranks (same shape), by name
Gather = Callable[[torch.Tensor, str], torch.Tensor]  # every rank's 1-d tensor, concatenated in rank order


class SamplerNotApplicable(ValueError):
    """A feature twice in a row: the sampler needs each feature at most once a row."""


def local_reduce(t: torch.Tensor, name: str) -> torch.Tensor:
    """``Reduce`` of a run of one rank."""
    return t


def local_gather(t: torch.Tensor, name: str) -> torch.Tensor:
    """``Gather`` of a run of one rank."""
    return t


def group_index(groups: Sequence[int] | None, num_slots: int) -> torch.Tensor | None:
    """(M,) the pair layer's input of each slot, from the inputs' widths (``DatasetMetadata.slot_groups``);
    None when every slot is its own input (no pooled field)."""
    if groups is None or all(g == 1 for g in groups):
        return None
    if sum(groups) != num_slots:
        raise ValueError(f"slot groups {tuple(groups)} do not cover the {num_slots} slots")
    return torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(list(groups)))


def fm_predict(w0: torch.Tensor, w: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor,
               mask: torch.Tensor, groups: Sequence[int] | None = None) -> torch.Tensor:
    """(B,) float64 FM predictions (Rendle's eq. 1, pairs by his lemma 3.1) of parameters w0 (),
    w (F,), v (F, k) for rows ``ids``, ``vals``, ``mask`` (B, M); unclipped. ``groups``: the pair
    layer's input widths (``DatasetMetadata.slot_groups``): a pooled field's slots are summed into one
    vector first, so the pairs are those of the product's FM (none inside a pooled field)."""
    x = torch.where(mask, vals, torch.zeros_like(vals)).double()
    e = v[ids] * x.unsqueeze(-1)
    index = group_index(groups, ids.shape[1])
    if index is not None:
        e = torch.zeros(e.shape[0], int(index.max()) + 1, e.shape[2], dtype=e.dtype).index_add_(1, index, e)
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
        # a feature twice in a row (two out-of-vocabulary values) puts v_i . v_i in the FM, or (in a pooled
        # field) two slots of one feature in one class: refused either way
        apart = torch.where(present, block, -1 - torch.arange(width)).sort(1).values
        twice = reduce(torch.tensor([float((apart[:, 1:] == apart[:, :-1]).any(1).sum())], dtype=torch.float64),
                       f"gibbs-twice-{f.name}")
        if twice[0] > 0:
            raise SamplerNotApplicable(f"field {f.name}: {int(twice[0])} training rows hold one of its features twice "
                                       "(two values mapped to one id, e.g. out-of-vocabulary): the Gibbs sampler "
                                       "needs each feature at most once a row; train with --mcmc-sweeps 0 (--resume "
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

    A pooled field's slots (``FieldLayout.pooled``: a history bag) are one input of the pair layer,
    as in the product's FM: no pair inside the field, so its feature's dy/dv_i is x_i times the sum
    of the *other* inputs' vectors, and the FM is still linear in (w_i, v_i) jointly.

    Raises:
        SamplerNotApplicable: a row holds a feature twice (``colour_classes``).
    """

    def __init__(self, train: Batch, fields: Sequence[FieldLayout], num_features: int, k: int, seed: int, *,
                 reduce: Reduce = local_reduce, gather: Gather = local_gather, init_std: float = 0.1) -> None:
        # a pooled field's slots are summed into one input of the pair layer (the product's FM)
        self.pooled = [(fi, f.slot, f.width) for fi, f in enumerate(fields) if f.pooled]
        self.slot_groups = slot_groups(fields)
        self.g = torch.Generator().manual_seed(seed)
        self.reduce = reduce
        self.ids = train.ids
        self.x = torch.where(train.mask, train.vals, torch.zeros_like(train.vals)).double()
        self.y = train.label.double()
        self.classes = []
        self.n_features, self.k = num_features, k
        self.group_of = torch.zeros(num_features, dtype=torch.long)
        for fi, f in enumerate(fields):
            self.group_of[f.offset:f.offset + f.size] = fi
        pooled_at = {fi: i for i, (fi, _, _) in enumerate(self.pooled)}
        for slot, members in colour_classes(train.ids, train.mask, fields, reduce=reduce, gather=gather):
            rows = torch.nonzero(slot >= 0).squeeze(1)
            fid = train.ids[rows, slot[rows]]
            position = torch.full((num_features,), -1, dtype=torch.long)
            position[members] = torch.arange(len(members))
            # the class's pooled field (its index in self.pooled), or -1: every member is of one field
            bag = pooled_at.get(int(self.group_of[members[0]]), -1) if len(members) else -1
            self.classes.append((members, rows, position[fid], self.x[rows, slot[rows]], bag))
        self.n = float(reduce(torch.tensor([float(self.y.numel())], dtype=torch.float64), "gibbs-rows")[0])
        self.group_size = torch.bincount(self.group_of, minlength=len(fields)).double()
        self.w0 = torch.tensor(float(reduce(self.y.sum().reshape(1), "gibbs-label-sum")[0]) / max(self.n, 1.0),
                               dtype=torch.float64)
        # (w_i, v_i) drawn in blocks of at most BLOCK parameters: one Gaussian and one allreduce each
        self.blocks = [(b, min(b + BLOCK, k + 1)) for b in range(0, k + 1, BLOCK)]
        self._upper = {d: torch.triu_indices(d, d) for d in {hi - lo for lo, hi in self.blocks}}
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

    def _draw_block(self, members: torch.Tensor, pos: torch.Tensor, z: torch.Tensor, e: torch.Tensor,
                    theta: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor, name: str,
                    outer: torch.Tensor | None = None) -> torch.Tensor:
        """The class's new (w_i, v_i) (c, k + 1) from its rows' z = dy/d(w_i, v_i) (N_c, k + 1) and
        residuals e (N_c,), under the priors mu, lam (c, k + 1): one allreduce of the Gram matrices'
        upper triangles and the right-hand sides, then a Cholesky factor per feature. ``outer``: the
        rows' upper triangles of z z^T (N_c, (k + 1) (k + 2) / 2) where the caller has them. Here k + 1
        stands for the block's size d <= BLOCK: z, theta, mu and lam are the block's columns."""
        c, d = theta.shape
        upper = self._upper[d]
        t = upper.shape[1]  # d (d + 1) / 2
        per_row = torch.empty(z.shape[0], t + d, dtype=torch.float64)
        if outer is None:
            torch.mul(z[:, upper[0]], z[:, upper[1]], out=per_row[:, :t])  # the upper triangle of z z^T
        else:
            per_row[:, :t] = outer
        target = e + (z * theta[pos]).sum(1)  # the residual with the feature's own part put back
        torch.mul(z, target.unsqueeze(1), out=per_row[:, t:])
        sums = torch.zeros(c, t + d, dtype=torch.float64).index_add_(0, pos, per_row)
        sums = self.reduce(sums, name)
        gram = torch.zeros(c, d, d, dtype=torch.float64)
        gram[:, upper[0], upper[1]] = sums[:, :t]
        gram = gram + gram.transpose(1, 2) - torch.diag_embed(gram.diagonal(dim1=1, dim2=2))
        precision = self.alpha * gram + torch.diag_embed(lam)
        chol = torch.linalg.cholesky(precision)  # precision = L L^T
        rhs = self.alpha * sums[:, t:] + mu * lam
        mean = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)
        noise = torch.randn(c, d, 1, generator=self.g, dtype=torch.float64)
        # L^T x = noise: x ~ N(0, precision^-1)
        return mean + torch.linalg.solve_triangular(chol.transpose(1, 2), noise, upper=True).squeeze(2)

    def sweep(self) -> float:
        """Draw every parameter once; returns the training RMSE of the sample before this sweep.

        The FM is linear in a feature's (w_i, v_i) jointly (its pairs are with *other* inputs), so the
        conditional of that vector is one Gaussian of k + 1 dimensions, drawn in blocks of at most
        BLOCK parameters (as BPMF draws a user's vector: Salakhutdinov and Mnih 2008) for all features
        of a colour class at once: one allreduce a class and block a sweep (one block at k <= 8), where
        libFM's coordinate-wise draws need k + 1."""
        ids, x, y = self.ids, self.x, self.y
        # exact residuals and sums each sweep (no drift from the incremental updates)
        vx = self.v[ids] * x.unsqueeze(-1)
        q = vx.sum(1)  # (N, k)
        # each pooled field's vector (N, k) and the squares of the pair layer's inputs
        bags = [vx[:, s0:s0 + width].sum(1) for _, s0, width in self.pooled]
        slot_sq = x.pow(2) * self.v.pow(2).sum(1)[ids]  # (N, M): |v_i x_i|^2
        own = slot_sq.sum(1)
        for (_, s0, width), b in zip(self.pooled, bags):
            own += b.pow(2).sum(1) - slot_sq[:, s0:s0 + width].sum(1)
        e = y - (self.w0 + (self.w[ids] * x).sum(1) + 0.5 * (q.pow(2).sum(1) - own))
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
        others = upper = None  # while a pooled field's classes are drawn: q less its bag, and the outer products
        whole = len(self.blocks) == 1
        for ci, (members, rows, pos, xr, bag) in enumerate(self.classes):
            g = self.group_of[members]
            theta = torch.cat([self.w[members].unsqueeze(1), self.v[members]], 1)  # (c, k + 1)
            mu = torch.cat([self.mu_w[g].unsqueeze(1), self.mu_v[g]], 1)
            lam = torch.cat([self.lam_w[g].unsqueeze(1), self.lam_v[g]], 1)
            x1 = xr.unsqueeze(1)
            outer = None
            if bag < 0:
                # dy/dw_i = x_i, dy/dv_i = x_i (q - v_i x_i): the pairs with every other slot
                z = torch.cat([x1, x1 * (q[rows] - theta[pos, 1:] * x1)], 1)
            else:
                # a bag's features pair with the other inputs only: z = x_i (1, q - bag), the same for
                # every feature of the bag in a row, and unchanged while the field's classes are drawn
                if others is None:
                    others = torch.cat([torch.ones(len(q), 1, dtype=torch.float64), q - bags[bag]], 1)
                    if whole:
                        upper = others[:, self._upper[self.k + 1][0]] * others[:, self._upper[self.k + 1][1]]
                z = x1 * others[rows]
                outer = upper[rows] * x1.pow(2) if whole else None
            # a block's z does not change when another block is drawn (its dimensions of q and v_i do not)
            for lo, hi in self.blocks:
                old = theta[:, lo:hi]
                new = self._draw_block(members, pos, z[:, lo:hi], e[rows], old, mu[:, lo:hi], lam[:, lo:hi],
                                       f"gibbs-{ci}-{lo}", outer=outer)
                d = (new - old)[pos]
                theta[:, lo:hi] = new
                e[rows] -= (z[:, lo:hi] * d).sum(1)
                v_lo, v_hi = max(lo, 1), hi  # the block's factor dimensions, lo - 1 .. hi - 2 of v
                if v_hi > v_lo:
                    step = d[:, v_lo - lo:] * x1
                    if bag < 0:
                        q[rows, v_lo - 1:v_hi - 1] += step
                    else:
                        bags[bag][rows, v_lo - 1:v_hi - 1] += step
            self.w[members], self.v[members] = theta[:, 0], theta[:, 1:]
            if bag >= 0 and (ci + 1 == len(self.classes) or self.classes[ci + 1][4] != bag):  # the field's last class
                q = others[:, 1:] + bags[bag]
                others = upper = None
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
                val_sum += fm_predict(*kept[-1], *validation.inputs, model.slot_groups)
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
