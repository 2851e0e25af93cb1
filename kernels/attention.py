"""FlashAttention-2 style forward kernel for causal / padded attention and its launcher.

One program per (query block, batch x query head). The query tile ``[BLOCK_M, BLOCK_D]`` stays
in registers; key/value tiles ``[BLOCK_N, BLOCK_D]`` of the head's kv head
``h // (Hq // Hkv)`` are streamed (GQA/MQA without materialising repeated k/v) with an online
softmax in the exp2 domain and fp32 accumulators:

    s = (q k^T) * scale * log2(e);   m' = max(m, rowmax(s));   p = exp2(s - m')
    l' = l * exp2(m - m') + rowsum(p);   acc' = acc * exp2(m - m') + p v

Masks: key tails (``j < Sk``), bottom-right causal (``j <= p``, ``p = i + Sk - Sq``: key blocks
past the query block's last allowed key are never visited), a sliding window of ``w`` keys
(``j > p - w``: key blocks before the block's first allowed key are never visited either, so a
prefill costs O(S * w); `key_tile_range` mirrors the loop bounds on the host), and an optional
``key_padding_mask[b, j]`` (True = attend). Only the tiles that cross the diagonal, the
window's edge or Sk are masked; the ones fully inside run an unmasked loop. A row with no
allowed key keeps ``l = 0`` and writes zeros with ``lse = -inf`` (never NaN, whatever the
masked keys/values hold); a NaN in the query row or an allowed key/value reaches the row.
``lse = (m + log2(l)) * ln(2)`` in natural log, fp32.

Softcap ``c`` (Gemma-2): scores ``c * tanh(scale * q.k / c)``, computed in the exp2 domain as
``c' * tanh(s / c')`` with ``s = scale * log2(e) * q.k`` and ``c' = c * log2(e)``.

Packed sequences (``VARLEN``, flash-attention's varlen layout): q/k/v ``[T, H, D]`` with int32
``cu_seqlens`` offsets read in the kernel (no host sync); program ``(m, h, n)`` handles query
block ``m`` of sequence ``n`` (the grid covers ``max_seqlen_q``; blocks past the sequence's end
visit no key and store nothing), lse ``[Hq, Tq]``.

Head dims 16..256 that are not powers of two run in a ``BLOCK_D = next_power_of_2(D)`` tile
with the feature columns masked. fp16/bf16 tiles feed the tensor cores directly
(``mma.sync`` on sm_80, ``wgmma`` on sm_90); fp32 runs as ``tf32x3`` (three tf32 products, the
accuracy of an fp32 matmul) on the small tiles that fit its registers (``mma.sync`` on both
archs: below wgmma's 64 rows). Under the interpreter every tile is upcast to fp32
right after loading (its bf16 arithmetic is wrong otherwise).

Tiles: prefills are autotuned over ``forward_config_space`` (keyed on the Sq/Sk buckets, head
dim and flags); short queries (``Sq <= SHORT_QUERY_ROWS``: decode, so a growing cache never
re-tunes), rows that are not 16-element aligned and every launch under
``torch.use_deterministic_algorithms(True)`` run the fixed tile of ``forward_tile``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusedops.constants import LOG2E

from . import INTERPRET
from ._launch import launch
from ._online_softmax import online_softmax_step
from ._tuning import configs_in, make_configs, pow2_bucket, rows_aligned

MIN_BLOCK_D = 16
MAX_BLOCK_D = 256

# Candidate tiles (BLOCK_M, BLOCK_N, num_warps, num_stages), filtered per BLOCK_D by rule in
# forward_config_space.
_BLOCK_M = (64, 128)
_BLOCK_N = (32, 64, 128)
_WARPS = (4, 8)
_STAGES = (2, 3)
# Shared memory the pipelined k/v tiles may take (sm_80 allows 163 KiB per block; keep room).
_SMEM_BUDGET = 144 * 1024
# fp32 values a thread may hold for the accumulator plus the score tile counted twice (scores
# and probabilities): above this ptxas spills on sm_80 (measured by the compile test).
_REG_BUDGET = 128
# CUDA's limit on the grid's y and z dimensions (heads, batch).
MAX_GRID_YZ = 65535
# The single config the interpreter runs (no benchmarking there; fewer, larger programs).
INTERPRET_CONFIG = (64, 64, 4, 1)
# Query lengths up to this many rows (decode steps, speculative verification, small chunks:
# one 64-row query tile) run the rule tile of forward_tile, never the autotuner: a KV cache
# growing through the Sk buckets must not re-tune (compile and benchmark every config) mid-
# generation.
SHORT_QUERY_ROWS = 64


def block_d_for(head_dim: int) -> int:
    """Padded feature tile: the next power of two, at least MIN_BLOCK_D."""
    return max(MIN_BLOCK_D, triton.next_power_of_2(head_dim))


# fp32 inputs run their matmuls as tf32x3 (hi/lo tf32 splits of both operands), which takes
# about three times the registers of an fp16 tile: their tiles are the ones measured clean (0
# spills, 0 stack) on sm_80 and sm_90 by tests/attention/test_gpu_compile_attention.py, per
# BLOCK_D.
_FP32_TILES = {
    16: ((64, 16, 4, 2), (64, 16, 8, 2), (64, 32, 8, 2), (32, 16, 4, 2)),
    32: ((64, 16, 4, 2), (64, 16, 8, 2), (64, 32, 8, 2), (32, 16, 4, 2)),
    64: ((64, 16, 4, 2), (64, 16, 8, 2), (64, 32, 8, 2), (32, 16, 4, 2)),
    128: ((32, 16, 4, 2), (32, 32, 4, 2)),
    256: ((16, 16, 8, 2), (16, 16, 8, 1)),
}


def dot_precision(dtype: torch.dtype, head_dim: int, *, backward: bool = False) -> str:
    """``input_precision`` of the attention kernels' ``tl.dot`` (forward, or ``backward``).

    fp16/bf16 run natively on the tensor cores (the argument is ignored for them: "ieee").
    fp32 keeps fp32 accuracy: "tf32x3" (three tf32 tensor-core products), except in the
    backward at BLOCK_D 256, where every tf32x3 tile spilled: "ieee" there (fp32 FMAs on the
    CUDA cores: slower, never less accurate). Plain tf32 (~1e-3 relative error) is never used.
    """
    if dtype != torch.float32 or (backward and block_d_for(head_dim) > 128):
        return "ieee"
    return "tf32x3"


# Tiles that spill on sm_80 once the sliding-window / softcap / varlen code is in (tanh and the
# extra loop bounds take registers): measured by tests/attention/test_gpu_compile_attention.py,
# which compiles every tile with all those flags on. (BLOCK_D, elem_size) -> tiles left out.
_VARIANT_SPILLS = {
    (16, 2): {(64, 64, 8, 2), (64, 64, 8, 3), (128, 64, 8, 2)},
    (128, 2): {(64, 64, 4, 2)},
    (64, 4): {(64, 32, 8, 2)},
    (128, 4): {(32, 32, 4, 2)},
    (256, 4): {(16, 16, 8, 2)},
}


# Rows that are not 16-element multiples (or unaligned pointers: see rows_aligned) load element
# by element, each element's address in registers: every launch runs these smaller, unpipelined
# tiles (never autotuned), measured clean with every variant flag on, except fp32 at BLOCK_D 256,
# where every tf32x3 tile tried spilled (the table's tile spills least). (elem_size, BLOCK_D) ->
# tile; 16-bit tiles under 64 rows use mma.sync on sm_90.
_UNALIGNED_TILES = {
    (2, 16): (64, 32, 8, 1), (2, 32): (64, 32, 8, 1), (2, 64): (64, 32, 8, 1),
    (2, 128): (64, 16, 8, 1), (2, 256): (32, 16, 4, 1),
    (4, 16): (64, 32, 8, 1), (4, 32): (64, 32, 8, 1), (4, 64): (64, 16, 8, 1),
    (4, 128): (16, 16, 8, 1), (4, 256): (16, 16, 8, 1),
}  # fmt: skip


def forward_config_space(
    head_dim: int, elem_size: int = 2, *, variants: bool = False
) -> list[tuple[int, int, int, int]]:
    """Every (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner may run for ``head_dim``
    and inputs of ``elem_size`` bytes (``variants``: with a sliding window, softcap or packed
    sequences, which leave out the tiles of ``_VARIANT_SPILLS``).

    fp16/bf16: generated from the candidate tiles and kept when the pipelined k/v tiles plus
    the q tile fit the shared-memory budget, the per-thread fp32 accumulator + 2 x score tile
    stays in the register budget (3 stages only within half of it), each warp has at least 8
    rows and BLOCK_N <= BLOCK_M. fp32: the measured table above.
    """
    block_d = block_d_for(head_dim)
    if variants:
        spills = _VARIANT_SPILLS.get((block_d, elem_size), set())
        return [c for c in forward_config_space(head_dim, elem_size) if c not in spills]
    if elem_size == 4:
        return list(_FP32_TILES[block_d])
    out = []
    for bm in _BLOCK_M:
        for bn in _BLOCK_N:
            for w in _WARPS:
                for st in _STAGES:
                    # fp32 values per thread: the accumulator, the scores and their exponentials.
                    per_thread = (bm * block_d + 2 * bm * bn) // (32 * w)
                    if per_thread > _REG_BUDGET:
                        continue
                    # A third stage keeps one more k/v tile in flight: only with registers to
                    # spare (measured: 96 values + 3 stages spill on sm_80).
                    if st > 2 and per_thread > _REG_BUDGET // 2:
                        continue
                    smem = (st * 2 * bn + bm) * block_d * elem_size
                    if smem > _SMEM_BUDGET:
                        continue
                    # At least 8 rows per warp (8 warps on 64 rows split the columns too); key
                    # tiles no wider than query tiles (64 x 128 spills on sm_80 at D = 64).
                    if bm // w < 8 or bn > bm:
                        continue
                    out.append((bm, bn, w, st))
    return out


def forward_tile(
    head_dim: int,
    elem_size: int = 2,
    *,
    variants: bool = False,
    seq_q: int = 1,
    aligned: bool = True,
) -> tuple[int, int, int, int]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) a launch runs without the autotuner: a
    fixed function of the head dim, the element size, the variant flags, whether the query is
    short (``seq_q <= SHORT_QUERY_ROWS``) and whether the rows are aligned (``rows_aligned``),
    never of Sk.

    Unaligned rows: the tile of ``_UNALIGNED_TILES``. Short queries: among the tiles of
    :func:`forward_config_space` with at most 64 query rows (one tile holds the whole query),
    the widest key tile, then the most stages, then the most warps: the program streams k/v,
    so the most bytes in flight. Longer queries (the rule of deterministic runs): the biggest
    tile (most ``BLOCK_M x BLOCK_N``, then stages, warps)."""
    if not aligned:
        return _UNALIGNED_TILES[(elem_size, block_d_for(head_dim))]
    space = forward_config_space(head_dim, elem_size, variants=variants)
    if seq_q <= SHORT_QUERY_ROWS:
        short = [c for c in space if c[0] <= 64] or space
        return max(short, key=lambda c: (c[1], c[3], c[2], -c[0]))
    return max(space, key=lambda c: (c[0] * c[1], c[3], c[2]))


def forward_launch_tile(
    head_dim: int, elem_size: int, *, variants: bool, seq_q: int, aligned: bool = True
) -> tuple[int, int, int, int] | None:
    """The tile a forward launch runs, or None where the autotuner picks it.

    Short queries (``seq_q <= SHORT_QUERY_ROWS``), unaligned rows and every launch while
    ``torch.are_deterministic_algorithms_enabled()`` run :func:`forward_tile` (bit-identical
    output in every process: the summation order depends on the tile); other prefills are
    autotuned over :func:`forward_config_space`, keyed on the Sq/Sk buckets, head dim and
    flags. The interpreter runs ``INTERPRET_CONFIG`` either way."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    if seq_q > SHORT_QUERY_ROWS and aligned and not deterministic:
        return None
    if INTERPRET:
        return INTERPRET_CONFIG
    return forward_tile(head_dim, elem_size, variants=variants, seq_q=seq_q, aligned=aligned)


def _configs() -> list[triton.Config]:
    if INTERPRET:
        return make_configs([INTERPRET_CONFIG], "BLOCK_M", "BLOCK_N")
    seen = set()
    for d in (16, 32, 64, 128, 256):
        seen.update(forward_config_space(d, 2))
        seen.update(forward_config_space(d, 4))
    return make_configs(sorted(seen), "BLOCK_M", "BLOCK_N")


def _prune(configs, named_args, **kwargs):
    if INTERPRET:
        return configs[:1]
    variants = any(kwargs.get(flag, False) for flag in ("WINDOW", "SOFTCAP", "VARLEN"))
    elem_size = named_args["q_ptr"].element_size()
    allowed = set(forward_config_space(kwargs["BLOCK_D"], elem_size, variants=variants))
    # Only prefills (Sq > SHORT_QUERY_ROWS) are autotuned: see forward_launch_tile.
    return configs_in(configs, allowed, "BLOCK_M", "BLOCK_N", stages=True) or configs[:1]


def seq_bucket(n: int) -> int:
    """Autotune key for a sequence length: the next power of two, capped at 8192."""
    return pow2_bucket(n, 8192)


@triton.jit
def tanh(x):
    """tanh in fp32 from one exp2: ``1 - 2 / (e^(2x) + 1)`` (exact limits +-1 at +-inf)."""
    return 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0)


@triton.jit
def _attend_block(
    acc,  # [BM, BD] fp32
    l_i,  # [BM] fp32
    m_i,  # [BM] fp32 (log2 domain)
    q,  # [BM, BD]
    k_base,
    v_base,
    mask_row,  # key_padding_mask row of this batch (read only when HAS_MASK)
    start_n,
    offs_m,
    offs_n,
    offs_d,
    d_ok,
    seq_k,
    diag,  # Sk - Sq
    stride_kn,
    stride_vn,
    stride_mn,
    qk_scale,
    window,  # sliding window w (read only when WINDOW)
    cap,  # softcap c * log2(e) (read only when SOFTCAP)
    cap_inv,  # 1 / cap
    BOUNDARY: tl.constexpr,  # mask keys >= Sk, the causal diagonal and the window's edge
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,
    CAUSAL: tl.constexpr = False,
    WINDOW: tl.constexpr = False,
):
    """One online-softmax step over keys [start_n, start_n + BLOCK_N)."""
    cols = start_n + offs_n  # [BN]
    kv_off = cols.to(tl.int64)[:, None]
    if BOUNDARY:
        n_ok = cols < seq_k
        kv_mask = n_ok[:, None] & d_ok[None, :]
    else:
        kv_mask = d_ok[None, :]
    k = tl.load(k_base + kv_off * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + kv_off * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BM, BN]
    if SOFTCAP:
        s = cap * tanh(s * cap_inv)
    if BOUNDARY:
        allowed = n_ok[None, :]
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= offs_m[:, None] + diag)
        if WINDOW:
            allowed = allowed & (cols[None, :] > offs_m[:, None] + (diag - window))
        if HAS_MASK:
            keep = tl.load(mask_row + cols * stride_mn, mask=n_ok, other=0)
            allowed = allowed & (keep != 0)[None, :]
        s = tl.where(allowed, s, float("-inf"))
    elif HAS_MASK:
        keep = tl.load(mask_row + cols * stride_mn)
        s = tl.where((keep != 0)[None, :], s, float("-inf"))

    return online_softmax_step(acc, l_i, m_i, s, v, DOT_PRECISION)


@triton.jit
def varlen_bounds(cu_q_ptr, cu_k_ptr, b):
    """Sequence ``b`` of packed tensors (rows ``[cu[b], cu[b + 1])``): ``(first q row, first k
    row)`` as int64 and ``(Sq, Sk)``."""
    q_start = tl.load(cu_q_ptr + b)
    k_start = tl.load(cu_k_ptr + b)
    seq_q = tl.load(cu_q_ptr + b + 1) - q_start
    seq_k = tl.load(cu_k_ptr + b + 1) - k_start
    return q_start.to(tl.int64), k_start.to(tl.int64), seq_q, seq_k


@triton.autotune(
    configs=_configs(),
    key=[
        "seq_q_bucket", "seq_k_bucket", "BLOCK_D", "CAUSAL", "HAS_MASK", "WINDOW", "SOFTCAP",
        "VARLEN",
    ],
    prune_configs_by={"early_config_prune": _prune},
)  # fmt: skip
@triton.jit
def attention_fwd_kernel(
    q_ptr,  # [B, Hq, Sq, D] (VARLEN: [Tq, Hq, D], batch strides 0)
    k_ptr,  # [B, Hkv, Sk, D] (VARLEN: [Tk, Hkv, D])
    v_ptr,  # [B, Hkv, Sk, D] (VARLEN: [Tk, Hkv, D])
    mask_ptr,  # [B, Sk] uint8 (read only when HAS_MASK)
    out_ptr,  # [B, Hq, Sq, D] (VARLEN: [Tq, Hq, D])
    lse_ptr,  # [B, Hq, Sq] fp32 (VARLEN: [Hq, Tq])
    cu_q_ptr,  # [N + 1] int32 sequence starts in q (read only when VARLEN)
    cu_k_ptr,  # [N + 1] int32 sequence starts in k/v (read only when VARLEN)
    counts_ptr,  # [grid size] int32 key tiles visited per program (written only when COUNT_TILES)
    seq_q,  # VARLEN: unused (each sequence's length comes from cu_q)
    seq_k,
    group,  # Hq // Hkv
    seq_q_bucket,  # autotune keys only
    seq_k_bucket,
    qk_scale,  # softmax_scale * log2(e)
    window,  # sliding window w >= 1 (read only when WINDOW)
    cap,  # softcap c * log2(e) (read only when SOFTCAP)
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_mb,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_lb,
    stride_lh,
    stride_lm,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: fp32 tiles
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for fp32 inputs, "ieee" otherwise
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    # Variants as flags, so that the dense causal kernel carries none of their code:
    WINDOW: tl.constexpr = False,  # sliding window (CAUSAL too): keys p - w < j <= p only
    SOFTCAP: tl.constexpr = False,  # scores c * tanh(s / c)
    VARLEN: tl.constexpr = False,  # packed sequences: program_id(2) is the sequence
    COUNT_TILES: tl.constexpr = False,  # debug: store the number of key tiles visited
):
    # Grid (query blocks, Hq, B or N): neighbouring programs share a head's k/v; B and Hq on
    # the 65535-limited grid axes.
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // group
    b64 = b.to(tl.int64)

    q_base = q_ptr + b64 * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b64 * stride_kb + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + b64 * stride_vb + kvh.to(tl.int64) * stride_vh
    o_base = out_ptr + b64 * stride_ob + h.to(tl.int64) * stride_oh
    l_base = lse_ptr + b64 * stride_lb + h.to(tl.int64) * stride_lh
    if VARLEN:
        # Sequence b holds rows [cu[b], cu[b + 1]) of the packed tensors (batch strides 0).
        q_row0, k_row0, seq_q, seq_k = varlen_bounds(cu_q_ptr, cu_k_ptr, b)
        q_base += q_row0 * stride_qm
        k_base += k_row0 * stride_kn
        v_base += k_row0 * stride_vn
        o_base += q_row0 * stride_om
        l_base += q_row0 * stride_lm

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < seq_q

    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    cap_inv = 1.0 / cap
    mask_row = mask_ptr + b64 * stride_mb
    visited = tl.full([], 0, tl.int32)

    # Key tiles [lo, hi) are visited (see key_tile_range): bottom-right causal, query i sees
    # keys j <= i + Sk - Sq; with a window also j > i + Sk - Sq - w. A program past its
    # sequence's end (VARLEN) visits none.
    diag = seq_k - seq_q
    keys = tl.where(pid_m * BLOCK_M < seq_q, seq_k, 0) if VARLEN else seq_k
    hi = tl.minimum(keys, (pid_m + 1) * BLOCK_M + diag) if CAUSAL else keys
    lo = 0
    if WINDOW:
        lo = tl.maximum(pid_m * BLOCK_M + diag - window + 1, 0) // BLOCK_N * BLOCK_N

    # Key blocks [n_lo, n_full) lie inside Sk and, when causal, before the first row's diagonal
    # and (window) at or after the last row's window start: no bounds, causal or window mask
    # there (the padding mask, when given, still applies). fp32 (tf32x3) tiles have no
    # registers for a second copy of the loop body: one masked loop.
    if DOT_PRECISION == "tf32x3":
        n_lo = lo
        n_full = lo
    else:
        n_full = tl.maximum(tl.minimum(keys, pid_m * BLOCK_M + diag + 1), 0) if CAUSAL else keys
        n_full = (n_full // BLOCK_N) * BLOCK_N
        n_lo = lo
        if WINDOW:
            n_lo = tl.maximum((pid_m + 1) * BLOCK_M + diag - window, 0)
            n_lo = tl.minimum(tl.cdiv(n_lo, BLOCK_N) * BLOCK_N, n_full)
            # The window's lower edge: masked.
            for start_n in range(lo, n_lo, BLOCK_N):
                acc, l_i, m_i = _attend_block(
                    acc, l_i, m_i, q, k_base, v_base, mask_row, start_n, offs_m, offs_n, offs_d,
                    d_ok, seq_k, diag, stride_kn, stride_vn, stride_mn, qk_scale, window, cap,
                    cap_inv, True, HAS_MASK, UPCAST, DOT_PRECISION, SOFTCAP, CAUSAL, WINDOW,
                )  # fmt: skip
                if COUNT_TILES:
                    visited += 1
        for start_n in range(n_lo, n_full, BLOCK_N):
            acc, l_i, m_i = _attend_block(
                acc, l_i, m_i, q, k_base, v_base, mask_row, start_n, offs_m, offs_n, offs_d,
                d_ok, seq_k, diag, stride_kn, stride_vn, stride_mn, qk_scale, window, cap,
                cap_inv, False, HAS_MASK, UPCAST, DOT_PRECISION, SOFTCAP,
            )  # fmt: skip
            if COUNT_TILES:
                visited += 1
    for start_n in range(n_full, hi, BLOCK_N):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, mask_row, start_n, offs_m, offs_n, offs_d, d_ok,
            seq_k, diag, stride_kn, stride_vn, stride_mn, qk_scale, window, cap, cap_inv, True,
            HAS_MASK, UPCAST, DOT_PRECISION, SOFTCAP, CAUSAL, WINDOW,
        )  # fmt: skip
        if COUNT_TILES:
            visited += 1
    if COUNT_TILES:
        pid = (b * tl.num_programs(1) + h) * tl.num_programs(0) + pid_m
        tl.store(counts_ptr + pid, visited)

    # A row with no allowed key (l = 0) is zeros even when a key tile it visited held NaN
    # values it may not see (0 * NaN in the p v product).
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = tl.where(empty[:, None], 0.0, acc / l_safe[:, None])
    o_ptrs = o_base + offs_m.to(tl.int64)[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    tl.store(l_base + offs_m * stride_lm, lse, mask=m_ok)


# ---------------------------------------------------------------------------- launcher


def check_grid(batch: int, n_heads: int, seq: int) -> None:
    """Grids are (blocks, heads, batch): heads and batch sit on CUDA's 65535-limited axes."""
    if batch > MAX_GRID_YZ or n_heads > MAX_GRID_YZ or seq >= 2**31:
        raise ValueError(
            f"attention: the Triton grid allows B and Hq up to {MAX_GRID_YZ} and Sq < 2**31, "
            f"got B={batch}, Hq={n_heads}, Sq={seq}"
        )


def mask_args(
    key_padding_mask: torch.Tensor | None,  # [B, Sk] bool, True = attend
    dummy: torch.Tensor,
) -> tuple[torch.Tensor, int, int]:
    """``(mask, stride_b, stride_k)`` as the kernels read a key padding mask: a uint8 view of
    the bool tensor, or ``dummy`` with zero strides (never read: HAS_MASK is False)."""
    if key_padding_mask is None:
        return dummy, 0, 0
    mask = key_padding_mask
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    stride_b, stride_k = mask.stride()
    return mask, int(stride_b), int(stride_k)


def key_tile_range(
    start_m: int,
    block_m: int,
    block_n: int,
    seq_q: int,
    seq_k: int,
    *,
    causal: bool,
    sliding_window: int | None = None,
) -> tuple[int, int]:
    """Keys ``[lo, hi)`` whose tiles the forward program of the query block starting at row
    ``start_m`` visits (``lo`` a multiple of ``block_n``; no tile when ``hi <= lo``): the loop
    bounds of ``attention_fwd_kernel``, as the launchers set them up (a window of ``>= Sk``
    keys is plain causal)."""
    diag = seq_k - seq_q
    hi = min(seq_k, start_m + block_m + diag) if causal else seq_k
    lo = 0
    if sliding_window is not None and sliding_window < seq_k:
        lo = max(start_m + diag - sliding_window + 1, 0) // block_n * block_n
    return lo, hi


def visited_key_tiles(
    seq_q: int,
    seq_k: int,
    block_m: int,
    block_n: int,
    *,
    causal: bool,
    sliding_window: int | None = None,
) -> int:
    """Key tiles the forward kernel visits for one (batch, head): the sum of
    :func:`key_tile_range` over the query blocks (the kernel's ``COUNT_TILES`` total)."""
    total = 0
    for start_m in range(0, seq_q, block_m):
        lo, hi = key_tile_range(
            start_m, block_m, block_n, seq_q, seq_k, causal=causal, sliding_window=sliding_window
        )
        total += max(0, triton.cdiv(hi - lo, block_n))
    return total


def variant_args(
    op: str,
    *,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    max_seq_k: int,
) -> tuple[int, float, dict[str, bool]]:
    """``(window, cap, flags)`` of the kernels' window / softcap variants: the window in keys
    (a window of ``>= max_seq_k`` keys is plain causal: flag off), ``cap = softcap * log2(e)``
    (1.0 when off) and the ``WINDOW`` / ``SOFTCAP`` constexprs. Raises ValueError naming ``op``
    on a window without ``causal``, a window < 1 or a softcap <= 0."""
    window = 0
    if sliding_window is not None:
        if not causal:
            raise ValueError(f"{op}: sliding_window={sliding_window} needs causal=True")
        if int(sliding_window) < 1:
            raise ValueError(f"{op}: sliding_window must be >= 1, got {sliding_window}")
        window = int(sliding_window) if int(sliding_window) < max_seq_k else 0
    cap = 1.0
    if softcap is not None:
        if not float(softcap) > 0.0:
            raise ValueError(f"{op}: softcap must be > 0, got {softcap}")
        cap = float(softcap) * LOG2E
    del softmax_scale  # the same in every variant
    return window, cap, {"WINDOW": window > 0, "SOFTCAP": softcap is not None}


def _launch_forward(args, meta, *, seq_q, n_heads_q, batch, variants):
    """Launch ``attention_fwd_kernel`` on ``args`` (q, k, v, mask, out, ... as its parameters)
    and the constexprs ``meta``: the autotuner, with a grid of its config's BLOCK_M, where
    :func:`forward_launch_tile` gives no tile, else the plain kernel with that tile."""
    q, k, v, out = args[0], args[1], args[2], args[4]
    tile = forward_launch_tile(
        meta["HEAD_DIM"], q.element_size(), variants=variants, seq_q=seq_q,
        aligned=rows_aligned(q, k, v, out),
    )  # fmt: skip
    if tile is None:

        def grid(config):
            return (triton.cdiv(seq_q, config["BLOCK_M"]), n_heads_q, batch)

        launch(attention_fwd_kernel, grid, *args, **meta)
        return
    block_m, block_n, warps, stages = tile
    launch(
        attention_fwd_kernel.fn, (triton.cdiv(seq_q, block_m), n_heads_q, batch), *args,
        **meta, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
    )  # fmt: skip


def attention_forward(
    q: torch.Tensor,  # [B, Hq, Sq, D], stride(-1) == 1
    k: torch.Tensor,  # [B, Hkv, Sk, D], stride(-1) == 1
    v: torch.Tensor,  # [B, Hkv, Sk, D], stride(-1) == 1
    out: torch.Tensor,  # [B, Hq, Sq, D] q.dtype, stride(-1) == 1
    lse: torch.Tensor,  # [B, Hq, Sq] fp32
    *,
    causal: bool,
    softmax_scale: float,
    key_padding_mask: torch.Tensor | None,  # [B, Sk] bool, True = attend
    sliding_window: int | None = None,
    softcap: float | None = None,
    tile_counts: torch.Tensor | None = None,  # int32, >= B * Hq * cdiv(Sq, 16), zeroed
) -> None:
    """Write ``out`` and ``lse`` for attention of q over k/v (inputs validated by the ops
    layer: equal dtypes, Hq % Hkv == 0, 16 <= D <= 256, contiguous last dims).

    ``sliding_window=w`` (needs ``causal``): query ``i`` sees keys ``p - w < j <= p``,
    ``p = i + Sk - Sq``; key tiles outside the band are skipped. ``softcap=c``: scores
    ``c * tanh(scale * q.k / c)``. ``tile_counts`` (debug): each program stores the number
    of key tiles it visited at its own index; their sum is :func:`visited_key_tiles` per head."""
    batch, n_heads_q, seq_q, head_dim = q.shape
    n_heads_kv, seq_k = k.shape[1], k.shape[2]
    window, cap, flags = variant_args(
        "attention", causal=causal, softmax_scale=softmax_scale, sliding_window=sliding_window,
        softcap=softcap, max_seq_k=seq_k,
    )  # fmt: skip
    if batch * n_heads_q * seq_q == 0:
        return
    if seq_k == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return
    check_grid(batch, n_heads_q, seq_q)
    mask, stride_mb, stride_mn = mask_args(key_padding_mask, q)
    args = (
        q, k, v, mask, out, lse, q, q, q if tile_counts is None else tile_counts,
        seq_q, seq_k, n_heads_q // n_heads_kv, seq_bucket(seq_q), seq_bucket(seq_k),
        float(softmax_scale) * LOG2E, window, cap,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], stride_mb, stride_mn,
        *out.stride()[:3], *lse.stride(),
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=head_dim, CAUSAL=bool(causal), HAS_MASK=key_padding_mask is not None,
        UPCAST=INTERPRET, DOT_PRECISION=dot_precision(q.dtype, head_dim),
        BLOCK_D=block_d_for(head_dim), VARLEN=False, COUNT_TILES=tile_counts is not None,
        **flags,
    )  # fmt: skip
    _launch_forward(
        args, meta, seq_q=seq_q, n_heads_q=n_heads_q, batch=batch, variants=any(flags.values())
    )


def attention_varlen_forward(
    q: torch.Tensor,  # [Tq, Hq, D], stride(-1) == 1
    k: torch.Tensor,  # [Tk, Hkv, D], stride(-1) == 1
    v: torch.Tensor,  # [Tk, Hkv, D], stride(-1) == 1
    out: torch.Tensor,  # [Tq, Hq, D] q.dtype, stride(-1) == 1
    lse: torch.Tensor,  # [Hq, Tq] fp32
    cu_seqlens_q: torch.Tensor,  # [N + 1] int32, cu[0] = 0, cu[N] = Tq
    cu_seqlens_k: torch.Tensor,  # [N + 1] int32, cu[0] = 0, cu[N] = Tk
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    tile_counts: torch.Tensor | None = None,  # int32, >= N * Hq * cdiv(max_seqlen_q, 16)
) -> None:
    """Write ``out`` and ``lse`` for packed sequences: sequence ``s`` is rows
    ``[cu_seqlens_q[s], cu_seqlens_q[s + 1])`` of q attending over rows
    ``[cu_seqlens_k[s], cu_seqlens_k[s + 1])`` of k/v, with :func:`attention_forward`'s
    semantics per sequence (bottom-right causal per sequence). No host sync: the offsets are
    read in the kernel, the grid comes from ``max_seqlen_q`` (every sequence must be at most
    ``max_seqlen_q`` / ``max_seqlen_k`` long: the ops layer's contract). Rows with no allowed
    key (e.g. of a sequence without keys) get zeros and lse ``-inf``; rows past
    ``cu_seqlens_q[N]`` are not written."""
    total_q, n_heads_q, head_dim = q.shape
    n_heads_kv = k.shape[1]
    n_seqs = cu_seqlens_q.shape[0] - 1
    window, cap, flags = variant_args(
        "attention_varlen", causal=causal, softmax_scale=softmax_scale,
        sliding_window=sliding_window, softcap=softcap, max_seq_k=max_seqlen_k,
    )  # fmt: skip
    if total_q * n_heads_q == 0 or n_seqs <= 0 or max_seqlen_q <= 0:
        return
    check_grid(n_seqs, n_heads_q, max_seqlen_q)
    args = (
        q, k, v, q, out, lse, cu_seqlens_q, cu_seqlens_k,
        q if tile_counts is None else tile_counts,
        max_seqlen_q, max_seqlen_k, n_heads_q // n_heads_kv, seq_bucket(max_seqlen_q),
        seq_bucket(max_seqlen_k), float(softmax_scale) * LOG2E, window, cap,
        0, q.stride(1), q.stride(0), 0, k.stride(1), k.stride(0), 0, v.stride(1), v.stride(0),
        0, 0, 0, out.stride(1), out.stride(0), 0, lse.stride(0), lse.stride(1),
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=head_dim, CAUSAL=bool(causal), HAS_MASK=False, UPCAST=INTERPRET,
        DOT_PRECISION=dot_precision(q.dtype, head_dim), BLOCK_D=block_d_for(head_dim),
        VARLEN=True, COUNT_TILES=tile_counts is not None, **flags,
    )  # fmt: skip
    _launch_forward(
        args, meta, seq_q=max_seqlen_q, n_heads_q=n_heads_q, batch=n_seqs, variants=True
    )


__all__ = [
    "MAX_GRID_YZ",
    "attention_forward",
    "attention_varlen_forward",
    "block_d_for",
    "check_grid",
    "dot_precision",
    "forward_config_space",
    "forward_launch_tile",
    "forward_tile",
    "key_tile_range",
    "mask_args",
    "tanh",
    "variant_args",
    "varlen_bounds",
    "visited_key_tiles",
]
