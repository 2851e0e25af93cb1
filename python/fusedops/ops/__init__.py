"""Custom ops (``torch.library``) with fake impls, autograd and device dispatch."""

from fusedops.ops.embedding import fused_embedding
from fusedops.ops.int8_embedding import int8_embedding, quantize_embedding

__all__ = ["fused_embedding", "int8_embedding", "quantize_embedding"]
