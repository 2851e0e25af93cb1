"""``FusedAttention`` (a module around :func:`fusedops.attention`) and ``attention_hf``, a function
with the Hugging Face attention-interface signature."""

from __future__ import annotations

import torch
from torch import nn

from fusedops.masks import attention_mask
from fusedops.ops import attention, check_attention_args


class FusedAttention(nn.Module):
    """Scaled dot-product attention of already projected heads (no parameters).

    ``forward(q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, D], key_padding_mask=None)``
    returns ``out [B, Hq, Sq, D]`` as :func:`fusedops.attention` (bottom-right causal when
    ``causal``; GQA when ``Hkv < Hq``).

    Args:
        causal: apply the bottom-right causal mask.
        softmax_scale: defaults to ``1 / sqrt(D)``.
        sliding_window: attend only the last ``w`` keys up to each query (needs ``causal``).
        softcap: cap the scores at ``c * tanh(s / c)`` (Gemma-2).
    """

    def __init__(
        self,
        causal: bool = True,
        softmax_scale: float | None = None,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.sliding_window = sliding_window
        self.softcap = softcap

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return attention(
            q,
            k,
            v,
            causal=self.causal,
            softmax_scale=self.softmax_scale,
            key_padding_mask=key_padding_mask,
            sliding_window=self.sliding_window,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        text = f"causal={self.causal}, softmax_scale={self.softmax_scale}"
        if self.sliding_window is not None:
            text += f", sliding_window={self.sliding_window}"
        return text + (f", softcap={self.softcap}" if self.softcap is not None else "")


HF_OP = "attention_hf"


def _hf_mask_to_padding(
    mask: torch.Tensor, batch: int, seq_q: int, seq_k: int, window: int | None = None
) -> tuple[torch.Tensor | None, bool]:
    """``(key_padding_mask [B, Sk] or None, causal)`` equivalent to HF's boolean 4-D mask.

    Accepts ``[B or 1, 1, Sq, Sk']`` (``Sk' >= Sk``; extra columns are dropped as HF's SDPA path
    does) that equals bottom-right causal & padding (& the sliding ``window`` when given), or
    padding alone (no window). Query rows with no allowed
    key (left-padded queries) may be all False or all True in ``mask`` (HF unmasks them for
    SDPA); their output is zeros either way. Anything else raises ``ValueError``. Syncs a CUDA
    device (the comparison is read back)."""
    mask = _mask_view(mask, batch, seq_q, seq_k)
    padding, causal = _match(mask, window, (True, False))
    return (None if bool(padding.all()) else padding.contiguous()), causal


def _mask_view(mask: torch.Tensor, batch: int, seq_q: int, seq_k: int) -> torch.Tensor:
    """``mask`` checked to be ``[B or 1, 1, Sq, Sk' >= Sk]`` and viewed as ``[B, 1, Sq, Sk]``
    (shapes only: no data read)."""
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"{HF_OP}: attention_mask must be a 4-D boolean mask [B or 1, 1, Sq, Sk] = "
            f"[{batch} or 1, 1, {seq_q}, >= {seq_k}], got shape {tuple(mask.shape)}"
        )
    if mask.shape[2] != seq_q or mask.shape[3] < seq_k:
        raise ValueError(
            f"{HF_OP}: attention_mask must be [B or 1, 1, {seq_q}, >= {seq_k}] for query "
            f"length {seq_q} and key length {seq_k}, got {tuple(mask.shape)}"
        )
    return mask[:, :, :, :seq_k].expand(batch, 1, seq_q, seq_k)


def _match(
    mask: torch.Tensor, window: int | None, causal_forms: tuple[bool, ...]
) -> tuple[torch.Tensor, bool]:
    """``(key_padding_mask [B, Sk], causal)`` of the first candidate form (causal in
    ``causal_forms``) equal to ``mask [B, 1, Sq, Sk]``, rows with no allowed key aside;
    ValueError if none is (reads the data)."""
    batch, _, seq_q, seq_k = mask.shape
    for causal, padding in _padding_candidates(mask, window):
        if causal not in causal_forms:
            continue
        expected = attention_mask(
            seq_q, seq_k, causal=causal, key_padding_mask=padding, device=mask.device,
            sliding_window=window,
        ).expand(batch, 1, seq_q, seq_k)  # fmt: skip
        empty = ~expected.any(dim=-1, keepdim=True)  # rows with no allowed key: don't care
        row_all = mask.all(dim=-1, keepdim=True) | ~mask.any(dim=-1, keepdim=True)
        if bool(((mask == expected) | (empty & row_all)).all()):
            return padding, causal
    forms = "bottom-right causal & key padding" if causal_forms == (True,) else (
        "key padding alone" if causal_forms == (False,) else
        "bottom-right causal & key padding (& the sliding_window passed in), or key padding alone"
    )  # fmt: skip
    raise ValueError(
        f"{HF_OP}: unsupported attention_mask: only boolean masks of the form {forms} can be "
        "converted to key_padding_mask; this one is not (e.g. a sliding-window mask without "
        "sliding_window, block or packed-sequence masks; under torch.compile the layer's "
        "is_causal picks the form)"
    )


@torch.library.custom_op("fusedops::attention_hf_key_padding", mutates_args=())
def _key_padding_op(mask: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor:
    """The key padding mask ``[B, Sk]`` of ``mask [B, 1, Sq, Sk]`` of the ``causal`` form,
    checked at run time (ValueError otherwise): what ``attention_hf`` runs under
    ``torch.compile``, where the data cannot be read while tracing."""
    return _match(mask, window, (causal,))[0].clone()


@_key_padding_op.register_fake
def _(mask, causal, window):
    return mask.new_empty((mask.shape[0], mask.shape[3]))


def _padding_candidates(mask: torch.Tensor, window: int | None):
    """``(causal, key_padding_mask [B, Sk])`` pairs one of which equals ``mask [B, 1, Sq, Sk]``
    if it has a supported form."""
    if window is None:
        # The last query row sees every unpadded key under bottom-right causal (and any row
        # does without causal).
        yield True, mask[:, 0, -1, :]
        yield False, mask[:, 0, :, :].any(dim=1)
        return
    # With a window a key is seen by a few rows only; rows that are all True may be rows with
    # no allowed key that HF unmasked: the union of the other rows is the padding, and a key
    # none of them may see is either unpadded or padded.
    seq_q, seq_k = mask.shape[2], mask.shape[3]
    shape = attention_mask(
        seq_q, seq_k, causal=True, key_padding_mask=None, device=mask.device,
        sliding_window=window,
    )[0, 0]  # fmt: skip  # [Sq, Sk]
    rows = ~mask[:, 0].all(dim=-1, keepdim=True)  # [B, Sq, 1]: rows that carry information
    union = (mask[:, 0] & rows).any(dim=1)  # [B, Sk]
    unseen = ~(shape & rows).any(dim=1)  # [B, Sk]
    yield True, union | unseen
    yield True, union


def attention_hf(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Hugging Face attention-interface function running :func:`fusedops.attention`.

    Register it with ``transformers.AttentionInterface.register("fusedops", attention_hf)``
    together with HF's boolean SDPA mask for the same name
    (``AttentionMaskInterface.register("fusedops", transformers.masking_utils.sdpa_mask)``;
    without it HF passes ``attention_mask=None`` and padding would be ignored), then use
    ``attn_implementation="fusedops"``.

    Args:
        module: the attention layer (its ``is_causal`` is used when ``attention_mask`` is None;
            default True).
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]`` (GQA without repeating).
        attention_mask: None, or HF's boolean 4-D mask ``[B or 1, 1, Sq, Sk]`` (True = attend)
            of the causal-plus-padding (with ``sliding_window``: causal, window and padding) or
            padding-only form, converted to ``key_padding_mask`` (+ causal); other masks raise
            ``ValueError``. Under ``torch.compile`` the form is the layer's (``is_causal``, as
            when the mask is None) and the mask is checked against it when the graph runs.
        scaling: softmax scale (default ``1 / sqrt(D)``).
        dropout: must be 0 (no attention dropout).
        kwargs: ``is_causal`` overrides the module's; ``sliding_window`` (Mistral, Qwen2,
            Gemma-2: the last ``w`` keys) and ``softcap`` (Gemma-2's logit softcapping) are
            passed to :func:`fusedops.attention`; other keys are ignored.
    Returns:
        ``(out [B, Sq, Hq, D] contiguous, None)`` (no attention weights).
    """
    if dropout:
        raise ValueError(f"{HF_OP}: attention dropout is not supported, got dropout={dropout}")
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    check_attention_args(
        HF_OP, query, key, value, softmax_scale=scaling, sliding_window=window, softcap=softcap
    )
    batch, _, seq_q, _ = query.shape
    seq_k = key.shape[2]
    if attention_mask is None:
        is_causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
        padding = None
    else:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
            got = (
                attention_mask.dtype
                if isinstance(attention_mask, torch.Tensor)
                else type(attention_mask).__name__
            )
            raise ValueError(
                f"{HF_OP}: attention_mask must be a boolean tensor (True = attend), got {got}; "
                "additive float masks are not supported"
            )
        if attention_mask.device != query.device:
            raise ValueError(
                f"{HF_OP}: attention_mask is on {attention_mask.device} but the other inputs "
                f"are on {query.device}"
            )
        if torch.compiler.is_compiling():
            # The form cannot be read from the data while tracing: the layer says causal or
            # not, and the op checks the mask against that form when it runs.
            is_causal = kwargs.get("is_causal")
            causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
            view = _mask_view(attention_mask, batch, seq_q, seq_k)
            padding = _key_padding_op(view, causal, window)
        else:
            padding, causal = _hf_mask_to_padding(attention_mask, batch, seq_q, seq_k, window)
    # Checked above with this function's name: attention() accepts what passed.
    out = attention(
        query, key, value, causal=causal, softmax_scale=scaling, key_padding_mask=padding,
        sliding_window=window, softcap=softcap,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None
