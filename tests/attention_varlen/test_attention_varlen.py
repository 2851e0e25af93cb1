"""fusedops.attention_varlen: packed sequences against the fp64 reference (a loop over
sequences) with attention's error bound, forward, lse and gradients, on every backend; bad
inputs; opcheck; torch.compile fullgraph forward and backward."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import DTYPES, KERNEL_CASES, assert_attention_bound, backend_cases, max_abs_error

import fusedops
from fusedops import reference
from fusedops.ops.attention_varlen import attention_varlen_backward_op, attention_varlen_op


def _cu(lengths, device):
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return cu.to(device)


def _packed(lens_q, lens_k, hq, hkv, dim, dtype, device, *, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), hq, dim, generator=gen).to(dtype).to(device)
    k = torch.randn(sum(lens_k), hkv, dim, generator=gen).to(dtype).to(device)
    v = torch.randn(sum(lens_k), hkv, dim, generator=gen).to(dtype).to(device)
    for t in (q, k, v):
        t.requires_grad_(grad)
    return q, k, v, _cu(lens_q, device), _cu(lens_k, device)


def check_varlen(backend, device, lens_q, lens_k, hq, hkv, dim, dtype, *, seed=0,
                 return_lse=True, **kw):  # fmt: skip
    """Forward, lse (``return_lse``) and dq/dk/dv (random upstream gradient) against the fp64
    reference, with the bound of ``helpers.check_attention`` (yardstick: the reference in
    ``dtype``)."""
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, hq, hkv, dim, dtype, device, seed=seed)
    max_q, max_k = max(lens_q), max(lens_k)
    with fusedops.use_backend(backend):
        result = fusedops.attention_varlen(
            q, k, v, cu_q, cu_k, max_q, max_k, return_lse=return_lse, **kw
        )
    out, lse = result if return_lse else (result, None)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse is None or lse.shape == (hq, q.shape[0])
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want, want_lse = reference.attention_varlen(q64, k64, v64, cu_q, cu_k, return_lse=True, **kw)
    yard = reference.attention_varlen(q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw)
    assert_attention_bound("out", out, yard, want, dtype)
    if return_lse:
        empty = torch.isinf(want_lse)
        assert torch.equal(torch.isinf(lse).cpu(), empty.cpu()) and bool((lse[empty] < 0).all())
        if not empty.all():
            top = want_lse[~empty].abs().max()
            assert max_abs_error(lse[~empty], want_lse[~empty]) <= 1e-4 * (1 + top)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    dout = dout.to(device)
    got = torch.autograd.grad(out, (q, k, v), dout)
    wants = torch.autograd.grad(want, (q64, k64, v64), dout.double())
    yards = torch.autograd.grad(yard, (q, k, v), dout)
    for name, g, y, w in zip(("dq", "dk", "dv"), got, yards, wants, strict=True):
        assert_attention_bound(name, g, y, w, dtype)


# (lens_q, lens_k, Hq, Hkv, D, options): an empty sequence, decode rows (Sq = 1), Sq != Sk,
# sequences with keys but no queries and queries but no keys, windows, softcap, GQA.
CASES = [
    ([5, 0, 17, 3], [5, 4, 17, 9], 8, 1, 64, {}),
    ([1, 1, 1], [9, 1, 33], 9, 3, 80, {}),
    ([17, 3], [17, 3], 4, 2, 128, {"causal": False}),
    ([4, 17, 2], [0, 40, 5], 8, 1, 64, {"sliding_window": 4}),
    ([3, 17], [17, 40], 9, 3, 64, {"sliding_window": 1, "softcap": 2.0}),
    ([17, 6], [17, 6], 4, 2, 80, {"softcap": 0.5, "causal": False}),
    ([6, 9], [6, 9], 4, 1, 64, {"sliding_window": 64, "softmax_scale": 0.2}),
]


@pytest.mark.parametrize("return_lse", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_matches_reference(backend, device, case, return_lse):
    """With return_lse the CPU path runs the custom op (lse + its own backward), without it
    SDPA per sequence directly (SDPA's backward)."""
    lens_q, lens_k, hq, hkv, dim, kw = case
    check_varlen(backend, device, lens_q, lens_k, hq, hkv, dim, torch.float32,
                 return_lse=return_lse, **kw)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", backend_cases())
def test_dtypes(backend, device, dtype):
    """Every dtype on every backend (Triton through the interpreter: a small case)."""
    check_varlen(backend, device, [5, 0, 7], [9, 3, 7], 4, 2, 16, dtype, sliding_window=3,
                 softcap=3.0)  # fmt: skip


TRITON_CASES = [
    ([3, 17, 1], [3, 20, 33], 2, 1, 64, {}),
    ([9, 4], [9, 0], 3, 1, 80, {"sliding_window": 2}),
    ([1, 6], [17, 6], 2, 2, 16, {"softcap": 1.0, "causal": False}),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_triton(case):
    from helpers import TRITON_DEVICE

    lens_q, lens_k, hq, hkv, dim, kw = case
    check_varlen("triton", TRITON_DEVICE, lens_q, lens_k, hq, hkv, dim, torch.float32, **kw)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_equals_dense_attention(backend, device):
    """One sequence is fusedops.attention with batch 1 (same backend)."""
    q, k, v, cu_q, cu_k = _packed([7], [11], 4, 2, 16, torch.float32, device, grad=False)
    with fusedops.use_backend(backend):
        out = fusedops.attention_varlen(q, k, v, cu_q, cu_k, 7, 11, sliding_window=5)
        dense = fusedops.attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), sliding_window=5)
    assert max_abs_error(out, dense[0].transpose(0, 1)) < 1e-5


def _bad(**change):
    q, k, v, cu_q, cu_k = _packed([3, 4], [3, 5], 4, 2, 16, torch.float32, "cpu", grad=False)
    args = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k,
            "max_seqlen_q": 4, "max_seqlen_k": 5}  # fmt: skip
    args.update(change)
    return args


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize(
    "change,exc,match",
    [
        ({"causal": False, "sliding_window": 2}, ValueError, "sliding_window=2 needs causal=True"),
        ({"sliding_window": 0}, ValueError, "sliding_window must be >= 1, got 0"),
        ({"softcap": 0.0}, ValueError, "softcap must be a finite number > 0"),
        ({"cu_seqlens_q": torch.tensor([0, 3, 7])}, TypeError, "cu_seqlens_q must.*int64"),
        ({"cu_seqlens_k": torch.tensor([0, 3, 8.0])}, TypeError, "cu_seqlens_k must have dtype"),
        ({"cu_seqlens_q": torch.tensor([[0, 3, 7]], dtype=torch.int32)}, ValueError,
         r"cu_seqlens_q must be 1-D \[N \+ 1\]"),
        ({"cu_seqlens_k": torch.tensor([0, 8], dtype=torch.int32)}, ValueError,
         "must both be \\[N \\+ 1\\], got 3 and 2"),
        ({"cu_seqlens_q": torch.tensor([0, 3, 6], dtype=torch.int32)}, ValueError,
         "cu_seqlens_q must start at 0 and end at T=7, got 0 and 6"),
        ({"cu_seqlens_k": torch.tensor([0, 9, 8], dtype=torch.int32)}, ValueError,
         "cu_seqlens_k must be non-decreasing"),
        ({"max_seqlen_q": 3}, ValueError, "length 4 exceeds max_seqlen_q=3"),
        ({"max_seqlen_k": -1}, ValueError, "max_seqlen_k must be >= 0"),
        ({"max_seqlen_k": 5.0}, TypeError, "max_seqlen_k must be an int"),
        ({"q": torch.zeros(7, 4, 16, dtype=torch.float64)}, TypeError, "q must have dtype"),
        ({"q": torch.zeros(1, 7, 4, 16)}, ValueError, r"q must be 3-D \[T, H, D\]"),
        ({"k": torch.zeros(8, 3, 16), "v": torch.zeros(8, 3, 16)}, ValueError, "Hq=4 must be"),
        ({"k": torch.zeros(8, 2, 32), "v": torch.zeros(8, 2, 32)}, ValueError, "in head dim"),
        ({"v": torch.zeros(8, 2, 32)}, ValueError, "k and v must have the same shape"),
        ({"cu_seqlens_q": torch.tensor([0, 3, 7], dtype=torch.int32).to("meta")}, ValueError,
         "cu_seqlens_q is on meta"),
    ],
)  # fmt: skip
def test_bad_inputs(backend, change, exc, match):
    with fusedops.use_backend(backend), pytest.raises(exc, match="^attention_varlen: .*" + match):
        fusedops.attention_varlen(**_bad(**change))


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_opcheck(backend, device):
    q, k, v, cu_q, cu_k = _packed([3, 0, 5], [4, 2, 5], 4, 2, 16, torch.float32, device)
    args = (q, k, v, cu_q, cu_k, 5, 5, True, 0.25, 3, 2.0, True, backend)
    torch.library.opcheck(attention_varlen_op, args)
    with torch.no_grad():
        out, lse = attention_varlen_op(*args)
    dout = torch.randn_like(out)
    bwd = (q.detach(), k.detach(), v.detach(), out, lse, dout, cu_q, cu_k, 5, 5, True, 0.25, 3,
           2.0, backend)  # fmt: skip
    torch.library.opcheck(attention_varlen_backward_op, bwd)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_fullgraph(backend, device):
    """Forward and backward under torch.compile(fullgraph=True), no host sync in the graph
    (check_indices=False), window and softcap in the same graph."""
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph
    q, k, v, cu_q, cu_k = _packed([3, 6], [5, 6], 4, 2, 16, torch.float32, device)

    def fn(q, k, v, cu_q, cu_k):
        out = fusedops.attention_varlen(q, k, v, cu_q, cu_k, 6, 6, sliding_window=2,
                                        check_indices=False)  # fmt: skip
        return out + fusedops.attention_varlen(q, k, v, cu_q, cu_k, 6, 6, softcap=1.5,
                                               check_indices=False)  # fmt: skip

    with fusedops.use_backend(backend):
        out = torch.compile(fn, fullgraph=True, dynamic=False)(q, k, v, cu_q, cu_k)
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = reference.attention_varlen(q64, k64, v64, cu_q, cu_k, sliding_window=2)
    want = want + reference.attention_varlen(q64, k64, v64, cu_q, cu_k, softcap=1.5)
    assert max_abs_error(out, want) < 1e-5
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (q64, k64, v64)), strict=True):
        assert max_abs_error(g, w) < 1e-5


@pytest.mark.parametrize("backend,device", KERNEL_CASES[:1])  # the custom op: as on Triton
def test_torch_compile_dynamic(backend, device):
    """torch.compile(dynamic=True, fullgraph=True), forward and backward, at two packings (one
    graph; the boundaries are checked inside the op)."""
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph

    def fn(q, k, v, cu_q, cu_k, max_q, max_k):
        return fusedops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=0.3)

    compiled = torch.compile(fn, backend="aot_eager", dynamic=True, fullgraph=True)
    for seed, (lens_q, lens_k) in enumerate((([3, 6], [5, 6]), ([4, 2, 5], [4, 7, 5]))):
        q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, 4, 2, 16, torch.float32, device, seed=seed)
        with fusedops.use_backend(backend):
            out = compiled(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k))
            grads = torch.autograd.grad(out.sum(), (q, k, v))
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        want = reference.attention_varlen(q64, k64, v64, cu_q, cu_k, softmax_scale=0.3)
        assert max_abs_error(out, want) < 1e-5
        for g, w in zip(grads, torch.autograd.grad(want.sum(), (q64, k64, v64)), strict=True):
            assert max_abs_error(g, w) < 1e-5


@pytest.mark.parametrize("backend,device", backend_cases())
def test_gradients_are_zeros_when_no_sequence_has_keys_and_queries(backend, device):
    """The sequence with queries has no key and the one with keys no query: every gradient is a
    zero tensor of its input's shape (the CPU path left k.grad and v.grad None)."""
    q, k, v, cu_q, cu_k = _packed([4, 0], [0, 5], 4, 2, 16, torch.float32, device)
    with fusedops.use_backend(backend):
        out = fusedops.attention_varlen(q, k, v, cu_q, cu_k, 4, 5)
    assert bool((out == 0).all())
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape and bool((t.grad == 0).all())


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_double_backward_is_refused(backend, device):
    q, k, v, cu_q, cu_k = _packed([3, 2], [4, 2], 2, 1, 16, torch.float32, device)
    with fusedops.use_backend(backend):
        out = fusedops.attention_varlen(q, k, v, cu_q, cu_k, 3, 4)
    with pytest.raises(RuntimeError, match=r"^attention_varlen: double backward is not supported"):
        torch.autograd.grad(out.sum(), (q, k, v), create_graph=True)


def test_index_checks_go_through_host_index_checks(monkeypatch):
    """The boundary check of the Triton path asks ``host_index_checks`` (False while a CUDA
    graph is being captured): answering False, the call trusts the boundaries instead of
    raising (here max_seqlen_k understates a sequence: only the autotune bucket reads it)."""
    varlen = importlib.import_module("fusedops.ops.attention_varlen")  # the module, not the op

    asked = []

    def never(check_indices, device):
        asked.append((check_indices, torch.device(device).type))
        return False

    q, k, v, cu_q, cu_k = _packed([3, 4], [5, 6], 2, 1, 16, torch.float32, "cpu", grad=False)
    with fusedops.use_backend("triton"):
        with pytest.raises(ValueError, match="length 6 exceeds max_seqlen_k=5"):
            fusedops.attention_varlen(q, k, v, cu_q, cu_k, 4, 5)
        monkeypatch.setattr(varlen, "host_index_checks", never)
        out = fusedops.attention_varlen(q, k, v, cu_q, cu_k, 4, 5)
    assert asked == [(True, "cpu")]
    want = reference.attention_varlen(q.double(), k.double(), v.double(), cu_q, cu_k)
    assert max_abs_error(out, want) < 1e-5
