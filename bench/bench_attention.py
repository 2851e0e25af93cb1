"""Attention benchmarks: fusedops vs SDPA vs the eager formula (and ``torch.compile`` of it).

``CASES`` is read by ``bench/run.py`` and by pytest-benchmark (``test_attention``). The specs,
FLOP counts and checks are in :mod:`fusedops.benchmarking.cases` (``AttentionSpec``): causal
(bottom-right), GQA without copies; on CPU fusedops' ``cpp`` path is SDPA with that mask.
TFLOP/s count ``4 * B * Hq * Sq * Sk * D / 2``, x3.5 for forward + backward.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import DECODE, Case, cases

CASES: list[Case] = [
    Case(cases.ATTENTION_CAUSAL, torch.float32),
    Case(cases.ATTENTION_CAUSAL_BACKWARD, torch.float32),
    Case(cases.ATTENTION_PREFILL, torch.bfloat16),
    Case(cases.ATTENTION_PREFILL_BACKWARD, torch.bfloat16),
    Case(cases.ATTENTION_DECODE, torch.bfloat16, tags=DECODE),
]


def test_attention(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
