"""FactorizedEmbedding: forward and gradients against the reference on every backend and dtype,
construction from a trained table, memory arithmetic, dense view and errors, saving."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, assert_close, backend_cases
from safetensors.torch import load_file, save_file
from torch import nn

import fusedops
from fusedops import reference
from fusedops.factorization import token_frequencies
from fusedops.nn.factorized_embedding import FactorizedEmbedding

V, D, R, K, P = 29, 24, 5, 4, 11


def _module(dtype=torch.float32, *, pos="learned", padding_idx=None, seed=0):
    torch.manual_seed(seed)
    module = FactorizedEmbedding(
        V,
        D,
        R,
        num_hot=K,
        padding_idx=padding_idx,
        scale=1.5,
        num_positions=P if pos == "learned" else None,
        sinusoidal=pos == "sinusoid",
        dtype=dtype,
    )
    module.hot_ids = torch.tensor([7, 0, 23, 12])
    module.rebuild_hot_slots()
    return module


def _oracle(module, ids, **kwargs):
    """The reference in fp64 on the module's parameters, with fp64 leaves for gradients."""
    leaves = {name: p.detach().double().requires_grad_() for name, p in module.named_parameters()}
    out = reference.factorized_embedding(
        ids,
        leaves["a"],
        leaves["b"],
        hot_ids=module.hot_ids if module.num_hot else None,
        hot_rows=leaves.get("hot_rows"),
        scale=module.scale,
        pos_weight=leaves.get("pos_weight"),
        sinusoidal=module.sinusoidal,
        padding_idx=module.padding_idx,
        **kwargs,
    )
    return out, leaves


@pytest.mark.parametrize("backend,device", backend_cases(reference=False))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", ["learned", "sinusoid"])
def test_forward_and_grads_match_reference(backend, device, dtype, pos):
    module = _module(dtype, pos=pos, padding_idx=12).to(device)
    ids = torch.tensor([[7, 3, 0, 12, 28, 23, 5], [1, 12, 7, 9, 9, 2, 17]], device=device)
    with fusedops.use_backend(backend):
        out = module(ids, position_offset=3)
        grad = torch.randn_like(out)
        params = list(module.parameters())
        grads = torch.autograd.grad(out, params, grad)
    want, leaves = _oracle(module.cpu(), ids.cpu(), position_offset=3)
    assert out.shape == (2, 7, D) and out.dtype == dtype
    assert_close(out, want, rtol_scale=4, atol_extra=1e-3 if pos == "sinusoid" else 0.0)
    want_grads = torch.autograd.grad(want, list(leaves.values()), grad.double().cpu())
    names = [name for name, _ in module.named_parameters()]
    assert names == (["a", "b", "hot_rows", "pos_weight"] if pos == "learned" else names)
    for name, g, w in zip(names, grads, want_grads, strict=True):
        assert g.dtype == dtype
        assert_close(g, w, rtol_scale=8, atol_extra=1e-4 * w.abs().max().item(), msg=name)
    # The padding token (12, hot slot 3) gets no gradient; an absent cold token neither.
    assert torch.all(grads[2][3] == 0) and torch.all(grads[0][4] == 0)


def test_positions_and_no_positional_term():
    module = FactorizedEmbedding(V, D, R, num_hot=0)
    ids = torch.randint(0, V, (3, 5))
    out = module(ids)
    want, _ = _oracle(module, ids)
    assert_close(out, want, rtol_scale=4)
    assert module.hot_slots is None and module.hot_rows is None
    learned = _module()
    positions = torch.tensor([[4, 0, 10, 2, 2]])
    out = learned(ids, positions=positions)
    want, _ = _oracle(learned, ids, positions=positions)
    assert_close(out, want, rtol_scale=4)


def test_from_embedding_serves_the_fitted_table():
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(V, R, generator=gen) @ torch.randn(R, D, generator=gen)  # rank R
    hot = [5, 11, 2]
    table[hot] = torch.randn(3, D, generator=gen) * 4
    emb = nn.Embedding(V, D, padding_idx=9)
    with torch.no_grad():
        emb.weight.copy_(table)
        emb.weight[9] = 0
    pos = nn.Embedding(P, D)
    module = FactorizedEmbedding.from_embedding(
        emb, rank=R, hot_tokens=torch.tensor(hot), scale="sqrt_dim", pos_weight=pos
    )
    assert module.padding_idx == 9 and module.rank == R and module.num_hot == 3
    assert module.scale == pytest.approx(math.sqrt(D))
    assert module.hot_ids.tolist() == hot and module.hot_slots[hot].tolist() == [0, 1, 2]
    assert torch.equal(module.hot_rows, emb.weight[hot]) and torch.equal(
        module.a[9], torch.zeros(R)
    )
    assert module.pos_weight is not pos.weight and torch.equal(module.pos_weight, pos.weight)
    assert module.fit_info.rank == R and module.fit_info.relative_error < 1e-6
    dense = module.to_dense()
    assert dense.shape == (V, D) and not dense.requires_grad
    assert torch.allclose(dense, emb.weight, atol=2e-5)
    ids = torch.randint(0, V, (2, 6))
    out = module(ids)
    want = emb.weight[ids] * math.sqrt(D) + pos.weight[:6]
    assert_close(out, want, atol_extra=1e-4)
    # A snapshot: changing the source does not reach the module.
    with torch.no_grad():
        emb.weight.add_(1)
    assert torch.equal(module.to_dense(), dense)


def test_from_embedding_energy_tensor_and_reconstruction_error():
    torch.manual_seed(4)
    q1, _ = torch.linalg.qr(torch.randn(V, D))
    table = (q1 * torch.logspace(0, -3, D)) @ torch.linalg.qr(torch.randn(D, D))[0]  # [V, D]
    module = FactorizedEmbedding.from_embedding(table, energy=0.99, hot_tokens=[3, 4])
    assert module.padding_idx is None
    assert module.fit_info.energy >= 0.99 and 1 <= module.rank < D
    smaller = FactorizedEmbedding.from_embedding(table, rank=module.rank - 1, hot_tokens=[3, 4])
    assert smaller.fit_info.energy < 0.99  # the smallest rank that keeps 99%
    err = module.reconstruction_error(table)
    assert err.relative == pytest.approx(module.fit_info.relative_error, rel=1e-4)
    assert err.weighted is None
    counts = token_frequencies([3, 3, 4, 10, 10, 10], V)
    err = module.reconstruction_error(table, counts)
    diff = (module.to_dense().double() - table.double()).square().sum(1)
    norm = table.double().square().sum(1)
    want = math.sqrt((3 * diff[10]) / (2 * norm[3] + norm[4] + 3 * norm[10]))  # hot: exact
    assert err.weighted == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match=r"weight must be \[29, 24\]"):
        module.reconstruction_error(table[:5])


def test_memory_bytes_arithmetic():
    for dtype in DTYPES:
        size = torch.empty(0, dtype=dtype).element_size()
        module = _module(dtype)
        want = (V * R + R * D + K * D + P * D) * size + K * 8  # + int64 hot ids
        assert module.memory_bytes() == want
        assert module.dense_bytes() == (V * D + P * D) * size
    plain = FactorizedEmbedding(V, D, R)
    assert plain.memory_bytes() == (V * R + R * D) * 4 and plain.dense_bytes() == V * D * 4


def test_state_dict_round_trip_rebuilds_hot_slots(tmp_path):
    module = _module(torch.bfloat16, padding_idx=3)
    state = module.state_dict()
    assert set(state) == {"a", "b", "hot_rows", "pos_weight", "hot_ids"}  # no hot_slots
    fresh = FactorizedEmbedding(
        V, D, R, num_hot=K, padding_idx=3, scale=1.5, num_positions=P, dtype=torch.bfloat16
    )
    assert fresh.hot_ids.tolist() == [0, 1, 2, 3]
    fresh.load_state_dict(state)
    assert fresh.hot_ids.tolist() == [7, 0, 23, 12]
    assert torch.equal(fresh.hot_slots, module.hot_slots)
    ids = torch.randint(0, V, (3, 8))
    assert torch.equal(fresh(ids), module(ids))
    for name, t in fresh.state_dict().items():
        assert torch.equal(t, state[name]) and t.dtype == state[name].dtype, name
    # safetensors: the state dict as written and read back, bit for bit.
    path = tmp_path / "fact.safetensors"
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    loaded = load_file(str(path))
    again = FactorizedEmbedding(
        V, D, R, num_hot=K, padding_idx=3, scale=1.5, num_positions=P, dtype=torch.bfloat16
    )
    again.load_state_dict(loaded)
    assert torch.equal(again(ids), module(ids))
    assert torch.equal(again.hot_slots, module.hot_slots)
    # Inside a parent module the hook still rebuilds the map.
    parent = nn.Sequential(again)
    state = {f"0.{k}": v for k, v in module.state_dict().items()}
    state["0.hot_ids"] = torch.tensor([1, 2, 3, 4])
    parent.load_state_dict(state)
    assert again.hot_slots[:6].tolist() == [-1, 0, 1, 2, 3, -1]


def test_constructor_init_and_repr():
    module = FactorizedEmbedding(V, D, R, num_hot=3, padding_idx=1, scale="sqrt_dim")
    assert torch.equal(module.a[1], torch.zeros(R))
    assert torch.equal(module.hot_rows[1], torch.zeros(D))  # padding token 1 is hot slot 1
    assert module.hot_rows[0].abs().sum() > 0
    std = module.to_dense()[5:].std().item()
    assert 0.5 < std < 1.5  # rows of about unit variance, like nn.Embedding
    text = repr(module)
    assert f"{V}, {D}, rank={R}, num_hot=3, padding_idx=1, scale={math.sqrt(D):g}" in text
    assert "dtype=float32" in text
    sin = FactorizedEmbedding(V, D, R, sinusoidal=True, dtype=torch.float16)
    assert "sinusoidal=True" in repr(sin) and "num_hot" not in repr(sin)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"rank": 0}, ValueError, "rank must be an int >= 1"),
        ({"num_hot": V + 1}, ValueError, "num_hot 30 exceeds"),
        ({"num_hot": -1}, ValueError, "num_hot must be an int >= 0"),
        ({"num_positions": 4, "sinusoidal": True}, ValueError, "num_positions and sinusoidal"),
        ({"dtype": torch.float64}, TypeError, "dtype must be"),
        ({"padding_idx": V}, ValueError, "padding_idx 29 outside"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    args = {"rank": R, **kwargs}
    with pytest.raises(error, match=f"FactorizedEmbedding: {match}"):
        FactorizedEmbedding(V, D, **args)


def test_from_embedding_errors():
    table = torch.randn(V, D)
    with pytest.raises(ValueError, match="max_norm"):
        FactorizedEmbedding.from_embedding(nn.Embedding(V, D, max_norm=1.0), rank=2)
    with pytest.raises(TypeError, match=r"expected nn\.Embedding or a"):
        FactorizedEmbedding.from_embedding([[1.0]], rank=1)
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        FactorizedEmbedding.from_embedding(table.double(), rank=2)
    with pytest.raises(ValueError, match="exclusive"):
        FactorizedEmbedding.from_embedding(table, rank=2, pos_weight=table, sinusoidal=True)
    with pytest.raises(ValueError, match="pos_weight dim"):
        FactorizedEmbedding.from_embedding(table, rank=2, pos_weight=torch.randn(4, 3))
    with pytest.raises(ValueError, match="fit_factorization: hot_ids must be distinct"):
        FactorizedEmbedding.from_embedding(table, rank=2, hot_tokens=[1, 1])
    with pytest.raises(ValueError, match="exactly one of rank and energy"):
        FactorizedEmbedding.from_embedding(table)
    with pytest.raises(ValueError, match=r"hot_rows must be \[2, 24\]"):
        FactorizedEmbedding.from_factors(table[:, :3], torch.randn(3, D), hot_ids=[1, 2])
    module = _module()
    module.hot_ids = torch.tensor([1, 1, 2, 3])
    with pytest.raises(ValueError, match="FactorizedEmbedding: hot_ids must be distinct"):
        module.rebuild_hot_slots()


def test_from_factors_shares_tensors():
    a, b = torch.randn(V, R), torch.randn(R, D)
    module = FactorizedEmbedding.from_factors(a, b, hot_ids=[4], hot_rows=torch.randn(1, D))
    assert module.a.data_ptr() == a.data_ptr() and module.b.data_ptr() == b.data_ptr()
    assert module.a.requires_grad and module.hot_slots[4].item() == 0
