"""Work of one call: the minimum bytes a memory-bound op moves, the FLOPs of attention.

Bytes count every input read once and the output written once (the kernel's unavoidable
traffic); achieved GB/s is that count over the median time. Gathers read one row per token,
repeated ids included (rows are not assumed to stay in cache). Example::

    min_bytes_embedding(8 * 1024, 768, dtype=torch.float32, pos_rows=1024)
"""

from __future__ import annotations

import torch


def min_bytes_embedding(
    num_tokens: int,
    dim: int,
    *,
    dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
    pos_rows: int = 0,
    positions_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> int:
    """Minimum bytes of a fused embedding forward.

    Args:
        num_tokens: ``N`` = number of ids (``B * S``); each reads one ``[D]`` row of ``weight``.
        dim: embedding dim ``D``.
        dtype: dtype of ``weight`` and of the positional table.
        id_dtype: dtype of ``input_ids``.
        pos_rows: distinct positional-table rows read once each (``S`` for positions
            ``offset .. offset + S - 1`` shared by the batch; 0 for an in-kernel sinusoid or no
            positional term).
        positions_dtype: dtype of an explicit positions tensor (``N`` ids read once); ``None``
            when positions are implicit.
        out_dtype: output dtype (``N x D`` written once); defaults to ``dtype``.
    """
    item = dtype.itemsize
    total = num_tokens * id_dtype.itemsize  # ids
    total += num_tokens * dim * item  # gathered token rows
    total += pos_rows * dim * item  # positional rows
    if positions_dtype is not None:
        total += num_tokens * positions_dtype.itemsize  # explicit positions
    total += num_tokens * dim * (out_dtype or dtype).itemsize  # output
    return total


def min_bytes_embedding_backward(
    num_tokens: int,
    dim: int,
    num_rows: int,
    *,
    dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
) -> int:
    """Minimum bytes of the embedding backward producing a dense ``[V, D]`` weight gradient:
    ``grad_out [N, D]`` and the ids read once, the whole ``[num_rows, D]`` gradient written once
    (rows no token hits are written as zeros)."""
    item = dtype.itemsize
    return num_tokens * dim * item + num_tokens * id_dtype.itemsize + num_rows * dim * item


def min_bytes_int8_embedding(
    num_tokens: int,
    dim: int,
    groups: int,
    *,
    scale_dtype: torch.dtype,
    out_dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
) -> int:
    """Minimum bytes of an INT8 lookup: per token its id, one int8 ``[D]`` row and its ``groups``
    scales read, and one ``[D]`` output row written in ``out_dtype``."""
    per_token = id_dtype.itemsize + dim + groups * scale_dtype.itemsize + dim * out_dtype.itemsize
    return num_tokens * per_token


def min_bytes_rope(
    batch: int,
    heads_q: int,
    heads_k: int,
    seq: int,
    dim: int,
    rotary_dim: int,
    *,
    dtype: torch.dtype,
    cos_dtype: torch.dtype | None = None,
    cos_rows: int | None = None,
) -> int:
    """Minimum bytes of RoPE on q and k: q ``[B, Hq, S, D]`` and k ``[B, Hk, S, D]`` read and
    written once, plus ``R/2`` cos and ``R/2`` sin values per table row (``cos_rows`` rows,
    default ``S``, shared by the batch) in ``cos_dtype`` (default ``dtype``)."""
    rows = seq if cos_rows is None else cos_rows
    qk = batch * (heads_q + heads_k) * seq * dim * dtype.itemsize
    return 2 * qk + 2 * rows * (rotary_dim // 2) * (cos_dtype or dtype).itemsize


def attention_flops(
    batch: int,
    heads: int,
    seq_q: int,
    seq_k: int,
    dim: int,
    *,
    causal: bool = True,
    backward: bool = False,
) -> int:
    """FLOPs of attention: ``4 * B * Hq * Sq * Sk * D`` (two matmuls), halved for causal; a
    forward + backward counts 3.5x the forward (backward = 2.5x)."""
    flops = 4 * batch * heads * seq_q * seq_k * dim
    if causal:
        flops //= 2
    return int(flops * 3.5) if backward else flops


def min_bytes_factorized_embedding(
    num_tokens: int,
    dim: int,
    rank: int,
    *,
    dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
    pos_rows: int = 0,
    backward: bool = False,
    num_rows: int = 0,
) -> int:
    """Minimum bytes of a factorized embedding call (``a`` [V, rank], ``b`` [rank, D]).

    Forward: the ids, one ``[rank]`` row of ``a`` per token, ``b`` once, the positional rows
    and the ``[N, D]`` output. Backward (gradients of ``a`` and ``b``): ``grad_out [N, D]``, the
    ids, the gathered rows of ``a``, ``b`` once, the whole ``[num_rows, rank]`` gradient of
    ``a`` and the ``[rank, D]`` gradient of ``b`` written once.
    """
    item = dtype.itemsize
    total = num_tokens * id_dtype.itemsize + num_tokens * rank * item + rank * dim * item
    if backward:
        return total + num_tokens * dim * item + num_rows * rank * item + rank * dim * item
    return total + pos_rows * dim * item + num_tokens * dim * item
