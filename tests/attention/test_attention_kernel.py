"""The attention forward launcher called directly (Triton's interpreter on CPU, natively on CUDA).

The expected values are the spec, ``reference.attention`` in float64: GQA by repeating k/v
heads (the kernel must not), bottom-right causal (query i sees keys j <= i + Sk - Sq), key
padding (True = attend), rows with no allowed key -> zeros and lse -inf. The bound is
flash-attention's (``helpers.assert_attention_bound``): the kernel's max error against fp64 is
at most twice the error of the same computation done by PyTorch in the input dtype, plus a
small floor; lse is fp32 and compared with an fp32 tolerance. Outputs are NaN-poisoned so an
element the kernel does not write fails. Shapes are small: the interpreter pays per program and
per key block.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPES, TRITON_DEVICE, assert_attention_bound

from fusedops import reference
from fusedops.kernels.attention import (
    attention_forward,
    block_d_for,
    forward_config_space,
    key_tile_range,
    visited_key_tiles,
)

LSE_TOL = 1e-4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _attention(q, k, v, causal, scale, kpm, dtype, **variant):
    """The spec on CPU with its math in ``dtype``: (out, lse). ``variant``: sliding_window,
    softcap."""
    q, k, v = (t.detach().cpu().to(dtype) for t in (q, k, v))
    kpm = None if kpm is None else kpm.cpu()
    return reference.attention(
        q, k, v, causal=causal, softmax_scale=scale, key_padding_mask=kpm, return_lse=True,
        compute_dtype=dtype, **variant,
    )  # fmt: skip


def _check(q, k, v, *, causal, kpm=None, scale=None, seed=0, **variant):
    dtype = q.dtype
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=q.device)
    attention_forward(
        q, k, v, out, lse, causal=causal, softmax_scale=scale, key_padding_mask=kpm, **variant
    )
    ref, ref_lse = _attention(q, k, v, causal, scale, kpm, torch.float64, **variant)
    same, _ = _attention(q, k, v, causal, scale, kpm, dtype, **variant)
    assert_attention_bound("out", out, same, ref, dtype)
    assert not torch.isnan(lse).any(), "unwritten or NaN lse"
    lse = lse.double().cpu()
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty) and (lse[empty] < 0).all()
    torch.testing.assert_close(lse[~empty], ref_lse[~empty], atol=LSE_TOL, rtol=LSE_TOL)
    if empty.any():
        assert (out.cpu()[empty] == 0).all(), "fully masked rows must be zeros"
    return out, lse


def _qkv(batch, hq, hkv, seq_q, seq_k, dim, dtype, seed=0):
    g = _gen(seed)
    q = torch.randn(batch, hq, seq_q, dim, generator=g).to(dtype).to(TRITON_DEVICE)
    k = torch.randn(batch, hkv, seq_k, dim, generator=g).to(dtype).to(TRITON_DEVICE)
    v = torch.randn(batch, hkv, seq_k, dim, generator=g).to(dtype).to(TRITON_DEVICE)
    return q, k, v


def _padding(batch, seq_k, seed=0, *, left=False):
    """Random-length padding per batch row (left or right), at least one key kept."""
    g = _gen(seed + 100)
    lengths = torch.randint(1, seq_k + 1, (batch,), generator=g)
    idx = torch.arange(seq_k)[None, :]
    kpm = idx >= (seq_k - lengths)[:, None] if left else idx < lengths[:, None]
    return kpm.to(TRITON_DEVICE)


# (B, Hq, Hkv, Sq, Sk, D): tails on both axes, decode (Sq = 1), Sq > Sk (rows with no key when
# causal), GQA 8/2 and 9/3, non-powers of two D = 80 and 24, the extremes D = 16 and 256.
SHAPES = [
    (1, 1, 1, 17, 17, 16),
    (1, 8, 2, 17, 128, 64),
    (1, 9, 3, 1, 257, 80),
    (2, 2, 1, 128, 17, 128),
    (1, 3, 3, 70, 65, 24),
    (1, 2, 1, 9, 40, 256),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("batch,hq,hkv,seq_q,seq_k,dim", SHAPES)
def test_forward_matches_fp64(dtype, causal, batch, hq, hkv, seq_q, seq_k, dim):
    q, k, v = _qkv(batch, hq, hkv, seq_q, seq_k, dim, dtype)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_key_padding_mask(dtype, causal, left):
    q, k, v = _qkv(3, 4, 2, 33, 57, 64, dtype, seed=1)
    kpm = _padding(3, 57, seed=1, left=left)
    _check(q, k, v, causal=causal, kpm=kpm)
    # Key blocks with no bounds or causal mask (Sk past a whole tile) still apply the padding.
    q, k, v = _qkv(2, 2, 1, 100, 150, 32, dtype, seed=2)
    kpm = _padding(2, 150, seed=2, left=left)
    kpm[:, 3] = False  # a hole inside the first key block
    _check(q, k, v, causal=causal, kpm=kpm)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_masked_rows_are_zero(dtype):
    q, k, v = _qkv(2, 2, 1, 20, 30, 32, dtype, seed=2)
    kpm = torch.ones(2, 30, dtype=torch.bool)
    kpm[0] = False  # batch 0: nothing to attend at all
    kpm[1, 15:] = False  # batch 1 causal: queries 0..4 see keys 0..14 only partly
    kpm[1, :12] = False  # queries i with i + 10 < 12 (i < 2) see nothing
    out, lse = _check(q, k, v, causal=True, kpm=kpm.to(TRITON_DEVICE))
    assert (out[0] == 0).all() and torch.isinf(lse[0]).all()
    assert (out[1, :, :2] == 0).all() and torch.isinf(lse[1, :, :2]).all()
    # Sq > Sk causal: the first Sq - Sk queries see no key.
    q, k, v = _qkv(1, 1, 1, 40, 8, 16, dtype, seed=3)
    out, lse = _check(q, k, v, causal=True)
    assert (out[0, 0, :32] == 0).all() and torch.isinf(lse[0, 0, :32]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_views_and_scale(dtype):
    """[B, S, H, D].transpose(1, 2) views, a sliced k with padded rows, a custom scale."""
    g = _gen(5)
    batch, hq, hkv, seq_q, seq_k, dim = 2, 6, 2, 19, 23, 48
    q = torch.randn(batch, seq_q, hq, dim, generator=g).to(dtype).to(TRITON_DEVICE).transpose(1, 2)
    k_base = torch.randn(batch, hkv, seq_k, dim + 8, generator=g).to(dtype).to(TRITON_DEVICE)
    k = k_base[..., 8:]
    v = torch.randn(batch, seq_k, hkv, dim, generator=g).to(dtype).to(TRITON_DEVICE).transpose(1, 2)
    kpm_base = torch.ones(batch, 2 * seq_k, dtype=torch.bool)
    kpm_base[0, 2 * 5 :] = False
    kpm = kpm_base[:, ::2].to(TRITON_DEVICE)  # column stride 2
    _check(q, k, v, causal=True, kpm=kpm, scale=0.3)


def test_config_space_under_interpreter_and_gpu_rules():
    for dim in (16, 64, 80, 128, 256):
        space = forward_config_space(dim)
        assert space
        assert block_d_for(dim) >= dim


# Sliding window and softcap. (B, Hq, Hkv, Sq, Sk, D, window, softcap, dtype): odd Sq != Sk both
# ways, window 1, a window inside one key tile, across tiles (skipped tiles before it), larger
# than Sk (plain causal), softcap with and without a window in each dtype, GQA, D = 80.
WINDOW_CASES = [
    (1, 2, 1, 37, 53, 16, 5, None, torch.float32),
    (1, 4, 2, 70, 70, 80, 1, None, torch.bfloat16),
    (1, 3, 1, 17, 200, 64, 40, 30.0, torch.float16),
    (1, 2, 2, 90, 40, 32, 500, None, torch.float16),
    (1, 4, 1, 100, 129, 80, 64, 5.0, torch.float32),
    (1, 2, 1, 150, 150, 32, 70, 2.0, torch.bfloat16),
    (1, 6, 3, 33, 47, 64, None, 1.0, torch.float16),
]


@pytest.mark.parametrize(
    "batch,hq,hkv,seq_q,seq_k,dim,window,softcap,dtype", WINDOW_CASES, ids=lambda c: str(c)
)
def test_window_and_softcap_match_fp64(batch, hq, hkv, seq_q, seq_k, dim, window, softcap, dtype):
    q, k, v = _qkv(batch, hq, hkv, seq_q, seq_k, dim, dtype, seed=seq_q)
    q = q * 3  # larger scores: softcap's tanh saturates on some
    _check(q, k, v, causal=True, sliding_window=window, softcap=softcap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_softcap_without_causal_and_window_with_padding(dtype):
    q, k, v = _qkv(2, 2, 1, 45, 77, 48, dtype, seed=8)
    _check(q * 4, k, v, causal=False, softcap=3.0)
    kpm = _padding(2, 77, seed=8)
    kpm[:, 70:] = True  # the last keys (inside every window) stay
    _check(q, k, v, causal=True, kpm=kpm, sliding_window=9, softcap=4.0)


def test_variant_arguments_are_checked():
    q, k, v = _qkv(1, 1, 1, 4, 4, 16, torch.float32)
    out, lse = torch.empty_like(q), torch.empty(1, 1, 4)
    args = dict(softmax_scale=0.25, key_padding_mask=None)
    with pytest.raises(ValueError, match="attention: sliding_window=3 needs causal"):
        attention_forward(q, k, v, out, lse, causal=False, sliding_window=3, **args)
    with pytest.raises(ValueError, match="sliding_window must be >= 1, got 0"):
        attention_forward(q, k, v, out, lse, causal=True, sliding_window=0, **args)
    with pytest.raises(ValueError, match="softcap must be > 0, got -1"):
        attention_forward(q, k, v, out, lse, causal=True, softcap=-1.0, **args)


def _visited(seq_q, seq_k, *, causal, window=None, heads=1):
    """Key tiles the kernel reports (COUNT_TILES), summed over its programs."""
    q, k, v = _qkv(1, heads, 1, seq_q, seq_k, 16, torch.float16, seed=4)
    counts = torch.zeros(heads * -(-seq_q // 16), dtype=torch.int32, device=q.device)
    out, lse = torch.empty_like(q), torch.empty(q.shape[:3], device=q.device)
    attention_forward(
        q, k, v, out, lse, causal=causal, softmax_scale=0.25, key_padding_mask=None,
        sliding_window=window, tile_counts=counts,
    )  # fmt: skip
    return int(counts.sum())


def test_window_skips_key_tiles():
    """The kernel visits exactly the tiles of ``visited_key_tiles`` (its loop bounds mirrored
    on the host): dense causal, not causal, Sq != Sk, and a window of w = S / 8 keys, which
    visits >= 3.5x fewer tiles than dense causal at the tile sizes and S / w ratio of the bench
    row (S = 8k, w = 1k); the host count shows it at S = 8k for every forward tile."""
    bm, bn = 64, 64  # the interpreter's tile (INTERPRET_CONFIG)
    for seq_q, seq_k, causal in ((300, 300, True), (77, 300, True), (150, 90, False)):
        expected = visited_key_tiles(seq_q, seq_k, bm, bn, causal=causal)
        assert _visited(seq_q, seq_k, causal=causal, heads=2) == 2 * expected
    seq, window = 2048, 256
    windowed = _visited(seq, seq, causal=True, window=window)
    assert windowed == visited_key_tiles(seq, seq, bm, bn, causal=True, sliding_window=window)
    assert visited_key_tiles(seq, seq, bm, bn, causal=True) >= 3.5 * windowed
    tiles = {(c[0], c[1]) for d in (64, 128) for e in (2, 4) for c in forward_config_space(d, e)}
    for block_m, block_n in tiles:
        dense = visited_key_tiles(8192, 8192, block_m, block_n, causal=True)
        sparse = visited_key_tiles(8192, 8192, block_m, block_n, causal=True, sliding_window=1024)
        assert dense >= 3.5 * sparse, (block_m, block_n, dense, sparse)
    # A window's first tile: the one holding key p - w + 1 of the block's first row.
    assert key_tile_range(4096, 64, 64, 8192, 8192, causal=True, sliding_window=1024) == (
        3072, 4160,
    )  # fmt: skip
