"""fusedops.patch on tiny random models of every supported family and head, fp32: patched
logits / hidden states match the unpatched model's on left-padded, right-padded and unpadded
batches, and greedy generation of 32 tokens (DynamicCache and StaticCache, three prompts of
different lengths, left padded) gives the same tokens.

Every reference result is computed before its twin is patched and the twin is unpatched again
afterwards: RoPE patching swaps a function of the family's modeling file, which the unpatched
reference would otherwise call too.
"""

from __future__ import annotations

import functools

import pytest
import torch
from patch_checks import assert_parity, check_report_kinds, greedy_generate, is_original_rope
from tiny_models import CASE_HEADS, CASES, DECODER_CASES, output_tensor, padded_batch, twins

import fusedops

pytest.importorskip("transformers")

# name -> (prompt lengths, padding side)
BATCHES = {"left": ([5, 11, 8], "left"), "right": ([11, 4, 7], "right"), "single": ([9], "left")}
GENERATE_LENGTHS = [6, 13, 9]
NEW_TOKENS = 32
CACHES = ("dynamic", "static")


def _forward(model, case: str, batch: str) -> torch.Tensor:
    """The model's main output on ``batch``; a decoder's padded positions are zeroed (their
    values are undefined: those queries have no key to attend)."""
    lengths, side = BATCHES[batch]
    ids, mask = padded_batch(lengths, side, seed=len(batch))
    with torch.no_grad():
        out = output_tensor(model(input_ids=ids, attention_mask=mask))
    if CASES[case].decoder and out.dim() == 3:
        out = out * mask.unsqueeze(-1)  # [B, S, N]
    return out


def _generate(model, cache: str):
    ids, mask = padded_batch(GENERATE_LENGTHS, "left", seed=7)
    return greedy_generate(model, ids, mask, new_tokens=NEW_TOKENS, cache=cache)


def _results(model, case: str, head: str) -> dict:
    results = {batch: _forward(model, case, batch) for batch in BATCHES}
    if head == "causal_lm":
        results.update({cache: _generate(model, cache) for cache in CACHES})
    return results


@functools.cache
def parity_results(case: str, head: str) -> tuple[dict, dict, object]:
    """(unpatched results, patched results, report) of one (case, head), computed once; the
    patched results also hold the names of the ``fusedops::`` ops a forward ran."""
    reference, candidate = twins(case, head)
    assert is_original_rope(CASES[case].model_type), "a test left this family patched"
    want = _results(reference, case, head)
    with fusedops.patched(candidate) as report:
        with torch.profiler.profile() as prof:
            _forward(candidate, case, "single")
        got = _results(candidate, case, head)
    got["fused_ops"] = {e.name for e in prof.events() if e.name.startswith("fusedops::")}
    assert is_original_rope(CASES[case].model_type), "patched() left the RoPE function swapped"
    return want, got, report


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("case,head", CASE_HEADS, ids=[f"{c}-{h}" for c, h in CASE_HEADS])
def test_forward_parity(case, head, batch):
    want, got, report = parity_results(case, head)
    check_report_kinds(report, case, CASES[case].model_type)
    # the patched forward really runs the fused ops (its outputs may equal the original's bit
    # for bit: the CPU kernels round like PyTorch's eager code)
    assert any("embedding" in name for name in got["fused_ops"]), got["fused_ops"]
    if report.counts["rope"]:
        assert any("rope" in name or "rotary" in name for name in got["fused_ops"])
    assert_parity(got[batch], want[batch], f"{case} {head} {batch}")


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("case", DECODER_CASES)
def test_greedy_generate_identical(case, cache):
    want, got, _ = parity_results(case, "causal_lm")
    (want_ids, want_logits), (got_ids, got_logits) = want[cache], got[cache]
    assert want_ids.shape[1] == max(GENERATE_LENGTHS) + NEW_TOKENS
    assert torch.equal(got_ids, want_ids), f"{case} {cache}: greedy tokens differ"
    assert_parity(got_logits, want_logits, f"{case} {cache} generate logits")


def _other_inputs(case: str, reference) -> dict[str, dict]:
    """Calls a user may make besides ids + mask: explicit positions, token types, embeddings."""
    ids, mask = padded_batch([5, 9], "right", seed=4)
    positions = torch.arange(9).expand(2, 9) + 7  # [B, S]
    embed = reference.get_input_embeddings()
    with torch.no_grad():
        embeds = embed(ids)  # [B, S, H] (Gemma's scaled rows, GPT-2's token rows)
    calls = {
        "position_ids": {"input_ids": ids, "attention_mask": mask, "position_ids": positions},
        "inputs_embeds": {"inputs_embeds": embeds, "attention_mask": mask},
        "no_mask": {"input_ids": ids},
    }
    if CASES[case].model_type in ("gpt2", "bert"):
        types = {"input_ids": ids, "attention_mask": mask, "token_type_ids": ids % 2}
        calls["token_type_ids"] = types
    return calls


@pytest.mark.parametrize("case", ["llama", "gemma", "gpt2", "bert"])
def test_other_inputs_parity(case):
    reference, candidate = twins(case, "base")
    calls = _other_inputs(case, reference)
    with torch.no_grad():
        want = {name: output_tensor(reference(**kw)) for name, kw in calls.items()}
        with fusedops.patched(candidate):
            got = {name: output_tensor(candidate(**kw)) for name, kw in calls.items()}
    for name in calls:
        assert_parity(got[name], want[name], f"{case} {name}")
