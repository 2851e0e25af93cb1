"""Test helpers for fusedops.

`fusedops.testing.gpu_compile` compiles Triton kernels ahead of time for real NVIDIA targets
(sm_80, sm_90, ...) on a machine without a GPU and reports what ptxas made of them (registers,
spills, stack frame, shared memory, 128-bit loads, MMA instructions).
"""

from fusedops.testing.gpu_compile import (
    CompileJob,
    GpuCompileError,
    GpuCompileReport,
    compile_cache_dir,
    compile_for_gpu,
    compile_many,
)

__all__ = [
    "CompileJob",
    "GpuCompileError",
    "GpuCompileReport",
    "compile_cache_dir",
    "compile_for_gpu",
    "compile_many",
]
