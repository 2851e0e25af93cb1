"""Plain-PyTorch references: the readable specification of every fused op.

Tests compare the kernels against these functions and benchmarks time them as the "eager"
baseline. They favour clarity over speed and use only differentiable PyTorch ops, so autograd
gives the reference gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["fused_embedding", "sinusoid_coefficient", "sinusoid_table"]


@torch.compiler.assume_constant_result
def sinusoid_coefficient(dim: int, base: float = 10000.0) -> float:
    """``ln(base) / dim`` rounded once to fp32: the only scalar the sinusoid kernels receive."""
    return float(torch.tensor(math.log(base) / dim, dtype=torch.float32))


def sinusoid_table(
    positions: torch.Tensor,
    dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sinusoidal position encodings of Vaswani et al. for arbitrary integer positions.

    ``P[..., 2i] = sin(pos * base^(-2i/dim))`` and ``P[..., 2i+1] = cos(pos * base^(-2i/dim))``.
    Every implementation forms the angle with the same roundings, so only sin/cos differ:

    - ``c = fp32(ln(base) / dim)``
    - ``inv_freq = fp32(exp(-2i * c))`` with the exponential taken in fp64
    - ``angle = fp32(pos) * inv_freq`` (one fp32 multiply)

    sin/cos of that fp32 angle are then evaluated in ``dtype`` (fp64 gives the oracle the tests
    use; fp32 is what an eager model would run).

    Args:
        positions: integer tensor of any shape ``[...]``.
        dim: feature dimension ``D`` (any positive int, odd allowed).
        base: frequency base.
        dtype: float dtype of the result and of the sin/cos evaluation.
    Returns:
        ``[..., D]`` in ``dtype``.
    """
    device = positions.device
    feature = torch.arange(dim, device=device)  # [D]
    pair = (feature // 2).to(torch.float64)  # [D]: i of feature 2i / 2i+1
    inv_freq = torch.exp(-2.0 * pair * sinusoid_coefficient(dim, base)).to(torch.float32)  # [D]
    angle = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [..., D] fp32
    angle = angle.to(dtype)
    even = (feature % 2) == 0  # [D]
    return torch.where(even, torch.sin(angle), torch.cos(angle))


def fused_embedding(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
) -> torch.Tensor:
    """``out[..., s, :] = weight[input_ids[..., s]] * scale + P[pos(s)]``.

    Args:
        input_ids: int32/int64 ``[..., S]`` token ids (sequence last).
        weight: ``[V, D]`` token table, fp32/fp16/bf16.
        scale: multiplier of the token rows (e.g. ``sqrt(D)``).
        pos_weight: optional learned positional table ``[P, D]`` (same dtype as ``weight``).
        positions: optional int ``[..., S]`` positions (broadcastable to ``input_ids``);
            default ``position_offset + s``.
        position_offset: first position when ``positions`` is not given (KV-cache decode).
        sinusoidal: add the sinusoid of :func:`sinusoid_table` instead of a learned table.
        sinusoid_base: frequency base of the sinusoid.
        padding_idx: row whose gradient is zero (``nn.Embedding`` semantics); forward unchanged.
    Returns:
        ``[..., S, D]`` in ``weight.dtype``; the arithmetic is done in fp32 (fp64 if ``weight``
        is fp64, which is how the tests build their oracle).
    """
    compute = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 for an oracle
    tokens = F.embedding(input_ids.long(), weight, padding_idx=padding_idx)  # [..., S, D]
    out = tokens.to(compute) * scale
    if pos_weight is not None or sinusoidal:
        if positions is None:
            seq = input_ids.shape[-1]
            positions = torch.arange(seq, device=input_ids.device) + position_offset  # [S]
        positions = torch.broadcast_to(positions.long(), input_ids.shape)  # [..., S]
        if sinusoidal:
            out = out + sinusoid_table(positions, weight.shape[1], sinusoid_base, compute)
        else:
            out = out + F.embedding(positions, pos_weight).to(compute)
    return out.to(weight.dtype)
