"""Custom ops (``torch.library``) with fake impls, autograd and device dispatch.

Besides the ops, the argument checks that modules and wrappers share, raising errors that name
the caller (``check_padding_idx("FusedEmbedding", 11, 10)`` raises ``ValueError:
FusedEmbedding: padding_idx 11 outside [-10, 10)``).
"""

from fusedops.ops._lookup_checks import check_padding_idx
from fusedops.ops.attention import attention, check_attention_args
from fusedops.ops.attention_kvcache import attention_with_kvcache
from fusedops.ops.attention_varlen import attention_varlen
from fusedops.ops.backends import backend_for
from fusedops.ops.embedding import fused_embedding
from fusedops.ops.embedding_layernorm import fused_embedding_layernorm
from fusedops.ops.factorized_embedding import factorized_embedding
from fusedops.ops.int8_embedding import int8_embedding, quantize_embedding
from fusedops.ops.rope import apply_rotary, apply_rotary_varlen
from fusedops.ops.vocab_parallel import vocab_parallel_embedding, vocab_parallel_int8_embedding

__all__ = [
    "apply_rotary",
    "apply_rotary_varlen",
    "attention",
    "attention_varlen",
    "attention_with_kvcache",
    "backend_for",
    "check_attention_args",
    "check_padding_idx",
    "factorized_embedding",
    "fused_embedding",
    "fused_embedding_layernorm",
    "int8_embedding",
    "quantize_embedding",
    "vocab_parallel_embedding",
    "vocab_parallel_int8_embedding",
]
