"""fused_embedding: bad input raises errors that name the op and the value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TRITON_DEVICE, backend_cases

import fusedops
from fusedops.nn import FusedEmbedding


def _call(backend, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fusedops.fused_embedding(*args, **kwargs)


@pytest.fixture
def tables():
    return torch.randint(0, 10, (2, 5)), torch.randn(10, 8), torch.randn(6, 8)


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("bad_id", [10, 12345, -1])
def test_id_out_of_range(backend, device, tables, bad_id):
    ids, weight, _ = tables
    ids[1, 3] = bad_id
    with pytest.raises(IndexError, match=rf"fused_embedding: .*{bad_id}.*\[0, 10\)"):
        _call(backend, ids.to(device), weight.to(device))


@pytest.mark.parametrize("backend,device", backend_cases())
def test_position_out_of_table(backend, device, tables):
    ids, weight, pos_weight = tables
    ids, weight, pos_weight = ids.to(device), weight.to(device), pos_weight.to(device)
    positions = torch.tensor([[0, 1, 2, 6, 3], [0, 0, 0, 0, 0]], device=device)
    with pytest.raises(IndexError, match=r"fused_embedding: .*6.*\[0, 6\)"):
        _call(backend, ids, weight, pos_weight=pos_weight, positions=positions)
    with pytest.raises(IndexError, match=r"fused_embedding: .*position.*\[0, 6\)"):
        _call(backend, ids, weight, pos_weight=pos_weight, position_offset=2)
    with pytest.raises(IndexError, match=r"fused_embedding: .*-3"):
        _call(backend, ids, weight, sinusoidal=True, positions=positions - 3)


def test_unchecked_ids_are_masked_not_read():
    # check_indices=False on the Triton path: out-of-range rows read as zero, never OOB.
    device = TRITON_DEVICE
    ids = torch.tensor([[1, 10_000_000, -5, 2]], device=device)
    weight = torch.randn(4, 16, device=device)
    with fusedops.use_backend("triton"):
        out = fusedops.fused_embedding(ids, weight, check_indices=False)
    assert torch.equal(out[0, 1], torch.zeros(16, device=device))
    assert torch.equal(out[0, 2], torch.zeros(16, device=device))
    assert torch.equal(out[0, 0], weight[1])


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"input_ids": torch.zeros(3)}, TypeError, "input_ids must have dtype"),
        ({"input_ids": torch.zeros((), dtype=torch.long)}, ValueError, "0-d"),
        ({"input_ids": [1, 2]}, TypeError, "input_ids must be a torch.Tensor"),
        ({"weight": torch.randn(10, 8).double()}, TypeError, "weight must have dtype"),
        ({"weight": torch.randn(10)}, ValueError, r"weight must be \[V, D\]"),
        ({"weight": torch.randint(0, 3, (10, 8))}, TypeError, "weight must have dtype"),
        ({"scale": float("nan")}, ValueError, "scale must be a finite number"),
        ({"scale": "2"}, TypeError, "scale must be a real number, got str"),
        ({"scale": torch.ones(2)}, TypeError, "scale must be a real number, got Tensor"),
        ({"pos_weight": torch.randn(6, 7)}, ValueError, r"pos_weight must be \[P, 8\]"),
        ({"pos_weight": torch.randn(6, 8).half()}, TypeError, "pos_weight dtype"),
        ({"pos_weight": torch.randn(6, 8), "sinusoidal": True}, ValueError, "not both"),
        ({"positions": torch.zeros(2, 5, dtype=torch.long)}, ValueError, "no positional term"),
        ({"sinusoidal": True, "positions": torch.zeros(2, 5)}, TypeError, "positions must"),
        (
            {"sinusoidal": True, "positions": torch.zeros(3, 5, dtype=torch.long)},
            ValueError,
            "do not broadcast",
        ),
        ({"position_offset": -1}, ValueError, "position_offset must be >= 0"),
        ({"position_offset": 1.5}, TypeError, "position_offset must be an int"),
        ({"padding_idx": 10}, ValueError, r"padding_idx 10 outside \[-10, 10\)"),
        ({"sinusoidal": True, "sinusoid_base": 0.0}, ValueError, "sinusoid_base"),
        (
            {"sinusoidal": True, "sinusoid_base": float("inf")},
            ValueError,
            "sinusoid_base must be a finite number, got inf",
        ),
        (
            {"sinusoidal": True, "sinusoid_base": float("nan")},
            ValueError,
            "sinusoid_base must be a finite number, got nan",
        ),
        (
            {"sinusoidal": True, "sinusoid_base": -2},
            ValueError,
            "sinusoid_base must be a positive number, got -2",
        ),
        ({"sinusoidal": True, "sinusoid_base": True}, TypeError, "sinusoid_base must be a real"),
    ],
)
def test_bad_arguments(tables, kwargs, exc, pattern):
    # Checked before any kernel runs, with the public op's name, on every backend.
    ids, weight, _ = tables
    args = {"input_ids": ids, "weight": weight, **kwargs}
    ids_arg, weight_arg = args.pop("input_ids"), args.pop("weight")
    for backend in ("auto", "triton", "reference"):
        with pytest.raises(exc, match=f"fused_embedding: .*{pattern}"):
            _call(backend, ids_arg, weight_arg, **args)


def test_mixed_devices_rejected(tables):
    ids, weight, _ = tables
    meta_ids = ids.to("meta")
    with pytest.raises(ValueError, match="fused_embedding: input_ids is on meta"):
        fusedops.fused_embedding(meta_ids, weight)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_sinusoid_position_limit(backend, device, tables):
    # Sinusoid positions must be < 2**16 on every backend (exact angle reduction there).
    ids, weight, _ = tables
    ids, weight = ids.to(device), weight.to(device)
    limit = 1 << 16
    ok = torch.full((2, 5), limit - 1, device=device)
    out = _call(backend, ids, weight, sinusoidal=True, positions=ok)
    assert out.shape == (2, 5, 8)
    with pytest.raises(IndexError, match=rf"fused_embedding: .*{limit}.*\[0, {limit}\)"):
        _call(backend, ids, weight, sinusoidal=True, positions=ok + 1)
    with pytest.raises(IndexError, match=rf"fused_embedding: .*\[0, {limit}\)"):
        _call(backend, ids, weight, sinusoidal=True, position_offset=limit - 2)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_numpy_and_tensor_scalars(backend, device, tables):
    # NumPy reals and 0-d tensors are numbers too: the same result as the Python float.
    ids, weight, _ = tables
    ids, weight = ids.to(device), weight.to(device)
    want = _call(backend, ids, weight, scale=2.0, sinusoidal=True, sinusoid_base=500.0)
    for scale, base in (
        (np.float32(2.0), np.float64(500.0)),
        (np.int64(2), np.int32(500)),
        (torch.tensor(2.0), torch.tensor(500, dtype=torch.int32)),
    ):
        out = _call(backend, ids, weight, scale=scale, sinusoidal=True, sinusoid_base=base)
        assert torch.equal(out, want), (scale, base)


def test_module_checks_scalars_when_built():
    # The module names itself, at construction, not at the first forward.
    with pytest.raises(ValueError, match="FusedEmbedding: sinusoid_base must be a finite number"):
        FusedEmbedding(10, 8, sinusoidal=True, sinusoid_base=float("inf"))
    with pytest.raises(ValueError, match="FusedEmbedding: scale must be a finite number, got nan"):
        FusedEmbedding(10, 8, scale=float("nan"))
    with pytest.raises(ValueError, match="FusedEmbedding: scale must be a number or 'sqrt_dim'"):
        FusedEmbedding(10, 8, scale="sqrt")
    emb = torch.nn.Embedding(10, 8)
    with pytest.raises(
        ValueError, match=r"FusedEmbedding\.from_embedding: sinusoid_base must be a positive"
    ):
        FusedEmbedding.from_embedding(emb, sinusoidal=True, sinusoid_base=0)
    module = FusedEmbedding(10, 8, scale=np.float32(2.0), sinusoidal=True, sinusoid_base=500)
    assert module.scale == 2.0 and type(module.scale) is float
    ids = torch.randint(0, 10, (2, 5))
    want = fusedops.fused_embedding(
        ids, module.weight, scale=2.0, sinusoidal=True, sinusoid_base=500.0
    )
    assert torch.equal(module(ids), want)
