"""Run under horovodrun: each rank contributes (rank + 1) * [1, 2, 3] and writes what it got."""
import json
import sys

import horovod.torch as hvd
import torch

hvd.init()
contribution = (hvd.rank() + 1) * torch.tensor([1.0, 2.0, 3.0])
summed = hvd.allreduce(contribution, op=hvd.Sum, name="check")
gathered = hvd.allgather(torch.tensor([hvd.rank()]), name="ranks")
with open(f"{sys.argv[1]}/rank{hvd.rank()}.json", "w") as f:
    json.dump({"rank": hvd.rank(), "size": hvd.size(), "sum": summed.tolist(),
               "ranks": sorted(gathered.tolist())}, f)
