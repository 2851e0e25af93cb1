"""PTX and ptxas: the ptxas inside the triton wheel, its ``-v`` figures, and static analyses of
the PTX (instruction counts; whether integer parameters enter 32- or 64-bit products)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping

import triton

__all__ = [
    "GpuCompileError",
    "PtxasFigures",
    "count_ptx_instructions",
    "offset_products",
    "parse_ptxas_log",
    "run_ptxas",
]


class GpuCompileError(RuntimeError):
    """A kernel failed to compile or assemble for a GPU target (message holds the cause)."""


# (log, registers, stack frame bytes, spill store bytes, spill load bytes)
PtxasFigures = tuple[str, int, int, int, int]


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


_REGS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> PtxasFigures | None:
    """(log, registers, stack frame, spill stores, spill loads) from ``ptxas -v``, or None."""
    regs = _REGS.search(log)
    frame = _FRAME.search(log)
    if regs is None or frame is None:
        return None
    stack, spill_st, spill_ld = (int(g) for g in frame.groups())
    return log.strip(), int(regs.group(1)), stack, spill_st, spill_ld


def run_ptxas(ptx: str, arch: int, fp_fusion: bool) -> PtxasFigures:
    """Assemble PTX as triton does, with ``-v``, and parse the figures."""
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
    parsed = parse_ptxas_log(log)
    if parsed is None:
        raise GpuCompileError(f"could not parse ptxas -v output:\n{log}")
    return parsed


# ------------------------------------------------------------------------ instruction counts

_PRED = r"^\s*(?:@!?%\w+\s+)?"
_GLOBAL_MEM = re.compile(_PRED + r"(ld|st)\.global((?:\.[\w:]+)*)", re.MULTILINE)
_COUNTED: dict[str, re.Pattern[str]] = {
    "mma.sync": re.compile(_PRED + r"mma\.sync\b", re.MULTILINE),
    "wgmma": re.compile(_PRED + r"wgmma\.mma_async\b", re.MULTILINE),
    "cp.async": re.compile(_PRED + r"cp\.async\.c[ag]\b", re.MULTILINE),
    "cp.async.bulk": re.compile(_PRED + r"cp\.async\.bulk\b", re.MULTILINE),
    "ldmatrix": re.compile(_PRED + r"ldmatrix\b", re.MULTILINE),
    "atom.global": re.compile(_PRED + r"(?:atom|red)\.global\b", re.MULTILINE),
    "bar.sync": re.compile(_PRED + r"(?:bar\.sync|barrier\.sync)\b", re.MULTILINE),
}


def _strip_comments(ptx: str) -> str:
    return re.sub(r"//[^\n]*", "", ptx)


def count_ptx_instructions(ptx: str) -> dict[str, int]:
    """Static counts of interesting PTX instructions.

    Keys: ``ld.global.v4`` / ``st.global.v4`` (128-bit: 4 x b32, also how fp16/bf16 vectors
    appear), ``ld.global.v2`` / ``st.global.v2``, ``ld.global.v8`` / ``st.global.v8`` (256-bit),
    ``ld.global.scalar`` / ``st.global.scalar`` (no vector suffix), ``mma.sync``, ``wgmma``
    (``wgmma.mma_async``), ``cp.async`` (``cp.async.ca/cg``; not commit/wait), ``cp.async.bulk``
    (TMA), ``ldmatrix``, ``atom.global`` (atom/red), ``bar.sync``.
    """
    text = _strip_comments(ptx)
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


# ------------------------------------------------------------------- 32- vs 64-bit products

_INSTRUCTION = re.compile(_PRED + r"([a-z][\w.]*)\s+([^;]*);", re.MULTILINE)
_PARAM_LOAD = re.compile(r"\[\w+_param_(\d+)\]")
# Products whose result is 32 bits wide (shl by an immediate is how a product by 2**k shows).
_NARROW = re.compile(r"(?:mul|mad|mul24|mad24)\.lo\.[su]32|shl\.b32")
# Products whose result is 64 bits wide, by operand width.
_WIDE_FROM_32 = re.compile(r"(?:mul|mad)\.wide\.[su]32")
_WIDE_FROM_64 = re.compile(r"(?:mul|mad)\.lo\.[su]64|shl\.b64")
_WIDEN = re.compile(r"cvt\.[su]64\.[su]32")
_TRUNCATE = re.compile(r"cvt\.[su]32\.[su]64")


def offset_products(ptx: str, params: Mapping[str, int]) -> dict[str, list[str]]:
    """The products each integer kernel parameter enters, for a check that offsets are 64-bit.

    ``params`` maps a name to the parameter's index in the PTX entry (``<kernel>_param_<i>``:
    the kernel's non-constexpr parameters in order). A parameter is followed from its
    ``ld.param`` through register copies and sign/zero extensions. Returns ``{name: [...]}``
    with the instructions that multiply it, each prefixed ``"narrow: "`` (a 32-bit result:
    ``mul.lo.s32``, ``mad.lo.s32``, ``shl.b32``, ...) or ``"wide: "`` (a 64-bit result:
    ``mul.wide.s32``, ``mad.wide.s32``, or ``mul.lo.s64`` / ``mad.lo.s64`` / ``shl.b64`` of
    the extended value). A parameter the PTX never loads maps to ``[]``.

    A row offset ``row * stride`` computed in 32 bits wraps past 2**31 elements even though the
    stride itself fits in 32 bits; one computed from a 64-bit row index shows up only in wide
    products.
    """
    text = _strip_comments(ptx)
    by_index = {index: name for name, index in params.items()}
    narrow_regs: dict[str, str] = {}  # register -> parameter name (32-bit copies)
    wide_regs: dict[str, str] = {}  # register -> parameter name (64-bit extensions)
    found: dict[str, list[str]] = {name: [] for name in params}
    for match in _INSTRUCTION.finditer(text):
        opcode, operand_text = match.group(1), match.group(2)
        operands = [o.strip() for o in operand_text.split(",")]
        if opcode.startswith("ld.param"):
            load = _PARAM_LOAD.search(operand_text)
            if load is not None and int(load.group(1)) in by_index:
                name = by_index[int(load.group(1))]
                target = wide_regs if operands[0].startswith("%rd") else narrow_regs
                target[operands[0]] = name
            continue
        if len(operands) < 2:
            continue
        dest, sources = operands[0], operands[1:]
        line = f"{opcode} {operand_text.strip()}"
        if opcode in ("mov.b32", "mov.u32", "mov.s32"):
            if sources[0] in narrow_regs:
                narrow_regs[dest] = narrow_regs[sources[0]]
        elif opcode in ("mov.b64", "mov.u64", "mov.s64"):
            if sources[0] in wide_regs:
                wide_regs[dest] = wide_regs[sources[0]]
        elif _WIDEN.fullmatch(opcode):
            if sources[0] in narrow_regs:
                wide_regs[dest] = narrow_regs[sources[0]]
        elif _TRUNCATE.fullmatch(opcode):
            if sources[0] in wide_regs:
                narrow_regs[dest] = wide_regs[sources[0]]
        elif _NARROW.fullmatch(opcode):
            factors = sources[:1] if opcode.startswith("shl") else sources[:2]
            for name in {narrow_regs[r] for r in factors if r in narrow_regs}:
                found[name].append(f"narrow: {line}")
        elif _WIDE_FROM_32.fullmatch(opcode):
            for name in {narrow_regs[r] for r in sources[:2] if r in narrow_regs}:
                found[name].append(f"wide: {line}")
        elif _WIDE_FROM_64.fullmatch(opcode):
            factors = sources[:1] if opcode.startswith("shl") else sources[:2]
            for name in {wide_regs[r] for r in factors if r in wide_regs}:
                found[name].append(f"wide: {line}")
    return found
