"""The embedding launchers called directly: the deterministic backward's chunked run sums, the
atomic backward's accumulator size, and the forward's launch without FMA contraction.

The deterministic backward sums a run of equal (sorted) ids in pieces of at most ``RUN_CHUNK``
sorted positions, each in token order in fp32, then adds the pieces in order; the tests shrink
``RUN_CHUNK`` so that runs of a few tokens cross several chunks in the interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, TRITON_DEVICE, assert_close

from fusedops import reference
from fusedops.kernels import embedding as k
from fusedops.kernels._launch import launch

D = 24
SCALE = 1.5
# Sorted, these ids give runs that start inside a chunk of 4 and cross several (id 3: 14
# tokens from sorted position 3), one that starts on a chunk boundary (id 7 at 28), the
# padding row crossing one (id 5), and ids outside the table or shard (11; 0 and 1 below the
# shard).
IDS = [3] * 14 + [0] * 2 + [7] * 9 + [1] + [5] * 6 + [9] * 3 + [11] * 2 + [4] * 5
# (rows, vocab_start, padding_idx) of the table: the whole table, and rows [2, 8) of it.
TABLES = {"table": (10, 0, 5), "shard": (6, 2, 3)}


class Allocations:
    """Records (shape, dtype) of the tensors torch.empty/zeros/full make inside :meth:`run`;
    float torch.empty results come NaN-filled there, so a scratch row read before it is
    written shows in the result."""

    def __init__(self, monkeypatch):
        self.made: list[tuple[tuple[int, ...], torch.dtype]] = []
        self.active = False
        for name, poison in (("empty", True), ("zeros", False), ("full", False)):
            monkeypatch.setattr(torch, name, self._spy(getattr(torch, name), poison))

    def _spy(self, make, poison):
        def alloc(*args, **kwargs):
            out = make(*args, **kwargs)
            if self.active:
                self.made.append((tuple(out.shape), out.dtype))
                if poison and out.is_floating_point():
                    out.fill_(math.nan)
            return out

        return alloc

    def run(self, fn, *args, **kwargs):
        self.active = True
        try:
            return fn(*args, **kwargs)
        finally:
            self.active = False


@pytest.fixture
def allocations(monkeypatch):
    return Allocations(monkeypatch)


def _batch(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(IDS), generator=gen)
    ids = torch.tensor(IDS)[perm]  # [N] tokens in shuffled order
    grad = torch.randn(len(IDS), D, generator=gen).to(dtype)  # [N, D]
    return ids.to(TRITON_DEVICE), grad.to(TRITON_DEVICE)


def _backward(allocations, grad, ids, rows, start, pad, *, deterministic):
    out = torch.full((rows, D), math.nan, dtype=grad.dtype, device=grad.device)  # [V, D]
    return allocations.run(
        k.embedding_backward,
        grad,
        ids,
        out,
        scale=SCALE,
        padding_idx=pad,
        deterministic=deterministic,
        vocab_start=start,
    )


def _reference_grad(grad, ids, rows, start, pad):
    """fp64 gradient of the table through :func:`fusedops.reference.fused_embedding`."""
    weight = torch.zeros(rows, D, dtype=torch.float64, requires_grad=True)
    out = reference.fused_embedding(
        ids.cpu(), weight, scale=SCALE, padding_idx=pad, vocab_start=start
    )  # [N, D]
    (got,) = torch.autograd.grad(out, weight, grad.cpu().double())
    return got


def _chunked_grad(grad, ids, rows, start, pad, chunk):
    """The deterministic backward's order in PyTorch: ids sorted stably, each run cut where a
    chunk of ``chunk`` sorted positions starts, each piece summed in token order in fp32, the
    pieces added in order, times the scale, cast to ``grad.dtype``."""
    ids, g = ids.cpu(), grad.cpu().float()
    order = torch.sort(ids, stable=True).indices.tolist()
    pieces: dict[int, dict[int, torch.Tensor]] = {}
    for pos, tok in enumerate(order):
        row = int(ids[tok]) - start
        if 0 <= row < rows and row != pad:
            piece = pieces.setdefault(row, {})
            c = pos // chunk
            piece[c] = piece[c] + g[tok] if c in piece else g[tok]
    out = torch.zeros(rows, D)
    for row, by_chunk in pieces.items():
        parts = [by_chunk[c] for c in sorted(by_chunk)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        out[row] = total * SCALE
    return out.to(grad.dtype)


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic_backward_sums_runs_in_chunks(monkeypatch, allocations, dtype, table):
    monkeypatch.setattr(k, "RUN_CHUNK", 4)
    rows, start, pad = TABLES[table]
    ids, grad = _batch(dtype)
    first = _backward(allocations, grad, ids, rows, start, pad, deterministic=True)
    again = _backward(allocations, grad, ids, rows, start, pad, deterministic=True)
    assert torch.equal(first, again), "deterministic backward changed between runs"
    assert torch.all(first[pad] == 0)
    assert_close(first, _reference_grad(grad, ids, rows, start, pad), dtype=dtype, rtol_scale=4)
    # Bit for bit the documented order (the interpreter truncates bf16 stores: tolerance only).
    if dtype != torch.bfloat16:
        assert torch.equal(first.cpu(), _chunked_grad(grad, ids, rows, start, pad, 4))
    # Scratch: two fp32 partial rows per chunk of sorted positions, nothing of the table's size.
    scratch = [shape for shape, dt in allocations.made if dt.is_floating_point]
    assert scratch and all(shape[0] == 2 * math.ceil(len(IDS) / 4) for shape in scratch)


def test_hot_token_run_is_split_into_chunks(monkeypatch):
    # A 16k-token run (a padding or BOS token) is summed by many programs, none serially
    # longer than RUN_CHUNK rows.
    assert k.RUN_CHUNK <= 256
    assert k.sorted_chunks(16384) == 16384 // k.RUN_CHUNK > 1
    # In fp32, 2**24 + 1 rounds back to 2**24: a serial sum of one run [2**24, 1, 1, ...]
    # stays 2**24, while chunks of 8 lose only the ones of the first chunk.
    monkeypatch.setattr(k, "RUN_CHUNK", 8)
    grad = torch.ones(44, 16)  # [N, D]
    grad[0] = 2.0**24
    ids = torch.full((44,), 2)
    ids[41:] = 0  # another row, summed apart
    out = torch.empty(3, 16)  # [V, D]
    got = k.embedding_backward(
        grad.to(TRITON_DEVICE),
        ids.to(TRITON_DEVICE),
        out.to(TRITON_DEVICE),
        scale=1.0,
        padding_idx=-1,
        deterministic=True,
    ).cpu()
    # Sorted, id 0's 3 tokens come first: id 2 covers positions 3..43, 2**24 at position 3.
    # Chunks [0, 8), [8, 16), ...: the first piece holds 2**24 and 4 ones (lost), the rest 36.
    assert torch.all(got[2] == 2.0**24 + 36)
    assert torch.all(got[0] == 3) and torch.all(got[1] == 0)


@pytest.mark.parametrize("rows", [6, 3000], ids=["tokens>=rows", "tokens<rows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_atomic_backward_buffers_only_touched_rows(allocations, dtype, rows):
    gen = torch.Generator().manual_seed(1)
    # Rows are id - 1: id 0 is outside the shard, id 6 is row 5, the padding row.
    ids = torch.randint(0, 7, (20,), generator=gen)
    ids[:2] = torch.tensor([rows + 1, rows])  # outside the shard; its last row
    grad = torch.randn(20, D, generator=gen).to(dtype)  # [N, D]
    start, pad = 1, 5
    ids, grad = ids.to(TRITON_DEVICE), grad.to(TRITON_DEVICE)
    got = _backward(allocations, grad, ids, rows, start, pad, deterministic=False)
    assert_close(got, _reference_grad(grad, ids, rows, start, pad), dtype=dtype, rtol_scale=4)
    assert torch.all(got[pad] == 0)
    # fp32 tables accumulate in place; 16-bit ones in fp32 rows, one per token at most.
    buffers = [shape for shape, dt in allocations.made if dt.is_floating_point]
    if dtype == torch.float32:
        assert buffers == []
    else:
        assert len(buffers) == 1 and buffers[0][0] == min(20, rows) == k.atomic_buffer_rows(
            20, rows, dtype
        )
    assert k.atomic_buffer_rows(4096, 128256, torch.bfloat16) == 4096
    assert k.atomic_buffer_rows(4096, 128256, torch.float32) == 0


def _forward(ids, weight, pos_weight, out):
    return k.embedding_forward(
        ids,
        weight,
        out,
        seq_len=ids.shape[0],
        scale=math.sqrt(weight.shape[1]),
        pos_mode=k.POS_LEARNED,
        pos_weight=pos_weight,
        positions=None,
        position_offset=0,
        sinusoid_base=10000.0,
    )


def _forward_inputs(n, dim, vocab, device):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (n,), generator=gen)
    weight = torch.randn(vocab, dim, generator=gen)  # [V, D]
    pos_weight = torch.randn(n, dim, generator=gen)  # [P, D]
    return ids.to(device), weight.to(device), pos_weight.to(device)


def test_forward_launches_without_fma_contraction(monkeypatch):
    launches = []

    def spy(kernel, grid, *args, **kwargs):
        launches.append(kwargs)
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(k, "launch", spy)
    ids, weight, pos_weight = _forward_inputs(9, 40, 13, TRITON_DEVICE)
    out = _forward(ids, weight, pos_weight, torch.empty(9, 40, device=TRITON_DEVICE))
    assert [kw.get("enable_fp_fusion") for kw in launches] == [False]
    # w * scale and + p rounded one at a time, like the reference (and C++).
    want = reference.fused_embedding(ids, weight, scale=math.sqrt(40), pos_weight=pos_weight)
    assert torch.equal(out, want)


@pytest.mark.cuda
def test_forward_rounds_like_the_reference_on_gpu():
    # With FMA contraction, w * scale + p is rounded once: ~1 ulp off in many elements.
    ids, weight, pos_weight = _forward_inputs(512, 768, 1000, "cuda")
    out = _forward(ids, weight, pos_weight, torch.empty(512, 768, device="cuda"))
    want = reference.fused_embedding(ids, weight, scale=math.sqrt(768), pos_weight=pos_weight)
    assert torch.equal(out, want)
