"""Issues 24 and 26: FM and AFM at the defaults, and libFM SGD and MCMC, on the same rows of each data set.

Three real data sets, two splits each, and MovieLens and the Frappe logs again with each user's history (mh1, mh2, fh1, fh2;
``bash experiments/quality_data.sh WORK/data`` writes them all),
every step the product's command as a user types it with no flag beyond ``--data --model
--init-from --output``: ``horovodrun -np 2 ... afm_dist.train`` for FM, then AFM initialised from it,
``spark-submit.sh jobs/score.py`` on the test split for the test RMSE, and bench/bench_libfm.py for
libFM (its settings chosen on the validation split). Each outcome is appended to
``docs/results/defaults.json`` as soon as it is there; a recorded one is not run again unless
``--again``. ``--report`` prints the markdown table of docs/results/quality.md.

    .venv/bin/python experiments/defaults.py --work /tmp/q [--sets fl1 ml1 ...] [--no-libfm]
    .venv/bin/python experiments/defaults.py --report
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from afm_dist.dataset import TEST  # noqa: E402
from afm_dist.io import write_text_atomic  # noqa: E402
from afm_dist.model_dir import METRICS, TrainedModel  # noqa: E402
from afm_dist.spark.scoring import METRICS_FILE  # noqa: E402
from common import VENV_BIN, horovodrun, run  # noqa: E402

RESULTS = REPO / "docs" / "results" / "defaults.json"
SETS = {"fl1": "Frappe libFM file, given splits (lines by NR%10)", "fl2": "Frappe libFM file, given splits (random lines, srand 7)",
        "fr1": "Frappe logs, seed 2017", "fr2": "Frappe logs, seed 99",
        "ml1": "MovieLens ratings + genres, seed 2017", "ml2": "MovieLens ratings + genres, seed 99",
        "mh1": "MovieLens ratings + genres + user history (50), seed 2017",
        "mh2": "MovieLens ratings + genres + user history (50), seed 99",
        "fh1": "Frappe logs + user history of used apps (50), seed 2017",
        "fh2": "Frappe logs + user history of used apps (50), seed 99"}


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save(results: dict) -> None:
    write_text_atomic(RESULTS, json.dumps(results, indent=1, sort_keys=True) + "\n")


def train(data: Path, work: Path, name: str, model: str, init_from: Path | None) -> dict:
    out = work / "models" / name
    cmd = [*horovodrun(2), VENV_BIN / "python", "-m", "afm_dist.train", "--data", data, "--model", model,
           "--output", out, "--overwrite", "--log-every", 60]
    if init_from:
        cmd += ["--init-from", init_from]
    seconds = run(cmd)
    info = TrainedModel.load(out)
    history = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    scores = work / "scores" / name
    run([REPO / "spark-submit.sh", "jobs/score.py", "--model", out, "--input", data / TEST, "--output", scores,
         "--overwrite"])
    m = json.loads((scores / METRICS_FILE).read_text())
    cmd_text = " ".join(map(str, cmd[cmd.index("-m"):])).replace(str(work), "WORK")
    return {"command": cmd_text, "best_epoch": info.best["epoch"], "best_val_rmse": info.best["val_rmse"],
            "epochs_run": sum(1 for h in history if h["epoch"] > 0), "minutes": round(seconds / 60, 2),
            "l2": [h.get("embedding_l2") for h in history], "val_rmse": [h["val_rmse"] for h in history],
            # tail averaging: the mean's validation RMSE where scored, and whether the kept weights are the mean
            "val_rmse_average": [h.get("val_rmse_average") for h in history],
            "best_is_average": info.best.get("metrics", {}).get("weights") == "average",
            "test_rmse": m["rmse"], "test_rows": m["rows"]}


def libfm(data: Path, work: Path) -> dict:
    from bench_libfm import run_libfm

    start = time.time()
    r = run_libfm(data, name=f"quality_{data.name}", work_dir=work / "libfm" / data.name, write=False)
    out = {m: {"test_rmse": v["test"]["rmse"], "chosen": v.get("chosen")} for m, v in r["methods"].items()}
    out["minutes"] = round((time.time() - start) / 60, 2)
    return out


def report(results: dict) -> str:
    rows = ["| data set | FM test | AFM test | AFM vs FM | libFM SGD | libFM MCMC | FM: epochs, best, minutes | AFM: epochs, best, minutes |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
    for s, label in SETS.items():
        r = results.get(s)
        if not r or "fm" not in r:
            continue
        fm, afm, lib = r["fm"], r.get("afm"), r.get("libfm", {})

        def cell(x):
            return f"{x:.4f}" if x is not None else "-"
        gain = f"{100 * (afm['test_rmse'] / fm['test_rmse'] - 1):+.1f}%" if afm else "-"
        rows.append(f"| {label} | {cell(fm['test_rmse'])} | {cell(afm and afm['test_rmse'])} | {gain} | "
                    f"{cell(lib.get('sgd', {}).get('test_rmse'))} | {cell(lib.get('mcmc', {}).get('test_rmse'))} | "
                    f"{fm['epochs_run']}, {fm['best_epoch']}, {fm['minutes']:.1f} | "
                    + (f"{afm['epochs_run']}, {afm['best_epoch']}, {afm['minutes']:.1f} |" if afm else "- |"))
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    """Test RMSE of AFM, libFM SGD and libFM MCMC relative to our FM's, per data set (below 1: better)."""
    sets = [s for s in SETS if "fm" in results.get(s, {})]
    series = {"AFM": lambda r: r.get("afm", {}).get("test_rmse"),
              "libFM SGD": lambda r: r.get("libfm", {}).get("sgd", {}).get("test_rmse"),
              "libFM MCMC": lambda r: r.get("libfm", {}).get("mcmc", {}).get("test_rmse")}
    relative_bars(sets, {name: [(get(results[s]) or float("nan")) / results[s]["fm"]["test_rmse"] for s in sets]
                         for name, get in series.items()},
                  baseline="our FM", title="At the defaults: AFM and libFM against our FM (lower is better)",
                  ylabel="test RMSE / our FM's", path=path)


def relative_bars(sets: list[str], series: dict[str, list[float]], *, baseline: str, title: str, ylabel: str,
                  path: Path) -> None:
    """Grouped bars, one group a data set and one bar a series (values relative to ``baseline``, a line at 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from afm_dist.plots import save_figure

    fig, ax = plt.subplots(figsize=(8 + len(series) - 3, 4), dpi=120)
    x = np.arange(len(sets))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width=width, label=name)
    ax.axhline(1.0, color="black", linewidth=1, label=baseline)
    ax.set_xticks(x, labels=sets)
    ax.set_ylim(0.85, 1.1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8 if len(series) < 4 else 7, ncol=1 if len(series) < 4 else 2)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "out" / "quality")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--no-libfm", action="store_true")
    p.add_argument("--again", action="store_true", help="run recorded ones again")
    p.add_argument("--report", action="store_true")
    p.add_argument("--libfm-json", action="append", default=[], metavar="SET=PATH",
                   help="take SET's libFM results from a recorded bench/bench_libfm.py run on the same rows")
    a = p.parse_args()
    results = load()
    for spec in a.libfm_json:
        s, _, path = spec.partition("=")
        r = json.loads(Path(path).read_text())
        results.setdefault(s, {})["libfm"] = {m: {"test_rmse": v["test_rmse"], "chosen": v["chosen"]}
                                              for m, v in r["methods"].items()} | {"source": path, "rows": r["rows"]}
        save(results)
    if a.report:
        print(report(results))
        plot(results, RESULTS.with_suffix(".png"))
        return 0
    for s in a.sets:
        data = a.work / "data" / s
        r = results.setdefault(s, {})
        for model in ("fm", "afm"):
            if a.again or model not in r:
                r[model] = train(data, a.work, f"{s}-{model}", model, a.work / "models" / f"{s}-fm" if model == "afm" else None)
                save(results)
        if not a.no_libfm and (a.again or "libfm" not in r):
            r["libfm"] = libfm(data, a.work)
            save(results)
        print(report(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
