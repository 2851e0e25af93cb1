"""fused_embedding on a vocabulary shard (``vocab_start``) and ``embedding_table_grad``.

A shard holds rows ``[vocab_start, vocab_start + V)`` of a larger vocabulary: ids outside it
contribute only the positional term and no gradient. Checked on every backend against the fp64
reference, and by summing the shards of a partition of the vocabulary, which must give the
unsharded lookup bit for bit (fp32, C++ kernel) when one shard carries the positional term.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, POS_MODES, assert_close, backend_cases, pos_kwargs, sinusoid_atol

import fusedops
from fusedops import reference
from fusedops._backend import check_cpp_usable
from fusedops.ops.embedding import embedding_table_grad

VOCAB, DIM, SEQ, NUM_POS = 31, 19, 7, 16
# (vocab_start, rows) of shards of the 31-row vocabulary: the first, a middle one, the last,
# and one past every id the tests draw (it receives no in-shard id).
SHARDS = {
    "first": (0, 11),
    "middle": (11, 9),
    "last": (20, 11),
    "no-ids": (40, 5),
}


def _inputs(dtype, device, *, id_dtype=torch.int64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
    ids[0, :3] = torch.tensor([0, 11, VOCAB - 1])  # every shard's edges appear
    full = torch.randn(VOCAB + 14, DIM, generator=gen)  # rows past VOCAB: the "no-ids" shard
    pos_weight = torch.randn(NUM_POS, DIM, generator=gen)
    return ids.to(id_dtype).to(device), full.to(dtype).to(device), pos_weight.to(dtype).to(device)


def _lookup(backend, ids, weight, **kwargs):
    with fusedops.use_backend(backend):
        return fusedops.fused_embedding(ids, weight, **kwargs)


def _oracle(ids, shard, *, pos_weight=None, **kwargs):
    pw = None if pos_weight is None else pos_weight.double()
    return reference.fused_embedding(ids, shard.double(), pos_weight=pw, **kwargs)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shard", list(SHARDS))
@pytest.mark.parametrize("mode", POS_MODES)
def test_forward_on_a_shard_matches_reference(backend, device, dtype, shard, mode):
    ids, full, pos_weight = _inputs(dtype, device)
    start, rows = SHARDS[shard]
    weight = full[start : start + rows]  # [rows, D], a view with the full table's row stride
    kwargs = {"scale": 1.3, "position_offset": 2, "vocab_start": start}
    kwargs |= pos_kwargs(mode, pos_weight)
    out = _lookup(backend, ids, weight, **kwargs)
    assert out.shape == (3, SEQ, DIM) and out.dtype == dtype
    assert_close(out, _oracle(ids, weight, **kwargs), atol_extra=sinusoid_atol(mode, SEQ + 2))
    local = ids.long() - start
    outside = (local < 0) | (local >= rows)  # [3, S]
    if mode == "none":  # other shards' tokens are exactly zero
        assert bool((out[outside] == 0).all())
    if shard == "no-ids":
        assert bool(outside.all())


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("mode", ["learned", "sinusoid"])
def test_shard_with_explicit_positions(backend, device, id_dtype, mode):
    ids, full, pos_weight = _inputs(torch.float32, device, id_dtype=id_dtype, seed=1)
    gen = torch.Generator().manual_seed(2)
    positions = torch.randint(0, NUM_POS, (3, SEQ), generator=gen).to(torch.int64).to(device)
    weight = full[11:20]
    kwargs = {"scale": 0.5, "positions": positions, "vocab_start": 11}
    kwargs |= pos_kwargs(mode, pos_weight)
    out = _lookup(backend, ids, weight, **kwargs)
    assert_close(out, _oracle(ids, weight, **kwargs), atol_extra=sinusoid_atol(mode, NUM_POS))


# About one ulp of each dtype at the gradients' magnitude (sums of a few unit normals).
TOL_ULP = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _grads_vs_reference(backend, device, dtype, start, rows, deterministic=True):
    ids, full, pos_weight = _inputs(dtype, device, seed=3)
    ids[1, :4] = start + 2  # a repeated in-shard id and the padding row
    ids[2, :2] = start + rows - 1
    weight = full[start : start + rows].clone().requires_grad_()
    pos = pos_weight.clone().requires_grad_()
    kwargs = {"scale": 1.7, "position_offset": 1, "padding_idx": 2, "vocab_start": start}
    out = _lookup(backend, ids, weight, pos_weight=pos, deterministic=deterministic, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    grad = grad.to(device)
    got_w, got_p = torch.autograd.grad(out, (weight, pos), grad)
    w64 = weight.detach().double().requires_grad_()
    p64 = pos.detach().double().requires_grad_()
    want = reference.fused_embedding(ids, w64, pos_weight=p64, **kwargs)
    want_w, want_p = torch.autograd.grad(want, (w64, p64), grad.double())
    assert got_w.dtype == dtype and got_p.dtype == dtype
    # Sums of up to 3 * SEQ rows rounded once: a few ulps of the output dtype.
    assert_close(got_w, want_w, rtol_scale=4, atol_extra=4 * TOL_ULP[dtype])
    assert_close(got_p, want_p, rtol_scale=4, atol_extra=4 * TOL_ULP[dtype])
    assert not bool(got_w[2].any()), "the padding row (local index) must get no gradient"
    return got_w


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shard", ["first", "middle", "last"])
def test_backward_on_a_shard_matches_reference(backend, device, dtype, shard):
    start, rows = SHARDS[shard]
    _grads_vs_reference(backend, device, dtype, start, rows)


@pytest.mark.parametrize("backend,device", backend_cases(reference=False))
def test_backward_atomic_path_on_a_shard(backend, device):
    _grads_vs_reference(backend, device, torch.float32, 11, 9, deterministic=False)


# Partitions of the 31-row vocabulary into shards (rows per shard; the last may overhang).
PARTITIONS = [(31,), (11, 9, 11), (1, 29, 1), (8, 8, 8, 8), (13, 20)]


@pytest.mark.parametrize("bounds", PARTITIONS, ids=str)
@pytest.mark.parametrize("mode", POS_MODES)
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
def test_shards_sum_to_the_unsharded_lookup_bit_for_bit(bounds, mode, id_dtype):
    ids, full, pos_weight = _inputs(torch.float32, "cpu", id_dtype=id_dtype, seed=5)
    full = full[:VOCAB]
    kwargs = {"scale": 0.75, "position_offset": 3}
    whole = _lookup("cpp", ids, full, **kwargs, **pos_kwargs(mode, pos_weight))
    total, start = torch.zeros_like(whole), 0
    for k, rows in enumerate(bounds):
        shard = torch.zeros(rows, DIM)  # rows past the vocabulary stay zero
        shard[: max(0, min(rows, VOCAB - start))] = full[start : start + rows]
        positional = pos_kwargs(mode, pos_weight) if k == 0 else {}
        total += _lookup("cpp", ids, shard, vocab_start=start, **kwargs, **positional)
        start += rows
    assert torch.equal(total, whole)


@pytest.mark.parametrize("bounds", PARTITIONS[1:3], ids=str)
def test_shard_gradients_concatenate_to_the_unsharded_gradient(bounds):
    ids, full, _ = _inputs(torch.float32, "cpu", seed=6)
    full = full[:VOCAB]
    grad = torch.randn(3, SEQ, DIM, generator=torch.Generator().manual_seed(7))
    weight = full.clone().requires_grad_()
    out = _lookup("cpp", ids, weight, scale=2.5, padding_idx=4)
    (whole,) = torch.autograd.grad(out, weight, grad)
    parts, start = [], 0
    for rows in bounds:
        shard = full[start : start + rows].clone().requires_grad_()
        pad = 4 - start if 0 <= 4 - start < rows else None
        out = _lookup("cpp", ids, shard, scale=2.5, padding_idx=pad, vocab_start=start)
        parts.append(torch.autograd.grad(out, shard, grad)[0])
        start += rows
    assert torch.equal(torch.cat(parts), whole)


# ------------------------------------------------------------------------ embedding_table_grad


def _table_grad_oracle(grad, indices, num_rows, scale, padding_idx, vocab_start):
    """Through the reference's autograd: the gradient of its shard lookup in fp64."""
    table = torch.zeros(num_rows, grad.shape[-1], dtype=torch.float64, requires_grad=True)
    out = reference.fused_embedding(
        indices, table, scale=scale, padding_idx=padding_idx, vocab_start=vocab_start
    )
    return torch.autograd.grad(out, table, grad.double())[0]


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("deterministic", [True, False])
def test_embedding_table_grad_matches_reference(backend, device, dtype, deterministic):
    gen = torch.Generator().manual_seed(8)
    indices = torch.randint(-3, 40, (2, 5, 3), generator=gen)  # some outside every table
    grad = torch.randn(2, 5, 3, 13, generator=gen).to(dtype)
    for num_rows, start, pad in [(11, 0, None), (9, 11, 3), (5, 0, -1), (7, 50, None)]:
        with fusedops.use_backend(backend):
            got = embedding_table_grad(
                grad.to(device),
                indices.to(device),
                num_rows,
                scale=0.5,
                padding_idx=pad,
                vocab_start=start,
                deterministic=deterministic,
            )
        assert got.shape == (num_rows, 13) and got.dtype == dtype
        want = _table_grad_oracle(grad, indices, num_rows, 0.5, pad, start)
        assert_close(got, want, rtol_scale=4, atol_extra=4 * TOL_ULP[dtype])


@pytest.mark.parametrize("backend,device", backend_cases())
def test_embedding_table_grad_broadcasts_indices(backend, device):
    gen = torch.Generator().manual_seed(9)
    grad = torch.randn(4, 6, 8, generator=gen).to(device)
    positions = torch.arange(2, 8).to(device)  # [S], broadcast over the batch
    with fusedops.use_backend(backend):
        got = embedding_table_grad(grad, positions, 10)
    want = torch.zeros(10, 8, dtype=torch.float64)
    want[2:8] = grad.double().sum(0).cpu()
    assert_close(got, want)


# ------------------------------------------------------------------------ checks and ops


@pytest.mark.parametrize("backend,device", backend_cases())
def test_shard_ids_are_not_range_checked_but_positions_are(backend, device):
    ids, full, pos_weight = _inputs(torch.float32, device)
    ids[0, 0], ids[1, 1] = -5, 10**6  # outside the whole vocabulary: the caller's to check
    weight = full[11:20]
    out = _lookup(backend, ids, weight, vocab_start=11, pos_weight=pos_weight)
    assert_close(out, _oracle(ids, weight, vocab_start=11, pos_weight=pos_weight))
    with pytest.raises(IndexError, match="fused_embedding"):
        _lookup(backend, ids, weight, vocab_start=11, pos_weight=pos_weight, position_offset=10)
    with pytest.raises(IndexError, match="fused_embedding"):  # without vocab_start: checked
        _lookup(backend, ids, weight, pos_weight=pos_weight)


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (True, TypeError), (2.0, TypeError)])
def test_bad_vocab_start_raises(bad, error):
    check_cpp_usable("fused_embedding", "fusedops::cpp_embedding_fwd")
    ids, full, _ = _inputs(torch.float32, "cpu")
    grad = torch.randn(3, SEQ, DIM)
    with pytest.raises(error, match="fused_embedding: vocab_start"):
        fusedops.fused_embedding(ids, full, vocab_start=bad)
    with pytest.raises(error, match="embedding_table_grad: vocab_start"):
        embedding_table_grad(grad, ids, 5, vocab_start=bad)
    if bad == -1:  # the C++ ops check it too
        with pytest.raises(ValueError, match="vocab_start must be >= 0"):
            torch.ops.fusedops.cpp_embedding_fwd(ids, full, 1.0, None, None, 0, 0, 1e4, -1)
        with pytest.raises(ValueError, match="vocab_start must be >= 0"):
            torch.ops.fusedops.cpp_embedding_bwd(grad, ids, 5, 1.0, -1, -1)


def test_shard_padding_idx_is_a_local_row():
    ids, full, _ = _inputs(torch.float32, "cpu")
    with pytest.raises(ValueError, match="padding_idx 9 outside"):
        fusedops.fused_embedding(ids, full[11:20], vocab_start=11, padding_idx=9)


def test_forward_masks_inside_the_kernel():
    """The shard forward runs the C++ op alone: no pass over the ids in PyTorch."""
    ids, full, pos_weight = _inputs(torch.float32, "cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fusedops.fused_embedding(ids, full[11:20], vocab_start=11, pos_weight=pos_weight)
    names = {e.name for e in prof.events()}
    assert "fusedops::cpp_embedding_fwd" in names
    assert not names & {"aten::sub", "aten::where", "aten::lt", "aten::ge", "aten::clamp"}


def test_opcheck_with_vocab_start():
    check_cpp_usable("fused_embedding", "fusedops::cpp_embedding_fwd")
    ids, full, pos_weight = _inputs(torch.float32, "cpu")
    weight = full[11:20].contiguous().requires_grad_()
    args = (ids, weight, pos_weight, None, 1.5, 0, 1, 1e4, 2, True, True, "cpp", 11)
    torch.library.opcheck(torch.ops.fusedops.fused_embedding.default, args)
    fwd = (ids, weight.detach(), 1.5, pos_weight, None, 0, 1, 1e4, 11)
    torch.library.opcheck(torch.ops.fusedops.cpp_embedding_fwd.default, fwd)
    grad = torch.randn(3, SEQ, DIM)
    torch.library.opcheck(torch.ops.fusedops.cpp_embedding_bwd.default, (grad, ids, 9, 2.0, 3, 11))
