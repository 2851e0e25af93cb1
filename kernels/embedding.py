"""Triton kernels for the fused embedding and their launchers (no autograd here).

Forward: ``out[n, :] = weight[ids[n]] * scale + P[pos(n)]`` over a 2-D grid of
(row block, feature block) tiles, launched without FMA contraction so that ``w * scale + p``
rounds twice, as in the C++ kernel and the reference. Backward: the gradient of a table
``[V, D]`` from upstream rows, either deterministic or with fp32 atomics (faster when ids
rarely repeat, not bit-stable):

- deterministic: ids stably sorted; the sorted positions are cut into chunks of ``RUN_CHUNK``
  and each run of equal ids into its pieces within the chunks. One program sums a piece in
  token order in fp32: a run inside one chunk is written at once, the pieces of a run that
  crosses chunks go to fp32 partial rows that a second pass adds in chunk order. A hot token
  (padding, BOS) is thus summed by many programs of at most ``RUN_CHUNK`` rows each, and the
  order, hence every bit, depends only on the ids.
- atomic: fp32 atomics (relaxed: only the sums matter) into the output itself for fp32 tables;
  for 16-bit tables into an fp32 accumulator of ``min(N, V)`` rows (one per token slot when
  there are fewer tokens than rows), converted into the output afterwards.

Launchers take flattened, validated tensors: ``ids`` [N] int32/int64 (contiguous), tables with
``stride(-1) == 1`` (any row stride), outputs allocated by the caller. They validate nothing
beyond what the kernel needs to stay in bounds: the ops layer checks user input.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fusedops.constants import POS_LEARNED, POS_NONE, POS_SINUSOID
from fusedops.sinusoid import sinusoid_coefficient

from ._launch import launch
from ._tuning import make_configs, rows_bucket, short_tile_pruner

# Feature tiles never exceed this many columns; wider rows use more programs along axis 1.
MAX_BLOCK_D = 1024
MIN_BLOCK_D = 16
# (elements per tile, warps) candidates of the forward autotuner; kept if every thread holds
# 8..64 elements, i.e. at least two 16-byte vectors of fp32 and few enough registers.
_FWD_TILES = (2048, 4096, 8192)
_FWD_WARPS = (4, 8)
# The forward is launched without FMA contraction: w * scale + p (and the sinusoid's
# polynomial) round each operation like the C++ kernel and the reference, bit for bit.
FORWARD_FP_FUSION = False


def block_d_for(dim: int) -> int:
    """Feature-tile width for rows of ``dim`` elements: a power of two in [16, 1024]."""
    return max(MIN_BLOCK_D, min(triton.next_power_of_2(dim), MAX_BLOCK_D))


def forward_candidates(block_d: int) -> list[tuple[int, int]]:
    """All (BLOCK_M, num_warps) pairs the forward autotuner may try for a feature tile."""
    out = []
    for tile in _FWD_TILES:
        for warps in _FWD_WARPS:
            block_m = max(1, tile // block_d)
            per_thread = block_m * block_d // (32 * warps)
            if 8 <= per_thread <= 64:
                out.append((block_m, warps))
    return out


def forward_config_space() -> list[tuple[int, int, int]]:
    """Every (BLOCK_M, BLOCK_D, num_warps) the forward launcher can run: for compile checks."""
    space = []
    block_d = MIN_BLOCK_D
    while block_d <= MAX_BLOCK_D:
        space += [(m, block_d, w) for m, w in forward_candidates(block_d)]
        block_d *= 2
    return space


_prune_forward = short_tile_pruner(forward_candidates, "BLOCK_D", "BLOCK_M", "n_rows_bucket")


def _forward_configs() -> list[triton.Config]:
    return make_configs(
        sorted({(m, w) for m, _, w in forward_config_space()}), "BLOCK_M", num_stages=1
    )


# Cody-Waite split of pi/2 in 8-bit pieces (+ the fp32 rest): k * piece is exact for
# k < 2**16, i.e. angles below ~1e5, which the ops layer guarantees (positions below
# SINUSOID_MAX_POSITION = 65536).
_PIO2_A = tl.constexpr(1.5703125)
_PIO2_B = tl.constexpr(0.000484466552734375)
_PIO2_C = tl.constexpr(-6.407499313354492e-07)
_PIO2_D = tl.constexpr(9.92093629470503e-10)
# Minimax polynomials of sin and cos on [-pi/4, pi/4] (Cephes single precision).
_S1 = tl.constexpr(-1.6666654611e-1)
_S2 = tl.constexpr(8.3321608736e-3)
_S3 = tl.constexpr(-1.9515295891e-4)
_C1 = tl.constexpr(4.166664568298827e-2)
_C2 = tl.constexpr(-1.388731625493765e-3)
_C3 = tl.constexpr(2.443315711809948e-5)
# The positional modes, as the kernel compares them.
_POS_NONE = tl.constexpr(POS_NONE)
_POS_LEARNED = tl.constexpr(POS_LEARNED)


@triton.jit
def _sin_or_cos(angle, odd):
    """sin(angle) where ``odd`` is 0 and cos(angle) where it is 1, in fp32.

    Reduces ``angle = k * pi/2 + r`` (|r| <= pi/4) and evaluates one polynomial per element;
    cos(x) = sin(x + pi/2) is the same reduction one quadrant on. Unlike libdevice sinf it has
    no slow path for huge arguments, hence no local-memory stack frame. Matches csrc's
    fusedops_sin_or_cos to the last bit when launched without FMA contraction (as the
    embedding forward is); max error ~1.1e-7.
    """
    k = tl.floor(angle * 0.636619772367581343 + 0.5)
    r = angle - k * _PIO2_A
    r = r - k * _PIO2_B
    r = r - k * _PIO2_C
    r = r - k * _PIO2_D
    quadrant = k.to(tl.int32) + odd
    r2 = r * r
    s = r + r * r2 * (_S1 + r2 * (_S2 + r2 * _S3))
    c = 1.0 - 0.5 * r2 + r2 * r2 * (_C1 + r2 * (_C2 + r2 * _C3))
    v = tl.where((quadrant & 1) != 0, c, s)
    return tl.where((quadrant & 2) != 0, -v, v)


@triton.jit
def _add_positional(
    acc,  # [BM, BD] fp32 token terms
    rows,  # [BM] int64 flattened token indices: pid * BLOCK_M + arange(BLOCK_M)
    cols,  # [BD] feature indices
    row_ok,  # [BM] rows < n_rows
    col_ok,  # [BD] cols < dim
    pid,  # int32 program index along the tokens
    pos_weight_ptr,  # [P, D] learned positional table (read only when POS_MODE is learned)
    positions_ptr,  # [N] int32/int64 positions (read only when HAS_POSITIONS)
    seq_len,
    num_positions,
    stride_p,
    position_offset,
    sin_coef,  # fp32(ln(base) / D), sinusoid mode only
    POS_MODE: tl.constexpr,  # fusedops.constants.POS_*: dead branches compile away
    HAS_POSITIONS: tl.constexpr,  # explicit positions tensor vs position_offset + s
    BLOCK_M: tl.constexpr,
):
    """``acc + P[pos(n)]`` ([BM, BD] fp32) for the tokens ``rows`` and features ``cols``:
    ``P`` the learned table (positions outside ``[0, num_positions)`` read as zero) or the
    sinusoid of :func:`fusedops.reference.sinusoid_table`; ``pos(n) = positions[n]`` or
    ``position_offset + n % seq_len``. ``acc`` itself when POS_MODE is POS_NONE."""
    if POS_MODE != _POS_NONE:
        if HAS_POSITIONS:
            pos = tl.load(positions_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # [BM]
        else:
            # s = row % seq_len in int32: rows < 2**31 (checked by the launchers), and a 64-bit
            # remainder is a slow subroutine that made ptxas spill.
            local = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] int32
            pos = position_offset + (local % seq_len).to(tl.int64)  # [BM]
        if POS_MODE == _POS_LEARNED:
            pos_ok = row_ok & (pos >= 0) & (pos < num_positions)
            p_ptrs = pos_weight_ptr + pos[:, None] * stride_p + cols[None, :]
            p = tl.load(p_ptrs, mask=pos_ok[:, None] & col_ok[None, :], other=0.0)
            acc += p.to(tl.float32)
        else:
            # inv_freq = fp32(exp_fp64(-2i * c)): fp64 keeps it correctly rounded on every
            # backend (fp32 tl.exp is ex2.approx on GPUs); it is computed once per column.
            pair = (cols // 2).to(tl.float64)  # [BD]
            inv_freq = tl.exp(pair * (-2.0 * sin_coef)).to(tl.float32)  # [BD]
            angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]  # [BM, BD] fp32
            acc += _sin_or_cos(angle, (cols % 2)[None, :])
    return acc


@triton.autotune(
    configs=_forward_configs(),
    key=["dim", "n_rows_bucket"],
    prune_configs_by={"early_config_prune": _prune_forward},
)
@triton.jit
def embedding_fwd_kernel(
    ids_ptr,  # [N] int32/int64 flattened token ids
    weight_ptr,  # [V, D] token table
    pos_weight_ptr,  # [P, D] learned positional table (read only when POS_MODE is learned)
    positions_ptr,  # [N] int32/int64 positions (read only when HAS_POSITIONS)
    out_ptr,  # [N, D] output, weight dtype
    n_rows,
    n_rows_bucket,  # autotune key only: rows_bucket(n_rows)
    seq_len,
    dim,
    num_embeddings,
    vocab_start,  # the table holds rows [vocab_start, vocab_start + num_embeddings) of the vocab
    num_positions,
    stride_w,
    stride_p,
    stride_o,
    scale,
    position_offset,
    sin_coef,  # fp32(ln(base) / D), sinusoid mode only
    POS_MODE: tl.constexpr,  # fusedops.constants.POS_*: dead branches compile away
    HAS_POSITIONS: tl.constexpr,  # explicit positions tensor vs position_offset + s
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] int64
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    row_ok = rows < n_rows
    col_ok = cols < dim

    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # [BM] vocabulary ids
    # The table holds ids [first, first + num_embeddings). Ids of a whole table (first = 0) are
    # range-checked on the host by default; the mask keeps the kernel inside the table when
    # that check is off, and masks the other shards' ids when the table is a vocabulary shard
    # (such rows get only the positional term). The table's base is shifted once per program
    # (int64 scalars) so the rows compare and index with the ids as loaded (a per-row
    # subtraction takes up to 2 more registers per thread in bf16).
    first = tl.cast(vocab_start, tl.int64)
    id_ok = row_ok & (ids >= first) & (ids < first + num_embeddings)
    table = weight_ptr - first * stride_w  # row `first` of the vocabulary is weight row 0
    w_ptrs = table + ids[:, None] * stride_w + cols[None, :]  # [BM, BD]
    w = tl.load(w_ptrs, mask=id_ok[:, None] & col_ok[None, :], other=0.0)
    acc = w.to(tl.float32) * scale  # [BM, BD] fp32

    acc = _add_positional(
        acc,
        rows,
        cols,
        row_ok,
        col_ok,
        pid_m,
        pos_weight_ptr,
        positions_ptr,
        seq_len,
        num_positions,
        stride_p,
        position_offset,
        sin_coef,
        POS_MODE,
        HAS_POSITIONS,
        BLOCK_M,
    )

    o_ptrs = out_ptr + rows[:, None] * stride_o + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def backward_block_d(dim: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the backward's summing kernels: one row slice of <= 1024
    features."""
    block_d = block_d_for(dim)
    return block_d, max(1, min(4, block_d // 256))


ATOMIC_BLOCK_M = 4  # rows per program of the atomic backward
# Sorted positions per chunk of the deterministic backward (a power of two): the most rows one
# program sums serially. A run of L equal ids is summed by at most cdiv(L, RUN_CHUNK) + 1
# programs, then its <= that many partial rows by one program of the second pass.
RUN_CHUNK = 256
# Feature tile and warps of the passes that only move fp32 rows into the output (adding a
# run's partial rows; copying the atomic accumulator's rows): one fixed config, as their cost
# is a small fraction of the backward's.
FINISH_BLOCK_D = 256
FINISH_WARPS = 2


def backward_config_space() -> list[tuple[int, int]]:
    """Every (BLOCK_D, num_warps) the backward's summing kernels (sorted, atomic) can run:
    for compile checks. The finishing kernels run (FINISH_BLOCK_D, FINISH_WARPS) only."""
    space, block_d = [], MIN_BLOCK_D
    while block_d <= MAX_BLOCK_D:
        space.append(backward_block_d(block_d))
        block_d *= 2
    return space


def sorted_chunks(n_rows: int) -> int:
    """Chunks of ``RUN_CHUNK`` sorted positions the deterministic backward cuts ``n_rows``
    ids into (two fp32 partial rows each)."""
    return triton.cdiv(n_rows, RUN_CHUNK)


def atomic_buffer_rows(n_rows: int, num_embeddings: int, dtype: torch.dtype) -> int:
    """Rows of the fp32 accumulator of the atomic backward of ``n_rows`` tokens into a
    ``[num_embeddings, D]`` table of ``dtype``: 0 for fp32 (it accumulates in the output),
    else one per table row or one per token, whichever is fewer."""
    return 0 if dtype == torch.float32 else min(n_rows, num_embeddings)


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


@triton.jit
def embedding_bwd_sorted_kernel(
    grad_ptr,  # [N, D] upstream gradient rows
    sorted_ids_ptr,  # [N] int64 ids, stably sorted ascending
    order_ptr,  # [N] int64 token index of each sorted id
    out_ptr,  # [V, D] gradient table, zero-filled by the caller
    part_ptr,  # [2 * chunks, D] fp32 pieces of the runs that cross chunks
    n_rows,
    dim,
    num_embeddings,
    vocab_start,  # id t is row t - vocab_start; ids outside the table are skipped
    stride_g,
    stride_o,
    stride_p,
    scale,
    padding_idx,  # -1 for none (a row of the table)
    CHUNK: tl.constexpr,  # RUN_CHUNK, a power of two
    BLOCK_D: tl.constexpr,
):
    """One program per sorted position and feature tile: the position that starts a piece
    (a run, or a chunk) sums the piece's rows in token order (the sort is stable) in fp32.
    A whole run is written to ``out``; a run crossing chunks leaves its piece in the partial
    rows: row ``2c`` the piece at the start of chunk ``c`` of a run begun before it, row
    ``2c + 1`` the piece at the end of chunk ``c`` of a run begun in it."""
    start = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    col_ok = cols < dim
    row_id = tl.load(sorted_ids_ptr + start)
    prev = tl.load(sorted_ids_ptr + start - 1, mask=start > 0, other=-1)
    chunk = start // CHUNK
    at_chunk = (start % CHUNK) == 0
    leader = (start == 0) | (prev != row_id) | at_chunk
    row = row_id - vocab_start  # int64; rows in the table have row_id >= 0 > -1 (the fill)
    owns = leader & (row >= 0) & (row < num_embeddings) & (row != padding_idx)
    if owns:
        stop = tl.minimum((chunk + 1) * CHUNK, n_rows)  # end of the chunk
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        j = start
        nxt = row_id
        tok = tl.load(order_ptr + j)
        while nxt == row_id:
            g = tl.load(grad_ptr + tok * stride_g + cols, mask=col_ok, other=0.0)
            j += 1
            more = j < stop
            # The next position's id and token are loaded with this row, not after it.
            nxt = tl.load(sorted_ids_ptr + j, mask=more, other=-1)
            tok = tl.load(order_ptr + j, mask=more, other=0)
            acc += g.to(tl.float32)
        after = tl.load(sorted_ids_ptr + j, mask=j < n_rows, other=-1)
        if at_chunk & (prev == row_id):  # the run began in an earlier chunk
            tl.store(part_ptr + (2 * chunk) * stride_p + cols, acc, mask=col_ok)
        elif after == row_id:  # the run goes on in the next chunk
            tl.store(part_ptr + (2 * chunk + 1) * stride_p + cols, acc, mask=col_ok)
        else:
            o_ptrs = out_ptr + row * stride_o + cols
            tl.store(o_ptrs, (acc * scale).to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def embedding_bwd_chunks_kernel(
    sorted_ids_ptr,  # [N] int64 ids, stably sorted ascending
    part_ptr,  # [2 * chunks, D] fp32 pieces written by embedding_bwd_sorted_kernel
    out_ptr,  # [V, D] gradient table
    n_rows,
    dim,
    num_embeddings,
    vocab_start,
    stride_p,
    stride_o,
    scale,
    padding_idx,
    CHUNK: tl.constexpr,  # RUN_CHUNK
    BLOCK_D: tl.constexpr,
):
    """One program per chunk and feature tile: the run holding the chunk's last id, if it
    begins in this chunk and goes on into the next, is the sum of its pieces in chunk order
    (the same order, and bits, every run)."""
    chunk = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    col_ok = cols < dim
    first = chunk * CHUNK
    last = tl.minimum(first + CHUNK, n_rows) - 1
    row_id = tl.load(sorted_ids_ptr + last)
    before = tl.load(sorted_ids_ptr + first - 1, mask=chunk > 0, other=-1)
    after = tl.load(sorted_ids_ptr + last + 1, mask=last + 1 < n_rows, other=-1)
    row = row_id - vocab_start
    ok = (row >= 0) & (row < num_embeddings) & (row != padding_idx)
    if ok & (before != row_id) & (after == row_id):
        acc = tl.load(part_ptr + (2 * chunk + 1) * stride_p + cols, mask=col_ok, other=0.0)
        nxt = after
        c = chunk + 1
        while nxt == row_id:
            acc += tl.load(part_ptr + (2 * c) * stride_p + cols, mask=col_ok, other=0.0)
            c += 1
            nxt = tl.load(sorted_ids_ptr + c * CHUNK, mask=c * CHUNK < n_rows, other=-1)
        o_ptrs = out_ptr + row * stride_o + cols
        tl.store(o_ptrs, (acc * scale).to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def embedding_bwd_atomic_kernel(
    grad_ptr,  # [N, D] upstream gradient rows
    slots_ptr,  # [N] int64 accumulator row of each token, -1: skipped
    acc_ptr,  # [R, D] fp32 accumulator, zero-filled by the caller
    n_rows,
    dim,
    stride_g,
    stride_a,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    row_ok = rows < n_rows
    col_ok = cols < dim
    slots = tl.load(slots_ptr + rows, mask=row_ok, other=-1)  # [BM]
    mask = (slots >= 0)[:, None] & col_ok[None, :]
    g = tl.load(grad_ptr + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0)
    # Relaxed: nothing is read back or ordered around the sums until the kernel ends.
    tl.atomic_add(
        acc_ptr + slots[:, None] * stride_a + cols[None, :],
        g.to(tl.float32) * scale,
        mask=mask,
        sem="relaxed",
    )


@triton.jit
def embedding_bwd_scatter_kernel(
    acc_ptr,  # [N, D] fp32: row n sums the tokens whose slot is n
    rows_ptr,  # [N] int64 table row of each token
    slots_ptr,  # [N] int64 slot of each token: its row's first token, -1: skipped
    out_ptr,  # [V, D] gradient table, zero-filled by the caller
    dim,
    stride_a,
    stride_o,
    BLOCK_D: tl.constexpr,
):
    """One program per token and feature tile: the token that is its row's slot writes the
    row's sum into the table."""
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    col_ok = cols < dim
    if tl.load(slots_ptr + n) == n:
        row = tl.load(rows_ptr + n)
        v = tl.load(acc_ptr + n * stride_a + cols, mask=col_ok, other=0.0)
        tl.store(out_ptr + row * stride_o + cols, v.to(out_ptr.dtype.element_ty), mask=col_ok)


# ---------------------------------------------------------------------------- launchers


_sin_coef = functools.cache(sinusoid_coefficient)


def embedding_forward(
    ids: torch.Tensor,  # [N] int32/int64, contiguous
    weight: torch.Tensor,  # [V, D], stride(-1) == 1
    out: torch.Tensor,  # [N, D] weight dtype, stride(-1) == 1
    *,
    seq_len: int,
    scale: float,
    pos_mode: int,
    pos_weight: torch.Tensor | None,  # [P, D] when pos_mode == POS_LEARNED
    positions: torch.Tensor | None,  # [N] int, contiguous; None -> position_offset + n % seq_len
    position_offset: int,
    sinusoid_base: float,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Launch the forward kernel; writes and returns ``out``.

    ``weight`` holds rows ``[vocab_start, vocab_start + V)`` of the vocabulary: id ``t`` reads
    row ``t - vocab_start`` and ids outside get only the positional term.
    """
    n_rows, dim = out.shape
    if n_rows == 0 or dim == 0:
        return out
    if n_rows >= 2**31:
        raise ValueError(f"fused_embedding: {n_rows} tokens in one call; the limit is 2**31 - 1")
    block_d = block_d_for(dim)
    has_pos_table = pos_mode == POS_LEARNED
    pos_table = pos_weight if has_pos_table else weight
    pos_ids = positions if positions is not None else ids

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_M"]), triton.cdiv(dim, meta["BLOCK_D"]))

    launch(
        embedding_fwd_kernel,
        grid,
        ids,
        weight,
        pos_table,
        pos_ids,
        out,
        n_rows,
        rows_bucket(n_rows),
        seq_len,
        dim,
        weight.shape[0],
        int(vocab_start),
        pos_table.shape[0],
        weight.stride(0),
        pos_table.stride(0),
        out.stride(0),
        float(scale),
        int(position_offset),
        _sin_coef(dim, float(sinusoid_base)) if pos_mode == POS_SINUSOID else 0.0,
        POS_MODE=pos_mode,
        HAS_POSITIONS=positions is not None,
        BLOCK_D=block_d,
        enable_fp_fusion=FORWARD_FP_FUSION,
    )
    return out


def embedding_backward(
    grad: torch.Tensor,  # [N, D], stride(-1) == 1
    ids: torch.Tensor,  # [N] int32/int64, contiguous
    out: torch.Tensor,  # [V, D] contiguous, any float dtype; overwritten
    *,
    scale: float,
    padding_idx: int,
    deterministic: bool,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Gradient of a ``[V, D]`` table: ``out[v] = scale * sum(grad[n] for ids[n] - vocab_start
    == v)``; ids whose row falls outside ``[0, V)`` are skipped.

    Rows never referenced (and ``padding_idx``, a row of the table) are zero. Deterministic
    mode sums in fp32 in an order fixed by the ids alone (bit-identical across runs): each run
    of equal ids in pieces of at most ``RUN_CHUNK`` sorted positions, in token order, then the
    pieces in order. Otherwise fp32 atomics are used (see :func:`atomic_buffer_rows`).
    """
    n_rows, dim = grad.shape
    out.zero_()
    if n_rows == 0 or dim == 0:
        return out
    block_d, warps = backward_block_d(dim)
    if deterministic:
        _backward_sorted(grad, ids, out, scale, padding_idx, vocab_start, block_d, warps)
    else:
        _backward_atomic(grad, ids, out, scale, padding_idx, vocab_start, block_d, warps)
    return out


def _backward_sorted(grad, ids, out, scale, padding_idx, vocab_start, block_d, warps) -> None:
    n_rows, dim = grad.shape
    chunk = RUN_CHUNK
    chunks = triton.cdiv(n_rows, chunk)
    sorted_ids, order = torch.sort(ids.to(torch.int64), stable=True)  # [N], [N]
    # [2 * chunks, D] fp32 pieces, rows padded to 16 elements (aligned vector loads).
    parts = torch.empty((2 * chunks, _pad16(dim)), dtype=torch.float32, device=grad.device)
    parts = parts[:, :dim]
    sizes = (out.shape[0], int(vocab_start))
    launch(
        embedding_bwd_sorted_kernel,
        (n_rows, triton.cdiv(dim, block_d)),
        grad,
        sorted_ids,
        order,
        out,
        parts,
        n_rows,
        dim,
        *sizes,
        grad.stride(0),
        out.stride(0),
        parts.stride(0),
        float(scale),
        int(padding_idx),
        CHUNK=chunk,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    if chunks > 1:  # the last chunk's run cannot go on: no program for it
        launch(
            embedding_bwd_chunks_kernel,
            (chunks - 1, triton.cdiv(dim, FINISH_BLOCK_D)),
            sorted_ids,
            parts,
            out,
            n_rows,
            dim,
            *sizes,
            parts.stride(0),
            out.stride(0),
            float(scale),
            int(padding_idx),
            CHUNK=chunk,
            BLOCK_D=FINISH_BLOCK_D,
            num_warps=FINISH_WARPS,
        )


def _backward_atomic(grad, ids, out, scale, padding_idx, vocab_start, block_d, warps) -> None:
    n_rows, dim = grad.shape
    num_rows = out.shape[0]
    device = grad.device
    rows = ids.to(torch.int64) - int(vocab_start)  # [N] table row of each token
    keep = (rows >= 0) & (rows < num_rows)
    if padding_idx >= 0:
        keep &= rows != padding_idx
    buffer_rows = atomic_buffer_rows(n_rows, num_rows, out.dtype)
    compact = 0 < buffer_rows < num_rows
    if compact:
        # Fewer tokens than table rows: each row sums into the slot of its first token.
        # owner[r] = min(n : rows[n] == r); entry num_rows collects the skipped tokens.
        safe = torch.where(keep, rows, num_rows)  # [N]
        owner = torch.full((num_rows + 1,), n_rows, dtype=torch.int64, device=device)
        tokens = torch.arange(n_rows, device=device)  # [N]
        owner.scatter_reduce_(0, safe, tokens, "amin")
        slots = torch.where(keep, owner[safe], -1)  # [N]
    else:
        slots = torch.where(keep, rows, -1)  # [N]
    if buffer_rows:
        # [R, D] fp32, rows padded to 16 elements (aligned vector atomics).
        acc = torch.zeros((buffer_rows, _pad16(dim)), dtype=torch.float32, device=device)
        acc = acc[:, :dim]
    else:
        acc = out
    launch(
        embedding_bwd_atomic_kernel,
        (triton.cdiv(n_rows, ATOMIC_BLOCK_M), triton.cdiv(dim, block_d)),
        grad,
        slots,
        acc,
        n_rows,
        dim,
        grad.stride(0),
        acc.stride(0),
        float(scale),
        BLOCK_M=ATOMIC_BLOCK_M,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    if compact:
        launch(
            embedding_bwd_scatter_kernel,
            (n_rows, triton.cdiv(dim, FINISH_BLOCK_D)),
            acc,
            rows,
            slots,
            out,
            dim,
            acc.stride(0),
            out.stride(0),
            BLOCK_D=FINISH_BLOCK_D,
            num_warps=FINISH_WARPS,
        )
    elif acc is not out:
        out.copy_(acc)
