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
