"""Ahead-of-time compile of every factorized-embedding kernel config for sm_80 and sm_90.

The forward is compiled in every (BLOCK_T, BLOCK_D, warps) its autotuner can pick, in fp16 and
fp32 (tf32x3), for rows whose widths and strides are multiples of 16 and for rows of odd width
(no divisibility hints on the shapes, e.g. rank 37 and D = 20), with hot rows, explicit
positions and the in-kernel sinusoid on (the heaviest variant); the lighter variants (no
positional term and no hot rows; the learned table at int32 positions; the sinusoid of
``position_offset + n % seq_len``) at the biggest tile. The backward's two dot kernels are
compiled in their one config per dtype, aligned and of odd width, and without hot rows; the
embedding backward that sums grad_a is compiled with the fp32 coefficient rows it gets here
(its same-dtype configs are the embedding compile test's). ptxas must report 0 spill bytes and
0 stack frame; the products must be tensor-core instructions (``mma.sync`` on sm_80, ``wgmma``
on sm_90, fp32 included: tf32x3), aligned tiles must move as 128-bit global loads or
``cp.async`` copies, and token-row offsets must be 64-bit. bf16 twins of the biggest tiles must
give fp16's figures. Tables of every config are written to ``<sys.prefix>/fusedops-reports/``
(printed with ``pytest -s``).
"""

from __future__ import annotations

import pytest
from compile_helpers import ARCHS, REGISTER_SLACK, TORCH_DTYPES, CompileSuite

from fusedops.constants import POS_LEARNED, POS_NONE, POS_SINUSOID
from fusedops.kernels import embedding as emb
from fusedops.kernels import factorized_embedding as k
from fusedops.testing import CompileJob, GpuCompileReport

pytestmark = pytest.mark.gpu_compile

ELEM = {"fp32": 4, "fp16": 2}

# --------------------------------------------------------------------------- forward

FWD_INTS = ("n_rows", "n_rows_bucket", "seq_len", "dim", "rank", "num_embeddings")
FWD_INTS += ("num_positions",)
FWD_STRIDES = ("stride_a", "stride_b", "stride_h", "stride_p", "stride_o")
# The strides that multiply token, slot or position indices (stride_b multiplies rank indices).
FWD_OFFSETS = ("stride_a", "stride_h", "stride_p", "stride_o")
# What the JIT specialises for 16-aligned tables whose rows are multiples of 16 elements.
FWD_DIVISIBLE = ("ids_ptr", "a_ptr", "b_ptr", "hot_slots_ptr", "hot_rows_ptr", "pos_weight_ptr")
FWD_DIVISIBLE += ("positions_ptr", "out_ptr", "dim", "rank", *FWD_STRIDES)


def _fwd_signature(dtype: str, ids: str) -> dict[str, str]:
    sig = {"ids_ptr": f"*{ids}", "a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}"}
    sig |= {"hot_slots_ptr": "*i32", "hot_rows_ptr": f"*{dtype}"}
    sig |= {"pos_weight_ptr": f"*{dtype}", "positions_ptr": f"*{ids}", "out_ptr": f"*{dtype}"}
    sig |= {name: "i32" for name in FWD_INTS + FWD_STRIDES}
    sig |= {"scale": "fp32", "position_offset": "i32", "sin_coef": "fp32"}
    names = ("POS_MODE", "HAS_POSITIONS", "HAS_HOT", "UPCAST", "DOT_PRECISION")
    return sig | {n: "constexpr" for n in (*names, "BLOCK_T", "BLOCK_R", "BLOCK_D")}


# The hints that depend on the caller's shapes (the launchers pad their own buffers' rows).
SHAPE_HINTS = ("dim", "rank", "stride_a", "stride_b", "stride_h", "stride_p", "stride_o")
SHAPE_HINTS += ("stride_g",)


def _aligned(names: tuple[str, ...], aligned: bool) -> tuple[str, ...]:
    """The divisibility hints of a launch: all of ``names``, or (rows of odd width, e.g.
    rank 37 and D = 20) those that do not depend on the caller's shapes."""
    return names if aligned else tuple(n for n in names if n not in SHAPE_HINTS)


def _fwd_job(
    dtype, arch, tile, *, mode=POS_SINUSOID, has_pos=True, hot=True, ids="i64", aligned=True
):
    block_t, block_d, warps = tile
    constexprs = {
        "POS_MODE": mode,
        "HAS_POSITIONS": has_pos,
        "HAS_HOT": hot,
        "UPCAST": False,
        "DOT_PRECISION": k.dot_precision(TORCH_DTYPES[dtype]),
        "BLOCK_T": block_t,
        "BLOCK_R": k.FWD_BLOCK_R[ELEM[dtype]],
        "BLOCK_D": block_d,
    }
    return CompileJob(
        k.factorized_fwd_kernel,
        _fwd_signature(dtype, ids),
        constexprs,
        arch,
        num_warps=warps,
        num_stages=k.FWD_STAGES,
        divisible=_aligned(FWD_DIVISIBLE, aligned),
    )


def _biggest(space):
    return max(space, key=lambda t: (t[0] * t[1], -t[2]))


def _forward_jobs() -> list[CompileJob]:
    """Every tile of every dtype, with aligned rows and with rows of odd width (no hints on
    the shapes: rank 37 and D = 20 at once)."""
    return [
        _fwd_job(dtype, arch, tile, aligned=aligned)
        for dtype, elem in ELEM.items()
        for aligned in (True, False)
        for tile in k.forward_config_space(elem, aligned)
        for arch in ARCHS
    ]


# (POS_MODE, HAS_POSITIONS, HAS_HOT, ids) of the lighter forward variants: no positional term
# and no hot rows; the learned table at explicit int32 positions; the sinusoid of
# position_offset + n % seq_len.
FWD_VARIANTS = (
    (POS_NONE, False, False, "i64"),
    (POS_LEARNED, True, True, "i32"),
    (POS_SINUSOID, False, True, "i64"),
)


def _forward_variant_jobs() -> list[CompileJob]:
    tile = _biggest(k.forward_config_space())
    return [
        _fwd_job("fp16", arch, tile, mode=mode, has_pos=has_pos, hot=hot, ids=ids)
        for mode, has_pos, hot, ids in FWD_VARIANTS
        for arch in ARCHS
    ]


# -------------------------------------------------------------------------- backward

BWD_INTS = ("n_rows", "dim", "rank", "num_embeddings")
COEF_STRIDES = ("stride_g", "stride_b", "stride_t")
COEF_OFFSETS = ("stride_g", "stride_t")
BASIS_STRIDES = ("stride_g", "stride_a", "stride_pr")
BWD_DIVISIBLE = ("grad_ptr", "ids_ptr", "a_ptr", "b_ptr", "hot_slots_ptr", "gt_ptr")
BWD_DIVISIBLE += ("partial_ptr", "dim", "rank", "tokens_per_split", *COEF_STRIDES, "stride_a")
BWD_DIVISIBLE += ("stride_pr",)
BWD_FLAGS = ("HAS_HOT", "UPCAST", "DOT_PRECISION")


def _bwd_job(kernel, sig, blocks, dtype, arch, hot, aligned):
    """A backward dot kernel's job: ``sig`` (its pointers and integers) plus the flags and the
    ``blocks`` constexprs (name -> size, in the kernel's order)."""
    sig = sig | {n: "constexpr" for n in (*BWD_FLAGS, *blocks)}
    constexprs = {"HAS_HOT": hot, "UPCAST": False}
    constexprs |= {"DOT_PRECISION": k.dot_precision(TORCH_DTYPES[dtype])}
    return CompileJob(
        kernel,
        sig,
        constexprs | blocks,
        arch,
        num_warps=k.BWD_WARPS,
        num_stages=k.BWD_STAGES,
        divisible=_aligned(tuple(n for n in BWD_DIVISIBLE if n in sig), aligned),
    )


def _coef_job(dtype, arch, *, hot=True, aligned=True):
    sig = {"grad_ptr": f"*{dtype}", "ids_ptr": "*i64", "b_ptr": f"*{dtype}"}
    sig |= {"hot_slots_ptr": "*i32", "gt_ptr": "*fp32"}
    sig |= {name: "i32" for name in (*BWD_INTS, *COEF_STRIDES, "padding_idx")}
    blocks = {"BLOCK_T": k.COEF_BLOCK_T, "BLOCK_R": k.BWD_BLOCK_R}
    blocks |= {"BLOCK_D": k.COEF_BLOCK_D[ELEM[dtype]]}
    return _bwd_job(k.factorized_bwd_coef_kernel, sig, blocks, dtype, arch, hot, aligned)


def _basis_job(dtype, arch, *, hot=True, aligned=True):
    sig = {"grad_ptr": f"*{dtype}", "ids_ptr": "*i64", "a_ptr": f"*{dtype}"}
    sig |= {"hot_slots_ptr": "*i32", "partial_ptr": "*fp32"}
    sig |= {name: "i32" for name in (*BWD_INTS, "tokens_per_split", *BASIS_STRIDES)}
    sig |= {"scale": "fp32", "padding_idx": "i32"}
    blocks = {"BLOCK_R": k.BWD_BLOCK_R, "BLOCK_T": k.BASIS_BLOCK_T[ELEM[dtype]]}
    blocks |= {"BLOCK_D": k.BASIS_BLOCK_D}
    return _bwd_job(k.factorized_bwd_basis_kernel, sig, blocks, dtype, arch, hot, aligned)


def _backward_jobs() -> list[CompileJob]:
    """Each kernel's one config per dtype, with aligned rows and with rows of odd width."""
    return [
        make(dtype, arch, aligned=aligned)
        for make in (_coef_job, _basis_job)
        for dtype in ELEM
        for aligned in (True, False)
        for arch in ARCHS
    ]


GRAD_A_DIVISIBLE = ("grad_ptr", "out_ptr", "part_ptr", "dim", "stride_g", "stride_o", "stride_p")


def _grad_a_jobs() -> list[CompileJob]:
    """The embedding backward's sorted kernel summing fp32 coefficient rows into a 16-bit
    grad_a, at every width it runs (its fp32 and atomic configs, fp32 rows in and fp32 out,
    are the embedding compile test's)."""
    types = {"grad_ptr": "*fp32", "sorted_ids_ptr": "*i64", "order_ptr": "*i64"}
    types |= {"out_ptr": "*fp16", "part_ptr": "*fp32", "scale": "fp32"}
    types |= {"CHUNK": "constexpr", "BLOCK_D": "constexpr"}
    # Every other parameter (sizes, strides, padding_idx, ...) is a 32-bit integer.
    sig = {name: types.get(name, "i32") for name in emb.embedding_bwd_sorted_kernel.arg_names}
    jobs = []
    for block_d, warps in emb.backward_config_space():
        jobs += [
            CompileJob(
                emb.embedding_bwd_sorted_kernel,
                sig,
                {"CHUNK": emb.RUN_CHUNK, "BLOCK_D": block_d},
                arch,
                num_warps=warps,
                num_stages=1,
                divisible=GRAD_A_DIVISIBLE,
            )
            for arch in ARCHS
        ]
    return jobs


def _backward_variant_jobs() -> list[CompileJob]:
    """No hot rows; the embedding backward of grad_a."""
    jobs = [make("fp16", arch, hot=False) for make in (_coef_job, _basis_job) for arch in ARCHS]
    return jobs + _grad_a_jobs()


def _fp16_twinned() -> list[CompileJob]:
    """The fp16 jobs whose bf16 twins are compiled: the biggest forward tile and the
    backward kernels at BLOCK_R 64 (jobs of the other families: only the twins compile anew)."""
    tile = _biggest(k.forward_config_space())
    jobs = [_fwd_job("fp16", arch, tile) for arch in ARCHS]
    return jobs + [make("fp16", arch) for make in (_coef_job, _basis_job) for arch in ARCHS]


FAMILIES = {
    "forward": _forward_jobs,
    "forward_variants": _forward_variant_jobs,
    "backward": _backward_jobs,
    "backward_variants": _backward_variant_jobs,
}


def _dtype(job: CompileJob) -> str:
    sig = job.signature
    return (sig.get("a_ptr") or sig.get("b_ptr") or sig["out_ptr"])[1:]


def _labels(jobs) -> list[str]:
    """The table dtype of each job and whether its rows are aligned (a report's summary names
    the kernel and its constexprs)."""
    return [f"{_dtype(j):>4} {'aligned' if 'dim' in j.divisible else 'odd':>7}" for j in jobs]


def _required_mma(job: CompileJob) -> str:
    """mma.sync on sm_80, wgmma on sm_90: every dot's accumulator has >= 64 rows per
    warpgroup (BLOCK_T of the forward and coefficient kernels, BLOCK_R of the basis kernel)."""
    return "mma.sync" if job.arch == 80 else "wgmma"


def _offsets(job: CompileJob) -> tuple[str, ...]:
    if job.kernel is k.factorized_fwd_kernel:
        return FWD_OFFSETS
    if job.kernel is k.factorized_bwd_coef_kernel:
        return COEF_OFFSETS
    if job.kernel is k.factorized_bwd_basis_kernel:
        return ("stride_g", "stride_a")
    return ("stride_g", "stride_o", "stride_p")


def _check(job: CompileJob, report: GpuCompileReport) -> None:
    """0 spills, 0 stack, tensor cores, 64-bit offsets, and where rows are 16-aligned, 128-bit
    (or cp.async) tile loads."""
    if job.kernel is emb.embedding_bwd_sorted_kernel:
        nbytes = job.constexprs["BLOCK_D"] * 4 // (32 * job.num_warps)
        report.assert_clean(require_v4_loads=nbytes >= 16, int64_offsets=_offsets(job))
        return
    report.assert_clean(require_mma=_required_mma(job), int64_offsets=_offsets(job))
    c = report.counts
    if "dim" in job.divisible:
        assert c.get("ld.global.v4", 0) or c.get("cp.async", 0), report.summary()


SUITE = CompileSuite("factorized", FAMILIES, _fp16_twinned, _labels, _check, REGISTER_SLACK)
compile_jobs = SUITE.compile_jobs
compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()


def test_config_spaces_are_small():
    for elem in (2, 4):
        for aligned in (True, False):
            space = k.forward_config_space(elem, aligned)
            assert 1 <= len(space) <= 3
            for block_t, block_d, warps in space:
                assert block_t // warps >= 8 and block_d >= 64 and block_t >= 64
