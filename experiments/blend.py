"""Issue 24: two FMs' predictions blended, y = u y_A + (1 - u) y_B, with u chosen on validation, written
as one FM (the blend of two FMs is an FM: w0 and w blended, v_i = [sqrt(u) v_A,i, sqrt(1 - u) v_B,i],
so the pairs' dot products blend too), in the harness's --fm-cache format, for an AFM to start from.

    .venv/bin/python experiments/blend.py DATA_DIR A.pt B.pt [--save OUT.pt]
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from afm_dist.models import ModelConfig, build_model
from regularise import load_data  # experiments/regularise.py

GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def load_fm(path: str, meta) -> torch.nn.Module:
    saved = torch.load(path, weights_only=True)
    k = saved["model"]["embedding.embedding.weight"].shape[1]
    fm = build_model("fm", meta.num_features, meta.num_slots, ModelConfig(embedding_dim=k), meta.slot_groups())
    fm.load_state_dict(saved["model"])
    return fm.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--save")
    p.add_argument("--log", default="docs/results/gibbs.jsonl")
    args = p.parse_args()
    meta, _, data, (lo, hi) = load_data(args.data)
    fa, fb = load_fm(args.a, meta), load_fm(args.b, meta)
    rmse = {}
    with torch.no_grad():
        for s in ("validation", "test"):
            d = data[s]
            ya, yb, y = fa(*d.inputs).double(), fb(*d.inputs).double(), d.label.double()
            rmse[s] = [float(((u * ya + (1 - u) * yb).clamp(lo, hi) - y).pow(2).mean().sqrt()) for u in GRID]
    best = min(range(len(GRID)), key=lambda i: rmse["validation"][i])
    u = GRID[best]
    out = {"data": args.data, "blend": [args.a, args.b], "u": u, "validation": round(rmse["validation"][best], 5),
           "test": round(rmse["test"][best], 5), "grid": GRID,
           "grid_validation": [round(x, 5) for x in rmse["validation"]], "grid_test": [round(x, 5) for x in rmse["test"]]}
    print(json.dumps(out))
    with open(args.log, "a") as fh:
        fh.write(json.dumps(out) + "\n")
    if args.save:
        sa, sb = fa.state_dict(), fb.state_dict()
        state = {"linear.bias": u * sa["linear.bias"] + (1 - u) * sb["linear.bias"],
                 "linear.weight.weight": u * sa["linear.weight.weight"] + (1 - u) * sb["linear.weight.weight"],
                 "embedding.embedding.weight": torch.cat([math.sqrt(u) * sa["embedding.embedding.weight"],
                                                          math.sqrt(1 - u) * sb["embedding.embedding.weight"]], 1)}
        torch.save({"model": state, "accumulators": {k: torch.zeros_like(t) for k, t in state.items() if k != "linear.bias"}},
                   args.save)
        print(f"wrote {args.save}: one FM of k = {state['embedding.embedding.weight'].shape[1]}")


if __name__ == "__main__":
    main()
