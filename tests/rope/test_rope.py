"""apply_rotary / apply_rotary_varlen: forward and backward against the reference and against
transformers' own Llama RoPE, on every backend."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_close, backend_cases

import fusedops
from fusedops import reference

# (B, Hq, Hk, S, D, rotary_dim): a decode step with SmolLM2's 9/3 heads, odd head counts,
# D = 64/80/128/256, MQA, q only, partial rotary (GPT-NeoX / Phi style, odd R/2).
SHAPES = [
    (1, 9, 3, 1, 64, None),
    (2, 3, 1, 5, 80, None),
    (1, 2, 2, 3, 128, None),
    (1, 1, 1, 2, 256, None),
    (2, 5, 0, 4, 64, 32),
    (1, 3, 3, 3, 96, 24),
]
MAX_POS = 37


def _run(backend, fn, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fn(*args, **kwargs)


def _qk(batch, hq, hk, seq, dim, dtype, device, *, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, seq, dim, generator=gen).to(dtype).to(device)
    k = torch.randn(batch, hk, seq, dim, generator=gen).to(dtype).to(device) if hk else None
    return q, k


def _cache(rot, device, *, dtype=torch.float32, max_pos=MAX_POS, base=10000.0):
    cos, sin = fusedops.rope_cos_sin(rot, max_pos, base=base, dtype=dtype)  # [P, R/2]
    return cos.to(device), sin.to(device)


def _duplicated(t, interleaved):
    """Hugging Face's [..., R] form of [..., R/2] frequencies."""
    return t.repeat_interleave(2, dim=-1) if interleaved else torch.cat((t, t), dim=-1)


def _reference64(q, k, cos, sin, **kwargs):
    out_q, out_k = reference.apply_rotary(
        q.double(), None if k is None else k.double(), cos.double(), sin.double(), **kwargs
    )
    return out_q, out_k


def _check(got, want, dtype, msg=""):
    got_q, got_k = got
    want_q, want_k = want
    assert got_q.dtype == dtype
    assert_close(got_q, want_q, dtype=dtype, msg=f"{msg} q")
    if want_k is None:
        assert got_k is None
    else:
        assert got_k.dtype == dtype
        assert_close(got_k, want_k, dtype=dtype, msg=f"{msg} k")


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
def test_forward_matches_reference(backend, device, dtype, shape, interleaved):
    batch, hq, hk, seq, dim, rot = shape
    q, k = _qk(batch, hq, hk, seq, dim, dtype, device)
    cos, sin = _cache(rot or dim, device)
    kwargs = {"position_offset": 3, "interleaved": interleaved, "rotary_dim": rot}
    q0, k0 = q.clone(), None if k is None else k.clone()
    out = _run(backend, fusedops.apply_rotary, q, k, cos, sin, **kwargs)
    _check(out, _reference64(q, k, cos, sin, **kwargs), dtype)
    # inplace=False leaves the inputs untouched; features [R, D) are copied exactly.
    assert torch.equal(q, q0) and (k is None or torch.equal(k, k0))
    if rot:
        assert torch.equal(out[0][..., rot:], q[..., rot:])


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
@pytest.mark.parametrize("form", ["cache-half", "cache-full", "gathered-full", "gathered-half"])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64], ids=str)
def test_cos_sin_forms_and_positions(backend, device, interleaved, form, pos_dtype):
    batch, hq, hk, seq, dim = 2, 3, 1, 4, 48
    q, k = _qk(batch, hq, hk, seq, dim, torch.float32, device, seed=1)
    cos, sin = _cache(dim, device)
    gen = torch.Generator().manual_seed(2)
    positions = torch.randint(0, MAX_POS, (batch, seq), generator=gen).to(pos_dtype).to(device)
    want = _reference64(q, k, cos, sin, positions=positions, interleaved=interleaved)
    if form.startswith("cache"):
        c, s = (
            (cos, sin)
            if form == "cache-half"
            else (_duplicated(cos, interleaved), _duplicated(sin, interleaved))
        )
        kwargs = {"positions": positions}
    else:
        c, s = cos[positions.long()], sin[positions.long()]  # [B, S, R/2]
        if form == "gathered-full":
            c, s = _duplicated(c, interleaved), _duplicated(s, interleaved)
        kwargs = {}
    out = _run(backend, fusedops.apply_rotary, q, k, c, s, interleaved=interleaved, **kwargs)
    _check(out, want, torch.float32, form)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_positions_broadcast_and_1d(backend, device):
    # Hugging Face passes position_ids [1, S]; gathered cos/sin [1, S, R] broadcast likewise.
    q, k = _qk(3, 2, 2, 5, 32, torch.float32, device, seed=3)
    cos, sin = _cache(32, device)
    positions = torch.tensor([[7, 3, 0, 36, 1]], device=device)
    want = _reference64(q, k, cos, sin, positions=positions.expand(3, 5))
    for pos in (positions, positions[0]):
        out = _run(backend, fusedops.apply_rotary, q, k, cos, sin, positions=pos)
        _check(out, want, torch.float32)
    gathered = (_duplicated(cos[positions], False), _duplicated(sin[positions], False))
    _check(_run(backend, fusedops.apply_rotary, q, k, *gathered), want, torch.float32)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
def test_strided_views(backend, device, interleaved):
    # q/k as [B, S, H, D].transpose(1, 2) views of a fused qkv projection, and a cos/sin cache
    # that is a column slice of a wider table: all read in place.
    batch, seq, hq, hk, dim = 2, 3, 4, 2, 32
    gen = torch.Generator().manual_seed(4)
    qkv = torch.randn(batch, seq, hq + 2 * hk, dim, generator=gen).to(device)
    q = qkv[:, :, :hq].transpose(1, 2)  # [B, Hq, S, D], strides of the packed tensor
    k = qkv[:, :, hq : hq + hk].transpose(1, 2)
    wide_cos = torch.randn(MAX_POS, 40, generator=gen).to(device)
    wide_sin = torch.randn(MAX_POS, 40, generator=gen).to(device)
    cos, sin = wide_cos[:, 5:21], wide_sin[:, 5:21]  # [P, 16], row stride 40
    kwargs = {"position_offset": 2, "interleaved": interleaved}
    out = _run(backend, fusedops.apply_rotary, q, k, cos, sin, **kwargs)
    _check(out, _reference64(q, k, cos, sin, **kwargs), torch.float32)
    if backend != "reference":  # the kernels keep the input's [B, S, H, D] layout
        assert out[0].transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_low_precision_cache(backend, device, dtype):
    # HF casts cos/sin to the activation dtype: a bf16/fp16 cache is read as such.
    q, k = _qk(1, 3, 1, 4, 64, dtype, device, seed=5)
    cos, sin = _cache(64, device, dtype=dtype)
    out = _run(backend, fusedops.apply_rotary, q, k, cos, sin, position_offset=5)
    _check(out, _reference64(q, k, cos, sin, position_offset=5), dtype)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_transformers_llama(backend, device, dtype):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    batch, hq, hk, seq, dim = 2, 9, 3, 4, 64  # SmolLM2-135M heads
    q, k = _qk(batch, hq, hk, seq, dim, dtype, device, seed=6)
    cache_cos, cache_sin = _cache(dim, device, base=1e5)
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]], device=device)
    cos = _duplicated(cache_cos[positions], False)  # [B, S, D] as LlamaRotaryEmbedding gives
    sin = _duplicated(cache_sin[positions], False)
    hf_q, hf_k = llama.apply_rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double())
    for args, kwargs in (((cos, sin), {}), ((cache_cos, cache_sin), {"positions": positions})):
        out = _run(backend, fusedops.apply_rotary, q, k, *args, **kwargs)
        _check(out, (hf_q, hf_k), dtype, "vs transformers")
    if dtype == torch.float32:  # transformers' own fp32 computation, same inputs
        hf32 = llama.apply_rotary_pos_emb(q, k, cos, sin)
        out = _run(backend, fusedops.apply_rotary, q, k, cos, sin)
        _check(out, hf32, dtype, "vs transformers fp32")


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
def test_inplace(backend, device, interleaved):
    q, k = _qk(2, 3, 1, 3, 40, torch.float32, device, seed=7)
    cos, sin = _cache(24, device)
    kwargs = {"position_offset": 1, "interleaved": interleaved, "rotary_dim": 24}
    want = _reference64(q, k, cos, sin, **kwargs)
    out_q, out_k = _run(backend, fusedops.apply_rotary, q, k, cos, sin, inplace=True, **kwargs)
    assert out_q is q and out_k is k
    _check((q, k), want, torch.float32, "inplace")
    # q only, and a [B, S, H, D].transpose view written in place
    base = torch.randn(2, 3, 4, 40, device=device)
    view = base.transpose(1, 2)
    want_v, _ = _reference64(view, None, cos, sin, **kwargs)
    out_v, none = _run(backend, fusedops.apply_rotary, view, None, cos, sin, inplace=True, **kwargs)
    assert out_v is view and none is None
    assert_close(base.transpose(1, 2), want_v)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[4], SHAPES[5]], ids=str)
def test_backward_matches_reference(backend, device, dtype, interleaved, shape):
    batch, hq, hk, seq, dim, rot = shape
    q, k = _qk(batch, hq, hk, seq, dim, dtype, device, seed=8)
    cos, sin = _cache(rot or dim, device)
    gen = torch.Generator().manual_seed(9)
    positions = torch.randint(0, MAX_POS, (1, seq), generator=gen).to(device)
    kwargs = {"positions": positions, "interleaved": interleaved, "rotary_dim": rot}
    leaves = [t.detach().clone().requires_grad_() for t in (q, k) if t is not None]
    up = [torch.randn(t.shape, generator=gen).to(dtype).to(device) for t in leaves]
    out = _run(
        backend,
        fusedops.apply_rotary,
        leaves[0],
        leaves[1] if k is not None else None,
        cos,
        sin,
        **kwargs,
    )
    outs = [o for o in out if o is not None]
    grads = torch.autograd.grad(outs, leaves, up)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference.apply_rotary(
        leaves64[0], leaves64[1] if k is not None else None, cos.double(), sin.double(), **kwargs
    )
    ref_outs = [o for o in ref if o is not None]
    want = torch.autograd.grad(ref_outs, leaves64, [u.double() for u in up])
    for got, ref_grad, name in zip(grads, want, "qk", strict=False):
        assert got.dtype == dtype, name
        assert_close(got, ref_grad, dtype=dtype, msg=f"grad {name}")


@pytest.mark.parametrize("backend,device", backend_cases())
def test_backward_of_strided_input_and_sum(backend, device):
    # A transposed-view input and an expanded upstream gradient (from .sum()).
    base = torch.randn(2, 3, 4, 16, device=device, requires_grad=True)
    q = base.transpose(1, 2)  # [B, H, S, D] view
    cos, sin = _cache(16, device)
    out, _ = _run(backend, fusedops.apply_rotary, q, None, cos, sin, position_offset=4)
    (grad,) = torch.autograd.grad(out.sum(), base)
    b64 = base.detach().double().requires_grad_()
    ref, _ = reference.apply_rotary(
        b64.transpose(1, 2), None, cos.double(), sin.double(), position_offset=4
    )
    (want,) = torch.autograd.grad(ref.sum(), b64)
    assert_close(grad, want)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
def test_varlen(backend, device, dtype, interleaved):
    gen = torch.Generator().manual_seed(10)
    cu = torch.tensor([0, 3, 4, 4, 9], dtype=torch.int32, device=device)  # an empty sequence too
    x = torch.randn(9, 3, 32, generator=gen).to(dtype).to(device)  # [T, H, D]
    cos, sin = _cache(24, device)
    kwargs = {"interleaved": interleaved, "rotary_dim": 24}
    x0 = x.clone()
    out = _run(backend, fusedops.apply_rotary_varlen, x, cos, sin, cu, **kwargs)
    want = reference.apply_rotary_varlen(x.double(), cos.double(), sin.double(), cu, **kwargs)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, want, dtype=dtype)
    assert torch.equal(x, x0)
    # Same as rotating each sequence on its own from position 0.
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        if end > start:
            seq = x[start:end].transpose(0, 1).unsqueeze(0)  # [1, H, L, D]
            one, _ = _reference64(seq, None, cos, sin, **kwargs)
            assert_close(out[start:end], one.squeeze(0).transpose(0, 1), dtype=dtype)
    # In place.
    res = _run(backend, fusedops.apply_rotary_varlen, x, cos, sin, cu, inplace=True, **kwargs)
    assert res is x
    assert_close(x, want, dtype=dtype)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_varlen_backward(backend, device):
    cu = torch.tensor([0, 2, 7], device=device)  # int64 boundaries
    x = torch.randn(7, 2, 16, device=device, requires_grad=True)
    cos, sin = _cache(16, device)
    up = torch.randn(7, 2, 16, device=device)
    out = _run(backend, fusedops.apply_rotary_varlen, x, cos, sin, cu, interleaved=True)
    (grad,) = torch.autograd.grad(out, x, up)
    x64 = x.detach().double().requires_grad_()
    ref = reference.apply_rotary_varlen(x64, cos.double(), sin.double(), cu, interleaved=True)
    (want,) = torch.autograd.grad(ref, x64, up.double())
    assert_close(grad, want)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty(backend, device):
    cos, sin = _cache(8, device)
    q = torch.randn(2, 3, 0, 8, device=device)
    k = torch.randn(2, 1, 0, 8, device=device)
    out_q, out_k = _run(backend, fusedops.apply_rotary, q, k, cos, sin)
    assert out_q.shape == q.shape and out_k.shape == k.shape
