"""Which tile the attention launchers run, and how big the dk/dv grid is (CPU checks of GPU
behaviour).

Decode must never re-tune while a KV cache grows (the autotuner compiles and benchmarks every
config each time its key changes: a multi-second stall mid-generation), and the backward must
pick its tiles by a fixed rule (the summation order depends on the tile, so an autotuned tile
can make two processes' grads differ bitwise). The launchers' ``launch`` is replaced by a spy
that records each launch; with the modules' ``INTERPRET`` switched off the launchers choose
exactly as on a GPU (those launches are recorded, not run). What decides a launch's tile is an
autotuner's key values, or the explicit tile of a plain kernel: it must be one value for every
cache length, and the rule's tile (unaligned rows: their own rule tile). Each test also runs
the launcher for real (interpreter on CPU) on a small case and checks the result against the
fp64 spec. The dk/dv grid of an MQA backward with B = 1 must cover the SMs of an H100 (132).
On CUDA, two fresh processes must give bit-identical grads.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import triton
from helpers import TRITON_DEVICE, assert_attention_bound

from fusedops import reference
from fusedops.kernels import attention as fwd
from fusedops.kernels import attention_backward as bwd
from fusedops.kernels import attention_decode as dec

H100_SMS = 132
LENGTHS = [2**n for n in range(4, 14)]  # 16 .. 8192 keys
TILE_KWARGS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


def _tile_identity(kernel, args, kwargs):
    """What decides the tile of one launch: the key values of an autotuner, or the explicit
    tile kwargs of a plain kernel."""
    if isinstance(kernel, triton.runtime.Autotuner):
        named = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
        return ("autotuned", tuple(named[name] for name in kernel.keys))
    return ("fixed", tuple(kwargs.get(name) for name in TILE_KWARGS))


def _spy(monkeypatch, module, *, run: bool):
    """Replace ``module.launch`` with a recorder of ``(kernel name, identity)``; it forwards
    to the real launch while ``run[0]`` is true."""
    real, calls, switch = module.launch, [], [run]

    def record(kernel, grid, *args, **kwargs):
        fn = getattr(kernel, "fn", kernel)
        calls.append((fn.__name__, _tile_identity(kernel, args, kwargs), grid))
        if switch[0]:
            return real(kernel, grid, *args, **kwargs)
        return None

    monkeypatch.setattr(module, "launch", record)
    return calls, switch


def _randn(*shape, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(TRITON_DEVICE)


# ------------------------------------------------------------------ decode


def _decode(q, k_cache, v_cache, lens, num_splits):
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"), device=q.device)
    dec.attention_decode(
        q, k_cache, v_cache, out, lse, seqlens_k=lens, block_table=None, causal=True,
        softmax_scale=1 / math.sqrt(q.shape[-1]), sliding_window=None, softcap=None,
        num_splits=num_splits,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("head_dim,hq,hkv", [(64, 8, 2), (128, 4, 4)])
def test_decode_tile_stays_fixed_as_the_cache_grows(monkeypatch, head_dim, hq, hkv):
    """Sq = 1 over a cache of 16 .. 8192 keys, split as the op splits it for 132 SMs: every
    decode launch has one tile, ``decode_tile``'s (nothing to re-tune)."""
    calls, run = _spy(monkeypatch, dec, run=True)
    # A real launch (interpreter) first: its result against the spec.
    q = _randn(1, 1, hq, head_dim, seed=1)
    k_cache, v_cache = _randn(1, 40, hkv, head_dim, seed=2), _randn(1, 40, hkv, head_dim, seed=3)
    lens = torch.tensor([37], dtype=torch.int32, device=TRITON_DEVICE)
    out = _decode(q, k_cache, v_cache, lens, num_splits=2)
    args = dict(cache_seqlens=lens.cpu(), return_lse=False)
    want = reference.attention_with_kvcache(
        *(t.cpu().double() for t in (q, k_cache, v_cache)), **args
    )
    same = reference.attention_with_kvcache(
        *(t.cpu() for t in (q, k_cache, v_cache)), compute_dtype=q.dtype, **args
    )
    assert_attention_bound("out", out, same, want, q.dtype)

    # Then the GPU's choice for every cache length (recorded, not run).
    monkeypatch.setattr(dec, "INTERPRET", False)
    run[0] = False
    calls.clear()
    for length in LENGTHS:
        k_cache = torch.empty(1, length, hkv, head_dim, dtype=torch.float16)
        lens = torch.tensor([length], dtype=torch.int32)
        splits = dec.decode_num_splits(1, hkv, hq // hkv, length, H100_SMS)
        _decode(
            torch.empty(1, 1, hq, head_dim, dtype=torch.float16), k_cache, k_cache, lens, splits
        )
    decode = {ident for name, ident, _ in calls if name == "decode_kernel"}
    assert len(decode) == 1, f"the tile's deciding values change with the cache: {decode}"
    block_m = dec.block_m_for(hq // hkv)
    block_n, warps, stages = dec.decode_tile(head_dim, 2, block_m)
    assert decode == {("fixed", (block_m, block_n, warps, stages))}, decode


def test_short_query_forward_tile_stays_fixed_as_keys_grow(monkeypatch):
    """``attention`` with Sq in {1, 7} over 16 .. 8192 keys (decode without a cache op): one
    tile, ``forward_tile``'s; a long prefill is still autotuned."""
    calls, run = _spy(monkeypatch, fwd, run=True)
    q, k, v = _randn(1, 4, 1, 64, seed=4), _randn(1, 2, 50, 64, seed=5), _randn(1, 2, 50, 64)
    out = torch.full_like(q, float("nan"))
    lse = torch.empty(q.shape[:3], device=q.device)
    fwd.attention_forward(
        q, k, v, out, lse, causal=True, softmax_scale=0.125, key_padding_mask=None
    )
    kw = dict(causal=True, softmax_scale=0.125)
    want = reference.attention(*(t.cpu().double() for t in (q, k, v)), **kw)
    same = reference.attention(*(t.cpu() for t in (q, k, v)), compute_dtype=q.dtype, **kw)
    assert_attention_bound("out", out, same, want, q.dtype)

    monkeypatch.setattr(fwd, "INTERPRET", False)
    run[0] = False
    for seq_q in (1, 7):
        calls.clear()
        for length in LENGTHS:
            q = torch.empty(2, 8, seq_q, 128, dtype=torch.bfloat16)
            k = torch.empty(2, 2, length, 128, dtype=torch.bfloat16)
            fwd.attention_forward(
                q, k, k, q, q[..., 0].float(), causal=True, softmax_scale=0.1,
                key_padding_mask=None,
            )  # fmt: skip
        tiles = {ident for _, ident, _ in calls}
        assert len(tiles) == 1, f"the tile's deciding values change with Sk: {tiles}"
        assert tiles == {("fixed", fwd.forward_tile(128, 2, seq_q=seq_q))}, tiles
    calls.clear()
    q = torch.empty(1, 2, 1000, 128, dtype=torch.float16)
    fwd.attention_forward(q, q, q, q, q[..., 0].float(), causal=True, softmax_scale=0.1,
                          key_padding_mask=None)  # fmt: skip
    assert calls[0][1][0] == "autotuned"


# ------------------------------------------------------------------ backward


def _backward(q, k, v, dout, *, causal=True, sliding_window=None):
    """The fp64 spec's out/lse, then the kernel's (dq, dk, dv) and the spec's grads."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    kw = dict(causal=causal, softmax_scale=0.3, sliding_window=sliding_window)
    out, lse = reference.attention(*leaves, return_lse=True, **kw)
    want = torch.autograd.grad(out, leaves, dout.cpu().double())
    lowp = [t.detach().cpu().requires_grad_() for t in (q, k, v)]
    same = torch.autograd.grad(
        reference.attention(*lowp, compute_dtype=q.dtype, **kw), lowp, dout.cpu()
    )
    grads = [torch.full_like(t, float("nan")) for t in (q, k, v)]
    bwd.attention_backward(
        q, k, v, out.to(q.dtype).to(q.device), lse.float().to(q.device), dout, *grads,
        key_padding_mask=None, **kw,
    )  # fmt: skip
    return grads, same, want


def test_backward_tiles_are_a_fixed_function_of_the_shape(monkeypatch):
    """Every dk/dv and dq launch runs ``backward_tile``'s tile for its head dim, dtype and
    variant flags (never an autotuner's pick), for any Sq/Sk."""
    calls, run = _spy(monkeypatch, bwd, run=True)
    q, dout = _randn(1, 4, 21, 48, seed=6), _randn(1, 4, 21, 48, seed=7)
    k, v = _randn(1, 2, 30, 48, seed=8), _randn(1, 2, 30, 48, seed=9)
    got, same, want = _backward(q, k, v, dout, sliding_window=9)
    for name, g, s, w in zip(("dq", "dk", "dv"), got, same, want, strict=True):
        assert_attention_bound(name, g, s, w, q.dtype)
    assert {i[0] for n, i, _ in calls if n in ("_bwd_dkdv", "_bwd_dq")} == {"fixed"}
    for kernel in ("dkdv", "dq"):
        tile = bwd.backward_tile(48, kernel, False, aligned=True)
        assert {i for n, i, _ in calls if n == f"_bwd_{kernel}"} == {("fixed", tile)}

    monkeypatch.setattr(bwd, "INTERPRET", False)
    run[0] = False
    for dtype in (torch.float16, torch.float32):
        for dim in (64, 80, 128):
            calls.clear()
            for seq in LENGTHS[:6]:
                q = torch.empty(1, 4, seq, dim, dtype=dtype)
                k = torch.empty(1, 2, seq + 3, dim, dtype=dtype)
                lse = q[..., 0].float()
                bwd.attention_backward(
                    q, k, k, q, lse, q, q, k, k, causal=True, softmax_scale=0.1,
                    key_padding_mask=None,
                )  # fmt: skip
            for kernel in ("dkdv", "dq"):
                tile = bwd.backward_tile(dim, kernel, dtype == torch.float32)
                tiles = {i for n, i, _ in calls if n == f"_bwd_{kernel}"}
                assert tiles == {("fixed", tile)}, (kernel, dim, dtype, tiles)


def test_deterministic_mode_pins_the_prefill_forward_tile(monkeypatch):
    """With ``torch.use_deterministic_algorithms(True)`` a long prefill runs
    ``forward_tile``'s tile too (bit-identical forward in every process)."""
    calls, run = _spy(monkeypatch, fwd, run=True)
    q, k, v = _randn(1, 2, 70, 32, seed=10), _randn(1, 1, 70, 32, seed=11), _randn(1, 1, 70, 32)
    out = torch.full_like(q, float("nan"))
    lse = torch.empty(q.shape[:3], device=q.device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        fwd.attention_forward(
            q, k, v, out, lse, causal=True, softmax_scale=0.2, key_padding_mask=None
        )
        assert calls[-1][1] == ("fixed", fwd.INTERPRET_CONFIG)
        monkeypatch.setattr(fwd, "INTERPRET", False)
        run[0] = False
        big = torch.empty(1, 2, 5000, 128, dtype=torch.float16)
        fwd.attention_forward(big, big, big, big, big[..., 0].float(), causal=True,
                              softmax_scale=0.1, key_padding_mask=None)  # fmt: skip
        assert calls[-1][1] == ("fixed", fwd.forward_tile(128, 2, seq_q=5000))
    finally:
        torch.use_deterministic_algorithms(previous)
    kw = dict(causal=True, softmax_scale=0.2)
    want = reference.attention(*(t.cpu().double() for t in (q, k, v)), **kw)
    same = reference.attention(*(t.cpu() for t in (q, k, v)), compute_dtype=q.dtype, **kw)
    assert_attention_bound("out", out, same, want, q.dtype)


# ------------------------------------------------------------------ dk/dv grid


@pytest.mark.parametrize("hq", [8, 32])
def test_mqa_dkdv_grid_fills_the_gpu(monkeypatch, hq):
    """MQA, B = 1, Sk = 2048, D = 128 on 132 SMs: unsplit, 32 key blocks of 64 would leave 100
    SMs idle; the launch splits the group's query heads so that every SM gets a program."""
    calls, _ = _spy(monkeypatch, bwd, run=False)
    monkeypatch.setattr(bwd, "INTERPRET", False)
    monkeypatch.setattr(bwd, "device_sm_count", lambda device: H100_SMS, raising=False)
    q = torch.empty(1, hq, 2048, 128, dtype=torch.float16)
    k = torch.empty(1, 1, 2048, 128, dtype=torch.float16)
    bwd.attention_backward(
        q, k, k, q, q[..., 0].float(), q, q, k, k, causal=True, softmax_scale=0.1,
        key_padding_mask=None,
    )  # fmt: skip
    grid = next(g for name, _, g in calls if name == "_bwd_dkdv")
    if callable(grid):  # an autotuned launch: the grid of its tile
        grid = grid({"BLOCK_M": 32, "BLOCK_N": 64})
    assert math.prod(grid) >= H100_SMS, grid
    block_n = bwd.backward_tile(128, "dkdv")[1]
    assert (grid, 8) == bwd.dkdv_grid(1, 1, hq, 2048, block_n, H100_SMS)  # 8 runs of heads
    # A grid that already fills the GPU (or MHA) is not split.
    assert bwd.dkdv_grid(4, 8, 4, 2048, block_n, H100_SMS)[1] == 1
    assert bwd.dkdv_grid(1, 1, 1, 2048, block_n, H100_SMS)[1] == 1


def test_dkdv_head_splits_rule():
    # Smallest divisor of the group reaching the SM count; else the largest within 2x need.
    assert bwd.dkdv_head_splits(32, 32, 132) == 8  # need 5: divisors 1, 2, 4, 8
    assert bwd.dkdv_head_splits(32, 4, 132) == 4  # the whole group: 128 programs
    assert bwd.dkdv_head_splits(10, 7, 132) == 7  # need 14, 7 is the only divisor > 1
    assert bwd.dkdv_head_splits(1, 64, 132) == 64  # need 132: the largest divisor, 64
    assert bwd.dkdv_head_splits(200, 8, 132) == 1


def test_unaligned_rows_get_their_own_fixed_tiles(monkeypatch):
    """Rows that are not 16-element multiples (D = 40) load element by element: every kernel
    runs its unaligned rule tile (bigger ones spill there), never an autotuned one, for a
    prefill as for decode; the backward runs it in the interpreter too (checked)."""
    calls, _ = _spy(monkeypatch, bwd, run=True)
    q, dout = _randn(1, 2, 19, 40, seed=12), _randn(1, 2, 19, 40, seed=13)
    k, v = _randn(1, 1, 23, 40, seed=14), _randn(1, 1, 23, 40, seed=15)
    got, same, want = _backward(q, k, v, dout)
    for name, g, s, w in zip(("dq", "dk", "dv"), got, same, want, strict=True):
        assert_attention_bound(name, g, s, w, q.dtype)
    for kernel in ("dkdv", "dq"):
        tile = bwd.backward_tile(40, kernel, False, aligned=False)
        assert {i for n, i, _ in calls if n == f"_bwd_{kernel}"} == {("fixed", tile)}

    fwd_calls, _ = _spy(monkeypatch, fwd, run=False)
    dec_calls, _ = _spy(monkeypatch, dec, run=False)
    monkeypatch.setattr(fwd, "INTERPRET", False)
    monkeypatch.setattr(dec, "INTERPRET", False)
    for seq_q in (1, 1000):
        q = torch.empty(1, 4, seq_q, 40, dtype=torch.float16)
        k = torch.empty(1, 1, 3000, 40, dtype=torch.float16)
        fwd.attention_forward(q, k, k, q, q[..., 0].float(), causal=True, softmax_scale=0.1,
                              key_padding_mask=None)  # fmt: skip
        assert fwd_calls[-1][1] == ("fixed", fwd.forward_tile(40, 2, aligned=False))
    q = torch.empty(1, 1, 8, 40, dtype=torch.float16)
    cache = torch.empty(1, 3000, 1, 40, dtype=torch.float16)
    lens = torch.tensor([2000], dtype=torch.int32)
    _decode(q, cache, cache, lens, num_splits=4)
    block_n, warps, stages = dec.decode_tile(40, 2, 16, aligned=False)
    assert dec_calls[0][1] == ("fixed", (16, block_n, warps, stages))


_PROCESS_SCRIPT = """
import sys
import torch
import fusedops
from fusedops import reference
from fusedops.kernels.attention_backward import attention_backward

torch.manual_seed(0)
dev = "cuda"
q = torch.randn(1, 8, 300, 64, device=dev, dtype=torch.bfloat16)
k = torch.randn(1, 1, 300, 64, device=dev, dtype=torch.bfloat16)
v = torch.randn(1, 1, 300, 64, device=dev, dtype=torch.bfloat16)
dout = torch.randn_like(q)
# The backward kernels on the spec's out/lse (no flag needed: their tiles are fixed).
out, lse = reference.attention(q.float(), k.float(), v.float(), causal=True, return_lse=True)
grads = [torch.empty_like(t) for t in (q, k, v)]
attention_backward(q, k, v, out.to(q.dtype), lse, dout, *grads, causal=True,
                   softmax_scale=0.125, key_padding_mask=None)
# The op forward and backward with deterministic algorithms on (the prefill forward too).
torch.use_deterministic_algorithms(True)
leaves = [t.clone().requires_grad_() for t in (q, k, v)]
y = fusedops.attention(*leaves, causal=True)
y.backward(dout)
torch.save([*grads, y.detach(), *(t.grad for t in leaves)], sys.argv[1])
"""


@pytest.mark.cuda
def test_grads_are_bit_identical_across_processes(tmp_path):
    """Two fresh processes (each tuning and compiling on its own) give the same bits: the
    backward always, the forward + backward with ``torch.use_deterministic_algorithms``."""
    results = []
    for run in range(2):
        path = tmp_path / f"run{run}.pt"
        subprocess.run([sys.executable, "-c", _PROCESS_SCRIPT, str(path)], check=True)
        results.append(torch.load(path))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
