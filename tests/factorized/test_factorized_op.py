"""factorized_embedding, the public op: every backend against the reference (forward and
gradients), the hot-row arguments, bad input, opcheck of both custom ops, torch.compile."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_close, backend_cases

import fusedops
from fusedops.ops.factorized_embedding import (
    factorized_embedding_backward_op,
    factorized_embedding_op,
    hot_ids_of,
    hot_slot_table,
)

V, R, D, P = 23, 5, 24, 16


def _inputs(dtype=torch.float32, device="cpu", *, hot=3, shape=(3, 7), seed=0):
    """ids [*shape] (hitting hot and cold tokens), a [V, R], b [R, D], hot ids [K] and rows
    [K, D], a positional table [P, D]: leaves that require grad."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, shape, generator=gen)
    hot_ids = torch.randperm(V, generator=gen)[:hot]
    ids.view(-1)[: min(hot, ids.numel())] = hot_ids[: ids.numel()]
    a = torch.randn(V, R, generator=gen)
    b = torch.randn(R, D, generator=gen) / R**0.5
    hot_rows = torch.randn(hot, D, generator=gen)
    pos = torch.randn(P, D, generator=gen)
    leaves = [t.to(device, dtype).requires_grad_() for t in (a, b, hot_rows, pos)]
    return ids.to(device), hot_ids.to(device), leaves


def _oracle(ids, hot_ids, leaves, **kwargs):
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    a, b, hot_rows, pos = leaves64
    out = fusedops.reference.factorized_embedding(
        ids, a, b, hot_ids=hot_ids, hot_rows=hot_rows, pos_weight=pos, **kwargs
    )
    return out, leaves64


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_grads_match_reference(backend, device, dtype):
    ids, hot_ids, leaves = _inputs(dtype, device)
    a, b, hot_rows, pos = leaves
    kwargs = {"scale": 1.5, "padding_idx": int(ids[1, 2]), "position_offset": 2}
    with fusedops.use_backend(backend):
        out = fusedops.factorized_embedding(
            ids, a, b, hot_ids=hot_ids, hot_rows=hot_rows, pos_weight=pos, **kwargs
        )
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, grad)
    want, leaves64 = _oracle(ids, hot_ids, leaves, **kwargs)
    assert out.dtype == dtype and out.shape == (3, 7, D)
    # a @ b sums R products: a few more ulps than a lookup in fp16/bf16.
    assert_close(out, want, rtol_scale=4)
    want_grads = torch.autograd.grad(want, leaves64, grad.double())
    # Gradients sum several rounded terms (the reference backend sums fp16/bf16 rows in fp16/
    # bf16): a few ulps of the largest gradient.
    eps = torch.finfo(dtype).eps
    for name, g, w in zip(("a", "b", "hot_rows", "pos"), grads, want_grads, strict=True):
        assert_close(g, w, rtol_scale=8, atol_extra=8 * eps * w.abs().max().item(), msg=name)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_hot_slots_equal_hot_ids(backend, device):
    ids, hot_ids, (a, b, hot_rows, _) = _inputs(device=device)
    slots = hot_slot_table(hot_ids, V)
    assert slots.dtype == torch.int32 and int((slots >= 0).sum()) == hot_ids.numel()
    assert torch.equal(hot_ids_of(slots), hot_ids.long())
    with fusedops.use_backend(backend), torch.no_grad():
        by_ids = fusedops.factorized_embedding(ids, a, b, hot_ids=hot_ids, hot_rows=hot_rows)
        by_slots = fusedops.factorized_embedding(ids, a, b, hot_slots=slots, hot_rows=hot_rows)
    assert torch.equal(by_ids, by_slots)
    # The hot tokens' rows are the exact rows, the others a @ b.
    is_hot = torch.isin(ids, hot_ids)
    exact = hot_rows[slots[ids[is_hot]].long()]
    assert torch.equal(by_ids[is_hot], exact.detach())


def test_no_hot_rows_is_a_times_b():
    ids, _, (a, b, _, _) = _inputs()
    with fusedops.use_backend("cpp"), torch.no_grad():
        out = fusedops.factorized_embedding(ids, a, b, scale=2.0)
        empty = fusedops.factorized_embedding(
            ids, a, b, hot_ids=torch.empty(0, dtype=torch.long), hot_rows=torch.empty(0, D)
        )
    assert_close(out, (a.double() @ b.double())[ids] * 2)
    assert_close(empty, (a.double() @ b.double())[ids])


@pytest.mark.parametrize(
    "change,error,match",
    [
        (
            {"b": torch.randn(R + 1, D)},
            ValueError,
            r"a \[V, r\] and b \[r, D\] need the same rank r >= 1",
        ),
        ({"b": torch.randn(R, D, dtype=torch.float64)}, TypeError, r"b must have dtype"),
        ({"b": torch.randn(R, D).half()}, TypeError, r"b dtype torch.float16 differs"),
        ({"a": torch.randn(V)}, ValueError, r"a must be 2-D"),
        ({"hot_ids": torch.tensor([1, 1, 2])}, ValueError, r"hot_ids must be distinct"),
        ({"hot_ids": torch.tensor([1, 2, V])}, IndexError, rf"hot_ids contains id {V}"),
        ({"hot_ids": torch.tensor([1, 2])}, ValueError, r"hot_ids must be \[K\] with K = 3"),
        ({"hot_ids": None}, ValueError, r"hot_rows must be given together"),
        ({"hot_rows": torch.randn(3, D + 1)}, ValueError, r"hot_rows must be \[K, 24\]"),
        (
            {"hot_slots": torch.zeros(V, dtype=torch.int32)},
            ValueError,
            r"pass hot_ids or hot_slots, not both",
        ),
        ({"scale": float("nan")}, ValueError, r"scale must be a finite number"),
        ({"padding_idx": V}, ValueError, rf"padding_idx {V} outside"),
        ({"pos_weight": torch.randn(P, D + 1)}, ValueError, r"pos_weight must be \[P, 24\]"),
    ],
)
def test_bad_arguments_name_the_op(change, error, match):
    ids, hot_ids, (a, b, hot_rows, _) = _inputs()
    kwargs = {"a": a, "b": b, "hot_ids": hot_ids, "hot_rows": hot_rows, **change}
    with pytest.raises(error, match=f"factorized_embedding: {match}"):
        fusedops.factorized_embedding(ids, **kwargs)


@pytest.mark.parametrize(
    "slots,match",
    [
        (torch.full((V,), -1, dtype=torch.int64), r"hot_slots must have dtype in \(int32\)"),
        (torch.full((V - 1,), -1, dtype=torch.int32), r"hot_slots must be \[23\]"),
        (torch.full((V,), 3, dtype=torch.int32), r"hot_slots contains slot 3 outside \[-1, 3\)"),
    ],
)
def test_bad_hot_slots(slots, match):
    ids, _, (a, b, hot_rows, _) = _inputs()
    with pytest.raises((TypeError, ValueError, IndexError), match=f"factorized_embedding: {match}"):
        fusedops.factorized_embedding(ids, a, b, hot_slots=slots, hot_rows=hot_rows)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_ids_and_positions_out_of_range_raise(backend, device):
    ids, hot_ids, (a, b, hot_rows, pos) = _inputs(device=device)
    bad = ids.clone()
    bad[2, 6] = V + 4
    with fusedops.use_backend(backend), pytest.raises(IndexError, match=rf"{V + 4}"):
        fusedops.factorized_embedding(bad, a, b, hot_ids=hot_ids, hot_rows=hot_rows)
    with fusedops.use_backend(backend), pytest.raises(IndexError, match=r"factorized_embedding"):
        fusedops.factorized_embedding(ids, a, b, pos_weight=pos, position_offset=P - 3)


@pytest.mark.parametrize("backend,device", backend_cases(reference=False))
def test_opcheck(backend, device):
    ids, hot_ids, leaves = _inputs(device=device)
    a, b, hot_rows, pos = leaves
    slots = hot_slot_table(hot_ids, V)
    args = (ids, a, b, slots, hot_rows, pos, None, 1.5, 1, 1, 1e4, 4, True, True, backend)
    torch.library.opcheck(factorized_embedding_op, args)
    plain = [t.detach() for t in leaves]
    grad = torch.randn(*ids.shape, D, device=device)
    bwd = (grad, ids, plain[0], plain[1], slots, 3, 1.5, 4, True, False, True, True, backend)
    torch.library.opcheck(factorized_embedding_backward_op, bwd)


def test_opcheck_cpp_ops():
    ids, hot_ids, leaves = _inputs()
    a, b, hot_rows, pos = (t.detach() for t in leaves)
    slots = hot_slot_table(hot_ids, V)
    fwd = (ids, a, b, slots, hot_rows, 2.0, pos, None, 3, 1, 1e4)
    torch.library.opcheck(torch.ops.fusedops.cpp_factorized_embedding_fwd.default, fwd)
    grad = torch.randn(*ids.shape, D)
    bwd = (grad, ids, a, b, slots, 3, 2.0, -1, [1, 1, 0])
    torch.library.opcheck(torch.ops.fusedops.cpp_factorized_embedding_bwd.default, bwd)


def test_torch_compile_fullgraph():
    ids, hot_ids, leaves = _inputs()
    slots = hot_slot_table(hot_ids, V)

    def f(ids, a, b, hot_rows, pos):
        return fusedops.factorized_embedding(
            ids, a, b, hot_slots=slots, hot_rows=hot_rows, pos_weight=pos, scale=2.0
        )

    torch._dynamo.reset()
    with fusedops.use_backend("cpp"):
        out = torch.compile(f, fullgraph=True, backend="aot_eager")(ids, *leaves)
        eager = f(ids, *leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        want = torch.autograd.grad(eager.square().sum(), leaves)
    torch.testing.assert_close(out, eager)
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w)
