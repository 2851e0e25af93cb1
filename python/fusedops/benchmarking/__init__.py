"""Benchmark harness shared by ``fusedops bench``, the pytest-benchmark suites in ``bench/`` and
the demo.

Benchmarks report ratios, not only times: achieved GB/s of the minimum bytes
(:mod:`~fusedops.benchmarking.counts`) or TFLOP/s, as a fraction of the device's ceilings
measured in the same run (:mod:`~fusedops.benchmarking.ceilings`), and speedups against the
peers (:mod:`~fusedops.benchmarking.peers`), each checked against the reference before it is
timed.

* :mod:`~fusedops.benchmarking.cases`, :mod:`~fusedops.benchmarking.attention_cases`,
  :mod:`~fusedops.benchmarking.models`: the op specs and their named sizes;
* :mod:`~fusedops.benchmarking.sweeps`: what ``fusedops bench`` sweeps, per op and tier;
* :mod:`~fusedops.benchmarking.harness`: :class:`Case`, :class:`Workload`, :class:`Impl`;
* :mod:`~fusedops.benchmarking.accuracy`: the check against the reference (:func:`compare`);
* :mod:`~fusedops.benchmarking.runner`: :func:`run_case` (check, time, one record per impl);
* :mod:`~fusedops.benchmarking.timing`: :func:`measure`, :func:`copy_bandwidth_gbs`;
* :mod:`~fusedops.benchmarking.results`: :class:`Record`, ``results.json`` / ``results.csv``;
* :mod:`~fusedops.benchmarking.report`, :mod:`~fusedops.benchmarking.markdown`,
  :mod:`~fusedops.benchmarking.plots`, :mod:`~fusedops.benchmarking.comparison`: text tables,
  ``report.md``, PNG plots, the comparison of two runs;
* :mod:`~fusedops.benchmarking.command`: the ``fusedops bench`` command line.

Example::

    from fusedops.benchmarking import Case, cases, format_table, measure_ceilings, run_case
    ceilings = measure_ceilings("cpu", [torch.float32])
    case = Case(cases.EMBEDDING_LEARNED, torch.float32)
    print(format_table(run_case(case, "cpu", ceilings=ceilings)))
"""

from fusedops.benchmarking import cases, counts
from fusedops.benchmarking.accuracy import TOLERANCES, Accuracy, compare
from fusedops.benchmarking.ceilings import Ceilings, matmul_tflops, measure_ceilings
from fusedops.benchmarking.harness import (
    COMPILE,
    DECODE,
    EAGER,
    FUSED,
    Case,
    Impl,
    Mismatch,
    Skipped,
    Unavailable,
    Workload,
    case_impl_params,
    device_label,
    dtype_name,
)
from fusedops.benchmarking.report import format_table, text_table
from fusedops.benchmarking.results import Record, read_json, write_csv, write_json
from fusedops.benchmarking.runner import TimingPlan, check_case, run_case
from fusedops.benchmarking.timing import Timing, copy_bandwidth_gbs, gbs, measure

__all__ = [
    "COMPILE",
    "DECODE",
    "EAGER",
    "FUSED",
    "TOLERANCES",
    "Accuracy",
    "Case",
    "Ceilings",
    "Impl",
    "Mismatch",
    "Record",
    "Skipped",
    "Timing",
    "TimingPlan",
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
    "format_table",
    "gbs",
    "matmul_tflops",
    "measure",
    "measure_ceilings",
    "read_json",
    "run_case",
    "text_table",
    "write_csv",
    "write_json",
]
