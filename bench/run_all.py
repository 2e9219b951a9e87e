"""Run every benchmark, then write BENCHMARKS.md from bench/results/*.json.

    make bench                         # all of them (long: tens of minutes on 2 cores)
    .venv/bin/python bench/run_all.py --only train score
    .venv/bin/python bench/run_all.py --report-only   # re-render BENCHMARKS.md from saved results

Each benchmark measures its ratios within one run (these machines are shared and noisy), and
records the command that produced it.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHES = {
    "models": ["bench/bench_models.py", "--out", "bench/results/models.json"],
    "preprocess": ["bench/bench_preprocess.py"],
    "train": ["bench/bench_train.py"],
    "score": ["bench/bench_score.py"],
    "sparse": ["bench/bench_sparse.py"],
    "large_pipeline": ["bench/bench_large_pipeline.py"],
    "large_model": ["bench/bench_large_model.py"],
    "spark_train": ["bench/bench_spark_train.py"],
}
TITLES = {
    "models": "Models: AFM throughput against DeepCTR-Torch and FuxiCTR, and peak training memory (issue: models)",
    "preprocess": "Spark preprocessing rows/s from 1M to 20M rows on local[2], and against the MLlib pipeline (issues: preprocessing, 28)",
    "train": "Training examples/s with 1 and 2 Horovod workers, and the Petastorm loader alone (issue: training)",
    "score": "Spark batch scoring rows/s against raw torch inference (issue: scoring)",
    "sparse": "Training-step examples/s against the number of features, sparse and dense tables (issue: large vocabularies)",
    "large_pipeline": "The whole pipeline on a log with millions of distinct features (issue: large vocabularies)",
    "large_model": "A 10-million-row feature table through checkpoint, --resume, --init-from, scoring and explanation: time and peak memory (issue: large vocabularies)",
    "spark_train": "Training inside Spark (jobs/train.py, horovod.spark.run) against horovodrun, examples/s (issue 16)",
}



def run(names: list[str]) -> None:
    for name in names:
        cmd = [sys.executable, *BENCHES[name]]
        print(f"=== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if k in ("benchmark", "machine", "command", "date"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, list):
            rows.append((key, json.dumps(v)[:200]))
        else:
            rows.append((key, v))
    return rows


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d



def _bound_line(r: dict, model: str) -> str:
    """What the exchange's floor bounds a 2-worker training step's speed to, for one model (bench_train)."""
    m = model.upper()
    line = (f"- {m}, a training step: each rank's half-batch step less its wait {r[f'{model}_np2_compute_ms']:.1f} ms, "
            f"one process's whole step {r[f'{model}_np1_step_ms']:.1f} ms; step-time ratio 2 workers / 1 process "
            f"{r[f'{model}_np2_step_ratio']:.2f}")
    if f"{model}_np2_bound" not in r:
        return line + " (a rank's step cost less than one process's: no bound from the floor in this run)"
    return line + (f"; as a rank's step costs at least one process's, with the step as it is (every rank updates "
                   f"the whole global batch's rows, one synchronous collective after backward) 2 workers can go at "
                   f"most one process's step / (that step + the floor) = **{r[f'{model}_np2_bound']:.3f}** of one "
                   "process's speed on these cores, in this run")

def _verdict(value, goal: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= goal if at_least else value <= goal
    return f"**{value:.2f}** ({'meets' if ok else 'misses'} the goal {'>=' if at_least else '<='} {goal:g})"


def headline(name: str, r: dict) -> list[str]:
    """The figures the issues ask for, against their goals, above each benchmark's full table."""
    if name == "models":
        med = "speed.ratios.median"
        return [f"- training, ours / the faster of DeepCTR-Torch and FuxiCTR "
                f"({_get(r, med + '.faster_competitor_train')}), median of rounds, 2 threads: "
                + _verdict(_get(r, med + ".ours_over_faster_competitor_train"), 2.0, True),
                "- inference, ours / DeepCTR-Torch: " + _verdict(_get(r, med + ".ours_over_deepctr_torch_infer"), 1.0, True),
                "- inference, ours / FuxiCTR: " + _verdict(_get(r, med + ".ours_over_fuxictr_infer"), 1.0, True),
                "- peak training memory, memory-efficient / naive AFM (batch 4096, m = 40): "
                + _verdict(_get(r, "memory.efficient_over_naive_peak"), 0.5, False)]
    if name == "preprocess":
        out = []
        for protocol, ratio in sorted(r.get("ratios", {}).items()):
            out.append(f"- {protocol}: time for {ratio['rows_ratio']:g}x the rows / time for 1x "
                       f"({ratio.get('code', 'one run')}): " + _verdict(ratio["time_ratio"], 10.0, False))
        latest = {}
        for run in r.get("runs", []):  # the last run of each protocol and size that has the MLlib pipeline beside it
            if run.get("vs_mllib") is not None:
                latest[(run["protocol"], run["rows"])] = run
        for (protocol, rows), run in sorted(latest.items()):
            out.append(f"- {protocol}, {rows:,} logs, ours / the MLlib pipeline ({run.get('code', '')}): "
                       + _verdict(run["vs_mllib"], 1.5, False))
        return out
    if name == "train":
        return [f"- examples/s, FM: 1 worker {r['fm_np1_examples_per_s']:,.0f}, 2 workers {r['fm_np2_examples_per_s']:,.0f}; "
                f"AFM: 1 worker {r['afm_np1_examples_per_s']:,.0f}, 2 workers {r['afm_np2_examples_per_s']:,.0f}; "
                f"Petastorm loader alone (one reader): {r['loader_examples_per_s']:,.0f}",
                *([f"- a row group to numpy arrays: Petastorm's conversion {r['petastorm_conversion_us_per_row']:.2f} us "
                   f"a row, the loader's from Arrow {r['arrow_conversion_us_per_row']:.2f} us "
                   f"({r['petastorm_conversion_us_per_row'] / r['arrow_conversion_us_per_row']:.0f}x faster)"]
                  if "arrow_conversion_us_per_row" in r else []),
                "- loader / what one worker consumes: " + _verdict(r["loader_over_training_np1"], 3.0, True),
                "- loader / what each of 2 workers consumes: " + _verdict(r["loader_over_training_np2_per_rank"], 3.0, True),
                *(f"- {model.upper()}, 2 workers / 1 process on the same cores: "
                  + _verdict(r[f"{model}_np2_over_np1"], 0.9, True)
                  for model in ("fm", "afm") if f"{model}_np2_over_np1" in r),
                *([("- where the second rank's time goes: with 2 workers the machine's cores are busy "
                    f"({r['fm_np2_cores_busy']:.2f} and {r['afm_np2_cores_busy']:.2f} of 2) and each example costs more "
                    "CPU than in one process (FM "
                    f"{r['fm_np2_cpu_seconds_per_1000_examples'] / r['fm_np1_cpu_seconds_per_1000_examples']:.2f}x, AFM "
                    f"{r['afm_np2_cpu_seconds_per_1000_examples'] / r['afm_np1_cpu_seconds_per_1000_examples']:.2f}x): "
                    "each rank pays a whole step's fixed costs (dispatch of the step's torch ops, the exchange, its own "
                    "reader) for half the rows, and repeats the whole update of the global batch's rows (summing the "
                    "gathered rows per id, Adagrad) that one process does once")] if "fm_np1_cpu_seconds_per_1000_examples" in r else []),
                *([("- of a 2-worker training step (FM " f"{r['fm_np2_step_ms']:.1f} ms, AFM {r['afm_np2_step_ms']:.1f} ms, "
                    f"against {r['fm_np1_step_ms']:.1f} and {r['afm_np1_step_ms']:.1f} ms in one process), rank 0 waits "
                    f"{r['fm_np2_exchange_wait_ms_per_step']:.1f} and {r['afm_np2_exchange_wait_ms_per_step']:.1f} ms for "
                    "the gradient exchange's allgather: the other rank's lag and the collective itself (Horovod's cycle "
                    "and coordination, Gloo's round trips between processes that share the 2 cores)")]
                  if "fm_np2_step_ms" in r else []),
                *([("- the exchange's floor (2 ranks doing the same step on random ids, no reader; the 10th percentile "
                    f"of rank 0's wait a step): FM {r['fm_exchange_floor_ms']:.1f} ms, AFM {r['afm_exchange_floor_ms']:.1f} ms "
                    f"(medians {r['fm_probe_median_wait_ms']:.1f} and {r['afm_probe_median_wait_ms']:.1f} ms)")]
                  if "fm_exchange_floor_ms" in r else []),
                *(_bound_line(r, model) for model in ("fm", "afm") if f"{model}_np2_step_ratio" in r),
                *([f"- the previous run ({r['previous_run']['date']}), examples/s: FM 1 worker "
                   f"{r['previous_run']['fm_np1_examples_per_s']:,.0f}, 2 workers {r['previous_run']['fm_np2_examples_per_s']:,.0f}; "
                   f"AFM 1 worker {r['previous_run']['afm_np1_examples_per_s']:,.0f}, 2 workers "
                   f"{r['previous_run']['afm_np2_examples_per_s']:,.0f}"] if "previous_run" in r else [])]
    if name == "score":
        return [f"- Spark local[2] {r['spark_rows_per_s']:,.0f} rows/s (job), raw torch {r['raw_torch_rows_per_s']:,.0f} rows/s "
                f"over {r['rows']:,} rows",
                "- Spark / raw torch: " + _verdict(r["spark_over_raw"], 0.5, True)]
    if name == "sparse":
        ratios = r.get("ratios", {})
        sizes = sorted({run["features"] for run in r.get("runs", [])})
        out = []
        for np_ in sorted({run["np"] for run in r.get("runs", [])}):
            rounds = ratios.get(f"np{np_}_sparse_largest_over_smallest_rounds")
            out.append(f"- {np_} process(es), sparse (default), N = {sizes[-1]:,} / N = {sizes[0]:,}"
                       + (f" (median of {len(rounds)} rounds: {', '.join(f'{x:.2f}' for x in rounds)})" if rounds else "")
                       + ": " + _verdict(ratios.get(f"np{np_}_sparse_largest_over_smallest"), 0.8, True))
            out.append(f"- {np_} process(es), N = {sizes[0]:,}, sparse / dense: "
                       + _verdict(ratios.get(f"np{np_}_smallest_sparse_over_dense"), 1.0, True))
            out.append(f"- {np_} process(es), N = {sizes[-1]:,}, sparse peak memory / (parameters + optimizer state): "
                       + _verdict(ratios.get(f"np{np_}_largest_sparse_peak_over_params_and_state"), 1.3, False))
        return out
    if name == "large_pipeline":
        return [f"- {r['num_features']:,} features ({r['rows']:,} generated logs, {r['train_rows']:,} training rows), "
                f"model {r['model_bytes'] / 2**30:.2f} GiB; one epoch at {r['train_examples_per_s']:,.0f} examples/s "
                f"(horovodrun -np 2), validation RMSE {r['val_rmse']:.4f}, test RMSE {r['score']['rmse']:.4f}"]
    if name == "large_model":
        return [f"- {r['num_features']:,} features, k = 64: {r['fm_params_and_state_bytes'] / 2**30:.2f} GiB of FM parameters "
                f"and Adagrad state per training rank; AFM weights {r['afm_weights_bytes'] / 2**30:.2f} GiB",
                *(f"- {s['step']}, anonymous peak of the largest rank / (parameters + optimizer state): "
                  + _verdict(s["peak_anon_over_params_and_state"], 1.3, False)
                  for s in r.get("steps", []) if "peak_anon_over_params_and_state" in s),
                *(f"- {s['step']}: largest process {s['peak_process_anon_bytes'] / 2**30:.2f} GiB anonymous, "
                  f"{s['peak_process_anon_bytes'] / r['afm_weights_bytes']:.2f}x the AFM's weights (the Spark driver's "
                  "JVM included among the processes)"
                  for s in r.get("steps", []) if s["step"] in ("score_test", "explain_20_rows")
                  and "peak_process_anon_bytes" in s)]
    if name == "spark_train":
        return [f"- {run['launcher']} / horovodrun -np 2: " + _verdict(run["over_horovodrun"], 0.9, True)
                for run in r.get("runs", [])[1:]]
    return []


def table(name: str, r: dict) -> list[str]:
    """A readable table of a benchmark's runs."""
    gib = 2 ** 30
    if name == "sparse":
        lines = ["| features N | processes | path | examples/s | peak memory (GiB, largest rank) | "
                 "parameters + optimizer state (GiB) |", "| ---: | ---: | --- | ---: | ---: | ---: |"]
        for run in r.get("runs", []):
            if "skipped" in run:
                lines.append(f"| {run['features']:,} | {run['np']} | {run['path']} | not run: {run['skipped']} | | |")
                continue
            lines.append(f"| {run['features']:,} | {run['np']} | {run['path']} | {run['examples_per_s']:,.0f} | "
                         f"{run['peak_rss_bytes'] / gib:.2f} | "
                         f"{(run['param_bytes'] + run['optimizer_state_bytes']) / gib:.2f} |")
        return lines
    if name == "train" and "fm_np1_cpu_seconds_per_1000_examples" in r:
        timed = "fm_np1_step_ms" in r
        lines = ["| model | workers | examples/s (median epoch after the first) | CPU core-seconds per 1,000 examples "
                 "(whole run) | cores busy (CPU / wall) |" + (" ms a training step | rank 0's exchange wait, "
                                                               "ms a step |" if timed else ""),
                 "| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if timed else "")]
        for model in ("fm", "afm"):
            for np_ in (1, 2):
                key = f"{model}_np{np_}"
                lines.append(f"| {model.upper()} | {np_} | {r[key + '_examples_per_s']:,.0f} | "
                             f"{r[key + '_cpu_seconds_per_1000_examples']:.3f} | {r[key + '_cores_busy']:.2f} |"
                             + (f" {r[key + '_step_ms']:.1f} | {r[key + '_exchange_wait_ms_per_step']:.1f} |"
                                if key + "_step_ms" in r else ""))
        lines.append(f"\nPetastorm loader alone: {r['loader_examples_per_s']:,.0f} examples/s; {r['data_rows']:,} generated rows.")
        return lines
    if name == "large_pipeline":
        lines = ["| step | seconds | peak memory (GiB) |", "| --- | ---: | ---: |"]
        for step, seconds in r.get("seconds", {}).items():
            lines.append(f"| {step} | {seconds:,.0f} | {r['peak_rss_bytes'][step] / gib:.2f} |")
        return lines
    if name == "large_model":
        lines = ["| step | seconds | largest process (GiB) | its anonymous memory (GiB) | whole process tree (GiB) |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for s in r.get("steps", []):
            lines.append(f"| {s['step']}{' (reused from ' + s['reused_from'] + ')' if 'reused_from' in s else ''} | "
                         f"{s['seconds']:,.0f} | {s['peak_process_bytes'] / gib:.2f} | "
                         + (f"{s['peak_process_anon_bytes'] / gib:.2f}" if "peak_process_anon_bytes" in s else "not measured")
                         + f" | {s['peak_tree_bytes'] / gib:.2f} |")
        return lines
    if name == "spark_train":
        lines = ["| launcher | examples/s (last epoch) | / horovodrun | job seconds (startup included) | "
                 "validation RMSE |", "| --- | ---: | ---: | ---: | ---: |"]
        for run in r.get("runs", []):
            lines.append(f"| {run['launcher']} | {run['examples_per_s']:,.0f} | {run['over_horovodrun']:.2f} | "
                         f"{run['job_seconds']:,.0f} | {run['val_rmse']:.4f} |")
        return lines
    if name == "preprocess" and "runs" in r:
        lines = ["| protocol | logs (instances) | job s | / MLlib pipeline | logs/s | instances/s | load before | code |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for run in sorted(r["runs"], key=lambda x: (x["protocol"], x["rows"])):
            inst = f" ({run['instances']:,})" if run["instances"] != run["rows"] else ""
            vs = f"{run['vs_mllib']:.2f}" if run.get("vs_mllib") is not None else ""
            lines.append(f"| {run['protocol']} | {run['rows']:,}{inst} | {run['job_seconds']:.1f} | {vs} | "
                         f"{run['rows_per_s']:,} | {run['instances_per_s']:,} | {run.get('load_1min_before', '')} | "
                         f"{run.get('code', '')} |")
        lines.append(f"\nlocal[{r.get('master', 'local[2]').strip('local[]')}], driver memory {r.get('driver_memory')}; "
                     f"goal: {r.get('target')}.")
        return lines
    if name == "models" and "speed" in r:
        return _models_table(r)
    if name == "score" and "spark_rows_per_s" in r:
        return ["| Spark / raw torch | Spark rows/s (job) | Spark rows/s (startup included) | raw torch rows/s | "
                "rows | job seconds | model |", "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
                f"| **{r['spark_over_raw']:.2f}** | {r['spark_rows_per_s']:,.0f} | {r['spark_rows_per_s_incl_startup']:,.0f} | "
                f"{r['raw_torch_rows_per_s']:,.0f} | {r['rows']:,} | {r['spark_job_seconds']:.1f} | {r['model']} |"]
    return ["| figure | value |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in _flatten(r)]


_MODEL_NAMES = {"ours": "afm-dist AFM", "ours_naive": "afm-dist AFM, naive pair layer",
                "deepctr_torch": "DeepCTR-Torch AFM", "fuxictr": "FuxiCTR AFM"}


def _models_table(r: dict) -> list[str]:
    """bench_models.py's run: the ratios first, then each variant's examples/s, then peak memory."""
    two, one = r["speed"], r.get("speed_1_threads", {})
    lines = ["| afm-dist AFM over | training, 2 threads | inference, 2 threads | training, 1 thread | inference, 1 thread |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for other in ("deepctr_torch", "fuxictr", "ours_naive"):
        cells = []
        for speed in (two, one):
            ratios = speed.get("ratios", {}).get("median", {})
            cells += [_fmt(ratios.get(f"ours_over_{other.replace('ours_', '')}_{kind}", "")) for kind in ("train", "infer")]
        lines.append(f"| {_MODEL_NAMES[other]} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios of the median examples/s over the rounds; examples/s (median, best of "
              f"{two['variants']['ours']['train_examples_per_s']['rounds']} rounds):", "",
              "| model | training, 2 threads | inference, 2 threads | training, 1 thread | inference, 1 thread | "
              "page faults a training step | system ms a training step |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in two["variants"].items():
        w = one.get("variants", {}).get(name, {})
        cell = lambda d, k: (f"{d[k]['median']:,.0f} ({d[k]['best']:,.0f})" if k in d else "")  # noqa: E731
        lines.append(f"| {_MODEL_NAMES.get(name, name)} | {cell(v, 'train_examples_per_s')} | "
                     f"{cell(v, 'infer_examples_per_s')} | {cell(w, 'train_examples_per_s')} | "
                     f"{cell(w, 'infer_examples_per_s')} | {v['train_page_faults_per_step']:,.0f} | "
                     f"{v['train_system_ms_per_step']:.2f} |")
    mem = r.get("memory", {})
    if mem:
        lines += ["", "| model | peak training memory (MiB) | process peak RSS (MiB) | RSS before training (MiB) |",
                  "| --- | ---: | ---: | ---: |"]
        for name in ("ours", "ours_naive"):
            if name in mem:
                m = mem[name]
                lines.append(f"| {_MODEL_NAMES[name]} | {m['training_peak_mib']:,.0f} | {m['peak_rss_mib']:,.0f} | "
                             f"{m['base_rss_mib']:,.0f} |")
    setup = r.get("setup", {})
    sp, ms = setup.get("speed_shape", {}), setup.get("memory_shape", {})
    if sp:
        lines += ["", f"Speed: batch {sp['batch_size']}, {sp['num_fields']} fields of {sp['vocab_per_field']} values, "
                  f"k = {sp['embedding_dim']}, t = {sp['attention_factor']}, {setup.get('optimizer')}, "
                  f"{setup.get('loss')} loss, {setup.get('rounds')} rounds x {setup.get('passes')} passes of "
                  f"{setup.get('iters_per_round')} steps. Memory: batch {ms.get('batch_size')}, "
                  f"{ms.get('num_fields')} fields (m), k = {ms.get('embedding_dim')}."]
    return lines


def report() -> Path:
    import torch

    lines = ["# Benchmarks", "",
             "Written by `make bench` (`bench/run_all.py`) from `bench/results/*.json`. Every ratio is measured",
             "within one run of its benchmark on the same machine; absolute figures depend on the machine and",
             "on whatever else it was doing.", "",
             f"Rendered on: {platform.node()} — Python {platform.python_version()}, torch {torch.__version__}.", ""]
    for name in BENCHES:
        path = RESULTS / f"{name}.json"
        lines += [f"## {TITLES[name]}", ""]
        if not path.exists():
            lines += [f"Not run yet: `.venv/bin/python {' '.join(BENCHES[name])}`.", ""]
            continue
        result = json.loads(path.read_text())
        machine = result.get("machine", {})
        lines += [f"Command: `{result.get('command', ' '.join(BENCHES[name]))}`  ",
                  f"Run: {result.get('date', '?')}; machine: "
                  + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
                  *headline(name, result), "", *table(name, result), ""]
    out = REPO / "BENCHMARKS.md"
    out.write_text(_keep_written_sections("\n".join(lines), out), encoding="utf-8")
    return out


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text``'s lines before its first "## " heading, and its (heading, section) pairs in order."""
    parts = ("\n" + text).split("\n## ")
    return parts[0].lstrip("\n"), [(p.split("\n", 1)[0], "## " + p) for p in parts[1:]]


def _keep_written_sections(rendered: str, path: Path) -> str:
    """``rendered`` with the sections of the existing ``path`` that are not rendered from results
    (written by hand beside a benchmark: elastic training, issue 28, ...) kept in their places."""
    if not path.exists():
        return rendered
    head, new = _sections(rendered)
    generated = dict(new)
    _, old = _sections(path.read_text(encoding="utf-8"))
    body = [generated.pop(title, section) for title, section in old]
    return "\n".join([head.rstrip("\n") + "\n", *[b.rstrip("\n") + "\n" for b in body + list(generated.values())]])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benchmarks")
    p.add_argument("--report-only", action="store_true", help="only re-render BENCHMARKS.md")
    args = p.parse_args()
    if not args.report_only:
        run(args.only or list(BENCHES))
    print(f"wrote {report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
