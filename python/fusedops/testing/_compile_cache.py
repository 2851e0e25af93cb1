"""Cache locations and the on-disk results cache.

Results are cached under ``$FUSEDOPS_COMPILE_CACHE`` or ``<sys.prefix>/fusedops-compile-cache``,
keyed on the kernel fingerprint, the job spec and the triton version. Triton's own cache goes to
``$TRITON_CACHE_DIR``, or ``<sys.prefix>/triton-cache`` when that is unset (never ``$HOME``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import triton

from fusedops.testing._kernel_source import _fingerprint

if TYPE_CHECKING:
    from fusedops.testing._triton_compile import _Spec

__all__ = ["compile_cache_dir"]

# Bump when the facts stored in the cache change meaning or shape.
_HARNESS_VERSION = 1


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def _writable_dir(preferred: str, fallback_name: str) -> str:
    try:
        os.makedirs(preferred, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    path = os.path.join(tempfile.gettempdir(), fallback_name)
    os.makedirs(path, exist_ok=True)
    return path


def compile_cache_dir() -> str:
    """Directory of the results cache: ``$FUSEDOPS_COMPILE_CACHE`` or
    ``<sys.prefix>/fusedops-compile-cache`` (created on demand)."""
    env = os.environ.get("FUSEDOPS_COMPILE_CACHE")
    if env:
        os.makedirs(env, exist_ok=True)
        return env
    return _writable_dir(
        os.path.join(sys.prefix, "fusedops-compile-cache"), "fusedops-compile-cache"
    )


def _default_triton_cache_dir() -> str:
    return _writable_dir(os.path.join(sys.prefix, "triton-cache"), "fusedops-triton-cache")


def _ensure_triton_cache_dir() -> None:
    """Point Triton's cache under sys.prefix unless the user chose a location."""
    if "TRITON_CACHE_DIR" not in os.environ and "dir" not in vars(triton.knobs.cache):
        os.environ["TRITON_CACHE_DIR"] = _default_triton_cache_dir()


# --------------------------------------------------------------------------------------------
# Results cache
# --------------------------------------------------------------------------------------------


def _cache_key(kernel: Any, spec: _Spec) -> str:
    payload = json.dumps(
        [
            _HARNESS_VERSION,
            triton.__version__,
            _fingerprint(kernel),
            [list(kv) for kv in spec.signature],
            [[k, repr(v)] for k, v in spec.constexprs],
            spec.arch,
            spec.num_warps,
            spec.num_stages,
            list(spec.divisible),
            spec.fp_fusion,
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _cache_path(key: str) -> str:
    return os.path.join(compile_cache_dir(), f"{key}.json.gz")


def _cache_load(key: str) -> dict[str, Any] | None:
    try:
        with gzip.open(_cache_path(key), "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, EOFError):
        return None


def _cache_store(key: str, facts: Mapping[str, Any]) -> None:
    path = _cache_path(key)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(facts, f)
        os.replace(tmp, path)  # atomic: concurrent sessions never see half a file
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
