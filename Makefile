# afm-dist: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup test test-fast demo bench clean

setup:  ## system packages, .venv, the package, Horovod (cached wheel); seconds when already done
	bash scripts/setup.sh

test: setup  ## the whole test suite (Spark local[2], Petastorm, horovodrun -np 2 with Gloo)
	$(PY) -m pytest

test-fast: setup  ## everything but the slow end-to-end tests
	$(PY) -m pytest -m "not slow"

demo: setup  ## the whole pipeline on the embedded default data
	bash scripts/demo.sh

bench: setup  ## all benchmarks; writes BENCHMARKS.md
	$(PY) bench/run_all.py

clean:
	rm -rf build out .pytest_cache
