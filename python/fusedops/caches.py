"""Where compiler caches go: one rule for Triton, Inductor and the ahead-of-time compile cache.

Every cache lives under ``<sys.prefix>/fusedops-cache/<name>`` (inside the virtual environment,
never the home directory) unless its environment variable is already set.
"""

from __future__ import annotations

import os
import sys

# environment variable -> sub-folder of <sys.prefix>/fusedops-cache
CACHE_VARS = {
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "FUSEDOPS_COMPILE_CACHE": "gpu-compile",
}


def cache_root() -> str:
    """``<sys.prefix>/fusedops-cache``."""
    return os.path.join(sys.prefix, "fusedops-cache")


def cache_dir(var: str) -> str:
    """The folder for the cache named by environment variable ``var`` (its value if set)."""
    return os.environ.get(var) or os.path.join(cache_root(), CACHE_VARS[var])


def set_default_cache_dirs() -> None:
    """Set every unset cache variable to its folder under :func:`cache_root`. Call it before
    Triton or Inductor first compiles something."""
    for var in CACHE_VARS:
        os.environ.setdefault(var, cache_dir(var))
