"""The C++ lookup kernels' row code paths against the reference, bit for bit.

The CPU rows come in several implementations picked at run time (AVX-512 BF16, AVX2/F16C, the
portable loop, each with a scalar tail) and two store kinds (regular, and non-temporal for large
outputs already mapped in memory: ``use_streaming_stores`` in csrc/cpu_vec.h). These tests feed
them the values where implementations differ (fp32 subnormals, which the AVX-512 conversion
would flush, rounding ties, overflow, inf, NaN) at widths that cover the vector bodies and the
tails, and repeat large lookups so that both a fresh and a reused output buffer are written.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_close, sinusoid_atol

import fusedops
from fusedops import reference

SPECIALS = [0.0, -0.0, 1e-40, -3e-39, 2.0**-126, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8]
SPECIALS += [6.0e4, -7.0e4, 3.0e38, float("inf"), float("-inf"), float("nan")]


def _assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan)
    assert torch.equal(actual[~nan], expected[~nan])
    # Signed zeros too (equal() treats -0 == 0).
    assert torch.equal(torch.signbit(actual[~nan]), torch.signbit(expected[~nan]))


def _cpp(fn, *args, **kwargs):
    with fusedops.use_backend("cpp"):
        return fn(*args, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [117, 32, 7])  # AVX-512 + AVX2 + scalar tail; one step; tail only
@pytest.mark.parametrize("scale", [1.0, 0.75, -3.0])
def test_special_values(dtype, dim, scale):
    gen = torch.Generator().manual_seed(dim)
    weight = torch.randn(6, dim, generator=gen)
    specials = torch.tensor(SPECIALS)
    weight[1] = specials.repeat(dim // len(SPECIALS) + 1)[:dim]
    weight[2] = 2.0**-130 * torch.randn(dim, generator=gen)  # fp32 subnormals only
    weight = weight.to(dtype)
    pos_weight = torch.randn(4, dim, generator=gen).to(dtype)
    pos_weight[3] = -weight[2]  # w * 1 + p == -0 / tiny sums
    ids = torch.tensor([[1, 2, 0, 2], [5, 1, 2, 3]])  # [2, 4]
    for kwargs in ({}, {"pos_weight": pos_weight}):
        out = _cpp(fusedops.fused_embedding, ids, weight, scale=scale, **kwargs)
        _assert_same(out, reference.fused_embedding(ids, weight, scale=scale, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [768, 776])  # bf16 rows 64-byte aligned / not
def test_large_outputs_fresh_and_reused(dtype, dim):
    """>= 4 MB outputs, three calls: a fresh mapping, then (glibc) memory being reused."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(1000, dim, generator=gen).to(dtype)
    pos_weight = torch.randn(512, dim, generator=gen).to(dtype)
    ids = torch.randint(0, 1000, (8, 512), generator=gen)
    expected = reference.fused_embedding(ids, weight, scale=2.5, pos_weight=pos_weight)
    assert expected.numel() * expected.element_size() >= 4 << 20
    for _ in range(3):
        out = _cpp(fusedops.fused_embedding, ids, weight, scale=2.5, pos_weight=pos_weight)
        _assert_same(out, expected)
        del out


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_int8_large_outputs_fresh_and_reused(out_dtype):
    gen = torch.Generator().manual_seed(2)
    qweight, scales = fusedops.quantize_embedding(
        torch.randn(1000, 768, generator=gen), group_size=64
    )
    ids = torch.randint(0, 1000, (8, 512), generator=gen)
    kwargs = {"out_dtype": out_dtype, "scale": 1.5, "sinusoidal": True}
    expected = reference.int8_embedding(ids, qweight, scales, **kwargs)
    for _ in range(3):
        out = _cpp(fusedops.int8_embedding, ids, qweight, scales, **kwargs)
        assert_close(out, expected, atol_extra=sinusoid_atol("sinusoid", 512))
        del out
