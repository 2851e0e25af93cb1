"""How the RoPE kernel is launched: the tile heuristic (no autotuner), no FMA contraction,
rotary dims wider than one tile, host index checks off during CUDA graph capture."""

from __future__ import annotations

import pytest
import torch
import triton
from helpers import assert_close, backend_cases

import fusedops
import fusedops.kernels.rope as k
import fusedops.ops.rope as rope_ops
from fusedops import reference


def _launches(monkeypatch) -> list[dict]:
    """Record the keyword arguments of every rope_kernel launch (and still launch)."""
    calls = []
    real = k.launch

    def spy(kernel, grid, *args, **kwargs):
        calls.append(kwargs)
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(k, "launch", spy)
    return calls


def test_tile_heuristic_covers_every_size():
    """Every tile the heuristic picks is in rope_config_space (what the compile test compiles),
    and the space holds nothing it cannot pick."""
    assert not isinstance(k.rope_kernel, triton.runtime.Autotuner)
    space = set(k.rope_config_space())
    picked = set()
    for rot_half in (*range(1, 300), 511, 512, 2048, 4096):
        for heads in (1, 2, 3, 5, 8, 9, 16, 31, 32, 40, 64, 65, 128):
            tile = k.rope_tile(rot_half, heads)
            picked.add(tile)
            pairs = tile.block_h * tile.block_r2
            assert k.TILE_MIN // 2 <= pairs <= k.TILE_MAX, (rot_half, heads, tile)
            assert pairs // (32 * tile.num_warps) == k.ELEMS_PER_THREAD
            assert tile.block_r2 >= min(rot_half, k.MAX_BLOCK_R2)
    assert picked == space


@pytest.mark.parametrize("heads,rot,dim", [(9, 64, 64), (1, 32, 80), (64, 16, 16)])
def test_launch_uses_the_heuristic_without_fp_fusion(monkeypatch, heads, rot, dim):
    calls = _launches(monkeypatch)
    q = torch.randn(1, heads, 2, dim)
    kk = torch.randn(1, 1, 2, dim)
    cos, sin = fusedops.rope_cos_sin(rot, 4)
    with fusedops.use_backend("triton"):
        out_q, out_k = fusedops.apply_rotary(q, kk, cos, sin, rotary_dim=rot)
    want_q, want_k = reference.apply_rotary(
        q.double(), kk.double(), cos.double(), sin.double(), rotary_dim=rot
    )
    assert_close(out_q, want_q)
    assert_close(out_k, want_k)
    (kwargs,) = calls
    tile = k.rope_tile(rot // 2, heads)
    assert (kwargs["BLOCK_H"], kwargs["BLOCK_R2"], kwargs["num_warps"]) == tile
    assert kwargs["BLOCK_P"] == k.copy_block_for(dim, rot, tile.block_h)
    assert kwargs["enable_fp_fusion"] is False and kwargs["num_stages"] == 1


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize(
    "dim,rot,interleaved",
    [(4096, 4096, False), (4160, 4100, True), (1024, 64, False)],
    ids=["D4096", "D4160-R4100-gptj", "D1024-R64"],
)
def test_wide_head_dims(backend, device, dim, rot, interleaved):
    """Rotary half-widths past one tile (2048, 2050 pairs: chunks of 256) and a long
    pass-through tail (960 features: copy steps), forward and backward."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 1, 2, dim, generator=gen).to(device).requires_grad_()
    kk = torch.randn(1, 2, 2, dim, generator=gen).to(device)
    cos, sin = fusedops.rope_cos_sin(rot, 7, device=device)
    kwargs = {"rotary_dim": rot, "interleaved": interleaved, "position_offset": 5}
    with fusedops.use_backend(backend):
        out_q, out_k = fusedops.apply_rotary(q, kk, cos, sin, **kwargs)
        up = torch.randn_like(out_q)
        (grad,) = torch.autograd.grad(out_q, q, up)
    q64 = q.detach().double().requires_grad_()
    want_q, want_k = reference.apply_rotary(q64, kk.double(), cos.double(), sin.double(), **kwargs)
    assert_close(out_q, want_q)
    assert_close(out_k, want_k)
    assert_close(grad, torch.autograd.grad(want_q, q64, up.double())[0])


def test_index_checks_go_through_host_index_checks(monkeypatch):
    """While a CUDA graph is captured host_index_checks says no: then positions and
    cu_seqlens are not read on the host and out-of-cache positions rotate by angle 0 (the
    kernel's mask), as with check_indices=False."""
    seen = []

    def capturing(check_indices, device):
        seen.append((check_indices, torch.device(device).type))
        return False

    monkeypatch.setattr(rope_ops, "host_index_checks", capturing)
    q = torch.randn(1, 2, 3, 8)
    cos, sin = fusedops.rope_cos_sin(8, 4)
    positions = torch.tensor([[1, 9, 3]])  # 9 is outside the cache
    with fusedops.use_backend("triton"):
        out, _ = fusedops.apply_rotary(q, None, cos, sin, positions=positions)
        assert seen == [(True, "cpu")]
        x = torch.randn(6, 2, 8)
        out_x = fusedops.apply_rotary_varlen(x, cos, sin, torch.tensor([0, 6]))  # positions 0..5
    assert seen[1] == (True, "cpu")  # the varlen checks (its kernel call has none left)
    ok_positions = torch.tensor([[1, 0, 3]])
    want, _ = reference.apply_rotary(
        q.double(), None, cos.double(), sin.double(), positions=ok_positions
    )
    assert_close(out[:, :, 0::2], want[:, :, 0::2])
    assert_close(out[:, :, 1], q[:, :, 1])  # masked: unrotated
    pos_x = torch.tensor([[0, 1, 2, 3, 0, 0]])
    want_x, _ = reference.apply_rotary(
        x.double().permute(1, 0, 2).unsqueeze(0), None, cos.double(), sin.double(), positions=pos_x
    )
    want_x = want_x.squeeze(0).permute(1, 0, 2)
    assert_close(out_x[:4], want_x[:4])
    assert_close(out_x[4:], x[4:])  # positions 4, 5 outside the 4-row cache: unrotated


@pytest.mark.cuda
def test_cuda_graph_capture_with_default_index_checks():
    """apply_rotary with positions and check_indices=True (the default), and the varlen form,
    captured after one warm-up and replayed on new inputs."""
    dev = "cuda"
    cos, sin = fusedops.rope_cos_sin(64, 32, device=dev)
    q = torch.randn(2, 4, 5, 64, device=dev)
    kk = torch.randn(2, 2, 5, 64, device=dev)
    positions = torch.randint(0, 32, (2, 5), device=dev)
    x = torch.randn(9, 3, 64, device=dev)
    cu = torch.tensor([0, 4, 9], device=dev)

    def step():
        out = fusedops.apply_rotary(q, kk, cos, sin, positions=positions)
        return (*out, fusedops.apply_rotary_varlen(x, cos, sin, cu))

    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: compiles the kernel, runs the host checks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for seed in (1, 2):
        gen = torch.Generator(device=dev).manual_seed(seed)
        q.copy_(torch.randn(q.shape, device=dev, generator=gen))
        kk.copy_(torch.randn(kk.shape, device=dev, generator=gen))
        positions.copy_(torch.randint(0, 32, positions.shape, device=dev, generator=gen))
        x.copy_(torch.randn(x.shape, device=dev, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        c64, s64 = cos.double(), sin.double()
        want_q, want_k = reference.apply_rotary(
            q.double(), kk.double(), c64, s64, positions=positions
        )
        want_x = reference.apply_rotary_varlen(x.double(), c64, s64, cu)
        for got, want in zip(outs, (want_q, want_k, want_x), strict=True):
            assert_close(got, want)
