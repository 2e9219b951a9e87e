"""Issue 26: what a user's history of items adds to FM and AFM, before the Spark job builds it.

On a preprocessed explicit data set (user in slot ``--user-slot``, item in ``--item-slot``), each
row gets the bag of the other items its user has in the **training split** (a training row's own
item left out; validation and test rows see all of the user's training items), capped at
``--max-values`` by a seeded sample, each value x = 1/sqrt(n), ids in their own range. The bag is
one pooled input of the pair layer (``SlotPooling``). FM (the default L2 path) then AFM from it,
in one process with the product's classes and ``experiments/regularise.py``'s loop; validation
chooses, test only reported.

    .venv/bin/python experiments/history.py /tmp/q/d/ml1 --k 64 --epochs 50
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from afm_dist.batch import Batch
from afm_dist.models import ModelConfig, build_model, init_from_fm
from regularise import fit, load_data  # experiments/regularise.py


def with_history(data: dict[str, Batch], num_features: int, user_slot: int, item_slot: int, max_values: int,
                 seed: int) -> dict[str, Batch]:
    """Each split with the bag appended as ``max_values`` more slots (ids num_features + item id)."""
    train = data["train"]
    users, items = train.ids[:, user_slot].numpy(), train.ids[:, item_slot].numpy()
    order = np.argsort(users, kind="stable")
    by_user: dict[int, np.ndarray] = {}
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for chunk in np.split(order, bounds):
        by_user[int(users[chunk[0]])] = items[chunk]
    rng = np.random.default_rng(seed)
    sampled = {u: rng.permutation(v) for u, v in by_user.items()}
    out = {}
    for split, b in data.items():
        n = len(b)
        ids = np.zeros((n, max_values), dtype=np.int64)
        vals = np.zeros((n, max_values), dtype=np.float32)
        u_col, i_col = b.ids[:, user_slot].numpy(), b.ids[:, item_slot].numpy()
        for r in range(n):
            bag = sampled.get(int(u_col[r]), np.empty(0, dtype=np.int64))
            if split == "train":  # the row's own item, once
                hit = np.flatnonzero(bag == i_col[r])
                if hit.size:
                    bag = np.delete(bag, hit[0])
            bag = bag[:max_values]
            if bag.size:
                ids[r, :bag.size] = num_features + bag
                vals[r, :bag.size] = 1.0 / np.sqrt(bag.size)
        out[split] = Batch(ids=torch.cat([b.ids, torch.from_numpy(ids)], 1),
                           vals=torch.cat([b.vals, torch.from_numpy(vals)], 1),
                           mask=torch.cat([b.mask, torch.from_numpy(vals > 0)], 1), label=b.label)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--max-values", type=int, default=50)
    p.add_argument("--user-slot", type=int, default=0)
    p.add_argument("--item-slot", type=int, default=1)
    p.add_argument("--recipe", default="path=0.1/2")
    p.add_argument("--without", action="store_true", help="also the same models without the history")
    p.add_argument("--seed", type=int, default=2017)
    p.add_argument("--centre", action="store_true", help="w0 starts at the training split's mean target (the product's)")
    p.add_argument("--bag-l2-weight", type=float, default=1.0,
                   help="each L2 occurrence of a bag's row weighted by this (1: as every other row, the product)")
    p.add_argument("--fm-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(2)
    meta, batch, data, clip = load_data(a.data)
    cfg = ModelConfig(embedding_dim=a.k, attention_factor=a.k)
    variants = [("history", with_history(data, meta.num_features, a.user_slot, a.item_slot, a.max_values, a.seed),
                 2 * meta.num_features, (1,) * meta.num_slots + (a.max_values,))]
    if a.without:
        variants.append(("plain", data, meta.num_features, None))
    for name, d, n, groups in variants:
        m = sum(groups) if groups else meta.num_slots
        torch.manual_seed(2017)
        fm = build_model("fm", n, m, cfg, groups)
        if a.centre:
            fm.linear.bias.data.fill_(float(d["train"].label.mean()))
        row_weight = None
        if a.bag_l2_weight != 1.0 and name == "history":
            row_weight = torch.ones(n)
            row_weight[meta.num_features:] = a.bag_l2_weight
        r = fit(fm, d, meta, clip, a.recipe, epochs=a.epochs, batch=batch, row_weight=row_weight)
        r.pop("accumulators")
        print(json.dumps({"data": a.data, "experiment": "history", "features": name, "model": "fm", "k": a.k,
                          "max_values": a.max_values, **({"centre": True} if a.centre else {}),
                          **({"bag_l2_weight": a.bag_l2_weight} if a.bag_l2_weight != 1.0 else {}), **r}), flush=True)
        if a.fm_only:
            continue
        torch.manual_seed(2017)
        afm = init_from_fm(build_model("afm", n, m, cfg, groups), fm)
        r = fit(afm, d, meta, clip, a.recipe, epochs=a.epochs, batch=batch, eval0=True)
        r.pop("accumulators")
        print(json.dumps({"data": a.data, "experiment": "history", "features": name, "model": "afm", "k": a.k,
                          "max_values": a.max_values, **r}), flush=True)


if __name__ == "__main__":
    main()
