"""Custom ops (``torch.library``) with fake impls, autograd and device dispatch."""

from fusedops.ops.attention import attention
from fusedops.ops.embedding import fused_embedding
from fusedops.ops.int8_embedding import int8_embedding, quantize_embedding
from fusedops.ops.rope import apply_rotary, apply_rotary_varlen

__all__ = [
    "apply_rotary",
    "apply_rotary_varlen",
    "attention",
    "fused_embedding",
    "int8_embedding",
    "quantize_embedding",
]
