"""Boolean attention masks (True = attend) in the form ``scaled_dot_product_attention`` takes."""

from __future__ import annotations

import torch


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
    (True = attend) is combined with it. Example: ``attention_mask(2, 3, causal=True,
    key_padding_mask=None)`` is ``[[[[1, 1, 0], [1, 1, 1]]]]``.
    """
    mask = None
    if causal:
        i = torch.arange(seq_q, device=device).unsqueeze(1)
        j = torch.arange(seq_k, device=device).unsqueeze(0)
        mask = (j <= i + (seq_k - seq_q)).view(1, 1, seq_q, seq_k)
    if key_padding_mask is not None:
        pad = key_padding_mask.to(device=device, dtype=torch.bool).view(-1, 1, 1, seq_k)
        mask = pad if mask is None else mask & pad
    return mask
