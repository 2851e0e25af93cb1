"""The ``"fusedops"`` attention implementation for Hugging Face transformers.

:func:`register` adds two functions under the name ``"fusedops"``:

* a mask function in ``AttentionMaskInterface``
  (:func:`fusedops.integrations.hf_masks.key_mask`): a ``[B, Sk']`` key mask, None,
  :class:`~fusedops.integrations.hf_masks.CacheLengths` (static-cache decode) or
  :class:`~fusedops.integrations.hf_masks.PackedSequences` (packed rows) instead of a 4-D mask;
* an attention function in ``AttentionInterface`` (:func:`attention_forward`) that runs, for
  each of those, :func:`fusedops.attention` (key mask or none),
  :func:`fusedops.attention_with_kvcache` (over the static cache's filled slots) or
  :func:`fusedops.attention_varlen` (packed sequences, also from flash-attention's
  ``cu_seq_lens_q/k`` + ``max_length_q/k`` kwargs), with the layer's ``sliding_window`` and
  ``softcap``: bottom-right causal for decoder layers (``module.is_causal``), none for encoders.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusedops.integrations.hf_masks import CacheLengths, PackedSequences, key_mask, load_patterns
from fusedops.ops import attention, attention_varlen, attention_with_kvcache

NAME = "fusedops"
OP = "fusedops attention"


_FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _flash_varlen_kwargs(kwargs: dict[str, Any]) -> tuple | None:
    """Flash-attention's packed-sequence kwargs ``(cu_seq_lens_q, cu_seq_lens_k, max_length_q,
    max_length_k)`` (as a flattening data collator passes them), or None when absent."""
    given = [kwargs.get(name) for name in _FLASH_KWARGS]
    if all(x is None for x in given):
        return None
    if any(x is None for x in given):
        missing = [n for n, x in zip(_FLASH_KWARGS, given, strict=True) if x is None]
        raise ValueError(
            f"{OP}: packed-sequence kwargs need all of {_FLASH_KWARGS}, missing {missing}"
        )
    return tuple(given)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _varlen(query, key, value, bounds, check_indices: bool, options) -> torch.Tensor:
    """:func:`fusedops.attention_varlen` over the ``B * S`` tokens of ``[B, H, S, D]`` inputs;
    ``bounds = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)``."""
    batch, heads_q, seq_q, dim = query.shape
    q = query.transpose(1, 2).reshape(batch * seq_q, heads_q, dim)  # [B * Sq, Hq, D]
    k = key.transpose(1, 2).reshape(-1, key.shape[1], dim)  # [B * Sk, Hkv, D]
    v = value.transpose(1, 2).reshape(-1, value.shape[1], dim)
    cu_q, cu_k, max_q, max_k = bounds
    cu_q, cu_k = (cu.to(query.device, torch.int32) for cu in (cu_q, cu_k))
    out = attention_varlen(
        q, k, v, cu_q, cu_k, int(max_q), int(max_k), check_indices=check_indices, **options
    )  # [B * Sq, Hq, D]
    return out.view(batch, seq_q, heads_q, dim)


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | CacheLengths | PackedSequences | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: the fused attention op for the mask of :func:`key_mask`.

    Args:
        module: the attention layer; its ``is_causal`` (default True) selects the
            bottom-right causal mask unless ``kwargs["is_causal"]`` is given.
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]`` (GQA without repeating).
        attention_mask: from :func:`key_mask`: ``[B, Sk']`` bool (``Sk' <= Sk``: only the
            first ``Sk'`` keys are used), None (all keys), :class:`CacheLengths` (``key`` and
            ``value`` are the static cache, already holding this step's keys: runs
            :func:`fusedops.attention_with_kvcache` without appending) or
            :class:`PackedSequences` (runs :func:`fusedops.attention_varlen`).
        scaling: softmax scale (default ``1 / sqrt(D)``).
        dropout: must be 0.
        sliding_window: the layer's window (Hugging Face's: query ``i`` sees the last ``w``
            keys up to its own position), or None.
        softcap: Gemma-2's attention logit softcapping, or None.
        kwargs: ``is_causal``; flash-attention's packed-sequence kwargs ``cu_seq_lens_q/k``
            and ``max_length_q/k`` (then ``attention_mask`` must be None or packed); others
            are ignored.
    Returns:
        ``(out [B, Sq, Hq, D] contiguous, None)``.
    """
    if dropout:
        raise ValueError(
            f"{OP}: attention dropout is not supported, got dropout={dropout} (call "
            "model.eval(), or set the attention dropout probability of the config to 0)"
        )
    is_causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    options = dict(causal=causal, softmax_scale=scaling, sliding_window=sliding_window)
    options["softcap"] = softcap
    flash_bounds = _flash_varlen_kwargs(kwargs)
    if flash_bounds is not None:
        if attention_mask is not None and not isinstance(attention_mask, PackedSequences):
            raise ValueError(
                f"{OP}: cu_seq_lens_q/k kwargs (packed sequences) cannot be combined with a "
                "padding mask"
            )
        # bounds from outside: the op checks them (one sync)
        return _varlen(query, key, value, flash_bounds, True, options), None
    if isinstance(attention_mask, PackedSequences):
        if key.shape[2] != query.shape[2]:
            raise ValueError(
                f"{OP}: packed sequences need as many keys as queries (no cache), got "
                f"{key.shape[2]} keys for {query.shape[2]} queries"
            )
        cu, longest = attention_mask.cu_seqlens, attention_mask.max_seqlen
        # bounds built by key_mask: valid by construction, no sync
        return _varlen(query, key, value, (cu, cu, longest, longest), False, options), None
    if isinstance(attention_mask, CacheLengths) and _needs_grad(query, key, value):
        # attention_with_kvcache is inference only: the same keys as a key mask instead
        slots = torch.arange(key.shape[2], device=key.device)  # [S_max]
        attention_mask = slots < attention_mask.seqlens[:, None]  # [B, S_max]
    if isinstance(attention_mask, CacheLengths):
        out = attention_with_kvcache(
            query.transpose(1, 2),  # [B, Sq, Hq, D]
            key.transpose(1, 2),  # the whole cache: [B, S_max, Hkv, D]
            value.transpose(1, 2),
            cache_seqlens=attention_mask.seqlens,
            check_indices=False,  # the cache's own length: within the cache, no sync
            **options,
        )  # [B, Sq, Hq, D]
        return out.contiguous(), None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            shape = getattr(attention_mask, "shape", type(attention_mask).__name__)
            raise ValueError(
                f"{OP}: expected the mask of the 'fusedops' mask function, got "
                f"{shape}; register both with fusedops.integrations.transformers.register() "
                "(fusedops.attention_hf accepts Hugging Face's 4-D SDPA masks)"
            )
        width = attention_mask.shape[1]
        if width > key.shape[2]:
            raise ValueError(
                f"{OP}: key mask covers {width} keys but only {key.shape[2]} were given"
            )
        key, value = key[:, :, :width], value[:, :, :width]
    out = attention(query, key, value, key_padding_mask=attention_mask, **options)
    return out.transpose(1, 2).contiguous(), None  # [B, Sq, Hq, D]


def register() -> None:
    """Register ``"fusedops"`` in transformers' ``AttentionInterface`` and
    ``AttentionMaskInterface`` (idempotent); then ``attn_implementation="fusedops"`` works."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    load_patterns()
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, key_mask)
