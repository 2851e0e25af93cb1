"""fusedops.baselines (what the demo and bench time against) compute what the spec computes."""

from __future__ import annotations

import pytest
import torch

import fusedops
from fusedops import baselines, reference


def test_hf_apply_rotary_matches_reference():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 7, 16, generator=gen, dtype=torch.float64)
    angle = torch.randn(1, 7, 8, generator=gen, dtype=torch.float64)
    cos, sin = torch.cat((angle.cos(),) * 2, -1), torch.cat((angle.sin(),) * 2, -1)
    got = baselines.hf_apply_rotary(q, k, cos, sin)
    want = reference.apply_rotary(q, k, cos, sin)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("attention", [baselines.eager_attention, baselines.sdpa_attention])
@pytest.mark.parametrize("seq_q", [5, 9])  # Sq < Sk (bottom-right causal) and Sq == Sk
def test_attention_baselines_match_reference(attention, seq_q):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, seq_q, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 9, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 9, 16, generator=gen, dtype=torch.float64)
    got = attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(got.double(), reference.attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_composed_int8_lookup_matches_reference():
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    for group_size in (None, 4):
        weight = torch.randn(11, 8, generator=gen)
        qweight, scales = fusedops.quantize_embedding(weight, group_size=group_size)
        got = baselines.composed_int8_lookup(ids, qweight, scales, torch.float32)
        torch.testing.assert_close(got, reference.int8_embedding(ids, qweight, scales))
