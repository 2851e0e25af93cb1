"""The ``"fusedops"`` mask function for Hugging Face's ``AttentionMaskInterface``.

Hugging Face builds one mask per forward (per layer type) by calling the registered mask
function with a *mask function* describing the pattern. :func:`key_mask` reads that pattern
and hands the attention layers the smallest description :func:`fusedops.attention` and its
siblings need, instead of a 4-D ``[B, 1, Sq, Sk]`` mask:

* ``None``: every key is visible (the layer applies causal / ``sliding_window`` itself);
* a ``[B, Sk']`` boolean key mask (True = attend), as Hugging Face's flash-attention path
  does. ``Sk'`` is the number of cache slots the queries can see (smaller than the cache when
  a static cache has unfilled slots);
* :class:`CacheLengths`: a static-cache decode step without padding; the layer runs
  :func:`fusedops.attention_with_kvcache` over the first ``seqlens[b]`` slots of the cache;
* :class:`PackedSequences`: several sequences packed in one row (``position_ids`` restarting
  within a row, no padding mask, no cache); the layer runs :func:`fusedops.attention_varlen`.

Understood patterns: causal, bidirectional, sliding-window causal (the window itself is
applied by the layer from its ``sliding_window`` argument), each optionally packed. Anything
else (chunked attention, block or image-token overlays, bidirectional windows) raises
``ValueError``: nothing falls back silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

OP = "fusedops attention"


class _LayerMask:
    """What lets Hugging Face carry these descriptions where it carries masks: ``generate``
    builds a static cache's masks ahead and calls ``.contiguous()`` on them; a model handed
    one back reads ``.ndim`` (2 would mean a padding mask) and passes it to :func:`key_mask`
    again, which returns it unchanged."""

    ndim = 1

    def contiguous(self) -> _LayerMask:
        return self


@dataclasses.dataclass(frozen=True)
class CacheLengths(_LayerMask):
    """A static-cache decode step: query row ``b`` sees cache slots ``[0, seqlens[b])``."""

    seqlens: torch.Tensor  # int32 [B], on the cache's device


@dataclasses.dataclass(frozen=True)
class PackedSequences(_LayerMask):
    """Sequences packed back to back in the ``B * S`` tokens of a batch (flash-attention's
    varlen layout): sequence ``n`` is flattened tokens ``[cu_seqlens[n], cu_seqlens[n + 1])``.
    Trailing empty sequences are allowed (their bounds repeat ``B * S``)."""

    cu_seqlens: torch.Tensor  # int32 [N + 1]
    max_seqlen: int  # an upper bound of the longest sequence


@dataclasses.dataclass(frozen=True)
class _Pattern:
    causal: bool
    window: int | None = None
    packed: tuple[torch.Tensor, torch.Tensor] | None = None  # (sequence ids, position ids)


def _closure(function: Any) -> dict[str, Any]:
    cells = getattr(function, "__closure__", None) or ()
    return dict(zip(function.__code__.co_freevars, (c.cell_contents for c in cells), strict=True))


_CODES: dict[str, Any] = {}  # filled by load_patterns()


def load_patterns() -> None:
    """Record the code objects of the closures ``transformers.masking_utils`` composes
    patterns from (called by ``register``, outside any ``torch.compile`` trace)."""
    from transformers import masking_utils as mu

    causal = mu.causal_mask_function
    _CODES["and"] = mu.and_masks(causal).__code__
    _CODES["window"] = mu.sliding_window_overlay(1).__code__
    _CODES["packed"] = mu.packed_sequence_mask_function(None).__code__
    _CODES["remap"] = mu.remap_positions_for_packed_sequence(causal, None).__code__


def _unsupported(mask_function: Any) -> ValueError:
    name = getattr(mask_function, "__qualname__", repr(mask_function))
    return ValueError(
        f"{OP}: unsupported mask {name}: only causal, sliding-window causal and bidirectional "
        "masks, with key padding or packed sequences, are supported (no chunked attention or "
        "mask overlays); use another attn_implementation for this model"
    )


def _pattern(mask_function: Any, traced: dict[str, Any] | None = None) -> _Pattern:
    """What ``mask_function`` (a ``transformers.masking_utils`` composition) describes.

    ``traced`` (under ``torch.compile``, where the closures of functions made inside the trace
    cannot be read) holds the mask interface's ``local_size``, ``config`` and whether packing
    is ruled out (a padding mask is given, or queries and keys differ in number: Hugging Face
    packs only without both): an ``and_masks`` composition is then taken as the sliding-window
    causal mask only when all say so; other compositions raise."""
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    if mask_function is causal_mask_function:
        return _Pattern(causal=True)
    if mask_function is bidirectional_mask_function:
        return _Pattern(causal=False)
    if not _CODES:
        load_patterns()
    codes = _CODES
    is_and = getattr(mask_function, "__code__", None) is codes["and"]
    if traced is not None:
        window, unpacked, config = traced["local_size"], traced["unpacked"], traced["config"]
        if is_and and window is not None and unpacked and getattr(config, "is_causal", True):
            return _Pattern(causal=True, window=window)
        raise ValueError(
            f"{OP}: under torch.compile only causal and bidirectional masks, and sliding-window "
            "causal masks of calls given an attention_mask or a cache, can be read (packed "
            "sequences and mask overlays run eagerly only); pass attention_mask (all ones when "
            "nothing is padded)"
        )
    if is_and:
        parts = _closure(mask_function)["mask_functions"]
        part_codes = tuple(getattr(p, "__code__", None) for p in parts)
        if part_codes == (codes["window"], causal_mask_function.__code__):
            return _Pattern(causal=True, window=_closure(parts[0])["sliding_window"])
        if part_codes == (codes["packed"], codes["remap"]):
            inner = _closure(parts[1])
            base = _pattern(inner["mask_function"])
            if base.packed is None:
                ids = _closure(parts[0])["packed_sequence_mask"]
                return dataclasses.replace(base, packed=(ids, inner["position_ids"]))
    raise _unsupported(mask_function)


def _visible_keys(q_length: int, kv_length: int, q_offset: Any, kv_offset: int) -> Any:
    """Cache slots ``[0, n)`` a causal query block can see: an int, or a 0-d tensor when the
    cache reports its offset as a tensor (static caches)."""
    end = q_offset + q_length - kv_offset
    if isinstance(end, torch.Tensor):
        return end
    return min(kv_length, end)


def packed_sequences(sequence_ids: torch.Tensor) -> PackedSequences:
    """:class:`PackedSequences` of ``sequence_ids [B, S]`` (Hugging Face's packed-sequence
    indices: equal ids within a row form one sequence; rows never share a sequence).

    Eager: one host sync (the bounds' count and the longest sequence). Under
    ``torch.compile``: no sync, ``B * S + 1`` bounds (trailing empty sequences) and
    ``max_seqlen = S``."""
    batch, seq = sequence_ids.shape
    total = batch * seq
    flat = sequence_ids.reshape(-1)  # [B * S]
    index = torch.arange(total, device=flat.device)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = (flat[1:] != flat[:-1]) | (index[1:] % seq == 0)  # new sequence or new row
    end = torch.full((1,), total, dtype=torch.int32, device=flat.device)
    if torch.compiler.is_compiling():
        bounds = torch.where(starts, index, total).sort().values.to(torch.int32)  # [B * S]
        return PackedSequences(torch.cat((bounds, end)), seq)
    cu_seqlens = torch.cat((index[starts].to(torch.int32), end))  # [N + 1]
    return PackedSequences(cu_seqlens, int(cu_seqlens.diff().max()))


def key_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | CacheLengths | PackedSequences | None:
    """``AttentionMaskInterface`` function: the layers' mask (see the module doc).

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset: as Hugging Face's mask
            interface passes them (``q_offset`` may be a 0-d tensor for static caches).
        mask_function: the pattern: ``causal_mask_function``, ``bidirectional_mask_function``,
            ``sliding_window_causal_mask_function(w)``, or one of them made packed-compatible
            by ``packed_sequence_compatibility_function``; any other raises ``ValueError``.
        attention_mask: the 2-D padding mask ``[B, seen + q_length]`` (True/1 = token) or None.
        kwargs: ``allow_is_causal_skip`` / ``allow_is_bidirectional_skip`` (False keeps an
            all-True mask instead of None), ``local_size`` (the window, checked against the
            pattern's), ``device``; others are ignored.

    Eager calls sync the host at most once or twice per forward: the all-visible check of a
    padding mask (skipped under ``torch.compile``), the cache offset of a static-cache prefill
    of more than one token, the bounds of packed sequences.
    """
    if isinstance(attention_mask, _LayerMask):
        return attention_mask  # built ahead by generate for this very forward
    local_size = kwargs.get("local_size")
    traced = None
    if torch.compiler.is_compiling():
        unpacked = attention_mask is not None or q_length != kv_length
        traced = {"local_size": local_size, "unpacked": unpacked, "config": kwargs.get("config")}
    pattern = _pattern(mask_function, traced)
    if local_size is not None and local_size != pattern.window:
        raise _unsupported(mask_function)
    if pattern.packed is not None:
        if attention_mask is not None or q_length != kv_length:
            raise _unsupported(mask_function)
        return packed_sequences(pattern.packed[0])
    if pattern.causal:
        skip = kwargs.get("allow_is_causal_skip", True)
        visible = _visible_keys(q_length, kv_length, q_offset, kv_offset)
    else:
        skip = kwargs.get("allow_is_bidirectional_skip", True)
        visible = kv_length
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
        # [B, seen + q]: the last `width` columns are the cache's (also when this is the
        # key mask already built for this forward); unfilled static slots are padded with False
        mask = attention_mask[:, max(attention_mask.shape[1] - width, 0) :].bool()
        if mask.shape[1] < width:
            mask = nn.functional.pad(mask, (0, width - mask.shape[1]), value=False)
        device = mask.device
    if isinstance(visible, torch.Tensor):
        # static-cache decode: the slots at or past the query's position are empty
        if attention_mask is None or (
            not torch.compiler.is_compiling() and bool(attention_mask.all())
        ):
            seqlens = visible.to(torch.int32).reshape(1).expand(batch_size).contiguous()
            return CacheLengths(seqlens)  # [B]
        filled = torch.arange(width, device=visible.device) < visible  # [Sk]
        return mask & filled
    if mask is None:
        if skip and width == kv_length:
            return None
        return torch.ones(batch_size, width, dtype=torch.bool, device=device)
    if skip and width == kv_length and not torch.compiler.is_compiling() and bool(mask.all()):
        return None
    return mask
