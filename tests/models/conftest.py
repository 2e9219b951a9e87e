"""Small random batches of the data contract (afm_dist/dataset.py) for the model tests."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_batch(batch_size: int, num_slots: int, num_features: int, *, seed: int = 0,
                 dtype: torch.dtype = torch.float64, padded: bool = True) -> Batch:
    """ids (B, M) int64, real-valued vals (B, M), mask (B, M) bool.

    With ``padded``, about a third of the slots are padding (vals 0, id 0 as the data set writes
    them), and the first rows have 0, 1 and 2 real slots, the edge cases of the pair terms.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_features, (batch_size, num_slots), generator=g)
    vals = (torch.rand(batch_size, num_slots, generator=g, dtype=dtype) * 2.0 - 0.5)  # x_i in [-0.5, 1.5)
    mask = torch.ones(batch_size, num_slots, dtype=torch.bool)
    if padded:
        mask = torch.rand(batch_size, num_slots, generator=g) > 0.33
        for active in range(min(3, batch_size)):  # row r has r real slots
            mask[active] = False
            mask[active, :active] = True
        ids = ids.masked_fill(~mask, 0)
        vals = vals.masked_fill(~mask, 0.0)
    return ids, vals, mask


@pytest.fixture
def make_batch() -> Callable[..., Batch]:
    return random_batch
