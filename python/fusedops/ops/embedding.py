"""The fused embedding as ``torch.library`` custom ops: validation, dispatch and autograd.

``fused_embedding`` computes ``out[..., s, :] = weight[input_ids[..., s]] * scale + P[pos(s)]``
where ``P`` is a learned table, an in-kernel sinusoid, or absent. The custom ops
``fusedops::fused_embedding`` and ``fusedops::fused_embedding_backward`` run the Triton kernels
(CUDA, or CPU through Triton's interpreter) or the C++ kernels of ``fusedops._C`` (CPU); a call
that needs no gradient runs the kernel directly. The ``reference`` backend runs plain PyTorch.

With ``vocab_start`` the table is one shard of a vocabulary split across ranks (rows
``[vocab_start, vocab_start + V)``): the kernels mask the other shards' ids themselves (no pass
over the ids here). :func:`embedding_table_grad` exposes the backward's table gradient alone.
"""

from __future__ import annotations

import torch

from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.constants import POS_LEARNED
from fusedops.ops._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_dtype,
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
    check_positional,
    check_ranges,
    check_scale_and_offset,
    check_sinusoid_base,
    check_vocab_start,
    positional_mode,
    token_positions,
)

__all__ = ["embedding_table_grad", "fused_embedding"]

OP = "fused_embedding"
BACKENDS = OpBackends(cpp_op="fusedops::cpp_embedding_fwd")


# ------------------------------------------------------------------------------------------
# Implementations per backend (validated, normalised arguments)
# ------------------------------------------------------------------------------------------


def _forward_triton(ids, weight, pos_weight, positions, scale, offset, mode, base, check, start):
    from fusedops.kernels.embedding import embedding_forward

    if host_index_checks(check, ids.device):
        check_ranges(OP, ids, weight.shape[0], pos_weight, positions, offset, mode, start)
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
        vocab_start=0 if start is None else start,
    )
    return out


def _forward_cpp(ids, weight, pos_weight, positions, scale, offset, mode, base, check, start):
    # The C++ kernel range-checks ids (not a shard's) and positions itself (cheap on CPU).
    return torch.ops.fusedops.cpp_embedding_fwd.default(
        ids, weight, scale, pos_weight, positions, offset, mode, base, start
    )


def _backward_triton(grad_out, indices, num_rows, scale, padding_idx, start, deterministic):
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
        vocab_start=start,
    )


def _backward_cpp(grad_out, indices, num_rows, scale, padding_idx, start, deterministic):
    # Always deterministic: each row sums its tokens in order.
    return torch.ops.fusedops.cpp_embedding_bwd.default(
        grad_out.contiguous(), indices.contiguous(), num_rows, scale, padding_idx, start
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
    vocab_start: int | None = None,
) -> torch.Tensor:
    """Forward of the fused embedding on validated inputs.

    ``input_ids`` [..., S] contiguous int32/int64; ``weight`` [V, D] (stride(-1) == 1);
    ``pos_weight`` [P, D] or None; ``positions`` contiguous, shaped like ``input_ids``, or None;
    ``backend`` is ``"triton"`` or ``"cpp"``. Returns [..., S, D] in ``weight.dtype``.
    ``vocab_start`` (None: the whole table): id ``t`` reads row ``t - vocab_start``, ids
    outside ``[0, V)`` after the shift get only the positional term.
    ``padding_idx`` (-1: none, a row of ``weight``) and ``deterministic`` only shape the
    backward.
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
        vocab_start,
    )


def _fused_embedding_backward(
    grad_out: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    scale: float,
    padding_idx: int,
    deterministic: bool,
    backend: str,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Gradient of a ``[num_rows, D]`` table gathered by ``indices``.

    ``grad_out`` [..., D] (fp32/fp16/bf16), ``indices`` int [...] with one index per row of
    ``grad_out``; index ``t`` is row ``t - vocab_start`` and indices outside the table are
    skipped. Returns ``scale * sum`` of the rows of each index, in ``grad_out.dtype``, with row
    ``padding_idx`` (``-1``: none) left zero. Deterministic sums each row in token order in
    fp32; the C++ kernel is always deterministic.
    """
    return implementation(OP, _BACKWARD, backend)(
        grad_out, indices, num_rows, scale, padding_idx, vocab_start, deterministic
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
    ids, weight, pos_weight, positions, scale, offset, mode, _base, padding_idx, *rest = inputs
    det, _check, be, vocab_start = rest
    ctx.save_for_backward(ids, positions)
    ctx.num_rows = weight.shape[0]
    ctx.num_positions = pos_weight.shape[0] if pos_weight is not None else 0
    ctx.scale, ctx.offset, ctx.mode = scale, offset, mode
    ctx.padding_idx, ctx.deterministic, ctx.backend = padding_idx, det, be
    ctx.vocab_start = 0 if vocab_start is None else vocab_start


def _table_grad(grad, indices, num_rows, scale, padding_idx, vocab_start, ctx):
    args = (grad, indices, num_rows, scale, padding_idx, ctx.deterministic, ctx.backend)
    args += (vocab_start,)
    return run(fused_embedding_backward_op, _fused_embedding_backward, False, *args)


def _backward(ctx, grad):
    # grad: [..., S, D] in weight dtype
    forbid_double_backward(OP)
    ids, positions = ctx.saved_tensors
    grad_weight = grad_pos = None
    if ctx.needs_input_grad[1]:
        grad_weight = _table_grad(
            grad, ids, ctx.num_rows, ctx.scale, ctx.padding_idx, ctx.vocab_start, ctx
        )  # [V, D]: only the ids of this table (shard)
    if ctx.mode == POS_LEARNED and ctx.needs_input_grad[2]:
        rows = token_positions(ids, positions, ctx.offset)  # [..., S]
        grad_pos = _table_grad(grad, rows, ctx.num_positions, 1.0, -1, 0, ctx)  # every token
    return None, grad_weight, grad_pos, *([None] * 10)


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
    """Check user arguments; return ``(input_ids, weight, pos_weight, positions, padding_idx,
    scale, sinusoid_base)`` normalised: contiguous ids, tables with ``stride(-1) == 1``,
    positions expanded to the ids' shape, ``padding_idx`` in ``[0, V)``, the scalars as floats
    (symbolic ones passed through)."""
    check_tensor(OP, "weight", weight)
    check_dtype(OP, "weight", weight, FLOAT_DTYPES)
    if weight.dim() != 2:
        raise ValueError(f"{OP}: weight must be [V, D], got shape {tuple(weight.shape)}")
    device = weight.device
    check_input_ids(OP, input_ids, device)
    scale = check_scale_and_offset(OP, scale, position_offset)
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
    # The base only matters with the sinusoid; otherwise any value is passed on unread.
    base = check_sinusoid_base(OP, sinusoid_base) if sinusoidal else 10000.0
    return input_ids.contiguous(), weight, pos_weight, positions, padding_idx, scale, base


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
    vocab_start: int | None = None,
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
        scale: multiplier of the token rows (e.g. ``sqrt(D)``): a finite Python or NumPy real,
            or a 0-d tensor (read on the host, outside ``torch.compile``).
        pos_weight: optional ``[P, D]`` learned positional table, same dtype as ``weight``.
        positions: optional int ``[..., S]`` (broadcastable to ``input_ids``) positions.
        position_offset: first position when ``positions`` is None (e.g. KV-cache length).
        sinusoidal: add the in-kernel sinusoid instead of a learned table.
        sinusoid_base: sinusoid frequency base, a finite number > 0 (checked only with
            ``sinusoidal=True``).
        padding_idx: table row that receives no gradient (``nn.Embedding`` semantics); with
            ``vocab_start``, a row of the shard (local index).
        deterministic: backward sums duplicates in a fixed order (bit-identical run to run);
            ``False`` uses fp32 atomics on the Triton path (the C++ path is always
            deterministic).
        check_indices: range-check ids and positions (raises ``IndexError``). On CUDA this
            syncs the device; with ``False`` out-of-range rows are masked (the token term
            reads as zero) instead of read out of bounds. While a CUDA graph is being
            captured the check is skipped (the masking applies). The C++ kernel always checks.
        vocab_start: ``weight`` is the shard of rows ``[vocab_start, vocab_start + V)`` of a
            larger vocabulary (vocabulary-parallel embeddings): id ``t`` reads row
            ``t - vocab_start``, ids outside the shard contribute no token term (only the
            positional one) and no gradient. The ids are then not range-checked (the caller
            checks them against the whole vocabulary); positions still are. None: the whole
            table.
    Returns:
        ``[..., S, D]`` in ``weight.dtype`` (arithmetic in fp32).
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; IndexError for ids
        or positions out of range; RuntimeError if the requested backend cannot run, or from
        the backward when it is run with ``create_graph=True`` (no double backward, except on
        the ``reference`` backend).
    """
    input_ids, weight, pos_weight, positions, padding_idx, scale, sinusoid_base = _validate(
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
    vocab_start = check_vocab_start(OP, vocab_start)
    backend = resolve_backend(OP, weight.device, BACKENDS)
    mode = positional_mode(pos_weight, sinusoidal)
    if backend == "reference":
        if host_index_checks(check_indices, input_ids.device):
            check_ranges(
                OP,
                input_ids,
                weight.shape[0],
                pos_weight,
                positions,
                position_offset,
                mode,
                vocab_start,
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
            vocab_start=vocab_start,
        )
    return run(
        fused_embedding_op,
        _fused_embedding,
        needs_grad(weight, pos_weight),
        input_ids,
        weight,
        pos_weight,
        positions,
        scale,
        position_offset,
        mode,
        sinusoid_base,
        -1 if padding_idx is None else padding_idx,
        deterministic,
        check_indices,
        backend,
        vocab_start,
        autograd=_FusedEmbedding,
    )


def _reference_table_grad(grad, indices, num_rows, scale, padding_idx, vocab_start):
    """The table gradient in plain PyTorch (the ``reference`` backend): fp32 sums."""
    dim = grad.shape[-1]
    rows = indices.reshape(-1).long() - vocab_start  # [N]
    keep = (rows >= 0) & (rows < num_rows)
    if padding_idx >= 0:
        keep &= rows != padding_idx
    acc = torch.zeros((num_rows, dim), dtype=torch.float32, device=grad.device)  # [V, D]
    acc.index_add_(0, rows[keep], grad.reshape(-1, dim)[keep].float())
    return (acc * scale).to(grad.dtype)


def embedding_table_grad(
    grad: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int | torch.SymInt,
    *,
    scale: float = 1.0,
    padding_idx: int | None = None,
    vocab_start: int = 0,
    deterministic: bool = True,
) -> torch.Tensor:
    """The gradient of a ``[num_rows, D]`` table gathered by ``indices`` (an embedding's
    backward without the forward): ``out[r] = scale * sum(grad[n] for indices[n] - vocab_start
    == r)``.

    Runs the fused embedding's backward kernel on the resolved backend (C++ on CPU, Triton on
    CUDA). Indices whose row falls outside ``[0, num_rows)`` are ignored (other shards' ids
    when the table is a vocabulary shard), and row ``padding_idx`` stays zero.

    Args:
        grad: ``[..., D]`` fp32/fp16/bf16 upstream gradient rows.
        indices: int32/int64 ``[...]``, broadcastable to ``grad.shape[:-1]``: one index per
            row of ``grad``.
        num_rows: rows of the table (``>= 0``).
        scale: multiplier of the sums (the forward's ``scale``).
        padding_idx: row of the table (local to the shard) that gets no gradient; negative
            values count from the end.
        vocab_start: first vocabulary id of the table (``>= 0``).
        deterministic: sum each row in token order (bit-identical run to run); ``False``
            allows fp32 atomics on the Triton path.
    Returns:
        ``[num_rows, D]`` in ``grad.dtype`` (sums in fp32).
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; RuntimeError when
        ``grad`` requires grad in grad mode (the result has no derivative, except on the
        ``reference`` backend).
    """
    op = "embedding_table_grad"
    check_tensor(op, "grad", grad)
    check_dtype(op, "grad", grad, FLOAT_DTYPES)
    if grad.dim() < 1:
        raise ValueError(f"{op}: grad must be [..., D], got a 0-d tensor")
    check_tensor(op, "indices", indices)
    check_dtype(op, "indices", indices, INDEX_DTYPES)
    check_same_device(op, "indices", indices, grad.device)
    # A SymInt when traced with dynamic shapes (a table's size inside an autograd formula).
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, torch.SymInt)):
        raise ValueError(f"{op}: num_rows must be an int >= 0, got {num_rows!r}")
    if num_rows < 0:
        raise ValueError(f"{op}: num_rows must be an int >= 0, got {num_rows!r}")
    scale = check_scale_and_offset(op, scale, 0)
    padding_idx = check_padding_idx(op, padding_idx, num_rows)
    vocab_start = check_vocab_start(op, vocab_start)
    if vocab_start is None:
        raise TypeError(f"{op}: vocab_start must be an int, got None")
    try:
        indices = indices.expand(grad.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{op}: indices of shape {tuple(indices.shape)} do not broadcast to grad's rows "
            f"{tuple(grad.shape[:-1])}"
        ) from None
    backend = resolve_backend(OP, grad.device, BACKENDS)
    pad = -1 if padding_idx is None else padding_idx
    if backend == "reference":
        return _reference_table_grad(grad, indices, num_rows, scale, pad, vocab_start)
    if needs_grad(grad):
        raise RuntimeError(
            f"{op}: grad requires grad, but the table gradient has no derivative of its own; "
            "call it on a detached grad or under torch.no_grad()"
        )
    args = (grad, indices.contiguous(), num_rows, scale, pad, deterministic, backend)
    args += (vocab_start,)
    return run(fused_embedding_backward_op, _fused_embedding_backward, False, *args)
