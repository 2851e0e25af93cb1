"""Ahead-of-time compile of the attention backward kernels for sm_80 and sm_90 (no GPU needed).

The backward never autotunes: each kernel (dk/dv by key blocks, dq by query blocks) runs the
tile of `backward_tile` for its head dim, dtype and row alignment, whatever the variant flags,
and exactly those tiles are compiled, at every padded head dim in fp16 and fp32, with every
variant flag on at once (causal + key padding mask + sliding window + softcap + packed
sequences: flags only add code, so this is the heaviest kernel of the tile). The split dk/dv
kernel (``head_splits > 1``: fp32 partial dk/dv; ``head_splits`` is never specialised, so fp32
inputs share the unsplit kernel) is compiled at every fp16 tile, the split sum once per head
dim. The unmasked / non-causal / other-group variants at each head dim's tile; the delta
preprocess once per head dim; head dims 40/72/80/96 with row strides that are not multiples of
16 elements (no divisibility hints: element-wise loads, an address register per element) at
their unaligned tile; Sq = 1 (seq_q and the unit lse/delta strides specialised). ptxas must
report 0 spill bytes and 0 stack frame; the matmuls must use tensor cores (``mma.sync`` on
sm_80, ``wgmma`` on sm_90 where the MMA tile has >= 64 rows; fp32 at head dim 256 runs fp32 FMAs
instead, see ``dot_precision``), tiles of >= 16 bytes per thread (aligned strides) 128-bit
loads, and batch/head/row/split offsets must be computed in 64 bits. bf16 compiles to the same
code as fp16: each kernel's tile at every head dim is compiled in bf16 too and must give
identical figures (the preprocess: registers within a few). Tables of every config are written
to ``<sys.prefix>/fusedops-reports/`` (and printed with ``pytest -s``).
"""

from __future__ import annotations

import pytest
from compile_helpers import ARCHS, REGISTER_SLACK, TORCH_DTYPES, CompileSuite

from fusedops.kernels import attention_backward as k
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

HEAD_DIMS = (16, 32, 64, 80, 128, 256)  # 80: a padded BLOCK_D of 128
UNALIGNED_DIMS = (40, 72, 80, 96)  # padded BLOCK_D 64 and 128, rows not 16-element multiples
TENSORS = ("q", "k", "v", "do")
STRIDES = tuple(f"stride_{t}{d}" for t in TENSORS for d in ("b", "h", "s"))
STRIDES += ("stride_lb", "stride_lh", "stride_ls", "stride_deltab", "stride_deltah")
STRIDES += ("stride_mb", "stride_mk")
INTS = ("seq_q", "seq_k")
# What the JIT specialises for 16-aligned tensors whose rows are multiples of 16 elements.
DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "mask_ptr")
DIVISIBLE += ("cu_q_ptr", "cu_k_ptr", "stride_deltab", "stride_deltah")
DIVISIBLE += ("dq_ptr", "dk_ptr", "dv_ptr")
DIVISIBLE += tuple(f"stride_{t}{d}" for t in (*TENSORS, "dq", "dk", "dv") for d in ("b", "h", "s"))
DIVISIBLE += ("stride_dksp", "stride_dvsp")
# Tensors whose rows are not multiples of 16 elements: only the (torch-allocated) pointers.
POINTERS = tuple(name for name in DIVISIBLE if name.endswith("_ptr"))
# The integer arguments that multiply batch, head and row indices: every stride but the two
# specialised to 1.
OFFSETS = tuple(s for s in STRIDES if s not in ("stride_ls", "stride_mk"))
PREPROCESS_OFFSETS = tuple(f"stride_{t}{d}" for t in ("o", "do") for d in ("b", "h", "s"))
PREPROCESS_OFFSETS += ("n_heads", "seq_q")


def _signature(kernel: str, dtype: str, *, split: bool, seq_q_1: bool) -> dict[str, str]:
    sig = {f"{t}_ptr": f"*{dtype}" for t in ("q", "k", "v", "do")}
    sig |= {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "mask_ptr": "*u8"}
    sig |= {"cu_q_ptr": "*i32", "cu_k_ptr": "*i32"}
    outs = ("dk", "dv") if kernel == "dkdv" else ("dq",)
    # Split dk/dv programs write fp32 partials.
    sig |= {f"{t}_ptr": "*fp32" if split else f"*{dtype}" for t in outs}
    sig |= {name: "i32" for name in INTS}
    if kernel == "dkdv":
        sig["head_splits"] = "i32"  # never specialised
    sig |= {"qk_scale": "fp32", "softmax_scale": "fp32", "window": "i32", "cap": "fp32"}
    sig |= {name: "i32" for name in STRIDES}
    sig["stride_ls"] = "constexpr"  # contiguous lse rows: specialised to 1 at launch
    sig["stride_mk"] = "constexpr"
    if seq_q_1:  # one query row: lse [B, H, 1] and delta have unit head strides
        sig |= {"seq_q": "constexpr", "stride_lh": "constexpr", "stride_deltah": "constexpr"}
    sig |= {f"stride_{t}{d}": "i32" for t in outs for d in ("b", "h", "s")}
    if kernel == "dkdv":
        sig |= {"stride_dksp": "i32", "stride_dvsp": "i32"}
    names = ("HEAD_DIM", "BLOCK_D", "CAUSAL", "HAS_MASK", "GROUP", "UPCAST", "PRECISION")
    names += ("BLOCK_M", "BLOCK_N", "WINDOW", "SOFTCAP", "VARLEN")
    return sig | {name: "constexpr" for name in names}


def _tile(kernel: str, dtype: str, head_dim: int, *, aligned: bool = True) -> tuple[int, ...]:
    return k.backward_tile(head_dim, kernel, dtype == "fp32", aligned=aligned)


def _job(kernel, dtype, arch, head_dim, config=None, *, causal=True, has_mask=True, group=4,
         split=False, aligned=True, seq_q_1=False, **flags):  # fmt: skip
    """``config`` (default: the tile the launcher runs); ``flags``: WINDOW, SOFTCAP, VARLEN
    (default off); ``split``: the split dk/dv kernel; ``aligned``: rows of 16-element
    multiples; ``seq_q_1``: a single query row."""
    block_m, block_n, warps, stages = config or _tile(kernel, dtype, head_dim, aligned=aligned)
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
    if seq_q_1:
        constexprs |= {"seq_q": 1, "stride_lh": 1, "stride_deltah": 1}
    fn = k._bwd_dkdv if kernel == "dkdv" else k._bwd_dq
    signature = _signature(kernel, dtype, split=split, seq_q_1=seq_q_1)
    divisible = DIVISIBLE if aligned else POINTERS
    return CompileJob(
        fn,
        signature,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=stages,
        divisible=tuple(
            name for name in divisible if signature.get(name, "constexpr") != "constexpr"
        ),
    )


# Every variant flag of the kernels on at once (VARLEN runs without a padding mask, but compiling
# both on is a superset of either launch).
ALL_FLAGS = {"WINDOW": True, "SOFTCAP": True, "VARLEN": True}


def _tile_jobs(*, split: bool = False) -> list[CompileJob]:
    """The tile each kernel runs at every head dim and dtype, with every flag on (``split``:
    the dk/dv kernel writing fp32 partials)."""
    return [
        _job(kernel, dtype, arch, head_dim, split=split, **ALL_FLAGS)
        for head_dim in HEAD_DIMS
        for kernel in (("dkdv",) if split else ("dkdv", "dq"))
        for dtype in (("fp16",) if split else ("fp16", "fp32"))
        for arch in ARCHS
    ]


def _variant_jobs() -> list[CompileJob]:
    return [
        _job(kernel, "fp16", arch, head_dim, causal=causal, has_mask=has_mask, group=group)
        for head_dim in HEAD_DIMS
        for causal, has_mask, group in ((False, False, 1), (True, False, 3))
        for kernel in ("dkdv", "dq")
        for arch in ARCHS
    ]


def _coverage_jobs() -> list[CompileJob]:
    """Head dims 40/72/80/96 with unaligned rows (their tile, every flag on); one query row
    (D = 128, plain causal, fp16 and fp32)."""
    jobs = [
        _job(kernel, "fp16", arch, head_dim, aligned=False, **ALL_FLAGS)
        for head_dim in UNALIGNED_DIMS
        for kernel in ("dkdv", "dq")
        for arch in ARCHS
    ]
    return jobs + [
        _job(kernel, dtype, arch, 128, seq_q_1=True)
        for kernel in ("dkdv", "dq")
        for dtype in ("fp16", "fp32")
        for arch in ARCHS
    ]


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


SUM_STRIDES = ("stride_psp", "stride_pb", "stride_ph", "stride_ps")
SUM_STRIDES += ("stride_ob", "stride_oh", "stride_os")


def _sum_job(dtype: str, arch: int, head_dim: int) -> CompileJob:
    """The split sum of dk/dv partials (VARLEN: its row count read from cu_k as well)."""
    sig = {"part_ptr": "*fp32", "out_ptr": f"*{dtype}", "cu_k_ptr": "*i32"}
    sig |= {"n_splits": "i32", "n_rows": "i32"} | {name: "i32" for name in SUM_STRIDES}
    names = ("HEAD_DIM", "BLOCK_D", "BLOCK_R", "VARLEN")
    sig |= {name: "constexpr" for name in names}
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": k.block_d_for(head_dim), "VARLEN": True}
    constexprs["BLOCK_R"] = k.preprocess_block_m(head_dim)
    divisible = ("part_ptr", "out_ptr", "cu_k_ptr", *SUM_STRIDES)
    return CompileJob(
        k._bwd_sum_splits, sig, constexprs, arch, num_warps=4, num_stages=1, divisible=divisible
    )


def _sum_jobs() -> list[CompileJob]:
    """Every head-dim tile storing fp16, and fp32 at D = 128."""
    jobs = [_sum_job("fp16", arch, head_dim) for head_dim in HEAD_DIMS for arch in ARCHS]
    return jobs + [_sum_job("fp32", arch, 128) for arch in ARCHS]


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the tile of each kernel and head dim with
    every variant flag on (jobs of the "tiles" family: only the bf16 twins compile anew), and
    the preprocess at the widest head dim."""
    jobs = [
        _job(kernel, "fp16", arch, head_dim, **ALL_FLAGS)
        for head_dim in HEAD_DIMS
        for kernel in ("dkdv", "dq")
        for arch in ARCHS
    ]
    return jobs + [_preprocess_job("fp16", arch, max(HEAD_DIMS)) for arch in ARCHS]


FAMILIES = {
    "tiles": _tile_jobs,
    "split": lambda: _tile_jobs(split=True),
    "split_sum": _sum_jobs,
    "variants": _variant_jobs,
    "coverage": _coverage_jobs,
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
    """Whether a thread holds >= 16 bytes of the widest tile the kernel loads, with aligned
    rows (else a 128-bit load cannot exist: e.g. D = 16 fp16 tiles of 8 warps give each thread
    8 bytes)."""
    if "stride_qs" not in job.divisible:
        return False
    c = job.constexprs
    elem = 4 if job.signature["q_ptr"] == "*fp32" else 2
    rows = max(c["BLOCK_M"], c["BLOCK_N"])
    return rows * c["BLOCK_D"] * elem // (32 * job.num_warps) >= 16


def _offsets(job) -> tuple[str, ...]:
    """The 64-bit offset arguments of the job's kernel (those specialised to 1 aside)."""
    if "o_ptr" in job.signature:
        return PREPROCESS_OFFSETS
    if "part_ptr" in job.signature:
        return SUM_STRIDES
    outs = ("dk", "dv") if "dk_ptr" in job.signature else ("dq",)
    offsets = OFFSETS + tuple(f"stride_{t}{d}" for t in outs for d in ("b", "h", "s"))
    if "dk_ptr" in job.signature:
        offsets += ("stride_dksp", "stride_dvsp")
    return tuple(o for o in offsets if job.signature[o] != "constexpr")


def _register_slack(job) -> int:
    """bf16 vs fp16 registers of the job's config: REGISTER_SLACK for the preprocess and the
    split sum, none for the dk/dv and dq kernels (identical code)."""
    return REGISTER_SLACK if job.kernel in (k._bwd_preprocess, k._bwd_sum_splits) else 0


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 64-bit batch/head/row/split offsets; the preprocess and the split sum
    (bf16 twins too) keep their register slack spare, the split sum loads its fp32 partials
    128 bits at a time; the matmul kernels use tensor cores and load their tiles as 128-bit
    loads or cp.async where a thread owns >= 16 bytes."""
    if job.kernel is k._bwd_preprocess:
        report.assert_clean(int64_offsets=_offsets(job), register_headroom=REGISTER_SLACK)
        return
    if job.kernel is k._bwd_sum_splits:
        report.assert_clean(
            require_v4_loads=True, int64_offsets=_offsets(job), register_headroom=REGISTER_SLACK
        )
        return
    report.assert_clean(require_mma=_required_mma(job), int64_offsets=_offsets(job))
    if _owns_16_bytes(job):
        c = report.counts
        assert c.get("ld.global.v4", 0) or c.get("cp.async", 0), report.summary()


def _labels(jobs) -> list[str]:
    out = []
    for j in jobs:
        dtype = j.signature.get("do_ptr", j.signature.get("out_ptr", "?"))[1:]
        split = j.signature.get("dk_ptr") == "*fp32" and j.signature["q_ptr"] != "*fp32"
        flags = "S" if split else ""
        flags += "" if "stride_qs" in j.divisible or "q_ptr" not in j.signature else "U"
        flags += "1" if j.signature.get("seq_q") == "constexpr" else ""
        out.append(f"{dtype:>4} D={j.constexprs['HEAD_DIM']:<3} {flags:<2}")
    return out


SUITE = CompileSuite(
    "attention_backward", FAMILIES, _fp16_twinned, _labels, _check, _register_slack
)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernels with their ``.to(tl.int64)`` casts removed fail the check."""
    jobs = [_job(kernel, "fp16", arch, 64) for kernel in ("dkdv", "dq") for arch in ARCHS]
    jobs += [_job("dkdv", "fp16", 80, 64, split=True), _sum_job("fp16", 90, 64)]
    jobs += [_preprocess_job("fp16", arch, 64) for arch in ARCHS]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)
