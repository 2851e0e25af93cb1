"""Ahead-of-time compile of the embedding + LayerNorm kernels for sm_80 and sm_90 (no GPU needed).

Every forward config the autotuner can pick (BERT variant: all terms) and the backward config
of every row width, in fp32 and fp16, plus the optional-term variants at D = 1024; PTX assembled
by the ptxas in the triton wheel: 0 spill bytes, 0 stack frame, 128-bit global loads of the
rows, row offsets computed in 64 bits. bf16 twins of the widest tiles give fp16's figures.
Tables are written to ``<sys.prefix>/fusedops-reports/`` (printed with ``pytest -s``).
"""

from __future__ import annotations

import pytest
from compile_helpers import ARCHS, DTYPES, REGISTER_SLACK, CompileSuite

from fusedops.kernels import embedding_layernorm as k
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

TABLES = ("weight_ptr", "pos_weight_ptr", "type_weight_ptr", "ln_weight_ptr")
INDEX = ("ids_ptr", "positions_ptr", "type_ids_ptr")
SIZES = ("n_rows", "seq_len", "dim", "num_embeddings", "num_positions", "num_types")
FWD_OFFSETS = ("stride_w", "stride_p", "stride_t", "stride_o")
BWD_OFFSETS = ("stride_w", "stride_p", "stride_t", "stride_g", "stride_dx")
# What the JIT specialises for 16-aligned tables and widths (D % 16 == 0).
FWD_DIVISIBLE = (*TABLES, "ln_bias_ptr", *INDEX, "out_ptr", "dim", *FWD_OFFSETS)
BWD_DIVISIBLE = (*TABLES, *INDEX, "grad_ptr", "dx_ptr", "dim", *BWD_OFFSETS)
# (HAS_POS, HAS_POSITIONS, HAS_TYPE, HAS_TYPE_IDS, HAS_LN_WEIGHT, HAS_LN_BIAS)
BERT = (True, False, True, True, True, True)
VARIANTS = (
    (True, True, True, False, True, True),  # explicit positions, type row 0
    (False, False, False, False, False, False),  # word rows only, no affine
    (True, False, False, False, True, False),  # no type table, weight-only LayerNorm
)
FLAGS = ("HAS_POS", "HAS_POSITIONS", "HAS_TYPE", "HAS_TYPE_IDS", "HAS_LN_WEIGHT", "HAS_LN_BIAS")


def _pointers(dtype: str, ids: str) -> dict[str, str]:
    sig = {"ids_ptr": f"*{ids}", "weight_ptr": f"*{dtype}", "pos_weight_ptr": f"*{dtype}"}
    sig |= {"positions_ptr": f"*{ids}", "type_weight_ptr": f"*{dtype}"}
    return sig | {"type_ids_ptr": f"*{ids}"}


def _fwd_job(dtype, arch, block_m, block_d, warps, flags=BERT, ids="i64") -> CompileJob:
    sig = _pointers(dtype, ids) | {"ln_weight_ptr": f"*{dtype}", "ln_bias_ptr": f"*{dtype}"}
    sig |= {"out_ptr": f"*{dtype}", "mean_ptr": "*fp32", "rstd_ptr": "*fp32"}
    sig |= {"n_rows": "i32", "n_rows_bucket": "i32"} | {s: "i32" for s in SIZES[1:]}
    sig |= {s: "i32" for s in FWD_OFFSETS} | {"position_offset": "i32", "eps": "fp32"}
    sig |= {f: "constexpr" for f in FLAGS} | {"BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
    constexprs = dict(zip(FLAGS, flags, strict=True)) | {"BLOCK_M": block_m, "BLOCK_D": block_d}
    return CompileJob(
        k.embedding_layernorm_fwd_kernel,
        sig,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=1,
        divisible=FWD_DIVISIBLE,
    )


def _bwd_job(dtype, arch, block_m, block_d, warps, flags=BERT, ids="i64") -> CompileJob:
    sig = {"grad_ptr": f"*{dtype}"} | _pointers(dtype, ids) | {"ln_weight_ptr": f"*{dtype}"}
    sig |= {"mean_ptr": "*fp32", "rstd_ptr": "*fp32", "dx_ptr": "*fp32"}
    sig |= {"partial_w_ptr": "*fp32", "partial_b_ptr": "*fp32", "partial_t_ptr": "*fp32"}
    sig |= {s: "i32" for s in SIZES} | {s: "i32" for s in BWD_OFFSETS}
    sig |= {"position_offset": "i32"} | {f: "constexpr" for f in FLAGS[:5]}
    sig |= {"NEED_LN_GRADS": "constexpr", "NEED_TYPE_SUM": "constexpr"}
    sig |= {"BLOCK_M": "constexpr", "BLOCK_D": "constexpr"}
    constexprs = dict(zip(FLAGS[:5], flags[:5], strict=True))
    constexprs |= {"NEED_LN_GRADS": flags[4], "NEED_TYPE_SUM": flags[2] and not flags[3]}
    constexprs |= {"BLOCK_M": block_m, "BLOCK_D": block_d}
    return CompileJob(
        k.embedding_layernorm_bwd_kernel,
        sig,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=1,
        divisible=BWD_DIVISIBLE,
    )


def _forward_jobs() -> list[CompileJob]:
    jobs = [
        _fwd_job(dtype, arch, m, d, w)
        for m, d, w in k.forward_config_space()
        for dtype in DTYPES
        for arch in ARCHS
    ]
    m, w = k.forward_candidates(1024)[0]
    jobs += [
        _fwd_job(dtype, arch, m, 1024, w, flags, ids)
        for flags in VARIANTS
        for dtype, ids in (("fp32", "i32"), ("fp16", "i64"))
        for arch in ARCHS
    ]
    return jobs


def _backward_jobs() -> list[CompileJob]:
    jobs = [
        _bwd_job(dtype, arch, m, d, w)
        for m, d, w in k.backward_config_space()
        for dtype in DTYPES
        for arch in ARCHS
    ]
    m, w = k.backward_config(1024)
    jobs += [_bwd_job("fp16", arch, m, 1024, w, flags) for flags in VARIANTS for arch in ARCHS]
    return jobs


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the widest tile of each kernel."""
    m, d, w = k.forward_config_space()[-1]
    bm, bd, bw = k.backward_config_space()[-1]
    return [
        job
        for arch in ARCHS
        for job in (_fwd_job("fp16", arch, m, d, w), _bwd_job("fp16", arch, bm, bd, bw))
    ]


FAMILIES = {"forward": _forward_jobs, "backward": _backward_jobs}


def _labels(jobs) -> list[str]:
    return [f"{job.signature['weight_ptr'][1:]:>4}" for job in jobs]


def _is_forward(job: CompileJob) -> bool:
    return job.kernel is k.embedding_layernorm_fwd_kernel


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 128-bit row loads where a thread owns >= 16 bytes of a row, 64-bit
    row offsets."""
    c = job.constexprs
    size = 4 if job.signature["weight_ptr"] == "*fp32" else 2
    per_thread = c["BLOCK_M"] * c["BLOCK_D"] * size // (32 * job.num_warps)
    offsets = FWD_OFFSETS if _is_forward(job) else BWD_OFFSETS
    report.assert_clean(require_v4_loads=per_thread >= 16, int64_offsets=offsets)


SUITE = CompileSuite(
    "embedding_layernorm", FAMILIES, _fp16_twinned, _labels, _check, REGISTER_SLACK
)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernels with their ``.to(tl.int64)`` casts removed (int32 ids) fail the check."""
    m, w = k.forward_candidates(1024)[0]
    bm, bw = k.backward_config(1024)
    jobs = [_fwd_job("fp16", arch, m, 1024, w, ids="i32") for arch in ARCHS]
    jobs += [_bwd_job("fp16", arch, bm, 1024, bw, ids="i32") for arch in ARCHS]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)
