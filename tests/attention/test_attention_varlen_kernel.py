"""The packed-sequence (varlen) attention launchers called directly (interpreter on CPU, native
on CUDA).

The spec is ``reference.attention_varlen`` (each sequence attended on its own, bottom-right
causal and window per sequence, lse ``[Hq, Tq]``) in float64; forward and fp64-autograd grads
must be within flash-attention's bound (``helpers.assert_attention_bound``: twice PyTorch's own
error in the input dtype plus a floor). Sequences have different lengths, Sq != Sk, and some
are empty (no queries, or no keys: their rows give zeros, lse -inf and zero grads). Outputs and
grads are NaN-poisoned so unwritten rows fail.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TRITON_DEVICE, assert_attention_bound

from fusedops import reference
from fusedops.kernels import attention_backward as kb
from fusedops.kernels.attention import attention_varlen_forward, visited_key_tiles
from fusedops.kernels.attention_backward import attention_varlen_backward

LSE_TOL = 1e-4
# Per sequence (queries, keys): Sq < Sk, no queries, Sq = Sk over two tiles, no keys, Sq < Sk.
LENGTHS = ((5, 9), (0, 4), (70, 70), (3, 0), (17, 33))


def _cu(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _inputs(hq, hkv, dim, seed, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    cu_q, cu_k = _cu([a for a, _ in lengths]), _cu([b for _, b in lengths])
    total_q, total_k = int(cu_q[-1]), int(cu_k[-1])
    q = torch.randn(total_q, hq, dim, generator=g, dtype=torch.float64)
    k = torch.randn(total_k, hkv, dim, generator=g, dtype=torch.float64)
    v = torch.randn(total_k, hkv, dim, generator=g, dtype=torch.float64)
    dout = torch.randn(total_q, hq, dim, generator=g, dtype=torch.float64)
    return q, k, v, dout, cu_q, cu_k


def _spec(q, k, v, cu_q, cu_k, dtype, variant, compute):
    """(out, lse) of the spec on the inputs rounded to ``dtype``, its math in ``compute``."""
    q, k, v = (t.to(dtype).to(compute) for t in (q, k, v))
    return reference.attention_varlen(
        q, k, v, cu_q, cu_k, return_lse=True, compute_dtype=compute, **variant
    )


def _device(*tensors, dtype):
    return [t.to(TRITON_DEVICE, dtype) for t in tensors]


def _forward(q, k, v, cu_q, cu_k, lengths, dtype, variant, tile_counts=None):
    qd, kd, vd = _device(q, k, v, dtype=dtype)
    out = torch.full_like(qd, float("nan"))
    lse = torch.full((q.shape[1], q.shape[0]), float("nan"), device=TRITON_DEVICE)
    attention_varlen_forward(
        qd, kd, vd, out, lse, cu_q.to(TRITON_DEVICE), cu_k.to(TRITON_DEVICE),
        max(a for a, _ in lengths), max(b for _, b in lengths), tile_counts=tile_counts,
        **variant,
    )  # fmt: skip
    return out, lse


VARIANTS = [
    (dict(causal=True), torch.float32),
    (dict(causal=True, sliding_window=7, softcap=3.0), torch.bfloat16),
    (dict(causal=False), torch.float16),
    (dict(causal=True, sliding_window=1), torch.float16),
    (dict(causal=True, softcap=2.0), torch.float32),
]


@pytest.mark.parametrize("variant,dtype", VARIANTS, ids=str)
def test_varlen_forward_matches_fp64(variant, dtype):
    dim = 80 if dtype == torch.bfloat16 else 64
    q, k, v, _, cu_q, cu_k = _inputs(6, 2, dim, seed=len(variant))
    variant = dict(variant, softmax_scale=dim**-0.5)
    out, lse = _forward(q, k, v, cu_q, cu_k, LENGTHS, dtype, variant)
    ref, ref_lse = _spec(q, k, v, cu_q, cu_k, dtype, variant, torch.float64)
    same, _ = _spec(q, k, v, cu_q, cu_k, dtype, variant, dtype)
    assert_attention_bound("out", out.cpu(), same, ref, dtype)
    lse = lse.double().cpu()
    empty = torch.isinf(ref_lse)
    assert empty.any(), "the sequence without keys has empty rows"
    assert torch.equal(torch.isinf(lse), empty) and (lse[empty] < 0).all()
    torch.testing.assert_close(lse[~empty], ref_lse[~empty], atol=LSE_TOL, rtol=LSE_TOL)
    assert (out.cpu().permute(1, 0, 2)[empty] == 0).all(), "rows with no key must be zeros"


def test_varlen_tile_counts():
    """Each sequence visits the key tiles of its own lengths (no work past a sequence's end)."""
    lengths = ((130, 130), (1, 200), (64, 0), (200, 70))
    q, k, v, _, cu_q, cu_k = _inputs(1, 1, 16, seed=3, lengths=lengths)
    counts = torch.zeros(len(lengths) * -(-200 // 16), dtype=torch.int32, device=TRITON_DEVICE)
    variant = dict(causal=True, softmax_scale=0.25, sliding_window=50)
    _forward(q, k, v, cu_q, cu_k, lengths, torch.float16, variant, tile_counts=counts)
    expected = sum(
        visited_key_tiles(a, b, 64, 64, causal=True, sliding_window=50) for a, b in lengths
    )
    assert int(counts.sum()) == expected


@pytest.mark.parametrize(
    "variant,dtype",
    [
        (dict(causal=True), torch.float32),
        (dict(causal=True, sliding_window=20, softcap=2.0), torch.bfloat16),
        (dict(causal=False, softcap=1.0), torch.float16),
    ],
    ids=str,
)
def test_varlen_backward_matches_fp64_autograd(variant, dtype):
    got = _check_backward(variant, dtype, 4, 2, 80 if dtype == torch.bfloat16 else 32, seed=7)
    # Keys of the sequence without queries and queries of the one without keys: zero grads.
    assert (got[1][9:13] == 0).all() and (got[2][9:13] == 0).all()
    assert (got[0][75:78] == 0).all()


def test_varlen_backward_with_split_query_heads(monkeypatch):
    """MQA with the dk/dv programs split over the group's query heads (as on a GPU the grid
    would not fill; fp32 partials added in split order): the same grads, and the k/v rows past
    ``cu_seqlens_k[N]`` stay unwritten."""
    monkeypatch.setattr(kb, "device_sm_count", lambda device: 10**6)
    splits = []
    real = kb.launch

    def spy(kernel, grid, *args, **kwargs):
        if getattr(kernel, "__name__", "") == "_bwd_sum_splits":
            splits.append(args[3])
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(kb, "launch", spy)
    variant = dict(causal=True, sliding_window=20)
    got = _check_backward(variant, torch.float16, 4, 1, 32, seed=9, spare_k=3)
    assert splits == [4, 4]  # dk and dv, the whole group of 4 split
    assert torch.isnan(got[1][-3:]).all() and torch.isnan(got[2][-3:]).all()


def _check_backward(variant, dtype, hq, hkv, dim, *, seed, spare_k=0):
    """The varlen backward against fp64 autograd of the spec: its (dq, dk, dv), with
    ``spare_k`` unused (poisoned) k/v rows after the last sequence."""
    q, k, v, dout, cu_q, cu_k = _inputs(hq, hkv, dim, seed=seed)
    variant = dict(variant, softmax_scale=dim**-0.5)

    def grads(dt):
        leaves = [t.to(dtype).to(dt).requires_grad_() for t in (q, k, v)]
        out, lse = reference.attention_varlen(
            *leaves, cu_q, cu_k, return_lse=True, compute_dtype=dt, **variant
        )
        return out.detach(), lse.detach(), torch.autograd.grad(out, leaves, dout.to(dt))

    out, lse, expected = grads(torch.float64)
    _, _, yardstick = grads(dtype)
    spare = torch.zeros(spare_k, hkv, dim, dtype=k.dtype)
    kd, vd = _device(torch.cat([k, spare]), torch.cat([v, spare]), dtype=dtype)
    got = [
        torch.full(t.shape, float("nan"), dtype=dtype, device=TRITON_DEVICE) for t in (q, kd, vd)
    ]
    attention_varlen_backward(
        *_device(q, dtype=dtype), kd, vd, *_device(out, dtype=dtype),
        lse.to(TRITON_DEVICE, torch.float32), *_device(dout, dtype=dtype), *got,
        cu_q.to(TRITON_DEVICE), cu_k.to(TRITON_DEVICE),
        max(a for a, _ in LENGTHS), max(b for _, b in LENGTHS), **variant,
    )  # fmt: skip
    total_k = k.shape[0]
    got_kept = (got[0], got[1][:total_k], got[2][:total_k])
    for name, g_k, g_t, g_e in zip(("dq", "dk", "dv"), got_kept, yardstick, expected, strict=True):
        assert_attention_bound(name, g_k.cpu(), g_t, g_e, dtype)
    return got
