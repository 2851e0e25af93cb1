"""The NaN rule of attention, for every entry point on every backend: a NaN in a query row, or in
a key/value the row attends to, reaches that row's output; a row with no allowed key is exactly
zero (lse ``-inf``) whatever its query and the keys/values it may not see hold (never-written
KV-cache slots full of NaN, say). Its gradients: dq is zero and it adds nothing to dk/dv.

Shapes are tiny (B <= 2, Hq = 2, D = 16): the Triton cases run in the interpreter."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_cases, max_abs_error

import fusedops
from fusedops import reference

NAN = float("nan")
ENTRIES = ["attention", "attention_hf", "attention_varlen", "attention_with_kvcache"]
SQ, SK = 5, 3  # causal, bottom-right: query rows 0 and 1 see no key


class _Layer(torch.nn.Module):
    is_causal = True


def _qkv(batch=1, device="cpu", seed=0, sq=SQ, sk=SK):
    """q ``[B, 2, Sq, 16]``, k/v ``[B, 1, Sk, 16]`` (GQA: both query heads share the kv head)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 2, sq, 16, generator=gen)
    k, v = torch.randn(2, batch, 1, sk, 16, generator=gen)
    return q.to(device), k.to(device), v.to(device)


def _call(entry, backend, q, k, v, causal=True):
    """``(out [B, Hq, Sq, D], lse [B, Hq, Sq] or None)`` of attention through ``entry`` (the KV
    cache holds exactly the Sk keys, no append; varlen packs the batch of one)."""
    sq, sk = q.shape[2], k.shape[2]
    with fusedops.use_backend(backend):
        if entry == "attention":
            return fusedops.attention(q, k, v, causal=causal, return_lse=True)
        if entry == "attention_hf":
            out = fusedops.attention_hf(_Layer(), q, k, v, None, is_causal=causal)[0]
            return out.transpose(1, 2), None
        if entry == "attention_varlen":
            cu_q = torch.tensor([0, sq], dtype=torch.int32, device=q.device)
            cu_k = torch.tensor([0, sk], dtype=torch.int32, device=q.device)
            out, lse = fusedops.attention_varlen(
                q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu_q, cu_k,
                sq, sk, causal=causal, return_lse=True,
            )  # fmt: skip
            return out.transpose(0, 1).unsqueeze(0), lse.unsqueeze(0)
        lens = torch.full((q.shape[0],), sk, dtype=torch.int32, device=q.device)
        out, lse = fusedops.attention_with_kvcache(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cache_seqlens=lens,
            causal=causal, return_lse=True,
        )  # fmt: skip
        return out.transpose(1, 2), lse


def _assert_empty_rows(out, lse):
    """Query rows 0 and 1 (no key): exact zeros, lse -inf."""
    assert torch.equal(out[:, :, :2].cpu(), torch.zeros_like(out[:, :, :2]).cpu())
    if lse is not None:
        assert bool((lse[:, :, :2] == float("-inf")).all())


# (Sq, Sk, causal): query rows 0 and 1 without a key (SDPA with an explicit mask), SDPA's own
# causal mask, no mask at all, a decode step (no mask either).
QUERY_CASES = [(5, 3, True), (5, 5, True), (5, 3, False), (1, 3, True)]


@pytest.mark.parametrize("sq,sk,causal", QUERY_CASES)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend,device", backend_cases())
def test_nan_in_a_query_row(backend, device, entry, sq, sk, causal):
    """A NaN in the last query row of head 1 makes that row NaN (SDPA's CPU kernel returned
    zeros without a mask); with Sq > Sk causal a NaN in query row 1 of head 0, which sees no
    key, leaves it zero. The other rows are untouched."""
    q, k, v = _qkv(device=device, sq=sq, sk=sk)
    bad = q.clone()
    bad[0, 1, -1, 7] = NAN
    empty = causal and sq > sk
    if empty:
        bad[0, 0, 1, 4] = NAN
    out, lse = _call(entry, backend, bad, k, v, causal)
    assert bool(torch.isnan(out[0, 1, -1]).all()), "the NaN query row must give NaN"
    if lse is not None:
        assert bool(torch.isnan(lse[0, 1, -1]))
    if empty:
        _assert_empty_rows(out, lse)
    want = reference.attention(q.double(), k.double(), v.double(), causal=causal)
    rest = torch.ones(out.shape[:3], dtype=torch.bool)
    rest[0, 1, -1] = False
    assert not bool(torch.isnan(out[rest]).any())
    assert max_abs_error(out[rest], want[rest]) < 1e-5


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend,device", backend_cases())
def test_nan_in_an_attended_key_or_value(backend, device, entry):
    """v of key 0 and one feature of k of key 1 are NaN: every row that sees them (rows 2-4)
    is NaN; rows 0 and 1 may see no key and stay exactly zero (Triton and the reference
    returned NaN: 0 x NaN in the probabilities-times-values product)."""
    q, k, v = _qkv(device=device)
    k, v = k.clone(), v.clone()
    v[0, 0, 0] = NAN
    k[0, 0, 1, 3] = NAN
    out, lse = _call(entry, backend, q, k, v)
    assert bool(torch.isnan(out[:, :, 2:]).all())
    _assert_empty_rows(out, lse)


@pytest.mark.parametrize("entry", ["attention", "attention_hf"])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_fully_padded_batch_with_nan_keys(backend, device, entry):
    """Batch 1 has every key padded and NaN everywhere in q, k and v: its rows are zeros with
    lse -inf; batch 0 matches the reference."""
    q, k, v = _qkv(batch=2, device=device)
    pad = torch.ones(2, SK, dtype=torch.bool, device=device)
    pad[1] = False
    clean = q.clone(), k.clone(), v.clone()
    for t in (q, k, v):
        t[1] = NAN
    with fusedops.use_backend(backend):
        if entry == "attention":
            out, lse = fusedops.attention(q, k, v, key_padding_mask=pad, return_lse=True)
        else:
            mask = fusedops.masks.attention_mask(SQ, SK, causal=True, key_padding_mask=pad)
            out, lse = fusedops.attention_hf(_Layer(), q, k, v, mask)[0].transpose(1, 2), None
    assert torch.equal(out[1].cpu(), torch.zeros_like(out[1]).cpu())
    if lse is not None:
        assert bool((lse[1] == float("-inf")).all())
    want = reference.attention(*(t[:1].double() for t in clean), key_padding_mask=pad[:1])
    assert max_abs_error(out[:1], want) < 1e-5


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty_rows_with_nan_values_window_softcap(backend, device, softcap):
    """The window / softcap variants (the CPU softcap path is plain PyTorch): query rows 0 and
    1 see no key and stay zero next to NaN values the later rows attend."""
    q, k, v = _qkv(device=device)
    v = v.clone()
    v[0, 0, 0] = NAN
    with fusedops.use_backend(backend):
        out, lse = fusedops.attention(q, k, v, sliding_window=2, softcap=softcap, return_lse=True)
    _assert_empty_rows(out, lse)
    assert bool(torch.isnan(out[:, :, 2]).all())  # row 2 sees key 0 (window 2: keys -1, 0)


def _paged(dense, block):
    """``(cache [B * blocks, block, Hkv, D], block_table [B, blocks])`` holding ``dense
    [B, S_max, Hkv, D]`` in reversed block order."""
    batch, s_max = dense.shape[:2]
    blocks = s_max // block
    table = torch.arange(batch * blocks, dtype=torch.int32, device=dense.device).flip(0)
    table = table.view(batch, blocks)
    cache = torch.empty((batch * blocks, block, *dense.shape[2:]), device=dense.device)
    cache[table.long()] = dense.view(batch, blocks, block, *dense.shape[2:])
    return cache, table


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_kvcache_never_written_slots(backend, device, paged):
    """A KV cache allocated full of NaN holding 3 and 5 keys: a decode step appends one token
    to each. The slots past a sequence's length are never read: both rows match the reference
    (the CPU path read sequence 0's unwritten slots 4 and 5 through the key block padded to the
    longest sequence). A read-only call where sequence 1 has no key gives zeros there."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 2, 16, generator=gen).to(device)
    k_new, v_new = torch.randn(2, 2, 1, 1, 16, generator=gen).to(device)
    caches = []
    for _ in range(2):
        dense = torch.full((2, 8, 1, 16), NAN)
        dense[0, :3] = torch.randn(3, 1, 16, generator=gen)
        dense[1, :5] = torch.randn(5, 1, 16, generator=gen)
        caches.append(dense.to(device))
    table = None
    if paged:
        (k_cache, table), (v_cache, _) = _paged(caches[0], 4), _paged(caches[1], 4)
    else:
        k_cache, v_cache = caches
    lens = torch.tensor([3, 5], dtype=torch.int32, device=device)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    with fusedops.use_backend(backend):
        out = fusedops.attention_with_kvcache(
            q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens, block_table=table
        )
    want = reference.attention_with_kvcache(
        q, want_k, want_v, k_new, v_new, cache_seqlens=lens, block_table=table
    )
    assert not bool(torch.isnan(out).any())
    assert max_abs_error(out, want) < 1e-5
    lens = torch.tensor([4, 0], dtype=torch.int32, device=device)
    with fusedops.use_backend(backend):
        out, lse = fusedops.attention_with_kvcache(
            q, k_cache, v_cache, cache_seqlens=lens, block_table=table, return_lse=True
        )
    assert torch.equal(out[1].cpu(), torch.zeros_like(out[1]).cpu())
    assert bool((lse[1] == float("-inf")).all())
    assert not bool(torch.isnan(out[0]).any())


@pytest.mark.parametrize("entry", ["attention", "attention_varlen"])
@pytest.mark.parametrize("backend,device", backend_cases())
def test_empty_rows_gradients(backend, device, entry):
    """Rows 0 and 1 see no key: their dq is exactly zero and their query and upstream gradient
    change nothing in dk and dv (compared bit for bit with other values there)."""
    grads = []
    for scale in (1.0, 1e3):
        q, k, v = _qkv(device=device)
        q = q.clone()
        q[:, :, :2] *= scale
        gen = torch.Generator().manual_seed(9)
        dout = torch.randn(q.shape, generator=gen).to(device)
        dout[:, :, :2] *= scale
        for t in (q, k, v):
            t.requires_grad_()
        with fusedops.use_backend(backend):
            if entry == "attention":
                out = fusedops.attention(q, k, v)
            else:
                cu_q = torch.tensor([0, SQ], dtype=torch.int32, device=device)
                cu_k = torch.tensor([0, SK], dtype=torch.int32, device=device)
                out = fusedops.attention_varlen(
                    q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu_q,
                    cu_k, SQ, SK,
                ).transpose(0, 1).unsqueeze(0)  # fmt: skip
        grads.append(torch.autograd.grad(out, (q, k, v), dout))
    for dq, _, _ in grads:
        assert torch.equal(dq[:, :, :2].cpu(), torch.zeros_like(dq[:, :, :2]).cpu())
    assert torch.equal(grads[0][1], grads[1][1]) and torch.equal(grads[0][2], grads[1][2])
