"""Shared test helpers: the dtype list, the one tolerance table, comparisons, backend cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedops

HAS_CUDA = torch.cuda.is_available()
# Where the Triton kernels run when called directly: natively on CUDA, else in the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"

# The floating dtypes every op takes (activations, tables, outputs); tests run all of them.
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (atol, rtol) of a kernel output in this dtype against an fp64 reference. fp16/bf16 allow
# about one ulp (Triton's interpreter truncates fp32 -> bf16 stores instead of rounding).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 2e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    atol_extra: float = 0.0,
    rtol_scale: float = 1.0,
    msg: str = "",
) -> None:
    """Compare ``actual`` (kernel output) to ``expected`` (reference, any precision) with the
    tolerance of ``dtype`` (default: ``actual.dtype``). NaN anywhere fails."""
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{msg} shape {actual.shape} != {expected.shape}"
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    assert not torch.isnan(a).any(), f"{msg} output has NaN (unwritten or poisoned elements)"
    torch.testing.assert_close(
        a, e, atol=atol + atol_extra, rtol=rtol * rtol_scale, msg=lambda m: f"{msg} {m}"
    )


# The positional term of the lookups (fused_embedding, int8_embedding).
POS_MODES = ["none", "learned", "sinusoid"]


def pos_kwargs(mode: str, pos_weight: torch.Tensor) -> dict:
    """The lookup's keyword arguments for positional ``mode`` (one of ``POS_MODES``)."""
    if mode == "learned":
        return {"pos_weight": pos_weight}
    return {"sinusoidal": True} if mode == "sinusoid" else {}


def sinusoid_atol(mode: str, max_pos: int) -> float:
    """Extra atol of a lookup in positional ``mode`` at positions < ``max_pos``: for the in-kernel
    sinusoid only sin/cos of the shared fp32 angle differ between implementations (~1 ulp of
    the angle in the argument reduction), so a few fp32 ulps of ``max_pos``; else 0."""
    return 8 * max_pos * 2.0**-24 if mode == "sinusoid" else 0.0


# Attention's bound (flash-attention's): the kernel's max abs error against fp64 may be twice
# that of the same math done by PyTorch in the input dtype (the yardstick) plus this floor
# times max(1, max |fp64 value|). (fp32: a gradient that is exactly 0 in fp64 and in the
# yardstick, e.g. dk with a single key, still sums Sq rounded terms in any kernel.)
ATTENTION_FLOOR: dict[torch.dtype, float] = {
    torch.float32: 5e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in fp64 on the CPU (0 for empty tensors)."""
    if actual.numel() == 0:
        return 0.0
    diff = actual.detach().double().cpu() - expected.detach().double().cpu()
    return diff.abs().max().item()


def assert_attention_bound(
    name: str,
    actual: torch.Tensor,
    yardstick: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
) -> float:
    """``actual`` (kernel) and ``yardstick`` (PyTorch in ``dtype``) against ``expected``
    (fp64): fails on NaN or when the kernel's error exceeds the bound. Returns the error."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert not torch.isnan(actual).any(), f"{name}: NaN (unwritten or poisoned elements)"
    err, base = max_abs_error(actual, expected), max_abs_error(yardstick, expected)
    top = expected.detach().abs().max().item() if expected.numel() else 0.0
    floor = ATTENTION_FLOOR[dtype] * max(1.0, top)
    assert err <= 2 * base + floor, (
        f"{name}: max error {err:.3g} > 2 x PyTorch-in-{dtype}'s {base:.3g} + floor {floor:.3g}"
    )
    return err


LSE_TOL = 1e-4  # attention's lse (fp32) against fp64: this times (1 + max |lse|)


def check_attention(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dout: torch.Tensor | None = None,
    return_lse: bool = True,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``fusedops.attention`` on ``backend`` against the fp64 reference with the bound: the
    output, the lse (-inf exactly where a row has no allowed key, else close in fp32) and, given
    an upstream ``dout`` (q, k, v requiring grad), dq/dk/dv. Returns ``(out, lse or None)``."""
    dtype = q.dtype
    with fusedops.use_backend(backend):
        result = fusedops.attention(q, k, v, return_lse=return_lse, **kwargs)
    out, lse = result if return_lse else (result, None)
    assert out.shape == q.shape and out.dtype == dtype, (out.shape, out.dtype)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want, want_lse = fusedops.reference.attention(q64, k64, v64, return_lse=True, **kwargs)
    yardstick = fusedops.reference.attention(q, k, v, compute_dtype=dtype, **kwargs)
    assert_attention_bound("out", out, yardstick, want, dtype)
    if lse is not None:
        assert lse.shape == q.shape[:3] and lse.dtype == torch.float32, (lse.shape, lse.dtype)
        empty = torch.isinf(want_lse)
        assert torch.equal(torch.isinf(lse), empty) and bool((lse[empty] < 0).all())
        if not empty.all():
            err = max_abs_error(lse[~empty], want_lse[~empty])
            top = want_lse[~empty].abs().max().item()
            assert err <= LSE_TOL * (1 + top), f"lse error {err:.3g}"
    if dout is None:
        return out, lse
    got = torch.autograd.grad(out, (q, k, v), dout)
    want_grads = torch.autograd.grad(want, (q64, k64, v64), dout.double())
    yard_grads = torch.autograd.grad(yardstick, (q, k, v), dout)
    for name, g, y, r in zip(("dq", "dk", "dv"), got, yard_grads, want_grads, strict=True):
        assert g.shape == r.shape and g.dtype == dtype, (name, g.shape, g.dtype)
        assert_attention_bound(name, g, y, r, dtype)
    return out, lse


def backend_cases(*, reference: bool = True, triton: bool = True) -> list:
    """(backend, device) pairs an op is tested on: its C++ kernel on CPU; Triton natively on
    CUDA, else through the interpreter on CPU; the reference on CPU (and CUDA). An op without a
    Triton kernel (``triton=False``: INT8) runs its extension's CUDA kernel through ``cpp``."""
    cases = [pytest.param("cpp", "cpu", id="cpp-cpu")]
    if reference:
        cases.append(pytest.param("reference", "cpu", id="reference-cpu"))
    if HAS_CUDA:
        cuda = pytest.mark.cuda
        kernel = "triton" if triton else "cpp"
        cases.append(pytest.param(kernel, "cuda", id=f"{kernel}-cuda", marks=cuda))
        if reference:
            cases.append(pytest.param("reference", "cuda", id="reference-cuda", marks=cuda))
    elif triton:
        cases.append(pytest.param("triton", "cpu", id="triton-interpreter"))
    return cases


KERNEL_CASES = backend_cases(reference=False)


@st.composite
def sizes(draw, *highs: int) -> tuple[int, ...]:
    """One dim in ``[1, high]`` per ``high``; in about one draw in five one of them is 0 instead
    (so a small example budget still sees mostly non-empty tensors)."""
    dims = [draw(st.integers(1, high)) for high in highs]
    if dims and draw(st.sampled_from([False, False, False, False, True])):
        dims[draw(st.integers(0, len(dims) - 1))] = 0
    return tuple(dims)


@st.composite
def lookup_calls(draw, vocab: int) -> dict:
    """What the lookups (fused_embedding, int8_embedding) share, drawn for a ``vocab``-row
    table: ids ``[*lead, S]`` (0- and 1-sized dims, int32/int64, maybe a ``[..., ::2]`` view),
    ``scale``, ``padding_idx``, ``check_indices``, the positional mode and how positions are
    given (an offset, per token, or ``[1, S]`` broadcast over the batch) below ``max_pos``."""
    *lead, seq = draw(st.integers(0, 2).flatmap(lambda n: sizes(*[4] * n, 6)))
    mode = draw(st.sampled_from(POS_MODES))
    call = {
        "vocab": vocab,
        "lead": lead,
        "seq": seq,
        "id_dtype": draw(st.sampled_from([torch.int32, torch.int64])),
        "id_step": draw(st.integers(1, 2)),
        "scale": draw(st.floats(-4.0, 4.0, allow_subnormal=False)),
        "padding_idx": draw(st.one_of(st.none(), st.integers(-vocab, vocab - 1))),
        "check_indices": draw(st.booleans()),  # in-range inputs: the same result either way
        "mode": mode,
        "num_pos": draw(st.integers(6, 40)),
        "positions": "offset",
        "offset": 0,
    }
    if mode != "none":
        call["positions"] = draw(st.sampled_from(["offset", "full", "broadcast"]))
    call["max_pos"] = call["num_pos"]
    if mode == "sinusoid":
        call["base"] = draw(st.sampled_from([10000.0, 500.0]))
        call["max_pos"] = draw(st.sampled_from([16, 1 << 16]))  # up to the sinusoid's limit
    if call["positions"] == "offset":
        call["offset"] = draw(st.integers(0, max(0, call["max_pos"] - seq)))
    return call


def lookup_arguments(call: dict, pos_weight: torch.Tensor, device: str, gen) -> tuple:
    """``(input_ids, kwargs)`` of a call drawn by :func:`lookup_calls`; ``pos_weight`` is the
    learned table used in the "learned" mode."""
    lead, seq, step = call["lead"], call["seq"], call["id_step"]
    ids = torch.randint(0, call["vocab"], (*lead, seq * step), generator=gen)
    ids = ids.to(call["id_dtype"]).to(device)[..., ::step]  # [*lead, S]
    if call["padding_idx"] is not None:  # padding rows among the ids
        hit = torch.rand(ids.shape, generator=gen) < 0.3
        ids.masked_fill_(hit.to(device), call["padding_idx"] % call["vocab"])
    kwargs = {
        "scale": call["scale"],
        "padding_idx": call["padding_idx"],
        "check_indices": call["check_indices"],
        **pos_kwargs(call["mode"], pos_weight),
    }
    if call["mode"] == "sinusoid":
        kwargs["sinusoid_base"] = call["base"]
    if call["positions"] == "offset":
        kwargs["position_offset"] = call["offset"]
    else:
        shape = (*lead, seq) if call["positions"] == "full" else (1,) * min(1, len(lead)) + (seq,)
        positions = torch.randint(0, call["max_pos"], shape, generator=gen)
        kwargs["positions"] = positions.to(call["id_dtype"]).to(device)
    return ids, kwargs


def check_property(
    strategy, check, backend: str, device: str, *, interpreter_share: float = 1.0
) -> None:
    """Run ``check(backend, device, case)`` on examples drawn from ``strategy``, as many as the
    loaded hypothesis profile says (times ``interpreter_share`` under Triton's interpreter, which
    pays per program); a failure reports the drawn case."""
    examples = settings.default.max_examples
    if backend == "triton" and device == "cpu":
        examples = max(1, round(examples * interpreter_share))

    @settings(max_examples=examples)
    @given(case=strategy)
    def run(case):
        check(backend, device, case)

    run()


def capture_after_warmup(step):
    """One warm-up call of ``step`` on a side stream (Triton compiles there), then ``step``
    captured in a CUDA graph: returns ``(graph, the captured call's output)``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out
