"""``nn.Module`` drop-ins built on the fused ops."""

from fusedops.nn.embedding import FusedEmbedding
from fusedops.nn.int8_embedding import Int8Embedding

__all__ = ["FusedEmbedding", "Int8Embedding"]
