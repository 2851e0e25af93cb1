"""fused_embedding: forward and backward against the reference on every backend."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    DTYPES,
    KERNEL_CASES,
    POS_MODES,
    assert_close,
    backend_cases,
    pos_kwargs,
    sinusoid_atol,
)

import fusedops
from fusedops import reference

# (leading shape, S, D, V): odd and tiny shapes, a single token, a prime D, a wide row.
SHAPES = [
    ((2,), 7, 1, 11),
    ((3,), 5, 3, 17),
    ((1,), 1, 127, 31),
    ((2, 3), 4, 48, 50),
    ((), 13, 768, 97),
    ((1,), 3, 4096, 10),
    ((1,), 2, 8192, 5),
]


def _inputs(lead, seq, dim, vocab, dtype, device, *, id_dtype=torch.int64, num_pos=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (*lead, seq), generator=gen).to(id_dtype)
    weight = torch.randn(vocab, dim, generator=gen).to(dtype)
    pos_weight = torch.randn(num_pos, dim, generator=gen).to(dtype)
    return ids.to(device), weight.to(device), pos_weight.to(device)


def _run(backend, fn, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fn(*args, **kwargs)


def _reference64(ids, weight, pos_weight, **kwargs):
    pw = None if pos_weight is None else pos_weight.double()
    return reference.fused_embedding(ids, weight.double(), pos_weight=pw, **kwargs)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,seq,dim,vocab", SHAPES)
@pytest.mark.parametrize("mode", POS_MODES)
def test_forward_matches_reference(backend, device, dtype, lead, seq, dim, vocab, mode):
    ids, weight, pos_weight = _inputs(lead, seq, dim, vocab, dtype, device)
    kwargs = {"scale": 1.7, "position_offset": 3, **pos_kwargs(mode, pos_weight)}
    out = _run(backend, fusedops.fused_embedding, ids, weight, **kwargs)
    expected = _reference64(ids, weight, kwargs.pop("pos_weight", None), **kwargs)
    assert out.dtype == dtype and out.shape == (*lead, seq, dim)
    assert out.device.type == torch.device(device).type
    assert_close(out, expected, dtype=dtype, atol_extra=sinusoid_atol(mode, seq + 3))


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("mode", ["learned", "sinusoid"])
def test_explicit_positions(backend, device, id_dtype, mode):
    ids, weight, pos_weight = _inputs((3,), 6, 20, 13, torch.float32, device, id_dtype=id_dtype)
    gen = torch.Generator().manual_seed(1)
    positions = torch.randint(0, 40, (3, 6), generator=gen).to(id_dtype).to(device)
    kwargs = {"scale": 0.5, "positions": positions, **pos_kwargs(mode, pos_weight)}
    out = _run(backend, fusedops.fused_embedding, ids, weight, **kwargs)
    expected = _reference64(ids, weight, kwargs.pop("pos_weight", None), **kwargs)
    assert_close(out, expected, atol_extra=sinusoid_atol(mode, 40))


@pytest.mark.parametrize("backend,device", backend_cases())
def test_positions_broadcast_over_batch(backend, device):
    # Hugging Face passes position_ids of shape [1, S].
    ids, weight, pos_weight = _inputs((4,), 5, 24, 9, torch.float32, device)
    positions = torch.tensor([[7, 3, 0, 9, 1]], device=device)
    out = _run(
        backend, fusedops.fused_embedding, ids, weight, pos_weight=pos_weight, positions=positions
    )
    expected = _reference64(ids, weight, pos_weight, positions=positions)
    assert_close(out, expected)


def _grads(backend, ids, weight, pos_weight, upstream, **kwargs):
    w = weight.detach().clone().requires_grad_()
    p = pos_weight.detach().clone().requires_grad_() if pos_weight is not None else None
    out = _run(backend, fusedops.fused_embedding, ids, w, pos_weight=p, **kwargs)
    leaves = (w,) if p is None else (w, p)
    return torch.autograd.grad(out, leaves, upstream)


def _reference_grads(ids, weight, pos_weight, upstream, **kwargs):
    w = weight.detach().double().requires_grad_()
    p = pos_weight.detach().double().requires_grad_() if pos_weight is not None else None
    out = reference.fused_embedding(ids, w, pos_weight=p, **kwargs)
    leaves = (w,) if p is None else (w, p)
    return torch.autograd.grad(out, leaves, upstream.double())


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,seq,dim,vocab", SHAPES[:5] + SHAPES[-1:])
@pytest.mark.parametrize("mode", POS_MODES)
def test_backward_matches_reference(backend, device, dtype, lead, seq, dim, vocab, mode):
    ids, weight, pos_weight = _inputs(lead, seq, dim, vocab, dtype, device)
    ids.view(-1)[: max(1, ids.numel() // 2)] = 1  # duplicates: several tokens share a row
    pw = pos_weight if mode == "learned" else None
    kwargs = {"scale": 1.3, "position_offset": 2, "sinusoidal": mode == "sinusoid"}
    gen = torch.Generator().manual_seed(7)
    upstream = torch.randn(*lead, seq, dim, generator=gen).to(dtype).to(device)
    grads = _grads(backend, ids, weight, pw, upstream, **kwargs)
    expected = _reference_grads(ids, weight, pw, upstream, **kwargs)
    n_terms = ids.numel()  # rows summed into one gradient row, at most
    # The kernels sum in fp32 (error ~ sqrt(n) ulps); the reference backend is plain PyTorch,
    # whose embedding backward sums fp16/bf16 rows in that dtype (error ~ n ulps).
    low_precision_sum = backend == "reference" and dtype != torch.float32
    rtol_scale = n_terms if low_precision_sum else max(1.0, math.sqrt(n_terms))
    atol_extra = n_terms * 1e-3 if low_precision_sum else 0.0  # cancellation in fp16 sums
    for got, want, name in zip(
        grads, expected, ("weight", "pos_weight")[: len(grads)], strict=True
    ):
        assert got.dtype == dtype, name
        assert_close(got, want, dtype=dtype, rtol_scale=rtol_scale, atol_extra=atol_extra, msg=name)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("padding_idx", [0, 4, -1])
def test_padding_idx_gets_zero_grad(backend, device, padding_idx):
    ids, weight, _ = _inputs((2,), 8, 16, 6, torch.float32, device)
    ids[0, :3] = padding_idx % 6
    upstream = torch.randn(2, 8, 16, device=device)
    (grad,) = _grads(backend, ids, weight, None, upstream, padding_idx=padding_idx, scale=2.0)
    (want,) = _reference_grads(ids, weight, None, upstream, padding_idx=padding_idx, scale=2.0)
    assert torch.all(grad[padding_idx % 6] == 0)
    assert_close(grad, want)
    # The forward still returns the padding row (nn.Embedding semantics).
    out = _run(backend, fusedops.fused_embedding, ids, weight, padding_idx=padding_idx)
    assert_close(out[0, 0], weight[padding_idx % 6].double())


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_deterministic_bit_for_bit(backend, device, dtype):
    # A duplicate-heavy batch: 600 tokens over 5 ids, the case where atomics reorder sums.
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 5, (4, 150), generator=gen).to(device)
    weight = torch.randn(5, 40, generator=gen).to(dtype).to(device)
    pos_weight = torch.randn(150, 40, generator=gen).to(dtype).to(device)
    upstream = torch.randn(4, 150, 40, generator=gen).to(dtype).to(device)
    first = _grads(backend, ids, weight, pos_weight, upstream, scale=3.0)
    for _ in range(2):
        again = _grads(backend, ids, weight, pos_weight, upstream, scale=3.0)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b), "deterministic backward changed between runs"
    want = _reference_grads(ids, weight, pos_weight, upstream, scale=3.0)
    for got, ref in zip(first, want, strict=True):
        assert_close(got, ref, dtype=dtype, rtol_scale=25)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_backward_atomic_path(backend, device):
    ids, weight, pos_weight = _inputs((3,), 50, 33, 7, torch.float32, device, num_pos=50)
    upstream = torch.randn(3, 50, 33, device=device)
    kwargs = {"scale": 0.7, "padding_idx": 2}
    grads = _grads(backend, ids, weight, pos_weight, upstream, deterministic=False, **kwargs)
    want = _reference_grads(ids, weight, pos_weight, upstream, **kwargs)
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref, rtol_scale=10)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty_input(backend, device):
    _, weight, pos_weight = _inputs((1,), 1, 8, 5, torch.float32, device)
    ids = torch.empty(2, 0, dtype=torch.int64, device=device)
    out = _run(backend, fusedops.fused_embedding, ids, weight, pos_weight=pos_weight)
    assert out.shape == (2, 0, 8)
    w = weight.clone().requires_grad_()
    out = _run(backend, fusedops.fused_embedding, ids, w)
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(grad, torch.zeros_like(w))


@pytest.mark.parametrize("backend,device", backend_cases())
def test_strided_tables(backend, device):
    # Row-strided views (stride(-1) == 1, padded rows) are read in place, forward and backward.
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(9, 40, generator=gen).to(device)
    pos_base = torch.randn(12, 40, generator=gen).to(device)
    weight, pos_weight = base[:, 3:35], pos_base[:, 3:35]  # [9, 32] / [12, 32], row stride 40
    ids = torch.randint(0, 9, (2, 6), generator=gen).to(device)
    upstream = torch.randn(2, 6, 32, generator=gen).to(device)
    out = _run(backend, fusedops.fused_embedding, ids, weight, pos_weight=pos_weight, scale=2.0)
    assert_close(out, _reference64(ids, weight, pos_weight, scale=2.0))
    grads = _grads(backend, ids, weight, pos_weight, upstream, scale=2.0)
    want = _reference_grads(ids, weight, pos_weight, upstream, scale=2.0)
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref)


@pytest.mark.parametrize("dim", [768, 771])
@pytest.mark.parametrize("mode", POS_MODES)
def test_cpp_large_output_streaming_path(dim, mode):
    # Outputs >= 4 MB take the C++ streaming-store path (and rows of odd D are misaligned).
    ids, weight, pos_weight = _inputs((2,), 700, dim, 300, torch.float32, "cpu", num_pos=700)
    kwargs = {"scale": 1.25, **pos_kwargs(mode, pos_weight)}
    out = _run("cpp", fusedops.fused_embedding, ids, weight, **kwargs)
    assert out.numel() * 4 >= 4 << 20
    expected = _reference64(ids, weight, kwargs.pop("pos_weight", None), **kwargs)
    assert_close(out, expected, atol_extra=sinusoid_atol(mode, 700))
