"""RoPE + KV-cache append in one Triton launch (no autograd here).

One program per new token ``(b, t)``. Its position is ``p = cache_seqlens[b] + t``; it

- rotates the ``Hq`` heads of ``q[b, t]`` into ``q_out[b, t]`` (when rotary tables are given),
- rotates the ``Hkv`` heads of ``k[b, t]`` into cache slot ``p`` of ``k_cache``,
- copies the ``Hkv`` heads of ``v[b, t]`` into slot ``p`` of ``v_cache``,

``BLOCK_H`` heads per step with the rotation of :mod:`.rope` (fp32 arithmetic, stored in the
output's dtype; features ``[R, D)`` copied). Slot ``p`` is row ``p`` of batch ``b`` in a dense
cache ``[B, S_max, Hkv, D]``, or row ``p % block_size`` of block ``block_table[b, p //
block_size]`` in a paged cache ``[num_blocks, block_size, Hkv, D]``. A slot outside the cache
(``p >= capacity``, or a block id outside ``[0, num_blocks)``) is not written: the ops layer
rejects such calls, the mask keeps an unchecked call inside the cache. Positions outside the
rotary table rotate by angle 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import make_configs, short_tile_pruner
from .rope import (
    MIN_BLOCK_R2,
    _rotate_heads,
    block_p_for,
    block_r2_for,
    heads_bucket,
    rope_candidates,
)

# Padded head dims the append tiles are made for (D up to 256, as the attention kernels).
BLOCK_PV_SIZES = (16, 32, 64, 128, 256)


def append_candidates(block_pv: int) -> list[tuple[int, int]]:
    """(BLOCK_H, num_warps) pairs for heads padded to ``block_pv`` features: the first two of
    RoPE's tiles for a half-width of ``block_pv / 2`` (the widest rotation), so the full-width
    v copy holds at most twice RoPE's 8..32 elements per thread."""
    return rope_candidates(max(MIN_BLOCK_R2, block_pv // 2))[:2]


def append_config_space() -> list[tuple[int, int, int]]:
    """Every (BLOCK_H, BLOCK_PV, num_warps) the append can run: for compile checks."""
    return [(h, bpv, w) for bpv in BLOCK_PV_SIZES for h, w in append_candidates(bpv)]


def _configs() -> list[triton.Config]:
    pairs = sorted({(h, w) for h, _, w in append_config_space()})
    return make_configs(pairs, "BLOCK_H", num_stages=1)


_prune = short_tile_pruner(append_candidates, "BLOCK_PV", "BLOCK_H", "n_heads_bucket")


@triton.autotune(
    configs=_configs(),
    key=["n_heads_bucket", "HEAD_DIM", "ROT_HALF", "INTERLEAVED", "PAGED"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def kvcache_append_kernel(
    q_ptr,  # [B, Sq, Hq, D]
    k_ptr,  # [B, Sq, Hkv, D]
    v_ptr,  # [B, Sq, Hkv, D]
    q_out_ptr,  # [B, Sq, Hq, D] (written only when ROT_HALF > 0)
    k_cache_ptr,  # dense [B, S_max, Hkv, D] | paged [num_blocks, block_size, Hkv, D]
    v_cache_ptr,  # like k_cache
    seqlens_ptr,  # [B] int32: keys already in the cache
    table_ptr,  # [B, max_blocks] int32 (read only when PAGED)
    cos_ptr,  # [S_rot, R/2] fp32 or the input dtype (read only when ROT_HALF > 0)
    sin_ptr,  # [S_rot, R/2]
    n_heads_q,
    n_heads_kv,
    n_heads_bucket,  # autotune key only
    capacity,  # S_max or max_blocks * block_size
    n_blocks,  # blocks of a paged cache
    block_size,
    n_rot,  # S_rot: rows of cos/sin
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_ckb,  # k cache: batch (dense) or block (paged)
    stride_ckn,  # k cache: slot (dense) or row in block (paged)
    stride_ckh,
    stride_cvb,
    stride_cvn,
    stride_cvh,
    stride_tb,
    stride_cr,  # cos row
    stride_sr,  # sin row
    HEAD_DIM: tl.constexpr,
    ROT_HALF: tl.constexpr,  # R / 2; 0: no rotary (k copied, q_out untouched)
    INTERLEAVED: tl.constexpr,
    PAGED: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R2: tl.constexpr,
    BLOCK_P: tl.constexpr,  # features [R, D) of q and k
    BLOCK_PV: tl.constexpr,  # all D features of v
):
    t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    pos = tl.load(seqlens_ptr + b).to(tl.int64) + t

    # Destination slot; an invalid one writes no k/v head (n_kv = 0).
    if PAGED:
        page_ok = (pos >= 0) & (pos < capacity)
        blk = tl.load(table_ptr + b * stride_tb + pos // block_size, mask=page_ok, other=-1)
        blk = blk.to(tl.int64)
        ok = page_ok & (blk >= 0) & (blk < n_blocks)
        row = pos % block_size
        ck = k_cache_ptr + blk * stride_ckb + row * stride_ckn
        cv = v_cache_ptr + blk * stride_cvb + row * stride_cvn
    else:
        ok = (pos >= 0) & (pos < capacity)
        ck = k_cache_ptr + b * stride_ckb + pos * stride_ckn
        cv = v_cache_ptr + b * stride_cvb + pos * stride_cvn
    n_kv = tl.where(ok, n_heads_kv, 0)

    cols = tl.arange(0, BLOCK_R2)  # [BR]
    if ROT_HALF > 0:
        # A position outside the table loads no column: cos 1, sin 0 (the identity).
        n_cols = tl.where((pos >= 0) & (pos < n_rot), ROT_HALF, 0)
        c_ok = cols < n_cols
        c = tl.load(cos_ptr + pos * stride_cr + cols, mask=c_ok, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + pos * stride_sr + cols, mask=c_ok, other=0.0).to(tl.float32)
        _rotate_heads(
            q_ptr + b * stride_qb + t * stride_qs,
            q_out_ptr + b * stride_ob + t * stride_os,
            n_heads_q, stride_qh, stride_oh, c, s,
            ROT_HALF, HEAD_DIM, INTERLEAVED, 2 * ROT_HALF < HEAD_DIM, BLOCK_H, BLOCK_R2, BLOCK_P,
        )  # fmt: skip
    else:
        c = tl.full([BLOCK_R2], 1.0, tl.float32)
        s = tl.zeros([BLOCK_R2], tl.float32)
    # ROT_HALF = 0 rotates nothing and copies all features.
    _rotate_heads(
        k_ptr + b * stride_kb + t * stride_ks, ck, n_kv, stride_kh, stride_ckh, c, s,
        ROT_HALF, HEAD_DIM, INTERLEAVED, 2 * ROT_HALF < HEAD_DIM, BLOCK_H, BLOCK_R2, BLOCK_P,
    )  # fmt: skip
    _rotate_heads(
        v_ptr + b * stride_vb + t * stride_vs, cv, n_kv, stride_vh, stride_cvh, c, s,
        0, HEAD_DIM, False, True, BLOCK_H, BLOCK_R2, BLOCK_PV,
    )  # fmt: skip


# ---------------------------------------------------------------------------- launcher


def cache_layout(
    k_cache: torch.Tensor,  # dense [B, S_max, Hkv, D] | paged [blocks, block_size, Hkv, D]
    block_table: torch.Tensor | None,  # [B, max_blocks] int32
    dummy: torch.Tensor,
) -> tuple[torch.Tensor, int, int, int, int]:
    """``(table, table row stride, num_blocks, block_size, capacity)`` as the cache kernels
    take them: a paged cache's block table, or ``dummy`` (never read) with ``(0, 0, 1, S_max)``
    for a dense one. ``capacity`` is the key slots a batch row can address."""
    if block_table is None:
        return dummy, 0, 0, 1, k_cache.shape[1]
    block_size = k_cache.shape[1]
    capacity = block_table.shape[1] * block_size
    return block_table, block_table.stride(0), k_cache.shape[0], block_size, capacity


# CUDA's limit on the grid's y dimension (batch).
_MAX_GRID_Y = 65535


def kvcache_append(
    q: torch.Tensor,  # [B, Sq, Hq, D], stride(-1) == 1
    k: torch.Tensor,  # [B, Sq, Hkv, D], stride(-1) == 1
    v: torch.Tensor,  # [B, Sq, Hkv, D], stride(-1) == 1
    k_cache: torch.Tensor,  # dense [B, S_max, Hkv, D] | paged [blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # like k_cache
    q_out: torch.Tensor | None,  # [B, Sq, Hq, D] (None without rotary)
    cache_seqlens: torch.Tensor,  # [B] int32
    block_table: torch.Tensor | None,  # [B, max_blocks] int32, stride(-1) == 1
    rotary_cos: torch.Tensor | None,  # [S_rot, R/2], stride(-1) == 1
    rotary_sin: torch.Tensor | None,  # [S_rot, R/2], stride(-1) == 1
    *,
    interleaved: bool,
) -> None:
    """Write RoPE'd ``q`` into ``q_out`` and RoPE'd ``k`` / plain ``v`` into cache slots
    ``[cache_seqlens[b], cache_seqlens[b] + Sq)`` in one launch. Without ``rotary_cos``, k/v
    are copied unrotated and ``q_out`` is not touched. Inputs are assumed validated by the ops
    layer (shapes, dtypes, slots inside the cache and the block table)."""
    batch, seq_q, n_heads_q, head_dim = q.shape
    n_heads_kv = k.shape[2]
    if batch * seq_q == 0 or n_heads_kv == 0:
        return
    if batch > _MAX_GRID_Y:
        raise ValueError(
            f"kvcache_append: the Triton grid allows B up to {_MAX_GRID_Y}, got {batch}"
        )
    rot_half = 0 if rotary_cos is None else rotary_cos.shape[-1]
    if rotary_cos is None:
        rotary_cos = rotary_sin = cache_seqlens  # dummies, never read
        q_out = q
        n_rot, stride_cr, stride_sr = 0, 0, 0
    else:
        n_rot, stride_cr, stride_sr = (
            rotary_cos.shape[0],
            rotary_cos.stride(0),
            rotary_sin.stride(0),
        )
    if q_out is None:
        q_out = q
    paged = block_table is not None
    table, stride_tb, n_blocks, block_size, capacity = cache_layout(
        k_cache, block_table, cache_seqlens
    )

    launch(
        kvcache_append_kernel, (seq_q, batch),
        q, k, v, q_out, k_cache, v_cache, cache_seqlens, table, rotary_cos, rotary_sin,
        n_heads_q, n_heads_kv, heads_bucket(max(n_heads_q, n_heads_kv)),
        capacity, n_blocks, block_size, n_rot,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *q_out.stride()[:3],
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        stride_tb, stride_cr, stride_sr,
        HEAD_DIM=head_dim,
        ROT_HALF=rot_half,
        INTERLEAVED=bool(interleaved),
        PAGED=paged,
        BLOCK_R2=block_r2_for(rot_half),
        BLOCK_P=block_p_for(head_dim, 2 * rot_half),
        BLOCK_PV=block_p_for(head_dim, 0),
    )  # fmt: skip


__all__ = ["append_config_space", "cache_layout", "kvcache_append", "kvcache_append_kernel"]
