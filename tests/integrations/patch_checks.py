"""What the patching tests share: the parity bound, the per-family expectations of a report, the
module-level RoPE function of a model's modeling file and greedy generation."""

from __future__ import annotations

import importlib

import torch
from tiny_models import PAD_ID

# Patched vs unpatched in fp32: max |difference| <= this times max |reference value|.
PARITY_RTOL = 1e-4

# What patch() must replace per case of tiny_models.CASES; any other kind the family has is
# replaced or left alone with a reason (GPT-2's per-layer attention scaling).
EXPECTED_KINDS: dict[str, tuple[str, ...]] = {
    "llama": ("embedding", "rope", "attention"),
    "llama_tied": ("embedding", "rope", "attention"),
    "mistral": ("embedding", "rope", "attention"),
    "mistral_window": ("embedding", "rope", "attention"),
    "qwen2": ("embedding", "rope", "attention"),
    "qwen2_window": ("embedding", "rope", "attention"),
    "gemma2": ("embedding", "rope", "attention"),
    "qwen3": ("embedding", "rope", "attention"),
    "gemma": ("embedding", "rope", "attention"),
    "gpt2": ("embedding", "attention"),
    "gpt2_layer_scaled": ("embedding",),
    "bert": ("embedding", "attention"),
}
ROPE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")


def check_report_kinds(report, case: str, model_type: str) -> None:
    """``report`` (of a model of ``case``) replaced every kind :data:`EXPECTED_KINDS` names;
    unpatched attention is explained; RoPE-free families have no RoPE entry."""
    assert report.model_type == model_type, report.model_type
    counts = report.counts
    for kind in EXPECTED_KINDS[case]:
        assert counts[kind] >= 1, f"{case}: no {kind} replaced\n{report}"
    if counts["attention"] == 0:
        alone = [e for e in report.left_alone if e.kind == "attention"]
        assert alone and all(e.detail for e in alone), (
            f"attention neither patched nor explained\n{report}"
        )
    if model_type not in ROPE_FAMILIES:
        assert counts["rope"] == 0, report


def _modeling_module(model_type: str):
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


# The RoPE functions of the modeling files as transformers defines them (recorded on import,
# before any test patches a model).
ORIGINAL_ROPE = {family: _modeling_module(family).apply_rotary_pos_emb for family in ROPE_FAMILIES}


def rope_function(model_type: str):
    """The ``apply_rotary_pos_emb`` the modeling file of ``model_type`` holds now (the name its
    attention layers look up at call time)."""
    return _modeling_module(model_type).apply_rotary_pos_emb


def is_original_rope(model_type: str) -> bool:
    """True when the modeling file of ``model_type`` holds its own RoPE function (always for
    RoPE-free families)."""
    if model_type not in ROPE_FAMILIES:
        return True
    return rope_function(model_type) is ORIGINAL_ROPE[model_type]


def max_relative_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| in fp64 (NaN anywhere gives inf)."""
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (a.shape, e.shape)
    if torch.isnan(a).any() or torch.isnan(e).any():
        return float("inf")
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    """Patched ``actual`` within :data:`PARITY_RTOL` of unpatched ``expected``; returns the
    relative difference."""
    rel = max_relative_diff(actual, expected)
    assert rel <= PARITY_RTOL, f"{what}: max |diff| = {rel:.3g} x max |reference| > {PARITY_RTOL}"
    return rel


def greedy_generate(model, ids, mask, *, new_tokens: int, cache: str = "dynamic"):
    """``(sequences [B, S + N], logits [N, B, V])`` of exactly ``new_tokens`` greedy tokens
    with the ``"dynamic"`` or ``"static"`` cache."""
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=PAD_ID,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    return out.sequences, torch.stack(out.logits)
