"""``FactorizedEmbedding``: a low-rank token table (``a @ b``) with exact rows for hot tokens."""

from __future__ import annotations

import math
import types
from typing import Any

import torch
from torch import nn

from fusedops.factorization import (
    FactorizationInfo,
    ReconstructionError,
    check_hot_ids,
    dense_table,
    fit_factorization,
    reconstruction_error,
)
from fusedops.nn._lookup_module import (
    FLOAT_DTYPES,
    LookupModule,
    check_positional_choice,
    dtype_name,
)
from fusedops.ops.factorized_embedding import factorized_embedding, hot_slot_table

_NAME = "FactorizedEmbedding"
_DTYPES = tuple(FLOAT_DTYPES.values())


class FactorizedEmbedding(LookupModule):
    """Token embedding from a rank-``r`` factorized table, with K hot tokens kept exact.

    ``forward(input_ids [..., S]) -> [..., S, D]`` equals ``row(t) * scale + P[pos]`` with
    ``row(t) = hot_rows[k]`` when ``t = hot_ids[k]``, else ``a[t] @ b``, computed in one pass by
    :func:`fusedops.factorized_embedding` (C++ kernel on CPU, Triton on CUDA). ``P`` is a
    learned table ``pos_weight`` (``num_positions`` rows), the in-kernel sinusoid, or nothing,
    as in :class:`fusedops.nn.FusedEmbedding`.

    Storage: ``V*r + r*D + K*D`` values instead of ``V*D`` (plus ``K`` int64 hot ids). Build
    one from a trained table with :meth:`from_embedding` (truncated SVD of the non-hot rows, see
    :func:`fusedops.factorization.fit_factorization`); the constructor makes a randomly
    initialised module (to train from scratch or to load a state dict into).

    Parameters (trainable; gradients flow to all of them): ``a`` ``[V, r]``, ``b`` ``[r, D]``,
    ``hot_rows`` ``[K, D]`` (None when K == 0), ``pos_weight`` ``[P, D]`` or None, all in one
    dtype (fp32/fp16/bf16). Buffers: ``hot_ids`` int64 ``[K]`` (persistent, in the state dict)
    and ``hot_slots`` int32 ``[V]`` (``hot_slots[hot_ids[k]] = k``, -1 elsewhere; None when
    K == 0), derived from ``hot_ids``, not saved, rebuilt whenever a state dict is loaded.
    Assigning ``hot_ids`` directly needs :meth:`rebuild_hot_slots` afterwards.

    Args:
        num_embeddings: V.
        embedding_dim: D.
        rank: r >= 1.
        num_hot: K, rows kept exact (initial hot ids ``0 .. K-1``; a loaded state dict or
            :meth:`from_embedding` sets the real ones).
        padding_idx: a token whose row starts at zero (its ``a`` row, or its hot row) and that
            contributes no gradient (``nn.Embedding`` semantics).
        scale: multiplier of the token rows; ``"sqrt_dim"`` for ``sqrt(D)``.
        num_positions: rows of a learned positional table, or None.
        sinusoidal: add the fixed sinusoid instead (exclusive with ``num_positions``).
        sinusoid_base: its frequency base.
        deterministic: bit-stable backward (default) vs fp32 atomics on the Triton path.
        check_indices: range-check ids and positions in ``forward`` (a device sync on CUDA);
            a runtime attribute.
        device, dtype: of the parameters (dtype fp32 by default).
    """

    _kind = _NAME
    a: nn.Parameter
    b: nn.Parameter
    hot_rows: nn.Parameter | None
    pos_weight: nn.Parameter | None
    hot_ids: torch.Tensor
    hot_slots: torch.Tensor | None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        *,
        num_hot: int = 0,
        padding_idx: int | None = None,
        scale: float | str = 1.0,
        num_positions: int | None = None,
        sinusoidal: bool = False,
        sinusoid_base: float = 10000.0,
        deterministic: bool = True,
        check_indices: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for what, value, low in (
            ("num_embeddings", num_embeddings, 1),
            ("embedding_dim", embedding_dim, 1),
            ("rank", rank, 1),
            ("num_hot", num_hot, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{_NAME}: {what} must be an int >= {low}, got {value!r}")
        if num_hot > num_embeddings:
            raise ValueError(f"{_NAME}: num_hot {num_hot} exceeds num_embeddings {num_embeddings}")
        check_positional_choice(_NAME, num_positions, sinusoidal)
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in _DTYPES:
            raise TypeError(f"{_NAME}: dtype must be float32/float16/bfloat16, got {dtype}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        self._set_lookup_options(padding_idx, scale, sinusoidal, sinusoid_base)
        self.deterministic = deterministic
        self.check_indices = bool(check_indices)
        self.fit_info: FactorizationInfo | None = None  # set by from_embedding
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.a = nn.Parameter(torch.empty(num_embeddings, rank, **factory))
        self.b = nn.Parameter(torch.empty(rank, embedding_dim, **factory))
        self.hot_rows = None
        if num_hot:
            self.hot_rows = nn.Parameter(torch.empty(num_hot, embedding_dim, **factory))
        self.pos_weight = None
        if num_positions is not None:
            self.pos_weight = nn.Parameter(torch.empty(num_positions, embedding_dim, **factory))
        self.register_buffer("hot_ids", torch.arange(num_hot, dtype=torch.int64, device=device))
        self.register_buffer("hot_slots", None, persistent=False)
        self.rebuild_hot_slots()
        self.register_load_state_dict_post_hook(_rebuild_after_load)
        self.reset_parameters()

    @property
    def num_hot(self) -> int:
        """K, the number of tokens whose rows are stored exactly."""
        return int(self.hot_ids.numel())

    def reset_parameters(self) -> None:
        """``a ~ N(0, 1)``, ``b ~ N(0, 1/r)`` (token rows of about unit variance, like
        ``nn.Embedding``), hot and positional rows ``N(0, 1)``; the padding token's row zero."""
        with torch.no_grad():
            nn.init.normal_(self.a)
            nn.init.normal_(self.b, std=1.0 / math.sqrt(self.rank))
            if self.hot_rows is not None:
                nn.init.normal_(self.hot_rows)
            if self.pos_weight is not None:
                nn.init.normal_(self.pos_weight)
            if self.padding_idx is not None:
                self.a[self.padding_idx].zero_()
                if self.hot_rows is not None:
                    keep = self.hot_ids != self.padding_idx  # [K]
                    self.hot_rows.mul_(keep.unsqueeze(1).to(self.hot_rows.dtype))

    def rebuild_hot_slots(self) -> None:
        """Recompute the ``hot_slots`` map from ``hot_ids`` (validated: distinct, in range)."""
        if self.hot_ids.numel() == 0:
            self.hot_slots = None
            return
        if self.hot_ids.device.type != "meta":
            check_hot_ids(_NAME, self.hot_ids, self.num_embeddings, self.hot_ids.device)
        self.hot_slots = hot_slot_table(self.hot_ids, self.num_embeddings)

    # ----------------------------------------------------------------------------------------
    # Construction from a trained table
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding | torch.Tensor,
        *,
        rank: int | None = None,
        energy: float | None = None,
        hot_tokens: torch.Tensor | list[int] | None = None,
        scale: float | str = 1.0,
        pos_weight: torch.Tensor | nn.Embedding | None = None,
        sinusoidal: bool = False,
        sinusoid_base: float = 10000.0,
        padding_idx: int | types.EllipsisType | None = ...,
        deterministic: bool = True,
        check_indices: bool = True,
        compute_dtype: torch.dtype = torch.float64,
    ) -> FactorizedEmbedding:
        """Factorize a trained table (an ``nn.Embedding`` or a ``[V, D]`` tensor).

        The table is fitted by :func:`fusedops.factorization.fit_factorization` (truncated SVD
        of the rows not in ``hot_tokens``, at ``rank`` or at the smallest rank keeping
        ``energy`` of the squared singular values; exactly one of the two), the rows of
        ``hot_tokens`` are copied exactly. The module has the table's dtype and device;
        ``fit_info`` holds the :class:`~fusedops.factorization.FactorizationInfo`.

        Args:
            embedding: the source; its parameters are read, never shared (a snapshot).
            rank, energy: the rank, or the energy to keep.
            hot_tokens: K distinct token ids kept exact, e.g.
                ``most_frequent(token_frequencies(corpus_ids, V), 1024)``.
            scale, sinusoidal, sinusoid_base: as in the constructor.
            pos_weight: a learned positional table (``[P, D]`` tensor or ``nn.Embedding``),
                copied and cast to the table's dtype; exclusive with ``sinusoidal``.
            padding_idx: default: the ``nn.Embedding``'s (None for a tensor).
            deterministic, check_indices: as in the constructor.
            compute_dtype: precision of the SVD (fp64 default, or fp32).
        """
        op = f"{_NAME}.from_embedding"
        if isinstance(embedding, nn.Embedding):
            if embedding.max_norm is not None:
                raise ValueError(
                    f"{op}: max_norm={embedding.max_norm} renormalizes rows at lookup time, "
                    "which a factorized table cannot do"
                )
            weight = embedding.weight.detach()
            if padding_idx is ...:
                padding_idx = embedding.padding_idx
        elif isinstance(embedding, torch.Tensor):
            weight = embedding.detach()
            if padding_idx is ...:
                padding_idx = None
        else:
            raise TypeError(
                f"{op}: expected nn.Embedding or a [V, D] tensor, got {type(embedding).__name__}"
            )
        if weight.dtype not in _DTYPES:
            raise TypeError(f"{op}: the table must be float32/float16/bfloat16, got {weight.dtype}")
        if pos_weight is not None and sinusoidal:
            raise ValueError(f"{op}: pos_weight and sinusoidal=True are exclusive")
        if isinstance(pos_weight, nn.Embedding):
            pos_weight = pos_weight.weight
        if pos_weight is not None:
            if not isinstance(pos_weight, torch.Tensor) or pos_weight.dim() != 2:
                raise ValueError(f"{op}: pos_weight must be a [P, D] tensor or nn.Embedding")
            if pos_weight.shape[1] != weight.shape[1]:
                raise ValueError(
                    f"{op}: pos_weight dim {pos_weight.shape[1]} != table dim {weight.shape[1]}"
                )
        a, b, hot_rows, info = fit_factorization(
            weight, rank=rank, energy=energy, hot_ids=hot_tokens, compute_dtype=compute_dtype
        )
        hot = check_hot_ids(op, [] if hot_tokens is None else hot_tokens, weight.shape[0], a.device)
        module = cls.from_factors(
            a,
            b,
            hot_ids=hot if hot.numel() else None,
            hot_rows=hot_rows,
            padding_idx=padding_idx,
            scale=scale,
            pos_weight=None if pos_weight is None else pos_weight.detach().clone(),
            sinusoidal=sinusoidal,
            sinusoid_base=sinusoid_base,
            deterministic=deterministic,
            check_indices=check_indices,
        )
        module.fit_info = info
        return module

    @classmethod
    def from_factors(
        cls,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        hot_ids: torch.Tensor | list[int] | None = None,
        hot_rows: torch.Tensor | None = None,
        padding_idx: int | None = None,
        scale: float | str = 1.0,
        pos_weight: torch.Tensor | None = None,
        sinusoidal: bool = False,
        sinusoid_base: float = 10000.0,
        deterministic: bool = True,
        check_indices: bool = True,
    ) -> FactorizedEmbedding:
        """A module holding given factors: ``a`` ``[V, r]``, ``b`` ``[r, D]``, optional exact
        rows ``hot_rows`` ``[K, D]`` of the tokens ``hot_ids`` ``[K]`` and a learned positional
        table ``pos_weight`` ``[P, D]`` (cast to ``a``'s dtype). The tensors become the
        parameters (shared with the caller, not copied; detached). Other arguments as in the
        constructor."""
        op = f"{_NAME}.from_factors"
        for name, t in (("a", a), ("b", b), ("hot_rows", hot_rows), ("pos_weight", pos_weight)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 2):
                raise ValueError(f"{op}: {name} must be a 2-D tensor")
        if a.dtype not in _DTYPES or b.dtype != a.dtype:
            raise TypeError(
                f"{op}: a and b must share one dtype of float32/float16/bfloat16, got "
                f"{a.dtype} and {b.dtype}"
            )
        if a.shape[1] != b.shape[0]:
            raise ValueError(
                f"{op}: a [V, r] and b [r, D] disagree on r: {tuple(a.shape)}, {tuple(b.shape)}"
            )
        vocab, dim = a.shape[0], b.shape[1]
        hot = check_hot_ids(op, [] if hot_ids is None else hot_ids, vocab, a.device)
        if (hot_rows is None and hot.numel()) or (
            hot_rows is not None and tuple(hot_rows.shape) != (hot.numel(), dim)
        ):
            shape = None if hot_rows is None else tuple(hot_rows.shape)
            raise ValueError(
                f"{op}: hot_rows must be [{hot.numel()}, {dim}] for "
                f"{hot.numel()} hot ids, got {shape}"
            )
        if hot_rows is not None and hot_rows.dtype != a.dtype:
            raise TypeError(f"{op}: hot_rows dtype {hot_rows.dtype} differs from a's {a.dtype}")
        if pos_weight is not None and pos_weight.shape[1] != dim:
            raise ValueError(f"{op}: pos_weight dim {pos_weight.shape[1]} != table dim {dim}")
        module = cls(
            vocab,
            dim,
            a.shape[1],
            num_hot=hot.numel(),
            padding_idx=padding_idx,
            scale=scale,
            num_positions=None if pos_weight is None else pos_weight.shape[0],
            sinusoidal=sinusoidal,
            sinusoid_base=sinusoid_base,
            deterministic=deterministic,
            check_indices=check_indices,
            device="meta",
            dtype=a.dtype,
        )
        module.a = nn.Parameter(a.detach())
        module.b = nn.Parameter(b.detach())
        if hot.numel():
            module.hot_rows = nn.Parameter(hot_rows.detach())
        if pos_weight is not None:
            module.pos_weight = nn.Parameter(pos_weight.detach().to(a.device, a.dtype))
        module.hot_ids = hot.clone()
        module.rebuild_hot_slots()
        return module

    # ----------------------------------------------------------------------------------------
    # Forward and inspection
    # ----------------------------------------------------------------------------------------

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """:func:`fusedops.factorized_embedding` of the factors and hot rows: [..., S, D] in
        the parameters' dtype."""
        return factorized_embedding(
            input_ids,
            self.a,
            self.b,
            hot_rows=self.hot_rows,
            hot_slots=self.hot_slots,
            deterministic=self.deterministic,
            check_indices=self.check_indices,
            **options,
        )

    def to_dense(self) -> torch.Tensor:
        """The token table this module serves, ``[V, D]`` in its dtype (no positional term,
        no scale; detached): ``a @ b`` in fp32 with the hot rows in place."""
        with torch.no_grad():
            return dense_table(self.a, self.b, self.hot_ids, self.hot_rows)

    def memory_bytes(self) -> int:
        """Bytes of the parameters and persistent buffers (what the state dict holds):
        ``a``, ``b``, ``hot_rows``, ``pos_weight`` and the int64 ``hot_ids``. The derived
        ``hot_slots`` map (``4 V`` bytes when K > 0) is not counted."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def dense_bytes(self) -> int:
        """Bytes of the same embedding with a dense ``[V, D]`` table in this dtype (plus the
        same positional table): what :meth:`memory_bytes` compares against."""
        size = self.a.element_size()
        pos = 0 if self.pos_weight is None else self.pos_weight.numel() * size
        return self.num_embeddings * self.embedding_dim * size + pos

    def reconstruction_error(
        self,
        weight: torch.Tensor | nn.Embedding,
        token_counts: torch.Tensor | None = None,
    ) -> ReconstructionError:
        """How far :meth:`to_dense` is from the dense table ``weight`` ``[V, D]`` (fp64).

        Returns ``(relative, weighted)``: ``relative = ||W - W_hat||_F / ||W||_F``; with
        ``token_counts`` ``c`` ``[V]`` (e.g. :func:`~fusedops.factorization.token_frequencies`),
        ``weighted = sqrt(sum_t c_t ||W_t - W_hat_t||^2 / sum_t c_t ||W_t||^2)``, the relative
        RMS error of a token drawn with those frequencies (None without counts).
        """
        if isinstance(weight, nn.Embedding):
            weight = weight.weight
        if tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"{_NAME}.reconstruction_error: weight must be "
                f"[{self.num_embeddings}, {self.embedding_dim}], got {tuple(weight.shape)}"
            )
        return reconstruction_error(weight, self.to_dense(), token_counts)

    def extra_repr(self) -> str:
        head = [f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"]
        if self.num_hot:
            head.append(f"num_hot={self.num_hot}")
        return self._repr(head, tail=[f"dtype={dtype_name(self.a.dtype)}"])


def _rebuild_after_load(module: nn.Module, _incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: the derived ``hot_slots`` follows the loaded ``hot_ids``."""
    assert isinstance(module, FactorizedEmbedding)
    module.rebuild_hot_slots()
