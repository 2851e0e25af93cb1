"""Factorized embedding benchmarks: the fused low-rank lookup vs eager, compile and the dense
table.

``CASES`` is read by pytest-benchmark (``test_factorized_embedding``). The spec, byte counts
and checks are in :mod:`fusedops.benchmarking.factorized_cases` (``FactorizedSpec``): eager is
``F.embedding(ids, a) @ b * scale + pos`` (with the hot rows swapped in), ``compile`` is
``torch.compile`` of it, ``dense`` is ``fused_embedding`` of the ``[V, D]`` table the factors
stand for. GPT-2's V=50257 and D=768, 4 x 1024 tokens.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import Case
from fusedops.benchmarking.factorized_cases import FactorizedSpec

CASES: list[Case] = [
    *(
        Case(FactorizedSpec("gpt2", 4, 1024, 768, 50257, rank), torch.float32)
        for rank in (64, 128, 256)
    ),
    Case(FactorizedSpec("gpt2-hot", 4, 1024, 768, 50257, 128, hot=1024), torch.float32),
    Case(FactorizedSpec("gpt2", 4, 1024, 768, 50257, 128), torch.bfloat16),
    Case(FactorizedSpec("gpt2-bwd", 4, 1024, 768, 50257, 128, backward=True), torch.float32),
]


def test_factorized_embedding(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
