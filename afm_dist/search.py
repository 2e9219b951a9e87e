"""A grid search over the trainer's settings, in one command, choosing by validation RMSE.

    python -m afm_dist.search --data out/ml-ratings --model afm --init-from out/models/ml-fm \\
        --output out/search/ml-afm --grid lr=0.01,0.05 --grid interaction-dropout=0.3,0.5 \\
        --grid embedding-l2=0,0.001 --parallel 2 -- --epochs 20 --patience 3

Every trial is the product's own training, ``python -m afm_dist.train`` (under ``horovodrun -np
N`` with ``--np N`` > 1), on the grid point's flags plus the flags after ``--`` (the same for every
trial). ``--parallel P`` trials run at once, each with cores / (P x N) torch threads. Every trial
is checked before the first starts (``afm_dist.train``'s own checks, a batch size that N workers
cannot split included: an impossible grid point exits 2 in one line naming its ``--grid`` values).
A trial whose model directory is complete is not trained again, so an interrupted search
continues where it stopped.

``--output`` holds ``trials/<n>/`` (each trial's model directory and ``train.log``), and, rewritten
after every trial, ``trials.csv`` (one row per trial: its flags, best epoch, validation RMSE and
that epoch's metrics as metrics.jsonl names them, and the trial's wall time ``trial_seconds``),
``trials.md`` (the same table, best first), ``trials.png`` (validation RMSE of every trial) and
``best.json`` (the best trial's flags, its model directory and the command that trains it). Exit
status: 0 done (a failed trial is reported in the table and does not stop the others); 2 bad
arguments; 1 when no trial finished.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from afm_dist.dataset import COMPLETE_MARKER, DatasetError
from afm_dist.io import OutputPathError, check_apart, validate_output_path, write_json_atomic, write_text_atomic
from afm_dist.model_dir import TrainedModel
from afm_dist.train import check_args as check_train_args
from afm_dist.training import check_run

METRIC = "val_rmse"


@dataclass
class Trial:
    number: int
    flags: dict[str, str]  # grid flag (without --) -> value
    argv: list[str]  # the trainer's arguments
    directory: Path
    status: str = "pending"
    best: dict = field(default_factory=dict)
    seconds: float = 0.0


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    common: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, common = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(prog="python -m afm_dist.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output directory of jobs/preprocess.py")
    p.add_argument("--model", required=True, help="model name, as afm_dist.train's --model")
    p.add_argument("--init-from", help="a trained FM model directory (for every trial)")
    p.add_argument("--output", required=True, help="search directory (trials and the table)")
    p.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2,...",
                   help="a trainer flag without its dashes and its values, e.g. lr=0.01,0.05 (repeat per flag)")
    p.add_argument("--parallel", type=int, default=1, help="trials at once (default 1)")
    p.add_argument("--np", type=int, default=1, help="Horovod workers per trial (horovodrun -np N when > 1)")
    args = p.parse_args(argv)
    if args.parallel < 1 or args.np < 1:
        p.error("--parallel and --np must be positive")
    grid: dict[str, list[str]] = {}
    for spec in args.grid:
        name, sep, values = spec.partition("=")
        name = name.strip().lstrip("-")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not vals:
            p.error(f"--grid {spec!r}: expected FLAG=V1,V2,..., e.g. lr=0.01,0.05")
        if name in ("data", "model", "output", "init-from", "resume", "overwrite", "threads"):
            p.error(f"--grid {name}: the search sets --{name} itself")
        if name in grid:
            p.error(f"--grid {name} is given twice")
        grid[name] = vals
    if not grid:
        p.error("give at least one --grid FLAG=V1,V2,...")
    args.grid_values = grid
    return args, common


def plan_trials(args: argparse.Namespace, common: list[str]) -> list[Trial]:
    """One trial per grid point, each checked before any trial starts as ``afm_dist.train``
    checks its flags and its run (``check_run``, with the trial's ``--np`` workers).

    Raises:
        ValueError: a grid point the trainer refuses (a value of the wrong type, an unknown flag,
            an impossible combination, a batch size that ``--np`` workers cannot split), naming
            the ``--grid`` values, or the flags after ``--`` when those alone are refused.
        DatasetError: the data set or --init-from cannot serve a trial.
    """
    names = list(args.grid_values)
    threads = max(1, (os.cpu_count() or 1) // (args.parallel * args.np))
    fixed = ["--data", args.data, "--model", args.model, *(["--init-from", args.init_from] if args.init_from else []),
             "--threads", str(threads)]

    def refusal(argv: list[str]) -> str | None:
        try:
            check_run(check_train_args(argv), workers=args.np)
        except ValueError as e:
            return str(e)
        return None

    trials = []
    for number, values in enumerate(itertools.product(*args.grid_values.values()), start=1):
        flags = dict(zip(names, values))
        output = ["--output", str(Path(args.output) / "trials" / f"{number:03d}")]
        argv = [*fixed, *output, *common, *[x for n, v in flags.items() for x in (f"--{n}", v)]]
        why = refusal(argv)
        if why is not None:
            # Named by what is refused: the search's own arguments, the flags after --, or this grid point.
            if refusal([*fixed, *output]) == why:
                raise ValueError(why)
            if common and refusal([*fixed, *output, *common]) == why:
                raise ValueError(f"the flags after -- ({' '.join(common)}): {why}")
            point = ",".join(f"{n}={v}" for n, v in flags.items())
            workers = f" with --np {args.np}" if args.np > 1 else ""
            raise ValueError(f"--grid point {point} (trial {number}){workers}: {why}")
        trials.append(Trial(number, flags, argv, Path(output[1])))
    return trials


def command(trial: Trial, np_: int) -> list[str]:
    """The command line that trains ``trial`` (the product's trainer)."""
    bin_dir = Path(sys.executable).parent
    trainer = [sys.executable, "-m", "afm_dist.train", *trial.argv]
    if np_ == 1:
        return trainer
    horovodrun = shutil.which("horovodrun", path=str(bin_dir)) or "horovodrun"
    return [horovodrun, "-np", str(np_), "-H", f"localhost:{np_}", "--gloo", "--network-interface", "lo", *trainer]


def run_trial(trial: Trial, np_: int, progress) -> Trial:
    if (trial.directory / COMPLETE_MARKER).exists():
        trial.status = "done (earlier run)"
    else:
        started = time.monotonic()
        trial.directory.parent.mkdir(parents=True, exist_ok=True)
        log_path = trial.directory.parent / f"{trial.directory.name}.log"
        with open(log_path, "w", encoding="utf-8") as log:
            rc = subprocess.run(command(trial, np_) + ["--overwrite"], stdout=log, stderr=subprocess.STDOUT).returncode
        trial.seconds = time.monotonic() - started
        trial.status = "done" if rc == 0 else f"failed (exit {rc}, see {log_path})"
    if trial.status.startswith("done"):
        model = TrainedModel.load(trial.directory)
        trial.best = {"epoch": model.best["epoch"], METRIC: model.best["val_rmse"], **model.best.get("metrics", {})}
    progress(trial)
    return trial


def write_report(out: Path, trials: list[Trial], np_: int) -> Trial | None:
    """trials.csv, trials.md, trials.png and best.json from the trials so far; the best trial."""
    from afm_dist.plots import plot_trials

    names = list(trials[0].flags)
    # an AFM that kept its --init-from FM as its floor ties with every other such trial: its own best epoch decides
    done = sorted((t for t in trials if t.best), key=lambda t: (t.best[METRIC], t.best.get("val_rmse_trained", 0.0)))
    metric_names = sorted({k for t in done for k in t.best if k not in ("epoch", METRIC)})
    buf = io.StringIO()
    writer = csv.writer(buf)
    # The best epoch's metrics keep metrics.jsonl's names (its ``seconds`` too); the trial's wall
    # time is ``trial_seconds``.
    writer.writerow(["trial", *names, "status", "best_epoch", METRIC, *metric_names, "trial_seconds"])
    for t in trials:
        writer.writerow([t.number, *t.flags.values(), t.status, t.best.get("epoch", ""), t.best.get(METRIC, ""),
                         *[t.best.get(m, "") for m in metric_names], round(t.seconds, 1)])
    write_text_atomic(out / "trials.csv", buf.getvalue())
    rows = [f"| trial | {' | '.join(names)} | best epoch | validation RMSE | minutes | status |",
            "|---:|" + "---:|" * len(names) + "---:|---:|---:|---|"]
    for t in done + [t for t in trials if not t.best]:
        rmse = f"{t.best[METRIC]:.4f}" if t.best else ""
        rows.append(f"| {t.number} | {' | '.join(t.flags.values())} | {t.best.get('epoch', '')} | {rmse} | "
                    f"{t.seconds / 60:.1f} | {t.status} |")
    write_text_atomic(out / "trials.md", "\n".join(rows) + "\n")
    if not done:
        return None
    plot_trials([(", ".join(f"{n}={v}" for n, v in t.flags.items()), t.best[METRIC]) for t in done],
                out / "trials.png", title=f"{len(done)} trial(s) by validation RMSE")
    best = done[0]
    write_json_atomic(out / "best.json", {"trial": best.number, "flags": best.flags, "best": best.best,
                                          "model": str(best.directory), "command": command(best, np_)})
    return best


def main(argv: list[str] | None = None) -> int:
    args, common = parse_args(argv)
    out = Path(args.output)
    try:
        out = validate_output_path(out, overwrite=True)  # an existing search continues
        check_apart(out, {"--data": [args.data], "--init-from": [args.init_from] if args.init_from else []})
        trials = plan_trials(args, common)
    except (DatasetError, OutputPathError, ValueError) as e:
        print(f"[search] error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    lock, finished, started = threading.Lock(), [], time.monotonic()
    print(f"[search] {len(trials)} trial(s), {args.parallel} at a time, {args.np} worker(s) each -> {out}",
          file=sys.stderr, flush=True)

    def progress(trial: Trial) -> None:
        with lock:
            finished.append(trial)
            elapsed = time.monotonic() - started
            eta = elapsed / len(finished) * (len(trials) - len(finished))
            shown = f"validation RMSE {trial.best[METRIC]:.4f} (epoch {trial.best['epoch']})" if trial.best else ""
            print(f"[search] trial {trial.number} {trial.flags}: {trial.status} {shown}; "
                  f"{len(finished)}/{len(trials)} done, ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)
            write_report(out, trials, args.np)

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(lambda t: run_trial(t, args.np, progress), trials))
    best = write_report(out, trials, args.np)
    if best is None:
        print("[search] error: no trial finished; see the logs in trials/", file=sys.stderr)
        return 1
    print(f"[search] best: trial {best.number} {best.flags}, validation RMSE {best.best[METRIC]:.4f} -> "
          f"{best.directory}; table: {out / 'trials.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
