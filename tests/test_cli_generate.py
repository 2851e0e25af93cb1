"""``fusedops generate`` on a tiny random Llama saved with a word-level tokenizer and a chat
template: patched and unpatched runs print the same greedy text, the speed line and (patched)
the patch report; bad arguments and folders exit with status 2 and a message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import torch  # noqa: E402

from fusedops import cli  # noqa: E402
from fusedops.integrations import hf_attention  # noqa: E402

WORDS = ["<unk>", "<s>", "</s>", "user", "assistant"] + [f"w{i}" for i in range(59)]
PROMPT = "w3 w14 w15 w9 w26"
SPEED = re.compile(
    r"^(patched|unpatched \(--no-patch\)), float32 on cpu, (?:dynamic|static) cache: "
    r"prompt (\d+) tokens, "
    r"prefill [\d.]+ ms; (\d+) new tokens, decode [\d.]+ tokens/s$",
    re.M,
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama (head dim 16, GQA 4/2) and its tokenizer, saved to a folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {word: i for i, word in enumerate(WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant {% endif %}"
    )
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=None,  # always the full number of new tokens
        pad_token_id=2,
        initializer_range=0.5,  # varied greedy tokens
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["generate", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_patched_matches_unpatched(tiny_llama, capsys, monkeypatch, cache):
    args = ["--model", str(tiny_llama), "--prompt", PROMPT, "--max-new-tokens", "12"]
    args += ["--cache", cache]
    kvcache, calls = hf_attention.attention_with_kvcache, []
    monkeypatch.setattr(
        hf_attention,
        "attention_with_kvcache",
        lambda *a, **kw: calls.append(1) or kvcache(*a, **kw),
    )
    rc, patched, _ = _generate(capsys, *args)
    assert rc == 0
    # patched static-cache decode steps (11 steps x 2 layers) run attention_with_kvcache
    assert len(calls) == (22 if cache == "static" else 0)
    rc, unpatched, _ = _generate(capsys, *args, "--no-patch")
    assert rc == 0
    text_p, text_u = patched.split("\n\n")[0], unpatched.split("\n\n")[0]
    assert text_p == text_u
    assert len(text_p.split()) >= 6  # generated words, not an empty answer
    (state_p, prompt_p, new_p), (state_u, prompt_u, new_u) = (
        SPEED.search(patched).groups(),
        SPEED.search(unpatched).groups(),
    )
    assert (state_p, state_u) == ("patched", "unpatched (--no-patch)")
    # The chat template wrapped the 5 prompt words: "<s> user ... </s> <s> assistant".
    assert prompt_p == prompt_u == "10"
    assert new_p == new_u == "12"
    assert "fusedops.patch: llama" in patched and "replaced: embedding 1, rope 1" in patched
    assert "fusedops.patch" not in unpatched


def test_generate_int8_embedding_reports_the_int8_table(tiny_llama, capsys):
    rc, out, _ = _generate(
        capsys, "--model", str(tiny_llama), "--prompt", PROMPT, "--max-new-tokens", "4",
        "--int8-embedding",
    )  # fmt: skip
    assert rc == 0
    assert SPEED.search(out).group(3) == "4"
    assert "int8" in out.split("fusedops.patch: llama")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-patch", "--int8-embedding"], "--int8-embedding needs patching"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ],
)
def test_generate_rejects_bad_options(tiny_llama, capsys, args, message):
    rc, out, err = _generate(capsys, "--model", str(tiny_llama), "--prompt", "w1", *args)
    assert rc == 2 and message in err and out == ""


def test_generate_bad_model_folders(tmp_path, tiny_llama, capsys):
    rc, _, err = _generate(capsys, "--model", str(tmp_path / "missing"), "--prompt", "w1")
    assert rc == 2 and "not a folder" in err and "smollm2" in err
    rc, _, err = _generate(capsys, "--model", str(tmp_path), "--prompt", "w1")
    assert rc == 2 and "has no config.json" in err
    no_tokenizer = tmp_path / "weights-only"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_llama / name).read_bytes())
    rc, _, err = _generate(capsys, "--model", str(no_tokenizer), "--prompt", "w1")
    assert rc == 2 and "has no tokenizer" in err
