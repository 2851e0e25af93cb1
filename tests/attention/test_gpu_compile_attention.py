"""Ahead-of-time compile of the attention forward kernel for sm_80 and sm_90 in every config.

Every (BLOCK_M, BLOCK_N, warps, stages) the autotuner can pick for each padded head dim is
compiled for fp16 and bf16 (and fp32, tf32x3, at the Llama head dim) with causal + padding
masks on, plus the variants (no mask, not causal, non-power-of-two D) at one config. ptxas must
report 0 spill bytes and 0 stack frame; the matmuls must be tensor-core instructions
(``mma.sync`` on sm_80, ``wgmma`` on sm_90) and the k/v tiles must move as 128-bit global loads
or ``cp.async`` copies. Registers and shared memory per config are printed (``pytest -s``) and
written next to the compile cache.
"""

from __future__ import annotations

import pytest
from helpers import report_compiles

from fusedops.kernels import attention as k
from fusedops.testing import CompileJob, compile_many

pytestmark = pytest.mark.gpu_compile

ARCHS = (80, 90)
INT_ARGS = ("seq_q", "seq_k", "group", "seq_q_bucket", "seq_k_bucket")
_DIMS = (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("m", "bn"), ("o", "bhm"), ("l", "bhm"))
STRIDES = tuple(f"stride_{t}{d}" for t, dims in _DIMS for d in dims)
# What the JIT specialises for 16-aligned contiguous tensors whose rows are multiples of 16
# elements (D % 16 == 0; lse rows with Sq % 16 == 0 at the head/batch strides).
DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "mask_ptr", "out_ptr", "lse_ptr")
DIVISIBLE += tuple(s for s in STRIDES if s not in ("stride_mn", "stride_lm"))


def _signature(dtype: str) -> dict[str, str]:
    sig = {
        "q_ptr": f"*{dtype}",
        "k_ptr": f"*{dtype}",
        "v_ptr": f"*{dtype}",
        "mask_ptr": "*u8",
        "out_ptr": f"*{dtype}",
        "lse_ptr": "*fp32",
    }
    sig |= {name: "i32" for name in INT_ARGS}
    sig |= {"qk_scale": "fp32"}
    sig |= {name: "i32" for name in STRIDES}
    # A mask column stride and an lse row stride of 1 are specialised at launch.
    sig |= {"stride_mn": "constexpr", "stride_lm": "constexpr"}
    names = ("HEAD_DIM", "CAUSAL", "HAS_MASK", "UPCAST", "DOT_PRECISION")
    names += ("BLOCK_M", "BLOCK_N", "BLOCK_D")
    return sig | {name: "constexpr" for name in names}


def _job(dtype, arch, cfg, head_dim, *, causal=True, has_mask=True):
    bm, bn, warps, stages = cfg
    constexprs = {
        "stride_mn": 1,
        "stride_lm": 1,
        "HEAD_DIM": head_dim,
        "CAUSAL": causal,
        "HAS_MASK": has_mask,
        "UPCAST": False,
        "DOT_PRECISION": k.dot_precision(4 if dtype == "fp32" else 2),
        "BLOCK_M": bm,
        "BLOCK_N": bn,
        "BLOCK_D": k.block_d_for(head_dim),
    }
    return CompileJob(
        k.attention_fwd_kernel,
        _signature(dtype),
        constexprs,
        arch,
        num_warps=warps,
        num_stages=stages,
        divisible=DIVISIBLE,
    )


def _config_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim in (16, 32, 64, 128, 256):
        for cfg in k.forward_config_space(head_dim):
            for dtype in ("fp16", "bf16"):
                for arch in ARCHS:
                    jobs.append(_job(dtype, arch, cfg, head_dim))
    return jobs


def _variant_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim in (80, 96, 112, 128):
        cfg = k.forward_config_space(head_dim)[0]
        for causal, has_mask in ((True, False), (False, True), (False, False)):
            for arch in ARCHS:
                jobs.append(_job("fp16", arch, cfg, head_dim, causal=causal, has_mask=has_mask))
    # fp32 (tf32x3 products): every tile of its table.
    for head_dim in (16, 32, 64, 128, 256):
        for cfg in k.forward_config_space(head_dim, 4):
            for arch in ARCHS:
                jobs.append(_job("fp32", arch, cfg, head_dim))
    return jobs


def _required_mma(job) -> bool | str:
    """fp16/bf16: mma.sync on sm_80, wgmma on sm_90 (64-row tiles). fp32 (tf32x3) runs the
    16..64-row tiles its registers allow: mma.sync or wgmma."""
    if job.signature["q_ptr"] != "*fp32":
        return "mma.sync" if job.arch == 80 else "wgmma"
    return True


@pytest.mark.parametrize("family", ["configs", "variants"])
def test_every_forward_config_compiles_clean(family):
    jobs = _config_jobs() if family == "configs" else _variant_jobs()
    reports = compile_many(jobs)
    labels = [f"{j.signature['q_ptr'][1:]:>4} D={j.constexprs['HEAD_DIM']:<3}" for j in jobs]
    report_compiles(f"attention_forward_{family}", labels, reports)
    for job, report in zip(jobs, reports, strict=True):
        report.assert_clean(require_mma=_required_mma(job))
        assert report.spill_stores == 0 and report.spill_loads == 0, report.summary()
        assert report.stack_frame == 0, report.summary()
        c = report.counts
        assert c.get("ld.global.v4", 0) or c.get("cp.async", 0), report.summary()


def test_forward_config_space_is_small_and_fits():
    for head_dim in (16, 24, 64, 80, 128, 200, 256):
        space = k.forward_config_space(head_dim)
        assert 1 <= len(space) <= 24
        block_d = k.block_d_for(head_dim)
        assert block_d >= head_dim and block_d & (block_d - 1) == 0
        for bm, _bn, warps, _stages in space:
            assert bm // warps >= 8
