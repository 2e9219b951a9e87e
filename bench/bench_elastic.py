"""Elastic training (issue 27): what commits cost, and how long a lost worker stops the run.

    .venv/bin/python bench/bench_elastic.py [--rows 200000] [--epochs 4] [--rounds 2] [--reuse]
    .venv/bin/python bench/bench_elastic.py --pinned    # the throughput part, launcher and ranks apart

Throughput: AFM (k = t = 64, global batch 512) on the synthetic data set, ``horovodrun -np 2``
(static) against the same two ranks under elastic horovodrun (``--min-np 2 --max-np 2``, a
discovery script listing ``localhost:2``) with commits at the default ``--commit-every``, run
alternately ``--rounds`` times; the figure is the median examples/s of the training steps
(``train_seconds`` of metrics.jsonl: the epochs after the first, validation left out). Beside it:
the CPU seconds of each run's whole process tree (horovodrun, its helpers, the ranks) and rank 0's
seconds in commits an epoch (``commit_s``). Goal: elastic at least 0.95x static.

``--pinned``: the same pairs of runs with horovodrun and its helper processes on core 1
(``taskset -c 1``) and both ranks on core 0, as on a cluster, where the launcher's host does not
give its time to the training cores; saved beside the other figures as ``throughput_pinned``.

Recovery: three ranks (``localhost:2`` and ``127.0.0.1:1``), the one on 127.0.0.1 killed with
SIGKILL in the middle of epoch 2; the seconds from the kill to rank 0's line saying the run goes on
(the world formed again, the commit restored and synced) and to its first progress line of a step
after that, with Gloo's timeout at its default (30 s) and at 10 s (``--gloo-timeout-seconds``).
Goal: at most 30 s on this machine. Results: bench/results/elastic.json, BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from afm_dist.dataset import COMPLETE_MARKER  # noqa: E402
from common import REPO, RESULTS, VENV_BIN, WORK, env, history, horovodrun, run, save, synthetic_dataset  # noqa: E402

import psutil  # noqa: E402

BATCH = 512
MODEL = ["--model", "afm", "--batch-size", str(BATCH), "--embedding-dim", "64", "--attention-factor", "64",
         "--average-tail", "false"]


def elastic_launcher(np_: int, hosts: str, name: str, *extra: str) -> list:
    """Elastic horovodrun of ``np_`` ranks over the hosts file ``hosts`` (written here)."""
    root = WORK / "elastic"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.hosts").write_text(hosts)
    discover = root / f"{name}-discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {root / f'{name}.hosts'}\n")
    discover.chmod(0o755)
    return [VENV_BIN / "horovodrun", "-np", np_, "--min-np", min(np_, 2), "--max-np", np_, "--host-discovery-script",
            discover, "--gloo", "--network-interface", "lo", *extra]


def step_rate(out: Path) -> float:
    """Median examples/s of the training steps of the epochs after the first."""
    epochs = history(out)[1:]
    return statistics.median(e["examples_per_s"] * e["seconds"] / e["train_seconds"] for e in epochs)


def throughput(data: Path, epochs: int, rounds: int, reuse: bool = False, pinned: bool = False) -> dict:
    """``reuse``: the runs of an earlier invocation where complete (a recovery part run again);
    ``pinned``: the launcher on core 1, the ranks on core 0."""
    rates: dict[str, list[float]] = {"static": [], "elastic": []}
    cpu: dict[str, list[float]] = {"static": [], "elastic": []}  # CPU seconds of the whole process tree
    commit_s: list[float] = []  # rank 0's seconds committing, per epoch after the first
    suffix = "-pinned" if pinned else ""  # the runs' directories: KIND[-pinned]-ROUND
    for r in range(rounds):
        for kind in ("static", "elastic"):
            out = WORK / "elastic" / f"{kind}{suffix}-{r}"
            if reuse and (out / COMPLETE_MARKER).exists():
                rates[kind].append(step_rate(out))
                commit_s += [e["commit_s"] for e in history(out)[1:] if "commit_s" in e]
                continue
            launcher = horovodrun(2) if kind == "static" else elastic_launcher(2, "localhost:2\n", "rate")
            ranks = [VENV_BIN / "python"]
            if pinned:
                launcher, ranks = ["taskset", "-c", "1", *launcher], ["taskset", "-c", "0", *ranks]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            run([*launcher, *ranks, "-m", "afm_dist.train", "--data", data, *MODEL, "--output", out,
                 "--overwrite", "--epochs", epochs, "--l2-schedule", "0", "--log-every", "30"])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[kind].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            rates[kind].append(step_rate(out))
            commit_s += [e["commit_s"] for e in history(out)[1:] if "commit_s" in e]
    static, elastic = statistics.median(rates["static"]), statistics.median(rates["elastic"])
    paired = [e / s for s, e in zip(rates["static"], rates["elastic"])]  # each round's runs side by side
    return {"static_examples_per_s": rates["static"], "elastic_examples_per_s": rates["elastic"],
            "elastic_vs_static": elastic / static, "elastic_vs_static_by_round": paired,
            "elastic_vs_static_median_of_rounds": statistics.median(paired), "commit_every": 100,
            "process_tree_cpu_s": cpu, "median_commit_s_per_epoch": statistics.median(commit_s) if commit_s else None,
            "train_s_per_epoch_elastic": statistics.median(
                e["train_seconds"] for r in range(rounds)
                for e in history(WORK / "elastic" / f"elastic{suffix}-{r}")[1:])}


def recovery(data: Path, gloo_timeout: int) -> dict:
    out = WORK / "elastic" / f"recover-{gloo_timeout}"
    cmd = [*elastic_launcher(3, "localhost:2\n127.0.0.1:1\n", f"recover-{gloo_timeout}",
                             "--gloo-timeout-seconds", gloo_timeout),
           VENV_BIN / "python", "-m", "afm_dist.train", "--data", data, *MODEL, "--output", out, "--overwrite",
           "--epochs", "3", "--l2-schedule", "0", "--log-every", "0.05"]
    print("+ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    killed = resumed = first_step = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        now = time.time()
        if killed is None and re.search(r"\[0\]<stderr>:\[train\] epoch 2/3 step (\d+)/(\d+) \(([3-6]\d)%\)", line):
            for p in psutil.process_iter(["cmdline"]):
                cmd_line = p.info["cmdline"] or []
                if str(out) in cmd_line and not cmd_line[0].endswith("sh") and "horovodrun" not in " ".join(cmd_line[:2]):
                    try:
                        if p.environ().get("HOROVOD_HOSTNAME") == "127.0.0.1":
                            p.send_signal(signal.SIGKILL)
                            killed = now
                    except psutil.Error:
                        pass
        elif killed and resumed is None and "worker(s) now: going on from" in line:
            resumed = now
        elif resumed and first_step is None and re.search(r"<stderr>:\[train\] epoch \d+/3 step", line):
            # (after a reset the new rank 0 may be another of horovodrun's processes: any prefix)
            first_step = now
    if proc.wait() != 0 or killed is None or first_step is None:
        raise SystemExit("".join(lines[-60:]) + f"\nrecovery run failed (exit {proc.returncode})")
    return {"gloo_timeout_s": gloo_timeout, "kill_to_going_on_s": resumed - killed,
            "kill_to_first_step_s": first_step - killed,
            "epochs_steps": [h["steps"] for h in history(out)], "workers": [h["workers"] for h in history(out)]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="keep the throughput runs an earlier invocation completed")
    p.add_argument("--pinned", action="store_true",
                   help="only the throughput runs with the launcher on core 1 and the ranks on core 0, added to the "
                        "saved results as throughput_pinned")
    args = p.parse_args()
    data = synthetic_dataset(args.rows)
    if args.pinned:
        saved = json.loads((RESULTS / "elastic.json").read_text())
        kept = {k: v for k, v in saved.items() if k not in ("benchmark", "date", "machine")}
        save("elastic", {**kept, "throughput_pinned": throughput(data, args.epochs, args.rounds, args.reuse, pinned=True)})
        return 0
    result = {"rows": args.rows, "batch": BATCH, "throughput": throughput(data, args.epochs, args.rounds, args.reuse),
              "recovery": [recovery(data, t) for t in (30, 10)]}
    save("elastic", result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
