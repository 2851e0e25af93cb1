"""apply_rotary / apply_rotary_varlen: bad input raises errors that name the op and the value."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_cases

import fusedops


def _call(backend, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fusedops.apply_rotary(*args, **kwargs)


def _inputs(dim=16, rot=None, device="cpu", max_pos=10):
    q = torch.randn(2, 3, 4, dim, device=device)
    k = torch.randn(2, 1, 4, dim, device=device)
    cos, sin = fusedops.rope_cos_sin(rot or dim, max_pos, device=device)
    return q, k, cos, sin


@pytest.mark.parametrize("backend,device", backend_cases())
def test_positions_out_of_cache(backend, device):
    q, k, cos, sin = _inputs(device=device)
    bad = torch.tensor([[0, 1, 10, 2], [0, 0, 0, 0]], device=device)
    with pytest.raises(IndexError, match=r"apply_rotary: .*position 10 outside .*\[0, 10\)"):
        _call(backend, q, k, cos, sin, positions=bad)
    with pytest.raises(IndexError, match=r"apply_rotary: .*-1 outside .*\[0, 10\)"):
        _call(backend, q, k, cos, sin, positions=bad - 1)
    with pytest.raises(IndexError, match=r"apply_rotary: position 10 .*offset 7.*\[0, 10\)"):
        _call(backend, q, k, cos, sin, position_offset=7)
    out, _ = _call(backend, q, k, cos, sin, position_offset=6)  # the last rows are fine
    assert out.shape == q.shape


@pytest.mark.parametrize("backend,device", backend_cases())
def test_varlen_positions_out_of_cache(backend, device):
    x = torch.randn(12, 2, 8, device=device)
    cos, sin = fusedops.rope_cos_sin(8, 5, device=device)
    cu = torch.tensor([0, 4, 12], dtype=torch.int32, device=device)  # second sequence: 8 > 5
    pattern = r"apply_rotary_varlen: .*position 5 outside .*\[0, 5\)"
    with pytest.raises(IndexError, match=pattern), fusedops.use_backend(backend):
        fusedops.apply_rotary_varlen(x, cos, sin, cu)


Q, K = torch.randn(2, 3, 4, 16), torch.randn(2, 1, 4, 16)
COS, SIN = fusedops.rope_cos_sin(16, 10)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"q": torch.randn(2, 3, 4, 15), "k": None}, ValueError, "head dim D=15 is odd"),
        ({"rotary_dim": 7}, ValueError, r"rotary_dim must be even and in \[2, D=16\], got 7"),
        ({"rotary_dim": 18}, ValueError, r"rotary_dim must be even and in \[2, D=16\], got 18"),
        ({"rotary_dim": 8.0}, TypeError, "rotary_dim must be an int or None, got 8.0"),
        ({"k": torch.randn(3, 1, 4, 16)}, ValueError, r"k \(3, 1, 4, 16\) must match q"),
        ({"k": torch.randn(2, 1, 5, 16)}, ValueError, r"k \(2, 1, 5, 16\) must match q"),
        ({"k": torch.randn(2, 1, 4, 8)}, ValueError, r"k \(2, 1, 4, 8\) must match q"),
        ({"k": K.half()}, TypeError, "k dtype torch.float16 differs from q dtype"),
        ({"q": Q.double()}, TypeError, "q must have dtype in .*got torch.float64"),
        ({"q": Q.long()}, TypeError, "q must have dtype in .*got torch.int64"),
        ({"q": Q[0]}, ValueError, r"q must be \[B, H, S, D\], got shape \(3, 4, 16\)"),
        ({"q": [1.0]}, TypeError, "q must be a torch.Tensor, got list"),
        ({"cos": COS.double()}, TypeError, "cos must have dtype in .*got torch.float64"),
        ({"sin": SIN[:, :4]}, ValueError, "cos and sin must have the same shape"),
        ({"cos": COS[:, :5], "sin": SIN[:, :5]}, ValueError, r"got \(10, 5\)"),
        ({"cos": COS[None, :3], "sin": SIN[None, :3]}, ValueError, r"\[2 or 1, 4, R or R/2\]"),
        (
            {"positions": torch.zeros(2, 4)},
            TypeError,
            "positions must have dtype in .*got torch.float32",
        ),
        (
            {"positions": torch.zeros(3, 4, dtype=torch.long)},
            ValueError,
            r"positions must be \[2 or 1, 4\].*got \(3, 4\)",
        ),
        (
            {"positions": torch.zeros(2, 4, dtype=torch.long), "position_offset": 1},
            ValueError,
            "not both",
        ),
        ({"position_offset": -2}, ValueError, "position_offset must be >= 0, got -2"),
        ({"position_offset": 1.0}, TypeError, "position_offset must be an int, got 1.0"),
        (
            {"cos": COS[None, :4], "sin": SIN[None, :4], "position_offset": 2},
            ValueError,
            "already gathered",
        ),
        ({"interleaved": 1}, TypeError, "interleaved must be a bool, got 1"),
        ({"inplace": "yes"}, TypeError, "inplace must be a bool"),
        ({"cos": COS.clone().requires_grad_()}, ValueError, "cos/sin require grad"),
        ({"q": Q.clone().requires_grad_(), "inplace": True}, ValueError, "inplace=True cannot"),
        (
            {"q": torch.randn(2, 3, 16, 4).transpose(-1, -2), "k": None, "inplace": True},
            ValueError,
            r"inplace=True needs q with a contiguous last dim",
        ),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_arguments(kwargs, exc, pattern, backend):
    if backend == "reference" and "contiguous last dim" in pattern:
        pytest.skip("the reference path does not need a contiguous last dim")
    args = {"q": Q, "k": K, "cos": COS, "sin": SIN, **kwargs}
    q, k, cos, sin = args.pop("q"), args.pop("k"), args.pop("cos"), args.pop("sin")
    with pytest.raises(exc, match=f"apply_rotary: .*{pattern}"):
        _call(backend, q, k, cos, sin, **args)


def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="apply_rotary: k is on meta"):
        fusedops.apply_rotary(Q, K.to("meta"), COS, SIN)
    with pytest.raises(ValueError, match="apply_rotary: cos is on meta"):
        fusedops.apply_rotary(Q, K, COS.to("meta"), SIN)


@pytest.mark.parametrize(
    "args,exc,pattern",
    [
        ((torch.randn(4, 16), COS, SIN, [0, 4]), ValueError, r"x must be \[T, H, D\]"),
        ((torch.randn(4, 2, 16), COS, SIN, torch.tensor([0, 4.0])), TypeError, "cu_seqlens"),
        ((torch.randn(4, 2, 16), COS, SIN, torch.tensor([4])), ValueError, r"\[N \+ 1\]"),
        (
            (torch.randn(4, 2, 16), COS, SIN, torch.tensor([0, 3])),
            ValueError,
            "start at 0 and end at T=4, got 0 and 3",
        ),
        (
            (torch.randn(4, 2, 16), COS, SIN, torch.tensor([0, 3, 2, 4])),
            ValueError,
            "non-decreasing",
        ),
        (
            (torch.randn(4, 2, 16), COS[None], SIN[None], torch.tensor([0, 4])),
            ValueError,
            r"cache \[max_pos",
        ),
        (
            (torch.randn(4, 2, 15), COS, SIN, torch.tensor([0, 4])),
            ValueError,
            "head dim D=15 is odd",
        ),
        ((torch.randn(4, 2, 16).long(), COS, SIN, torch.tensor([0, 4])), TypeError, "x must"),
    ],
)
def test_varlen_bad_arguments(args, exc, pattern):
    with pytest.raises(exc, match=f"apply_rotary_varlen: .*{pattern}"):
        fusedops.apply_rotary_varlen(*args)
