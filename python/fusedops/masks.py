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
    sliding_window: int | None = None,
) -> torch.Tensor | None:
    """Boolean ``[B or 1, 1, Sq, Sk]`` mask (True = attend), or None when every key is allowed.

    Alignment is bottom-right: query ``i`` sits at key position ``p = i + Sk - Sq`` (the last
    query is the last key, as in KV-cache decode). ``causal``: query ``i`` may attend key ``j``
    iff ``j <= p``. ``sliding_window = w`` (needs ``causal``) also drops keys more than
    ``w - 1`` positions back: ``p - w < j <= p`` (each query sees at most ``w`` keys, itself
    included, as Hugging Face's ``sliding_window`` masks do). ``key_padding_mask [B, Sk]``
    (True = attend) is combined with them. Example: ``attention_mask(2, 3, causal=True,
    key_padding_mask=None)`` is ``[[[[1, 1, 0], [1, 1, 1]]]]``; with ``sliding_window=1`` it is
    ``[[[[0, 1, 0], [0, 0, 1]]]]``.
    """
    if sliding_window is not None and not causal:
        raise ValueError(f"attention_mask: sliding_window={sliding_window} needs causal=True")
    mask = None
    if causal:
        i = torch.arange(seq_q, device=device).unsqueeze(1)  # [Sq, 1]
        j = torch.arange(seq_k, device=device).unsqueeze(0)  # [1, Sk]
        p = i + (seq_k - seq_q)  # [Sq, 1]: the key position of each query
        mask = j <= p
        if sliding_window is not None:
            mask = mask & (j > p - sliding_window)
        mask = mask.view(1, 1, seq_q, seq_k)
    if key_padding_mask is not None:
        pad = key_padding_mask.to(device=device, dtype=torch.bool).view(-1, 1, 1, seq_k)
        mask = pad if mask is None else mask & pad
    return mask
