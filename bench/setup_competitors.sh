#!/usr/bin/env bash
# Benchmark-only environment for the competitor AFMs that bench/bench_models.py compares against.
#
#   bash bench/setup_competitors.sh            # creates .venv-bench next to .venv
#   .venv/bin/python bench/bench_models.py --out bench/results/models.json
#
# DeepCTR-Torch and FuxiCTR are never dependencies of afm-dist (not in pyproject.toml): they live
# in their own venv, installed with --no-deps so that their loose pins (tensorflow-era numpy,
# ray, polars) cannot pull a different torch. Only the pure-Python modules their model and layer
# imports need are added. torch is the same 2.13.0 CPU build as .venv, so timings compare code,
# not builds. FuxiCTR's model zoo (model_zoo/AFM) is not in its PyPI package; the benchmark
# assembles that model from the package's own layers (see bench/bench_models.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AFM_BENCH_VENV:-$ROOT/.venv-bench}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="2.13.0"
DEEPCTR_TORCH_VERSION="0.3.0"
FUXICTR_VERSION="2.3.10"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "torch==$TORCH_VERSION"
"${PIP[@]}" install -q --no-deps "deepctr-torch==$DEEPCTR_TORCH_VERSION" "fuxictr==$FUXICTR_VERSION"
# What their imports need (deepctr_torch: numpy, scikit-learn, tqdm, requests;
# fuxictr.pytorch.layers/models: numpy, pandas, pyyaml, scikit-learn, h5py, tqdm).
"${PIP[@]}" install -q "numpy<2" scikit-learn tqdm requests pandas pyyaml h5py
for variant in deepctr_torch fuxictr; do
  PYTHONPATH="$ROOT" "$VENV/bin/python" "$ROOT/bench/bench_models.py" --probe "$variant" 2>/dev/null | tail -n 1
done
