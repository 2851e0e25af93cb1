"""The factorized-embedding Triton launchers called directly (interpreter on CPU, native on CUDA).

Forward outputs and the gradients of ``a``, ``b`` and ``hot_rows`` are compared with float64
runs of the spec, ``reference.factorized_embedding`` (gradients through ``torch.autograd.grad``
with a random upstream gradient), in every dtype, on odd shapes: prime token counts, rows that
are not multiples of 16, ranks 1 and 37, with and without hot rows, a padding token that is hot
and one that is not. Outputs are NaN-poisoned before the launch so unwritten elements fail.
Shapes are small: the interpreter pays per program.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, POS_MODES, TRITON_DEVICE, assert_close, sinusoid_atol

from fusedops import reference
from fusedops.constants import POS_LEARNED, POS_NONE, POS_SINUSOID
from fusedops.kernels import factorized_embedding as k

MODE_IDS = {"none": POS_NONE, "learned": POS_LEARNED, "sinusoid": POS_SINUSOID}
NUM_POS = 100


def _inputs(vocab, rank, dim, num_hot, dtype, *, seed=0):
    """a [V, R], b [R, D] (scaled so rows are O(1)), hot_ids [K], hot_rows [K, D], pos_weight."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(vocab, rank, generator=gen, dtype=torch.float64)
    b = torch.randn(rank, dim, generator=gen, dtype=torch.float64) / max(rank, 1) ** 0.5
    hot_ids = torch.randperm(vocab, generator=gen)[:num_hot]
    hot_rows = torch.randn(num_hot, dim, generator=gen, dtype=torch.float64)
    pos_weight = torch.randn(NUM_POS, dim, generator=gen, dtype=torch.float64)
    cast = [t.to(dtype) for t in (a, b, hot_rows, pos_weight)]
    return cast[0], cast[1], hot_ids, cast[2], cast[3]


def _slots(hot_ids, vocab):
    slots = torch.full((vocab,), -1, dtype=torch.int32)
    slots[hot_ids] = torch.arange(hot_ids.numel(), dtype=torch.int32)
    return slots


def _dev(t):
    return None if t is None else t.to(TRITON_DEVICE)


def _forward(ids, a, b, hot_ids, hot_rows, pos_weight, *, mode, scale, offset, positions=None):
    """The launcher on ``ids`` [B, S]: output [B, S, D]."""
    dim = b.shape[1]
    out = torch.full((ids.numel(), dim), float("nan"), dtype=a.dtype, device=TRITON_DEVICE)
    has_hot = hot_ids.numel() > 0
    k.factorized_forward(
        _dev(ids.reshape(-1)),
        _dev(a),
        _dev(b),
        _dev(_slots(hot_ids, a.shape[0])) if has_hot else None,
        _dev(hot_rows) if has_hot else None,
        out,
        seq_len=ids.shape[-1],
        scale=scale,
        pos_mode=MODE_IDS[mode],
        pos_weight=_dev(pos_weight) if mode == "learned" else None,
        positions=None if positions is None else _dev(positions.reshape(-1)),
        position_offset=offset,
        sinusoid_base=10000.0,
    )
    return out.reshape(*ids.shape, dim)


def _reference(ids, a, b, hot_ids, hot_rows, pos_weight, *, mode, scale, offset, **kwargs):
    """float64 spec; ``kwargs``: positions, padding_idx."""
    has_hot = hot_ids.numel() > 0
    return reference.factorized_embedding(
        ids,
        a.double(),
        b.double(),
        hot_ids=hot_ids if has_hot else None,
        hot_rows=hot_rows.double() if has_hot else None,
        scale=scale,
        pos_weight=pos_weight.double() if mode == "learned" else None,
        position_offset=offset,
        sinusoidal=mode == "sinusoid",
        **kwargs,
    )


# (B, S, D, V, R, K): N = 31 (prime) with a 20-wide row, rank 37 and hot rows; rank 1 with a
# single feature and no hot rows; a row wider than one 64-column tile with rank 16; 83 tokens
# (prime, two token tiles).
FWD_SHAPES = [
    (1, 31, 20, 17, 37, 3),
    (2, 7, 1, 5, 1, 0),
    (3, 5, 72, 40, 16, 2),
    (1, 83, 24, 50, 8, 5),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=str)
@pytest.mark.parametrize("mode", POS_MODES)
def test_forward_matches_reference(dtype, shape, mode):
    batch, seq, dim, vocab, rank, num_hot = shape
    a, b, hot_ids, hot_rows, pos_weight = _inputs(vocab, rank, dim, num_hot, dtype)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    if num_hot:
        ids[0, :2] = hot_ids[0]  # a hot token, twice
    kwargs = {"mode": mode, "scale": 1.7, "offset": 3}
    out = _forward(ids, a, b, hot_ids, hot_rows, pos_weight, **kwargs)
    expected = _reference(ids, a, b, hot_ids, hot_rows, pos_weight, **kwargs)
    assert out.dtype == dtype
    assert_close(out, expected, dtype=dtype, atol_extra=sinusoid_atol(mode, seq + 3))


@pytest.mark.parametrize("mode", ["learned", "sinusoid"])
def test_explicit_int32_positions(mode):
    a, b, hot_ids, hot_rows, pos_weight = _inputs(13, 37, 24, 2, torch.float32)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 13, (3, 11), generator=gen).to(torch.int32)
    positions = torch.randint(0, NUM_POS, (3, 11), generator=gen).to(torch.int32)
    kwargs = {"mode": mode, "scale": 0.5, "offset": 0}
    out = _forward(ids, a, b, hot_ids, hot_rows, pos_weight, positions=positions, **kwargs)
    expected = _reference(ids, a, b, hot_ids, hot_rows, pos_weight, positions=positions, **kwargs)
    assert_close(out, expected, atol_extra=sinusoid_atol(mode, NUM_POS))


def test_out_of_range_ids_get_only_the_positional_term():
    """With the host check off, ids < 0 or >= V read no table row (forward) and add nothing
    (backward): as if they were a token whose low-rank row is zero."""
    vocab, rank, dim = 11, 37, 20
    a, b, hot_ids, hot_rows, pos_weight = _inputs(vocab, rank, dim, 2, torch.float32)
    ids = torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(3))
    ids[0, 1], ids[0, 5], ids[1, 0], ids[1, 12] = -1, vocab, -(2**40), vocab + 10**6
    kwargs = {"mode": "learned", "scale": 1.3, "offset": 1}
    out = _forward(ids, a, b, hot_ids, hot_rows, pos_weight, **kwargs)
    # The spec on a table with one more, zero, row that every out-of-range id reads.
    a_ext = torch.cat([a, torch.zeros(1, rank)])
    ids_ext = torch.where((ids < 0) | (ids >= vocab), vocab, ids)
    expected = _reference(ids_ext, a_ext, b, hot_ids, hot_rows, pos_weight, **kwargs)
    assert_close(out, expected)
    assert_close(out[0, [1, 5]], pos_weight[[2, 6]].double())  # positions 1 + s

    upstream = torch.randn(2, 13, dim, generator=torch.Generator().manual_seed(4))
    grads = _backward(upstream, ids, a, b, hot_ids, scale=1.3, padding_idx=-1, det=True)
    expected = _reference_grads(upstream, ids_ext, a_ext, b, hot_ids, hot_rows, 1.3, None)
    _check_grads(grads, (expected[0][:vocab], *expected[1:]), torch.float32, ids.numel())


def _backward(upstream, ids, a, b, hot_ids, *, scale, padding_idx, det, needs=(True,) * 3):
    has_hot = hot_ids.numel() > 0
    return k.factorized_backward(
        _dev(upstream.reshape(-1, b.shape[1]).to(a.dtype)),
        _dev(ids.reshape(-1)),
        _dev(a),
        _dev(b),
        _dev(_slots(hot_ids, a.shape[0])) if has_hot else None,
        num_hot=hot_ids.numel(),
        scale=scale,
        padding_idx=padding_idx,
        needs=needs,
        deterministic=det,
    )


def _reference_grads(upstream, ids, a, b, hot_ids, hot_rows, scale, padding_idx):
    """float64 autograd of the spec: (grad_a, grad_b, grad_hot)."""
    a64 = a.double().requires_grad_()
    b64 = b.double().requires_grad_()
    h64 = hot_rows.double().requires_grad_()
    has_hot = hot_ids.numel() > 0
    out = reference.factorized_embedding(
        ids,
        a64,
        b64,
        hot_ids=hot_ids if has_hot else None,
        hot_rows=h64 if has_hot else None,
        scale=scale,
        padding_idx=padding_idx,
    )
    grads = torch.autograd.grad(out, (a64, b64, h64), upstream.double(), allow_unused=True)
    return tuple(
        torch.zeros_like(t) if g is None else g for g, t in zip(grads, (a64, b64, h64), strict=True)
    )


def _check_grads(grads, expected, dtype, n_terms):
    # fp32 sums of up to n_terms rows: rtol grows like sqrt(n) ulps.
    rtol_scale = max(1.0, n_terms**0.5 / 4) if dtype == torch.float32 else 1.0
    for name, got, want in zip(("grad_a", "grad_b", "grad_hot"), grads, expected, strict=True):
        assert got is not None and got.dtype == dtype, name
        assert_close(got, want, dtype=dtype, rtol_scale=rtol_scale, msg=name)


# (B, S, D, V, R, K, padding): N = 263 (prime; three token splits of the basis gradient) with
# rank 37, three hot rows and a hot padding token; rank 1 with no hot rows and a padding token;
# rank 67 and D = 70 (two rank tiles, two feature tiles / chunks).
BWD_SHAPES = [(1, 263, 20, 31, 37, 3, "hot"), (2, 7, 9, 6, 1, 0, 4), (1, 71, 70, 13, 67, 3, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("det", [True, False], ids=["sorted", "atomic"])
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=str)
def test_backward_matches_reference(dtype, det, shape):
    batch, seq, dim, vocab, rank, num_hot, pad = shape
    a, b, hot_ids, hot_rows, _ = _inputs(vocab, rank, dim, num_hot, dtype)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    ids.view(-1)[: seq // 3] = ids.view(-1)[0]  # many tokens share one row
    padding_idx = int(hot_ids[1]) if pad == "hot" else pad
    ids.view(-1)[seq // 3 : seq // 3 + 3] = padding_idx
    if num_hot:
        ids.view(-1)[-4:] = hot_ids[0]
        ids.view(-1)[-7:-5] = hot_ids[2]
    upstream = torch.randn(batch, seq, dim, generator=gen).to(dtype)
    grads = _backward(upstream, ids, a, b, hot_ids, scale=1.3, padding_idx=padding_idx, det=det)
    expected = _reference_grads(upstream, ids, a, b, hot_ids, hot_rows, 1.3, padding_idx)
    _check_grads(grads, expected, dtype, ids.numel())
    if pad == "hot":
        assert not grads[2][1].any(), "the hot padding token's row got a gradient"
    if det and dtype == torch.float32:
        again = _backward(upstream, ids, a, b, hot_ids, scale=1.3, padding_idx=padding_idx, det=det)
        assert all(torch.equal(x, y) for x, y in zip(grads, again, strict=True)), (
            "not bit-identical"
        )


def test_backward_computes_only_what_is_needed():
    a, b, hot_ids, hot_rows, _ = _inputs(7, 5, 16, 2, torch.float16)
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 6, 1, 0, 2]])
    upstream = torch.randn(1, 11, 16, generator=torch.Generator().manual_seed(6)).half()
    expected = _reference_grads(upstream, ids, a, b, hot_ids, hot_rows, 2.0, None)
    for needs in ((False, True, False), (True, False, True), (False, False, True)):
        grads = _backward(
            upstream, ids, a, b, hot_ids, scale=2.0, padding_idx=-1, det=True, needs=needs
        )
        for need, got, want in zip(needs, grads, expected, strict=True):
            if need:
                assert_close(got, want, dtype=torch.float16)
            else:
                assert got is None


def test_basis_splits_cover_the_tokens():
    for n_rows, rank, dim in ((1, 1, 1), (263, 37, 20), (10**6, 128, 768), (5000, 1, 4096)):
        split, per_split = k.basis_splits(n_rows, rank, dim)
        assert (
            per_split % k.MIN_SPLIT_TOKENS == 0 and per_split % max(k.BASIS_BLOCK_T.values()) == 0
        )
        assert (split - 1) * per_split < n_rows <= split * per_split
        tiles = -(-rank // k.BWD_BLOCK_R) * -(-dim // k.BASIS_BLOCK_D)
        assert split == 1 or split * tiles <= k.BASIS_PROGRAMS
    assert k.basis_splits(263, 37, 20)[0] == 3  # the backward test's case has three splits


def test_forward_rows_aligned():
    table = torch.zeros(64, 48)
    args = {"dim": 48, "rank": 32, "stride_a": 32, "stride_b": 48, "stride_h": 48}
    args |= {"stride_p": 48, "stride_o": 48, "a_ptr": table, "out_ptr": table}
    assert k.forward_rows_aligned(args)
    assert not k.forward_rows_aligned(args | {"rank": 37, "stride_a": 37})
    assert not k.forward_rows_aligned(args | {"dim": 20})
    assert not k.forward_rows_aligned(args | {"out_ptr": table[:, 1:]})
