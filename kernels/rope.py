"""Triton kernel for the rotary position embedding (RoPE) and its launcher (no autograd here).

One launch rotates q and k together: one program per token ``(b, s)`` loads that token's
``cos``/``sin`` row once (``R/2`` values, in chunks of at most 256 pairs) and rotates every head
of q and then of k with it, ``BLOCK_H`` heads per step. Features ``[R, D)`` are copied
unchanged when the output is a separate tensor (in-place calls leave them alone).

The tile is chosen from the sizes by :func:`rope_tile` (no autotuning: the op is elementwise),
and the kernel is compiled without FMA contraction (``enable_fp_fusion=False``), so its fp32
rotations round like the C++ kernel's and the reference's.

Pairs, for frequency ``j`` in ``[0, R/2)`` with ``c = cos[p, j]``, ``s = sin[p, j]``:

- half layout (NeoX / Llama ``rotate_half``): ``(x[j], x[j + R/2])``;
- interleaved (GPT-J): ``(x[2j], x[2j + 1])``;

``y_first = x_first * c - x_second * s`` and ``y_second = x_second * c + x_first * s`` in fp32,
stored in the input dtype. The backward is the same rotation with ``s`` negated.

``cos``/``sin`` come in the kernel form the ops layer builds: a base pointer with element
strides ``(batch, row, col)``. Cache mode: the row is the token's position (``positions[b, s]``
or ``position_offset + s``), checked against the cache length in the kernel (rows outside it
are masked: rotation by angle 0, never an out-of-bounds read; the ops layer raises before).
Gathered mode: the row is ``s`` and the batch stride selects ``b`` (0 when shared).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import pow2_bucket

# Tile rule (RoPE is elementwise: the tile is chosen from the sizes, never benchmarked).
# Pair columns are padded to a power of two in [MIN_BLOCK_R2, MAX_BLOCK_R2]; wider rotary
# half-widths (R/2 > 256, i.e. D > 512 fully rotated) are rotated in chunks of MAX_BLOCK_R2.
MIN_BLOCK_R2 = 8
MAX_BLOCK_R2 = 256
MAX_BLOCK_H = 64
# A step rotates BLOCK_H x BLOCK_R2 pairs: the head count padded to a power of two, clamped to
# TILE_MIN..TILE_MAX pairs (and to MAX_BLOCK_H heads), with ELEMS_PER_THREAD elements of each
# half per thread (one 16-byte vector of fp16/bf16, two of fp32).
TILE_MIN = 1024
TILE_MAX = 2048
ELEMS_PER_THREAD = 8
# (elements of one half tile, warps) of the append kernel's autotune space (rope_candidates).
_TILES = (1024, 2048, 4096)
_WARPS = (4, 8)


class RopeTile(NamedTuple):
    """Launch tile of the RoPE kernel: heads and pair columns per step, warps."""

    block_h: int
    block_r2: int
    num_warps: int


def block_r2_for(rot_half: int) -> int:
    """Padded width of ``rot_half = R / 2`` pairs (at least MIN_BLOCK_R2)."""
    return max(MIN_BLOCK_R2, triton.next_power_of_2(max(rot_half, 1)))


def block_p_for(head_dim: int, rotary_dim: int) -> int:
    """Padded width of the pass-through features ``[R, D)`` (1 when there are none)."""
    return triton.next_power_of_2(max(head_dim - rotary_dim, 1))


def _block_h_range(block_r2: int) -> tuple[int, int]:
    """The head blocks a pair-column width may use: TILE_MIN..TILE_MAX elements per step."""
    low = min(MAX_BLOCK_H, max(1, TILE_MIN // block_r2))
    return low, min(MAX_BLOCK_H, max(1, TILE_MAX // block_r2))


def rope_tile(rot_half: int, n_heads: int) -> RopeTile:
    """The tile the launcher uses for ``rot_half = R / 2`` pairs and ``n_heads = max(Hq, Hk)``.

    ``BLOCK_R2`` is ``rot_half`` padded to a power of two in ``[8, 256]`` (wider rotary dims
    loop over chunks of 256 pairs); ``BLOCK_H`` is the head count padded to a power of two,
    clamped so that a step holds ``TILE_MIN..TILE_MAX`` pairs (a few heads: masked rows of a
    1024-pair tile; many: several steps of 2048); ``num_warps`` gives every thread
    ``ELEMS_PER_THREAD`` elements of each half. One program per token, so the grid (B * S)
    supplies the parallelism and the tile only sizes the per-token work.
    """
    block_r2 = min(block_r2_for(rot_half), MAX_BLOCK_R2)
    low, high = _block_h_range(block_r2)
    block_h = min(max(triton.next_power_of_2(max(n_heads, 1)), low), high)
    warps = max(1, block_h * block_r2 // (32 * ELEMS_PER_THREAD))
    return RopeTile(block_h, block_r2, warps)


def copy_block_for(head_dim: int, rotary_dim: int, block_h: int) -> int:
    """Width of the pass-through copy step: ``[R, D)`` padded, at most ``2 * TILE_MAX`` elements
    per ``BLOCK_H`` heads (as many as a rotation step moves); longer tails loop."""
    return min(block_p_for(head_dim, rotary_dim), max(1, 2 * TILE_MAX // block_h))


def rope_config_space() -> list[RopeTile]:
    """Every tile :func:`rope_tile` can return (for the compile checks)."""
    space = []
    block_r2 = MIN_BLOCK_R2
    while block_r2 <= MAX_BLOCK_R2:
        low, high = _block_h_range(block_r2)
        block_h = low
        while block_h <= high:
            space.append(rope_tile(block_r2, block_h))
            block_h *= 2
        block_r2 *= 2
    return space


def heads_bucket(n_heads: int) -> int:
    """Autotune key of the append kernel for a head count: the next power of two, at most
    MAX_BLOCK_H."""
    return pow2_bucket(n_heads, MAX_BLOCK_H)


def rope_candidates(block_r2: int) -> list[tuple[int, int]]:
    """(BLOCK_H, num_warps) pairs of ``_rotate_heads`` tiles with 8..32 elements of each half
    per thread for a pair-column width (the KV-cache append kernel's autotune space)."""
    out = []
    for tile in _TILES:
        block_h = max(1, min(tile // block_r2, MAX_BLOCK_H))
        for warps in _WARPS:
            per_thread = block_h * block_r2 // (32 * warps)
            if 8 <= per_thread <= 32 and (block_h, warps) not in out:
                out.append((block_h, warps))
    if not out:
        # Narrow rotary dims: the tallest head block, with 8 elements per thread.
        out.append((MAX_BLOCK_H, max(1, MAX_BLOCK_H * block_r2 // 256)))
    return out


# One tile of pairs (ROT_HALF <= BLOCK_R2) and the copy of features [R, D) in one BLOCK_P step,
# per head block: the KV-cache append kernel's rotation (rope_kernel itself rotates in chunks
# with _rotate_chunk and copies with _copy_features, so any R and D fit).
@triton.jit
def _rotate_heads(
    x_ptr,  # this token's head 0 in the input: x[b, 0, s, 0]
    o_ptr,  # the same in the output
    n_heads,
    stride_xh,
    stride_oh,
    c,  # [BLOCK_R2] fp32 cos of this token (1 in masked columns)
    s,  # [BLOCK_R2] fp32 sin (already negated for the backward)
    ROT_HALF: tl.constexpr,  # R / 2
    HEAD_DIM: tl.constexpr,  # D
    INTERLEAVED: tl.constexpr,
    COPY_REST: tl.constexpr,  # copy features [R, D) to the output
    BLOCK_H: tl.constexpr,
    BLOCK_R2: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    dt = o_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_R2)  # [BR]
    col_ok = cols < ROT_HALF
    c2 = c[None, :]
    s2 = s[None, :]
    for h0 in range(0, n_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)  # [BH]
        h_ok = heads < n_heads
        x_row = x_ptr + heads.to(tl.int64)[:, None] * stride_xh  # [BH, 1]
        o_row = o_ptr + heads.to(tl.int64)[:, None] * stride_oh  # [BH, 1]
        if INTERLEAVED:
            cols2 = tl.arange(0, 2 * BLOCK_R2)  # [2BR]
            mask2 = h_ok[:, None] & (cols2 < 2 * ROT_HALF)[None, :]  # [BH, 2BR]
            x = tl.load(x_row + cols2[None, :], mask=mask2, other=0.0).to(tl.float32)
            x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_H, BLOCK_R2, 2]))  # [BH, BR] each
            y_even = x_even * c2 - x_odd * s2
            y_odd = x_odd * c2 + x_even * s2
            y = tl.reshape(tl.join(y_even, y_odd), [BLOCK_H, 2 * BLOCK_R2])  # [BH, 2BR]
            tl.store(o_row + cols2[None, :], y.to(dt), mask=mask2)
        else:
            mask = h_ok[:, None] & col_ok[None, :]  # [BH, BR]
            x1 = tl.load(x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(x_row + ROT_HALF + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y1 = x1 * c2 - x2 * s2
            y2 = x2 * c2 + x1 * s2
            tl.store(o_row + cols[None, :], y1.to(dt), mask=mask)
            tl.store(o_row + ROT_HALF + cols[None, :], y2.to(dt), mask=mask)
        if COPY_REST:
            rest = 2 * ROT_HALF + tl.arange(0, BLOCK_P)  # [BP]
            rmask = h_ok[:, None] & (rest < HEAD_DIM)[None, :]
            v = tl.load(x_row + rest[None, :], mask=rmask, other=0.0)
            tl.store(o_row + rest[None, :], v.to(dt), mask=rmask)


@triton.jit
def _rotate_chunk(
    x_ptr,  # this token's head 0 in the input: x[b, 0, s, 0]
    o_ptr,  # the same in the output
    n_heads,
    stride_xh,
    stride_oh,
    c,  # [BLOCK_R2] fp32 cos of pairs r0.. of this token (1 in masked columns)
    s,  # [BLOCK_R2] fp32 sin (already negated for the backward)
    r0,  # first pair of the chunk, a multiple of BLOCK_R2
    ROT_HALF: tl.constexpr,  # R / 2
    INTERLEAVED: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R2: tl.constexpr,
):
    """Rotate pairs ``[r0, r0 + BLOCK_R2)`` (those below ROT_HALF) of every head, BLOCK_H
    heads per step. Each output element is read before it is written by the same thread's
    step, so ``o_ptr`` may be ``x_ptr`` (in place)."""
    dt = o_ptr.dtype.element_ty
    cols = r0 + tl.arange(0, BLOCK_R2)  # [BR]
    col_ok = cols < ROT_HALF
    c2 = c[None, :]
    s2 = s[None, :]
    for h0 in range(0, n_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)  # [BH]
        h_ok = heads < n_heads
        x_row = x_ptr + heads.to(tl.int64)[:, None] * stride_xh  # [BH, 1]
        o_row = o_ptr + heads.to(tl.int64)[:, None] * stride_oh  # [BH, 1]
        if INTERLEAVED:
            cols2 = 2 * r0 + tl.arange(0, 2 * BLOCK_R2)  # [2BR]
            mask2 = h_ok[:, None] & (cols2 < 2 * ROT_HALF)[None, :]  # [BH, 2BR]
            x = tl.load(x_row + cols2[None, :], mask=mask2, other=0.0).to(tl.float32)
            x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_H, BLOCK_R2, 2]))  # [BH, BR] each
            y_even = x_even * c2 - x_odd * s2
            y_odd = x_odd * c2 + x_even * s2
            y = tl.reshape(tl.join(y_even, y_odd), [BLOCK_H, 2 * BLOCK_R2])  # [BH, 2BR]
            tl.store(o_row + cols2[None, :], y.to(dt), mask=mask2)
        else:
            mask = h_ok[:, None] & col_ok[None, :]  # [BH, BR]
            x1 = tl.load(x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(x_row + ROT_HALF + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y1 = x1 * c2 - x2 * s2
            y2 = x2 * c2 + x1 * s2
            tl.store(o_row + cols[None, :], y1.to(dt), mask=mask)
            tl.store(o_row + ROT_HALF + cols[None, :], y2.to(dt), mask=mask)


@triton.jit
def _copy_features(
    x_ptr,  # this token's head 0 in the input
    o_ptr,  # the same in the output
    n_heads,
    stride_xh,
    stride_oh,
    START: tl.constexpr,  # first feature copied (R)
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Copy features ``[START, HEAD_DIM)`` of every head, ``BLOCK_H x BLOCK_P`` per step."""
    dt = o_ptr.dtype.element_ty
    for h0 in range(0, n_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)  # [BH]
        h_ok = heads < n_heads
        x_row = x_ptr + heads.to(tl.int64)[:, None] * stride_xh  # [BH, 1]
        o_row = o_ptr + heads.to(tl.int64)[:, None] * stride_oh  # [BH, 1]
        for p0 in range(START, HEAD_DIM, BLOCK_P):
            rest = p0 + tl.arange(0, BLOCK_P)  # [BP]
            rmask = h_ok[:, None] & (rest < HEAD_DIM)[None, :]
            v = tl.load(x_row + rest[None, :], mask=rmask, other=0.0)
            tl.store(o_row + rest[None, :], v.to(dt), mask=rmask)


@triton.jit
def rope_kernel(
    q_ptr,  # [B, Hq, S, D]
    k_ptr,  # [B, Hk, S, D] (q when there is no k: n_heads_k == 0)
    cos_ptr,  # cos table, element strides (batch, row, col)
    sin_ptr,  # sin table, same form
    pos_ptr,  # [B or 1, S] int32/int64 positions (read only when HAS_POSITIONS)
    out_q_ptr,  # [B, Hq, S, D], may be q_ptr
    out_k_ptr,  # [B, Hk, S, D], may be k_ptr
    seq_len,
    n_heads_q,
    n_heads_k,
    max_pos,  # rows of the cache (cache mode)
    position_offset,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_oqb,
    stride_oqh,
    stride_oqs,
    stride_okb,
    stride_okh,
    stride_oks,
    stride_cb,
    stride_cr,
    stride_cc,
    stride_sb,
    stride_sr,
    stride_sc,
    stride_pb,
    stride_ps,
    HEAD_DIM: tl.constexpr,
    ROT_HALF: tl.constexpr,
    CACHE: tl.constexpr,  # row of cos/sin = position (else = s, batch stride selects b)
    HAS_POSITIONS: tl.constexpr,  # positions tensor vs position_offset + s (cache mode)
    INTERLEAVED: tl.constexpr,
    BACKWARD: tl.constexpr,  # rotate by the negated angle
    COPY_REST: tl.constexpr,
    BLOCK_R2: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # One program per token; pid < 2**31 (launcher), so // and % stay in 32 bits.
    pid = tl.program_id(0)
    b = (pid // seq_len).to(tl.int64)
    s_idx = (pid % seq_len).to(tl.int64)

    if CACHE:
        if HAS_POSITIONS:
            pos = tl.load(pos_ptr + b * stride_pb + s_idx * stride_ps).to(tl.int64)
        else:
            pos = s_idx + position_offset
        # Positions are range-checked on the host; the mask keeps the kernel in the cache (a
        # position outside it loads no column: cos 1, sin 0, the identity).
        n_cols = tl.where((pos >= 0) & (pos < max_pos), ROT_HALF, 0)
        c_base = cos_ptr + pos * stride_cr
        s_base = sin_ptr + pos * stride_sr
    else:
        n_cols = ROT_HALF
        c_base = cos_ptr + b * stride_cb + s_idx * stride_cr
        s_base = sin_ptr + b * stride_sb + s_idx * stride_sr
    q_in = q_ptr + b * stride_qb + s_idx * stride_qs
    q_out = out_q_ptr + b * stride_oqb + s_idx * stride_oqs
    k_in = k_ptr + b * stride_kb + s_idx * stride_ks
    k_out = out_k_ptr + b * stride_okb + s_idx * stride_oks

    # Pair chunks of BLOCK_R2 columns (one chunk unless R/2 > MAX_BLOCK_R2): this token's
    # cos/sin of the chunk are loaded once and rotate every head of q, then of k.
    for chunk in range(0, tl.cdiv(ROT_HALF, BLOCK_R2)):
        r0 = chunk * BLOCK_R2
        cols = r0 + tl.arange(0, BLOCK_R2)  # [BR]
        ok = cols < n_cols
        c = tl.load(c_base + cols * stride_cc, mask=ok, other=1.0).to(tl.float32)  # [BR]
        sn = tl.load(s_base + cols * stride_sc, mask=ok, other=0.0).to(tl.float32)
        if BACKWARD:
            sn = -sn
        _rotate_chunk(q_in, q_out, n_heads_q, stride_qh, stride_oqh, c, sn, r0,
                      ROT_HALF, INTERLEAVED, BLOCK_H, BLOCK_R2)  # fmt: skip
        _rotate_chunk(k_in, k_out, n_heads_k, stride_kh, stride_okh, c, sn, r0,
                      ROT_HALF, INTERLEAVED, BLOCK_H, BLOCK_R2)  # fmt: skip
    if COPY_REST:
        _copy_features(q_in, q_out, n_heads_q, stride_qh, stride_oqh, 2 * ROT_HALF, HEAD_DIM,
                       BLOCK_H, BLOCK_P)  # fmt: skip
        _copy_features(k_in, k_out, n_heads_k, stride_kh, stride_okh, 2 * ROT_HALF, HEAD_DIM,
                       BLOCK_H, BLOCK_P)  # fmt: skip


# ---------------------------------------------------------------------------- launcher


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride()


def rope_forward(
    q: torch.Tensor,  # [B, Hq, S, D], stride(-1) == 1
    k: torch.Tensor | None,  # [B, Hk, S, D], stride(-1) == 1, or None
    cos: torch.Tensor,  # base tensor addressed through cos_strides
    sin: torch.Tensor,  # base tensor addressed through sin_strides
    out_q: torch.Tensor,  # [B, Hq, S, D] q.dtype, stride(-1) == 1; may be q (in place)
    out_k: torch.Tensor | None,  # like k; may be k; None iff k is None
    *,
    cos_strides: tuple[int, int, int],  # element strides (batch, row, col) of cos
    sin_strides: tuple[int, int, int],
    positions: torch.Tensor | None,  # [B or 1, S] int32/int64 (cache mode only)
    position_offset: int,
    cache: bool,
    interleaved: bool,
    rotary_dim: int,
    backward: bool,
) -> None:
    """Rotate q (and k) by RoPE in one launch, writing ``out_q`` (and ``out_k``).

    Cache mode (``cache=True``): ``cos``/``sin`` rows are positions, ``cos.shape[-2]`` rows
    (the cache length positions are masked against), batch stride ignored; the position of
    token ``(b, s)`` is ``positions[b or 0, s]`` or ``position_offset + s``. Gathered mode: the
    row of token ``(b, s)`` is at ``b * stride_batch + s * stride_row`` (``positions`` must be
    None). Column ``j`` of a row is at ``j * stride_col`` for ``j < rotary_dim / 2``.
    ``backward=True`` rotates by the negated angle. Inputs are assumed validated by the ops
    layer (shapes, dtypes, even ``rotary_dim <= D``, positions inside the cache, outputs that
    are the inputs themselves or share no element with them). The tile is
    ``rope_tile(R / 2, max(Hq, Hk))``; any ``R`` and ``D`` fit (chunks of 256 pairs).
    """
    batch, n_heads_q, seq, head_dim = q.shape
    n_heads_k = 0 if k is None else k.shape[1]
    if batch * seq == 0 or head_dim == 0 or n_heads_q + n_heads_k == 0:
        return
    if batch * seq >= 2**31:
        raise ValueError(f"apply_rotary: {batch * seq} tokens in one call; the limit is 2**31 - 1")
    if rotary_dim == 0:
        # Nothing to rotate: the output is the input.
        for x, o in ((q, out_q), (k, out_k)):
            if x is not None and not _same_view(x, o):
                o.copy_(x)
        return
    rot_half = rotary_dim // 2
    if k is None:
        k, out_k = q, out_q  # dummies, never read: n_heads_k == 0
    inplace = _same_view(q, out_q) and (n_heads_k == 0 or _same_view(k, out_k))
    copy_rest = rotary_dim < head_dim and not inplace
    tile = rope_tile(rot_half, max(n_heads_q, n_heads_k))

    if cache:
        max_pos = cos.shape[-2] if cos.dim() >= 2 else cos.shape[0]
        cos_strides = (0, *cos_strides[1:])
        sin_strides = (0, *sin_strides[1:])
    else:
        max_pos = seq
    if positions is not None and cache:
        pos_t = positions
        stride_pb = positions.stride(0) if positions.shape[0] > 1 else 0
        stride_ps = positions.stride(1)
    else:
        pos_t, stride_pb, stride_ps = q, 0, 0  # dummy, never read

    launch(
        rope_kernel,
        (batch * seq,),
        q,
        k,
        cos,
        sin,
        pos_t,
        out_q,
        out_k,
        seq,
        n_heads_q,
        n_heads_k,
        max_pos,
        int(position_offset),
        *q.stride()[:3],
        *k.stride()[:3],
        *out_q.stride()[:3],
        *out_k.stride()[:3],
        *(int(v) for v in cos_strides),
        *(int(v) for v in sin_strides),
        stride_pb,
        stride_ps,
        HEAD_DIM=head_dim,
        ROT_HALF=rot_half,
        CACHE=bool(cache),
        HAS_POSITIONS=bool(cache) and positions is not None,
        INTERLEAVED=bool(interleaved),
        BACKWARD=bool(backward),
        COPY_REST=copy_rest,
        BLOCK_R2=tile.block_r2,
        BLOCK_P=copy_block_for(head_dim, rotary_dim, tile.block_h),
        BLOCK_H=tile.block_h,
        num_warps=tile.num_warps,
        num_stages=1,
        # No FMA contraction: each rotation rounds its two products and their sum separately,
        # as the C++ kernel and the reference do, so the backends agree bit for bit in fp32.
        enable_fp_fusion=False,
    )
