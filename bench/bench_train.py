"""End-to-end training throughput (Petastorm loader included) with 1 and 2 Horovod workers, and
the loader alone; goals: the loader delivers at least 3x what training consumes, and 2 workers on
the machine's cores train at least 0.9x the examples/s of one process on the same cores.

    .venv/bin/python bench/bench_train.py [--rows 200000] [--epochs 4]

AFM with k = t = 64 (and FM) on the synthetic data set (M = 6 slots), global batch 512. Training
figures are the median examples/s of the epochs after the first (which warms caches), an epoch's
time including its evaluation and its reader's start, as the trainer reports it; the loader figure is one
reader (one rank's share of the machine) producing shuffled batches of 256 rows, the per-rank batch
of 2 workers, as fast as it can. Where the time goes: the CPU core-seconds each run spends per
1,000 examples, and the cores it keeps busy (CPU time / wall time, startup included): two ranks
that keep both cores busy cannot train faster than the CPU they spend per example allows.

The floor of the exchange: 2 ranks run the trainer's step (its model, optimizer and gradient
exchange) on random ids of the data set's shape, with no reader, so that both do the same work;
the 10th percentile of rank 0's wait a step is a low estimate of what one synchronous collective
a step costs on these cores by itself (the steps where rank 0 arrived last). With the step as it
is (every rank updates the whole global batch's rows, one synchronous collective after backward),
each rank's half-batch step less its wait is measured against one process's whole step
(``*_np2_compute_ms``); where it costs at least as much, a training step with 2 workers can go at
most one process's step / (that step + the floor) as fast as one process's (``*_np2_bound``, set
beside the measured ratio of step times, ``*_np2_step_ratio``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import resource
import statistics
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import (RESULTS, VENV_BIN, WORK, history, horovodrun, random_id_step, result_line, run,  # noqa: E402
                    run_ranks, save, synthetic_dataset)

from afm_dist.dataset import TRAIN  # noqa: E402


BATCH = 512  # the global batch
PROBE_STEPS = 300  # steps of the exchange probe (the first 20 not counted)


def probe_worker(data: Path, model_name: str) -> None:
    """One rank of the exchange probe: the trainer's step on random ids, no reader; rank 0 prints
    its wait for the exchange a step, in ms: the 10th percentile (the floor) and the median, and
    the median step."""
    import horovod.torch as hvd

    from afm_dist.dataset import load_metadata

    hvd.init()
    meta = load_metadata(data)
    _, _, exchange, step = random_id_step(model_name, meta.num_features, meta.num_slots, BATCH)
    waits, steps = [], []
    for _ in range(PROBE_STEPS):
        start, waited = time.perf_counter(), exchange.wait_seconds
        step()
        waits.append(exchange.wait_seconds - waited)
        steps.append(time.perf_counter() - start)
    if hvd.rank() == 0:
        result_line({"wait_ms": 1000 * statistics.quantiles(waits[20:], n=10)[0],
                     "median_wait_ms": 1000 * statistics.median(waits[20:]),
                     "step_ms": 1000 * statistics.median(steps[20:])})


def exchange_floor(data: Path, model: str) -> dict[str, float]:
    """``probe_worker`` under ``horovodrun -np 2``: {"wait_ms", "median_wait_ms", "step_ms"} of rank 0."""
    return run_ranks(2, [Path(__file__).resolve(), "--probe", model, "--data", data])


def train_rate(data, model: str, np_: int, epochs: int) -> tuple[float, float, float, float, float]:
    """Median examples/s of the epochs after the first; over the whole run (startup included),
    the CPU core-seconds per 1,000 examples trained and the cores kept busy; and over the epochs
    after the first, the median milliseconds of a training step (the epoch's steps alone, its
    validation left out), and of rank 0's wait for the gradient exchange's collectives in a step."""
    out = WORK / f"train-{model}-np{np_}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run([*horovodrun(np_), VENV_BIN / "python", "-m", "afm_dist.train", "--data", data, "--model", model, "--output", out,
         "--overwrite", "--epochs", epochs, "--batch-size", BATCH, "--embedding-dim", "64",
         "--attention-factor", "64", "--log-every", "30"])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process of the run, waited for
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    epochs_run = history(out)
    examples = sum(e["examples_per_s"] * e["seconds"] for e in epochs_run)
    steps = [e["examples_per_s"] * e["seconds"] / BATCH for e in epochs_run[1:]]
    step_ms = statistics.median(1000 * e["train_seconds"] / n for e, n in zip(epochs_run[1:], steps))
    wait_ms = statistics.median(1000 * e["exchange_wait_s"] / n for e, n in zip(epochs_run[1:], steps))
    return (statistics.median(e["examples_per_s"] for e in epochs_run[1:]), 1000 * cpu / examples, cpu / wall,
            step_ms, wait_ms)


def conversion_us_per_row(data) -> dict[str, float]:
    """Microseconds a row to turn the train split's row groups into numpy arrays: Petastorm's own
    conversion and the loader's (afm_dist/petastorm_patch.py), side by side on the same tables."""
    import pyarrow.parquet as pq
    from petastorm import make_batch_reader

    from afm_dist import petastorm_patch
    from afm_dist.loader import _parquet_files

    reader = make_batch_reader(f"file://{Path(data / TRAIN).resolve()}", num_epochs=1, workers_count=1,
                               reader_pool_type="thread")
    schema = reader.schema  # Petastorm's Unischema of the split, which its conversion reads
    reader.stop()
    reader.join()
    tables = [pq.ParquetFile(f).read_row_group(0) for f in _parquet_files(data / TRAIN)[:8]]
    rows = sum(t.num_rows for t in tables)
    result = {}
    for name, convert in (("petastorm", petastorm_patch._PETASTORM_CONVERT), ("arrow", petastorm_patch.convert_lists)):
        start = time.perf_counter()
        for _ in range(3):
            for t in tables:
                convert(t, schema)
        result[name] = 1e6 * (time.perf_counter() - start) / (3 * rows)
    return result


def loader_rate(data, batch: int, seconds: float = 20.0) -> float:
    from afm_dist.loader import train_batches

    rows, start = 0, time.time()
    for b in train_batches(data / TRAIN, rank=0, size=1, batch_size=batch, steps=10**9, seed=1):
        rows += len(b)
        if time.time() - start > seconds:
            break
    return rows / (time.time() - start)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=4, help="at least 2: the first epoch is not counted")
    p.add_argument("--probe", choices=["fm", "afm"], help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        if args.data is None:
            p.error("--probe needs --data")
        probe_worker(args.data, args.probe)
        return 0
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is not counted")
    data = synthetic_dataset(args.rows)
    result = {"command": f".venv/bin/python bench/bench_train.py --rows {args.rows} --epochs {args.epochs}",
              "data_rows": args.rows, "loader_examples_per_s": loader_rate(data, 256)}
    conversion = conversion_us_per_row(data)
    result["petastorm_conversion_us_per_row"] = conversion["petastorm"]
    result["arrow_conversion_us_per_row"] = conversion["arrow"]
    for model in ("fm", "afm"):
        for np_ in (1, 2):
            rate, cpu_per_1000, busy, step_ms, wait_ms = train_rate(data, model, np_, args.epochs)
            result[f"{model}_np{np_}_examples_per_s"] = rate
            result[f"{model}_np{np_}_cpu_seconds_per_1000_examples"] = cpu_per_1000
            result[f"{model}_np{np_}_cores_busy"] = busy
            result[f"{model}_np{np_}_step_ms"] = step_ms
            result[f"{model}_np{np_}_exchange_wait_ms_per_step"] = wait_ms
        floor = exchange_floor(data, model)
        result[f"{model}_exchange_floor_ms"] = floor["wait_ms"]
        result[f"{model}_probe_median_wait_ms"] = floor["median_wait_ms"]
        result[f"{model}_probe_step_ms"] = floor["step_ms"]
    # With 2 workers each rank's loader feeds half of the consumption.
    consumed_per_rank = max(result["afm_np2_examples_per_s"], result["fm_np2_examples_per_s"]) / 2
    consumed_single = max(result["afm_np1_examples_per_s"], result["fm_np1_examples_per_s"])
    result["loader_over_training_np2_per_rank"] = result["loader_examples_per_s"] / consumed_per_rank
    result["loader_over_training_np1"] = result["loader_examples_per_s"] / consumed_single
    for model in ("fm", "afm"):
        result[f"{model}_np2_over_np1"] = result[f"{model}_np2_examples_per_s"] / result[f"{model}_np1_examples_per_s"]
        one = result[f"{model}_np1_step_ms"]
        result[f"{model}_np2_compute_ms"] = result[f"{model}_np2_step_ms"] - result[f"{model}_np2_exchange_wait_ms_per_step"]
        result[f"{model}_np2_step_ratio"] = one / result[f"{model}_np2_step_ms"]
        if result[f"{model}_np2_compute_ms"] >= one:  # the bound's premise holds in this run
            result[f"{model}_np2_bound"] = one / (one + result[f"{model}_exchange_floor_ms"])
    result["goal"] = "loader >= 3x what training consumes; 2 workers >= 0.9x one process"
    previous = RESULTS / "train.json"
    if previous.exists():  # the last run's examples/s, to read a change in the ratios against
        last = json.loads(previous.read_text())
        result["previous_run"] = {"date": last.get("date"), **{k: v for k, v in last.items()
                                                              if k.endswith("examples_per_s") and "_np" in k}}
    save("train", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
