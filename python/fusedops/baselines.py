"""The compositions fusedops is timed against, written as model code writes them.

The benchmark cases (:mod:`fusedops.benchmarking.cases`, shared by ``bench/`` and the demo)
time against these. They are baselines, not the spec: :mod:`fusedops.reference` is the spec
(math in fp32 or fp64); these run in the inputs' dtype the way eager model code does, and are
also handed to ``torch.compile``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fusedops.reference import rotate_half


def hf_apply_rotary(
    q: torch.Tensor,  # [B, Hq, S, D]
    k: torch.Tensor,  # [B, Hk, S, D]
    cos: torch.Tensor,  # [B or 1, S, D] (Hugging Face's duplicated halves)
    sin: torch.Tensor,  # [B or 1, S, D]
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Llama ``apply_rotary_pos_emb``: ``x * cos + rotate_half(x) * sin``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def eager_attention(
    q: torch.Tensor,  # [B, Hq, Sq, D]
    k: torch.Tensor,  # [B, Hkv, Sk, D]
    v: torch.Tensor,  # [B, Hkv, Sk, D]
) -> torch.Tensor:
    """Causal (bottom-right) attention as transformers' eager path writes it: k/v repeated for
    GQA, the ``[Sq, Sk]`` scores materialised, softmax in fp32 cast back to q's dtype.
    Returns ``[B, Hq, Sq, D]``."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    sq, sk = q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def sdpa_attention(
    q: torch.Tensor,  # [B, Hq, Sq, D]
    k: torch.Tensor,  # [B, Hkv, Sk, D]
    v: torch.Tensor,  # [B, Hkv, Sk, D]
) -> torch.Tensor:
    """Causal (bottom-right) attention through ``F.scaled_dot_product_attention``: its
    ``is_causal`` when ``Sq == Sk`` (then the same mask), an explicit ``[Sq, Sk]`` mask otherwise.
    Returns ``[B, Hq, Sq, D]``."""
    sq, sk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if sq == sk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def composed_int8_lookup(
    ids: torch.Tensor,  # [B, S] int
    qweight: torch.Tensor,  # [V, D] int8
    scales: torch.Tensor,  # [V, G] (G = 1: per-row scales)
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The bitsandbytes-style INT8 lookup: gather int8 rows, gather scales, multiply.
    Returns ``[B, S, D]`` in ``out_dtype``."""
    rows = F.embedding(ids, qweight).float()  # [B, S, D]
    row_scales = F.embedding(ids, scales).float()  # [B, S, G]
    groups = scales.shape[1]
    if groups == 1:
        out = rows * row_scales
    else:
        out = (rows.unflatten(-1, (groups, -1)) * row_scales.unsqueeze(-1)).flatten(-2)
    return out.to(out_dtype)  # [B, S, D]


__all__ = ["composed_int8_lookup", "eager_attention", "hf_apply_rotary", "sdpa_attention"]
