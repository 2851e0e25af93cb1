"""pytest-benchmark glue for the suites in ``bench/`` (``bench_<op>.py``, each with ``CASES``).

Run with ``pytest bench/ --benchmark-only``. ``bench_*.py`` files are collected by the
``pytest_collect_file`` hook below, so no ``python_files`` option is needed (passing
``-o python_files=bench_*.py`` also works; files are then not collected twice).

Fixtures:

* ``bench_device``: ``cuda`` when available, else ``cpu``; override with
  ``FUSEDOPS_BENCH_DEVICE=cpu|cuda``.
* ``run_bench(case, impl)``: builds the case's workload (one at a time, cached across that
  case's implementations), checks ``fusedops`` against the reference before timing it, calls the
  implementation once untimed (``torch.compile`` / Triton autotuning), then times it with the
  ``benchmark`` fixture inside the implementation's context (e.g. ``use_backend("cpp")``).
  GB/s and the fraction of the device's copy ceiling go to ``extra_info``. When the fusedops
  API is not importable the ``fusedops`` tests are skipped with the reason.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Keep compiler caches out of the home directory (and warm across runs).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(sys.prefix, "var", "inductor-cache"))
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(sys.prefix, "var", "triton-cache"))

try:
    import fusedops.benchmarking  # noqa: F401
except ImportError:  # not installed: use the source tree (pure-Python parts only)
    sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402

from fusedops import benchmarking as bm  # noqa: E402


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``bench_*.py`` as test modules unless ``python_files`` already matches them."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in patterns):
        return None  # the python plugin collects it already
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    """Device the suites run on."""
    name = os.environ.get("FUSEDOPS_BENCH_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    return torch.device(name)


_built: dict[str, Any] = {}  # {"key": case id + device, "workload": Workload, "checked": bool}


def _workload(case: bm.Case, device: torch.device) -> bm.Workload:
    key = f"{case.id}@{device}"
    if _built.get("key") != key:
        _built.clear()  # free the previous case's tensors first
        _built.update(key=key, workload=case.build(device), checked=False)
    return _built["workload"]


@pytest.fixture
def run_bench(benchmark: Any, bench_device: torch.device) -> Callable[[bm.Case, str], None]:
    """``run_bench(case, impl_name)``: check (fused only), warm and time one implementation."""

    def run(case: bm.Case, impl_name: str) -> None:
        workload = _workload(case, bench_device)
        impl = next((i for i in workload.impls if i.name == impl_name), None)
        if impl is None:
            pytest.skip(f"{case.id} has no {impl_name!r} implementation")
        try:
            if impl_name == bm.FUSED and not _built["checked"]:
                workload.check()
                _built["checked"] = True
            with impl.context():
                fn = impl.fn
                if bench_device.type == "cuda":
                    inner = impl.fn

                    def fn() -> None:
                        inner()
                        torch.cuda.synchronize(bench_device)

                fn()  # compile / autotune / first touch, untimed
                for _ in range(2):
                    fn()
                benchmark(fn)
        except bm.Unavailable as exc:
            pytest.skip(str(exc))
        benchmark.extra_info.update(op=case.op, case=case.name, impl=impl_name, shape=case.shape)
        median_s = _median_seconds(benchmark)
        if workload.min_bytes and median_s:
            rate = bm.gbs(workload.min_bytes, median_s * 1e3)
            benchmark.extra_info["min_bytes"] = workload.min_bytes
            benchmark.extra_info["gb_s"] = round(rate, 2)
            benchmark.extra_info["frac_of_copy"] = round(
                rate / bm.copy_bandwidth_gbs(bench_device), 3
            )

    return run


def _median_seconds(benchmark: Any) -> float | None:
    """Median seconds per call from the ``benchmark`` fixture (``None`` when disabled)."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    return getattr(stats, "median", None)
