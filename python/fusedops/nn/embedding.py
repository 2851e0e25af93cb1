"""``FusedEmbedding``: a drop-in for ``nn.Embedding`` with fused scale and positional add."""

from __future__ import annotations

import math

import torch
from torch import nn

from fusedops.ops import check_padding_idx, fused_embedding


class FusedEmbedding(nn.Module):
    """Token embedding with an optional scale and positional term, computed in one kernel.

    ``forward(input_ids [..., S]) -> [..., S, D]`` equals
    ``weight[input_ids] * scale + P[pos]`` with ``P`` a learned table ``pos_weight``
    ``[num_positions, D]`` (when ``num_positions`` is given), the in-kernel sinusoid
    (``sinusoidal=True``), or nothing. With the defaults it is exactly ``nn.Embedding``
    (same ``weight`` parameter, init ``N(0, 1)``, zero ``padding_idx`` row and gradient).

    Args:
        num_embeddings: V, rows of the token table.
        embedding_dim: D.
        padding_idx: row with zero init and zero gradient (``nn.Embedding`` semantics).
        scale: multiplier of token rows (e.g. ``math.sqrt(D)``); ``"sqrt_dim"`` for that.
        num_positions: rows of a learned positional table, or None.
        sinusoidal: add the fixed sinusoid instead (exclusive with ``num_positions``).
        sinusoid_base: frequency base of the sinusoid.
        deterministic: bit-stable backward (default) vs fp32 atomics on the Triton path.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        scale: float | str = 1.0,
        num_positions: int | None = None,
        sinusoidal: bool = False,
        sinusoid_base: float = 10000.0,
        deterministic: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"FusedEmbedding: need num_embeddings >= 1 and embedding_dim >= 1, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        if num_positions is not None and sinusoidal:
            raise ValueError("FusedEmbedding: num_positions and sinusoidal=True are exclusive")
        padding_idx = check_padding_idx("FusedEmbedding", padding_idx, num_embeddings)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.scale = math.sqrt(embedding_dim) if scale == "sqrt_dim" else float(scale)
        self.sinusoidal = sinusoidal
        self.sinusoid_base = float(sinusoid_base)
        self.deterministic = deterministic
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, **factory))
        self.pos_weight: nn.Parameter | None = None
        if num_positions is not None:
            self.pos_weight = nn.Parameter(torch.empty(num_positions, embedding_dim, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        if self.pos_weight is not None:
            nn.init.normal_(self.pos_weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        *,
        scale: float | str = 1.0,
        pos_embedding: nn.Embedding | None = None,
        sinusoidal: bool = False,
        sinusoid_base: float = 10000.0,
        deterministic: bool = True,
    ) -> FusedEmbedding:
        """Wrap an existing ``nn.Embedding`` (and optional positional ``nn.Embedding``),
        sharing their parameters: tied weights stay tied and no memory is copied."""
        for name, emb in (("embedding", embedding), ("pos_embedding", pos_embedding)):
            if emb is None:
                continue
            if not isinstance(emb, nn.Embedding):
                raise TypeError(
                    f"FusedEmbedding.from_embedding: {name} must be nn.Embedding, "
                    f"got {type(emb).__name__}"
                )
            unsupported = [
                opt
                for opt, on in (
                    ("max_norm", emb.max_norm is not None),
                    ("scale_grad_by_freq", emb.scale_grad_by_freq),
                    ("sparse", emb.sparse),
                )
                if on
            ]
            if unsupported:
                raise ValueError(
                    f"FusedEmbedding.from_embedding: {name} uses unsupported options {unsupported}"
                )
        if pos_embedding is not None and pos_embedding.embedding_dim != embedding.embedding_dim:
            raise ValueError(
                "FusedEmbedding.from_embedding: pos_embedding dim "
                f"{pos_embedding.embedding_dim} != embedding dim {embedding.embedding_dim}"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.num_embeddings = embedding.num_embeddings
        module.embedding_dim = embedding.embedding_dim
        module.padding_idx = embedding.padding_idx
        module.scale = math.sqrt(embedding.embedding_dim) if scale == "sqrt_dim" else float(scale)
        module.sinusoidal = sinusoidal
        module.sinusoid_base = float(sinusoid_base)
        module.deterministic = deterministic
        module.weight = embedding.weight
        module.pos_weight = pos_embedding.weight if pos_embedding is not None else None
        if module.pos_weight is not None and sinusoidal:
            raise ValueError(
                "FusedEmbedding.from_embedding: pos_embedding and sinusoidal=True are exclusive"
            )
        return module

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """``input_ids`` int [..., S] -> [..., S, D] in the weight dtype."""
        return fused_embedding(
            input_ids,
            self.weight,
            scale=self.scale,
            pos_weight=self.pos_weight,
            positions=positions,
            position_offset=position_offset,
            sinusoidal=self.sinusoidal,
            sinusoid_base=self.sinusoid_base,
            padding_idx=self.padding_idx,
            deterministic=self.deterministic,
        )

    def extra_repr(self) -> str:
        parts = [f"{self.num_embeddings}, {self.embedding_dim}"]
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx}")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.pos_weight is not None:
            parts.append(f"num_positions={self.pos_weight.shape[0]}")
        if self.sinusoidal:
            parts.append(f"sinusoidal=True, base={self.sinusoid_base:g}")
        return ", ".join(parts)
