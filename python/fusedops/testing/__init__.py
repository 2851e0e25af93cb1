"""Test helpers for fusedops: proving Triton kernels for real GPUs on a machine without one.

Not imported by ``import fusedops`` or by any op: only tests and tools import it.

Public surface (``__all__``):

- `compile_for_gpu`, `compile_many`, `compile_families`, `prefetch`: compile ``@triton.jit``
  kernels ahead of time for ``sm_80``, ``sm_90``, ... (``triton.compile`` + the ptxas in the
  triton wheel, in worker processes, results cached on disk), each config described by a
  `CompileJob`, into `GpuCompileReport` s.
- `GpuCompileReport`: registers, spills, stack frame, shared memory, PTX instruction counts and
  the PTX of one config; ``assert_clean`` checks them (no spills, no stack, 128-bit loads,
  tensor-core instructions, 64-bit row offsets).
- `assert_compiled_clean`, `assert_same_figures`, `with_dtype_twins`, `report_compiles`: the
  checks, the dtype-twin jobs and the report file the compile tests share.
- `count_ptx_instructions`, `offset_products`: the PTX analyses behind the report.
- `module_without_int64_casts`: a kernel module with its int64 casts removed, to show that the
  64-bit offset check fails on 32-bit indexing.
- `compile_cache_dir`, `GpuCompileError`.

``fusedops.testing.pytest_plugin`` (not imported here) starts a test session's compiles in the
background when collection ends.

Example::

    from fusedops.kernels import embedding as k
    from fusedops.testing import compile_for_gpu

    report = compile_for_gpu(k.embedding_fwd_kernel, signature, constexprs, arch=90)
    report.assert_clean(require_v4_loads=True, int64_offsets=("stride_w", "stride_o"))
"""

from fusedops.testing.compiler import compile_cache_dir, module_without_int64_casts
from fusedops.testing.gpu_compile import (
    CompileJob,
    GpuCompileReport,
    assert_compiled_clean,
    assert_same_figures,
    compile_families,
    compile_for_gpu,
    compile_many,
    prefetch,
    report_compiles,
    with_dtype_twins,
)
from fusedops.testing.ptx import GpuCompileError, count_ptx_instructions, offset_products

__all__ = [
    "CompileJob",
    "GpuCompileError",
    "GpuCompileReport",
    "assert_compiled_clean",
    "assert_same_figures",
    "compile_cache_dir",
    "compile_families",
    "compile_for_gpu",
    "compile_many",
    "count_ptx_instructions",
    "module_without_int64_casts",
    "offset_products",
    "prefetch",
    "report_compiles",
    "with_dtype_twins",
]
