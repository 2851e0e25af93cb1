"""RoPE benchmarks: fusedops vs the Hugging Face eager formula vs ``torch.compile`` of it.

``CASES`` is the registry of RoPE cases; ``bench/run.py`` (one process, CSV + table) and
pytest-benchmark (``test_rope`` below) both run it. Every implementation gets the same inputs,
the ones a Llama attention layer holds: ``q [B, Hq, S, D]``, ``k [B, Hk, S, D]`` and cos/sin
gathered per token ``[1, S, D]`` in the activation dtype (what ``LlamaRotaryEmbedding``
returns). Each case times:

* ``fusedops``: ``fusedops.apply_rotary(q, k, cos, sin)`` with the device's kernel forced (C++
  ``fusedops._C`` on CPU, Triton on CUDA): q and k in one pass, checked first against eager;
* ``eager``: ``q * cos + rotate_half(q) * sin`` (and k), transformers' ``apply_rotary_pos_emb``
  written out (cos/sin unsqueezed over heads);
* ``compile``: ``torch.compile`` of that formula, warmed before timing.

Bytes (:func:`min_bytes_rope`): q and k read once and written once, plus the ``R/2`` distinct
cos and sin values of every token read once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from fusedops import benchmarking as bm
from fusedops.baselines import hf_apply_rotary

OP = "rope"

# (rtol, atol) of fusedops (fp32 math, one rounding) against the eager formula, which in
# fp16/bf16 rounds after each product and the sum (a few ulps apart).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


@dataclass(frozen=True)
class RopeSpec:
    """Sizes of one RoPE case (half layout, full rotary dim, HF gathered cos/sin)."""

    name: str
    batch: int
    heads_q: int
    heads_k: int
    seq: int
    dim: int
    position_offset: int = 0
    compile: bool = True

    @property
    def shape(self) -> str:
        return f"B={self.batch} Hq={self.heads_q} Hk={self.heads_k} S={self.seq} D={self.dim}"


def min_bytes_rope(
    batch: int,
    heads_q: int,
    heads_k: int,
    seq: int,
    dim: int,
    rotary_dim: int,
    *,
    dtype,
    cos_dtype=None,
    cos_rows: int | None = None,
) -> int:
    """q and k read and written once, plus ``R/2`` cos and ``R/2`` sin values per table row
    (``cos_rows``: rows read, default ``S``, shared by the batch)."""
    rows = seq if cos_rows is None else cos_rows
    qk = batch * (heads_q + heads_k) * seq * dim * dtype.itemsize
    return 2 * qk + 2 * rows * (rotary_dim // 2) * (cos_dtype or dtype).itemsize


def _fused_api() -> tuple[Callable[..., Any], Callable[[str], Any]]:
    import fusedops

    fn = getattr(fusedops, "apply_rotary", None)
    if fn is None:
        raise bm.Unavailable("fusedops.apply_rotary is not importable (package not installed)")
    return fn, fusedops.use_backend


def backend_for(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpp"


def _build(spec: RopeSpec, dtype: torch.dtype, device: torch.device) -> bm.Workload:
    import fusedops

    gen = torch.Generator(device=device).manual_seed(0)
    b, s, d = spec.batch, spec.seq, spec.dim
    q = torch.randn(b, spec.heads_q, s, d, generator=gen, device=device, dtype=dtype)
    k = torch.randn(b, spec.heads_k, s, d, generator=gen, device=device, dtype=dtype)
    cache_cos, cache_sin = fusedops.rope_cos_sin(d, spec.position_offset + s, device=device)
    rows = slice(spec.position_offset, spec.position_offset + s)
    # cos/sin: [1, S, D] in the activation dtype, as LlamaRotaryEmbedding returns them
    cos = torch.cat((cache_cos[rows], cache_cos[rows]), dim=-1)[None].to(dtype)
    sin = torch.cat((cache_sin[rows], cache_sin[rows]), dim=-1)[None].to(dtype)
    backend = backend_for(device)
    rtol, atol = TOLERANCES[dtype]

    def fused():
        fn, _ = _fused_api()
        return fn(q, k, cos, sin)

    def ctx():
        _, use_backend = _fused_api()
        return use_backend(backend)

    impls = [
        bm.Impl(bm.FUSED, fused, context=ctx),
        bm.Impl(bm.EAGER, lambda: hf_apply_rotary(q, k, cos, sin)),
    ]
    if spec.compile:
        compiled = torch.compile(hf_apply_rotary, dynamic=False)
        impls.append(bm.Impl(bm.COMPILE, lambda: compiled(q, k, cos, sin)))

    def check() -> None:
        with torch.no_grad(), ctx():
            got = fused()
        want = hf_apply_rotary(q, k, cos, sin)
        for name, a, e in zip("qk", got, want, strict=True):
            try:
                torch.testing.assert_close(a.float(), e.float(), rtol=rtol, atol=atol)
            except AssertionError as exc:
                raise bm.Mismatch(
                    f"fusedops {OP} {name} differs from the eager formula for case {spec.name} "
                    f"{bm.dtype_name(dtype)} {spec.shape}: {exc}"
                ) from None

    nbytes = min_bytes_rope(b, spec.heads_q, spec.heads_k, s, d, d, dtype=dtype)
    return bm.Workload(impls=impls, min_bytes=nbytes, check=check)


def rope_case(spec: RopeSpec, dtype: torch.dtype) -> bm.Case:
    tags = frozenset() if spec.compile else frozenset({"no-compile"})
    return bm.Case(
        op=OP,
        name=spec.name,
        dtype=dtype,
        shape=spec.shape,
        build=lambda device: _build(spec, dtype, device),
        tags=tags,
    )


# Llama-2-7B-like attention with GQA 32/8 (the target shape), and one decode step.
_PREFILL = {"batch": 2, "heads_q": 32, "heads_k": 8, "seq": 1024, "dim": 128}
_DECODE = {"batch": 2, "heads_q": 32, "heads_k": 8, "seq": 1, "dim": 128, "position_offset": 1023}

CASES: list[bm.Case] = [
    rope_case(RopeSpec("prefill", **_PREFILL), torch.float32),
    rope_case(RopeSpec("prefill", **_PREFILL), torch.bfloat16),
    rope_case(RopeSpec("decode", **_DECODE), torch.float32),
    rope_case(RopeSpec("decode", **_DECODE), torch.bfloat16),
]


def _params() -> list[Any]:
    return [pytest.param(c, i, id=name) for c, i, name in bm.case_impl_params(CASES)]


@pytest.mark.parametrize(("case", "impl"), _params())
def test_rope(run_bench: Callable[[bm.Case, str], None], case: bm.Case, impl: str) -> None:
    """pytest-benchmark entry: one case, one implementation (see ``bench/conftest.py``)."""
    run_bench(case, impl)
