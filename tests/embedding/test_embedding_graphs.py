"""fused_embedding / FusedEmbedding under torch.compile(dynamic=True, fullgraph=True), inside a
CUDA graph capture (host index checks skipped, kernels mask), and with create_graph=True
(double backward refused at the first backward, naming the op)."""

from __future__ import annotations

import math

import pytest
import torch
from dynamo_helpers import compile_counted, op_backends
from helpers import KERNEL_CASES, assert_close, sinusoid_atol

import fusedops
from fusedops import reference
from fusedops.nn import FusedEmbedding
from fusedops.ops import embedding as embedding_ops

# Two shapes per compiled function: (batch, seq, vocab). Every size >= 2 (dynamo specializes 0
# and 1) and each differs, so a specialization on any of them would recompile.
SHAPES = ((2, 5, 9), (3, 7, 13))


def _check_grads(out, expected, leaves, leaves64):
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, upstream)
    want = torch.autograd.grad(expected, leaves64, upstream.double())
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_dynamic_fullgraph_op(backend, device):
    # The default scale, a symbolic sqrt(D) scale, a learned table and the sinusoid. (A scale
    # computed from a symbolic size reaches the op as a float: the graph is specialized on D.)
    dim = 8

    def fn(ids, weight, pos_weight):
        out = fusedops.fused_embedding(ids, weight)
        out = out + fusedops.fused_embedding(
            ids, weight, scale=math.sqrt(weight.shape[1]), pos_weight=pos_weight
        )
        return out + fusedops.fused_embedding(ids, weight, sinusoidal=True, position_offset=3)

    compiled, counter = compile_counted(fn)
    torch.manual_seed(0)
    frames = []
    for batch, seq, vocab in SHAPES:
        ids = torch.randint(0, vocab, (batch, seq), device=device)
        leaves = [torch.randn(n, dim, device=device, requires_grad=True) for n in (vocab, 16)]
        with fusedops.use_backend(backend):
            out = compiled(ids, *leaves)
        frames.append(counter.frame_count)
        w64, p64 = (t.detach().double().requires_grad_() for t in leaves)
        expected = reference.fused_embedding(ids, w64)
        expected = expected + reference.fused_embedding(
            ids, w64, scale=math.sqrt(dim), pos_weight=p64
        )
        expected = expected + reference.fused_embedding(
            ids, w64, sinusoidal=True, position_offset=3
        )
        assert_close(out, expected, atol_extra=sinusoid_atol("sinusoid", 16))
        _check_grads(out, expected, leaves, (w64, p64))
    assert frames[0] >= 1 and frames[1] == frames[0], f"recompiled for a new shape: {frames}"
    used = op_backends(counter, torch.ops.fusedops.fused_embedding.default)
    assert used == [backend] * 3, used


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_dynamic_fullgraph_module(backend, device):
    torch.manual_seed(1)
    modules = [
        FusedEmbedding(13, 12, padding_idx=2, scale="sqrt_dim", num_positions=16),
        FusedEmbedding(13, 12, scale=2.0, sinusoidal=True, sinusoid_base=500.0),
    ]
    modules = [m.to(device) for m in modules]
    compiled, counter = compile_counted(
        lambda ids: modules[0](ids) + modules[1](ids, position_offset=2)
    )
    frames = []
    for batch, seq in ((2, 5), (3, 7)):
        ids = torch.randint(0, 13, (batch, seq), device=device)
        with fusedops.use_backend(backend):
            out = compiled(ids)
        frames.append(counter.frame_count)
        leaves = [modules[0].weight, modules[0].pos_weight, modules[1].weight]
        w0, p0, w1 = (t.detach().double().requires_grad_() for t in leaves)
        expected = reference.fused_embedding(ids, w0, scale=math.sqrt(12), pos_weight=p0)
        expected = expected + reference.fused_embedding(
            ids, w1, scale=2.0, sinusoidal=True, sinusoid_base=500.0, position_offset=2
        )
        assert_close(out, expected, atol_extra=sinusoid_atol("sinusoid", 16))
        upstream = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, upstream)
        want = torch.autograd.grad(expected, (w0, p0, w1), upstream.double())
        want[0][2] = 0  # padding_idx row
        for got, ref in zip(grads, want, strict=True):
            assert_close(got, ref)
    assert frames[0] >= 1 and frames[1] == frames[0], f"recompiled for a new shape: {frames}"
    used = op_backends(counter, torch.ops.fusedops.fused_embedding.default)
    assert used == [backend] * 2, used


def test_reference_sinusoid_compiles_dynamic():
    # The reference backend traces the sinusoid's fp32 coefficient with a symbolic D.
    def fn(ids, weight):
        return fusedops.fused_embedding(ids, weight, sinusoidal=True, check_indices=False)

    compiled, _counter = compile_counted(fn)
    for (batch, seq, vocab), dim in zip(SHAPES, (8, 12), strict=True):
        ids = torch.randint(0, vocab, (batch, seq))
        weight = torch.randn(vocab, dim)
        with fusedops.use_backend("reference"):
            out = compiled(ids, weight)
        assert torch.equal(out, reference.fused_embedding(ids, weight, sinusoidal=True))


# ------------------------------------------------------------------------------------------
# CUDA graphs: host index checks are skipped during a capture
# ------------------------------------------------------------------------------------------


def test_host_checks_go_through_capture_rule(monkeypatch):
    # What a capture does to check_indices=True (host_index_checks says no): out-of-range ids
    # are masked by the kernel (the token term reads as zero), the rest is unchanged.
    ids = torch.tensor([[1, 40, -3, 2]])
    weight, pos_weight = torch.randn(9, 16), torch.randn(6, 16)
    calls = []

    def no_host_checks(check_indices, device):
        calls.append((check_indices, device))
        return False

    monkeypatch.setattr(embedding_ops, "host_index_checks", no_host_checks)
    with fusedops.use_backend("triton"):
        out = fusedops.fused_embedding(ids, weight, scale=2.0, pos_weight=pos_weight)
    assert calls == [(True, ids.device)]
    expected = reference.fused_embedding(ids.clamp(0, 8), weight, scale=2.0, pos_weight=pos_weight)
    expected[0, 1:3] = pos_weight[1:3]
    assert torch.equal(out, expected)


@pytest.mark.cuda
def test_cuda_graph_capture_with_default_checks():
    # check_indices=True (the default) inside torch.cuda.graph: captured after one warm-up,
    # replayed on new ids in the same static buffer.
    torch.manual_seed(0)
    device = torch.device("cuda")
    weight = torch.randn(50, 64, device=device, dtype=torch.float16)
    pos_weight = torch.randn(32, 64, device=device, dtype=torch.float16)
    static_ids = torch.randint(0, 50, (4, 32), device=device)

    def step():
        learned = fusedops.fused_embedding(static_ids, weight, scale=8.0, pos_weight=pos_weight)
        return learned, fusedops.fused_embedding(static_ids, weight, sinusoidal=True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: autotuning and compilation happen outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        learned, sinusoid = step()
    for _ in range(2):
        ids = torch.randint(0, 50, (4, 32), device=device)
        static_ids.copy_(ids)
        graph.replay()
        torch.cuda.synchronize()
        w64, p64 = weight.double(), pos_weight.double()
        expected = reference.fused_embedding(ids, w64, scale=8.0, pos_weight=p64)
        assert_close(learned, expected)
        expected = reference.fused_embedding(ids, w64, sinusoidal=True)
        assert_close(sinusoid, expected, atol_extra=sinusoid_atol("sinusoid", 32))
    # Outside a capture the default check still raises.
    static_ids[0, 0] = 50
    with pytest.raises(IndexError, match="fused_embedding: input_ids contains id 50"):
        step()


# ------------------------------------------------------------------------------------------
# Double backward
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_double_backward_refused_at_create_graph(backend, device):
    torch.manual_seed(2)
    ids = torch.randint(0, 9, (2, 5), device=device)
    weight = torch.randn(9, 8, device=device, requires_grad=True)
    pos_weight = torch.randn(6, 8, device=device, requires_grad=True)
    with fusedops.use_backend(backend):
        out = fusedops.fused_embedding(ids, weight, scale=1.5, pos_weight=pos_weight)
        with pytest.raises(RuntimeError, match="fused_embedding: double backward is not"):
            torch.autograd.grad(out.square().sum(), weight, create_graph=True)
        # Without create_graph the same backward gives the reference's gradients.
        grads = torch.autograd.grad(out.square().sum(), (weight, pos_weight))
    w64, p64 = weight.detach().double(), pos_weight.detach().double()
    w64.requires_grad_()
    p64.requires_grad_()
    expected = reference.fused_embedding(ids, w64, scale=1.5, pos_weight=p64)
    want = torch.autograd.grad(expected.square().sum(), (w64, p64))
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref)


def test_table_grad_refuses_a_grad_that_requires_grad():
    grad = torch.randn(2, 5, 8, requires_grad=True)
    ids = torch.randint(0, 9, (2, 5))
    with pytest.raises(RuntimeError, match="embedding_table_grad: grad requires grad"):
        embedding_ops.embedding_table_grad(grad, ids, 9)
    with torch.no_grad():
        got = embedding_ops.embedding_table_grad(grad, ids, 9, scale=2.0)
    rows = grad.detach().double().reshape(-1, 8)
    want = torch.zeros(9, 8, dtype=torch.float64).index_add_(0, ids.reshape(-1), rows)
    assert_close(got, 2.0 * want)
