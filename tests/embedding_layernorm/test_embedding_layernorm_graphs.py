"""fused_embedding_layernorm / FusedEmbeddingLayerNorm under
torch.compile(dynamic=True, fullgraph=True), inside a CUDA graph capture, with create_graph=True,
and their scalar (eps) checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamo_helpers import compile_counted, op_backends
from helpers import KERNEL_CASES, assert_close, capture_after_warmup
from test_embedding_layernorm import EPS, NUM_POS, make_inputs, reference64, run

import fusedops
from fusedops.nn import FusedEmbeddingLayerNorm
from fusedops.ops import embedding_layernorm as ops

OP = torch.ops.fusedops.fused_embedding_layernorm.default


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_dynamic_fullgraph_op_and_module(backend, device):
    torch.manual_seed(0)
    module = FusedEmbeddingLayerNorm(11, 16, NUM_POS, 3, eps=EPS, padding_idx=1).to(device)

    def fn(ids, tt, weight, pos, typ, ln_w, ln_b):
        out = fusedops.fused_embedding_layernorm(ids, weight, pos, typ, tt, ln_w, ln_b, EPS)
        return out + module(ids, tt, position_offset=1)

    compiled, counter = compile_counted(fn)
    frames = []
    for lead, seq in (((2,), 5), ((3,), 7)):
        ids, params, kwargs = make_inputs(lead, seq, 16, 11, torch.float32, device)
        kwargs["position_offset"] = 0
        leaves = [p.requires_grad_() for p in params]
        tt = kwargs["token_type_ids"]
        with fusedops.use_backend(backend):
            out = compiled(ids, tt, *leaves)
        frames.append(counter.frame_count)
        mod_params = [module.weight, module.pos_weight, module.type_weight]
        mod_params += [module.ln_weight, module.ln_bias]
        mod64 = [p.detach().double().requires_grad_() for p in mod_params]
        leaves64 = [p.detach().double().requires_grad_() for p in leaves]
        expected = reference64(ids, leaves64, kwargs)
        expected = expected + reference64(ids, mod64, {**kwargs, "position_offset": 1})
        assert_close(out, expected, rtol_scale=4)
        upstream = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves + mod_params, upstream)
        want = list(torch.autograd.grad(expected, leaves64 + mod64, upstream.double()))
        want[5] = want[5].index_fill(0, torch.tensor([1], device=device), 0)  # padding row
        for got, ref in zip(grads, want, strict=True):
            assert_close(got, ref, rtol_scale=8)
    assert frames[0] >= 1 and frames[1] == frames[0], f"recompiled for a new shape: {frames}"
    assert op_backends(counter, OP) == [backend] * 2


def test_host_checks_go_through_capture_rule(monkeypatch):
    # A capture (host_index_checks says no) leaves out-of-range indices to the kernel's
    # masking: the bad id adds nothing, the other rows are unchanged.
    ids, params, kwargs = make_inputs((1,), 4, 16, 4, torch.float32, "cpu", "no-type")
    ids[0, 1] = 10_000_000
    calls = []

    def no_host_checks(check_indices, device):
        calls.append(check_indices)
        return False

    monkeypatch.setattr(ops, "host_index_checks", no_host_checks)
    out = run("triton", ids, params, kwargs)
    assert calls == [True]
    want = run("triton", ids, params, kwargs, check_indices=False)
    assert torch.equal(out, want)
    x = params[1][kwargs["position_offset"] + 1]  # only the positional row is left
    ln = torch.nn.functional.layer_norm(x.double(), (16,), params[3].double(), params[4].double())
    assert_close(out[0, 1], ln.float())
    ids[0, 1] = 2
    assert_close(out[0, [0, 2, 3]], reference64(ids, params, kwargs)[0, [0, 2, 3]])


@pytest.mark.cuda
def test_cuda_graph_capture_with_default_checks():
    torch.manual_seed(0)
    device = torch.device("cuda")
    ids, params, kwargs = make_inputs((4,), 32, 768, 50, torch.float16, device)
    static_ids = ids.clone()
    tt = kwargs["token_type_ids"]

    def step():
        return fusedops.fused_embedding_layernorm(static_ids, *params[:3], tt, *params[3:], EPS)

    graph, static_out = capture_after_warmup(step)
    for _ in range(2):
        new_ids = torch.randint(0, 50, ids.shape, device=device)
        static_ids.copy_(new_ids)
        graph.replay()
        torch.cuda.synchronize()
        want = reference64(new_ids, params, {**kwargs, "position_offset": 0})
        assert_close(static_out, want, rtol_scale=2)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_double_backward_refused_at_create_graph(backend, device):
    ids, params, kwargs = make_inputs((2,), 5, 8, 10, torch.float32, device)
    leaves = [p.requires_grad_() for p in params]
    out = run(backend, ids, leaves, kwargs)
    with pytest.raises(RuntimeError, match="fused_embedding_layernorm: double backward is not"):
        torch.autograd.grad(out.square().sum(), leaves[0], create_graph=True)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    leaves64 = [p.detach().double().requires_grad_() for p in leaves]
    want = torch.autograd.grad(reference64(ids, leaves64, kwargs).square().sum(), leaves64)
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref, rtol_scale=4)


def test_numpy_and_tensor_eps():
    ids, params, kwargs = make_inputs((2,), 5, 8, 10, torch.float32, "cpu")
    eps = 2.0**-17  # exact in fp32, so every spelling below is the same number

    def call(eps):
        with fusedops.use_backend("cpp"):
            return fusedops.fused_embedding_layernorm(
                ids, *params[:3], kwargs["token_type_ids"], *params[3:], eps, None, 2
            )

    want = call(eps)
    params64 = [p.double() for p in params]
    tt = kwargs["token_type_ids"]
    expected = fusedops.reference.fused_embedding_layernorm(
        ids, *params64[:3], tt, *params64[3:], eps, None, 2
    )
    assert_close(want, expected, rtol_scale=4)
    for spelled in (np.float32(eps), torch.tensor(eps, dtype=torch.float64)):
        assert torch.equal(call(spelled), want), spelled
    with pytest.raises(ValueError, match="FusedEmbeddingLayerNorm: eps must be a finite number"):
        FusedEmbeddingLayerNorm(10, 8, eps=float("inf"))
    with pytest.raises(ValueError, match=r"FusedEmbeddingLayerNorm: eps must be >= 0, got -1\.0"):
        FusedEmbeddingLayerNorm(10, 8, eps=-1)
    assert FusedEmbeddingLayerNorm(10, 8, eps=np.float32(0.5)).eps == 0.5
