"""Attention benchmarks: fusedops vs SDPA vs the eager formula (and ``torch.compile`` of it).

``CASES`` is read by pytest-benchmark (``test_attention``); ``fusedops bench --ops attention``
sweeps the same spec classes. The specs, FLOP counts and checks are in
:mod:`fusedops.benchmarking.cases` (``AttentionSpec``: causal, bottom-right, GQA without copies;
on CPU fusedops' ``cpp`` path is SDPA with that mask) and
:mod:`fusedops.benchmarking.attention_cases` (``WindowSpec``: sliding-window prefill against SDPA
with the explicit window mask; ``VarlenSpec``: packed sequences against per-sequence SDPA).
TFLOP/s count ``4 * B * Hq * Sq * Sk * D / 2``, x3.5 for forward + backward; the window counts
only the scores inside it.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import DECODE, Case, cases
from fusedops.benchmarking.attention_cases import CAUSAL_8K, VARLEN, WINDOW_8K

CASES: list[Case] = [
    Case(cases.ATTENTION_CAUSAL, torch.float32),
    Case(cases.ATTENTION_CAUSAL_BACKWARD, torch.float32),
    Case(cases.ATTENTION_PREFILL, torch.bfloat16),
    Case(cases.ATTENTION_PREFILL_BACKWARD, torch.bfloat16),
    Case(cases.ATTENTION_DECODE, torch.bfloat16, tags=DECODE),
    Case(WINDOW_8K, torch.float32),
    Case(CAUSAL_8K, torch.float32),
    Case(VARLEN, torch.float32),
]


def test_attention(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
