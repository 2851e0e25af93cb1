"""``nn.Module`` drop-ins built on the fused ops."""

from fusedops.nn.attention import FusedAttention, attention_hf
from fusedops.nn.embedding import FusedEmbedding
from fusedops.nn.embedding_layernorm import FusedEmbeddingLayerNorm
from fusedops.nn.factorized_embedding import FactorizedEmbedding
from fusedops.nn.int8_embedding import Int8Embedding
from fusedops.nn.rotary import RotaryEmbedding
from fusedops.nn.vocab_parallel import VocabParallelEmbedding, VocabParallelInt8Embedding

__all__ = [
    "FactorizedEmbedding",
    "FusedAttention",
    "FusedEmbedding",
    "FusedEmbeddingLayerNorm",
    "Int8Embedding",
    "RotaryEmbedding",
    "VocabParallelEmbedding",
    "VocabParallelInt8Embedding",
    "attention_hf",
]
