"""Experiment (measured, not the default: docs/results/quality.md): L2 regularisation of the feature tables whose strength is learnt on the validation split while
the model trains: libFM's SGDA (Rendle, "Learning recommender systems with adaptive
regularization", WSDM 2012; srendle/libfm ``fm_learn_sgd_element_adapt_reg.h``), for mini-batch
Adagrad and data-parallel ranks.

One strength per field and table: lambda_v[g] for the embeddings v_i and lambda_w[g] for the
linear weights w_i of the features of field g (the dataset's ``FieldLayout`` id ranges). A training
step adds, as libFM's SGD does, the squared norms of the rows it touches, each as often as it
occurs (so the gradient stays sparse), to the mean loss:

    R(ids, mask) = (1/B) sum_b sum_s mask_bs (lambda_v[g(i)] ||v_i||^2 + lambda_w[g(i)] w_i^2),  i = ids_bs

Rendle's lambda step: after a step theta' = theta - alpha (grad + 2 lambda theta), the validation
loss of the next step depends on lambda through d theta'/d lambda = -2 alpha theta, so

    dL_val/d lambda_g = sum_{i in g, in the validation batch} <dL_val/d theta_i, -2 alpha_i theta_i>

with Adagrad's per-coordinate step alpha_i = lr / (sqrt(G_i) + eps) (the optimizer's accumulators;
libFM's plain SGD has one alpha). As in libFM, every feature of the validation batch counts as if
the next step touched it; the gradient is taken at theta, not at libFM's look-ahead theta'.
Unlike libFM (plain SGD on lambda, starting at 0, so its step size is one more number to tune),
log lambda takes RMS-normalised steps (RMSprop on u = log lambda): the step does not depend on the
loss's scale, the strengths stay positive, and they move by at most ``step`` (in log units) a
step, between ``LOG_RANGE``.

Distributed: each rank computes the gradient on its own validation batch; the caller averages
it over the ranks (``gradient`` then ``apply``), so every rank keeps the same strengths.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from afm_dist.models import ScoringModel

# Strengths stay in [1e-6, 10] (log units): below 1e-6 the penalty does nothing at any scale seen
# (libFM's own grids and ours use 1e-3 .. 1); 10 freezes a table at 0.
LOG_RANGE = (math.log(1e-6), math.log(10.0))


class AdaptiveL2:
    """Per-field L2 strengths of the embedding and linear tables, learnt on validation batches.

    Args:
        field_offsets: (G,) first global feature id of each field, ascending (``FieldLayout.offset``).
        num_features: N; ids at or past it are refused by the model anyway.
        initial: starting strength of every field, both tables.
        step: largest change of log lambda in one step (the RMS-normalised step size).
        decay: RMSprop's decay of the mean squared gradient of log lambda.
        bounds: the smallest and largest strength.

    State (saved in checkpoints with ``state_dict``): ``log_lambda`` (2, G): row 0 embeddings,
    row 1 linear weights; ``mean_square`` (2, G).
    """

    def __init__(self, field_offsets: list[int], num_features: int, initial: float = 1e-3, step: float = 0.01,
                 decay: float = 0.99, bounds: tuple[float, float] = (1e-6, 10.0)) -> None:
        if not field_offsets or field_offsets[0] != 0 or sorted(field_offsets) != list(field_offsets):
            raise ValueError(f"field offsets must start at 0 and ascend, got {field_offsets}")
        if not initial > 0 or not step > 0 or not 0 < decay < 1:
            raise ValueError(f"initial {initial} and step {step} must be positive, decay {decay} in (0, 1)")
        self.offsets = torch.tensor(field_offsets, dtype=torch.long)
        self.num_features = num_features
        self.step, self.decay = step, decay
        g = len(field_offsets)
        self.log_lambda = torch.full((2, g), math.log(initial), dtype=torch.float64)
        self.mean_square = torch.zeros((2, g), dtype=torch.float64)
        self.steps = 0
        self.log_range = (math.log(bounds[0]), math.log(bounds[1]))

    @property
    def num_fields(self) -> int:
        return int(self.offsets.numel())

    def lambdas(self) -> torch.Tensor:
        """(2, G) current strengths: row 0 embeddings, row 1 linear weights."""
        return self.log_lambda.exp()

    def field_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The field index (0 .. G-1) of each feature id; same shape as ``ids``."""
        return torch.bucketize(ids, self.offsets.to(ids.device), right=True) - 1

    def penalty(self, model: ScoringModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """R(ids, mask) above: a scalar to add to the batch's mean loss.

        Args:
            ids, mask: (B, M) the batch's feature ids and slot mask.
        """
        lam = self.lambdas().to(device=ids.device, dtype=model.linear.weight.weight.dtype)
        g = self.field_of(ids)  # (B, M)
        m = mask.to(lam.dtype)
        v = model.embedding.embedding(ids)  # (B, M, k)
        w = model.linear.weight(ids).squeeze(-1)  # (B, M)
        per_slot = lam[0][g] * (v * v).sum(-1) + lam[1][g] * w * w
        return (per_slot * m).sum(1).mean()

    def gradient(self, model: ScoringModel, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
                 vals: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, lr: float,
                 clip: tuple[float, float] | None = None) -> torch.Tensor:
        """dL_val / d lambda, (2, G) float64, on one validation batch (this rank's).

        The model's gradients are cleared before and after; the model is left in train mode.
        A table without Adagrad accumulators yet (before its first step) contributes 0.

        Args:
            ids, vals, mask: (B, M) the validation batch; labels: (B,).
            lr: the optimizer's learning rate.
            clip: the target range; predictions are clipped to it as libFM's lambda step does
                (a clipped prediction gives no gradient).
        """
        model.eval()
        model.zero_grad(set_to_none=True)
        scores = model(ids, vals, mask)
        if clip is not None:
            scores = scores.clamp(*clip)
        F.mse_loss(scores, labels).backward()
        grad = torch.zeros((2, self.num_fields), dtype=torch.float64)
        for row, table in enumerate((model.embedding.embedding.weight, model.linear.weight.weight)):
            acc = optimizer.state.get(table, {}).get("sum")
            if table.grad is None or acc is None:
                continue
            g = table.grad.coalesce() if table.grad.is_sparse else table.grad.to_sparse(1).coalesce()
            rows, values = g.indices()[0], g.values()  # (R,), (R, k)
            eps = optimizer.param_groups[0].get("eps", 1e-10)
            a = acc.index_select(0, rows)
            alpha = lr / (a.sqrt() + eps)
            if alpha.dim() == 1:  # row-wise accumulators
                alpha = alpha.unsqueeze(1)
            d = -2.0 * (values * alpha * table.detach().index_select(0, rows)).sum(1)  # (R,)
            grad[row].index_add_(0, self.field_of(rows).cpu(), d.double().cpu())
        model.zero_grad(set_to_none=True)
        model.train()
        return grad

    def apply(self, grad: torch.Tensor) -> None:
        """One RMS-normalised step on log lambda with ``grad`` = dL_val/d lambda (2, G), averaged over
        the ranks by the caller. Fields without a gradient (0) do not move."""
        g = grad.double() * self.lambdas()  # d/d log lambda
        self.mean_square.mul_(self.decay).add_((1 - self.decay) * g * g)
        self.steps += 1
        corrected = self.mean_square / (1 - self.decay ** self.steps)
        move = torch.where(corrected > 0, g / corrected.sqrt().clamp_min(1e-300), torch.zeros_like(g))
        self.log_lambda.sub_(self.step * move).clamp_(*self.log_range)

    def state_dict(self) -> dict:
        return {"log_lambda": self.log_lambda.clone(), "mean_square": self.mean_square.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.log_lambda.copy_(state["log_lambda"])
        self.mean_square.copy_(state["mean_square"])
        self.steps = int(state["steps"])
