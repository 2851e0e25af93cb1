"""Fused embedding benchmarks: fusedops vs the eager reference vs ``torch.compile`` of it.

``CASES`` is read by pytest-benchmark (``test_embedding``). The specs,
byte counts and checks are in :mod:`fusedops.benchmarking.cases` (``EmbeddingSpec``): eager is
``fusedops.reference.fused_embedding`` (gather, fp32 scale, positional add); ``learned-bwd``
times only the token-table gradient. On CUDA the fused call passes ``check_indices=False``.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import DECODE, Case, cases

CASES: list[Case] = [
    Case(cases.EMBEDDING_LEARNED, torch.float32),
    Case(cases.EMBEDDING_LEARNED, torch.bfloat16),
    Case(cases.EMBEDDING_PROMPT, torch.float32),
    Case(cases.EMBEDDING_DECODE, torch.float32, tags=DECODE),
    Case(cases.EMBEDDING_SINUSOID, torch.float32),
    Case(cases.EMBEDDING_NO_POS, torch.bfloat16),
    Case(cases.EMBEDDING_BACKWARD, torch.float32),
]


def test_embedding(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
