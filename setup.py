"""Build script for fusedops.

Packages are listed explicitly: ``python/fusedops`` installs as ``fusedops`` and ``kernels/``
as ``fusedops.kernels``. The extension ``fusedops._C`` is built from ``csrc/`` against the torch
already installed in the environment, so install with ``pip install --no-build-isolation .``.

CUDA: ``FUSEDOPS_CUDA=auto`` (default) builds the CUDA kernels when the installed torch is a CUDA
build and ``nvcc`` is found, and otherwise the CPU-only extension;
``FUSEDOPS_CUDA=1`` requires CUDA (a clear error if it cannot be built); ``FUSEDOPS_CUDA=0``
never builds it. The toolkit root is taken from ``CUDA_HOME``/``CUDA_PATH`` when they hold an
``nvcc``, else derived from the real compiler behind the ``nvcc`` on PATH (which may be a
wrapper script), and exported as ``CUDA_HOME`` before ``torch.utils.cpp_extension`` is imported
(it reads it at import). ``TORCH_CUDA_ARCH_LIST`` defaults to the visible GPUs' archs, else
``8.0;9.0``, with ``+PTX`` on the newest: its PTX is embedded too, so newer GPUs JIT it instead
of failing with "no kernel image".
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _openmp_flags() -> tuple[list[str], list[str]]:
    """OpenMP compile/link flags for the host compiler (none on MSVC/Apple clang defaults)."""
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return [], []  # Apple clang has no -fopenmp; at::parallel_for still uses torch's pool.
    return ["-fopenmp"], ["-fopenmp"]


def _cuda_root_of(nvcc: str) -> str | None:
    """The toolkit root of the compiler that ``nvcc`` runs (None if it cannot be told).

    ``nvcc`` may be a symlink or a wrapper script that execs the real one elsewhere: follow the
    symlinks first, and if no toolkit lies next to the result, ask the compiler itself — its
    dry run prints the ``TOP`` directory it was installed in, without compiling anything.
    """
    real = os.path.realpath(nvcc)
    candidates = [os.path.dirname(os.path.dirname(real))]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            res = subprocess.run(
                [nvcc, "-dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                capture_output=True,
                text=True,
                timeout=60,
            )
            text = res.stdout + res.stderr
        except (OSError, subprocess.SubprocessError):
            text = ""
    for key in ("TOP", "_HERE_"):
        m = re.search(rf"^#\$ {key}=(.+)$", text, re.MULTILINE)
        if m:
            path = os.path.normpath(m.group(1).strip().strip('"'))
            candidates.insert(0, path if key == "TOP" else os.path.dirname(path))
    for root in candidates:
        if _is_cuda_root(root):
            return root
    return None


def _is_cuda_root(root: str) -> bool:
    if not os.path.isfile(os.path.join(root, "bin", "nvcc")):
        return False
    headers = [os.path.join(root, "include", "cuda_runtime_api.h")]
    headers += glob.glob(os.path.join(root, "targets", "*", "include", "cuda_runtime_api.h"))
    return any(os.path.isfile(h) for h in headers)


def _cuda_arch_codes(arch_list: str) -> list[int]:
    """'8.0;9.0+PTX' -> [80, 90] (what build_info() reports)."""
    codes = []
    for m in re.finditer(r"(\d+)\.(\d+)", arch_list):
        code = int(m.group(1)) * 10 + int(m.group(2))
        if code not in codes:
            codes.append(code)
    return codes


def _cuda_config() -> tuple[bool, list[int]]:
    """Decide whether to build CUDA (FUSEDOPS_CUDA=0|1|auto) and prepare the environment for
    torch.utils.cpp_extension (CUDA_HOME, TORCH_CUDA_ARCH_LIST). Returns (with_cuda, archs)."""
    mode = os.environ.get("FUSEDOPS_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        raise RuntimeError(f"fusedops: FUSEDOPS_CUDA must be 0, 1 or auto, got {mode!r}")
    if mode == "0":
        return False, []

    def skip(reason: str) -> tuple[bool, list[int]]:
        if mode == "1":
            raise RuntimeError(f"fusedops: FUSEDOPS_CUDA=1 but CUDA cannot be built: {reason}")
        print(f"fusedops: building without CUDA ({reason})", file=sys.stderr)
        return False, []

    import torch

    if not torch.version.cuda:
        return skip(f"the installed torch {torch.__version__} is not a CUDA build")
    root = None
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and _is_cuda_root(value):
            root = value
            break
    if root is None:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            return skip("nvcc not found on PATH and CUDA_HOME not set")
        root = _cuda_root_of(nvcc)
        if root is None:
            return skip(f"cannot find the CUDA toolkit behind {nvcc}; set CUDA_HOME")
    os.environ["CUDA_HOME"] = root
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(n)})
        archs = ";".join(f"{a}.{b}" for a, b in caps) or "8.0;9.0"
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs + "+PTX"
    codes = _cuda_arch_codes(os.environ["TORCH_CUDA_ARCH_LIST"])
    print(
        f"fusedops: building with CUDA (toolkit {root}, "
        f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})",
        file=sys.stderr,
    )
    return True, codes


def _torch_version() -> tuple[int, int]:
    import torch

    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _extensions():
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # pragma: no cover - message for a broken install
        raise RuntimeError(
            "fusedops: torch must be installed before building fusedops "
            "(pip install torch, then pip install --no-build-isolation .)"
        ) from exc
    # Before importing torch.utils.cpp_extension: it reads CUDA_HOME at import time.
    with_cuda, archs = _cuda_config()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    omp_compile, omp_link = _openmp_flags()
    # *_cuda.cpp (torch bindings of the CUDA kernels) and *.cu only in a CUDA build.
    sources = sorted(
        f for f in glob.glob(os.path.join("csrc", "*.cpp")) if not f.endswith("_cuda.cpp")
    )
    # -ffp-contract=off: no FMA contraction (aarch64 gcc contracts by default), so the kernels
    # round exactly like the fp32 reference and the sinusoid is bit-identical across ISAs.
    # C++17; torch >= 2.14 headers need C++20 (std::strong_ordering, requires).
    cxx_std = "-std=c++20" if _torch_version() >= (2, 14) else "-std=c++17"
    cxx_flags = ["-O3", cxx_std, "-ffp-contract=off", *omp_compile]
    # -g0/-s: Python's CFLAGS add -g, which makes the .so ~50x larger.
    link_args = [*omp_link, "-s"] if sys.platform.startswith("linux") else omp_link
    if not with_cuda:
        ext = CppExtension(
            name="fusedops._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_args,
        )
    else:
        sources += sorted(glob.glob(os.path.join("csrc", "*_cuda.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "*.cu")))
        # Host compiler only (nvcc would split the comma list); used by build_info().
        arch_codes = ",".join(map(str, archs)) or "0"
        defines = ["-DFUSEDOPS_WITH_CUDA", f"-DFUSEDOPS_CUDA_ARCHS={arch_codes}"]
        ext = CUDAExtension(
            name="fusedops._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={
                "cxx": [*cxx_flags, *defines],
                "nvcc": ["-O3", cxx_std, "-Xcompiler", "-ffp-contract=off"],
            },
            extra_link_args=link_args,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=[
        "fusedops",
        "fusedops.benchmarking",
        "fusedops.integrations",
        "fusedops.ops",
        "fusedops.nn",
        "fusedops.testing",
        "fusedops.kernels",
    ],
    package_dir={"fusedops": "python/fusedops", "fusedops.kernels": "kernels"},
    # The bundled text sample of fusedops.factorization.sample_text().
    package_data={"fusedops": ["data/*.txt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
