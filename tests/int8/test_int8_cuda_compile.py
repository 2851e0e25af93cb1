"""Proof that the INT8 embedding CUDA kernel compiles for sm_80 and sm_90, without a GPU.

``csrc/int8_embedding_cuda_kernel.cu`` is torch-free: nvcc compiles it alone to a cubin for
sm_80 and sm_90 with ``-Xptxas -v``. Every kernel must use 0 spill bytes and 0 stack, and the
SASS (``cuobjdump -sass``) of the vectorized kernels must show the 16-byte int8 row loads
(``LDG.E.128``) and 16-byte output stores (``STG.E.128``), and no local memory at all.
Skipped, with the reason, where nvcc (or a cuobjdump) is not found. ``pytest -s`` prints the
ptxas figures.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
KERNEL = os.path.join(CSRC, "int8_embedding_cuda_kernel.cu")
ARCHS = (80, 90)
# 2 kernels (vectorized, per-element) x 3 output dtypes.
N_KERNELS = 6

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(
    NVCC is None, reason="nvcc is not on PATH: the CUDA kernel compile proof needs it"
)


def _cuobjdump() -> str | None:
    """cuobjdump from the triton wheel (a dev dependency), else the CUDA toolkit's on PATH."""
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("cuobjdump")


def _parse_ptxas(text: str) -> dict[str, dict[str, int]]:
    """{kernel name: {registers, stack, spill_stores, spill_loads}} from ptxas -v output."""
    kernels: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            name = m.group(1)
            kernels[name] = {}
            continue
        if name is None:
            continue
        m = re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        )
        if m:
            kernels[name].update(
                stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3))
            )
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[name]["registers"] = int(m.group(1))
    return kernels


def _short(name: str) -> str:
    kind = "vec" if "vec_kernel" in name else "elem"
    out = {"0": "fp32", "1": "fp16", "2": "bf16"}.get(name[-len("EEEvNS_17Int8EmbeddingArgsE") - 1])
    return f"{kind}/{out}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{arch: (cubin path, ptxas report)} for sm_80 and sm_90."""
    out_dir = tmp_path_factory.mktemp("int8_cuda")
    result = {}
    for arch in ARCHS:
        cubin = str(out_dir / f"int8_embedding_sm{arch}.cubin")
        cmd = [NVCC, "-std=c++17", "-O3", "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v"]
        cmd += ["-I", CSRC, KERNEL, "-o", cubin]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"nvcc failed for sm_{arch}:\n{res.stdout}\n{res.stderr}"
        result[arch] = (cubin, _parse_ptxas(res.stdout + res.stderr))
    return result


@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_no_spills_no_stack(compiled, arch):
    _, kernels = compiled[arch]
    assert len(kernels) == N_KERNELS, sorted(kernels)
    for name, info in sorted(kernels.items()):
        print(
            f"sm_{arch} {_short(name):10s} registers {info['registers']:3d}  stack "
            f"{info['stack']}  spill stores {info['spill_stores']}  loads {info['spill_loads']}"
        )
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (name, info)
        assert info["stack"] == 0, (name, info)
        assert info["registers"] <= 255, (name, info)


def _sass_functions(sass: str) -> dict[str, str]:
    """{function name: its SASS text} from ``cuobjdump -sass``."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.mark.parametrize("arch", ARCHS)
def test_sass_has_128_bit_loads(compiled, arch):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (triton wheel's or on PATH) to disassemble the cubin")
    cubin, _ = compiled[arch]
    res = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    funcs = _sass_functions(res.stdout)
    assert len(funcs) == N_KERNELS, sorted(funcs)
    for name, body in funcs.items():
        # No local memory anywhere (what a stack frame or a spill would use).
        assert not re.search(r"\b(LDL|STL)\b", body), f"{name}: local memory access"
        if "vec_kernel" in name:
            # The int8 row chunk: one 16-byte load per lane (read-only path).
            assert "LDG.E.128" in body, f"sm_{arch} {_short(name)}: no 128-bit global load"
            assert "STG.E.128" in body, f"sm_{arch} {_short(name)}: no 128-bit global store"
        n_instr = len(re.findall(r"/\*[0-9a-f]{4}\*/", body))
        print(
            f"sm_{arch} {_short(name):10s} LDG.E.128 x{body.count('LDG.E.128')}  "
            f"STG.E.128 x{body.count('STG.E.128')}  instructions {n_instr}"
        )
