# recsys-notebooks: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params/default.yaml
# where tests find the local MovieLens copies (ml-100k/, ml-1m-half/); tests needing them skip without
RECSYS_SHARED_DATA ?= $(abspath ../shared/data)
export RECSYS_SHARED_DATA

.PHONY: install run serve test test-fast lint format bench jupyter chromium clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (recsys-notebooks)"
	touch $(STAMP)

## the whole pipeline with the default parameters (PARAMS=params/ml-100k.yaml for another set)
run: install
	$(PY) run_all.py --params $(PARAMS)

## serve a finished run over HTTP with its web page: make serve RUN=artifacts/default (then open http://127.0.0.1:8000/)
RUN ?= artifacts/default
serve: install
	$(VENV)/bin/recsys-serve --run $(RUN)

## the test suite: style, unit tests, then the notebooks through papermill on small and local data;
## two pytest-xdist workers: each chain of notebooks on one of them (tests/conftest.py), the rest spread out;
## each worker gets one core: one thread per BLAS, OpenMP and TensorFlow op (two workers with two threads
## each on 2 cores slowed every chain down: 553 s for the suite against 475 s)
TEST_THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
test: lint
	$(TEST_THREADS) $(PY) -m pytest -ra --durations=15 -n 2

## unit tests only (no notebook runs)
test-fast: lint
	$(PY) -m pytest -ra -m "not slow"

## one style: the formatter's layout and the linter's rules (pyproject.toml), code and notebooks
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

## apply the formatter and the linter's safe fixes
format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## speed and memory measurements (prints and writes benchmarks/results/)
bench: install
	$(PY) benchmarks/run_benchmarks.py

## step through the notebooks interactively from the same environment
jupyter: install
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

## headless Chromium for the browser check of the reports (Debian packages)
chromium:
	apt-get update && apt-get install -y chromium

clean:
	rm -rf $(VENV) .pytest_cache
