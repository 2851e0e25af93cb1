"""RoPE benchmarks: fusedops vs the Hugging Face eager formula vs ``torch.compile`` of it.

``CASES`` is read by pytest-benchmark (``test_rope``). The specs, byte
counts and checks are in :mod:`fusedops.benchmarking.cases` (``RopeSpec``): q and k of a
Llama-style layer (GQA 32/8) with the ``[1, S, D]`` cos/sin it receives; eager is
``q * cos + rotate_half(q) * sin`` (and k).
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import DECODE, Case, cases

CASES: list[Case] = [
    Case(cases.ROPE_PREFILL, torch.float32),
    Case(cases.ROPE_PREFILL, torch.bfloat16),
    Case(cases.ROPE_DECODE, torch.float32, tags=DECODE),
    Case(cases.ROPE_DECODE, torch.bfloat16, tags=DECODE),
]


def test_rope(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
