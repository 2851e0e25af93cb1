"""Custom ops (``torch.library``) with fake impls, autograd and device dispatch."""

from fusedops.ops.embedding import fused_embedding

__all__ = ["fused_embedding"]
