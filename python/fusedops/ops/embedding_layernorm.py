"""BERT's embeddings + LayerNorm as ``torch.library`` custom ops: validation, dispatch, autograd.

``fused_embedding_layernorm`` computes
``LayerNorm(weight[ids] + type_weight[tt] + pos_weight[pos]) * ln_weight + ln_bias`` in one
pass. The custom ops ``fusedops::fused_embedding_layernorm`` (returns the output and the per-token
mean and rstd the backward reads) and ``fusedops::fused_embedding_layernorm_backward`` run the
Triton kernels (CUDA, or CPU through Triton's interpreter) or the C++ kernels of
``fusedops._C`` (CPU); a call that needs no gradient runs the kernel directly. The
``reference`` backend runs plain PyTorch.
"""

from __future__ import annotations

import torch

from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.ops._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_dtype,
    check_index_range,
    check_real_scalar,
    check_same_device,
    check_tensor,
    empty_output,
    forbid_double_backward,
    host_index_checks,
    unit_stride,
)
from fusedops.ops._dispatch import autograd_function, implementation, needs_grad, run
from fusedops.ops._lookup_checks import (
    check_input_ids,
    check_padding_idx,
    check_position_range,
    check_scale_and_offset,
)

OP = "fused_embedding_layernorm"
BACKENDS = OpBackends(cpp_op="fusedops::cpp_embedding_layernorm_fwd")


def _check_ranges(ids, weight, pos_weight, positions, offset, type_weight, type_ids) -> None:
    """Host-side index checks (a device sync on CUDA)."""
    check_index_range(OP, "input_ids contains id", ids, 0, weight.shape[0])
    if pos_weight is not None:
        check_position_range(OP, ids, positions, offset, pos_weight.shape[0])
    if type_ids is not None:
        check_index_range(OP, "token_type_ids contains id", type_ids, 0, type_weight.shape[0])


# ------------------------------------------------------------------------------------------
# Implementations per backend (validated, normalised arguments)
# ------------------------------------------------------------------------------------------


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1)


def _forward_triton(
    ids, weight, pos_weight, positions, offset, type_weight, type_ids, g, b, eps, check
):
    from fusedops.kernels.embedding_layernorm import check_dim, embedding_layernorm_forward

    check_dim(OP, weight.shape[1])
    if host_index_checks(check, ids.device):
        _check_ranges(ids, weight, pos_weight, positions, offset, type_weight, type_ids)
    dim = weight.shape[1]
    out = empty_output((*ids.shape, dim), weight.dtype, weight.device)  # [..., S, D]
    mean = empty_output(ids.shape, torch.float32, weight.device)  # [..., S]
    rstd = empty_output(ids.shape, torch.float32, weight.device)  # [..., S]
    embedding_layernorm_forward(
        ids.reshape(-1),
        weight,
        out.view(-1, dim),
        mean.view(-1),
        rstd.view(-1),
        seq_len=ids.shape[-1],
        pos_weight=pos_weight,
        positions=_flat(positions),
        position_offset=offset,
        type_weight=type_weight,
        type_ids=_flat(type_ids),
        ln_weight=g,
        ln_bias=b,
        eps=eps,
    )
    return out, mean, rstd


def _forward_cpp(
    ids, weight, pos_weight, positions, offset, type_weight, type_ids, g, b, eps, check
):
    # The C++ kernel range-checks every index itself (cheap on CPU: no device sync).
    return torch.ops.fusedops.cpp_embedding_layernorm_fwd.default(
        ids, weight, pos_weight, positions, offset, type_weight, type_ids, g, b, eps
    )


def _backward_triton(
    grad,
    ids,
    weight,
    pos_weight,
    positions,
    offset,
    type_weight,
    type_ids,
    g,
    b,
    mean,
    rstd,
    padding_idx,
    needs,
):
    from fusedops.kernels.embedding_layernorm import embedding_layernorm_backward

    dim = weight.shape[1]
    grads = embedding_layernorm_backward(
        unit_stride(grad.reshape(-1, dim)),  # [N, D]
        ids.reshape(-1),
        weight,
        mean.reshape(-1).contiguous(),
        rstd.reshape(-1).contiguous(),
        seq_len=ids.shape[-1],
        pos_weight=pos_weight,
        positions=_flat(positions),
        position_offset=offset,
        type_weight=type_weight,
        type_ids=_flat(type_ids),
        ln_weight=g,
        ln_bias=b,
        padding_idx=padding_idx,
        needs=tuple(bool(n) for n in needs),
    )
    return tuple(weight.new_empty(0) if t is None else t for t in grads)


def _backward_cpp(
    grad,
    ids,
    weight,
    pos_weight,
    positions,
    offset,
    type_weight,
    type_ids,
    g,
    b,
    mean,
    rstd,
    padding_idx,
    needs,
):
    # Always deterministic: fixed-order sums in fp32.
    return torch.ops.fusedops.cpp_embedding_layernorm_bwd.default(
        grad,
        ids,
        weight,
        pos_weight,
        positions,
        offset,
        type_weight,
        type_ids,
        g,
        b,
        mean,
        rstd,
        padding_idx,
        needs,
    )


_FORWARD = {"cpp": _forward_cpp, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "triton": _backward_triton}


# ------------------------------------------------------------------------------------------
# Custom ops and autograd
# ------------------------------------------------------------------------------------------


def _fused_embedding_layernorm(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    position_offset: int,
    type_weight: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    padding_idx: int,
    check_indices: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward on validated inputs: ``(out [..., S, D], mean [..., S], rstd [..., S])``.

    ``input_ids`` contiguous int32/int64 ``[..., S]``; ``positions`` / ``token_type_ids``
    contiguous, shaped like ``input_ids`` (same dtype), or None; tables ``[rows, D]`` and
    ``ln_weight`` / ``ln_bias`` ``[D]`` in ``weight.dtype`` with ``stride(-1) == 1``;
    ``backend`` is ``"triton"`` or ``"cpp"``. ``mean`` and ``rstd`` are fp32. ``padding_idx``
    (-1: none) only shapes the backward.
    """
    return implementation(OP, _FORWARD, backend)(
        input_ids,
        weight,
        pos_weight,
        positions,
        position_offset,
        type_weight,
        token_type_ids,
        ln_weight,
        ln_bias,
        eps,
        check_indices,
    )


def _fused_embedding_layernorm_backward(
    grad_out: torch.Tensor,
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    position_offset: int,
    type_weight: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    padding_idx: int,
    needs: list[int],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``(weight, pos_weight, type_weight, ln_weight, ln_bias)`` for ``grad_out``
    ``[..., S, D]`` (an empty ``[0]`` tensor where ``needs[i]`` is 0 or the term is absent).
    Deterministic on every backend; sums in fp32; row ``padding_idx`` of the word table is 0."""
    return implementation(OP, _BACKWARD, backend)(
        grad_out,
        input_ids,
        weight,
        pos_weight,
        positions,
        position_offset,
        type_weight,
        token_type_ids,
        ln_weight,
        ln_bias,
        mean,
        rstd,
        padding_idx,
        needs,
    )


fused_embedding_layernorm_op = torch.library.custom_op(
    "fusedops::fused_embedding_layernorm", _fused_embedding_layernorm, mutates_args=()
)
fused_embedding_layernorm_backward_op = torch.library.custom_op(
    "fusedops::fused_embedding_layernorm_backward",
    _fused_embedding_layernorm_backward,
    mutates_args=(),
)


@fused_embedding_layernorm_op.register_fake
def _(input_ids, weight, *args):
    stats = weight.new_empty(input_ids.shape, dtype=torch.float32)  # [..., S]
    return weight.new_empty((*input_ids.shape, weight.shape[1])), stats, torch.empty_like(stats)


@fused_embedding_layernorm_backward_op.register_fake
def _(
    grad_out, input_ids, weight, pos_weight, positions, offset, type_weight, type_ids, g, b, *rest
):
    needs = rest[-2]
    params = (weight, pos_weight, type_weight, g, b)
    return tuple(
        weight.new_empty(p.shape if (need and p is not None) else (0,))
        for p, need in zip(params, needs, strict=True)
    )


# Positions in the op's argument list of the differentiable inputs.
_PARAMS = (1, 2, 5, 7, 8)  # weight, pos_weight, type_weight, ln_weight, ln_bias


def _setup_context(ctx, inputs, output):
    ids, weight, pos_weight, positions, offset, type_weight, type_ids, g, b = inputs[:9]
    _out, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(
        ids, weight, pos_weight, positions, type_weight, type_ids, g, b, mean, rstd
    )
    ctx.offset, ctx.padding_idx, ctx.backend = offset, inputs[10], inputs[12]


def _backward(ctx, grad, _grad_mean, _grad_rstd):
    # grad: [..., S, D] in weight dtype
    forbid_double_backward(OP)
    ids, weight, pos_weight, positions, type_weight, type_ids, g, b, mean, rstd = ctx.saved_tensors
    needs = [int(ctx.needs_input_grad[i]) for i in _PARAMS]
    grads = run(
        fused_embedding_layernorm_backward_op,
        _fused_embedding_layernorm_backward,
        False,
        grad,
        ids,
        weight,
        pos_weight,
        positions,
        ctx.offset,
        type_weight,
        type_ids,
        g,
        b,
        mean,
        rstd,
        ctx.padding_idx,
        needs,
        ctx.backend,
    )
    gw, gp, gt, gg, gb = (t if need else None for t, need in zip(grads, needs, strict=True))
    return None, gw, gp, None, None, gt, None, gg, gb, None, None, None, None


fused_embedding_layernorm_op.register_autograd(_backward, setup_context=_setup_context)
_FusedEmbeddingLayerNorm = autograd_function(
    "_FusedEmbeddingLayerNorm", _fused_embedding_layernorm, _setup_context, _backward
)


# ------------------------------------------------------------------------------------------
# Validation and the public function
# ------------------------------------------------------------------------------------------


def _check_table(name: str, t: object, weight: torch.Tensor, dims: int) -> torch.Tensor:
    """A ``[rows, D]`` (dims 2) or ``[D]`` (dims 1) parameter like ``weight``; returned with
    ``stride(-1) == 1``."""
    check_tensor(OP, name, t)
    dim = weight.shape[1]
    if t.dim() != dims or t.shape[-1] != dim:
        want = f"[rows, {dim}]" if dims == 2 else f"[{dim}]"
        raise ValueError(f"{OP}: {name} must be {want} to match weight, got {tuple(t.shape)}")
    if t.dtype != weight.dtype:
        raise TypeError(f"{OP}: {name} dtype {t.dtype} differs from weight dtype {weight.dtype}")
    check_same_device(OP, name, t, weight.device)
    return unit_stride(t)


def _check_index_like(name: str, t: object, input_ids: torch.Tensor) -> torch.Tensor:
    """An int tensor broadcastable to ``input_ids``; returned expanded, contiguous, in the ids'
    dtype (one index type per kernel call)."""
    check_tensor(OP, name, t)
    check_dtype(OP, name, t, INDEX_DTYPES)
    check_same_device(OP, name, t, input_ids.device)
    try:
        t = t.expand(input_ids.shape)
    except RuntimeError:
        raise ValueError(
            f"{OP}: {name} of shape {tuple(t.shape)} does not broadcast to input_ids of shape "
            f"{tuple(input_ids.shape)}"
        ) from None
    return t.to(input_ids.dtype).contiguous()


def _validate(
    input_ids,
    weight,
    pos_weight,
    type_weight,
    token_type_ids,
    ln_weight,
    ln_bias,
    eps,
    positions,
    position_offset,
    padding_idx,
):
    """Check user arguments; return them normalised (contiguous ids, positions and type ids
    expanded to the ids' shape, parameters with ``stride(-1) == 1``, padding_idx in [0, V))."""
    check_tensor(OP, "weight", weight)
    check_dtype(OP, "weight", weight, FLOAT_DTYPES)
    if weight.dim() != 2:
        raise ValueError(f"{OP}: weight must be [V, D], got shape {tuple(weight.shape)}")
    check_input_ids(OP, input_ids, weight.device)
    check_scale_and_offset(OP, 1.0, position_offset)
    eps = check_real_scalar(OP, "eps", eps)
    if not isinstance(eps, (torch.SymFloat, torch.SymInt)) and eps < 0:
        raise ValueError(f"{OP}: eps must be >= 0, got {eps}")
    weight = unit_stride(weight)
    if pos_weight is not None:
        pos_weight = _check_table("pos_weight", pos_weight, weight, 2)
    if type_weight is not None:
        type_weight = _check_table("type_weight", type_weight, weight, 2)
    if ln_weight is not None:
        ln_weight = _check_table("ln_weight", ln_weight, weight, 1)
    if ln_bias is not None:
        ln_bias = _check_table("ln_bias", ln_bias, weight, 1)
    if positions is not None:
        if pos_weight is None:
            raise ValueError(f"{OP}: positions given but pos_weight is None")
        positions = _check_index_like("positions", positions, input_ids)
    if token_type_ids is not None:
        if type_weight is None:
            raise ValueError(f"{OP}: token_type_ids given but type_weight is None")
        token_type_ids = _check_index_like("token_type_ids", token_type_ids, input_ids)
    elif type_weight is not None and type_weight.shape[0] == 0:
        raise ValueError(f"{OP}: type_weight has no rows but token_type_ids=None reads row 0")
    padding_idx = check_padding_idx(OP, padding_idx, weight.shape[0])
    return (
        input_ids.contiguous(),
        weight,
        pos_weight,
        type_weight,
        token_type_ids,
        ln_weight,
        ln_bias,
        eps,
        positions,
        padding_idx,
    )


def fused_embedding_layernorm(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor | None,
    type_weight: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    *,
    padding_idx: int | None = None,
    check_indices: bool = True,
) -> torch.Tensor:
    """BERT's embedding layer in one pass: word + token type + position rows, then LayerNorm.

    ``out = LayerNorm(weight[ids] + type_weight[tt] + pos_weight[pos]) * ln_weight + ln_bias``
    with mean and biased variance over the last dim and ``rsqrt(var + eps)``, all in fp32
    (Hugging Face's ``BertEmbeddings`` in eval mode, dropout aside). Gradients flow to every
    table and to ``ln_weight`` / ``ln_bias``; the backward is deterministic.

    Args:
        input_ids: int32/int64 ``[..., S]``, any leading shape, sequence last.
        weight: ``[V, D]`` fp32/fp16/bf16 word table.
        pos_weight: ``[P, D]`` positional table, or None (no positional term).
        type_weight: ``[T, D]`` token-type table, or None (no token-type term).
        token_type_ids: int ``[..., S]`` (broadcastable to ``input_ids``), or None: row 0 of
            ``type_weight`` for every token (BERT's default).
        ln_weight, ln_bias: ``[D]`` LayerNorm weight and bias, each optional (no affine).
        eps: added to the variance (``nn.LayerNorm.eps``): a finite real number >= 0.
        positions: int ``[..., S]``, ``[S]`` or ``[1, S]`` positions; None:
            ``position_offset + s``.
        position_offset: first position when ``positions`` is None.
        padding_idx: word row whose gradient is zero (``nn.Embedding`` semantics).
        check_indices: range-check ids, positions and type ids (IndexError). On CUDA this
            syncs the device; with False out-of-range indices add nothing instead of reading
            out of bounds. While a CUDA graph is being captured the check is skipped (the
            masking applies). The C++ kernel always checks.
    Returns:
        ``[..., S, D]`` in ``weight.dtype``. All tables and LayerNorm parameters share
        ``weight``'s dtype and device.
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; IndexError for
        indices out of range; RuntimeError if the requested backend cannot run, or from the
        backward when it is run with ``create_graph=True`` (no double backward, except on the
        ``reference`` backend).
    """
    (
        input_ids,
        weight,
        pos_weight,
        type_weight,
        token_type_ids,
        ln_weight,
        ln_bias,
        eps,
        positions,
        padding_idx,
    ) = _validate(
        input_ids,
        weight,
        pos_weight,
        type_weight,
        token_type_ids,
        ln_weight,
        ln_bias,
        eps,
        positions,
        position_offset,
        padding_idx,
    )
    backend = resolve_backend(OP, weight.device, BACKENDS)
    if backend == "reference":
        if host_index_checks(check_indices, input_ids.device):
            _check_ranges(
                input_ids,
                weight,
                pos_weight,
                positions,
                position_offset,
                type_weight,
                token_type_ids,
            )
        return reference.fused_embedding_layernorm(
            input_ids,
            weight,
            pos_weight,
            type_weight,
            token_type_ids,
            ln_weight,
            ln_bias,
            eps,
            positions,
            position_offset,
            padding_idx=padding_idx,
        )
    out, _mean, _rstd = run(
        fused_embedding_layernorm_op,
        _fused_embedding_layernorm,
        needs_grad(weight, pos_weight, type_weight, ln_weight, ln_bias),
        input_ids,
        weight,
        pos_weight,
        positions,
        position_offset,
        type_weight,
        token_type_ids,
        ln_weight,
        ln_bias,
        eps,
        -1 if padding_idx is None else padding_idx,
        check_indices,
        backend,
        autograd=_FusedEmbeddingLayerNorm,
    )
    return out
