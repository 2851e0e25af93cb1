"""fusedops.benchmarking.models, the calls the demo and bench/ time, on a tiny random Llama:
:class:`Decode` produces generate's greedy tokens again on every call (its cache is cropped
back to the prompt), :class:`Prefill` gives the last position's logits, and the parity helpers
measure what they say. Nothing here is timed."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import fusedops  # noqa: E402
from fusedops.benchmarking import models as mb  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=None,
        pad_token_id=0,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_decode_repeats_generate_greedy_tokens(tiny_llama):
    prompt = mb.random_ids(96, 7)  # [1, 7]
    with torch.inference_mode():
        mask = torch.ones_like(prompt)  # id 0 is the pad id: say it is a real token here
        out = tiny_llama.generate(prompt, attention_mask=mask, max_new_tokens=10, do_sample=False)
        expected = out[0, 7:]  # [10]
    decode = mb.Decode(tiny_llama, prompt, 9)  # the token after the prompt + 9 steps
    first = decode()
    assert [int(decode.first), *first] == expected.tolist()
    assert decode() == first  # the cache went back to the prompt
    assert decode.cache.get_seq_length() == 7 + 9
    with fusedops.patched(tiny_llama):
        assert mb.Decode(tiny_llama, prompt, 9)() == first


def test_prefill_returns_last_position_logits(tiny_llama):
    ids = mb.random_ids(96, 20)
    last = mb.Prefill(tiny_llama, ids)()  # [1, 1, V]
    full = mb.sequence_logits(tiny_llama, ids)  # [1, 20, V]
    assert last.shape == (1, 1, 96)
    torch.testing.assert_close(last[0, 0], full[0, -1], rtol=1e-5, atol=1e-5)
    err, ref_max = mb.logits_diff(full, full + 0.25)
    assert err == pytest.approx(0.25, abs=1e-5) and ref_max == full.abs().max().item()


def test_random_ids_are_reproducible():
    assert torch.equal(mb.random_ids(1000, 16), mb.random_ids(1000, 16))
    assert int(mb.random_ids(5, 64).max()) < 5


def test_min_cosine_and_embedding_table_bytes(tiny_llama):
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    b = a.clone()
    b[2] = -b[2]
    assert mb.min_cosine(a, a) == pytest.approx(1.0)
    assert mb.min_cosine(a, b) == pytest.approx(-1.0)
    assert mb.embedding_table_bytes(tiny_llama) == 96 * 64 * 4
