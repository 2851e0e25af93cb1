"""KV-cache decode benchmarks: ``fusedops.attention_with_kvcache`` vs SDPA with an explicit key
mask vs the eager formula (and flash-attention's ``flash_attn_with_kvcache`` where installed).

``CASES`` is read by pytest-benchmark (``test_attention_decode``); ``fusedops bench --ops
decode`` sweeps the same spec (:class:`fusedops.benchmarking.attention_cases.DecodeSpec`: one
decode step over a full cache, dense or paged with block size 256, split-K heuristic or off).
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import DECODE, Case
from fusedops.benchmarking.attention_cases import DECODE_GRID

CASES: list[Case] = [Case(spec, torch.bfloat16, tags=DECODE) for spec in DECODE_GRID]


def test_attention_decode(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
