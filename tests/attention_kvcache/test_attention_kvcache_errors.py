"""fusedops.attention_with_kvcache rejects bad inputs with a message naming the op and the
argument, and writes nothing to the cache when it does."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_cases
from test_attention_kvcache import make_case

import fusedops


def _set(**changes):
    return lambda case: {**case, **changes}


def _with(name, fn):
    return lambda case: {**case, name: fn(case[name])}


def _paged(case):
    device = case["q"].device
    return make_case(2, 3, 4, 2, 16, s_max=32, block_size=8, rotary="half", lens=[5, 20],
                     device=device)  # fmt: skip


def _paged_with(name, fn):
    return lambda case: _with(name, fn)(_paged(case))


def _bad_table(value, column):
    def change(case):
        case = _paged(case)
        case["block_table"] = case["block_table"].clone()
        case["block_table"][1, column] = value
        return case

    return change


BAD = [
    (_with("q", lambda t: t.double()), TypeError, "q must have dtype.*float64"),
    (_with("q", lambda t: t[0]), ValueError, r"q must be 4-D \[B, Sq, Hq, D\]"),
    (_with("k_cache", lambda t: t.half()), TypeError, "k_cache dtype torch.float16 differs"),
    (_with("v", lambda t: t.half()), TypeError, "v dtype torch.float16 differs"),
    (_with("v_cache", lambda t: t[:, :5]), ValueError, "k_cache and v_cache must have the same"),
    (lambda case: {**case, "k_cache": case["k_cache"][:1], "v_cache": case["v_cache"][:1]},
     ValueError, r"k_cache \(1, 40, 2, 16\) must be \[B, S_max, Hkv, D\] matching q"),
    (_with("k_cache", lambda t: t.transpose(2, 3)), ValueError, r"k_cache must have a contig"),
    (_with("k", lambda t: t[:, :2]), ValueError, r"k must be \[B, Sq, Hkv, D\]"),
    (_set(v=None), ValueError, "pass both k and v"),
    (_set(k=None, v=None), ValueError, "rotary_cos/rotary_sin need the new k and v"),
    (_set(rotary_sin=None), ValueError, "pass both rotary_cos and rotary_sin"),
    (_with("rotary_cos", lambda t: torch.cat([t, t, t], 1)), ValueError, "rotary_cos and rot"),
    (_set(rotary_cos=torch.zeros(40, 9), rotary_sin=torch.zeros(40, 9)), ValueError,
     r"rotary_dim = 2 x rotary_cos.shape\[1\] = 18 must be in \[2, D=16\]"),
    (lambda case: {**case, "rotary_cos": case["rotary_cos"][:6],
                   "rotary_sin": case["rotary_sin"][:6]}, IndexError,
     r"rotary position \d+ \(cache_seqlens\[\d\] \+ Sq - 1\) outside rotary_cos/rotary_sin "
     r"\[0, 6\)"),
    (_with("cache_seqlens", lambda t: t.long()), TypeError, "cache_seqlens must have dtype.*int32"),
    (_with("cache_seqlens", lambda t: t[:2]), ValueError, r"cache_seqlens must be \[3\]"),
    (_set(cache_seqlens=1.5), TypeError, "cache_seqlens must be an int32 tensor"),
    (_set(cache_seqlens=38), ValueError,
     r"cache_seqlens\[0\] \+ Sq_new = 38 \+ 3 exceeds the cache capacity S_max=40"),
    (_set(cache_seqlens=torch.tensor([0, 3, 38], dtype=torch.int32)), ValueError,
     r"cache_seqlens\[2\] \+ Sq_new = 38 \+ 3 exceeds the cache capacity S_max=40"),
    (_set(cache_seqlens=torch.tensor([0, -1, 3], dtype=torch.int32)), ValueError,
     r"cache_seqlens must be >= 0, got -1 at batch 1"),
    (_set(sliding_window=4, causal=False), ValueError, "sliding_window=4 needs causal=True"),
    (_set(sliding_window=0), ValueError, "sliding_window must be >= 1"),
    (_set(softcap=-1.0), ValueError, "softcap must be a finite number > 0"),
    (_set(softmax_scale="x"), TypeError, "softmax_scale must be a real number"),
    (_set(num_splits=-1), ValueError, "num_splits must be >= 0"),
    (_set(num_splits=1.0), TypeError, "num_splits must be an int"),
    (_set(causal=1), TypeError, "causal must be a bool"),
    (_set(check_indices=None), TypeError, "check_indices must be a bool"),
    (_paged_with("block_table", lambda t: t.long()), TypeError,
     "block_table must have dtype.*int32"),
    (_paged_with("block_table", lambda t: t[:1]), ValueError,
     r"block_table must be \[2, max_blocks\]"),
    (lambda case: {**_paged(case), "cache_seqlens": torch.tensor([5, 30], dtype=torch.int32)},
     ValueError, r"cache_seqlens\[1\] \+ Sq_new = 30 \+ 3 exceeds the block table's capacity "
     r"4 blocks x 8 = 32"),
    (lambda case: {**_paged(case), "cache_seqlens": 30}, ValueError,
     r"cache_seqlens\[0\] \+ Sq_new = 30 \+ 3 exceeds the block table's capacity 4 blocks"),
    (_bad_table(99, 2), IndexError, r"block_table\[1, 2\] = 99 outside \[0, \d+\)"),
    (_bad_table(-1, 0), IndexError, r"block_table\[1, 0\] = -1 outside"),
]  # fmt: skip


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("change,exc,match", BAD)
def test_bad_inputs_write_nothing(backend, device, change, exc, match):
    case = change(make_case(3, 3, 4, 2, 16, s_max=40, rotary="half", device=device))
    caches = {n: case[n].clone() for n in ("k_cache", "v_cache") if torch.is_tensor(case[n])}
    with (
        fusedops.use_backend(backend),
        pytest.raises(exc, match=f"^attention_with_kvcache: {match}"),
    ):
        fusedops.attention_with_kvcache(**case)
    for name, before in caches.items():
        assert torch.equal(case[name], before), f"{name} written by a rejected call"


def test_unused_block_table_entries_are_not_checked():
    """Entries past a sequence's blocks may hold anything (they are never read)."""
    case = _bad_table(1000, 3)(make_case())  # batch 1 uses ceil(23 / 8) = 3 blocks
    fusedops.attention_with_kvcache(**case)


def test_device_mismatch():
    case = make_case(2, 1, 4, 2, 16, s_max=8)
    with pytest.raises(ValueError, match="attention_with_kvcache: k_cache is on meta"):
        fusedops.attention_with_kvcache(**{**case, "k_cache": case["k_cache"].to("meta")})
    with pytest.raises(ValueError, match="attention_with_kvcache: cache_seqlens is on meta"):
        lens = torch.zeros(2, dtype=torch.int32, device="meta")
        fusedops.attention_with_kvcache(**{**case, "cache_seqlens": lens})
