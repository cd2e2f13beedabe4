# The README's commands. `make demo` and `make test` each do all the set-up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: an unpinned `torch` would pull the newest build
# with several GB of CUDA packages. On a GPU host set TORCH_INDEX to PyTorch's CUDA
# index (e.g. https://download.pytorch.org/whl/cu128); on a CPU-only machine, to .../whl/cpu.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test lint bench bench-api clean

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

# The tests talk to real PostgreSQL and Redis; scripts/services.sh starts them if down.
# The study page's tests drive Debian's chromium; scripts/browser.sh installs it if missing.
test: setup
	$(VENV)/bin/ruff check samsweep service worker trainer tests benchmarks migrations
	$(VENV)/bin/ruff format --check samsweep service worker trainer tests benchmarks migrations
	$(VENV)/bin/mypy samsweep service worker trainer
	bash scripts/services.sh
	bash scripts/browser.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check samsweep service worker trainer tests benchmarks migrations
	$(VENV)/bin/ruff format --check samsweep service worker trainer tests benchmarks migrations
	$(VENV)/bin/mypy samsweep service worker trainer

bench: setup
	$(PY) benchmarks/sam_step.py

# The API's door and read load on a real uvicorn, and the per-epoch write (PostgreSQL and
# Redis as for the tests; the load benchmark needs wrk: apt-get install wrk).
bench-api: setup
	bash scripts/services.sh
	$(PY) -m benchmarks.door
	$(PY) -m benchmarks.load
	$(PY) -m benchmarks.epochs

clean:
	rm -rf .samsweep
