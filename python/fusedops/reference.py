"""Plain-PyTorch references: the readable specification of every fused op.

Tests compare the kernels against these functions and benchmarks time them as the "eager"
baseline. They favour clarity over speed and use only differentiable PyTorch ops, so autograd
gives the reference gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "dequantize_embedding",
    "fused_embedding",
    "int8_embedding",
    "quantize_embedding",
    "sinusoid_coefficient",
    "sinusoid_table",
]

INT8_MAX = 127  # symmetric int8 range [-127, 127] (-128 is never produced)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def quantize_embedding(
    weight: torch.Tensor,
    *,
    group_size: int | None = None,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 quantization of an embedding table (an offline step).

    Each row of ``weight`` is split into ``G`` groups of ``group_size`` features (one group, the
    whole row, when ``group_size`` is None). Per group, in fp32:

    - ``scale = absmax(group) / 127``, then rounded to ``scale_dtype`` (the stored scale);
    - ``q = round_half_even(w / stored_scale)`` clamped to ``[-127, 127]``;
    - a group whose absmax is 0 gets ``scale = 0`` and ``q = 0`` (dequantizes to exact zeros).

    Dividing by the *stored* scale keeps ``|q * scale - w| <= scale / 2`` for every element
    whatever ``scale_dtype`` is (a scale rounded down only pushes the extreme element to 127.x,
    which the clamp turns into an error of at most ``absmax * 2^-9 < scale / 2``).

    Args:
        weight: ``[V, D]`` float table (fp32/fp16/bf16/fp64), finite.
        group_size: features per scale; must divide ``D``. None: one scale per row.
        scale_dtype: dtype of the stored scales: fp32, fp16 or bf16.
    Returns:
        ``(qweight, scales)``: int8 ``[V, D]`` and ``scale_dtype`` ``[V, G]`` (``G = 1`` for
        per-row, else ``D // group_size``), both contiguous, on ``weight``'s device.
    Raises:
        TypeError for a non-float table or an unsupported ``scale_dtype``; ValueError for a
        table that is not 2-D, non-finite values, a ``group_size`` that does not divide ``D``,
        or a scale that overflows ``scale_dtype``.
    """
    op = "quantize_embedding"
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{op}: weight must be a float tensor, got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be [V, D], got shape {tuple(weight.shape)}")
    if scale_dtype not in SCALE_DTYPES:
        raise TypeError(
            f"{op}: scale_dtype must be float32, float16 or bfloat16, got {scale_dtype}"
        )
    vocab, dim = weight.shape
    if group_size is None:
        group_size = dim
    elif isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{op}: group_size must be a positive int or None, got {group_size!r}")
    if dim % group_size != 0:
        raise ValueError(f"{op}: group_size {group_size} does not divide embedding dim D={dim}")
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{op}: weight contains NaN or infinite values")
    groups = w.reshape(vocab, dim // group_size, group_size)  # [V, G, group]
    absmax = groups.abs().amax(dim=-1)  # [V, G] fp32
    scales = (absmax / INT8_MAX).to(scale_dtype)  # [V, G], the stored scale
    if not bool(torch.isfinite(scales).all()):
        raise ValueError(
            f"{op}: a scale (absmax / 127, up to {float(absmax.max()) / INT8_MAX:g}) "
            f"overflows scale_dtype {scale_dtype}"
        )
    stored = scales.to(torch.float32).unsqueeze(-1)  # [V, G, 1]
    nonzero = stored != 0  # also catches a tiny scale that underflowed in fp16/bf16
    q = torch.round(groups / torch.where(nonzero, stored, 1.0))  # round half to even
    q = torch.where(nonzero, q.clamp(-INT8_MAX, INT8_MAX), 0.0)
    qweight = q.to(torch.int8).reshape(vocab, dim).contiguous()  # [V, D]
    return qweight, scales.contiguous()


def dequantize_embedding(
    qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``w'[v, d] = fp32(q[v, d]) * fp32(scales[v, d // (D // G)])`` (one fp32 rounding).

    ``qweight`` int8 ``[..., D]`` (a table ``[V, D]`` or gathered rows), ``scales``
    ``[..., G]`` with ``G`` dividing ``D``. Returns ``[..., D]`` in ``dtype`` (the fp32 product
    converted; fp64 keeps it exact).
    """
    dim, groups = qweight.shape[-1], scales.shape[-1]
    per_feature = scales.to(torch.float32).repeat_interleave(dim // groups, dim=-1)  # [..., D]
    return (qweight.to(torch.float32) * per_feature).to(dtype)


def int8_embedding(
    input_ids: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
) -> torch.Tensor:
    """:func:`fused_embedding` applied to the dequantized table, cast to ``out_dtype``.

    The gathered rows are dequantized with :func:`dequantize_embedding` (fp32), then
    ``out = rows * scale + P[pos]`` in fp32 exactly as :func:`fused_embedding` (``pos_weight``
    of any float dtype is read as fp32), and the fp32 result is rounded once to ``out_dtype``.

    Args:
        input_ids: int32/int64 ``[..., S]``.
        qweight: int8 ``[V, D]``; scales: ``[V, G]`` (see :func:`quantize_embedding`).
        out_dtype: fp32/fp16/bf16 result dtype.
        scale, pos_weight, positions, position_offset, sinusoidal, sinusoid_base, padding_idx:
            as in :func:`fused_embedding` (``padding_idx`` does not change the forward).
    Returns:
        ``[..., S, D]`` in ``out_dtype``.
    """
    ids = input_ids.long()
    rows = dequantize_embedding(F.embedding(ids, qweight), F.embedding(ids, scales))  # [.., S, D]
    out = rows * scale
    if pos_weight is not None or sinusoidal:
        if positions is None:
            seq = input_ids.shape[-1]
            positions = torch.arange(seq, device=input_ids.device) + position_offset  # [S]
        positions = torch.broadcast_to(positions.long(), input_ids.shape)  # [..., S]
        if sinusoidal:
            out = out + sinusoid_table(positions, qweight.shape[1], sinusoid_base, torch.float32)
        else:
            out = out + F.embedding(positions, pos_weight).to(torch.float32)
    return out.to(out_dtype)
