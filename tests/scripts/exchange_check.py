"""Run under horovodrun: the trainer's gradient exchange (afm_dist/training/exchange.py) against
hvd.DistributedOptimizer over sparse tables, and against the dense allreduce of whole tables.

Each rank trains three copies of a model for a few steps on its own batches (rows overlap across
ranks): ``ours`` (sparse tables, GradientExchange, the small dense gradients in its allgather;
also with them allreduced), ``horovod`` (sparse tables, Horovod's
DistributedOptimizer: two allgathers a table, one allreduce a dense parameter), ``dense`` (dense
tables, DistributedOptimizer: an allreduce of every whole table). Writes, per model, the largest
parameter difference of ``ours`` from each, from rank 0's ``ours``, and from the initial parameters.
In float64: the paths add a row's gradients in different orders, and Adagrad turns a float32
rounding difference in a gradient near 0 into a whole step of either sign (g / sqrt(g^2)).

    horovodrun -np 2 -H localhost:2 --gloo python tests/scripts/exchange_check.py OUT_DIR
"""
import json
import sys

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from afm_dist.models import ModelConfig, build_model
from afm_dist.training.exchange import GradientExchange
from afm_dist.training.optimizers import build_optimizer

N, M, ROWS, STEPS = 300, 5, 48, 6


def batch(step: int):
    g = torch.Generator().manual_seed(1000 * hvd.rank() + step)  # each rank its own rows
    return (torch.randint(0, N, (ROWS, M), generator=g), torch.rand(ROWS, M, generator=g, dtype=torch.float64) + 0.5,
            torch.ones(ROWS, M, dtype=torch.bool), torch.randn(ROWS, generator=g, dtype=torch.float64))


def build(name: str, sparse: bool):
    torch.manual_seed(3)
    config = ModelConfig(embedding_dim=8, attention_factor=8, interaction_dropout=0.0, sparse_embeddings=sparse)
    return build_model(name, N, M, config).double()


IN_GATHER = {}  # (model, limit): whether the dense gradients travelled in the allgather
PADDED = {}  # (model, pad limit): whether the rows travelled padded to the batch's lookups


def train(name: str, sparse: bool, optimizer_name: str, exchange: bool,
          dense_gather_limit: int | None = None, pad_limit: int | None = None) -> dict[str, torch.Tensor]:
    model = build(name, sparse)
    optimizer = build_optimizer(optimizer_name, model, 0.05)
    if exchange:
        average = GradientExchange(model, name=f"{name}.{optimizer_name}.{dense_gather_limit}.{pad_limit}",
                                   dense_gather_limit=dense_gather_limit, pad_limit=pad_limit)
        PADDED[name, pad_limit] = average.pads([min(ROWS * M, p.shape[0]) for p in average.sparse], 0)
        assert dense_gather_limit != 0 or not average.gathers_dense(hvd.size())
        IN_GATHER[name, dense_gather_limit] = average.gathers_dense(hvd.size())
    else:
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    for step in range(STEPS):
        ids, vals, mask, label = batch(step)
        optimizer.zero_grad()
        F.mse_loss(model(ids, vals, mask), label).backward()
        if exchange:
            average(max_rows=ids.numel())
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


hvd.init()
torch.set_num_threads(1)
result = {"rank": hvd.rank(), "size": hvd.size()}
for name, optimizer_name in (("fm", "adagrad"), ("wide_deep", "rowwise_adagrad"), ("afm", "adagrad")):
    ours = train(name, True, optimizer_name, exchange=True)
    horovod = train(name, True, optimizer_name, exchange=False)
    rank0 = {k: hvd.broadcast(v, root_rank=0, name=f"{name}.{k}.rank0") for k, v in ours.items()}
    start = {k: v.detach() for k, v in build(name, True).state_dict().items()}
    result[name] = {"vs_horovod": largest_difference(ours, horovod), "vs_rank0": largest_difference(ours, rank0),
                    "moved": largest_difference(ours, start), "dense_in_gather": IN_GATHER[name, None],
                    "vs_dense": largest_difference(ours, train(name, False, optimizer_name, exchange=False)),
                    # the dense gradients allreduced on their own rather than in the allgather
                    "vs_dense_allreduced": largest_difference(ours, train(name, True, optimizer_name, exchange=True,
                                                                          dense_gather_limit=0)),
                    # only the distinct rows in a buffer of the step's length, never padded
                    "vs_distinct_only": largest_difference(ours, train(name, True, optimizer_name, exchange=True,
                                                                       pad_limit=0)),
                    "padded": [PADDED[name, None], PADDED[name, 0]]}
with open(f"{sys.argv[1]}/rank{hvd.rank()}.json", "w") as f:
    json.dump(result, f)
