"""Backend selection rules: per-device auto choice, overrides, and no silent fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import HAS_CUDA

import fusedops
from fusedops import _backend
from fusedops._backend import resolve_backend


def test_auto_picks_per_device():
    assert fusedops.current_backend() == "auto"
    assert resolve_backend("op", torch.device("cpu")) == "cpp"
    if HAS_CUDA:
        assert resolve_backend("op", torch.device("cuda")) == "triton"


def test_use_backend_nests_and_restores():
    with fusedops.use_backend("reference"):
        assert resolve_backend("op", torch.device("cpu")) == "reference"
        with fusedops.use_backend("cpp"):
            assert fusedops.current_backend() == "cpp"
        assert fusedops.current_backend() == "reference"
    assert fusedops.current_backend() == "auto"


def test_env_var_and_bad_names(monkeypatch):
    monkeypatch.setenv("FUSEDOPS_BACKEND", "reference")
    assert fusedops.current_backend() == "reference"
    with fusedops.use_backend("cpp"):  # the context manager wins over the environment
        assert fusedops.current_backend() == "cpp"
    monkeypatch.setenv("FUSEDOPS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"unknown backend 'cuda' from \$FUSEDOPS_BACKEND"):
        fusedops.current_backend()
    with pytest.raises(ValueError, match="unknown backend 'fast'"), fusedops.use_backend("fast"):
        pass


def test_cpp_backend_refuses_cuda_tensors():
    with fusedops.use_backend("cpp"), pytest.raises(RuntimeError, match="CPU tensors only"):
        resolve_backend("fused_embedding", torch.device("cuda"))


def test_reference_backend_runs_plain_pytorch():
    ids = torch.randint(0, 5, (2, 3))
    weight = torch.randn(5, 4, requires_grad=True)
    with fusedops.use_backend("reference"):
        out = fusedops.fused_embedding(ids, weight, scale=2.0)
    # The reference path is ordinary autograd, not the custom op.
    assert "fused_embedding" not in type(out.grad_fn).__name__.lower()
    assert torch.equal(out, weight[ids] * 2.0)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only interpreter rule")
def test_triton_on_cpu_without_interpreter_raises_clearly():
    code = (
        "import torch, fusedops\n"
        "ids = torch.zeros(1, 2, dtype=torch.long); w = torch.randn(3, 4)\n"
        "with fusedops.use_backend('triton'):\n"
        "    try:\n"
        "        fusedops.fused_embedding(ids, w)\n"
        "    except RuntimeError as e:\n"
        "        print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "ERR fused_embedding: backend 'triton' on CPU tensors" in res.stdout
    assert "TRITON_INTERPRET=1" in res.stdout


def test_constant_marking_is_what_assume_constant_result_sets():
    # _backend._resolve sets the attribute itself (importing torch._dynamo costs seconds):
    # it must stay exactly what torch.compiler.assume_constant_result sets.
    def fn():
        return 1

    before = set(vars(fn))
    torch.compiler.assume_constant_result(fn)
    added = {k: v for k, v in vars(fn).items() if k not in before}
    assert added == {"_dynamo_marked_constant": True}
    assert {k: getattr(_backend._resolve, k, None) for k in added} == added


def test_import_does_not_load_dynamo():
    code = "import sys, fusedops; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
