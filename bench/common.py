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
