"""Attention over packed variable-length sequences as ``torch.library`` custom ops.

``attention_varlen(q [Tq, Hq, D], k [Tk, Hkv, D], v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
max_seqlen_k)`` has flash-attention's ``flash_attn_varlen_func`` semantics: ``N`` sequences
packed back to back, sequence ``n`` being rows ``[cu_seqlens_q[n], cu_seqlens_q[n + 1])`` of
``q`` and ``[cu_seqlens_k[n], cu_seqlens_k[n + 1])`` of ``k``/``v``; each attends only to its
own keys, causal (and the sliding window) bottom-right aligned within the sequence.

* ``triton``: the custom op ``fusedops::attention_varlen`` runs
  ``kernels/attention.py::attention_varlen_forward`` (one grid over ``max_seqlen_q`` query
  tiles per sequence, so no host sync) and its autograd ``fusedops::attention_varlen_backward``
  the launcher ``kernels/attention_backward.py::attention_varlen_backward``.
* ``cpp`` (CPU): a loop over the sequences (boundaries read on the host: free on CPU) running
  the CPU implementation of :func:`fusedops.attention` (SDPA, or plain PyTorch with a softcap)
  and its backward on ``[1, H, S, D]`` views of each sequence. As there, eager calls without a
  softcap that need no lse with their gradient run SDPA per sequence directly (SDPA's own
  backward); the custom op runs otherwise.
* ``reference``: :func:`fusedops.reference.attention_varlen`.
"""

from __future__ import annotations

import torch

from fusedops import reference
from fusedops._backend import resolve_backend
from fusedops.ops._common import (
    check_dtype,
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
from fusedops.ops.attention import (
    BACKENDS,
    NoDoubleBackward,
    _cpu_forward,
    _sdpa_backward,
    _sdpa_forward,
    check_heads,
    check_options,
    check_qkv_tensors,
    check_scale,
    empty_attention,
)

OP = "attention_varlen"


def _sequence(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``[start, end)`` of packed ``x [T, H, D]`` as a ``[1, H, S, D]`` view."""
    return x[start:end].transpose(0, 1).unsqueeze(0)


def _bounds(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor):
    """``(start_q, end_q, start_k, end_k)`` of every sequence (reads the boundaries on the host:
    the CPU implementation only)."""
    bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return [(bq[n], bq[n + 1], bk[n], bk[n + 1]) for n in range(len(bq) - 1)]


# ------------------------------------------------------------------------------------------
# Implementations per backend
# ------------------------------------------------------------------------------------------


def _per_sequence(q, k, v, cu_q, cu_k, attend, need_lse):
    """``(out [Tq, Hq, D], lse [Hq, Tq] or None)`` from ``attend(q, k, v)`` on the
    ``[1, H, S, D]`` views of each sequence (``-> (out, lse or None)``), concatenated."""
    bounds = _bounds(cu_q, cu_k)
    if not any(end_q > start_q and end_k > start_k for start_q, end_q, start_k, end_k in bounds):
        # No sequence has both queries and keys: every row is empty, and the zeros stay
        # connected to k and v too (zero gradients, not None).
        out, lse = empty_attention(q, k, v, (q.shape[1], q.shape[0]), True)
        return out, lse if need_lse else None
    outs, lses = [], []
    for start_q, end_q, start_k, end_k in bounds:
        qs = _sequence(q, start_q, end_q)
        if end_q > start_q and end_k == start_k:  # no keys: every row is empty
            o = empty_attention(qs, qs, qs, qs.shape[:3], True)
        elif end_q > start_q:
            o = attend(qs, _sequence(k, start_k, end_k), _sequence(v, start_k, end_k))
        else:
            continue
        outs.append(o[0][0].transpose(0, 1))  # [Hq, S, D] -> [S, Hq, D]
        lses.append(o[1][0] if need_lse else None)
    out = torch.cat(outs) if outs else torch.zeros_like(q)
    if not need_lse:
        return out, None
    lse = torch.cat(lses, dim=1) if lses else q.new_empty((q.shape[1], 0), dtype=torch.float32)
    return out, lse


def _cpu_varlen_forward(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window, softcap):
    def attend(qs, ks, vs):
        return _cpu_forward(qs, ks, vs, None, causal, scale, window, softcap)

    out, lse = _per_sequence(q, k, v, cu_q, cu_k, attend, True)
    return out.contiguous(), lse.contiguous()


def _cpu_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, max_q, max_k, causal, scale,
                         window, softcap):  # fmt: skip
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for start_q, end_q, start_k, end_k in _bounds(cu_q, cu_k):
        if end_q == start_q or end_k == start_k:
            continue  # no query or no key: zero gradients
        rows, keys = (start_q, end_q), (start_k, end_k)
        args = [_sequence(x, *r) for x, r in ((q, rows), (k, keys), (v, keys), (out, rows))]
        lse_s = lse[:, start_q:end_q].unsqueeze(0)  # [1, Hq, S]
        grads = _sdpa_backward(
            *args, lse_s, _sequence(dout, *rows), None, causal, scale, window, softcap
        )
        for full, grad, r in zip((dq, dk, dv), grads, (rows, keys, keys), strict=True):
            full[r[0] : r[1]] = grad[0].transpose(0, 1)
    return dq, dk, dv


def _triton_varlen_forward(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, window, softcap):
    from fusedops.kernels.attention import attention_varlen_forward

    total_q, heads_q, dim = q.shape
    out = empty_output((total_q, heads_q, dim), q.dtype, q.device)
    lse = empty_output((heads_q, total_q), torch.float32, q.device)
    attention_varlen_forward(
        q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal=causal, softmax_scale=scale,
        sliding_window=window, softcap=softcap,
    )  # fmt: skip
    return out, lse


def _triton_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, max_q, max_k, causal, scale,
                            window, softcap):  # fmt: skip
    from fusedops.kernels.attention_backward import attention_varlen_backward

    dq, dk, dv = (empty_output(tuple(x.shape), x.dtype, x.device) for x in (q, k, v))
    attention_varlen_backward(
        q, k, v, out, lse, dout, dq, dk, dv, cu_q, cu_k, max_q, max_k, causal=causal,
        softmax_scale=scale, sliding_window=window, softcap=softcap,
    )  # fmt: skip
    return dq, dk, dv


_FORWARD = {"cpp": _cpu_varlen_forward, "triton": _triton_varlen_forward}
_BACKWARD = {"cpp": _cpu_varlen_backward, "triton": _triton_varlen_backward}


# ------------------------------------------------------------------------------------------
# Custom ops and autograd
# ------------------------------------------------------------------------------------------


def _attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    check_indices: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [Tq, Hq, D] in q's dtype, lse [Hq, Tq] fp32)`` of validated inputs (stride(-1)
    == 1, contiguous int32 ``cu_seqlens``). ``check_indices`` checks the boundaries' values first
    (a device sync on CUDA; skipped while a CUDA graph is being captured, see
    ``host_index_checks``); the ``cpp`` backend always checks (it reads them on the host)."""
    if host_index_checks(check_indices, q.device) or backend == "cpp":
        _check_boundaries(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q,
                          max_seqlen_k)  # fmt: skip
    return implementation(OP, _FORWARD, backend)(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale,
        sliding_window, softcap,
    )  # fmt: skip


def _attention_varlen_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v`` (GQA grads summed over the group)."""
    return implementation(OP, _BACKWARD, backend)(
        q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
        softmax_scale, sliding_window, softcap,
    )  # fmt: skip


attention_varlen_op = torch.library.custom_op(
    "fusedops::attention_varlen", _attention_varlen, mutates_args=()
)
attention_varlen_backward_op = torch.library.custom_op(
    "fusedops::attention_varlen_backward", _attention_varlen_backward, mutates_args=()
)


@attention_varlen_op.register_fake
def _(q, *args):
    total_q, heads_q, dim = q.shape
    return q.new_empty((total_q, heads_q, dim)), q.new_empty(
        (heads_q, total_q), dtype=torch.float32
    )


@attention_varlen_backward_op.register_fake
def _(q, k, v, *args):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, *options, _check, backend = inputs  # options: max_q .. softcap
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = (*options, backend)


def _backward(ctx, grad_out, grad_lse):
    # grad_lse is ignored: the public API returns lse as a constant (documented).
    forbid_double_backward(OP)
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    args = (q, k, v, out, lse, unit_stride(grad_out), cu_q, cu_k, *ctx.args)
    dq, dk, dv = run(attention_varlen_backward_op, _attention_varlen_backward, False, *args)
    return dq, dk, dv, *([None] * 10)  # cu_seqlens x2, 6 options, check_indices, backend


attention_varlen_op.register_autograd(_backward, setup_context=_setup_context)
_AttentionVarlen = autograd_function(
    "_AttentionVarlen", _attention_varlen, _setup_context, _backward
)


# ------------------------------------------------------------------------------------------
# Validation and the public function
# ------------------------------------------------------------------------------------------


def _check_cu_seqlens(name: str, cu: torch.Tensor, device: torch.device) -> torch.Tensor:
    check_tensor(OP, name, cu)
    check_dtype(OP, name, cu, (torch.int32,))
    check_same_device(OP, name, cu, device)
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(
            f"{OP}: {name} must be 1-D [N + 1] with N >= 1 sequences, got shape {tuple(cu.shape)}"
        )
    return cu.contiguous()


def _check_max_seqlen(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{OP}: {name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{OP}: {name} must be >= 0, got {value}")
    return value


def _check_boundaries(cu_q, cu_k, total_q, total_k, max_q, max_k) -> None:
    """The values of ``cu_seqlens``: start at 0, non-decreasing, end at T, no sequence longer
    than its ``max_seqlen`` (reads them: a device sync on CUDA)."""
    for name, cu, total, longest in (("cu_seqlens_q", cu_q, total_q, max_q),
                                     ("cu_seqlens_k", cu_k, total_k, max_k)):  # fmt: skip
        first, last = int(cu[0]), int(cu[-1])
        if first != 0 or last != total:
            raise ValueError(
                f"{OP}: {name} must start at 0 and end at T={total}, got {first} and {last}"
            )
        lengths = cu[1:] - cu[:-1]
        if bool((lengths < 0).any()):
            raise ValueError(f"{OP}: {name} must be non-decreasing, got {cu.tolist()}")
        top = int(lengths.max())
        if top > longest:
            which = "max_seqlen_q" if name.endswith("q") else "max_seqlen_k"
            raise ValueError(f"{OP}: a sequence of length {top} exceeds {which}={longest}")


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    check_indices: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over packed variable-length sequences (flash-attention's
    ``flash_attn_varlen_func``).

    Sequence ``n`` is ``q[cu_seqlens_q[n]:cu_seqlens_q[n + 1]]`` against
    ``k``/``v[cu_seqlens_k[n]:cu_seqlens_k[n + 1]]``; sequences never see each other. Within a
    sequence of ``Sq`` queries and ``Sk`` keys everything is as in :func:`fusedops.attention`:
    bottom-right alignment ``p = i + Sk - Sq``, ``causal`` (``j <= p``), ``sliding_window``
    (``p - w < j <= p``), ``softcap``, GQA.

    Args:
        q: ``[Tq, Hq, D]`` packed queries, fp32/fp16/bf16, ``stride(-1) == 1``.
        k, v: ``[Tk, Hkv, D]``, same dtype and device; ``Hq % Hkv == 0``.
        cu_seqlens_q, cu_seqlens_k: int32 ``[N + 1]`` boundaries (``0, ..., T``,
            non-decreasing); a sequence may be empty.
        max_seqlen_q, max_seqlen_k: the longest sequence of each (ints, given by the caller so
            the kernels size their grid without reading ``cu_seqlens``).
        causal, softmax_scale, sliding_window, softcap: as in :func:`fusedops.attention`.
        return_lse: also return ``lse [Hq, Tq]`` fp32 (flash-attention's layout), a constant.
        check_indices: check the values of ``cu_seqlens`` (start 0, non-decreasing, end at T,
            lengths within ``max_seqlen``). On CUDA this syncs the device; pass False for the
            sync-free call (the boundaries are then trusted). Skipped while a CUDA graph is
            being captured (as with False). The CPU (``cpp``) backend always checks: it reads
            the boundaries on the host anyway.
    Returns:
        ``out [Tq, Hq, D]`` in q's dtype (math in fp32), and ``(out, lse)`` with
        ``return_lse``. Rows with no allowed key are zeros (lse ``-inf``); NaNs follow
        :func:`fusedops.attention`'s rule. A backward with ``create_graph=True`` raises.
    Raises:
        TypeError / ValueError naming the bad argument (messages start with
        ``attention_varlen:``); RuntimeError if the requested backend cannot run.
    """
    check_qkv_tensors(OP, q, k, v, "THD")
    if k.shape[2] != q.shape[2]:
        raise ValueError(
            f"{OP}: k {tuple(k.shape)} must match q {tuple(q.shape)} in head dim "
            "([Tk, Hkv, D] vs [Tq, Hq, D])"
        )
    check_heads(OP, q.shape[1], k.shape[1], q.shape[2])
    cu_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device)
    cu_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q.device)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(
            f"{OP}: cu_seqlens_q and cu_seqlens_k must both be [N + 1], got {cu_q.numel()} and "
            f"{cu_k.numel()} entries"
        )
    max_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k)
    cap = check_options(OP, causal, sliding_window, softcap, return_lse)
    scale = check_scale(OP, softmax_scale, q.shape[2])
    if not isinstance(check_indices, bool):
        raise TypeError(f"{OP}: check_indices must be a bool, got {check_indices!r}")
    backend = resolve_backend(OP, q.device, BACKENDS)
    if backend == "reference":
        _check_boundaries(cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)
        result = reference.attention_varlen(
            q, k, v, cu_q, cu_k, causal=causal, softmax_scale=scale, sliding_window=sliding_window,
            softcap=cap, return_lse=True,
        )  # fmt: skip
        return result if return_lse else result[0]
    if q.numel() == 0 or k.numel() == 0:
        if host_index_checks(check_indices, q.device) or backend == "cpp":
            _check_boundaries(cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)
        return empty_attention(q, k, v, (q.shape[1], q.shape[0]), return_lse)
    q, k, v = unit_stride(q), unit_stride(k), unit_stride(v)
    grad = needs_grad(q, k, v)
    if backend == "cpp" and cap is None and not (return_lse and grad) and runs_eagerly():
        # As fusedops.attention on CPU: SDPA per sequence directly (its own backward), without
        # the lse's extra q k^T unless it is asked for.
        _check_boundaries(cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)

        def attend(qs, ks, vs):
            return _sdpa_forward(qs, ks, vs, None, causal, scale, return_lse, sliding_window)

        out, lse = _per_sequence(q, k, v, cu_q, cu_k, attend, return_lse)
        if grad:
            out = NoDoubleBackward.apply(out, OP)
        return (out, lse.float().detach()) if return_lse else out
    out, lse = run(
        attention_varlen_op, _attention_varlen, grad, q, k, v, cu_q, cu_k, max_q, max_k, causal,
        scale, sliding_window, cap, check_indices, backend, autograd=_AttentionVarlen,
    )  # fmt: skip
    return (out, lse.detach()) if return_lse else out
