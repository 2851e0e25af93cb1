"""The attention backward Triton launcher called directly (interpreter on CPU, native on CUDA).

The expected grads are float64 autograd through the spec, ``reference.attention`` (GQA by
``repeat_interleave``, explicit bottom-right causal + key-padding boolean mask, fully masked
rows -> zeros); ``out`` and ``lse`` given to the kernel come from that same fp64 forward, so the
test does not depend on the forward kernel. Error bound (flash-attention's,
``helpers.assert_attention_bound``): the kernel's max error against fp64 is at most 2x that of
the same autograd run in PyTorch in the input dtype, plus a small floor. Grads are NaN-poisoned
before the launch so unwritten elements fail. Shapes are small and odd: the interpreter pays per
program and per loop step.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, TRITON_DEVICE, assert_attention_bound

from fusedops import reference
from fusedops.kernels import attention_backward as kb
from fusedops.kernels.attention_backward import attention_backward, backward_tile


def _grads(q, k, v, dout, *, causal, scale, key_padding_mask, **variant):
    """(out, lse, (dq, dk, dv)) of the spec with its math in the inputs' dtype (``variant``:
    sliding_window, softcap)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = reference.attention(
        *leaves, causal=causal, softmax_scale=scale, key_padding_mask=key_padding_mask,
        return_lse=True, compute_dtype=q.dtype, **variant,
    )  # fmt: skip
    grads = torch.autograd.grad(out, leaves, dout)
    return out.detach(), lse.detach(), grads


def _inputs(batch, hq, hkv, seq_q, seq_k, dim, seed, layout="bhsd"):
    g = torch.Generator().manual_seed(seed)

    def make(h, s):
        if layout == "bshd":  # a [B, S, H, D] buffer viewed as [B, H, S, D]
            return torch.randn(batch, s, h, dim, generator=g, dtype=torch.float64).transpose(1, 2)
        return torch.randn(batch, h, s, dim, generator=g, dtype=torch.float64)

    return make(hq, seq_q), make(hkv, seq_k), make(hkv, seq_k), make(hq, seq_q)


def _poisoned_like(t, dtype):
    return torch.full(t.shape, float("nan"), dtype=dtype, device=TRITON_DEVICE)


def _launch(
    q, k, v, out, lse, dout, dtype, *, causal, scale, key_padding_mask, layout="bhsd", **variant
):
    def dev(t):
        t = t.to(TRITON_DEVICE, dtype)
        if layout == "bshd":
            t = t.transpose(1, 2).contiguous().transpose(1, 2)
        return t

    dq = _poisoned_like(q, dtype)
    dk = _poisoned_like(k, dtype)
    dv = _poisoned_like(v, dtype)
    mask = None if key_padding_mask is None else key_padding_mask.to(TRITON_DEVICE)
    attention_backward(
        dev(q),
        dev(k),
        dev(v),
        dev(out),
        lse.to(TRITON_DEVICE, torch.float32),
        dev(dout),
        dq,
        dk,
        dv,
        causal=causal,
        softmax_scale=scale,
        key_padding_mask=mask,
        **variant,
    )
    return dq, dk, dv


def _check(batch, hq, hkv, seq_q, seq_k, dim, dtype, *, causal, mask_kind=None, seed=0, **kw):
    q, k, v, dout = _inputs(batch, hq, hkv, seq_q, seq_k, dim, seed, kw.get("layout", "bhsd"))
    scale = kw.pop("scale", 1.0 / math.sqrt(dim))
    mask = None
    if mask_kind is not None:
        g = torch.Generator().manual_seed(seed + 1)
        mask = torch.rand(batch, seq_k, generator=g) > 0.3
        if mask_kind == "one_empty":
            mask[0] = False  # every row of batch 0 is fully masked
        mask[-1, -1] = True  # at least one key somewhere
    args = dict(causal=causal, scale=scale, key_padding_mask=mask)
    args |= {name: kw.pop(name) for name in ("sliding_window", "softcap") if name in kw}
    out, lse, expected = _grads(q, k, v, dout, **args)
    got = _launch(q, k, v, out, lse, dout, dtype, **args, **kw)
    # The same computation in PyTorch in the input dtype.
    _, _, torch_grads = _grads(q.to(dtype), k.to(dtype), v.to(dtype), dout.to(dtype), **args)
    for name, g_k, g_t, g_e in zip(("dq", "dk", "dv"), got, torch_grads, expected, strict=True):
        assert_attention_bound(name, g_k, g_t, g_e, dtype)
    return got, mask


# (B, Hq, Hkv, Sq, Sk, D): GQA 8/2 and 9/3, MQA, decode (Sq = 1), Sq > Sk and Sq < Sk
# (bottom-right causal), tails, D not a power of two (40, 80), D = 16, 128 and 256.
SHAPES = [
    (1, 2, 1, 17, 17, 16),
    (2, 8, 2, 19, 33, 64),
    (1, 9, 3, 40, 17, 80),
    (1, 3, 1, 1, 37, 40),
    (2, 2, 2, 33, 5, 128),
    (1, 2, 1, 9, 12, 256),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_matches_fp64_autograd(shape, causal, dtype):
    _check(*shape, dtype, causal=causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mask_kind", ["random", "one_empty"])
def test_padding_mask_and_fully_masked_rows(mask_kind, causal, dtype):
    (dq, dk, dv), mask = _check(2, 6, 2, 21, 26, 48, dtype, causal=causal, mask_kind=mask_kind)
    # Padded keys get no gradient; an all-padded batch gets none at all.
    dead = ~mask.to(dk.device)
    assert (dk.permute(0, 2, 1, 3)[dead] == 0).all() and (dv.permute(0, 2, 1, 3)[dead] == 0).all()
    if mask_kind == "one_empty":
        assert (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()


def test_causal_rows_before_the_first_key_get_zero_dq():
    # Sq > Sk, causal: query i < Sq - Sk sees no key (lse = -inf) -> dq = 0, never NaN.
    (dq, _, _), _ = _check(1, 4, 2, 23, 7, 32, torch.float32, causal=True)
    assert (dq[:, :, : 23 - 7] == 0).all()


def test_strided_bshd_views_and_custom_scale():
    _check(2, 4, 2, 18, 22, 64, torch.float16, causal=True, layout="bshd", scale=0.3)


def test_deterministic():
    first, _ = _check(1, 6, 2, 35, 35, 32, torch.float32, causal=True, seed=3)
    second, _ = _check(1, 6, 2, 35, 35, 32, torch.float32, causal=True, seed=3)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernel", ["dkdv", "dq"])
@pytest.mark.parametrize("dim", [16, 40, 64, 80, 128, 256])
def test_tiles_fit_the_tensor_cores(dim, kernel):
    for fp32 in (False, True):
        for aligned in (False, True):
            block_m, block_n, warps, stages = backward_tile(dim, kernel, fp32, aligned=aligned)
            assert block_m >= 16 and block_n >= 16 and warps in (4, 8) and stages >= 1


# Sliding window and softcap: (shape, window, softcap, dtype). Windows of 1 key, inside a tile,
# across tiles (query/key blocks outside the band skipped in both kernels), larger than Sk;
# softcap (tanh derivative) in each dtype, with and without a window; GQA; D = 80.
WINDOW_CASES = [
    ((1, 2, 1, 37, 53, 16), 5, None, torch.float32),
    ((1, 4, 2, 40, 40, 80), 1, 2.0, torch.bfloat16),
    ((1, 3, 1, 70, 33, 64), 100, 5.0, torch.float16),
    ((1, 2, 2, 33, 150, 32), 17, None, torch.float16),
    ((1, 2, 1, 100, 100, 32), 40, 1.5, torch.float32),
]


@pytest.mark.parametrize("shape,window,softcap,dtype", WINDOW_CASES, ids=lambda c: str(c))
def test_window_and_softcap_grads(shape, window, softcap, dtype):
    _check(*shape, dtype, causal=True, sliding_window=window, softcap=softcap, seed=shape[3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_softcap_grads_without_causal(dtype):
    _check(1, 2, 1, 21, 30, 64, dtype, causal=False, softcap=1.0, scale=0.5)


# dk/dv with the GQA group's query heads split over programs (the grid of a small MQA/GQA
# backward would leave SMs idle): fp32 partials per split, added in split order.
# (shape, kwargs, dtype, SM count, splits): MQA causal with 2 heads per split and with 1, GQA
# with a window, MQA softcap not causal with 2 and with 1 heads per split.
SPLIT_CASES = [
    ((1, 4, 1, 37, 45, 64), dict(causal=True), torch.float16, 2, 2),
    ((1, 4, 1, 37, 45, 64), dict(causal=True), torch.float16, 10**6, 4),
    ((2, 6, 2, 33, 20, 80), dict(causal=True, sliding_window=7), torch.bfloat16, 10**6, 3),
    ((1, 6, 1, 19, 70, 32), dict(causal=False, softcap=2.0), torch.float32, 5, 3),
    ((1, 6, 1, 19, 70, 32), dict(causal=False, softcap=2.0), torch.float32, 10**6, 6),
]


@pytest.mark.parametrize("shape,kwargs,dtype,sm_count,splits", SPLIT_CASES, ids=str)
def test_split_query_heads_match_fp64_autograd(monkeypatch, shape, kwargs, dtype, sm_count, splits):
    monkeypatch.setattr(kb, "device_sm_count", lambda device: sm_count)
    launched = []
    real = kb.launch

    def spy(kernel, grid, *args, **kw):
        if getattr(kernel, "__name__", "") == "_bwd_dkdv":
            launched.append(args[13])  # head_splits
        return real(kernel, grid, *args, **kw)

    monkeypatch.setattr(kb, "launch", spy)
    _check(*shape, dtype, seed=shape[3], **kwargs)
    assert launched == [splits]
