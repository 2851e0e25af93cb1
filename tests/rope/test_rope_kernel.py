"""The RoPE Triton launcher called directly (Triton's interpreter on CPU, natively on CUDA).

The expected values are the contract's formulas written out in float64 PyTorch here:
half layout pairs ``(x[j], x[j + R/2])``, interleaved pairs ``(x[2j], x[2j + 1])``,
``y_first = x_first * c - x_second * s``, ``y_second = x_second * c + x_first * s``, features
``[R, D)`` unchanged, backward = the same with ``s`` negated. Outputs are NaN-poisoned so an
element the kernel does not write fails. Shapes are small and odd: the interpreter pays per
program (one per token here).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, TRITON_DEVICE, assert_close

from fusedops.kernels.rope import rope_forward

MAX_POS = 23
# (B, Hq, Hk, S, D, R): a single token, odd head counts (SmolLM2's 9/3), MQA, partial rotary
# (Phi-like 80/32, NeoX-like 25 %), a non-power-of-two D, R = 2 (one pair), a tiny D.
SHAPES = [
    (2, 3, 1, 5, 16, 16),
    (1, 9, 3, 1, 64, 64),
    (2, 5, 2, 3, 80, 32),
    (1, 2, 3, 4, 40, 40),
    (3, 1, 1, 2, 10, 2),
]
# How cos/sin reach the kernel (see _tables).
FORMS = ["offset", "positions", "positions_shared_i32", "hf_cache", "gathered", "gathered_hf"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _angles(pos: torch.Tensor, rot_half: int) -> torch.Tensor:
    """fp64 angles [..., R/2] of positions ``pos`` (base 10000, any values would do)."""
    inv_freq = 10000.0 ** (-torch.arange(rot_half, dtype=torch.float64) / rot_half)
    return pos.to(torch.float64)[..., None] * inv_freq


def _duplicate(t: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """HF's duplicated [.., R] form of a [.., R/2] table: cat(f, f) or repeat_interleave(2)."""
    return t.repeat_interleave(2, dim=-1) if interleaved else torch.cat([t, t], dim=-1)


def _tables(form, batch, seq, rot_half, interleaved, dtype, seed=1):
    """Kernel arguments for one cos/sin form, and the [B or 1, S, R/2] fp64 rows they select.

    Returns (cos, sin, kwargs for rope_forward, cos_rows, sin_rows).
    """
    g = _gen(seed)
    positions, offset, cache = None, 0, True
    if form in ("offset", "positions", "positions_shared_i32", "hf_cache"):
        ang = _angles(torch.arange(MAX_POS), rot_half)  # [P, R/2]
        cos32, sin32 = ang.cos().float(), ang.sin().float()
        if form == "offset":
            offset = MAX_POS - seq  # the last S rows of the cache
            pos = (offset + torch.arange(seq))[None, :]  # [1, S]
        elif form == "positions_shared_i32":
            pos = torch.randperm(MAX_POS, generator=g)[:seq][None, :].to(torch.int32)
            positions = pos
        else:
            pos = torch.randint(0, MAX_POS, (batch, seq), generator=g)  # [B, S]
            positions = pos
        cos_rows, sin_rows = cos32.double()[pos.long()], sin32.double()[pos.long()]
        if form == "hf_cache":
            # [P, R] duplicated; the kernel reads every other column (interleaved) or the first
            # half (half layout) through the column stride.
            cos, sin = _duplicate(cos32, interleaved), _duplicate(sin32, interleaved)
            col = 2 if interleaved else 1
            strides = (0, cos.stride(0), col)
        else:
            cos, sin = cos32, sin32
            strides = (0, cos.stride(0), 1)
    else:
        cache = False
        rows = batch if form == "gathered" else 1
        pos = torch.randint(0, 1000, (rows, seq), generator=g)
        ang = _angles(pos, rot_half)  # [B or 1, S, R/2]
        if form == "gathered":
            cos, sin = ang.cos().float(), ang.sin().float()
            strides = (cos.stride(0) if rows > 1 else 0, cos.stride(1), 1)
        else:
            # As HF passes them: [1, S, R] in the activations' dtype, duplicated.
            cos = _duplicate(ang.cos(), interleaved).to(dtype)
            sin = _duplicate(ang.sin(), interleaved).to(dtype)
            strides = (0, cos.stride(1), 2 if interleaved else 1)
        cos_rows = cos[..., :: strides[2]][..., :rot_half].double()
        sin_rows = sin[..., :: strides[2]][..., :rot_half].double()
    kwargs = {
        "cos_strides": strides,
        "sin_strides": strides,
        "positions": None if positions is None else positions.to(TRITON_DEVICE),
        "position_offset": offset,
        "cache": cache,
    }
    return cos.to(TRITON_DEVICE), sin.to(TRITON_DEVICE), kwargs, cos_rows, sin_rows


def _expected(x, cos_rows, sin_rows, rotary_dim, interleaved, backward=False):
    """The contract's rotation in fp64. x [B, H, S, D]; rows [B or 1, S, R/2]."""
    x = x.detach().double().cpu()
    c = cos_rows[:, None]  # [B or 1, 1, S, R/2]
    s = -sin_rows[:, None] if backward else sin_rows[:, None]
    y = x.clone()
    if interleaved:
        first, second = slice(0, rotary_dim, 2), slice(1, rotary_dim, 2)
    else:
        first, second = slice(0, rotary_dim // 2), slice(rotary_dim // 2, rotary_dim)
    y[..., first] = x[..., first] * c - x[..., second] * s
    y[..., second] = x[..., second] * c + x[..., first] * s
    return y


def _qk(batch, hq, hk, seq, dim, dtype, seed=0):
    g = _gen(seed)
    q = torch.randn(batch, hq, seq, dim, generator=g).to(dtype).to(TRITON_DEVICE)
    k = torch.randn(batch, hk, seq, dim, generator=g).to(dtype).to(TRITON_DEVICE)
    return q, k


def _poisoned(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def _call(q, k, cos, sin, out_q, out_k, kwargs, *, interleaved, rotary_dim, backward=False):
    rope_forward(
        q,
        k,
        cos,
        sin,
        out_q,
        out_k,
        interleaved=interleaved,
        rotary_dim=rotary_dim,
        backward=backward,
        **kwargs,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("batch,hq,hk,seq,dim,rdim", SHAPES)
@pytest.mark.parametrize("form", FORMS)
def test_forward_matches_formula(dtype, interleaved, batch, hq, hk, seq, dim, rdim, form):
    q, k = _qk(batch, hq, hk, seq, dim, dtype)
    q0, k0 = q.clone(), k.clone()
    cos, sin, kwargs, c_rows, s_rows = _tables(form, batch, seq, rdim // 2, interleaved, dtype)
    out_q, out_k = _poisoned(q), _poisoned(k)
    _call(q, k, cos, sin, out_q, out_k, kwargs, interleaved=interleaved, rotary_dim=rdim)
    assert_close(out_q, _expected(q, c_rows, s_rows, rdim, interleaved), msg="q")
    assert_close(out_k, _expected(k, c_rows, s_rows, rdim, interleaved), msg="k")
    # Inputs untouched; pass-through features copied bit for bit.
    assert torch.equal(q, q0) and torch.equal(k, k0)
    assert torch.equal(out_q[..., rdim:], q[..., rdim:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("form", ["positions", "gathered"])
def test_backward_flag_negates_the_angle(dtype, interleaved, form):
    batch, hq, hk, seq, dim, rdim = 2, 3, 2, 4, 48, 32
    q, k = _qk(batch, hq, hk, seq, dim, dtype)
    cos, sin, kwargs, c_rows, s_rows = _tables(form, batch, seq, rdim // 2, interleaved, dtype)
    out_q, out_k = _poisoned(q), _poisoned(k)
    flags = {"interleaved": interleaved, "rotary_dim": rdim}
    _call(q, k, cos, sin, out_q, out_k, kwargs, backward=True, **flags)
    assert_close(out_q, _expected(q, c_rows, s_rows, rdim, interleaved, backward=True))
    assert_close(out_k, _expected(k, c_rows, s_rows, rdim, interleaved, backward=True))
    if dtype == torch.float32:
        # Rotating back undoes the forward rotation (cos/sin are a true rotation here).
        back_q, back_k = _poisoned(q), _poisoned(k)
        _call(out_q, out_k, cos, sin, back_q, back_k, kwargs, **flags)
        assert_close(back_q, q, atol_extra=1e-5)
        assert_close(back_k, k, atol_extra=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_bshd_views_and_padded_rows(dtype, interleaved):
    """q and out_q as [B, S, H, D].transpose(1, 2) views; k and out_k with padded rows."""
    batch, hq, hk, seq, dim, rdim = 2, 5, 3, 3, 24, 16
    g = _gen(4)
    q = torch.randn(batch, seq, hq, dim, generator=g).to(dtype).to(TRITON_DEVICE).transpose(1, 2)
    k_base = torch.randn(batch, hk, seq, dim + 7, generator=g).to(dtype).to(TRITON_DEVICE)
    k = k_base[..., 3 : 3 + dim]  # row stride D + 7, misaligned start
    out_q = torch.full((batch, seq, hq, dim), float("nan"), dtype=dtype, device=TRITON_DEVICE)
    out_q = out_q.transpose(1, 2)
    out_k = torch.full((batch, hk, seq, dim + 5), float("nan"), dtype=dtype, device=TRITON_DEVICE)
    out_k = out_k[..., 1 : 1 + dim]
    cos, sin, kwargs, c_rows, s_rows = _tables(
        "positions", batch, seq, rdim // 2, interleaved, dtype
    )
    _call(q, k, cos, sin, out_q, out_k, kwargs, interleaved=interleaved, rotary_dim=rdim)
    assert_close(out_q, _expected(q, c_rows, s_rows, rdim, interleaved), msg="q")
    assert_close(out_k, _expected(k, c_rows, s_rows, rdim, interleaved), msg="k")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("form", ["offset", "hf_cache", "gathered_hf"])
def test_inplace(dtype, interleaved, form):
    batch, hq, hk, seq, dim, rdim = 2, 3, 1, 5, 40, 24
    q, k = _qk(batch, hq, hk, seq, dim, dtype)
    q0, k0 = q.clone(), k.clone()
    cos, sin, kwargs, c_rows, s_rows = _tables(form, batch, seq, rdim // 2, interleaved, dtype)
    _call(q, k, cos, sin, q, k, kwargs, interleaved=interleaved, rotary_dim=rdim)
    assert_close(q, _expected(q0, c_rows, s_rows, rdim, interleaved), msg="q")
    assert_close(k, _expected(k0, c_rows, s_rows, rdim, interleaved), msg="k")
    assert torch.equal(q[..., rdim:], q0[..., rdim:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("inplace", [False, True])
def test_without_k(dtype, interleaved, inplace):
    batch, hq, seq, dim, rdim = 3, 7, 2, 32, 32
    q, _ = _qk(batch, hq, 1, seq, dim, dtype)
    q0 = q.clone()
    cos, sin, kwargs, c_rows, s_rows = _tables("offset", batch, seq, rdim // 2, interleaved, dtype)
    out_q = q if inplace else _poisoned(q)
    _call(q, None, cos, sin, out_q, None, kwargs, interleaved=interleaved, rotary_dim=rdim)
    assert_close(out_q, _expected(q0, c_rows, s_rows, rdim, interleaved))


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_positions_outside_the_cache_are_masked(interleaved):
    """The ops layer raises first; the kernel itself never reads outside the cache: a token
    whose position is out of range is rotated by angle 0 (copied)."""
    batch, hq, hk, seq, dim, rdim = 1, 2, 1, 4, 16, 16
    q, k = _qk(batch, hq, hk, seq, dim, torch.float32)
    cos, sin, kwargs, c_rows, s_rows = _tables(
        "positions", batch, seq, rdim // 2, interleaved, None
    )
    positions = torch.tensor([[-1, 2, MAX_POS, 5]], device=TRITON_DEVICE)
    kwargs["positions"] = positions
    out_q, out_k = _poisoned(q), _poisoned(k)
    _call(q, k, cos, sin, out_q, out_k, kwargs, interleaved=interleaved, rotary_dim=rdim)
    ok = torch.tensor([False, True, False, True])
    c_rows = torch.where(
        ok[None, :, None], cos.double().cpu()[positions.clamp(0, MAX_POS - 1)], 1.0
    )
    s_rows = torch.where(
        ok[None, :, None], sin.double().cpu()[positions.clamp(0, MAX_POS - 1)], 0.0
    )
    assert_close(out_q, _expected(q, c_rows, s_rows, rdim, interleaved))
    assert_close(out_k, _expected(k, c_rows, s_rows, rdim, interleaved))


@pytest.mark.parametrize(
    "q_shape,k_shape",
    [((2, 3, 0, 16), None), ((0, 3, 4, 16), (0, 1, 4, 16)), ((2, 0, 4, 16), (2, 0, 4, 16))],
    ids=["no-tokens", "no-batch", "no-heads"],
)
def test_empty_inputs_launch_nothing(monkeypatch, q_shape, k_shape):
    """Nothing to rotate: no kernel launch (a 0-sized grid is an error on CUDA)."""
    import fusedops.kernels.rope as rope_module

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError(f"rope_kernel launched with grid {grid} for empty inputs")

    monkeypatch.setattr(rope_module, "rope_kernel", NoLaunch())
    q = torch.empty(q_shape, device=TRITON_DEVICE)
    k = None if k_shape is None else torch.empty(k_shape, device=TRITON_DEVICE)
    cos, sin, kwargs, _, _ = _tables("offset", 2, 4, 8, False, torch.float32)
    out_q, out_k = _poisoned(q), None if k is None else _poisoned(k)
    _call(q, k, cos, sin, out_q, out_k, kwargs, interleaved=False, rotary_dim=16)
    assert out_q.shape == q_shape and (k is None or out_k.shape == k_shape)


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_k_heads_without_q_heads(interleaved):
    """Hq = 0 with Hk > 0 (an empty q): k is still rotated."""
    q, k = _qk(2, 0, 3, 4, 16, torch.float32)
    cos, sin, kwargs, c_rows, s_rows = _tables("positions", 2, 4, 8, interleaved, torch.float32)
    out_q, out_k = _poisoned(q), _poisoned(k)
    _call(q, k, cos, sin, out_q, out_k, kwargs, interleaved=interleaved, rotary_dim=16)
    assert out_q.shape == q.shape
    assert_close(out_k, _expected(k, c_rows, s_rows, 16, interleaved), msg="k")
