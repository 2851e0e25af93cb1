"""INT8 embedding: validation and dispatch of the fused dequantizing lookup.

``int8_embedding`` gathers int8 rows, dequantizes them with their per-row or per-group scales,
multiplies by ``scale`` and adds the positional term: exactly ``fused_embedding`` applied to the
dequantized table (see :func:`fusedops.reference.int8_embedding`).

Backends (``fusedops.use_backend`` / ``$FUSEDOPS_BACKEND``):

* ``auto`` / ``cpp``: the compiled extension's op ``fusedops::int8_embedding_fwd``, on CPU
  *and CUDA* tensors. Unlike the other ops (``auto`` picks Triton on CUDA), this op has no
  Triton kernel: its CUDA kernel is part of ``fusedops._C`` (built when CUDA is available), so
  CUDA tensors go to the extension too. The extension checks ids and positions itself (on
  CUDA only with ``check_indices``; without, it masks them and the call never syncs). While a
  CUDA graph is being captured the op gets ``check_indices=False`` (a capture may not sync:
  :func:`~fusedops.ops._common.host_index_checks`).
* ``reference``: plain PyTorch (:func:`fusedops.reference.int8_embedding`); with
  ``check_indices`` the ids and positions are checked here.
* ``triton``: a ``RuntimeError`` (there is no Triton kernel for this op).

The op is inference-only: the int8 table has no gradient, and asking for one through
``scales`` or ``pos_weight`` raises instead of silently returning a graph without it.

With ``vocab_start`` the tables are one shard of a vocabulary split across ranks: the kernels
(CPU and CUDA) mask the other shards' ids themselves, and only the positions are range-checked.
"""

from __future__ import annotations

import torch

from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.ops._common import (
    FLOAT_DTYPES,
    check_dtype,
    check_real_scalar,
    check_same_device,
    check_tensor,
    host_index_checks,
)
from fusedops.ops._dispatch import needs_grad
from fusedops.ops._lookup_checks import (
    check_input_ids,
    check_padding_idx,
    check_positional,
    check_ranges,
    check_scale_and_offset,
    check_vocab_start,
    positional_mode,
)
from fusedops.quantization import quantize_embedding

__all__ = ["int8_embedding", "quantize_embedding"]

OP = "int8_embedding"
BACKENDS = OpBackends(
    triton=False, cpp_devices=("cpu", "cuda"), cpp_op="fusedops::int8_embedding_fwd"
)


def check_int8_qweight(op: str, qweight: object, scales: object) -> None:
    """``qweight`` and ``scales`` are tensors and ``qweight`` is int8 (its shape is the
    caller's to check, then :func:`check_int8_scales`)."""
    check_tensor(op, "qweight", qweight)
    check_tensor(op, "scales", scales)
    if qweight.dtype != torch.int8:
        raise TypeError(
            f"{op}: qweight must be int8 (from fusedops.quantize_embedding), got {qweight.dtype}"
        )


def check_int8_scales(op: str, qweight: torch.Tensor, scales: object, rows_name: str = "V") -> None:
    """``scales``: fp32/fp16/bf16 ``[rows, G]`` for a 2-D ``qweight`` ``[rows, D]``, with
    ``G >= 1`` dividing ``D`` (or ``G = 0`` for ``D = 0``: what :func:`quantize_embedding`
    gives an empty row with a ``group_size``), on ``qweight``'s device. ``rows_name`` names
    ``rows`` in messages."""
    check_dtype(op, "scales", scales, FLOAT_DTYPES)
    rows, dim = qweight.shape
    min_groups = 0 if dim == 0 else 1
    if scales.dim() != 2 or scales.shape[0] != rows or scales.shape[1] < min_groups:
        raise ValueError(
            f"{op}: scales must be [{rows_name}, G] = [{rows}, G] to match qweight "
            f"[{rows}, {dim}], got shape {tuple(scales.shape)}"
        )
    if scales.shape[1] and dim % scales.shape[1] != 0:
        raise ValueError(
            f"{op}: scales has {scales.shape[1]} groups per row, which does not divide D={dim}"
        )
    check_same_device(op, "scales", scales, qweight.device)


def check_inference_only(
    op: str, scales: torch.Tensor, pos_weight: torch.Tensor | None, remedy: str
) -> None:
    """RuntimeError when ``scales`` or ``pos_weight`` requires grad (the INT8 lookup has no
    backward); ``remedy`` ends the message's advice."""
    if needs_grad(scales, pos_weight):
        which = "scales" if scales.requires_grad else "pos_weight"
        raise RuntimeError(
            f"{op} is inference-only: {which} requires grad but the INT8 lookup has no "
            f"backward; call it under torch.no_grad() / torch.inference_mode(){remedy}"
        )


def _check_table(qweight, scales) -> None:
    check_int8_qweight(OP, qweight, scales)
    if qweight.dim() != 2:
        raise ValueError(f"{OP}: qweight must be [V, D], got shape {tuple(qweight.shape)}")
    check_int8_scales(OP, qweight, scales)


def _validate(
    input_ids,
    qweight,
    scales,
    out_dtype,
    scale,
    pos_weight,
    positions,
    position_offset,
    sinusoidal,
    sinusoid_base,
    padding_idx,
):
    """Check user arguments; return ``(input_ids, qweight, scales, pos_weight, positions,
    scale, sinusoid_base)`` normalised: contiguous tensors, positions expanded to the ids'
    shape, the scalars as Python floats (symbolic ones under ``torch.compile`` pass through)."""
    _check_table(qweight, scales)
    device = qweight.device
    check_input_ids(OP, input_ids, device)
    dim = qweight.shape[1]
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{OP}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    check_scale_and_offset(OP, scale, position_offset)
    scale = check_real_scalar(OP, "scale", scale)
    if pos_weight is not None:
        check_tensor(OP, "pos_weight", pos_weight)
        check_dtype(OP, "pos_weight", pos_weight, FLOAT_DTYPES)
    positions = check_positional(
        OP, input_ids, "qweight", dim, device, pos_weight, positions, sinusoidal, sinusoid_base
    )
    # Checked > 0 by check_positional; unused (any placeholder) without the sinusoid.
    sinusoid_base = check_real_scalar(OP, "sinusoid_base", sinusoid_base) if sinusoidal else 1e4
    check_padding_idx(OP, padding_idx, qweight.shape[0])
    check_inference_only(
        OP,
        scales,
        pos_weight,
        ", detach the tensor, or train a float table (fusedops.nn.FusedEmbedding) and "
        "quantize it after",
    )
    if pos_weight is not None:
        pos_weight = pos_weight.contiguous()
    return (
        input_ids.contiguous(),
        qweight.contiguous(),
        scales.contiguous(),
        pos_weight,
        positions,
        scale,
        sinusoid_base,
    )


def int8_embedding(
    input_ids: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
    check_indices: bool = True,
    vocab_start: int | None = None,
) -> torch.Tensor:
    """Fused INT8 embedding lookup: gather int8 rows, dequantize, scale, add positions.

    ``out[..., s, :] = (q[id] * scales[id]) * scale + P[pos(s)]`` computed in fp32 (the
    dequantized value rounded once to fp32, then multiply and add as ``fused_embedding``) and
    rounded once to ``out_dtype``. ``P`` is ``pos_weight`` (learned), the in-kernel sinusoid
    (``sinusoidal=True``) or absent; ``pos(s) = positions[..., s]`` if given, else
    ``position_offset + s``.

    Args:
        input_ids: int32/int64 ``[..., S]``, sequence last.
        qweight: int8 ``[V, D]`` from :func:`quantize_embedding`.
        scales: ``[V, G]`` fp32/fp16/bf16, ``G`` dividing ``D`` (``G = 1``: per-row).
        out_dtype: float32, float16 or bfloat16.
        scale: multiplier of the token rows (e.g. ``sqrt(D)``).
        pos_weight: optional ``[P, D]`` fp32/fp16/bf16 learned positional table (read as fp32).
        positions: optional int ``[..., S]`` positions, broadcastable to ``input_ids``.
        position_offset: first position when ``positions`` is None.
        sinusoidal: add the sinusoid of :func:`fusedops.reference.sinusoid_table`, in fp32
            (within 1.5e-7 of sin/cos of the fp32 angle; the same bits on CPU and CUDA).
        sinusoid_base: its frequency base.
        padding_idx: accepted for ``nn.Embedding`` compatibility (forward unchanged).
        check_indices: range-check ids and positions (raises ``IndexError``). On CUDA the
            check reads the ids on the host (a device sync); with ``False`` the call is
            sync-free, and out-of-range ids and positions are masked instead (their token or
            positional term reads as zero). Inside a CUDA graph capture the check is skipped
            (as with ``False``): the call is capturable either way. On CPU the kernel always
            checks.
        vocab_start: ``qweight``/``scales`` are the shard of rows
            ``[vocab_start, vocab_start + V)`` of a larger vocabulary: id ``t`` reads row
            ``t - vocab_start`` and ids outside the shard contribute no token term (only the
            positional one). The ids are then not range-checked (the caller checks them
            against the whole vocabulary); positions still are. None: the whole table.
    Returns:
        ``[..., S, D]`` in ``out_dtype`` on ``qweight``'s device.
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; IndexError for ids
        or positions out of range; RuntimeError for the ``triton`` backend, a missing kernel,
        or a request for gradients (inference-only).
    """
    input_ids, qweight, scales, pos_weight, positions, scale, sinusoid_base = _validate(
        input_ids,
        qweight,
        scales,
        out_dtype,
        scale,
        pos_weight,
        positions,
        position_offset,
        sinusoidal,
        sinusoid_base,
        padding_idx,
    )
    vocab_start = check_vocab_start(OP, vocab_start)
    mode = positional_mode(pos_weight, sinusoidal)
    backend = resolve_backend(OP, qweight.device, BACKENDS)
    check_indices = host_index_checks(check_indices, qweight.device)
    if backend == "reference":
        if check_indices:
            check_ranges(
                OP,
                input_ids,
                qweight.shape[0],
                pos_weight,
                positions,
                position_offset,
                mode,
                vocab_start,
            )
        return reference.int8_embedding(
            input_ids,
            qweight,
            scales,
            out_dtype=out_dtype,
            scale=scale,
            pos_weight=pos_weight,
            positions=positions,
            position_offset=position_offset,
            sinusoidal=sinusoidal,
            sinusoid_base=sinusoid_base,
            vocab_start=vocab_start,
        )
    return torch.ops.fusedops.int8_embedding_fwd.default(
        input_ids,
        qweight,
        scales,
        scale,
        pos_weight,
        positions,
        position_offset,
        mode,
        sinusoid_base,
        out_dtype,
        check_indices,
        vocab_start,
    )
