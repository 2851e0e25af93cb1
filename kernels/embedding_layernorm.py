"""Triton kernels of the fused BERT embedding + LayerNorm and their launchers (no autograd here).

Forward: ``x = weight[ids] + type_weight[tt] + pos_weight[pos]`` (fp32, in that order), then
``out = (x - mean) * rstd * ln_weight + ln_bias`` with ``rstd = 1 / sqrt(var + eps)`` (biased
variance). Each program holds ``BLOCK_M`` whole rows in registers (``BLOCK_D >= D``) and writes
the rows' mean and rstd for the backward.

Backward: one kernel regathers ``x`` (cheaper than storing it), forms the LayerNorm input
gradient ``dx`` [N, D] in fp32 and per-program partial sums of the LayerNorm parameter
gradients (and of ``dx`` for the single token-type row used when no type ids are given); a
fixed number of programs strides over the row blocks, so the partial sums, reduced afterwards,
are deterministic. The table gradients are then the deterministic embedding gradient of
``dx`` (:func:`fusedops.kernels.embedding.embedding_backward`, sorted ids, one program per run).

Launchers take flattened, validated tensors: index vectors [N] contiguous, tables with
``stride(-1) == 1``; they check only what keeps the kernels in bounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from ._tuning import make_configs, rows_bucket, short_tile_pruner
from .embedding import embedding_backward

MIN_BLOCK_D = 16
# Whole rows live in registers: D up to this many features (at 8192 the backward's three
# accumulator tiles fill all 128 registers of a 16-warp block).
MAX_BLOCK_D = 4096
# (elements per program, warps) candidates of the forward autotuner; kept if every thread holds
# 8..16 fp32 row elements (>= two 16-byte vectors, few enough registers for the reductions).
_FWD_TILES = (4096,)
_FWD_WARPS = (8, 16)
# Programs of the backward's first kernel at most: each strides over row blocks and writes one
# row of partial sums, so the reduction order (and the result) does not depend on the device.
BWD_PROGRAMS = 512


def block_d_for(dim: int) -> int:
    """Row tile width for ``dim`` features: the next power of two, at least 16."""
    return max(MIN_BLOCK_D, triton.next_power_of_2(dim))


def forward_candidates(block_d: int) -> list[tuple[int, int]]:
    """All (BLOCK_M, num_warps) pairs the forward autotuner may try for rows of ``block_d``."""
    out = []
    for tile in _FWD_TILES:
        for warps in _FWD_WARPS:
            block_m = max(1, tile // block_d)
            per_thread = block_m * block_d // (32 * warps)
            if 8 <= per_thread <= 16 and (block_m, warps) not in out:
                out.append((block_m, warps))
    return out


def forward_config_space() -> list[tuple[int, int, int]]:
    """Every (BLOCK_M, BLOCK_D, num_warps) the forward launcher can run: for compile checks."""
    space = []
    block_d = MIN_BLOCK_D
    while block_d <= MAX_BLOCK_D:
        space += [(m, block_d, w) for m, w in forward_candidates(block_d)]
        block_d *= 2
    return space


def backward_config(block_d: int) -> tuple[int, int]:
    """(BLOCK_M, num_warps) of the backward kernel: 1024-element tiles (one row from D = 1024
    on), 8..16 elements a thread; it keeps three fp32 accumulator tiles in registers (16 warps
    at D = 4096 made ptxas spill)."""
    warps = 4 if block_d <= 1024 else 8
    return max(1, 1024 // block_d), warps


def backward_config_space() -> list[tuple[int, int, int]]:
    """Every (BLOCK_M, BLOCK_D, num_warps) of the backward kernel: for compile checks."""
    space, block_d = [], MIN_BLOCK_D
    while block_d <= MAX_BLOCK_D:
        block_m, warps = backward_config(block_d)
        space.append((block_m, block_d, warps))
        block_d *= 2
    return space


_prune_forward = short_tile_pruner(forward_candidates, "BLOCK_D", "BLOCK_M", "n_rows_bucket")


def _forward_configs() -> list[triton.Config]:
    return make_configs(
        sorted({(m, w) for m, _, w in forward_config_space()}), "BLOCK_M", num_stages=1
    )


@triton.jit
def _embedding_sum(
    ids_ptr,
    weight_ptr,
    pos_weight_ptr,
    positions_ptr,
    type_weight_ptr,
    type_ids_ptr,
    rows,  # [BM] int64 flat token rows
    local,  # [BM] int32 the same rows (for row % seq_len)
    row_ok,
    cols,
    col_ok,
    seq_len,
    num_embeddings,
    num_positions,
    num_types,
    stride_w,
    stride_p,
    stride_t,
    position_offset,
    HAS_POS: tl.constexpr,
    HAS_POSITIONS: tl.constexpr,
    HAS_TYPE: tl.constexpr,
    HAS_TYPE_IDS: tl.constexpr,
):
    """``weight[ids] + type_weight[tt] + pos_weight[pos]`` of the rows, [BM, BD] fp32 (zero in
    masked columns). Out-of-range indices (possible with check_indices=False) add nothing."""
    col_mask = col_ok[None, :]
    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # [BM]
    id_ok = row_ok & (ids >= 0) & (ids < num_embeddings)
    w_ptrs = weight_ptr + ids[:, None] * stride_w + cols[None, :]
    x = tl.load(w_ptrs, mask=id_ok[:, None] & col_mask, other=0.0).to(tl.float32)
    if HAS_TYPE:
        if HAS_TYPE_IDS:
            tt = tl.load(type_ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # [BM]
            tt_ok = row_ok & (tt >= 0) & (tt < num_types)
            t_ptrs = type_weight_ptr + tt[:, None] * stride_t + cols[None, :]
            x += tl.load(t_ptrs, mask=tt_ok[:, None] & col_mask, other=0.0).to(tl.float32)
        else:
            # No type ids: row 0 for every token (the ops layer requires T >= 1), loaded once.
            t = tl.load(type_weight_ptr + cols, mask=col_ok, other=0.0)
            x += t.to(tl.float32)[None, :]
    if HAS_POS:
        if HAS_POSITIONS:
            pos = tl.load(positions_ptr + rows, mask=row_ok, other=0).to(tl.int64)  # [BM]
        else:
            # s = row % seq_len in int32 (rows <= 2**30, checked by the launchers): a 64-bit
            # remainder is a slow subroutine.
            pos = position_offset + (local % seq_len).to(tl.int64)
        pos_ok = row_ok & (pos >= 0) & (pos < num_positions)
        p_ptrs = pos_weight_ptr + pos[:, None] * stride_p + cols[None, :]
        x += tl.load(p_ptrs, mask=pos_ok[:, None] & col_mask, other=0.0).to(tl.float32)
    return x


@triton.autotune(
    configs=_forward_configs(),
    key=["dim", "n_rows_bucket"],
    prune_configs_by={"early_config_prune": _prune_forward},
)
@triton.jit
def embedding_layernorm_fwd_kernel(
    ids_ptr,  # [N] int32/int64 flattened token ids
    weight_ptr,  # [V, D] word table
    pos_weight_ptr,  # [P, D] positional table (read only when HAS_POS)
    positions_ptr,  # [N] int positions (read only when HAS_POSITIONS)
    type_weight_ptr,  # [T, D] token-type table (read only when HAS_TYPE)
    type_ids_ptr,  # [N] int token-type ids (read only when HAS_TYPE_IDS)
    ln_weight_ptr,  # [D] (read only when HAS_LN_WEIGHT)
    ln_bias_ptr,  # [D] (read only when HAS_LN_BIAS)
    out_ptr,  # [N, D] output, weight dtype
    mean_ptr,  # [N] fp32
    rstd_ptr,  # [N] fp32
    n_rows,
    n_rows_bucket,  # autotune key only: rows_bucket(n_rows)
    seq_len,
    dim,
    num_embeddings,
    num_positions,
    num_types,
    stride_w,
    stride_p,
    stride_t,
    stride_o,
    position_offset,
    eps,
    # The optional terms are constexpr so each variant compiles without the dead loads and
    # branches (BERT: all on; DistilBERT: no type table; LayerNorm without affine).
    HAS_POS: tl.constexpr,
    HAS_POSITIONS: tl.constexpr,  # explicit positions vs position_offset + s
    HAS_TYPE: tl.constexpr,
    HAS_TYPE_IDS: tl.constexpr,  # explicit type ids vs row 0
    HAS_LN_WEIGHT: tl.constexpr,
    HAS_LN_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] int64
    local = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] int32
    cols = tl.arange(0, BLOCK_D)  # [BD]
    row_ok = rows < n_rows
    col_ok = cols < dim
    x = _embedding_sum(
        ids_ptr,
        weight_ptr,
        pos_weight_ptr,
        positions_ptr,
        type_weight_ptr,
        type_ids_ptr,
        rows,
        local,
        row_ok,
        cols,
        col_ok,
        seq_len,
        num_embeddings,
        num_positions,
        num_types,
        stride_w,
        stride_p,
        stride_t,
        position_offset,
        HAS_POS,
        HAS_POSITIONS,
        HAS_TYPE,
        HAS_TYPE_IDS,
    )  # [BM, BD] fp32
    n = dim.to(tl.float32)
    mean = tl.div_rn(tl.sum(x, axis=1), n)  # [BM]
    xc = tl.where(col_ok[None, :], x - mean[:, None], 0.0)
    var = tl.div_rn(tl.sum(xc * xc, axis=1), n)  # [BM], biased
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))  # correctly rounded, as on the CPU
    y = xc * rstd[:, None]
    if HAS_LN_WEIGHT:
        g = tl.load(ln_weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y * g[None, :]
    if HAS_LN_BIAS:
        b = tl.load(ln_bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y + b[None, :]
    o_ptrs = out_ptr + rows[:, None] * stride_o + cols[None, :]
    tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def embedding_layernorm_bwd_kernel(
    grad_ptr,  # [N, D] upstream gradient, weight dtype
    ids_ptr,
    weight_ptr,
    pos_weight_ptr,
    positions_ptr,
    type_weight_ptr,
    type_ids_ptr,
    ln_weight_ptr,
    mean_ptr,  # [N] fp32 from the forward
    rstd_ptr,  # [N] fp32 from the forward
    dx_ptr,  # [N, D] fp32: gradient of the embedding sum
    partial_w_ptr,  # [G, D] fp32: per-program sum of dy * xhat (NEED_LN_GRADS)
    partial_b_ptr,  # [G, D] fp32: per-program sum of dy (NEED_LN_GRADS)
    partial_t_ptr,  # [G, D] fp32: per-program sum of dx (NEED_TYPE_SUM)
    n_rows,
    seq_len,
    dim,
    num_embeddings,
    num_positions,
    num_types,
    stride_w,
    stride_p,
    stride_t,
    stride_g,
    stride_dx,
    position_offset,
    HAS_POS: tl.constexpr,
    HAS_POSITIONS: tl.constexpr,
    HAS_TYPE: tl.constexpr,
    HAS_TYPE_IDS: tl.constexpr,
    HAS_LN_WEIGHT: tl.constexpr,
    # Which partial sums are wanted: constexpr so the unused accumulators cost no registers.
    NEED_LN_GRADS: tl.constexpr,
    NEED_TYPE_SUM: tl.constexpr,  # the type table's row 0 gradient (no type ids)
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)  # [BD]
    col_ok = cols < dim
    n = dim.to(tl.float32)
    if HAS_LN_WEIGHT:
        g = tl.load(ln_weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)  # [BD]
    acc_w = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for blk in range(pid, tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0)):
        local = blk * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] int32 (rows < 2**30)
        rows = local.to(tl.int64)  # [BM] int64: row offsets are 64-bit products
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        x = _embedding_sum(
            ids_ptr,
            weight_ptr,
            pos_weight_ptr,
            positions_ptr,
            type_weight_ptr,
            type_ids_ptr,
            rows,
            local,
            row_ok,
            cols,
            col_ok,
            seq_len,
            num_embeddings,
            num_positions,
            num_types,
            stride_w,
            stride_p,
            stride_t,
            position_offset,
            HAS_POS,
            HAS_POSITIONS,
            HAS_TYPE,
            HAS_TYPE_IDS,
        )  # [BM, BD] fp32
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(grad_ptr + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        wdy = dy
        if HAS_LN_WEIGHT:
            wdy = dy * g[None, :]
        c1 = tl.div_rn(tl.sum(xhat * wdy, axis=1), n)  # [BM]
        c2 = tl.div_rn(tl.sum(wdy, axis=1), n)  # [BM]
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dx, mask=mask)
        if NEED_LN_GRADS:
            acc_w += dy * xhat
            acc_b += dy
        if NEED_TYPE_SUM:
            acc_t += tl.where(mask, dx, 0.0)
    part = pid.to(tl.int64) * dim + cols
    if NEED_LN_GRADS:
        tl.store(partial_w_ptr + part, tl.sum(acc_w, axis=0), mask=col_ok)
        tl.store(partial_b_ptr + part, tl.sum(acc_b, axis=0), mask=col_ok)
    if NEED_TYPE_SUM:
        tl.store(partial_t_ptr + part, tl.sum(acc_t, axis=0), mask=col_ok)


# ---------------------------------------------------------------------------- launchers


def check_dim(op: str, dim: int) -> None:
    """ValueError naming ``op`` when rows of ``dim`` features do not fit the kernels."""
    if dim > MAX_BLOCK_D:
        raise ValueError(
            f"{op}: D={dim} exceeds the Triton kernel's limit of {MAX_BLOCK_D} features "
            "(whole rows are held in registers)"
        )


def _check_rows(n_rows: int) -> None:
    if n_rows > 2**30:
        raise ValueError(
            f"fused_embedding_layernorm: {n_rows} tokens in one call; the limit is 2**30"
        )


def _tables(weight, pos_weight, type_weight):
    """The table pointers and their (rows, row stride), the word table standing in for absent
    ones (never read: their constexpr flags are off)."""
    pos = pos_weight if pos_weight is not None else weight
    typ = type_weight if type_weight is not None else weight
    num_pos = pos_weight.shape[0] if pos_weight is not None else 0
    num_types = type_weight.shape[0] if type_weight is not None else 0
    return pos, typ, num_pos, num_types


def embedding_layernorm_forward(
    ids: torch.Tensor,  # [N] int32/int64, contiguous
    weight: torch.Tensor,  # [V, D], stride(-1) == 1
    out: torch.Tensor,  # [N, D] weight dtype, stride(-1) == 1
    mean: torch.Tensor,  # [N] fp32
    rstd: torch.Tensor,  # [N] fp32
    *,
    seq_len: int,
    pos_weight: torch.Tensor | None,  # [P, D]
    positions: torch.Tensor | None,  # [N] int; None -> position_offset + n % seq_len
    position_offset: int,
    type_weight: torch.Tensor | None,  # [T, D]
    type_ids: torch.Tensor | None,  # [N] int; None -> row 0
    ln_weight: torch.Tensor | None,  # [D]
    ln_bias: torch.Tensor | None,  # [D]
    eps: float,
) -> torch.Tensor:
    """Launch the forward kernel; writes ``out``, ``mean`` and ``rstd`` and returns ``out``."""
    n_rows, dim = out.shape
    if n_rows == 0 or dim == 0:
        return out
    _check_rows(n_rows)
    check_dim("fused_embedding_layernorm", dim)
    pos, typ, num_pos, num_types = _tables(weight, pos_weight, type_weight)

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_M"]),)

    launch(
        embedding_layernorm_fwd_kernel,
        grid,
        ids,
        weight,
        pos,
        positions if positions is not None else ids,
        typ,
        type_ids if type_ids is not None else ids,
        ln_weight if ln_weight is not None else weight,
        ln_bias if ln_bias is not None else weight,
        out,
        mean,
        rstd,
        n_rows,
        rows_bucket(n_rows),
        seq_len,
        dim,
        weight.shape[0],
        num_pos,
        num_types,
        weight.stride(0),
        pos.stride(0),
        typ.stride(0),
        out.stride(0),
        int(position_offset),
        float(eps),
        HAS_POS=pos_weight is not None,
        HAS_POSITIONS=positions is not None,
        HAS_TYPE=type_weight is not None,
        HAS_TYPE_IDS=type_ids is not None,
        HAS_LN_WEIGHT=ln_weight is not None,
        HAS_LN_BIAS=ln_bias is not None,
        BLOCK_D=block_d_for(dim),
    )
    return out


def embedding_layernorm_backward(
    grad: torch.Tensor,  # [N, D] weight dtype, stride(-1) == 1
    ids: torch.Tensor,  # [N] int32/int64, contiguous
    weight: torch.Tensor,  # [V, D]
    mean: torch.Tensor,  # [N] fp32
    rstd: torch.Tensor,  # [N] fp32
    *,
    seq_len: int,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,  # [N] int or None (position_offset + n % seq_len)
    position_offset: int,
    type_weight: torch.Tensor | None,
    type_ids: torch.Tensor | None,  # [N] int or None (row 0)
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    padding_idx: int,  # -1 for none
    needs: tuple[bool, bool, bool, bool, bool],  # weight, pos, type, ln_weight, ln_bias
) -> list[torch.Tensor | None]:
    """Gradients ``[weight, pos_weight, type_weight, ln_weight, ln_bias]`` in the tables'
    dtype (None where not needed or absent); deterministic (no atomics)."""
    n_rows, dim = grad.shape
    dtype, device = weight.dtype, weight.device
    need_w, need_p, need_t, need_g, need_b = needs
    need_p = need_p and pos_weight is not None
    need_t = need_t and type_weight is not None
    need_g = need_g and ln_weight is not None
    need_b = need_b and ln_bias is not None
    grads: list[torch.Tensor | None] = [None] * 5
    _check_rows(n_rows)
    check_dim("fused_embedding_layernorm", dim)
    block_d = block_d_for(max(dim, 1))
    block_m, warps = backward_config(block_d)
    programs = max(1, min(triton.cdiv(n_rows, block_m), BWD_PROGRAMS))
    need_ln = need_g or need_b
    need_type_sum = need_t and type_ids is None
    dx = torch.empty(n_rows, dim, dtype=torch.float32, device=device)  # [N, D]
    partials = torch.zeros(3 if need_ln or need_type_sum else 0, programs, dim, device=device)
    if n_rows and dim:
        pos, typ, num_pos, num_types = _tables(weight, pos_weight, type_weight)
        launch(
            embedding_layernorm_bwd_kernel,
            (programs,),
            grad,
            ids,
            weight,
            pos,
            positions if positions is not None else ids,
            typ,
            type_ids if type_ids is not None else ids,
            ln_weight if ln_weight is not None else weight,
            mean,
            rstd,
            dx,
            partials[0] if partials.numel() else dx,
            partials[1] if partials.numel() else dx,
            partials[2] if partials.numel() else dx,
            n_rows,
            seq_len,
            dim,
            weight.shape[0],
            num_pos,
            num_types,
            weight.stride(0),
            pos.stride(0),
            typ.stride(0),
            grad.stride(0),
            dx.stride(0),
            int(position_offset),
            HAS_POS=pos_weight is not None,
            HAS_POSITIONS=positions is not None,
            HAS_TYPE=type_weight is not None,
            HAS_TYPE_IDS=type_ids is not None,
            HAS_LN_WEIGHT=ln_weight is not None,
            NEED_LN_GRADS=need_ln,
            NEED_TYPE_SUM=need_type_sum,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            num_warps=warps,
        )

    def table_grad(table: torch.Tensor, index: torch.Tensor, pad: int) -> torch.Tensor:
        out = torch.empty(table.shape, dtype=dtype, device=device)
        return embedding_backward(dx, index, out, scale=1.0, padding_idx=pad, deterministic=True)

    if need_w:
        grads[0] = table_grad(weight, ids, padding_idx)
    if need_p:
        if positions is None:
            s = torch.arange(position_offset, position_offset + seq_len, device=device)
            positions = s.repeat(n_rows // max(seq_len, 1))  # [N]
        grads[1] = table_grad(pos_weight, positions, -1)
    if need_t:
        if type_ids is not None:
            grads[2] = table_grad(type_weight, type_ids, -1)
        else:
            grads[2] = torch.zeros(type_weight.shape, dtype=dtype, device=device)
            grads[2][0] = partials[2].sum(0)
    if need_g:
        grads[3] = partials[0].sum(0).to(dtype)
    if need_b:
        grads[4] = partials[1].sum(0).to(dtype)
    return grads
