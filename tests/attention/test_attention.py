"""fusedops.attention: forward, lse and the three gradients against an fp64 reference with the
error bound, on every backend; opcheck; torch.compile fullgraph; FusedAttention.

Error bound (flash-attention's, ``helpers.check_attention``): the kernel's max error
against fp64 must be <= 2x the max error of the same computation done by PyTorch in the input
dtype (``reference.attention(compute_dtype=dtype)``), plus a small per-dtype floor. Under the
interpreter the Triton grid is kept small (interpreter cost is per program)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    DTYPES,
    HAS_CUDA,
    KERNEL_CASES,
    TRITON_DEVICE,
    backend_cases,
    check_attention,
    max_abs_error,
)

import fusedops
from fusedops import reference
from fusedops.ops.attention import attention_backward_op, attention_op


def _inputs(batch, hq, hkv, sq, sk, dim, dtype, device, *, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, sq, dim, generator=gen).to(dtype).to(device)
    k = torch.randn(batch, hkv, sk, dim, generator=gen).to(dtype).to(device)
    v = torch.randn(batch, hkv, sk, dim, generator=gen).to(dtype).to(device)
    if grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v


def _padding(batch, sk, device, *, seed=1, empty_row=False):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, sk, generator=gen) > 0.3
    mask[:, -1] = True  # the last key always valid (the decode case sees it)
    if empty_row:
        mask[-1] = False  # a batch with every key padded: every row empty
    return mask.to(device)


def check_case(backend, device, batch, hq, hkv, sq, sk, dim, dtype, causal, *, mask=None,
               grad=True, scale=None, seed=0, **options):  # fmt: skip
    """Forward, lse and (``grad``) the three gradients of one case (``helpers.check_attention``);
    ``options``: sliding_window, softcap."""
    q, k, v = _inputs(batch, hq, hkv, sq, sk, dim, dtype, device, seed=seed, grad=grad)
    gen = torch.Generator().manual_seed(seed + 7)
    dout = torch.randn(q.shape, generator=gen).to(dtype).to(device) if grad else None
    kw = dict(causal=causal, softmax_scale=scale, key_padding_mask=mask, **options)
    check_attention(backend, q, k, v, dout=dout, **kw)


# ---- the grid on the CPU backends (cpp = SDPA path, reference) ------------------------------

SEQS = [1, 17, 128, 257]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sk", SEQS)
@pytest.mark.parametrize("sq", SEQS)
@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_seq_grid(backend, device, sq, sk, causal):
    """Every (Sq, Sk) pair of tails, decode and Sq > Sk, forward and the three gradients."""
    check_case(backend, device, 1, 4, 2, sq, sk, 64, torch.float32, causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(1, 1), (8, 2), (9, 3)])
@pytest.mark.parametrize("dim", [16, 64, 80, 128])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_dim_heads_dtype(backend, device, dim, heads, dtype):
    mask = _padding(2, 33, device)
    check_case(backend, device, 2, *heads, 17, 33, dim, dtype, True, mask=mask)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_padding_and_empty_rows(backend, device, causal):
    """Padding combined with causal; a batch with every key padded and (Sq > Sk, causal)
    queries with no key return zeros, -inf lse, finite gradients."""
    mask = _padding(2, 9, device, empty_row=True)
    check_case(backend, device, 2, 4, 2, 13, 9, 16, torch.float32, causal, mask=mask)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty_rows_are_zero(backend, device):
    q, k, v = _inputs(1, 2, 1, 6, 3, 16, torch.float32, device)
    with fusedops.use_backend(backend):
        out, lse = fusedops.attention(q, k, v, causal=True, return_lse=True)
    # rows i with i + Sk - Sq < 0, i.e. i < 3, see no key
    assert torch.equal(out[:, :, :3].cpu(), torch.zeros(1, 2, 3, 16))
    assert torch.isinf(lse[:, :, :3]).all() and (lse[:, :, :3] < 0).all()
    assert torch.isfinite(lse[:, :, 3:]).all()


@pytest.mark.parametrize("sq,sk", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty_sequences(backend, device, sq, sk):
    """No queries: an empty output. No keys: every row is empty (zeros, lse -inf). The
    gradients reaching q, k and v are zeros, never NaN (q holds an inf to catch ``0 * q``)."""
    q, k, v = _inputs(2, 4, 2, sq, sk, 16, torch.float32, device)
    if sq:
        q[0, 0, 0, 0] = float("inf")
    for t in (q, k, v):
        t.requires_grad_()
    with fusedops.use_backend(backend):
        out, lse = fusedops.attention(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert (out == 0).all() and (torch.isinf(lse) & (lse < 0)).all()
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    for name, grad, like in zip(("dq", "dk", "dv"), grads, (q, k, v), strict=True):
        assert grad.shape == like.shape and bool((grad == 0).all()), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", backend_cases())
def test_decode(backend, device, dtype):
    """KV-cache decode: Sq = 1 sees every (unpadded) cached key under bottom-right causal."""
    check_case(backend, device, 2, 9, 3, 1, 40, 64, dtype, True, mask=_padding(2, 40, device))


@pytest.mark.parametrize("backend,device", backend_cases())
def test_softmax_scale_and_strided_views(backend, device):
    """[B, S, H, D].transpose(1, 2) views (stride(-1) == 1, no copy needed) and a custom scale."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, 4, 32, generator=gen).to(device).transpose(1, 2)
    kv = torch.randn(2, 11, 2, 64, generator=gen).to(device)
    k, v = kv[..., :32].transpose(1, 2), kv[..., 32:].transpose(1, 2)
    with fusedops.use_backend(backend):
        out = fusedops.attention(q, k, v, causal=True, softmax_scale=0.3)
    want = reference.attention(q.double(), k.double(), v.double(), causal=True, softmax_scale=0.3)
    assert max_abs_error(out, want) < 1e-5


# ---- Triton (interpreter on CPU: tiny grid) -------------------------------------------------

TRITON_SHAPES = [
    # (B, Hq, Hkv, Sq, Sk, D)
    (1, 1, 1, 17, 17, 16),
    (1, 2, 1, 1, 33, 64),  # decode, GQA
    (1, 3, 1, 20, 9, 80),  # Sq > Sk (empty rows), D not a power of two, group 3
]
if HAS_CUDA:
    TRITON_SHAPES += [
        (2, 8, 2, 128, 257, 128),
        (1, 9, 3, 257, 128, 64),
        (2, 8, 8, 257, 257, 80),
        (1, 4, 2, 128, 128, 256),
    ]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TRITON_SHAPES)
def test_triton(shape, dtype, causal):
    mask = _padding(shape[0], shape[4], TRITON_DEVICE) if causal else None
    check_case("triton", TRITON_DEVICE, *shape, dtype, causal, mask=mask)


def test_triton_grid_limit_is_a_clear_error():
    """B and Hq sit on CUDA's 65535-limited grid axes: beyond that the launcher says so."""
    q = torch.zeros(65536, 1, 1, 16, device=TRITON_DEVICE)
    with fusedops.use_backend("triton"), pytest.raises(ValueError, match="B and Hq up to 65535"):
        fusedops.attention(q, q, q)


# ---- custom op registration, torch.compile, module -------------------------------------------


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_opcheck(backend, device):
    q, k, v = _inputs(2, 4, 2, 5, 7, 16, torch.float32, device, grad=True)
    mask = _padding(2, 7, device)
    for args in (
        (q, k, v, None, True, 0.25, None, None, backend),
        (q, k, v, mask, False, 0.3, None, None, backend),
    ):
        torch.library.opcheck(attention_op, args)
    with torch.no_grad():
        out, lse = attention_op(q, k, v, mask, True, 0.25, None, None, backend)
    dout = torch.randn_like(out)
    args = (q.detach(), k.detach(), v.detach(), out, lse, dout, mask, True, 0.25, None, None)
    torch.library.opcheck(attention_backward_op, (*args, backend))


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph
    q, k, v = _inputs(1, 4, 2, 6, 9, 16, torch.float32, device, grad=True)
    mask = _padding(1, 9, device)

    def fn(q, k, v, mask):
        out = fusedops.attention(q, k, v, key_padding_mask=mask)
        out = out * 2 + fusedops.attention(q, k, v, causal=False)
        out = out + fusedops.attention(q, k, v, sliding_window=3)
        return out + fusedops.attention(q, k, v, sliding_window=2, softcap=1.5)

    with fusedops.use_backend(backend):
        out = torch.compile(fn, fullgraph=True, dynamic=False)(q, k, v, mask)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = reference.attention(q64, k64, v64, key_padding_mask=mask) * 2 + reference.attention(
        q64, k64, v64, causal=False
    )
    want = want + reference.attention(q64, k64, v64, sliding_window=3)
    want = want + reference.attention(q64, k64, v64, sliding_window=2, softcap=1.5)
    assert max_abs_error(out, want) < 1e-5
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (q64, k64, v64)), strict=True):
        assert max_abs_error(g, w) < 1e-5


@pytest.mark.parametrize("backend,device", backend_cases())
def test_torch_compile_inference(backend, device):
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph
    q, k, v = _inputs(1, 2, 2, 1, 9, 16, torch.float32, device)
    with fusedops.use_backend(backend), torch.no_grad():
        fn = torch.compile(
            lambda q, k, v: fusedops.attention(q, k, v, return_lse=True), fullgraph=True
        )
        out, lse = fn(q, k, v)
    want, want_lse = reference.attention(q.double(), k.double(), v.double(), return_lse=True)
    assert max_abs_error(out, want) < 1e-5 and max_abs_error(lse, want_lse) < 1e-5


def test_module():
    mod = fusedops.nn.FusedAttention(causal=True, softmax_scale=0.2)
    assert "causal=True" in repr(mod)
    q, k, v = _inputs(2, 4, 2, 5, 8, 16, torch.float32, "cpu")
    mask = _padding(2, 8, "cpu")
    want = reference.attention(q, k, v, softmax_scale=0.2, key_padding_mask=mask)
    assert max_abs_error(mod(q, k, v, key_padding_mask=mask), want) < 1e-5


def test_reference_matches_sdpa_math():
    """The spec itself: bottom-right causal equals SDPA's top-left mask shifted by Sk - Sq."""
    q, k, v = _inputs(1, 2, 2, 3, 8, 16, torch.float64, "cpu")
    got = reference.attention(q, k, v, causal=True)
    mask = torch.ones(3, 8, dtype=torch.bool).tril(diagonal=5)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert max_abs_error(got, want) < 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sq,sk", [(13, 9), (17, 17), (1, 30)])
def test_cpp_sdpa_autograd_path(sq, sk, causal):
    """Without return_lse the CPU path differentiates through SDPA itself (empty rows too)."""
    q, k, v = _inputs(2, 9, 3, sq, sk, 64, torch.float32, "cpu", grad=True)
    mask = _padding(2, sk, "cpu", empty_row=True)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    out, _ = check_attention(
        "cpp", q, k, v, dout=dout, return_lse=False, causal=causal, key_padding_mask=mask
    )
    assert out.grad_fn is not None and "fusedops" not in type(out.grad_fn).__name__.lower()


# ---- sliding window and softcap --------------------------------------------------------------

# (Hq, Hkv, Sq, Sk, D, sliding_window, softcap): windows below and above Sk, window 1, decode
# and Sq > Sk, GQA 8/1 and 9/3, head dims 64/80/128.
WINDOW_CASES = [
    (8, 1, 1, 40, 64, 5, None),
    (8, 1, 3, 40, 80, 1, None),
    (9, 3, 17, 17, 128, 4, None),
    (9, 3, 17, 40, 64, 64, None),
    (8, 1, 17, 5, 64, 3, None),
    (9, 3, 3, 17, 80, None, 2.0),
    (8, 1, 17, 40, 64, None, 30.0),
    (9, 3, 17, 17, 128, 7, 0.5),
    (8, 1, 1, 17, 64, 1, 5.0),
    (2, 1, 600, 1300, 16, 5, None),  # long: the CPU path runs SDPA by query blocks
]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=str)
@pytest.mark.parametrize("backend,device", KERNEL_CASES[:1])
def test_window_softcap(backend, device, case):
    """Forward, lse and gradients (random upstream gradient) with a window and/or softcap."""
    hq, hkv, sq, sk, dim, window, cap = case
    check_case(backend, device, 1, hq, hkv, sq, sk, dim, torch.float32, True,
               sliding_window=window, softcap=cap)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", backend_cases())
def test_window_softcap_padding_dtypes(backend, device, dtype):
    """Window + softcap + key padding in every dtype; padding leaves some rows with no key in
    their window (zeros, lse -inf)."""
    mask = _padding(2, 19, device, seed=4)
    mask[0, 10:] = False  # rows of batch 0 whose window lies in [10, 19) are empty
    check_case(backend, device, 2, 4, 2, 6, 19, 64, dtype, True, mask=mask, sliding_window=3,
               softcap=4.0)  # fmt: skip


TRITON_WINDOW_SHAPES = [
    # (B, Hq, Hkv, Sq, Sk, D, sliding_window, softcap)
    (1, 2, 1, 17, 40, 64, 5, None),
    (1, 3, 1, 3, 17, 80, 1, 2.0),
    (1, 2, 2, 1, 33, 16, 40, None),
    (1, 1, 1, 20, 9, 16, None, 0.5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TRITON_WINDOW_SHAPES, ids=str)
def test_triton_window_softcap(shape, dtype):
    *dims, window, cap = shape
    mask = _padding(dims[0], dims[4], TRITON_DEVICE)
    check_case("triton", TRITON_DEVICE, *dims, dtype, True, mask=mask, sliding_window=window,
               softcap=cap)  # fmt: skip


@pytest.mark.parametrize("sq,sk", [(7, 7), (3, 11), (1, 9)])
@pytest.mark.parametrize("window", [1, 4, 20])
def test_window_matches_transformers(sq, sk, window):
    """The window mask is Hugging Face's: ``sdpa_mask`` with
    ``sliding_window_causal_mask_function`` for queries at positions ``Sk - Sq ..`` (with
    padding) equals ``masks.attention_mask(..., sliding_window=w)``."""
    masking = pytest.importorskip("transformers.masking_utils")
    pad = _padding(2, sk, "cpu", seed=window)
    hf = masking.sdpa_mask(
        batch_size=2, q_length=sq, kv_length=sk, q_offset=sk - sq, attention_mask=pad,
        mask_function=masking.sliding_window_causal_mask_function(window),
        allow_is_causal_skip=False,
    )  # fmt: skip
    ours = fusedops.masks.attention_mask(
        sq, sk, causal=True, key_padding_mask=pad, sliding_window=window
    )
    assert torch.equal(hf, ours.expand_as(hf))


def test_window_cpu_path_runs_sdpa_and_softcap_runs_the_op():
    """On CPU a window is SDPA's explicit mask (SDPA's own backward); a softcap runs the custom
    op's plain PyTorch forward and hand-written backward."""
    q, k, v = _inputs(1, 4, 2, 9, 9, 16, torch.float32, "cpu", grad=True)
    with fusedops.use_backend("cpp"):
        windowed = fusedops.attention(q, k, v, sliding_window=3)
        capped = fusedops.attention(q, k, v, softcap=1.0)
    assert "fusedops" not in type(windowed.grad_fn).__name__.lower()
    assert "attention" in type(capped.grad_fn).__name__.lower()
    want = reference.attention(q.double(), k.double(), v.double(), sliding_window=3)
    assert max_abs_error(windowed, want) < 1e-5


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_opcheck_window_softcap(backend, device):
    q, k, v = _inputs(1, 4, 2, 5, 7, 16, torch.float32, device, grad=True)
    mask = _padding(1, 7, device)
    args = (q, k, v, mask, True, 0.25, 3, 2.0, backend)
    torch.library.opcheck(attention_op, args)
    with torch.no_grad():
        out, lse = attention_op(*args)
    dout = torch.randn_like(out)
    bwd = (q.detach(), k.detach(), v.detach(), out, lse, dout, mask, True, 0.25, 3, 2.0, backend)
    torch.library.opcheck(attention_backward_op, bwd)


def test_module_window_softcap():
    mod = fusedops.nn.FusedAttention(sliding_window=4, softcap=3.0)
    assert "sliding_window=4" in repr(mod) and "softcap=3.0" in repr(mod)
    q, k, v = _inputs(1, 4, 2, 5, 8, 16, torch.float32, "cpu")
    want = reference.attention(q, k, v, sliding_window=4, softcap=3.0)
    assert max_abs_error(mod(q, k, v), want) < 1e-5


@pytest.mark.parametrize("left", [False, True])
def test_attention_hf_window_softcap(left):
    """attention_hf with HF's sliding-window mask (left padding: HF unmasks the padded query
    rows) and sliding_window / softcap kwargs, as Mistral and Gemma-2 call it."""
    masking = pytest.importorskip("transformers.masking_utils")
    q, k, v = _inputs(2, 4, 2, 7, 7, 16, torch.float32, "cpu")
    pad = torch.ones(2, 7, dtype=torch.bool)
    if left:
        pad[1, :3] = False
    hf = masking.sdpa_mask(
        batch_size=2, q_length=7, kv_length=7, attention_mask=pad,
        mask_function=masking.sliding_window_causal_mask_function(3), allow_is_causal_skip=False,
    )  # fmt: skip
    hf = hf | ~hf.any(dim=-1, keepdim=True)  # HF's fix for rows with no key
    out, _ = fusedops.attention_hf(
        torch.nn.Module(), q, k, v, hf, scaling=0.3, sliding_window=3, softcap=2.0
    )
    want = reference.attention(q, k, v, softmax_scale=0.3, key_padding_mask=pad,
                               sliding_window=3, softcap=2.0)  # fmt: skip
    rows = pad[:, None, :, None].transpose(1, 2)  # [B, S, 1, 1]: unpadded query rows
    assert max_abs_error(out * rows, want.transpose(1, 2) * rows) < 1e-5


# ---- dynamic shapes, double backward ---------------------------------------------------------


def _reference_sum(q, k, v, k2, v2, mask):
    want = reference.attention(q, k, v) + reference.attention(q, k2, v2, key_padding_mask=mask)
    return want + reference.attention(q, k, v, causal=False, softmax_scale=0.3)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_dynamic(backend, device):
    """torch.compile(dynamic=True, fullgraph=True), forward and backward, at two sizes on the
    CPU path (one graph): plain (Hq = Hkv), GQA with a key padding mask, a custom scale. The
    sizes are symbolic: the SDPA path's enable_gqa was a SymBool."""
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph

    def fn(q, k, v, k2, v2, mask):
        out = fusedops.attention(q, k, v) + fusedops.attention(q, k2, v2, key_padding_mask=mask)
        return out + fusedops.attention(q, k, v, causal=False, softmax_scale=0.3)

    compiled = torch.compile(fn, backend="aot_eager", dynamic=True, fullgraph=True)
    sizes = ((5, 7), (6, 9)) if backend == "cpp" else ((5, 7),)  # the interpreter is slow
    for seed, (sq, sk) in enumerate(sizes):
        q, k, v = _inputs(1, 4, 4, sq, sk, 16, torch.float32, device, seed=seed, grad=True)
        _, k2, v2 = _inputs(1, 4, 2, sq, sk, 16, torch.float32, device, seed=seed + 5, grad=True)
        mask = _padding(1, sk, device, seed=seed)
        with fusedops.use_backend(backend):
            out = compiled(q, k, v, k2, v2, mask)
            grads = torch.autograd.grad(out.sum(), (q, k, v, k2, v2))
        inputs = [t.detach().double().requires_grad_() for t in (q, k, v, k2, v2)]
        want = _reference_sum(*inputs, mask)
        assert max_abs_error(out, want) < 1e-5
        for g, w in zip(grads, torch.autograd.grad(want.sum(), inputs), strict=True):
            assert max_abs_error(g, w) < 1e-5


def test_module_torch_compile_dynamic():
    """FusedAttention with softmax_scale / softcap under torch.compile(dynamic=True,
    fullgraph=True): the module's float attributes are traced as SymFloats (math.isfinite on
    one failed)."""
    torch._dynamo.reset()
    scaled = fusedops.nn.FusedAttention(softmax_scale=0.3)
    capped = fusedops.nn.FusedAttention(softcap=2.0, sliding_window=3)

    def fn(q, k, v):
        return scaled(q, k, v) + capped(q, k, v)

    compiled = torch.compile(fn, backend="aot_eager", dynamic=True, fullgraph=True)
    for seed, (sq, sk) in enumerate(((5, 7), (6, 9))):
        q, k, v = _inputs(2, 4, 2, sq, sk, 16, torch.float32, "cpu", seed=seed)
        want = reference.attention(q, k, v, softmax_scale=0.3)
        want = want + reference.attention(q, k, v, softcap=2.0, sliding_window=3)
        assert max_abs_error(compiled(q, k, v), want) < 1e-5


@pytest.mark.parametrize("options", [{}, {"softcap": 2.0}, {"return_lse": True}], ids=str)
@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_double_backward_is_refused(backend, device, options):
    """create_graph=True raises at the first backward, naming the op (the second backward used
    to fail with a message naming aten's or the backward op's internals)."""
    q, k, v = _inputs(1, 2, 1, 3, 5, 16, torch.float32, device, grad=True)
    with fusedops.use_backend(backend):
        out = fusedops.attention(q, k, v, **options)
    out = out[0] if options.get("return_lse") else out
    with pytest.raises(RuntimeError, match=r"^attention: double backward is not supported"):
        torch.autograd.grad(out.sum(), (q, k, v), create_graph=True)
    grads = torch.autograd.grad(out.sum(), (q, k, v))  # a plain backward still works
    assert all(bool(torch.isfinite(g).all()) for g in grads)
