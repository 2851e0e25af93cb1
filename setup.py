"""Build script for fusedops.

Packages are listed explicitly: ``python/fusedops`` installs as ``fusedops`` and ``kernels/``
as ``fusedops.kernels``. The extension ``fusedops._C`` is built from ``csrc/`` against the torch
already installed in the environment, so install with ``pip install --no-build-isolation .``.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _openmp_flags() -> tuple[list[str], list[str]]:
    """OpenMP compile/link flags for the host compiler (none on MSVC/Apple clang defaults)."""
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return [], []  # Apple clang has no -fopenmp; at::parallel_for still uses torch's pool.
    return ["-fopenmp"], ["-fopenmp"]


def _extensions():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:  # pragma: no cover - message for a broken install
        raise RuntimeError(
            "fusedops: torch must be installed before building fusedops "
            "(pip install torch, then pip install --no-build-isolation .)"
        ) from exc

    omp_compile, omp_link = _openmp_flags()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # -ffp-contract=off: no FMA contraction (aarch64 gcc contracts by default), so the kernels
    # round exactly like the fp32 reference and the sinusoid is bit-identical across ISAs.
    cxx_flags = ["-O3", "-std=c++17", "-ffp-contract=off", *omp_compile]
    ext = CppExtension(
        name="fusedops._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        # -g0/-s: Python's CFLAGS add -g, which makes the .so ~50x larger.
        extra_link_args=[*omp_link, "-s"] if sys.platform.startswith("linux") else omp_link,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=[
        "fusedops",
        "fusedops.ops",
        "fusedops.nn",
        "fusedops.testing",
        "fusedops.kernels",
    ],
    package_dir={"fusedops": "python/fusedops", "fusedops.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
