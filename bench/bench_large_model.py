"""A model directory with a table of about 10 million feature rows, through everything that reads or
writes one (issue: large vocabularies): FM trained one epoch (checkpoint and model directory
written), ``--resume`` for a second epoch, AFM ``--init-from`` the FM, the Spark scoring job on the
test split and the explanation job. The time of each step and its peak memory, set beside the
bytes of parameters plus optimizer state that one training rank must hold.

    .venv/bin/python bench/bench_large_model.py [--rows 5500000 --cardinality 100000000]

The logs draw users and items uniformly from ``--cardinality`` values each, so nearly every log
brings a new user and a new item: about 2 x rows features (10.7 million with the defaults), every
one in the vocabulary, which is built from all the logs. The splits are given files
(``jobs/preprocess.py --train/--validation/--test``): one generated file each for training and
validation, the rest for the test split, so the training steps stay short while the table is
full size. k = t = 64, global batch 512, ``horovodrun -np 2`` (Gloo), sparse tables (the default).

Peak memory is sampled every 0.2 s over the step's whole process tree (Spark's Python workers
included): the largest single process's resident memory, the same without file-backed pages
(anonymous memory: what the process itself allocated), and the largest sum over the tree.
Memory-mapped files a process reads (the checkpoint at ``--resume``, the weights at scoring and
explanation) count in its resident memory while their pages are in, but they are the page
cache's, which the kernel drops under pressure; the anonymous figure is the one to set beside
the parameters and optimizer state.

``--reuse-data`` keeps the generated logs and the preprocessed data set of an earlier run (and
that run's times for those two steps), and reruns the rest.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, VENV_BIN, WORK, env, history, horovodrun, run, save  # noqa: E402

from afm_dist.dataset import METADATA_FILE, TEST, TRAIN, read_metadata  # noqa: E402
from afm_dist.model_dir import TrainedModel  # noqa: E402

DIM, GLOBAL_BATCH = 64, 512


class PeakMemory:
    """Samples the resident memory of this process's descendants until stopped."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.largest, self.largest_anon, self.total = every, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.every):
            sizes, anon = [], []
            for child in me.children(recursive=True):
                try:
                    info = child.memory_info()
                except psutil.Error:  # ended meanwhile
                    continue
                sizes.append(info.rss)
                anon.append(info.rss - info.shared)  # shared: RssFile + RssShmem
            if sizes:
                self.largest, self.total = max(self.largest, max(sizes)), max(self.total, sum(sizes))
                self.largest_anon = max(self.largest_anon, max(anon))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_500_000)
    p.add_argument("--cardinality", type=int, default=100_000_000, help="users and items drawn from, each")
    p.add_argument("--files", type=int, default=20, help="generated files: 1 train, 1 validation, the rest test")
    p.add_argument("--driver-memory", default="8g", help="Spark driver memory (local[2]: also the executors')")
    p.add_argument("--reuse-data", action="store_true", help="keep the logs and data set of the last run")
    args = p.parse_args()
    root = WORK / f"large-model-{args.rows}"
    logs, data, fm, afm = root / "logs", root / "data", root / "fm", root / "afm"
    spark_env = {**env(), "AFM_SPARK_MASTER": "local[2]", "AFM_SPARK_SUBMIT_ARGS": f"--driver-memory {args.driver_memory}"}
    horovod = [*horovodrun(2), VENV_BIN / "python", "-m", "afm_dist.train", "--data", data, "--batch-size", GLOBAL_BATCH,
               "--embedding-dim", DIM, "--log-every", 60]
    result: dict = {"command": "bench/bench_large_model.py " + " ".join(sys.argv[1:]), "rows": args.rows,
                    "cardinality": args.cardinality, "model": f"FM and AFM k=t={DIM}, sparse tables, Adagrad, "
                    f"global batch {GLOBAL_BATCH}, horovodrun -np 2", "steps": []}

    def step(name: str, cmd: list) -> None:
        started = time.strftime("%H:%M:%S")
        with PeakMemory() as peak:
            seconds = run(cmd, env=spark_env)
        result["steps"].append({"step": name, "seconds": round(seconds, 1), "peak_process_bytes": peak.largest,
                                "peak_process_anon_bytes": peak.largest_anon, "peak_tree_bytes": peak.total})
        print(f"== {name}: {seconds:.0f} s (started {started}), largest process {peak.largest / 2**30:.2f} GiB "
              f"({peak.largest_anon / 2**30:.2f} GiB anonymous), tree {peak.total / 2**30:.2f} GiB",
              file=sys.stderr, flush=True)

    earlier = RESULTS / "large_model.json"
    if args.reuse_data and earlier.exists() and (data / METADATA_FILE).exists():
        before = json.loads(earlier.read_text())
        result["steps"] += [dict(s, reused_from=before["date"]) for s in before["steps"]
                            if s["step"] in ("generate", "preprocess")]
        result["command"] = before["command"] + "; then " + result["command"]
    else:
        generate_and_preprocess(step, args, logs, data)
    train_and_use(step, horovod, data, fm, afm, root)
    finish(result, data, fm, afm)
    return 0


def generate_and_preprocess(step, args: argparse.Namespace, logs: Path, data: Path) -> None:
    step("generate", [REPO / "spark-submit.sh", "jobs/generate.py", "--rows", args.rows, "--users", args.cardinality,
                      "--items", args.cardinality, "--uniform", "--partitions", args.files, "--output", logs,
                      "--overwrite"])
    files = sorted(str(f) for f in logs.glob("part-*"))
    step("preprocess", [REPO / "spark-submit.sh", "jobs/preprocess.py", "--schema", "schemas/synthetic.yaml",
                        "--train", files[0], "--validation", files[1], "--test", *files[2:], "--output", data,
                        "--overwrite"])


def train_and_use(step, horovod: list, data: Path, fm: Path, afm: Path, root: Path) -> None:
    step("fm_train_epoch_1", [*horovod, "--model", "fm", "--output", fm, "--overwrite", "--epochs", 1])
    step("fm_resume_epoch_2", [*horovod, "--model", "fm", "--output", fm, "--resume", "--epochs", 2])
    step("afm_init_from_fm", [*horovod, "--model", "afm", "--attention-factor", DIM, "--init-from", fm,
                              "--output", afm, "--overwrite", "--epochs", 1])
    step("score_test", [REPO / "spark-submit.sh", "jobs/score.py", "--model", afm, "--input", data / TEST,
                        "--output", root / "scores", "--overwrite"])
    step("explain_20_rows", [REPO / "spark-submit.sh", "jobs/explain.py", "--model", afm, "--input", data / TEST,
                             "--output", root / "explain", "--overwrite", "--rows", 20])


def finish(result: dict, data: Path, fm: Path, afm: Path) -> None:
    meta = read_metadata(data / METADATA_FILE)
    result["num_features"] = meta.num_features
    result["train_rows"] = meta.split_rows(TRAIN)
    result["test_rows"] = meta.split_rows(TEST)
    # One rank holds the float32 parameters and, for Adagrad, one accumulator per parameter.
    result["fm_params_and_state_bytes"] = 2 * 4 * TrainedModel.load(fm).num_parameters
    result["afm_params_and_state_bytes"] = 2 * 4 * TrainedModel.load(afm).num_parameters
    result["afm_weights_bytes"] = (afm / "model.safetensors").stat().st_size
    result["fm_epochs"] = [h["epoch"] for h in history(fm)]
    for s in result["steps"]:
        bound = {"fm_train_epoch_1": "fm", "fm_resume_epoch_2": "fm", "afm_init_from_fm": "afm"}.get(s["step"])
        if bound:
            s["peak_anon_over_params_and_state"] = (s.get("peak_process_anon_bytes", 0)
                                                    / result[f"{bound}_params_and_state_bytes"])
    save("large_model", result)


if __name__ == "__main__":
    sys.exit(main())
