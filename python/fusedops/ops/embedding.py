"""The fused embedding as ``torch.library`` custom ops: validation, dispatch and autograd.

``fused_embedding`` computes ``out[..., s, :] = weight[input_ids[..., s]] * scale + P[pos(s)]``
where ``P`` is a learned table, an in-kernel sinusoid, or absent. The custom ops
``fusedops::fused_embedding`` and ``fusedops::fused_embedding_backward`` run the Triton kernels
(CUDA, or CPU through Triton's interpreter) or the C++ kernels of ``fusedops._C`` (CPU); a call
that needs no gradient runs the kernel directly. The ``reference`` backend runs plain PyTorch.
"""

from __future__ import annotations

import torch

from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.constants import POS_LEARNED
from fusedops.ops._common import (
    FLOAT_DTYPES,
    check_dtype,
    check_tensor,
    empty_output,
    unit_stride,
)
from fusedops.ops._dispatch import autograd_function, implementation, needs_grad, run
from fusedops.ops._lookup_checks import (
    check_input_ids,
    check_padding_idx,
    check_positional,
    check_ranges,
    check_scale_and_offset,
    positional_mode,
)

OP = "fused_embedding"
BACKENDS = OpBackends(cpp_op="fusedops::cpp_embedding_fwd")


# ------------------------------------------------------------------------------------------
# Implementations per backend (validated, normalised arguments)
# ------------------------------------------------------------------------------------------


def _forward_triton(ids, weight, pos_weight, positions, scale, offset, mode, base, check):
    from fusedops.kernels.embedding import embedding_forward

    if check:
        check_ranges(OP, ids, weight.shape[0], pos_weight, positions, offset, mode)
    out = empty_output((*ids.shape, weight.shape[1]), weight.dtype, weight.device)
    embedding_forward(
        ids.reshape(-1),
        weight,
        out.view(-1, weight.shape[1]),
        seq_len=ids.shape[-1],
        scale=scale,
        pos_mode=mode,
        pos_weight=pos_weight,
        positions=None if positions is None else positions.reshape(-1),
        position_offset=offset,
        sinusoid_base=base,
    )
    return out


def _forward_cpp(ids, weight, pos_weight, positions, scale, offset, mode, base, check):
    # The C++ kernel range-checks ids and positions itself (cheap on CPU: no device sync).
    return torch.ops.fusedops.cpp_embedding_fwd.default(
        ids, weight, scale, pos_weight, positions, offset, mode, base
    )


def _backward_triton(grad_out, indices, num_rows, scale, padding_idx, deterministic):
    from fusedops.kernels.embedding import embedding_backward

    dim = grad_out.shape[-1]
    out = empty_output((num_rows, dim), grad_out.dtype, grad_out.device)
    return embedding_backward(
        unit_stride(grad_out.reshape(-1, dim)),  # [N, D]
        indices.reshape(-1).contiguous(),
        out,
        scale=scale,
        padding_idx=padding_idx,
        deterministic=deterministic,
    )


def _backward_cpp(grad_out, indices, num_rows, scale, padding_idx, deterministic):
    # Always deterministic: each row sums its tokens in order.
    return torch.ops.fusedops.cpp_embedding_bwd.default(
        grad_out.contiguous(), indices.contiguous(), num_rows, scale, padding_idx
    )


_FORWARD = {"cpp": _forward_cpp, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "triton": _backward_triton}


# ------------------------------------------------------------------------------------------
# Custom ops and autograd
# ------------------------------------------------------------------------------------------


def _fused_embedding(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    scale: float,
    position_offset: int,
    pos_mode: int,
    sinusoid_base: float,
    padding_idx: int,
    deterministic: bool,
    check_indices: bool,
    backend: str,
) -> torch.Tensor:
    """Forward of the fused embedding on validated inputs.

    ``input_ids`` [..., S] contiguous int32/int64; ``weight`` [V, D] (stride(-1) == 1);
    ``pos_weight`` [P, D] or None; ``positions`` contiguous, shaped like ``input_ids``, or None;
    ``backend`` is ``"triton"`` or ``"cpp"``. Returns [..., S, D] in ``weight.dtype``.
    ``padding_idx`` (-1: none) and ``deterministic`` only shape the backward.
    """
    return implementation(OP, _FORWARD, backend)(
        input_ids,
        weight,
        pos_weight,
        positions,
        scale,
        position_offset,
        pos_mode,
        sinusoid_base,
        check_indices,
    )


def _fused_embedding_backward(
    grad_out: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    scale: float,
    padding_idx: int,
    deterministic: bool,
    backend: str,
) -> torch.Tensor:
    """Gradient of a ``[num_rows, D]`` table gathered by ``indices``.

    ``grad_out`` [..., D] (fp32/fp16/bf16), ``indices`` int [...] with one index per row of
    ``grad_out``; returns ``scale * sum`` of the rows of each index, in ``grad_out.dtype``,
    with row ``padding_idx`` (``-1``: none) left zero. Deterministic sums each row in token
    order in fp32; the C++ kernel is always deterministic.
    """
    return implementation(OP, _BACKWARD, backend)(
        grad_out, indices, num_rows, scale, padding_idx, deterministic
    )


fused_embedding_op = torch.library.custom_op(
    "fusedops::fused_embedding", _fused_embedding, mutates_args=()
)
fused_embedding_backward_op = torch.library.custom_op(
    "fusedops::fused_embedding_backward", _fused_embedding_backward, mutates_args=()
)


@fused_embedding_op.register_fake
def _(input_ids, weight, *args):
    return weight.new_empty((*input_ids.shape, weight.shape[1]))


@fused_embedding_backward_op.register_fake
def _(grad_out, indices, num_rows, *args):
    return grad_out.new_empty((num_rows, grad_out.shape[-1]))


def _setup_context(ctx, inputs, output):
    ids, weight, pos_weight, positions, scale, offset, mode, _base, padding_idx, det, _check, be = (
        inputs
    )
    ctx.save_for_backward(ids, positions)
    ctx.num_rows = weight.shape[0]
    ctx.num_positions = pos_weight.shape[0] if pos_weight is not None else 0
    ctx.scale, ctx.offset, ctx.mode = scale, offset, mode
    ctx.padding_idx, ctx.deterministic, ctx.backend = padding_idx, det, be


def _table_grad(grad, indices, num_rows, scale, padding_idx, ctx):
    args = (grad, indices, num_rows, scale, padding_idx, ctx.deterministic, ctx.backend)
    grad_mode = torch.is_grad_enabled()  # create_graph: the op raises (no double backward)
    return run(fused_embedding_backward_op, _fused_embedding_backward, grad_mode, *args)


def _backward(ctx, grad):
    # grad: [..., S, D] in weight dtype
    ids, positions = ctx.saved_tensors
    grad_weight = grad_pos = None
    if ctx.needs_input_grad[1]:
        grad_weight = _table_grad(grad, ids, ctx.num_rows, ctx.scale, ctx.padding_idx, ctx)
    if ctx.mode == POS_LEARNED and ctx.needs_input_grad[2]:
        if positions is None:  # pos(s) = offset + s for every batch row
            seq = ids.shape[-1]
            positions = torch.arange(ctx.offset, ctx.offset + seq, device=ids.device)
            positions = positions.expand(ids.shape)
        grad_pos = _table_grad(grad, positions, ctx.num_positions, 1.0, -1, ctx)
    return None, grad_weight, grad_pos, *([None] * 9)


fused_embedding_op.register_autograd(_backward, setup_context=_setup_context)
_FusedEmbedding = autograd_function("_FusedEmbedding", _fused_embedding, _setup_context, _backward)


# ------------------------------------------------------------------------------------------
# Validation and the public function
# ------------------------------------------------------------------------------------------


def _validate(
    input_ids,
    weight,
    scale,
    pos_weight,
    positions,
    position_offset,
    sinusoidal,
    sinusoid_base,
    padding_idx,
):
    """Check user arguments; return ``(input_ids, weight, pos_weight, positions, padding_idx)``
    normalised: contiguous ids, tables with ``stride(-1) == 1``, positions expanded to the ids'
    shape, ``padding_idx`` in ``[0, V)``."""
    check_tensor(OP, "weight", weight)
    check_dtype(OP, "weight", weight, FLOAT_DTYPES)
    if weight.dim() != 2:
        raise ValueError(f"{OP}: weight must be [V, D], got shape {tuple(weight.shape)}")
    device = weight.device
    check_input_ids(OP, input_ids, device)
    check_scale_and_offset(OP, scale, position_offset)
    positions = check_positional(
        OP,
        input_ids,
        "weight",
        weight.shape[1],
        device,
        pos_weight,
        positions,
        sinusoidal,
        sinusoid_base,
    )
    if pos_weight is not None and pos_weight.dtype != weight.dtype:
        raise TypeError(
            f"{OP}: pos_weight dtype {pos_weight.dtype} differs from weight dtype {weight.dtype}"
        )
    padding_idx = check_padding_idx(OP, padding_idx, weight.shape[0])
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    if pos_weight is not None and pos_weight.stride(-1) != 1:
        pos_weight = pos_weight.contiguous()
    return input_ids.contiguous(), weight, pos_weight, positions, padding_idx


def fused_embedding(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
    deterministic: bool = True,
    check_indices: bool = True,
) -> torch.Tensor:
    """Token gather, scale and positional add in one pass.

    ``out[..., s, :] = weight[input_ids[..., s]] * scale + P[pos(s)]`` where ``P`` is
    ``pos_weight`` (a learned table), the sinusoid of Vaswani et al. computed inside the kernel
    (``sinusoidal=True``: sin on even, cos on odd features, see
    :func:`fusedops.reference.sinusoid_table`), or absent; ``pos(s) = positions[..., s]`` when
    given, else ``position_offset + s``.

    Args:
        input_ids: int32/int64 ``[..., S]``, any leading shape, sequence last.
        weight: ``[V, D]`` fp32/fp16/bf16 token table.
        scale: multiplier of the token rows (e.g. ``sqrt(D)``).
        pos_weight: optional ``[P, D]`` learned positional table, same dtype as ``weight``.
        positions: optional int ``[..., S]`` (broadcastable to ``input_ids``) positions.
        position_offset: first position when ``positions`` is None (e.g. KV-cache length).
        sinusoidal: add the in-kernel sinusoid instead of a learned table.
        sinusoid_base: sinusoid frequency base.
        padding_idx: table row that receives no gradient (``nn.Embedding`` semantics).
        deterministic: backward sums duplicates in a fixed order (bit-identical run to run);
            ``False`` uses fp32 atomics on the Triton path (the C++ path is always
            deterministic).
        check_indices: range-check ids and positions (raises ``IndexError``). On CUDA this
            syncs the device; with ``False`` out-of-range rows are masked (the token term
            reads as zero) instead of read out of bounds. The C++ kernel always checks.
    Returns:
        ``[..., S, D]`` in ``weight.dtype`` (arithmetic in fp32).
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; IndexError for ids
        or positions out of range; RuntimeError if the requested backend cannot run.
    """
    input_ids, weight, pos_weight, positions, padding_idx = _validate(
        input_ids,
        weight,
        scale,
        pos_weight,
        positions,
        position_offset,
        sinusoidal,
        sinusoid_base,
        padding_idx,
    )
    backend = resolve_backend(OP, weight.device, BACKENDS)
    mode = positional_mode(pos_weight, sinusoidal)
    if backend == "reference":
        if check_indices:
            check_ranges(
                OP, input_ids, weight.shape[0], pos_weight, positions, position_offset, mode
            )
        return reference.fused_embedding(
            input_ids,
            weight,
            scale=scale,
            pos_weight=pos_weight,
            positions=positions,
            position_offset=position_offset,
            sinusoidal=sinusoidal,
            sinusoid_base=sinusoid_base,
            padding_idx=padding_idx,
        )
    return run(
        fused_embedding_op,
        _fused_embedding,
        needs_grad(weight, pos_weight),
        input_ids,
        weight,
        pos_weight,
        positions,
        float(scale),
        position_offset,
        mode,
        float(sinusoid_base),
        -1 if padding_idx is None else padding_idx,
        deterministic,
        check_indices,
        backend,
        autograd=_FusedEmbedding,
    )
