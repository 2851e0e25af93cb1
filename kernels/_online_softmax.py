"""The online-softmax step the FlashAttention-style kernels share (base-2 exponentials)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(
    acc,  # [BM, BD] fp32 unnormalised output
    l_i,  # [BM] fp32 running sum of exp2(s - m)
    m_i,  # [BM] fp32 running max (log2 domain)
    s,  # [BM, BN] fp32 scores in the log2 domain, -inf where not allowed
    v,  # [BN, BD] value tile
    DOT_PRECISION: tl.constexpr,
):
    """Fold one key tile into ``(acc, l_i, m_i)``:
    ``m' = max(m, rowmax(s))``, ``p = exp2(s - m')``, ``l' = l * exp2(m - m') + rowsum(p)``,
    ``acc' = acc * exp2(m - m') + p v``."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows with nothing allowed yet keep m = -inf: subtract 0 instead (exp2(-inf) = 0).
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new
