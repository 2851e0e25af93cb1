"""``FusedEmbeddingLayerNorm``: BERT's word + position + token-type embeddings and LayerNorm."""

from __future__ import annotations

import torch
from torch import nn

from fusedops.nn._lookup_module import unsupported_options
from fusedops.ops import check_padding_idx, fused_embedding_layernorm
from fusedops.ops._common import check_real_scalar

_NAME = "FusedEmbeddingLayerNorm"


def _check_embedding(name: str, emb: object, dim: int | None) -> None:
    """``emb`` is a plain ``nn.Embedding`` (no max_norm / scale_grad_by_freq / sparse) of
    width ``dim`` (when given)."""
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"{_NAME}.from_modules: {name} must be nn.Embedding, got {type(emb)}")
    unsupported = unsupported_options(emb)
    if unsupported:
        raise ValueError(f"{_NAME}.from_modules: {name} uses unsupported options {unsupported}")
    if dim is not None and emb.embedding_dim != dim:
        raise ValueError(
            f"{_NAME}.from_modules: {name} has dim {emb.embedding_dim}, the word table {dim}"
        )


class FusedEmbeddingLayerNorm(nn.Module):
    """``LayerNorm(word[ids] + token_type[tt] + position[pos])`` in one kernel.

    ``forward(input_ids [..., S], token_type_ids=None, positions=None, position_offset=0)``
    returns ``[..., S, D]`` in the parameters' dtype: Hugging Face's ``BertEmbeddings``
    without dropout. Parameters: ``weight`` ``[V, D]``, ``pos_weight`` ``[P, D]`` (or None),
    ``type_weight`` ``[T, D]`` (or None), ``ln_weight`` and ``ln_bias`` ``[D]`` (or None).

    Args:
        num_embeddings: V, rows of the word table.
        embedding_dim: D.
        num_positions: P, rows of the positional table (None: no positional term).
        num_token_types: T, rows of the token-type table (None: no token-type term).
        eps: LayerNorm epsilon, a finite number >= 0.
        elementwise_affine: LayerNorm weight (init 1) and bias (init 0).
        bias: LayerNorm bias (with ``elementwise_affine``), as ``nn.LayerNorm(bias=...)``.
        padding_idx: word row with zero init and zero gradient (``nn.Embedding`` semantics).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_positions: int | None = 512,
        num_token_types: int | None = 2,
        *,
        eps: float = 1e-12,
        elementwise_affine: bool = True,
        bias: bool = True,
        padding_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"{_NAME}: need num_embeddings >= 1 and embedding_dim >= 1, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = check_padding_idx(_NAME, padding_idx, num_embeddings)
        self.eps = float(check_real_scalar(_NAME, "eps", eps))
        if self.eps < 0:
            raise ValueError(f"{_NAME}: eps must be >= 0, got {self.eps}")
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, **factory))
        self.pos_weight = self._optional((num_positions, embedding_dim), num_positions, factory)
        self.type_weight = self._optional(
            (num_token_types, embedding_dim), num_token_types, factory
        )
        self.ln_weight = self._optional((embedding_dim,), elementwise_affine, factory)
        self.ln_bias = self._optional((embedding_dim,), elementwise_affine and bias, factory)
        self.reset_parameters()

    @staticmethod
    def _optional(shape, present, factory) -> nn.Parameter | None:
        if present is None or present is False:
            return None
        return nn.Parameter(torch.empty(shape, **factory))

    def reset_parameters(self) -> None:
        """``nn.Embedding`` / ``nn.LayerNorm`` initialisation."""
        for table in (self.weight, self.pos_weight, self.type_weight):
            if table is not None:
                nn.init.normal_(table)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)
        if self.ln_weight is not None:
            nn.init.ones_(self.ln_weight)
        if self.ln_bias is not None:
            nn.init.zeros_(self.ln_bias)

    @classmethod
    def from_modules(
        cls,
        word: nn.Embedding,
        position: nn.Embedding | None,
        token_type: nn.Embedding | None,
        layer_norm: nn.LayerNorm,
    ) -> FusedEmbeddingLayerNorm:
        """Wrap existing modules (e.g. a ``BertEmbeddings``' children), sharing their
        parameters: no memory is copied and tied weights stay tied."""
        _check_embedding("word", word, None)
        dim = word.embedding_dim
        if position is not None:
            _check_embedding("position", position, dim)
        if token_type is not None:
            _check_embedding("token_type", token_type, dim)
        if not isinstance(layer_norm, nn.LayerNorm):
            raise TypeError(
                f"{_NAME}.from_modules: layer_norm must be nn.LayerNorm, got {type(layer_norm)}"
            )
        if tuple(layer_norm.normalized_shape) != (dim,):
            raise ValueError(
                f"{_NAME}.from_modules: layer_norm normalizes {tuple(layer_norm.normalized_shape)}"
                f", expected ({dim},)"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.num_embeddings = word.num_embeddings
        module.embedding_dim = dim
        module.padding_idx = word.padding_idx
        module.eps = float(layer_norm.eps)
        module.weight = word.weight
        module.pos_weight = position.weight if position is not None else None
        module.type_weight = token_type.weight if token_type is not None else None
        module.ln_weight = layer_norm.weight
        module.ln_bias = layer_norm.bias
        return module

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """``input_ids`` int [..., S] -> [..., S, D] in the weight dtype."""
        return fused_embedding_layernorm(
            input_ids,
            self.weight,
            self.pos_weight,
            self.type_weight,
            token_type_ids,
            self.ln_weight,
            self.ln_bias,
            self.eps,
            positions,
            position_offset,
            padding_idx=self.padding_idx,
        )

    def extra_repr(self) -> str:
        parts = [f"{self.num_embeddings}, {self.embedding_dim}"]
        if self.pos_weight is not None:
            parts.append(f"num_positions={self.pos_weight.shape[0]}")
        if self.type_weight is not None:
            parts.append(f"num_token_types={self.type_weight.shape[0]}")
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx}")
        parts.append(f"eps={self.eps:g}")
        if self.ln_weight is None:
            parts.append("elementwise_affine=False")
        return ", ".join(parts)
