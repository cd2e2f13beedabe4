# The README's commands. `make demo` and `make test` each do all the set-up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: an unpinned `torch` would pull the newest build
# with several GB of CUDA packages. On a GPU host set TORCH_INDEX to PyTorch's CUDA
# index (e.g. https://download.pytorch.org/whl/cu128); on a CPU-only machine, to .../whl/cpu.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test test-quick lint bench bench-api clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[worker,dev]"
	touch $@

setup: $(VENV)/.installed

# The main job: a SAM study on digits with 30% of the training labels flipped,
# on the embedded default (SQLite + embedded broker under .samsweep/, no servers).
demo: setup
	$(VENV)/bin/samsweep run examples/digits-label-noise.yaml

# `make lint`: the static checks (also .pre-commit-config.yaml's hooks): ruff, ruff format,
# mypy, and the import contracts of pyproject.toml's [tool.importlinter] (lint-imports).
LINT_PATHS := samsweep service worker trainer tests benchmarks migrations

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy samsweep service worker trainer
	$(VENV)/bin/lint-imports

# Two tiers of tests, by directory. The quick tier (everything outside tests/e2e/) runs in
# process and starts no server, worker, CLI process or browser (tests/conftest.py makes
# trying fail), but some of its tests use the real PostgreSQL and Redis, which
# scripts/services.sh starts if down. It stops at the first failure.
# PYTEST_ARGS goes to both tiers (`make test PYTEST_ARGS=tests/e2e/test_cancel.py`): a
# tier it leaves empty (pytest's exit 5, no test collected) is not a failure then.
NONE_SELECTED_IS_OK = || { rc=$$?; [ $$rc -eq 5 ] && [ -n "$(PYTEST_ARGS)" ]; }

test-quick: setup
	bash scripts/services.sh
	$(PY) -m pytest -q -x -m "not e2e" $(PYTEST_ARGS) $(NONE_SELECTED_IS_OK)

# `make test`: lint, the quick tier, then the e2e tier (tests/e2e/: real uvicorn, Celery
# workers, CLI processes, faults, compose emulation, and Debian's chromium through
# Playwright, which scripts/browser.sh installs if missing).
test: lint test-quick
	bash scripts/services.sh
	bash scripts/browser.sh
	$(PY) -m pytest -q -m e2e $(PYTEST_ARGS) $(NONE_SELECTED_IS_OK)

# The training fast path (benchmarks/fast_path.py): writes benchmarks/results/<device>-<date>.json.
# The same command on a GPU host measures the CUDA path (the full matrix, a real 50 000-image epoch).
bench: setup
	$(PY) -m benchmarks.fast_path

# The API's door and read load on a real uvicorn, and the per-epoch write (PostgreSQL and
# Redis as for the tests; the load benchmark needs wrk: apt-get install wrk).
bench-api: setup
	bash scripts/services.sh
	$(PY) -m benchmarks.door
	$(PY) -m benchmarks.load
	$(PY) -m benchmarks.epochs

clean:
	rm -rf .samsweep
