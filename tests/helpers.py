"""Shared test helpers: the one tolerance table, comparisons, and backend/device cases."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

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


def backend_cases() -> list:
    """(backend, device) pairs every op is tested on here: Triton runs natively on CUDA and
    through the interpreter on CPU; the C++ kernels and the reference run on CPU."""
    cases = [
        pytest.param("cpp", "cpu", id="cpp-cpu"),
        pytest.param("reference", "cpu", id="reference-cpu"),
    ]
    if HAS_CUDA:
        cases += [
            pytest.param("triton", "cuda", id="triton-cuda"),
            pytest.param("reference", "cuda", id="reference-cuda"),
        ]
    else:
        cases.append(pytest.param("triton", "cpu", id="triton-interpreter"))
    return cases


KERNEL_CASES = [c for c in backend_cases() if c.values[0] != "reference"]


def report_compiles(name: str, labels: list[str], reports: list) -> None:
    """Print the per-config compile table (``pytest -s``) and write it next to the venv.

    ``labels`` lead each line (e.g. the dtypes; a report's summary names only constexprs).
    """
    import os
    import sys

    lines = [f"{label} {r.summary()}" for label, r in zip(labels, reports, strict=True)]
    path = os.path.join(sys.prefix, "fusedops-reports", f"gpu_compile_{name}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"\n{name}: {len(reports)} compiles (table in {path})")
    print("\n".join(lines))


def assert_compiled_clean(bytes_per_thread: list[int], reports: list) -> None:
    """0 spills and 0 stack everywhere; 128-bit loads wherever a thread owns >= 16 contiguous
    bytes of a row (below that no 128-bit load is possible)."""
    for nbytes, report in zip(bytes_per_thread, reports, strict=True):
        report.assert_clean(require_v4_loads=nbytes >= 16)
        assert report.spill_stores == 0 and report.spill_loads == 0, report.summary()
        assert report.stack_frame == 0, report.summary()
