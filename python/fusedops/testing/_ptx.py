"""PTX and ptxas analysis: locating the ptxas inside the triton wheel, running ``ptxas -v``,
parsing its log (registers, spills, stack frame) and counting the PTX instructions that matter."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton

from fusedops.testing._errors import GpuCompileError

__all__ = ["count_ptx_instructions"]


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def _triton_bin_dir() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _ptxas_for(arch: int) -> str:
    """The ptxas triton itself uses: ``ptxas`` below sm_90, ``ptxas-blackwell`` from sm_90 on
    (triton 3.9 emits ``.version 9.x`` PTX for sm_90+, which the older ptxas refuses)."""
    name = "ptxas" if arch < 90 else "ptxas-blackwell"
    path = os.path.join(_triton_bin_dir(), name)
    if not os.path.exists(path):  # older wheels ship a single ptxas
        path = os.path.join(_triton_bin_dir(), "ptxas")
    if not os.path.exists(path):
        raise GpuCompileError(f"no ptxas in the triton wheel ({_triton_bin_dir()})")
    return path


def _gpu_name(arch: int) -> str:
    # Same rule as triton's sm_arch_from_capability: arch-specific "a" targets from sm_90 on.
    return f"sm_{arch}{'a' if arch >= 90 else ''}"


# --------------------------------------------------------------------------------------------
# PTX / ptxas analysis
# --------------------------------------------------------------------------------------------

_GLOBAL_MEM = re.compile(r"^\s*(?:@!?%\w+\s+)?(ld|st)\.global((?:\.[\w:]+)*)", re.MULTILINE)
_COUNTED: dict[str, re.Pattern[str]] = {
    "mma.sync": re.compile(r"^\s*(?:@!?%\w+\s+)?mma\.sync\b", re.MULTILINE),
    "wgmma": re.compile(r"^\s*(?:@!?%\w+\s+)?wgmma\.mma_async\b", re.MULTILINE),
    "cp.async": re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.c[ag]\b", re.MULTILINE),
    "cp.async.bulk": re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.bulk\b", re.MULTILINE),
    "ldmatrix": re.compile(r"^\s*(?:@!?%\w+\s+)?ldmatrix\b", re.MULTILINE),
    "atom.global": re.compile(r"^\s*(?:@!?%\w+\s+)?(?:atom|red)\.global\b", re.MULTILINE),
    "bar.sync": re.compile(r"^\s*(?:@!?%\w+\s+)?(?:bar\.sync|barrier\.sync)\b", re.MULTILINE),
}


def count_ptx_instructions(ptx: str) -> dict[str, int]:
    """Static counts of interesting PTX instructions.

    Keys: ``ld.global.v4`` / ``st.global.v4`` (128-bit: 4 x b32, also how fp16/bf16 vectors
    appear), ``ld.global.v2`` / ``st.global.v2``, ``ld.global.v8`` / ``st.global.v8`` (256-bit),
    ``ld.global.scalar`` / ``st.global.scalar`` (no vector suffix), ``mma.sync``, ``wgmma``
    (``wgmma.mma_async``), ``cp.async`` (``cp.async.ca/cg``; not commit/wait), ``cp.async.bulk``
    (TMA), ``ldmatrix``, ``atom.global`` (atom/red), ``bar.sync``.
    """
    text = re.sub(r"//[^\n]*", "", ptx)
    counts = {
        f"{op}.global.{kind}": 0 for op in ("ld", "st") for kind in ("v8", "v4", "v2", "scalar")
    }
    for op, mods in _GLOBAL_MEM.findall(text):
        parts = mods.split(".")
        kind = next((v for v in ("v8", "v4", "v2") if v in parts), "scalar")
        counts[f"{op}.global.{kind}"] += 1
    for key, pattern in _COUNTED.items():
        counts[key] = len(pattern.findall(text))
    return counts


_REGS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _run_ptxas(ptx: str, arch: int, fp_fusion: bool) -> tuple[str, int, int, int, int]:
    """Assemble PTX as triton does, with -v: (log, regs, stack, spill stores, spill loads)."""
    ptxas = _ptxas_for(arch)
    with tempfile.TemporaryDirectory(prefix="fusedops-ptxas-") as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [
            ptxas,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",  # as triton 3.9 passes it
            *([] if fp_fusion else ["--fmad=false"]),
            f"--gpu-name={_gpu_name(arch)}",
            src,
            "-o",
            os.path.join(tmp, "kernel.cubin"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GpuCompileError(f"ptxas failed ({proc.returncode}): {' '.join(cmd)}\n{log}")
    parsed = _parse_ptxas_log(log)
    if parsed is None:
        raise GpuCompileError(f"could not parse ptxas -v output:\n{log}")
    return parsed


def _parse_ptxas_log(log: str) -> tuple[str, int, int, int, int] | None:
    """(log, registers, stack frame, spill stores, spill loads) from ``ptxas -v``, or None."""
    regs = _REGS.search(log)
    frame = _FRAME.search(log)
    if regs is None or frame is None:
        return None
    stack, spill_st, spill_ld = (int(g) for g in frame.groups())
    return log.strip(), int(regs.group(1)), stack, spill_st, spill_ld
