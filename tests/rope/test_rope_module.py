"""RotaryEmbedding module, custom-op registration (opcheck) and torch.compile of apply_rotary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import KERNEL_CASES, assert_close, backend_cases

import fusedops
from fusedops import reference
from fusedops.nn import RotaryEmbedding


@pytest.mark.parametrize("backend,device", backend_cases())
def test_module_matches_transformers_llama(backend, device):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    config = LlamaConfig(
        hidden_size=9 * 64,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=64,
        rope_parameters={"rope_theta": 1e5, **scaling},
    )
    hf_rope = llama.LlamaRotaryEmbedding(config).to(device)
    rope = RotaryEmbedding(64, 64, base=1e5, scaling=scaling).to(device)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 9, 5, 64, generator=gen).to(device)
    k = torch.randn(2, 3, 5, 64, generator=gen).to(device)
    positions = torch.tensor([[0, 1, 2, 3, 4], [40, 41, 42, 43, 63]], device=device)
    cos, sin = hf_rope(q, positions)
    want = llama.apply_rotary_pos_emb(q, k, cos, sin)
    with fusedops.use_backend(backend):
        got = rope(q, k, positions=positions)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)
    assert "rope_type='llama3'" in repr(rope)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_module_partial_interleaved_offset(backend, device):
    rope = RotaryEmbedding(48, 20, base=500.0, interleaved=True, rotary_dim=16).to(device)
    assert rope.cos.shape == (20, 8) and "rotary_dim=16" in repr(rope)
    q = torch.randn(1, 3, 4, 48, device=device)
    with fusedops.use_backend(backend):
        out_q, out_k = rope(q, position_offset=16)
    assert out_k is None
    want, _ = reference.apply_rotary(
        q.double(),
        None,
        rope.cos.double(),
        rope.sin.double(),
        position_offset=16,
        interleaved=True,
        rotary_dim=16,
    )
    assert_close(out_q, want)
    assert rope.state_dict() == {}  # the cache is derived, not saved


def test_module_bad_rotary_dim():
    with pytest.raises(ValueError, match="RotaryEmbedding: rotary_dim must be even"):
        RotaryEmbedding(64, 16, rotary_dim=15)
    with pytest.raises(ValueError, match="RotaryEmbedding: rotary_dim must be even"):
        RotaryEmbedding(64, 16, rotary_dim=66)


def test_module_base_is_a_finite_positive_number():
    for bad in (float("inf"), float("nan"), -2.0, 0):
        with pytest.raises(ValueError, match="RotaryEmbedding: base must be a finite number > 0"):
            RotaryEmbedding(8, 4, base=bad)
    with pytest.raises(TypeError, match="RotaryEmbedding: base must be a real number"):
        RotaryEmbedding(8, 4, base="1e4")
    # NumPy and 0-d tensor numbers are numbers.
    want = RotaryEmbedding(8, 4, base=500.0)
    for base in (np.float32(500.0), torch.tensor(500.0)):
        rope = RotaryEmbedding(8, 4, base=base)
        assert rope.base == 500.0 and torch.equal(rope.cos, want.cos)


def _op_args(backend, device, *, cache=True, interleaved=False, with_k=True):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 4, 16, generator=gen).to(device)
    k = torch.randn(2, 1, 4, 16, generator=gen).to(device) if with_k else None
    if cache:
        cos, sin = fusedops.rope_cos_sin(12, 9, device=device)  # [9, 6]: R = 12
        strides = [0, cos.stride(0), cos.stride(1)]
        positions = torch.randint(0, 9, (1, 4), generator=gen).to(device)
    else:
        cos = torch.randn(2, 4, 12, generator=gen).to(device)  # gathered, HF duplicated form
        sin = torch.randn(2, 4, 12, generator=gen).to(device)
        strides = [cos.stride(0), cos.stride(1), cos.stride(2) * (2 if interleaved else 1)]
        positions = None
    return q, k, cos, sin, strides, list(strides), positions, 0, cache, interleaved, 12


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "gathered"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "gptj"])
def test_opcheck(backend, device, cache, interleaved):
    args = _op_args(backend, device, cache=cache, interleaved=interleaved)
    q, k = args[0].requires_grad_(), args[1].requires_grad_()
    args = (q, k, *args[2:])
    op = torch.ops.fusedops.apply_rotary.default
    torch.library.opcheck(op, (*args, False, True, backend))
    torch.library.opcheck(op, (*args[:1], None, *args[2:], True, False, backend))
    plain = (q.detach().clone(), k.detach().clone(), *args[2:])
    torch.library.opcheck(torch.ops.fusedops.apply_rotary_.default, (*plain, True, backend))


def test_opcheck_cpp_op():
    q, k, cos, sin, cs, ss, pos, off, cache, inter, rot = _op_args("cpp", "cpu")
    for out_k, kk in ((torch.empty_like(k), k), (None, None)):
        torch.library.opcheck(
            torch.ops.fusedops.cpp_rope.default,
            (
                q,
                kk,
                cos,
                sin,
                cs,
                ss,
                pos,
                off,
                cache,
                inter,
                rot,
                False,
                torch.empty_like(q),
                out_k,
            ),
        )


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_fullgraph(backend, device):
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 4, 16, generator=gen).to(device).requires_grad_()
    k = torch.randn(2, 1, 4, 16, generator=gen).to(device).requires_grad_()
    cos, sin = fusedops.rope_cos_sin(16, 12, device=device)
    positions = torch.tensor([[3, 4, 5, 6]], device=device)

    def fn(q, k, cos, sin, positions):
        a, b = fusedops.apply_rotary(q, k, cos, sin, positions=positions)
        c, _ = fusedops.apply_rotary(q, None, cos, sin, position_offset=2, interleaved=True)
        return a * 2 + c, b

    with fusedops.use_backend(backend):
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)
        out_q, out_k = compiled(q, k, cos, sin, positions)
        grads = torch.autograd.grad((out_q.sum() + (out_k * out_k).sum()), (q, k))
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    c64, s64 = cos.double(), sin.double()
    a, b = reference.apply_rotary(q64, k64, c64, s64, positions=positions)
    c, _ = reference.apply_rotary(q64, None, c64, s64, position_offset=2, interleaved=True)
    want_q, want_k = a * 2 + c, b
    assert_close(out_q, want_q)
    assert_close(out_k, want_k)
    want = torch.autograd.grad(want_q.sum() + (want_k * want_k).sum(), (q64, k64))
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_inference_and_inplace(backend, device):
    q = torch.randn(1, 2, 3, 8, device=device)
    cos, sin = fusedops.rope_cos_sin(8, 5, device=device)

    def fn(q, cos, sin):
        out, _ = fusedops.apply_rotary(q, None, cos, sin, position_offset=1)
        x = q.clone()
        fusedops.apply_rotary(x, None, cos, sin, position_offset=1, inplace=True)
        return out, x

    with fusedops.use_backend(backend), torch.no_grad():
        out, x = torch.compile(fn, fullgraph=True, dynamic=False)(q, cos, sin)
    c64, s64 = cos.double(), sin.double()
    want, _ = reference.apply_rotary(q.double(), None, c64, s64, position_offset=1)
    assert_close(out, want)
    assert_close(x, want)
