"""Vocabulary-parallel table lookups over ``torch.distributed``: validation, collective, autograd.

The token table of ``V`` rows is split over the ``W`` ranks of a process group in contiguous
shards of ``ceil(V / W)`` rows (the last shards hold fewer real rows; their padded rows are
never addressed). Each rank runs the fused lookup on its shard with ``vocab_start`` (ids outside
the shard contribute zero inside the kernel), then the partial results are summed with one
``all_reduce``. The positional term (a learned table replicated on every rank, or the in-kernel
sinusoid) is fused into the lookup of group rank 0 only, so it is added exactly once.

Conventions (those of tensor-parallel models such as Megatron-LM):

* every rank of the group passes the same ``input_ids`` / ``positions`` and receives the same
  output; the upstream gradient is the same on every rank (the backward of the all-reduce is
  the identity);
* validation depends only on those replicated arguments and the layout, so it runs before any
  collective and raises the same error on every rank instead of leaving a rank waiting;
* backward: each rank gets the gradient of its own shard only; every rank gets the same full
  gradient of the positional table, computed locally from the upstream gradient.

Precision: a token held by rank ``r > 0`` gets its positional term in the all-reduce, as
``fl(fl(w * scale) + p)`` (the other ranks add exact zeros). The C++ CPU kernels and the
reference compute exactly that in one process too (no FMA contraction), so in fp32 the result is
bit-identical to the single-process op there. Where a kernel fuses the multiply-add (the Triton
kernels on GPUs may) or the output is fp16/bf16 (each rank's part is rounded before the sum),
such tokens can differ from the single-process op by one rounding.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from fusedops.constants import POS_LEARNED, POS_NONE
from fusedops.ops._common import (
    FLOAT_DTYPES,
    check_dtype,
    check_tensor,
    forbid_double_backward,
    host_index_checks,
)
from fusedops.ops._dispatch import needs_grad
from fusedops.ops._lookup_checks import (
    check_input_ids,
    check_padding_idx,
    check_positional,
    check_ranges,
    check_scale_and_offset,
    check_sinusoid_base,
    positional_mode,
    token_positions,
)
from fusedops.ops.embedding import embedding_table_grad, fused_embedding
from fusedops.ops.int8_embedding import (
    check_inference_only,
    check_int8_qweight,
    check_int8_scales,
    int8_embedding,
)

__all__ = [
    "VocabShard",
    "group_rank_and_size",
    "vocab_parallel_embedding",
    "vocab_parallel_int8_embedding",
    "vocab_shard",
]

OP = "vocab_parallel_embedding"
OP_INT8 = "vocab_parallel_int8_embedding"


# ------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VocabShard:
    """Rows of a ``num_embeddings``-row vocabulary held by group rank ``rank`` of ``world_size``.

    ``rows = ceil(V / W)`` (the shard tensor's first dimension, equal on every rank);
    the shard covers ids ``[start, start + rows)`` with ``start = rank * rows``, of which the
    first ``real_rows`` are real (``start + real_rows <= V``); the rest are padding.
    """

    num_embeddings: int
    world_size: int
    rank: int
    rows: int
    start: int
    real_rows: int

    @property
    def end(self) -> int:
        """One past the last real id of the shard."""
        return self.start + self.real_rows

    def local_index(self, index: int | None) -> int | None:
        """Shard row of global id ``index``, or None when ``index`` is None or elsewhere."""
        if index is None or not self.start <= index < self.end:
            return None
        return index - self.start


def vocab_shard(num_embeddings: int, world_size: int, rank: int, op: str = OP) -> VocabShard:
    """The :class:`VocabShard` of ``rank``; ``ValueError`` when ``world_size > num_embeddings``."""
    if isinstance(num_embeddings, bool) or not isinstance(num_embeddings, int):
        raise TypeError(f"{op}: num_embeddings must be an int, got {num_embeddings!r}")
    if num_embeddings < 1:
        raise ValueError(f"{op}: num_embeddings must be >= 1, got {num_embeddings}")
    if world_size > num_embeddings:
        raise ValueError(
            f"{op}: world size {world_size} exceeds the vocabulary size {num_embeddings}: "
            "every rank needs at least one row (use a smaller process group)"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"{op}: rank {rank} outside [0, {world_size})")
    rows = -(-num_embeddings // world_size)  # ceil(V / W)
    start = rank * rows
    real = max(0, min(num_embeddings, start + rows) - start)
    return VocabShard(num_embeddings, world_size, rank, rows, start, real)


def group_rank_and_size(process_group: dist.ProcessGroup | None, op: str = OP) -> tuple[int, int]:
    """``(rank in the group, group size)``; ``RuntimeError`` without an initialized default
    group or when this process is not a member of ``process_group``."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"{op}: torch.distributed is not initialized; call "
            "torch.distributed.init_process_group(...) first (torchrun sets up its environment)"
        )
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise RuntimeError(
            f"{op}: this process (global rank {dist.get_rank()}) is not a member "
            "of the process group"
        )
    return rank, dist.get_world_size(process_group)


# ------------------------------------------------------------------------------------------
# Validation (identical on every rank: it reads only replicated arguments and the layout)
# ------------------------------------------------------------------------------------------


def _check_shard_rows(op: str, name: str, table: torch.Tensor, shard: VocabShard) -> None:
    if table.dim() != 2 or table.shape[0] != shard.rows:
        raise ValueError(
            f"{op}: {name} must be this rank's shard [ceil(V / world) = {shard.rows}, D] "
            f"(V = {shard.num_embeddings}, world size {shard.world_size}), got shape "
            f"{tuple(table.shape)}"
        )


def _check_lookup(
    op: str,
    input_ids: object,
    table_name: str,
    dim: int,
    device: torch.device,
    shard: VocabShard,
    scale: object,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    position_offset: object,
    sinusoidal: bool,
    sinusoid_base: object,
    padding_idx: object,
    check_indices: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, int | None, int, float, float]:
    """Checks shared by both lookups; returns ``(input_ids, positions, padding_idx, mode,
    scale, sinusoid_base)`` normalised (contiguous ids, positions expanded to the ids' shape,
    global padding id, the scalars as floats)."""
    check_input_ids(op, input_ids, device)
    scale = check_scale_and_offset(op, scale, position_offset)
    positions = check_positional(
        op, input_ids, table_name, dim, device, pos_weight, positions, sinusoidal, sinusoid_base
    )
    # The base only matters with the sinusoid; otherwise any value is passed on unread.
    sinusoid_base = check_sinusoid_base(op, sinusoid_base) if sinusoidal else 10000.0
    padding_idx = check_padding_idx(op, padding_idx, shard.num_embeddings)
    mode = positional_mode(pos_weight, sinusoidal)
    if host_index_checks(check_indices, device):
        # Against the full vocabulary: the kernels do not range-check ids given vocab_start,
        # and only rank 0 evaluates the positional term.
        check_ranges(
            op, input_ids, shard.num_embeddings, pos_weight, positions, position_offset, mode
        )
    return input_ids.contiguous(), positions, padding_idx, mode, scale, sinusoid_base


# ------------------------------------------------------------------------------------------
# Float lookup: forward, collective, autograd
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Call:
    """The non-tensor arguments of one validated lookup."""

    shard: VocabShard
    group: dist.ProcessGroup | None
    scale: float
    position_offset: int
    mode: int
    sinusoidal: bool
    sinusoid_base: float
    local_padding_idx: int | None
    deterministic: bool


def _partial_sum_forward(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    call: _Call,
) -> torch.Tensor:
    """This rank's shard lookup (+ the positional term on rank 0), all-reduced: [..., S, D]."""
    first = call.shard.rank == 0
    with torch.no_grad():
        out = fused_embedding(
            input_ids,
            weight.detach(),
            scale=call.scale,
            pos_weight=pos_weight.detach() if first and pos_weight is not None else None,
            positions=positions if first and call.mode != POS_NONE else None,
            position_offset=call.position_offset,
            sinusoidal=call.sinusoidal and first,
            sinusoid_base=call.sinusoid_base,
            vocab_start=call.shard.start,
            check_indices=False,  # checked against the full vocabulary before
        )  # [..., S, D] in weight.dtype
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=call.group)
    return out


class _VocabParallelLookup(torch.autograd.Function):
    """Forward: shard lookup + all-reduce. Backward: the shard's rows and the full positional
    table, from the (replicated) upstream gradient; no collective."""

    @staticmethod
    def forward(ctx, input_ids, weight, pos_weight, positions, call):
        out = _partial_sum_forward(input_ids, weight, pos_weight, positions, call)
        ctx.save_for_backward(input_ids, positions)
        ctx.call = call
        ctx.num_positions = pos_weight.shape[0] if pos_weight is not None else 0
        return out

    @staticmethod
    def backward(ctx, grad):
        # grad: [..., S, D] in weight dtype, the same on every rank of the group
        forbid_double_backward(OP)
        input_ids, positions = ctx.saved_tensors
        call: _Call = ctx.call
        grad_weight = grad_pos = None
        if ctx.needs_input_grad[1]:
            grad_weight = embedding_table_grad(
                grad,
                input_ids,
                call.shard.rows,
                scale=call.scale,
                padding_idx=call.local_padding_idx,
                vocab_start=call.shard.start,
                deterministic=call.deterministic,
            )  # [rows, D]: ids of other shards ignored
        if call.mode == POS_LEARNED and ctx.needs_input_grad[2]:
            rows = token_positions(input_ids, positions, call.position_offset)  # [..., S]
            grad_pos = embedding_table_grad(
                grad, rows, ctx.num_positions, deterministic=call.deterministic
            )  # [P, D], identical on every rank
        return None, grad_weight, grad_pos, None, None


def vocab_parallel_embedding(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    *,
    num_embeddings: int,
    process_group: dist.ProcessGroup | None = None,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
    deterministic: bool = True,
    check_indices: bool = True,
) -> torch.Tensor:
    """:func:`fusedops.fused_embedding` of a table sharded by rows over ``process_group``.

    Equals ``fused_embedding(input_ids, full_table, ...)`` on every rank, where ``full_table``
    is the concatenation of the real rows of all ranks' shards. Called by every rank of the
    group with the same ``input_ids``, ``positions`` and options (one ``all_reduce``).

    Args:
        input_ids: int32/int64 ``[..., S]`` ids in ``[0, num_embeddings)``, same on all ranks.
        weight: this rank's shard ``[ceil(V / W), D]`` fp32/fp16/bf16: rows
            ``[rank * rows, (rank + 1) * rows)`` of the vocabulary (rows past ``V`` padding).
        num_embeddings: ``V``, the size of the full vocabulary (``>= W``).
        process_group: the tensor-parallel group (default: the default group).
        scale: multiplier of the token rows.
        pos_weight: optional ``[P, D]`` learned positional table, replicated (same dtype as
            ``weight``); used on group rank 0, and every rank gets its full gradient.
        positions, position_offset, sinusoidal, sinusoid_base: as in
            :func:`fusedops.fused_embedding`.
        padding_idx: global id whose row gets no gradient (on the rank holding it).
        deterministic: bit-stable backward (see :func:`fusedops.fused_embedding`).
        check_indices: range-check ids (against ``V``) and positions on every rank before
            the collective (on CUDA a device sync; skipped while a CUDA graph is being
            captured). With ``False`` out-of-range ids read as zero rows.
    Returns:
        ``[..., S, D]`` in ``weight.dtype``, identical on every rank (the all-reduce runs in
        that dtype; see the module notes on precision).
    Raises:
        RuntimeError without an initialized process group; TypeError / ValueError for bad
        dtypes, shapes, devices, options or a group larger than ``V``; IndexError naming the
        op and the id (or position) out of range. All raised before any collective. The
        backward raises RuntimeError when run with ``create_graph=True`` (no double backward).
    """
    rank, world = group_rank_and_size(process_group, OP)
    shard = vocab_shard(num_embeddings, world, rank, OP)
    check_tensor(OP, "weight", weight)
    check_dtype(OP, "weight", weight, FLOAT_DTYPES)
    _check_shard_rows(OP, "weight", weight, shard)
    if pos_weight is not None:
        check_tensor(OP, "pos_weight", pos_weight)
        if pos_weight.dtype != weight.dtype:
            raise TypeError(
                f"{OP}: pos_weight dtype {pos_weight.dtype} differs from weight dtype "
                f"{weight.dtype}"
            )
    input_ids, positions, padding_idx, mode, scale, sinusoid_base = _check_lookup(
        OP,
        input_ids,
        "weight",
        weight.shape[1],
        weight.device,
        shard,
        scale,
        pos_weight,
        positions,
        position_offset,
        sinusoidal,
        sinusoid_base,
        padding_idx,
        check_indices,
    )
    call = _Call(
        shard=shard,
        group=process_group,
        scale=scale,
        position_offset=position_offset,
        mode=mode,
        sinusoidal=bool(sinusoidal),
        sinusoid_base=sinusoid_base,
        local_padding_idx=shard.local_index(padding_idx),
        deterministic=deterministic,
    )
    if needs_grad(weight, pos_weight):
        return _VocabParallelLookup.apply(input_ids, weight, pos_weight, positions, call)
    return _partial_sum_forward(input_ids, weight, pos_weight, positions, call)


# ------------------------------------------------------------------------------------------
# INT8 lookup (inference only)
# ------------------------------------------------------------------------------------------


def _check_int8_shard(qweight: object, scales: object, shard: VocabShard) -> None:
    check_int8_qweight(OP_INT8, qweight, scales)
    _check_shard_rows(OP_INT8, "qweight", qweight, shard)
    check_int8_scales(OP_INT8, qweight, scales, "ceil(V / world)")


def vocab_parallel_int8_embedding(
    input_ids: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    *,
    num_embeddings: int,
    process_group: dist.ProcessGroup | None = None,
    out_dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    sinusoidal: bool = False,
    sinusoid_base: float = 10000.0,
    padding_idx: int | None = None,
    check_indices: bool = True,
) -> torch.Tensor:
    """:func:`fusedops.int8_embedding` of an int8 table sharded by rows (inference only).

    Equals ``int8_embedding(input_ids, full_qweight, full_scales, ...)`` on every rank.

    Args:
        input_ids: int32/int64 ``[..., S]`` ids in ``[0, num_embeddings)``, same on all ranks.
        qweight: this rank's int8 shard ``[ceil(V / W), D]``.
        scales: its scales ``[ceil(V / W), G]`` fp32/fp16/bf16, ``G`` dividing ``D``.
        num_embeddings: ``V``.
        process_group: the tensor-parallel group (default: the default group).
        out_dtype: fp32/fp16/bf16 result dtype (also the dtype of the all-reduce).
        scale, pos_weight, positions, position_offset, sinusoidal, sinusoid_base,
        padding_idx, check_indices: as in :func:`vocab_parallel_embedding` (``pos_weight``
            any float dtype; ``padding_idx`` does not change the forward).
    Returns:
        ``[..., S, D]`` in ``out_dtype``, identical on every rank.
    Raises:
        As :func:`vocab_parallel_embedding`; RuntimeError when ``scales`` or ``pos_weight``
        requires grad (the lookup has no backward).
    """
    rank, world = group_rank_and_size(process_group, OP_INT8)
    shard = vocab_shard(num_embeddings, world, rank, OP_INT8)
    _check_int8_shard(qweight, scales, shard)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{OP_INT8}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}"
        )
    if pos_weight is not None:
        check_tensor(OP_INT8, "pos_weight", pos_weight)
        check_dtype(OP_INT8, "pos_weight", pos_weight, FLOAT_DTYPES)
    input_ids, positions, _padding_idx, mode, scale, sinusoid_base = _check_lookup(
        OP_INT8,
        input_ids,
        "qweight",
        qweight.shape[1],
        qweight.device,
        shard,
        scale,
        pos_weight,
        positions,
        position_offset,
        sinusoidal,
        sinusoid_base,
        padding_idx,
        check_indices,
    )
    check_inference_only(OP_INT8, scales, pos_weight, " or detach it")
    first = rank == 0
    out = int8_embedding(
        input_ids,
        qweight,
        scales,
        out_dtype=out_dtype,
        scale=scale,
        pos_weight=pos_weight if first else None,
        positions=positions if first and mode != POS_NONE else None,
        position_offset=position_offset,
        sinusoidal=bool(sinusoidal) and first,
        sinusoid_base=sinusoid_base,
        vocab_start=shard.start,
        check_indices=False,  # checked against the full vocabulary above
    )  # [..., S, D] in out_dtype
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
    return out
