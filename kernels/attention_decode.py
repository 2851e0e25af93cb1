"""Flash-decoding: split-K attention of a few new queries over a dense or paged KV cache.

Rows. The ``Hq / Hkv = group`` query heads sharing kv head ``kvh`` and the ``Sq`` new tokens
are packed into the M dimension of one tile: row ``r`` in ``[0, Sq * group)`` is query token
``t = r // group`` of head ``h = kvh * group + r % group`` (for ``Sq = 1`` the rows are the
group's heads, contiguous in ``q [B, Sq, Hq, D]``). GQA decode therefore runs ``tl.dot`` on
``[BLOCK_M >= 16, D] x [D, BLOCK_N]`` tiles (tensor cores) and reads each k/v tile once per
group. Rows past ``BLOCK_M`` (64) go to further M blocks.

Grid ``(m_blocks * num_splits, Hkv, B)``; program ``pid`` is M block ``pid // num_splits``,
split ``pid % num_splits``. Batch ``b`` has ``L_b = min(seqlens_k[b], capacity)`` keys. Its key
tiles that any row of the M block may see are ``[lo, hi)`` (``hi = L_b``, or the last row's
causal limit; ``lo`` = the first row's window start, 0 without a window): tiles entirely
outside are never visited. They are dealt in equal contiguous runs of
``ceil(n_tiles / num_splits)`` tiles to the splits, at run time from ``seqlens_k`` (no host
sync): a short sequence in a long cache still spreads over all splits, and a split with no tile
writes ``lse = -inf``. Per key: ``j < L_b``, causal ``j <= p`` and window ``j > p - w`` with
``p = t + L_b - Sq`` (bottom-right); softcap ``s = c * tanh(scale * q.k / c)``.

Paged caches: key slot ``j`` is row ``j % block_size`` of block ``block_table[b, j //
block_size]``; every key row of a tile is gathered on its own (a tile may span several pages,
or lie inside one), each row contiguous along D, so k/v still move in 16-byte pieces (128-bit
loads, or 16-byte ``cp.async`` copies into the pipeline's shared buffers). A block id
outside ``[0, num_blocks)`` masks its keys (the ops layer rejects such tables; the mask keeps an
unchecked call inside the cache).

``num_splits = 1``: the decode kernel normalises and writes ``out``/``lse`` directly.
``num_splits > 1``: it writes fp32 partials (``o_s`` normalised, ``lse_s``) and
``decode_combine_kernel`` merges them: ``lse = log(sum_s exp(lse_s))``,
``out = sum_s exp(lse_s - lse) o_s`` (a split with ``lse_s = -inf`` adds nothing; a row with
no allowed key gets zeros and ``lse = -inf``).

The cache dtype is q's; fp32 dots run as tf32x3 (fp32 FMAs at D > 128, see
``decode_dot_precision``). Under the interpreter tiles are upcast to fp32 right after loading.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fusedops.constants import LOG2E

from . import INTERPRET
from ._launch import launch
from ._online_softmax import online_softmax_step
from ._tuning import rows_aligned
from .attention import MAX_GRID_YZ, block_d_for, dot_precision, tanh
from .kvcache_append import cache_layout, kvcache_append

# Packed query rows per tile: 16 (the smallest tensor-core M; decode with group <= 16) or 64
# (Sq > 1 chunks and wide groups; wgmma's M on sm_90).
BLOCK_M_SIZES = (16, 64)
# Splits per (batch, kv head, M block) at most, and keys per split at least (the heuristic).
MAX_SPLITS = 128
MIN_SPLIT_KEYS = 256
# Candidate key tiles (BLOCK_N, num_warps, num_stages), filtered per (BLOCK_D, dtype, BLOCK_M)
# in decode_config_space; the launcher runs the first survivor (decode_tile), never an autotuner:
# a cache growing during generation must not re-tune (compile and benchmark) mid-stream.
_BLOCK_N = (16, 32, 64, 128)
_WARPS = (4, 8)
_STAGES = (3, 2)
# Shared memory the pipelined k/v tiles may take: half of sm_80's 163 KiB, so two programs fit
# on one SM.
_SMEM_BUDGET = 80 * 1024
# fp32 values a thread may hold for the accumulator plus the score tile counted twice (scores
# and probabilities); fp32 inputs (tf32x3 hi/lo operand splits) count three times. A third
# stage only within half of it (as the prefill forward).
_REG_BUDGET = 128
# The single config the interpreter runs (32-key tiles: several tiles per split and tiles
# spanning pages of 16 in the tests' small caches).
INTERPRET_CONFIG = (32, 4, 1)
# Combine: [BLOCK_H heads, BLOCK_D] fp32 tiles of this many elements (8 per thread at 4 warps).
_COMBINE_TILE = 1024
COMBINE_WARPS = 4


def block_m_for(rows: int, elem_size: int = 2, *, head_dim: int = 128, aligned: bool = True) -> int:
    """Packed-row tile for ``rows = Sq * Hq / Hkv`` query rows per kv head: 16 for up to 16
    rows (and always for fp32, and for unaligned rows at BLOCK_D 256, where no 64-row tile
    compiled clean), else 64."""
    small, big = BLOCK_M_SIZES
    if rows <= small or elem_size == 4 or (not aligned and block_d_for(head_dim) > 128):
        return small
    return big


def decode_dot_precision(dtype: torch.dtype, head_dim: int) -> str:
    """``input_precision`` of the decode dots: the prefill forward's (tf32x3 for fp32), but
    fp32 FMAs ("ieee") for fp32 at BLOCK_D 256, where the tf32x3 tile spilled."""
    if dtype == torch.float32 and block_d_for(head_dim) > 128:
        return "ieee"
    return dot_precision(dtype, head_dim)


def combine_block_h(head_dim: int) -> int:
    """Heads per combine program for head dim ``head_dim``."""
    return max(1, _COMBINE_TILE // block_d_for(head_dim))


def decode_config_space(
    head_dim: int, elem_size: int = 2, block_m: int = 16
) -> list[tuple[int, int, int]]:
    """The candidate (BLOCK_N, num_warps, num_stages) for ``head_dim``, inputs of
    ``elem_size`` bytes and ``block_m`` packed rows, best first (:func:`decode_tile` runs the
    first; empty for fp32 64-row tiles, which never run).

    Generated from the candidate key tiles (16-key tiles only for fp32, 128-key tiles only
    for 16-bit inputs; 8 warps only for 64-row tiles), kept when the accumulator plus twice
    the score tile (three times that for fp32's tf32x3) fit the register budget, each at the
    most stages (3 only within half the register budget) whose pipelined k/v tiles fit the
    shared-memory budget; ordered widest key tile first (fewer values per thread first).
    """
    block_d = block_d_for(head_dim)
    weight = 3 if elem_size == 4 else 1
    fitting = []
    for bn in _BLOCK_N:
        for warps in _WARPS:
            # 16-key tiles only for fp32, 128-key tiles only for 16-bit inputs (fp32's tf32x3
            # hi/lo k tiles at 128 keys spilled at D = 16); 8 warps only for 64 rows.
            if (bn < 32 and elem_size < 4) or (bn > 64 and elem_size == 4):
                continue
            if warps > 4 and block_m < 64:
                continue
            per_thread = weight * (block_m * block_d + 2 * block_m * bn) // (32 * warps)
            if per_thread > _REG_BUDGET:
                continue
            for st in _STAGES:
                if st > 2 and per_thread > _REG_BUDGET // 2:
                    continue
                if st * 2 * bn * block_d * elem_size <= _SMEM_BUDGET:
                    fitting.append((per_thread, (bn, warps, st)))
                    break
    if elem_size == 4 and block_m > BLOCK_M_SIZES[0]:
        return []  # block_m_for gives fp32 16-row tiles only
    fitting.sort(key=lambda item: (-item[1][0], item[0]))
    return [cfg for _, cfg in fitting]


# Rows that are not 16-element multiples (or unaligned pointers: see rows_aligned) load element
# by element, each element's address in registers: smaller, unpipelined key tiles, measured
# clean with every flag on. (elem_size, BLOCK_M) -> {BLOCK_D: (BLOCK_N, num_warps, stages)}.
_UNALIGNED_TILES = {
    (2, 16): {16: (32, 4, 1), 32: (32, 4, 1), 64: (32, 4, 1), 128: (16, 4, 1), 256: (16, 4, 1)},
    (2, 64): {16: (32, 8, 1), 32: (32, 8, 1), 64: (32, 8, 1), 128: (16, 8, 1)},
    (4, 16): {16: (32, 4, 1), 32: (32, 4, 1), 64: (32, 4, 1), 128: (16, 4, 1), 256: (16, 8, 1)},
}


def decode_tile(
    head_dim: int, elem_size: int = 2, block_m: int = 16, *, aligned: bool = True
) -> tuple[int, int, int]:
    """The (BLOCK_N, num_warps, num_stages) a decode launch runs: a function of the head dim,
    the element size, the packed-row tile and whether the rows are aligned (``rows_aligned``)
    only, never of the cache length, so a growing cache keeps one compiled kernel and nothing
    is benchmarked mid-generation. Aligned: the widest key tile of
    :func:`decode_config_space` (the memory-bound decode streams k/v; the widest tile that
    fits keeps the most bytes in flight per program, and the split count, not the tile,
    spreads a long cache over the SMs); unaligned: ``_UNALIGNED_TILES``."""
    if not aligned:
        return _UNALIGNED_TILES[(elem_size, block_m)][block_d_for(head_dim)]
    return decode_config_space(head_dim, elem_size, block_m)[0]


@triton.jit
def _decode_tile(
    acc,  # [BM, BD] fp32
    l_i,  # [BM] fp32
    m_i,  # [BM] fp32 (log2 domain)
    q,  # [BM, BD]
    k_base,  # k of this kv head (and batch, when dense)
    v_base,
    table_row,  # block_table[b] (read only when PAGED)
    start_n,
    offs_n,
    offs_d,
    d_ok,
    pos,  # [BM] bottom-right position of each row
    key_hi,  # keys >= key_hi are masked
    n_blocks,
    block_size,
    window,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    score_scale,  # scale * log2(e), or scale / softcap with SOFTCAP
    cap_scale,  # softcap * log2(e)
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    PAGED: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over key slots [start_n, start_n + BLOCK_N)."""
    cols = start_n + offs_n  # [BN]
    n_ok = cols < key_hi
    if PAGED:
        blk = tl.load(table_row + cols // block_size, mask=n_ok, other=0).to(tl.int64)
        n_ok = n_ok & (blk >= 0) & (blk < n_blocks)
        row = (cols % block_size).to(tl.int64)
        k_rows = blk * stride_kb + row * stride_kn  # [BN]
        v_rows = blk * stride_vb + row * stride_vn
    else:
        k_rows = cols.to(tl.int64) * stride_kn
        v_rows = cols.to(tl.int64) * stride_vn
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + k_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * score_scale  # [BM, BN]
    if SOFTCAP:
        s = tanh(s) * cap_scale  # c * tanh(scale * q.k / c), in the log2 domain
    allowed = n_ok[None, :]
    if CAUSAL:
        allowed = allowed & (cols[None, :] <= pos[:, None])
    if WINDOW:
        allowed = allowed & (cols[None, :] > pos[:, None] - window)
    s = tl.where(allowed, s, float("-inf"))
    return online_softmax_step(acc, l_i, m_i, s, v, DOT_PRECISION)


@triton.jit
def decode_kernel(
    q_ptr,  # [B, Sq, Hq, D]
    k_ptr,  # dense [B, S_max, Hkv, D] | paged [num_blocks, block_size, Hkv, D]
    v_ptr,  # like k
    seqlens_ptr,  # [B] int32: L_b
    table_ptr,  # [B, max_blocks] int32 (read only when PAGED)
    out_ptr,  # SPLIT: [B, splits, Sq, Hq, D] fp32 partials; else [B, Sq, Hq, D]
    lse_ptr,  # SPLIT: [B, splits, Hq, Sq] fp32 partials; else [B, Hq, Sq] fp32
    seq_q,
    group,  # Hq // Hkv
    rows,  # Sq * group
    capacity,  # S_max, or max_blocks * block_size
    n_blocks,  # blocks of a paged cache
    block_size,
    num_splits,
    window,  # sliding window w (read only when WINDOW)
    score_scale,
    cap_scale,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,  # batch (dense) or block (paged)
    stride_kn,  # slot (dense) or row in block (paged)
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_tb,
    stride_ob,
    stride_osp,  # split (0 without SPLIT)
    stride_os,
    stride_oh,
    stride_lb,
    stride_lsp,
    stride_lh,
    stride_ls,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    PAGED: tl.constexpr,  # block_table addressing of the cache
    SPLIT: tl.constexpr,  # write fp32 partials for the combine kernel
    UPCAST: tl.constexpr,  # interpreter: fp32 tiles
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    split = pid % num_splits
    m_start = (pid // num_splits) * BLOCK_M
    b64 = b.to(tl.int64)

    offs_m = m_start + tl.arange(0, BLOCK_M)  # [BM] packed rows
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < rows
    t = offs_m // group  # [BM] query token
    h = kvh * group + offs_m % group  # [BM] query head

    seq_k = tl.minimum(tl.maximum(tl.load(seqlens_ptr + b), 0), capacity)
    diag = seq_k - seq_q
    pos = t + diag  # [BM]

    # Key slots [lo, hi) some row of this M block may see, in whole tiles, dealt to the splits.
    t_last = tl.minimum((m_start + BLOCK_M - 1) // group, seq_q - 1)
    hi = tl.maximum(tl.minimum(seq_k, t_last + diag + 1), 0) if CAUSAL else seq_k
    lo = 0
    if WINDOW:
        lo = tl.maximum(m_start // group + diag - window + 1, 0)
    tile_lo = lo // BLOCK_N
    n_tiles = tl.maximum(tl.cdiv(hi, BLOCK_N) - tile_lo, 0)
    per_split = tl.cdiv(n_tiles, num_splits)
    start = (tile_lo + split * per_split) * BLOCK_N
    end = tl.minimum(start + per_split * BLOCK_N, hi)

    q_rows = t.to(tl.int64) * stride_qs + h.to(tl.int64) * stride_qh  # [BM]
    q_ptrs = q_ptr + b64 * stride_qb + q_rows[:, None] + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if PAGED:
        k_base = k_ptr + kvh.to(tl.int64) * stride_kh
        v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    else:
        k_base = k_ptr + b64 * stride_kb + kvh.to(tl.int64) * stride_kh
        v_base = v_ptr + b64 * stride_vb + kvh.to(tl.int64) * stride_vh
    table_row = table_ptr + b64 * stride_tb

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(start, end, BLOCK_N):
        acc, l_i, m_i = _decode_tile(
            acc, l_i, m_i, q, k_base, v_base, table_row, start_n, offs_n, offs_d, d_ok, pos,
            hi, n_blocks, block_size, window, stride_kb, stride_kn, stride_vb, stride_vn,
            score_scale, cap_scale, CAUSAL, WINDOW, SOFTCAP, PAGED, UPCAST, DOT_PRECISION,
        )  # fmt: skip

    # A row with no allowed key (l = 0) is zeros even when a key tile it visited held NaN
    # values it may not see (0 * NaN in the p v product).
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = tl.where(empty[:, None], 0.0, acc / l_safe[:, None])
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    sp = split.to(tl.int64)
    o_rows = t.to(tl.int64) * stride_os + h.to(tl.int64) * stride_oh  # [BM]
    o_ptrs = out_ptr + b64 * stride_ob + sp * stride_osp + o_rows[:, None] + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    l_rows = h.to(tl.int64) * stride_lh + t.to(tl.int64) * stride_ls
    tl.store(lse_ptr + b64 * stride_lb + sp * stride_lsp + l_rows, lse, mask=m_ok)


@triton.jit
def decode_combine_kernel(
    part_o_ptr,  # [B, splits, Sq, Hq, D] fp32
    part_lse_ptr,  # [B, splits, Hq, Sq] fp32
    out_ptr,  # [B, Sq, Hq, D]
    lse_ptr,  # [B, Hq, Sq] fp32
    n_heads,
    num_splits,
    stride_pb,
    stride_psp,
    stride_ps,
    stride_ph,
    stride_plb,
    stride_plsp,
    stride_plh,
    stride_pls,
    stride_ob,
    stride_os,
    stride_oh,
    stride_lb,
    stride_lh,
    stride_ls,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Grid (head blocks, Sq, B): one query token, BLOCK_H of its heads.
    heads = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    t = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    h_ok = heads < n_heads
    mask = h_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    h64 = heads.to(tl.int64)
    lse_base = part_lse_ptr + b * stride_plb + h64 * stride_plh + t * stride_pls  # [BH]
    o_base = part_o_ptr + b * stride_pb + t * stride_ps + h64[:, None] * stride_ph  # [BH, 1]

    # Pointers step from split to split (a 64-bit pointer plus the split stride).
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    lse_ptrs = lse_base
    for _ in range(0, num_splits):
        m = tl.maximum(m, tl.load(lse_ptrs, mask=h_ok, other=float("-inf")))
        lse_ptrs += stride_plsp
    m_use = tl.where(m == float("-inf"), 0.0, m)
    den = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    lse_ptrs = lse_base
    o_ptrs = o_base + offs_d[None, :]
    for _ in range(0, num_splits):
        lse_s = tl.load(lse_ptrs, mask=h_ok, other=float("-inf"))
        w = tl.math.exp2((lse_s - m_use) * 1.4426950408889634)  # 0 for an empty split
        acc += w[:, None] * tl.load(o_ptrs, mask=mask, other=0.0)
        den += w
        lse_ptrs += stride_plsp
        o_ptrs += stride_psp
    empty = den == 0.0
    den_safe = tl.where(empty, 1.0, den)
    out = acc / den_safe[:, None]
    o_ptrs = out_ptr + b * stride_ob + t * stride_os + h64[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
    lse = tl.where(empty, float("-inf"), m_use + tl.log(den_safe))
    tl.store(lse_ptr + b * stride_lb + h64 * stride_lh + t * stride_ls, lse, mask=h_ok)


# ---------------------------------------------------------------------------- launchers


def decode_num_splits(batch: int, heads_kv: int, rows: int, max_keys: int, sm_count: int) -> int:
    """Split count of a decode call (flash-decoding's heuristic; host only, no device sync).

    ``programs = batch * heads_kv * m_blocks`` (``m_blocks`` of ``rows = Sq * Hq / Hkv``
    packed query rows). A grid of at least ``sm_count`` programs already fills the GPU: 1.
    Otherwise at least ``ceil(sm_count / programs)`` splits (one program per SM), and among
    up to twice that many the one whose last wave is fullest (``waves / ceil(waves)``, fewest
    splits on ties); never more than one per ``MIN_SPLIT_KEYS`` keys of the cache's capacity
    ``max_keys``, nor more than ``MAX_SPLITS``.
    """
    m_blocks = triton.cdiv(max(rows, 1), block_m_for(rows))
    programs = max(batch * heads_kv * m_blocks, 1)
    sm_count = max(sm_count, 1)
    cap = min(max_keys // MIN_SPLIT_KEYS, MAX_SPLITS)
    if programs >= sm_count or cap <= 1:
        return 1
    least = triton.cdiv(sm_count, programs)
    if least >= cap:
        return cap

    def efficiency(splits: int) -> float:
        waves = programs * splits / sm_count
        return waves / math.ceil(waves)

    return max(range(least, min(2 * least, cap) + 1), key=lambda s: (efficiency(s), -s))


def decode_launch_tile(
    head_dim: int, elem_size: int, block_m: int, *, aligned: bool = True
) -> tuple[int, int, int]:
    """The (BLOCK_N, num_warps, num_stages) :func:`attention_decode` launches with:
    :func:`decode_tile`, or ``INTERPRET_CONFIG`` under the interpreter (no GPU to tile for;
    32-key tiles exercise several tiles per split and tiles spanning pages in small tests)."""
    if INTERPRET:
        return INTERPRET_CONFIG
    return decode_tile(head_dim, elem_size, block_m, aligned=aligned)


def _check_grid(batch: int, heads_kv: int, programs: int) -> None:
    if batch > MAX_GRID_YZ or heads_kv > MAX_GRID_YZ or programs >= 2**31:
        raise ValueError(
            f"attention_with_kvcache: the Triton grid allows B and Hkv up to {MAX_GRID_YZ} and "
            f"m_blocks * num_splits < 2**31, got B={batch}, Hkv={heads_kv}, {programs}"
        )


def _combine(part_o, part_lse, out, lse) -> None:
    batch, num_splits, seq_q, n_heads, head_dim = part_o.shape
    block_h = min(combine_block_h(head_dim), triton.next_power_of_2(n_heads))
    launch(
        decode_combine_kernel, (triton.cdiv(n_heads, block_h), seq_q, batch),
        part_o, part_lse, out, lse, n_heads, num_splits,
        *part_o.stride()[:4], *part_lse.stride(), *out.stride()[:3], *lse.stride(),
        HEAD_DIM=head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d_for(head_dim),
        num_warps=COMBINE_WARPS,
    )  # fmt: skip


def attention_decode(
    q: torch.Tensor,  # [B, Sq, Hq, D], stride(-1) == 1
    k_cache: torch.Tensor,  # dense [B, S_max, Hkv, D] | paged [blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # like k_cache, stride(-1) == 1
    out: torch.Tensor,  # [B, Sq, Hq, D] q.dtype, stride(-1) == 1
    lse: torch.Tensor,  # [B, Hq, Sq] fp32
    *,
    seqlens_k: torch.Tensor,  # [B] int32: keys per batch (L_b)
    block_table: torch.Tensor | None,  # [B, max_blocks] int32, stride(-1) == 1
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    num_splits: int,
) -> None:
    """Write ``out`` and ``lse`` for attention of ``q`` over the first ``seqlens_k[b]`` key
    slots of each batch's cache, split-K over ``num_splits`` programs per (batch, kv head,
    M block) and combined by log-sum-exp. Inputs are assumed validated by the ops layer
    (equal dtypes, Hq % Hkv == 0, 16 <= D <= 256, window only with causal, lengths within the
    cache and its block table)."""
    batch, seq_q, n_heads_q, head_dim = q.shape
    n_heads_kv = k_cache.shape[2]
    if batch * seq_q * n_heads_q == 0:
        return
    if num_splits < 1:
        raise ValueError(f"attention_with_kvcache: num_splits must be >= 1, got {num_splits}")
    group = n_heads_q // n_heads_kv
    rows = seq_q * group
    aligned = rows_aligned(q, k_cache, v_cache, out)
    block_m = block_m_for(rows, q.element_size(), head_dim=head_dim, aligned=aligned)
    m_blocks = triton.cdiv(rows, block_m)
    _check_grid(batch, n_heads_kv, m_blocks * num_splits)
    paged = block_table is not None
    table, stride_tb, n_blocks, block_size, capacity = cache_layout(k_cache, block_table, seqlens_k)
    if num_splits > 1:
        part_o = torch.empty(
            (batch, num_splits, seq_q, n_heads_q, head_dim), dtype=torch.float32, device=q.device
        )
        part_lse = torch.empty(
            (batch, num_splits, n_heads_q, seq_q), dtype=torch.float32, device=q.device
        )
        dst_o, dst_lse = part_o, part_lse
        o_strides = (part_o.stride(0), part_o.stride(1), part_o.stride(2), part_o.stride(3))
        l_strides = part_lse.stride()
    else:
        dst_o, dst_lse = out, lse
        o_strides = (out.stride(0), 0, out.stride(1), out.stride(2))
        l_strides = (lse.stride(0), 0, lse.stride(1), lse.stride(2))
    if softcap is not None:
        score_scale, cap_scale = float(softmax_scale) / float(softcap), float(softcap) * LOG2E
    else:
        score_scale, cap_scale = float(softmax_scale) * LOG2E, 1.0
    block_n, warps, stages = decode_launch_tile(
        head_dim, q.element_size(), block_m, aligned=aligned
    )

    launch(
        decode_kernel, (m_blocks * num_splits, n_heads_kv, batch),
        q, k_cache, v_cache, seqlens_k, table, dst_o, dst_lse,
        seq_q, group, rows, capacity, n_blocks, block_size, num_splits,
        int(sliding_window or 0), score_scale, cap_scale,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], stride_tb,
        *o_strides, *l_strides,
        HEAD_DIM=head_dim,
        CAUSAL=bool(causal),
        WINDOW=sliding_window is not None,
        SOFTCAP=softcap is not None,
        PAGED=paged,
        SPLIT=num_splits > 1,
        UPCAST=INTERPRET,
        DOT_PRECISION=decode_dot_precision(q.dtype, head_dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d_for(head_dim),
        num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    if num_splits > 1:
        _combine(part_o, part_lse, out, lse)


__all__ = [
    "attention_decode",
    "block_m_for",
    "combine_block_h",
    "decode_combine_kernel",
    "decode_config_space",
    "decode_dot_precision",
    "decode_kernel",
    "decode_launch_tile",
    "decode_num_splits",
    "decode_tile",
    "kvcache_append",
]
