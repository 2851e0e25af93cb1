"""The ``"fusedops"`` attention implementation for Hugging Face transformers.

:func:`register` adds two functions under the name ``"fusedops"``:

* a mask function in ``AttentionMaskInterface`` (:func:`key_mask`): instead of a 4-D
  ``[B, 1, Sq, Sk]`` mask it hands the layers the ``[B, Sk']`` boolean key mask (True = attend),
  or None when every key is visible, as Hugging Face's flash-attention path does. ``Sk'`` is the
  number of cache slots the queries can see (smaller than the cache when a static cache has
  unfilled slots). It is built once per forward, on the device, with at most one host sync
  (the all-visible check, skipped under ``torch.compile``; a static-cache prefill of more
  than one token also reads the cache offset once);
* an attention function in ``AttentionInterface`` (:func:`attention_forward`) that runs
  :func:`fusedops.attention` on the first ``Sk'`` keys with that mask: bottom-right causal
  for decoder layers (``module.is_causal``), none for encoders.

Masks other than causal-plus-padding and padding-only (sliding window, packed sequences,
chunked or block overlays) raise ``ValueError``: nothing falls back silently.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusedops.ops import attention

NAME = "fusedops"
OP = "fusedops attention"


def _visible_keys(q_length: int, kv_length: int, q_offset: Any, kv_offset: int) -> Any:
    """Cache slots ``[0, n)`` a causal query block can see: an int, or a 0-d tensor when the
    cache reports its offset as a tensor (static caches)."""
    end = q_offset + q_length - kv_offset
    if isinstance(end, torch.Tensor):
        return end
    return min(kv_length, end)


def key_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """``AttentionMaskInterface`` function: the ``[B, Sk']`` key mask or None (see module doc).

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset: as Hugging Face's mask
            interface passes them (``q_offset`` may be a 0-d tensor for static caches).
        mask_function: ``causal_mask_function`` or ``bidirectional_mask_function``; any
            other raises ``ValueError``.
        attention_mask: the 2-D padding mask ``[B, seen + q_length]`` (True/1 = token) or None.
        kwargs: ``allow_is_causal_skip`` / ``allow_is_bidirectional_skip`` (False keeps an
            all-True mask instead of None); others are ignored.
    """
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    if mask_function is causal_mask_function:
        skip = kwargs.get("allow_is_causal_skip", True)
        visible = _visible_keys(q_length, kv_length, q_offset, kv_offset)
    elif mask_function is bidirectional_mask_function:
        skip = kwargs.get("allow_is_bidirectional_skip", True)
        visible = kv_length
    else:
        name = getattr(mask_function, "__qualname__", repr(mask_function))
        raise ValueError(
            f"{OP}: unsupported mask {name}: only causal and bidirectional masks with key "
            "padding are supported (no sliding window, packed sequences or mask overlays); "
            "use another attn_implementation for this model"
        )
    if isinstance(visible, torch.Tensor) and q_length > 1:
        visible = int(visible)  # static-cache prefill: slice the cache to the filled slots
    width = kv_length if isinstance(visible, torch.Tensor) else visible
    device = kwargs.get("device")
    mask = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"{OP}: the padding mask must be 2-D [B, keys], got shape "
                f"{tuple(attention_mask.shape)}"
            )
        # [B, seen + q]: keep the cache's columns, pad unfilled static slots with False
        mask = attention_mask[:, kv_offset : kv_offset + width].bool()
        if mask.shape[1] < width:
            mask = nn.functional.pad(mask, (0, width - mask.shape[1]), value=False)
        device = mask.device
    if isinstance(visible, torch.Tensor):
        # static-cache decode: the slots at or past the query's position are empty
        filled = torch.arange(width, device=visible.device) < visible  # [Sk]
        mask = filled.expand(batch_size, width) if mask is None else mask & filled
        return mask
    if mask is None:
        if skip and width == kv_length:
            return None
        return torch.ones(batch_size, width, dtype=torch.bool, device=device)
    if skip and width == kv_length and not torch.compiler.is_compiling() and bool(mask.all()):
        return None
    return mask


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: :func:`fusedops.attention` with the key mask.

    Args:
        module: the attention layer; its ``is_causal`` (default True) selects the
            bottom-right causal mask unless ``kwargs["is_causal"]`` is given.
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]`` (GQA without repeating).
        attention_mask: ``[B, Sk']`` bool from :func:`key_mask` (``Sk' <= Sk``: only the
            first ``Sk'`` keys are used) or None (all keys).
        scaling: softmax scale (default ``1 / sqrt(D)``).
        dropout: must be 0.
        kwargs: ``sliding_window`` and ``softcap`` must be None.
    Returns:
        ``(out [B, Sq, Hq, D] contiguous, None)``.
    """
    if dropout:
        raise ValueError(
            f"{OP}: attention dropout is not supported, got dropout={dropout} (call "
            "model.eval(), or set the attention dropout probability of the config to 0)"
        )
    for name in ("sliding_window", "softcap"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{OP}: {name}={kwargs[name]!r} is not supported")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            shape = getattr(attention_mask, "shape", type(attention_mask).__name__)
            raise ValueError(
                f"{OP}: expected the [B, Sk] key mask of the 'fusedops' mask function, got "
                f"{shape}; register both with fusedops.integrations.transformers.register() "
                "(fusedops.attention_hf accepts Hugging Face's 4-D SDPA masks)"
            )
        width = attention_mask.shape[1]
        if width > key.shape[2]:
            raise ValueError(
                f"{OP}: key mask covers {width} keys but only {key.shape[2]} were given"
            )
        key, value = key[:, :, :width], value[:, :, :width]
    is_causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    out = attention(
        query, key, value, causal=causal, softmax_scale=scaling, key_padding_mask=attention_mask
    )  # [B, Hq, Sq, D]
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"fusedops"`` in transformers' ``AttentionInterface`` and
    ``AttentionMaskInterface`` (idempotent); then ``attn_implementation="fusedops"`` works."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, key_mask)
