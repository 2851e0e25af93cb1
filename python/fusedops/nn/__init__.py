"""``nn.Module`` drop-ins built on the fused ops."""

from fusedops.nn.embedding import FusedEmbedding
from fusedops.nn.int8_embedding import Int8Embedding
from fusedops.nn.rotary import RotaryEmbedding

__all__ = ["FusedEmbedding", "Int8Embedding", "RotaryEmbedding"]
