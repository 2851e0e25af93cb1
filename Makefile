# fusedops: set-up and the commands the README gives. Every target creates .venv at the repo
# root on first use (torch==2.13.0, pinned dev requirements, the package) and reuses it.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.fusedops-stamp
SOURCES := setup.py pyproject.toml requirements-dev.txt requirements-triton.txt \
	$(wildcard csrc/*) $(wildcard python/fusedops/*.py) $(wildcard python/fusedops/*/*.py) \
	$(wildcard kernels/*.py)
export TRITON_CACHE_DIR ?= $(CURDIR)/$(VENV)/fusedops-cache/triton-cache
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/$(VENV)/fusedops-cache/inductor
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test bench lint format clean

setup: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VPY) $(SOURCES)
	$(VPY) -m pip install -q torch==2.13.0
	@# A CPU torch brings no triton: install the pinned one (a CUDA torch pins its own).
	$(VPY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
		|| $(VPY) -m pip install -q -r requirements-triton.txt
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m fusedops.cli demo

test: $(STAMP)
	$(VPY) -m pytest tests -q

bench: $(STAMP)
	$(VPY) bench/run.py --out bench/results.csv
	$(VPY) -m pytest bench -q -o python_files='bench_*.py' --benchmark-only

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format: $(STAMP)
	$(VPY) -m ruff check --fix .
	$(VPY) -m ruff format .

clean:
	rm -rf build *.egg-info python/*.egg-info python/fusedops/_C*.so
