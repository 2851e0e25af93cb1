"""``FusedEmbedding``: a drop-in for ``nn.Embedding`` with fused scale and positional add."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusedops.nn._lookup_module import (
    LookupModule,
    check_positional_choice,
    resolve_scale,
    resolve_sinusoid_base,
    unsupported_options,
)
from fusedops.ops import fused_embedding


class FusedEmbedding(LookupModule):
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
        scale: multiplier of token rows (e.g. ``math.sqrt(D)``, a finite real number);
            ``"sqrt_dim"`` for that.
        num_positions: rows of a learned positional table, or None.
        sinusoidal: add the fixed sinusoid instead (exclusive with ``num_positions``).
        sinusoid_base: frequency base of the sinusoid, a finite number > 0.
        deterministic: bit-stable backward (default) vs fp32 atomics on the Triton path.
    """

    _kind = "FusedEmbedding"

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
        check_positional_choice(self._kind, num_positions, sinusoidal)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self._set_lookup_options(padding_idx, scale, sinusoidal, sinusoid_base)
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
            unsupported = unsupported_options(emb)
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
        module.scale = resolve_scale(f"{cls._kind}.from_embedding", scale, module.embedding_dim)
        module.sinusoidal = bool(sinusoidal)
        module.sinusoid_base = resolve_sinusoid_base(
            f"{cls._kind}.from_embedding", module.sinusoidal, sinusoid_base
        )
        module.deterministic = deterministic
        module.weight = embedding.weight
        module.pos_weight = pos_embedding.weight if pos_embedding is not None else None
        if module.pos_weight is not None and sinusoidal:
            raise ValueError(
                "FusedEmbedding.from_embedding: pos_embedding and sinusoidal=True are exclusive"
            )
        return module

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """:func:`fusedops.fused_embedding` of ``weight``: [..., S, D] in the weight dtype."""
        return fused_embedding(input_ids, self.weight, deterministic=self.deterministic, **options)

    def extra_repr(self) -> str:
        return self._repr([f"{self.num_embeddings}, {self.embedding_dim}"])
