"""Model patching: fusedops inside models users already have.

:func:`patch` / :func:`unpatch` / :func:`patched` work on Hugging Face transformers models
(``fusedops.integrations.transformers``; transformers is imported lazily) and, with
``strict=False``, on any ``nn.Module`` holding ``nn.Embedding`` tables.
"""

from fusedops.integrations.report import PatchEntry, PatchReport
from fusedops.integrations.transformers import (
    SUPPORTED_MODEL_TYPES,
    patch,
    patched,
    register,
    unpatch,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "PatchEntry",
    "PatchReport",
    "patch",
    "patched",
    "register",
    "unpatch",
]
