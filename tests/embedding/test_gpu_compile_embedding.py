"""Ahead-of-time compile of every embedding kernel config for sm_80 and sm_90 (no GPU needed).

Each kernel is compiled in every config its launcher can pick, PTX is assembled by the ptxas in
the triton wheel, and the report must show 0 spill bytes, 0 stack frame and 128-bit global loads
on the row loads. The per-config table is printed (``pytest -s``) and written next to the
compile cache.
"""

from __future__ import annotations

import pytest
from helpers import assert_compiled_clean, report_compiles

from fusedops.kernels import embedding as k
from fusedops.testing import CompileJob, compile_many

pytestmark = pytest.mark.gpu_compile

ARCHS = (80, 90)
DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}  # name -> bytes per element
INT_ARGS = ("n_rows", "n_rows_bucket", "seq_len", "dim", "num_embeddings", "num_positions")


def _fwd_signature(dtype: str, ids: str = "i64", positions: str = "i64") -> dict[str, str]:
    sig = {
        "ids_ptr": f"*{ids}",
        "weight_ptr": f"*{dtype}",
        "pos_weight_ptr": f"*{dtype}",
        "positions_ptr": f"*{positions}",
        "out_ptr": f"*{dtype}",
    }
    sig |= {name: "i32" for name in INT_ARGS}
    sig |= {"stride_w": "i32", "stride_p": "i32", "stride_o": "i32"}
    sig |= {"scale": "fp32", "position_offset": "i32", "sin_coef": "fp32"}
    sig |= {"POS_MODE": "constexpr", "HAS_POSITIONS": "constexpr"}
    return sig | {"BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}


# What the JIT specialises for 16-aligned tables and widths (D % 16 == 0): the case the vector
# loads are for. Unaligned D compiles to scalar loads by design.
FWD_DIVISIBLE = (
    "ids_ptr",
    "weight_ptr",
    "pos_weight_ptr",
    "positions_ptr",
    "out_ptr",
    "dim",
    "stride_w",
    "stride_p",
    "stride_o",
)


def _forward_jobs() -> list[tuple[CompileJob, int]]:
    """(job, bytes each thread loads per row tile) for every forward config and variant."""
    jobs = []
    # Every tile config the autotuner can pick, on the main variant (learned table).
    for block_m, block_d, warps in k.forward_config_space():
        for dtype, size in DTYPES.items():
            for arch in ARCHS:
                constexprs = {"POS_MODE": 1, "HAS_POSITIONS": False}
                constexprs |= {"BLOCK_M": block_m, "BLOCK_D": block_d}
                job = CompileJob(
                    k.embedding_fwd_kernel,
                    _fwd_signature(dtype),
                    constexprs,
                    arch,
                    num_warps=warps,
                    num_stages=1,
                    divisible=FWD_DIVISIBLE,
                )
                jobs.append((job, block_m * block_d * size // (32 * warps)))
    # Every positional variant and index dtype, at the config B*S rows of D=768 pick.
    block_m, warps = k.forward_candidates(1024)[0]
    for dtype in DTYPES:
        for mode, has_pos in ((0, False), (1, True), (2, False), (2, True)):
            for ids in ("i32", "i64"):
                for arch in ARCHS:
                    constexprs = {"POS_MODE": mode, "HAS_POSITIONS": has_pos}
                    constexprs |= {"BLOCK_M": block_m, "BLOCK_D": 1024}
                    job = CompileJob(
                        k.embedding_fwd_kernel,
                        _fwd_signature(dtype, ids, ids),
                        constexprs,
                        arch,
                        num_warps=warps,
                        num_stages=1,
                        divisible=FWD_DIVISIBLE,
                    )
                    jobs.append((job, 16))
    return jobs


def _backward_jobs() -> list[tuple[CompileJob, int]]:
    jobs = []
    sorted_sig = {"grad_ptr": "", "sorted_ids_ptr": "*i64", "order_ptr": "*i64", "out_ptr": ""}
    atomic_sig = {"grad_ptr": "", "ids_ptr": "*i64", "out_ptr": "*fp32"}
    common = {
        "n_rows": "i32",
        "dim": "i32",
        "num_embeddings": "i32",
        "stride_g": "i32",
        "stride_o": "i32",
        "scale": "fp32",
        "padding_idx": "i32",
    }
    for block_d, warps in k.backward_config_space():
        for dtype, size in DTYPES.items():
            for arch in ARCHS:
                sig = sorted_sig | {"grad_ptr": f"*{dtype}", "out_ptr": f"*{dtype}"} | common
                sig |= {"BLOCK_D": "constexpr"}
                job = CompileJob(
                    k.embedding_bwd_sorted_kernel,
                    sig,
                    {"BLOCK_D": block_d},
                    arch,
                    num_warps=warps,
                    num_stages=1,
                    divisible=("grad_ptr", "out_ptr", "dim", "stride_g", "stride_o"),
                )
                jobs.append((job, block_d * size // (32 * warps)))
                sig = atomic_sig | {"grad_ptr": f"*{dtype}"} | common
                sig |= {"BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
                constexprs = {"BLOCK_M": k.ATOMIC_BLOCK_M, "BLOCK_D": block_d}
                job = CompileJob(
                    k.embedding_bwd_atomic_kernel,
                    sig,
                    constexprs,
                    arch,
                    num_warps=warps,
                    num_stages=1,
                    divisible=("grad_ptr", "out_ptr", "dim", "stride_g", "stride_o"),
                )
                jobs.append((job, k.ATOMIC_BLOCK_M * block_d * size // (32 * warps)))
    return jobs


def _dtype_labels(jobs) -> list[str]:
    """The table dtype of each job (grad_ptr for the backward kernels)."""
    keys = [("grad_ptr" if "grad_ptr" in job.signature else "weight_ptr") for job in jobs]
    return [f"{job.signature[key][1:]:>4}" for job, key in zip(jobs, keys, strict=True)]


@pytest.mark.parametrize("family", ["forward", "backward"])
def test_every_config_compiles_clean(family):
    jobs = _forward_jobs() if family == "forward" else _backward_jobs()
    reports = compile_many([job for job, _ in jobs])
    report_compiles(f"embedding_{family}", _dtype_labels([job for job, _ in jobs]), reports)
    assert_compiled_clean([nbytes for _, nbytes in jobs], reports)
