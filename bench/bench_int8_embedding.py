"""INT8 embedding benchmarks: the fused dequantizing lookup vs float and composed baselines.

``CASES`` is read by pytest-benchmark (``test_int8_embedding``). The
specs, byte counts and checks are in :mod:`fusedops.benchmarking.cases` (``Int8Spec``): eager
is the bitsandbytes-style composition ``F.embedding(ids, q).float() * F.embedding(ids, scales)``,
``compile`` is ``torch.compile`` of it, ``F.embedding`` gathers the unquantized table in the
output dtype.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import DECODE, Case, cases

CASES: list[Case] = [
    Case(cases.INT8_PER_ROW, torch.float32),
    Case(cases.INT8_PER_ROW, torch.bfloat16),
    Case(cases.INT8_GROUP128, torch.float32),
    Case(cases.INT8_DECODE, torch.float32, tags=DECODE),
]


def test_int8_embedding(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
