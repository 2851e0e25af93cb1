"""factorized_embedding / FactorizedEmbedding under torch.compile(dynamic=True, fullgraph=True),
inside a CUDA graph capture, with create_graph=True, and their scalar checks."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from dynamo_helpers import compile_counted, op_backends
from helpers import KERNEL_CASES, assert_close, capture_after_warmup, sinusoid_atol
from test_factorized_op import D, R, V, _inputs, _oracle

import fusedops
from fusedops.nn import FactorizedEmbedding
from fusedops.ops.factorized_embedding import hot_slot_table

OPS_MODULE = "fusedops.ops.factorized_embedding"  # fusedops.ops.factorized_embedding: a function

OP = torch.ops.fusedops.factorized_embedding.default


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_dynamic_fullgraph_op_and_module(backend, device):
    torch.manual_seed(0)
    module = FactorizedEmbedding(V, D, R, num_hot=2, scale="sqrt_dim", sinusoidal=True)
    module = module.to(device)

    def fn(ids, a, b, hot_rows, pos, slots):
        out = fusedops.factorized_embedding(
            ids, a, b, hot_slots=slots, hot_rows=hot_rows, pos_weight=pos
        )
        return out + module(ids)

    compiled, counter = compile_counted(fn)
    frames = []
    for shape in ((2, 6), (3, 7)):  # no size equal to another (duck sizing would tie them)
        ids, hot_ids, leaves = _inputs(device=device, shape=shape)
        slots = hot_slot_table(hot_ids, V)
        with fusedops.use_backend(backend):
            out = compiled(ids, *leaves, slots)
        frames.append(counter.frame_count)
        expected, leaves64 = _oracle(ids, hot_ids, leaves)
        mod_leaves = [module.a, module.b, module.hot_rows]
        a64, b64, h64 = (t.detach().double().requires_grad_() for t in mod_leaves)
        expected = expected + fusedops.reference.factorized_embedding(
            ids,
            a64,
            b64,
            hot_ids=module.hot_ids,
            hot_rows=h64,
            scale=math.sqrt(D),
            sinusoidal=True,
        )
        assert_close(out, expected, rtol_scale=4, atol_extra=sinusoid_atol("sinusoid", 16))
        upstream = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves + mod_leaves, upstream)
        want = torch.autograd.grad(expected, [*leaves64, a64, b64, h64], upstream.double())
        for got, ref in zip(grads, want, strict=True):
            assert_close(got, ref, rtol_scale=8)
    assert frames[0] >= 1 and frames[1] == frames[0], f"recompiled for a new shape: {frames}"
    assert op_backends(counter, OP) == [backend] * 2


def test_host_checks_go_through_capture_rule(monkeypatch):
    # A capture (host_index_checks says no): no host read of the ids or the hot ids; an
    # out-of-range id gets only the positional term, the rest is unchanged.
    ids, hot_ids, leaves = _inputs(shape=(2, 5))
    ids[1, 3] = V + 4
    calls = []

    def no_host_checks(check_indices, device):
        calls.append(check_indices)
        return False

    monkeypatch.setattr(importlib.import_module(OPS_MODULE), "host_index_checks", no_host_checks)
    a, b, hot_rows, pos = (t.detach() for t in leaves)
    with fusedops.use_backend("triton"):
        out = fusedops.factorized_embedding(
            ids, a, b, hot_ids=hot_ids, hot_rows=hot_rows, pos_weight=pos, scale=2.0
        )
    assert calls == [True, True]  # the hot ids' values; the ids and positions
    assert torch.equal(out[1, 3], pos[3])
    ids[1, 3] = 0
    want, _ = _oracle(ids, hot_ids, leaves, scale=2.0)
    want[1, 3] = pos[3]
    assert_close(out, want, rtol_scale=4)


@pytest.mark.cuda
def test_cuda_graph_capture_with_default_checks():
    torch.manual_seed(0)
    device = torch.device("cuda")
    ids, hot_ids, leaves = _inputs(device=device, shape=(4, 32))
    a, b, hot_rows, _pos = (t.detach() for t in leaves)
    static_ids = ids.clone()

    def step():
        return fusedops.factorized_embedding(
            static_ids, a, b, hot_ids=hot_ids, hot_rows=hot_rows, sinusoidal=True
        )

    graph, static_out = capture_after_warmup(step)
    for _ in range(2):
        new_ids = torch.randint(0, V, ids.shape, device=device)
        static_ids.copy_(new_ids)
        graph.replay()
        torch.cuda.synchronize()
        want = fusedops.reference.factorized_embedding(
            new_ids,
            a.double(),
            b.double(),
            hot_ids=hot_ids,
            hot_rows=hot_rows.double(),
            sinusoidal=True,
        )
        assert_close(static_out, want, rtol_scale=4, atol_extra=sinusoid_atol("sinusoid", 32))


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_double_backward_refused_at_create_graph(backend, device):
    ids, hot_ids, leaves = _inputs(device=device, shape=(2, 5))
    a, b, hot_rows, pos = leaves
    with fusedops.use_backend(backend):
        out = fusedops.factorized_embedding(
            ids, a, b, hot_ids=hot_ids, hot_rows=hot_rows, pos_weight=pos
        )
        with pytest.raises(RuntimeError, match="factorized_embedding: double backward is not"):
            torch.autograd.grad(out.square().sum(), a, create_graph=True)
        grads = torch.autograd.grad(out.square().sum(), leaves)
    expected, leaves64 = _oracle(ids, hot_ids, leaves)
    want = torch.autograd.grad(expected.square().sum(), leaves64)
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref, rtol_scale=8)


def test_scalar_arguments():
    ids, hot_ids, leaves = _inputs(shape=(2, 5))
    a, b, hot_rows, _pos = (t.detach() for t in leaves)
    kwargs = {"hot_ids": hot_ids, "hot_rows": hot_rows, "sinusoidal": True}
    for base in (float("inf"), float("nan")):
        with pytest.raises(
            ValueError, match="factorized_embedding: sinusoid_base must be a finite number"
        ):
            fusedops.factorized_embedding(ids, a, b, sinusoid_base=base, **kwargs)
    want = fusedops.factorized_embedding(ids, a, b, scale=2.0, sinusoid_base=500.0, **kwargs)
    expected = fusedops.reference.factorized_embedding(
        ids, a.double(), b.double(), scale=2.0, sinusoid_base=500.0, **kwargs
    )
    assert_close(want, expected, rtol_scale=4, atol_extra=sinusoid_atol("sinusoid", 16))
    for scale, base in ((np.float32(2.0), np.int64(500)), (torch.tensor(2.0), torch.tensor(5e2))):
        out = fusedops.factorized_embedding(ids, a, b, scale=scale, sinusoid_base=base, **kwargs)
        assert torch.equal(out, want), (scale, base)
    with pytest.raises(ValueError, match="FactorizedEmbedding: sinusoid_base must be a finite"):
        FactorizedEmbedding(V, D, R, sinusoidal=True, sinusoid_base=float("inf"))
    with pytest.raises(ValueError, match="FactorizedEmbedding: scale must be a finite number"):
        FactorizedEmbedding(V, D, R, scale=float("-inf"))
