"""FlashAttention-2 backward for causal / padded / GQA attention (Triton; no autograd here).

Three or four launches, all deterministic (no atomics, fixed summation order):

1. ``_bwd_preprocess``: ``delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d]`` in fp32.
2. ``_bwd_dkdv``: one program per key block of one kv head and one of ``head_splits`` equal
   runs of the ``Hq / Hkv`` query heads of its group. It loops over its heads and over their
   query blocks, recomputing ``P^T = exp(K Q^T * scale - lse)`` and accumulating
   ``dV += P^T dO`` and ``dK += (P^T * (V dO^T - delta)) Q`` in fp32 registers, so GQA grads
   are summed in one program instead of with atomics. ``head_splits = 1`` (the usual case)
   writes dk/dv; ``head_splits > 1`` (MQA/GQA grids too small to fill the GPU, see
   :func:`dkdv_head_splits`) writes one fp32 partial per split,
3. which ``_bwd_sum_splits`` adds in split order into dk/dv.
4. ``_bwd_dq``: one program per query block of one q head, looping over the key blocks it may
   attend: ``dQ += (P * (dO V^T - delta)) K``.

Tiles are never autotuned: each kernel runs the tile of :func:`backward_tile`, a fixed function
of the head dim, the dtype and whether the rows are 16-element aligned, and the split count is a
fixed function of the shape and the SM count, so the summation order, hence every bit of the
grads, is the same in every process (on one GPU model, with one triton).

Key ``j`` is allowed for query ``i`` iff ``j < Sk``, ``key_padding_mask[b, j]`` (when given),
when causal ``j <= p = i + Sk - Sq`` (bottom-right) and with a sliding window ``j > p - w``:
both loops visit only the blocks inside that band (dk/dv: the query rows that can see the key
block; dq: the key tiles the query block can see). A disallowed pair has ``P = 0``; a row with
no allowed key (lse = -inf) therefore gets zero ``dq`` and adds nothing to ``dk``/``dv``. Head
dims that are not powers of two run in a padded ``BLOCK_D`` tile with masked columns.

Softcap ``c``: the scores are recomputed as ``c * tanh(x / c)`` of ``x = scale * q.k`` and
``dS`` is multiplied by ``1 - tanh^2``. Packed sequences (``VARLEN``): as in the forward, with
``program_id(2)`` the sequence and ``cu_seqlens`` read in the kernels.

Scores are handled in base 2: ``exp(s * scale - lse) = exp2(s * scale * log2(e) - lse * log2(e))``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusedops.constants import LOG2E

from . import INTERPRET
from ._launch import launch
from ._tuning import device_sm_count, rows_aligned
from .attention import (
    block_d_for,
    check_grid,
    dot_precision,
    mask_args,
    tanh,
    variant_args,
    varlen_bounds,
)

_LOG2E = tl.constexpr(LOG2E)  # as the kernels read it


# The (BLOCK_M, BLOCK_N, num_warps, num_stages) each kernel runs on aligned rows, per padded
# head dim and whatever the variant flags: among the tiles that compiled clean (0 spills, tensor
# cores) for sm_80 and sm_90 with every variant flag on, the biggest (most BLOCK_M x BLOCK_N,
# then stages, then warps) that kept clean in the lighter variants too;
# tests/attention/test_gpu_compile_attention_backward.py compiles each one. dk/dv keeps a
# BLOCK_N key tile and two fp32 [BLOCK_N, BLOCK_D] accumulators resident and streams BLOCK_M
# query rows; dq keeps a BLOCK_M query tile (wgmma needs BLOCK_M >= 64) and streams BLOCK_N
# keys.
_DKDV_TILES = {
    16: (64, 64, 8, 1),
    32: (64, 64, 8, 1),
    64: (32, 64, 8, 1),
    128: (32, 64, 8, 2),
    256: (32, 32, 8, 1),
}
_DQ_TILES = {
    16: (64, 128, 8, 1),
    32: (64, 64, 8, 2),
    64: (64, 64, 8, 2),
    128: (64, 64, 8, 2),
    256: (32, 32, 4, 1),
}
# fp32 inputs (tf32x3 dots: three tensor-core products per dot, fp32 operands) need smaller
# tiles. At BLOCK_D 256 every tf32x3 tile spilled: those dots run as fp32 FMAs on the CUDA
# cores ("ieee", see dot_precision).
_DKDV_TILES_FP32 = {
    16: (32, 64, 4, 1),
    32: (16, 64, 4, 1),
    64: (16, 32, 8, 1),
    128: (16, 16, 8, 1),
    256: (16, 16, 8, 1),
}
_DQ_TILES_FP32 = {
    16: (64, 32, 4, 1),
    32: (32, 32, 4, 1),
    64: (64, 16, 8, 1),
    128: (16, 16, 8, 1),
    256: (32, 32, 8, 1),
}
# Rows that are not 16-element multiples (or unaligned pointers: see rows_aligned) load element
# by element, each element's address in registers: smaller tiles, no pipelining; measured clean
# with every variant flag on. (kernel, fp32) -> {BLOCK_D: tile}.
_UNALIGNED_TILES = {
    ("dkdv", False): {
        16: (32, 64, 8, 1), 32: (32, 64, 8, 1), 64: (32, 64, 8, 1), 128: (32, 32, 8, 1),
        256: (16, 16, 8, 1),
    },
    ("dq", False): {
        16: (64, 64, 8, 1), 32: (64, 64, 8, 1), 64: (64, 64, 8, 1), 128: (32, 32, 8, 1),
        256: (16, 16, 4, 1),
    },
    ("dkdv", True): {
        16: (16, 64, 4, 1), 32: (16, 32, 8, 1), 64: (16, 32, 8, 1), 128: (16, 16, 8, 1),
        256: (16, 16, 8, 1),
    },
    ("dq", True): {
        16: (32, 16, 4, 1), 32: (32, 16, 4, 1), 64: (64, 16, 8, 1), 128: (16, 16, 4, 1),
        256: (16, 16, 8, 1),
    },
}  # fmt: skip


def backward_tile(
    head_dim: int, kernel: str = "dkdv", fp32: bool = False, *, aligned: bool = True
) -> tuple[int, int, int, int]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) ``kernel`` ("dkdv" or "dq") runs with for
    ``head_dim`` (``fp32``: float32 inputs; ``aligned``: every row a 16-element multiple, see
    ``rows_aligned``), whatever the variant flags (each tile compiles clean with all of them).
    A fixed function of these arguments, never a benchmark, so that the grads' summation order
    is the same in every process; the interpreter runs it too."""
    block_d = block_d_for(head_dim)
    if not aligned:
        return _UNALIGNED_TILES[(kernel, fp32)][block_d]
    if fp32:
        tiles = _DKDV_TILES_FP32 if kernel == "dkdv" else _DQ_TILES_FP32
    else:
        tiles = _DKDV_TILES if kernel == "dkdv" else _DQ_TILES
    return tiles[block_d]


def dkdv_head_splits(programs: int, group: int, sm_count: int) -> int:
    """Into how many equal runs the dk/dv kernel splits each GQA group's ``group`` query heads
    (one program per key block, kv head, batch and run; ``programs`` of them unsplit).

    1 when the unsplit grid already covers ``sm_count`` SMs (or there is one head per group).
    Otherwise the smallest divisor of ``group`` that gives every SM a program, among the
    divisors up to twice the ``ceil(sm_count / programs)`` needed (the fp32 partial sums then
    hold at most about ``4 x sm_count`` key tiles), else the largest such divisor. A function of
    the shape and the SM count only: the reduction order is fixed for a shape on one GPU model.
    """
    if group <= 1 or programs >= sm_count:
        return 1
    need = triton.cdiv(sm_count, max(programs, 1))
    divisors = [d for d in range(1, min(group, 2 * need) + 1) if group % d == 0]
    enough = [d for d in divisors if d >= need]
    return enough[0] if enough else divisors[-1]


def dkdv_grid(
    batch: int, n_heads_kv: int, group: int, seq_k: int, block_n: int, sm_count: int
) -> tuple[tuple[int, int, int], int]:
    """``((programs along axis 0, Hkv, B), head_splits)`` of the dk/dv launch: axis 0 holds
    ``cdiv(Sk, BLOCK_N)`` key blocks times ``head_splits`` (:func:`dkdv_head_splits`)."""
    blocks = triton.cdiv(seq_k, block_n)
    splits = dkdv_head_splits(blocks * n_heads_kv * batch, group, sm_count)
    return (blocks * splits, n_heads_kv, batch), splits


def preprocess_block_m(head_dim: int) -> int:
    """Rows per program of the delta preprocess and of the split sum (about 32 fp32 values per
    thread of 4 warps)."""
    return min(64, max(16, 4096 // block_d_for(head_dim)))


@triton.jit
def _bwd_preprocess(
    o_ptr,
    do_ptr,
    delta_ptr,  # [B, Hq, Sq] fp32, contiguous
    seq_q,
    n_heads,
    stride_ob,
    stride_oh,
    stride_os,
    stride_dob,
    stride_doh,
    stride_dos,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < seq_q) & (cols[None, :] < HEAD_DIM)
    o = tl.load(
        o_ptr + b * stride_ob + h * stride_oh + rows64[:, None] * stride_os + cols[None, :],
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        do_ptr + b * stride_dob + h * stride_doh + rows64[:, None] * stride_dos + cols[None, :],
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    tl.store(delta_ptr + (b * n_heads + h) * seq_q + rows64, delta, mask=rows < seq_q)


# head_splits is never specialised (not even a 1 to a constant): unsplit and split launches of
# one dtype of dk/dv share one compiled kernel.
@triton.jit(do_not_specialize=["head_splits"])
def _bwd_dkdv(
    q_ptr,  # [B, Hq, Sq, D] (VARLEN: [Tq, Hq, D], batch strides 0)
    k_ptr,  # [B, Hkv, Sk, D] (VARLEN: [Tk, Hkv, D])
    v_ptr,
    do_ptr,
    lse_ptr,  # [B, Hq, Sq] fp32 natural-log logsumexp of the scores (VARLEN: [Hq, Tq])
    delta_ptr,  # [B, Hq, Sq] fp32 (VARLEN: [Hq, Tq]), rows contiguous
    mask_ptr,  # [B, Sk] uint8 key padding mask (1 = attend), read only when HAS_MASK
    cu_q_ptr,  # [N + 1] int32 sequence starts in q (read only when VARLEN)
    cu_k_ptr,  # [N + 1] int32 sequence starts in k/v (read only when VARLEN)
    dk_ptr,  # head_splits > 1: [splits, ...] fp32 partials (split stride stride_dksp)
    dv_ptr,
    seq_q,  # VARLEN: unused (each sequence's length comes from cu_q)
    seq_k,
    head_splits,  # runs of GROUP / head_splits query heads, one per program (divides GROUP)
    qk_scale,  # softmax_scale * log2(e)
    softmax_scale,
    window,  # sliding window w >= 1 (read only when WINDOW)
    cap,  # softcap c * log2(e) (read only when SOFTCAP)
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_dob,
    stride_doh,
    stride_dos,
    stride_lb,
    stride_lh,
    stride_ls,
    stride_deltab,
    stride_deltah,
    stride_mb,
    stride_mk,
    stride_dkb,
    stride_dkh,
    stride_dks,
    stride_dvb,
    stride_dvh,
    stride_dvs,
    stride_dksp,  # split stride of the partials (0 when head_splits = 1)
    stride_dvsp,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    GROUP: tl.constexpr,  # Hq // Hkv
    UPCAST: tl.constexpr,  # interpreter: dot operands in fp32
    PRECISION: tl.constexpr,  # tl.dot input precision ("tf32x3" for fp32 inputs)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    # Variants as flags, so that the dense causal kernel carries none of their code:
    WINDOW: tl.constexpr = False,  # sliding window (CAUSAL too): keys p - w < j <= p only
    SOFTCAP: tl.constexpr = False,  # scores c * tanh(s / c)
    VARLEN: tl.constexpr = False,  # packed sequences: program_id(2) is the sequence
):
    # Axis 0: key block pid_n, run `split` of the group's query heads.
    pid_n = tl.program_id(0) // head_splits
    split = tl.program_id(0) % head_splits
    hk = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    dt = k_ptr.dtype.element_ty
    heads_per_split = GROUP // head_splits
    sp = split.to(tl.int64)

    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    dk_base = dk_ptr + sp * stride_dksp + b * stride_dkb + hk * stride_dkh
    dv_base = dv_ptr + sp * stride_dvsp + b * stride_dvb + hk * stride_dvh
    q_row0 = tl.zeros([], tl.int64)  # VARLEN: the sequence's first row in q/dO/lse/delta
    if VARLEN:
        q_row0, k_row0, seq_q, seq_k = varlen_bounds(cu_q_ptr, cu_k_ptr, b)
        k_base += k_row0 * stride_ks
        v_base += k_row0 * stride_vs
        dk_base += k_row0 * stride_dks
        dv_base += k_row0 * stride_dvs

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_n64 = offs_n.to(tl.int64)  # row offsets in int64
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < seq_k
    kv_mask = n_ok[:, None] & d_ok[None, :]

    k = tl.load(k_base + offs_n64[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n64[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    key_ok = n_ok
    if HAS_MASK:
        pad = tl.load(mask_ptr + b * stride_mb + offs_n64 * stride_mk, mask=n_ok, other=0)
        key_ok = key_ok & (pad != 0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query rows [lo, hi) that can see this key block. Causal: query i sees key j iff
    # i >= j - (Sk - Sq) (lo rounded down to a query block); window: also i < j - (Sk - Sq) + w.
    # A program past its sequence's end (VARLEN) visits none.
    diag = seq_k - seq_q
    lo = 0
    hi = seq_q
    if CAUSAL:
        lo = tl.maximum(start_n - diag, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    if WINDOW:
        hi = tl.minimum(seq_q, start_n + BLOCK_N - 1 - diag + window)
    if VARLEN:
        hi = tl.where(start_n < seq_k, hi, 0)

    g_lo = split * heads_per_split
    for g in range(g_lo, g_lo + heads_per_split):
        hq = hk * GROUP + g
        q_base = q_ptr + b * stride_qb + hq * stride_qh + q_row0 * stride_qs
        do_base = do_ptr + b * stride_dob + hq * stride_doh + q_row0 * stride_dos
        lse_base = lse_ptr + b * stride_lb + hq * stride_lh + q_row0 * stride_ls
        delta_base = delta_ptr + b * stride_deltab + hq * stride_deltah + q_row0
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + offs_m0
            offs_m64 = offs_m.to(tl.int64)
            m_ok = offs_m < seq_q
            q_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(
                q_base + offs_m64[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0
            )
            do = tl.load(
                do_base + offs_m64[:, None] * stride_dos + offs_d[None, :], mask=q_mask, other=0.0
            )
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(lse_base + offs_m64 * stride_ls, mask=m_ok, other=0.0)
            delta = tl.load(delta_base + offs_m64, mask=m_ok, other=0.0)

            # Transposed scores [BLOCK_N, BLOCK_M]: no transposed accumulator tiles needed.
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
            ok = key_ok[:, None] & m_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[:, None] <= offs_m[None, :] + diag)
            if WINDOW:
                ok = ok & (offs_n[:, None] > offs_m[None, :] + (diag - window))
            if SOFTCAP:
                # s = c tanh(x / c) of x = scale * q.k: ds/dx = 1 - tanh^2.
                t_t = tanh(s_t * (qk_scale / cap))
                s_t = t_t * cap
            else:
                s_t = s_t * qk_scale
            # lse = -inf only for rows with no allowed key, whose entries `ok` drops here.
            lse2 = lse * _LOG2E
            p_t = tl.where(ok, tl.math.exp2(s_t - lse2[None, :]), 0.0)
            if UPCAST:
                dv += tl.dot(p_t, do, input_precision=PRECISION)
            else:
                dv += tl.dot(p_t.to(dt), do, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            if SOFTCAP:
                ds_t = ds_t * (1.0 - t_t * t_t)
            if UPCAST:
                dk += tl.dot(ds_t, q, input_precision=PRECISION)
            else:
                dk += tl.dot(ds_t.to(dt), q, input_precision=PRECISION)

    dk = dk * softmax_scale
    dk_ptrs = dk_base + offs_n64[:, None] * stride_dks + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    dv_ptrs = dv_base + offs_n64[:, None] * stride_dvs + offs_d[None, :]
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    mask_ptr,
    cu_q_ptr,
    cu_k_ptr,
    dq_ptr,
    seq_q,
    seq_k,
    qk_scale,
    softmax_scale,
    window,
    cap,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_dob,
    stride_doh,
    stride_dos,
    stride_lb,
    stride_lh,
    stride_ls,
    stride_deltab,
    stride_deltah,
    stride_mb,
    stride_mk,
    stride_dqb,
    stride_dqh,
    stride_dqs,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    GROUP: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WINDOW: tl.constexpr = False,
    SOFTCAP: tl.constexpr = False,
    VARLEN: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    hq = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    hk = hq // GROUP
    dt = q_ptr.dtype.element_ty

    q_base = q_ptr + b * stride_qb + hq * stride_qh
    do_base = do_ptr + b * stride_dob + hq * stride_doh
    lse_base = lse_ptr + b * stride_lb + hq * stride_lh
    delta_base = delta_ptr + b * stride_deltab + hq * stride_deltah
    q_row0 = tl.zeros([], tl.int64)  # VARLEN: the sequence's first row in q/dO/lse/delta/dq
    k_row0 = tl.zeros([], tl.int64)  # VARLEN: the sequence's first row in k/v
    if VARLEN:
        q_row0, k_row0, seq_q, seq_k = varlen_bounds(cu_q_ptr, cu_k_ptr, b)
        q_base += q_row0 * stride_qs
        do_base += q_row0 * stride_dos
        lse_base += q_row0 * stride_ls
        delta_base += q_row0

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_m64 = offs_m.to(tl.int64)  # row offsets in int64
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < seq_q
    q_mask = m_ok[:, None] & d_ok[None, :]

    q = tl.load(q_base + offs_m64[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_base + offs_m64[:, None] * stride_dos + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_base + offs_m64 * stride_ls, mask=m_ok, other=0.0)
    lse2 = lse * _LOG2E
    delta = tl.load(delta_base + offs_m64, mask=m_ok, other=0.0)

    k_base = k_ptr + b * stride_kb + hk * stride_kh + k_row0 * stride_ks
    v_base = v_ptr + b * stride_vb + hk * stride_vh + k_row0 * stride_vs
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key tiles [lo, hi) the block's rows may see (the forward's key_tile_range). A program
    # past its sequence's end (VARLEN) visits none.
    diag = seq_k - seq_q
    lo = 0
    hi = seq_k
    if CAUSAL:
        # The last key the block's last row may see is (start_m + BLOCK_M - 1) + Sk - Sq.
        hi = tl.minimum(start_m + BLOCK_M + diag, seq_k)
    if WINDOW:
        # The first key the block's first row may see is start_m + Sk - Sq - w + 1.
        lo = tl.maximum(start_m + diag - window + 1, 0) // BLOCK_N * BLOCK_N
    if VARLEN:
        hi = tl.where(start_m < seq_q, hi, 0)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        offs_n64 = offs_n.to(tl.int64)
        n_ok = offs_n < seq_k
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(
            k_base + offs_n64[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0
        )
        v = tl.load(
            v_base + offs_n64[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0
        )
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        key_ok = n_ok
        if HAS_MASK:
            pad = tl.load(mask_ptr + b * stride_mb + offs_n64 * stride_mk, mask=n_ok, other=0)
            key_ok = key_ok & (pad != 0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        ok = m_ok[:, None] & key_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= offs_m[:, None] + diag)
        if WINDOW:
            ok = ok & (offs_n[None, :] > offs_m[:, None] + (diag - window))
        if SOFTCAP:
            t = tanh(s * (qk_scale / cap))
            p = tl.where(ok, tl.math.exp2(t * cap - lse2[:, None]), 0.0)
        else:
            p = tl.where(ok, tl.math.exp2(s * qk_scale - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        if UPCAST:
            dq += tl.dot(ds, k, input_precision=PRECISION)
        else:
            dq += tl.dot(ds.to(dt), k, input_precision=PRECISION)

    dq = dq * softmax_scale
    # The output pointer is formed after the loop: no registers held across it.
    dq_base = dq_ptr + b * stride_dqb + hq * stride_dqh + q_row0 * stride_dqs
    dq_ptrs = dq_base + offs_m64[:, None] * stride_dqs + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _bwd_sum_splits(
    part_ptr,  # [splits, B, Hkv, Sk, D] fp32 partial sums (VARLEN: [splits, Tk, Hkv, D])
    out_ptr,  # [B, Hkv, Sk, D] (VARLEN: [Tk, Hkv, D])
    cu_k_ptr,  # [N + 1] int32 sequence starts in k (read only when VARLEN)
    n_splits,
    n_rows,  # Sk (VARLEN: N; the rows are those before cu_k[N])
    stride_psp,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_ob,
    stride_oh,
    stride_os,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """``out = part[0] + part[1] + ...`` in split order, in fp32, stored in out's dtype."""
    # Grid (row blocks, Hkv, B).
    pid_r = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    if VARLEN:
        n_rows = tl.load(cu_k_ptr + n_rows)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)  # [BD]
    mask = (rows < n_rows)[:, None] & (cols < HEAD_DIM)[None, :]
    # Pointers step from split to split (a 64-bit pointer plus the split stride).
    ptrs = part_ptr + b * stride_pb + h * stride_ph + rows64[:, None] * stride_ps + cols[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for _ in range(0, n_splits):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += stride_psp
    o_ptrs = out_ptr + b * stride_ob + h * stride_oh + rows64[:, None] * stride_os + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return tuple(int(s) for s in t.stride()[:3])


def _launch(
    q, k, v, out, lse, dout, dq, dk, dv, mask, cu_q, cu_k, dims, strides, *, causal,
    softmax_scale, sliding_window, softcap, op, varlen,
):  # fmt: skip
    """The delta preprocess, then the dk/dv and dq kernels, on [B, H, S, D]-strided views.

    ``dims = (batch or N, Hq, Hkv, seq_q, seq_k, head_dim)`` (VARLEN: max lengths);
    ``strides[name]`` the (batch, head, row) strides of each tensor (batch 0 when VARLEN;
    ``"lse"`` too) and ``strides["o"]``, ``strides["mask"]``."""
    batch, n_heads_q, n_heads_k, seq_q, seq_k, head_dim = dims
    window, cap, flags = variant_args(
        op, causal=causal, softmax_scale=softmax_scale, sliding_window=sliding_window,
        softcap=softcap, max_seq_k=seq_k,
    )  # fmt: skip
    rows = out.shape[0] if varlen else seq_q  # delta rows per head
    block_d = block_d_for(head_dim)
    delta_batch = 1 if varlen else batch
    delta = torch.empty((delta_batch, n_heads_q, rows), device=q.device, dtype=torch.float32)
    pre_m = preprocess_block_m(head_dim)
    check_grid(batch, n_heads_q, seq_q)
    # Grids are (blocks, heads, batch): B and H on the 65535-limited axes.
    launch(
        _bwd_preprocess, (triton.cdiv(rows, pre_m), n_heads_q, delta_batch),
        out, dout, delta, rows, n_heads_q, *strides["o"], *strides["do"],
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_m,
    )  # fmt: skip
    group = n_heads_q // n_heads_k
    common = dict(
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        CAUSAL=bool(causal),
        HAS_MASK=mask is not None,
        GROUP=group,
        UPCAST=INTERPRET,
        PRECISION=dot_precision(q.dtype, head_dim, backward=True),
        VARLEN=varlen,
        **flags,
    )
    fp32 = q.dtype == torch.float32
    aligned = rows_aligned(q, k, v, out, dout, dq, dk, dv)
    dkdv_m, dkdv_n, dkdv_w, dkdv_s = backward_tile(head_dim, "dkdv", fp32, aligned=aligned)
    dq_m, dq_n, dq_w, dq_s = backward_tile(head_dim, "dq", fp32, aligned=aligned)
    mask, stride_mb, stride_mk = mask_args(mask, delta)
    scale = float(softmax_scale)
    delta_strides = (0 if varlen else n_heads_q * rows, rows)
    scalars = (
        scale * LOG2E, scale, window, cap,
        *strides["q"], *strides["k"], *strides["v"], *strides["do"], *strides["lse"],
        *delta_strides, stride_mb, stride_mk,
    )  # fmt: skip
    cu_q = delta if cu_q is None else cu_q
    cu_k = delta if cu_k is None else cu_k

    grid_n, splits = dkdv_grid(
        batch, n_heads_k, group, seq_k, dkdv_n, device_sm_count(q.device)
    )  # fmt: skip
    dk_dst, dv_dst = dk, dv
    dk_strides, dv_strides, split_strides = strides["dk"], strides["dv"], (0, 0)
    if splits > 1:
        # fp32 partials [2 (dk, dv), splits, *dk.shape], added in split order below.
        part = torch.empty((2, splits, *dk.shape), device=dk.device, dtype=torch.float32)
        dk_dst, dv_dst = part[0, 0], part[1, 0]
        dk_strides = _packed_strides(dk_dst) if varlen else _strides3(dk_dst)
        dv_strides = dk_strides
        split_strides = (int(part.stride(1)), int(part.stride(1)))
    launch(
        _bwd_dkdv, grid_n,
        q, k, v, dout, lse, delta, mask, cu_q, cu_k, dk_dst, dv_dst, seq_q, seq_k, splits,
        *scalars, *dk_strides, *dv_strides, *split_strides, **common,
        BLOCK_M=dkdv_m, BLOCK_N=dkdv_n, num_warps=dkdv_w, num_stages=dkdv_s,
    )  # fmt: skip
    if splits > 1:
        total_k = k.shape[0] if varlen else seq_k  # rows of dk/dv per (batch, head)
        for src, dst, dst_strides in ((dk_dst, dk, strides["dk"]), (dv_dst, dv, strides["dv"])):
            launch(
                _bwd_sum_splits, (triton.cdiv(total_k, pre_m), n_heads_k, delta_batch),
                src, dst, cu_k, splits, batch if varlen else seq_k, split_strides[0],
                *dk_strides, *dst_strides,
                HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_R=pre_m, VARLEN=varlen,
                num_warps=4, num_stages=1,
            )  # fmt: skip
    launch(
        _bwd_dq, (triton.cdiv(seq_q, dq_m), n_heads_q, batch),
        q, k, v, dout, lse, delta, mask, cu_q, cu_k, dq, seq_q, seq_k, *scalars, *strides["dq"],
        **common, BLOCK_M=dq_m, BLOCK_N=dq_n, num_warps=dq_w, num_stages=dq_s,
    )  # fmt: skip


def attention_backward(
    q: torch.Tensor,  # [B, Hq, Sq, D], stride(-1) == 1
    k: torch.Tensor,  # [B, Hkv, Sk, D]
    v: torch.Tensor,  # [B, Hkv, Sk, D]
    out: torch.Tensor,  # [B, Hq, Sq, D] forward output
    lse: torch.Tensor,  # [B, Hq, Sq] fp32 natural-log logsumexp (-inf for fully masked rows)
    dout: torch.Tensor,  # [B, Hq, Sq, D] upstream gradient
    dq: torch.Tensor,  # [B, Hq, Sq, D] written
    dk: torch.Tensor,  # [B, Hkv, Sk, D] written
    dv: torch.Tensor,  # [B, Hkv, Sk, D] written
    *,
    causal: bool,
    softmax_scale: float,
    key_padding_mask: torch.Tensor | None,  # [B, Sk] bool, True = attend
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> None:
    """Write ``dq``, ``dk``, ``dv`` of ``out = softmax(q k^T * scale [masked]) v``
    (``sliding_window`` / ``softcap`` as in ``attention_forward``).

    GQA grads (``Hq / Hkv`` q heads per kv head) are summed inside the dk/dv kernel; the
    result is deterministic. Inputs are assumed validated by the ops layer.
    """
    batch, n_heads_q, seq_q, head_dim = q.shape
    n_heads_k, seq_k = k.shape[1], k.shape[2]
    if batch * n_heads_q * seq_q * head_dim == 0 and dq.numel():
        dq.zero_()
    if batch * n_heads_k * seq_k * head_dim == 0:
        return
    if seq_q == 0:
        dk.zero_()
        dv.zero_()
        return
    lse = lse.to(torch.float32)
    names = {"q": q, "k": k, "v": v, "o": out, "do": dout, "lse": lse, "dq": dq, "dk": dk}
    strides = {name: _strides3(t) for name, t in (*names.items(), ("dv", dv))}
    _launch(
        q, k, v, out, lse, dout, dq, dk, dv, key_padding_mask, None, None,
        (batch, n_heads_q, n_heads_k, seq_q, seq_k, head_dim), strides, causal=causal,
        softmax_scale=softmax_scale, sliding_window=sliding_window, softcap=softcap,
        op="attention", varlen=False,
    )  # fmt: skip


def _packed_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, row) strides of a packed ``[T, H, D]`` tensor: batch 0."""
    return 0, int(t.stride(1)), int(t.stride(0))


def attention_varlen_backward(
    q: torch.Tensor,  # [Tq, Hq, D], stride(-1) == 1
    k: torch.Tensor,  # [Tk, Hkv, D]
    v: torch.Tensor,  # [Tk, Hkv, D]
    out: torch.Tensor,  # [Tq, Hq, D] forward output
    lse: torch.Tensor,  # [Hq, Tq] fp32 natural-log logsumexp
    dout: torch.Tensor,  # [Tq, Hq, D] upstream gradient
    dq: torch.Tensor,  # [Tq, Hq, D] written
    dk: torch.Tensor,  # [Tk, Hkv, D] written
    dv: torch.Tensor,  # [Tk, Hkv, D] written
    cu_seqlens_q: torch.Tensor,  # [N + 1] int32
    cu_seqlens_k: torch.Tensor,  # [N + 1] int32
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> None:
    """Write ``dq``, ``dk``, ``dv`` of ``attention_varlen_forward`` (per-sequence attention of
    packed rows; no host sync). Rows past ``cu_seqlens_q[N]`` / ``cu_seqlens_k[N]`` are not
    written; every row of a sequence is (zeros where it sees or is seen by nothing)."""
    total_q, n_heads_q, head_dim = q.shape
    total_k, n_heads_k = k.shape[0], k.shape[1]
    n_seqs = cu_seqlens_q.shape[0] - 1
    if n_seqs <= 0 or total_q * total_k * n_heads_q == 0 or min(max_seqlen_q, max_seqlen_k) <= 0:
        # No pair of rows attends: zero grads (a row past every sequence is zero too).
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return
    lse = lse.to(torch.float32)
    names = {"q": q, "k": k, "v": v, "o": out, "do": dout, "dq": dq, "dk": dk, "dv": dv}
    strides = {name: _packed_strides(t) for name, t in names.items()}
    strides["lse"] = (0, int(lse.stride(0)), int(lse.stride(1)))
    _launch(
        q, k, v, out, lse, dout, dq, dk, dv, None, cu_seqlens_q, cu_seqlens_k,
        (n_seqs, n_heads_q, n_heads_k, max_seqlen_q, max_seqlen_k, head_dim), strides,
        causal=causal, softmax_scale=softmax_scale, sliding_window=sliding_window,
        softcap=softcap, op="attention_varlen", varlen=True,
    )  # fmt: skip
