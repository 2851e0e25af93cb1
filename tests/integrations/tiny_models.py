"""Tiny random-weight Hugging Face models for the patching tests: one config per case (seeded,
fp32, built in well under a second), reference/candidate twins with identical weights, and padded
token batches.

A case is a model family plus the variant it tests (tied or untied embeddings, sliding windows
on every layer or alternating with full layers, Gemma-2's softcap, GPT-2's per-layer attention
scaling). Twins come from :func:`copy.deepcopy` of one built model, so
each has its own config object: ``set_attn_implementation`` mutates the config it is given.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

VOCAB = 96
PAD_ID = 0  # also the id the padded positions hold
FIRST_TOKEN = 3  # sampled ids start here (0 pad, 1 bos, 2 spare)
MAX_POSITIONS = 128  # prompt + 32 new tokens fit with room to spare
HEADS = {"causal_lm": "AutoModelForCausalLM", "seq_cls": "AutoModelForSequenceClassification"}
HEADS["base"] = "AutoModel"

# Shared by the decoder families (llama-style argument names); head dim 64 / 4 = 16 (the fused
# attention's minimum), GQA with 2 key/value heads, no dropout anywhere (training-mode tests).
_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
    "pad_token_id": PAD_ID,
    "bos_token_id": 1,
    "eos_token_id": None,  # greedy runs always produce the full 32 tokens
    "attention_dropout": 0.0,
    "initializer_range": 0.5,  # random weights this large give varied greedy tokens
}
_GPT2 = {
    "vocab_size": VOCAB,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": 96,
    "n_positions": MAX_POSITIONS,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "pad_token_id": PAD_ID,
    "bos_token_id": 1,
    "eos_token_id": None,
    "initializer_range": 0.5,
}
_INVERSE_LAYER_IDX = "scale_attn_by_inverse_layer_idx"
_BERT = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_POSITIONS,
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "pad_token_id": PAD_ID,
    "initializer_range": 0.2,
}


@dataclass(frozen=True)
class Case:
    """A tiny model: its ``model_type``, config class, config arguments and the heads it has."""

    name: str
    model_type: str
    config_class: str
    kwargs: dict = field(default_factory=dict)
    heads: tuple[str, ...] = ("causal_lm", "seq_cls", "base")
    attention: str = "sdpa"  # the unpatched implementation (Gemma-2 has no SDPA path)

    @property
    def decoder(self) -> bool:
        return "causal_lm" in self.heads


def _case(name, model_type, config_class, base, heads=("causal_lm", "seq_cls", "base"), **kw):
    return Case(name, model_type, config_class, {**base, **kw}, heads)


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        _case("llama", "llama", "LlamaConfig", _DECODER, tie_word_embeddings=False),
        _case("llama_tied", "llama", "LlamaConfig", _DECODER, tie_word_embeddings=True),
        _case("mistral", "mistral", "MistralConfig", _DECODER, sliding_window=None),
        _case("mistral_window", "mistral", "MistralConfig", _DECODER, sliding_window=4),
        _case("qwen2", "qwen2", "Qwen2Config", _DECODER, tie_word_embeddings=False),
        # layer 0 full attention, layer 1 a window of 4 (Qwen2's max_window_layers split)
        _case(
            "qwen2_window",
            "qwen2",
            "Qwen2Config",
            _DECODER,
            tie_word_embeddings=False,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
        ),
        _case("qwen3", "qwen3", "Qwen3Config", _DECODER, head_dim=16, tie_word_embeddings=True),
        _case("gemma", "gemma", "GemmaConfig", _DECODER, head_dim=16, tie_word_embeddings=True),
        # alternating window-4 / full layers, scores capped at 2 (small enough to bite)
        dataclasses.replace(
            _case(
                "gemma2",
                "gemma2",
                "Gemma2Config",
                _DECODER,
                head_dim=16,
                sliding_window=4,
                query_pre_attn_scalar=16,
                attn_logit_softcapping=2.0,
                tie_word_embeddings=True,
            ),
            attention="eager",
        ),
        _case("gpt2", "gpt2", "GPT2Config", _GPT2, tie_word_embeddings=True),
        _case(
            "gpt2_layer_scaled", "gpt2", "GPT2Config", _GPT2, scale_attn_by_inverse_layer_idx=True
        ),
        _case("bert", "bert", "BertConfig", _BERT, heads=("base", "seq_cls")),
    )
}
# A family fusedops.patch does not support (strict=False fuses only its plain nn.Embedding;
# its positional table is an nn.Embedding subclass with an offset and must stay as it is).
UNSUPPORTED = _case(
    "opt",
    "opt",
    "OPTConfig",
    {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "word_embed_proj_dim": 64,
        "ffn_dim": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_POSITIONS,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "pad_token_id": PAD_ID,
    },
    heads=("causal_lm",),
)
DECODER_CASES = [name for name, case in CASES.items() if case.decoder]
# Every head of every case, as (case, head) pairs.
CASE_HEADS = [(name, head) for name, case in CASES.items() for head in case.heads]


def make_config(name: str, **overrides):
    """A fresh config object of case ``name`` (the case's unpatched attention) with
    ``overrides`` applied."""
    import transformers

    case = _lookup(name)
    config_class = getattr(transformers, case.config_class)
    config = config_class(**{**case.kwargs, **overrides})
    config._attn_implementation = case.attention
    return config


def _lookup(name: str) -> Case:
    return CASES[name] if name in CASES else {UNSUPPORTED.name: UNSUPPORTED}[name]


def build(name: str, head: str = "causal_lm", *, seed: int = 0, **overrides) -> torch.nn.Module:
    """Case ``name`` with ``head`` (a key of :data:`HEADS`), random weights from ``seed``, fp32,
    the case's unpatched attention (sdpa but for Gemma-2's eager), in eval mode."""
    import transformers

    auto = getattr(transformers, HEADS[head])
    config = make_config(name, **overrides)
    torch.manual_seed(seed)
    attention = _lookup(name).attention
    model = auto.from_config(config, attn_implementation=attention, dtype=torch.float32)
    return model.eval()


def twins(
    name: str, head: str = "causal_lm", *, seed: int = 0, **overrides
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(reference, candidate): two independent models of case ``name`` with identical weights,
    each with its own config object."""
    reference = build(name, head, seed=seed, **overrides)
    return reference, copy.deepcopy(reference)


def padded_batch(
    lengths: list[int], side: str = "left", *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [B, S], attention_mask [B, S])`` of random tokens with the given lengths,
    padded with :data:`PAD_ID` on ``side`` ("left" or "right") to the longest."""
    assert side in ("left", "right"), side
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens = torch.randint(FIRST_TOKEN, VOCAB, (length,), generator=gen)
        cols = slice(width - length, width) if side == "left" else slice(0, length)
        ids[row, cols] = tokens
        mask[row, cols] = 1
    return ids, mask


def output_tensor(output) -> torch.Tensor:
    """The main output of a model call: logits (LM / classification heads) or the last hidden
    state (base models)."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def dropout_free(model: torch.nn.Module) -> bool:
    """True when no ``nn.Dropout`` in ``model`` has a non-zero probability (training-mode runs
    are then deterministic)."""
    return all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
