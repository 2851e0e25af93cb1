"""fusedops: fused Triton / C++ / CUDA kernels for the input side of transformers.

Public ops dispatch per call: CUDA tensors run the Triton kernels, CPU tensors the C++ kernels
of ``fusedops._C``; ``use_backend("triton" | "cpp" | "reference")`` or ``$FUSEDOPS_BACKEND``
force one. See README.md for the rules.
"""

from fusedops import nn, reference
from fusedops._backend import current_backend, use_backend
from fusedops.ops.embedding import fused_embedding

__all__ = ["current_backend", "fused_embedding", "nn", "reference", "use_backend"]
__version__ = "0.1.0"
