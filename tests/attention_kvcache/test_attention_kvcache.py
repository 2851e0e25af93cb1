"""fusedops.attention_with_kvcache against the fp64 reference on every backend: dense and paged
caches, ragged cache_seqlens (0 included), new k/v or none, RoPE (half / interleaved, partial),
GQA, head dims, window, softcap, split counts; the in-place append writes exactly the slots
``[cache_seqlens, cache_seqlens + Sq)`` (the rest of the cache is bit-identical); opcheck with
the mutation declared; torch.compile(fullgraph=True).

Error bound: ``helpers.assert_attention_bound`` (2x PyTorch's own same-dtype error + a floor);
the yardstick is the reference run in the input dtype. Under Triton's interpreter the shapes
stay tiny (its cost is per program)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    DTYPES,
    KERNEL_CASES,
    LSE_TOL,
    TOLERANCES,
    TRITON_DEVICE,
    assert_attention_bound,
    backend_cases,
    max_abs_error,
)

import fusedops
from fusedops import reference
from fusedops.ops.attention_kvcache import attention_with_kvcache_op


def _rope_tables(rows: int, rotary_dim: int, dtype, device):
    """cos/sin ``[rows, rotary_dim / 2]`` (base 10000)."""
    freq = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = torch.arange(rows, dtype=torch.float64).unsqueeze(1) * freq
    return angles.cos().to(dtype).to(device), angles.sin().to(dtype).to(device)


def make_case(batch=3, sq=3, hq=4, hkv=2, dim=32, *, s_max=40, block_size=None, lens=None,
              new=True, rotary=None, dtype=torch.float32, device="cpu", seed=0):  # fmt: skip
    """Arguments of one call. ``lens``: cache_seqlens (default ragged, the first 0);
    ``block_size``: a paged cache of ``batch * ceil(s_max / block_size) + 2`` shuffled blocks
    whose unused block-table entries are out of range (never read); ``rotary``: None, "half"
    (rotary_dim = D) or "interleaved" (rotary_dim = D / 2)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    if lens is None:
        room = s_max - (sq if new else 0)
        lens = [0, *torch.randint(0, room + 1, (batch - 1,), generator=gen).tolist()]
        lens[-1] = room if batch > 1 else 0  # one sequence fills the cache
    lens = torch.tensor(lens, dtype=torch.int32, device=device) if isinstance(lens, list) else lens
    args = {"q": rnd(batch, sq, hq, dim), "k": None, "v": None}
    if new:
        args["k"], args["v"] = rnd(batch, sq, hkv, dim), rnd(batch, sq, hkv, dim)
    kwargs: dict = {"cache_seqlens": lens}
    if block_size is None:
        args["k_cache"], args["v_cache"] = rnd(batch, s_max, hkv, dim), rnd(batch, s_max, hkv, dim)
    else:
        max_blocks = math.ceil(s_max / block_size)
        blocks = batch * max_blocks + 2
        table = torch.randperm(blocks, generator=gen)[: batch * max_blocks].view(batch, -1)
        used = (lens.cpu().long() + (sq if new else 0) + block_size - 1) // block_size
        table[torch.arange(max_blocks) >= used.unsqueeze(1)] = blocks + 7  # never read
        kwargs["block_table"] = table.to(torch.int32).to(device)
        args["k_cache"] = rnd(blocks, block_size, hkv, dim)
        args["v_cache"] = rnd(blocks, block_size, hkv, dim)
    if rotary is not None:
        rot = dim if rotary == "half" else dim // 2
        kwargs["rotary_cos"], kwargs["rotary_sin"] = _rope_tables(s_max + 3, rot, dtype, device)
        kwargs["rotary_interleaved"] = rotary == "interleaved"
    return {**args, **kwargs}


def _written_slots(case: dict) -> torch.Tensor:
    """Bool ``[rows, cols]`` over the cache's first two dims: the slots the append writes."""
    cache, lens, table = case["k_cache"], case["cache_seqlens"].tolist(), case.get("block_table")
    mask = torch.zeros(cache.shape[:2], dtype=torch.bool)
    if case["k"] is None:
        return mask
    for b, start in enumerate(lens):
        for j in range(start, start + case["q"].shape[1]):
            if table is None:
                mask[b, j] = True
            else:
                mask[int(table[b, j // cache.shape[1]]), j % cache.shape[1]] = True
    return mask


def _cast(case: dict, dtype) -> dict:
    """The case with every float tensor in ``dtype`` (copies, so caches are fresh)."""
    return {
        key: value.to(dtype, copy=True) if torch.is_tensor(value) and value.is_floating_point()
        else value
        for key, value in case.items()
    }  # fmt: skip


def check_kvcache(
    backend: str, case: dict, num_splits: int = 0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """One call on ``backend`` against the fp64 reference: out (the bound), lse, and the cache
    (written slots hold the reference's new k/v, every other slot is unchanged bit for bit)."""
    dtype = case["q"].dtype
    before = {name: case[name].clone() for name in ("k_cache", "v_cache")}
    want_case, yard_case = _cast(case, torch.float64), _cast(case, dtype)
    with fusedops.use_backend(backend):
        out, lse = fusedops.attention_with_kvcache(
            **case, return_lse=True, num_splits=num_splits, **kwargs
        )
    want, want_lse = reference.attention_with_kvcache(**want_case, return_lse=True, **kwargs)
    yardstick, yard_lse = reference.attention_with_kvcache(
        **yard_case, compute_dtype=dtype, return_lse=True, **kwargs
    )
    assert out.dtype == dtype and out.shape == case["q"].shape, (out.dtype, out.shape)
    assert_attention_bound("out", out, yardstick, want, dtype)
    b, sq, hq, _ = case["q"].shape
    assert lse.shape == (b, hq, sq) and lse.dtype == torch.float32, (lse.shape, lse.dtype)
    empty = torch.isinf(want_lse)
    assert torch.equal(torch.isinf(lse).cpu(), empty.cpu()) and bool((lse[empty] < 0).all())
    if not empty.all():
        # The bound of ``out`` with the lse's fp32 floor: in fp16/bf16 the RoPE'd q is rounded.
        err, base = (
            max_abs_error(lse[~empty], want_lse[~empty]),
            max_abs_error(yard_lse[~empty], want_lse[~empty]),
        )
        top = want_lse[~empty].abs().max().item()
        assert err <= 2 * base + LSE_TOL * (1 + top), f"lse error {err:.3g} (PyTorch's {base:.3g})"
    written = _written_slots(case).to(out.device)
    for name in ("k_cache", "v_cache"):
        got, old = case[name], before[name]
        assert torch.equal(got[~written], old[~written]), f"{name}: a slot outside the append"
        if name == "v_cache" or "rotary_cos" not in case:
            assert torch.equal(got[written], yard_case[name][written]), f"{name}: new rows"
        else:  # RoPE'd k: fp32 math rounded to the dtype
            atol, rtol = TOLERANCES[dtype]
            torch.testing.assert_close(
                got[written].double(), want_case[name][written], atol=atol, rtol=rtol
            )
    return out, lse


CPU_CASES = backend_cases()  # cpp, reference (and triton: the interpreter, or CUDA)
CPU_ONLY = [case for case in CPU_CASES if case.values[0] != "triton"]
CPP = CPU_ONLY[:1]  # the grids: the plain-PyTorch path (the reference backend is the spec)


# ---- the grid on the CPU backends (cpp = plain PyTorch, reference) ---------------------------


@pytest.mark.parametrize("rotary", [None, "half", "interleaved"])
@pytest.mark.parametrize("sq", [1, 3, 17])
@pytest.mark.parametrize("backend,device", CPP)
def test_dense_append(backend, device, sq, rotary):
    """New k/v appended (RoPE off, half, interleaved partial), ragged lengths including 0."""
    check_kvcache(backend, make_case(sq=sq, hq=8, hkv=2, dim=64, rotary=rotary, device=device))


@pytest.mark.parametrize("sq", [1, 3, 17])
@pytest.mark.parametrize("backend,device", CPU_ONLY)
def test_dense_no_new_keys(backend, device, sq):
    """k/v None: attention over the cache as it is; a sequence with no key gives zeros / -inf
    (and, causal with Sq > L_b, rows before the first key)."""
    out, lse = check_kvcache(backend, make_case(sq=sq, new=False, device=device))
    assert bool((out[0] == 0).all()) and bool(torch.isinf(lse[0]).all())


@pytest.mark.parametrize("sq", [1, 3, 17])
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("backend,device", CPP)
def test_paged(backend, device, block_size, sq):
    s_max = 3 * block_size if block_size == 16 else 300
    case = make_case(sq=sq, s_max=s_max, block_size=block_size, rotary="half", device=device)
    check_kvcache(backend, case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(8, 1), (9, 3)])
@pytest.mark.parametrize("dim", [64, 80, 128, 256])
@pytest.mark.parametrize("backend,device", CPP)
def test_heads_dims_dtypes(backend, device, dim, heads, dtype):
    case = make_case(2, 3, *heads, dim, s_max=24, rotary="half", dtype=dtype, device=device)
    check_kvcache(backend, case)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("window", [5, 1000])
@pytest.mark.parametrize("sq", [1, 17])
@pytest.mark.parametrize("backend,device", CPP)
def test_window_softcap(backend, device, sq, window, softcap):
    """Windows smaller and larger than the key count, with and without a softcap."""
    case = make_case(sq=sq, hq=9, hkv=3, dim=64, s_max=48, device=device)
    check_kvcache(backend, case, sliding_window=window, softcap=softcap, softmax_scale=0.3)


@pytest.mark.parametrize("backend,device", CPU_ONLY)
def test_reference_backend(backend, device):
    """The grid's features on the reference backend too (dense RoPE'd, paged with window and
    softcap, one sequence empty)."""
    case = make_case(sq=3, hq=8, hkv=2, dim=64, rotary="interleaved", device=device)
    check_kvcache(backend, case)
    case = make_case(sq=17, s_max=48, block_size=16, new=False, device=device)
    check_kvcache(backend, case, sliding_window=5, softcap=3.0)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("backend,device", CPU_CASES)
def test_not_causal_int_seqlens(backend, device, paged):
    """causal=False (every key), cache_seqlens as a Python int."""
    sq = 3 if backend != "triton" else 2
    case = make_case(2, sq, 4, 2, 32, s_max=32, block_size=16 if paged else None,
                     lens=[9, 9], device=device)  # fmt: skip
    out = check_kvcache(backend, case, causal=False)[0]
    case2 = {**make_case(2, sq, 4, 2, 32, s_max=32, block_size=16 if paged else None,
                         lens=[9, 9], device=device), "cache_seqlens": 9}  # fmt: skip
    with fusedops.use_backend(backend):
        out2 = fusedops.attention_with_kvcache(**case2, causal=False)
    assert torch.equal(out, out2)
    assert torch.equal(case["k_cache"], case2["k_cache"])


@pytest.mark.parametrize("backend,device", CPU_CASES)
def test_hf_static_cache_view(backend, device):
    """Hugging Face's StaticCache tensors ``[B, Hkv, S_max, D]`` as ``.transpose(1, 2)``
    views are written in place through the view."""
    case = make_case(2, 1, 4, 2, 32, s_max=24, rotary="half", device=device)
    for name in ("k_cache", "v_cache"):
        case[name] = case[name].transpose(1, 2).contiguous().transpose(1, 2)
    base = case["k_cache"]
    check_kvcache(backend, case)
    assert case["k_cache"].data_ptr() == base.data_ptr()


@pytest.mark.parametrize("backend,device", CPU_CASES)
def test_empty_batch_and_queries(backend, device):
    for batch, sq in ((0, 1), (2, 0)):
        case = make_case(max(batch, 1), max(sq, 1), 4, 2, 16, s_max=8, lens=[0] * max(batch, 1),
                         device=device)  # fmt: skip
        case["q"], case["k"], case["v"] = (case[n][:batch, :sq] for n in ("q", "k", "v"))
        case["cache_seqlens"] = case["cache_seqlens"][:batch]
        if batch == 0:
            case["k_cache"], case["v_cache"] = case["k_cache"][:0], case["v_cache"][:0]
        before = case["k_cache"].clone()
        with fusedops.use_backend(backend):
            out, lse = fusedops.attention_with_kvcache(**case, return_lse=True)
        assert out.shape == case["q"].shape and lse.shape == (batch, 4, sq)
        assert torch.equal(case["k_cache"], before)


def test_cpu_rejects_grad():
    case = make_case(1, 1, 4, 2, 16, s_max=8)
    case["q"].requires_grad_()
    with pytest.raises(ValueError, match="attention_with_kvcache: inference only"):
        fusedops.attention_with_kvcache(**case)
    with torch.no_grad():
        fusedops.attention_with_kvcache(**case)


# ---- Triton (interpreter on CPU: tiny grid) -------------------------------------------------


@pytest.mark.parametrize(
    "shape,extra",
    [
        ((2, 1, 4, 2, 32, 40, None), {"rotary": "half"}),
        ((2, 3, 4, 1, 16, 40, 16), {"rotary": "interleaved"}),  # paged, MQA, Sq = 3
        ((1, 17, 2, 2, 64, 24, None), {}),  # Sq = 17 chunk
        ((2, 2, 9, 3, 80, 24, 8), {"new": False}),  # D 80, group 3, no new keys, lens 0
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton(shape, extra, dtype):
    batch, sq, hq, hkv, dim, s_max, block = shape
    case = make_case(batch, sq, hq, hkv, dim, s_max=s_max, block_size=block, dtype=dtype,
                     device=TRITON_DEVICE, **extra)  # fmt: skip
    check_kvcache("triton", case)


@pytest.mark.parametrize("window,softcap", [(3, None), (1000, 2.0), (6, 5.0)])
def test_triton_window_softcap(window, softcap):
    case = make_case(2, 3, 4, 2, 32, s_max=32, block_size=8, device=TRITON_DEVICE)
    check_kvcache("triton", case, sliding_window=window, softcap=softcap)


@pytest.mark.parametrize("splits,window", [(0, None), (5, 700)])
def test_triton_long_cache(splits, window):
    """A 4k-key paged cache (block 256) on the interpreter: ragged lengths near the capacity,
    the heuristic's split count and an explicit one, with and without a window."""
    case = make_case(2, 1, 4, 1, 64, s_max=4096, block_size=256, lens=[4000, 2900],
                     rotary="half", device=TRITON_DEVICE)  # fmt: skip
    check_kvcache("triton", case, num_splits=splits, sliding_window=window)


def test_triton_every_split_count_agrees():
    """num_splits 1..3 and the heuristic give the same output (within fp32 rounding) and
    the same cache."""
    base = make_case(2, 2, 4, 2, 32, s_max=64, block_size=16, rotary="half", lens=[40, 13],
                     device=TRITON_DEVICE)  # fmt: skip
    outs, first = [], _cast(base, torch.float32)
    outs.append(check_kvcache("triton", first)[0])  # num_splits=0: the heuristic
    for splits in (1, 2, 3):
        case = _cast(base, torch.float32)
        with fusedops.use_backend("triton"):
            outs.append(fusedops.attention_with_kvcache(**case, num_splits=splits))
        assert torch.equal(case["k_cache"], first["k_cache"]), f"num_splits={splits}"
        assert max_abs_error(outs[-1], outs[0]) <= 1e-6, f"num_splits={splits}"


# ---- custom op registration, torch.compile --------------------------------------------------


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_opcheck(backend, device):
    """opcheck with k_cache/v_cache declared mutated (RoPE'd append; paged on the CPU path,
    dense on the Triton one)."""
    paged = backend == "cpp"
    case = make_case(2, 2, 4, 2, 16, s_max=16, block_size=8 if paged else None, rotary="half",
                     lens=[3, 0], device=device)  # fmt: skip
    args = (
        case["q"], case["k_cache"], case["v_cache"], case["k"], case["v"], case["cache_seqlens"],
        case.get("block_table"), case["rotary_cos"], case["rotary_sin"], False, True, 0.25, None,
        None, 0, True, True, backend,
    )  # fmt: skip
    torch.library.opcheck(attention_with_kvcache_op, args)


@pytest.mark.parametrize("backend,device", KERNEL_CASES)
def test_torch_compile_fullgraph(backend, device):
    """Two decode steps and a read-only call (an int cache_seqlens) in one compiled graph: the
    index check runs inside the op, the int's check in plain Python."""
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph
    case = make_case(2, 1, 4, 2, 16, s_max=12, lens=[3, 5], rotary="half", device=device)
    k2, v2 = case["k"] + 1, case["v"] - 1
    want_case = _cast(case, torch.float64)

    def step(case, k2, v2, fn=fusedops.attention_with_kvcache):
        out = fn(**case)
        nxt = {**case, "k": k2, "v": v2, "cache_seqlens": case["cache_seqlens"] + 1}
        plain = {**nxt, "k": None, "v": None, "rotary_cos": None, "rotary_sin": None}
        plain["cache_seqlens"] = 5  # an int, no append
        return out + fn(**nxt, softcap=4.0) + fn(**plain)

    with fusedops.use_backend(backend), torch.no_grad():
        out = torch.compile(step, fullgraph=True, dynamic=False)(case, k2, v2)
    want = step(want_case, k2.double(), v2.double(), reference.attention_with_kvcache)
    assert max_abs_error(out, want) < 1e-5
    assert max_abs_error(case["k_cache"], want_case["k_cache"]) < 1e-5


@pytest.mark.parametrize("backend,device", KERNEL_CASES[:1])  # the custom op: as on Triton
def test_torch_compile_dynamic(backend, device):
    """A decode step (RoPE + append + attention) under torch.compile(dynamic=True,
    fullgraph=True) at two batch / cache sizes (one graph; the index check runs inside the op)."""
    torch._dynamo.reset()  # the backend is a traced constant: never reuse another backend's graph
    compiled = torch.compile(
        lambda case: fusedops.attention_with_kvcache(**case, softmax_scale=0.3),
        backend="aot_eager", dynamic=True, fullgraph=True,
    )  # fmt: skip
    for batch, s_max, lens in ((2, 12, [3, 5]), (3, 16, [0, 7, 15])):
        case = make_case(batch, 1, 4, 2, 16, s_max=s_max, lens=lens, rotary="half", device=device)
        want_case = _cast(case, torch.float64)
        with fusedops.use_backend(backend), torch.no_grad():
            out = compiled(case)
        want = reference.attention_with_kvcache(**want_case, softmax_scale=0.3)
        assert max_abs_error(out, want) < 1e-5
        assert max_abs_error(case["k_cache"], want_case["k_cache"]) < 1e-5


def test_index_checks_go_through_host_index_checks(monkeypatch):
    """The Triton path's index check asks ``host_index_checks`` (False while a CUDA graph is
    being captured): answering False, a cache_seqlens past the capacity is not raised (the
    kernels mask the slots outside the cache) and the valid sequence is still right."""
    import fusedops.ops.attention_kvcache as kvcache

    asked = []

    def never(check_indices, device):
        asked.append((check_indices, torch.device(device).type))
        return False

    case = make_case(2, 1, 4, 2, 16, s_max=8, lens=[3, 8], device=TRITON_DEVICE)
    first = {key: value[:1] if torch.is_tensor(value) else value for key, value in case.items()}
    want = reference.attention_with_kvcache(**_cast(first, torch.float64))
    with fusedops.use_backend("triton"), torch.no_grad():
        with pytest.raises(ValueError, match=r"cache_seqlens\[1\] \+ Sq_new = 8 \+ 1 exceeds"):
            fusedops.attention_with_kvcache(**_cast(case, torch.float32))
        monkeypatch.setattr(kvcache, "host_index_checks", never)
        out = fusedops.attention_with_kvcache(**case)
    assert asked == [(True, torch.device(TRITON_DEVICE).type)]
    assert max_abs_error(out[:1], want) < 1e-5


@pytest.mark.cuda
def test_cuda_graph_capture_decode():
    """A decode step (RoPE, append, attention, check_indices=True by default) captured in a CUDA
    graph after one warm-up (compile, autotune) and replayed on new inputs: the host index
    check is skipped inside the capture, the replay matches the reference."""
    case = make_case(2, 1, 8, 2, 64, s_max=64, lens=[3, 40], rotary="half", device="cuda")
    static = _cast(case, torch.float32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        fusedops.attention_with_kvcache(**_cast(case, torch.float32))  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = fusedops.attention_with_kvcache(**static)
    fresh = make_case(2, 1, 8, 2, 64, s_max=64, lens=[9, 21], rotary="half", device="cuda",
                      seed=1)  # fmt: skip
    for name in ("q", "k", "v", "k_cache", "v_cache", "cache_seqlens"):
        static[name].copy_(fresh[name])
    graph.replay()
    want_case = _cast(fresh, torch.float64)
    want = reference.attention_with_kvcache(**want_case)
    assert max_abs_error(out, want) < 1e-5
    assert max_abs_error(static["k_cache"], want_case["k_cache"]) < 1e-5
