"""Shared pieces of the benchmarks: the work directory, a preprocessed synthetic data set, results."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from afm_dist.dataset import COMPLETE_MARKER
from afm_dist.io import write_text_atomic
from afm_dist.model_dir import METRICS

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WORK = Path(os.environ.get("AFM_BENCH_WORK", REPO / "out" / "bench"))
RESULTS = REPO / "bench" / "results"


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}


def run(cmd: list[str], **kw) -> float:
    """Run a command (output to stderr), fail loudly, return its wall time in seconds."""
    start = time.time()
    print("+ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    kw.setdefault("env", env())
    subprocess.run([str(c) for c in cmd], cwd=REPO, check=True, **kw)
    return time.time() - start


def horovodrun(np_: int) -> list:
    """The benchmarks' launcher: ``np_`` Horovod ranks on this host, Gloo over loopback."""
    return [VENV_BIN / "horovodrun", "-np", np_, "-H", f"localhost:{np_}", "--gloo", "--network-interface", "lo"]


def run_ranks(np_: int, args: list, *, env_extra: dict[str, str] | None = None) -> dict:
    """``python args`` as ``np_`` Horovod ranks; the JSON its rank 0 printed after ``RESULT ``
    (``result_line``). Exits with the command's output when it fails or prints none."""
    cmd = [str(c) for c in [*horovodrun(np_), VENV_BIN / "python", *args]]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env={**env(), **(env_extra or {})}, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if "RESULT " in ln]  # horovodrun prefixes a rank's lines
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].split("RESULT ", 1)[1])


def result_line(result: dict) -> None:
    """Print what ``run_ranks`` returns (from rank 0)."""
    print("RESULT " + json.dumps(result), flush=True)


def random_id_step(model_name: str, num_features: int, num_slots: int, global_batch: int, *, dim: int = 64,
                   optimizer_name: str = "adagrad", sparse: bool = True):
    """The trainer's own pieces on a rank (Horovod initialised): torch's threads, the model
    (k = t = ``dim``, seed 0), its optimizer (lr 0.05), ``GradientExchange`` and rank 0's
    parameters and optimizer state broadcast; and a training step on random ids (uniform over
    ``num_features``, values 1) of this rank's share of ``global_batch``, seeded per rank.

    Returns (model, optimizer, exchange, step): ``step()`` runs one step.
    """
    import horovod.torch as hvd
    import torch
    import torch.nn.functional as F

    from afm_dist.models import ModelConfig, build_model
    from afm_dist.training.exchange import GradientExchange
    from afm_dist.training.elastic import broadcast_optimizer_tensors
    from afm_dist.training.optimizers import build_optimizer

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))  # the trainer's default
    torch.manual_seed(0)
    model = build_model(model_name, num_features, num_slots,
                        ModelConfig(embedding_dim=dim, attention_factor=dim, sparse_embeddings=sparse))
    optimizer = build_optimizer(optimizer_name, model, 0.05)
    exchange = GradientExchange(model)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    broadcast_optimizer_tensors(optimizer)
    local = global_batch // hvd.size()
    g = torch.Generator().manual_seed(100 + hvd.rank())
    vals, mask = torch.ones(local, num_slots), torch.ones(local, num_slots, dtype=torch.bool)

    def step() -> None:
        ids = torch.randint(0, num_features, (local, num_slots), generator=g)
        optimizer.zero_grad()
        F.mse_loss(model(ids, vals, mask), torch.randn(local, generator=g)).backward()
        exchange(max_rows=ids.numel())
        optimizer.step()

    return model, optimizer, exchange, step


def synthetic_dataset(rows: int) -> Path:
    """A preprocessed data set of ``rows`` generated logs, built once and reused."""
    data = WORK / f"synthetic-{rows}" / "data"
    if not (data / COMPLETE_MARKER).exists():
        logs = WORK / f"synthetic-{rows}" / "logs"
        run([REPO / "spark-submit.sh", "jobs/generate.py", "--rows", rows, "--output", logs, "--overwrite"])
        run([REPO / "spark-submit.sh", "jobs/preprocess.py", "--schema", "schemas/synthetic.yaml",
             "--input", logs, "--output", data, "--overwrite"])
    return data


def history(model_dir: Path) -> list[dict]:
    """The epochs of a training run (its model directory's metrics.jsonl)."""
    return [json.loads(line) for line in (model_dir / METRICS).read_text().splitlines()]


def machine() -> dict[str, str]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count()),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": str(torch.get_num_threads())}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **result}
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
