"""``nn.Module`` drop-ins built on the fused ops."""

from fusedops.nn.embedding import FusedEmbedding

__all__ = ["FusedEmbedding"]
