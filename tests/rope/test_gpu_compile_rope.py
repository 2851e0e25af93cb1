"""Ahead-of-time compile of the RoPE kernel for sm_80 and sm_90 in every config (no GPU needed).

Every tile the launcher's heuristic (``rope_tile``) can pick is compiled in fp32 and fp16 for
both pair layouts; the feature variants (gathered cos/sin, explicit positions, backward, partial
rotary, a column stride of 2, head dims that are not powers of two, a rotary dim of 4096 rotated
in chunks) at the tiles real head dims pick. Every job is compiled as the launcher launches it,
without FMA contraction (``enable_fp_fusion=False``), and its PTX must hold no ``fma.rn.f32``.
ptxas must report 0 spill bytes and 0 stack frame, the head-row loads must be 128-bit wherever
a thread owns >= 16 contiguous bytes, and batch/token/head offsets must be computed in 64 bits.
bf16 shares fp16's code but for the conversions: its twins of a subset (the biggest tile of each
frequency width, every variant at Llama's head dim) must give fp16's figures (registers within a
few), and every fp16 config keeps that many registers spare. Tables of every config are written
to ``<sys.prefix>/fusedops-reports/`` (and printed with ``pytest -s``).
"""

from __future__ import annotations

import dataclasses

import pytest
from compile_helpers import ARCHS, DTYPES, REGISTER_SLACK, CompileSuite

from fusedops.kernels import rope as k
from fusedops.testing import CompileJob, GpuCompileReport, compile_many

pytestmark = pytest.mark.gpu_compile

INT_ARGS = ("seq_len", "n_heads_q", "n_heads_k", "max_pos", "position_offset")
TENSOR_STRIDES = tuple(f"stride_{t}{d}" for t in ("q", "k", "oq", "ok") for d in ("b", "h", "s"))
TABLE_STRIDES = ("stride_cb", "stride_cr", "stride_cc", "stride_sb", "stride_sr", "stride_sc")
# Integer arguments that multiply batch, token, head or position indices (the column strides
# multiply column indices < BLOCK_R2 and stay 32-bit).
OFFSETS = (*TENSOR_STRIDES, "stride_cb", "stride_cr", "stride_sb", "stride_sr", "stride_pb")
# What the JIT specialises for 16-aligned tensors whose rows are multiples of 16 elements
# (contiguous [B, H, S, D] or [B, S, H, D] views with D % 16 == 0, caches with R/2 % 16 == 0).
DIVISIBLE = ("q_ptr", "k_ptr", "cos_ptr", "sin_ptr", "pos_ptr", "out_q_ptr", "out_k_ptr")
DIVISIBLE += (*TENSOR_STRIDES, "stride_cr", "stride_sr")


def _signature(dtype: str, table: str, positions: str, col_stride: int) -> dict[str, str]:
    sig = {
        "q_ptr": f"*{dtype}",
        "k_ptr": f"*{dtype}",
        "cos_ptr": f"*{table}",
        "sin_ptr": f"*{table}",
        "pos_ptr": f"*{positions}",
        "out_q_ptr": f"*{dtype}",
        "out_k_ptr": f"*{dtype}",
    }
    sig |= {name: "i32" for name in INT_ARGS}
    sig |= {name: "i32" for name in TENSOR_STRIDES + TABLE_STRIDES}
    # A column stride of 1 is specialised to a constant at launch, like any int equal to 1.
    if col_stride == 1:
        sig |= {"stride_cc": "constexpr", "stride_sc": "constexpr"}
    sig |= {"stride_pb": "i32", "stride_ps": "constexpr"}  # positions rows are contiguous
    names = ("HEAD_DIM", "ROT_HALF", "CACHE", "HAS_POSITIONS", "INTERLEAVED", "BACKWARD")
    names += ("COPY_REST", "BLOCK_R2", "BLOCK_P", "BLOCK_H")
    return sig | {name: "constexpr" for name in names}


def _job(
    dtype,
    arch,
    tile,
    *,
    head_dim,
    rotary_dim,
    interleaved,
    cache=True,
    has_positions=False,
    backward=False,
    table=None,
    positions="i64",
    col_stride=1,
    fp_fusion=False,
):
    rot_half = rotary_dim // 2
    constexprs = {
        "HEAD_DIM": head_dim,
        "ROT_HALF": rot_half,
        "CACHE": cache,
        "HAS_POSITIONS": has_positions,
        "INTERLEAVED": interleaved,
        "BACKWARD": backward,
        "COPY_REST": rotary_dim < head_dim,
        "BLOCK_R2": tile.block_r2,
        "BLOCK_P": k.copy_block_for(head_dim, rotary_dim, tile.block_h),
        "BLOCK_H": tile.block_h,
        "stride_ps": 1,
    }
    if col_stride == 1:
        constexprs |= {"stride_cc": 1, "stride_sc": 1}
    return CompileJob(
        k.rope_kernel,
        _signature(dtype, table or "fp32", positions, col_stride),
        constexprs,
        arch,
        num_warps=tile.num_warps,
        num_stages=1,
        divisible=DIVISIBLE,
        fp_fusion=fp_fusion,
    )


def _bytes_per_thread(job: CompileJob) -> int:
    """Contiguous bytes of one head-row tile a thread owns (each half for the half layout)."""
    c, size = job.constexprs, 4 if job.signature["q_ptr"] == "*fp32" else 2
    return c["BLOCK_H"] * c["BLOCK_R2"] * size // (32 * job.num_warps)


def _sweep_jobs(dtypes=DTYPES) -> list[CompileJob]:
    """Every tile of the heuristic, dtype, arch and layout, at full rotary D = 2 * BLOCK_R2."""
    return [
        _job(dtype, arch, tile, head_dim=2 * tile.block_r2, rotary_dim=2 * tile.block_r2,
             interleaved=interleaved)
        for tile in k.rope_config_space()
        for dtype in dtypes
        for arch in ARCHS
        for interleaved in (False, True)
    ]  # fmt: skip


# (head_dim, rotary_dim) of real models: Llama (128), Phi-2 (80, partial 32), NeoX-style
# partial 25% (128, 32: two copy steps), GPT-J (256, partial 64), Gemma (256), a
# non-power-of-two full D (80), and a rotary dim past one tile (4096 of 4160: 8 chunks of 256
# pairs, then a copied tail).
VARIANT_DIMS = ((128, 128), (80, 32), (128, 32), (256, 64), (256, 256), (80, 80), (4160, 4096))
# The head count the variants are compiled for: SmolLM2's 9 query heads (3 key heads).
VARIANT_HEADS = 9
# (cache, has_positions, backward, table dtype or None = q's, positions dtype, column stride)
VARIANTS = (
    (True, False, False, "fp32", "i64", 1),  # cache + position_offset
    (True, True, False, "fp32", "i32", 1),  # cache + int32 positions
    (True, True, True, "fp32", "i64", 1),  # backward
    (True, False, False, "fp32", "i64", 2),  # HF duplicated cache read with column stride 2
    (False, False, False, None, "i64", 1),  # gathered, HF form (cos/sin in q's dtype)
    (False, False, True, "fp32", "i64", 1),  # gathered, backward
)


def _variant_jobs(dtypes=DTYPES, dims=VARIANT_DIMS) -> list[CompileJob]:
    """Every variant at Llama's D = R = 128; the cache and HF-gathered forms at the others."""
    jobs = []
    for head_dim, rotary_dim in dims:
        tile = k.rope_tile(rotary_dim // 2, VARIANT_HEADS)
        variants = (
            VARIANTS if (head_dim, rotary_dim) == (128, 128) else VARIANTS[:1] + VARIANTS[4:5]
        )
        jobs += [
            _job(dtype, arch, tile, head_dim=head_dim, rotary_dim=rotary_dim,
                 interleaved=interleaved, cache=cache, has_positions=has_pos, backward=backward,
                 table=table or dtype, positions=pos_dtype, col_stride=col_stride)
            for cache, has_pos, backward, table, pos_dtype, col_stride in variants
            for dtype in dtypes
            for arch in ARCHS
            for interleaved in (False, True)
        ]  # fmt: skip
    return jobs


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the tallest head block (most registers) of
    each pair-column width, every variant at Llama's head dim."""
    sweep = _sweep_jobs({"fp16": 2})
    tallest = {}
    for job in sweep:
        width = job.constexprs["BLOCK_R2"]
        tallest[width] = max(tallest.get(width, 0), job.constexprs["BLOCK_H"])
    twinned = [j for j in sweep if j.constexprs["BLOCK_H"] == tallest[j.constexprs["BLOCK_R2"]]]
    return twinned + _variant_jobs({"fp16": 2}, VARIANT_DIMS[:1])


FAMILIES = {"configs": _sweep_jobs, "variants": _variant_jobs}


def _labels(jobs) -> list[str]:
    """q dtype and cos/sin table dtype of each job."""
    return [
        f"{job.signature['q_ptr'][1:]:>4} cos {job.signature['cos_ptr'][1:]:>4}" for job in jobs
    ]


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 128-bit head-row loads where a thread owns >= 16 bytes, 64-bit
    batch/token/head offsets, no fused multiply-add (the launcher turns contraction off)."""
    report.assert_clean(require_v4_loads=_bytes_per_thread(job) >= 16, int64_offsets=OFFSETS)
    assert not job.fp_fusion
    assert "fma.rn.f32" not in report.ptx, f"FMA in the rotation: {report.summary()}"


SUITE = CompileSuite("rope", FAMILIES, _fp16_twinned, _labels, _check, REGISTER_SLACK)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernel with its ``.to(tl.int64)`` casts removed fails the check."""
    # Gathered cos/sin in the half layout, on sm_80 and sm_90.
    jobs = [
        job
        for job in _variant_jobs({"fp16": 2}, VARIANT_DIMS[:1])
        if not (job.constexprs["CACHE"] or job.constexprs["BACKWARD"])
        and not job.constexprs["INTERLEAVED"]
    ]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)


def test_fp_fusion_would_contract_the_rotation():
    """The no-FMA check can fail: the Llama job compiled with contraction on holds fma.rn.f32."""
    job = next(
        j
        for j in _variant_jobs({"fp32": 4}, VARIANT_DIMS[:1])
        if j.arch == 90 and not j.constexprs["INTERLEAVED"]
    )
    (fused,) = compile_many([dataclasses.replace(job, fp_fusion=True)])
    assert "fma.rn.f32" in fused.ptx
