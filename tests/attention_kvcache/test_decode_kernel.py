"""The KV-cache decode launchers called directly (Triton's interpreter on CPU, natively on CUDA).

``attention_decode`` (split-K over a dense or paged cache, then the log-sum-exp combine) and
``kvcache_append`` (RoPE + cache write) against the spec, ``reference.attention_with_kvcache``
in float64: ragged cache lengths including 0, Sq in {1, 3}, GQA 8/1 and 9/3, D 64/80, block
sizes 16 and 256 (key tiles spanning pages and inside one page), windows, softcap, a strided
cache view (Hugging Face's ``StaticCache`` layout transposed), rows with no allowed key. The
bound is flash-attention's (``helpers.assert_attention_bound``). Every split count gives the same
result within fp32 rounding; the append writes exactly its slots. ``decode_num_splits`` is a pure
host function, checked on its own. Outputs are NaN-poisoned; shapes are small (the interpreter
pays per program and per key tile).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LSE_TOL, TRITON_DEVICE, assert_attention_bound, assert_close, max_abs_error

from fusedops import reference
from fusedops.kernels.attention_decode import (
    MAX_SPLITS,
    MIN_SPLIT_KEYS,
    attention_decode,
    decode_num_splits,
    kvcache_append,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=_gen(seed)).to(dtype).to(TRITON_DEVICE)


def _caches(batch, capacity, hkv, dim, dtype, *, block_size=None, seed=0):
    """``(k_cache, v_cache, block_table)``: dense ``[B, capacity, Hkv, D]``, or paged with
    ``capacity / block_size`` shuffled blocks per batch row plus spare blocks."""
    if block_size is None:
        shape = (batch, capacity, hkv, dim)
        return (
            _randn(*shape, dtype=dtype, seed=seed),
            _randn(*shape, dtype=dtype, seed=seed + 1),
            None,
        )
    per_row = capacity // block_size
    n_blocks = batch * per_row + 2
    shape = (n_blocks, block_size, hkv, dim)
    table = torch.randperm(n_blocks, generator=_gen(seed + 2))[: batch * per_row]
    table = table.view(batch, per_row).to(torch.int32).to(TRITON_DEVICE)
    return _randn(*shape, dtype=dtype, seed=seed), _randn(*shape, dtype=dtype, seed=seed + 1), table


def _decode(q, k_cache, v_cache, seqlens, table, *, num_splits, **kwargs):
    kwargs.setdefault("softmax_scale", 1.0 / math.sqrt(q.shape[-1]))
    kwargs = {"causal": True, "sliding_window": None, "softcap": None} | kwargs
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"), device=q.device)
    attention_decode(
        q, k_cache, v_cache, out, lse, seqlens_k=seqlens, block_table=table,
        num_splits=num_splits, **kwargs,
    )  # fmt: skip
    return out, lse


def _spec(q, k_cache, v_cache, seqlens, table, dtype, **kwargs):
    """The reference on CPU with its math in ``dtype``: (out, lse)."""
    q, k_cache, v_cache = (t.detach().cpu().to(dtype) for t in (q, k_cache, v_cache))
    table = None if table is None else table.cpu()
    return reference.attention_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=seqlens.cpu(), block_table=table, return_lse=True,
        compute_dtype=dtype, **kwargs,
    )  # fmt: skip


def _check(q, k_cache, v_cache, seqlens, table, *, num_splits, **kwargs):
    dtype = q.dtype
    out, lse = _decode(q, k_cache, v_cache, seqlens, table, num_splits=num_splits, **kwargs)
    ref, ref_lse = _spec(q, k_cache, v_cache, seqlens, table, torch.float64, **kwargs)
    same, _ = _spec(q, k_cache, v_cache, seqlens, table, dtype, **kwargs)
    assert_attention_bound("out", out, same, ref, dtype)
    # -inf exactly where the spec's row has no allowed key (NaN fails), else close in fp32.
    lse = lse.double().cpu()
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)
    empty = torch.isinf(ref_lse).transpose(1, 2)  # [B, Sq, Hq]
    assert (out.cpu()[empty] == 0).all(), "rows with no allowed key must be zeros"
    return out, lse


# (dtype, B, Sq, Hq, Hkv, D, cache_seqlens, block_size or None (dense) with capacity, splits,
# kwargs). Lengths include 0 and the full capacity; Sq = 3 with 1 key leaves rows with none.
CASES = [
    pytest.param(torch.float32, 3, 3, 9, 3, 80, [0, 37, 64], (None, 64), 2, {},
                 id="dense-fp32-gqa9/3-Sq3-D80-ragged0"),
    pytest.param(torch.float16, 2, 1, 8, 1, 64, [200, 33], (16, 208), 2,
                 {"sliding_window": 40}, id="paged16-fp16-gqa8/1-Sq1-window"),
    pytest.param(torch.bfloat16, 2, 3, 8, 1, 64, [300, 1], (256, 512), 2, {"softcap": 5.0},
                 id="paged256-bf16-gqa8/1-Sq3-softcap-empty-rows"),
    pytest.param(torch.float16, 2, 3, 9, 3, 80, [70, 5], (16, 96), 3,
                 {"causal": False, "softcap": 2.0}, id="paged16-fp16-noncausal-softcap"),
    pytest.param(torch.float32, 1, 3, 8, 1, 64, [90], (None, 96), 2,
                 {"sliding_window": 200}, id="dense-fp32-window-wider-than-cache"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dtype", "batch", "seq_q", "hq", "hkv", "dim", "lens", "cache", "splits", "kwargs"), CASES
)
def test_decode_matches_reference(dtype, batch, seq_q, hq, hkv, dim, lens, cache, splits, kwargs):
    block_size, capacity = cache
    k_cache, v_cache, table = _caches(batch, capacity, hkv, dim, dtype, block_size=block_size)
    q = _randn(batch, seq_q, hq, dim, dtype=dtype, seed=7)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=TRITON_DEVICE)
    _check(q, k_cache, v_cache, seqlens, table, num_splits=splits, **kwargs)


def test_decode_strided_cache_view():
    """A [B, Hkv, S, D] cache (Hugging Face's StaticCache) read through its [B, S, Hkv, D]
    transpose: only the last dim is contiguous."""
    batch, hq, hkv, cap, dim = 2, 4, 2, 50, 64
    k_hf = _randn(batch, hkv, cap, dim, dtype=torch.float32, seed=1)
    v_hf = _randn(batch, hkv, cap, dim, dtype=torch.float32, seed=2)
    k_cache, v_cache = k_hf.transpose(1, 2), v_hf.transpose(1, 2)
    assert not k_cache.is_contiguous()
    q = _randn(batch, 1, hq, dim, dtype=torch.float32, seed=3)
    seqlens = torch.tensor([50, 17], dtype=torch.int32, device=TRITON_DEVICE)
    _check(q, k_cache, v_cache, seqlens, None, num_splits=2)


@pytest.mark.parametrize("block_size", [None, 16], ids=["dense", "paged16"])
def test_every_split_count_gives_the_same_result(block_size):
    """1, 2, 3 and 7 splits (some with no key at all for the short row) agree within fp32
    rounding, lse included, and match the reference."""
    batch, seq_q, hq, hkv, dim, cap = 2, 3, 4, 1, 64, 128
    k_cache, v_cache, table = _caches(batch, cap, hkv, dim, torch.float32, block_size=block_size)
    q = _randn(batch, seq_q, hq, dim, dtype=torch.float32, seed=5)
    seqlens = torch.tensor([125, 40], dtype=torch.int32, device=TRITON_DEVICE)
    base, base_lse = _check(q, k_cache, v_cache, seqlens, table, num_splits=1, sliding_window=70)
    for splits in (2, 3, 7):
        out, lse = _decode(
            q, k_cache, v_cache, seqlens, table, num_splits=splits, sliding_window=70
        )
        assert max_abs_error(out, base) <= 1e-5, (splits, max_abs_error(out, base))
        torch.testing.assert_close(lse.double().cpu(), base_lse, atol=1e-5, rtol=1e-6)


def test_num_splits_heuristic():
    # One (batch, kv head) per program is far from filling 132 SMs: split until it does, here
    # into exactly two full waves.
    splits = decode_num_splits(1, 8, 8, 32768, 132)
    assert 8 * splits >= 132 and splits <= MAX_SPLITS
    shapes = ((1, 8, 32768), (1, 8, 4096), (8, 8, 4096), (64, 8, 32768), (1, 1, 1024))
    table = {shape: decode_num_splits(shape[0], shape[1], 8, shape[2], 132) for shape in shapes}
    assert list(table.values()) == [33, 16, 4, 1, 4], table
    for batch in (1, 2, 5, 64, 300):
        for heads_kv in (1, 3, 8):
            for rows in (1, 8, 24, 200):
                for keys in (0, 1, 255, 256, 4096, 32768, 1 << 20):
                    for sms in (1, 108, 132):
                        s = decode_num_splits(batch, heads_kv, rows, keys, sms)
                        programs = batch * heads_kv * -(-rows // (16 if rows <= 16 else 64))
                        cap = max(1, min(keys // MIN_SPLIT_KEYS, MAX_SPLITS))
                        assert 1 <= s <= cap  # no split shorter than MIN_SPLIT_KEYS keys
                        assert s == 1 or programs < sms  # split only an under-full grid
                        assert programs * s >= min(sms, programs * cap)  # one per SM


# ------------------------------------------------------------------ append


def _rotary(positions, rot_half, dtype, seed=11):
    g = _gen(seed)
    freqs = torch.rand(rot_half, generator=g) + 0.1
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * freqs[None, :]
    return angles.cos().to(dtype).to(TRITON_DEVICE), angles.sin().to(dtype).to(TRITON_DEVICE)


# (dtype, block_size or None, rotary_dim or None, interleaved, table dtype)
APPEND_CASES = [
    pytest.param(torch.float16, None, 64, False, torch.float32, id="dense-fp16-half"),
    pytest.param(torch.float32, 16, 32, True, torch.float32, id="paged16-fp32-gptj-partial"),
    pytest.param(torch.bfloat16, 256, 64, False, torch.bfloat16, id="paged256-bf16-table-bf16"),
    pytest.param(torch.float16, 16, None, False, None, id="paged16-fp16-no-rotary"),
]


@pytest.mark.parametrize(
    ("dtype", "block_size", "rotary_dim", "interleaved", "tdtype"), APPEND_CASES
)
def test_append_writes_exactly_its_slots(dtype, block_size, rotary_dim, interleaved, tdtype):
    batch, seq_q, hq, hkv, dim = 3, 3, 4, 2, 64
    cap = 512 if block_size == 256 else 64
    k_cache, v_cache, table = _caches(batch, cap, hkv, dim, dtype, block_size=block_size)
    q = _randn(batch, seq_q, hq, dim, dtype=dtype, seed=3)
    k = _randn(batch, seq_q, hkv, dim, dtype=dtype, seed=4)
    v = _randn(batch, seq_q, hkv, dim, dtype=dtype, seed=5)
    seqlens = torch.tensor([0, 17, cap - seq_q], dtype=torch.int32, device=TRITON_DEVICE)
    cos = sin = None
    if rotary_dim is not None:
        cos, sin = _rotary(cap, rotary_dim // 2, tdtype)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q_out = torch.full_like(q, float("nan")) if cos is not None else None
    kvcache_append(
        q, k, v, k_cache, v_cache, q_out, seqlens, table, cos, sin, interleaved=interleaved
    )
    # The spec writes the same slots of a copy.
    k_want, v_want = k_before.clone().cpu(), v_before.clone().cpu()
    table_cpu, cos_cpu, sin_cpu = (None if t is None else t.cpu() for t in (table, cos, sin))
    reference.attention_with_kvcache(
        q.cpu(), k_want, v_want, k.cpu(), v.cpu(), cache_seqlens=seqlens.cpu(),
        block_table=table_cpu, rotary_cos=cos_cpu, rotary_sin=sin_cpu,
        rotary_interleaved=interleaved,
    )  # fmt: skip
    written = torch.zeros(k_want.shape[:2], dtype=torch.bool)  # [B or blocks, S or block_size]
    for b, start in enumerate(seqlens.tolist()):
        for slot in range(start, start + seq_q):
            if table is None:
                written[b, slot] = True
            else:
                written[table[b, slot // block_size].item(), slot % block_size] = True
    for name, got, before, want in (
        ("k", k_cache, k_before, k_want),
        ("v", v_cache, v_before, v_want),
    ):
        got = got.cpu()
        assert torch.equal(got[~written], before.cpu()[~written]), f"{name}: other slots changed"
        assert_close(got[written], want[written], msg=f"{name} slots")
    if cos is not None:
        want_q, _ = reference.apply_rotary(
            q.cpu().transpose(1, 2), None, cos_cpu, sin_cpu,
            positions=(seqlens.cpu()[:, None] + torch.arange(seq_q)).long(),
            interleaved=interleaved, rotary_dim=rotary_dim,
        )  # fmt: skip
        assert_close(q_out, want_q.transpose(1, 2), msg="q_out")


def test_append_then_decode_is_the_fused_spec():
    """RoPE + append + split-K decode over L_b = cache_seqlens + Sq keys of a paged cache, as
    the op runs them."""
    batch, seq_q, hq, hkv, dim, cap, block_size = 2, 3, 6, 2, 64, 96, 16
    dtype = torch.float32
    k_cache, v_cache, table = _caches(batch, cap, hkv, dim, dtype, block_size=block_size)
    q = _randn(batch, seq_q, hq, dim, dtype=dtype, seed=3)
    k = _randn(batch, seq_q, hkv, dim, dtype=dtype, seed=4)
    v = _randn(batch, seq_q, hkv, dim, dtype=dtype, seed=5)
    seqlens = torch.tensor([0, 60], dtype=torch.int32, device=TRITON_DEVICE)
    cos, sin = _rotary(cap, dim // 2, torch.float32)
    k_ref, v_ref = k_cache.double().cpu(), v_cache.double().cpu()
    q_rot = torch.full_like(q, float("nan"))
    kvcache_append(q, k, v, k_cache, v_cache, q_rot, seqlens, table, cos, sin, interleaved=False)
    out, lse = _decode(q_rot, k_cache, v_cache, seqlens + seq_q, table, num_splits=3)
    want, want_lse = reference.attention_with_kvcache(
        q.double().cpu(), k_ref, v_ref, k.double().cpu(), v.double().cpu(),
        cache_seqlens=seqlens.cpu(), block_table=None if table is None else table.cpu(),
        rotary_cos=cos.double().cpu(), rotary_sin=sin.double().cpu(), return_lse=True,
    )  # fmt: skip
    assert_close(out, want, atol_extra=2e-5)
    torch.testing.assert_close(lse.double().cpu(), want_lse, atol=LSE_TOL, rtol=LSE_TOL)
