"""Fused causal attention as ``torch.library`` custom ops: validation, dispatch, autograd.

``attention(q, k, v)`` computes ``softmax(s + mask) v`` for ``q [B, Hq, Sq, D]`` and
``k``/``v`` ``[B, Hkv, Sk, D]`` (GQA/MQA when ``Hkv < Hq``), where ``s = scale * q k^T`` or,
with ``softcap = c``, ``c * tanh(scale * q k^T / c)``; the mask is bottom-right causal (query
``i`` sees key ``j`` iff ``j <= p = i + Sk - Sq``), optionally a sliding window (``p - w < j``),
and/or a key padding mask. Backends:

* ``triton`` (CUDA, or CPU through Triton's interpreter): the custom op ``fusedops::attention``
  runs the FA2 forward launcher ``kernels/attention.py`` (online softmax, never materialises the
  ``[Sq, Sk]`` scores) and its autograd the backward op ``fusedops::attention_backward``, which
  runs ``kernels/attention_backward.py`` (deterministic, no atomics).
* ``cpp`` (the ``auto`` choice on CPU) is PyTorch's ``scaled_dot_product_attention`` (SDPA, its
  fused CPU flash kernel; no ``fusedops._C`` op) with an explicit boolean mask built here:
  bottom-right causal combined with the padding mask; ``is_causal=True`` when ``Sq == Sk``
  without padding (the same mask, SDPA's faster path); GQA through ``enable_gqa`` (no copies of
  k/v). Rows with no allowed key are given an all-True mask row (SDPA would return NaN) and
  zeroed afterwards; rows whose query holds a NaN are set to NaN (SDPA's CPU kernel returns
  zeros for them when it runs without an explicit mask), found by one reduction over q. When
  ``return_lse`` is asked for, or a gradient is needed, the lse is ``logsumexp`` of the masked
  scores (one extra ``q k^T``, materialised). Without ``return_lse`` SDPA is called directly,
  and autograd runs SDPA's own backward. With ``return_lse`` and a gradient the custom op runs
  instead: its backward recomputes the probabilities from the lse in fp32 (plain PyTorch,
  materialises ``[Sq, Sk]``; slower). ``sliding_window`` is one more term of the explicit
  mask. ``softcap`` cannot be expressed to SDPA: the custom op then runs plain fp32 PyTorch
  (materialised ``[Sq, Sk]`` scores, capped, masked, softmaxed) with the same hand-written
  backward, times the tanh derivative.
* ``reference``: :func:`fusedops.reference.attention` (plain PyTorch, fp32 math).

NaN rule (every backend): a NaN in a query row, or in a key/value the row attends to, reaches
that row's output; a row with no allowed key is zeros (lse ``-inf``) whatever its query and
the keys/values it may not see hold. No backward has a derivative of its own: a backward with
``create_graph=True`` raises at once, naming the op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.masks import attention_mask
from fusedops.ops._common import (
    FLOAT_DTYPES,
    check_real_scalar,
    check_same_device,
    check_tensor,
    empty_output,
    forbid_double_backward,
    unit_stride,
)
from fusedops.ops._dispatch import (
    autograd_function,
    implementation,
    needs_grad,
    run,
    runs_eagerly,
)

OP = "attention"
BACKENDS = OpBackends()  # "cpp" is SDPA: no extension op
MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256


# ------------------------------------------------------------------------------------------
# The SDPA implementation (backend "cpp")
# ------------------------------------------------------------------------------------------


def _mask(q, k, causal, key_padding_mask, window=None):
    return attention_mask(
        q.shape[2],
        k.shape[2],
        causal=causal,
        key_padding_mask=key_padding_mask,
        device=q.device,
        sliding_window=window,
    )


def _sdpa_window_blocks(q, k, v, key_padding_mask, scale, need_lse, window):
    """Sliding window by query blocks: each block of ``block`` queries runs SDPA over the
    ``block + window - 1`` keys its rows may see, so the cost is O(S * w), not O(S^2)."""
    seq_q, seq_k = q.shape[2], k.shape[2]
    shift, block = seq_k - seq_q, max(window, 256)
    outs, lses = [], []
    for start in range(0, seq_q, block):
        end = min(start + block, seq_q)
        # Keys [lo, hi) with hi = end + shift: the block keeps the bottom-right alignment.
        lo, hi = max(0, start + shift - window + 1), end + shift
        pad = None if key_padding_mask is None else key_padding_mask[:, max(lo, 0) : max(hi, 0)]
        ks, vs = k[:, :, max(lo, 0) : max(hi, 0)], v[:, :, max(lo, 0) : max(hi, 0)]
        if hi <= 0:  # no key for any row of the block
            outs.append(torch.zeros_like(q[:, :, start:end]))
            lses.append(torch.full(q[:, :, start:end, 0].shape, float("-inf"), device=q.device))
            continue
        out, lse = _sdpa_forward(q[:, :, start:end], ks, vs, pad, True, scale, need_lse, window)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2) if need_lse else None


def _sdpa_forward(q, k, v, key_padding_mask, causal, scale, need_lse, window=None):
    """``(out, lse or None)`` through torch SDPA; rows with no allowed key give zeros / -inf,
    rows whose query holds a NaN give NaN (:func:`_nan_query_rows`)."""
    seq_q, seq_k = q.shape[2], k.shape[2]
    if window is not None and seq_q > max(window, 256) and seq_k > 2 * max(window, 256):
        return _sdpa_window_blocks(q, k, v, key_padding_mask, scale, need_lse, window)
    # Under torch.compile the head counts may be symbolic (dynamic=True) and so would be their
    # comparison, where SDPA takes a plain bool: traced calls pass True, which with Hq == Hkv
    # runs the same CPU kernel (measured bit-identical).
    gqa = torch.compiler.is_compiling() or q.shape[1] != k.shape[1]
    row_ok = None
    if causal and seq_q == 1 and window is None:
        causal = False  # bottom-right: a single (decode) query sees every key; no mask to build
    if causal and seq_q == seq_k and key_padding_mask is None and window is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        mask = None
        if need_lse:
            mask = _mask(q, k, causal, None)
    else:
        mask = _mask(q, k, causal, key_padding_mask, window)
        sdpa_mask = mask
        if mask is not None:
            row_ok = mask.any(dim=-1, keepdim=True)  # [B or 1, 1, Sq, 1]
            sdpa_mask = mask | ~row_ok
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=sdpa_mask, scale=scale, enable_gqa=gqa
        )
        if row_ok is not None:
            out = out.masked_fill(~row_ok, 0.0)
    out = _nan_query_rows(q, out, row_ok)
    lse = None
    if need_lse:
        lse = _scores(q, k, mask, scale).logsumexp(dim=-1)
    return out, lse


def _nan_query_rows(q, out, row_ok):
    """``out`` with NaN in the rows whose query holds a NaN and that have an allowed key
    (``row_ok [B or 1, 1, Sq, 1]``, None: every row). SDPA's fused CPU kernel returns zeros for
    such a row when it runs without an explicit mask (causal or none); the rule is NaN. One
    reduction over q finds them (a NaN makes its row's sum NaN; so do values overflowing both
    ways, whose scores overflow too): O(B Hq Sq D), as much as reading q once."""
    bad = q.detach().sum(dim=-1, keepdim=True).isnan()  # [B, Hq, Sq, 1]
    if row_ok is not None:
        bad = bad & row_ok
    if runs_eagerly() and not bool(bad.any()):  # CPU tensors: the check costs no sync
        return out
    return out.masked_fill(bad, float("nan"))


def _expand_kv(x: torch.Tensor, heads_q: int) -> torch.Tensor:
    group = heads_q // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def _raw_scores(q, k, scale):
    """fp32 ``scale * q k^T`` ``[B, Hq, Sq, Sk]``."""
    return torch.matmul(q.float(), _expand_kv(k, q.shape[1]).float().transpose(-1, -2)) * scale


def _scores(q, k, mask, scale, softcap=None):
    """fp32 scores ``[B, Hq, Sq, Sk]`` (``softcap * tanh(raw / softcap)`` with a softcap) with
    disallowed entries at ``-inf``."""
    s = _raw_scores(q, k, scale)
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def _sdpa_backward(q, k, v, out, lse, dout, key_padding_mask, causal, scale, window=None,
                   softcap=None):  # fmt: skip
    """Backward of the CPU forward from its lse: FA2's equations in plain fp32 PyTorch
    (materialises ``[Sq, Sk]``); with a softcap ``dS`` is multiplied by ``1 - tanh^2``."""
    heads_q, heads_kv = q.shape[1], k.shape[1]
    group = heads_q // heads_kv
    mask = _mask(q, k, causal, key_padding_mask, window)
    raw = _raw_scores(q, k, scale)  # [B, Hq, Sq, Sk]
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(raw / softcap)
        raw = tanh * softcap
    s = raw if mask is None else raw.masked_fill(~mask, float("-inf"))
    lse_safe = torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1)
    p = torch.exp(s - lse_safe)  # 0 at -inf scores (including rows with no allowed key)
    do = dout.float()
    kf, vf = _expand_kv(k, heads_q).float(), _expand_kv(v, heads_q).float()
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, vf.transpose(-1, -2))
    delta = (do * out.float()).sum(dim=-1, keepdim=True)
    ds = p * (dp - delta) * scale
    if tanh is not None:
        ds = ds * (1.0 - tanh * tanh)  # d(c * tanh(x / c)) / dx
    dq = torch.matmul(ds, kf)
    dk = torch.matmul(ds.transpose(-1, -2), q.float())
    if group != 1:
        b, _, seq_k, dim = dk.shape
        dk = dk.view(b, heads_kv, group, seq_k, dim).sum(dim=2)
        dv = dv.view(b, heads_kv, group, seq_k, dim).sum(dim=2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _softcap_forward(q, k, v, key_padding_mask, causal, scale, window, softcap):
    """``(out, lse)`` with capped scores in plain fp32 PyTorch (SDPA has no softcap)."""
    mask = _mask(q, k, causal, key_padding_mask, window)
    s = _scores(q, k, mask, scale, softcap)  # [B, Hq, Sq, Sk]
    lse = s.logsumexp(dim=-1)  # -inf for rows with no allowed key
    empty = (lse == float("-inf")).unsqueeze(-1)  # [B, Hq, Sq, 1]
    p = torch.exp(s - torch.where(empty, 0.0, lse.unsqueeze(-1)))
    out = torch.matmul(p, _expand_kv(v, q.shape[1]).float())
    # A row with no allowed key is zeros even where the values it may not see are NaN (0 * NaN).
    return out.masked_fill(empty, 0.0).to(q.dtype), lse


def _cpu_forward(q, k, v, key_padding_mask, causal, scale, window=None, softcap=None):
    """``(out, lse)`` of the ``cpp`` backend: SDPA, or plain PyTorch with a softcap."""
    if softcap is not None:
        return _softcap_forward(q, k, v, key_padding_mask, causal, scale, window, softcap)
    out, lse = _sdpa_forward(q, k, v, key_padding_mask, causal, scale, True, window)
    return out.contiguous(), lse.float().contiguous()


# ------------------------------------------------------------------------------------------
# The Triton implementation
# ------------------------------------------------------------------------------------------


def _triton_forward(q, k, v, key_padding_mask, causal, scale, window=None, softcap=None):
    from fusedops.kernels.attention import attention_forward

    b, h, s, d = q.shape
    out = empty_output((b, h, s, d), q.dtype, q.device)
    lse = empty_output((b, h, s), torch.float32, q.device)
    attention_forward(
        q, k, v, out, lse, causal=causal, softmax_scale=scale, key_padding_mask=key_padding_mask,
        sliding_window=window, softcap=softcap,
    )  # fmt: skip
    return out, lse


def _triton_backward(q, k, v, out, lse, dout, key_padding_mask, causal, scale, window=None,
                     softcap=None):  # fmt: skip
    from fusedops.kernels.attention_backward import attention_backward

    dq = empty_output(tuple(q.shape), q.dtype, q.device)
    dk = empty_output(tuple(k.shape), k.dtype, k.device)
    dv = empty_output(tuple(v.shape), v.dtype, v.device)
    attention_backward(
        q, k, v, out, lse, dout, dq, dk, dv, causal=causal, softmax_scale=scale,
        key_padding_mask=key_padding_mask, sliding_window=window, softcap=softcap,
    )  # fmt: skip
    return dq, dk, dv


_FORWARD = {"cpp": _cpu_forward, "triton": _triton_forward}
_BACKWARD = {"cpp": _sdpa_backward, "triton": _triton_backward}


# ------------------------------------------------------------------------------------------
# Custom ops and autograd
# ------------------------------------------------------------------------------------------


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Hq, Sq, D] in q's dtype, lse [B, Hq, Sq] fp32)`` of validated inputs
    (stride(-1) == 1; ``key_padding_mask`` contiguous bool ``[B, Sk]`` or None)."""
    return implementation(OP, _FORWARD, backend)(
        q, k, v, key_padding_mask, causal, softmax_scale, sliding_window, softcap
    )


def _attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v`` (GQA grads summed over the group)."""
    return implementation(OP, _BACKWARD, backend)(
        q, k, v, out, lse, dout, key_padding_mask, causal, softmax_scale, sliding_window, softcap
    )


attention_op = torch.library.custom_op("fusedops::attention", _attention, mutates_args=())
attention_backward_op = torch.library.custom_op(
    "fusedops::attention_backward", _attention_backward, mutates_args=()
)


@attention_op.register_fake
def _(q, k, v, *args):
    b, h, s, d = q.shape
    return q.new_empty((b, h, s, d)), q.new_empty((b, h, s), dtype=torch.float32)


@attention_backward_op.register_fake
def _(q, k, v, *args):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, *options = inputs  # causal, scale, window, softcap, backend
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
    ctx.args = tuple(options)


def _backward(ctx, grad_out, grad_lse):
    # grad_lse is ignored: the public API returns lse as a constant (documented).
    forbid_double_backward(OP)
    q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
    args = (q, k, v, out, lse, unit_stride(grad_out), key_padding_mask, *ctx.args)
    dq, dk, dv = run(attention_backward_op, _attention_backward, False, *args)
    return dq, dk, dv, *([None] * (1 + len(ctx.args)))  # mask + options


attention_op.register_autograd(_backward, setup_context=_setup_context)
_Attention = autograd_function("_Attention", _attention, _setup_context, _backward)


class NoDoubleBackward(torch.autograd.Function):
    """Identity on an output differentiated by SDPA's own backward (the eager CPU path), whose
    backward refuses ``create_graph=True`` naming the public op: SDPA's CPU backward has no
    derivative, so the second backward would fail naming aten's internals."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, op: str) -> torch.Tensor:
        ctx.op = op
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        forbid_double_backward(ctx.op)
        return grad, None


# ------------------------------------------------------------------------------------------
# Validation and the public function
# ------------------------------------------------------------------------------------------


def check_qkv_tensors(op: str, q, k, v, layout: str) -> None:
    """q, k, v are float tensors of ``len(layout)`` dims (``layout`` names them, e.g.
    ``"BHSD"``), of one dtype and device, with ``k.shape == v.shape``."""
    ndim = len(layout)
    dims = ", ".join(layout)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t)
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op}: {name} must have dtype in (float32, float16, bfloat16), got {t.dtype}"
            )
        if t.dim() != ndim:
            raise ValueError(f"{op}: {name} must be {ndim}-D [{dims}], got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} dtype {t.dtype} differs from q dtype {q.dtype}")
        check_same_device(op, name, t, q.device)
    if k.shape != v.shape:
        raise ValueError(
            f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )


def check_heads(op: str, heads_q: int, heads_kv: int, dim: int) -> None:
    """GQA head counts (``Hq % Hkv == 0``) and the kernels' head-dim range."""
    if heads_kv < 1 or heads_q % heads_kv:
        raise ValueError(
            f"{op}: the number of query heads Hq={heads_q} must be a multiple of the number of "
            f"kv heads Hkv={heads_kv}"
        )
    if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"{op}: head dim D={dim} outside the supported range [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]"
        )


def _check_qkv(op, q, k, v):
    check_qkv_tensors(op, q, k, v, "BHSD")
    batch, heads_q, _, dim = q.shape
    k_batch, heads_kv, _, k_dim = k.shape
    if k_batch != batch or k_dim != dim:
        raise ValueError(
            f"{op}: k {tuple(k.shape)} must match q {tuple(q.shape)} in batch and head dim "
            "([B, Hkv, Sk, D] vs [B, Hq, Sq, D])"
        )
    check_heads(op, heads_q, heads_kv, dim)


def _check_mask(op, mask, batch, seq_k, device):
    if mask is None:
        return None
    check_tensor(op, "key_padding_mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{op}: key_padding_mask must be a bool tensor (True = attend), got {mask.dtype}"
        )
    if tuple(mask.shape) != (batch, seq_k):
        raise ValueError(
            f"{op}: key_padding_mask must be [B, Sk] = [{batch}, {seq_k}], got {tuple(mask.shape)}"
        )
    check_same_device(op, "key_padding_mask", mask, device)
    return mask.contiguous()


def check_scale(
    op: str, softmax_scale: float | None, dim: int | torch.SymInt
) -> float | torch.SymFloat:
    """The softmax scale: ``1 / sqrt(dim)`` for None, else a finite real number > 0
    (:func:`check_real_scalar`: a symbolic one under ``torch.compile(dynamic=True)`` passes)."""
    if softmax_scale is None:
        return 1.0 / torch.sym_sqrt(dim)  # math.sqrt for an int, symbolic for a SymInt
    return check_real_scalar(op, "softmax_scale", softmax_scale, positive=True)


def check_options(
    op: str,
    causal: bool,
    sliding_window: int | None,
    softcap: float | None,
    return_lse: bool,
) -> float | torch.SymFloat | None:
    """Check the flags, ``sliding_window`` (int >= 1, needs ``causal``) and ``softcap`` (finite
    real number > 0); return the softcap as a float (a symbolic one passes through) or None."""
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {causal!r}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"{op}: return_lse must be a bool, got {return_lse!r}")
    if sliding_window is not None:
        if isinstance(sliding_window, bool) or not isinstance(sliding_window, int):
            raise TypeError(f"{op}: sliding_window must be an int or None, got {sliding_window!r}")
        if sliding_window < 1:
            raise ValueError(f"{op}: sliding_window must be >= 1, got {sliding_window}")
        if not causal:
            raise ValueError(
                f"{op}: sliding_window={sliding_window} needs causal=True (the window is the "
                "last w keys up to each query's bottom-right aligned position)"
            )
    if softcap is None:
        return None
    return check_real_scalar(op, "softcap", softcap, positive=True)


def check_attention_args(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> tuple[float, torch.Tensor | None]:
    """Check the arguments of :func:`attention` as ``op`` (the name errors start with, e.g. a
    wrapper's); return the softmax scale and the contiguous key padding mask (or None)."""
    scale, _, mask = _checked_args(
        op, q, k, v, causal, softmax_scale, key_padding_mask, return_lse, sliding_window, softcap
    )
    return scale, mask


def _checked_args(op, q, k, v, causal, softmax_scale, key_padding_mask, return_lse,
                  sliding_window, softcap):  # fmt: skip
    """``(scale, softcap or None, key padding mask or None)`` of checked arguments."""
    _check_qkv(op, q, k, v)
    cap = check_options(op, causal, sliding_window, softcap, return_lse)
    scale = check_scale(op, softmax_scale, q.shape[3])
    return scale, cap, _check_mask(op, key_padding_mask, q.shape[0], k.shape[2], q.device)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention (FlashAttention-2 style on the Triton backend).

    Args:
        q: ``[B, Hq, Sq, D]`` fp32/fp16/bf16, any strides with ``stride(-1) == 1`` (so
            ``[B, S, H, D].transpose(1, 2)`` views work without a copy).
        k, v: ``[B, Hkv, Sk, D]``, same dtype and device; ``Hq % Hkv == 0`` (query head ``h``
            uses kv head ``h // (Hq // Hkv)``: GQA/MQA without repeating k/v).
        causal: bottom-right causal mask: query ``i`` attends key ``j`` iff
            ``j <= p = i + Sk - Sq`` (so a decode step ``Sq = 1`` sees every cached key).
        softmax_scale: a finite real number > 0 (Python, NumPy or a 0-d tensor; a symbolic
            one under ``torch.compile(dynamic=True)``); defaults to ``1 / sqrt(D)``.
        key_padding_mask: bool ``[B, Sk]``, True = attend (combinable with ``causal``).
        sliding_window: ``w`` (int >= 1, needs ``causal=True``): query ``i`` attends key ``j``
            iff ``p - w < j <= p``, the last ``w`` keys up to its position (Hugging Face's
            ``sliding_window``). The Triton kernels skip key tiles outside the window.
        softcap: ``c`` (a finite real number > 0): scores ``c * tanh(scale * q.k / c)``
            before the softmax (Gemma-2); the backward includes the tanh derivative. On CPU
            this runs plain PyTorch (materialised ``[Sq, Sk]`` scores) inside the custom op:
            SDPA has no softcap.
        return_lse: also return ``lse [B, Hq, Sq]`` fp32, the natural log of each row's
            softmax denominator (``-inf`` for a row with no allowed key). It is returned as a
            constant: no gradient flows back through it.
    Returns:
        ``out [B, Hq, Sq, D]`` in q's dtype (math in fp32). NaN rule: a NaN in a query row, or
        in a key/value the row attends to, makes the row NaN; a row with no allowed key is
        zeros whatever its query and the keys/values it may not see hold (its dq is zero and
        it adds nothing to dk/dv). ``(out, lse)`` when ``return_lse``. Empty ``Sq`` or ``Sk``
        give zeros whose gradients are zero tensors of the inputs' shapes.
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options (the message starts
        with ``attention:`` and names the bad value); RuntimeError if the requested backend
        cannot run, or when a backward runs with ``create_graph=True`` (no double backward;
        :func:`fusedops.reference.attention` has one).
    """
    scale, cap, mask = _checked_args(
        OP, q, k, v, causal, softmax_scale, key_padding_mask, return_lse, sliding_window, softcap
    )
    backend = resolve_backend(OP, q.device, BACKENDS)
    if backend == "reference":
        result = reference.attention(
            q, k, v, causal=causal, softmax_scale=scale, key_padding_mask=mask, return_lse=True,
            sliding_window=sliding_window, softcap=cap,
        )  # fmt: skip
        return result if return_lse else result[0]
    if q.numel() == 0 or k.shape[2] == 0:
        return empty_attention(q, k, v, q.shape[:3], return_lse)
    q, k, v = unit_stride(q), unit_stride(k), unit_stride(v)
    grad = needs_grad(q, k, v)
    if backend == "cpp" and cap is None and not (return_lse and grad):
        # SDPA directly (its own fused backward when a gradient is needed); the custom op (lse
        # + a materialising fp32 backward) only when the lse is asked for with a gradient.
        out, lse = _sdpa_forward(q, k, v, mask, causal, scale, return_lse, sliding_window)
        if grad and runs_eagerly():
            out = NoDoubleBackward.apply(out, OP)
        return (out, lse.float().detach()) if return_lse else out
    out, lse = run(
        attention_op, _attention, grad, q, k, v, mask, causal, scale, sliding_window, cap,
        backend, autograd=_Attention,
    )  # fmt: skip
    return (out, lse.detach()) if return_lse else out


def empty_attention(q, k, v, lse_shape, return_lse):
    """The result when there is nothing to attend (no queries, or no keys: every row is empty):
    zeros (lse ``-inf``, shaped ``lse_shape``). A where() on a constant False gives zeros that
    stay connected to q, k and v in autograd (zero gradients) without multiplying them by 0
    (inf * 0 would be NaN)."""
    never = torch.zeros((), dtype=torch.bool, device=q.device)
    inputs = q + (k.sum() + v.sum())  # like q: never selected
    out = torch.where(never, inputs, torch.zeros((), dtype=q.dtype, device=q.device))
    lse = torch.full(tuple(lse_shape), float("-inf"), dtype=torch.float32, device=q.device)
    return (out, lse) if return_lse else out
