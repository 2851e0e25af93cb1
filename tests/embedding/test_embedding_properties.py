"""fused_embedding property tests: drawn shapes (0- and 1-sized dims), strided views, dtypes,
positions and padding rows, forward and backward against the fp64 reference, on the C++ kernel
and on Triton (the interpreter on CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    DTYPES,
    KERNEL_CASES,
    assert_close,
    check_property,
    lookup_arguments,
    lookup_calls,
    sinusoid_atol,
)
from hypothesis import strategies as st

import fusedops
from fusedops import reference


@st.composite
def lookups(draw) -> dict:
    """One fused_embedding call (:func:`helpers.lookup_calls`) on a ``[V, D]`` table and
    positional table sliced out of wider rows, forward and backward."""
    case = draw(lookup_calls(draw(st.integers(1, 30))))
    case.update(
        dim=draw(st.one_of(st.integers(1, 40), st.sampled_from([64, 127, 256]))),
        dtype=draw(st.sampled_from(DTYPES)),
        row_pad=draw(st.integers(0, 5)),  # weight / pos_weight rows longer than D
        deterministic=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    return case


def _strided(base: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """Columns ``[pad // 2, pad // 2 + dim)`` of ``base``: row stride ``dim + pad``, stride 1."""
    return base[:, pad // 2 : pad // 2 + dim]


def _inputs(case: dict, device: str):
    gen = torch.Generator().manual_seed(case["seed"])
    dim, dtype, pad = case["dim"], case["dtype"], case["row_pad"]
    weight = torch.randn(case["vocab"], dim + pad, generator=gen).to(dtype).to(device)
    pos_weight = torch.randn(case["num_pos"], dim + pad, generator=gen).to(dtype).to(device)
    ids, kwargs = lookup_arguments(case, _strided(pos_weight, dim, pad), device, gen)
    upstream = torch.randn(*ids.shape, dim, generator=gen).to(dtype).to(device)
    return ids, _strided(weight, dim, pad), kwargs, upstream


def _check(backend: str, device: str, case: dict) -> None:
    ids, weight, kwargs, upstream = _inputs(case, device)
    dtype, padding_idx = case["dtype"], kwargs["padding_idx"]
    learned = kwargs.pop("pos_weight", None)
    check_indices = kwargs.pop("check_indices")
    leaves = [t.detach().clone().requires_grad_() for t in (weight, learned) if t is not None]
    with fusedops.use_backend(backend):
        out = fusedops.fused_embedding(
            ids,
            leaves[0],
            pos_weight=leaves[1] if learned is not None else None,
            deterministic=case["deterministic"],
            check_indices=check_indices,
            **kwargs,
        )
    grads = torch.autograd.grad(out, leaves, upstream)

    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    pos64 = leaves64[1] if learned is not None else None
    want = reference.fused_embedding(ids, leaves64[0], pos_weight=pos64, **kwargs)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert_close(out, want, dtype=dtype, atol_extra=sinusoid_atol(case["mode"], case["max_pos"]))
    want_grads = torch.autograd.grad(want, leaves64, upstream.double())
    # The kernels sum duplicate rows in fp32: error ~ sqrt(number of terms) ulps.
    rtol_scale = max(1.0, math.sqrt(ids.numel()))
    for got, ref, name in zip(grads, want_grads, ("weight", "pos_weight"), strict=False):
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert_close(got, ref, dtype=dtype, rtol_scale=rtol_scale, msg=f"grad {name}")
    if padding_idx is not None:
        assert torch.all(grads[0][padding_idx] == 0), "padding row got a gradient"


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_matches_reference(backend, device):
    check_property(lookups(), _check, backend, device)
