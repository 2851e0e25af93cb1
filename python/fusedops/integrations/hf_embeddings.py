"""Input-embedding modules for Hugging Face models, built from the models' own parameters.

* :class:`ScaledFusedEmbedding`: Gemma's ``weight[ids] * normalizer`` with the normalizer
  rounded to the weight's dtype first, as ``GemmaTextScaledWordEmbedding`` does.
* :class:`FusedBertEmbeddings`: BERT's word + position + token-type + LayerNorm in one
  :func:`fusedops.fused_embedding_layernorm` call; same children as ``BertEmbeddings``, so
  ``state_dict`` keys do not change.
* GPT-2 (:func:`gpt2_fused_inputs`, :class:`PositionsAddedByTokens`): a forward pre-hook on
  ``GPT2Model`` computes ``wte[ids] + wpe[pos]`` in one fused call and hands it to the model as
  ``inputs_embeds``; ``wpe`` becomes a module holding the same ``weight`` whose output makes
  the model's own positional add a no-op.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from fusedops import ops
from fusedops.nn import FusedEmbedding, Int8Embedding
from fusedops.ops import fused_embedding, int8_embedding

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ScaledFusedEmbedding(FusedEmbedding):
    """:class:`FusedEmbedding` whose scale is ``normalizer`` rounded to the weight dtype at
    each call (Gemma multiplies by ``embed_scale.to(weight.dtype)``)."""

    @classmethod
    def from_scaled(cls, embedding: nn.Embedding, normalizer: float) -> ScaledFusedEmbedding:
        module = cls.from_embedding(embedding, scale=normalizer)
        module.normalizer = float(normalizer)
        # the normalizer as each float dtype rounds it: chosen by the weight dtype per call
        module.rounded = {
            dtype: float(torch.tensor(normalizer, dtype=dtype)) for dtype in _FLOAT_DTYPES
        }
        return module

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """``input_ids`` int [..., S] -> ``weight[ids] * normalizer`` [..., S, D], the
        normalizer rounded to the weight dtype."""
        options["scale"] = self.rounded.get(self.weight.dtype, self.normalizer)
        return super()._lookup(input_ids, **options)


class FusedBertEmbeddings(nn.Module):
    """``BertEmbeddings`` running word + position + token type + LayerNorm in one kernel.

    Holds the original's children (``word_embeddings``, ``position_embeddings``,
    ``token_type_embeddings``, ``LayerNorm``, ``dropout``) and buffers, so parameters are
    shared and ``state_dict`` keys are unchanged. ``forward`` has ``BertEmbeddings``'
    signature; with ``inputs_embeds`` instead of ids the sums and LayerNorm run as eager
    PyTorch (there is no gather to fuse).
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.word_embeddings = original.word_embeddings
        self.position_embeddings = original.position_embeddings
        self.token_type_embeddings = original.token_type_embeddings
        self.LayerNorm = original.LayerNorm
        self.dropout = original.dropout
        self.register_buffer("position_ids", original.position_ids, persistent=False)
        self.register_buffer("token_type_ids", original.token_type_ids, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values_length: int = 0,
    ) -> torch.Tensor:
        # input_ids, token_type_ids, position_ids: [B, S]; returns [B, S, D]
        norm = self.LayerNorm
        if input_ids is None:
            seq = inputs_embeds.shape[1]
            if position_ids is None:
                position_ids = self.position_ids[
                    :, past_key_values_length : past_key_values_length + seq
                ]
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            x = inputs_embeds + self.token_type_embeddings(token_type_ids)
            x = x + self.position_embeddings(position_ids)
            return self.dropout(norm(x))
        out = ops.fused_embedding_layernorm(
            input_ids,
            self.word_embeddings.weight,
            self.position_embeddings.weight,
            self.token_type_embeddings.weight,
            token_type_ids,
            norm.weight,
            norm.bias,
            norm.eps,
            positions=position_ids,
            position_offset=past_key_values_length,
            padding_idx=self.word_embeddings.padding_idx,
        )
        return self.dropout(out)


class _AlreadyAdded:
    """What :class:`PositionsAddedByTokens` returns: ``x + it`` is ``x`` (no work)."""

    def to(self, *args: Any, **kwargs: Any) -> _AlreadyAdded:
        return self

    def __radd__(self, other: torch.Tensor) -> torch.Tensor:
        return other


_ALREADY_ADDED = _AlreadyAdded()


class PositionsAddedByTokens(nn.Module):
    """GPT-2's ``wpe`` once the positional rows are added by the fused input embedding.

    Holds the original ``weight`` Parameter (``wpe.weight`` keeps its ``state_dict`` key);
    calling it returns a marker that ``GPT2Model.forward`` adds as a no-op, because its input
    already contains the positional rows (see :func:`gpt2_fused_inputs`).
    """

    def __init__(self, original: nn.Embedding) -> None:
        super().__init__()
        self.weight = original.weight
        self.num_embeddings = original.num_embeddings
        self.embedding_dim = original.embedding_dim

    def forward(self, position_ids: torch.Tensor) -> _AlreadyAdded:
        return _ALREADY_ADDED

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, added by the token embedding"


def _gpt2_positions(kwargs: dict[str, Any], seq: int, device: torch.device) -> torch.Tensor:
    """``position_ids`` as ``GPT2Model.forward`` derives them when none are given: [1, S]."""
    cache = kwargs.get("past_key_values")
    past = cache.get_seq_length() if cache is not None else 0
    return (torch.arange(seq, device=device) + past).unsqueeze(0)


@functools.cache
def _forward_signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)


def gpt2_fused_inputs(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Forward pre-hook of ``GPT2Model`` (``with_kwargs=True``): ``inputs_embeds =
    wte[ids] + wpe[pos]`` in one fused call (INT8 table: :func:`fusedops.int8_embedding`)."""
    bound = _forward_signature(type(module)).bind_partial(module, *args, **kwargs).arguments
    bound.pop("self")
    extra = bound.pop("kwargs", {})
    call = {**bound, **extra}
    input_ids, inputs_embeds = call.get("input_ids"), call.get("inputs_embeds")
    pos_weight = module.wpe.weight  # [P, D]
    if input_ids is not None and inputs_embeds is not None:
        return args, kwargs  # the model raises its own error
    ref = input_ids if input_ids is not None else inputs_embeds
    if ref is None:
        return args, kwargs
    seq = ref.shape[-1] if input_ids is not None else ref.shape[-2]
    positions = call.get("position_ids")
    if positions is None:
        positions = _gpt2_positions(call, seq, ref.device)
    positions = positions.view(-1, seq)
    if input_ids is None:
        embeds = inputs_embeds + pos_weight[positions]
    else:
        input_ids = input_ids.view(-1, seq)
        wte = module.wte
        if isinstance(wte, Int8Embedding):
            embeds = int8_embedding(
                input_ids,
                wte.qweight,
                wte.scales,
                out_dtype=wte.out_dtype,
                pos_weight=pos_weight,
                positions=positions,
                padding_idx=wte.padding_idx,
            )
        else:
            embeds = fused_embedding(
                input_ids,
                wte.weight,
                pos_weight=pos_weight,
                positions=positions,
                padding_idx=wte.padding_idx,
            )
    call.update(input_ids=None, inputs_embeds=embeds, position_ids=positions)
    return (), call
