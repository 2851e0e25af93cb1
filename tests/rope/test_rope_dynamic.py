"""apply_rotary, apply_rotary_varlen and RotaryEmbedding under
``torch.compile(dynamic=True, fullgraph=True)`` (forward and backward, default index checks), and
double backward."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, backend_cases

import fusedops
import fusedops.ops.rope as rope_ops
from fusedops import reference
from fusedops.nn import RotaryEmbedding


def _compiled(fn):
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another one's graph
    return torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")


def _grads(out, inputs, up):
    return torch.autograd.grad(out, inputs, up)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_apply_rotary_dynamic(backend, device):
    gen = torch.Generator().manual_seed(3)
    cos, sin = fusedops.rope_cos_sin(16, 20, device=device)

    def fn(q, k, positions):
        return fusedops.apply_rotary(q, k, cos, sin, positions=positions, interleaved=True)

    compiled = _compiled(fn)
    grad = backend != "reference"  # (the reference's backward is PyTorch's own)
    q = torch.randn(2, 3, 5, 16, generator=gen).to(device).requires_grad_(grad)
    k = torch.randn(2, 1, 5, 16, generator=gen).to(device).requires_grad_(grad)
    positions = torch.randint(0, 20, (2, 5), generator=gen).to(device)
    with fusedops.use_backend(backend):
        out_q, out_k = compiled(q, k, positions)
        up_q, up_k = torch.randn_like(out_q), torch.randn_like(out_k)
        grads = _grads((out_q, out_k), (q, k), (up_q, up_k)) if grad else ()
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    want_q, want_k = reference.apply_rotary(
        q64, k64, cos.double(), sin.double(), positions=positions, interleaved=True
    )
    assert_close(out_q, want_q)
    assert_close(out_k, want_k)
    if grad:
        want = _grads((want_q, want_k), (q64, k64), (up_q.double(), up_k.double()))
        for got, ref in zip(grads, want, strict=True):
            assert_close(got, ref)
    # check_indices=True (the default) still checks, when the compiled graph runs.
    with fusedops.use_backend(backend), pytest.raises(IndexError, match="apply_rotary: "):
        compiled(q.detach(), k.detach(), positions + 20)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_apply_rotary_varlen_dynamic(backend, device):
    cos, sin = fusedops.rope_cos_sin(8, 6, device=device)

    def fn(x, cu):
        return fusedops.apply_rotary_varlen(x, cos, sin, cu)

    compiled = _compiled(fn)
    cu = torch.tensor([0, 3, 3, 7], device=device)
    grad = backend != "reference"  # (the reference's backward is PyTorch's own)
    x = torch.randn(7, 2, 8, device=device, requires_grad=grad)
    with fusedops.use_backend(backend):
        out = compiled(x, cu)
        up = torch.randn_like(out)
        grads = _grads(out, x, up) if grad else ()
    x64 = x.detach().double().requires_grad_()
    want = reference.apply_rotary_varlen(x64, cos.double(), sin.double(), cu)
    assert_close(out, want)
    if grad:
        assert_close(grads[0], _grads(want, x64, up.double())[0])
    # The default check_indices=True still checks, when the compiled graph runs.
    bad = (
        ([0, 7, 7, 7], IndexError, "apply_rotary_varlen: .*position 6 outside"),
        ([0, 5, 3, 7], ValueError, "apply_rotary_varlen: cu_seqlens must be non-decreasing"),
    )
    for cu_list, exc, pattern in bad:
        cu = torch.tensor(cu_list, device=device)
        with fusedops.use_backend(backend), pytest.raises(exc, match=pattern):
            compiled(torch.randn(7, 2, 8, device=device), cu)


def test_rotary_embedding_dynamic():
    """The module on the default backend; a second size and offset reuse the graph."""
    rope = RotaryEmbedding(16, 24, base=100.0, rotary_dim=8)
    compiled = _compiled(lambda q, k, offset: rope(q, k, position_offset=offset))
    for seq, offset in ((2, 1), (4, 7)):
        q = torch.randn(1, 2, seq, 16, requires_grad=True)
        k = torch.randn(1, 1, seq, 16)
        out_q, out_k = compiled(q, k, offset)
        (grad,) = _grads(out_q, q, torch.ones_like(out_q))
        kw = {"position_offset": offset, "rotary_dim": 8}
        c64, s64 = rope.cos.double(), rope.sin.double()
        q64 = q.detach().double().requires_grad_()
        want_q, want_k = reference.apply_rotary(q64, k.double(), c64, s64, **kw)
        assert_close(out_q, want_q)
        assert_close(out_k, want_k)
        assert_close(grad, _grads(want_q, q64, torch.ones_like(want_q))[0])


@pytest.mark.parametrize("backend,device", backend_cases(reference=False))
def test_double_backward_matches_reference(backend, device):
    """The backward is the inverse rotation, run through the op itself: differentiable, so
    ``create_graph=True`` works (the gradient of the gradient with respect to the upstream
    gradient is a rotation back)."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 3, 8, generator=gen).to(device).requires_grad_()
    up = torch.randn(1, 2, 3, 8, generator=gen).to(device).requires_grad_()
    w = torch.randn(1, 2, 3, 8, generator=gen).to(device)
    cos, sin = fusedops.rope_cos_sin(8, 4, device=device)
    with fusedops.use_backend(backend):
        out, _ = fusedops.apply_rotary(q, None, cos, sin, interleaved=True)
        (grad,) = torch.autograd.grad(out, q, up, create_graph=True)
        (second,) = torch.autograd.grad((grad * w).sum(), up)
    q64, up64 = q.detach().double().requires_grad_(), up.detach().double().requires_grad_()
    ref, _ = reference.apply_rotary(q64, None, cos.double(), sin.double(), interleaved=True)
    (grad64,) = torch.autograd.grad(ref, q64, up64, create_graph=True)
    (second64,) = torch.autograd.grad((grad64 * w.double()).sum(), up64)
    assert_close(grad, grad64)
    assert_close(second, second64)


def test_opcheck_position_ops():
    """The custom ops that carry the value-reading checks into compiled graphs."""
    cu = torch.tensor([0, 2, 2, 5])
    want = torch.tensor([[0, 1, 0, 1, 2]])
    assert torch.equal(rope_ops.varlen_positions_op(cu, 5, 8, True), want)
    positions = torch.tensor([[3, 0, 7]])
    assert torch.equal(rope_ops.checked_positions_op(positions, 8), positions)
    torch.library.opcheck(rope_ops.varlen_positions_op, (cu, 5, 8, True))
    torch.library.opcheck(rope_ops.checked_positions_op, (positions, 8))
