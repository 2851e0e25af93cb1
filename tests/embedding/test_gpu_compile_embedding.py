"""Ahead-of-time compile of every embedding kernel config for sm_80 and sm_90 (no GPU needed).

Each kernel is compiled in every config its launcher can pick, in fp32 and fp16, PTX assembled
by the ptxas in the triton wheel: 0 spill bytes, 0 stack frame, 128-bit global loads on the row
loads, and row offsets computed in 64 bits. bf16 shares fp16's code but for the conversions: its
twins of a subset (the biggest tile of each feature width, every positional variant) must give
fp16's figures (registers within a few), and every fp16 config keeps that many registers spare.
Tables of every config are written to ``<sys.prefix>/fusedops-reports/`` (and printed with
``pytest -s``).
"""

from __future__ import annotations

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
BWD_OFFSETS = ("stride_g", "stride_o")
# What the JIT specialises for 16-aligned tables and widths (D % 16 == 0): the case the vector
# loads are for. Unaligned D compiles to scalar loads by design.
FWD_DIVISIBLE = ("ids_ptr", "weight_ptr", "pos_weight_ptr", "positions_ptr", "out_ptr", "dim")
FWD_DIVISIBLE += FWD_OFFSETS
BWD_DIVISIBLE = ("grad_ptr", "out_ptr", "dim", *BWD_OFFSETS)


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
    )


def _bytes_per_thread(job: CompileJob) -> int:
    """Bytes of one row tile each thread loads (the backward's sorted kernel: one row)."""
    c, table = job.constexprs, job.signature.get("weight_ptr") or job.signature["grad_ptr"]
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


def _bwd_jobs(dtype: str, arch: int, block_d: int, warps: int) -> list[CompileJob]:
    common = {"n_rows": "i32", "dim": "i32", "num_embeddings": "i32", "vocab_start": "i32"}
    common |= {"stride_g": "i32", "stride_o": "i32", "scale": "fp32", "padding_idx": "i32"}
    sorted_sig = {"grad_ptr": f"*{dtype}", "sorted_ids_ptr": "*i64", "order_ptr": "*i64"}
    sorted_sig |= {"out_ptr": f"*{dtype}"} | common | {"BLOCK_D": "constexpr"}
    atomic_sig = {"grad_ptr": f"*{dtype}", "ids_ptr": "*i64", "out_ptr": "*fp32"} | common
    atomic_sig |= {"BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
    options = {"num_warps": warps, "num_stages": 1, "divisible": BWD_DIVISIBLE}
    return [
        CompileJob(
            k.embedding_bwd_sorted_kernel, sorted_sig, {"BLOCK_D": block_d}, arch, **options
        ),
        CompileJob(
            k.embedding_bwd_atomic_kernel,
            atomic_sig,
            {"BLOCK_M": k.ATOMIC_BLOCK_M, "BLOCK_D": block_d},
            arch,
            **options,
        ),
    ]


def _backward_jobs() -> list[CompileJob]:
    return [
        job
        for block_d, warps in k.backward_config_space()
        for dtype in DTYPES
        for arch in ARCHS
        for job in _bwd_jobs(dtype, arch, block_d, warps)
    ]


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the biggest tile (most bytes per thread)
    of each feature width, every positional variant, the widest backward tiles."""
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
    return jobs + [job for arch in ARCHS for job in _bwd_jobs("fp16", arch, block_d, warps)]


FAMILIES = {"forward": _forward_jobs, "backward": _backward_jobs}


def _labels(jobs) -> list[str]:
    """The table dtype of each job (grad_ptr for the backward kernels)."""
    keys = [("grad_ptr" if "grad_ptr" in job.signature else "weight_ptr") for job in jobs]
    return [f"{job.signature[key][1:]:>4}" for job, key in zip(jobs, keys, strict=True)]


def _offsets(job) -> tuple[str, ...]:
    return FWD_OFFSETS if job.kernel is k.embedding_fwd_kernel else BWD_OFFSETS


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 128-bit loads where a thread owns >= 16 bytes, 64-bit row offsets."""
    report.assert_clean(require_v4_loads=_bytes_per_thread(job) >= 16, int64_offsets=_offsets(job))


SUITE = CompileSuite("embedding", FAMILIES, _fp16_twinned, _labels, _check, REGISTER_SLACK)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernels with their ``.to(tl.int64)`` casts removed (int32 ids) fail the check."""
    block_m, warps = k.forward_candidates(1024)[0]
    jobs = [_fwd_job("fp16", arch, block_m, 1024, warps, ids="i32") for arch in ARCHS]
    jobs += [_bwd_jobs("fp16", arch, 1024, 4)[1] for arch in ARCHS]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)
