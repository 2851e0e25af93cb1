"""The device's own ceilings, measured in the same run as the kernels they judge.

* Copy bandwidth (:func:`~fusedops.benchmarking.timing.copy_bandwidth_gbs`): a device-to-device
  copy of a buffer larger than the caches, read + write bytes over the best call's time: the
  ceiling of the memory-bound ops (embedding, INT8, RoPE, decode).
* Dense matmul throughput per dtype (:func:`matmul_tflops`): ``torch.mm`` of two ``n x n``
  matrices at a size that saturates the device (``n = 8192`` on CUDA, ``2048`` / ``1024`` on
  CPU), ``2 n^3`` FLOPs over the best call's time: the ceiling of attention. fp32 on CUDA is
  true fp32 (PyTorch's default, no TF32).

Best-of, as STREAM reports, so a preempted call on a shared machine does not lower a ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fusedops.benchmarking.harness import dtype_name
from fusedops.benchmarking.timing import as_device, copy_bandwidth_gbs, measure

COPY = "copy"
"""Name of the copy-bandwidth ceiling (GB/s)."""


def matmul_ceiling_name(dtype: torch.dtype) -> str:
    """``matmul_bfloat16``: the name of the matmul ceiling of ``dtype`` (TFLOP/s)."""
    return f"matmul_{dtype_name(dtype)}"


def matmul_size(device: torch.device, dtype: torch.dtype) -> int:
    """Square size that saturates ``device``: 8192 on CUDA; on CPU 2048 for fp32 and 1024 for
    16-bit types (emulated on CPUs without native bf16/fp16 matmuls: a bigger one takes
    seconds)."""
    if device.type == "cuda":
        return 8192
    return 2048 if dtype == torch.float32 else 1024


def matmul_tflops(device: torch.device | str, dtype: torch.dtype, *, n: int | None = None) -> float:
    """Measured dense matmul throughput of ``device`` in ``dtype`` (TFLOP/s, best call)."""
    dev = as_device(device)
    size = n or matmul_size(dev, dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=dev, dtype=dtype)
    b = torch.randn(size, size, generator=gen, device=dev, dtype=dtype)
    out = torch.empty(size, size, device=dev, dtype=dtype)
    torch.mm(a, b, out=out)
    timing = measure(
        lambda: torch.mm(a, b, out=out), device=dev, warmup=1, min_time=0.3, min_reps=3,
        max_reps=200, flush_l2=False,
    )  # fmt: skip
    return 2 * size**3 / (timing.min_ms * 1e-3) / 1e12


@dataclass
class Ceilings:
    """Measured ceilings of one device: copy GB/s and matmul TFLOP/s per dtype name."""

    copy_gb_s: float
    matmul_tflop_s: dict[str, float] = field(default_factory=dict)

    def for_rate(self, dtype: torch.dtype, *, flops: bool) -> tuple[str, float]:
        """``(name, value)`` of the ceiling a row is judged against: the matmul ceiling of
        ``dtype`` for FLOP rates, the copy bandwidth for byte rates."""
        if flops:
            name = matmul_ceiling_name(dtype)
            return name, self.matmul_tflop_s[dtype_name(dtype)]
        return COPY, self.copy_gb_s

    def to_dict(self) -> dict[str, object]:
        return {"copy_gb_s": self.copy_gb_s, "matmul_tflop_s": dict(self.matmul_tflop_s)}


def measure_ceilings(device: torch.device | str, dtypes: list[torch.dtype]) -> Ceilings:
    """Copy bandwidth and the matmul throughput of each of ``dtypes`` on ``device``."""
    dev = as_device(device)
    ceilings = Ceilings(copy_gb_s=copy_bandwidth_gbs(dev))
    for dtype in dtypes:
        ceilings.matmul_tflop_s[dtype_name(dtype)] = matmul_tflops(dev, dtype)
    return ceilings
