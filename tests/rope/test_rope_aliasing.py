"""In-place RoPE on aliased memory: outputs that overlap themselves or each other are rejected
on every backend with one message naming the public op; disjoint views of one buffer (the
heads of a fused qkv tensor) and out-of-place calls on overlapping inputs work."""

from __future__ import annotations

import pytest
import torch
from helpers import KERNEL_CASES, assert_close, backend_cases

import fusedops
from fusedops import reference

SELF_OVERLAP = r"apply_rotary: inplace=True needs q whose elements do not overlap in memory"
QK_OVERLAP = r"apply_rotary: inplace=True needs q and k in disjoint memory"


def _cache(rot, device, max_pos=12):
    return fusedops.rope_cos_sin(rot, max_pos, device=device)


def _rotary(backend, *args, **kwargs):
    with fusedops.use_backend(backend), torch.no_grad():
        return fusedops.apply_rotary(*args, **kwargs)


def _want(q, k, cos, sin, **kwargs):
    return reference.apply_rotary(
        q.double(), None if k is None else k.double(), cos.double(), sin.double(), **kwargs
    )


@pytest.mark.parametrize("backend,device", backend_cases())
def test_inplace_q_is_k_rejected(backend, device):
    x = torch.randn(1, 2, 3, 8, device=device)
    cos, sin = _cache(8, device)
    before = x.clone()
    with pytest.raises(ValueError, match=QK_OVERLAP):
        _rotary(backend, x, x, cos, sin, inplace=True)
    assert torch.equal(x, before)  # nothing was written
    # Out of place, the same tensor twice only reads: both outputs are one rotation.
    out_q, out_k = _rotary(backend, x, x, cos, sin)
    want, _ = _want(x, None, cos, sin)
    assert_close(out_q, want)
    assert_close(out_k, want)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_inplace_self_overlapping_rejected(backend, device):
    cos, sin = _cache(8, device)
    row = torch.randn(1, 2, 3, 8, device=device)
    batched = row.expand(3, 2, 3, 8)  # stride 0 over the batch: one row, three tokens
    with pytest.raises(ValueError, match=SELF_OVERLAP):
        _rotary(backend, batched, None, cos, sin, inplace=True)
    # Overlapping rows without a zero stride: token s and s + 1 share 4 features.
    flat = torch.randn(64, device=device)
    sliding = flat.as_strided((1, 1, 5, 8), (64, 64, 4, 1))
    with pytest.raises(ValueError, match=SELF_OVERLAP):
        _rotary(backend, sliding, None, cos, sin, inplace=True)
    k_expanded = torch.randn(1, 1, 3, 8, device=device).expand(1, 4, 3, 8)
    q = torch.randn(1, 2, 3, 8, device=device)
    with pytest.raises(ValueError, match=SELF_OVERLAP.replace("needs q", "needs k")):
        _rotary(backend, q, k_expanded, cos, sin, inplace=True)
    # Out of place, an expanded input is fine.
    out, _ = _rotary(backend, batched, None, cos, sin)
    assert_close(out, _want(batched, None, cos, sin)[0])


@pytest.mark.parametrize("backend,device", backend_cases())
def test_inplace_partly_overlapping_qk_rejected(backend, device):
    cos, sin = _cache(8, device)
    qkv = torch.randn(2, 3, 4, 8, device=device)  # [B, S, H, D], heads 0..3
    before = qkv.clone()
    q = qkv[:, :, 0:3].transpose(1, 2)  # heads 0, 1, 2
    k = qkv[:, :, 2:4].transpose(1, 2)  # heads 2, 3: head 2 is shared
    with pytest.raises(ValueError, match=QK_OVERLAP):
        _rotary(backend, q, k, cos, sin, inplace=True)
    assert torch.equal(qkv, before)
    # Interleaved views that share every other element.
    flat = torch.randn(2 * 3 * 16, device=device)
    q2 = flat.as_strided((1, 1, 3, 8), (96, 96, 16, 1))
    k2 = flat.as_strided((1, 1, 3, 8), (96, 96, 16, 1), 4)
    with pytest.raises(ValueError, match=QK_OVERLAP):
        _rotary(backend, q2, k2, cos, sin, inplace=True)


@pytest.mark.parametrize("backend,device", backend_cases())
def test_inplace_disjoint_heads_of_one_buffer(backend, device):
    """q and k as disjoint head slices of a fused [B, S, Hq + Hk + Hv, D] tensor: their byte
    ranges interleave, their elements do not."""
    cos, sin = _cache(8, device)
    qkv = torch.randn(2, 3, 6, 8, device=device)
    want_q, want_k = _want(qkv[:, :, :3].transpose(1, 2), qkv[:, :, 3:5].transpose(1, 2), cos, sin)
    v = qkv[:, :, 5:].clone()
    q, k = qkv[:, :, :3].transpose(1, 2), qkv[:, :, 3:5].transpose(1, 2)
    out_q, out_k = _rotary(backend, q, k, cos, sin, inplace=True)
    assert out_q is q and out_k is k
    assert_close(qkv[:, :, :3].transpose(1, 2), want_q)
    assert_close(qkv[:, :, 3:5].transpose(1, 2), want_k)
    assert torch.equal(qkv[:, :, 5:], v)


def test_varlen_inplace_self_overlapping_rejected():
    cos, sin = _cache(8, "cpu")
    x = torch.randn(4, 1, 8).expand(4, 3, 8)  # [T, H, D] with a stride-0 head dim
    cu = torch.tensor([0, 4])
    with pytest.raises(ValueError, match="apply_rotary_varlen: inplace=True needs x whose"):
        fusedops.apply_rotary_varlen(x, cos, sin, cu, inplace=True)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_compiled_inplace_overlap_rejected(backend, device):
    """Under torch.compile the check runs inside the in-place op, on the real tensors."""
    torch._dynamo.reset()
    cos, sin = _cache(8, device)

    def fn(qkv, cos, sin):
        q = qkv[:, :, 0:3].transpose(1, 2)
        k = qkv[:, :, 2:4].transpose(1, 2)
        fusedops.apply_rotary(q, k, cos, sin, inplace=True)
        return qkv

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with fusedops.use_backend(backend), torch.no_grad(), pytest.raises(Exception) as info:
        compiled(torch.randn(1, 3, 4, 8, device=device), cos, sin)
    assert "apply_rotary: inplace=True needs q and k in disjoint memory" in str(info.value)
