"""Low-rank factorization of embedding tables (an offline step) and token statistics.

``a, b, hot_rows, info = fit_factorization(weight, rank=64, hot_ids=most_frequent(counts, 1024))``
splits a trained ``[V, D]`` table into ``a`` ``[V, r]`` and ``b`` ``[r, D]`` (``weight ~= a @ b``)
plus the exact rows of the hot tokens; :class:`fusedops.nn.FactorizedEmbedding` serves the result.
``token_frequencies`` counts token ids of a corpus and ``most_frequent`` picks the hot tokens;
``sample_text()`` is a bundled English text (about 29 KB) to count them on when no corpus is at
hand. To fit several ranks of one table, take the SVD once (:func:`right_singular_vectors`) and
truncate it per rank (:func:`factors_from_basis`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
# energy=1.0 (or any target) is met once the kept fraction is within this of it: the cumulative
# sum of squared singular values reaches the total only up to rounding.
ENERGY_SLACK = 1e-12


# ----------------------------------------------------------------------------------------------
# Token statistics
# ----------------------------------------------------------------------------------------------


def _as_id_tensor(value: Any, op: str) -> torch.Tensor:
    """A tensor, numpy array or (nested) list of ints -> flat int64 CPU tensor."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in INTEGER_DTYPES:
            raise TypeError(f"{op}: token ids must be an integer tensor, got {value.dtype}")
        return value.detach().reshape(-1).to("cpu", torch.int64)
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{op}: cannot read token ids from {type(value).__name__}: {exc}") from None
    if tensor.dtype not in INTEGER_DTYPES:
        raise TypeError(f"{op}: token ids must be integers, got values of dtype {tensor.dtype}")
    return tensor.reshape(-1).to(torch.int64)


def _id_batches(ids: Any, op: str) -> Iterable[torch.Tensor]:
    """Yield flat int64 tensors from a tensor / array / list of ints / iterable of batches."""
    if isinstance(ids, torch.Tensor) or hasattr(ids, "__array__"):
        yield _as_id_tensor(ids, op)
        return
    if isinstance(ids, (str, bytes, dict)):
        raise TypeError(f"{op}: expected token ids, got {type(ids).__name__}")
    if not isinstance(ids, Iterable):
        raise TypeError(
            f"{op}: expected a tensor, a list of ids or an iterable of batches, "
            f"got {type(ids).__name__}"
        )
    run: list[int] = []  # consecutive plain ints form one batch
    for item in ids:
        if isinstance(item, bool):
            raise TypeError(f"{op}: token ids must be integers, got a bool")
        if isinstance(item, numbers.Integral):
            run.append(int(item))
            continue
        if run:
            yield torch.tensor(run, dtype=torch.int64)
            run = []
        if isinstance(item, torch.Tensor) or hasattr(item, "__array__"):
            yield _as_id_tensor(item, op)
        elif isinstance(item, (list, tuple)):
            yield from _id_batches(item, op)
        else:
            raise TypeError(f"{op}: token ids must be integers, got {type(item).__name__}")
    if run:
        yield torch.tensor(run, dtype=torch.int64)


def token_frequencies(ids: Any, vocab_size: int | None = None) -> torch.Tensor:
    """Count how often each token id occurs.

    Args:
        ids: token ids as an integer tensor of any shape, a numpy array, a list of ints, a list
            of lists (e.g. tokenized sentences of different lengths), or any iterable of such
            batches (a generator works: it is read once).
        vocab_size: V, the length of the result; every id must be in ``[0, V)``. None: one more
            than the largest id seen (0 for no ids).
    Returns:
        int64 ``[V]`` on the CPU: ``counts[t]`` = occurrences of ``t``.
    Raises:
        TypeError for non-integer ids; ValueError for a negative id, an id >= ``vocab_size``
        or a negative ``vocab_size``.
    """
    op = "token_frequencies"
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
            raise TypeError(f"{op}: vocab_size must be an int or None, got {vocab_size!r}")
        if vocab_size < 0:
            raise ValueError(f"{op}: vocab_size must be >= 0, got {vocab_size}")
    counts = torch.zeros(0 if vocab_size is None else int(vocab_size), dtype=torch.int64)
    for batch in _id_batches(ids, op):
        if batch.numel() == 0:
            continue
        low, high = int(batch.min()), int(batch.max())
        if low < 0:
            raise ValueError(f"{op}: token id {low} is negative")
        if vocab_size is not None and high >= vocab_size:
            raise ValueError(f"{op}: token id {high} outside [0, {vocab_size}) (vocab_size)")
        batch_counts = torch.bincount(batch, minlength=counts.numel())  # [>= len(counts)]
        if batch_counts.numel() > counts.numel():
            batch_counts[: counts.numel()] += counts
            counts = batch_counts
        else:
            counts += batch_counts
    return counts


def most_frequent(counts: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most frequent token ids, most frequent first.

    Ties are broken by the lower id, so the result is deterministic; when fewer than ``k``
    tokens occur at all, the rest are the lowest unseen ids.

    Args:
        counts: ``[V]`` counts (integer or float, >= 0), e.g. from :func:`token_frequencies`.
        k: how many ids, ``0 <= k <= V``.
    Returns:
        int64 ``[k]`` distinct ids on ``counts``' device.
    """
    op = "most_frequent"
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"{op}: counts must be a torch.Tensor, got {type(counts).__name__}")
    if counts.dim() != 1:
        raise ValueError(f"{op}: counts must be [V], got shape {tuple(counts.shape)}")
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"{op}: counts must be integer or float, got {counts.dtype}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{op}: k must be an int, got {k!r}")
    if not 0 <= k <= counts.numel():
        raise ValueError(f"{op}: k={k} outside [0, {counts.numel()}] (V = len(counts))")
    if counts.numel() and bool((counts < 0).any()):
        raise ValueError(f"{op}: counts must be >= 0")
    # A stable descending sort keeps equal counts in ascending id order.
    order = torch.sort(counts, descending=True, stable=True).indices  # [V] int64
    return order[: int(k)].clone()


def sample_text() -> str:
    """The bundled English sample text (about 29 KB of original prose on twenty topics, UTF-8):
    a small corpus for :func:`token_frequencies` when none is at hand."""
    return (resources.files("fusedops") / "data" / "sample_text.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorizationInfo:
    """What :func:`fit_factorization` chose and how well the result fits.

    Attributes:
        rank: r, the kept rank.
        energy: fraction of the squared singular values of the non-hot rows that ``b`` keeps.
        relative_error: ``||W - W_hat||_F / ||W||_F`` of the whole ``[V, D]`` table in fp64, with
            ``W_hat = a @ b`` outside the hot rows and the hot rows exact (the factors as
            returned, i.e. after rounding to the table's dtype).
        num_hot: K, the number of rows stored exactly.
        singular_values: fp64 ``[min(V - K, D)]`` singular values of the non-hot rows (CPU).
    """

    rank: int
    energy: float
    relative_error: float
    num_hot: int
    singular_values: torch.Tensor


def _check_weight(op: str, weight: object) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: weight must be fp32/fp16/bf16/fp64, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(
            f"{op}: weight must be a non-empty [V, D] table, got {tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{op}: weight has non-finite values")
    return weight.detach()


def check_hot_ids(
    op: str, hot_ids: object, num_embeddings: int, device: torch.device
) -> torch.Tensor:
    """``hot_ids`` (tensor or sequence of ints) -> int64 ``[K]`` on ``device``; raises for
    duplicates and ids outside ``[0, V)``, naming ``op``."""
    if isinstance(hot_ids, torch.Tensor):
        if hot_ids.dtype not in INTEGER_DTYPES:
            raise TypeError(f"{op}: hot_ids must be an integer tensor, got {hot_ids.dtype}")
        ids = hot_ids.detach()
    else:
        try:
            ids = torch.as_tensor(list(hot_ids), dtype=torch.int64)  # type: ignore[arg-type]
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{op}: hot_ids must be a 1-D integer tensor or a sequence of ints, "
                f"got {type(hot_ids).__name__}"
            ) from None
    if ids.dim() != 1:
        raise ValueError(f"{op}: hot_ids must be 1-D [K], got shape {tuple(ids.shape)}")
    ids = ids.to(device=device, dtype=torch.int64)
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_embeddings:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: hot id {bad} outside [0, {num_embeddings})")
        unique, counts = torch.unique(ids, return_counts=True)
        if unique.numel() != ids.numel():
            raise ValueError(
                f"{op}: hot_ids must be distinct; id {int(unique[counts > 1][0])} repeats"
            )
    return ids


def _cold_mask(num_embeddings: int, hot_ids: torch.Tensor) -> torch.Tensor:
    cold = torch.ones(num_embeddings, dtype=torch.bool, device=hot_ids.device)  # [V]
    cold[hot_ids] = False
    return cold


def right_singular_vectors(
    weight: torch.Tensor, hot_ids: torch.Tensor, compute_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD of the non-hot rows of ``weight`` [V, D]: ``(s [m], vh [m, D])`` in
    ``compute_dtype`` with ``m = min(V - K, D)``, singular values descending."""
    cold_rows = weight[_cold_mask(weight.shape[0], hot_ids)].to(compute_dtype)  # [V - K, D]
    _, s, vh = torch.linalg.svd(cold_rows, full_matrices=False)
    return s, vh


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r >= 1`` whose top-``r`` squared singular values hold at least ``energy`` of
    their total (to within ``ENERGY_SLACK``); 1 for an all-zero spectrum."""
    sq = singular_values.double().square()
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = sq.cumsum(0) / total  # [m], non-decreasing to 1
    return min(int((kept < energy - ENERGY_SLACK).sum()) + 1, singular_values.numel())


def factors_from_basis(
    weight: torch.Tensor,
    vh: torch.Tensor,
    rank: int,
    hot_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(a [V, r], b [r, D], hot_rows [K, D] | None)`` in ``weight``'s dtype from the right
    singular vectors ``vh`` [m, D]: ``b = vh[:r]``, ``a = W @ b^T`` (the projection of every
    row onto the kept basis), hot rows copied exactly (None when K == 0)."""
    basis = vh[:rank]  # [r, D] orthonormal rows
    a = weight.to(basis.dtype) @ basis.T  # [V, r]
    hot_rows = weight[hot_ids].clone() if hot_ids.numel() else None  # [K, D]
    return a.to(weight.dtype).contiguous(), basis.to(weight.dtype).contiguous(), hot_rows


def dense_table(
    a: torch.Tensor,
    b: torch.Tensor,
    hot_ids: torch.Tensor | None = None,
    hot_rows: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The table a factorization serves, ``[V, D]``: ``a @ b`` with the hot rows replaced.

    Products in fp32 (fp64 for fp64 factors), then cast to ``dtype`` (default ``a.dtype``).
    """
    compute = torch.promote_types(a.dtype, torch.float32)
    table = a.to(compute) @ b.to(compute)  # [V, D]
    if hot_ids is not None and hot_ids.numel():
        table[hot_ids.long()] = hot_rows.to(compute)
    return table.to(dtype or a.dtype)


class ReconstructionError(NamedTuple):
    """Errors of an approximate table ``W_hat`` against ``W`` (both ``[V, D]``), in fp64.

    ``relative``: ``||W - W_hat||_F / ||W||_F``.
    ``weighted``: the frequency-weighted relative error
    ``sqrt(sum_t c_t ||W_t - W_hat_t||^2 / sum_t c_t ||W_t||^2)`` for token counts ``c``: the
    relative RMS error of the embedding of a token drawn from the corpus the counts came from
    (None without counts; 0/0, all counts zero, gives 0).
    """

    relative: float
    weighted: float | None


def reconstruction_error(
    weight: torch.Tensor, approx: torch.Tensor, token_counts: torch.Tensor | None = None
) -> ReconstructionError:
    """:class:`ReconstructionError` of ``approx`` against ``weight`` (both ``[V, D]``), with the
    frequency-weighted error when ``token_counts`` ``[V]`` is given."""
    op = "reconstruction_error"
    if weight.shape != approx.shape or weight.dim() != 2:
        raise ValueError(
            f"{op}: weight {tuple(weight.shape)} and approximation {tuple(approx.shape)} must "
            "both be [V, D]"
        )
    w = weight.detach().double()
    diff_sq = (approx.detach().double().to(w.device) - w).square().sum(1)  # [V]
    norm_sq = w.square().sum(1)  # [V]
    total = float(norm_sq.sum())
    relative = math.sqrt(float(diff_sq.sum()) / total) if total > 0 else float(diff_sq.sum()) ** 0.5
    weighted = None
    if token_counts is not None:
        if not isinstance(token_counts, torch.Tensor) or tuple(token_counts.shape) != (
            weight.shape[0],
        ):
            shape = getattr(token_counts, "shape", type(token_counts).__name__)
            raise ValueError(f"{op}: token_counts must be [{weight.shape[0]}], got {shape}")
        c = token_counts.detach().double().to(w.device)
        if bool((c < 0).any()):
            raise ValueError(f"{op}: token_counts must be >= 0")
        den = float((c * norm_sq).sum())
        num = float((c * diff_sq).sum())
        weighted = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    return ReconstructionError(relative, weighted)


def fit_factorization(
    weight: torch.Tensor,
    *,
    rank: int | None = None,
    energy: float | None = None,
    hot_ids: torch.Tensor | Iterable[int] | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, FactorizationInfo]:
    """Fit ``weight ~= a @ b`` by truncated SVD, keeping the hot tokens' rows exact.

    The SVD is taken of the rows that are NOT hot, ``W_c = U S V^T``; with ``V_r`` its top-``r``
    right singular vectors, ``b = V_r^T`` (orthonormal rows) and ``a = W @ b^T``: every row is
    projected onto the kept basis, so ``a @ b`` is the best rank-``r`` fit of the non-hot rows
    (Eckart-Young), a row of zeros (e.g. padding) gives exactly zero, and a table that has rank
    ``r`` outside its hot rows is reproduced exactly (up to rounding). The hot rows are copied.

    Args:
        weight: ``[V, D]`` trained table (fp32/fp16/bf16/fp64), finite.
        rank: r, ``1 <= r <= min(V - K, D)``. Exactly one of ``rank`` / ``energy``.
        energy: in ``(0, 1]``: the smallest r whose top squared singular values of the non-hot
            rows hold at least this fraction of their sum.
        hot_ids: K distinct ids in ``[0, V)`` (tensor or sequence) whose rows are stored exactly
            and left out of the fit; None or empty: none.
        compute_dtype: precision of the SVD and projection (fp64 default, or fp32).
    Returns:
        ``(a [V, r], b [r, D], hot_rows [K, D] or None, info)``: tensors in ``weight``'s dtype
        and device, contiguous; ``hot_rows[k] = weight[hot_ids[k]]``; ``info`` a
        :class:`FactorizationInfo`.
    Raises:
        TypeError for a non-float table or bad argument types; ValueError for both or neither
        of rank/energy, a rank outside ``[1, min(V - K, D)]``, an energy outside ``(0, 1]``,
        duplicate or out-of-range hot ids, non-finite values.
    """
    op = "fit_factorization"
    weight = _check_weight(op, weight)
    if compute_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: compute_dtype must be float32 or float64, got {compute_dtype}")
    if (rank is None) == (energy is None):
        raise ValueError(
            f"{op}: give exactly one of rank and energy (got rank={rank!r}, energy={energy!r})"
        )
    vocab, dim = weight.shape
    hot = check_hot_ids(op, [] if hot_ids is None else hot_ids, vocab, weight.device)
    max_rank = min(vocab - hot.numel(), dim)
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
            raise TypeError(f"{op}: rank must be an int, got {rank!r}")
        if not 1 <= rank <= max_rank:
            raise ValueError(
                f"{op}: rank {rank} outside [1, {max_rank}] (min(V - K, D) with V={vocab}, "
                f"K={hot.numel()} hot rows, D={dim})"
            )
    else:
        if isinstance(energy, bool) or not isinstance(energy, numbers.Real):
            raise TypeError(f"{op}: energy must be a number in (0, 1], got {energy!r}")
        if not 0.0 < float(energy) <= 1.0:
            raise ValueError(f"{op}: energy must be in (0, 1], got {energy}")
        if max_rank < 1:
            raise ValueError(f"{op}: all {vocab} rows are hot: nothing left to factorize")
    s, vh = right_singular_vectors(weight, hot, compute_dtype)
    r = int(rank) if rank is not None else rank_for_energy(s, float(energy))
    a, b, hot_rows = factors_from_basis(weight, vh, r, hot)
    sq = s.double().square()
    kept = float(sq[:r].sum() / sq.sum()) if float(sq.sum()) > 0 else 1.0
    approx = dense_table(a, b, hot, hot_rows, dtype=torch.float64)
    error = reconstruction_error(weight, approx).relative
    info = FactorizationInfo(r, kept, error, hot.numel(), s.detach().double().cpu())
    return a, b, hot_rows, info


__all__ = [
    "FactorizationInfo",
    "ReconstructionError",
    "check_hot_ids",
    "dense_table",
    "factors_from_basis",
    "fit_factorization",
    "most_frequent",
    "rank_for_energy",
    "reconstruction_error",
    "right_singular_vectors",
    "sample_text",
    "token_frequencies",
]
