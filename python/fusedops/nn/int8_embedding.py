"""``Int8Embedding``: an inference-only embedding whose table is stored as int8 + scales."""

from __future__ import annotations

import json
import operator
import os
from typing import Any

import torch
from torch import nn

from fusedops.nn._lookup_module import Int8LookupModule, default_out_dtype, dtype_name
from fusedops.nn.embedding import FusedEmbedding
from fusedops.ops import int8_embedding
from fusedops.ops._common import check_real_scalar
from fusedops.quantization import dequantize_embedding

_NAME = "Int8Embedding"
_FORMAT = "fusedops.Int8Embedding/1"  # safetensors metadata tag


def _check_int(name: str, value: object, minimum: int, *, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (Python or NumPy integers; None when ``optional``):
    TypeError for a non-integer (a float such as ``4.0``, a bool), ValueError below the
    minimum, both naming the argument."""
    if value is None and optional:
        return None
    try:
        if isinstance(value, bool):  # an int subclass, but never a size
            raise TypeError
        number = operator.index(value)
    except TypeError:
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{_NAME}: {name} must be {kind}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{_NAME}: {name} must be >= {minimum}, got {number}")
    return number


class Int8Embedding(Int8LookupModule):
    """Embedding lookup from an int8 table with per-row or per-group scales (inference only).

    ``forward(input_ids [..., S]) -> [..., S, D]`` in ``out_dtype`` equals
    ``dequantize()[input_ids] * scale + P[pos]``, computed by :func:`fusedops.int8_embedding`
    in one pass (C++ kernel on CPU, CUDA kernel on GPU). ``P`` is the learned positional table
    ``pos_weight`` (kept in float), the in-kernel sinusoid, or nothing, as in
    :class:`fusedops.nn.FusedEmbedding`.

    Storage (buffers, so ``state_dict``/``.to(device)`` carry them; no parameters):
    ``qweight`` int8 ``[V, D]``, ``scales`` ``[V, G]`` (``G = D // group_size``, 1 per-row),
    ``pos_weight`` ``[P, D]`` float or None. Build one from a trained table with
    :meth:`from_embedding`; the constructor makes an all-zero table to load a state dict into.

    Inference-only semantics: nothing here is trainable. The module works inside a model that
    trains other layers (the embedding acts frozen and its output needs no grad), but
    ``requires_grad_(True)`` raises, and so does a forward after a buffer was made to require
    grad. To fine-tune the table, train a float :class:`FusedEmbedding` and quantize it again.

    Args:
        num_embeddings: V.
        embedding_dim: D.
        padding_idx: kept for ``nn.Embedding`` compatibility (no effect on the forward).
        group_size: features per scale (must divide D); None: one scale per row.
        scale_dtype: dtype of ``scales`` (fp32/fp16/bf16).
        scale: multiplier of the token rows; ``"sqrt_dim"`` for ``sqrt(D)``.
        num_positions: rows of a learned positional table, or None.
        pos_dtype: dtype of that table.
        sinusoidal: add the fixed sinusoid instead (exclusive with ``num_positions``).
        sinusoid_base: its frequency base.
        out_dtype: dtype of the output (fp32/fp16/bf16).
        check_indices: range-check ids and positions in ``forward`` (``IndexError``); with
            ``False`` a CUDA forward never syncs the device (CUDA-graph capturable) and masks
            out-of-range rows instead, see :func:`fusedops.int8_embedding`. A runtime setting
            (an attribute, not saved by :meth:`save_safetensors`).
        device: where the buffers live.
    """

    _kind = _NAME
    _float_source = "fusedops.nn.FusedEmbedding / nn.Embedding"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
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
        num_embeddings = _check_int("num_embeddings", num_embeddings, 1)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        group_size = _check_int("group_size", group_size, 1, optional=True)
        num_positions = _check_int("num_positions", num_positions, 0, optional=True)
        if group_size is not None and embedding_dim % group_size:
            raise ValueError(
                f"{_NAME}: group_size {group_size} does not divide embedding_dim {embedding_dim}"
            )
        if isinstance(scale, str) and scale != "sqrt_dim":
            raise ValueError(f'{_NAME}: scale must be a number or "sqrt_dim", got {scale!r}')
        if scale != "sqrt_dim":
            scale = check_real_scalar(_NAME, "scale", scale)
        sinusoid_base = check_real_scalar(_NAME, "sinusoid_base", sinusoid_base, positive=True)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self._init_int8(
            num_embeddings,
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

    # ----------------------------------------------------------------------------------------
    # Construction from a float embedding
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding | FusedEmbedding,
        *,
        group_size: int | None = None,
        scale_dtype: torch.dtype = torch.float32,
        out_dtype: torch.dtype | None = None,
        check_indices: bool = True,
    ) -> Int8Embedding:
        """Quantize a trained ``nn.Embedding`` or :class:`FusedEmbedding`.

        The table is quantized with :func:`fusedops.quantize_embedding` (absmax / 127 per row
        or per group). From a ``FusedEmbedding`` the ``scale``, the sinusoid settings and a
        learned positional table (copied, kept in its float dtype) carry over. ``out_dtype``
        defaults to the source table's dtype; ``check_indices`` is the constructor's. The
        result is a snapshot on the source's device:
        later changes to the source do not reach it.
        """
        if not isinstance(embedding, (nn.Embedding, FusedEmbedding)):
            raise TypeError(
                f"{_NAME}.from_embedding: expected nn.Embedding or fusedops.nn.FusedEmbedding, "
                f"got {type(embedding).__name__}"
            )
        if isinstance(embedding, nn.Embedding) and embedding.max_norm is not None:
            raise ValueError(
                f"{_NAME}.from_embedding: max_norm={embedding.max_norm} renormalizes rows at "
                "lookup time, which a quantized table cannot do"
            )
        weight = embedding.weight.detach()  # [V, D]
        if out_dtype is None:
            out_dtype = default_out_dtype(weight.dtype)
        fused = isinstance(embedding, FusedEmbedding)
        pos_weight = embedding.pos_weight if fused else None
        module = cls(
            embedding.num_embeddings,
            embedding.embedding_dim,
            embedding.padding_idx,
            group_size=group_size,
            scale_dtype=scale_dtype,
            scale=embedding.scale if fused else 1.0,
            num_positions=None if pos_weight is None else pos_weight.shape[0],
            pos_dtype=torch.float32 if pos_weight is None else pos_weight.dtype,
            sinusoidal=embedding.sinusoidal if fused else False,
            sinusoid_base=embedding.sinusoid_base if fused else 10000.0,
            out_dtype=out_dtype,
            check_indices=check_indices,
            device=weight.device,
        )
        module._set_quantized(
            weight, pos_weight, group_size=group_size, scale_dtype=scale_dtype, device=weight.device
        )
        return module

    # ----------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------

    def _lookup(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        """:func:`fusedops.int8_embedding` of ``qweight`` / ``scales``: [..., S, D] in
        ``out_dtype``."""
        return int8_embedding(
            input_ids,
            self.qweight,
            self.scales,
            out_dtype=self.out_dtype,
            check_indices=self.check_indices,
            **options,
        )

    def dequantize(self) -> torch.Tensor:
        """The dequantized token table ``[V, D]`` fp32 (``q * scale`` per element)."""
        return dequantize_embedding(self.qweight, self.scales)

    def memory_bytes(self) -> int:
        """Bytes of the stored tensors: ``qweight`` + ``scales`` (+ ``pos_weight``)."""
        tensors = [self.qweight, self.scales]
        if self.pos_weight is not None:
            tensors.append(self.pos_weight)
        return sum(t.numel() * t.element_size() for t in tensors)

    # ----------------------------------------------------------------------------------------
    # Serialization
    # ----------------------------------------------------------------------------------------

    def save_safetensors(self, path: str | os.PathLike[str]) -> None:
        """Write the buffers and :meth:`config` (as metadata) to a ``.safetensors`` file."""
        from safetensors.torch import save_file

        tensors = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        metadata = {"format": "pt", "fusedops": _FORMAT, "config": json.dumps(self.config())}
        save_file(tensors, os.fspath(path), metadata=metadata)

    @classmethod
    def load_safetensors(
        cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
    ) -> Int8Embedding:
        """Rebuild a module written by :meth:`save_safetensors` (tensors bit-exact)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(os.fspath(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        if metadata.get("fusedops") != _FORMAT or "config" not in metadata:
            raise ValueError(
                f"{_NAME}.load_safetensors: {os.fspath(path)} was not written by "
                f"{_NAME}.save_safetensors (metadata fusedops={metadata.get('fusedops')!r})"
            )
        config = cls._parse_config(_NAME, json.loads(metadata["config"]))
        module = cls(**config, device="meta")
        state = load_file(os.fspath(path), device=str(device))
        module.load_state_dict(state, strict=True, assign=True)
        return module

    def extra_repr(self) -> str:
        tail = [f"out_dtype={dtype_name(self.out_dtype)}"]
        if not self.check_indices:
            tail.append("check_indices=False")
        return self._repr(
            [f"{self.num_embeddings}, {self.embedding_dim}"],
            [self._int8_scheme(), f"scale_dtype={dtype_name(self.scales.dtype)}"],
            tail,
        )
