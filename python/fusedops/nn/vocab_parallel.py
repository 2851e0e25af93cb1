"""Vocabulary-parallel embeddings: the token table sharded by rows over a process group.

:class:`VocabParallelEmbedding` (trainable) and :class:`VocabParallelInt8Embedding`
(inference only) are the input embedding of a tensor-parallel model (the role of Megatron-LM's
``VocabParallelEmbedding``): each rank of the group holds a contiguous shard of
``ceil(V / W)`` rows, looks its ids up with the fused kernel and one ``all_reduce`` sums the
shards' contributions (see :mod:`fusedops.ops.vocab_parallel`). Every rank of the group builds
the module and calls it with the same ids; the output is replicated.

Works with any ``torch.distributed`` backend: ``gloo`` with CPU tensors, ``nccl`` with each
rank's tensors on its own CUDA device (``torch.cuda.set_device(local_rank)`` first).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fusedops.nn._lookup_module import (
    Int8LookupModule,
    LookupModule,
    check_positional_choice,
    default_out_dtype,
    dtype_name,
    parse_dtype,
    unsupported_options,
)
from fusedops.nn.embedding import FusedEmbedding
from fusedops.nn.vocab_parallel_io import TensorSpec, load_shards, save_shards
from fusedops.ops.vocab_parallel import (
    VocabShard,
    group_rank_and_size,
    vocab_parallel_embedding,
    vocab_parallel_int8_embedding,
    vocab_shard,
)

_FLOAT = "VocabParallelEmbedding"
_INT8 = "VocabParallelInt8Embedding"


def _is_meta(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _table_of(name: str, source: object, what: str) -> torch.Tensor:
    """The ``[V, D]`` float table of an ``nn.Embedding`` / ``FusedEmbedding`` / tensor."""
    if isinstance(source, torch.Tensor):
        table = source
    elif isinstance(source, (nn.Embedding, FusedEmbedding)):
        if isinstance(source, nn.Embedding):
            unsupported = unsupported_options(source)
            if unsupported:
                raise ValueError(f"{name}.from_embedding: {what} uses unsupported {unsupported}")
        table = source.weight
    else:
        raise TypeError(
            f"{name}.from_embedding: {what} must be nn.Embedding, fusedops.nn.FusedEmbedding or "
            f"a [V, D] tensor, got {type(source).__name__}"
        )
    if table.dim() != 2 or not table.is_floating_point():
        raise ValueError(
            f"{name}.from_embedding: {what} must be a float [V, D] table, got "
            f"{table.dtype} {tuple(table.shape)}"
        )
    return table.detach()


def _settings(source: object, options: dict[str, Any]) -> dict[str, Any]:
    """``scale``, ``sinusoidal`` and ``sinusoid_base`` of a ``FusedEmbedding`` or
    :class:`VocabParallelEmbedding` source (the defaults for another source), each replaced by
    its entry of ``options`` when that is not None."""
    if isinstance(source, (FusedEmbedding, VocabParallelEmbedding)):
        resolved = {
            "scale": source.scale,
            "sinusoidal": source.sinusoidal,
            "sinusoid_base": source.sinusoid_base,
        }
    else:
        resolved = {"scale": 1.0, "sinusoidal": False, "sinusoid_base": 10000.0}
    resolved.update({k: v for k, v in options.items() if v is not None})
    return resolved


def _source_options(
    name: str, source: object, pos_embedding: object, padding_idx: int | None, options: dict
) -> tuple[torch.Tensor | None, int | None, dict]:
    """Positional table, padding id and (scale, sinusoidal, sinusoid_base) of a source,
    explicit options (not None) taking precedence over a ``FusedEmbedding``'s settings."""
    fused = isinstance(source, FusedEmbedding)
    resolved = _settings(source, options)
    source_pad = getattr(source, "padding_idx", None)
    if padding_idx is not None and source_pad is not None and padding_idx != source_pad:
        raise ValueError(
            f"{name}.from_embedding: padding_idx={padding_idx} differs from the source's "
            f"padding_idx={source_pad}"
        )
    padding_idx = padding_idx if padding_idx is not None else source_pad
    pos = None
    if pos_embedding is not None:
        if fused and source.pos_weight is not None:
            raise ValueError(
                f"{name}.from_embedding: pos_embedding given but the FusedEmbedding source "
                "already has a positional table"
            )
        pos = _table_of(name, pos_embedding, "pos_embedding")
    elif fused and source.pos_weight is not None:
        pos = source.pos_weight.detach()
    if pos is not None and resolved["sinusoidal"]:
        raise ValueError(
            f"{name}.from_embedding: a positional table and sinusoidal=True are exclusive"
        )
    return pos, padding_idx, resolved


def _shard_rows_of(table: torch.Tensor, shard: VocabShard) -> torch.Tensor:
    """Rows ``[start, start + rows)`` of a full ``[V, D]`` table, zero-padded: [rows, D]."""
    out = table.new_zeros((shard.rows, table.shape[1]))
    out[: shard.real_rows] = table[shard.start : shard.end]
    return out


def _gather_rows(
    local: torch.Tensor, shard: VocabShard, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """The full ``[V, ...]`` table from every rank's ``[rows, ...]`` shard (collective)."""
    parts = [torch.empty_like(local) for _ in range(shard.world_size)]
    dist.all_gather(parts, local.detach().contiguous(), group=group)
    return torch.cat(parts)[: shard.num_embeddings]


class _VocabParallelBase(LookupModule):
    """Layout, process group and sharded save/load shared by both modules (which define
    ``config()``, the constructor arguments that rebuild the layout)."""

    _kind: str
    num_embeddings: int
    embedding_dim: int
    shard: VocabShard

    def _init_layout(
        self,
        num_embeddings: int,
        embedding_dim: int,
        process_group: dist.ProcessGroup | None,
    ) -> None:
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int):
            raise TypeError(f"{self._kind}: embedding_dim must be an int, got {embedding_dim!r}")
        if embedding_dim < 1:
            raise ValueError(f"{self._kind}: embedding_dim must be >= 1, got {embedding_dim}")
        rank, world = group_rank_and_size(process_group, self._kind)
        self.shard = vocab_shard(num_embeddings, world, rank, self._kind)
        self.process_group = process_group
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return self.shard.rank

    @property
    def world_size(self) -> int:
        """Ranks in the group."""
        return self.shard.world_size

    @property
    def vocab_start(self) -> int:
        """First id of this rank's shard."""
        return self.shard.start

    @property
    def vocab_end(self) -> int:
        """One past the last real id of this rank's shard (``<= num_embeddings``)."""
        return self.shard.end

    @classmethod
    def _specs(cls, config: dict[str, Any]) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        raise NotImplementedError

    def _row_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _metadata(self) -> dict[str, str]:
        raise NotImplementedError

    def save_sharded(self, directory: str | os.PathLike[str]) -> None:
        """Write this rank's shard to ``directory`` (collective: call it on every rank).

        Writes ``vocab_parallel-{rank:05d}-of-{world:05d}.safetensors`` (see
        :mod:`fusedops.nn.vocab_parallel_io` for the format); rank 0's file also holds the
        positional table. Files of an earlier save from another group size are removed.
        """
        pos = getattr(self, "pos_weight", None)
        save_shards(
            f"{self._kind}.save_sharded",
            directory,
            kind=self._kind,
            shard=self.shard,
            process_group=self.process_group,
            row_tensors=self._row_tensors(),
            replicated={} if pos is None else {"pos_weight": pos},
            metadata={
                "embedding_dim": str(self.embedding_dim),
                **self._metadata(),
                "config": json.dumps(self.config(), sort_keys=True),
            },
        )

    @classmethod
    def load_sharded(
        cls,
        directory: str | os.PathLike[str],
        process_group: dist.ProcessGroup | None = None,
        *,
        device: torch.device | str | None = None,
    ):
        """Rebuild a module saved by :meth:`save_sharded`, re-sharded for ``process_group``
        (collective). The save may come from any number of ranks (``<= V``); the tensors are
        bit-exact. ``device``: where they go (default: the current CUDA device for an NCCL
        group, else CPU). Raises on every rank (FileNotFoundError / ValueError) for a missing
        directory, missing files, or files that do not form one consistent save."""
        what = f"{cls._kind}.load_sharded"
        config, _shard, tensors = load_shards(
            what,
            directory,
            kind=cls._kind,
            process_group=process_group,
            specs=cls._specs,
            device=device,
        )
        module = cls._from_config(config, process_group)
        module.load_state_dict(tensors, strict=True, assign=True)
        return module

    @classmethod
    def _from_config(cls, config: dict[str, Any], process_group):
        raise NotImplementedError

    def _layout_repr(self) -> list[str]:
        """The head of ``extra_repr``: sizes, rank and this rank's rows."""
        return [
            f"{self.num_embeddings}, {self.embedding_dim}",
            f"rank={self.rank}/{self.world_size}",
            f"rows=[{self.vocab_start}, {self.vocab_end})",
        ]


class VocabParallelEmbedding(_VocabParallelBase):
    """:class:`fusedops.nn.FusedEmbedding` with the token table sharded by rows over a group.

    ``forward(input_ids [..., S]) -> [..., S, D]`` equals the single-process
    ``fused_embedding(input_ids, full_weight, scale=..., pos_weight=...)`` on every rank (bit
    for bit in fp32 on CPU; see :mod:`fusedops.ops.vocab_parallel` on precision), computed by
    :func:`fusedops.ops.vocab_parallel.vocab_parallel_embedding`.

    Parameters: ``weight`` ``[ceil(V / W), D]``, this rank's rows
    ``[rank * ceil(V / W), ...)`` (rows past ``V`` are zero padding that no id addresses, so
    every rank's shard has the same shape); ``pos_weight`` ``[P, D]`` or None, replicated:
    every rank holds the same table and gets the same full gradient. The shard's init is
    ``N(0, 1)`` (``nn.Embedding``'s), drawn from a generator seeded from the default one plus
    the rank (ranks seeded alike draw different shards); ``pos_weight`` is drawn then
    broadcast from group rank 0. To start from a given table use :meth:`from_embedding`.

    Args:
        num_embeddings: V, the full vocabulary (at least the group size).
        embedding_dim: D.
        padding_idx: global id whose row is zero-initialised and gets no gradient.
        process_group: the tensor-parallel group (default: the default group); must be
            initialized, and every rank of it constructs the module.
        scale: multiplier of the token rows; ``"sqrt_dim"`` for ``sqrt(D)``.
        num_positions: rows of a learned positional table, or None.
        sinusoidal: add the in-kernel sinusoid instead (exclusive with ``num_positions``).
        sinusoid_base: its frequency base.
        deterministic: bit-stable backward.
        check_indices: range-check ids and positions before the collective (``IndexError``).
        device, dtype: of the parameters (with ``nccl``: this rank's CUDA device).
    """

    _kind = _FLOAT

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        process_group: dist.ProcessGroup | None = None,
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
        self._init_layout(num_embeddings, embedding_dim, process_group)
        check_positional_choice(_FLOAT, num_positions, sinusoidal)
        if num_positions is not None and (
            isinstance(num_positions, bool)
            or not isinstance(num_positions, int)
            or num_positions < 1
        ):
            raise ValueError(f"{_FLOAT}: num_positions must be an int >= 1, got {num_positions!r}")
        self._set_lookup_options(padding_idx, scale, sinusoidal, sinusoid_base)
        self.deterministic = bool(deterministic)
        self.check_indices = bool(check_indices)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.shard.rows, embedding_dim, **factory))
        self.pos_weight: nn.Parameter | None = None
        if num_positions is not None:
            self.pos_weight = nn.Parameter(torch.empty(num_positions, embedding_dim, **factory))
        if not _is_meta(device):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """``N(0, 1)`` shard rows (a generator per rank), zero padding rows and padding id;
        ``N(0, 1)`` positional table broadcast from group rank 0 (collective)."""
        seed = int(torch.randint(0, 2**62, (1,)).item())  # equal on ranks seeded alike
        generator = torch.Generator(device=self.weight.device).manual_seed(seed + self.rank)
        with torch.no_grad():
            self.weight.normal_(generator=generator)
            self.weight[self.shard.real_rows :].zero_()
            local_pad = self.shard.local_index(self.padding_idx)
            if local_pad is not None:
                self.weight[local_pad].zero_()
            if self.pos_weight is not None:
                nn.init.normal_(self.pos_weight)
                if self.world_size > 1:
                    group = self.process_group
                    src = 0 if group is None else dist.get_global_rank(group, 0)
                    dist.broadcast(self.pos_weight.data, src=src, group=self.process_group)

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding | FusedEmbedding | torch.Tensor,
        process_group: dist.ProcessGroup | None = None,
        *,
        pos_embedding: nn.Embedding | torch.Tensor | None = None,
        padding_idx: int | None = None,
        scale: float | str | None = None,
        sinusoidal: bool | None = None,
        sinusoid_base: float | None = None,
        deterministic: bool = True,
        check_indices: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> VocabParallelEmbedding:
        """Shard a full table that every rank holds (e.g. loaded from a checkpoint).

        ``embedding``: ``nn.Embedding``, :class:`fusedops.nn.FusedEmbedding` (its scale,
        positional table, sinusoid settings and padding id carry over unless given here) or
        a ``[V, D]`` tensor. ``pos_embedding``: a learned positional ``nn.Embedding`` or
        ``[P, D]`` tensor. Every rank must pass the same tables; each keeps a copy of its
        shard (and of the positional table) on ``device`` (default: the source's device) in
        ``dtype`` (default: the source's). Collective only in the sense that every rank of
        the group calls it; no data is exchanged.
        """
        table = _table_of(_FLOAT, embedding, "embedding")
        pos, padding_idx, options = _source_options(
            _FLOAT,
            embedding,
            pos_embedding,
            padding_idx,
            {"scale": scale, "sinusoidal": sinusoidal, "sinusoid_base": sinusoid_base},
        )
        device = table.device if device is None else torch.device(device)
        dtype = table.dtype if dtype is None else dtype
        module = cls(
            table.shape[0],
            table.shape[1],
            padding_idx,
            process_group=process_group,
            num_positions=None if pos is None else pos.shape[0],
            deterministic=deterministic,
            check_indices=check_indices,
            device="meta",
            dtype=dtype,
            **options,
        )
        if pos is not None and pos.shape[1] != table.shape[1]:
            raise ValueError(
                f"{_FLOAT}.from_embedding: pos_embedding dim {pos.shape[1]} != embedding dim "
                f"{table.shape[1]}"
            )
        shard = _shard_rows_of(table, module.shard).to(device=device, dtype=dtype)  # [rows, D]
        module.weight = nn.Parameter(shard)
        if pos is not None:
            module.pos_weight = nn.Parameter(pos.to(device=device, dtype=dtype, copy=True))
        return module

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """:func:`fusedops.ops.vocab_parallel.vocab_parallel_embedding` of this rank's shard:
        ``input_ids`` int [..., S] (same on every rank) -> [..., S, D] in the weight dtype."""
        return vocab_parallel_embedding(
            input_ids,
            self.weight,
            num_embeddings=self.num_embeddings,
            process_group=self.process_group,
            deterministic=self.deterministic,
            check_indices=self.check_indices,
            **options,
        )

    def gather_weight(self) -> torch.Tensor:
        """The full ``[V, D]`` token table on every rank (collective ``all_gather``)."""
        return _gather_rows(self.weight, self.shard, self.process_group)

    # ------------------------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Constructor arguments (without group and device) that rebuild this layout."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "scale": self.scale,
            "num_positions": None if self.pos_weight is None else self.pos_weight.shape[0],
            "sinusoidal": self.sinusoidal,
            "sinusoid_base": self.sinusoid_base,
            "deterministic": self.deterministic,
            "dtype": dtype_name(self.weight.dtype),
        }

    @classmethod
    def _specs(cls, config):
        dtype = parse_dtype(f"{_FLOAT}.load_sharded: dtype", config["dtype"])
        dim = config["embedding_dim"]
        rows = {"weight": TensorSpec(dtype, (dim,))}
        pos = config["num_positions"]
        replicated = {} if pos is None else {"pos_weight": TensorSpec(dtype, (pos, dim))}
        return rows, replicated

    @classmethod
    def _from_config(cls, config, process_group):
        config = dict(config)
        config["dtype"] = parse_dtype(f"{_FLOAT}.load_sharded: dtype", config["dtype"])
        return cls(**config, process_group=process_group, device="meta")

    def _row_tensors(self):
        return {"weight": self.weight}

    def _metadata(self):
        return {"dtype": dtype_name(self.weight.dtype), "int8_scheme": "none"}

    def extra_repr(self) -> str:
        return self._repr(self._layout_repr())


class VocabParallelInt8Embedding(Int8LookupModule, _VocabParallelBase):
    """:class:`fusedops.nn.Int8Embedding` with the int8 table sharded by rows (inference only).

    ``forward(input_ids [..., S]) -> [..., S, D]`` in ``out_dtype`` equals the single-process
    ``int8_embedding(input_ids, full_qweight, full_scales, ...)`` on every rank (bit for bit
    with fp32 output). Buffers: ``qweight`` int8 ``[ceil(V / W), D]`` and ``scales``
    ``[ceil(V / W), G]`` (padding rows zero), ``pos_weight`` ``[P, D]`` float or None
    (replicated). Build one with :meth:`from_embedding` (each rank quantizes only its shard:
    per-row / per-group scales make that equal to slicing the quantized full table); the
    constructor makes an all-zero table to load into.

    Args: as :class:`fusedops.nn.Int8Embedding`, plus ``process_group``.
    """

    _kind = _INT8
    _float_source = _FLOAT

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        process_group: dist.ProcessGroup | None = None,
        group_size: int | None = None,
        scale_dtype: torch.dtype = torch.float32,
        scale: float | str = 1.0,
        num_positions: int | None = None,
        pos_dtype: torch.dtype = torch.float32,
        sinusoidal: bool = False,
        sinusoid_base: float = 10000.0,
        out_dtype: torch.dtype = torch.float32,
        check_indices: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self._init_layout(num_embeddings, embedding_dim, process_group)
        if group_size is not None and (
            isinstance(group_size, bool)
            or not isinstance(group_size, int)
            or group_size < 1
            or embedding_dim % group_size
        ):
            raise ValueError(
                f"{_INT8}: group_size {group_size!r} does not divide embedding_dim {embedding_dim}"
            )
        self._init_int8(
            self.shard.rows,
            padding_idx,
            group_size=group_size,
            scale_dtype=scale_dtype,
            scale=scale,
            num_positions=num_positions,
            pos_dtype=pos_dtype,
            sinusoidal=sinusoidal,
            sinusoid_base=sinusoid_base,
            out_dtype=out_dtype,
            check_indices=check_indices,
            device=device,
        )

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding | FusedEmbedding | VocabParallelEmbedding | torch.Tensor,
        process_group: dist.ProcessGroup | None = None,
        *,
        group_size: int | None = None,
        scale_dtype: torch.dtype = torch.float32,
        out_dtype: torch.dtype | None = None,
        pos_embedding: nn.Embedding | torch.Tensor | None = None,
        padding_idx: int | None = None,
        scale: float | str | None = None,
        sinusoidal: bool | None = None,
        sinusoid_base: float | None = None,
        check_indices: bool = True,
        device: torch.device | str | None = None,
    ) -> VocabParallelInt8Embedding:
        """Quantize this rank's shard of a trained table with :func:`fusedops.quantize_embedding`.

        ``embedding``: a full table that every rank holds (``nn.Embedding``,
        :class:`fusedops.nn.FusedEmbedding` or ``[V, D]`` tensor), or a
        :class:`VocabParallelEmbedding` (its own shard is quantized and its group, scale,
        positional settings and padding id carry over; nothing is gathered).
        ``out_dtype`` defaults to the table's dtype; the positional table is copied in its
        float dtype.
        """
        overrides = {"scale": scale, "sinusoidal": sinusoidal, "sinusoid_base": sinusoid_base}
        if isinstance(embedding, VocabParallelEmbedding):
            if process_group is None:
                process_group = embedding.process_group
            vocab, dim = embedding.num_embeddings, embedding.embedding_dim
            pos = embedding.pos_weight.detach() if embedding.pos_weight is not None else None
            if pos_embedding is not None:
                raise ValueError(
                    f"{_INT8}.from_embedding: the VocabParallelEmbedding source "
                    "brings its own positional settings; pos_embedding not allowed"
                )
            if padding_idx is not None and padding_idx != embedding.padding_idx:
                raise ValueError(
                    f"{_INT8}.from_embedding: padding_idx={padding_idx} differs "
                    f"from the source's {embedding.padding_idx}"
                )
            padding_idx = embedding.padding_idx
            options = _settings(embedding, overrides)
            table_dtype = embedding.weight.dtype
            source_device = embedding.weight.device
        else:
            table = _table_of(_INT8, embedding, "embedding")
            vocab, dim = table.shape
            pos, padding_idx, options = _source_options(
                _INT8, embedding, pos_embedding, padding_idx, overrides
            )
            table_dtype, source_device = table.dtype, table.device
        if pos is not None and pos.shape[1] != dim:
            raise ValueError(
                f"{_INT8}.from_embedding: pos_embedding dim {pos.shape[1]} != embedding dim {dim}"
            )
        if out_dtype is None:
            out_dtype = default_out_dtype(table_dtype)
        device = source_device if device is None else torch.device(device)
        module = cls(
            vocab,
            dim,
            padding_idx,
            process_group=process_group,
            group_size=group_size,
            scale_dtype=scale_dtype,
            num_positions=None if pos is None else pos.shape[0],
            pos_dtype=torch.float32 if pos is None else pos.dtype,
            out_dtype=out_dtype,
            check_indices=check_indices,
            device="meta",
            **options,
        )
        if isinstance(embedding, VocabParallelEmbedding):
            if embedding.shard != module.shard:
                raise ValueError(
                    f"{_INT8}.from_embedding: process_group differs from the source's layout"
                )
            shard_rows = embedding.weight.detach()  # [rows, D], padding rows zero
        else:
            shard_rows = _shard_rows_of(table, module.shard)  # [rows, D]
        module._set_quantized(
            shard_rows, pos, group_size=group_size, scale_dtype=scale_dtype, device=device
        )
        return module

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """:func:`fusedops.ops.vocab_parallel.vocab_parallel_int8_embedding` of this rank's
        shard: ``input_ids`` int [..., S] (same on every rank) -> [..., S, D] in
        ``out_dtype``."""
        return vocab_parallel_int8_embedding(
            input_ids,
            self.qweight,
            self.scales,
            num_embeddings=self.num_embeddings,
            process_group=self.process_group,
            out_dtype=self.out_dtype,
            check_indices=self.check_indices,
            **options,
        )

    def gather_quantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full ``(qweight [V, D] int8, scales [V, G])`` on every rank (collective)."""
        return (
            _gather_rows(self.qweight, self.shard, self.process_group),
            _gather_rows(self.scales, self.shard, self.process_group),
        )

    # ------------------------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------------------------

    @classmethod
    def _parsed(cls, config):
        return cls._parse_config(f"{_INT8}.load_sharded", config)

    @classmethod
    def _specs(cls, config):
        config = cls._parsed(config)
        dim = config["embedding_dim"]
        groups = 1 if config["group_size"] is None else dim // config["group_size"]
        rows = {
            "qweight": TensorSpec(torch.int8, (dim,)),
            "scales": TensorSpec(config["scale_dtype"], (groups,)),
        }
        pos = config["num_positions"]
        replicated = (
            {} if pos is None else {"pos_weight": TensorSpec(config["pos_dtype"], (pos, dim))}
        )
        return rows, replicated

    @classmethod
    def _from_config(cls, config, process_group):
        return cls(**cls._parsed(config), process_group=process_group, device="meta")

    def _row_tensors(self):
        return {"qweight": self.qweight, "scales": self.scales}

    def _metadata(self):
        scheme = f"{self._int8_scheme()}, scales {dtype_name(self.scales.dtype)}"
        return {"dtype": "int8", "int8_scheme": scheme}

    def extra_repr(self) -> str:
        return self._repr(
            self._layout_repr(),
            [self._int8_scheme()],
            [f"out_dtype={dtype_name(self.out_dtype)}"],
        )
