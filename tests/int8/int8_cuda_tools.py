"""What the INT8 CUDA tests share: finding ``cuobjdump`` and reading which cubins and PTX a CUDA
binary (cubin, fatbin, or a host ``.so`` with an embedded fatbin) holds."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess


def cuobjdump() -> str | None:
    """cuobjdump from the triton wheel (a dev dependency), else the CUDA toolkit's on PATH."""
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("cuobjdump")


def fatbin_contents(tool: str, path: str) -> dict[str, set[str]]:
    """``{"elf": {"sm_80", ...}, "ptx": {"sm_90", ...}}``: the archs of the cubins (ELF) and of
    the PTX embedded in ``path``, from the headers ``cuobjdump <path>`` prints::

        Fatbin elf code:
        ================
        arch = sm_80
        ...
        Fatbin ptx code:
        ================
        arch = sm_90

    (PTX generated for ``compute_90`` is listed as ``arch = sm_90``.)
    """
    res = subprocess.run([tool, path], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"cuobjdump {path} failed:\n{res.stdout}\n{res.stderr}"
    found: dict[str, set[str]] = {"elf": set(), "ptx": set()}
    for kind, arch in re.findall(
        r"^Fatbin (elf|ptx) code:\s*\n=+\s*\narch = (sm_\w+)", res.stdout, flags=re.MULTILINE
    ):
        found[kind].add(arch)
    return found
