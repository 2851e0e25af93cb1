"""int8_embedding on a vocabulary shard (``vocab_start``): the kernels mask other shards' ids.

A shard is rows ``[vocab_start, vocab_start + V)`` of a quantized vocabulary (per-row and
per-group scales slice with their rows). Checked against the fp64 oracle and bit for bit against
``reference.int8_embedding`` (same fp32 roundings), and by summing the shards of a partition of
the vocabulary, which must give the unsharded lookup bit for bit in fp32.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, POS_MODES, assert_close, backend_cases, pos_kwargs, sinusoid_atol

import fusedops
from fusedops import reference
from fusedops._backend import check_cpp_usable

VOCAB, DIM, SEQ, NUM_POS = 29, 24, 6, 12
# (vocab_start, rows): the first, a middle and the last shard, and one no drawn id falls in.
SHARDS = {"first": (0, 10), "middle": (10, 7), "last": (17, 12), "no-ids": (35, 4)}
GROUP_SIZES = [None, 8]  # per-row scales, and 3 groups per row


def _inputs(group_size, *, id_dtype=torch.int64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
    ids[0, :3] = torch.tensor([0, 10, VOCAB - 1])  # every shard's edges appear
    weight = torch.randn(VOCAB + 10, DIM, generator=gen)  # rows past VOCAB: the "no-ids" shard
    qweight, scales = fusedops.quantize_embedding(weight, group_size=group_size)
    pos_weight = torch.randn(NUM_POS, DIM, generator=gen)
    return (t.to(device) for t in (ids.to(id_dtype), qweight, scales, pos_weight))


def _run(backend, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fusedops.int8_embedding(*args, **kwargs)


def _oracle64(ids, qweight, scales, *, pos_weight=None, out_dtype=None, **kwargs):
    """fused_embedding of the exactly dequantized shard, in fp64."""
    table = reference.dequantize_embedding(qweight, scales, torch.float64)  # [V, D]
    pw = None if pos_weight is None else pos_weight.double()
    return reference.fused_embedding(ids, table, pos_weight=pw, **kwargs)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", GROUP_SIZES, ids=["per-row", "per-group"])
@pytest.mark.parametrize("shard", list(SHARDS))
@pytest.mark.parametrize("mode", POS_MODES)
def test_forward_on_a_shard_matches_reference(backend, device, out_dtype, group_size, shard, mode):
    ids, qweight, scales, pos_weight = _inputs(group_size, device=device)
    start, rows = SHARDS[shard]
    q, s = qweight[start : start + rows], scales[start : start + rows]
    kwargs = {"scale": 1.5, "position_offset": 4, "vocab_start": start, "out_dtype": out_dtype}
    kwargs |= pos_kwargs(mode, pos_weight)
    out = _run(backend, ids, q, s, **kwargs)
    assert out.shape == (2, SEQ, DIM) and out.dtype == out_dtype
    atol = sinusoid_atol(mode, SEQ + 4)
    assert_close(out, _oracle64(ids, q, s, **kwargs), dtype=out_dtype, atol_extra=atol)
    if mode != "sinusoid":  # the same fp32 roundings as the reference: bit for bit
        assert torch.equal(out, reference.int8_embedding(ids, q, s, **kwargs))
    local = ids.long() - start
    outside = (local < 0) | (local >= rows)
    if mode == "none":
        assert bool((out[outside] == 0).all())
    if shard == "no-ids":
        assert bool(outside.all())


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
def test_shard_with_explicit_positions(backend, device, id_dtype):
    ids, qweight, scales, pos_weight = _inputs(8, id_dtype=id_dtype, seed=1, device=device)
    positions = torch.randint(0, NUM_POS, (1, SEQ), generator=torch.Generator().manual_seed(2))
    kwargs = {"pos_weight": pos_weight, "positions": positions.to(device), "vocab_start": 10}
    out = _run(backend, ids, qweight[10:17], scales[10:17], **kwargs)
    assert torch.equal(out, reference.int8_embedding(ids, qweight[10:17], scales[10:17], **kwargs))


# Partitions of the 29-row vocabulary (rows per shard; the last may overhang).
PARTITIONS = [(29,), (10, 7, 12), (1, 27, 1), (8, 8, 8, 8)]


@pytest.mark.parametrize("bounds", PARTITIONS, ids=str)
@pytest.mark.parametrize("group_size", GROUP_SIZES, ids=["per-row", "per-group"])
@pytest.mark.parametrize("mode", POS_MODES)
def test_shards_sum_to_the_unsharded_lookup_bit_for_bit(bounds, group_size, mode):
    ids, qweight, scales, pos_weight = _inputs(group_size, seed=3)
    qweight, scales = qweight[:VOCAB], scales[:VOCAB]
    kwargs = {"scale": 0.75, "position_offset": 2}
    whole = _run("cpp", ids, qweight, scales, **kwargs, **pos_kwargs(mode, pos_weight))
    total, start = torch.zeros_like(whole), 0
    for k, rows in enumerate(bounds):
        q = torch.zeros(rows, DIM, dtype=torch.int8)  # rows past the vocabulary stay zero
        s = torch.ones(rows, scales.shape[1])
        real = max(0, min(rows, VOCAB - start))
        q[:real], s[:real] = qweight[start : start + rows], scales[start : start + rows]
        positional = pos_kwargs(mode, pos_weight) if k == 0 else {}
        total += _run("cpp", ids, q, s, vocab_start=start, **kwargs, **positional)
        start += rows
    assert torch.equal(total, whole)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_shard_ids_are_not_range_checked_but_positions_are(backend, device):
    ids, qweight, scales, pos_weight = _inputs(None, device=device)
    ids[0, 0], ids[1, 1] = -7, 10**6  # outside the whole vocabulary: the caller's to check
    q, s = qweight[10:17], scales[10:17]
    kwargs = {"pos_weight": pos_weight, "vocab_start": 10}
    out = _run(backend, ids, q, s, **kwargs)
    assert torch.equal(out, reference.int8_embedding(ids, q, s, **kwargs))
    with pytest.raises(IndexError, match="int8_embedding"):
        _run(backend, ids, q, s, position_offset=NUM_POS, **kwargs)
    with pytest.raises(IndexError, match="int8_embedding"):
        _run(backend, ids, q, s, pos_weight=pos_weight)  # without vocab_start: checked


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (True, TypeError), (2.0, TypeError)])
def test_bad_vocab_start_raises(bad, error):
    check_cpp_usable("int8_embedding", "fusedops::int8_embedding_fwd")
    ids, qweight, scales, _ = _inputs(None)
    with pytest.raises(error, match="int8_embedding: vocab_start"):
        fusedops.int8_embedding(ids, qweight, scales, vocab_start=bad)
    if bad == -1:  # the extension op checks it too
        with pytest.raises(ValueError, match="int8_embedding: vocab_start must be >= 0"):
            torch.ops.fusedops.int8_embedding_fwd(
                ids, qweight, scales, 1.0, None, None, 0, 0, 1e4, torch.float32, True, -1
            )


def test_forward_masks_inside_the_kernel():
    """The shard lookup runs the extension op alone: no pass over the ids in PyTorch."""
    ids, qweight, scales, _ = _inputs(8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fusedops.int8_embedding(ids, qweight[10:17], scales[10:17], vocab_start=10)
    names = {e.name for e in prof.events()}
    assert "fusedops::int8_embedding_fwd" in names
    assert not names & {"aten::sub", "aten::where", "aten::lt", "aten::ge", "aten::clamp"}


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_opcheck_with_vocab_start(out_dtype):
    check_cpp_usable("int8_embedding", "fusedops::int8_embedding_fwd")
    ids, qweight, scales, pos_weight = _inputs(8)
    args = (ids, qweight[10:17], scales[10:17], 1.5, pos_weight, None, 1, 1, 1e4, out_dtype)
    torch.library.opcheck(torch.ops.fusedops.int8_embedding_fwd.default, (*args, True, 10))
