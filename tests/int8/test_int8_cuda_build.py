"""Proof that the full CUDA extension builds and registers its kernels (no GPU needed).

``make cuda-build`` (run by ``make test`` in the background wherever nvcc is on PATH) creates
``.venv-cuda`` at the repo root with a CUDA torch (torch==2.14.1, CUDA 13.0) and installs
fusedops there with ``FUSEDOPS_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX"`` from a copy of the
sources; ``make test`` names the file the build's exit status goes to, and this test waits for
it. It imports that build with the second venv's python (no GPU needed) and checks with the
dispatcher that every op of the C++ library has CPU and Meta kernels (Meta: the Python fakes of
``fusedops.ops.cpp_fakes``), that int8_embedding_fwd has a CUDA kernel and its ``check_indices``
and ``vocab_start`` arguments, and that the CPU kernel of that build computes. ``cuobjdump`` of
the built extension must list sm_80 and sm_90 cubins and compute_90 PTX, the fallback the driver
compiles for a newer GPU (without it: "no kernel image is available"); the parsing of that listing
is checked on a small fatbin built here with nvcc. Skipped, with the reason, when ``.venv-cuda``
was not built (or nvcc / cuobjdump are missing).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from int8_cuda_tools import cuobjdump, fatbin_contents

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_VENV = os.path.join(ROOT, ".venv-cuda")
STAMP = os.path.join(CUDA_VENV, ".fusedops-cuda-stamp")
BIN = "Scripts" if sys.platform == "win32" else "bin"
CUDA_PYTHON = os.path.join(CUDA_VENV, BIN, "python")

# Ops the C++ library defines (TORCH_LIBRARY in csrc/schemas.cpp) -> the kernels they need.
OPS = {
    "cpp_embedding_fwd": ("CPU", "Meta"),  # the C++ embedding and RoPE ops have no CUDA
    "cpp_embedding_bwd": ("CPU", "Meta"),  # kernel: Triton serves CUDA tensors
    "cpp_rope": ("CPU", "Meta"),
    "cpp_factorized_embedding_fwd": ("CPU", "Meta"),
    "cpp_factorized_embedding_bwd": ("CPU", "Meta"),
    "int8_embedding_fwd": ("CPU", "CUDA", "Meta"),
}

PROBE = r"""
import json, sys
import torch
import fusedops
import fusedops._C
import fusedops.ops.cpp_fakes  # the module the schemas name for their fake impls

ops = json.loads(sys.argv[1])
dump = {op: torch._C._dispatch_dump("fusedops::" + op) for op in ops}
keys = {op: sorted({line.split(":", 1)[0] for line in text.splitlines()
                    if ": registered at" in line and not line.startswith("debug")})
        for op, text in dump.items()}

# The CPU kernel of the CUDA build still computes: a small lookup against the dequantized table.
q = torch.randint(-127, 128, (50, 64), dtype=torch.int8)
scales = torch.rand(50, 4)
ids = torch.randint(0, 50, (3, 7))
out = torch.ops.fusedops.int8_embedding_fwd(ids, q, scales, 2.0, None, None, 0, 0, 1e4,
                                            torch.float32, False)
ref = (q.float().view(50, 4, 16) * scales.view(50, 4, 1)).view(50, 64)[ids] * 2.0
print(json.dumps({
    "int8_schema": str(torch.ops.fusedops.int8_embedding_fwd.default._schema),
    "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "gpu": torch.cuda.is_available(), "fusedops_file": fusedops.__file__,
    "build_info": fusedops._C.build_info(), "keys": keys, "extension": fusedops._C.__file__,
    "cpu_ok": bool(torch.equal(out, ref)),
}))
"""


# The Makefile's SOURCES: the CUDA build is redone when one of them changes.
SOURCE_GLOBS = (
    "setup.py",
    "pyproject.toml",
    "requirements-dev.txt",
    "requirements-triton.txt",
    "csrc/*",
    "python/fusedops/*.py",
    "python/fusedops/*/*.py",
    "kernels/*.py",
)


def _stale_sources() -> list[str]:
    """Sources newer than the CUDA build stamp (make cuda-build would rebuild)."""
    stamp = os.path.getmtime(STAMP)
    paths = [p for pattern in SOURCE_GLOBS for p in glob.glob(os.path.join(ROOT, pattern))]
    return [os.path.relpath(p, ROOT) for p in paths if os.path.getmtime(p) > stamp]


# `make test` runs the CUDA build in the background and names the file its exit status goes to.
BUILD_RC_ENV = "FUSEDOPS_CUDA_BUILD_RC"
BUILD_WAIT_S = 30 * 60


def _wait_for_background_build() -> None:
    """Block until `make test`'s background CUDA build has finished; fail if it failed."""
    rc_file = os.environ.get(BUILD_RC_ENV)
    if not rc_file:
        return
    deadline = time.monotonic() + BUILD_WAIT_S
    while not os.path.exists(rc_file):
        assert time.monotonic() < deadline, f"the CUDA build did not finish ({rc_file} absent)"
        time.sleep(2)
    time.sleep(0.2)  # the status is one short write; let it land
    with open(rc_file) as fh:
        status = fh.read().strip()
    log = os.path.join(os.path.dirname(rc_file), "cuda-build.log")
    if status != "0":
        tail = Path(log).read_text()[-4000:] if os.path.exists(log) else "(no log)"
        pytest.fail(f"the CUDA build failed (exit status {status!r}):\n{tail}")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    _wait_for_background_build()
    if not os.path.exists(STAMP) or not os.access(CUDA_PYTHON, os.X_OK):
        why = "nvcc is not on PATH" if shutil.which("nvcc") is None else "not built yet"
        pytest.skip(
            f".venv-cuda with the CUDA build of fusedops is absent ({why}); "
            "`make cuda-build` builds it (make test does where nvcc exists)"
        )
    stale = _stale_sources()
    if stale:
        pytest.skip(f".venv-cuda is older than {stale[:3]}...: run `make cuda-build` first")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # Run outside the repo so `import fusedops` finds the .venv-cuda install, not python/.
    cwd = tmp_path_factory.mktemp("cuda_probe")
    res = subprocess.run(
        [CUDA_PYTHON, "-c", PROBE, json.dumps(sorted(OPS))],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, f"importing the CUDA build failed:\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_cuda_build_is_the_installed_one(probe):
    assert probe["torch_cuda"], f"torch {probe['torch']} in .venv-cuda is not a CUDA build"
    assert probe["fusedops_file"].startswith(CUDA_VENV), probe["fusedops_file"]
    info = probe["build_info"]
    print(f"torch {probe['torch']} (CUDA {probe['torch_cuda']}, GPU: {probe['gpu']}), {info}")
    assert info["with_cuda"] is True
    assert {"8.0", "9.0"} <= set(info["cuda_arch_list"]), info["cuda_arch_list"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_dispatcher_kernels(probe, op):
    keys = probe["keys"][op]
    print(f"fusedops::{op}: {keys}")
    for key in OPS[op]:
        assert key in keys, f"fusedops::{op} has no {key} kernel in the CUDA build: {keys}"


def test_int8_schema_has_check_indices(probe):
    assert probe["int8_schema"].endswith(
        "ScalarType out_dtype, bool check_indices=True, int? vocab_start=None) -> Tensor"
    ), probe["int8_schema"]


def test_cpu_kernel_of_cuda_build(probe):
    assert probe["cpu_ok"]


# What a "+PTX" arch list embeds: cubins for sm_80 and sm_90, PTX for compute_90 (listed as
# sm_90 by cuobjdump), which the driver JIT-compiles on GPUs newer than sm_90.
CUBIN_ARCHS = {"sm_80", "sm_90"}
PTX_ARCH = "sm_90"


def _need_cuobjdump() -> str:
    tool = cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (triton wheel's or on PATH) to list the embedded code")
    return tool


def test_extension_embeds_cubins_and_ptx_fallback(probe):
    contents = fatbin_contents(_need_cuobjdump(), probe["extension"])
    print(f"{probe['extension']}: cubins {sorted(contents['elf'])}, PTX {sorted(contents['ptx'])}")
    assert contents["elf"] >= CUBIN_ARCHS, contents
    assert PTX_ARCH in contents["ptx"], (
        f"no compute_90 PTX in the CUDA build ({contents}): GPUs newer than sm_90 would get "
        "'no kernel image is available'; build with TORCH_CUDA_ARCH_LIST='8.0;9.0+PTX'"
    )


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_fatbin_listing_is_parsed(tmp_path):
    """fatbin_contents on fatbins nvcc builds here: the +PTX gencode set is recognised, and a
    build without PTX is told apart."""
    tool = _need_cuobjdump()
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    builds = {
        "with_ptx": [
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=[sm_90,compute_90]",
        ],
        "cubins_only": ["-gencode=arch=compute_80,code=sm_80"],
    }
    found = {}
    for name, gencode in builds.items():
        out = str(tmp_path / f"{name}.fatbin")
        res = subprocess.run(
            ["nvcc", "-fatbin", *gencode, str(src), "-o", out],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        found[name] = fatbin_contents(tool, out)
    assert found["with_ptx"] == {"elf": CUBIN_ARCHS, "ptx": {PTX_ARCH}}, found
    assert found["cubins_only"] == {"elf": {"sm_80"}, "ptx": set()}, found
