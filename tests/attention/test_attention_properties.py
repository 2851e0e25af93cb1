"""attention property tests: drawn shapes (0- and 1-sized dims), GQA/MQA, head dims, causal or
not, sliding windows, softcaps, key padding masks (fully padded batches too), scales, strided
views and dtypes; forward, lse and the three gradients against the fp64 reference with the
error bound (``helpers.check_attention``), on the CPU path (SDPA) and on Triton (the
interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, KERNEL_CASES, check_attention, check_property, sizes
from hypothesis import strategies as st


@st.composite
def attentions(draw) -> dict:
    batch, seq_q, seq_k = draw(sizes(2, 12, 12))
    return {
        "batch": batch,
        "hkv": draw(st.integers(1, 2)),
        "group": draw(st.integers(1, 3)),
        "seq_q": seq_q,
        "seq_k": seq_k,
        "dim": draw(st.sampled_from([16, 24, 40, 64, 80, 128])),
        "dtype": draw(st.sampled_from(DTYPES)),
        "causal": draw(st.booleans()),
        "window": draw(st.sampled_from([None, None, 1, 3, 8])),
        "softcap": draw(st.sampled_from([None, None, 0.5, 5.0])),
        "mask": draw(st.sampled_from([None, "random", "left", "one_batch_empty"])),
        "scale": draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
        "layout": draw(st.sampled_from(["bhsd", "bshd", "packed_kv"])),
        "return_lse": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _tensor(shape, layout: str, dtype, device, gen) -> torch.Tensor:
    """A random ``[B, H, S, D]`` tensor, contiguous or as a ``[B, S, H, D]`` transposed view."""
    batch, heads, seq, dim = shape
    if layout == "bhsd":
        return torch.randn(shape, generator=gen).to(dtype).to(device)
    x = torch.randn(batch, seq, heads, dim, generator=gen).to(dtype).to(device)
    return x.transpose(1, 2)


def _mask(case: dict, device: str, gen) -> torch.Tensor | None:
    """Key padding mask ``[B, Sk]`` (True = attend), or None."""
    kind, batch, seq_k = case["mask"], case["batch"], case["seq_k"]
    if kind is None:
        return None
    if kind == "left":  # left padding of random length per batch row
        lengths = torch.randint(0, seq_k + 1, (batch,), generator=gen)
        mask = torch.arange(seq_k)[None, :] >= (seq_k - lengths)[:, None]
    else:
        mask = torch.rand(batch, seq_k, generator=gen) > 0.3
        if kind == "one_batch_empty" and batch:
            mask[0] = False
    return mask.to(device)


def _check(backend: str, device: str, case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, batch, dim, layout = case["dtype"], case["batch"], case["dim"], case["layout"]
    hq = case["hkv"] * case["group"]
    q = _tensor((batch, hq, case["seq_q"], dim), layout, dtype, device, gen)
    kv_shape = (batch, case["hkv"], case["seq_k"], dim)
    if layout == "packed_kv":  # k and v as halves of one [B, Sk, Hkv, 2D] projection
        kv = torch.randn(batch, case["seq_k"], case["hkv"], 2 * dim, generator=gen)
        kv = kv.to(dtype).to(device)
        k, v = kv[..., :dim].transpose(1, 2), kv[..., dim:].transpose(1, 2)
    else:
        k = _tensor(kv_shape, layout, dtype, device, gen)
        v = _tensor(kv_shape, layout, dtype, device, gen)
    for t in (q, k, v):
        t.requires_grad_()
    dout = torch.randn(q.shape, generator=gen).to(dtype).to(device)
    check_attention(
        backend,
        q,
        k,
        v,
        dout=dout,
        return_lse=case["return_lse"],
        causal=case["causal"],
        sliding_window=case["window"] if case["causal"] else None,
        softcap=case["softcap"],
        softmax_scale=case["scale"],
        key_padding_mask=_mask(case, device, gen),
    )


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_matches_reference(backend, device):
    check_property(attentions(), _check, backend, device, interpreter_share=0.4)
