"""The factorized-embedding quality study's functions on tiny random models: at full rank the
factorized model matches the original (cosine 1, top-1 agreement 1), the model gets its
embedding back, the text split and the report."""

from __future__ import annotations

import pytest
import torch

from fusedops.factorization import most_frequent, sample_text, token_frequencies

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (requirements-dev.txt)"
)
fq = pytest.importorskip("fusedops.benchmarking.factorized_quality")


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=89,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=3,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval()


def test_encoder_sweep_full_rank_is_exact(tiny_bert):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 97, (6, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[4, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    counts = token_frequencies(ids, 97)
    hot = most_frequent(counts, 8)
    original = tiny_bert.get_input_embeddings()
    variants = fq.encoder_sweep(
        tiny_bert, batch, [2, 32, 64], [hot[:0], hot], counted=3, weight_counts=counts
    )
    assert tiny_bert.get_input_embeddings() is original  # restored
    assert [(v.rank, v.num_hot) for v in variants] == [(2, 0), (32, 0), (2, 8), (32, 8)]
    for v in variants:
        q = v.quality
        assert v.dense_bytes == 97 * 32 * 4
        assert v.memory_bytes == (97 * v.rank + v.rank * 32 + v.num_hot * 32) * 4 + v.num_hot * 8
        if v.rank == 32:  # full rank: the table and the sentence embeddings are unchanged
            assert v.relative_error < 1e-6 and v.weighted_error < 1e-6
            assert q.value > 1 - 1e-9 and q.worst > 1 - 1e-9
        else:
            assert v.relative_error > 0.3 and q.worst < 0.9999
        assert q.worst <= q.value <= 1 + 1e-12
        assert min(q.counted, q.held_out) <= q.value <= max(q.counted, q.held_out) + 1e-12
    # Hot rows are exact, so at equal rank the table error is smaller with them.
    assert variants[2].relative_error < variants[0].relative_error


def test_causal_sweep_full_rank_agrees_everywhere(tiny_llama):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 89, (4, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    hot = most_frequent(token_frequencies(ids, 89), 6)
    head = tiny_llama.lm_head.weight
    variants = fq.causal_sweep(tiny_llama, ids, mask, [1, 24], [hot[:0], hot], counted=2)
    assert tiny_llama.lm_head.weight is head  # the tied head keeps its dense table
    assert isinstance(tiny_llama.get_input_embeddings(), torch.nn.Embedding)
    full = [v for v in variants if v.rank == 24]
    assert len(full) == 2 and all(v.quality.value == 1.0 == v.quality.worst for v in full)
    assert all(v.quality.counted == 1.0 == v.quality.held_out for v in full)
    rank1 = [v for v in variants if v.rank == 1]
    assert all(v.quality.value < 1.0 for v in rank1)  # a rank-1 table changes predictions


def test_quality_functions_score_what_they_claim(tiny_llama):
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    reference = fq.top1(tiny_llama, ids, mask)
    wrong = reference.clone()
    wrong[0, :2] = (wrong[0, :2] + 1) % 89  # 2 of 6 real positions disagree
    wrong[1, 3] = (wrong[1, 3] + 1) % 89  # a padding position: ignored
    q = fq.causal_quality(tiny_llama, ids, mask, wrong, counted=1)
    assert q.value == pytest.approx(4 / 6) and q.worst == pytest.approx(0.5)
    assert q.counted == pytest.approx(0.5) and q.held_out == 1.0


def test_sweep_checks_hot_ids(tiny_llama):
    with pytest.raises(ValueError, match=r"factorize_sweep: hot id 89 outside \[0, 89\)"):
        fq.factorize_sweep(tiny_llama, [2], [torch.tensor([89])], lambda: None)


def test_text_split_and_prompts():
    split = fq.split_text(sample_text())
    assert len(split.counted) >= 20 and len(split.held_out) >= 20
    assert not set(split.counted) & set(split.held_out)
    counted, held = fq.sentences(split.counted), fq.sentences(split.held_out)
    assert len(counted) >= fq.SENTENCES_PER_HALF and len(held) >= fq.SENTENCES_PER_HALF
    assert all(s[0].isupper() or s[0] in "\"'" for s in counted + held)
    assert all(s.rstrip("\"')")[-1] in ".!?" for s in counted + held)
    chosen = fq.spread(held, fq.SENTENCES_PER_HALF)
    assert len(set(chosen)) == fq.SENTENCES_PER_HALF and chosen[0] == held[0]
    pairs = fq.prompts(split.held_out, fq.PROMPTS_PER_HALF)
    assert len(pairs) == fq.PROMPTS_PER_HALF and all(p in " ".join(split.held_out) for p in pairs)


def test_report_markdown():
    quality = fq.Quality(0.9, 0.5, 0.95, 0.85)
    variants = [
        fq.Variant(4, 0, 1000, 4000, 0.5, 0.4, quality),
        fq.Variant(4, 8, 1300, 4000, 0.45, 0.2, fq.Quality(0.99, 0.9, 1.0, 0.98)),
        fq.Variant(16, 0, 5000, 4000, 0.0, 0.0, fq.Quality(1.0, 1.0, 1.0, 1.0)),
    ]
    study = fq.ModelStudy("tiny", 50, 16, 4000, "top-1 agreement", "3 prompts", variants)
    text = fq.report_markdown([study], header="env line")
    assert "## tiny (V=50, D=16)" in text and "env line" in text
    assert "| 4 | 0.00 / 0.00 | 25.0% / 32.5% | 0.500 / 0.450 | 0.400 / 0.200 |" in text
    assert "90.0% (worst 50%) | 99.0% (worst 90%) |" in text
    assert (
        "| 16 (full) | 0.01 | 125.0% |" in text
        and "| 16 (full) | 100.0% | 100.0% | - | - |" in text
    )
    assert (
        "- smallest rank reaching agreement 90%: no hot tokens: rank 4 (25.0% of dense); "
        "8 hot tokens: rank 4 (32.5% of dense)\n" in text
    )
    cosine = fq.ModelStudy("enc", 50, 16, 4000, "cosine", "s", variants[:1])
    text = fq.study_markdown(cosine)
    assert "0.9000 (min 0.500) | - |" in text
    assert "reaching mean cosine 0.95: no hot tokens: none of the tested ranks below full\n" in text


def test_main_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fq.main(["--out", str(tmp_path), "--models", "gpt5"])
    assert "unknown model" in capsys.readouterr().err
