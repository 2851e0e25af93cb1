"""Benchmark harness shared by ``bench/`` (``run.py``, the pytest-benchmark suites) and the demo.

Benchmarks report ratios, not absolute times: achieved GB/s of the minimum bytes
(:mod:`~fusedops.benchmarking.counts`) as a fraction of the device's measured copy bandwidth
(:func:`copy_bandwidth_gbs`), TFLOP/s for attention, and speedups against the eager baseline
and ``torch.compile`` of it, timed in the same process on the same inputs.

* :mod:`~fusedops.benchmarking.cases`: the op specs and their named sizes;
* :mod:`~fusedops.benchmarking.harness`: :class:`Case`, :class:`Workload`;
* :mod:`~fusedops.benchmarking.accuracy`: the check against the reference (:func:`compare`);
* :mod:`~fusedops.benchmarking.runner`: :func:`run_case`;
* :mod:`~fusedops.benchmarking.timing`: :func:`measure`, :func:`copy_bandwidth_gbs`;
* :mod:`~fusedops.benchmarking.report`: CSV and text tables.

Example::

    from fusedops.benchmarking import Case, cases, format_table, run_case
    print(format_table(run_case(Case(cases.EMBEDDING_LEARNED, torch.float32), "cpu")))
"""

from fusedops.benchmarking import cases, counts
from fusedops.benchmarking.accuracy import TOLERANCES, Accuracy, compare
from fusedops.benchmarking.harness import (
    COMPILE,
    DECODE,
    EAGER,
    FUSED,
    Case,
    Impl,
    Mismatch,
    Unavailable,
    Workload,
    case_impl_params,
    device_label,
    dtype_name,
)
from fusedops.benchmarking.report import (
    format_per_call_table,
    format_table,
    text_table,
    write_csv,
)
from fusedops.benchmarking.runner import Row, check_case, run_case, time_impls
from fusedops.benchmarking.timing import Timing, copy_bandwidth_gbs, gbs, measure

__all__ = [
    "COMPILE",
    "DECODE",
    "EAGER",
    "FUSED",
    "TOLERANCES",
    "Accuracy",
    "Case",
    "Impl",
    "Mismatch",
    "Row",
    "Timing",
    "Unavailable",
    "Workload",
    "case_impl_params",
    "cases",
    "check_case",
    "compare",
    "copy_bandwidth_gbs",
    "counts",
    "device_label",
    "dtype_name",
    "format_per_call_table",
    "format_table",
    "gbs",
    "measure",
    "run_case",
    "text_table",
    "time_impls",
    "write_csv",
]
