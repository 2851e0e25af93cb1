"""``Int8Embedding``: an inference-only embedding whose table is stored as int8 + scales."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import nn

from fusedops.nn.embedding import FusedEmbedding
from fusedops.ops import check_padding_idx, int8_embedding
from fusedops.quantization import dequantize_embedding, quantize_embedding

_NAME = "Int8Embedding"
_FORMAT = "fusedops.Int8Embedding/1"  # safetensors metadata tag
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str, what: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"{_NAME}: {what} must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


class Int8Embedding(nn.Module):
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

    qweight: torch.Tensor
    scales: torch.Tensor
    pos_weight: torch.Tensor | None

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
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"{_NAME}: need num_embeddings >= 1 and embedding_dim >= 1, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        if group_size is not None and (group_size < 1 or embedding_dim % group_size):
            raise ValueError(
                f"{_NAME}: group_size {group_size} does not divide embedding_dim {embedding_dim}"
            )
        if num_positions is not None and sinusoidal:
            raise ValueError(f"{_NAME}: num_positions and sinusoidal=True are exclusive")
        for what, dtype in (
            ("scale_dtype", scale_dtype),
            ("pos_dtype", pos_dtype),
            ("out_dtype", out_dtype),
        ):
            if dtype not in _DTYPES.values():
                raise TypeError(f"{_NAME}: {what} must be float32/float16/bfloat16, got {dtype}")
        padding_idx = check_padding_idx(_NAME, padding_idx, num_embeddings)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.scale = math.sqrt(embedding_dim) if scale == "sqrt_dim" else float(scale)
        self.sinusoidal = bool(sinusoidal)
        self.sinusoid_base = float(sinusoid_base)
        self.out_dtype = out_dtype
        self.check_indices = bool(check_indices)
        groups = 1 if group_size is None else embedding_dim // group_size
        self.register_buffer(
            "qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device)
        )
        self.register_buffer(
            "scales", torch.zeros(num_embeddings, groups, dtype=scale_dtype, device=device)
        )
        pos = None
        if num_positions is not None:
            pos = torch.zeros(num_positions, embedding_dim, dtype=pos_dtype, device=device)
        self.register_buffer("pos_weight", pos)

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
            out_dtype = weight.dtype if weight.dtype in _DTYPES.values() else torch.float32
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
        qweight, scales = quantize_embedding(weight, group_size=group_size, scale_dtype=scale_dtype)
        module.qweight = qweight
        module.scales = scales
        if pos_weight is not None:
            module.pos_weight = pos_weight.detach().clone()
        return module

    # ----------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------

    @property
    def group_size(self) -> int:
        """Features per scale (``D`` for per-row scales)."""
        return self.embedding_dim // self.scales.shape[1]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """``input_ids`` int [..., S] -> [..., S, D] in ``out_dtype``."""
        return int8_embedding(
            input_ids,
            self.qweight,
            self.scales,
            out_dtype=self.out_dtype,
            scale=self.scale,
            pos_weight=self.pos_weight,
            positions=positions,
            position_offset=position_offset,
            sinusoidal=self.sinusoidal,
            sinusoid_base=self.sinusoid_base,
            padding_idx=self.padding_idx,
            check_indices=self.check_indices,
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

    def requires_grad_(self, requires_grad: bool = True) -> Int8Embedding:
        """Only ``requires_grad_(False)`` is allowed: the int8 table has no gradient."""
        if requires_grad:
            raise RuntimeError(
                f"{_NAME} is inference-only: its int8 table has no gradient. Train a float "
                "fusedops.nn.FusedEmbedding / nn.Embedding and quantize it with "
                f"{_NAME}.from_embedding"
            )
        return self

    # ----------------------------------------------------------------------------------------
    # Serialization
    # ----------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild an empty module of the same layout."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "group_size": None if self.scales.shape[1] == 1 else self.group_size,
            "scale_dtype": _dtype_name(self.scales.dtype),
            "scale": self.scale,
            "num_positions": None if self.pos_weight is None else self.pos_weight.shape[0],
            "pos_dtype": _dtype_name(
                torch.float32 if self.pos_weight is None else self.pos_weight.dtype
            ),
            "sinusoidal": self.sinusoidal,
            "sinusoid_base": self.sinusoid_base,
            "out_dtype": _dtype_name(self.out_dtype),
        }

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
        config = json.loads(metadata["config"])
        for key in ("scale_dtype", "pos_dtype", "out_dtype"):
            config[key] = _parse_dtype(config[key], key)
        module = cls(**config, device="meta")
        state = load_file(os.fspath(path), device=str(device))
        module.load_state_dict(state, strict=True, assign=True)
        return module

    def extra_repr(self) -> str:
        parts = [f"{self.num_embeddings}, {self.embedding_dim}"]
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx}")
        groups = self.scales.shape[1]
        parts.append("per-row" if groups == 1 else f"group_size={self.group_size}")
        parts.append(f"scale_dtype={_dtype_name(self.scales.dtype)}")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.pos_weight is not None:
            parts.append(f"num_positions={self.pos_weight.shape[0]}")
        if self.sinusoidal:
            parts.append(f"sinusoidal=True, base={self.sinusoid_base:g}")
        parts.append(f"out_dtype={_dtype_name(self.out_dtype)}")
        if not self.check_indices:
            parts.append("check_indices=False")
        return ", ".join(parts)
