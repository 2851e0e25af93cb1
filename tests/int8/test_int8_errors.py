"""int8_embedding: bad input raises errors that name the op and the value, on every backend."""

from __future__ import annotations

import pytest
import torch
from helpers import HAS_CUDA, backend_cases

import fusedops


def _call(backend, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fusedops.int8_embedding(*args, **kwargs)


@pytest.fixture
def table():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (2, 5), generator=gen)
    qweight, scales = fusedops.quantize_embedding(torch.randn(10, 8, generator=gen), group_size=4)
    return ids, qweight, scales, torch.randn(6, 8, generator=gen)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize(
    "id_dtype,bad_id",
    [(dtype, bad) for dtype in (torch.int32, torch.int64) for bad in (10, 12345, -1)]
    + [(torch.int64, 2**40)],  # beyond int32
    ids=str,
)
def test_id_out_of_range(backend, device, table, bad_id, id_dtype):
    ids, qweight, scales, _ = table
    ids = ids.to(id_dtype)
    ids[1, 3] = bad_id
    with pytest.raises(IndexError, match=rf"int8_embedding: .*{bad_id}.*\[0, 10\)"):
        _call(backend, ids.to(device), qweight.to(device), scales.to(device))


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_position_out_of_range(backend, device, table):
    ids, qweight, scales, pos_weight = (t.to(device) for t in table)
    positions = torch.tensor([[0, 1, 2, 6, 3], [0, 0, 0, 0, 0]], device=device)
    with pytest.raises(IndexError, match=r"int8_embedding: .*6.*\[0, 6\)"):
        _call(backend, ids, qweight, scales, pos_weight=pos_weight, positions=positions)
    with pytest.raises(IndexError, match=r"int8_embedding: .*position.*\[0, 6\)"):
        _call(backend, ids, qweight, scales, pos_weight=pos_weight, position_offset=2)
    with pytest.raises(IndexError, match=r"int8_embedding: .*-3"):
        _call(backend, ids, qweight, scales, sinusoidal=True, positions=positions - 3)
    limit = 1 << 16
    with pytest.raises(IndexError, match=rf"int8_embedding: .*{limit}"):
        _call(backend, ids, qweight, scales, sinusoidal=True, positions=positions + limit)


def _bad(name, value, exc, pattern):
    return pytest.param({name: value}, exc, pattern, id=f"{name}-{exc.__name__}")


BAD_ARGUMENTS = [
    _bad("qweight", torch.randn(10, 8), TypeError, "qweight must be int8.*float32"),
    _bad("qweight", torch.zeros(10, 8, dtype=torch.uint8), TypeError, "qweight must be int8"),
    _bad("qweight", torch.zeros(80, dtype=torch.int8), ValueError, r"qweight must be \[V, D\]"),
    _bad("qweight", [[1, 2]], TypeError, "qweight must be a torch.Tensor"),
    _bad("scales", torch.ones(10, 2).double(), TypeError, "scales must have dtype.*float64"),
    _bad("scales", torch.ones(10, 2, dtype=torch.int32), TypeError, "scales must have dtype"),
    _bad("scales", torch.ones(9, 2), ValueError, r"scales must be \[V, G\].*\(9, 2\)"),
    _bad("scales", torch.ones(10), ValueError, r"scales must be \[V, G\].*\(10,\)"),
    _bad("scales", torch.ones(10, 3), ValueError, "3 groups per row.*does not divide D=8"),
    _bad("scales", torch.ones(10, 0), ValueError, r"scales must be \[V, G\]"),
    _bad("input_ids", torch.zeros(3), TypeError, "input_ids must have dtype"),
    _bad("input_ids", torch.zeros((), dtype=torch.long), ValueError, "0-d"),
    _bad("out_dtype", torch.float64, TypeError, "out_dtype must be.*float64"),
    _bad("out_dtype", torch.int8, TypeError, "out_dtype must be.*int8"),
    _bad("scale", float("inf"), ValueError, "scale must be a finite number"),
    _bad("pos_weight", torch.randn(6, 7), ValueError, r"pos_weight must be \[P, 8\].*\(6, 7\)"),
    _bad("pos_weight", torch.randn(6, 8).double(), TypeError, "pos_weight must have dtype"),
    _bad("positions", torch.zeros(2, 5, dtype=torch.long), ValueError, "no positional term"),
    _bad("position_offset", -1, ValueError, "position_offset must be >= 0, got -1"),
    _bad("position_offset", 1.5, TypeError, "position_offset must be an int, got 1.5"),
    _bad("padding_idx", 10, ValueError, r"padding_idx 10 outside \[-10, 10\)"),
    _bad("padding_idx", "0", TypeError, "padding_idx must be an int"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD_ARGUMENTS)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_arguments(table, kwargs, exc, pattern, backend):
    ids, qweight, scales, _ = table
    args = {"input_ids": ids, "qweight": qweight, "scales": scales, **kwargs}
    positional = (args.pop("input_ids"), args.pop("qweight"), args.pop("scales"))
    with pytest.raises(exc, match=f"int8_embedding: .*{pattern}"):
        _call(backend, *positional, **args)


def test_bad_combinations(table):
    ids, qweight, scales, pos_weight = table
    with pytest.raises(ValueError, match="int8_embedding: pass either pos_weight or sinusoidal"):
        fusedops.int8_embedding(ids, qweight, scales, pos_weight=pos_weight, sinusoidal=True)
    with pytest.raises(
        ValueError, match=r"int8_embedding: sinusoid_base must be a positive number, got -1\.0"
    ):
        fusedops.int8_embedding(ids, qweight, scales, sinusoidal=True, sinusoid_base=-1.0)
    positions = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"int8_embedding: positions of shape .* do not broadcast"):
        fusedops.int8_embedding(ids, qweight, scales, sinusoidal=True, positions=positions)


def test_mixed_devices_rejected(table):
    ids, qweight, scales, pos_weight = table
    with pytest.raises(ValueError, match="int8_embedding: input_ids is on meta"):
        fusedops.int8_embedding(ids.to("meta"), qweight, scales)
    with pytest.raises(ValueError, match="int8_embedding: scales is on meta"):
        fusedops.int8_embedding(ids, qweight, scales.to("meta"))
    with pytest.raises(ValueError, match="int8_embedding: pos_weight is on meta"):
        fusedops.int8_embedding(ids, qweight, scales, pos_weight=pos_weight.to("meta"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only build's message")
def test_cuda_tensors_without_cuda_build(table):
    # On a CPU-only machine no CUDA tensor can be made, but the dispatch decision is checked.
    from fusedops._backend import resolve_backend
    from fusedops.ops.int8_embedding import BACKENDS, OP

    cuda = torch.device("cuda")
    if torch._C._dispatch_has_kernel_for_dispatch_key("fusedops::int8_embedding_fwd", "CUDA"):
        assert resolve_backend(OP, cuda, BACKENDS) == "cpp"
    else:
        with pytest.raises(RuntimeError, match=r"int8_embedding: fusedops\._C was built without"):
            resolve_backend(OP, cuda, BACKENDS)
    with fusedops.use_backend("reference"):
        assert resolve_backend(OP, cuda, BACKENDS) == "reference"


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("which", ["scales", "pos_weight"])
def test_inference_only(table, backend, which):
    ids, qweight, scales, pos_weight = table
    tensors = {"scales": scales.clone(), "pos_weight": pos_weight.clone()}
    tensors[which].requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"int8_embedding is inference-only: {which} requires"):
        _call(backend, ids, qweight, tensors["scales"], pos_weight=tensors["pos_weight"])
    with torch.no_grad():  # no graph is being built: fine
        out = _call(backend, ids, qweight, tensors["scales"], pos_weight=tensors["pos_weight"])
    assert not out.requires_grad
    with torch.inference_mode():
        again = _call(backend, ids, qweight, tensors["scales"], pos_weight=tensors["pos_weight"])
    assert torch.equal(again, out)
    want = _call("reference", ids, qweight, scales, pos_weight=pos_weight)
    assert torch.allclose(out, want, atol=1e-6, rtol=1e-6)
