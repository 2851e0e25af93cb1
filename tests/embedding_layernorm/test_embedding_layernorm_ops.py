"""fused_embedding_layernorm: bad input errors, opcheck of every custom op, torch.compile."""

from __future__ import annotations

import pytest
import torch
from dynamo_helpers import compile_counted, op_backends
from helpers import TRITON_DEVICE, backend_cases
from test_embedding_layernorm import EPS, make_inputs, run

import fusedops
import fusedops.ops.cpp_fakes  # loads fusedops._C: the cpp ops are called directly
from fusedops.ops import embedding_layernorm as ops


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize(
    "where,bad,pattern",
    [
        ("ids", 10, r"input_ids contains id 10 outside \[0, 10\)"),
        ("ids", -1, r"input_ids contains id -1 outside \[0, 10\)"),
        ("types", 3, r"token_type_ids contains id 3 outside \[0, 3\)"),
        ("positions", 40, r"position.* 40 outside .*\[0, 40\)"),
        ("offset", 38, r"position.*\[0, 40\)"),
    ],
)
def test_index_out_of_range(backend, device, where, bad, pattern):
    ids, params, kwargs = make_inputs((2,), 5, 8, 10, torch.float32, device)
    if where == "ids":
        ids[1, 3] = bad
    elif where == "types":
        kwargs["token_type_ids"][0, 1] = bad
    elif where == "positions":
        kwargs["positions"] = torch.tensor([0, 1, bad, 2, 3], device=device)
    else:
        kwargs["position_offset"] = bad
    with pytest.raises(IndexError, match=f"fused_embedding_layernorm: .*{pattern}"):
        run(backend, ids, params, kwargs)


def test_unchecked_indices_are_masked_not_read():
    # check_indices=False on the Triton path: out-of-range rows add nothing, never read OOB.
    ids, params, kwargs = make_inputs((1,), 4, 16, 4, torch.float32, TRITON_DEVICE, "no-type")
    params[3] = params[4] = None
    ids[0, 1] = 10_000_000
    out = run("triton", ids, params, kwargs, check_indices=False)
    x = params[1][kwargs["position_offset"] + 1]  # only the positional row is left
    want = torch.nn.functional.layer_norm(x, (16,), eps=EPS)
    torch.testing.assert_close(out[0, 1], want)


def _bad_call(change):
    ids, params, kwargs = make_inputs((2,), 5, 8, 10, torch.float32, "cpu")
    args = {
        "input_ids": ids,
        "weight": params[0],
        "pos_weight": params[1],
        "type_weight": params[2],
        "token_type_ids": kwargs["token_type_ids"],
        "ln_weight": params[3],
        "ln_bias": params[4],
        "eps": EPS,
    }
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        ({"input_ids": torch.zeros(2, 5)}, TypeError, "input_ids must have dtype"),
        ({"input_ids": torch.zeros((), dtype=torch.long)}, ValueError, "0-d"),
        ({"weight": torch.randn(10, 8).double()}, TypeError, "weight must have dtype"),
        ({"weight": torch.randn(10)}, ValueError, r"weight must be \[V, D\]"),
        ({"pos_weight": torch.randn(40, 7)}, ValueError, r"pos_weight must be \[rows, 8\]"),
        ({"type_weight": torch.randn(3, 8).half()}, TypeError, "type_weight dtype"),
        ({"ln_weight": torch.randn(9)}, ValueError, r"ln_weight must be \[8\]"),
        ({"ln_bias": [0.0] * 8}, TypeError, "ln_bias must be a torch.Tensor"),
        ({"eps": float("nan")}, ValueError, "eps must be a finite number"),
        ({"eps": float("inf")}, ValueError, "eps must be a finite number, got inf"),
        ({"eps": "1e-5"}, TypeError, "eps must be a real number, got str"),
        ({"eps": -1.0}, ValueError, "eps must be >= 0"),
        ({"type_weight": None}, ValueError, "token_type_ids given but type_weight is None"),
        ({"token_type_ids": torch.zeros(2, 5)}, TypeError, "token_type_ids must have dtype"),
        ({"token_type_ids": torch.zeros(3, 5, dtype=torch.long)}, ValueError, "broadcast"),
        ({"token_type_ids": None, "type_weight": torch.randn(0, 8)}, ValueError, "no rows"),
        (
            {"pos_weight": None, "positions": torch.zeros(5, dtype=torch.long)},
            ValueError,
            "positions given but pos_weight is None",
        ),
        ({"position_offset": -1}, ValueError, "position_offset must be >= 0"),
        ({"padding_idx": 10}, ValueError, r"padding_idx 10 outside \[-10, 10\)"),
        ({"ln_bias": torch.randn(8, device="meta")}, ValueError, "ln_bias is on meta"),
    ],
)
def test_bad_arguments(change, exc, pattern):
    with pytest.raises(exc, match=f"fused_embedding_layernorm: .*{pattern}"):
        fusedops.fused_embedding_layernorm(**_bad_call(change))


def test_triton_rejects_too_wide_rows():
    ids = torch.zeros(1, 2, dtype=torch.long, device=TRITON_DEVICE)
    weight = torch.randn(1, 4097, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match="fused_embedding_layernorm: D=4097 exceeds"):
        run(
            "triton",
            ids,
            [weight, None, None, None, None],
            {"token_type_ids": None, "position_offset": 0},
        )


def _op_args(backend, device, variant="bert"):
    ids, params, kwargs = make_inputs((2,), 5, 24, 10, torch.float32, device, variant)
    params = [None if p is None else p.requires_grad_() for p in params]
    weight, pos, typ, ln_w, ln_b = params
    return (
        ids,
        weight,
        pos,
        None,
        2,
        typ,
        kwargs["token_type_ids"],
        ln_w,
        ln_b,
        EPS,
        3,
        True,
        backend,
    )


@pytest.mark.parametrize("backend,device", backend_cases(reference=False))
@pytest.mark.parametrize("variant", ["bert", "type-row0", "no-affine"])
def test_opcheck(backend, device, variant):
    args = _op_args(backend, device, variant)
    torch.library.opcheck(ops.fused_embedding_layernorm_op, args)
    with torch.no_grad():
        out, mean, rstd = ops.fused_embedding_layernorm_op(*args)
    # The backward op's inputs as the autograd formula passes them (no grad: no double backward).
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    bwd_args = (
        torch.randn_like(out),
        *plain[0:9],
        mean,
        rstd,
        3,
        [1, 1, 1, int(args[7] is not None), int(args[8] is not None)],
        backend,
    )
    torch.library.opcheck(ops.fused_embedding_layernorm_backward_op, bwd_args)


def test_opcheck_cpp_ops():
    ids, params, kwargs = make_inputs((2,), 5, 24, 10, torch.float32, "cpu")
    weight, pos, typ, ln_w, ln_b = params
    tt = kwargs["token_type_ids"]
    fwd = (ids, weight, pos, None, 2, typ, tt, ln_w, ln_b, EPS)
    torch.library.opcheck(torch.ops.fusedops.cpp_embedding_layernorm_fwd.default, fwd)
    out, mean, rstd = torch.ops.fusedops.cpp_embedding_layernorm_fwd.default(*fwd)
    bwd = (
        torch.randn_like(out),
        ids,
        weight,
        pos,
        None,
        2,
        typ,
        tt,
        ln_w,
        ln_b,
        mean,
        rstd,
        3,
        [1, 0, 1, 1, 1],
    )
    torch.library.opcheck(torch.ops.fusedops.cpp_embedding_layernorm_bwd.default, bwd)


def test_torch_compile_fullgraph_cpp():
    ids, params, kwargs = make_inputs((2,), 6, 32, 10, torch.float32, "cpu")
    leaves = [p.clone().requires_grad_() for p in params]
    tt = kwargs["token_type_ids"]

    def f(ids, tt, weight, pos, typ, ln_w, ln_b):
        return fusedops.fused_embedding_layernorm(ids, weight, pos, typ, tt, ln_w, ln_b, EPS)

    compiled, counter = compile_counted(f, dynamic=False)
    with fusedops.use_backend("cpp"):
        out = compiled(ids, tt, *leaves)
        eager = f(ids, tt, *leaves)
    assert op_backends(counter, torch.ops.fusedops.fused_embedding_layernorm.default) == ["cpp"]
    torch.testing.assert_close(out, eager)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    with fusedops.use_backend("cpp"):
        want = torch.autograd.grad(eager.square().sum(), leaves)
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w)
