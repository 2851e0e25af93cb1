"""Plain-PyTorch references: the readable specification of every fused op.

Tests compare the kernels against these functions and benchmarks time them as the "eager"
baseline. They favour clarity over speed and use only differentiable PyTorch ops, so autograd
gives the reference gradients. The helpers they share with the kernel paths (sinusoid
coefficient, int8 quantization, RoPE cos/sin tables, varlen positions, attention masks) live in
modules of their own and are re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fusedops.masks import attention_mask
from fusedops.quantization import dequantize_embedding, quantize_embedding
from fusedops.rope_tables import rope_cos_sin
from fusedops.sinusoid import sinusoid_coefficient
from fusedops.varlen import varlen_positions

__all__ = [
    "apply_rotary",
    "apply_rotary_varlen",
    "attention",
    "attention_mask",
    "attention_varlen",
    "attention_with_kvcache",
    "dequantize_embedding",
    "factorized_embedding",
    "fused_embedding",
    "fused_embedding_layernorm",
    "int8_embedding",
    "quantize_embedding",
    "rope_cos_sin",
    "rotate",
    "rotate_every_two",
    "rotate_half",
    "sinusoid_coefficient",
    "sinusoid_table",
    "varlen_positions",
]


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


def _shard_rows(
    input_ids: torch.Tensor, vocab_start: int | None, num_rows: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rows, in_shard)``: the int64 table row ``[..., S]`` each token reads and, for a table
    that is the shard of rows ``[vocab_start, vocab_start + num_rows)`` of a vocabulary, the
    bool ``[..., S]`` of the tokens inside it (the others read row 0, to be masked out). With
    ``vocab_start`` None the rows are the ids and ``in_shard`` is None."""
    ids = input_ids.long()
    if vocab_start is None:
        return ids, None
    ids = ids - vocab_start
    in_shard = (ids >= 0) & (ids < num_rows)  # [..., S]
    return torch.where(in_shard, ids, 0), in_shard


def _token_positions(
    input_ids: torch.Tensor, positions: torch.Tensor | None, position_offset: int
) -> torch.Tensor:
    """int64 ``[..., S]`` like ``input_ids``: ``positions`` broadcast to it, or
    ``position_offset + s``."""
    if positions is None:
        seq = input_ids.shape[-1]
        positions = torch.arange(seq, device=input_ids.device) + position_offset  # [S]
    return torch.broadcast_to(positions.long(), input_ids.shape)  # [..., S]


def _add_positional(
    out: torch.Tensor,
    input_ids: torch.Tensor,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    position_offset: int,
    sinusoidal: bool,
    sinusoid_base: float,
) -> torch.Tensor:
    """``out`` ``[..., S, D]`` plus the positional term ``P[pos(s)]`` of the lookups, in
    ``out.dtype``: the sinusoid of :func:`sinusoid_table` (``sinusoidal``), the rows of the
    learned table ``pos_weight`` ``[P, D]``, or nothing when neither is given."""
    if pos_weight is None and not sinusoidal:
        return out
    positions = _token_positions(input_ids, positions, position_offset)  # [..., S]
    if sinusoidal:
        return out + sinusoid_table(positions, out.shape[-1], sinusoid_base, out.dtype)
    return out + F.embedding(positions, pos_weight).to(out.dtype)


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
    vocab_start: int | None = None,
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
        vocab_start: ``weight`` is the shard of rows ``[vocab_start, vocab_start + V)`` of a
            larger vocabulary: id ``t`` reads row ``t - vocab_start``, and ids outside the shard
            contribute no token term (only the positional one). ``padding_idx`` is a row of
            ``weight``.
    Returns:
        ``[..., S, D]`` in ``weight.dtype``; the arithmetic is done in fp32 (fp64 if ``weight``
        is fp64, which is how the tests build their oracle).
    """
    compute = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 for an oracle
    ids, in_shard = _shard_rows(input_ids, vocab_start, weight.shape[0])  # [..., S]
    tokens = F.embedding(ids, weight, padding_idx=padding_idx)  # [..., S, D]
    if in_shard is not None:
        tokens = tokens * in_shard.unsqueeze(-1)
    out = tokens.to(compute) * scale  # [..., S, D]
    out = _add_positional(
        out, input_ids, pos_weight, positions, position_offset, sinusoidal, sinusoid_base
    )
    return out.to(weight.dtype)


def factorized_embedding(
    input_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    hot_ids: torch.Tensor | None = None,
    hot_rows: torch.Tensor | None = None,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
) -> torch.Tensor:
    """A low-rank token table with exact hot rows: ``row(t) * scale + P[pos(s)]``.

    ``row(t) = hot_rows[k]`` when ``t == hot_ids[k]``, else ``a[t] @ b``: the table is
    ``W ~= a @ b`` (``a`` [V, r], ``b`` [r, D]) except for the K hot tokens, whose rows are
    stored exactly. The positional term is as in :func:`fused_embedding`.

    Args:
        input_ids: int32/int64 ``[..., S]`` token ids (sequence last).
        a: ``[V, r]`` per-token coefficients; b: ``[r, D]`` shared basis (same dtype).
        hot_ids: optional int ``[K]`` distinct token ids served from ``hot_rows`` ``[K, D]``.
        scale, pos_weight, positions, position_offset, sinusoidal, sinusoid_base: as in
            :func:`fused_embedding`.
        padding_idx: tokens equal to it contribute no gradient to ``a``, ``b`` or
            ``hot_rows`` (the forward is unchanged).
    Returns:
        ``[..., S, D]`` in ``a.dtype``; products and sums in fp32 (fp64 for fp64 inputs).
    """
    compute = torch.promote_types(a.dtype, torch.float32)  # fp32, or fp64 for an oracle
    ids = input_ids.long()
    rows = F.embedding(ids, a).to(compute) @ b.to(compute)  # [..., S, D]
    if hot_ids is not None:
        slot = torch.full((a.shape[0],), -1, dtype=torch.long, device=a.device)  # [V]
        slot[hot_ids.long()] = torch.arange(hot_ids.numel(), device=a.device)
        token_slot = slot[ids]  # [..., S], -1 for tokens served by the factors
        is_hot = (token_slot >= 0).unsqueeze(-1)
        exact = F.embedding(token_slot.clamp(min=0), hot_rows).to(compute)  # [..., S, D]
        rows = torch.where(is_hot, exact, rows)
    if padding_idx is not None:
        rows = torch.where((ids == padding_idx).unsqueeze(-1), rows.detach(), rows)
    out = rows * scale  # [..., S, D] in compute
    out = _add_positional(
        out, input_ids, pos_weight, positions, position_offset, sinusoidal, sinusoid_base
    )
    return out.to(a.dtype)


def fused_embedding_layernorm(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor | None,
    type_weight: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    *,
    padding_idx: int | None = None,
) -> torch.Tensor:
    """BERT's embeddings: ``LayerNorm(weight[ids] + type_weight[tt] + pos_weight[pos])``.

    The sum is formed in that order (Hugging Face's ``BertEmbeddings``), then normalised over
    the last dim with biased variance: ``(x - mean) * rsqrt(var + eps) * ln_weight + ln_bias``.

    Args:
        input_ids: int32/int64 ``[..., S]`` token ids (sequence last).
        weight: ``[V, D]`` word table, fp32/fp16/bf16.
        pos_weight: ``[P, D]`` positional table, or None (no positional term).
        type_weight: ``[T, D]`` token-type table, or None (no token-type term).
        token_type_ids: int ``[..., S]`` (broadcastable to ``input_ids``), or None: row 0 of
            ``type_weight`` for every token.
        ln_weight, ln_bias: ``[D]`` LayerNorm affine parameters, each optional.
        eps: added to the variance.
        positions: int ``[..., S]`` / ``[S]`` positions; default ``position_offset + s``.
        position_offset: first position when ``positions`` is None.
        padding_idx: word row whose gradient is zero (``nn.Embedding`` semantics).
    Returns:
        ``[..., S, D]`` in ``weight.dtype``; the arithmetic is in fp32 (fp64 for an fp64
        oracle).
    """
    compute = torch.promote_types(weight.dtype, torch.float32)
    x = F.embedding(input_ids.long(), weight, padding_idx=padding_idx).to(compute)  # [..., S, D]
    if type_weight is not None:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids, dtype=torch.long)
        types = torch.broadcast_to(token_type_ids.long(), input_ids.shape)  # [..., S]
        x = x + F.embedding(types, type_weight).to(compute)
    if pos_weight is not None:
        positions = _token_positions(input_ids, positions, position_offset)  # [..., S]
        x = x + F.embedding(positions, pos_weight).to(compute)
    gamma = None if ln_weight is None else ln_weight.to(compute)
    beta = None if ln_bias is None else ln_bias.to(compute)
    out = F.layer_norm(x, (weight.shape[1],), gamma, beta, eps)
    return out.to(weight.dtype)


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
    vocab_start: int | None = None,
) -> torch.Tensor:
    """:func:`fused_embedding` applied to the dequantized table, cast to ``out_dtype``.

    The gathered rows are dequantized with :func:`dequantize_embedding` (fp32), then
    ``out = rows * scale + P[pos]`` in fp32 exactly as :func:`fused_embedding` (``pos_weight``
    of any float dtype is read as fp32), and the fp32 result is rounded once to ``out_dtype``.

    Args:
        input_ids: int32/int64 ``[..., S]``.
        qweight: int8 ``[V, D]``; scales: ``[V, G]`` (see :func:`quantize_embedding`).
        out_dtype: fp32/fp16/bf16 result dtype.
        scale, pos_weight, positions, position_offset, sinusoidal, sinusoid_base, padding_idx,
        vocab_start: as in :func:`fused_embedding` (``padding_idx`` does not change the
            forward; with ``vocab_start`` the tables are a shard and other ids read as zero).
    Returns:
        ``[..., S, D]`` in ``out_dtype``.
    """
    ids, in_shard = _shard_rows(input_ids, vocab_start, qweight.shape[0])  # [..., S]
    rows = dequantize_embedding(F.embedding(ids, qweight), F.embedding(ids, scales))  # [.., S, D]
    if in_shard is not None:
        rows = rows * in_shard.unsqueeze(-1)
    out = rows * scale  # [..., S, D] fp32
    out = _add_positional(
        out, input_ids, pos_weight, positions, position_offset, sinusoidal, sinusoid_base
    )
    return out.to(out_dtype)


# --------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE)
# --------------------------------------------------------------------------------------------


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
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, the spec of ``fusedops.attention`` (plain PyTorch).

    ``q [B, Hq, Sq, D]``, ``k``/``v`` ``[B, Hkv, Sk, D]`` with ``Hq % Hkv == 0`` (query head
    ``h`` uses kv head ``h // (Hq // Hkv)``; materialised here with ``repeat_interleave``).
    Math in fp32 (fp64 for fp64 inputs); ``scale = softmax_scale or 1/sqrt(D)``; causal is
    bottom-right and ``sliding_window`` keeps the last ``w`` keys of each query (see
    :func:`attention_mask`). ``softcap = c`` caps the scores as Gemma-2 does:
    ``s = c * tanh(scale * q.k / c)`` before the mask and softmax. A query row with no allowed
    key returns zeros and an lse of ``-inf`` whatever its query and the keys/values it may not
    see hold; a NaN in a query row or in a key/value the row attends to makes the row NaN.
    Returns ``out [B, Hq, Sq, D]`` in q's dtype, and
    with ``return_lse`` also ``lse [B, Hq, Sq]`` (natural log of the row's sum of
    ``exp(s)``) in the compute dtype. ``compute_dtype`` overrides the math's precision (tests
    pass the input dtype to measure what PyTorch itself loses in fp16/bf16: the yardstick of
    the error bound)."""
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
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    mask = attention_mask(
        seq_q,
        seq_k,
        causal=causal,
        key_padding_mask=key_padding_mask,
        device=q.device,
        sliding_window=sliding_window,
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
    # A row with no allowed key is zeros whatever the values it may not see hold (0 * NaN).
    out = torch.matmul(probs, vf).masked_fill(denom == 0, 0.0).to(q.dtype)
    if return_lse:
        return out, lse
    return out


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over packed sequences, the spec of ``fusedops.attention_varlen``.

    ``q [Tq, Hq, D]``, ``k``/``v`` ``[Tk, Hkv, D]`` hold ``N`` sequences back to back:
    sequence ``n`` is ``q[cu_seqlens_q[n]:cu_seqlens_q[n + 1]]`` and
    ``k[cu_seqlens_k[n]:cu_seqlens_k[n + 1]]`` (int ``[N + 1]``). Each sequence is attended on
    its own by :func:`attention` (causal and window bottom-right within the sequence), one
    sequence at a time. Returns ``out [Tq, Hq, D]`` and with ``return_lse`` ``lse [Hq, Tq]``
    (flash-attention's layout)."""
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for n in range(len(bounds_q) - 1):
        # [S, H, D] -> [1, H, S, D]
        qs = q[bounds_q[n] : bounds_q[n + 1]].transpose(0, 1).unsqueeze(0)
        ks = k[bounds_k[n] : bounds_k[n + 1]].transpose(0, 1).unsqueeze(0)
        vs = v[bounds_k[n] : bounds_k[n + 1]].transpose(0, 1).unsqueeze(0)
        out, lse = attention(
            qs,
            ks,
            vs,
            causal=causal,
            softmax_scale=softmax_scale,
            return_lse=True,
            compute_dtype=compute_dtype,
            sliding_window=sliding_window,
            softcap=softcap,
        )
        outs.append(out[0].transpose(0, 1))  # [S, Hq, D]
        lses.append(lse[0])  # [Hq, S]
    out = torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)
    if not return_lse:
        return out
    lse = torch.cat(lses, dim=1) if lses else q.new_zeros((q.shape[1], 0), dtype=torch.float32)
    return out, lse


def _cache_rows(cache: torch.Tensor, b: int, n: int, block_table: torch.Tensor | None):
    """Key slots ``[0, n)`` of batch ``b`` as a dense ``[n, Hkv, D]`` view (dense cache) or
    gather (paged cache)."""
    if block_table is None:
        return cache[b, :n]
    block_size = cache.shape[1]
    slots = torch.arange(n, device=cache.device)
    blocks = block_table[b].long()[slots // block_size]
    return cache[blocks, slots % block_size]


def _write_cache_rows(cache, b, start, rows, block_table):
    """Write ``rows [n, Hkv, D]`` into key slots ``[start, start + n)`` of batch ``b``."""
    slots = torch.arange(start, start + rows.shape[0], device=cache.device)
    if block_table is None:
        cache[b, slots] = rows.to(cache.dtype)
    else:
        block_size = cache.shape[1]
        blocks = block_table[b].long()[slots // block_size]
        cache[blocks, slots % block_size] = rows.to(cache.dtype)


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    cache_seqlens: torch.Tensor | int,
    block_table: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = False,
    causal: bool = True,
    softmax_scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of new queries over a KV cache, the spec of ``fusedops.attention_with_kvcache``
    (flash-attention's ``flash_attn_with_kvcache``): RoPE, cache append, then attention.

    Args:
        q: ``[B, Sq, Hq, D]``.
        k_cache, v_cache: dense ``[B, S_max, Hkv, D]``, or paged ``[num_blocks, block_size,
            Hkv, D]`` with ``block_table [B, max_blocks]`` (key slot ``j`` of batch ``b`` is
            row ``j % block_size`` of block ``block_table[b, j // block_size]``).
        k, v: ``[B, Sq, Hkv, D]`` new keys/values or None. When given they are written **in
            place** into slots ``[cache_seqlens[b], cache_seqlens[b] + Sq)``.
        cache_seqlens: keys already in the cache per batch (int ``[B]`` or one int).
        rotary_cos, rotary_sin: ``[S_rot, R/2]`` (``R <= D``); q and the new k are rotated at
            positions ``cache_seqlens[b] + t`` before the append (only with k/v given).
        rotary_interleaved: GPT-J pairs instead of the rotate-half layout.
        causal, softmax_scale, sliding_window, softcap: as :func:`attention`, with the
            bottom-right alignment over the ``L_b = cache_seqlens[b] (+ Sq when appending)``
            keys of batch ``b``.
    Returns:
        ``out [B, Sq, Hq, D]`` in q's dtype, and with ``return_lse`` ``lse [B, Hq, Sq]``.
    """
    batch, seq_q = q.shape[0], q.shape[1]
    if isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32)
    seen = cache_seqlens.tolist()
    outs, lses = [], []
    for b in range(batch):
        qb = q[b : b + 1]  # [1, Sq, Hq, D]
        total = seen[b]
        if k is not None:
            kb, vb = k[b : b + 1], v[b : b + 1]  # [1, Sq, Hkv, D]
            if rotary_cos is not None:
                positions = torch.arange(seen[b], seen[b] + seq_q, device=q.device)
                qb, kb = (
                    x.transpose(1, 2)
                    for x in apply_rotary(
                        qb.transpose(1, 2),
                        kb.transpose(1, 2),
                        rotary_cos,
                        rotary_sin,
                        positions=positions,
                        interleaved=rotary_interleaved,
                        rotary_dim=2 * rotary_cos.shape[-1],
                    )
                )
            _write_cache_rows(k_cache, b, seen[b], kb[0], block_table)
            _write_cache_rows(v_cache, b, seen[b], vb[0], block_table)
            total += seq_q
        keys = _cache_rows(k_cache, b, total, block_table)  # [L_b, Hkv, D]
        values = _cache_rows(v_cache, b, total, block_table)
        out, lse = attention(
            qb.transpose(1, 2),  # [1, Hq, Sq, D]
            keys.transpose(0, 1).unsqueeze(0),  # [1, Hkv, L_b, D]
            values.transpose(0, 1).unsqueeze(0),
            causal=causal,
            softmax_scale=softmax_scale,
            return_lse=True,
            compute_dtype=compute_dtype,
            sliding_window=sliding_window,
            softcap=softcap,
        )
        outs.append(out.transpose(1, 2))  # [1, Sq, Hq, D]
        lses.append(lse)  # [1, Hq, Sq]
    if batch == 0:
        lse = torch.zeros((0, q.shape[2], seq_q), dtype=torch.float32, device=q.device)
        return (q.new_zeros(q.shape), lse) if return_lse else q.new_zeros(q.shape)
    out = torch.cat(outs, dim=0)
    return (out, torch.cat(lses, dim=0)) if return_lse else out
