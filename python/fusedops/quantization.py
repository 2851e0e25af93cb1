"""Symmetric absmax int8 quantization of embedding tables (an offline step) and its inverse.

``qweight, scales = quantize_embedding(weight, group_size=64)`` gives int8 ``[V, D]`` and
``[V, D // 64]`` scales; ``dequantize_embedding(qweight, scales)`` is ``q * scale`` in fp32.
"""

from __future__ import annotations

import torch

INT8_MAX = 127  # symmetric int8 range [-127, 127] (-128 is never produced)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
