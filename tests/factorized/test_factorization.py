"""fusedops.factorization: SVD fitting with exact hot rows, rank from energy, token counts,
the most frequent tokens, reconstruction errors and the bundled sample text."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from fusedops.factorization import (
    dense_table,
    fit_factorization,
    most_frequent,
    reconstruction_error,
    sample_text,
    token_frequencies,
)

# fit tolerance of a rank-r table refitted at rank r, per table dtype (the factors are rounded to
# it); fp16/bf16 tables hold values of about unit size.
EXACT_TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _low_rank_table(vocab, dim, rank, hot_ids, dtype, seed=0):
    """[V, D] table of rank ``rank`` outside ``hot_ids``, whose rows are arbitrary and large."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, rank, generator=gen, dtype=torch.float64)
    table = table @ torch.randn(rank, dim, generator=gen, dtype=torch.float64) / math.sqrt(rank)
    table[hot_ids] = 10 * torch.randn(len(hot_ids), dim, generator=gen, dtype=torch.float64)
    return table.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("compute", [torch.float64, torch.float32])
def test_rank_r_table_is_reconstructed_exactly_at_rank_r(dtype, compute):
    vocab, dim, rank, hot = 41, 13, 4, [3, 40, 0, 17, 9]
    table = _low_rank_table(vocab, dim, rank, hot, dtype)
    a, b, hot_rows, info = fit_factorization(
        table, rank=rank, hot_ids=torch.tensor(hot), compute_dtype=compute
    )
    assert a.shape == (vocab, rank) and b.shape == (rank, dim) and hot_rows.shape == (5, dim)
    assert a.dtype == b.dtype == hot_rows.dtype == dtype
    assert torch.equal(hot_rows, table[hot])  # stored exactly, in the given order
    cold = torch.ones(vocab, dtype=torch.bool)
    cold[hot] = False
    fitted = a.double() @ b.double()  # [V, D]
    tol = max(EXACT_TOL[dtype], 1e-5 if compute == torch.float32 else 0.0)
    err = (fitted[cold] - table[cold].double()).abs().max().item()
    assert err <= tol * table.double().abs().max().item(), err
    # Without the hot rows the table would need rank 4 + 5: they were left out of the fit.
    assert info.rank == rank and info.num_hot == 5
    tail = max(1e-5, EXACT_TOL[dtype])  # a rounded fp16/bf16 table is rank r only up to that
    assert info.energy == pytest.approx(1.0, abs=tail**2 * dim)
    assert info.singular_values.shape == (min(vocab - 5, dim),)
    assert info.singular_values[rank:].max() <= tail * info.singular_values[0]
    # b has orthonormal rows (the right singular vectors).
    gram = b.double() @ b.double().T
    assert torch.allclose(gram, torch.eye(rank, dtype=torch.float64), atol=10 * tol)


def test_truncation_error_is_the_tail_of_the_spectrum():
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    hot = torch.tensor([5, 2])
    a, b, hot_rows, info = fit_factorization(table, rank=3, hot_ids=hot)
    cold = torch.ones(37, dtype=torch.bool)
    cold[hot] = False
    s = torch.linalg.svdvals(table[cold])  # [11]
    tail = s[3:].square().sum().sqrt().item()
    fitted = dense_table(a, b, hot, hot_rows)
    assert torch.equal(fitted[hot], table[hot])
    assert (fitted - table).norm().item() == pytest.approx(tail, rel=1e-9)  # Eckart-Young
    assert info.relative_error == pytest.approx(tail / table.norm().item(), rel=1e-9)
    assert info.energy == pytest.approx((s[:3].square().sum() / s.square().sum()).item())
    assert torch.allclose(info.singular_values, s, rtol=1e-10)


def test_zero_row_gives_exact_zero_row():
    table = torch.randn(19, 8)
    table[7] = 0
    a, b, _, _ = fit_factorization(table, rank=3)
    assert torch.equal(a[7], torch.zeros(3))
    assert torch.equal(a[7] @ b, torch.zeros(8))


def test_energy_picks_smallest_rank():
    # Singular values 8, 4, 2, 1, 0 (squares 64, 16, 4, 1, 0 of 85).
    q1, _ = torch.linalg.qr(torch.randn(30, 5, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(7, 5, dtype=torch.float64))
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    table = (q1 * s) @ q2.T  # [30, 7]
    for energy, rank in [
        (0.5, 1),
        (64 / 85, 1),  # exactly the first value's share
        (64 / 85 + 1e-6, 2),
        (80 / 85, 2),
        (0.99, 4),
        (1.0, 4),  # the rank of the table, not min(V, D)
    ]:
        a, b, _, info = fit_factorization(table, energy=energy)
        assert info.rank == rank == a.shape[1] == b.shape[0], (energy, info.rank)
        assert info.energy >= energy - 1e-12
    _, _, _, info = fit_factorization(torch.zeros(6, 4), energy=0.9)
    assert info.rank == 1  # nothing to keep: the smallest rank


def test_no_hot_rows_gives_none():
    _, _, hot_rows, info = fit_factorization(torch.randn(9, 4), rank=2, hot_ids=[])
    assert hot_rows is None and info.num_hot == 0
    a2, _, hot_rows2, _ = fit_factorization(torch.randn(9, 4), rank=2)
    assert hot_rows2 is None and a2.shape == (9, 2)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({}, ValueError, "exactly one of rank and energy"),
        ({"rank": 2, "energy": 0.9}, ValueError, "exactly one of rank and energy"),
        ({"rank": 0}, ValueError, r"rank 0 outside \[1, 5\]"),
        ({"rank": 6}, ValueError, r"rank 6 outside \[1, 5\]"),
        ({"rank": 6, "hot_ids": [0, 1, 2, 3, 4, 5, 6, 7]}, ValueError, r"outside \[1, 4\]"),
        ({"rank": 2.0}, TypeError, "rank must be an int"),
        ({"rank": True}, TypeError, "rank must be an int"),
        ({"energy": 0.0}, ValueError, r"energy must be in \(0, 1\]"),
        ({"energy": 1.5}, ValueError, r"energy must be in \(0, 1\]"),
        ({"energy": "all"}, TypeError, "energy must be a number"),
        ({"rank": 2, "hot_ids": [1, 4, 1]}, ValueError, "id 1 repeats"),
        ({"rank": 2, "hot_ids": [1, 12]}, ValueError, r"hot id 12 outside \[0, 12\)"),
        ({"rank": 2, "hot_ids": [-1]}, ValueError, r"hot id -1 outside"),
        ({"rank": 2, "hot_ids": torch.tensor([1.0])}, TypeError, "integer tensor"),
        ({"rank": 2, "hot_ids": torch.tensor([[1]])}, ValueError, "1-D"),
        ({"rank": 2, "compute_dtype": torch.float16}, TypeError, "compute_dtype"),
    ],
)
def test_fit_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_factorization(torch.randn(12, 5), **kwargs)


def test_fit_rejects_bad_tables():
    with pytest.raises(TypeError, match="fit_factorization: weight must be fp32"):
        fit_factorization(torch.ones(4, 3, dtype=torch.int64), rank=1)
    with pytest.raises(ValueError, match=r"\[V, D\] table"):
        fit_factorization(torch.ones(4), rank=1)
    with pytest.raises(ValueError, match="non-finite"):
        fit_factorization(torch.tensor([[1.0, float("nan")]]), rank=1)
    with pytest.raises(ValueError, match="all 3 rows are hot"):
        fit_factorization(torch.ones(3, 2), energy=0.5, hot_ids=[0, 1, 2])


def test_token_frequencies_inputs():
    want = torch.tensor([1, 0, 3, 1, 0, 2])
    ids = [2, 0, 5, 2, 3, 5, 2]
    assert torch.equal(token_frequencies(ids, 6), want)
    assert torch.equal(token_frequencies(torch.tensor(ids).reshape(1, 7), 6), want)
    assert torch.equal(token_frequencies(np.array(ids, dtype=np.int32), 6), want)
    ragged = [[2, 0, 5], [2], [3, 5, 2]]
    assert torch.equal(token_frequencies(ragged, 6), want)
    batches = (torch.tensor(b, dtype=torch.int32) for b in ragged)  # read once
    assert torch.equal(token_frequencies(batches, 6), want)
    counts = token_frequencies(ragged)  # V from the largest id
    assert counts.dtype == torch.int64 and torch.equal(counts, want)
    assert torch.equal(token_frequencies([[1], [4]]), torch.tensor([0, 1, 0, 0, 1]))
    assert token_frequencies([]).numel() == 0
    assert torch.equal(token_frequencies([], 3), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize(
    "ids,vocab,error,match",
    [
        ([1, -2], None, ValueError, "token id -2 is negative"),
        ([1, 6], 6, ValueError, r"token id 6 outside \[0, 6\)"),
        (torch.tensor([1.0, 2.0]), None, TypeError, "integer tensor"),
        ([1.5], None, TypeError, "must be integers"),
        ([True], None, TypeError, "bool"),
        ("hello", None, TypeError, "expected token ids"),
        (7, None, TypeError, "expected a tensor"),
        ([1], -1, ValueError, "vocab_size must be >= 0"),
        ([1], 2.0, TypeError, "vocab_size must be an int"),
    ],
)
def test_token_frequencies_errors(ids, vocab, error, match):
    with pytest.raises(error, match=f"token_frequencies: .*{match}"):
        token_frequencies(ids, vocab)


def test_most_frequent_breaks_ties_by_lower_id():
    counts = torch.tensor([3, 5, 0, 5, 1, 3, 0])
    assert most_frequent(counts, 4).tolist() == [1, 3, 0, 5]
    assert most_frequent(counts, 7).tolist() == [1, 3, 0, 5, 4, 2, 6]  # unseen: lowest first
    assert most_frequent(counts, 0).tolist() == []
    assert most_frequent(counts.double(), 2).tolist() == [1, 3]
    assert most_frequent(counts, 3).dtype == torch.int64
    # Stable on large ties too (the sort must keep index order for equal counts).
    flat = torch.zeros(5000, dtype=torch.int64)
    flat[4321] = 1
    assert most_frequent(flat, 4).tolist() == [4321, 0, 1, 2]


def test_most_frequent_errors():
    counts = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match=r"most_frequent: k=4 outside \[0, 3\]"):
        most_frequent(counts, 4)
    with pytest.raises(ValueError, match="k=-1"):
        most_frequent(counts, -1)
    with pytest.raises(ValueError, match=r"must be \[V\]"):
        most_frequent(counts.reshape(1, 3), 1)
    with pytest.raises(ValueError, match=">= 0"):
        most_frequent(torch.tensor([1, -1]), 1)
    with pytest.raises(TypeError, match="k must be an int"):
        most_frequent(counts, 1.0)
    with pytest.raises(TypeError, match=r"counts must be a torch\.Tensor"):
        most_frequent([1, 2], 1)


def test_reconstruction_error_definitions():
    weight = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # row norms^2: 25, 1, 4
    approx = weight.clone()
    approx[1] = 0.0  # error^2 1 on token 1
    approx[2] = torch.tensor([0.0, 1.0])  # error^2 1 on token 2
    err = reconstruction_error(weight, approx)
    assert err.relative == pytest.approx(math.sqrt(2 / 30))
    assert err.weighted is None
    counts = torch.tensor([0, 3, 1])
    err = reconstruction_error(weight, approx, counts)
    assert err.weighted == pytest.approx(math.sqrt((3 * 1 + 1 * 1) / (3 * 1 + 1 * 4)))
    assert reconstruction_error(weight, approx, torch.zeros(3)).weighted == pytest.approx(
        math.sqrt(0.0)
    )
    with pytest.raises(ValueError, match=r"token_counts must be \[3\]"):
        reconstruction_error(weight, approx, torch.ones(4))
    with pytest.raises(ValueError, match="both be"):
        reconstruction_error(weight, approx[:2])


def test_sample_text():
    text = sample_text()
    assert 20_000 <= len(text.encode("utf-8")) <= 30_000
    words = re.findall(r"[a-z]+", text.lower())
    assert len(set(words)) >= 1500  # distinct words; model tokenizers see more pieces
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(paragraphs) >= 40
    counts = token_frequencies([ord(c) % 128 for c in text], 128)  # any id stream works
    assert int(counts.sum()) == len(text)
