"""Ahead-of-time compile of the attention backward kernels for sm_80 and sm_90 (no GPU needed).

Every (BLOCK_M, BLOCK_N, warps, stages) config of `backward_config_space` is compiled for both
kernels (dk/dv by key blocks, dq by query blocks) at every padded head dim, in fp16, bf16 and
fp32 (its own table) with causal masking and a key padding mask (the heaviest variant); the
unmasked / non-causal / other-group variants at each head dim's first config; the delta
preprocess once per head dim. ptxas must report 0 spill bytes and 0 stack frame; the matmuls must
use tensor cores (``mma.sync`` on sm_80, ``wgmma`` on sm_90 where the MMA tile has >= 64 rows;
fp32 at head dim 256 runs fp32 FMAs instead, see ``dot_precision``) and tiles of >= 16 bytes per
thread 128-bit loads. The per-config table (registers, shared memory) is printed
(``pytest -s``) and written next to the compile cache.
"""

from __future__ import annotations

import pytest
import torch
from helpers import report_compiles

from fusedops.kernels import attention_backward as k
from fusedops.testing import CompileJob, compile_many

pytestmark = pytest.mark.gpu_compile

ARCHS = (80, 90)
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_DIMS = (16, 32, 64, 80, 128, 256)  # 80: a padded BLOCK_D of 128
TENSORS = ("q", "k", "v", "do")
STRIDES = tuple(f"stride_{t}{d}" for t in TENSORS for d in ("b", "h", "s"))
STRIDES += ("stride_lb", "stride_lh", "stride_ls", "stride_mb", "stride_mk")
INTS = ("seq_q", "seq_k", "n_heads_q", "seq_q_bucket", "seq_k_bucket")
# What the JIT specialises for 16-aligned tensors whose rows are multiples of 16 elements.
DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "mask_ptr")
DIVISIBLE += ("dq_ptr", "dk_ptr", "dv_ptr")
DIVISIBLE += tuple(f"stride_{t}{d}" for t in (*TENSORS, "dq", "dk", "dv") for d in ("b", "h", "s"))


def _signature(kernel: str, dtype: str) -> dict[str, str]:
    sig = {f"{t}_ptr": f"*{dtype}" for t in ("q", "k", "v", "do")}
    sig |= {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "mask_ptr": "*u8"}
    outs = ("dk", "dv") if kernel == "dkdv" else ("dq",)
    sig |= {f"{t}_ptr": f"*{dtype}" for t in outs}
    sig |= {name: "i32" for name in INTS}
    sig |= {"qk_scale": "fp32", "softmax_scale": "fp32"}
    sig |= {name: "i32" for name in STRIDES}
    sig["stride_ls"] = "constexpr"  # contiguous lse rows: specialised to 1 at launch
    sig["stride_mk"] = "constexpr"
    sig |= {f"stride_{t}{d}": "i32" for t in outs for d in ("b", "h", "s")}
    names = ("HEAD_DIM", "BLOCK_D", "CAUSAL", "HAS_MASK", "GROUP", "UPCAST", "PRECISION")
    return sig | {name: "constexpr" for name in (*names, "BLOCK_M", "BLOCK_N")}


def _job(kernel, dtype, arch, head_dim, config, *, causal=True, has_mask=True, group=4):
    block_m, block_n, warps, stages = config
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": k.block_d_for(head_dim),
        "CAUSAL": causal,
        "HAS_MASK": has_mask,
        "GROUP": group,
        "UPCAST": False,
        "PRECISION": k.dot_precision(TORCH_DTYPES[dtype], head_dim),
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "stride_ls": 1,
        "stride_mk": 1,
    }
    fn = k._bwd_dkdv if kernel == "dkdv" else k._bwd_dq
    signature = _signature(kernel, dtype)
    return CompileJob(
        fn,
        signature,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=stages,
        divisible=tuple(name for name in DIVISIBLE if name in signature),
    )


def _sweep_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim in HEAD_DIMS:
        for kernel in ("dkdv", "dq"):
            for dtype in ("fp16", "bf16", "fp32"):
                for config in k.backward_config_space(head_dim, kernel, dtype == "fp32"):
                    for arch in ARCHS:
                        jobs.append(_job(kernel, dtype, arch, head_dim, config))
    return jobs


def _variant_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim in HEAD_DIMS:
        for dtype, causal, has_mask, group in (
            ("bf16", True, True, 4),
            ("fp16", False, False, 1),
            ("fp16", True, False, 3),
        ):
            for kernel in ("dkdv", "dq"):
                config = k.backward_config_space(head_dim, kernel, dtype == "fp32")[0]
                for arch in ARCHS:
                    jobs.append(
                        _job(
                            kernel,
                            dtype,
                            arch,
                            head_dim,
                            config,
                            causal=causal,
                            has_mask=has_mask,
                            group=group,
                        )
                    )
    return jobs


def _preprocess_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim in HEAD_DIMS:
        for dtype in ("fp16", "bf16", "fp32"):
            for arch in ARCHS:
                sig = {"o_ptr": f"*{dtype}", "do_ptr": f"*{dtype}", "delta_ptr": "*fp32"}
                sig |= {"seq_q": "i32", "n_heads": "i32"}
                sig |= {f"stride_{t}{d}": "i32" for t in ("o", "do") for d in ("b", "h", "s")}
                sig |= {"HEAD_DIM": "constexpr", "BLOCK_D": "constexpr", "BLOCK_M": "constexpr"}
                divisible = ("o_ptr", "do_ptr", "delta_ptr")
                divisible += tuple(f"stride_{t}{d}" for t in ("o", "do") for d in ("b", "h", "s"))
                constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": k.block_d_for(head_dim)}
                constexprs["BLOCK_M"] = k.preprocess_block_m(head_dim)
                jobs.append(
                    CompileJob(
                        k._bwd_preprocess,
                        sig,
                        constexprs,
                        arch,
                        num_warps=4,
                        num_stages=1,
                        divisible=divisible,
                    )
                )
    return jobs


def _required_mma(job) -> bool | str:
    """sm_80: mma.sync. sm_90: wgmma where the tile allows it (fp16/bf16 and an MMA M dim of
    >= 64 rows: BLOCK_N of dk/dv, BLOCK_M of dq), else any tensor-core instruction. fp32 at
    BLOCK_D 256 runs its dots as fp32 FMAs ("ieee"): no tensor cores there."""
    if job.constexprs["PRECISION"] == "ieee":
        return False
    if job.arch == 80:
        return "mma.sync"
    c = job.constexprs
    rows = c["BLOCK_N"] if job.kernel is k._bwd_dkdv else c["BLOCK_M"]
    if job.signature["q_ptr"] != "*fp32" and rows >= 64:
        return "wgmma"
    return True


def _owns_16_bytes(job) -> bool:
    """Whether a thread holds >= 16 bytes of the widest tile the kernel loads (else a 128-bit
    load cannot exist: e.g. D = 16 fp16 tiles of 8 warps give each thread 8 bytes)."""
    c = job.constexprs
    elem = 4 if job.signature["q_ptr"] == "*fp32" else 2
    rows = max(c["BLOCK_M"], c["BLOCK_N"])
    return rows * c["BLOCK_D"] * elem // (32 * job.num_warps) >= 16


@pytest.mark.parametrize("family", ["configs", "variants", "preprocess"])
def test_every_config_compiles_clean(family):
    make = {"configs": _sweep_jobs, "variants": _variant_jobs, "preprocess": _preprocess_jobs}
    jobs = make[family]()
    reports = compile_many(jobs)
    labels = [f"{j.signature['do_ptr'][1:]:>4} D={j.constexprs['HEAD_DIM']:<3}" for j in jobs]
    report_compiles(f"attention_backward_{family}", labels, reports)
    for job, report in zip(jobs, reports, strict=True):
        report.assert_clean(require_mma=_required_mma(job) if family != "preprocess" else False)
        assert report.spill_stores == 0 and report.spill_loads == 0, report.summary()
        assert report.stack_frame == 0, report.summary()
        if family != "preprocess" and _owns_16_bytes(job):
            c = report.counts
            assert c.get("ld.global.v4", 0) or c.get("cp.async", 0), report.summary()
