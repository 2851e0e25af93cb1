"""Ahead-of-time compile of the RoPE kernel for sm_80 and sm_90 in every config (no GPU needed).

Every tile config the autotuner can pick is compiled for every dtype and both pair layouts; the
feature variants (gathered cos/sin, explicit positions, backward, partial rotary, a column
stride of 2, head dims that are not powers of two) at the configs real head dims pick. ptxas
must report 0 spill bytes and 0 stack frame, and the head-row loads must be 128-bit wherever a
thread owns >= 16 contiguous bytes. The per-config table is printed (``pytest -s``) and written
next to the compile cache.
"""

from __future__ import annotations

import pytest
from helpers import assert_compiled_clean, report_compiles

from fusedops.kernels import rope as k
from fusedops.testing import CompileJob, compile_many

pytestmark = pytest.mark.gpu_compile

ARCHS = (80, 90)
DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}  # name -> bytes per element
INT_ARGS = ("seq_len", "n_heads_q", "n_heads_k", "n_heads_bucket", "max_pos", "position_offset")
TENSOR_STRIDES = tuple(f"stride_{t}{d}" for t in ("q", "k", "oq", "ok") for d in ("b", "h", "s"))
TABLE_STRIDES = ("stride_cb", "stride_cr", "stride_cc", "stride_sb", "stride_sr", "stride_sc")
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
    block_h,
    warps,
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
        "BLOCK_R2": k.block_r2_for(rot_half),
        "BLOCK_P": k.block_p_for(head_dim, rotary_dim),
        "BLOCK_H": block_h,
        "stride_ps": 1,
    }
    if col_stride == 1:
        constexprs |= {"stride_cc": 1, "stride_sc": 1}
    return CompileJob(
        k.rope_kernel,
        _signature(dtype, table or "fp32", positions, col_stride),
        constexprs,
        arch,
        num_warps=warps,
        num_stages=1,
        divisible=DIVISIBLE,
    )


def _bytes_per_thread(block_h, block_r2, warps, size):
    # Contiguous bytes of one head-row tile a thread owns (each half for the half layout).
    return block_h * block_r2 * size // (32 * warps)


def _sweep_jobs() -> list[tuple[CompileJob, int]]:
    """Every autotuner config, dtype, arch and layout, at full rotary D = 2 * BLOCK_R2."""
    jobs = []
    for block_h, block_r2, warps in k.rope_config_space():
        for dtype, size in DTYPES.items():
            for arch in ARCHS:
                for interleaved in (False, True):
                    job = _job(
                        dtype,
                        arch,
                        block_h,
                        warps,
                        head_dim=2 * block_r2,
                        rotary_dim=2 * block_r2,
                        interleaved=interleaved,
                    )
                    jobs.append((job, _bytes_per_thread(block_h, block_r2, warps, size)))
    return jobs


# (head_dim, rotary_dim) of real models: Llama (128), Phi-2 (80, partial 32), NeoX-style
# partial 25% (128, 32), GPT-J (256, partial 64), Gemma (256), a non-power-of-two full D (80).
VARIANT_DIMS = ((128, 128), (80, 32), (128, 32), (256, 64), (256, 256), (80, 80))
# (cache, has_positions, backward, table dtype or None = q's, positions dtype, column stride)
VARIANTS = (
    (True, False, False, "fp32", "i64", 1),  # cache + position_offset
    (True, True, False, "fp32", "i32", 1),  # cache + int32 positions
    (True, True, True, "fp32", "i64", 1),  # backward
    (True, False, False, "fp32", "i64", 2),  # HF duplicated cache read with column stride 2
    (False, False, False, None, "i64", 1),  # gathered, HF form (cos/sin in q's dtype)
    (False, False, True, "fp32", "i64", 1),  # gathered, backward
)


def _variant_jobs() -> list[tuple[CompileJob, int]]:
    """Every variant at Llama's D = R = 128; the cache and HF-gathered forms at the others."""
    jobs = []
    for head_dim, rotary_dim in VARIANT_DIMS:
        block_r2 = k.block_r2_for(rotary_dim // 2)
        # The first candidate: what the autotuner keeps for few heads (e.g. 9 + 3).
        block_h, warps = k.rope_candidates(block_r2)[0]
        variants = (
            VARIANTS if (head_dim, rotary_dim) == (128, 128) else VARIANTS[:1] + VARIANTS[4:5]
        )
        for cache, has_pos, backward, table, pos_dtype, col_stride in variants:
            for dtype, size in DTYPES.items():
                for arch in ARCHS:
                    for interleaved in (False, True):
                        job = _job(
                            dtype,
                            arch,
                            block_h,
                            warps,
                            head_dim=head_dim,
                            rotary_dim=rotary_dim,
                            interleaved=interleaved,
                            cache=cache,
                            has_positions=has_pos,
                            backward=backward,
                            table=table or dtype,
                            positions=pos_dtype,
                            col_stride=col_stride,
                        )
                        jobs.append((job, _bytes_per_thread(block_h, block_r2, warps, size)))
    return jobs


def _labels(jobs) -> list[str]:
    """q dtype and cos/sin table dtype of each job."""
    return [
        f"{job.signature['q_ptr'][1:]:>4} cos {job.signature['cos_ptr'][1:]:>4}" for job in jobs
    ]


@pytest.mark.parametrize("family", ["configs", "variants"])
def test_every_config_compiles_clean(family):
    jobs = _sweep_jobs() if family == "configs" else _variant_jobs()
    reports = compile_many([job for job, _ in jobs])
    report_compiles(f"rope_{family}", _labels([job for job, _ in jobs]), reports)
    assert_compiled_clean([nbytes for _, nbytes in jobs], reports)
