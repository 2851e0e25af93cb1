"""The factorized embedding as ``torch.library`` custom ops: validation, dispatch and autograd.

``factorized_embedding`` computes ``out[..., s, :] = row(t) * scale + P[pos(s)]`` with
``t = input_ids[..., s]`` and ``row(t) = hot_rows[k]`` for the k-th hot token, else
``a[t] @ b``: a low-rank table (``a`` [V, r], ``b`` [r, D]) with K rows kept exact. The custom
ops ``fusedops::factorized_embedding`` and ``fusedops::factorized_embedding_backward`` run the
Triton kernels (CUDA, or CPU through Triton's interpreter) or the C++ kernels of
``fusedops._C`` (CPU); a call that needs no gradient runs the kernel directly. The
``reference`` backend runs plain PyTorch. The positional table's gradient comes from the fused
embedding's backward (:func:`fusedops.ops.embedding.embedding_table_grad`).
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
    check_index_range,
    check_same_device,
    check_tensor,
    empty_output,
    forbid_double_backward,
    host_index_checks,
    unit_stride,
)
from fusedops.ops._dispatch import (
    autograd_function,
    implementation,
    needs_grad,
    run,
    runs_eagerly,
)
from fusedops.ops._lookup_checks import (
    check_input_ids,
    check_padding_idx,
    check_positional,
    check_ranges,
    check_scale_and_offset,
    check_sinusoid_base,
    positional_mode,
    token_positions,
)
from fusedops.ops.embedding import embedding_table_grad

OP = "factorized_embedding"
BACKENDS = OpBackends(cpp_op="fusedops::cpp_factorized_embedding_fwd")


def hot_slot_table(hot_ids: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """The ``[V]`` int32 map of a token to its row in ``hot_rows``: ``slots[hot_ids[k]] = k``,
    ``-1`` for every other token. ``hot_ids``: int ``[K]``, distinct ids in ``[0, V)``."""
    slots = torch.full((num_embeddings,), -1, dtype=torch.int32, device=hot_ids.device)
    slots[hot_ids.long()] = torch.arange(hot_ids.numel(), dtype=torch.int32, device=hot_ids.device)
    return slots


def hot_ids_of(hot_slots: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`hot_slot_table`: int64 ``[K]`` with ``hot_ids[k]`` the token of
    slot ``k``."""
    tokens = (hot_slots >= 0).nonzero().reshape(-1)  # [K] int64, ascending token ids
    return tokens[hot_slots[tokens].argsort()]


# ------------------------------------------------------------------------------------------
# Implementations per backend (validated, normalised arguments)
# ------------------------------------------------------------------------------------------


def _forward_triton(
    ids, a, b, hot_slots, hot_rows, pos_weight, positions, scale, offset, mode, base, check
):
    from fusedops.kernels.factorized_embedding import factorized_forward

    if host_index_checks(check, ids.device):
        check_ranges(OP, ids, a.shape[0], pos_weight, positions, offset, mode)
    dim = b.shape[1]
    out = empty_output((*ids.shape, dim), a.dtype, a.device)
    factorized_forward(
        ids.reshape(-1),
        a,
        b,
        hot_slots,
        hot_rows,
        out.view(-1, dim),
        seq_len=ids.shape[-1],
        scale=scale,
        pos_mode=mode,
        pos_weight=pos_weight,
        positions=None if positions is None else positions.reshape(-1),
        position_offset=offset,
        sinusoid_base=base,
    )
    return out


def _forward_cpp(
    ids, a, b, hot_slots, hot_rows, pos_weight, positions, scale, offset, mode, base, check
):
    # The C++ kernel range-checks ids and positions itself (cheap on CPU: no device sync).
    return torch.ops.fusedops.cpp_factorized_embedding_fwd.default(
        ids, a, b, hot_slots, hot_rows, scale, pos_weight, positions, offset, mode, base
    )


def _backward_triton(grad, ids, a, b, hot_slots, num_hot, scale, padding_idx, needs, det):
    from fusedops.kernels.factorized_embedding import factorized_backward

    dim = grad.shape[-1]
    grads = factorized_backward(
        unit_stride(grad.reshape(-1, dim)),  # [N, D]
        ids.reshape(-1).contiguous(),
        a,
        b,
        hot_slots,
        num_hot=num_hot,
        scale=scale,
        padding_idx=padding_idx,
        needs=needs,
        deterministic=det,
    )
    return tuple(g if g is not None else grad.new_empty(0) for g in grads)


def _backward_cpp(grad, ids, a, b, hot_slots, num_hot, scale, padding_idx, needs, det):
    # Always deterministic: each table row sums its tokens in order.
    return torch.ops.fusedops.cpp_factorized_embedding_bwd.default(
        grad.contiguous(), ids, a, b, hot_slots, num_hot, scale, padding_idx, list(needs)
    )


_FORWARD = {"cpp": _forward_cpp, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "triton": _backward_triton}


# ------------------------------------------------------------------------------------------
# Custom ops and autograd
# ------------------------------------------------------------------------------------------


def _factorized_embedding(
    input_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    hot_slots: torch.Tensor | None,
    hot_rows: torch.Tensor | None,
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
    """Forward of the factorized embedding on validated inputs.

    ``input_ids`` [..., S] contiguous int32/int64; ``a`` [V, r], ``b`` [r, D], ``hot_rows``
    [K, D] and ``pos_weight`` [P, D] with ``stride(-1) == 1``, one float dtype; ``hot_slots``
    [V] int32 contiguous (None with ``hot_rows`` when K == 0); ``positions`` contiguous, shaped
    like ``input_ids``, or None; ``backend`` is ``"triton"`` or ``"cpp"``. Returns
    [..., S, D] in ``a.dtype``. ``padding_idx`` (-1: none) and ``deterministic`` only shape the
    backward.
    """
    return implementation(OP, _FORWARD, backend)(
        input_ids,
        a,
        b,
        hot_slots,
        hot_rows,
        pos_weight,
        positions,
        scale,
        position_offset,
        pos_mode,
        sinusoid_base,
        check_indices,
    )


def _factorized_embedding_backward(
    grad_out: torch.Tensor,
    input_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    hot_slots: torch.Tensor | None,
    num_hot: int,
    scale: float,
    padding_idx: int,
    need_a: bool,
    need_b: bool,
    need_hot: bool,
    deterministic: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``(a [V, r], b [r, D], hot_rows [num_hot, D])`` from ``grad_out``
    [..., S, D] (an empty ``[0]`` tensor where not needed), in ``a.dtype``. Hot tokens
    contribute to ``hot_rows`` only; tokens equal to ``padding_idx`` (-1: none) to nothing."""
    needs = (need_a, need_b, need_hot)
    return implementation(OP, _BACKWARD, backend)(
        grad_out, input_ids, a, b, hot_slots, num_hot, scale, padding_idx, needs, deterministic
    )


factorized_embedding_op = torch.library.custom_op(
    "fusedops::factorized_embedding", _factorized_embedding, mutates_args=()
)
factorized_embedding_backward_op = torch.library.custom_op(
    "fusedops::factorized_embedding_backward", _factorized_embedding_backward, mutates_args=()
)


@factorized_embedding_op.register_fake
def _(input_ids, a, b, *args):
    return a.new_empty((*input_ids.shape, b.shape[1]))


@factorized_embedding_backward_op.register_fake
def _(
    grad_out,
    input_ids,
    a,
    b,
    hot_slots,
    num_hot,
    scale,
    padding_idx,
    need_a,
    need_b,
    need_hot,
    *args,
):
    shapes = (a.shape, b.shape, (num_hot, b.shape[1]))
    needs = (need_a, need_b, need_hot)
    return tuple(a.new_empty(s if n else (0,)) for s, n in zip(shapes, needs, strict=True))


def _setup_context(ctx, inputs, output):
    (
        ids,
        a,
        b,
        hot_slots,
        hot_rows,
        pos_weight,
        positions,
        scale,
        offset,
        mode,
        _base,
        padding_idx,
        det,
        _check,
        backend,
    ) = inputs
    ctx.save_for_backward(ids, a, b, hot_slots, positions)
    ctx.num_hot = hot_rows.shape[0] if hot_rows is not None else 0
    ctx.num_positions = pos_weight.shape[0] if pos_weight is not None else 0
    ctx.scale, ctx.offset, ctx.mode = scale, offset, mode
    ctx.padding_idx, ctx.deterministic, ctx.backend = padding_idx, det, backend


def _backward(ctx, grad):
    # grad: [..., S, D] in the factors' dtype
    forbid_double_backward(OP)
    ids, a, b, hot_slots, positions = ctx.saved_tensors
    need_a, need_b, need_hot, need_pos = (ctx.needs_input_grad[i] for i in (1, 2, 4, 5))
    grad_a = grad_b = grad_hot = grad_pos = None
    if need_a or need_b or need_hot:
        args = (grad, ids, a, b, hot_slots, ctx.num_hot, ctx.scale, ctx.padding_idx)
        args += (need_a, need_b, need_hot, ctx.deterministic, ctx.backend)
        ga, gb, gh = run(
            factorized_embedding_backward_op, _factorized_embedding_backward, False, *args
        )
        grad_a = ga if need_a else None
        grad_b = gb if need_b else None
        grad_hot = gh if need_hot else None
    if ctx.mode == POS_LEARNED and need_pos:
        rows = token_positions(ids, positions, ctx.offset)  # [..., S]
        grad_pos = embedding_table_grad(
            grad, rows, ctx.num_positions, deterministic=ctx.deterministic
        )  # [P, D]
    return None, grad_a, grad_b, None, grad_hot, grad_pos, *([None] * 9)


factorized_embedding_op.register_autograd(_backward, setup_context=_setup_context)
_FactorizedEmbedding = autograd_function(
    "_FactorizedEmbedding", _factorized_embedding, _setup_context, _backward
)


# ------------------------------------------------------------------------------------------
# Validation and the public function
# ------------------------------------------------------------------------------------------


def _check_table(name: str, t: object, dtype: torch.dtype | None, device: torch.device | None):
    check_tensor(OP, name, t)
    check_dtype(OP, name, t, FLOAT_DTYPES)
    if t.dim() != 2:
        raise ValueError(f"{OP}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{OP}: {name} dtype {t.dtype} differs from a's dtype {dtype}")
    if device is not None:
        check_same_device(OP, name, t, device)
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_hot(a, b, hot_ids, hot_rows, hot_slots, check_indices):
    """Return ``(hot_slots [V] int32 | None, hot_rows [K, D] | None)``, None when K == 0.

    The values of ``hot_ids`` / ``hot_slots`` are checked eagerly with ``check_indices``; under
    ``torch.compile`` (data-dependent checks cannot be traced) or while a CUDA graph is being
    captured (no host reads) only their shapes are.
    """
    num_rows, dim = a.shape[0], b.shape[1]
    check_values = host_index_checks(check_indices, a.device) and runs_eagerly()
    if hot_ids is not None and hot_slots is not None:
        raise ValueError(f"{OP}: pass hot_ids or hot_slots, not both")
    given = hot_ids if hot_ids is not None else hot_slots
    if (given is None) != (hot_rows is None):
        raise ValueError(f"{OP}: hot_rows must be given together with hot_ids (or hot_slots)")
    if given is None:
        return None, None
    hot_rows = _check_table("hot_rows", hot_rows, a.dtype, a.device)
    if hot_rows.shape[1] != dim:
        raise ValueError(
            f"{OP}: hot_rows must be [K, {dim}] to match b, got shape {tuple(hot_rows.shape)}"
        )
    num_hot = hot_rows.shape[0]
    if hot_ids is not None:
        check_tensor(OP, "hot_ids", hot_ids)
        check_dtype(OP, "hot_ids", hot_ids, INDEX_DTYPES)
        check_same_device(OP, "hot_ids", hot_ids, a.device)
        if hot_ids.dim() != 1 or hot_ids.numel() != num_hot:
            raise ValueError(
                f"{OP}: hot_ids must be [K] with K = {num_hot} (rows of hot_rows), "
                f"got shape {tuple(hot_ids.shape)}"
            )
        if check_values:
            check_index_range(OP, "hot_ids contains id", hot_ids, 0, num_rows)
            if hot_ids.unique().numel() != num_hot:
                raise ValueError(f"{OP}: hot_ids must be distinct token ids")
        hot_slots = hot_slot_table(hot_ids, num_rows)
    else:
        check_tensor(OP, "hot_slots", hot_slots)
        check_dtype(OP, "hot_slots", hot_slots, (torch.int32,))
        check_same_device(OP, "hot_slots", hot_slots, a.device)
        if tuple(hot_slots.shape) != (num_rows,):
            raise ValueError(
                f"{OP}: hot_slots must be [{num_rows}] (one slot per token of a), "
                f"got shape {tuple(hot_slots.shape)}"
            )
        if check_values:
            check_index_range(OP, "hot_slots contains slot", hot_slots, -1, num_hot)
        hot_slots = hot_slots.contiguous()
    if num_hot == 0:
        return None, None
    return hot_slots, hot_rows


def factorized_embedding(
    input_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    hot_ids: torch.Tensor | None = None,
    hot_rows: torch.Tensor | None = None,
    hot_slots: torch.Tensor | None = None,
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
    """Low-rank token rows with exact hot rows, scale and positional add in one pass.

    ``out[..., s, :] = row(t) * scale + P[pos(s)]`` with ``t = input_ids[..., s]``,
    ``row(t) = hot_rows[k]`` when ``t`` is the k-th hot token, else ``a[t] @ b`` (one tile of
    tokens times ``b`` per program: a tensor-core matmul on the GPU). ``P`` and ``pos(s)`` are
    as in :func:`fusedops.fused_embedding`. See :class:`fusedops.nn.FactorizedEmbedding` for
    fitting ``a``, ``b`` and the hot rows from a trained table.

    Args:
        input_ids: int32/int64 ``[..., S]``, any leading shape, sequence last.
        a: ``[V, r]`` per-token coefficients (fp32/fp16/bf16).
        b: ``[r, D]`` shared basis, same dtype.
        hot_ids: optional int ``[K]`` distinct token ids whose rows are ``hot_rows``.
        hot_rows: ``[K, D]`` exact rows of the hot tokens, same dtype as ``a``.
        hot_slots: instead of ``hot_ids``, the ``[V]`` int32 map token -> row of ``hot_rows``
            (``-1``: not hot), as :func:`hot_slot_table` builds it (modules cache it).
        scale: multiplier of the token rows (e.g. ``sqrt(D)``).
        pos_weight, positions, position_offset, sinusoidal, sinusoid_base: the positional term,
            as in :func:`fusedops.fused_embedding` (``pos_weight`` in ``a``'s dtype).
        padding_idx: tokens equal to it contribute no gradient to ``a``, ``b`` or
            ``hot_rows`` (the forward is unchanged).
        deterministic: backward sums in a fixed order (bit-identical run to run); ``False``
            lets the Triton path use fp32 atomics for the row scatter.
        check_indices: range-check ids, positions and the hot ids/slots (raises
            ``IndexError``; hot ids must also be distinct); on CUDA this syncs the device.
            With ``False`` out-of-range ids give only the positional term. The C++ kernel
            always checks ids and positions. Under ``torch.compile`` the hot ids' values are
            not checked (ids and positions still are, inside the op); while a CUDA graph is
            being captured nothing is checked on the host (out-of-range ids are masked).
    Returns:
        ``[..., S, D]`` in ``a.dtype`` (products and sums in fp32).
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; IndexError for ids,
        positions or hot ids out of range; RuntimeError if the requested backend cannot run, or
        from the backward when it is run with ``create_graph=True`` (no double backward,
        except on the ``reference`` backend).
    """
    a = _check_table("a", a, None, None)
    b = _check_table("b", b, a.dtype, a.device)
    if a.shape[1] != b.shape[0] or a.shape[1] == 0:
        raise ValueError(
            f"{OP}: a [V, r] and b [r, D] need the same rank r >= 1, got a "
            f"{tuple(a.shape)} and b {tuple(b.shape)}"
        )
    device = a.device
    check_input_ids(OP, input_ids, device)
    scale = check_scale_and_offset(OP, scale, position_offset)
    dim = b.shape[1]
    positions = check_positional(
        OP, input_ids, "b", dim, device, pos_weight, positions, sinusoidal, sinusoid_base
    )
    # The base only matters with the sinusoid; otherwise any value is passed on unread.
    sinusoid_base = check_sinusoid_base(OP, sinusoid_base) if sinusoidal else 10000.0
    if pos_weight is not None:
        pos_weight = _check_table("pos_weight", pos_weight, a.dtype, device)
    padding_idx = check_padding_idx(OP, padding_idx, a.shape[0])
    hot_slots, hot_rows = _check_hot(a, b, hot_ids, hot_rows, hot_slots, check_indices)
    input_ids = input_ids.contiguous()
    backend = resolve_backend(OP, device, BACKENDS)
    mode = positional_mode(pos_weight, sinusoidal)
    if backend == "reference":
        if host_index_checks(check_indices, device):
            check_ranges(OP, input_ids, a.shape[0], pos_weight, positions, position_offset, mode)
        return reference.factorized_embedding(
            input_ids,
            a,
            b,
            hot_ids=None if hot_slots is None else hot_ids_of(hot_slots),
            hot_rows=hot_rows,
            scale=scale,
            pos_weight=pos_weight,
            positions=positions,
            position_offset=position_offset,
            sinusoidal=sinusoidal,
            sinusoid_base=sinusoid_base,
            padding_idx=padding_idx,
        )
    return run(
        factorized_embedding_op,
        _factorized_embedding,
        needs_grad(a, b, hot_rows, pos_weight),
        input_ids,
        a,
        b,
        hot_slots,
        hot_rows,
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
        autograd=_FactorizedEmbedding,
    )
