"""int8_embedding: the fused dequantizing lookup against the reference on every backend.

Two oracles: the fp64 one (``reference.fused_embedding`` on the table dequantized exactly in
fp64) with the output dtype's tolerance, and ``reference.int8_embedding`` (same fp32 roundings
as the kernels: one for the dequantized value, multiply then add), which the C++ kernel must
match bit for bit except for the sinusoid's sin/cos.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, POS_MODES, assert_close, backend_cases, pos_kwargs, sinusoid_atol
from torch._dynamo.testing import CompileCounterWithBackend

import fusedops
from fusedops import reference

# (leading shape, S, D, V, group_size): D = 1, a prime D, odd shapes, a wide row.
SHAPES = [
    ((2,), 7, 1, 11, None),
    ((3,), 5, 3, 17, None),
    ((1,), 1, 127, 31, None),
    ((2, 3), 4, 48, 50, 16),
    ((), 13, 768, 97, 128),
    ((1,), 3, 4096, 10, 64),
]


def _inputs(lead, seq, dim, vocab, group_size, device, *, id_dtype=torch.int64, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (*lead, seq), generator=gen).to(id_dtype)
    weight = torch.randn(vocab, dim, generator=gen)
    pos_weight = torch.randn(40, dim, generator=gen).to(kw.get("pos_dtype", torch.float32))
    qweight, scales = fusedops.quantize_embedding(
        weight, group_size=group_size, scale_dtype=kw.get("scale_dtype", torch.float32)
    )
    return ids.to(device), qweight.to(device), scales.to(device), pos_weight.to(device)


def _run(backend, *args, **kwargs):
    with fusedops.use_backend(backend):
        return fusedops.int8_embedding(*args, **kwargs)


def _oracle64(ids, qweight, scales, *, pos_weight=None, out_dtype=None, **kwargs):
    """fused_embedding of the exactly dequantized table, in fp64."""
    table = reference.dequantize_embedding(qweight, scales, torch.float64)  # [V, D] exact
    pw = None if pos_weight is None else pos_weight.double()
    return reference.fused_embedding(ids, table, pos_weight=pw, **kwargs)


def _check(out, ids, qweight, scales, backend, mode, max_pos, **kwargs):
    """``out`` against both oracles (bit-exact to the fp32 reference for the C++ kernel)."""
    out_dtype = kwargs.get("out_dtype", torch.float32)
    assert out.dtype == out_dtype and out.shape == (*ids.shape, qweight.shape[1])
    assert out.device == qweight.device
    assert_close(
        out,
        _oracle64(ids, qweight, scales, **kwargs),
        dtype=out_dtype,
        atol_extra=sinusoid_atol(mode, max_pos),
    )
    same_roundings = reference.int8_embedding(ids, qweight, scales, **kwargs)
    if mode != "sinusoid":
        assert torch.equal(out, same_roundings), (
            f"{backend}: not bit-identical to reference.int8_embedding "
            f"(max diff {(out.double() - same_roundings.double()).abs().max().item():.3g})"
        )


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,seq,dim,vocab,group_size", SHAPES)
@pytest.mark.parametrize("mode", POS_MODES)
def test_forward_matches_reference(
    backend, device, out_dtype, lead, seq, dim, vocab, group_size, mode
):
    ids, qweight, scales, pos_weight = _inputs(lead, seq, dim, vocab, group_size, device)
    kwargs = {"scale": 1.7, "position_offset": 3, "out_dtype": out_dtype}
    kwargs.update(pos_kwargs(mode, pos_weight))
    out = _run(backend, ids, qweight, scales, **kwargs)
    _check(out, ids, qweight, scales, backend, mode, seq + 3, **kwargs)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("mode", ["learned", "sinusoid"])
def test_explicit_positions(backend, device, id_dtype, mode):
    ids, qweight, scales, pos_weight = _inputs((3,), 6, 20, 13, 5, device, id_dtype=id_dtype)
    gen = torch.Generator().manual_seed(1)
    positions = torch.randint(0, 40, (3, 6), generator=gen).to(id_dtype).to(device)
    kwargs = {"scale": 0.5, "positions": positions, **pos_kwargs(mode, pos_weight)}
    out = _run(backend, ids, qweight, scales, **kwargs)
    _check(out, ids, qweight, scales, backend, mode, 40, **kwargs)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
def test_positions_broadcast_and_offset(backend, device, id_dtype):
    ids, qweight, scales, pos_weight = _inputs((4,), 5, 24, 9, 8, device, id_dtype=id_dtype)
    positions = torch.tensor([[7, 3, 0, 9, 1]], device=device)  # Hugging Face's [1, S]
    kwargs = {"pos_weight": pos_weight, "positions": positions}
    _check(
        _run(backend, ids, qweight, scales, **kwargs),
        ids,
        qweight,
        scales,
        backend,
        "",
        9,
        **kwargs,
    )
    kwargs = {"pos_weight": pos_weight, "position_offset": 35}  # decode: positions 35..39
    _check(
        _run(backend, ids, qweight, scales, **kwargs),
        ids,
        qweight,
        scales,
        backend,
        "",
        40,
        **kwargs,
    )


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pos_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_scales_and_pos_table(backend, device, scale_dtype, pos_dtype):
    ids, qweight, scales, pos_weight = _inputs(
        (2,), 9, 32, 21, 16, device, scale_dtype=scale_dtype, pos_dtype=pos_dtype
    )
    for out_dtype in DTYPES:
        kwargs = {"scale": 2.0, "pos_weight": pos_weight, "out_dtype": out_dtype}
        out = _run(backend, ids, qweight, scales, **kwargs)
        _check(out, ids, qweight, scales, backend, "learned", 9, **kwargs)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
@pytest.mark.parametrize("padding_idx", [0, 4, -1])
def test_padding_idx_accepted_forward_unchanged(backend, device, padding_idx):
    ids, qweight, scales, _ = _inputs((2,), 8, 16, 6, None, device)
    ids[0, :3] = padding_idx % 6
    out = _run(backend, ids, qweight, scales, padding_idx=padding_idx)
    assert torch.equal(out, _run(backend, ids, qweight, scales))
    _check(out, ids, qweight, scales, backend, "none", 0)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_empty_and_single_token(backend, device):
    _, qweight, scales, pos_weight = _inputs((1,), 1, 8, 5, None, device)
    ids = torch.empty(2, 0, dtype=torch.int64, device=device)
    out = _run(backend, ids, qweight, scales, pos_weight=pos_weight, out_dtype=torch.bfloat16)
    assert out.shape == (2, 0, 8) and out.dtype == torch.bfloat16
    ids = torch.tensor([4], device=device)
    out = _run(backend, ids, qweight, scales, sinusoidal=True, position_offset=7)
    _check(out, ids, qweight, scales, backend, "sinusoid", 8, sinusoidal=True, position_offset=7)


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_zero_rows_give_exact_zeros(backend, device):
    weight = torch.randn(6, 12)
    weight[2] = 0.0
    qweight, scales = fusedops.quantize_embedding(weight, group_size=4)
    ids = torch.tensor([[2, 2, 1]], device=device)
    out = _run(backend, ids, qweight.to(device), scales.to(device), scale=3.0)
    assert bool((out[0, :2] == 0).all()) and not bool(torch.isnan(out).any())


@pytest.mark.parametrize("backend,device", backend_cases(triton=False))
def test_non_contiguous_inputs(backend, device):
    ids, qweight, scales, _ = _inputs((4,), 6, 16, 9, 4, device)
    ids_t = ids.t()  # [6, 4] non-contiguous
    q_wide = torch.zeros(9, 32, dtype=torch.int8, device=device)
    q_wide[:, ::2] = qweight  # a strided [9, 16] view
    out = _run(backend, ids_t, q_wide[:, ::2], scales, sinusoidal=True)
    _check(out, ids_t.contiguous(), qweight, scales, backend, "sinusoid", 4, sinusoidal=True)


def test_close_to_the_float_table():
    # The point of the format: per-row int8 tracks the fp32 lookup to within half a step.
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(100, 64, generator=gen)
    ids = torch.randint(0, 100, (3, 10), generator=gen)
    qweight, scales = fusedops.quantize_embedding(weight)
    with torch.no_grad():
        out = fusedops.int8_embedding(ids, qweight, scales, scale=8.0)
    exact = weight[ids] * 8.0
    bound = 8.0 * scales[ids] * (0.5 + 2**-10)  # [..., 1]
    assert bool(((out - exact).abs() <= bound).all())


def test_triton_backend_refuses_clearly():
    ids, qweight, scales, _ = _inputs((1,), 3, 8, 5, None, "cpu")
    with pytest.raises(RuntimeError, match="int8_embedding: there is no Triton kernel"):
        _run("triton", ids, qweight, scales)


def test_auto_runs_the_extension_op_on_cpu():
    ids, qweight, scales, _ = _inputs((1,), 3, 8, 5, None, "cpu")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fusedops::int8_embedding_fwd", "CPU")
    assert torch.equal(_run("auto", ids, qweight, scales), _run("cpp", ids, qweight, scales))


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_opcheck_extension_op(mode, out_dtype):
    ids, qweight, scales, pos_weight = _inputs((2,), 5, 12, 9, 4, "cpu")
    positions = torch.randint(0, 40, (2, 5)) if mode else None
    for pos in (None, positions):
        torch.library.opcheck(
            torch.ops.fusedops.int8_embedding_fwd.default,
            (
                ids,
                qweight,
                scales,
                1.5,
                pos_weight if mode == 1 else None,
                pos,
                2,
                mode,
                1e4,
                out_dtype,
            ),
        )


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    """One fullgraph compile (aot_eager, dynamo reset first so it really compiles here) of a
    learned and a sinusoid lookup, the scale a traced input (a SymFloat with dynamic shapes):
    the graph calls the extension op twice and matches eager; with dynamic shapes one graph
    serves two sequence lengths."""
    # Clones: no tensor is a view, whose base's sizes dynamo would guard on as well.
    ids, qweight, scales, pos_weight = (t.clone() for t in _inputs((2,), 5, 12, 9, 4, "cpu"))

    def fn(ids, qweight, scales, pos_weight, scale):
        out = fusedops.int8_embedding(ids, qweight, scales, scale=scale, pos_weight=pos_weight)
        sin = fusedops.int8_embedding(
            ids, qweight, scales, sinusoidal=True, out_dtype=torch.bfloat16
        )
        return out + sin.float()

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=dynamic)
    for seq in (5, 3):
        part = ids[:, :seq].clone()
        out = compiled(part, qweight, scales, pos_weight, 2.0)
        assert torch.equal(out, fn(part, qweight, scales, pos_weight, 2.0))
        expected = _oracle64(part, qweight, scales, scale=2.0, pos_weight=pos_weight)
        expected = (
            expected
            + reference.int8_embedding(
                part, qweight, scales, sinusoidal=True, out_dtype=torch.bfloat16
            ).double()
        )
        assert_close(out, expected, atol_extra=1e-5)
    calls = [
        sum("int8_embedding_fwd" in str(node.target) for node in graph.graph.nodes)
        for graph in counter.graphs
    ]
    assert [c for c in calls if c] == [2] * (1 if dynamic else 2), calls
