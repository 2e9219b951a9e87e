# afm-dist: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
# The stack profile: 4 (the default: pyspark 4.3, pyarrow 26, NumPy 2, pandas 3) or 3.5 (for Spark 3.5
# clusters). VENV: where it is installed.
SPARK ?= 4
VENV ?= .venv
PY := $(VENV)/bin/python
SPARK35_VENV := .venv-spark3.5

.PHONY: setup test test-all test-spark3.5 test-fast demo bench clean

setup:  ## system packages, $(VENV) with the SPARK profile, the package, Horovod (cached wheel); seconds when already done
	SPARK=$(SPARK) AFM_VENV=$(abspath $(VENV)) bash scripts/setup.sh

test: test-all test-spark3.5  ## the whole suite on the default profile, then the smoke set on Spark 3.5

test-all: setup  ## the whole test suite (Spark local[2], Petastorm, horovodrun -np 2 with Gloo)
	$(PY) -m pytest

test-spark3.5:  ## the Spark 3.5 profile in its own venv: the smoke set (-m stack) end to end
	$(MAKE) setup SPARK=3.5 VENV=$(SPARK35_VENV)
	$(SPARK35_VENV)/bin/python -m pytest -m stack

test-fast: setup  ## everything but the slow end-to-end tests
	$(PY) -m pytest -m "not slow"

demo: setup  ## the whole pipeline on the embedded default data
	AFM_VENV=$(abspath $(VENV)) bash scripts/demo.sh

bench: setup  ## all benchmarks; writes BENCHMARKS.md
	$(PY) bench/run_all.py

clean:
	rm -rf build out .pytest_cache
