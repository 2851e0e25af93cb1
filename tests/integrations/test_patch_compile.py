"""``torch.compile(fullgraph=True)`` of a patched tiny Llama: a padded forward and one
static-cache decode step compile without graph breaks and match the patched eager model."""

from __future__ import annotations

import pytest
import torch
from patch_checks import assert_parity
from tiny_models import build, padded_batch

import fusedops

transformers = pytest.importorskip("transformers")

CACHE_LEN = 24


def _prefill(model, ids, mask):
    """A static cache holding ``ids`` (left padded) and the decode step's inputs."""
    cache = transformers.StaticCache(config=model.config, max_cache_len=CACHE_LEN)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [B, S]
    seq = ids.shape[1]
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            cache_position=torch.arange(seq),
            use_cache=True,
        )
    step = {
        "input_ids": out.logits[:, -1].argmax(-1, keepdim=True),  # [B, 1]
        "attention_mask": torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1),  # [B, S + 1]
        "position_ids": positions[:, -1:] + 1,
        "past_key_values": cache,
        "cache_position": torch.tensor([seq]),
        "use_cache": True,
    }
    return step


@pytest.mark.slow
def test_compiled_patched_llama_forward_and_static_decode():
    torch._dynamo.reset()
    model = build("llama")
    ids, mask = padded_batch([6, 9], "left", seed=5)
    with fusedops.patched(model) as report:
        assert report.counts["attention"] and report.counts["rope"] and report.counts["embedding"]
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).logits * mask.unsqueeze(-1)
            got = compiled(input_ids=ids, attention_mask=mask).logits * mask.unsqueeze(-1)
        assert_parity(got, want, "compiled forward")

        eager_step, compiled_step = _prefill(model, ids, mask), _prefill(model, ids, mask)
        with torch.no_grad(), torch.profiler.profile() as prof:
            got = compiled(**compiled_step).logits  # [B, 1, V]
        with torch.no_grad():
            want = model(**eager_step).logits
        assert_parity(got, want, "compiled static-cache decode step")
        # the compiled graph runs the fused ops (not the original functions traced around them)
        names = {e.name for e in prof.events() if e.name.startswith("fusedops::")}
        assert any("rotary" in n or "rope" in n for n in names), names
        assert any("embedding" in n for n in names), names
        # the compiled step wrote its key/value into the cache like the eager one
        for layer_e, layer_c in zip(
            eager_step["past_key_values"].layers,
            compiled_step["past_key_values"].layers,
            strict=True,
        ):
            assert_parity(layer_c.keys, layer_e.keys, "cache keys after the step")
