"""RoPE cos/sin caches for every Hugging Face rope type.

``cos, sin = rope_cos_sin(128, 4096, base=500000.0, scaling={"rope_type": "llama3", ...})``
gives two ``[4096, 64]`` fp32 tables indexed by position, the form ``fusedops.apply_rotary``
reads.
"""

from __future__ import annotations

import math

import torch

from fusedops.ops._common import check_real_scalar

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rope_inv_freq(
    dim: int,
    max_positions: int,
    base: float,
    scaling: dict | None,
    device: torch.device | str | None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[dim / 2]`` (fp32) and the cos/sin scale for a Hugging Face
    ``rope_scaling`` dict (the formulas of each rope type's paper)."""
    op = "rope_cos_sin"
    scaling = dict(scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{op}: unknown rope_type {rope_type!r}; expected one of {ROPE_TYPES}")

    def need(key: str):
        if scaling.get(key) is None:
            raise ValueError(f"{op}: rope_type {rope_type!r} needs scaling[{key!r}]")
        return scaling[key]

    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim  # [R/2]
    attention_scaling = 1.0
    if rope_type == "dynamic":
        # NTK-aware: the base grows with the context length the cache covers.
        factor = float(need("factor"))
        trained = int(scaling.get("original_max_position_embeddings") or max_positions)
        length = max(max_positions, trained)
        base = base * ((factor * length / trained) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base**exponent)  # [R/2] fp32
    if rope_type == "linear":
        inv_freq = inv_freq / float(need("factor"))
    elif rope_type == "yarn":
        trained = int(need("original_max_position_embeddings"))
        factor = scaling.get("factor") or max_positions / trained
        attention_scaling = scaling.get("attention_factor")
        if attention_scaling is None:

            def mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

            m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
            attention_scaling = (
                mscale(factor, m) / mscale(factor, m_all) if m and m_all else (mscale(factor))
            )
        fast = scaling.get("beta_fast") or 32
        slow = scaling.get("beta_slow") or 1

        def correction_dim(rotations: float) -> float:
            # The feature pair whose wavelength makes `rotations` turns over the trained context.
            return dim * math.log(trained / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = correction_dim(fast), correction_dim(slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        keep = (1 - ramp).to(inv_freq.device)  # 1: extrapolate (high frequencies), 0: interpolate
        wavelength_scale = base**exponent  # [R/2]
        interpolated = 1.0 / (factor * wavelength_scale)
        inv_freq = interpolated * (1 - keep) + inv_freq * keep
    elif rope_type == "longrope":
        trained = int(need("original_max_position_embeddings"))
        factor = scaling.get("factor") or max_positions / trained
        attention_scaling = scaling.get("attention_factor")
        if attention_scaling is None:
            attention_scaling = (
                1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(trained))
            )
        key = "long_factor" if max_positions > trained else "short_factor"
        ext = torch.tensor(need(key), dtype=torch.float32, device=device)
        if ext.shape != exponent.shape:
            raise ValueError(
                f"{op}: scaling[{key!r}] has {ext.numel()} values, expected {dim // 2}"
            )
        inv_freq = 1.0 / (ext * base**exponent)
    elif rope_type == "llama3":
        factor = float(need("factor"))
        low_ff, high_ff = float(need("low_freq_factor")), float(need("high_freq_factor"))
        trained = int(need("original_max_position_embeddings"))
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > trained / low_ff, inv_freq / factor, inv_freq)
        smooth = (trained / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= trained / high_ff) & (wavelen <= trained / low_ff)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq, float(attention_scaling)


def rope_cos_sin(
    head_dim: int,
    max_positions: int,
    *,
    base: float = 10000.0,
    scaling: dict | None = None,
    partial_rotary_factor: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos/sin cache of RoPE for every Hugging Face rope type.

    ``R = int(head_dim * partial_rotary_factor)``; ``inv_freq [R/2]`` follows the rope type of
    ``scaling`` (a Hugging Face ``rope_scaling`` / ``rope_parameters`` dict: ``rope_type`` one of
    default, linear, dynamic, yarn, longrope, llama3, with that type's keys), in fp32 as
    transformers computes it. ``angle[p, j] = fp32(p) * inv_freq[j]`` (one fp32 multiply) and
    ``cos = cos(angle) * attention_scaling`` (yarn/longrope scale, else 1), likewise ``sin``.

    ``dynamic`` builds the cache for a context of ``max_positions`` (against
    ``original_max_position_embeddings``, default ``max_positions``); ``longrope`` uses
    ``long_factor`` when ``max_positions`` exceeds ``original_max_position_embeddings``.

    Returns:
        ``(cos, sin)``, each ``[max_positions, R/2]`` in ``dtype`` on ``device``.
    """
    op = "rope_cos_sin"
    for name, value in (("head_dim", head_dim), ("max_positions", max_positions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    base = check_real_scalar(op, "base", base, positive=True)
    if not 0 < partial_rotary_factor <= 1:
        raise ValueError(
            f"{op}: partial_rotary_factor must be in (0, 1], got {partial_rotary_factor!r}"
        )
    dim = int(head_dim * partial_rotary_factor)
    if dim < 2 or dim % 2:
        raise ValueError(
            f"{op}: rotary dim int(head_dim * partial_rotary_factor) = {dim} must be even and >= 2"
        )
    if scaling is not None and not isinstance(scaling, dict):
        raise TypeError(f"{op}: scaling must be a dict or None, got {type(scaling).__name__}")
    inv_freq, attention_scaling = rope_inv_freq(dim, max_positions, float(base), scaling, device)
    pos = torch.arange(max_positions, device=inv_freq.device, dtype=torch.float32)  # [P]
    angle = pos[:, None] * inv_freq[None, :]  # [P, R/2] fp32
    cos = torch.cos(angle) * attention_scaling
    sin = torch.sin(angle) * attention_scaling
    return cos.to(dtype), sin.to(dtype)
