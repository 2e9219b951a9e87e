"""libFM (Rendle, 2012) as a baseline on exactly our splits: test RMSE of libFM SGD and MCMC.

    bash bench/setup_libfm.sh                                  # once: builds libFM into ~/.cache/afm-dist
    .venv/bin/python bench/bench_libfm.py --data out/frappe    # writes bench/results/libfm_frappe.json
    .venv/bin/python bench/bench_libfm.py --data out/ml-ratings --dims 64 --mcmc-iter 300

The data set is one written by ``jobs/preprocess.py``. Its train, validation and test splits are
exported to libFM's text format (``label id:value ...``, the masked-in slots of a row with our
global feature ids), so libFM trains on the rows our trainer trains on and is scored on the rows
``jobs/score.py`` scores. libFM trains on the train split only; each setting of a small grid is
run with the validation split as libFM's ``-test``, the setting with the lowest validation RMSE is
run again with the test split, and its ``-out`` predictions are scored with the trainer's own
metrics (``afm_dist/metrics.py``: clipped to the training target's range, RMSE and MAE).

From experiments/ or other code: ``run_libfm(data_dir, ...)`` returns the dict that the command
line writes to ``bench/results/libfm_<name>.json``.
"""
from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, WORK, save  # noqa: E402

from afm_dist import metrics as M  # noqa: E402
from afm_dist.batch import to_batch  # noqa: E402
from afm_dist.dataset import IDS, LABEL, MASK, SPLITS, TEST, TRAIN, VALIDATION, VALS, DatasetError, DatasetMetadata, \
    load_metadata, split_bag_columns, split_path  # noqa: E402

SETUP = REPO / "bench" / "setup_libfm.sh"
# libFM prints one line per iteration: "#Iter= 12\tTrain=0.31\tTest=0.35" (Test: RMSE on -test so far).
ITER_LINE = re.compile(r"#Iter=\s*(\d+)\s+Train=(\S+)\s+Test=(\S+)")


class LibFMError(Exception):
    """libFM is not built, or a run of it failed; the message says what to do."""


@dataclass(frozen=True)
class LibFMGrid:
    """The settings tried. One trial per combination, each chosen by validation RMSE."""

    dims: tuple[int, ...] = (64,)  # k: the paper's embedding size on Frappe and MovieLens
    sgd_iter: int = 150  # at k = 64 and rate 0.01 Frappe's validation RMSE still falls at epoch 100
    # Rate 0.05 diverges at k = 64 on Frappe (validation RMSE 1.3-1.6 against 0.60 at 0.01).
    learn_rates: tuple[float, ...] = (0.01, 0.02)
    # 'r0,r1,r2': bias, linear and pairwise L2. SGD has no early stopping, so the L2 must hold it.
    regulars: tuple[str, ...] = ("0,0,0.01", "0,0.01,0.05", "0,0.05,0.1")
    mcmc_iter: int = 300  # Gibbs sweeps; predictions are the mean over all of them
    init_stdevs: tuple[float, ...] = (0.1,)  # MCMC's only setting: its priors learn the L2 themselves


def libfm_binary() -> Path:
    """The libFM that bench/setup_libfm.sh builds (the pin lives in that script only).

    Raises:
        LibFMError: not built yet.
    """
    path = Path(subprocess.run(["bash", str(SETUP), "--bin"], check=True, capture_output=True, text=True).stdout.strip())
    if not path.is_file():
        raise LibFMError(f"libFM is not built ({path} missing): run  bash bench/setup_libfm.sh  "
                         "(set LIBFM_SRC=<clone of github.com/srendle/libfm> without network access)")
    return path


def _number(x: float) -> str:
    """A float32 in the fewest digits that read back as the same float32 ("1", "-1", "0.1", "3.5")."""
    return np.format_float_positional(np.float32(x), trim="-")


def _numbers(values: np.ndarray) -> np.ndarray:
    """``_number`` of every element, each distinct value formatted once."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([_number(v) for v in distinct], dtype=object)[inverse].reshape(values.shape)


def libfm_lines(table: pa.Table) -> list[str]:
    """Split rows as libFM text lines, ``label id:value ...`` over the row's masked-in slots in slot
    order (padding omitted), ids being our global feature ids."""
    batch = to_batch(table)
    tokens = batch.ids.numpy().astype(str).astype(object) + ":" + _numbers(batch.vals.numpy())  # (B, M)
    mask = batch.mask.numpy()
    labels = _numbers(batch.label.numpy())
    return [" ".join([label, *row[keep]]) for label, row, keep in zip(labels, tokens, mask)]


def read_split(data_dir: Path, split: str, *, shuffle_seed: int | None = None) -> pa.Table:
    """A split's columns, rows in file order or permuted with ``shuffle_seed`` (libFM's SGD walks
    the training file in order and asks for shuffled rows); a history field's bag column put back
    at its slots (``batch.with_bags``), so that libFM gets the rows the trainer gets."""
    path = split_path(data_dir, split)
    bags = split_bag_columns(path)
    table = pq.read_table(path, columns=[IDS, VALS, MASK, LABEL, *[b.column for b in bags]])
    if bags:
        batch = to_batch(table, bags)
        table = pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().ravel()), t.shape[1])
                          for name, t in ((IDS, batch.ids), (VALS, batch.vals), (MASK, batch.mask.to(torch.int8)))}
                         | {LABEL: table.column(LABEL)})
    if shuffle_seed is not None:
        table = table.take(np.random.default_rng(shuffle_seed).permutation(table.num_rows))
    return table


def export_split(table: pa.Table, path: Path) -> np.ndarray:
    """Write ``table`` as a libFM file; return its labels in the file's order."""
    lines = libfm_lines(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return table.column(LABEL).to_numpy().astype(np.float64)


def score(predictions: Path, labels: np.ndarray, meta: DatasetMetadata) -> dict[str, float]:
    """RMSE and MAE of libFM's ``-out`` predictions as our scoring computes them: clipped to the
    training target's range (``DatasetMetadata.target_range``), with ``afm_dist.metrics``."""
    pred = np.loadtxt(predictions, dtype=np.float64, ndmin=1)
    if pred.shape != labels.shape:
        raise LibFMError(f"{predictions}: {pred.size} predictions for {labels.size} rows")
    sums = M.new_sums()
    M.accumulate(sums, torch.from_numpy(pred), torch.from_numpy(labels), clip=meta.target_range(), binary=False)
    return M.finish(sums, binary=False)


def run_command(cmd: list[str], *, tag: str, progress_every: int) -> list[float]:
    """Run libFM, echoing every ``progress_every``-th iteration line to stderr; return the RMSE on
    ``-test`` that libFM reports after each iteration.

    Raises:
        LibFMError: libFM exited non-zero (its last lines in the message).
    """
    curve: list[float] = []
    tail: deque[str] = deque(maxlen=15)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail.append(line)
            match = ITER_LINE.match(line)
            if match:
                curve.append(float(match.group(3)))
                if int(match.group(1)) % progress_every == 0:
                    print(f"  [{tag}] {line.strip()}", file=sys.stderr, flush=True)
    if proc.returncode:
        raise LibFMError(f"libFM exited {proc.returncode}: {' '.join(cmd)}\n{''.join(tail)}")
    return curve


def libfm_command(binary: Path, train: Path, test: Path, out: Path, *, method: str, dim: int, iters: int, seed: int,
                  learn_rate: float | None = None, regular: str | None = None,
                  init_stdev: float | None = None) -> list[str]:
    cmd = [str(binary), "-task", "r", "-method", method, "-train", str(train), "-test", str(test),
           "-dim", f"1,1,{dim}", "-iter", str(iters), "-seed", str(seed), "-out", str(out)]
    if learn_rate is not None:
        cmd += ["-learn_rate", str(learn_rate)]
    if regular is not None:
        cmd += ["-regular", regular]
    if init_stdev is not None:
        cmd += ["-init_stdev", str(init_stdev)]
    return cmd


def _best_iter(curve: list[float]) -> int | None:
    """The 1-based iteration with the lowest RMSE (None without a finite one)."""
    finite = [(rmse, i) for i, rmse in enumerate(curve, 1) if np.isfinite(rmse)]
    return min(finite)[1] if finite else None


def _trials(method: str, grid: LibFMGrid) -> list[dict]:
    if method == "sgd":
        return [{"dim": k, "iters": grid.sgd_iter, "learn_rate": lr, "regular": reg}
                for k, lr, reg in itertools.product(grid.dims, grid.learn_rates, grid.regulars)]
    return [{"dim": k, "iters": grid.mcmc_iter, "init_stdev": s} for k, s in itertools.product(grid.dims, grid.init_stdevs)]


def run_method(binary: Path, files: dict[str, Path], labels: dict[str, np.ndarray], meta: DatasetMetadata, *,
               method: str, grid: LibFMGrid, seed: int, work: Path, progress_every: int) -> dict:
    """Every trial of ``method`` on validation, then the best one on test."""
    trials = []
    for i, settings in enumerate(_trials(method, grid), 1):
        out = work / f"{method}-trial{i}.pred"
        cmd = libfm_command(binary, files[TRAIN], files[VALIDATION], out, method=method, seed=seed, **settings)
        start = time.time()
        curve = run_command(cmd, tag=f"{method} {i}", progress_every=progress_every)
        trial = {"settings": settings, "validation": score(out, labels[VALIDATION], meta),
                 "wall_s": round(time.time() - start, 2), "command": " ".join(cmd),
                 # libFM's own per-iteration RMSE on the validation rows: where the curve bottoms out
                 "best_iter_on_curve": _best_iter(curve)}
        trials.append(trial)
        print(f"{method} trial {i}: {settings}: validation RMSE {trial['validation']['rmse']:.4f} "
              f"({trial['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    # A diverged trial's RMSE can be NaN, which min() would not order.
    best = min(trials, key=lambda t: t["validation"]["rmse"] if np.isfinite(t["validation"]["rmse"]) else np.inf)
    out = work / f"{method}-test.pred"
    cmd = libfm_command(binary, files[TRAIN], files[TEST], out, method=method, seed=seed, **best["settings"])
    start = time.time()
    curve = run_command(cmd, tag=f"{method} test", progress_every=progress_every)
    wall = time.time() - start
    test = score(out, labels[TEST], meta)
    print(f"{method}: {best['settings']}: test RMSE {test['rmse']:.4f}, MAE {test['mae']:.4f} ({wall:.0f} s)",
          file=sys.stderr, flush=True)
    return {"chosen": best["settings"], "validation_rmse": best["validation"]["rmse"], "test": test,
            "test_rmse": test["rmse"], "libfm_reported_test_rmse": curve[-1] if curve else None,
            "wall_s": round(wall, 2), "command": " ".join(cmd), "trials": trials}


def run_libfm(data_dir: str | Path, *, name: str | None = None, methods: Sequence[str] = ("sgd", "mcmc"),
              grid: LibFMGrid = LibFMGrid(), seed: int = 1, work_dir: str | Path | None = None,
              write: bool = True, progress_every: int = 10) -> dict:
    """libFM SGD and MCMC on a preprocessed data set: settings chosen by validation RMSE, test RMSE
    and MAE of the chosen ones scored as ``jobs/score.py`` scores (clipped to the training target's
    range). ``write``: also save the dict as ``bench/results/libfm_<name>.json`` (name: the data
    set directory's name). Work files go to ``work_dir`` (default ``out/bench/libfm/<name>``).

    Raises:
        LibFMError: libFM not built, or a run failed.
        DatasetError: ``data_dir`` is not a complete data set.
    """
    data_dir = Path(data_dir)
    meta = load_metadata(data_dir)
    binary = libfm_binary()
    name = name or data_dir.name
    work = Path(work_dir) if work_dir is not None else WORK / "libfm" / name
    files = {split: work / f"{split}.libfm" for split in SPLITS}
    start = time.time()
    labels = {split: export_split(read_split(data_dir, split, shuffle_seed=seed if split == TRAIN else None), path)
              for split, path in files.items()}
    export_s = time.time() - start
    print(f"exported {', '.join(f'{s}: {len(v)} rows' for s, v in labels.items())} to {work} ({export_s:.0f} s)",
          file=sys.stderr, flush=True)
    result = {"data": str(data_dir), "rows": {s: len(v) for s, v in labels.items()}, "clipped_to": meta.target_range(),
              "libfm": str(binary), "seed": seed, "grid": asdict(grid), "export_s": round(export_s, 2),
              "methods": {m: run_method(binary, files, labels, meta, method=m, grid=grid, seed=seed, work=work,
                                        progress_every=progress_every) for m in methods}}
    if write:
        save(f"libfm_{name}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a data set directory written by jobs/preprocess.py")
    p.add_argument("--name", help="results name: bench/results/libfm_<name>.json (default: the directory's name)")
    p.add_argument("--methods", nargs="+", choices=("sgd", "mcmc"), default=["sgd", "mcmc"])
    p.add_argument("--dims", type=int, nargs="+", default=list(LibFMGrid.dims))
    p.add_argument("--sgd-iter", type=int, default=LibFMGrid.sgd_iter)
    p.add_argument("--learn-rates", type=float, nargs="+", default=list(LibFMGrid.learn_rates))
    p.add_argument("--regulars", nargs="+", default=list(LibFMGrid.regulars), help="'r0,r1,r2' each")
    p.add_argument("--mcmc-iter", type=int, default=LibFMGrid.mcmc_iter)
    p.add_argument("--init-stdevs", type=float, nargs="+", default=list(LibFMGrid.init_stdevs))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", help="directory for the libFM files and predictions (default out/bench/libfm/<name>)")
    p.add_argument("--progress-every", type=int, default=10, help="echo every N-th libFM iteration line")
    a = p.parse_args(argv)
    grid = LibFMGrid(dims=tuple(a.dims), sgd_iter=a.sgd_iter, learn_rates=tuple(a.learn_rates),
                     regulars=tuple(a.regulars), mcmc_iter=a.mcmc_iter, init_stdevs=tuple(a.init_stdevs))
    try:
        run_libfm(a.data, name=a.name, methods=a.methods, grid=grid, seed=a.seed, work_dir=a.work,
                  progress_every=a.progress_every)
    except (LibFMError, DatasetError) as e:
        print(f"bench_libfm.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
