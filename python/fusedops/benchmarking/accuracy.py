"""The fused output against the reference: :data:`TOLERANCES`, :class:`Accuracy`,
:func:`compare`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# (atol, rtol) of a fused output in this dtype against the reference computed in fp64 (fp32 for
# the largest attention cases) from the same inputs: about one ulp of the output dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 2e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


@dataclass(frozen=True)
class Accuracy:
    """The fused output against the reference: max abs error, max |reference|, pass/fail.

    ``detail`` says what was compared and, on failure, by how much it missed.
    """

    max_err: float
    ref_max: float
    ok: bool
    detail: str = ""


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected|`` in fp64 (NaN if either holds a NaN; 0 for empty tensors)."""
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double() - expected.detach().double()).abs().max().item()


def compare(
    actual: torch.Tensor | Sequence[torch.Tensor],
    expected: torch.Tensor | Sequence[torch.Tensor],
    dtype: torch.dtype,
) -> Accuracy:
    """Fused output(s) ``actual`` (in ``dtype``) against the reference ``expected`` (fp32 or
    fp64) within :data:`TOLERANCES` ``[dtype]``: ``|a - e| <= atol + rtol * |e|`` everywhere."""
    actuals = (actual,) if isinstance(actual, torch.Tensor) else tuple(actual)
    expecteds = (expected,) if isinstance(expected, torch.Tensor) else tuple(expected)
    atol, rtol = TOLERANCES[dtype]
    max_err = ref_max = 0.0
    failures = []
    for i, (a, e) in enumerate(zip(actuals, expecteds, strict=True)):
        name = f"output {i}" if len(actuals) > 1 else "output"
        if a.dtype != dtype or a.shape != e.shape:
            got, want = f"{a.dtype} {tuple(a.shape)}", f"{dtype} {tuple(e.shape)}"
            return Accuracy(float("inf"), 0.0, False, f"{name}: got {got}, expected {want}")
        a64, e64 = a.detach().double(), e.detach().double()
        diff = (a64 - e64).abs()
        bad = int((~(diff <= atol + rtol * e64.abs())).sum())  # NaN counts as bad
        max_err = max(max_err, max_abs_error(a64, e64))
        ref_max = max(ref_max, e64.abs().max().item() if e64.numel() else 0.0)
        if bad:
            failures.append(f"{name}: {bad} of {a.numel()} elements")
    detail = f"max abs error {max_err:.3g} (max |reference| {ref_max:.3g})"
    if failures:
        detail += f"; beyond atol {atol:g} + rtol {rtol:g} * |reference|: " + ", ".join(failures)
    return Accuracy(max_err, ref_max, not failures, detail)
