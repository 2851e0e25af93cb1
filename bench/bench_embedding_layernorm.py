"""BERT embedding + LayerNorm benchmarks: fusedops vs the eager composition vs ``torch.compile``.

``CASES`` is read by pytest-benchmark (``test_embedding_layernorm``).
The specs are in :mod:`fusedops.benchmarking.cases` (``EmbeddingLayerNormSpec``): eager is
``fusedops.reference.fused_embedding_layernorm`` (what Hugging Face's ``BertEmbeddings`` runs:
three gathers, two adds, ``F.layer_norm``). On CUDA the fused call passes
``check_indices=False``.
"""

from __future__ import annotations

import torch

from fusedops.benchmarking import Case, cases

CASES: list[Case] = [
    Case(cases.EMBEDDING_LN_MINILM, torch.float32),
    Case(cases.EMBEDDING_LN_MINILM, torch.bfloat16),
    Case(cases.EMBEDDING_LN_BERT, torch.float32),
    Case(cases.EMBEDDING_LN_BERT, torch.bfloat16),
]


def test_embedding_layernorm(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
