"""What :func:`fusedops.patch` fuses in each Hugging Face model family (data only).

``embedding`` names the input-embedding scheme of the family's base model:

* ``"tokens"``: ``embed_tokens`` (an ``nn.Embedding``) becomes a ``FusedEmbedding`` sharing
  its weight;
* ``"scaled_tokens"``: Gemma's ``GemmaTextScaledWordEmbedding`` becomes a
  ``FusedEmbedding`` scaled by the normalizer rounded to the weight dtype;
* ``"learned_positions"``: GPT-2's ``wte[ids] + wpe[pos]`` runs as one fused call;
* ``"bert"``: ``BertEmbeddings`` (word + position + token type + LayerNorm) runs as one
  ``fused_embedding_layernorm`` call.

``rope``: the family's modeling file has Hugging Face's ``apply_rotary_pos_emb``, swapped for
``fusedops.apply_rotary``. ``attention``: the model runs with ``attn_implementation="fusedops"``
(causal for decoders, bidirectional with padding for encoders; sliding-window layers and
Gemma-2's attention softcap included).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    embedding: str
    embedding_attrs: tuple[str, ...]  # attributes of the base model the scheme replaces
    rope: bool
    attention: bool = True


_LLAMA_LIKE = Family("tokens", ("embed_tokens",), rope=True)

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": Family("scaled_tokens", ("embed_tokens",), rope=True),
    "gemma2": Family("scaled_tokens", ("embed_tokens",), rope=True),
    "gpt2": Family("learned_positions", ("wte", "wpe"), rope=False),
    "bert": Family("bert", ("embeddings",), rope=False),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)
