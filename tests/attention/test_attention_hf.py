"""attention_hf: the Hugging Face attention-interface function (mask conversion, refusals) and a
tiny Llama run through ``AttentionInterface`` against transformers' SDPA attention."""

from __future__ import annotations

import pytest
import torch

import fusedops
from fusedops import reference
from fusedops.nn.attention import _hf_mask_to_padding


class _Layer(torch.nn.Module):
    is_causal = True


def _qkv(batch=2, hq=4, hkv=2, sq=6, sk=6, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, hq, sq, dim, generator=gen),
        torch.randn(batch, hkv, sk, dim, generator=gen),
        torch.randn(batch, hkv, sk, dim, generator=gen),
    )


def _padding(batch, sk, left):
    pad = torch.ones(batch, sk, dtype=torch.bool)
    if left:
        pad[1, :2] = False
    else:
        pad[1, -2:] = False
    return pad


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("sq,sk", [(6, 6), (1, 6), (3, 6)])
def test_causal_padding_mask(sq, sk, left):
    q, k, v = _qkv(sq=sq, sk=sk)
    pad = _padding(2, sk, left)
    mask = reference.attention_mask(sq, sk, causal=True, key_padding_mask=pad)
    out, weights = fusedops.attention_hf(_Layer(), q, k, v, mask, scaling=0.3)
    assert weights is None and out.shape == (2, sq, 4, 16) and out.is_contiguous()
    want = reference.attention(q, k, v, causal=True, key_padding_mask=pad, softmax_scale=0.3)
    torch.testing.assert_close(out, want.transpose(1, 2))
    got_pad, causal = _hf_mask_to_padding(mask, 2, sq, sk)
    assert causal and torch.equal(got_pad, pad)


def test_unmasked_empty_rows_and_longer_mask():
    """HF's SDPA path may set rows with no allowed key to all True; a mask wider than the keys
    (static cache) is cut to Sk."""
    sq = sk = 5
    pad = _padding(2, sk, left=True)
    mask = reference.attention_mask(sq, sk, causal=True, key_padding_mask=pad).clone()
    mask = mask.expand(2, 1, sq, sk).clone()
    mask[1, 0, :2] = True  # left-padded queries: unmasked
    wide = torch.cat((mask, torch.zeros(2, 1, sq, 3, dtype=torch.bool)), dim=-1)
    got_pad, causal = _hf_mask_to_padding(wide, 2, sq, sk)
    assert causal and torch.equal(got_pad, pad)


def test_padding_only_and_none():
    q, k, v = _qkv()
    pad = _padding(2, 6, left=False)
    mask = pad.view(2, 1, 1, 6).expand(2, 1, 6, 6)
    out, _ = fusedops.attention_hf(_Layer(), q, k, v, mask)
    want = reference.attention(q, k, v, causal=False, key_padding_mask=pad)
    torch.testing.assert_close(out, want.transpose(1, 2))
    layer = _Layer()
    layer.is_causal = False
    out, _ = fusedops.attention_hf(layer, q, k, v, None)
    torch.testing.assert_close(out, reference.attention(q, k, v, causal=False).transpose(1, 2))
    out, _ = fusedops.attention_hf(layer, q, k, v, None, is_causal=True)
    torch.testing.assert_close(out, reference.attention(q, k, v).transpose(1, 2))


def test_refusals():
    q, k, v = _qkv()
    causal = reference.attention_mask(6, 6, causal=True, key_padding_mask=None)
    window = causal & ~torch.ones(6, 6, dtype=torch.bool).tril(-3)
    with pytest.raises(ValueError, match="attention_hf: unsupported attention_mask"):
        fusedops.attention_hf(_Layer(), q, k, v, window)
    with pytest.raises(ValueError, match="attention_hf: attention_mask must be a boolean"):
        fusedops.attention_hf(_Layer(), q, k, v, torch.zeros(2, 1, 6, 6))
    with pytest.raises(ValueError, match="attention_hf: attention_mask must be a 4-D"):
        fusedops.attention_hf(_Layer(), q, k, v, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_hf: attention_mask must be a 4-D"):
        fusedops.attention_hf(_Layer(), q, k, v, torch.ones(2, 4, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_hf: attention dropout"):
        fusedops.attention_hf(_Layer(), q, k, v, None, dropout=0.1)
    with pytest.raises(ValueError, match="attention_hf: sliding_window must be >= 1, got 0"):
        fusedops.attention_hf(_Layer(), q, k, v, None, sliding_window=0)
    with pytest.raises(ValueError, match="attention_hf: softcap must be a finite number > 0"):
        fusedops.attention_hf(_Layer(), q, k, v, None, softcap=-1.0)
    with pytest.raises(ValueError, match="attention_hf: head dim D=8"):
        fusedops.attention_hf(_Layer(), *_qkv(dim=8), None)


def _tiny_llama(kv_heads: int, seed: int):
    """A 2-layer Llama with random weights, and "fusedops" registered as an attention
    implementation (with HF's SDPA mask function: without one HF passes attention_mask=None)."""
    pytest.importorskip("transformers")
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

    masking = pytest.importorskip("transformers.masking_utils")
    AttentionInterface.register("fusedops", fusedops.attention_hf)
    masking.AttentionMaskInterface.register("fusedops", masking.sdpa_mask)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def test_tiny_llama_through_attention_interface():
    model = _tiny_llama(kv_heads=2, seed=0)
    ids = torch.randint(0, 64, (2, 9))
    attn = torch.ones(2, 9, dtype=torch.long)
    attn[1, :3] = 0  # left padding
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        want = model(input_ids=ids, attention_mask=attn).logits
        model.set_attn_implementation("fusedops")
        got = model(input_ids=ids, attention_mask=attn).logits
    # Padded query positions are garbage in both; compare the real tokens.
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 3:], want[1, 3:], atol=1e-4, rtol=1e-4)


def test_tiny_llama_generate_with_kv_cache():
    """Prefill then decode steps (Sq = 1 over the cache, HF's [B, 1, 1, Sk] masks) with left
    padding: the same greedy tokens and close logits as transformers' SDPA attention."""
    model = _tiny_llama(kv_heads=1, seed=1)
    ids = torch.randint(1, 64, (2, 7))
    attn = torch.ones(2, 7, dtype=torch.long)
    attn[0, :2] = 0  # left padding
    results = {}
    for impl in ("sdpa", "fusedops"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            results[impl] = model.generate(
                input_ids=ids,
                attention_mask=attn,
                max_new_tokens=6,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
    assert torch.equal(results["fusedops"].sequences, results["sdpa"].sequences)
    for got, want in zip(results["fusedops"].logits, results["sdpa"].logits, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_torch_compile_dynamic_4d_masks():
    """attention_hf with HF's 4-D masks under torch.compile(dynamic=True, fullgraph=True) at two
    sizes: causal + padding (a decoder layer) and padding only (an encoder layer). The mask's
    form is checked inside a custom op at run time (a mismatch still raises ValueError); the
    layer's is_causal picks the form."""
    torch._dynamo.reset()
    encoder = _Layer()
    encoder.is_causal = False

    def fn(q, k, v, causal_mask, padding_mask):
        out = fusedops.attention_hf(_Layer(), q, k, v, causal_mask)[0]
        return out + fusedops.attention_hf(encoder, q, k, v, padding_mask)[0]

    compiled = torch.compile(fn, backend="aot_eager", dynamic=True, fullgraph=True)
    for seed, (sq, sk) in enumerate(((6, 6), (7, 7))):
        q, k, v = _qkv(sq=sq, sk=sk, seed=seed)
        pad = _padding(2, sk, left=bool(seed))
        causal = reference.attention_mask(sq, sk, causal=True, key_padding_mask=pad)
        padding = pad.view(2, 1, 1, sk).expand(2, 1, sq, sk)
        want = reference.attention(q, k, v, key_padding_mask=pad)
        want = want + reference.attention(q, k, v, causal=False, key_padding_mask=pad)
        torch.testing.assert_close(compiled(q, k, v, causal, padding), want.transpose(1, 2))
    with pytest.raises(ValueError, match="attention_hf: unsupported attention_mask"):
        compiled(q, k, v, padding, padding)  # a padding-only mask for the causal layer
