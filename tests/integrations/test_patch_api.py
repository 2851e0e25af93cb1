"""The contract of fusedops.patch / unpatch / patched on tiny random models: the report,
idempotence, strict and non-strict handling of unsupported models, exact restoration,
state_dict and tied weights, save/load, reference-counted RoPE swaps, INT8 embedding rules, the
key mask handed to the "fusedops" attention, the fused ops really running (profiler), and bad
input."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
from patch_checks import (
    EXPECTED_KINDS,
    ORIGINAL_ROPE,
    assert_parity,
    check_report_kinds,
    is_original_rope,
    rope_function,
)
from tiny_models import CASES, PAD_ID, UNSUPPORTED, build, output_tensor, padded_batch, twins

import fusedops
from fusedops.integrations import transformers as hf_patch
from fusedops.nn import FusedEmbedding, Int8Embedding

transformers = pytest.importorskip("transformers")


def _run(model, lengths=(5, 9, 7), side="left", seed=0) -> torch.Tensor:
    ids, mask = padded_batch(list(lengths), side, seed=seed)
    with torch.no_grad():
        return output_tensor(model(input_ids=ids, attention_mask=mask))


def _structure(model) -> list[tuple[str, type, int, int]]:
    """(name, type, #pre-hooks, #hooks) of every module: what patch changes and unpatch restores."""
    return [
        (name, type(m), len(m._forward_pre_hooks), len(m._forward_hooks))
        for name, m in model.named_modules()
    ]


@contextlib.contextmanager
def _patched_for_test(model, **options):
    """patch, and unpatch at the end even when the test fails (other tests need the original
    module-level RoPE functions)."""
    report = fusedops.patch(model, **options)
    try:
        yield report
    finally:
        try:
            fusedops.unpatch(model)
        except ValueError as exc:  # the test unpatched it already
            if "not patched" not in str(exc):
                raise


# -- the report -----------------------------------------------------------------------------


def test_report_lists_replacements_and_prints_a_table():
    model = build("llama")
    with _patched_for_test(model) as report:
        check_report_kinds(report, "llama", "llama")
        assert not report.already_patched
        assert report.counts == {"embedding": 1, "rope": 1, "attention": 1}, report.counts
        by_kind = {e.kind: e for e in report.replaced}
        assert by_kind["embedding"].target == "model.embed_tokens"
        assert isinstance(model.get_submodule("model.embed_tokens"), FusedEmbedding)
        rope_target = "transformers.models.llama.modeling_llama.apply_rotary_pos_emb"
        assert by_kind["rope"].target == rope_target
        assert "module-level" in by_kind["rope"].detail
        assert model.config._attn_implementation == "fusedops"
        assert report.embedding_bytes_saved == 0
        text = str(report)
        lines = text.splitlines()
        assert "llama" in lines[0]
        assert len(lines) >= 3 + len(report.replaced) + len(report.left_alone)
        header = next(line for line in lines if "kind" in line and "target" in line)
        assert header.index("kind") < header.index("target") < header.index("detail")
        for entry in report.replaced + report.left_alone:
            row = next((line for line in lines if entry.target in line), None)
            assert row is not None and entry.kind in row and entry.detail in row, entry
        assert "embedding 1" in text and "rope 1" in text and "attention 1" in text


@pytest.mark.parametrize("case", ["mistral_window", "gpt2_layer_scaled"])
def test_variants_are_handled_or_left_alone_with_a_reason(case):
    """A sliding window / GPT-2's per-layer attention scaling: attention is either patched (and
    then exact: test_patch_parity) or left alone with the reason in the report and table."""
    model = build(case)
    with _patched_for_test(model) as report:
        check_report_kinds(report, case, CASES[case].model_type)
        alone = [e for e in report.left_alone if e.kind == "attention"]
        if alone:
            assert model.config._attn_implementation == "sdpa"
            assert all(e.detail in str(report) for e in alone)
            print(f"\n{case}: attention left alone: {alone[0].detail}")
        else:
            assert model.config._attn_implementation == "fusedops"


def test_disabled_kinds_are_reported_left_alone():
    model = build("qwen2")
    with _patched_for_test(model, rope=False, attention=False) as report:
        assert report.counts == {"embedding": 1, "rope": 0, "attention": 0}
        assert {e.kind for e in report.left_alone} >= {"rope", "attention"}
        assert model.config._attn_implementation == "sdpa"
        assert is_original_rope("qwen2")


def test_second_patch_changes_nothing_and_says_so():
    reference, model = twins("llama_tied")
    want = _run(reference)
    with _patched_for_test(model) as first:
        structure, function = _structure(model), rope_function("llama")
        second = fusedops.patch(model)
        assert second.already_patched and not first.already_patched
        assert "already patched" in str(second)
        assert _structure(model) == structure and rope_function("llama") is function
        assert_parity(_run(model), want, "twice patched")
    # one unpatch undoes everything
    assert is_original_rope("llama") and model.config._attn_implementation == "sdpa"
    assert torch.equal(_run(model), want)


# -- unsupported models ---------------------------------------------------------------------


def test_strict_refuses_an_unsupported_model_type():
    model = build(UNSUPPORTED.name)
    structure = _structure(model)
    with pytest.raises(ValueError, match="'opt'") as info:
        fusedops.patch(model)
    for model_type in hf_patch.SUPPORTED_MODEL_TYPES:
        assert model_type in str(info.value)
    assert set(EXPECTED_KINDS) <= {c.name for c in CASES.values()}
    assert {c.model_type for c in CASES.values()} <= set(hf_patch.SUPPORTED_MODEL_TYPES)
    assert _structure(model) == structure
    with pytest.raises(ValueError, match="not patched"):
        fusedops.unpatch(model)


def test_non_strict_fuses_only_plain_embeddings():
    reference, model = twins(UNSUPPORTED.name)
    for lengths, side in (((5, 9, 7), "left"), ((9, 4), "right")):
        want = _run(reference, lengths, side)
        with _patched_for_test(model, strict=False) as report:
            assert report.counts == {"embedding": 1, "rope": 0, "attention": 0}, report
            (entry,) = report.replaced
            assert entry.target == "model.decoder.embed_tokens"
            assert isinstance(model.get_submodule(entry.target), FusedEmbedding)
            # the offset positional table (an nn.Embedding subclass) stays
            positions = model.get_submodule("model.decoder.embed_positions")
            assert type(positions).__name__ == "OPTLearnedPositionalEmbedding"
            assert {e.kind for e in report.left_alone} >= {"rope", "attention"}
            assert all(e.detail for e in report.left_alone)
            got = _run(model, lengths, side)
        mask = padded_batch(list(lengths), side)[1]
        assert_parity(got * mask.unsqueeze(-1), want * mask.unsqueeze(-1), f"opt {side}")
        assert torch.equal(_run(model, lengths, side), want)


def test_plain_module_strict_and_not():
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 24), torch.nn.Linear(24, 3))
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    weight = model[0].weight
    with torch.no_grad():
        want = model(ids)
    with pytest.raises(ValueError, match="strict=False"):
        fusedops.patch(model)
    with _patched_for_test(model, strict=False) as report:
        assert report.counts["embedding"] == 1 and isinstance(model[0], FusedEmbedding)
        assert model[0].weight is weight
        with torch.no_grad():
            assert_parity(model(ids), want, "plain module")
    assert type(model[0]) is torch.nn.Embedding


def test_wrapper_holding_a_hf_model_is_patched_through_it():
    """A sentence-transformers-like module holding a BertModel."""

    class Wrapper(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, **batch):
            return self.encoder(**batch)

    reference, bert = twins("bert", "base")
    wrapper = Wrapper(bert)
    want = _run(reference, side="right")
    with _patched_for_test(wrapper) as report:
        assert report.counts["embedding"] == 1 and report.counts["attention"] == 1, report
        assert any(e.target.startswith("encoder.") for e in report.replaced), report
        assert_parity(_run(wrapper, side="right"), want, "wrapped bert")
    assert torch.equal(_run(wrapper, side="right"), want)


# -- restoring --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["llama_tied", "gemma", "gpt2", "bert"])
def test_unpatch_restores_bit_identical_outputs(case):
    head = "base" if case == "bert" else "causal_lm"
    model = build(case, head)
    structure, want = _structure(model), _run(model, side="right")
    fusedops.patch(model)
    assert _structure(model) != structure
    _run(model, side="right")
    fusedops.unpatch(model)
    assert _structure(model) == structure
    assert model.config._attn_implementation == "sdpa"
    assert is_original_rope(CASES[case].model_type)
    assert torch.equal(_run(model, side="right"), want)
    with pytest.raises(ValueError, match="not patched"):
        fusedops.unpatch(model)


def test_patched_context_restores_on_exit_and_on_error():
    model = build("qwen3")
    structure, want = _structure(model), _run(model)
    with fusedops.patched(model) as report:
        assert report.counts["rope"] == 1 and not is_original_rope("qwen3")
        assert_parity(_run(model), want, "inside patched()")
    assert _structure(model) == structure and is_original_rope("qwen3")
    with pytest.raises(KeyError), fusedops.patched(model):
        raise KeyError("boom")
    assert _structure(model) == structure and is_original_rope("qwen3")
    assert torch.equal(_run(model), want)


def test_two_models_of_one_family_unpatch_independently():
    ref_a, model_a = twins("llama")
    ref_b, model_b = twins("llama_tied")
    bystander = build("llama", seed=3)  # never patched
    want_a, want_b, want_c = _run(ref_a), _run(ref_b), _run(bystander)
    with _patched_for_test(model_a), _patched_for_test(model_b):
        swapped = rope_function("llama")
        assert swapped is not ORIGINAL_ROPE["llama"]
        # an unpatched model of the family keeps its own computation bit for bit
        assert torch.equal(_run(bystander), want_c)
        fusedops.unpatch(model_a)
        assert rope_function("llama") is swapped, "unpatching one model restored the function"
        assert_parity(_run(model_b), want_b, "second model after the first was unpatched")
        assert torch.equal(_run(model_a), want_a)
        # a model of another family patched meanwhile has its own swap
        with _patched_for_test(build("mistral")):
            assert rope_function("mistral") is not ORIGINAL_ROPE["mistral"]
        assert is_original_rope("mistral") and rope_function("llama") is swapped
    assert is_original_rope("llama")
    assert torch.equal(_run(model_b), want_b)


def test_deepcopy_of_a_patched_model_unpatches_itself_only():
    """A copy (EMA weights, a frozen teacher, ...) is its own patched model: unpatching it
    restores the copy and leaves the original patched."""
    model = build("llama")
    want = _run(model)
    with _patched_for_test(model):
        copied = copy.deepcopy(model)
        assert isinstance(copied.model.embed_tokens, FusedEmbedding)
        assert_parity(_run(copied), want, "deep copy of a patched model")
        fusedops.unpatch(copied)
        assert type(copied.model.embed_tokens) is torch.nn.Embedding, "the copy stayed patched"
        assert copied.config._attn_implementation == "sdpa"
        assert isinstance(model.model.embed_tokens, FusedEmbedding), "the original was unpatched"
        assert model.config._attn_implementation == "fusedops"
        assert torch.equal(_run(copied), want)


def test_gemma_scaled_embedding_rounds_like_gemma_after_dtype_change():
    """Patched in fp32, then cast to bf16: the fused lookup multiplies by the normalizer
    rounded to bf16 (sqrt(64) = 8 is exact; use a hidden size whose sqrt is not)."""
    reference, model = twins("gemma", "base", hidden_size=80, head_dim=16, num_attention_heads=5)
    ids, _ = padded_batch([7, 5], "right")
    with _patched_for_test(model) as report:
        assert report.counts["embedding"] == 1
        for m in (reference, model):
            m.to(torch.bfloat16)
        with torch.no_grad():
            want = reference.get_input_embeddings()(ids)
            got = model.get_input_embeddings()(ids)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want), (got.float() - want.float()).abs().max()


# -- state_dict, tied weights, save / load ----------------------------------------------------


@pytest.mark.parametrize(
    "case,head",
    [
        ("llama", "causal_lm"),
        ("llama_tied", "causal_lm"),
        ("gemma", "seq_cls"),
        ("gpt2", "causal_lm"),
        ("bert", "seq_cls"),
    ],
)
def test_state_dict_and_tied_weights_unchanged(case, head):
    model = build(case, head)
    state = model.state_dict()
    params = dict(model.named_parameters())
    input_weight = model.get_input_embeddings().weight
    output = model.get_output_embeddings() if head == "causal_lm" else None
    tied = output is not None and output.weight is input_weight
    assert tied == bool(model.config.tie_word_embeddings and output is not None)
    with _patched_for_test(model):
        patched_state = model.state_dict()
        assert list(patched_state) == list(state)
        for key, value in state.items():
            got = patched_state[key]
            assert got.data_ptr() == value.data_ptr() and torch.equal(got, value), key
        assert dict(model.named_parameters()).keys() == params.keys()
        assert all(p is params[name] for name, p in model.named_parameters())
        assert model.get_input_embeddings().weight is input_weight
        if tied:
            assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("case,head", [("llama_tied", "causal_lm"), ("bert", "base")])
def test_save_pretrained_round_trip(case, head, tmp_path):
    reference, model = twins(case, head)
    want = _run(reference, side="right")
    with _patched_for_test(model):
        model.save_pretrained(tmp_path)
    config_text = (tmp_path / "config.json").read_text()
    assert "fusedops" not in config_text, "the saved config names the fusedops attention"
    assert json.loads(config_text)["model_type"] == CASES[case].model_type
    loaded = type(reference).from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if head == "causal_lm" and reference.config.tie_word_embeddings:
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(_run(loaded, side="right"), want, atol=0, rtol=0)
    with _patched_for_test(loaded):
        assert_parity(_run(loaded, side="right"), want, "loaded and patched")


# -- INT8 embedding -----------------------------------------------------------------------


def test_int8_embedding_needs_eval_mode():
    model = build("llama").train()
    structure = _structure(model)
    with pytest.raises(ValueError, match=r"eval\(\)"):
        fusedops.patch(model, int8_embedding=True)
    assert _structure(model) == structure and is_original_rope("llama")
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="group_size"):
        fusedops.patch(model.eval(), group_size=32)
    assert _structure(model) == structure


def test_int8_embedding_tied_table_saves_nothing():
    reference, model = twins("llama_tied")
    want = _run(reference)
    lm_weight = model.get_output_embeddings().weight
    with _patched_for_test(model, int8_embedding=True) as report:
        assert report.embedding_bytes_saved == 0
        assert isinstance(model.get_input_embeddings(), Int8Embedding)
        assert model.get_output_embeddings().weight is lm_weight
        int8 = model.get_input_embeddings()
        ids, mask = padded_batch([5, 9, 7], "left")
        with torch.no_grad():
            rows = int8(ids)  # [B, S, H]
            err = (rows - reference.get_input_embeddings()(ids)).abs()
            got = model(input_ids=ids, attention_mask=mask).logits
        # rows within half a quantization step of the float rows (and not equal to them)
        assert bool((err <= int8.scales.float()[ids] * (0.5 + 2**-10)).all()) and err.max() > 0
        # the logits follow (random weights amplify the rounding; the real bound is on MiniLM)
        real = mask.bool()
        cosine = torch.nn.functional.cosine_similarity(got[real], want[real], dim=-1)
        assert cosine.min() >= 0.98, cosine.min()
    assert torch.equal(_run(model), want)


def test_int8_embedding_untied_table_reports_bytes_saved():
    """The untied float table is released: unpatch refuses (one way). RoPE and attention stay
    unpatched here so the module-level RoPE function is not left swapped for other tests."""
    model = build("llama")
    table = model.get_input_embeddings().weight
    fp_bytes = table.numel() * table.element_size()
    report = fusedops.patch(model, int8_embedding=True, rope=False, attention=False)
    int8 = model.get_input_embeddings()
    assert isinstance(int8, Int8Embedding)
    assert report.embedding_bytes_saved == fp_bytes - int8.memory_bytes() > 0
    assert any("saved" in line for line in str(report).splitlines()[-2:]), str(report)
    with pytest.raises(ValueError, match="reload"):
        fusedops.unpatch(model)  # the float table is gone
    assert isinstance(model.get_input_embeddings(), Int8Embedding)


# -- the attention mask, the ops that run ------------------------------------------------------


class _AttentionSpy:
    """Wraps the registered "fusedops" attention and records the masks and key lengths."""

    def __init__(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.registry = ALL_ATTENTION_FUNCTIONS
        self.calls: list[tuple[torch.Tensor | None, int, int]] = []

    def __enter__(self):
        self.inner = self.registry["fusedops"]

        def spy(module, query, key, value, attention_mask, *args, **kwargs):
            self.calls.append((attention_mask, key.shape[0], key.shape[2]))
            return self.inner(module, query, key, value, attention_mask, *args, **kwargs)

        transformers.AttentionInterface.register("fusedops", spy)
        return self

    def __exit__(self, *exc):
        transformers.AttentionInterface.register("fusedops", self.inner)

    def check(self, layers: int) -> list:
        assert self.calls and len(self.calls) % layers == 0, len(self.calls)
        for mask, batch, keys in self.calls:
            if mask is not None:
                assert mask.dtype == torch.bool and mask.dim() == 2, (mask.dtype, mask.shape)
                assert mask.shape[0] == batch and mask.shape[1] <= keys, (mask.shape, keys)
        return [mask for mask, _, _ in self.calls]


def test_attention_gets_a_key_mask_or_none():
    model = build("llama")
    layers = model.config.num_hidden_layers
    ids, mask = padded_batch([4, 9, 6], "left", seed=2)
    with _patched_for_test(model):
        with _AttentionSpy() as spy, torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        masks = spy.check(layers)
        assert all(torch.equal(m, mask.bool()) for m in masks)  # the padding mask itself
        with _AttentionSpy() as spy, torch.no_grad():
            model(input_ids=ids[2:, 3:], attention_mask=mask[2:, 3:])  # no padding
        assert all(m is None or bool(m.all()) for m in spy.check(layers))
        for cache in ("dynamic", "static"):
            kwargs = {"cache_implementation": "static"} if cache == "static" else {}
            with _AttentionSpy() as spy, torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=3,
                    do_sample=False,
                    pad_token_id=PAD_ID,
                    **kwargs,
                )
            masks = spy.check(layers)
            assert len(masks) == 3 * layers
            for m in masks:  # every step keeps the prompt's left padding masked
                assert m is not None and not bool(m[0, :5].any()) and bool(m[0, 5:9].all())


def test_encoder_attention_gets_the_padding_mask():
    model = build("bert", "base")
    ids, mask = padded_batch([4, 9, 6], "right", seed=2)
    with _patched_for_test(model), _AttentionSpy() as spy, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert all(torch.equal(m, mask.bool()) for m in spy.check(model.config.num_hidden_layers))


@pytest.mark.parametrize("case", ["llama", "gemma", "gpt2", "bert"])
def test_profiler_shows_fused_ops(case):
    model = build(case, "base")
    ids, mask = padded_batch([5, 9], "left" if CASES[case].decoder else "right", seed=1)
    with _patched_for_test(model), torch.profiler.profile() as prof, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    names = {event.name for event in prof.events() if event.name.startswith("fusedops::")}
    assert any("embedding" in name for name in names), names
    if CASES[case].model_type in ("llama", "gemma"):
        assert any("rope" in name or "rotary" in name for name in names), names


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["model", None, torch.zeros(3)], ids=["str", "none", "tensor"])
def test_not_a_module_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fusedops.patch(bad)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fusedops.unpatch(bad)


def test_option_of_the_wrong_type_is_a_type_error():
    model = build("llama")
    structure = _structure(model)
    with pytest.raises(TypeError, match="embedding"):
        fusedops.patch(model, embedding="yes")
    assert _structure(model) == structure and is_original_rope("llama")


def test_meta_model_is_refused_at_patch_time():
    config = build("llama").config
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    structure = _structure(model)
    with pytest.raises(RuntimeError, match="meta"):
        fusedops.patch(model)
    assert _structure(model) == structure and is_original_rope("llama")


def test_patched_model_moved_to_meta_fails_clearly_or_runs():
    model = build("llama")
    with _patched_for_test(model):
        model.to("meta")
        ids, mask = padded_batch([5, 9], "left")
        try:
            with torch.no_grad():
                out = model(input_ids=ids.to("meta"), attention_mask=mask.to("meta")).logits
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            assert "meta" in str(exc), f"unclear error: {exc!r}"
        else:
            assert out.device.type == "meta" and out.shape == (2, 9, model.config.vocab_size)
