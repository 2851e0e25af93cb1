"""pytest-benchmark glue for the suites in ``bench/`` (``bench_<op>.py``, each with ``CASES``).

Run with ``pytest bench/ --benchmark-only``. ``bench_*.py`` files are collected by the
``pytest_collect_file`` hook below, so no ``python_files`` option is needed (passing
``-o python_files=bench_*.py`` also works; files are then not collected twice). A test taking
``case`` and ``impl`` runs once per implementation of every case in its module's ``CASES``.

Fixtures:

* ``bench_device``: ``cuda`` when available, else ``cpu``; override with
  ``FUSEDOPS_BENCH_DEVICE=cpu|cuda``.
* ``run_bench(case, impl)``: builds the case's workload (one at a time, cached across that
  case's implementations), checks ``fusedops`` against the reference before timing it, calls the
  implementation once untimed (``torch.compile`` / Triton autotuning), then times it with the
  ``benchmark`` fixture inside the implementation's context (e.g. ``use_backend("cpp")``).
  A peer is checked against the reference too before it is timed (a wrong peer fails its
  test). GB/s, the fraction of the device's copy ceiling and TFLOP/s go to ``extra_info``. When
  the ``fusedops._C`` extension is not built the ``fusedops`` tests are skipped with the reason;
  a peer that is not installed or cannot run here (Liger-Kernel, flash-attention, a forced SDPA
  backend off CUDA) is skipped with its reason.

``fusedops bench`` (the command line) sweeps the same spec classes and writes JSON, CSV,
``report.md`` and plots; these suites are the pytest-benchmark view of the named cases.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fusedops.caches import set_default_cache_dirs

set_default_cache_dirs()

from fusedops import benchmarking as bm  # noqa: E402


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``bench_*.py`` as test modules unless ``python_files`` already matches them."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in patterns):
        return None  # the python plugin collects it already
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``(case, impl)`` over the module's ``CASES``, one id per implementation."""
    if {"case", "impl"} <= set(metafunc.fixturenames):
        params = bm.case_impl_params(metafunc.module.CASES)
        metafunc.parametrize(
            ("case", "impl"), [(c, i) for c, i, _ in params], ids=[name for *_, name in params]
        )


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
            reason = next((s for s in workload.skipped if s.name == impl_name), None)
            pytest.skip(f"{reason.status}: {reason.reason}" if reason else "not bound here")
        try:
            if impl_name == bm.FUSED and not _built["checked"]:
                bm.check_case(case, workload)
                _built["checked"] = True
            verify = impl.verify or workload.verify
            if impl_name != bm.FUSED and verify is not None:
                with impl.context():
                    accuracy = verify(impl.fn())
                if not accuracy.ok:
                    raise bm.Mismatch(f"{impl_name} {case.id} differs: {accuracy.detail}")
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
        if median_s and workload.min_bytes:
            rate = bm.gbs(workload.min_bytes, median_s * 1e3)
            benchmark.extra_info["min_bytes"] = workload.min_bytes
            benchmark.extra_info["gb_s"] = round(rate, 2)
            benchmark.extra_info["frac_of_copy"] = round(
                rate / bm.copy_bandwidth_gbs(bench_device), 3
            )
        if median_s and workload.flops:
            benchmark.extra_info["tflop_s"] = round(workload.flops / median_s / 1e12, 3)

    return run


def _median_seconds(benchmark: Any) -> float | None:
    """Median seconds per call from the ``benchmark`` fixture (``None`` when disabled)."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    return getattr(stats, "median", None)
