"""FusedEmbedding module, custom-op registration (opcheck) and torch.compile."""

from __future__ import annotations

import math

import pytest
import torch
from dynamo_helpers import compile_counted, op_backends
from helpers import KERNEL_CASES, assert_close, backend_cases
from torch import nn

import fusedops
from fusedops import reference
from fusedops.nn import FusedEmbedding


@pytest.mark.parametrize("backend,device", backend_cases())
def test_drop_in_for_nn_embedding(backend, device):
    torch.manual_seed(0)
    emb = nn.Embedding(20, 12, padding_idx=3).to(device)
    fused = FusedEmbedding.from_embedding(emb)
    assert fused.weight is emb.weight  # shared, so tied weights stay tied
    ids = torch.randint(0, 20, (2, 9), device=device)
    ids[0, 0] = 3
    with fusedops.use_backend(backend):
        out = fused(ids)
    assert_close(out, emb(ids))
    upstream = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, emb.weight, upstream)
    (want,) = torch.autograd.grad(emb(ids), emb.weight, upstream)
    assert_close(got, want)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_module_with_positions(backend, device):
    torch.manual_seed(1)
    tok, pos = nn.Embedding(30, 16).to(device), nn.Embedding(64, 16).to(device)
    fused = FusedEmbedding.from_embedding(tok, pos_embedding=pos, scale="sqrt_dim")
    ids = torch.randint(0, 30, (3, 7), device=device)
    with fusedops.use_backend(backend):
        out = fused(ids, position_offset=5)
    expected = tok(ids) * math.sqrt(16) + pos(torch.arange(5, 12, device=device))
    assert_close(out, expected)
    assert "scale=4" in repr(fused) and "num_positions=64" in repr(fused)


def test_module_constructor_and_state_dict():
    m = FusedEmbedding(11, 6, padding_idx=-1, num_positions=9, scale=2.0)
    assert m.padding_idx == 10 and torch.all(m.weight[10] == 0)
    m2 = FusedEmbedding(11, 6, padding_idx=-1, num_positions=9, scale=2.0)
    m2.load_state_dict(m.state_dict())
    ids = torch.randint(0, 11, (2, 4))
    assert torch.equal(m(ids), m2(ids))
    s = FusedEmbedding(11, 6, sinusoidal=True)
    expected = reference.fused_embedding(ids, s.weight, sinusoidal=True)
    assert_close(s(ids), expected, atol_extra=1e-6)
    with pytest.raises(ValueError, match="FusedEmbedding: num_positions and sinusoidal"):
        FusedEmbedding(11, 6, num_positions=4, sinusoidal=True)
    with pytest.raises(ValueError, match="FusedEmbedding: padding_idx 11"):
        FusedEmbedding(11, 6, padding_idx=11)


def test_from_embedding_rejects_unsupported_options():
    with pytest.raises(ValueError, match=r"unsupported options.*max_norm"):
        FusedEmbedding.from_embedding(nn.Embedding(5, 4, max_norm=1.0))
    with pytest.raises(ValueError, match=r"unsupported options.*sparse"):
        FusedEmbedding.from_embedding(nn.Embedding(5, 4, sparse=True))
    with pytest.raises(TypeError, match=r"embedding must be nn\.Embedding"):
        FusedEmbedding.from_embedding(nn.Linear(5, 4))


def _op_args(backend, device, mode):
    torch.manual_seed(2)
    ids = torch.randint(0, 9, (2, 5), device=device)
    weight = torch.randn(9, 12, device=device, requires_grad=True)
    pos_weight = torch.randn(8, 12, device=device, requires_grad=True) if mode == 1 else None
    positions = torch.randint(0, 8, (2, 5), device=device) if mode else None
    return (ids, weight, pos_weight, positions, 1.5, 0, mode, 10000.0, 4, True, True, backend)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_opcheck_forward(backend, device, mode):
    torch.library.opcheck(
        torch.ops.fusedops.fused_embedding.default, _op_args(backend, device, mode)
    )


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_opcheck_backward(backend, device):
    grad = torch.randn(2, 5, 12, device=device)
    ids = torch.randint(0, 9, (2, 5), device=device)
    for det in (True, False):
        torch.library.opcheck(
            torch.ops.fusedops.fused_embedding_backward.default,
            (grad, ids, 9, 2.0, 3, det, backend),
        )


def test_opcheck_cpp_ops():
    ids = torch.randint(0, 9, (2, 5))
    weight = torch.randn(9, 12)
    pos_weight = torch.randn(8, 12)
    for mode, pw in ((0, None), (1, pos_weight), (2, None)):
        torch.library.opcheck(
            torch.ops.fusedops.cpp_embedding_fwd.default,
            (ids, weight, 1.5, pw, None, 1, mode, 10000.0),
        )
    grad = torch.randn(2, 5, 12)
    torch.library.opcheck(torch.ops.fusedops.cpp_embedding_bwd.default, (grad, ids, 9, 2.0, 3))


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_fullgraph(backend, device):
    torch.manual_seed(3)
    ids = torch.randint(0, 9, (2, 5), device=device)
    weight = torch.randn(9, 12, device=device, requires_grad=True)
    pos_weight = torch.randn(8, 12, device=device, requires_grad=True)

    def fn(ids, weight, pos_weight):
        out = fusedops.fused_embedding(ids, weight, scale=2.0, pos_weight=pos_weight)
        return fusedops.fused_embedding(ids, weight, sinusoidal=True) + out

    compiled, counter = compile_counted(fn, dynamic=False)
    with fusedops.use_backend(backend):
        out = compiled(ids, weight, pos_weight)
        grads = torch.autograd.grad(out.sum(), (weight, pos_weight))
    # The graph runs the requested backend's kernels (not a graph traced under another one).
    assert op_backends(counter, torch.ops.fusedops.fused_embedding.default) == [backend] * 2
    w64, p64 = weight.double(), pos_weight.double()
    expected = reference.fused_embedding(ids, w64, scale=2.0, pos_weight=p64)
    expected = expected + reference.fused_embedding(ids, w64, sinusoidal=True)
    assert_close(out, expected, atol_extra=1e-6)
    want = torch.autograd.grad(expected.sum(), (w64, p64))
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref)


def test_torch_compile_inference_cpp():
    # Without autograd the cpp backend calls the C++ op directly; it must trace as well.
    ids = torch.randint(0, 9, (2, 5))
    weight = torch.randn(9, 12)
    pos_weight = torch.randn(8, 12)

    def fn(ids, weight, pos_weight):
        return fusedops.fused_embedding(ids, weight, scale=2.0, pos_weight=pos_weight)

    compiled, counter = compile_counted(fn, dynamic=False)
    with fusedops.use_backend("cpp"), torch.no_grad():
        out = compiled(ids, weight, pos_weight)
    assert op_backends(counter, torch.ops.fusedops.fused_embedding.default) == ["cpp"]
    expected = reference.fused_embedding(
        ids, weight.double(), scale=2.0, pos_weight=pos_weight.double()
    )
    assert_close(out, expected)
