"""apply_rotary / apply_rotary_varlen property tests: drawn shapes (0- and 1-sized dims), GQA,
partial rotary, both layouts, every cos/sin form, positions, strided views, in place or with
gradients, against the fp64 reference, on the C++ kernel and on Triton (the interpreter on
CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, KERNEL_CASES, assert_close, check_property, sizes
from hypothesis import strategies as st

import fusedops
from fusedops import reference

FORMS = ["cache", "cache-dup", "gathered", "gathered-dup", "gathered1", "gathered1-dup"]


def _duplicated(t: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Hugging Face's ``[..., R]`` form of ``[..., R/2]`` frequencies."""
    return t.repeat_interleave(2, dim=-1) if interleaved else torch.cat((t, t), dim=-1)


def _strided(shape: tuple[int, ...], pad: int, dtype, device, gen) -> torch.Tensor:
    """A random ``shape`` tensor whose rows are ``pad`` elements longer (stride(-1) == 1)."""
    base = torch.randn(*shape[:-1], shape[-1] + pad, generator=gen).to(dtype).to(device)
    return base[..., pad // 2 : pad // 2 + shape[-1]]


def _bshd(shape: tuple[int, ...], dtype, device, gen) -> torch.Tensor:
    """A random ``[B, H, S, D]`` tensor as the ``transpose(1, 2)`` view of ``[B, S, H, D]``."""
    batch, heads, seq, dim = shape
    x = torch.randn(batch, seq, heads, dim, generator=gen).to(dtype).to(device)
    return x.transpose(1, 2)


def _tables(case: dict, device: str, gen):
    """(cos, sin, kwargs) for the case's form: a cache indexed by positions or an offset, or
    values gathered per token; ``-dup`` = the duplicated ``[.., R]`` form; strided rows."""
    form, half = case["form"], case["rot"] // 2
    if form.startswith("cache"):
        rows: tuple[int, ...] = (case["max_pos"],)
    else:
        rows = (1 if form.startswith("gathered1") else case["batch"], case["seq"])
    angle = torch.rand(*rows, half, generator=gen, dtype=torch.float64) * 2 * math.pi
    tables = []
    for t in (angle.cos(), angle.sin()):
        t = _duplicated(t, case["interleaved"]) if form.endswith("dup") else t
        wide = torch.zeros(*t.shape[:-1], t.shape[-1] + case["row_pad"], dtype=torch.float64)
        wide[..., : t.shape[-1]] = t
        tables.append(wide.to(case["table_dtype"]).to(device)[..., : t.shape[-1]])
    kwargs = {"interleaved": case["interleaved"], "rotary_dim": case["rot"]}
    if form.startswith("cache"):
        if case["positions"] == "offset":
            kwargs["position_offset"] = case["offset"]
        else:
            seq = case["seq"]
            shape = {"full": (case["batch"], seq), "1s": (1, seq), "1d": (seq,)}
            pos = torch.randint(0, case["max_pos"], shape[case["positions"]], generator=gen)
            kwargs["positions"] = pos.to(case["pos_dtype"]).to(device)
    return (*tables, kwargs)


@st.composite
def rotations(draw) -> dict:
    batch, hq, seq = draw(sizes(3, 4, 4))
    half_dim = draw(st.one_of(st.integers(1, 24), st.sampled_from([32, 64])))
    form = draw(st.sampled_from(FORMS))
    case = {
        "batch": batch,
        "hq": hq,
        "hk": draw(st.one_of(st.none(), st.integers(1, 4))),
        "seq": seq,
        "dim": 2 * half_dim,
        "rot": 2 * draw(st.integers(1, half_dim)),
        "interleaved": draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)),
        "form": form,
        "q_layout": draw(st.sampled_from(["bhsd", "bshd"])),
        "row_pad": draw(st.integers(0, 4)),
        "inplace": draw(st.booleans()),
        "check_indices": draw(st.booleans()),  # in-range positions: the same result either way
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    case["table_dtype"] = draw(st.sampled_from([torch.float32, case["dtype"]]))
    if form.startswith("cache"):
        case["max_pos"] = seq + draw(st.integers(0, 20))
        case["positions"] = draw(st.sampled_from(["offset", "full", "1s", "1d"]))
        case["offset"] = draw(st.integers(0, case["max_pos"] - seq))
        case["pos_dtype"] = draw(st.sampled_from([torch.int32, torch.int64]))
        if case["max_pos"] == 0:  # an empty cache holds no position to index
            case["max_pos"], case["positions"] = 1, "offset"
    return case


def _reference64(q, k, cos, sin, **kwargs):
    return reference.apply_rotary(
        q.detach().double(),
        None if k is None else k.detach().double(),
        cos.double(),
        sin.double(),
        **kwargs,
    )


def _check_rotation(backend: str, device: str, case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, batch, seq, dim = case["dtype"], case["batch"], case["seq"], case["dim"]
    q_shape = (batch, case["hq"], seq, dim)
    if case["q_layout"] == "bshd":
        q = _bshd(q_shape, dtype, device, gen)
    else:
        q = _strided(q_shape, case["row_pad"], dtype, device, gen)
    k = None
    if case["hk"] is not None:
        k = _strided((batch, case["hk"], seq, dim), case["row_pad"], dtype, device, gen)
    cos, sin, kwargs = _tables(case, device, gen)
    want_q, want_k = _reference64(q, k, cos, sin, **kwargs)
    checked = {**kwargs, "check_indices": case["check_indices"]}
    inputs = [t.clone() for t in (q, k) if t is not None]

    if case["inplace"]:
        with fusedops.use_backend(backend):
            out_q, out_k = fusedops.apply_rotary(q, k, cos, sin, inplace=True, **checked)
        assert out_q is q and out_k is k, "inplace=True returns its inputs"
    else:
        leaves = [t.requires_grad_() for t in (q, k) if t is not None]
        with fusedops.use_backend(backend):
            out_q, out_k = fusedops.apply_rotary(q, k, cos, sin, **checked)
        for before, after in zip(inputs, leaves, strict=True):
            assert torch.equal(before, after), "inplace=False changed an input"
    assert out_q.dtype == dtype and (out_k is None) == (k is None)
    assert_close(out_q, want_q, dtype=dtype, msg="q")
    if k is not None:
        assert out_k.dtype == dtype
        assert_close(out_k, want_k, dtype=dtype, msg="k")
    if case["rot"] < dim:  # features [R, D) are copied bit for bit
        assert torch.equal(out_q[..., case["rot"] :], inputs[0][..., case["rot"] :])
    if case["inplace"]:
        return
    # Backward: the rotation by the negated angle, checked through autograd of the reference.
    outs = [o for o in (out_q, out_k) if o is not None]
    ups = [torch.randn(o.shape, generator=gen).to(dtype).to(device) for o in outs]
    grads = torch.autograd.grad(outs, leaves, ups)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference.apply_rotary(
        leaves64[0],
        leaves64[1] if k is not None else None,
        cos.double(),
        sin.double(),
        **kwargs,
    )
    ups64 = [u.double() for u in ups]
    want = torch.autograd.grad([o for o in ref if o is not None], leaves64, ups64)
    for got, ref_grad, name in zip(grads, want, ("q", "k"), strict=False):
        assert got.dtype == dtype and got.shape == ref_grad.shape, name
        assert_close(got, ref_grad, dtype=dtype, msg=f"grad {name}")


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_apply_rotary_matches_reference(backend, device):
    check_property(rotations(), _check_rotation, backend, device, interpreter_share=0.4)


@st.composite
def packed(draw) -> dict:
    lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    half_dim = draw(st.integers(1, 24))
    dtype = draw(st.sampled_from(DTYPES))
    return {
        "lengths": lengths,
        "heads": draw(st.integers(1, 3)),
        "dim": 2 * half_dim,
        "rot": 2 * draw(st.integers(1, half_dim)),
        "interleaved": draw(st.booleans()),
        "dtype": dtype,
        "table_dtype": draw(st.sampled_from([torch.float32, dtype])),
        "form": draw(st.sampled_from(["cache", "cache-dup"])),
        "max_pos": max(1, *lengths) + draw(st.integers(0, 5)),
        "cu_dtype": draw(st.sampled_from([torch.int32, torch.int64])),
        "layout": draw(st.sampled_from(["thd", "htd", "padded"])),
        "row_pad": draw(st.integers(1, 4)),
        "inplace": draw(st.booleans()),
        "check_indices": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "positions": "offset",
        "offset": 0,
    }


def _check_varlen(backend: str, device: str, case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, heads, dim = case["dtype"], case["heads"], case["dim"]
    total = sum(case["lengths"])
    if case["layout"] == "htd":  # [H, T, D].transpose(0, 1)
        x = torch.randn(heads, total, dim, generator=gen).to(dtype).to(device).transpose(0, 1)
    elif case["layout"] == "padded":
        x = _strided((total, heads, dim), case["row_pad"], dtype, device, gen)
    else:
        x = torch.randn(total, heads, dim, generator=gen).to(dtype).to(device)
    cu = torch.tensor([0, *torch.tensor(case["lengths"]).cumsum(0).tolist()])
    cu = cu.to(case["cu_dtype"]).to(device)  # [N + 1]
    cos, sin, kwargs = _tables(case, device, gen)
    del kwargs["position_offset"]
    x0 = x.clone()
    want = reference.apply_rotary_varlen(x.double(), cos.double(), sin.double(), cu, **kwargs)
    checked = {**kwargs, "check_indices": case["check_indices"]}
    if case["inplace"]:
        with fusedops.use_backend(backend):
            out = fusedops.apply_rotary_varlen(x, cos, sin, cu, inplace=True, **checked)
        assert out is x, "inplace=True returns x"
    else:
        x.requires_grad_()
        with fusedops.use_backend(backend):
            out = fusedops.apply_rotary_varlen(x, cos, sin, cu, **checked)
        assert torch.equal(x, x0), "inplace=False changed x"
    assert out.dtype == dtype
    assert_close(out, want, dtype=dtype)
    if case["inplace"]:
        return
    up = torch.randn(out.shape, generator=gen).to(dtype).to(device)
    (grad,) = torch.autograd.grad(out, x, up)
    x64 = x.detach().double().requires_grad_()
    ref = reference.apply_rotary_varlen(x64, cos.double(), sin.double(), cu, **kwargs)
    (want_grad,) = torch.autograd.grad(ref, x64, up.double())
    assert grad.dtype == dtype
    assert_close(grad, want_grad, dtype=dtype, msg="grad x")


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_apply_rotary_varlen_matches_reference(backend, device):
    check_property(packed(), _check_varlen, backend, device, interpreter_share=0.4)
