"""INT8 embedding benchmarks: the fused dequantizing lookup vs float and composed baselines.

``CASES`` is the registry of INT8 cases (``bench/run.py`` and pytest-benchmark both run it). Each
case quantizes a random ``[V, D]`` table once (:func:`fusedops.quantize_embedding`) and times, on
the same ids:

* ``fusedops``: ``fusedops.int8_embedding`` (the C++ kernel of ``fusedops._C`` on CPU, its CUDA
  kernel on GPU), checked against :func:`fusedops.reference.int8_embedding` before timing;
* ``eager``: the bitsandbytes-style composition, two gathers and a multiply:
  ``F.embedding(ids, q).float() * F.embedding(ids, scales)`` (per-group: the scales broadcast
  over each group) cast to the output dtype;
* ``compile``: ``torch.compile`` of that composition (warmed before timing);
* ``F.embedding``: the unquantized lookup, ``F.embedding`` of the float table stored in the
  output dtype (fp32 for fp32 out, bf16 for bf16 out): what the INT8 table replaces.

Bytes (:func:`min_bytes_int8_embedding`): ids, one int8 row and its scales per token, and the
output; the ``F.embedding`` row uses the same count, so its GB/s compares time, not traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fusedops import benchmarking as bm
from fusedops import reference
from fusedops.baselines import composed_int8_lookup

OP = "int8_embedding"
FLOAT_TABLE = "F.embedding"
"""Name of the unquantized baseline: ``F.embedding`` of the float table."""

# (rtol, atol) of the fused output against reference.int8_embedding: the same fp32 roundings,
# so equal up to at most one ulp of the output dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-6, 1e-6),
    torch.bfloat16: (1.6e-2, 1e-2),
}


@dataclass(frozen=True)
class Int8Spec:
    """Sizes of one INT8 lookup case; ``group_size=None`` means one scale per row."""

    name: str
    batch: int
    seq: int
    dim: int
    vocab: int
    group_size: int | None = None

    @property
    def shape(self) -> str:
        text = f"B={self.batch} S={self.seq} D={self.dim} V={self.vocab}"
        return text + (f" g={self.group_size}" if self.group_size else "")


def min_bytes_int8_embedding(
    num_tokens: int,
    dim: int,
    groups: int,
    *,
    scale_dtype: torch.dtype,
    out_dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
) -> int:
    """Minimum bytes of an INT8 lookup: ids, one int8 row + ``groups`` scales per token (repeated
    ids included, as in :func:`fusedops.benchmarking.min_bytes_embedding`), the output once."""
    per_token = id_dtype.itemsize + dim + groups * scale_dtype.itemsize + dim * out_dtype.itemsize
    return num_tokens * per_token


def _fused_api() -> tuple[Callable[..., torch.Tensor], Callable[[str], Any]]:
    """``(fusedops.int8_embedding, fusedops.use_backend)``, or :class:`bm.Unavailable`."""
    import fusedops

    fn = getattr(fusedops, "int8_embedding", None)
    use_backend = getattr(fusedops, "use_backend", None)
    if fn is None or use_backend is None:
        raise bm.Unavailable("fusedops.int8_embedding is not importable (package not installed)")
    try:
        import fusedops._C  # registers the extension's ops
    except ImportError as exc:
        raise bm.Unavailable(f"fusedops._C is not importable ({exc})") from None
    if not hasattr(torch.ops.fusedops, "int8_embedding_fwd"):
        raise bm.Unavailable("fusedops._C has no int8_embedding_fwd op (rebuild the extension)")
    return fn, use_backend


def _build(spec: Int8Spec, out_dtype: torch.dtype, device: torch.device) -> bm.Workload:
    import fusedops

    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, spec.vocab, (spec.batch, spec.seq), generator=gen, device=device)
    weight = torch.randn(spec.vocab, spec.dim, generator=gen, device=device)  # [V, D] fp32
    qweight, scales = fusedops.quantize_embedding(weight, group_size=spec.group_size)
    float_table = weight.to(out_dtype)  # [V, D] in the output dtype
    del weight
    rtol, atol = TOLERANCES[out_dtype]
    # The extension's kernel for the device: C++ on CPU, CUDA on GPU ("auto" on both).
    backend = "cpp" if device.type == "cpu" else "auto"

    def fused() -> torch.Tensor:
        fn, _ = _fused_api()
        return fn(ids, qweight, scales, out_dtype=out_dtype)  # [B, S, D]

    def backend_ctx() -> Any:
        _, use_backend = _fused_api()
        return use_backend(backend)

    compiled = torch.compile(composed_int8_lookup, dynamic=False)
    impls = [
        bm.Impl(bm.FUSED, fused, context=backend_ctx),
        bm.Impl(bm.EAGER, lambda: composed_int8_lookup(ids, qweight, scales, out_dtype)),
        bm.Impl(bm.COMPILE, lambda: compiled(ids, qweight, scales, out_dtype)),
        bm.Impl(FLOAT_TABLE, lambda: F.embedding(ids, float_table)),
    ]

    def check() -> None:
        with backend_ctx():
            actual = fused()
        expected = reference.int8_embedding(ids, qweight, scales, out_dtype=out_dtype)
        composed = composed_int8_lookup(ids, qweight, scales, out_dtype)
        for what, want in (("reference.int8_embedding", expected), ("the composition", composed)):
            try:
                if actual.dtype != want.dtype or actual.shape != want.shape:
                    raise AssertionError(
                        f"got {actual.dtype} {tuple(actual.shape)}, "
                        f"expected {want.dtype} {tuple(want.shape)}"
                    )
                torch.testing.assert_close(actual.float(), want.float(), rtol=rtol, atol=atol)
            except AssertionError as exc:
                raise bm.Mismatch(
                    f"fusedops {OP} differs from {what} for case {spec.name} "
                    f"{bm.dtype_name(out_dtype)} {spec.shape}: {exc}"
                ) from None

    min_bytes = min_bytes_int8_embedding(
        spec.batch * spec.seq,
        spec.dim,
        scales.shape[1],
        scale_dtype=scales.dtype,
        out_dtype=out_dtype,
        id_dtype=ids.dtype,
    )
    return bm.Workload(impls=impls, min_bytes=min_bytes, check=check)


def int8_case(spec: Int8Spec, out_dtype: torch.dtype) -> bm.Case:
    """The :class:`bm.Case` of ``spec`` with output dtype ``out_dtype``."""
    return bm.Case(
        op=OP,
        name=spec.name,
        dtype=out_dtype,
        shape=spec.shape,
        build=lambda device: _build(spec, out_dtype, device),
    )


_GPT2 = {"batch": 8, "seq": 1024, "dim": 768, "vocab": 50257}

CASES: list[bm.Case] = [
    # GPT-2 sizes, per-row scales: the target (>= 1.0x torch.compile of the composition).
    int8_case(Int8Spec("per-row", **_GPT2), torch.float32),
    int8_case(Int8Spec("per-row", **_GPT2), torch.bfloat16),
    # Per-group scales (128 features each): 6 scales per row.
    int8_case(Int8Spec("group128", **_GPT2, group_size=128), torch.float32),
    # Decode: one new token for each of 8 sequences; per-call overhead dominates.
    int8_case(Int8Spec("decode", batch=8, seq=1, dim=768, vocab=50257), torch.float32),
]


def _params() -> list[Any]:
    return [
        pytest.param(c, i, id=name)
        for c, i, name in bm.case_impl_params(CASES, (bm.FUSED, bm.EAGER, bm.COMPILE, FLOAT_TABLE))
    ]


@pytest.mark.parametrize(("case", "impl"), _params())
def test_int8_embedding(
    run_bench: Callable[[bm.Case, str], None], case: bm.Case, impl: str
) -> None:
    """pytest-benchmark entry: one case, one implementation (see ``bench/conftest.py``)."""
    run_bench(case, impl)
