"""fusedops: fused Triton / C++ / CUDA kernels for the input side of transformers.

Public ops dispatch per call: CUDA tensors run the Triton kernels, CPU tensors the C++ kernels
of ``fusedops._C`` (attention on CPU runs PyTorch's SDPA; the INT8 embedding has no Triton
kernel: it runs the extension's CPU or CUDA kernel); ``use_backend("triton" | "cpp" |
"reference")`` or ``$FUSEDOPS_BACKEND`` force one. See README.md for the rules.
"""

from fusedops import factorization, nn, reference
from fusedops._backend import current_backend, use_backend
from fusedops.factorization import most_frequent, token_frequencies
from fusedops.integrations import PatchReport, patch, patched, unpatch
from fusedops.nn.attention import attention_hf
from fusedops.ops.attention import attention
from fusedops.ops.attention_kvcache import attention_with_kvcache
from fusedops.ops.attention_varlen import attention_varlen
from fusedops.ops.embedding import fused_embedding
from fusedops.ops.embedding_layernorm import fused_embedding_layernorm
from fusedops.ops.factorized_embedding import factorized_embedding
from fusedops.ops.int8_embedding import int8_embedding
from fusedops.ops.rope import apply_rotary, apply_rotary_varlen
from fusedops.quantization import quantize_embedding
from fusedops.rope_tables import rope_cos_sin

__all__ = [
    "PatchReport",
    "apply_rotary",
    "apply_rotary_varlen",
    "attention",
    "attention_hf",
    "attention_varlen",
    "attention_with_kvcache",
    "current_backend",
    "factorization",
    "factorized_embedding",
    "fused_embedding",
    "fused_embedding_layernorm",
    "int8_embedding",
    "most_frequent",
    "nn",
    "patch",
    "patched",
    "quantize_embedding",
    "reference",
    "rope_cos_sin",
    "token_frequencies",
    "unpatch",
    "use_backend",
]
__version__ = "0.1.0"
