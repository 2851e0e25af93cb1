"""Which backend a public op would run on a device, asked before any data exists.

``backend_for("attention", torch.device("cuda"))`` returns ``"triton"``, ``"cpp"`` or
``"reference"`` under the current :func:`fusedops.use_backend` choice, or raises the same
``RuntimeError`` the op would raise at its first call (no kernel for the device, triton or the
extension missing). Model patchers call it so that a model on an unsupported device fails when
it is patched, not at its first forward.
"""

from __future__ import annotations

import importlib

import torch

from fusedops._backend import resolve_backend

# public op name -> module of fusedops.ops defining its BACKENDS
_OP_MODULES = {
    "fused_embedding": "embedding",
    "fused_embedding_layernorm": "embedding_layernorm",
    "factorized_embedding": "factorized_embedding",
    "int8_embedding": "int8_embedding",
    "apply_rotary": "rope",
    "attention": "attention",
    "attention_varlen": "attention_varlen",
    "attention_with_kvcache": "attention_kvcache",
}
OPS = tuple(_OP_MODULES)


def backend_for(op: str, device: torch.device | str) -> str:
    """The backend ``op`` (one of :data:`OPS`) runs on ``device``; ``RuntimeError`` if none."""
    if op not in _OP_MODULES:
        raise ValueError(f"backend_for: unknown op {op!r}; expected one of {list(OPS)}")
    module = importlib.import_module(f"fusedops.ops.{_OP_MODULES[op]}")
    return resolve_backend(op, torch.device(device), module.BACKENDS)
