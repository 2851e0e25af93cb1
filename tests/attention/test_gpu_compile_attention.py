"""Ahead-of-time compile of the attention forward kernel for sm_80 and sm_90 in every config.

Every (BLOCK_M, BLOCK_N, warps, stages) the autotuner can pick for each padded head dim is
compiled for fp16 (and fp32, tf32x3, from its own table) with every variant flag on at once:
causal + padding mask + sliding window + softcap + packed sequences (flags only add code, so
this is the heaviest kernel of each config; the few tiles that spill with them are left out of
the variants' config space and compiled plain), plus the lighter variants (plain causal + mask
at the biggest tile of each head dim, no mask, not causal, non-power-of-two D, the tile-count
debug flag) at one config. Coverage of what the 16-aligned sweep cannot see: head dims
40/72/80/96 with row strides that are not multiples of 16 elements (no divisibility hints) at
the unaligned tile every such launch runs (``forward_tile``), with every flag on, and one query
row (Sq = 1: ``seq_q``, its bucket and the lse head stride specialised to 1) at the short-query
tile of ``forward_tile`` (what decode-shaped calls run). ptxas must report 0 spill bytes and 0
stack frame; the matmuls must be tensor-core instructions (``mma.sync`` on sm_80, ``wgmma`` on
sm_90 for 64-row tiles), the k/v tiles of aligned rows must move as 128-bit global loads or
``cp.async`` copies, and batch/head/row offsets must be computed in 64 bits. bf16 compiles to
the same code as fp16: the biggest tile of each head dim is compiled in bf16 too and must give
identical figures. Tables of every config are written to ``<sys.prefix>/fusedops-reports/``
(and printed with ``pytest -s``).
"""

from __future__ import annotations

import pytest
from compile_helpers import ARCHS, TORCH_DTYPES, CompileSuite

from fusedops.kernels import attention as k
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

HEAD_DIMS = (16, 32, 64, 128, 256)
UNALIGNED_DIMS = (40, 72, 80, 96)  # padded BLOCK_D 64 and 128, rows not 16-element multiples
INT_ARGS = ("seq_q", "seq_k", "group", "seq_q_bucket", "seq_k_bucket")
_DIMS = (("q", "bhm"), ("k", "bhn"), ("v", "bhn"), ("m", "bn"), ("o", "bhm"), ("l", "bhm"))
STRIDES = tuple(f"stride_{t}{d}" for t, dims in _DIMS for d in dims)
# The strides that multiply batch, head and row indices (a mask column stride and an lse row
# stride of 1 are specialised at launch).
OFFSETS = tuple(s for s in STRIDES if s not in ("stride_mn", "stride_lm"))
# What the JIT specialises for 16-aligned contiguous tensors whose rows are multiples of 16
# elements (D % 16 == 0; lse rows with Sq % 16 == 0 at the head/batch strides).
DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "mask_ptr", "out_ptr", "lse_ptr", *OFFSETS)
POINTERS = DIVISIBLE[:6]  # (torch-allocated) tensors whose rows are not 16-element multiples
# A single query row: these are 1 (lse [B, H, 1] has a unit head stride).
SEQ_Q_1 = ("seq_q", "seq_q_bucket", "stride_lh")


def _signature(dtype: str) -> dict[str, str]:
    sig = {
        "q_ptr": f"*{dtype}",
        "k_ptr": f"*{dtype}",
        "v_ptr": f"*{dtype}",
        "mask_ptr": "*u8",
        "out_ptr": f"*{dtype}",
        "lse_ptr": "*fp32",
        "cu_q_ptr": "*i32",
        "cu_k_ptr": "*i32",
        "counts_ptr": "*i32",
    }
    sig |= {name: "i32" for name in INT_ARGS}
    sig |= {"qk_scale": "fp32", "window": "i32", "cap": "fp32"}
    sig |= {name: "i32" for name in STRIDES}
    # A mask column stride and an lse row stride of 1 are specialised at launch.
    sig |= {"stride_mn": "constexpr", "stride_lm": "constexpr"}
    names = ("HEAD_DIM", "CAUSAL", "HAS_MASK", "UPCAST", "DOT_PRECISION")
    names += ("BLOCK_M", "BLOCK_N", "BLOCK_D", "WINDOW", "SOFTCAP", "VARLEN", "COUNT_TILES")
    return sig | {name: "constexpr" for name in names}


def _job(dtype, arch, cfg, head_dim, *, causal=True, has_mask=True, aligned=True, seq_q_1=False,
         **flags):  # fmt: skip
    """``flags``: WINDOW, SOFTCAP, VARLEN (default off); ``aligned``: rows of 16-element
    multiples; ``seq_q_1``: one query row."""
    bm, bn, warps, stages = cfg
    constexprs = {
        "stride_mn": 1,
        "stride_lm": 1,
        "HEAD_DIM": head_dim,
        "CAUSAL": causal,
        "HAS_MASK": has_mask,
        "UPCAST": False,
        "DOT_PRECISION": k.dot_precision(TORCH_DTYPES[dtype], head_dim),
        "BLOCK_M": bm,
        "BLOCK_N": bn,
        "BLOCK_D": k.block_d_for(head_dim),
        "WINDOW": False,
        "SOFTCAP": False,
        "VARLEN": False,
        "COUNT_TILES": False,
    } | flags
    signature = _signature(dtype)
    if seq_q_1:
        signature |= {name: "constexpr" for name in SEQ_Q_1}
        constexprs |= {name: 1 for name in SEQ_Q_1}
    divisible = DIVISIBLE if aligned else POINTERS
    return CompileJob(
        k.attention_fwd_kernel,
        signature,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=stages,
        divisible=tuple(name for name in divisible if signature[name] != "constexpr"),
    )


# Every variant flag of the kernel on at once (VARLEN runs without a padding mask, but compiling
# both on is a superset of either launch).
ALL_FLAGS = {"WINDOW": True, "SOFTCAP": True, "VARLEN": True}


def _config_jobs() -> list[CompileJob]:
    return [
        _job("fp16", arch, cfg, head_dim, **ALL_FLAGS)
        for head_dim in HEAD_DIMS
        for cfg in k.forward_config_space(head_dim, variants=True)
        for arch in ARCHS
    ]


def _plain_only_jobs() -> list[CompileJob]:
    """The tiles only the plain kernel runs (they spill with the variants' code), causal +
    padding mask."""
    jobs = []
    for dtype, elem in (("fp16", 2), ("fp32", 4)):
        for head_dim in HEAD_DIMS:
            variant_space = k.forward_config_space(head_dim, elem, variants=True)
            for cfg in k.forward_config_space(head_dim, elem):
                if cfg not in variant_space:
                    jobs += [_job(dtype, arch, cfg, head_dim) for arch in ARCHS]
    return jobs


def _variant_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim in (80, 96, 112, 128):
        cfg = k.forward_config_space(head_dim)[0]
        for causal, has_mask in ((True, False), (False, True), (False, False)):
            for arch in ARCHS:
                jobs.append(_job("fp16", arch, cfg, head_dim, causal=causal, has_mask=has_mask))
    # fp32 (tf32x3 products): every tile of its table, every flag on.
    for head_dim in HEAD_DIMS:
        for cfg in k.forward_config_space(head_dim, 4, variants=True):
            for arch in ARCHS:
                jobs.append(_job("fp32", arch, cfg, head_dim, **ALL_FLAGS))
    # The tile-count debug flag with the window (what the tile-skipping test runs).
    cfg = k.forward_config_space(64)[0]
    jobs += [_job("fp16", arch, cfg, 64, WINDOW=True, COUNT_TILES=True) for arch in ARCHS]
    return jobs


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the biggest tile of each head dim, with
    every variant flag on (jobs of the "configs" family: only the bf16 twins compile anew)."""
    jobs = []
    for head_dim in HEAD_DIMS:
        space = k.forward_config_space(head_dim, variants=True)
        cfg = max(space, key=lambda c: (c[0] * c[1], c[3], c[2]))
        jobs += [_job("fp16", arch, cfg, head_dim, **ALL_FLAGS) for arch in ARCHS]
    return jobs


def _coverage_jobs() -> list[CompileJob]:
    """Unaligned rows at head dims 40/72/80/96 (their tile, every flag on); one query row at
    the short-query tile (causal + mask; D = 64 and 128 in fp16, 128 in fp32, and D = 128 with
    every flag on)."""
    jobs = []
    for head_dim in UNALIGNED_DIMS:
        cfg = k.forward_tile(head_dim, 2, aligned=False)
        jobs += [_job("fp16", arch, cfg, head_dim, aligned=False, **ALL_FLAGS) for arch in ARCHS]
    for dtype, head_dim, flags in (("fp16", 64, {}), ("fp16", 128, {}), ("fp32", 128, {}),
                                   ("fp16", 128, ALL_FLAGS)):  # fmt: skip
        cfg = k.forward_tile(head_dim, TORCH_DTYPES[dtype].itemsize, variants=bool(flags))
        jobs += [_job(dtype, arch, cfg, head_dim, seq_q_1=True, **flags) for arch in ARCHS]
    return jobs


FAMILIES = {
    "configs": _config_jobs,
    "variants": _variant_jobs,
    "plain_only": _plain_only_jobs,
    "coverage": _coverage_jobs,
}


def _required_mma(job) -> bool | str:
    """fp16/bf16: mma.sync on sm_80, wgmma on sm_90 (64-row tiles). fp32 (tf32x3) and the
    smaller unaligned tiles: mma.sync or wgmma."""
    if job.signature["q_ptr"] != "*fp32" and job.constexprs["BLOCK_M"] >= 64:
        return "mma.sync" if job.arch == 80 else "wgmma"
    return True


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, the tensor-core instructions, 128-bit or cp.async k/v loads, 64-bit
    batch/head/row offsets."""
    offsets = tuple(o for o in OFFSETS if job.signature[o] != "constexpr")
    report.assert_clean(require_mma=_required_mma(job), int64_offsets=offsets)
    c = report.counts
    if "stride_kn" in job.divisible:
        assert c.get("ld.global.v4", 0) or c.get("cp.async", 0), report.summary()


def _labels(jobs) -> list[str]:
    out = []
    for j in jobs:
        flags = "" if "stride_kn" in j.divisible else "U"
        flags += "1" if "seq_q" in j.constexprs else ""
        out.append(f"{j.signature['q_ptr'][1:]:>4} D={j.constexprs['HEAD_DIM']:<3} {flags:<2}")
    return out


SUITE = CompileSuite("attention_forward", FAMILIES, _fp16_twinned, _labels, _check)
compile_jobs = SUITE.compile_jobs
compiled, test_every_forward_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The kernel with its ``.to(tl.int64)`` casts removed fails the check."""
    cfg = min(k.forward_config_space(64), key=lambda c: (c[0] * c[1], c[3], c[2]))
    jobs = [_job("fp16", arch, cfg, 64) for arch in ARCHS]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)


def test_forward_config_space_is_small_and_fits():
    for head_dim in (16, 24, 64, 80, 128, 200, 256):
        space = k.forward_config_space(head_dim)
        assert 1 <= len(space) <= 24
        for elem in (2, 4):
            variants = k.forward_config_space(head_dim, elem, variants=True)
            assert variants and set(variants) <= set(k.forward_config_space(head_dim, elem))
        block_d = k.block_d_for(head_dim)
        assert block_d >= head_dim and block_d & (block_d - 1) == 0
        for bm, _bn, warps, _stages in space:
            assert bm // warps >= 8
