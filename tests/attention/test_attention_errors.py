"""fusedops.attention rejects bad inputs with a message naming the op and the bad value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusedops


def _qkv(hq=4, hkv=2, sq=5, sk=7, dim=16, dtype=torch.float32):
    return (
        torch.randn(2, hq, sq, dim, dtype=dtype),
        torch.randn(2, hkv, sk, dim, dtype=dtype),
        torch.randn(2, hkv, sk, dim, dtype=dtype),
    )


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize(
    "make,kwargs,exc,match",
    [
        (lambda: (torch.zeros(2, 4, 5, 16, dtype=torch.float64), *_qkv()[1:]), {}, TypeError,
         "q must have dtype.*float64"),
        (lambda: (torch.zeros(2, 4, 5, 16, dtype=torch.int32), *_qkv()[1:]), {}, TypeError,
         "q must have dtype.*int32"),
        (lambda: (_qkv()[0].half(), *_qkv()[1:]), {}, TypeError, "k dtype torch.float32 differs"),
        (lambda: (_qkv()[0], _qkv()[1], _qkv()[2].half()), {}, TypeError, "v dtype"),
        (lambda: (_qkv()[0][0], *_qkv()[1:]), {}, ValueError, r"q must be 4-D .*\(4, 5, 16\)"),
        (lambda: (_qkv()[0], _qkv()[1], _qkv()[2][:, :, :3]), {}, ValueError,
         "k and v must have the same shape"),
        (lambda: _qkv(hq=5, hkv=2), {}, ValueError, "Hq=5 must be a multiple of.*Hkv=2"),
        (lambda: (_qkv()[0], *_qkv(dim=32)[1:]), {}, ValueError, "batch and head dim"),
        (lambda: _qkv(dim=8), {}, ValueError, r"D=8 outside .*\[16, 256\]"),
        (lambda: _qkv(dim=264), {}, ValueError, "D=264"),
        (lambda: ("q", *_qkv()[1:]), {}, TypeError, "q must be a torch.Tensor, got str"),
        (_qkv, {"key_padding_mask": torch.ones(2, 7)}, TypeError,
         "key_padding_mask must be a bool.*float32"),
        (_qkv, {"key_padding_mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError,
         r"key_padding_mask must be \[B, Sk\] = \[2, 7\], got \(2, 5\)"),
        (_qkv, {"key_padding_mask": torch.ones(7, dtype=torch.bool)}, ValueError, r"got \(7,\)"),
        (_qkv, {"causal": 1}, TypeError, "causal must be a bool, got 1"),
        (_qkv, {"return_lse": "yes"}, TypeError, "return_lse must be a bool"),
        (_qkv, {"softmax_scale": -1.0}, ValueError,
         "softmax_scale must be a finite number > 0, got -1.0"),
        (_qkv, {"softmax_scale": float("nan")}, ValueError, "softmax_scale"),
        (_qkv, {"softmax_scale": "0.1"}, TypeError, "softmax_scale must be a real number, got str"),
        (_qkv, {"softmax_scale": float("inf")}, ValueError, "softmax_scale must be a finite"),
        (_qkv, {"causal": False, "sliding_window": 4}, ValueError,
         "sliding_window=4 needs causal=True"),
        (_qkv, {"sliding_window": 0}, ValueError, "sliding_window must be >= 1, got 0"),
        (_qkv, {"sliding_window": True}, TypeError, "sliding_window must be an int or None"),
        (_qkv, {"sliding_window": 2.0}, TypeError, "sliding_window must be an int or None"),
        (_qkv, {"softcap": 0.0}, ValueError, "softcap must be a finite number > 0, got 0.0"),
        (_qkv, {"softcap": -1.0}, ValueError, "softcap must be a finite number > 0"),
        (_qkv, {"softcap": float("inf")}, ValueError, "softcap must be a finite number"),
        (_qkv, {"softcap": "1"}, TypeError, "softcap must be a real number, got str"),
        (_qkv, {"softcap": True}, TypeError, "softcap must be a real number, got bool"),
    ],
)  # fmt: skip
def test_bad_inputs(backend, make, kwargs, exc, match):
    with fusedops.use_backend(backend), pytest.raises(exc, match="^attention: .*" + match):
        fusedops.attention(*make(), **kwargs)


def test_device_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attention: k is on meta"):
        fusedops.attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="attention: key_padding_mask is on meta"):
        fusedops.attention(q, k, v, key_padding_mask=torch.ones(2, 7, dtype=torch.bool).to("meta"))


def test_forced_backend_that_cannot_run():
    q, k, v = _qkv()
    with fusedops.use_backend("cpp"), pytest.raises(RuntimeError, match="attention"):
        fusedops.attention(q.to("meta"), k.to("meta"), v.to("meta"))


def test_inputs_untouched_and_empty_batch():
    q, k, v = _qkv()
    copies = [t.clone() for t in (q, k, v)]
    fusedops.attention(q, k, v)
    for t, c in zip((q, k, v), copies, strict=True):
        assert torch.equal(t, c)
    q0 = torch.randn(0, 4, 5, 16)
    kv0 = torch.randn(0, 2, 7, 16)
    out, lse = fusedops.attention(q0, kv0, kv0, return_lse=True)
    assert out.shape == q0.shape and lse.shape == (0, 4, 5)


def test_numpy_and_0d_tensor_scalars():
    """softmax_scale and softcap take any real number: NumPy scalars and 0-d tensors as well
    as Python floats (a np.float32 used to be refused as "not a float")."""
    q, k, v = _qkv()
    want = fusedops.attention(q, k, v, softmax_scale=0.25, softcap=2.0)
    for scale, cap in ((np.float32(0.25), np.float64(2.0)), (torch.tensor(0.25), torch.tensor(2))):
        out = fusedops.attention(q, k, v, softmax_scale=scale, softcap=cap)
        assert torch.equal(out, want)
