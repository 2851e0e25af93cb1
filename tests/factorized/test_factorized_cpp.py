"""The C++ CPU kernels of the factorized embedding, called directly through
``torch.ops.fusedops.cpp_factorized_embedding_fwd`` / ``cpp_factorized_embedding_bwd``: forward
and gradients against the fp64 reference, index and argument errors, opcheck, and a backward
that is bit-identical for any thread count."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_close, sinusoid_atol

import fusedops.ops.cpp_fakes  # noqa: F401  (loads fusedops._C: the cpp ops are called directly)
from fusedops import reference

FWD = torch.ops.fusedops.cpp_factorized_embedding_fwd.default
BWD = torch.ops.fusedops.cpp_factorized_embedding_bwd.default
POS_NONE, POS_LEARNED, POS_SINUSOID = 0, 1, 2

# (V, r, D, ids shape, K): rank 1 and 37, one partial column panel (D < 48) and several (D > 96),
# more tokens than one forward tile (128) and more distinct ids than one backward tile (64).
CASES = [
    (20, 1, 5, (1, 3), 0),
    (50, 37, 53, (2, 7), 3),
    (97, 64, 101, (3, 11), 5),
    (300, 130, 97, (2, 150), 9),
]


# The error tests' inputs: V=50, r=4, D=8, ids [2, 7], K=3 (a 12-row positional table).
ERROR_CASE = (50, 4, 8, (2, 7), 3)


def _strided(t: torch.Tensor, pad: int) -> torch.Tensor:
    """``t`` [rows, cols] as a view with row stride ``cols + pad`` (stride(1) stays 1)."""
    wide = torch.full((t.shape[0], t.shape[1] + pad), float("nan"), dtype=t.dtype)
    wide[:, : t.shape[1]] = t
    return wide[:, : t.shape[1]]


def _make(case, dtype, *, seed=0, strided=False, id_dtype=torch.int64):
    """ids, a [V, r], b [r, D], hot_ids [K], hot_slots [V] int32, hot_rows [K, D],
    pos_weight [P, D]; ids hit hot and factor tokens."""
    num_rows, rank, dim, shape, num_hot = case
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_rows, shape, generator=gen)
    hot_ids = torch.randperm(num_rows, generator=gen)[:num_hot]
    flat = ids.view(-1)
    flat[: min(num_hot, flat.numel())] = hot_ids[: flat.numel()]
    a = (torch.randn(num_rows, rank, generator=gen) / rank**0.5).to(dtype)
    b = torch.randn(rank, dim, generator=gen).to(dtype)
    hot_rows = torch.randn(num_hot, dim, generator=gen).to(dtype)
    pos_weight = torch.randn(shape[-1] + 5, dim, generator=gen).to(dtype)
    if strided:
        a, b, hot_rows, pos_weight = (_strided(t, 3) for t in (a, b, hot_rows, pos_weight))
    slots = torch.full((num_rows,), -1, dtype=torch.int32)
    slots[hot_ids] = torch.arange(num_hot, dtype=torch.int32)
    return ids.to(id_dtype), a, b, hot_ids, slots, hot_rows, pos_weight


def _poison_heap(numel: int, dtype: torch.dtype) -> None:
    """Free a NaN-filled block of an output's size, so the allocator likely hands that memory
    to the next output: elements a kernel leaves unwritten then show up as NaN."""
    torch.full((numel,), float("nan"), dtype=dtype)


def _forward(ids, a, b, slots, hot_rows, pos_weight, mode, *, positions=None, offset=2):
    num_hot = hot_rows.shape[0]
    _poison_heap(ids.numel() * b.shape[1], a.dtype)
    return FWD(
        ids,
        a,
        b,
        slots if num_hot else None,
        hot_rows if num_hot else None,
        1.7,
        pos_weight if mode == POS_LEARNED else None,
        positions,
        offset,
        mode,
        10000.0,
    )


def _oracle(ids, a, b, hot_ids, hot_rows, pos_weight, mode, *, positions=None, offset=2, pad=None):
    """The fp64 reference on leaves that require grad: (out, [a, b, hot_rows])."""
    leaves = [t.detach().double().requires_grad_() for t in (a, b, hot_rows)]
    out = reference.factorized_embedding(
        ids,
        leaves[0],
        leaves[1],
        hot_ids=hot_ids if hot_ids.numel() else None,
        hot_rows=leaves[2] if hot_ids.numel() else None,
        scale=1.7,
        pos_weight=pos_weight.double() if mode == POS_LEARNED else None,
        positions=positions,
        position_offset=offset,
        sinusoidal=mode == POS_SINUSOID,
        padding_idx=pad,
    )
    return out, leaves


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"V{c[0]}-r{c[1]}-D{c[2]}-K{c[4]}")
@pytest.mark.parametrize(
    "mode", [POS_NONE, POS_LEARNED, POS_SINUSOID], ids=["none", "learned", "sinusoid"]
)
def test_forward_matches_reference(dtype, case, mode):
    id_dtype = torch.int32 if case[1] % 2 else torch.int64
    ids, a, b, hot_ids, slots, hot_rows, pos_weight = _make(case, dtype, id_dtype=id_dtype)
    out = _forward(ids, a, b, slots, hot_rows, pos_weight, mode)
    want, _ = _oracle(ids, a, b, hot_ids, hot_rows, pos_weight, mode)
    assert out.dtype == dtype and out.shape == (*ids.shape, case[2])
    max_pos = 2 + ids.shape[-1]
    # a @ b sums r products: a few more ulps than a plain lookup.
    assert_close(
        out,
        want,
        rtol_scale=4,
        atol_extra=sinusoid_atol("sinusoid" if mode == POS_SINUSOID else "none", max_pos),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", [POS_LEARNED, POS_SINUSOID], ids=["learned", "sinusoid"])
@pytest.mark.parametrize("layout", ["per-token", "repeated", "strided"])
def test_forward_positions_and_strides(dtype, mode, layout):
    # Explicit positions: different per batch row (per-token positional rows), or the same for
    # every batch row (one table of rows), and tables with a row stride > their width.
    case = (61, 50, 70, (3, 9), 4)
    ids, a, b, hot_ids, slots, hot_rows, pos_weight = _make(
        case, dtype, seed=1, strided=layout == "strided", id_dtype=torch.int32
    )
    gen = torch.Generator().manual_seed(2)
    if layout == "repeated":
        positions = torch.randperm(pos_weight.shape[0], generator=gen)[:9].expand(3, 9)
        positions = positions.contiguous()
    else:
        positions = torch.randint(0, pos_weight.shape[0], (3, 9), generator=gen)
    out = _forward(ids, a, b, slots, hot_rows, pos_weight, mode, positions=positions)
    want, _ = _oracle(ids, a, b, hot_ids, hot_rows, pos_weight, mode, positions=positions)
    atol = sinusoid_atol("sinusoid" if mode == POS_SINUSOID else "none", pos_weight.shape[0])
    assert_close(out, want, rtol_scale=4, atol_extra=atol)


def _check_grads(got, want, dtype):
    for name, g, w in zip(("a", "b", "hot_rows"), got, want, strict=True):
        assert g.dtype == dtype, name
        # Sums of many products: allow a few ulps of the largest element.
        scale = w.abs().max().item() if w.numel() else 0.0
        assert_close(g, w, rtol_scale=4, atol_extra=4e-6 * scale, msg=name)


# (case, padding): none, a factor token, or a hot token that occurs in the ids.
BWD_CASES = [(c, pad) for c in CASES for pad in ("none", "factor", "hot") if c[4] or pad != "hot"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case,pad",
    BWD_CASES,
    ids=lambda c: f"V{c[0]}-r{c[1]}-D{c[2]}-K{c[4]}" if isinstance(c, tuple) else c,
)
def test_backward_matches_reference(dtype, case, pad):
    id_dtype = torch.int64 if case[1] % 2 else torch.int32
    ids, a, b, hot_ids, slots, hot_rows, pos_weight = _make(
        case, dtype, seed=3, strided=case[1] == 64, id_dtype=id_dtype
    )
    num_hot = hot_ids.numel()
    is_hot = slots[ids.long()] >= 0
    pool = ids[is_hot] if pad == "hot" else ids[~is_hot]
    padding_idx = None if pad == "none" else int(pool[-1])
    out, leaves = _oracle(ids, a, b, hot_ids, hot_rows, pos_weight, POS_NONE, pad=padding_idx)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    _poison_heap(a.numel(), dtype)
    got = BWD(
        grad,
        ids,
        a,
        b,
        slots if num_hot else None,
        num_hot,
        1.7,
        -1 if padding_idx is None else padding_idx,
        [1, 1, 1],
    )
    want = torch.autograd.grad(out, leaves, grad.double(), allow_unused=True)
    want = [w if w is not None else torch.zeros_like(t) for w, t in zip(want, leaves, strict=True)]
    _check_grads(got, want, dtype)


@pytest.mark.parametrize("needs", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0), (1, 0, 1)])
def test_backward_needs(needs):
    case = (40, 9, 20, (2, 6), 3)
    ids, a, b, _, slots, _, _ = _make(case, torch.float32, seed=5)
    grad = torch.randn(2, 6, 20)
    got = BWD(grad, ids, a, b, slots, 3, 0.5, -1, list(needs))
    full = BWD(grad, ids, a, b, slots, 3, 0.5, -1, [1, 1, 1])
    for need, g, f in zip(needs, got, full, strict=True):
        if need:
            assert torch.equal(g, f)
        else:
            assert g.shape == (0,)


def test_no_factor_tokens_and_empty_input():
    # Every token hot or padding: grad_a and grad_b are all zero, grad_hot sums the hot rows.
    _, a, b, _, _, hot_rows, _ = _make((10, 4, 6, (2, 3), 2), torch.float32, seed=6)
    slots = torch.full((10,), -1, dtype=torch.int32)
    slots[2], slots[5] = 0, 1
    ids = torch.tensor([[2, 7, 5], [7, 2, 7]])
    grad = torch.randn(2, 3, 6)
    ga, gb, gh = BWD(grad, ids, a, b, slots, 2, 2.0, 7, [1, 1, 1])
    assert torch.equal(ga, torch.zeros_like(a)) and torch.equal(gb, torch.zeros_like(b))
    torch.testing.assert_close(gh, torch.stack([grad[0, 0] + grad[1, 1], grad[0, 2]]) * 2.0)
    # No tokens at all.
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = FWD(empty, a, b, slots, hot_rows, 1.0, None, None, 0, POS_SINUSOID, 10000.0)
    assert out.shape == (2, 0, 6)
    ga, gb, gh = BWD(torch.zeros(2, 0, 6), empty, a, b, slots, 2, 1.0, -1, [1, 1, 1])
    assert not ga.any() and not gb.any() and not gh.any()


def test_backward_bit_identical_across_threads():
    case = (300, 100, 150, (4, 120), 7)
    ids, a, b, _, slots, _, _ = _make(case, torch.bfloat16, seed=7)
    grad = torch.randn(4, 120, 150).to(torch.bfloat16)
    args = (grad, ids, a, b, slots, 7, 1.3, int(ids[0, 5]), [1, 1, 1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = BWD(*args)
        torch.set_num_threads(2)
        two = BWD(*args)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x, y)
    assert one[0].abs().sum() > 0 and one[1].abs().sum() > 0 and one[2].abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_sums_long_token_runs_in_chunks(dtype):
    """More than one 256-token chunk in every reduction (1999 tokens; half of them one id): the
    chunked sums match fp64 and stay bit-identical for any thread count."""
    gen = torch.Generator().manual_seed(3)
    V, R, D, N = 1031, 37, 101, 1999
    a = torch.randn(V, R, generator=gen).to(dtype)
    b = torch.randn(R, D, generator=gen).to(dtype)
    ids = torch.randint(0, V, (N,), generator=gen)
    ids[: N // 2] = 1  # one id with 999 tokens
    grad = torch.randn(N, D, generator=gen).to(dtype)
    args = (grad, ids, a, b, None, 0, 0.5, 0, [1, 1, 0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = BWD(*args)
        torch.set_num_threads(2)
        two = BWD(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    keep = ids != 0  # padding_idx 0
    a64, b64, g64 = a.double(), b.double(), grad.double()
    want_b = (a64[ids[keep]].T @ g64[keep]) * 0.5  # [R, D]
    want_a = torch.zeros(V, R, dtype=torch.float64).index_add_(0, ids[keep], g64[keep] @ b64.T)
    for got, want in ((one[0], want_a * 0.5), (one[1], want_b)):
        rel = (got.double() - want).abs().max() / want.abs().max()
        assert rel <= 16 * torch.finfo(dtype).eps, f"relative error {rel:.3g}"


@pytest.mark.parametrize(
    "where,bad,pattern",
    [
        ("ids", 50, r"input_ids contains id 50 outside \[0, 50\)"),
        ("ids", -1, r"input_ids contains id -1 outside \[0, 50\)"),
        ("positions", 12, r"position 12 outside the positional table \[0, 12\)"),
        ("offset", 6, r"position 12 outside the positional table \[0, 12\)"),
        ("sinusoid", 1 << 16, r"sinusoid position 65536 outside \[0, 65536\)"),
        ("slots", 3, r"hot_slots contains slot 3 outside \[-1, 3\)"),
    ],
)
def test_forward_index_errors(where, bad, pattern):
    ids, a, b, _, slots, hot_rows, pos_weight = _make(ERROR_CASE, torch.float32)
    mode, positions, offset = POS_LEARNED, None, 0
    if where == "ids":
        ids[1, 3] = bad
    elif where in ("positions", "sinusoid"):
        positions = torch.zeros_like(ids)
        positions[0, 4] = bad
        mode = POS_SINUSOID if where == "sinusoid" else POS_LEARNED
    elif where == "offset":
        offset = bad  # positions offset .. offset + 6 against a 12-row table
    else:
        slots[0] = bad
    with pytest.raises(IndexError, match=f"factorized_embedding: {pattern}"):
        _forward(ids, a, b, slots, hot_rows, pos_weight, mode, positions=positions, offset=offset)


def test_backward_index_errors():
    ids, a, b, _, slots, _, _ = _make(ERROR_CASE, torch.float32)
    grad = torch.randn(2, 7, 8)
    ids[0, 0] = 77
    with pytest.raises(IndexError, match=r"factorized_embedding backward: .*id 77 outside"):
        BWD(grad, ids, a, b, slots, 3, 1.0, -1, [1, 1, 1])
    ids[0, 0] = 1
    slots[5] = -2
    with pytest.raises(IndexError, match=r"hot_slots contains slot -2"):
        BWD(grad, ids, a, b, slots, 3, 1.0, -1, [1, 1, 1])


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        ({"a": torch.randn(50, 4).double()}, TypeError, "a must be float32/float16/bfloat16"),
        ({"b": torch.randn(4, 8).half()}, TypeError, "b dtype Half must match"),
        ({"b": torch.randn(5, 8)}, ValueError, r"b must be \[r, D\] with r = 4"),
        ({"b": torch.randn(8, 4).t()}, ValueError, r"b must have stride\(1\) == 1"),
        ({"hot_rows": None}, ValueError, "hot_slots and hot_rows must be given together"),
        ({"hot_rows": torch.randn(3, 9)}, ValueError, r"hot_rows must be \[K, 8\]"),
        ({"slots": torch.zeros(50, dtype=torch.long)}, TypeError, "hot_slots must be int32"),
        ({"ids": torch.zeros(2, 7)}, TypeError, "input_ids must be int32 or int64"),
        ({"mode": 3}, ValueError, "pos_mode must be 0"),
        ({"pos_weight": torch.randn(12, 7)}, ValueError, "pos_weight has D=7 but b has D=8"),
    ],
)
def test_forward_argument_errors(change, exc, pattern):
    ids, a, b, _, slots, hot_rows, pos_weight = _make(ERROR_CASE, torch.float32)
    args = {"ids": ids, "a": a, "b": b, "slots": slots, "hot_rows": hot_rows, "mode": 1}
    args["pos_weight"] = pos_weight
    args.update(change)
    with pytest.raises(exc, match=pattern):
        FWD(
            args["ids"],
            args["a"],
            args["b"],
            args["slots"],
            args["hot_rows"],
            1.0,
            args["pos_weight"],
            None,
            0,
            args["mode"],
            10000.0,
        )


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        ({"grad": torch.randn(2, 7, 8).half()}, TypeError, "grad_out dtype Half must match"),
        ({"grad": torch.randn(2, 7, 9)}, ValueError, r"grad_out must be \[\*input_ids.shape, D\]"),
        ({"needs": [1, 1]}, ValueError, "needs must have 3 flags"),
        ({"pad": 50}, ValueError, r"padding_idx must be -1 \(none\) or in \[0, 50\)"),
        ({"num_hot": 2}, IndexError, r"hot_slots contains slot 2 outside \[-1, 2\)"),
    ],
)
def test_backward_argument_errors(change, exc, pattern):
    ids, a, b, _, slots, _, _ = _make(ERROR_CASE, torch.float32)
    args = {"grad": torch.randn(2, 7, 8), "needs": [1, 1, 1], "pad": -1, "num_hot": 3}
    args.update(change)
    with pytest.raises(exc, match=pattern):
        BWD(args["grad"], ids, a, b, slots, args["num_hot"], 1.0, args["pad"], args["needs"])


def test_opcheck():
    ids, a, b, _, slots, hot_rows, pos_weight = _make((23, 5, 24, (2, 7), 3), torch.float32)
    for mode, pw in ((POS_NONE, None), (POS_LEARNED, pos_weight), (POS_SINUSOID, None)):
        torch.library.opcheck(FWD, (ids, a, b, slots, hot_rows, 1.5, pw, None, 1, mode, 1e4))
    torch.library.opcheck(FWD, (ids, a, b, None, None, 1.0, None, None, 0, POS_NONE, 1e4))
    grad = torch.randn(2, 7, 24)
    for needs in ([1, 1, 1], [0, 1, 0]):
        torch.library.opcheck(BWD, (grad, ids, a, b, slots, 3, 2.0, int(ids[0, 1]), needs))
