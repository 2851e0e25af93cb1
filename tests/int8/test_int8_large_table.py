"""Lookups in tables of more than 2^31 elements through the C++ kernels (64-bit row offsets).

The tables are allocated with ``torch.empty`` (virtual memory: only the pages of the rows the
test fills are ever touched), so a 3-4 GiB table costs a few MB of RAM and milliseconds.
"""

from __future__ import annotations

import pytest
import torch

import fusedops
from fusedops import reference

V, D = 1 << 22, 768  # INT8 table: 3 GiB, 2^31.58 elements
# Rows whose element offset row * D is below / across / above 2^31, and the last rows.
ROWS = [0, (1 << 31) // D, (1 << 31) // D + 1, 3 * V // 4, V - 2, V - 1]


def _fill_rows(table: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    for i, row in enumerate(rows):
        table[row] = values[i]


@pytest.mark.parametrize("group_size", [None, 64], ids=["per-row", "per-group"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_lookup_beyond_2_31_elements(group_size, out_dtype):
    groups = 1 if group_size is None else D // group_size
    gen = torch.Generator().manual_seed(0)
    q_rows = torch.randint(-127, 128, (len(ROWS), D), generator=gen, dtype=torch.int8)
    s_rows = torch.rand(len(ROWS), groups, generator=gen) + 0.5
    qweight = torch.empty(V, D, dtype=torch.int8)  # [V, D], untouched except ROWS
    scales = torch.empty(V, groups)  # [V, G]
    assert qweight.numel() > 2**31
    _fill_rows(qweight, ROWS, q_rows)
    _fill_rows(scales, ROWS, s_rows)
    order = [5, 4, 3, 2, 1, 0, 5, 3]  # indices into ROWS, the last row first
    ids = torch.tensor([[ROWS[i] for i in order]])  # [1, 8]
    pos_weight = torch.randn(8, D, generator=gen)
    with fusedops.use_backend("cpp"):
        out = fusedops.int8_embedding(
            ids, qweight, scales, out_dtype=out_dtype, scale=2.0, pos_weight=pos_weight
        )
    # The same lookup in the small table holding just those rows.
    small_ids = torch.tensor([order])
    expected = reference.int8_embedding(
        small_ids, q_rows, s_rows, out_dtype=out_dtype, scale=2.0, pos_weight=pos_weight
    )
    assert torch.equal(out, expected)


def test_float_lookup_beyond_2_31_elements():
    rows, dim = (1 << 22) + 3, 512  # bf16 table: 4 GiB, 2^31 + 1536 elements
    table_rows = [0, (1 << 31) // dim - 1, (1 << 31) // dim, rows - 1]
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(len(table_rows), dim, generator=gen).to(torch.bfloat16)
    weight = torch.empty(rows, dim, dtype=torch.bfloat16)  # [V, D], untouched except table_rows
    assert weight.numel() > 2**31
    _fill_rows(weight, table_rows, values)
    order = [3, 2, 1, 0, 3]
    ids = torch.tensor([[table_rows[i] for i in order]])  # [1, 5]
    with fusedops.use_backend("cpp"):
        out = fusedops.fused_embedding(ids, weight, scale=3.0, sinusoidal=True)
    expected = reference.fused_embedding(torch.tensor([order]), values, scale=3.0, sinusoidal=True)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
