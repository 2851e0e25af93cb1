"""Attention benchmarks: fusedops vs ``torch.nn.functional.scaled_dot_product_attention`` vs an
eager formula (and ``torch.compile`` of it), in TFLOP/s.

``CASES`` is the registry read by ``bench/run.py`` and pytest-benchmark (``test_attention``).
Every implementation gets the same ``q [B, Hq, S, D]``, ``k``/``v`` ``[B, Hkv, S, D]``:

* ``fusedops``: ``fusedops.attention(q, k, v, causal=True)`` with the device's backend forced
  (Triton on CUDA; on CPU the ``cpp`` path: SDPA with the bottom-right causal mask, which for
  ``Sq == Sk`` is SDPA's ``is_causal``), checked first against the fp32 reference;
* ``sdpa``: ``F.scaled_dot_product_attention(..., is_causal=True, enable_gqa=...)``;
* ``eager``: ``softmax(q k^T * scale + causal mask) v`` with k/v repeated for GQA, as
  transformers' eager attention writes it; ``compile``: ``torch.compile`` of that.

FLOPs (:func:`attention_flops`): ``4 * B * Hq * Sq * Sk * D``, halved for causal; a
forward+backward case counts ``3.5x`` (backward = 2.5x forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fusedops import benchmarking as bm
from fusedops.baselines import eager_attention

OP = "attention"
SDPA = "sdpa"
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-4, 2e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


@dataclass(frozen=True)
class AttnSpec:
    name: str
    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_k: int
    dim: int
    backward: bool = False
    compile: bool = True

    @property
    def shape(self) -> str:
        return (
            f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Sq={self.seq_q} "
            f"Sk={self.seq_k} D={self.dim}"
        )


def attention_flops(batch, heads, seq_q, seq_k, dim, *, causal=True, backward=False) -> int:
    flops = 4 * batch * heads * seq_q * seq_k * dim
    if causal:
        flops //= 2
    return int(flops * 3.5) if backward else flops


def sdpa_attention(q, k, v):
    sq, sk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if sq == sk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def backend_for(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpp"


def _fused_api():
    import fusedops

    fn = getattr(fusedops, "attention", None)
    if fn is None:
        raise bm.Unavailable("fusedops.attention is not importable (package not installed)")
    return fn, fusedops.use_backend


def _build(spec: AttnSpec, dtype: torch.dtype, device: torch.device) -> bm.Workload:
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(h, s):
        t = torch.randn(spec.batch, h, s, spec.dim, generator=gen, device=device, dtype=dtype)
        return t.requires_grad_(spec.backward)

    q, k, v = (
        rand(spec.heads_q, spec.seq_q),
        rand(spec.heads_kv, spec.seq_k),
        rand(spec.heads_kv, spec.seq_k),
    )
    dout = torch.randn(q.shape, generator=gen, device=device, dtype=dtype)
    backend = backend_for(device)

    def timed(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        if not spec.backward:

            def forward():
                with torch.no_grad():
                    return fn(q, k, v)

            return forward

        def forward_backward():
            return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

        return forward_backward

    def fused_fn(q, k, v):
        fn, _ = _fused_api()
        return fn(q, k, v, causal=True)

    def ctx():
        _, use_backend = _fused_api()
        return use_backend(backend)

    impls = [
        bm.Impl(bm.FUSED, timed(fused_fn), context=ctx),
        bm.Impl(SDPA, timed(sdpa_attention)),
        bm.Impl(bm.EAGER, timed(eager_attention)),
    ]
    if spec.compile:
        impls.append(bm.Impl(bm.COMPILE, timed(torch.compile(eager_attention, dynamic=False))))

    def check() -> None:
        from fusedops import reference

        with torch.no_grad(), ctx():
            got = fused_fn(q, k, v)
        want = reference.attention(q.detach(), k.detach(), v.detach(), causal=True)
        rtol, atol = TOLERANCES[dtype]
        try:
            torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)
        except AssertionError as exc:
            raise bm.Mismatch(
                f"fusedops {OP} differs from the reference for {spec.name} "
                f"{bm.dtype_name(dtype)} {spec.shape}: {exc}"
            ) from None

    flops = attention_flops(
        spec.batch, spec.heads_q, spec.seq_q, spec.seq_k, spec.dim, backward=spec.backward
    )
    return bm.Workload(impls=impls, min_bytes=0, check=check, flops=flops)


def attention_case(spec: AttnSpec, dtype: torch.dtype) -> bm.Case:
    tags = frozenset() if spec.compile else frozenset({"no-compile"})
    return bm.Case(
        op=OP,
        name=spec.name,
        dtype=dtype,
        shape=spec.shape,
        build=lambda device: _build(spec, dtype, device),
        tags=tags,
    )


# The CPU target (fusedops CPU path no slower than SDPA), Llama-like GQA 32/8 prefill
# (forward, forward+backward) and a KV-cache decode step.
_CPU = {"batch": 1, "heads_q": 8, "heads_kv": 8, "seq_q": 1024, "seq_k": 1024, "dim": 64}
_PREFILL = {"batch": 2, "heads_q": 32, "heads_kv": 8, "seq_q": 2048, "seq_k": 2048, "dim": 128}
_DECODE = {"batch": 8, "heads_q": 32, "heads_kv": 8, "seq_q": 1, "seq_k": 4096, "dim": 128}

CASES: list[bm.Case] = [
    attention_case(AttnSpec("causal", **_CPU), torch.float32),
    attention_case(AttnSpec("causal-fwd-bwd", **_CPU, backward=True), torch.float32),
    attention_case(AttnSpec("prefill", **_PREFILL), torch.bfloat16),
    attention_case(AttnSpec("prefill-fwd-bwd", **_PREFILL, backward=True), torch.bfloat16),
    attention_case(AttnSpec("decode", **_DECODE), torch.bfloat16),
]


def _params() -> list[Any]:
    return [pytest.param(c, i, id=name) for c, i, name in bm.case_impl_params(CASES)]


@pytest.mark.parametrize(("case", "impl"), _params())
def test_attention(run_bench: Callable[[bm.Case, str], None], case: bm.Case, impl: str) -> None:
    """pytest-benchmark entry: one case, one implementation (see ``bench/conftest.py``)."""
    run_bench(case, impl)
