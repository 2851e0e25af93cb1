"""The INT8 lookup's fp32 sinusoid (csrc/int8_math.h: per-pair inv_freq once per call, fp32
sin/cos per element) against the fp64 oracle, at every position of its range; and, on a GPU, the
CUDA kernels against the CPU kernel bit for bit (the same __host__ __device__ arithmetic with no
FMA, so every mode gives the same bits).

A zero table (q = 0, scale 0) makes the lookup return the positional term exactly: ``0 * scale +
P = P`` in fp32.
"""

from __future__ import annotations

import pytest
import torch

import fusedops
import fusedops._C
from fusedops import reference
from fusedops.constants import SINUSOID_MAX_POSITION

# The bound of the fp32 sinusoid (as the Triton embedding kernels' _sin_or_cos): against sin/cos
# of the same fp32 angle in fp64. Measured max 1.13e-7 (D = 768, base 1e4).
SINUSOID_FP32_BOUND = 1.5e-7


def _sinusoid(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """The INT8 op's positional term alone: [..., S, dim] fp32."""
    qweight = torch.zeros(1, dim, dtype=torch.int8)
    scales = torch.zeros(1, 1)
    ids = torch.zeros_like(positions)
    return fusedops.int8_embedding(
        ids, qweight, scales, sinusoidal=True, sinusoid_base=base, positions=positions
    )


# D: even, odd (a half-used last pair) and wide; bases from small to large.
@pytest.mark.parametrize(("dim", "base"), [(64, 1e4), (33, 1e4), (10, 10.0), (6, 1e6)])
def test_every_position_within_the_fp32_bound(dim, base):
    positions = torch.arange(SINUSOID_MAX_POSITION).unsqueeze(0)  # [1, 65536]
    out = _sinusoid(positions, dim, base)
    expected = reference.sinusoid_table(positions, dim, base, torch.float64)
    err = (out.double() - expected).abs()
    assert not bool(torch.isnan(out).any())
    assert float(err.max()) <= SINUSOID_FP32_BOUND, float(err.max())
    # Position 0: sin 0 = 0 and cos 0 = 1 exactly.
    assert bool((out[0, 0, 0::2] == 0).all()) and bool((out[0, 0, 1::2] == 1).all())


def test_wide_row_and_repeated_positions():
    """D = 768 on the s-major path (positions repeat across the batch) and explicit ones."""
    positions = torch.tensor([[0, 1, 2, 511, 4097, 65535]]).expand(3, 6)
    out = _sinusoid(positions.contiguous(), 768, 1e4)
    expected = reference.sinusoid_table(positions, 768, 1e4, torch.float64)
    assert float((out.double() - expected).abs().max()) <= SINUSOID_FP32_BOUND
    ids = torch.zeros(2, 6, dtype=torch.long)
    implicit = fusedops.int8_embedding(
        ids,
        torch.zeros(1, 768, dtype=torch.int8),
        torch.zeros(1, 1),
        sinusoidal=True,
        position_offset=65530,
    )
    assert torch.equal(implicit[0], _sinusoid(torch.arange(65530, 65536)[None], 768, 1e4)[0])


@pytest.mark.cuda
class TestCudaMatchesCpu:
    @pytest.fixture(autouse=True)
    def _cuda_build(self):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(
            "fusedops::int8_embedding_fwd", "CUDA"
        ):
            pytest.skip("fusedops._C was built without CUDA")

    @pytest.mark.parametrize("mode", ["none", "learned", "sinusoid"])
    @pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
    # D = 64 (groups of 16): the 16-byte vectorized kernel; D = 30 (groups of 10): per element.
    @pytest.mark.parametrize(("dim", "group_size"), [(64, 16), (30, 10)])
    def test_bit_identical(self, mode, out_dtype, dim, group_size):
        gen = torch.Generator().manual_seed(0)
        qweight, scales = fusedops.quantize_embedding(
            torch.randn(50, dim, generator=gen), group_size=group_size
        )
        ids = torch.randint(0, 50, (3, 17), generator=gen)
        positions = torch.randint(0, SINUSOID_MAX_POSITION, (3, 17), generator=gen)
        kwargs = {"scale": 1.7, "out_dtype": out_dtype}
        if mode == "learned":
            kwargs.update(pos_weight=torch.randn(40, dim, generator=gen), positions=positions % 40)
        elif mode == "sinusoid":
            kwargs.update(sinusoidal=True, positions=positions)
        expected = fusedops.int8_embedding(ids, qweight, scales, **kwargs)
        cuda = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        out = fusedops.int8_embedding(ids.cuda(), qweight.cuda(), scales.cuda(), **cuda)
        assert torch.equal(out.cpu(), expected)
