"""Ahead-of-time compile of the attention backward kernels for sm_80 and sm_90 (no GPU needed).

Every (BLOCK_M, BLOCK_N, warps, stages) config of `backward_config_space` is compiled for both
kernels (dk/dv by key blocks, dq by query blocks) at every padded head dim, in fp16 and fp32
(its own table) with every variant flag on at once: causal + key padding mask + sliding window +
softcap + packed sequences (flags only add code: the heaviest kernel of each config; the few
tiles that spill with them are left out of the variants' config space and compiled plain); the
plain causal + mask kernel at the biggest tile of each head dim (the bf16 twins' fp16 jobs), the
unmasked / non-causal / other-group variants at each head dim's first config; the delta
preprocess once per head dim. ptxas must report 0 spill bytes and 0 stack frame; the matmuls
must use tensor cores (``mma.sync`` on sm_80, ``wgmma`` on sm_90 where the MMA tile has >= 64
rows; fp32 at head dim 256 runs fp32 FMAs instead, see ``dot_precision``), tiles of >= 16 bytes
per thread 128-bit loads, and batch/head/row offsets must be computed in 64 bits. bf16 compiles
to the same code as fp16: the biggest tile of each kernel and head dim is compiled in bf16 too
and must give identical figures (the preprocess: registers within a few). Tables of every config
are written to ``<sys.prefix>/fusedops-reports/`` (and printed with ``pytest -s``).
"""

from __future__ import annotations

import pytest
from compile_helpers import ARCHS, REGISTER_SLACK, TORCH_DTYPES, CompileSuite

from fusedops.kernels import attention_backward as k
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

HEAD_DIMS = (16, 32, 64, 80, 128, 256)  # 80: a padded BLOCK_D of 128
TENSORS = ("q", "k", "v", "do")
STRIDES = tuple(f"stride_{t}{d}" for t in TENSORS for d in ("b", "h", "s"))
STRIDES += ("stride_lb", "stride_lh", "stride_ls", "stride_deltab", "stride_deltah")
STRIDES += ("stride_mb", "stride_mk")
INTS = ("seq_q", "seq_k", "seq_q_bucket", "seq_k_bucket")
# What the JIT specialises for 16-aligned tensors whose rows are multiples of 16 elements.
DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "mask_ptr")
DIVISIBLE += ("cu_q_ptr", "cu_k_ptr", "stride_deltab", "stride_deltah")
DIVISIBLE += ("dq_ptr", "dk_ptr", "dv_ptr")
DIVISIBLE += tuple(f"stride_{t}{d}" for t in (*TENSORS, "dq", "dk", "dv") for d in ("b", "h", "s"))
# The integer arguments that multiply batch, head and row indices: every stride but the two
# specialised to 1.
OFFSETS = tuple(s for s in STRIDES if s not in ("stride_ls", "stride_mk"))
PREPROCESS_OFFSETS = tuple(f"stride_{t}{d}" for t in ("o", "do") for d in ("b", "h", "s"))
PREPROCESS_OFFSETS += ("n_heads", "seq_q")


def _signature(kernel: str, dtype: str) -> dict[str, str]:
    sig = {f"{t}_ptr": f"*{dtype}" for t in ("q", "k", "v", "do")}
    sig |= {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "mask_ptr": "*u8"}
    sig |= {"cu_q_ptr": "*i32", "cu_k_ptr": "*i32"}
    outs = ("dk", "dv") if kernel == "dkdv" else ("dq",)
    sig |= {f"{t}_ptr": f"*{dtype}" for t in outs}
    sig |= {name: "i32" for name in INTS}
    sig |= {"qk_scale": "fp32", "softmax_scale": "fp32", "window": "i32", "cap": "fp32"}
    sig |= {name: "i32" for name in STRIDES}
    sig["stride_ls"] = "constexpr"  # contiguous lse rows: specialised to 1 at launch
    sig["stride_mk"] = "constexpr"
    sig |= {f"stride_{t}{d}": "i32" for t in outs for d in ("b", "h", "s")}
    names = ("HEAD_DIM", "BLOCK_D", "CAUSAL", "HAS_MASK", "GROUP", "UPCAST", "PRECISION")
    names += ("BLOCK_M", "BLOCK_N", "WINDOW", "SOFTCAP", "VARLEN")
    return sig | {name: "constexpr" for name in names}


def _job(kernel, dtype, arch, head_dim, config, *, causal=True, has_mask=True, group=4, **flags):
    """``flags``: WINDOW, SOFTCAP, VARLEN (default off)."""
    block_m, block_n, warps, stages = config
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": k.block_d_for(head_dim),
        "CAUSAL": causal,
        "HAS_MASK": has_mask,
        "GROUP": group,
        "UPCAST": False,
        "PRECISION": k.dot_precision(TORCH_DTYPES[dtype], head_dim, backward=True),
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "stride_ls": 1,
        "stride_mk": 1,
        "WINDOW": False,
        "SOFTCAP": False,
        "VARLEN": False,
    } | flags
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


# Every variant flag of the kernels on at once (VARLEN runs without a padding mask, but compiling
# both on is a superset of either launch).
ALL_FLAGS = {"WINDOW": True, "SOFTCAP": True, "VARLEN": True}


def _sweep_jobs() -> list[CompileJob]:
    return [
        _job(kernel, dtype, arch, head_dim, config, **ALL_FLAGS)
        for head_dim in HEAD_DIMS
        for kernel in ("dkdv", "dq")
        for dtype in ("fp16", "fp32")
        for config in k.backward_config_space(head_dim, kernel, dtype == "fp32", variants=True)
        for arch in ARCHS
    ]


def _plain_only_jobs() -> list[CompileJob]:
    """The tiles only the plain kernels run (they spill with the variants' code), causal +
    padding mask."""
    jobs = []
    for head_dim in HEAD_DIMS:
        for kernel in ("dkdv", "dq"):
            for dtype in ("fp16", "fp32"):
                fp32 = dtype == "fp32"
                variant_space = k.backward_config_space(head_dim, kernel, fp32, variants=True)
                for config in k.backward_config_space(head_dim, kernel, fp32):
                    if config not in variant_space:
                        jobs += [_job(kernel, dtype, arch, head_dim, config) for arch in ARCHS]
    return jobs


def _variant_jobs() -> list[CompileJob]:
    return [
        _job(kernel, "fp16", arch, head_dim, k.backward_config_space(head_dim, kernel)[0],
             causal=causal, has_mask=has_mask, group=group)
        for head_dim in HEAD_DIMS
        for causal, has_mask, group in ((False, False, 1), (True, False, 3))
        for kernel in ("dkdv", "dq")
        for arch in ARCHS
    ]  # fmt: skip


def _preprocess_job(dtype: str, arch: int, head_dim: int) -> CompileJob:
    sig = {"o_ptr": f"*{dtype}", "do_ptr": f"*{dtype}", "delta_ptr": "*fp32"}
    sig |= {"seq_q": "i32", "n_heads": "i32"}
    sig |= {f"stride_{t}{d}": "i32" for t in ("o", "do") for d in ("b", "h", "s")}
    sig |= {"HEAD_DIM": "constexpr", "BLOCK_D": "constexpr", "BLOCK_M": "constexpr"}
    divisible = ("o_ptr", "do_ptr", "delta_ptr", *PREPROCESS_OFFSETS[:6])
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": k.block_d_for(head_dim)}
    constexprs["BLOCK_M"] = k.preprocess_block_m(head_dim)
    return CompileJob(
        k._bwd_preprocess, sig, constexprs, arch, num_warps=4, num_stages=1, divisible=divisible
    )


def _preprocess_jobs() -> list[CompileJob]:
    return [
        _preprocess_job(dtype, arch, head_dim)
        for head_dim in HEAD_DIMS
        for dtype in ("fp16", "fp32")
        for arch in ARCHS
    ]


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the biggest tile of each kernel and head
    dim with every variant flag on (jobs of the "configs" family: only the bf16 twins compile
    anew), and the preprocess at the widest head dim."""
    jobs = []
    for head_dim in HEAD_DIMS:
        for kernel in ("dkdv", "dq"):
            space = k.backward_config_space(head_dim, kernel, variants=True)
            config = max(space, key=lambda c: (c[0] * c[1], c[3], c[2]))
            jobs += [_job(kernel, "fp16", arch, head_dim, config, **ALL_FLAGS) for arch in ARCHS]
    return jobs + [_preprocess_job("fp16", arch, max(HEAD_DIMS)) for arch in ARCHS]


FAMILIES = {
    "configs": _sweep_jobs,
    "variants": _variant_jobs,
    "plain_only": _plain_only_jobs,
    "preprocess": _preprocess_jobs,
}


def _required_mma(job) -> bool | str:
    """sm_80: mma.sync. sm_90: wgmma where the tile allows it (fp16/bf16 and an MMA M dim of
    >= 64 rows: BLOCK_N of dk/dv, BLOCK_M of dq), else any tensor-core instruction. fp32 at
    BLOCK_D 256 runs its dots as fp32 FMAs ("ieee"): no tensor cores there."""
    if job.constexprs["PRECISION"] == "ieee" and job.signature["q_ptr"] == "*fp32":
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


def _offsets(job) -> tuple[str, ...]:
    """The 64-bit offset arguments of the job's kernel."""
    if "o_ptr" in job.signature:
        return PREPROCESS_OFFSETS
    outs = ("dk", "dv") if "dk_ptr" in job.signature else ("dq",)
    return OFFSETS + tuple(f"stride_{t}{d}" for t in outs for d in ("b", "h", "s"))


def _register_slack(job) -> int:
    """bf16 vs fp16 registers of the job's config: REGISTER_SLACK for the preprocess, none for
    the dk/dv and dq kernels (identical code)."""
    return REGISTER_SLACK if job.kernel is k._bwd_preprocess else 0


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 64-bit batch/head/row offsets; the preprocess (bf16 twins too) keeps
    its register slack spare; the matmul kernels use tensor cores and load their tiles as
    128-bit loads or cp.async where a thread owns >= 16 bytes."""
    if job.kernel is k._bwd_preprocess:
        report.assert_clean(int64_offsets=_offsets(job), register_headroom=REGISTER_SLACK)
        return
    report.assert_clean(require_mma=_required_mma(job), int64_offsets=_offsets(job))
    if _owns_16_bytes(job):
        c = report.counts
        assert c.get("ld.global.v4", 0) or c.get("cp.async", 0), report.summary()


def _labels(jobs) -> list[str]:
    return [f"{j.signature['do_ptr'][1:]:>4} D={j.constexprs['HEAD_DIM']:<3}" for j in jobs]


SUITE = CompileSuite(
    "attention_backward", FAMILIES, _fp16_twinned, _labels, _check, _register_slack
)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernels with their ``.to(tl.int64)`` casts removed fail the check."""
    jobs = [
        _job(kernel, "fp16", arch, 64, min(k.backward_config_space(64, kernel)))
        for kernel in ("dkdv", "dq")
        for arch in ARCHS
    ]
    jobs += [_preprocess_job("fp16", arch, 64) for arch in ARCHS]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)
