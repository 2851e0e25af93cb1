"""Triton kernel for the rotary position embedding (RoPE) and its launcher (no autograd here).

One launch rotates q and k together: one program per token ``(b, s)`` loads that token's
``cos``/``sin`` row once (``R/2`` values) and rotates every head of q and then of k with it,
``BLOCK_H`` heads per step. Features ``[R, D)`` are copied unchanged when the output is a
separate tensor (in-place calls leave them alone).

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

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import make_configs, pow2_bucket, short_tile_pruner

# Rotary half-widths are padded to a power of two in [MIN_BLOCK_R2, MAX_BLOCK_R2]: head dims up
# to 2 * MAX_BLOCK_R2 = 512 features are rotated in one tile per head.
MIN_BLOCK_R2 = 8
MAX_BLOCK_R2 = 256
MAX_BLOCK_H = 64
# (elements of one half tile, warps) candidates; kept when every thread holds 8..32 elements of
# each half, i.e. at least one 16-byte vector of fp16/bf16 (two of fp32) and few registers.
_TILES = (1024, 2048, 4096)
_WARPS = (4, 8)


def block_r2_for(rot_half: int) -> int:
    """Tile width of the frequency axis for ``rot_half = R / 2`` pairs."""
    return max(MIN_BLOCK_R2, triton.next_power_of_2(max(rot_half, 1)))


def block_p_for(head_dim: int, rotary_dim: int) -> int:
    """Tile width of the pass-through features ``[R, D)`` (1 when there are none)."""
    return triton.next_power_of_2(max(head_dim - rotary_dim, 1))


def heads_bucket(n_heads: int) -> int:
    """Autotune key for the head count: the next power of two, capped at MAX_BLOCK_H."""
    return pow2_bucket(n_heads, MAX_BLOCK_H)


def rope_candidates(block_r2: int) -> list[tuple[int, int]]:
    """All (BLOCK_H, num_warps) pairs the autotuner may try for a frequency tile width."""
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


def rope_config_space() -> list[tuple[int, int, int]]:
    """Every (BLOCK_H, BLOCK_R2, num_warps) the launcher can run: for compile checks."""
    space = []
    block_r2 = MIN_BLOCK_R2
    while block_r2 <= MAX_BLOCK_R2:
        space += [(h, block_r2, w) for h, w in rope_candidates(block_r2)]
        block_r2 *= 2
    return space


def _configs() -> list[triton.Config]:
    pairs = sorted({(h, w) for h, _, w in rope_config_space()})
    return make_configs(pairs, "BLOCK_H", num_stages=1)


_prune = short_tile_pruner(rope_candidates, "BLOCK_R2", "BLOCK_H", "n_heads_bucket")


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


@triton.autotune(
    configs=_configs(),
    key=["n_heads_bucket", "HEAD_DIM", "ROT_HALF", "INTERLEAVED"],
    prune_configs_by={"early_config_prune": _prune},
    # In-place calls (out is q / k) must not be rotated again by each benchmark run.
    restore_value=["out_q_ptr", "out_k_ptr"],
)
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
    n_heads_bucket,  # autotune key only: heads_bucket(max(Hq, Hk))
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

    cols = tl.arange(0, BLOCK_R2)  # [BR]
    col_ok = cols < ROT_HALF
    if CACHE:
        if HAS_POSITIONS:
            pos = tl.load(pos_ptr + b * stride_pb + s_idx * stride_ps).to(tl.int64)
        else:
            pos = s_idx + position_offset
        # Positions are range-checked on the host; the mask keeps the kernel in the cache (a
        # position outside it loads no column: cos 1, sin 0, the identity).
        n_cols = tl.where((pos >= 0) & (pos < max_pos), ROT_HALF, 0)
        ok = cols < n_cols
        c_off = pos * stride_cr
        s_off = pos * stride_sr
    else:
        ok = col_ok
        c_off = b * stride_cb + s_idx * stride_cr
        s_off = b * stride_sb + s_idx * stride_sr
    c = tl.load(cos_ptr + c_off + cols * stride_cc, mask=ok, other=1.0).to(tl.float32)  # [BR]
    sn = tl.load(sin_ptr + s_off + cols * stride_sc, mask=ok, other=0.0).to(tl.float32)
    if BACKWARD:
        sn = -sn

    _rotate_heads(
        q_ptr + b * stride_qb + s_idx * stride_qs,
        out_q_ptr + b * stride_oqb + s_idx * stride_oqs,
        n_heads_q,
        stride_qh,
        stride_oqh,
        c,
        sn,
        ROT_HALF,
        HEAD_DIM,
        INTERLEAVED,
        COPY_REST,
        BLOCK_H,
        BLOCK_R2,
        BLOCK_P,
    )
    _rotate_heads(
        k_ptr + b * stride_kb + s_idx * stride_ks,
        out_k_ptr + b * stride_okb + s_idx * stride_oks,
        n_heads_k,
        stride_kh,
        stride_okh,
        c,
        sn,
        ROT_HALF,
        HEAD_DIM,
        INTERLEAVED,
        COPY_REST,
        BLOCK_H,
        BLOCK_R2,
        BLOCK_P,
    )


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
    layer (shapes, dtypes, even ``rotary_dim <= D``, positions inside the cache).
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
        heads_bucket(max(n_heads_q, n_heads_k)),
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
        BLOCK_R2=block_r2_for(rot_half),
        BLOCK_P=block_p_for(head_dim, rotary_dim),
    )
