"""Benchmark of the AFM model: throughput against DeepCTR-Torch and FuxiCTR, memory of the two paths.

    bash bench/setup_competitors.sh                                   # once, optional
    .venv/bin/python bench/bench_models.py --out bench/results/models.json
    .venv/bin/python bench/bench_models.py --tuned-malloc --out bench/results/models.json  # + allocator runs

Measured, each in a fresh subprocess so that one variant's allocations and threads cannot
affect another's, the variants interleaved over several passes so that load on the machine
spreads over all of them alike:

- training examples/s (forward, MSE loss, backward, Adagrad step) and inference examples/s of
  AFM with k = t = 64, M = 10 one-hot fields, batch 512, torch.set_num_threads(2): ours (the
  default memory-efficient path and the naive one), DeepCTR-Torch's ``deepctr_torch.models.AFM``
  and FuxiCTR's AFM, when their venv (.venv-bench, bench/setup_competitors.sh) exists;
  The same at 1 thread follows (``--threads 2 1``): on 2 cores shared with other jobs, a step of
  2 OpenMP threads waits at every parallel region for a descheduled thread, so 2-thread figures
  measure the machine's load as much as the code; 1-thread figures are steadier. With
  ``--tuned-malloc`` all of it is repeated with glibc keeping freed memory (no page faults from
  large tensors freed and allocated again at every step);
- peak training memory (maxrss growth over one process's first two training steps) of our
  memory-efficient and naive paths at batch 4096, M = 40, k = t = 64.

All models run without dropout and without regularisation, so every one does the same work.
FuxiCTR keeps its AFM in ``model_zoo/AFM/src/AFM.py`` of its repository, which the PyPI package
does not ship; ``_fuxictr_afm`` composes the same model from the package's own layers
(FeatureEmbedding, InnerProductInteraction, LogisticRegression), as that file does.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

DEFAULT_COMPETITOR_PYTHON = REPO / ".venv-bench" / "bin" / "python"

SPEED_SHAPE = {"batch_size": 512, "num_fields": 10, "vocab_per_field": 539, "embedding_dim": 64,
               "attention_factor": 64}  # 10 fields x 539 values: Frappe's 5382 features, rounded
MEMORY_SHAPE = {"batch_size": 4096, "num_fields": 40, "vocab_per_field": 1000, "embedding_dim": 64,
                "attention_factor": 64}
SPEED_VARIANTS = ("ours", "ours_naive", "deepctr_torch", "fuxictr")
COMPETITORS = ("deepctr_torch", "fuxictr")


# ----------------------------------------------------------------------------- worker side

def _batches(shape: dict[str, int], count: int, seed: int = 0):
    """``count`` batches: per-field value ids (B, M) int64 and regression targets (B,)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, m, v = shape["batch_size"], shape["num_fields"], shape["vocab_per_field"]
    return [(torch.randint(0, v, (b, m), generator=g), torch.randn(b, generator=g)) for _ in range(count)]


def _ours(shape: dict[str, int], naive: bool):
    """Our AFM and a function mapping per-field value ids (B, M) to scores (B,)."""
    import torch

    from afm_dist.models import ModelConfig, build_model

    m, v = shape["num_fields"], shape["vocab_per_field"]
    config = ModelConfig(embedding_dim=shape["embedding_dim"], attention_factor=shape["attention_factor"],
                         interaction_dropout=0.0, attention_dropout=0.0, naive_attention=naive)
    model = build_model("afm", m * v, m, config)
    offsets = torch.arange(m) * v  # field f's values are global ids f*v .. f*v + v - 1

    def inputs(values):
        ones = torch.ones(values.shape, dtype=torch.float32)  # one-hot fields: x_i = 1, no padding
        return values + offsets, ones, ones.bool()

    cache: dict[int, tuple] = {}

    def forward(values):
        key = id(values)
        if key not in cache:  # the data set hands our model these three arrays; build them once
            cache[key] = inputs(values)
        return model(*cache[key])

    return model, forward


def _deepctr_afm(shape: dict[str, int]):
    """DeepCTR-Torch's AFM over M sparse fields, as its documentation builds it, for regression."""
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import AFM

    columns = [SparseFeat(f"f{i}", vocabulary_size=shape["vocab_per_field"], embedding_dim=shape["embedding_dim"])
               for i in range(shape["num_fields"])]
    model = AFM(columns, columns, attention_factor=shape["attention_factor"], l2_reg_linear=0.0,
                l2_reg_embedding=0.0, l2_reg_att=0.0, afm_dropout=0.0, task="regression", device="cpu")
    cache: dict[int, torch.Tensor] = {}

    def forward(values):
        key = id(values)
        if key not in cache:  # DeepCTR takes one float matrix of all input columns
            cache[key] = values.float()
        return model(cache[key]).squeeze(-1)

    return model, forward


def _import_fuxictr_layers():
    """FuxiCTR's layers. Its layer package imports its preprocessing package at import time (for
    pretrained embeddings), which needs polars and ray; neither is used by these layers, so when
    they are missing the preprocessing modules are replaced by stubs that fail if ever called."""
    import types

    try:
        import polars  # noqa: F401
        import ray  # noqa: F401
    except ImportError:
        def unavailable(*args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("fuxictr.preprocess is stubbed in the benchmark venv")

        package = types.ModuleType("fuxictr.preprocess")
        package.__path__ = []
        tokenizer = types.ModuleType("fuxictr.preprocess.tokenizer")
        tokenizer.load_pretrain_emb = unavailable
        package.tokenizer = tokenizer
        sys.modules["fuxictr.preprocess"] = package
        sys.modules["fuxictr.preprocess.tokenizer"] = tokenizer
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.layers import FeatureEmbedding, InnerProductInteraction, LogisticRegression

    return FeatureMap, FeatureEmbedding, InnerProductInteraction, LogisticRegression


def _fuxictr_afm(shape: dict[str, int]):
    """FuxiCTR's AFM (model_zoo/AFM): its FeatureEmbedding, InnerProductInteraction (elementwise
    products), an attention Linear-ReLU-Linear-Softmax over pairs, a projection p and its LR layer."""
    import torch
    from torch import nn

    FeatureMap, FeatureEmbedding, InnerProductInteraction, LogisticRegression = _import_fuxictr_layers()
    feature_map = FeatureMap("bench", "/nonexistent")
    for i in range(shape["num_fields"]):
        feature_map.features[f"f{i}"] = {"type": "categorical", "source": "", "vocab_size": shape["vocab_per_field"]}
    feature_map.num_fields = shape["num_fields"]
    feature_map.set_column_index()
    k, t = shape["embedding_dim"], shape["attention_factor"]

    class FuxiCTRAFM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding_layer = FeatureEmbedding(feature_map, k)
            self.product_layer = InnerProductInteraction(feature_map.num_fields, output="elementwise_product")
            self.lr_layer = LogisticRegression(feature_map, use_bias=True)
            self.attention = nn.Sequential(nn.Linear(k, t), nn.ReLU(), nn.Linear(t, 1, bias=False), nn.Softmax(dim=1))
            self.weight_p = nn.Linear(k, 1, bias=False)

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            products = self.product_layer(self.embedding_layer(inputs))  # (B, P, k)
            pooled = (self.attention(products) * products).sum(dim=1)  # (B, k)
            return self.lr_layer(inputs) + self.weight_p(pooled)  # (B, 1)

    model = FuxiCTRAFM()
    cache: dict[int, dict[str, torch.Tensor]] = {}

    def forward(values):
        key = id(values)
        if key not in cache:  # FuxiCTR takes a dict of one id column per feature
            cache[key] = {f"f{i}": values[:, i] for i in range(values.shape[1])}
        return model(cache[key]).squeeze(-1)

    return model, forward


BUILDERS: dict[str, Callable] = {
    "ours": lambda shape: _ours(shape, naive=False),
    "ours_naive": lambda shape: _ours(shape, naive=True),
    "deepctr_torch": _deepctr_afm,
    "fuxictr": _fuxictr_afm,
}


def _rounds(step: Callable[[Any], None], batches: list, rounds: int, iters: int, batch_size: int) -> list[float]:
    """Examples/s of each of ``rounds`` timed rounds of ``iters`` steps."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(iters):
            step(batches[i % len(batches)])
        out.append(iters * batch_size / (time.perf_counter() - start))
    return out


def speed_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    shape = spec["shape"]
    model, forward = BUILDERS[spec["variant"]](shape)
    batches = _batches(shape, 4)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.01)

    def train_step(batch) -> None:
        values, target = batch
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(forward(values), target).backward()
        optimizer.step()

    def infer_step(batch) -> None:
        forward(batch[0])

    model.train()
    _rounds(train_step, batches, 1, spec["warmup"], shape["batch_size"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    train = _rounds(train_step, batches, spec["rounds"], spec["iters"], shape["batch_size"])
    after = resource.getrusage(resource.RUSAGE_SELF)
    steps = spec["rounds"] * spec["iters"]
    model.eval()
    with torch.inference_mode():
        _rounds(infer_step, batches, 1, spec["warmup"], shape["batch_size"])
        infer = _rounds(infer_step, batches, spec["rounds"], spec["iters"], shape["batch_size"])
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"train_examples_per_s": train, "infer_examples_per_s": infer, "num_parameters": params,
            "torch": torch.__version__,
            # Large tensors freed back to the OS and faulted in again cost as much as arithmetic here.
            "train_page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "train_system_ms_per_step": (after.ru_stime - before.ru_stime) / steps * 1e3}


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    shape = spec["shape"]
    model, forward = BUILDERS[spec["variant"]](shape)
    values, target = _batches(shape, 1)[0]
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.01)

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

    model.train()
    base = rss_mib()
    for _ in range(2):  # the first step also allocates the optimizer state
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(forward(values), target).backward()
        optimizer.step()
    peak = rss_mib()
    return {"base_rss_mib": base, "peak_rss_mib": peak, "training_peak_mib": peak - base}


# ----------------------------------------------------------------------------- driver side

def run_worker(python: str, spec: dict[str, Any], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process; its last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(spec["threads"]), **(env or {})}
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['kind']} worker for {spec['variant']} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def competitor_available(python: str, variant: str) -> tuple[bool, str]:
    """Whether ``python`` can build the competitor; the reason when not."""
    if not Path(python).exists():
        return False, f"{python} not found: run bash bench/setup_competitors.sh"
    spec = {"kind": "probe", "variant": variant, "threads": 1, "shape": dict(SPEED_SHAPE, batch_size=2)}
    try:
        run_worker(python, spec, timeout=300)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return False, str(e).strip().splitlines()[-1][:300]
    return True, ""


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "best": max(values), "rounds": len(values)}


def _ratios(speed: dict[str, Any], stat: str) -> dict[str, Any]:
    """Ours against the naive path and each competitor, from the ``stat`` of each variant's rounds."""
    train = {v: r["train_examples_per_s"][stat] for v, r in speed.items()}
    infer = {v: r["infer_examples_per_s"][stat] for v, r in speed.items()}
    out: dict[str, Any] = {"ours_over_naive_train": train["ours"] / train["ours_naive"],
                           "ours_over_naive_infer": infer["ours"] / infer["ours_naive"]}
    present = [c for c in COMPETITORS if c in speed]
    for c in present:
        out[f"ours_over_{c}_train"] = train["ours"] / train[c]
        out[f"ours_over_{c}_infer"] = infer["ours"] / infer[c]
    if present:
        fastest = max(present, key=lambda c: train[c])
        out["faster_competitor_train"] = fastest
        out["ours_over_faster_competitor_train"] = train["ours"] / train[fastest]
    return out


# glibc returns freed blocks above these sizes to the OS, so every training step faults its large
# tensors in again; these settings keep them in the process (the same for every variant).
TUNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def measure_speed(variants: list[str], args: argparse.Namespace, threads: int, env: dict[str, str]) -> dict[str, Any]:
    """Every variant's rounds, interleaved over ``args.passes`` passes, each in a fresh process."""
    rounds: dict[str, dict[str, list[float]]] = {v: {"train": [], "infer": [], "faults": [], "sys_ms": []}
                                                 for v in variants}
    meta: dict[str, Any] = {}
    for _ in range(args.passes):
        for variant in variants:
            python = sys.executable if variant.startswith("ours") else args.competitor_python
            spec = {"kind": "speed", "variant": variant, "threads": threads, "shape": SPEED_SHAPE,
                    "rounds": args.rounds, "iters": args.iters, "warmup": args.warmup}
            r = run_worker(python, spec, timeout=1800, env=env)
            rounds[variant]["train"] += r["train_examples_per_s"]
            rounds[variant]["infer"] += r["infer_examples_per_s"]
            rounds[variant]["faults"].append(r["train_page_faults_per_step"])
            rounds[variant]["sys_ms"].append(r["train_system_ms_per_step"])
            meta[variant] = {"num_parameters": r["num_parameters"], "torch": r["torch"]}
    speed = {v: {"train_examples_per_s": _summary(r["train"]), "infer_examples_per_s": _summary(r["infer"]),
                 "train_page_faults_per_step": statistics.median(r["faults"]),
                 "train_system_ms_per_step": statistics.median(r["sys_ms"]), **meta[v]}
             for v, r in rounds.items()}
    # Ratios from the median round (typical) and from the best round (closest to an idle machine:
    # other jobs share these cores, and a descheduled OpenMP thread stalls a whole step).
    return {"threads": threads, "env": env, "variants": speed,
            "ratios": {stat: _ratios(speed, stat) for stat in ("median", "best")}}


def print_speed(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"{'variant':<16}{'train median':>14}{'train best':>12}{'infer median':>14}{'infer best':>12}"
          f"{'faults/step':>13}{'params':>10}")
    for v, r in result["variants"].items():
        tr, inf = r["train_examples_per_s"], r["infer_examples_per_s"]
        print(f"{v:<16}{tr['median']:>14,.0f}{tr['best']:>12,.0f}{inf['median']:>14,.0f}{inf['best']:>12,.0f}"
              f"{r['train_page_faults_per_step']:>13,.0f}{r['num_parameters']:>10,}")
    print("ratios" + " " * 32 + "".join(f"{stat:>10}" for stat in ("median", "best")))
    for key in result["ratios"]["median"]:
        values = [result["ratios"][stat][key] for stat in ("median", "best")]
        print(f"  {key:<36}" + "".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v:>14}" for v in values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--competitor-python", default=str(DEFAULT_COMPETITOR_PYTHON),
                        help="interpreter of the venv with deepctr-torch and fuxictr")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="torch.set_num_threads of the speed runs; the first is the headline")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes over the variants")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant and pass")
    parser.add_argument("--iters", type=int, default=20, help="steps per timed round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--tuned-malloc", action="store_true",
                        help=f"also measure speed with {' '.join(f'{k}={v}' for k, v in TUNED_MALLOC_ENV.items())}")
    parser.add_argument("--probe", choices=sorted(BUILDERS), help="only check that this variant builds here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.probe:
        BUILDERS[args.probe](dict(SPEED_SHAPE, batch_size=2))
        print(f"{args.probe}: builds")
        return 0
    if args.worker:
        spec = json.loads(args.worker)
        if spec["kind"] == "probe":
            BUILDERS[spec["variant"]](spec["shape"])
            result: dict[str, Any] = {"ok": True}
        elif spec["kind"] == "speed":
            result = speed_worker(spec)
        else:
            result = memory_worker(spec)
        print(json.dumps(result))
        return 0

    skipped: dict[str, str] = {}
    variants = ["ours", "ours_naive"]
    for name in COMPETITORS:
        ok, why = competitor_available(args.competitor_python, name)
        if ok:
            variants.append(name)
        else:
            skipped[name] = why
            print(f"skipping {name}: {why}", file=sys.stderr)

    results: dict[str, Any] = {
        "benchmark": "models", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
        "command": " ".join([".venv/bin/python bench/bench_models.py", *(argv if argv is not None else sys.argv[1:])]),
        "setup": {"speed_shape": SPEED_SHAPE, "memory_shape": MEMORY_SHAPE, "threads": args.threads[0],
                  "optimizer": "Adagrad(lr=0.01)", "loss": "MSE", "dropout": 0.0, "passes": args.passes,
                  "rounds": args.rounds, "iters_per_round": args.iters, "cpu_count": os.cpu_count(),
                  "machine": platform.processor() or platform.machine(),
                  "load_average_at_start": os.getloadavg()},
        "skipped": skipped,
        "speed": measure_speed(variants, args, args.threads[0], env={}),
    }
    # Other settings, for reading the headline: fewer threads (an OpenMP step waits for its slowest
    # thread, so 2 threads on 2 shared cores suffer most from other jobs), and a tuned allocator.
    extra = [(f"speed_{t}_threads", t, {}) for t in args.threads[1:]]
    if args.tuned_malloc:
        extra += [(f"speed_{t}_threads_tuned_malloc", t, TUNED_MALLOC_ENV) for t in args.threads]
    for key, threads, env in extra:
        results[key] = measure_speed(variants, args, threads, env)
    if not args.skip_memory:
        memory = {}
        for variant in ("ours", "ours_naive"):
            spec = {"kind": "memory", "variant": variant, "threads": args.threads[0], "shape": MEMORY_SHAPE}
            memory[variant] = run_worker(sys.executable, spec, timeout=1800)
        memory["efficient_over_naive_peak"] = (memory["ours"]["training_peak_mib"]
                                               / memory["ours_naive"]["training_peak_mib"])
        results["memory"] = memory
    results["setup"]["load_average_at_end"] = os.getloadavg()

    shape = (f"AFM, k = t = {SPEED_SHAPE['embedding_dim']}, M = {SPEED_SHAPE['num_fields']}, batch "
             f"{SPEED_SHAPE['batch_size']}, examples/s over {args.passes * args.rounds} rounds")
    for key in ["speed"] + [key for key, _, _ in extra]:
        r = results[key]
        print_speed(f"{shape}, {r['threads']} threads{', tuned malloc' if r['env'] else ''}", r)
    for name, why in skipped.items():
        print(f"{name}: skipped ({why[:100]})")
    if "memory" in results:
        m = results["memory"]
        print(f"\npeak training memory, batch {MEMORY_SHAPE['batch_size']}, M = {MEMORY_SHAPE['num_fields']}, "
              f"k = t = {MEMORY_SHAPE['embedding_dim']}: memory-efficient {m['ours']['training_peak_mib']:,.0f} MiB, "
              f"naive {m['ours_naive']['training_peak_mib']:,.0f} MiB, ratio {m['efficient_over_naive_peak']:.3f}")
    print(f"load average: {results['setup']['load_average_at_start'][0]:.1f} at start, "
          f"{results['setup']['load_average_at_end'][0]:.1f} at end")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
