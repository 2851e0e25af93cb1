"""Ahead-of-time compile of the KV-cache decode kernels for sm_80 and sm_90 in every config.

The split-K decode kernel at the (BLOCK_N, warps, stages) of `decode_tile` (the launcher never
autotunes) for each padded head dim and packed-row tile (BLOCK_M), paged, fp16 and fp32
(tf32x3), with causal + window + softcap on and fp32 partials; its variants (direct write, no
window/softcap, not causal, D = 80) at their tile; one new token (Sq = 1, specialised) at head
dims 40/72/80/96 with rows that are not multiples of 16 elements (no divisibility hints: their
unaligned tile, 16 and 64 packed rows), and
with one query head per kv head (MHA: the group and row counts specialised too); the combine
kernel at every head-dim tile; the RoPE + cache-append kernel at every (BLOCK_H, BLOCK_PV,
warps) with its variants. ptxas must report 0 spill bytes and 0 stack frame; the decode dots
must be tensor-core instructions (``mma.sync``; ``wgmma`` for 64-row tiles on sm_90), aligned
k/v tiles must move as 128-bit global loads or ``cp.async`` copies (paged: each gathered key
row), and batch/head/row/block offsets must be computed in 64 bits. bf16 twins of a subset
must give fp16's figures. Tables of every config are written to
``<sys.prefix>/fusedops-reports/`` (and printed with ``pytest -s``).
"""

from __future__ import annotations

import re

import pytest
from compile_helpers import ARCHS, REGISTER_SLACK, TORCH_DTYPES, CompileSuite

from fusedops.kernels import attention_decode as k
from fusedops.kernels import kvcache_append as ka
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

HEAD_DIMS = (16, 32, 64, 128, 256)
CP_ASYNC_16B = re.compile(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10\b")

# ------------------------------------------------------------------ decode kernel

DECODE_INTS = ("seq_q", "group", "rows", "capacity", "n_blocks", "block_size", "num_splits")
DECODE_INTS += ("window",)
_DIMS = (("q", "bsh"), ("k", "bnh"), ("v", "bnh"), ("t", "b"), ("o", "b", "sp", "s", "h"))
DECODE_STRIDES = (
    "stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_kn", "stride_kh",
    "stride_vb", "stride_vn", "stride_vh", "stride_tb",
    "stride_ob", "stride_osp", "stride_os", "stride_oh",
    "stride_lb", "stride_lsp", "stride_lh",
)  # fmt: skip
# Every stride multiplies a batch, block, split, token, head or key index (the lse token stride
# is 1, specialised at launch).
DECODE_DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "seqlens_ptr", "table_ptr", "out_ptr", "lse_ptr")
DECODE_DIVISIBLE += DECODE_STRIDES
DECODE_POINTERS = tuple(name for name in DECODE_DIVISIBLE if name.endswith("_ptr"))
UNALIGNED_DIMS = (40, 72, 80, 96)


def _decode_signature(dtype: str, out: str) -> dict[str, str]:
    sig = {
        "q_ptr": f"*{dtype}",
        "k_ptr": f"*{dtype}",
        "v_ptr": f"*{dtype}",
        "seqlens_ptr": "*i32",
        "table_ptr": "*i32",
        "out_ptr": f"*{out}",
        "lse_ptr": "*fp32",
    }
    sig |= {name: "i32" for name in DECODE_INTS}
    sig |= {"score_scale": "fp32", "cap_scale": "fp32"}
    sig |= {name: "i32" for name in DECODE_STRIDES}
    sig |= {"stride_ls": "constexpr"}
    names = ("HEAD_DIM", "CAUSAL", "WINDOW", "SOFTCAP", "PAGED", "SPLIT", "UPCAST")
    names += ("DOT_PRECISION", "BLOCK_M", "BLOCK_N", "BLOCK_D")
    return sig | {name: "constexpr" for name in names}


def _decode_job(dtype, arch, block_m, cfg, head_dim, *, paged=True, split=True, causal=True,
                window=True, softcap=True, aligned=True, ones=()):  # fmt: skip
    """``cfg`` (None: `decode_tile`'s); ``aligned``: rows of 16-element multiples; ``ones``:
    integer arguments equal to 1 (specialised to constants)."""
    elem = TORCH_DTYPES[dtype].itemsize
    bn, warps, stages = cfg or k.decode_tile(head_dim, elem, block_m, aligned=aligned)
    constexprs = {
        "stride_ls": 1,
        "HEAD_DIM": head_dim,
        "CAUSAL": causal,
        "WINDOW": window,
        "SOFTCAP": softcap,
        "PAGED": paged,
        "SPLIT": split,
        "UPCAST": False,
        "DOT_PRECISION": k.decode_dot_precision(TORCH_DTYPES[dtype], head_dim),
        "BLOCK_M": block_m,
        "BLOCK_N": bn,
        "BLOCK_D": k.block_d_for(head_dim),
    }
    out = "fp32" if split else dtype
    signature = _decode_signature(dtype, out) | {name: "constexpr" for name in ones}
    constexprs |= {name: 1 for name in ones}
    divisible = DECODE_DIVISIBLE if aligned else DECODE_POINTERS
    return CompileJob(
        k.decode_kernel,
        signature,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=stages,
        divisible=tuple(name for name in divisible if signature[name] != "constexpr"),
    )


def _block_ms(dtype: str) -> tuple[int, ...]:
    """The packed-row tiles `block_m_for` gives ``dtype`` (fp32: 16 rows only)."""
    return k.BLOCK_M_SIZES if dtype != "fp32" else k.BLOCK_M_SIZES[:1]


def _decode_config_jobs(dtypes=("fp16", "fp32")) -> list[CompileJob]:
    """The tile of every (dtype, BLOCK_D, BLOCK_M), paged (the gather's extra registers) with
    every feature on."""
    return [
        _decode_job(dtype, arch, bm, None, head_dim)
        for dtype in dtypes
        for head_dim in HEAD_DIMS
        for bm in _block_ms(dtype)
        for arch in ARCHS
    ]


# (dtype, BLOCK_M, head_dim, paged, split, causal, window, softcap) at the first config
DECODE_VARIANTS = (
    ("fp16", 16, 128, False, True, True, True, True),  # dense cache
    ("fp16", 64, 128, False, True, True, True, True),  # dense, 64 rows (wgmma on sm_90)
    ("fp16", 16, 128, False, False, True, True, True),  # num_splits = 1: out written directly
    ("fp16", 16, 128, False, True, True, False, False),  # plain causal decode
    ("fp16", 16, 128, True, False, False, False, False),  # not causal, paged, direct
    ("fp16", 16, 80, True, True, True, True, True),  # D not a power of two
    ("fp32", 16, 128, False, False, True, False, False),  # fp32 dense, direct
)


def _decode_variant_jobs() -> list[CompileJob]:
    jobs = []
    for dtype, bm, head_dim, paged, split, causal, window, softcap in DECODE_VARIANTS:
        for arch in ARCHS:
            jobs.append(
                _decode_job(dtype, arch, bm, None, head_dim, paged=paged, split=split,
                            causal=causal, window=window, softcap=softcap)
            )  # fmt: skip
    # One new token (Sq = 1): GQA 8/1 at the unaligned head dims (paged, every feature on);
    # MHA at D = 128 (the group and the packed rows are 1 too; dense, split).
    for head_dim in UNALIGNED_DIMS:
        for bm in k.BLOCK_M_SIZES:
            for arch in ARCHS:
                jobs.append(_decode_job("fp16", arch, bm, None, head_dim, aligned=False,
                                        ones=("seq_q",)))  # fmt: skip
    for arch in ARCHS:
        jobs.append(_decode_job("fp16", arch, 16, None, 128, paged=False,
                                ones=("seq_q", "group", "rows")))  # fmt: skip
    return jobs


# ------------------------------------------------------------------ combine kernel

COMBINE_INTS = ("n_heads", "num_splits")
# In parameter order; the two token strides of the lse tensors are 1, specialised at launch.
_COMBINE_STRIDES = (
    "stride_pb", "stride_psp", "stride_ps", "stride_ph", "stride_plb", "stride_plsp",
    "stride_plh", "stride_pls", "stride_ob", "stride_os", "stride_oh", "stride_lb", "stride_lh",
    "stride_ls",
)  # fmt: skip
COMBINE_STRIDES = tuple(s for s in _COMBINE_STRIDES if s not in ("stride_pls", "stride_ls"))
COMBINE_DIVISIBLE = ("part_o_ptr", "part_lse_ptr", "out_ptr", "lse_ptr", *COMBINE_STRIDES)


def _combine_job(dtype, arch, head_dim):
    sig = {
        "part_o_ptr": "*fp32",
        "part_lse_ptr": "*fp32",
        "out_ptr": f"*{dtype}",
        "lse_ptr": "*fp32",
    }
    sig |= {name: "i32" for name in COMBINE_INTS}
    sig |= {name: "i32" if name in COMBINE_STRIDES else "constexpr" for name in _COMBINE_STRIDES}
    sig |= {name: "constexpr" for name in ("HEAD_DIM", "BLOCK_H", "BLOCK_D")}
    constexprs = {
        "stride_pls": 1,
        "stride_ls": 1,
        "HEAD_DIM": head_dim,
        "BLOCK_H": k.combine_block_h(head_dim),
        "BLOCK_D": k.block_d_for(head_dim),
    }
    return CompileJob(
        k.decode_combine_kernel,
        sig,
        constexprs,
        arch,
        num_warps=k.COMBINE_WARPS,
        num_stages=1,
        divisible=COMBINE_DIVISIBLE,
    )


def _combine_jobs(dtypes=("fp16",)) -> list[CompileJob]:
    """Every head-dim tile storing fp16, and fp32 at D = 128."""
    jobs = [
        _combine_job(d, arch, head_dim) for d in dtypes for head_dim in HEAD_DIMS for arch in ARCHS
    ]
    return jobs + [_combine_job("fp32", arch, 128) for arch in ARCHS]


# ------------------------------------------------------------------ append kernel

APPEND_INTS = ("n_heads_q", "n_heads_kv", "n_heads_bucket", "capacity", "n_blocks")
APPEND_INTS += ("block_size", "n_rot")
APPEND_STRIDES = tuple(
    f"stride_{t}{d}" for t, dims in (("q", "bsh"), ("k", "bsh"), ("v", "bsh"), ("o", "bsh"))
    for d in dims
)  # fmt: skip
APPEND_STRIDES += ("stride_ckb", "stride_ckn", "stride_ckh", "stride_cvb", "stride_cvn")
APPEND_STRIDES += ("stride_cvh", "stride_tb", "stride_cr", "stride_sr")
APPEND_DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "q_out_ptr", "k_cache_ptr", "v_cache_ptr")
APPEND_DIVISIBLE += ("seqlens_ptr", "table_ptr", "cos_ptr", "sin_ptr", *APPEND_STRIDES)


def _append_job(dtype, arch, block_h, warps, *, head_dim, rotary_dim, interleaved=False,
                paged=True, table="fp32"):  # fmt: skip
    rot_half = rotary_dim // 2
    sig = {
        name: f"*{dtype}"
        for name in ("q_ptr", "k_ptr", "v_ptr", "q_out_ptr", "k_cache_ptr", "v_cache_ptr")
    }
    sig |= {"seqlens_ptr": "*i32", "table_ptr": "*i32", "cos_ptr": f"*{table}"}
    sig |= {"sin_ptr": f"*{table}"}
    sig |= {name: "i32" for name in APPEND_INTS + APPEND_STRIDES}
    names = ("HEAD_DIM", "ROT_HALF", "INTERLEAVED", "PAGED", "BLOCK_H", "BLOCK_R2", "BLOCK_P")
    sig |= {name: "constexpr" for name in (*names, "BLOCK_PV")}
    constexprs = {
        "HEAD_DIM": head_dim,
        "ROT_HALF": rot_half,
        "INTERLEAVED": interleaved,
        "PAGED": paged,
        "BLOCK_H": block_h,
        "BLOCK_R2": ka.block_r2_for(rot_half),
        "BLOCK_P": ka.block_p_for(head_dim, rotary_dim),
        "BLOCK_PV": ka.block_p_for(head_dim, 0),
    }
    return CompileJob(
        ka.kvcache_append_kernel,
        sig,
        constexprs,
        arch,
        num_warps=warps,
        num_stages=1,
        divisible=APPEND_DIVISIBLE,
    )


def _append_config_jobs(dtypes=("fp16",)) -> list[CompileJob]:
    """Every (BLOCK_H, BLOCK_PV, warps), full rotary D = BLOCK_PV, paged."""
    return [
        _append_job(dtype, arch, block_h, warps, head_dim=bpv, rotary_dim=bpv)
        for block_h, bpv, warps in ka.append_config_space()
        for dtype in dtypes
        for arch in ARCHS
    ]


# (head_dim, rotary_dim, interleaved, paged, cos/sin dtype or None = q's)
APPEND_VARIANTS = (
    (128, 128, True, True, "fp32"),  # GPT-J pairs
    (128, 128, False, False, "fp32"),  # dense cache
    (128, 0, False, True, "fp32"),  # no rotary: k/v copied
    (128, 32, False, True, None),  # partial rotary, tables in q's dtype
    (80, 80, False, True, "fp32"),  # D not a power of two
)


def _append_variant_jobs() -> list[CompileJob]:
    jobs = []
    for head_dim, rotary_dim, interleaved, paged, table in APPEND_VARIANTS:
        block_h, warps = ka.append_candidates(ka.block_p_for(head_dim, 0))[0]
        for arch in ARCHS:
            jobs.append(
                _append_job("fp16", arch, block_h, warps, head_dim=head_dim,
                            rotary_dim=rotary_dim, interleaved=interleaved, paged=paged,
                            table=table or "fp16")
            )  # fmt: skip
    # fp32 everywhere, Llama's head dim.
    block_h, warps = ka.append_candidates(128)[0]
    return jobs + [
        _append_job("fp32", arch, block_h, warps, head_dim=128, rotary_dim=128) for arch in ARCHS
    ]


# ------------------------------------------------------------------ suite


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the widest decode tile of each head dim
    (paged, 16 rows), the combine at D = 128, the first append tile of each head width."""
    jobs = []
    for head_dim in HEAD_DIMS:
        jobs += [_decode_job("fp16", arch, 16, None, head_dim) for arch in ARCHS]
    jobs += [_combine_job("fp16", arch, 128) for arch in ARCHS]
    for bpv in ka.BLOCK_PV_SIZES:
        block_h, warps = ka.append_candidates(bpv)[0]
        jobs += [
            _append_job("fp16", arch, block_h, warps, head_dim=bpv, rotary_dim=bpv)
            for arch in ARCHS
        ]
    return jobs


FAMILIES = {
    "decode": _decode_config_jobs,
    "decode_variants": _decode_variant_jobs,
    "combine": _combine_jobs,
    "append": _append_config_jobs,
    "append_variants": _append_variant_jobs,
}


def _required_mma(job: CompileJob) -> bool | str:
    """fp16/bf16: mma.sync on sm_80 and for 16-row tiles; wgmma for 64-row tiles on sm_90.
    fp32: either for tf32x3, none for fp32 FMAs (D = 256)."""
    if job.signature["q_ptr"] == "*fp32":
        return job.constexprs["DOT_PRECISION"] == "tf32x3"
    return "wgmma" if job.arch == 90 and job.constexprs["BLOCK_M"] >= 64 else "mma.sync"


def _bytes_per_thread(job: CompileJob) -> int:
    """Contiguous bytes of one append head-row tile a thread owns."""
    c, size = job.constexprs, 4 if job.signature["q_ptr"] == "*fp32" else 2
    return c["BLOCK_H"] * c["BLOCK_PV"] * size // (32 * job.num_warps)


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, 64-bit offsets; decode: tensor cores and 128-bit or cp.async k/v
    loads; combine: 128-bit partial loads; append: 128-bit head-row loads where a thread owns
    >= 16 bytes."""
    if job.kernel is k.decode_kernel:
        report.assert_clean(require_mma=_required_mma(job), int64_offsets=DECODE_STRIDES)
        # k/v rows: 128-bit loads, or 16-byte cp.async copies into the pipeline's buffers
        # (aligned rows only: unaligned ones move in smaller pieces).
        wide_copy = CP_ASYNC_16B.search(report.ptx)
        if "stride_kn" in job.divisible:
            assert report.counts.get("ld.global.v4", 0) or wide_copy, report.summary()
    elif job.kernel is k.decode_combine_kernel:
        report.assert_clean(require_v4_loads=True, int64_offsets=COMBINE_STRIDES)
    else:
        report.assert_clean(
            require_v4_loads=_bytes_per_thread(job) >= 16, int64_offsets=APPEND_STRIDES
        )


def _labels(jobs) -> list[str]:
    out = []
    for j in jobs:
        c = j.constexprs
        flags = "".join(
            f for f, on in (("P", c.get("PAGED")), ("S", c.get("SPLIT")),
                            ("U", "stride_kn" in j.signature and "stride_kn" not in j.divisible),
                            ("1", c.get("seq_q") == 1)) if on
        )  # fmt: skip
        out.append(f"{j.signature['q_ptr' if 'q_ptr' in j.signature else 'out_ptr'][1:]:>4} "
                   f"D={c['HEAD_DIM']:<3} {flags:<4}")  # fmt: skip
    return out


def _register_slack(job: CompileJob) -> int:
    """REGISTER_SLACK spare registers (a bf16 twin within it cannot spill), except for the
    unaligned-row decode jobs: they have no twins, and their element-wise loads take whatever
    registers ptxas gives them (0 spills is the check there)."""
    unaligned = job.kernel is k.decode_kernel and "stride_kn" not in job.divisible
    return 0 if unaligned else REGISTER_SLACK


SUITE = CompileSuite("attention_decode", FAMILIES, _fp16_twinned, _labels, _check, _register_slack)
compile_jobs = SUITE.compile_jobs
compiled, test_every_decode_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_int64_offset_check_fails_on_32_bit_indexing(tmp_path):
    """The decode (sm_80) and combine (sm_90) kernels with their ``.to(tl.int64)`` casts
    removed fail the check."""
    jobs = [_decode_job("fp16", 80, 16, None, 64, paged=False), _combine_job("fp16", 90, 64)]
    SUITE.assert_int64_check_catches_narrowing(k, jobs, tmp_path)


def test_decode_tile_is_the_widest_candidate():
    for head_dim in (16, 64, 80, 128, 256):
        for elem_size, block_m in ((2, 16), (2, 64), (4, 16)):
            space = k.decode_config_space(head_dim, elem_size, block_m)
            assert space and k.decode_tile(head_dim, elem_size, block_m) == space[0]
            assert space[0][0] == max(bn for bn, _, _ in space)
        assert k.decode_config_space(head_dim, 4, 64) == []
    assert [k.block_m_for(rows) for rows in (1, 9, 16, 17, 24, 300)] == [16] * 3 + [64] * 3
    assert k.block_m_for(24, 4) == 16
