"""FlashAttention-2 style forward kernel for causal / padded attention and its launcher.

One program per (query block, batch x query head). The query tile ``[BLOCK_M, BLOCK_D]`` stays
in registers; key/value tiles ``[BLOCK_N, BLOCK_D]`` of the head's kv head
``h // (Hq // Hkv)`` are streamed (GQA/MQA without materialising repeated k/v) with an online
softmax in the exp2 domain and fp32 accumulators:

    s = (q k^T) * scale * log2(e);   m' = max(m, rowmax(s));   p = exp2(s - m')
    l' = l * exp2(m - m') + rowsum(p);   acc' = acc * exp2(m - m') + p v

Masks: key tails (``j < Sk``), bottom-right causal (``j <= i + Sk - Sq``: key blocks past the
query block's last allowed key are never visited), and an optional ``key_padding_mask[b, j]``
(True = attend). A row with no allowed key keeps ``l = 0`` and writes zeros with
``lse = -inf`` (never NaN). ``lse = (m + log2(l)) * ln(2)`` in natural log, fp32.

Head dims 16..256 that are not powers of two run in a ``BLOCK_D = next_power_of_2(D)`` tile
with the feature columns masked. fp16/bf16 tiles feed the tensor cores directly
(``mma.sync`` on sm_80, ``wgmma`` on sm_90); fp32 runs as ``tf32x3`` (three tf32 products, the
accuracy of an fp32 matmul) on the small tiles that fit its registers (``mma.sync`` on both
archs: below wgmma's 64 rows). Under the interpreter every tile is upcast to fp32
right after loading (its bf16 arithmetic is wrong otherwise).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusedops.constants import LOG2E

from . import INTERPRET
from ._tuning import configs_in, make_configs, pow2_bucket

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
    256: ((16, 16, 8, 2),),
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


def forward_config_space(head_dim: int, elem_size: int = 2) -> list[tuple[int, int, int, int]]:
    """Every (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner may run for ``head_dim``
    and inputs of ``elem_size`` bytes.

    fp16/bf16: generated from the candidate tiles and kept when the pipelined k/v tiles plus
    the q tile fit the shared-memory budget, the per-thread fp32 accumulator + 2 x score tile
    stays in the register budget (3 stages only within half of it), each warp has at least 8
    rows and BLOCK_N <= BLOCK_M. fp32: the measured table above.
    """
    block_d = block_d_for(head_dim)
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
    allowed = set(forward_config_space(kwargs["BLOCK_D"], named_args["q_ptr"].element_size()))
    fitting = configs_in(configs, allowed, "BLOCK_M", "BLOCK_N", stages=True)
    # Short query sequences (decode, chunks): a 128-row tile would be mostly masked rows.
    if named_args["seq_q_bucket"] <= 64:
        short = [c for c in fitting if c.kwargs["BLOCK_M"] <= 64]
        fitting = short or fitting
    return fitting or configs[:1]


def seq_bucket(n: int) -> int:
    """Autotune key for a sequence length: the next power of two, capped at 8192."""
    return pow2_bucket(n, 8192)


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
    BOUNDARY: tl.constexpr,  # mask keys >= Sk (and the causal diagonal when CAUSAL)
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CAUSAL: tl.constexpr = False,
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
    if BOUNDARY:
        allowed = n_ok[None, :]
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= offs_m[:, None] + diag)
        if HAS_MASK:
            keep = tl.load(mask_row + cols * stride_mn, mask=n_ok, other=0)
            allowed = allowed & (keep != 0)[None, :]
        s = tl.where(allowed, s, float("-inf"))
    elif HAS_MASK:
        keep = tl.load(mask_row + cols * stride_mn)
        s = tl.where((keep != 0)[None, :], s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows with nothing allowed yet keep m = -inf: subtract 0 instead (exp2(-inf) = 0).
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.autotune(
    configs=_configs(),
    key=["seq_q_bucket", "seq_k_bucket", "BLOCK_D", "CAUSAL", "HAS_MASK"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def attention_fwd_kernel(
    q_ptr,  # [B, Hq, Sq, D]
    k_ptr,  # [B, Hkv, Sk, D]
    v_ptr,  # [B, Hkv, Sk, D]
    mask_ptr,  # [B, Sk] uint8 (read only when HAS_MASK)
    out_ptr,  # [B, Hq, Sq, D]
    lse_ptr,  # [B, Hq, Sq] fp32
    seq_q,
    seq_k,
    group,  # Hq // Hkv
    seq_q_bucket,  # autotune keys only
    seq_k_bucket,
    qk_scale,  # softmax_scale * log2(e)
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
):
    # Grid (query blocks, Hq, B): neighbouring programs share a head's k/v; B and Hq on the
    # 65535-limited grid axes.
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // group
    b64 = b.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < seq_q

    q_base = q_ptr + b64 * stride_qb + h.to(tl.int64) * stride_qh
    k_base = k_ptr + b64 * stride_kb + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + b64 * stride_vb + kvh.to(tl.int64) * stride_vh

    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Bottom-right causal: query i sees keys j <= i + Sk - Sq.
    diag = seq_k - seq_q
    hi = tl.minimum(seq_k, (pid_m + 1) * BLOCK_M + diag) if CAUSAL else seq_k

    # Key blocks [0, n_full) lie inside Sk and, when causal, before the first row's diagonal:
    # no bounds or causal mask there (the padding mask, when given, still applies). fp32
    # (tf32x3) tiles have no registers for a second copy of the loop body: one masked loop.
    if DOT_PRECISION == "tf32x3":
        n_full = 0
    else:
        n_full = tl.maximum(tl.minimum(seq_k, pid_m * BLOCK_M + diag + 1), 0) if CAUSAL else seq_k
        n_full = (n_full // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _attend_block(
                acc, l_i, m_i, q, k_base, v_base, mask_ptr + b64 * stride_mb, start_n, offs_m,
                offs_n, offs_d, d_ok, seq_k, diag, stride_kn, stride_vn, stride_mn, qk_scale,
                False, HAS_MASK, UPCAST, DOT_PRECISION,
            )  # fmt: skip
    for start_n in range(n_full, hi, BLOCK_N):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, mask_ptr + b64 * stride_mb, start_n, offs_m,
            offs_n, offs_d, d_ok, seq_k, diag, stride_kn, stride_vn, stride_mn, qk_scale,
            True, HAS_MASK, UPCAST, DOT_PRECISION, CAUSAL,
        )  # fmt: skip

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = out_ptr + b64 * stride_ob + h.to(tl.int64) * stride_oh
    o_ptrs = o_ptrs + offs_m.to(tl.int64)[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    l_ptrs = lse_ptr + b64 * stride_lb + h.to(tl.int64) * stride_lh + offs_m * stride_lm
    tl.store(l_ptrs, lse, mask=m_ok)


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
) -> None:
    """Write ``out`` and ``lse`` for attention of q over k/v (inputs validated by the ops
    layer: equal dtypes, Hq % Hkv == 0, 16 <= D <= 256, contiguous last dims)."""
    batch, n_heads_q, seq_q, head_dim = q.shape
    n_heads_kv, seq_k = k.shape[1], k.shape[2]
    if batch * n_heads_q * seq_q == 0:
        return
    if seq_k == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return
    check_grid(batch, n_heads_q, seq_q)
    mask, stride_mb, stride_mn = mask_args(key_padding_mask, q)

    def grid(meta):
        return (triton.cdiv(seq_q, meta["BLOCK_M"]), n_heads_q, batch)

    attention_fwd_kernel[grid](
        q,
        k,
        v,
        mask,
        out,
        lse,
        seq_q,
        seq_k,
        n_heads_q // n_heads_kv,
        seq_bucket(seq_q),
        seq_bucket(seq_k),
        float(softmax_scale) * LOG2E,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        stride_mb,
        stride_mn,
        *out.stride()[:3],
        *lse.stride(),
        HEAD_DIM=head_dim,
        CAUSAL=bool(causal),
        HAS_MASK=key_padding_mask is not None,
        UPCAST=INTERPRET,
        DOT_PRECISION=dot_precision(q.dtype, head_dim),
        BLOCK_D=block_d_for(head_dim),
    )


__all__ = [
    "MAX_GRID_YZ",
    "attention_forward",
    "block_d_for",
    "check_grid",
    "dot_precision",
    "forward_config_space",
    "mask_args",
]
