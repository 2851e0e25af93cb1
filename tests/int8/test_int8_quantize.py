"""quantize_embedding: the int8 format's accuracy bound, group sizes, zeros and scale dtypes."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES

import fusedops
from fusedops import reference

# |q - w / scale| <= 1/2 up to the fp32 rounding of w / scale (|w / scale| <= 127.x).
HALF_STEP = 0.5 + 2.0**-16


def _table(vocab, dim, *, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, dim, generator=gen)
    # A few outlier features, as in trained tables: they set the row's absmax.
    weight[:, :: max(1, dim // 7)] *= 6.0
    return weight.to(dtype)


def _per_feature_scales(scales, dim):
    return scales.double().repeat_interleave(dim // scales.shape[1], dim=-1)  # [V, D]


@pytest.mark.parametrize("scale_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_error_at_most_half_a_step(scale_dtype, group_size, weight_dtype):
    weight = _table(37, 256, dtype=weight_dtype)
    qweight, scales = fusedops.quantize_embedding(
        weight, group_size=group_size, scale_dtype=scale_dtype
    )
    groups = 1 if group_size is None else 256 // group_size
    assert qweight.dtype == torch.int8 and qweight.shape == (37, 256) and qweight.is_contiguous()
    assert scales.dtype == scale_dtype and scales.shape == (37, groups) and scales.is_contiguous()
    assert int(qweight.min()) >= -127
    step = _per_feature_scales(scales, 256)  # [V, D] the stored scale of each element
    exact = qweight.double() * step  # fp64: the dequantized value without rounding
    err = (exact - weight.double()).abs()
    assert bool((err <= step * HALF_STEP).all()), f"max err / scale {float((err / step).max())}"
    # The fp32 dequantization the kernels compute adds one rounding of the result.
    dequant = reference.dequantize_embedding(qweight, scales)
    assert dequant.dtype == torch.float32
    assert bool(((dequant.double() - weight.double()).abs() <= step * (HALF_STEP + 2**-16)).all())
    # Every group uses its full range: its absmax element quantizes to +-127.
    per_group = qweight.view(37, groups, -1).abs().amax(dim=-1)
    assert bool((per_group == 127).all())


def test_smaller_groups_are_tighter():
    weight = _table(64, 512, seed=1)
    errors = []
    for group_size in (None, 128, 64, 32):
        qweight, scales = fusedops.quantize_embedding(weight, group_size=group_size)
        errors.append(
            float((reference.dequantize_embedding(qweight, scales) - weight).abs().mean())
        )
    assert errors == sorted(errors, reverse=True), errors  # per-row > 128 > 64 > 32
    assert errors[-1] < 0.8 * errors[0], errors


def test_scale_is_absmax_over_127_and_rounding_is_half_even():
    # absmax 127 gives scale 1 exactly, so w / scale are the values themselves.
    weight = torch.tensor([[127.0, 2.5, 1.5, 0.5, -2.5, -0.5, 3.5, -126.5]])
    qweight, scales = fusedops.quantize_embedding(weight)
    assert scales.item() == 1.0
    assert qweight.tolist() == [[127, 2, 2, 0, -2, 0, 4, -126]]
    weight = torch.tensor([[0.1, -3.0, 0.7, 2.0]])
    _, scales = fusedops.quantize_embedding(weight)
    assert scales.item() == torch.tensor(3.0 / 127, dtype=torch.float32).item()


@pytest.mark.parametrize("scale_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", [None, 4])
def test_zero_rows_and_groups_dequantize_to_exact_zeros(scale_dtype, group_size):
    weight = _table(6, 16, seed=2)
    weight[1] = 0.0  # an all-zero row
    weight[3, 4:8] = 0.0  # an all-zero group (when group_size == 4)
    weight[4] = -0.0
    qweight, scales = fusedops.quantize_embedding(
        weight, group_size=group_size, scale_dtype=scale_dtype
    )
    assert bool((scales[1] == 0).all()) and bool((qweight[1] == 0).all())
    assert bool((scales[4] == 0).all()) and bool((qweight[4] == 0).all())
    if group_size == 4:
        assert scales[3, 1].item() == 0 and bool((qweight[3, 4:8] == 0).all())
    dequant = reference.dequantize_embedding(qweight, scales)
    assert not bool(torch.isnan(dequant).any())
    assert bool((dequant[1] == 0).all()) and bool((dequant[4] == 0).all())
    with fusedops.use_backend("reference"):
        out = fusedops.int8_embedding(torch.tensor([[1, 4]]), qweight, scales)
    assert bool((out == 0).all())


def test_tiny_rows_never_nan():
    # absmax / 127 underflows to 0 in fp16 for a 1e-12 row: that row must become zeros, not NaN.
    weight = torch.full((2, 8), 1e-12)
    weight[1] = 1e-30  # an fp32 subnormal scale
    for scale_dtype in DTYPES:
        qweight, scales = fusedops.quantize_embedding(weight, scale_dtype=scale_dtype)
        dequant = reference.dequantize_embedding(qweight, scales)
        assert not bool(torch.isnan(dequant).any()), scale_dtype
        assert bool((dequant.abs() <= weight.abs() * 1.01).all()), scale_dtype


def test_quantization_is_deterministic_and_device_local():
    weight = _table(9, 24, seed=3)
    a = fusedops.quantize_embedding(weight, group_size=8)
    b = fusedops.quantize_embedding(weight.clone(), group_size=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert fusedops.quantize_embedding is reference.quantize_embedding


@pytest.mark.parametrize(
    "weight,kwargs,exc,pattern",
    [
        (torch.randn(4, 10), {"group_size": 4}, ValueError, "group_size 4 does not divide.*D=10"),
        (torch.randn(4, 10), {"group_size": 0}, ValueError, "group_size must be a positive"),
        (torch.randn(4, 8), {"group_size": 4.0}, TypeError, "group_size must be an int or None"),
        (torch.randn(4, 8), {"group_size": True}, TypeError, "group_size must be an int or None"),
        (torch.randn(4, 10), {"scale_dtype": torch.float64}, TypeError, "scale_dtype"),
        (torch.randn(10), {}, ValueError, r"weight must be \[V, D\]"),
        (torch.randint(0, 3, (4, 4)), {}, TypeError, "weight must be a float tensor"),
        (torch.tensor([[1.0, float("nan")]]), {}, ValueError, "weight contains NaN or infinite"),
        (torch.tensor([[1e8, 1.0]]), {"scale_dtype": torch.float16}, ValueError, ".*overflows"),
    ],
)
def test_bad_input(weight, kwargs, exc, pattern):
    with pytest.raises(exc, match=f"quantize_embedding: {pattern}"):
        fusedops.quantize_embedding(weight, **kwargs)


def _tiny_rows(scale_dtype: torch.dtype) -> torch.Tensor:
    """fp32 rows ``[R, 8]`` whose exact scale ``absmax / 127`` lies around and below the
    smallest subnormal of ``scale_dtype`` (a few steps of it, fractions of one, and the
    issue's row ``[1e-5, -3e-6, 2e-6, 0]`` padded with zeros)."""
    tiny = torch.finfo(scale_dtype).tiny * torch.finfo(scale_dtype).eps  # smallest subnormal
    pattern = torch.tensor([1.0, -0.3, 0.2, 0.0, 0.77, -0.55, 0.013, 0.49], dtype=torch.float64)
    steps = [0.3, 0.6, 1.4, 2.45, 8.4, 37.3, 100.4, 700.3]
    rows = [127 * tiny * t * pattern for t in steps]
    rows.append(torch.tensor([1e-5, -3e-6, 2e-6, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    rows.append(torch.tensor([1e-6, 5e-7, -2e-7, 0.0, 1e-7, 0.0, 0.0, 0.0], dtype=torch.float64))
    return torch.stack(rows).to(torch.float32)  # fp32 subnormals where needed


@pytest.mark.parametrize("scale_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", [None, 4])
def test_tiny_magnitudes_keep_the_half_step_bound(scale_dtype, group_size):
    """A row whose scale is subnormal (or underflows) in scale_dtype still dequantizes within
    half a step of the *stored* scale: the stored scale is never so far below absmax / 127 that
    the clamp to +-127 breaks the bound."""
    weight = _tiny_rows(scale_dtype)
    qweight, scales = fusedops.quantize_embedding(
        weight, group_size=group_size, scale_dtype=scale_dtype
    )
    step = _per_feature_scales(scales, weight.shape[1])  # [R, 8] stored scales, fp64
    err = (qweight.double() * step - weight.double()).abs()
    ratio = float((err / step.clamp_min(1e-300)).max())
    assert bool((err <= step * HALF_STEP).all()), f"max err / stored scale {ratio:.3g}"
    # The rule: absmax <= 127.5 * stored scale (exact in fp64), a nonzero scale for a nonzero
    # group.
    groups = weight.double().reshape(weight.shape[0], scales.shape[1], -1)
    absmax = groups.abs().amax(dim=-1)  # [R, G]
    assert bool((2 * absmax <= 255 * scales.double()).all())
    assert bool(((absmax > 0) == (scales.double() > 0)).all())
    assert bool((qweight.abs() <= 127).all())


@pytest.mark.parametrize("scale_dtype", DTYPES, ids=str)
def test_normal_scales_stay_round_to_nearest(scale_dtype):
    """Only scales the bound needs are moved: a table in the normal range keeps
    ``fp32(absmax / 127)`` rounded to nearest in scale_dtype."""
    weight = _table(20, 32, seed=4)
    _, scales = fusedops.quantize_embedding(weight, group_size=8, scale_dtype=scale_dtype)
    absmax = weight.reshape(20, 4, 8).abs().amax(dim=-1)
    assert torch.equal(scales, (absmax / 127).to(scale_dtype))


@pytest.mark.parametrize("group_size", [None, 4])
def test_empty_feature_dim(group_size):
    """A [V, 0] table quantizes to int8 [V, 0] and zero scales [V, G] (G = 1 per row, else
    0 // group_size = 0), and the lookup of it gives [..., S, 0]."""
    qweight, scales = fusedops.quantize_embedding(torch.empty(5, 0), group_size=group_size)
    groups = 1 if group_size is None else 0
    assert qweight.dtype == torch.int8 and qweight.shape == (5, 0)
    assert scales.dtype == torch.float32 and scales.shape == (5, groups)
    assert bool((scales == 0).all())
    assert reference.dequantize_embedding(qweight, scales).shape == (5, 0)
    ids = torch.tensor([[0, 4, 2]])
    for backend in ("auto", "reference"):
        for pos_weight in (None, torch.empty(4, 0)):
            with fusedops.use_backend(backend):
                out = fusedops.int8_embedding(ids, qweight, scales, pos_weight=pos_weight)
            assert out.shape == (1, 3, 0) and out.dtype == torch.float32, backend
