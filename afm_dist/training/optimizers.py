"""Optimizers for models whose feature tables are large: a step updates only the rows its batch
touched, and the optimizer state of a table can be one number per row.

``adagrad``          Adagrad, the paper's optimizer (``RowWiseAdagrad`` without row-wise groups:
                     torch's Adagrad update, without lr decay). With sparse table gradients it is
                     lazy: only the touched rows' accumulators and parameters change (for Adagrad
                     that is exactly what the dense update computes, as an untouched row's
                     gradient is 0): the touched rows are gathered, updated by torch's fused
                     Adagrad kernel, and written back; its accumulators are made at the first step.
``rowwise_adagrad``  ``RowWiseAdagrad``: one accumulator per row of each feature table (the mean
                     of the row's squared gradient), as TorchRec's and FBGEMM's row-wise Adagrad;
                     k times less optimizer memory for an (N, k) table. Other parameters keep
                     elementwise Adagrad.
``adam``             torch's Adam, dense tables only (it takes no sparse gradients).

A table's sparse gradient comes out of backward with one row per distinct id of each read of it
(the forward's, ``layers.Lookup``, and the L2 penalty's); the trainer's gradient exchange
(afm_dist/training/exchange.py) sums the rows of each feature id once, over every rank's rows,
before the step; a gradient that reaches ``step`` otherwise is coalesced there.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.optim.adagrad import adagrad

OPTIMIZERS = ("adagrad", "rowwise_adagrad", "adam")
SPARSE_OPTIMIZERS = ("adagrad", "rowwise_adagrad")  # those that take sparse table gradients


def feature_tables(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every ``nn.Embedding`` of ``model``: its (N, k) and (N, 1) feature tables."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]


class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row for the parameter groups marked ``rowwise``.

    For a table W (N, k) and a step's gradient g, per touched row i:

        s_i += mean_f g_if^2          W_i -= lr * g_i / (sqrt(s_i) + eps)

    Groups without ``rowwise`` get elementwise Adagrad (torch's update, no lr decay). Sparse
    gradients update only their rows (lazily); dense ones every row. Accumulators are made at a
    parameter's first step.

    Args:
        params: parameters or parameter groups; a group with ``"rowwise": True`` holds 2-D tables.
        lr: learning rate.
        eps: added to the root of the accumulator.
        initial_accumulator_value: starting value of every accumulator.

    Raises:
        ValueError: a ``rowwise`` group holding a parameter that is not 2-D.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "rowwise": False,
                                  "initial_accumulator_value": initial_accumulator_value})
        for group in self.param_groups:
            for p in group["params"]:
                if group["rowwise"] and p.dim() != 2:
                    raise ValueError(f"a row-wise group needs (N, k) tables, got a parameter of shape {tuple(p.shape)}")

    def _accumulator(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """The parameter's accumulator, made at its first step: (N,) row-wise, else p's shape.

        Made lazily, not in the constructor: a wrapper that builds a second optimizer over the
        same parameters (as Horovod's DistributedOptimizer does) would otherwise hold two sets of
        accumulators of a large table at once."""
        state = self.state[p]
        if "sum" not in state:
            shape = p.shape[:1] if group["rowwise"] else p.shape
            state["sum"] = torch.full(shape, float(group["initial_accumulator_value"]), dtype=p.dtype, device=p.device)
        return state["sum"]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, rowwise = group["lr"], group["eps"], group["rowwise"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = self._accumulator(p, group)
                if p.grad.is_sparse:  # only the touched rows
                    g = p.grad.coalesce()
                    rows, values = g.indices()[0], g.values()  # (R,), (R, k): distinct rows
                    if rowwise:
                        acc.index_add_(0, rows, values.square().mean(dim=1))
                        std = acc.index_select(0, rows).sqrt_().add_(eps)  # (R,)
                        p.index_put_((rows,), p.index_select(0, rows).add_(torch.div(values, std.unsqueeze(1)), alpha=-lr))
                    else:  # torch's own (fused) update of the gathered rows, written back
                        touched, sums = p.index_select(0, rows), acc.index_select(0, rows)  # (R, k)
                        _adagrad(touched, values, sums, lr, eps)
                        p.index_copy_(0, rows, touched)
                        acc.index_copy_(0, rows, sums)
                elif rowwise:
                    acc.add_(p.grad.square().mean(dim=1))
                    p.addcdiv_(p.grad, acc.sqrt().add_(eps).unsqueeze(1), value=-lr)
                else:
                    _adagrad(p, p.grad, acc, lr, eps)
        return loss


def _adagrad(params: torch.Tensor, grads: torch.Tensor, sums: torch.Tensor, lr: float, eps: float) -> None:
    """Adagrad's update in place, torch's fused kernel: sums += g^2; params -= lr g / (sqrt(sums) + eps)."""
    step = torch.zeros((), dtype=torch.float32, device=params.device)  # its count; unused without lr decay
    # the fused kernel ignores strides: only contiguous tensors (as every one the trainer passes)
    fused = params.device.type in ("cpu", "cuda") and params.dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                                        torch.float64) \
        and params.is_contiguous() and grads.is_contiguous() and sums.is_contiguous()
    adagrad([params], [grads], [sums], [step], fused=fused or None, lr=lr, weight_decay=0.0, lr_decay=0.0, eps=eps,
            maximize=False)


def build_optimizer(name: str, model: nn.Module, lr: float,
                    initial_accumulator_value: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of ``OPTIMIZERS``) over ``model``'s parameters.
    ``initial_accumulator_value``: Adagrad's (both kinds) starting accumulator; Adam ignores it.

    Raises:
        ValueError: an unknown name, or ``adam`` with sparse table gradients.
    """
    tables = feature_tables(model)
    sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
    if sparse and name not in SPARSE_OPTIMIZERS:
        raise ValueError(f"--optimizer {name} takes no sparse gradients; use --optimizer adagrad or rowwise_adagrad, "
                         "or --sparse-embeddings false")
    if name == "adagrad":
        return RowWiseAdagrad(model.parameters(), lr=lr, initial_accumulator_value=initial_accumulator_value)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "rowwise_adagrad":
        table_ids = {id(t) for t in tables if t.dim() == 2 and t.shape[1] > 1}
        rowwise = [p for p in model.parameters() if id(p) in table_ids]
        rest = [p for p in model.parameters() if id(p) not in table_ids]
        groups = [{"params": rowwise, "rowwise": True}, {"params": rest}]
        return RowWiseAdagrad([g for g in groups if g["params"]], lr=lr,
                              initial_accumulator_value=initial_accumulator_value)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
