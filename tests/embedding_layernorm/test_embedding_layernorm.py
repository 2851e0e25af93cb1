"""fused_embedding_layernorm: forward and backward against the reference on every backend."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, KERNEL_CASES, assert_close, backend_cases

import fusedops
from fusedops import reference

# (leading shape, S, D, V): a single token, a prime D, tiny D, BERT-like width, non-pow2 D.
SHAPES = [
    ((2,), 7, 3, 11),
    ((3,), 1, 127, 31),
    ((2, 3), 4, 48, 50),
    ((), 13, 384, 97),
    ((1,), 5, 771, 10),
]
# Which optional terms a call has: (pos table, type table, token_type_ids, ln weight, ln bias).
VARIANTS = {
    "bert": (True, True, True, True, True),
    "type-row0": (True, True, False, True, True),
    "no-pos": (False, True, True, True, True),
    "no-type": (True, False, False, True, True),
    "no-affine": (True, True, True, False, False),
    "weight-only": (False, False, False, True, False),
}
NUM_POS, NUM_TYPES, EPS = 40, 3, 1e-5


def make_inputs(lead, seq, dim, vocab, dtype, device, variant="bert", seed=0):
    """(input_ids, params [weight, pos, type, ln_w, ln_b] with None for absent ones, kwargs)."""
    has_pos, has_type, has_tt, has_w, has_b = VARIANTS[variant]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (*lead, seq), generator=gen)
    params = [
        torch.randn(vocab, dim, generator=gen),
        torch.randn(NUM_POS, dim, generator=gen) if has_pos else None,
        torch.randn(NUM_TYPES, dim, generator=gen) if has_type else None,
        1 + 0.5 * torch.randn(dim, generator=gen) if has_w else None,
        torch.randn(dim, generator=gen) if has_b else None,
    ]
    params = [None if p is None else p.to(dtype).to(device) for p in params]
    tt = torch.randint(0, NUM_TYPES, (*lead, seq), generator=gen).to(device) if has_tt else None
    kwargs = {"token_type_ids": tt, "position_offset": 2 if has_pos else 0}
    return ids.to(device), params, kwargs


def call(fn, ids, params, kwargs, **extra):
    weight, pos, typ, ln_w, ln_b = params
    return fn(
        ids,
        weight,
        pos,
        typ,
        kwargs["token_type_ids"],
        ln_w,
        ln_b,
        EPS,
        kwargs.get("positions"),
        kwargs["position_offset"],
        **extra,
    )


def run(backend, ids, params, kwargs, **extra):
    with fusedops.use_backend(backend):
        return call(fusedops.fused_embedding_layernorm, ids, params, kwargs, **extra)


def reference64(ids, params, kwargs, **extra):
    params64 = [None if p is None else p.double() for p in params]  # keeps the autograd graph
    return call(reference.fused_embedding_layernorm, ids, params64, kwargs, **extra)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,seq,dim,vocab", SHAPES)
def test_forward_matches_reference(backend, device, dtype, lead, seq, dim, vocab):
    ids, params, kwargs = make_inputs(lead, seq, dim, vocab, dtype, device)
    out = run(backend, ids, params, kwargs)
    assert out.dtype == dtype and out.shape == (*lead, seq, dim)
    assert out.device.type == torch.device(device).type
    # fp16/bf16: the LayerNorm output is ~N(0, 1) * ln_weight + ln_bias, a few units.
    assert_close(out, reference64(ids, params, kwargs), dtype=dtype, rtol_scale=2)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_forward(backend, device, variant):
    ids, params, kwargs = make_inputs((2,), 6, 40, 13, torch.float32, device, variant)
    out = run(backend, ids, params, kwargs)
    assert_close(out, reference64(ids, params, kwargs))


def grads_of(fn, ids, params, kwargs, upstream, **extra):
    leaves = [None if p is None else p.detach().clone().requires_grad_() for p in params]
    out = fn(ids, leaves, kwargs, **extra)
    present = [p for p in leaves if p is not None]
    got = iter(torch.autograd.grad(out, present, upstream))
    return [None if p is None else next(got) for p in leaves]


def check_grads(backend, ids, params, kwargs, upstream, dtype, **extra):
    got = grads_of(lambda *a, **k: run(backend, *a, **k), ids, params, kwargs, upstream, **extra)
    params64 = [None if p is None else p.double() for p in params]
    want = grads_of(reference64, ids, params64, kwargs, upstream.double(), **extra)
    # Table gradients sum up to N rows (error ~ sqrt(N) ulps in fp32 sums); the reference
    # backend runs PyTorch's own backward, which sums fp16/bf16 rows in that dtype.
    n = ids.numel()
    low_precision = backend == "reference" and dtype != torch.float32
    rtol_scale = 4 * n if low_precision else 4 * max(1.0, math.sqrt(n))
    atol_extra = n * 2e-3 if low_precision else 0.0
    names = ("weight", "pos_weight", "type_weight", "ln_weight", "ln_bias")
    for name, g, w in zip(names, got, want, strict=True):
        assert (g is None) == (w is None), name
        if g is not None:
            assert g.dtype == dtype, name
            assert_close(g, w, dtype=dtype, rtol_scale=rtol_scale, atol_extra=atol_extra, msg=name)
    return got


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,seq,dim,vocab", SHAPES)
def test_backward_matches_reference(backend, device, dtype, lead, seq, dim, vocab):
    ids, params, kwargs = make_inputs(lead, seq, dim, vocab, dtype, device, seed=1)
    ids.view(-1)[: max(1, ids.numel() // 2)] = 1  # duplicates: several tokens share a row
    gen = torch.Generator().manual_seed(7)
    upstream = torch.randn(*ids.shape, dim, generator=gen).to(dtype).to(device)
    check_grads(backend, ids, params, kwargs, upstream, dtype)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_backward(backend, device, variant):
    ids, params, kwargs = make_inputs((3,), 5, 24, 9, torch.float32, device, variant, seed=2)
    upstream = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(3)).to(device)
    check_grads(backend, ids, params, kwargs, upstream, torch.float32)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("padding_idx", [0, -1])
def test_padding_idx_gets_zero_grad(backend, device, padding_idx):
    ids, params, kwargs = make_inputs((2,), 8, 16, 6, torch.float32, device)
    ids[0, :3] = padding_idx % 6
    upstream = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(4)).to(device)
    got = check_grads(
        backend, ids, params, kwargs, upstream, torch.float32, padding_idx=padding_idx
    )
    assert torch.all(got[0][padding_idx % 6] == 0)
    assert got[1].abs().sum() > 0  # the other tables still get the padded tokens' gradient


@pytest.mark.parametrize("backend,device", backend_cases())
def test_positions_given(backend, device):
    ids, params, kwargs = make_inputs((3,), 6, 20, 13, torch.float32, device)
    gen = torch.Generator().manual_seed(5)
    for positions in (
        torch.randint(0, NUM_POS, (3, 6), generator=gen),  # per token
        torch.tensor([[7, 3, 0, 9, 1, 39]]),  # [1, S], Hugging Face's position_ids
        torch.arange(6).to(torch.int32),  # [S], another index dtype
    ):
        kw = {**kwargs, "positions": positions.to(device), "position_offset": 0}
        out = run(backend, ids, params, kw)
        assert_close(out, reference64(ids, params, kw))
        upstream = torch.randn(3, 6, 20, generator=gen).to(device)
        check_grads(backend, ids, params, kw, upstream, torch.float32)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_backward_deterministic_bit_for_bit(backend, device):
    gen = torch.Generator().manual_seed(3)
    # 80 tokens over 5 ids and 3 types: the duplicate-heavy case where atomics reorder sums.
    ids, params, kwargs = make_inputs((2,), 40, 40, 5, torch.float32, device)
    kwargs["position_offset"] = 0
    upstream = torch.randn(2, 40, 40, generator=gen).to(device)
    fn = lambda *a, **k: run(backend, *a, **k)
    first = grads_of(fn, ids, params, kwargs, upstream)
    again = grads_of(fn, ids, params, kwargs, upstream)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b), "deterministic backward changed between runs"


@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty_input(backend, device):
    _, params, kwargs = make_inputs((1,), 1, 8, 5, torch.float32, device)
    ids = torch.empty(2, 0, dtype=torch.int64, device=device)
    kwargs["token_type_ids"] = None
    leaves = [p.clone().requires_grad_() for p in params]
    out = run(backend, ids, leaves, kwargs)
    assert out.shape == (2, 0, 8)
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    for g in grads:
        assert g is None or not g.any()


@pytest.mark.parametrize("backend,device", backend_cases())
def test_strided_tables(backend, device):
    # Row-strided views (stride(-1) == 1) are read in place, forward and backward.
    ids, params, kwargs = make_inputs((2,), 6, 40, 9, torch.float32, device)
    params[0], params[1] = params[0][:, 3:35], params[1][:, 3:35]
    params[2], params[3], params[4] = params[2][:, :32], params[3][:32], params[4][:32]
    out = run(backend, ids, params, kwargs)
    assert_close(out, reference64(ids, params, kwargs))
    upstream = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(6)).to(device)
    check_grads(backend, ids, params, kwargs, upstream, torch.float32)


def test_matches_torch_layer_norm_fp32():
    # The C++ kernel against the HF composition in fp32, at BERT's eps: ~1e-6.
    ids, params, kwargs = make_inputs((4,), 32, 384, 100, torch.float32, "cpu")
    weight, pos, typ, ln_w, ln_b = params
    x = weight[ids] + typ[kwargs["token_type_ids"]] + pos[torch.arange(2, 34)]
    want = torch.nn.functional.layer_norm(x, (384,), ln_w, ln_b, 1e-12)
    kwargs_eps = dict(kwargs)
    with fusedops.use_backend("cpp"):
        out = fusedops.fused_embedding_layernorm(
            ids, weight, pos, typ, kwargs_eps["token_type_ids"], ln_w, ln_b, 1e-12, None, 2
        )
    assert (out - want).abs().max().item() < 4e-6
