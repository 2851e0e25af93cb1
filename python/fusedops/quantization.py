"""Symmetric absmax int8 quantization of embedding tables (an offline step) and its inverse.

``qweight, scales = quantize_embedding(weight, group_size=64)`` gives int8 ``[V, D]`` and
``[V, D // 64]`` scales; ``dequantize_embedding(qweight, scales)`` is ``q * scale`` in fp32.
"""

from __future__ import annotations

import operator

import torch

INT8_MAX = 127  # symmetric int8 range [-127, 127] (-128 is never produced)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Bit patterns of positive finite floats are ordered like their values, so the next larger
# value of such a scale is its bit pattern plus one (0 -> the smallest subnormal).
_BITS_DTYPE = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _stored_scales(absmax: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """``fp32(absmax / 127)`` rounded to nearest in ``scale_dtype``, moved up one step where
    ``absmax > 127.5 * scale`` (``absmax`` fp32 ``[V, G]`` >= 0; returns ``[V, G]``).

    The test is exact in fp64 (``255 * scale`` and ``2 * absmax`` need at most 32 significant
    bits), and one step is enough: the rounded scale is then at least ``absmax / 127``. A scale
    that rounds to the largest finite value and still needs the step becomes inf (the caller's
    overflow error).
    """
    scales = (absmax / INT8_MAX).to(scale_dtype)  # [V, G] nearest
    too_small = 2.0 * absmax.double() > 255.0 * scales.double()  # [V, G]
    if bool(too_small.any()):
        bits = _BITS_DTYPE[scale_dtype]
        up = (scales.view(bits) + 1).view(scale_dtype)
        scales = torch.where(too_small, up, scales)
    return scales


def quantize_embedding(
    weight: torch.Tensor,
    *,
    group_size: int | None = None,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 quantization of an embedding table (an offline step).

    Each row of ``weight`` is split into ``G`` groups of ``group_size`` features (one group, the
    whole row, when ``group_size`` is None). Per group, in fp32:

    - ``scale = absmax(group) / 127`` rounded to nearest in ``scale_dtype`` (the stored scale),
      then moved up one step of ``scale_dtype`` when ``absmax > 127.5 * scale`` (checked
      exactly). That happens only where ``scale_dtype`` is coarser than 1/255 of the scale,
      i.e. for scales deep in its subnormal range or underflowing to 0: fp16 scales below
      ~8e-6 (groups with absmax below ~1e-3), bf16 below ~1e-38, fp32 below ~2e-43;
    - ``q = round_half_even(w / stored_scale)`` clamped to ``[-127, 127]``;
    - a group whose absmax is 0 gets ``scale = 0`` and ``q = 0`` (dequantizes to exact zeros).

    So ``absmax <= 127.5 * stored_scale`` for every group, and dividing by the *stored* scale
    keeps ``|q * scale - w| <= scale / 2`` for every element, whatever ``scale_dtype`` is and
    however small the values (up to the fp32 rounding of ``w / scale``): an element the clamp
    meets is at most ``127.5 * scale``.

    Args:
        weight: ``[V, D]`` float table (fp32/fp16/bf16/fp64), finite. ``D = 0`` gives empty
            ``qweight`` and all-zero scales.
        group_size: features per scale, an int >= 1 dividing ``D``. None: one scale per row.
        scale_dtype: dtype of the stored scales: fp32, fp16 or bf16.
    Returns:
        ``(qweight, scales)``: int8 ``[V, D]`` and ``scale_dtype`` ``[V, G]`` (``G = 1`` for
        per-row, else ``D // group_size``), both contiguous, on ``weight``'s device.
    Raises:
        TypeError for a non-float table, a non-int ``group_size`` or an unsupported
        ``scale_dtype``; ValueError for a table that is not 2-D, non-finite values, a
        ``group_size`` below 1 or not dividing ``D``, or a scale that overflows ``scale_dtype``.
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
    if group_size is not None:
        if isinstance(group_size, bool) or not hasattr(group_size, "__index__"):
            raise TypeError(f"{op}: group_size must be an int or None, got {group_size!r}")
        group_size = operator.index(group_size)  # Python or NumPy integer
        if group_size < 1:
            raise ValueError(f"{op}: group_size must be a positive int or None, got {group_size}")
        if dim % group_size != 0:
            raise ValueError(f"{op}: group_size {group_size} does not divide embedding dim D={dim}")
    if dim == 0:  # nothing to quantize: G = 1 per row, else 0 // group_size = 0
        groups = 1 if group_size is None else 0
        return (
            torch.empty(vocab, 0, dtype=torch.int8, device=weight.device),
            torch.zeros(vocab, groups, dtype=scale_dtype, device=weight.device),
        )
    if group_size is None:
        group_size = dim
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{op}: weight contains NaN or infinite values")
    groups = w.reshape(vocab, dim // group_size, group_size)  # [V, G, group]
    absmax = groups.abs().amax(dim=-1)  # [V, G] fp32
    scales = _stored_scales(absmax, scale_dtype)  # [V, G]
    if not bool(torch.isfinite(scales).all()):
        raise ValueError(
            f"{op}: a scale (absmax / 127, up to {float(absmax.max()) / INT8_MAX:g}) "
            f"overflows scale_dtype {scale_dtype}"
        )
    stored = scales.to(torch.float32).unsqueeze(-1)  # [V, G, 1]
    nonzero = stored != 0  # only all-zero groups have scale 0
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
    if dim == 0:  # an empty row has G = 1 (per-row) or 0 groups
        return torch.empty(qweight.shape, dtype=dtype, device=qweight.device)
    per_feature = scales.to(torch.float32).repeat_interleave(dim // groups, dim=-1)  # [..., D]
    return (qweight.to(torch.float32) * per_feature).to(dtype)
