"""Argument checks and helpers shared by the table-lookup ops (``fused_embedding``,
``int8_embedding``, ``factorized_embedding``, the vocabulary-parallel lookups).

They take ``input_ids [..., S]``, a ``scale``, an optional positional term (learned table or
sinusoid, positions given or ``position_offset + s``), ``padding_idx`` and, for a table shard,
``vocab_start``; these functions check those arguments the same way and raise errors that name
the op and the offending value.
"""

from __future__ import annotations

import torch

from fusedops.constants import POS_LEARNED, POS_NONE, POS_SINUSOID, SINUSOID_MAX_POSITION
from fusedops.ops._common import (
    INDEX_DTYPES,
    check_dtype,
    check_index_range,
    check_real_scalar,
    check_same_device,
    check_tensor,
)


def check_input_ids(op: str, input_ids: object, device: torch.device) -> None:
    """``input_ids``: an int32/int64 tensor ``[..., S]`` on ``device``."""
    check_tensor(op, "input_ids", input_ids)
    check_dtype(op, "input_ids", input_ids, INDEX_DTYPES)
    if input_ids.dim() < 1:
        raise ValueError(
            f"{op}: input_ids must be [..., S] with the sequence last, got a 0-d tensor"
        )
    check_same_device(op, "input_ids", input_ids, device)


def check_scale_and_offset(
    op: str, scale: object, position_offset: object
) -> float | torch.SymFloat | torch.SymInt:
    """``scale``: a finite real number (Python, NumPy or a 0-d tensor, see
    :func:`~fusedops.ops._common.check_real_scalar`), returned as a float (a symbolic number
    under ``torch.compile(dynamic=True)`` passes through); ``position_offset``: an int >= 0."""
    scale = check_real_scalar(op, "scale", scale)
    if isinstance(position_offset, bool) or not isinstance(position_offset, (int, torch.SymInt)):
        raise TypeError(f"{op}: position_offset must be an int, got {position_offset!r}")
    if position_offset < 0:
        raise ValueError(f"{op}: position_offset must be >= 0, got {position_offset}")
    return scale


def check_sinusoid_base(op: str, sinusoid_base: object) -> float | torch.SymFloat | torch.SymInt:
    """``sinusoid_base``: a finite real number > 0 (as ``scale`` in
    :func:`check_scale_and_offset`), returned as a float."""
    base = check_real_scalar(op, "sinusoid_base", sinusoid_base)
    if not isinstance(base, (torch.SymFloat, torch.SymInt)) and base <= 0:
        raise ValueError(f"{op}: sinusoid_base must be a positive number, got {base}")
    return base


def check_positional(
    op: str,
    input_ids: torch.Tensor,
    table: str,
    dim: int,
    device: torch.device,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    sinusoidal: bool,
    sinusoid_base: object,
) -> torch.Tensor | None:
    """Check the positional arguments; return ``positions`` expanded to the ids' shape and
    contiguous (or None). ``table`` names the token table in messages (``weight``...)."""
    if pos_weight is not None:
        check_tensor(op, "pos_weight", pos_weight)
        if sinusoidal:
            raise ValueError(f"{op}: pass either pos_weight or sinusoidal=True, not both")
        if pos_weight.dim() != 2 or pos_weight.shape[1] != dim:
            raise ValueError(
                f"{op}: pos_weight must be [P, {dim}] to match {table}, "
                f"got shape {tuple(pos_weight.shape)}"
            )
        check_same_device(op, "pos_weight", pos_weight, device)
    if sinusoidal:
        check_sinusoid_base(op, sinusoid_base)
    if positions is None:
        return None
    check_tensor(op, "positions", positions)
    if pos_weight is None and not sinusoidal:
        raise ValueError(
            f"{op}: positions given but there is no positional term "
            "(pass pos_weight or sinusoidal=True)"
        )
    check_dtype(op, "positions", positions, INDEX_DTYPES)
    check_same_device(op, "positions", positions, device)
    try:
        positions = positions.expand(input_ids.shape)
    except RuntimeError:
        raise ValueError(
            f"{op}: positions of shape {tuple(positions.shape)} do not broadcast to "
            f"input_ids of shape {tuple(input_ids.shape)}"
        ) from None
    return positions.contiguous()


def check_padding_idx(op: str, padding_idx: object, num_rows: int) -> int | None:
    """``padding_idx``: None or an int in ``[-V, V)``; returned normalised to ``[0, V)``."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
        raise TypeError(f"{op}: padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_rows <= padding_idx < num_rows:
        raise ValueError(f"{op}: padding_idx {padding_idx} outside [-{num_rows}, {num_rows})")
    return padding_idx % num_rows


def positional_mode(pos_weight: torch.Tensor | None, sinusoidal: bool) -> int:
    """The kernels' positional mode code."""
    return POS_LEARNED if pos_weight is not None else POS_SINUSOID if sinusoidal else POS_NONE


def check_vocab_start(op: str, vocab_start: object) -> int | None:
    """``vocab_start``: None or an int >= 0 (the first vocabulary id of a table shard)."""
    if vocab_start is None:
        return None
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int):
        raise TypeError(f"{op}: vocab_start must be an int or None, got {vocab_start!r}")
    if vocab_start < 0:
        raise ValueError(f"{op}: vocab_start must be >= 0, got {vocab_start}")
    return vocab_start


def check_position_range(
    op: str, ids: torch.Tensor, positions: torch.Tensor | None, offset: int, high: int
) -> None:
    """Raise IndexError unless every token's position lies in ``[0, high)``: ``positions``
    (shaped like ``ids`` ``[..., S]``) when given, else ``offset + s`` for ``s < S``. A device
    sync on CUDA when ``positions`` is given."""
    if positions is not None:
        check_index_range(op, "positions contains position", positions, 0, high)
    elif ids.numel() and offset + ids.shape[-1] > high:
        raise IndexError(
            f"{op}: position {offset + ids.shape[-1] - 1} (position_offset {offset} + sequence "
            f"length {ids.shape[-1]} - 1) outside [0, {high})"
        )


def check_ranges(
    op: str,
    ids: torch.Tensor,
    num_rows: int,
    pos_weight: torch.Tensor | None,
    positions: torch.Tensor | None,
    offset: int,
    mode: int,
    vocab_start: int | None = None,
) -> None:
    """Host-side index checks of a lookup (a device sync on CUDA): ``ids`` ``[..., S]`` against
    the table's ``num_rows`` and the positions against the positional term of ``mode``. With
    ``vocab_start`` (the table is a vocabulary shard) only the positions: the caller checks the
    ids against the whole vocabulary and the kernels mask the other shards' ids."""
    if vocab_start is None:
        check_index_range(op, "input_ids contains id", ids, 0, num_rows)
    if mode == POS_NONE:
        return
    high = pos_weight.shape[0] if mode == POS_LEARNED else SINUSOID_MAX_POSITION
    check_position_range(op, ids, positions, offset, high)


def token_positions(ids: torch.Tensor, positions: torch.Tensor | None, offset: int) -> torch.Tensor:
    """The position of each token, ``[..., S]`` like ``ids``: ``positions`` when given (already
    expanded to the ids' shape), else ``offset + s`` for every leading index (an expanded
    int64 view)."""
    if positions is not None:
        return positions
    seq = ids.shape[-1]
    return torch.arange(offset, offset + seq, device=ids.device).expand(ids.shape)
