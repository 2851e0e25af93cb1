"""The routes of the patched "fusedops" attention beyond the padded prefill: static-cache decode
steps run fusedops.attention_with_kvcache over the cache's filled slots, packed sequences (HF's
restarting position_ids, or flash-attention's cu_seq_lens kwargs) run fusedops.attention_varlen,
sliding-window and softcapped layers pass their window and cap; the report says which; masks
the fused ops cannot express are refused by name."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import assert_close
from patch_checks import assert_parity, greedy_generate
from tiny_models import VOCAB, build, padded_batch, twins

import fusedops
from fusedops.integrations import hf_attention
from fusedops.integrations.hf_masks import CacheLengths, PackedSequences, key_mask

transformers = pytest.importorskip("transformers")
masking = pytest.importorskip("transformers.masking_utils")


@contextlib.contextmanager
def _counting(*names: str):
    """Count the calls of the ops ``hf_attention`` runs (by their names there)."""
    counts = dict.fromkeys(names, 0)
    originals = {name: getattr(hf_attention, name) for name in names}

    def counted(name):
        def call(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)

        return call

    try:
        for name in names:
            setattr(hf_attention, name, counted(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(hf_attention, name, original)


# -- static-cache decode: attention_with_kvcache ----------------------------------------------


@pytest.mark.parametrize("case", ["llama", "qwen2_window"])
def test_static_decode_runs_attention_with_kvcache(case):
    """Unpadded prompts longer than the window, 10 greedy tokens with HF's StaticCache: the full
    layers' decode steps run attention_with_kvcache on the cache tensors (the window layers keep
    a rolling window cache of their own and run fusedops.attention); same tokens and logits."""
    reference, candidate = twins(case)
    ids, mask = padded_batch([7, 7], "left", seed=3)  # no padding
    want = greedy_generate(reference, ids, mask, new_tokens=10, cache="static")
    with fusedops.patched(candidate), _counting("attention_with_kvcache", "attention") as n:
        got = greedy_generate(candidate, ids, mask, new_tokens=10, cache="static")
    full_layers = 1 if case == "qwen2_window" else 2
    assert n["attention_with_kvcache"] == 9 * full_layers, n  # every step after the prefill
    assert n["attention"] == 2 + 9 * (2 - full_layers), n
    assert torch.equal(got[0], want[0]), f"{case}: greedy tokens differ"
    assert_parity(got[1], want[1], f"{case} static decode logits")


def test_static_decode_mask_describes_the_filled_slots():
    """The mask function hands a static decode step CacheLengths (keys visible, on device) when
    nothing is padded, and the [B, S_max] key mask when the prompt is padded."""
    model = build("llama")
    seen = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((attention_mask, key.shape[2]))
        return hf_attention.attention_forward(module, query, key, value, attention_mask, **kwargs)

    for lengths, padded in (([6, 6], False), ([4, 6], True)):
        ids, mask = padded_batch(lengths, "left", seed=1)
        seen.clear()
        with fusedops.patched(model):
            transformers.AttentionInterface.register("fusedops", spy)
            try:
                greedy_generate(model, ids, mask, new_tokens=3, cache="static")
            finally:
                hf_attention.register()
        decode = seen[2:]  # 2 layers x (prefill, 2 steps)
        assert len(decode) == 4
        for step, (m, width) in enumerate(decode):
            if padded:
                assert m.dtype == torch.bool and m.shape == (2, width)
                assert not bool(m[0, :2].any()) and bool(m[0, 2 : 7 + step // 2].all())
            else:
                assert isinstance(m, CacheLengths) and m.seqlens.dtype == torch.int32
                assert m.seqlens.tolist() == [7 + step // 2] * 2


def test_static_decode_step_with_grad_matches():
    """attention_with_kvcache is inference only: a static-cache decode step with gradients on
    runs fusedops.attention over the filled slots instead, and still matches."""
    reference, candidate = twins("llama")
    ids, _ = padded_batch([6, 6], "left", seed=6)
    results = []
    for model in (reference, candidate):
        with contextlib.ExitStack() as stack:
            if model is candidate:
                stack.enter_context(fusedops.patched(model))
                n = stack.enter_context(_counting("attention_with_kvcache", "attention"))
            cache = transformers.StaticCache(config=model.config, max_cache_len=10)
            with torch.no_grad():
                model(input_ids=ids, past_key_values=cache, use_cache=True)
            step = ids[:, -1:]
            logits = model(
                input_ids=step, past_key_values=cache, position_ids=torch.full((2, 1), 6)
            )
            results.append(logits.logits)
    assert n == {"attention_with_kvcache": 0, "attention": 4}, n
    assert results[1].requires_grad
    assert_parity(results[1].detach(), results[0].detach(), "static decode step with grad")


# -- packed sequences: attention_varlen ---------------------------------------------------------


def _packed_rows(rows: list[list[int]], seed: int = 0):
    """Token rows each packing sequences of the given lengths back to back: (ids [B, S],
    position_ids [B, S] restarting at 0 per sequence, the sequences' (row, start, ids))."""
    gen = torch.Generator().manual_seed(seed)
    width = sum(rows[0])
    ids = torch.empty(len(rows), width, dtype=torch.long)
    positions = torch.empty_like(ids)
    pieces = []
    for r, lengths in enumerate(rows):
        assert sum(lengths) == width
        start = 0
        for length in lengths:
            seq = torch.randint(3, VOCAB, (length,), generator=gen)
            ids[r, start : start + length] = seq
            positions[r, start : start + length] = torch.arange(length)
            pieces.append((r, start, seq))
            start += length
    return ids, positions, pieces


@pytest.mark.parametrize("case", ["qwen2_window", "gemma2"])
def test_packed_rows_match_separate_sequences(case):
    """Two rows packing 3 + 2 sequences (position_ids restarting, no mask, no cache): each
    sequence's logits equal those of running it alone, and HF's own packed-mask path."""
    reference, candidate = twins(case)
    ids, positions, pieces = _packed_rows([[5, 7, 4], [9, 7]], seed=2)
    with torch.no_grad():
        want_packed = reference(input_ids=ids, position_ids=positions, use_cache=False).logits
        alone = [reference(input_ids=seq[None], use_cache=False).logits[0] for _, _, seq in pieces]
        with fusedops.patched(candidate), _counting("attention_varlen") as n:
            got = candidate(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert n["attention_varlen"] == 2, n  # one call per layer for the whole batch
    assert_parity(got, want_packed, f"{case} packed vs HF's packed mask")
    for (row, start, seq), want in zip(pieces, alone, strict=True):
        assert_parity(got[row, start : start + len(seq)], want, f"{case} packed sequence")


def test_packed_training_gradients_match():
    """Training on packed rows (the varlen backward, window layers included): the loss and
    every parameter gradient match the unpatched model on HF's packed mask."""
    reference, candidate = twins("qwen2_window")
    ids, positions, _ = _packed_rows([[5, 7, 4], [9, 7]], seed=5)

    def loss_and_grads(model):
        model.train()
        loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss
        loss.backward()
        model.eval()
        return loss.detach(), {name: p.grad for name, p in model.named_parameters()}

    want_loss, want = loss_and_grads(reference)
    with fusedops.patched(candidate), _counting("attention_varlen") as n:
        got_loss, got = loss_and_grads(candidate)
    assert n["attention_varlen"] == 2, n
    assert_close(got_loss, want_loss, msg="packed loss")
    for name, grad in got.items():
        scale = want[name].abs().max().item()
        assert_close(grad, want[name], atol_extra=1e-5 * scale, msg=f"packed {name}")


def test_flash_attention_varlen_kwargs():
    """flash-attention's cu_seq_lens_q/k + max_length_q/k kwargs (a flattening collator's
    output) run attention_varlen; with use_cache the mask function sees no packing itself."""
    reference, candidate = twins("mistral_window")
    ids, positions, pieces = _packed_rows([[6, 3, 8]], seed=4)
    cu = torch.tensor([0, 6, 9, 17], dtype=torch.int32)
    flash = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 8, "max_length_k": 8}
    with torch.no_grad():
        alone = [reference(input_ids=seq[None]).logits[0] for _, _, seq in pieces]
        with fusedops.patched(candidate), _counting("attention_varlen") as n:
            got = candidate(input_ids=ids, position_ids=positions, **flash).logits[0]
    assert n["attention_varlen"] == 2, n
    for (_, start, seq), want in zip(pieces, alone, strict=True):
        assert_parity(got[start : start + len(seq)], want, "flash kwargs packed sequence")
    layer = candidate.model.layers[0].self_attn
    q = torch.randn(1, 4, 17, 16)
    with pytest.raises(ValueError, match="missing"):
        hf_attention.attention_forward(layer, q, q[:, :2], q[:, :2], None, cu_seq_lens_q=cu)
    with pytest.raises(ValueError, match="attention_varlen: cu_seqlens_q"):  # checked
        bad = torch.tensor([0, 6, 5, 17], dtype=torch.int32)
        bad_flash = {**flash, "cu_seq_lens_q": bad}
        hf_attention.attention_forward(layer, q, q[:, :2], q[:, :2], None, **bad_flash)
    with pytest.raises(ValueError, match="padding mask"):
        pad = torch.ones(1, 17, dtype=torch.bool)
        hf_attention.attention_forward(layer, q, q[:, :2], q[:, :2], pad, **flash)


# -- the report and the mask patterns -----------------------------------------------------------


@pytest.mark.parametrize(
    "case,words",
    [
        ("mistral_window", "sliding window 4 on every layer"),
        ("qwen2_window", "sliding window 4 on 1 of 2 layers"),
        ("gemma2", "sliding window 4 on 1 of 2 layers, softcap 2"),
    ],
)
def test_report_names_windows_and_softcap(case, words):
    model = build(case, "base")
    with fusedops.patched(model) as report:
        entry = next(e for e in report.replaced if e.kind == "attention")
        assert model.config._attn_implementation == "fusedops"
        assert words in entry.detail and words in str(report), entry


def test_key_mask_patterns():
    """Each pattern HF composes maps to what the layers need; others raise by name."""
    window = masking.sliding_window_causal_mask_function(3)
    assert key_mask(2, 5, 5, mask_function=window, local_size=3) is None
    pad = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    step = {"q_offset": 4, "kv_offset": 2, "mask_function": window}
    got = key_mask(2, 1, 3, attention_mask=pad, **step)
    assert torch.equal(got, pad[:, 2:])  # a window cache's columns: the last ones
    # generate builds a static cache's masks ahead and the model hands them back: unchanged
    assert torch.equal(key_mask(2, 1, 3, attention_mask=got, **step), got)
    ids = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    positions = torch.tensor([[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    packed = masking.packed_sequence_compatibility_function(window, positions, ids)
    got = key_mask(2, 5, 5, mask_function=packed, local_size=3)
    assert isinstance(got, PackedSequences) and got.max_seqlen == 5
    assert got.cu_seqlens.tolist() == [0, 2, 5, 10] and got.cu_seqlens.dtype == torch.int32
    assert key_mask(2, 5, 5, mask_function=packed, attention_mask=got) is got
    chunked = masking.chunked_causal_mask_function(4, torch.zeros(2, dtype=torch.long))
    overlay = masking.and_masks(masking.causal_mask_function, lambda b, h, q, k: k >= 0)
    bidirectional_window = masking.sliding_window_bidirectional_mask_function(3)
    for bad in (chunked, overlay, bidirectional_window):
        with pytest.raises(ValueError, match="fusedops attention: unsupported mask"):
            key_mask(2, 5, 5, mask_function=bad)
    with pytest.raises(ValueError, match="unsupported mask"):
        key_mask(2, 5, 5, mask_function=window, local_size=4)  # window and pattern disagree
