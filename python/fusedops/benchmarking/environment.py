"""The environment header of a benchmark run: what a result was measured on.

:func:`describe` returns a JSON-ready dict: device name, SM count and compute capability (CUDA)
or CPU model (CPU), threads, memory, driver / CUDA / torch / triton / fusedops / Python versions,
the platform, the git commit of the fusedops checkout when it is one, and the date. The runner
adds the command, the sweep and the measured ceilings.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import fusedops
from fusedops.benchmarking.timing import as_device


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def host_memory_bytes() -> int | None:
    """Physical memory of the host in bytes (``None`` where ``sysconf`` cannot tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_name(device: torch.device | str) -> str:
    """``NVIDIA H100 80GB HBM3`` for a CUDA device, the CPU model for ``cpu``."""
    dev = as_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """``HEAD`` of the git checkout fusedops is imported from (``-dirty`` when it has
    uncommitted changes); ``None`` for an installed wheel or without git."""
    root = Path(fusedops.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _cuda_driver() -> str | None:
    try:
        version = torch._C._cuda_getDriverVersion()  # e.g. 12040
    except (AttributeError, RuntimeError):
        return None
    return f"{version // 1000}.{version % 1000 // 10}" if version else None


def describe(device: torch.device | str) -> dict[str, Any]:
    """The environment header of a run on ``device`` (see the module docstring)."""
    dev = as_device(device)
    env: dict[str, Any] = {
        "device": str(dev),
        "device_type": dev.type,
        "device_name": device_name(dev),
        "sm_count": None,
        "compute_capability": None,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "memory_bytes": host_memory_bytes(),
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "fusedops": fusedops.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(
            sm_count=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            memory_bytes=props.total_memory,
            driver=_cuda_driver(),
        )
    return env
