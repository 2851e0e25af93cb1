"""quantize_embedding and int8_embedding property tests: drawn tables (group sizes, scale dtypes,
zero rows, strided views), ids of any shape (0- and 1-sized dims), positions and output dtypes,
against the fp64 reference on the dequantized table and bit for bit against
``reference.int8_embedding``, on the extension's kernel (C++ on CPU, CUDA on a GPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    DTYPES,
    assert_close,
    backend_cases,
    check_property,
    lookup_arguments,
    lookup_calls,
    sinusoid_atol,
)
from hypothesis import given
from hypothesis import strategies as st

import fusedops
from fusedops import reference

# |q - w / scale| <= 1/2 up to the fp32 rounding of w / scale (|w / scale| <= 127.x).
HALF_STEP = 0.5 + 2.0**-16


@st.composite
def tables(draw) -> dict:
    """A float table ``[V, D]`` (possibly a view with longer rows) and how to quantize it."""
    groups = draw(st.integers(1, 4))
    group_size = draw(st.one_of(st.integers(1, 12), st.sampled_from([32, 64])))
    return {
        "vocab": draw(st.integers(1, 30)),
        "dim": groups * group_size,
        "group_size": None if groups == 1 and draw(st.booleans()) else group_size,
        "scale_dtype": draw(st.sampled_from(DTYPES)),
        "weight_dtype": draw(st.sampled_from([*DTYPES, torch.float64])),
        "magnitude": draw(st.sampled_from([1e-2, 1.0, 30.0])),
        "zero_rows": draw(st.lists(st.integers(0, 29), max_size=3)),
        "row_pad": draw(st.integers(0, 5)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _weight(case: dict) -> torch.Tensor:
    gen = torch.Generator().manual_seed(case["seed"])
    vocab, dim, pad = case["vocab"], case["dim"], case["row_pad"]
    base = torch.randn(vocab, dim + pad, generator=gen) * case["magnitude"]
    base[:, :: max(1, dim // 5)] *= 6.0  # outlier features set the absmax, as in trained tables
    base[[r for r in case["zero_rows"] if r < vocab]] = 0.0
    return base.to(case["weight_dtype"])[:, pad : pad + dim]  # [V, D], row stride D + pad


def _check_quantized(weight: torch.Tensor, qweight, scales, case: dict) -> None:
    vocab, dim = weight.shape
    groups = 1 if case["group_size"] is None else dim // case["group_size"]
    assert qweight.dtype == torch.int8 and qweight.shape == (vocab, dim) and qweight.is_contiguous()
    assert scales.dtype == case["scale_dtype"] and scales.shape == (vocab, groups)
    assert qweight.numel() == 0 or int(qweight.min()) >= -127
    step = scales.double().repeat_interleave(dim // groups, dim=-1)  # [V, D] stored scales
    err = (qweight.double() * step - weight.double()).abs()
    assert bool((err <= step * HALF_STEP).all()), f"max err / scale {float((err / step).max())}"
    absmax = weight.double().abs().view(vocab, groups, -1).amax(dim=-1)  # [V, G]
    assert torch.equal(scales == 0, absmax == 0), "zero groups (only) get scale 0"
    # Every nonzero group uses its full range: its absmax element quantizes to +-127.
    reach = qweight.view(vocab, groups, -1).abs().amax(dim=-1)  # [V, G]
    assert bool((reach[absmax > 0] == 127).all()) and bool((reach[absmax == 0] == 0).all())


@given(case=tables())
def test_quantize_embedding(case):
    weight = _weight(case)
    qweight, scales = fusedops.quantize_embedding(
        weight, group_size=case["group_size"], scale_dtype=case["scale_dtype"]
    )
    _check_quantized(weight, qweight, scales, case)


@st.composite
def lookups(draw) -> dict:
    """One int8_embedding call (:func:`helpers.lookup_calls`) on a quantized table that is a
    strided view of longer int8 rows."""
    table = draw(tables())
    case = {**table, **draw(lookup_calls(table["vocab"]))}
    case.update(
        weight_dtype=torch.float32,
        pos_dtype=draw(st.sampled_from(DTYPES)),
        out_dtype=draw(st.sampled_from(DTYPES)),
    )
    return case


def _lookup_inputs(case: dict, device: str):
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    dim, pad = case["dim"], case["row_pad"]
    qweight, scales = fusedops.quantize_embedding(
        _weight(case), group_size=case["group_size"], scale_dtype=case["scale_dtype"]
    )
    wide = torch.zeros(case["vocab"], dim + pad, dtype=torch.int8)
    wide[:, pad : pad + dim] = qweight
    qweight = wide.to(device)[:, pad : pad + dim]  # [V, D], row stride D + pad
    pos_weight = torch.randn(case["num_pos"], dim, generator=gen).to(case["pos_dtype"])
    ids, kwargs = lookup_arguments(case, pos_weight.to(device), device, gen)
    return ids, qweight, scales.to(device), {**kwargs, "out_dtype": case["out_dtype"]}


def _check_lookup(backend: str, device: str, case: dict) -> None:
    ids, qweight, scales, kwargs = _lookup_inputs(case, device)
    with fusedops.use_backend(backend):
        out = fusedops.int8_embedding(ids, qweight, scales, **kwargs)
    kwargs.pop("check_indices")
    out_dtype = case["out_dtype"]
    assert out.dtype == out_dtype and out.shape == (*ids.shape, case["dim"])
    assert out.device == qweight.device
    table = reference.dequantize_embedding(qweight, scales, torch.float64)  # [V, D] exact
    pw = kwargs.pop("pos_weight", None)
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "out_dtype"}
    want = reference.fused_embedding(
        ids, table, pos_weight=None if pw is None else pw.double(), **ref_kwargs
    )
    atol = sinusoid_atol(case["mode"], case["max_pos"])
    assert_close(out, want, dtype=out_dtype, atol_extra=atol)
    if case["mode"] != "sinusoid":  # same fp32 roundings: bit for bit
        same = reference.int8_embedding(ids, qweight, scales, pos_weight=pw, **kwargs)
        assert torch.equal(out, same), "not bit-identical to reference.int8_embedding"


@pytest.mark.parametrize("backend,device", backend_cases(reference=False, triton=False))
def test_int8_embedding_matches_reference(backend, device):
    check_property(lookups(), _check_lookup, backend, device)
