"""Proof that the INT8 embedding CUDA kernel compiles for sm_80 and sm_90, without a GPU.

``csrc/int8_embedding_cuda_kernel.cu`` is torch-free: nvcc compiles it alone to a cubin for
sm_80 and sm_90 with ``-Xptxas -v`` (keeping the PTX). Every kernel must use 0 spill bytes and 0
stack, and the SASS (``cuobjdump -sass``) of the vectorized kernels must show the 16-byte int8
row loads (``LDG.E.128``) and 16-byte output stores (``STG.E.128``), and no local memory at all.

The lookup kernels (every mode, the sinusoid included) must hold no fp64 instruction (PTX
``.f64``, SASS ``D*``/``.F64``): only the small kernel that computes the sinusoid's per-pair
``inv_freq`` once per call may. And none may hold an FMA (PTX ``fma``/``mad`` on f32, SASS
``FFMA``): the CPU kernel rounds every multiply and add of int8_math.h on its own, so a
contracted ``a * b + c`` would make the GPU differ from it (and from the reference) by an ulp.
Skipped, with the reason, where nvcc (or a cuobjdump) is not found. ``pytest -s`` prints the
ptxas figures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from int8_cuda_tools import cuobjdump

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
KERNEL = os.path.join(CSRC, "int8_embedding_cuda_kernel.cu")
ARCHS = (80, 90)
# The lookups: 2 kernels (vectorized, per-element) x 3 output dtypes; + the sinusoid's inv_freq.
N_LOOKUPS = 6
N_KERNELS = N_LOOKUPS + 1
INV_FREQ_KERNEL = "int8_sinusoid_inv_freq_kernel"

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(
    NVCC is None, reason="nvcc is not on PATH: the CUDA kernel compile proof needs it"
)


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
    if INV_FREQ_KERNEL in name:
        return "inv_freq"
    kind = "vec" if "vec_kernel" in name else "elem"
    out = {"0": "fp32", "1": "fp16", "2": "bf16"}.get(name[-len("EEEvNS_17Int8EmbeddingArgsE") - 1])
    return f"{kind}/{out}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{arch: (cubin path, ptxas report, PTX text)} for sm_80 and sm_90 (the flags of the
    extension's nvcc build: -O3, default --fmad=true, so the FMA check sees what it would)."""
    out_dir = tmp_path_factory.mktemp("int8_cuda")
    result = {}
    for arch in ARCHS:
        keep = out_dir / f"keep_sm{arch}"
        keep.mkdir()
        cubin = str(out_dir / f"int8_embedding_sm{arch}.cubin")
        cmd = [NVCC, "-std=c++17", "-O3", "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v"]
        cmd += ["--keep", "--keep-dir", str(keep), "-I", CSRC, KERNEL, "-o", cubin]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"nvcc failed for sm_{arch}:\n{res.stdout}\n{res.stderr}"
        (ptx_file,) = keep.glob("*.ptx")
        result[arch] = (cubin, _parse_ptxas(res.stdout + res.stderr), ptx_file.read_text())
    return result


@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_no_spills_no_stack(compiled, arch):
    _, kernels, _ = compiled[arch]
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


@pytest.fixture(scope="module")
def sass(compiled):
    """{arch: {function name: SASS}} (``cuobjdump -sass`` of each cubin)."""
    tool = cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (triton wheel's or on PATH) to disassemble the cubin")
    result = {}
    for arch, (cubin, _, _) in compiled.items():
        res = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        result[arch] = _sass_functions(res.stdout)
    return result


@pytest.mark.parametrize("arch", ARCHS)
def test_sass_has_128_bit_loads(sass, arch):
    funcs = sass[arch]
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


def _ptx_entries(ptx: str) -> dict[str, str]:
    """{entry name: its PTX body} (up to the next ``.entry``)."""
    parts = re.split(r"^\.(?:visible\s+)?\.?entry\s+(\w+)\(", ptx, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


# fp64 arithmetic, conversions and compares in SASS (the lookups need none).
SASS_FP64 = re.compile(r"\b(DADD|DMUL|DFMA|DSETP|DMNMX|DMMA)\b|\.F64\b")
# A contracted multiply-add in fp32 (the CPU rounds the multiply and the add separately).
PTX_FMA = re.compile(r"\b(fma|mad)\.[a-z.]*f32\b")


@pytest.mark.parametrize("arch", ARCHS)
def test_lookups_use_no_fp64(compiled, sass, arch):
    """The sinusoid (and every other mode) runs in fp32: only the per-call inv_freq kernel has
    fp64 (one exp per pair, the reference's correctly rounded inv_freq)."""
    entries = _ptx_entries(compiled[arch][2])
    assert len(entries) == N_KERNELS, sorted(entries)
    for name, body in sorted(entries.items()):
        f64 = len(re.findall(r"\.f64\b", body))
        calls = len(re.findall(r"\bcall\b", body))
        print(f"sm_{arch} {_short(name):10s} PTX .f64 x{f64}  calls x{calls}")
        if INV_FREQ_KERNEL in name:
            continue
        assert f64 == 0, f"sm_{arch} {_short(name)}: {f64} fp64 PTX instructions"
        assert calls == 0, f"sm_{arch} {_short(name)}: calls a device function (not inlined)"
    for name, body in sass[arch].items():
        if INV_FREQ_KERNEL not in name:
            found = sorted({m.group(0) for m in SASS_FP64.finditer(body)})
            assert not found, f"sm_{arch} {_short(name)}: fp64 SASS {found}"


@pytest.mark.parametrize("arch", ARCHS)
def test_no_fma_contraction(compiled, sass, arch):
    """Dequantization, scale, positional add and the fp32 sinusoid round each multiply and add
    (mul_rn/add_rn of int8_math.h) like the CPU kernel: no fp32 FMA in the PTX or the SASS."""
    for name, body in _ptx_entries(compiled[arch][2]).items():
        found = sorted({m.group(0) for m in PTX_FMA.finditer(body)})
        assert not found, f"sm_{arch} {_short(name)}: contracted PTX {found}"
        if INV_FREQ_KERNEL not in name:
            # The dequantized value q * s and the positional add, rounded on their own.
            assert "mul.rn.f32" in body, f"sm_{arch} {_short(name)}: no mul.rn.f32"
    for name, body in sass[arch].items():
        n_ffma = len(re.findall(r"\bFFMA\b", body))
        print(f"sm_{arch} {_short(name):10s} FFMA x{n_ffma}  FMUL x{body.count('FMUL')}")
        assert n_ffma == 0, f"sm_{arch} {_short(name)}: {n_ffma} FFMA"
