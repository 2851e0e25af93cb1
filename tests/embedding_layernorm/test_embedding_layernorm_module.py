"""FusedEmbeddingLayerNorm: against the Hugging Face composition (3 x nn.Embedding + LayerNorm)."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_cases
from torch import nn

import fusedops
from fusedops.nn import FusedEmbeddingLayerNorm


class HFLikeEmbeddings(nn.Module):
    """BertEmbeddings without dropout: word + token type + absolute position, then LayerNorm."""

    def __init__(self, vocab: int, dim: int, positions: int, types: int, pad: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim, padding_idx=pad)
        self.position_embeddings = nn.Embedding(positions, dim)
        self.token_type_embeddings = nn.Embedding(types, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, input_ids, token_type_ids=None):
        seq = input_ids.shape[-1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(torch.arange(seq, device=input_ids.device))
        return self.LayerNorm(x)


def _hf(seed=0):
    torch.manual_seed(seed)
    hf = HFLikeEmbeddings(50, 40, 16, 2, pad=0)
    with torch.no_grad():  # non-trivial LayerNorm parameters
        hf.LayerNorm.weight.normal_(1.0, 0.3)
        hf.LayerNorm.bias.normal_()
    return hf


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("with_types", [True, False])
def test_from_modules_matches_hf_composition(backend, device, with_types):
    hf = _hf().to(device)
    fused = FusedEmbeddingLayerNorm.from_modules(
        hf.word_embeddings, hf.position_embeddings, hf.token_type_embeddings, hf.LayerNorm
    )
    assert fused.weight is hf.word_embeddings.weight  # shared, not copied
    assert fused.ln_bias is hf.LayerNorm.bias and fused.padding_idx == 0
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 11), generator=gen).to(device)
    ids[:, -2:] = 0  # padding tokens
    tt = torch.randint(0, 2, (3, 11), generator=gen).to(device) if with_types else None
    want = hf(ids, tt)
    with fusedops.use_backend(backend):
        out = fused(ids, tt)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-5)
    upstream = torch.randn(3, 11, 40, generator=gen).to(device)
    params = list(hf.parameters())
    want_grads = torch.autograd.grad(want, params, upstream)
    with fusedops.use_backend(backend):
        grads = torch.autograd.grad(fused(ids, tt), params, upstream)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)


def test_constructor_and_repr():
    m = FusedEmbeddingLayerNorm(30, 8, 12, None, eps=1e-5, padding_idx=-1)
    assert m.type_weight is None and m.pos_weight.shape == (12, 8)
    assert torch.equal(m.weight[29], torch.zeros(8)) and torch.equal(m.ln_weight, torch.ones(8))
    assert "num_positions=12" in repr(m) and "padding_idx=29" in repr(m)
    no_affine = FusedEmbeddingLayerNorm(30, 8, elementwise_affine=False)
    assert no_affine.ln_weight is None and no_affine.ln_bias is None
    out = no_affine(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 8)
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 3), atol=1e-6, rtol=0)


def test_from_modules_rejects_bad_modules():
    hf = _hf()
    with pytest.raises(TypeError, match=r"word must be nn\.Embedding"):
        FusedEmbeddingLayerNorm.from_modules(nn.Linear(2, 2), None, None, hf.LayerNorm)
    with pytest.raises(ValueError, match="position has dim 7"):
        FusedEmbeddingLayerNorm.from_modules(
            hf.word_embeddings, nn.Embedding(4, 7), None, hf.LayerNorm
        )
    with pytest.raises(ValueError, match="layer_norm normalizes"):
        FusedEmbeddingLayerNorm.from_modules(hf.word_embeddings, None, None, nn.LayerNorm(3))
    sparse = nn.Embedding(50, 40, sparse=True)
    with pytest.raises(ValueError, match="unsupported options"):
        FusedEmbeddingLayerNorm.from_modules(sparse, None, None, hf.LayerNorm)
