"""What ``fusedops bench`` sweeps, as data: per op, the shape families of each tier.

Tiers: ``quick`` (a few small shapes per op: a CPU finishes every op in about a minute),
``default`` (realistic sizes, sized for about 10 minutes on one GPU) and ``full`` (the whole
cross product). Each family varies one size (its plots' x axis, see ``OpSpec.axis``) with the
rest fixed; dtypes come from the command line. The named cases of
:mod:`fusedops.benchmarking.cases` (the pytest-benchmark suites and the demo) are built from the
same spec classes, byte and FLOP counts included.

* ``embedding``: fused gather + scale + positional add, ``V x D x tokens`` (GPT-2's learned
  table; with ``full`` also Llama's plain gather); the token-table backward.
* ``int8``: the INT8 lookup, per-row scales, and 128-column groups (large batches of the widest
  D; every shape with ``full``).
* ``factorized``: the low-rank embedding (``a`` [V, r] @ ``b`` [r, D] per token, exact hot
  rows) at GPT-2's V x D over rank, against eager, compile and the dense table's lookup; its
  ``a`` and ``b`` gradients.
* ``rope``: q and k of a 32-head layer at GQA ratios 1, 4 and 32 (prefill over sequence
  length), and decode (one token per sequence, over batch).
* ``attention``: causal prefill over sequence length at ``batch x S = 16k`` tokens and a
  2048-wide layer (``H = 2048 / D``, GQA 4), head dims 64 and 128; forward + backward; sliding
  window.
* ``decode``: one KV-cache decode step over cache length, dense and paged (block 256), Llama-3-8B
  heads (32 / 8, D 128).
* ``model``: whole Hugging Face models patched vs unpatched (SmolLM2-135M, MiniLM, a tiny Llama).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fusedops.benchmarking.attention_cases import DecodeSpec, WindowSpec
from fusedops.benchmarking.cases import AttentionSpec, EmbeddingSpec, Int8Spec, RopeSpec
from fusedops.benchmarking.factorized_cases import FactorizedSpec
from fusedops.benchmarking.harness import OpSpec

Tier = Literal["quick", "default", "full"]
TIERS: tuple[Tier, ...] = ("quick", "default", "full")
OPS: tuple[str, ...] = (
    "embedding",
    "int8",
    "factorized",
    "rope",
    "attention",
    "decode",
    "model",
)
"""Sweep op names accepted by ``--ops``, in run order."""

_MAX_SEQ = 2048  # longest sequence of an embedding batch (GPT-2's learned table has 2048 rows)


def _batch_seq(tokens: int) -> tuple[int, int]:
    """``(batch, seq)`` of ``tokens`` ids: one sequence up to :data:`_MAX_SEQ`, then full
    sequences of that length."""
    if tokens <= _MAX_SEQ:
        return 1, tokens
    return tokens // _MAX_SEQ, _MAX_SEQ


def embedding(tier: Tier) -> list[OpSpec]:
    """GPT-2-style learned positions (scale sqrt(D)); a Llama-style plain gather (``full``)."""
    if tier == "quick":
        vocabs, dims, tokens, bwd = (50257,), (768,), (1, 128, 8192), (8192,)
    elif tier == "default":
        vocabs, dims, tokens, bwd = (50257, 128256), (768, 4096), (1, 128, 8192, 32768), (8192,)
    else:
        vocabs, dims = (32000, 50257, 128256), (768, 2048, 4096)
        tokens, bwd = (1, 128, 8192, 32768), (8192, 32768)
    specs: list[OpSpec] = []
    for vocab in vocabs:
        for dim in dims:
            for n in tokens:
                batch, seq = _batch_seq(n)
                common = {"batch": batch, "seq": seq, "dim": dim, "vocab": vocab}
                specs.append(EmbeddingSpec("learned", **common))
                if tier == "full":
                    specs.append(EmbeddingSpec("no-pos", **common, pos="none", scale=1.0))
    for n in bwd:
        batch, seq = _batch_seq(n)
        specs.append(EmbeddingSpec("learned-bwd", batch, seq, 768, 50257, backward=True))
    return specs


def int8(tier: Tier) -> list[OpSpec]:
    """Per-row scales over V x D x tokens; 128-column groups at the widest D."""
    if tier == "quick":
        vocabs, dims, tokens = (50257,), (768,), (128, 8192)
    elif tier == "default":
        vocabs, dims, tokens = (50257, 128256), (768, 4096), (1, 128, 8192, 32768)
    else:
        vocabs, dims, tokens = (32000, 50257, 128256), (768, 2048, 4096), (1, 128, 8192, 32768)
    specs: list[OpSpec] = []
    for vocab in vocabs:
        for dim in dims:
            for n in tokens:
                batch, seq = _batch_seq(n)
                specs.append(Int8Spec("per-row", batch, seq, dim, vocab))
                if tier == "full" or (tier == "default" and dim == max(dims) and n >= 8192):
                    specs.append(Int8Spec("group128", batch, seq, dim, vocab, group_size=128))
    return specs


def factorized(tier: Tier) -> list[OpSpec]:
    """V=50257, D=768 (GPT-2) over rank 64 / 128 / 256, without and with 1024 exact hot rows;
    the ``a`` and ``b`` gradients at 8192 tokens."""
    ranks = (64, 128, 256)
    if tier == "quick":
        tokens, hots, bwd_ranks = (8192,), (0,), (128,)
    elif tier == "default":
        tokens, hots, bwd_ranks = (128, 8192, 32768), (0, 1024), ranks
    else:
        tokens, hots, bwd_ranks = (1, 128, 8192, 32768), (0, 1024), ranks
    specs: list[OpSpec] = []
    for n in tokens:
        batch, seq = _batch_seq(n)
        for hot in hots:
            for rank in ranks:
                specs.append(FactorizedSpec(f"n{n}", batch, seq, 768, 50257, rank, hot=hot))
    batch, seq = _batch_seq(8192)
    for rank in bwd_ranks:
        specs.append(FactorizedSpec("bwd", batch, seq, 768, 50257, rank, backward=True))
    return specs


def rope(tier: Tier) -> list[OpSpec]:
    """Prefill over S at GQA ratios, and decode (S = 1 at position 4095) over batch."""
    if tier == "quick":
        kv_heads, seqs, batches = (8,), (128, 1024), (1, 8)
    elif tier == "default":
        kv_heads, seqs, batches = (32, 8, 1), (128, 1024, 4096, 16384), (1, 8, 64, 256)
    else:
        kv_heads, seqs = (32, 8, 4, 1), (128, 512, 1024, 2048, 4096, 8192, 16384, 32768)
        batches = (1, 8, 32, 64, 256)
    specs: list[OpSpec] = []
    for heads_k in kv_heads:
        for seq in seqs:
            specs.append(RopeSpec(f"prefill-gqa{32 // heads_k}", 1, 32, heads_k, seq, 128))
    for batch in batches:
        specs.append(RopeSpec("decode", batch, 32, 8, 1, 128, position_offset=4095))
    return specs


def attention(tier: Tier) -> list[OpSpec]:
    """Causal prefill at ``batch x S`` = 16k tokens (CPU quick: one sequence), head dims 64 and
    128 of a 2048-wide layer with GQA 4; forward + backward; sliding window 4096."""
    if tier == "quick":
        specs: list[OpSpec] = [
            AttentionSpec("prefill", 1, 8, 2, s, s, 64) for s in (256, 512, 1024)
        ]
        specs += [
            AttentionSpec("prefill-fwd-bwd", 1, 8, 2, s, s, 64, backward=True) for s in (256, 512)
        ]
        specs += [WindowSpec("window", 1, 8, s, 64, window=512) for s in (1024, 2048)]
        return specs
    if tier == "default":
        seqs, dims, bwd_seqs = (512, 1024, 2048, 4096, 8192, 16384), (64, 128), (1024, 4096)
        window_seqs = (8192, 16384)
    else:
        seqs, dims = (512, 1024, 2048, 4096, 8192, 16384, 32768), (64, 128, 256)
        bwd_seqs, window_seqs = (512, 1024, 2048, 4096, 8192, 16384), (4096, 8192, 16384, 32768)
    specs = []
    for dim in dims:
        heads = 2048 // dim
        for seq in seqs:
            batch = max(1, 16384 // seq)
            specs.append(AttentionSpec("prefill", batch, heads, heads // 4, seq, seq, dim))
        for seq in bwd_seqs:
            batch = max(1, 16384 // seq)
            specs.append(
                AttentionSpec("prefill-fwd-bwd", batch, heads, heads // 4, seq, seq, dim,
                              backward=True)
            )  # fmt: skip
    for seq in window_seqs:
        specs.append(WindowSpec("window", 1, 16, seq, 128, window=4096))
    return specs


def decode(tier: Tier) -> list[OpSpec]:
    """One decode step over cache length, dense and paged (block 256)."""
    if tier == "quick":
        return [DecodeSpec("dense", 1, sk) for sk in (1024, 4096)] + [
            DecodeSpec("paged", 1, 4096, block_size=256)
        ]
    if tier == "default":
        lengths, batches = (1024, 4096, 16384, 65536, 131072), (1, 8)
    else:
        lengths, batches = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072), (1, 8, 32)
    specs: list[OpSpec] = []
    for batch in batches:
        for sk in lengths:
            specs.append(DecodeSpec(f"dense-b{batch}", batch, sk, heads_q=32, heads_kv=8))
            specs.append(
                DecodeSpec(f"paged-b{batch}", batch, sk, heads_q=32, heads_kv=8, block_size=256)
            )
    return specs


def model(tier: Tier) -> list[OpSpec]:
    """Patched vs unpatched whole models: a tiny random Llama (quick), SmolLM2-135M prefill
    and decode and an all-MiniLM-L6-v2 batch (default and full)."""
    from fusedops.benchmarking.models import DECODE_TOKENS, ModelSpec

    specs: list[OpSpec] = [ModelSpec("tiny-llama-prefill", "tiny-llama", "prefill", 128)]
    if tier == "quick":
        return specs
    prefill = (128, 512, 2048) if tier == "default" else (128, 512, 1024, 2048, 4096)
    specs += [ModelSpec("smollm2-prefill", "smollm2", "prefill", n) for n in prefill]
    specs.append(ModelSpec("smollm2-decode", "smollm2", "decode", DECODE_TOKENS))
    specs.append(ModelSpec("minilm-batch", "minilm", "encode"))
    return specs


SWEEPS: dict[str, Callable[[Tier], list[OpSpec]]] = {
    "embedding": embedding,
    "int8": int8,
    "factorized": factorized,
    "rope": rope,
    "attention": attention,
    "decode": decode,
    "model": model,
}
"""Sweep op name -> its specs for a tier."""


def sweep_specs(op: str, tier: Tier) -> list[OpSpec]:
    """The specs of ``op`` for ``tier``; ``ValueError`` for an unknown op or tier."""
    if op not in SWEEPS:
        raise ValueError(f"sweep: unknown op {op!r}; expected one of {', '.join(SWEEPS)}")
    if tier not in TIERS:
        raise ValueError(f"sweep: unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
    return SWEEPS[op](tier)
