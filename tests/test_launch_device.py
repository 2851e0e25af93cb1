"""Every Triton launch runs on its tensors' device: one guarded helper, used by every launcher.

Triton launches on the current CUDA device and stream; with tensors on ``cuda:1`` and device 0
current a bare ``kernel[grid](...)`` faults or runs unordered on the wrong stream.
"""

from __future__ import annotations

import ast
import contextlib
import pathlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fusedops
from fusedops import reference
from fusedops.kernels import _launch

KERNELS = pathlib.Path(fusedops.kernels.__file__).parent
LAUNCHER_FILES = sorted(p for p in KERNELS.glob("*.py") if p.name != "_launch.py")


def _jit_names(tree: ast.Module) -> set[str]:
    """Names of the module's functions decorated with triton.jit / autotune / heuristics."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                text = ast.unparse(dec)
                if text.startswith(("triton.jit", "triton.autotune", "triton.heuristics")):
                    names.add(node.name)
    return names


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_no_bare_kernel_launch(path):
    """No ``kernel[grid](...)`` outside kernels/_launch.py; every kernel a file launches goes
    through ``launch(kernel, grid, ...)``."""
    tree = ast.parse(path.read_text())
    bare = [
        f"{path.name}:{node.lineno}: {ast.unparse(node.func)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
    ]
    assert bare == [], f"launch through kernels._launch.launch, not directly: {bare}"
    launched = {
        node.args[0].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "launch"
        and node.args
        and isinstance(node.args[0], ast.Name)
    }
    kernels = _jit_names(tree)
    # a @triton.jit helper called from kernels is never launched; every launched name is a kernel
    assert launched <= kernels, launched - kernels


def test_every_launcher_file_launches_through_the_helper():
    """The files that define @triton.jit kernels with a grid call ``launch`` (a file with only
    jit helpers, like _online_softmax.py, launches nothing)."""
    launching = {
        p.name
        for p in LAUNCHER_FILES
        if any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "launch"
            for n in ast.walk(ast.parse(p.read_text()))
        )
    }
    expected = {
        "attention.py",
        "attention_backward.py",
        "attention_decode.py",
        "embedding.py",
        "embedding_layernorm.py",
        "factorized_embedding.py",
        "kvcache_append.py",
        "rope.py",
    }
    assert launching == expected


class _Recorder:
    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def device(self, device):
        @contextlib.contextmanager
        def guard():
            self.events.append(("enter", torch.device(device)))
            yield
            self.events.append(("exit", torch.device(device)))

        return guard()


class _Kernel:
    """Stands in for a jit function: records the grid and when it was launched."""

    def __init__(self, recorder):
        self.recorder = recorder

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.recorder.events.append(("launch", grid))
            return "ran"

        return run


def test_launch_makes_the_tensors_cuda_device_current(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(_launch.torch.cuda, "device", rec.device)
    with FakeTensorMode():
        x = torch.empty(4, device="cuda:1")  # x: [4] on the second GPU
    result = _launch.launch(_Kernel(rec), (3,), 7, x, BLOCK=4)
    assert result == "ran"
    cuda1 = torch.device("cuda", 1)
    assert rec.events == [("enter", cuda1), ("launch", (3,)), ("exit", cuda1)]


def test_launch_finds_a_tensor_passed_by_keyword(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(_launch.torch.cuda, "device", rec.device)
    with FakeTensorMode():
        y = torch.empty(2, device="cuda:3")
    _launch.launch(_Kernel(rec), (1,), 5, out=y)
    assert rec.events[0] == ("enter", torch.device("cuda", 3))


def test_launch_on_cpu_tensors_enters_no_cuda_device(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(_launch.torch.cuda, "device", rec.device)
    _launch.launch(_Kernel(rec), (2,), torch.zeros(3))
    assert rec.events == [("launch", (2,))]


def test_ops_launch_through_the_guard(monkeypatch):
    """A real op on the Triton backend reaches its kernel through ``launch`` (CPU tensors run in
    the interpreter; on a GPU machine this is the CUDA path)."""
    seen = []
    real = _launch.device_guard

    def spy(device):
        seen.append(device)
        return real(device)

    monkeypatch.setattr(_launch, "device_guard", spy)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weight = torch.randn(11, 8, device=device)
    ids = torch.tensor([[1, 4, 10]], device=device)
    with fusedops.use_backend("triton"):
        out = fusedops.fused_embedding(ids, weight, scale=2.0)
    torch.testing.assert_close(out, reference.fused_embedding(ids, weight, scale=2.0))
    assert seen and all(d == weight.device for d in seen)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ops_on_the_second_gpu_while_the_first_is_current():
    """Tensors on cuda:1, device 0 current: every Triton op runs on cuda:1 and matches its
    reference there, forward and backward; the current device is left as it was."""
    dev = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    gen = torch.Generator(device=dev).manual_seed(0)
    weight = torch.randn(97, 64, device=dev, generator=gen, requires_grad=True)
    ids = torch.randint(0, 97, (2, 33), device=dev, generator=gen)
    q = torch.randn(2, 4, 33, 64, device=dev, generator=gen, dtype=torch.float16)
    k = torch.randn(2, 2, 33, 64, device=dev, generator=gen, dtype=torch.float16)
    v = torch.randn_like(k)
    q.requires_grad_(True)
    cos, sin = fusedops.rope_cos_sin(64, 64, device=dev)
    with fusedops.use_backend("triton"):
        emb = fusedops.fused_embedding(ids, weight, scale=3.0)
        qr, kr = fusedops.apply_rotary(q, k, cos, sin)
        out = fusedops.attention(qr, kr, v, causal=True)
        out.float().sum().backward()
        torch.cuda.synchronize(dev)
    assert torch.cuda.current_device() == 0
    torch.testing.assert_close(emb, reference.fused_embedding(ids, weight, scale=3.0))
    qr_ref, kr_ref = reference.apply_rotary(q.detach(), k, cos, sin)
    torch.testing.assert_close(qr, qr_ref)
    out_ref = reference.attention(qr_ref.float(), kr_ref.float(), v.float(), causal=True)
    torch.testing.assert_close(out.float(), out_ref, atol=2e-2, rtol=0)
    assert q.grad is not None and q.grad.device == dev and bool(q.grad.isfinite().all())
