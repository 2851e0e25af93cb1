"""Int8Embedding: construction from float embeddings, memory, inference-only rules, saving."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_close, backend_cases
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import fusedops
from fusedops import reference
from fusedops.nn import FusedEmbedding, Int8Embedding


def _oracle(module, ids, **kwargs):
    """fused_embedding of the module's exactly dequantized table in fp64."""
    table = reference.dequantize_embedding(module.qweight, module.scales, torch.float64)
    pw = module.pos_weight
    return reference.fused_embedding(
        ids,
        table,
        scale=module.scale,
        pos_weight=None if pw is None else pw.double(),
        sinusoidal=module.sinusoidal,
        sinusoid_base=module.sinusoid_base,
        **kwargs,
    )


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("group_size", [None, 4])
def test_from_nn_embedding(backend, device, group_size):
    torch.manual_seed(0)
    emb = nn.Embedding(20, 12, padding_idx=3).to(device)
    m = Int8Embedding.from_embedding(emb, group_size=group_size)
    assert (
        m.padding_idx == 3 and m.out_dtype == torch.float32 and m.group_size == (group_size or 12)
    )
    assert list(m.parameters()) == [] and {n for n, _ in m.named_buffers()} == {"qweight", "scales"}
    ids = torch.randint(0, 20, (2, 9), device=device)
    with fusedops.use_backend(backend):
        out = m(ids)
    assert_close(out, _oracle(m, ids))
    step = m.scales.repeat_interleave(m.group_size, dim=-1)[ids]  # [2, 9, 12]
    assert bool(((out - emb(ids)).abs() <= step * (0.5 + 2**-10)).all())
    assert torch.equal(m.dequantize(), reference.dequantize_embedding(m.qweight, m.scales))


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_from_fused_embedding_keeps_scale_and_positions(backend, device):
    torch.manual_seed(1)
    tok, pos = nn.Embedding(30, 16).to(device), nn.Embedding(64, 16).to(device)
    fused = FusedEmbedding.from_embedding(tok, pos_embedding=pos, scale="sqrt_dim")
    m = Int8Embedding.from_embedding(fused, group_size=8, scale_dtype=torch.bfloat16)
    assert m.scale == math.sqrt(16) and m.scales.dtype == torch.bfloat16
    assert (
        torch.equal(m.pos_weight, pos.weight) and m.pos_weight.data_ptr() != pos.weight.data_ptr()
    )
    assert not m.pos_weight.requires_grad  # a buffer snapshot, not the trainable parameter
    ids = torch.randint(0, 30, (3, 7), device=device)
    with fusedops.use_backend(backend):
        out = m(ids, position_offset=5)
        explicit = m(ids, positions=torch.arange(5, 12, device=device))
    assert_close(out, _oracle(m, ids, position_offset=5))
    assert torch.equal(out, explicit)
    with torch.no_grad():
        float_out = fused(ids, position_offset=5)
    assert_close(out, float_out, atol_extra=4 * 0.5 * float(m.scales.float().max()) * 1.01)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_from_sinusoidal_fused_embedding(backend, device, dtype):
    fused = FusedEmbedding(50, 24, sinusoidal=True, sinusoid_base=500.0, scale=2.0, dtype=dtype)
    m = Int8Embedding.from_embedding(fused.to(device))
    assert m.sinusoidal and m.sinusoid_base == 500.0 and m.pos_weight is None
    assert m.out_dtype == dtype  # follows the source table
    ids = torch.randint(0, 50, (2, 6), device=device)
    with fusedops.use_backend(backend):
        out = m(ids, position_offset=100)
    assert out.dtype == dtype
    assert_close(out, _oracle(m, ids, position_offset=100), atol_extra=1e-5)


def test_memory_is_at_least_3_9x_smaller_per_row():
    for dim in (256, 384, 768, 1024, 4096):
        emb = nn.Embedding(1000, dim)
        m = Int8Embedding.from_embedding(emb)
        fp32_bytes = emb.weight.numel() * emb.weight.element_size()
        assert m.memory_bytes() == 1000 * dim + 1000 * 4  # int8 table + one fp32 scale per row
        assert fp32_bytes / m.memory_bytes() >= 3.9, dim
    # Groups of 128 with fp16 scales stay close: 4 / (1 + 2 / 128) = 3.94x.
    m = Int8Embedding.from_embedding(
        nn.Embedding(1000, 768), group_size=128, scale_dtype=torch.float16
    )
    assert 1000 * 768 * 4 / m.memory_bytes() >= 3.9
    fused = FusedEmbedding(100, 256, num_positions=10)
    assert Int8Embedding.from_embedding(fused).memory_bytes() == 100 * 256 + 100 * 4 + 10 * 256 * 4


def test_inference_only_semantics():
    m = Int8Embedding.from_embedding(nn.Embedding(10, 8))
    with pytest.raises(RuntimeError, match="Int8Embedding is inference-only"):
        m.requires_grad_()
    assert m.requires_grad_(False) is m
    ids = torch.randint(0, 10, (2, 3))
    # Inside a model that trains other layers, the embedding is frozen: training works.
    model = nn.Sequential(m, nn.Linear(8, 2)).train()
    model(ids).sum().backward()
    assert model[1].weight.grad is not None and m(ids).requires_grad is False
    # Asking for the table's gradient through a buffer fails loudly, not silently.
    m.scales.requires_grad_(True)
    with pytest.raises(RuntimeError, match="int8_embedding is inference-only: scales requires"):
        m(ids)
    with pytest.raises(RuntimeError, match="floating point"):
        m.qweight.requires_grad_(True)  # torch itself refuses int8 gradients


def _assert_same_module(a, b, ids):
    assert a.config() == b.config()
    for (name_a, ta), (name_b, tb) in zip(
        a.state_dict().items(), b.state_dict().items(), strict=True
    ):
        assert name_a == name_b and ta.dtype == tb.dtype and torch.equal(ta, tb), name_a
    assert torch.equal(a(ids), b(ids))


def _modules():
    torch.manual_seed(4)
    fused = FusedEmbedding(40, 32, padding_idx=0, num_positions=16, scale=1.5, dtype=torch.bfloat16)
    return [
        Int8Embedding.from_embedding(nn.Embedding(40, 32)),
        Int8Embedding.from_embedding(fused, group_size=8, scale_dtype=torch.float16),
        Int8Embedding.from_embedding(FusedEmbedding(40, 32, sinusoidal=True), group_size=16),
    ]


def _fresh(module):
    config = module.config()
    config.update({k: getattr(torch, config[k]) for k in ("scale_dtype", "pos_dtype", "out_dtype")})
    return Int8Embedding(**config)


def test_state_dict_round_trip_bit_exact():
    ids = torch.randint(0, 40, (2, 16))
    for m in _modules():
        fresh = _fresh(m)
        assert not torch.equal(fresh(ids), m(ids))
        fresh.load_state_dict(m.state_dict())
        _assert_same_module(m, fresh, ids)


def test_torch_save_load_weights_only(tmp_path):
    ids = torch.randint(0, 40, (2, 16))
    for i, m in enumerate(_modules()):
        path = tmp_path / f"m{i}.pt"
        torch.save(m.state_dict(), path)
        fresh = _fresh(m)
        fresh.load_state_dict(torch.load(path, weights_only=True))
        _assert_same_module(m, fresh, ids)


def test_safetensors_round_trip(tmp_path):
    pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    ids = torch.randint(0, 40, (2, 16))
    for i, m in enumerate(_modules()):
        path = tmp_path / f"m{i}.safetensors"
        m.save_safetensors(path)
        loaded = Int8Embedding.load_safetensors(path)
        assert loaded.qweight.device.type == "cpu" and loaded.out_dtype == m.out_dtype
        _assert_same_module(m, loaded, ids)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"was not written by Int8Embedding\.save_safetensors"):
        Int8Embedding.load_safetensors(tmp_path / "other.safetensors")


def test_load_state_dict_rejects_other_layouts():
    per_row = Int8Embedding.from_embedding(nn.Embedding(10, 8))
    grouped = Int8Embedding(10, 8, group_size=4)
    with pytest.raises(RuntimeError, match="size mismatch for scales"):
        grouped.load_state_dict(per_row.state_dict())


def test_constructor_repr_and_bad_arguments():
    m = Int8Embedding(11, 6, padding_idx=-1, num_positions=9, scale="sqrt_dim", group_size=3)
    assert m.padding_idx == 10 and m.scales.shape == (11, 2) and m.pos_weight.shape == (9, 6)
    text = repr(m)
    for part in (
        "11, 6",
        "padding_idx=10",
        "group_size=3",
        "scale_dtype=float32",
        "scale=2.44949",
        "num_positions=9",
        "out_dtype=float32",
    ):
        assert part in text, (part, text)
    assert "per-row" in repr(Int8Embedding(4, 4)) and "sinusoidal=True" in repr(
        Int8Embedding(4, 4, sinusoidal=True)
    )
    assert torch.equal(Int8Embedding(4, 4)(torch.tensor([[1, 2]])), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="Int8Embedding: group_size 5 does not divide"):
        Int8Embedding(4, 8, group_size=5)
    with pytest.raises(ValueError, match="Int8Embedding: num_positions and sinusoidal"):
        Int8Embedding(4, 8, num_positions=3, sinusoidal=True)
    with pytest.raises(TypeError, match="Int8Embedding: out_dtype"):
        Int8Embedding(4, 8, out_dtype=torch.float64)
    with pytest.raises(TypeError, match=r"expected nn\.Embedding or fusedops\.nn\.FusedEmbedding"):
        Int8Embedding.from_embedding(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="max_norm"):
        Int8Embedding.from_embedding(nn.Embedding(4, 4, max_norm=1.0))
    with pytest.raises(ValueError, match="Int8Embedding: group_size 3 does not divide"):
        Int8Embedding.from_embedding(nn.Embedding(4, 8), group_size=3)


def _graphs_with_op(counter) -> int:
    """How many of the graphs ``counter`` compiled call the INT8 extension op."""
    return sum(
        any(
            node.op == "call_function" and "int8_embedding_fwd" in str(node.target)
            for node in graph.graph.nodes
        )
        for graph in counter.graphs
    )


@pytest.mark.parametrize("dynamic", [False, True])
def test_module_under_torch_compile(dynamic):
    """fullgraph compiles of a learned-position and a sinusoid module, static and dynamic
    shapes: the graph holds the extension op and the output equals eager. torch._dynamo.reset()
    first, so the frame compiles here and a cached or skipped frame cannot pass as compiled.
    With dynamic shapes one graph serves two sequence lengths."""
    torch.manual_seed(0)
    modules = [
        Int8Embedding.from_embedding(FusedEmbedding(30, 16, num_positions=20, scale=2.0)),
        Int8Embedding.from_embedding(
            FusedEmbedding(30, 16, sinusoidal=True, scale="sqrt_dim"), group_size=8
        ),
    ]
    for m in modules:
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(m, backend=counter, fullgraph=True, dynamic=dynamic)
        for seq in (7, 5):
            ids = torch.randint(0, 30, (2, seq))
            assert torch.equal(compiled(ids, position_offset=3), m(ids, position_offset=3))
        assert _graphs_with_op(counter) == (1 if dynamic else 2), m


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"group_size": 4.0}, TypeError, "group_size must be an int or None, got 4.0"),
        ({"group_size": True}, TypeError, "group_size must be an int or None, got True"),
        ({"group_size": 0}, ValueError, "group_size must be >= 1, got 0"),
        ({"num_embeddings": 10.0}, TypeError, "num_embeddings must be an int, got 10.0"),
        ({"embedding_dim": 8.0}, TypeError, "embedding_dim must be an int, got 8.0"),
        ({"embedding_dim": 0}, ValueError, "embedding_dim must be >= 1, got 0"),
        ({"num_positions": 3.0}, TypeError, "num_positions must be an int or None, got 3.0"),
        ({"padding_idx": 1.0}, TypeError, "padding_idx must be an int or None"),
        ({"scale": "sqrt"}, ValueError, 'scale must be a number or "sqrt_dim"'),
        ({"scale": float("nan")}, ValueError, "scale must be a finite number"),
        ({"sinusoid_base": -1.0}, ValueError, "sinusoid_base must be a finite number > 0"),
    ],
)
def test_constructor_arguments_are_checked(kwargs, exc, pattern):
    args = {"num_embeddings": 10, "embedding_dim": 8, **kwargs}
    with pytest.raises(exc, match=f"Int8Embedding: {pattern}"):
        Int8Embedding(**args)


def test_numpy_integers_are_accepted():
    m = Int8Embedding(np.int64(10), np.int32(8), group_size=np.int64(4), num_positions=np.int16(3))
    assert (m.num_embeddings, m.embedding_dim, m.group_size) == (10, 8, 4)
    assert type(m.num_embeddings) is int and m.pos_weight.shape == (3, 8)
    out = m(torch.tensor([[1, 2]]))
    assert out.shape == (1, 2, 8) and bool((out == 0).all())
    emb = nn.Embedding(10, 8)
    q = Int8Embedding.from_embedding(emb, group_size=np.int64(4))
    assert q.group_size == 4 and torch.equal(
        q.qweight, fusedops.quantize_embedding(emb.weight, group_size=4)[0]
    )
