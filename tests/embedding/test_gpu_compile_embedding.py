"""Ahead-of-time compile of every embedding kernel config for sm_80 and sm_90 (no GPU needed).

Each kernel is compiled in every config its launcher can pick, with the launcher's options, in
fp32 and fp16, PTX assembled by the ptxas in the triton wheel: 0 spill bytes, 0 stack frame,
128-bit global loads on the row loads, and row offsets computed in 64 bits; the forward (launched
without FMA contraction) has no fp32 FMA, and the atomic backward's adds are relaxed. bf16
shares fp16's code but for the conversions: its twins of a subset (the biggest tile of each
feature width, every positional variant) must give fp16's figures (registers within a few),
and every fp16 config keeps that many registers spare. Tables of every config are written to
``<sys.prefix>/fusedops-reports/`` (and printed with ``pytest -s``).
"""

from __future__ import annotations

import re

import pytest
from compile_helpers import ARCHS, DTYPES, REGISTER_SLACK, CompileSuite

from fusedops.constants import POS_LEARNED, POS_NONE, POS_SINUSOID
from fusedops.kernels import embedding as k
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

INT_ARGS = ("n_rows", "n_rows_bucket", "seq_len", "dim", "num_embeddings", "vocab_start")
INT_ARGS += ("num_positions",)
# Integer arguments that multiply row indices: the offsets past 2**31 elements.
FWD_OFFSETS = ("stride_w", "stride_p", "stride_o")
# What the JIT specialises for 16-aligned tables and widths (D % 16 == 0): the case the vector
# loads are for. Unaligned D compiles to scalar loads by design.
FWD_DIVISIBLE = ("ids_ptr", "weight_ptr", "pos_weight_ptr", "positions_ptr", "out_ptr", "dim")
FWD_DIVISIBLE += FWD_OFFSETS
# Each backward kernel: its row pointers and row strides (the offsets past 2**31 elements),
# and the pointer whose row loads need 128-bit vectors.
BWD_ROWS = {
    k.embedding_bwd_sorted_kernel: (("grad_ptr", "out_ptr", "part_ptr"), "grad_ptr"),
    k.embedding_bwd_chunks_kernel: (("part_ptr", "out_ptr"), "part_ptr"),
    k.embedding_bwd_atomic_kernel: (("grad_ptr", "acc_ptr"), "grad_ptr"),
    k.embedding_bwd_scatter_kernel: (("acc_ptr", "out_ptr"), "acc_ptr"),
}
STRIDES = {"grad_ptr": "stride_g", "out_ptr": "stride_o", "part_ptr": "stride_p"}
STRIDES |= {"acc_ptr": "stride_a"}
# An fp32 FMA of any rounding and flush mode.
FMA_F32 = re.compile(r"\bfma\.[a-z.]*f32\b")
# An atomic or reduction with acquire or release ordering.
ORDERED_ATOMIC = re.compile(r"\b(?:atom|red)\.[a-z0-9.]*\b(?:acq_rel|acquire|release)\b")


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


def _fwd_job(dtype, arch, block_m, block_d, warps, *, mode=POS_LEARNED, has_pos=False, ids="i64"):
    constexprs = {"POS_MODE": mode, "HAS_POSITIONS": has_pos, "BLOCK_M": block_m}
    return CompileJob(
        k.embedding_fwd_kernel,
        _fwd_signature(dtype, ids, ids),
        constexprs | {"BLOCK_D": block_d},
        arch,
        num_warps=warps,
        num_stages=1,
        divisible=FWD_DIVISIBLE,
        fp_fusion=k.FORWARD_FP_FUSION,
    )


def _bytes_per_thread(job: CompileJob) -> int:
    """Bytes of one row tile each thread loads (the backward's kernels but the atomic one:
    one row)."""
    c = job.constexprs
    fwd = job.kernel is k.embedding_fwd_kernel
    table = job.signature["weight_ptr" if fwd else BWD_ROWS[job.kernel][1]]
    size = 4 if table == "*fp32" else 2
    return c.get("BLOCK_M", 1) * c["BLOCK_D"] * size // (32 * job.num_warps)


# (POS_MODE, HAS_POSITIONS) of every positional variant but the sweep's learned table.
VARIANTS = ((POS_NONE, False), (POS_LEARNED, True), (POS_SINUSOID, False), (POS_SINUSOID, True))


def _forward_jobs() -> list[CompileJob]:
    """Every tile config on the learned-table variant; every positional variant and index
    dtype at the config B*S rows of D=768 pick."""
    jobs = [
        _fwd_job(dtype, arch, block_m, block_d, warps)
        for block_m, block_d, warps in k.forward_config_space()
        for dtype in DTYPES
        for arch in ARCHS
    ]
    block_m, warps = k.forward_candidates(1024)[0]
    jobs += [
        _fwd_job(dtype, arch, block_m, 1024, warps, mode=mode, has_pos=has_pos, ids=ids)
        for dtype in DTYPES
        for mode, has_pos in VARIANTS
        for ids in ("i32", "i64")
        for arch in ARCHS
    ]
    return jobs


def _bwd_job(kernel, signature, constexprs, arch, warps) -> CompileJob:
    rows = BWD_ROWS[kernel][0]
    divisible = (*rows, "dim", *(STRIDES[r] for r in rows))
    sig = {name: signature.get(name, "i32") for name in kernel.arg_names}
    return CompileJob(
        kernel, sig, constexprs, arch, num_warps=warps, num_stages=1, divisible=divisible
    )


def _bwd_jobs(dtype: str, arch: int, block_d: int, warps: int) -> list[CompileJob]:
    """The summing kernels (sorted, atomic) at one feature tile: the other parameters are
    32-bit integers."""
    sorted_sig = {"grad_ptr": f"*{dtype}", "sorted_ids_ptr": "*i64", "order_ptr": "*i64"}
    sorted_sig |= {"out_ptr": f"*{dtype}", "part_ptr": "*fp32", "scale": "fp32"}
    sorted_sig |= {"CHUNK": "constexpr", "BLOCK_D": "constexpr"}
    atomic_sig = {"grad_ptr": f"*{dtype}", "slots_ptr": "*i64", "acc_ptr": "*fp32"}
    atomic_sig |= {"scale": "fp32", "BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
    sorted_const = {"CHUNK": k.RUN_CHUNK, "BLOCK_D": block_d}
    atomic_const = {"BLOCK_M": k.ATOMIC_BLOCK_M, "BLOCK_D": block_d}
    return [
        _bwd_job(k.embedding_bwd_sorted_kernel, sorted_sig, sorted_const, arch, warps),
        _bwd_job(k.embedding_bwd_atomic_kernel, atomic_sig, atomic_const, arch, warps),
    ]


def _finish_jobs(dtype: str, arch: int) -> list[CompileJob]:
    """The finishing kernels in their one config: adding a run's pieces into a table of
    ``dtype``, and (16-bit tables only) copying the atomic accumulator's rows into it."""
    chunks_sig = {"sorted_ids_ptr": "*i64", "part_ptr": "*fp32", "out_ptr": f"*{dtype}"}
    chunks_sig |= {"scale": "fp32", "CHUNK": "constexpr", "BLOCK_D": "constexpr"}
    scatter_sig = {"acc_ptr": "*fp32", "rows_ptr": "*i64", "slots_ptr": "*i64"}
    scatter_sig |= {"out_ptr": f"*{dtype}", "BLOCK_D": "constexpr"}
    block = {"BLOCK_D": k.FINISH_BLOCK_D}
    jobs = [
        _bwd_job(
            k.embedding_bwd_chunks_kernel,
            chunks_sig,
            {"CHUNK": k.RUN_CHUNK} | block,
            arch,
            k.FINISH_WARPS,
        )
    ]
    if dtype != "fp32":
        jobs.append(
            _bwd_job(k.embedding_bwd_scatter_kernel, scatter_sig, block, arch, k.FINISH_WARPS)
        )
    return jobs


def _backward_jobs() -> list[CompileJob]:
    jobs = [
        job
        for block_d, warps in k.backward_config_space()
        for dtype in DTYPES
        for arch in ARCHS
        for job in _bwd_jobs(dtype, arch, block_d, warps)
    ]
    return jobs + [job for dtype in DTYPES for arch in ARCHS for job in _finish_jobs(dtype, arch)]


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the biggest tile (most bytes per thread)
    of each feature width, every positional variant, the widest backward tiles, the finishing
    kernels."""
    space = k.forward_config_space()
    jobs = []
    for block_d in sorted({bd for _, bd, _ in space}):
        tiles = [(m, w) for m, bd, w in space if bd == block_d]
        block_m, warps = max(tiles, key=lambda t: (t[0] / t[1], t[0]))
        jobs += [_fwd_job("fp16", arch, block_m, block_d, warps) for arch in ARCHS]
    block_m, warps = k.forward_candidates(1024)[0]
    jobs += [
        _fwd_job("fp16", arch, block_m, 1024, warps, mode=mode, has_pos=has_pos)
        for mode, has_pos in VARIANTS
        for arch in ARCHS
    ]
    block_d, warps = k.backward_config_space()[-1]
    jobs += [job for arch in ARCHS for job in _bwd_jobs("fp16", arch, block_d, warps)]
    return jobs + [job for arch in ARCHS for job in _finish_jobs("fp16", arch)]


FAMILIES = {"forward": _forward_jobs, "backward": _backward_jobs}


def _labels(jobs) -> list[str]:
    """The table dtype of each job (the gradient's for the summing backward kernels)."""
    return [f"{job.signature[_table(job)][1:]:>4}" for job in jobs]


def _table(job: CompileJob) -> str:
    for name in ("weight_ptr", "grad_ptr", "out_ptr"):
        if name in job.signature:
            return name
    raise AssertionError(job)


def _offsets(job) -> tuple[str, ...]:
    if job.kernel is k.embedding_fwd_kernel:
        return FWD_OFFSETS
    return tuple(STRIDES[r] for r in BWD_ROWS[job.kernel][0])


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 128-bit loads where a thread owns >= 16 bytes, 64-bit row offsets;
    no fp32 FMA in the forward, no acquire/release ordering on the backward's atomics."""
    report.assert_clean(require_v4_loads=_bytes_per_thread(job) >= 16, int64_offsets=_offsets(job))
    if job.kernel is k.embedding_fwd_kernel:
        assert not FMA_F32.search(report.ptx), f"fp32 FMA in the forward: {report.summary()}"
    if job.kernel is k.embedding_bwd_atomic_kernel:
        assert report.counts["atom.global"] > 0, report.summary()
        assert not ORDERED_ATOMIC.search(report.ptx), f"ordered atomics: {report.summary()}"


SUITE = CompileSuite("embedding", FAMILIES, _fp16_twinned, _labels, _check, REGISTER_SLACK)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernels with their ``.to(tl.int64)`` casts removed (int32 ids) fail the check."""
    block_m, warps = k.forward_candidates(1024)[0]
    jobs = [_fwd_job("fp16", arch, block_m, 1024, warps, ids="i32") for arch in ARCHS]
    jobs += [_bwd_jobs("fp16", arch, 1024, 4)[1] for arch in ARCHS]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)
