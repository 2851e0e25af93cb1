"""Triton kernels of the factorized embedding and their launchers (no autograd here).

The token table is low rank, ``W ~= a @ b`` (``a`` [V, R] per-token coefficients, ``b`` [R, D]
a shared basis), except for K hot tokens whose rows are kept exactly in ``hot_rows`` [K, D];
``hot_slots`` [V] int32 maps a token to its hot slot (-1: served by the factors).

Forward: ``out[n] = row(ids[n]) * scale + P[pos(n)]``, one program per (token tile, feature
tile), feature tiles numbered fastest. Each program gathers its tokens' rows of ``a`` in
``BLOCK_R`` chunks of the rank (masked, so any rank works) and multiplies them by the matching
``b`` tile with ``tl.dot`` into an fp32 accumulator (tensor cores: ``mma.sync`` on sm_80,
``wgmma`` on sm_90); hot tokens take their exact row instead; the positional term (learned
table or in-kernel sinusoid) is the fused embedding's (:mod:`fusedops.kernels.embedding`).

Backward, for the tokens that are neither hot nor ``padding_idx`` nor out of range:
- ``grad_a[t] = scale * sum_{ids[n] == t} grad[n] @ b^T``: one kernel forms the per-token
  coefficient gradients ``gt = grad @ b^T`` [N, R] in fp32 (zero rows for the other tokens),
  then the embedding backward (:func:`fusedops.kernels.embedding.embedding_backward`) sums them
  per token, deterministically (sorted ids) or with atomics;
- ``grad_b = scale * sum_n a[ids[n]]^T grad[n]``: each program sums one [BLOCK_R, BLOCK_D]
  tile over one chunk of tokens into fp32 partials [SPLIT, R, D], which one reduction then
  sums (no atomics). SPLIT comes from the shapes only (about ``BASIS_PROGRAMS`` programs in
  all), so the result is bit-identical run to run, and small ``R * D`` still fills the GPU;
- ``grad_hot[k] = scale * sum_{ids[n] is hot slot k} grad[n]``: the embedding backward over
  per-token slot indices (-1 for the other tokens, which it ignores).

Matmul precision: fp16/bf16 tiles go to the tensor cores as they are, accumulating in fp32.
fp32 tiles run as ``tf32x3`` (each operand split into tf32 high and low parts, three
tensor-core products, the low x low one dropped): about 2**-21 relative error per product, a
few fp32 ulps, where plain tf32 would give ~1e-3; sums stay fp32. Triton's interpreter
computes every dot in fp32 with numpy whatever the precision asked.

Launchers take flattened, validated tensors: ``ids`` [N] int32/int64 (contiguous), tables with
``stride(-1) == 1`` (any row stride), outputs allocated by the caller. They validate nothing
beyond what the kernels need to stay in bounds: the ops layer checks user input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusedops.constants import POS_LEARNED, POS_SINUSOID

from . import INTERPRET
from ._launch import launch
from ._tuning import configs_in, make_configs, rows_bucket
from .embedding import _add_positional, _sin_coef, embedding_backward

# Rank chunk of the forward's dot (its K) by element size: tl.dot needs >= 16. 16-bit tiles
# take 32 (two 16-deep mma steps per chunk); fp32 takes 16, as tf32x3 holds the high and low
# parts of the whole b fragment [BLOCK_R, BLOCK_D] per warp (at 32: 255 registers on sm_80).
FWD_BLOCK_R = {2: 32, 4: 16}
# Forward tile candidates (BLOCK_T, BLOCK_D, num_warps), filtered in forward_config_space.
# Feature tiles stay 64 wide: the programs of one token tile run back to back, so a wider tile
# would save only L2 reads of the gathered rows, and the 128-wide ones compiled slowest.
_FWD_BLOCK_T = (64, 128)
_FWD_BLOCK_D = (64,)
_FWD_WARPS = (4, 8)
# fp32 accumulator values per thread: the epilogue (hot rows, positional table or sinusoid)
# works on all of them at once; at 64 the sinusoid variant took 212..225 registers.
_FWD_ACC_PER_THREAD = 32
# fp32 tables (tf32x3, the less common case) run one tile: fewer compiles to prove.
_FWD_FP32_TILES = ((64, 64, 4),)
# Rows whose widths or strides are not multiples of 16 elements (e.g. rank 37, D = 20) load and
# store element by element, one 64-bit address each: half the values per thread (measured:
# 64 x 64 on 4 warps took 201..242 registers there).
_FWD_UNALIGNED_TILES = ((64, 64, 8),)
# The forward's arguments whose divisibility by 16 Triton specialises on (with the pointers).
_FWD_ALIGNMENT_ARGS = ("dim", "rank", "stride_a", "stride_b", "stride_h", "stride_p", "stride_o")
# The single config the interpreter runs (no benchmarking there; fewer, larger programs).
INTERPRET_CONFIG = (64, 64, 4)
FWD_STAGES = 2  # the rank loop's loads are double-buffered (cp.async)

# Backward tiles (no autotuning: one config per shape keeps the sums' order fixed). Rank tile
# of both kernels, for every rank: the basis kernel's accumulator is [BLOCK_R, BLOCK_D], and 64
# rows make it one wgmma warpgroup tile on sm_90. The dots' K by element size: fp32 (tf32x3)
# takes a quarter or half, as it holds the high and low parts of the second operand's whole
# fragment per warp (measured: 255 registers or spills on sm_80 at the 16-bit sizes).
BWD_BLOCK_R = 64
COEF_BLOCK_T = 64  # coefficient kernel: tokens per program
COEF_BLOCK_D = {2: 64, 4: 16}  # coefficient kernel: features per dot (its K)
BASIS_BLOCK_T = {2: 32, 4: 16}  # basis kernel: tokens per dot (its K)
BASIS_BLOCK_D = 64  # basis kernel: features per program
BWD_WARPS = 4
BWD_STAGES = 2
# The basis kernel's programs in all (tiles x splits), at most; a split holds at least
# MIN_SPLIT_TOKENS tokens so that its partial tile is worth writing.
BASIS_PROGRAMS = 512
MIN_SPLIT_TOKENS = 128


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the kernels' ``tl.dot``: "tf32x3" for fp32 (fp32-like accuracy on
    the tensor cores), "ieee" for fp16/bf16 (ignored for them: native products)."""
    return "tf32x3" if dtype == torch.float32 else "ieee"


def forward_config_space(elem_size: int = 2, aligned: bool = True) -> list[tuple[int, int, int]]:
    """Every (BLOCK_T, BLOCK_D, num_warps) the forward autotuner may run for tables of
    ``elem_size`` bytes whose rows are ``aligned`` (widths, strides and pointers multiples of
    16 elements / bytes: vector loads). Aligned fp16/bf16: the candidate tiles whose threads
    hold ``_FWD_ACC_PER_THREAD`` accumulator values and whose warps own >= 16 token rows each;
    aligned fp32: ``_FWD_FP32_TILES``; unaligned: ``_FWD_UNALIGNED_TILES``."""
    if not aligned:
        return list(_FWD_UNALIGNED_TILES)
    if elem_size == 4:
        return list(_FWD_FP32_TILES)
    space = []
    for bt in _FWD_BLOCK_T:
        for bd in _FWD_BLOCK_D:
            for warps in _FWD_WARPS:
                per_thread = bt * bd // (32 * warps)
                if bt // warps >= 16 and per_thread == _FWD_ACC_PER_THREAD:
                    space.append((bt, bd, warps))
    return space


def _forward_configs() -> list[triton.Config]:
    if INTERPRET:
        return make_configs([INTERPRET_CONFIG], "BLOCK_T", "BLOCK_D", num_stages=1)
    tiles = {t for size in (2, 4) for ok in (True, False) for t in forward_config_space(size, ok)}
    return make_configs(sorted(tiles), "BLOCK_T", "BLOCK_D", num_stages=FWD_STAGES)


def forward_rows_aligned(named_args: dict) -> bool:
    """Whether a forward launch's row widths, strides and tensors are all multiples of 16
    elements / bytes (what makes Triton vectorize its row loads and stores)."""
    ints = all(named_args[name] % 16 == 0 for name in _FWD_ALIGNMENT_ARGS)
    ptrs = [v for v in named_args.values() if isinstance(v, torch.Tensor)]
    return ints and all(t.data_ptr() % 16 == 0 for t in ptrs)


def _prune_forward(configs, named_args, **kwargs):
    """The tiles of this call's dtype and alignment no taller than the token count (the
    smallest stays if none fits)."""
    if INTERPRET:
        return configs[:1]
    elem = named_args["a_ptr"].element_size()
    allowed = forward_config_space(elem, forward_rows_aligned(named_args))
    fitting = configs_in(configs, allowed, "BLOCK_T", "BLOCK_D")
    short = [c for c in fitting if c.kwargs["BLOCK_T"] <= named_args["n_rows_bucket"]]
    small = min(fitting, key=lambda c: (c.kwargs["BLOCK_T"], c.kwargs["BLOCK_D"], c.num_warps))
    return short or [small]


def basis_splits(n_rows: int, rank: int, dim: int) -> tuple[int, int]:
    """(SPLIT, tokens per split) of the basis gradient: chunks of a multiple of
    ``MIN_SPLIT_TOKENS`` tokens (whole ``BASIS_BLOCK_T`` tiles of every dtype), about
    ``BASIS_PROGRAMS`` programs over all (rank, feature) tiles. Depends on the shapes only."""
    tiles = triton.cdiv(rank, BWD_BLOCK_R) * triton.cdiv(dim, BASIS_BLOCK_D)
    split = max(1, min(BASIS_PROGRAMS // tiles, triton.cdiv(n_rows, MIN_SPLIT_TOKENS)))
    per_split = triton.cdiv(triton.cdiv(n_rows, split), MIN_SPLIT_TOKENS) * MIN_SPLIT_TOKENS
    return triton.cdiv(n_rows, per_split), per_split


# ------------------------------------------------------------------------------- kernels


@triton.autotune(
    configs=_forward_configs(),
    key=["n_rows_bucket", "dim", "rank"],
    prune_configs_by={"early_config_prune": _prune_forward},
)
@triton.jit
def factorized_fwd_kernel(
    ids_ptr,  # [N] int32/int64 flattened token ids
    a_ptr,  # [V, R] per-token coefficients
    b_ptr,  # [R, D] shared basis
    hot_slots_ptr,  # [V] int32 hot slot per token, -1 if none (read only when HAS_HOT)
    hot_rows_ptr,  # [K, D] exact rows of the hot tokens (read only when HAS_HOT)
    pos_weight_ptr,  # [P, D] learned positional table (read only when POS_MODE is learned)
    positions_ptr,  # [N] int32/int64 positions (read only when HAS_POSITIONS)
    out_ptr,  # [N, D] output, table dtype
    n_rows,
    n_rows_bucket,  # autotune key only: rows_bucket(n_rows)
    seq_len,
    dim,
    rank,
    num_embeddings,
    num_positions,
    stride_a,
    stride_b,
    stride_h,
    stride_p,
    stride_o,
    scale,
    position_offset,
    sin_coef,  # fp32(ln(base) / D), sinusoid mode only
    POS_MODE: tl.constexpr,  # fusedops.constants.POS_*: dead branches compile away
    HAS_POSITIONS: tl.constexpr,  # explicit positions tensor vs position_offset + s
    HAS_HOT: tl.constexpr,  # K > 0: hot tokens replace their low-rank row
    UPCAST: tl.constexpr,  # interpreter: dot operands in fp32 (its bf16 dot is wrong)
    DOT_PRECISION: tl.constexpr,  # dot_precision(dtype)
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Feature tiles vary fastest: the programs of one token tile run together, so its gathered
    # rows of a (and of hot_rows / pos_weight) come from L2 after the first program.
    n_d = tl.cdiv(dim, BLOCK_D)
    pid_t = tl.program_id(0) // n_d
    pid_d = tl.program_id(0) % n_d
    rows = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT] int64
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    row_ok = rows < n_rows
    col_ok = cols < dim

    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # [BT]
    # Ids are range-checked on the host by default; the mask keeps the kernel inside the
    # tables when that check is switched off (such rows get only the positional term).
    id_ok = row_ok & (ids >= 0) & (ids < num_embeddings)
    low_rank = id_ok
    if HAS_HOT:
        slot = tl.load(hot_slots_ptr + ids, mask=id_ok, other=-1).to(tl.int64)  # [BT]
        hot = slot >= 0
        low_rank = id_ok & (slot < 0)  # hot rows never read a

    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    ks = tl.arange(0, BLOCK_R)  # [BR]
    a_rows = a_ptr + ids[:, None] * stride_a  # [BT, 1]
    for k0 in range(0, rank, BLOCK_R):
        k = k0 + ks
        k_ok = k < rank
        a = tl.load(a_rows + k[None, :], mask=low_rank[:, None] & k_ok[None, :], other=0.0)
        b_ptrs = b_ptr + k[:, None] * stride_b + cols[None, :]  # [BR, BD]
        b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)  # [BT, BD] fp32

    if HAS_HOT:
        h_ptrs = hot_rows_ptr + slot[:, None] * stride_h + cols[None, :]  # [BT, BD]
        h = tl.load(h_ptrs, mask=hot[:, None] & col_ok[None, :], other=0.0)
        acc = tl.where(hot[:, None], h.to(tl.float32), acc)
    acc = acc * scale

    acc = _add_positional(
        acc,
        rows,
        cols,
        row_ok,
        col_ok,
        pid_t,
        pos_weight_ptr,
        positions_ptr,
        seq_len,
        num_positions,
        stride_p,
        position_offset,
        sin_coef,
        POS_MODE,
        HAS_POSITIONS,
        BLOCK_T,
    )

    o_ptrs = out_ptr + rows[:, None] * stride_o + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _kept_tokens(ids, row_ok, hot_slots_ptr, num_embeddings, padding_idx, HAS_HOT: tl.constexpr):
    """Tokens whose gradient flows to the factors: in range, not padding, not hot."""
    keep = row_ok & (ids >= 0) & (ids < num_embeddings) & (ids != padding_idx)
    if HAS_HOT:
        slot = tl.load(hot_slots_ptr + ids, mask=keep, other=-1)
        keep = keep & (slot < 0)
    return keep


@triton.jit
def factorized_bwd_coef_kernel(
    grad_ptr,  # [N, D] upstream gradient rows
    ids_ptr,  # [N] int32/int64 token ids
    b_ptr,  # [R, D] shared basis
    hot_slots_ptr,  # [V] int32 (read only when HAS_HOT)
    gt_ptr,  # [N, R] fp32 out (row stride R rounded up to 16): grad[n] @ b^T, zero rows for
    # hot / padding / out-of-range tokens
    n_rows,
    dim,
    rank,
    num_embeddings,
    stride_g,
    stride_b,
    stride_t,
    padding_idx,  # -1 for none
    HAS_HOT: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: dot operands in fp32 (its bf16 dot is wrong)
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Rank tiles vary fastest: the programs of one token tile read its grad rows from L2.
    n_r = tl.cdiv(rank, BLOCK_R)
    pid_t = tl.program_id(0) // n_r
    rows = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT] int64
    ks = (tl.program_id(0) % n_r) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    row_ok = rows < n_rows
    k_ok = ks < rank
    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    keep = _kept_tokens(ids, row_ok, hot_slots_ptr, num_embeddings, padding_idx, HAS_HOT)

    acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + offs_d
        d_ok = d < dim
        g_ptrs = grad_ptr + rows[:, None] * stride_g + d[None, :]  # [BT, BD]
        g = tl.load(g_ptrs, mask=keep[:, None] & d_ok[None, :], other=0.0)
        b_ptrs = b_ptr + ks[:, None] * stride_b + d[None, :]  # [BR, BD]
        b = tl.load(b_ptrs, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            g = g.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(g, tl.trans(b), acc, input_precision=DOT_PRECISION)  # [BT, BR] fp32

    t_ptrs = gt_ptr + rows[:, None] * stride_t + ks[None, :]
    tl.store(t_ptrs, acc, mask=row_ok[:, None] & k_ok[None, :])


@triton.jit
def factorized_bwd_basis_kernel(
    grad_ptr,  # [N, D] upstream gradient rows
    ids_ptr,  # [N] int32/int64 token ids
    a_ptr,  # [V, R] per-token coefficients
    hot_slots_ptr,  # [V] int32 (read only when HAS_HOT)
    partial_ptr,  # [SPLIT, R, >= D] fp32 out: scale * sum over the split's tokens
    n_rows,
    dim,
    rank,
    num_embeddings,
    tokens_per_split,  # a multiple of BLOCK_T
    stride_g,
    stride_a,
    stride_pr,  # partial's row stride: D rounded up to 16 (aligned stores for any D)
    scale,
    padding_idx,  # -1 for none
    HAS_HOT: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: dot operands in fp32 (its bf16 dot is wrong)
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ks = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    split = tl.program_id(2).to(tl.int64)
    k_ok = ks < rank
    col_ok = cols < dim
    start = split * tokens_per_split  # int64
    count = tl.minimum(n_rows - start, tokens_per_split).to(tl.int32)

    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    offs_t = tl.arange(0, BLOCK_T)
    for t0 in range(0, count, BLOCK_T):
        rows = start + t0 + offs_t  # [BT] int64
        row_ok = (t0 + offs_t) < count
        ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        keep = _kept_tokens(ids, row_ok, hot_slots_ptr, num_embeddings, padding_idx, HAS_HOT)
        a_ptrs = a_ptr + ids[:, None] * stride_a + ks[None, :]  # [BT, BR]
        a = tl.load(a_ptrs, mask=keep[:, None] & k_ok[None, :], other=0.0)
        g_ptrs = grad_ptr + rows[:, None] * stride_g + cols[None, :]  # [BT, BD]
        g = tl.load(g_ptrs, mask=keep[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            g = g.to(tl.float32)
        acc = tl.dot(tl.trans(a), g, acc, input_precision=DOT_PRECISION)  # [BR, BD] fp32

    base = partial_ptr + split * rank * stride_pr
    p_ptrs = base + ks.to(tl.int64)[:, None] * stride_pr + cols[None, :]
    tl.store(p_ptrs, acc * scale, mask=k_ok[:, None] & col_ok[None, :])


# ---------------------------------------------------------------------------- launchers


def factorized_forward(
    ids: torch.Tensor,  # [N] int32/int64, contiguous
    a: torch.Tensor,  # [V, R], stride(-1) == 1
    b: torch.Tensor,  # [R, D], stride(-1) == 1
    hot_slots: torch.Tensor | None,  # [V] int32, contiguous; None when K == 0
    hot_rows: torch.Tensor | None,  # [K, D] a.dtype, stride(-1) == 1; None when K == 0
    out: torch.Tensor,  # [N, D] a.dtype, stride(-1) == 1
    *,
    seq_len: int,
    scale: float,
    pos_mode: int,
    pos_weight: torch.Tensor | None,  # [P, D] when pos_mode == POS_LEARNED
    positions: torch.Tensor | None,  # [N] int, contiguous; None -> position_offset + n % seq_len
    position_offset: int,
    sinusoid_base: float,
) -> torch.Tensor:
    """Write ``out[n] = row(ids[n]) * scale + P[pos(n)]`` and return it.

    ``row(t)`` is ``hot_rows[hot_slots[t]]`` for hot tokens, else ``a[t] @ b`` (fp32
    products and sums); ids outside ``[0, V)`` give only the positional term. ``P`` is
    ``pos_weight[pos]`` (POS_LEARNED), the sinusoid of ``pos`` (POS_SINUSOID) or 0, with
    ``pos = positions[n]`` or ``position_offset + n % seq_len``. Output in ``out.dtype``.
    """
    n_rows, dim = out.shape
    if n_rows == 0 or dim == 0:
        return out
    if n_rows >= 2**31:
        raise ValueError(
            f"factorized_embedding: {n_rows} tokens in one call; the limit is 2**31 - 1"
        )
    has_hot = hot_slots is not None and hot_rows is not None and hot_rows.shape[0] > 0
    hot_table = hot_rows if has_hot else b
    has_pos_table = pos_mode == POS_LEARNED
    pos_table = pos_weight if has_pos_table else b

    if triton.cdiv(n_rows, 64) * triton.cdiv(dim, 64) >= 2**31:
        raise ValueError(f"factorized_embedding: {n_rows} x {dim} outputs need too many programs")

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_T"]) * triton.cdiv(dim, meta["BLOCK_D"]),)

    launch(
        factorized_fwd_kernel,
        grid,
        ids,
        a,
        b,
        hot_slots if has_hot else ids,
        hot_table,
        pos_table,
        positions if positions is not None else ids,
        out,
        n_rows,
        rows_bucket(n_rows),
        seq_len,
        dim,
        a.shape[1],
        a.shape[0],
        pos_table.shape[0],
        a.stride(0),
        b.stride(0),
        hot_table.stride(0),
        pos_table.stride(0),
        out.stride(0),
        float(scale),
        int(position_offset),
        _sin_coef(dim, float(sinusoid_base)) if pos_mode == POS_SINUSOID else 0.0,
        POS_MODE=pos_mode,
        HAS_POSITIONS=positions is not None,
        HAS_HOT=has_hot,
        UPCAST=INTERPRET,
        DOT_PRECISION=dot_precision(a.dtype),
        BLOCK_R=FWD_BLOCK_R[a.element_size()],
    )
    return out


def _pad16(n: int) -> int:
    return triton.cdiv(n, 16) * 16


def _token_slots(
    ids: torch.Tensor, hot_slots: torch.Tensor, padding_idx: int
) -> torch.Tensor:  # [N] int32
    """Each token's hot slot; -1 for tokens not hot, out of range or equal to padding_idx."""
    ids = ids.to(torch.int64)
    ok = (ids >= 0) & (ids < hot_slots.shape[0]) & (ids != padding_idx)
    slots = hot_slots[torch.where(ok, ids, 0)]
    return torch.where(ok, slots, -1)


def factorized_backward(
    grad: torch.Tensor,  # [N, D] a.dtype, stride(-1) == 1
    ids: torch.Tensor,  # [N] int32/int64, contiguous
    a: torch.Tensor,  # [V, R], stride(-1) == 1
    b: torch.Tensor,  # [R, D], stride(-1) == 1
    hot_slots: torch.Tensor | None,  # [V] int32, contiguous; None when K == 0
    *,
    num_hot: int,
    scale: float,
    padding_idx: int,
    needs: tuple[bool, bool, bool] | list[bool],
    deterministic: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the factorized embedding's ``a`` [V, R], ``b`` [R, D] and ``hot_rows``
    [K, D], each where ``needs`` asks for it (else None), in ``a.dtype``.

    Over the tokens ``n`` that are in range and not ``padding_idx`` (-1: none):
    ``grad_a[t] = scale * sum_{ids[n] == t, t not hot} grad[n] @ b^T``,
    ``grad_b = scale * sum_{ids[n] not hot} a[ids[n]]^T grad[n]``,
    ``grad_hot[k] = scale * sum_{hot_slots[ids[n]] == k} grad[n]``. All sums in fp32.
    ``deterministic``: grad_a and grad_hot sum each row in token order (bit-identical across
    runs); else with fp32 atomics. grad_b is always deterministic.
    """
    n_rows, dim = grad.shape
    num_embeddings, rank = a.shape
    if n_rows >= 2**31:
        raise ValueError(
            f"factorized_embedding: {n_rows} tokens in one call; the limit is 2**31 - 1"
        )
    need_a, need_b, need_hot = (bool(x) for x in needs)
    has_hot = hot_slots is not None and num_hot > 0
    slots = hot_slots if has_hot else ids
    common = {"HAS_HOT": has_hot, "UPCAST": INTERPRET, "DOT_PRECISION": dot_precision(a.dtype)}
    block_r = BWD_BLOCK_R
    elem = a.element_size()
    grad_a = grad_b = grad_hot = None

    if need_a:
        grad_a = torch.empty((num_embeddings, rank), dtype=a.dtype, device=a.device)
        # [N, R] view of a buffer whose rows are padded to 16 elements: aligned stores.
        gt = torch.empty((n_rows, _pad16(rank)), dtype=torch.float32, device=a.device)[:, :rank]
        if n_rows and rank:
            grid = (triton.cdiv(n_rows, COEF_BLOCK_T) * triton.cdiv(rank, block_r),)
            launch(
                factorized_bwd_coef_kernel,
                grid,
                grad,
                ids,
                b,
                slots,
                gt,
                n_rows,
                dim,
                rank,
                num_embeddings,
                grad.stride(0),
                b.stride(0),
                gt.stride(0),
                int(padding_idx),
                BLOCK_T=COEF_BLOCK_T,
                BLOCK_R=block_r,
                BLOCK_D=COEF_BLOCK_D[elem],
                num_warps=BWD_WARPS,
                num_stages=BWD_STAGES,
                **common,
            )
        embedding_backward(
            gt, ids, grad_a, scale=scale, padding_idx=padding_idx, deterministic=deterministic
        )

    if need_b:
        if n_rows == 0 or rank == 0 or dim == 0:
            grad_b = torch.zeros((rank, dim), dtype=a.dtype, device=a.device)
        else:
            split, per_split = basis_splits(n_rows, rank, dim)
            # [SPLIT, R, D] view of rows padded to 16 elements: aligned stores.
            partial = torch.empty((split, rank, _pad16(dim)), dtype=torch.float32, device=a.device)
            grid = (triton.cdiv(rank, block_r), triton.cdiv(dim, BASIS_BLOCK_D), split)
            launch(
                factorized_bwd_basis_kernel,
                grid,
                grad,
                ids,
                a,
                slots,
                partial,
                n_rows,
                dim,
                rank,
                num_embeddings,
                per_split,
                grad.stride(0),
                a.stride(0),
                partial.stride(1),
                float(scale),
                int(padding_idx),
                BLOCK_R=block_r,
                BLOCK_T=BASIS_BLOCK_T[elem],
                BLOCK_D=BASIS_BLOCK_D,
                num_warps=BWD_WARPS,
                num_stages=BWD_STAGES,
                **common,
            )
            # One reduction over the splits, no atomics: the same order, and bits, every run.
            grad_b = (partial[0] if split == 1 else partial.sum(0))[:, :dim]
            grad_b = grad_b.to(a.dtype).contiguous()

    if need_hot:
        grad_hot = torch.empty((num_hot, dim), dtype=a.dtype, device=a.device)
        if has_hot:
            embedding_backward(
                grad,
                _token_slots(ids, hot_slots, padding_idx),
                grad_hot,
                scale=scale,
                padding_idx=-1,
                deterministic=deterministic,
            )
        else:
            grad_hot.zero_()
    return grad_a, grad_b, grad_hot


__all__ = [
    "BWD_BLOCK_R",
    "FWD_BLOCK_R",
    "basis_splits",
    "dot_precision",
    "factorized_backward",
    "factorized_bwd_basis_kernel",
    "factorized_bwd_coef_kernel",
    "factorized_forward",
    "factorized_fwd_kernel",
    "forward_config_space",
    "forward_rows_aligned",
]
