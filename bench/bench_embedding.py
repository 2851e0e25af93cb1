"""Fused embedding benchmarks: fusedops vs the eager reference vs ``torch.compile(reference)``.

``CASES`` is the registry of embedding cases; ``bench/run.py`` (one process, CSV + table) and
pytest-benchmark (``test_embedding`` below) both run it. Each case times three implementations
on the same inputs:

* ``fusedops``: ``fusedops.fused_embedding`` with the device's kernel forced (C++ ``fusedops._C``
  on CPU, Triton on CUDA), checked against the reference before it is timed;
* ``eager``: ``fusedops.reference.fused_embedding`` (the plain PyTorch composition: gather,
  fp32 scale, positional add; its sinusoid is evaluated in fp64 as the spec says);
* ``compile``: ``torch.compile(reference, dynamic=False)``, warmed before timing. The first
  build costs 20-45 s on 2 CPU cores, later graphs a few seconds, and the inductor cache makes
  reruns fast; ``EmbeddingSpec(compile=False)`` (tag ``no-compile``) leaves it out of a case.

Forward cases count bytes with :func:`fusedops.benchmarking.min_bytes_embedding` (positional
rows: ``S`` distinct rows). ``*-bwd`` cases time only the backward (``torch.autograd.grad`` of the
token table through a forward done once, ``retain_graph=True``), counted with
:func:`fusedops.benchmarking.min_bytes_embedding_backward`. On CUDA the fused call passes
``check_indices=False`` (the id check would synchronize the device; neither baseline checks).

To add a case, append to ``CASES`` (``embedding_case(EmbeddingSpec(...), dtype)``); another op
gets its own ``bench_<op>.py`` with its own ``CASES`` and a ``test_<op>`` like the one below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import torch

from fusedops import benchmarking as bm
from fusedops import reference

OP = "embedding"

# (rtol, atol) of the fused output against the reference on the same inputs: both compute in
# fp32 and round once, so low precisions differ by at most about one ulp of the result.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


@dataclass(frozen=True)
class EmbeddingSpec:
    """Sizes and variant of one embedding case.

    ``pos``: ``learned`` (table ``[pos_rows, D]``), ``sinusoid`` (computed in the kernel) or
    ``none``. ``scale=None`` means ``sqrt(D)``. ``backward`` times the token-table gradient.
    """

    name: str
    batch: int
    seq: int
    dim: int
    vocab: int
    pos: Literal["learned", "sinusoid", "none"] = "learned"
    pos_rows: int = 2048
    scale: float | None = None
    backward: bool = False
    compile: bool = True

    @property
    def shape(self) -> str:
        text = f"B={self.batch} S={self.seq} D={self.dim} V={self.vocab}"
        return text + (f" P={self.pos_rows}" if self.pos == "learned" else "")


def _fused_api() -> tuple[Callable[..., torch.Tensor], Callable[[str], Any]]:
    """``(fusedops.fused_embedding, fusedops.use_backend)``, or :class:`bm.Unavailable`."""
    import fusedops

    fn = getattr(fusedops, "fused_embedding", None)
    use_backend = getattr(fusedops, "use_backend", None)
    if fn is None or use_backend is None:
        raise bm.Unavailable(
            "fusedops.fused_embedding / fusedops.use_backend are not importable "
            "(package not installed or not written yet)"
        )
    return fn, use_backend


def backend_for(device: torch.device) -> str:
    """The fused backend benchmarked on ``device``: Triton on CUDA, C++ elsewhere."""
    return "triton" if device.type == "cuda" else "cpp"


def _build(spec: EmbeddingSpec, dtype: torch.dtype, device: torch.device) -> bm.Workload:
    gen = torch.Generator(device=device).manual_seed(0)
    n_tokens = spec.batch * spec.seq
    ids = torch.randint(0, spec.vocab, (spec.batch, spec.seq), generator=gen, device=device)
    weight = torch.randn(spec.vocab, spec.dim, generator=gen, device=device, dtype=dtype)  # [V, D]
    pos_weight = None
    if spec.pos == "learned":
        # pos_weight: [P, D]
        pos_weight = torch.randn(spec.pos_rows, spec.dim, generator=gen, device=device, dtype=dtype)
    kwargs: dict[str, Any] = {
        "scale": math.sqrt(spec.dim) if spec.scale is None else spec.scale,
        "pos_weight": pos_weight,
        "sinusoidal": spec.pos == "sinusoid",
    }
    fused_kwargs = dict(kwargs)
    if device.type == "cuda":
        fused_kwargs["check_indices"] = False
    backend = backend_for(device)
    rtol, atol = TOLERANCES[dtype]

    def ref_fwd(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return reference.fused_embedding(ids, weight, **kwargs)  # [B, S, D]

    def fused_fwd(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        fused, _ = _fused_api()
        return fused(ids, weight, **fused_kwargs)  # [B, S, D]

    def backend_ctx() -> Any:
        _, use_backend = _fused_api()
        return use_backend(backend)

    compiled_fwd = torch.compile(ref_fwd, dynamic=False) if spec.compile else None

    if not spec.backward:
        impls = [
            bm.Impl(bm.FUSED, lambda: fused_fwd(ids, weight), context=backend_ctx),
            bm.Impl(bm.EAGER, lambda: ref_fwd(ids, weight)),
        ]
        if compiled_fwd is not None:
            impls.append(bm.Impl(bm.COMPILE, lambda: compiled_fwd(ids, weight)))

        def check() -> None:
            with backend_ctx():
                actual = fused_fwd(ids, weight)
            _assert_close(spec, dtype, "output", actual, ref_fwd(ids, weight), rtol, atol)

        min_bytes = bm.min_bytes_embedding(
            n_tokens,
            spec.dim,
            dtype=dtype,
            id_dtype=ids.dtype,
            pos_rows=min(spec.seq, spec.pos_rows) if spec.pos == "learned" else 0,
        )
        return bm.Workload(impls=impls, min_bytes=min_bytes, check=check)

    weight.requires_grad_(True)
    # grad_out: [B, S, D]
    grad_out = torch.randn(spec.batch, spec.seq, spec.dim, generator=gen, device=device).to(dtype)

    def backward_of(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Any:
        """A thunk timing only the backward: the forward runs once, on the first call."""
        graph: list[torch.Tensor] = []

        def run() -> torch.Tensor:
            if not graph:
                graph.append(forward(ids, weight))
            (grad,) = torch.autograd.grad(graph[0], weight, grad_out, retain_graph=True)
            return grad  # [V, D]

        return run

    impls = [
        bm.Impl(bm.FUSED, backward_of(fused_fwd), context=backend_ctx),
        bm.Impl(bm.EAGER, backward_of(ref_fwd)),
    ]
    if compiled_fwd is not None:
        impls.append(bm.Impl(bm.COMPILE, backward_of(compiled_fwd)))

    def check_backward() -> None:
        with backend_ctx():
            actual = backward_of(fused_fwd)()
        expected = backward_of(ref_fwd)()
        _assert_close(spec, dtype, "weight gradient", actual, expected, rtol, atol)

    min_bytes = bm.min_bytes_embedding_backward(
        n_tokens, spec.dim, spec.vocab, dtype=dtype, id_dtype=ids.dtype
    )
    return bm.Workload(impls=impls, min_bytes=min_bytes, check=check_backward)


def _assert_close(
    spec: EmbeddingSpec,
    dtype: torch.dtype,
    what: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    rtol: float,
    atol: float,
) -> None:
    """Raise :class:`bm.Mismatch` naming the case unless ``actual`` matches ``expected``."""
    try:
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            raise AssertionError(
                f"got {actual.dtype} {tuple(actual.shape)}, "
                f"expected {expected.dtype} {tuple(expected.shape)}"
            )
        torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)
    except AssertionError as exc:
        raise bm.Mismatch(
            f"fusedops {OP} {what} differs from the reference for case {spec.name} "
            f"{bm.dtype_name(dtype)} {spec.shape}: {exc}"
        ) from None


def embedding_case(spec: EmbeddingSpec, dtype: torch.dtype) -> bm.Case:
    """The :class:`bm.Case` of ``spec`` in ``dtype``."""
    tags = frozenset() if spec.compile else frozenset({"no-compile"})
    return bm.Case(
        op=OP,
        name=spec.name,
        dtype=dtype,
        shape=spec.shape,
        build=lambda device: _build(spec, dtype, device),
        tags=tags,
    )


_GPT2 = {"batch": 8, "seq": 1024, "dim": 768, "vocab": 50257}

CASES: list[bm.Case] = [
    # GPT-2 sizes with a learned [2048, D] table and the sqrt(D) scale of Vaswani et al.
    embedding_case(EmbeddingSpec("learned", **_GPT2), torch.float32),
    embedding_case(EmbeddingSpec("learned", **_GPT2), torch.bfloat16),
    # One short prompt: launch / per-call overhead dominates.
    embedding_case(
        EmbeddingSpec("learned", batch=1, seq=128, dim=768, vocab=50257),
        torch.float32,
    ),
    # Transformer-base: sinusoid computed in the kernel, no positional table read.
    embedding_case(
        EmbeddingSpec("sinusoid", batch=8, seq=1024, dim=512, vocab=32000, pos="sinusoid"),
        torch.float32,
    ),
    # Llama-style: plain gather of wide bf16 rows (scale 1), no positional term.
    embedding_case(
        EmbeddingSpec("no-pos", batch=4, seq=2048, dim=2048, vocab=32000, pos="none", scale=1.0),
        torch.bfloat16,
    ),
    # Backward of the token table (dense [V, D] gradient) through the GPT-2 forward.
    embedding_case(EmbeddingSpec("learned-bwd", **_GPT2, backward=True), torch.float32),
]


def _params() -> list[Any]:
    return [pytest.param(c, i, id=name) for c, i, name in bm.case_impl_params(CASES)]


@pytest.mark.parametrize(("case", "impl"), _params())
def test_embedding(run_bench: Callable[[bm.Case, str], None], case: bm.Case, impl: str) -> None:
    """pytest-benchmark entry: one case, one implementation (see ``bench/conftest.py``)."""
    run_bench(case, impl)
