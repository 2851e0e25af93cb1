"""``nn.Module`` drop-ins built on the fused ops."""

from fusedops.nn.attention import FusedAttention, attention_hf
from fusedops.nn.embedding import FusedEmbedding
from fusedops.nn.embedding_layernorm import FusedEmbeddingLayerNorm
from fusedops.nn.int8_embedding import Int8Embedding
from fusedops.nn.rotary import RotaryEmbedding

__all__ = [
    "FusedAttention",
    "FusedEmbedding",
    "FusedEmbeddingLayerNorm",
    "Int8Embedding",
    "RotaryEmbedding",
    "attention_hf",
]
