"""What the token-lookup modules share (``FusedEmbedding``, ``Int8Embedding``,
``FactorizedEmbedding`` and the vocabulary-parallel pair).

* :class:`LookupModule`: ``forward(input_ids, positions, position_offset)`` passing the
  positional and scale settings to the subclass's op, the validated padding id and those
  settings in the constructor, and the common part of ``extra_repr``.
* :class:`Int8LookupModule`: the int8 storage (``qweight``, ``scales``, ``pos_weight``
  buffers), its configuration dict, quantization of a float table into it, and the refusal of
  ``requires_grad_(True)``.
* Dtype names for saved configurations (:func:`dtype_name`, :func:`parse_dtype`), the
  ``"sqrt_dim"`` scale (:func:`resolve_scale`) and the ``nn.Embedding`` options no lookup
  module supports (:func:`unsupported_options`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fusedops.ops import check_padding_idx
from fusedops.ops._common import check_real_scalar
from fusedops.ops._lookup_checks import check_sinusoid_base
from fusedops.quantization import quantize_embedding

FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (how configurations store a dtype)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(what: str, name: object) -> torch.dtype:
    """The float dtype named ``name`` by :func:`dtype_name`; ``ValueError`` naming ``what``."""
    if name not in FLOAT_DTYPES:
        raise ValueError(f"{what} must be one of {sorted(FLOAT_DTYPES)}, got {name!r}")
    return FLOAT_DTYPES[name]


def default_out_dtype(table_dtype: torch.dtype) -> torch.dtype:
    """Output dtype of an int8 table quantized from a ``table_dtype`` one: that dtype when it
    is fp32/fp16/bf16, else fp32."""
    return table_dtype if table_dtype in FLOAT_DTYPES.values() else torch.float32


def resolve_scale(kind: str, scale: object, embedding_dim: int) -> float:
    """The token-row multiplier: ``sqrt(embedding_dim)`` for ``"sqrt_dim"``, else ``scale``
    checked to be a finite real number (Python, NumPy or a 0-d tensor) and returned as a float;
    errors name ``kind`` (the module)."""
    if isinstance(scale, str):
        if scale != "sqrt_dim":
            raise ValueError(f"{kind}: scale must be a number or 'sqrt_dim', got {scale!r}")
        return math.sqrt(embedding_dim)
    return float(check_real_scalar(kind, "scale", scale))


def resolve_sinusoid_base(kind: str, sinusoidal: bool, sinusoid_base: object) -> float:
    """``sinusoid_base`` as a float: checked to be a finite number > 0 when ``sinusoidal``
    (errors name ``kind``); without the sinusoid it is never read (kept when it is a real
    number, else the default ``10000.0``)."""
    if sinusoidal:
        return float(check_sinusoid_base(kind, sinusoid_base))
    if isinstance(sinusoid_base, numbers.Real) and not isinstance(sinusoid_base, bool):
        return float(sinusoid_base)
    return 10000.0


def unsupported_options(embedding: nn.Embedding) -> list[str]:
    """The options of ``embedding`` that the fused lookups do not implement (in order
    ``max_norm``, ``scale_grad_by_freq``, ``sparse``), empty when none is on."""
    return [
        opt
        for opt, on in (
            ("max_norm", embedding.max_norm is not None),
            ("scale_grad_by_freq", embedding.scale_grad_by_freq),
            ("sparse", embedding.sparse),
        )
        if on
    ]


def check_positional_choice(kind: str, num_positions: int | None, sinusoidal: bool) -> None:
    """A learned positional table and the sinusoid are exclusive (``ValueError``)."""
    if num_positions is not None and sinusoidal:
        raise ValueError(f"{kind}: num_positions and sinusoidal=True are exclusive")


class LookupModule(nn.Module):
    """Base of the token-lookup modules: ``out = row(input_ids) * scale + P[pos]``.

    Subclasses set ``_kind`` (the class name in error messages), the attributes below (with
    :meth:`_set_lookup_options` for the validated ones) and implement :meth:`_lookup`, the
    call of their op. ``pos_weight`` is a learned ``[P, D]`` table or None.
    """

    _kind: str
    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None
    scale: float
    pos_weight: torch.Tensor | None
    sinusoidal: bool
    sinusoid_base: float

    def _set_lookup_options(
        self,
        padding_idx: int | None,
        scale: float | str,
        sinusoidal: bool,
        sinusoid_base: float,
    ) -> None:
        """``padding_idx`` checked against ``num_embeddings`` (normalised to ``[0, V)``),
        ``scale`` resolved against ``embedding_dim`` and checked, and the sinusoid settings
        (the base checked when ``sinusoidal``): errors name the module."""
        self.padding_idx = check_padding_idx(self._kind, padding_idx, self.num_embeddings)
        self.scale = resolve_scale(self._kind, scale, self.embedding_dim)
        self.sinusoidal = bool(sinusoidal)
        self.sinusoid_base = resolve_sinusoid_base(self._kind, self.sinusoidal, sinusoid_base)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """``input_ids`` int [..., S] -> [..., S, D] (dtype: see the class). ``positions``
        int [..., S] (default ``position_offset + s``) index the positional term."""
        return self._lookup(
            input_ids,
            scale=self.scale,
            pos_weight=self.pos_weight,
            positions=positions,
            position_offset=position_offset,
            sinusoidal=self.sinusoidal,
            sinusoid_base=self.sinusoid_base,
            padding_idx=self.padding_idx,
        )

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """The subclass's op on ``input_ids`` [..., S] with the shared keyword ``options``
        (``scale``, ``pos_weight``, ``positions``, ``position_offset``, ``sinusoidal``,
        ``sinusoid_base``, ``padding_idx``): [..., S, D]."""
        raise NotImplementedError

    def _repr(
        self, head: Iterable[str], middle: Iterable[str] = (), tail: Iterable[str] = ()
    ) -> str:
        """``extra_repr``: ``head``, the padding id, ``middle``, the scale and positional
        settings (those not at their defaults), then ``tail``."""
        parts = list(head)
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx}")
        parts.extend(middle)
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.pos_weight is not None:
            parts.append(f"num_positions={self.pos_weight.shape[0]}")
        if self.sinusoidal:
            parts.append(f"sinusoidal=True, base={self.sinusoid_base:g}")
        parts.extend(tail)
        return ", ".join(parts)


class Int8LookupModule(LookupModule):
    """Base of the int8 lookup modules (inference only): buffers ``qweight`` int8
    ``[rows, D]``, ``scales`` ``[rows, G]`` (``G = D // group_size``, 1 per-row) and
    ``pos_weight`` float ``[P, D]`` or None. ``_float_source`` names, in the
    ``requires_grad_(True)`` error, the float module to train instead."""

    _float_source: str
    qweight: torch.Tensor
    scales: torch.Tensor
    pos_weight: torch.Tensor | None
    out_dtype: torch.dtype
    check_indices: bool

    def _init_int8(
        self,
        rows: int,
        padding_idx: int | None,
        *,
        group_size: int | None,
        scale_dtype: torch.dtype,
        scale: float | str,
        num_positions: int | None,
        pos_dtype: torch.dtype,
        sinusoidal: bool,
        sinusoid_base: float,
        out_dtype: torch.dtype,
        check_indices: bool,
        device: torch.device | str | None,
    ) -> None:
        """Validate the settings (``group_size`` already checked to divide D) and register
        all-zero buffers: ``rows`` table rows, ``num_positions`` positional rows."""
        check_positional_choice(self._kind, num_positions, sinusoidal)
        for what, dtype in (
            ("scale_dtype", scale_dtype),
            ("pos_dtype", pos_dtype),
            ("out_dtype", out_dtype),
        ):
            if dtype not in FLOAT_DTYPES.values():
                raise TypeError(
                    f"{self._kind}: {what} must be float32/float16/bfloat16, got {dtype}"
                )
        self._set_lookup_options(padding_idx, scale, sinusoidal, sinusoid_base)
        self.out_dtype = out_dtype
        self.check_indices = bool(check_indices)
        dim = self.embedding_dim
        groups = 1 if group_size is None else dim // group_size
        self.register_buffer("qweight", torch.zeros(rows, dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.zeros(rows, groups, dtype=scale_dtype, device=device))
        pos = None
        if num_positions is not None:
            pos = torch.zeros(num_positions, dim, dtype=pos_dtype, device=device)
        self.register_buffer("pos_weight", pos)

    def _set_quantized(
        self,
        table: torch.Tensor,
        pos: torch.Tensor | None,
        *,
        group_size: int | None,
        scale_dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        """Quantize the float ``table`` ``[rows, D]`` (:func:`fusedops.quantize_embedding`)
        into ``qweight`` / ``scales`` and copy ``pos`` ``[P, D]`` (its float dtype kept), all on
        ``device``."""
        qweight, scales = quantize_embedding(table, group_size=group_size, scale_dtype=scale_dtype)
        self.qweight = qweight.to(device)
        self.scales = scales.to(device)
        self.pos_weight = None if pos is None else pos.detach().to(device=device, copy=True)

    @property
    def group_size(self) -> int:
        """Features per scale (``D`` for per-row scales)."""
        return self.embedding_dim // self.scales.shape[1]

    def _int8_scheme(self) -> str:
        """``"per-row"`` or ``"group_size=G"``."""
        return "per-row" if self.scales.shape[1] == 1 else f"group_size={self.group_size}"

    def requires_grad_(self, requires_grad: bool = True) -> Int8LookupModule:
        """Only ``requires_grad_(False)`` is allowed: the int8 table has no gradient."""
        if requires_grad:
            raise RuntimeError(
                f"{self._kind} is inference-only: its int8 table has no gradient. Train a float "
                f"{self._float_source} and quantize it with {self._kind}.from_embedding"
            )
        return self

    def config(self) -> dict[str, Any]:
        """Constructor arguments (no device, no process group) that rebuild an empty module
        of the same layout; dtypes as :func:`dtype_name` strings."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "group_size": None if self.scales.shape[1] == 1 else self.group_size,
            "scale_dtype": dtype_name(self.scales.dtype),
            "scale": self.scale,
            "num_positions": None if self.pos_weight is None else self.pos_weight.shape[0],
            "pos_dtype": dtype_name(
                torch.float32 if self.pos_weight is None else self.pos_weight.dtype
            ),
            "sinusoidal": self.sinusoidal,
            "sinusoid_base": self.sinusoid_base,
            "out_dtype": dtype_name(self.out_dtype),
        }

    @staticmethod
    def _parse_config(what: str, config: dict[str, Any]) -> dict[str, Any]:
        """A copy of a :meth:`config` dict with its dtype names parsed (errors name
        ``what: key``)."""
        config = dict(config)
        for key in ("scale_dtype", "pos_dtype", "out_dtype"):
            config[key] = parse_dtype(f"{what}: {key}", config[key])
        return config
