"""Packed variable-length sequences: ``cu_seqlens [N + 1]`` boundaries of ``T`` tokens."""

from __future__ import annotations

import torch


def varlen_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of each packed token in its sequence: ``t - cu_seqlens[i]`` for token ``t`` of
    sequence ``i`` (``cu_seqlens[i] <= t < cu_seqlens[i + 1]``). int64 ``[T]``, no host sync.

    Example: ``cu_seqlens = [0, 2, 5]`` gives ``[0, 1, 0, 1, 2]``.
    """
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)  # [T]
    seq_idx = torch.searchsorted(cu_seqlens, tokens, right=True) - 1  # [T]
    return (tokens - cu_seqlens[seq_idx]).long()
