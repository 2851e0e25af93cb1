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
    "apply_rotary",
    "apply_rotary_varlen",
    "dequantize_embedding",
    "fused_embedding",
    "int8_embedding",
    "quantize_embedding",
    "rope_cos_sin",
    "rotate",
    "rotate_every_two",
    "rotate_half",
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


# --------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE)
# --------------------------------------------------------------------------------------------

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """NeoX/Llama pairing: ``[x1, x2] -> [-x2, x1]`` with ``x1, x2`` the two halves of the last
    dim (so feature ``j`` pairs with ``j + R/2``)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """GPT-J pairing: ``(x[2j], x[2j+1]) -> (-x[2j+1], x[2j])`` (adjacent features pair)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def _rope_half_columns(t: torch.Tensor, rotary_dim: int, interleaved: bool) -> torch.Tensor:
    """The ``R/2`` distinct frequencies of a cos/sin tensor whose last dim is ``R/2`` or ``R``
    (Hugging Face's duplicated form: ``cat(f, f)`` for the half layout, ``f`` repeated twice
    element-wise for GPT-J)."""
    if t.shape[-1] == rotary_dim // 2:
        return t
    return t[..., 0::2] if interleaved else t[..., : rotary_dim // 2]


def rope_gather(
    cos: torch.Tensor,
    batch: int,
    seq: int,
    *,
    rotary_dim: int,
    interleaved: bool = False,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
) -> torch.Tensor:
    """cos (or sin) for every token: ``[B or 1, S, R/2]``.

    ``cos`` is a cache ``[max_pos, R/2 or R]`` indexed by ``positions`` (``[B or 1, S]`` or
    ``[S]``) or by ``position_offset + s``, or already gathered ``[B or 1, S, R/2 or R]``.
    """
    half = _rope_half_columns(cos, rotary_dim, interleaved)
    if cos.dim() == 3:
        return half  # [B or 1, S, R/2]
    if positions is None:
        return half[position_offset : position_offset + seq].unsqueeze(0)  # [1, S, R/2]
    if positions.dim() == 1:
        positions = positions.unsqueeze(0)
    return F.embedding(positions.long(), half)  # [B or 1, S, R/2]


def rotate(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
) -> torch.Tensor:
    """Rotate all of ``x [..., R]`` by angles with ``cos``/``sin`` ``[..., R/2]`` (broadcast).

    Half layout: ``y = x * cat(c, c) + rotate_half(x) * cat(s, s)``; interleaved (GPT-J):
    ``y = x * repeat_interleave(c, 2) + rotate_every_two(x) * repeat_interleave(s, 2)``.
    """
    if interleaved:
        c, s = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        return x * c + rotate_every_two(x) * s
    c, s = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    return x * c + rotate_half(x) * s


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    interleaved: bool = False,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotary position embedding of ``q`` and ``k`` (the readable spec of the fused op).

    Args:
        q: ``[B, Hq, S, D]``; k: ``[B, Hk, S, D]`` or None.
        cos, sin: a cache ``[max_pos, R/2]`` or ``[max_pos, R]`` (Hugging Face's duplicated
            form) indexed by position, or gathered ``[B or 1, S, R/2 or R]`` as Hugging Face
            passes them.
        positions: int ``[B or 1, S]`` positions into the cache; default
            ``position_offset + s``.
        interleaved: GPT-J pairs ``(2j, 2j+1)`` instead of the half layout ``(j, j + R/2)``.
        rotary_dim: ``R`` (default ``D``): features ``[R, D)`` are copied unchanged.
    Returns:
        ``(q_out, k_out)`` in the input dtypes; the arithmetic is done in fp32 (fp64 when the
        inputs are fp64, which is how the tests build their oracle).
    """
    batch, _, seq, dim = q.shape
    rot = dim if rotary_dim is None else rotary_dim
    gather = {
        "rotary_dim": rot,
        "interleaved": interleaved,
        "positions": positions,
        "position_offset": position_offset,
    }
    c = rope_gather(cos, batch, seq, **gather).unsqueeze(1)  # [B or 1, 1, S, R/2]
    s = rope_gather(sin, batch, seq, **gather).unsqueeze(1)

    def one(x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        xr = x[..., :rot].to(compute)
        y = rotate(xr, c.to(compute), s.to(compute), interleaved=interleaved)
        return torch.cat((y.to(x.dtype), x[..., rot:]), dim=-1)

    return one(q), None if k is None else one(k)


def varlen_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of each packed token in its sequence: ``t - cu_seqlens[i]`` for token ``t`` of
    sequence ``i`` (``cu_seqlens[i] <= t < cu_seqlens[i + 1]``). int64 ``[T]``, no host sync."""
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)  # [T]
    seq_idx = torch.searchsorted(cu_seqlens, tokens, right=True) - 1  # [T]
    return (tokens - cu_seqlens[seq_idx]).long()


def apply_rotary_varlen(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    interleaved: bool = False,
    rotary_dim: int | None = None,
) -> torch.Tensor:
    """:func:`apply_rotary` on packed tokens ``x [T, H, D]`` whose positions restart at 0 at
    every ``cu_seqlens`` boundary (``[N + 1]``, ``cu_seqlens[0] = 0``, ``cu_seqlens[-1] = T``);
    ``cos``/``sin`` are a cache ``[max_pos, R/2 or R]``."""
    positions = varlen_positions(cu_seqlens, x.shape[0]).unsqueeze(0)  # [1, T]
    view = x.permute(1, 0, 2).unsqueeze(0)  # [1, H, T, D]
    out, _ = apply_rotary(
        view, None, cos, sin, positions=positions, interleaved=interleaved, rotary_dim=rotary_dim
    )
    return out.squeeze(0).permute(1, 0, 2)  # [T, H, D]


def _rope_inv_freq(
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
    if not (isinstance(base, (int, float)) and base > 0):
        raise ValueError(f"{op}: base must be a positive number, got {base!r}")
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
    inv_freq, attention_scaling = _rope_inv_freq(dim, max_positions, float(base), scaling, device)
    pos = torch.arange(max_positions, device=inv_freq.device, dtype=torch.float32)  # [P]
    angle = pos[:, None] * inv_freq[None, :]  # [P, R/2] fp32
    cos = torch.cos(angle) * attention_scaling
    sin = torch.sin(angle) * attention_scaling
    return cos.to(dtype), sin.to(dtype)


def attention_mask(
    seq_q: int,
    seq_k: int,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Boolean ``[B or 1, 1, Sq, Sk]`` mask (True = attend), or None when every key is allowed.

    Causal is bottom-right aligned: query ``i`` may attend key ``j`` iff ``j <= i + Sk - Sq``
    (the last query sees every key, as in KV-cache decode); ``key_padding_mask [B, Sk]``
    (True = attend) is combined with it."""
    mask = None
    if causal:
        i = torch.arange(seq_q, device=device).unsqueeze(1)
        j = torch.arange(seq_k, device=device).unsqueeze(0)
        mask = (j <= i + (seq_k - seq_q)).view(1, 1, seq_q, seq_k)
    if key_padding_mask is not None:
        pad = key_padding_mask.to(device=device, dtype=torch.bool).view(-1, 1, 1, seq_k)
        mask = pad if mask is None else mask & pad
    return mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, the spec of ``fusedops.attention`` (plain PyTorch).

    ``q [B, Hq, Sq, D]``, ``k``/``v`` ``[B, Hkv, Sk, D]`` with ``Hq % Hkv == 0`` (query head
    ``h`` uses kv head ``h // (Hq // Hkv)``; materialised here with ``repeat_interleave``).
    Math in fp32 (fp64 for fp64 inputs); ``scale = softmax_scale or 1/sqrt(D)``; causal is
    bottom-right (see :func:`attention_mask`). A query row with no allowed key returns zeros and
    an lse of ``-inf``. Returns ``out [B, Hq, Sq, D]`` in q's dtype, and with ``return_lse``
    also ``lse [B, Hq, Sq]`` (natural log of the row's sum of ``exp(scale * q.k)``) in the
    compute dtype. ``compute_dtype`` overrides the math's precision (tests pass the input dtype
    to measure what PyTorch itself loses in fp16/bf16: the yardstick of the error bound)."""
    compute = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    heads_q, seq_q, dim = q.shape[1], q.shape[2], q.shape[3]
    heads_kv, seq_k = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(dim)
    qf, kf, vf = q.to(compute), k.to(compute), v.to(compute)
    if group != 1:
        kf = kf.repeat_interleave(group, dim=1)
        vf = vf.repeat_interleave(group, dim=1)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # [B, Hq, Sq, Sk]
    mask = attention_mask(
        seq_q, seq_k, causal=causal, key_padding_mask=key_padding_mask, device=q.device
    )
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Softmax written out so that rows with no allowed key give zeros (and finite gradients).
    if seq_k == 0:  # no keys at all: every row is empty
        row_max = scores.new_zeros((*scores.shape[:3], 1))
    else:
        row_max = scores.detach().amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), 0.0, row_max)
    exp = torch.exp(scores - row_max)
    denom = exp.sum(dim=-1, keepdim=True)
    probs = exp / torch.where(denom == 0, 1.0, denom)
    lse = (torch.log(denom) + row_max).squeeze(-1)  # -inf for rows with no allowed key
    out = torch.matmul(probs, vf).to(q.dtype)
    if return_lse:
        return out, lse
    return out
