"""How much a low-rank input embedding costs in model quality: a study on two real models.

``python -m fusedops.benchmarking.factorized_quality --out DIR`` replaces the input embedding
of two offline models by :class:`fusedops.nn.FactorizedEmbedding` at several ranks, with and
without the most frequent tokens kept exact, and compares each factorized model with the
unfactorized one:

* all-MiniLM-L6-v2 (BERT, V=30522, D=384): only the word table is factorized (the position and
  token-type tables and the LayerNorm after the sum stay); quality = cosine of the mean-pooled,
  L2-normalized sentence embeddings to the unfactorized model's;
* SmolLM2-135M-Instruct (Llama, V=49152, D=576): the input embedding is factorized; it is tied
  to ``lm_head``, which keeps the dense table; quality = top-1 next-token agreement with the
  unfactorized model at every position of a fixed prompt set (teacher-forced).

The text comes from :func:`fusedops.factorization.sample_text`: its paragraphs alternate between
a *counted* half (token frequencies, hence the hot tokens) and a *held-out* half; the evaluation
sentences / prompts are drawn half from each, so the hot set is never chosen on all of the text
it is judged on. Writes ``factorized-quality.md`` into ``DIR`` (``--json``: every number in
``factorized-quality.json`` too).

The sweep itself (:func:`encoder_sweep`, :func:`causal_sweep`) works on any Hugging Face model
with ``get_input_embeddings``/``set_input_embeddings`` and takes token ids, so tests run it on
tiny random models.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusedops.factorization import (
    check_hot_ids,
    factors_from_basis,
    most_frequent,
    reconstruction_error,
    right_singular_vectors,
    sample_text,
    token_frequencies,
)
from fusedops.nn.factorized_embedding import FactorizedEmbedding

RANKS = (16, 32, 64, 128, 192, 256, 384, 512)  # those >= D give way to one full-rank row
NUM_HOT = 1024
SENTENCES_PER_HALF = 32  # MiniLM: 64 sentences
PROMPTS_PER_HALF = 16  # SmolLM2: 32 prompts of two sentences each
MB = 1e6
# The quality bars of the report's summary lines, per metric.
BARS = {"cosine": (0.95, 0.99), "top-1 agreement": (0.5, 0.9)}

# ----------------------------------------------------------------------------------------------
# Text: the counted and held-out halves of the sample
# ----------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


@dataclass(frozen=True)
class TextSplit:
    """The sample text's paragraphs, alternating: even ones ``counted``, odd ones ``held_out``."""

    counted: tuple[str, ...]
    held_out: tuple[str, ...]


def split_text(text: str) -> TextSplit:
    """Paragraphs (blank-line separated) of ``text``, alternately counted / held out."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    return TextSplit(tuple(paragraphs[0::2]), tuple(paragraphs[1::2]))


def sentences(paragraphs: Sequence[str]) -> list[str]:
    """The sentences of ``paragraphs``, split after ``.``/``!``/``?`` before a capital."""
    return [s for p in paragraphs for s in _SENTENCE_END.split(p) if s]


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced through ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def prompts(paragraphs: Sequence[str], n: int) -> list[str]:
    """``n`` prompts of two consecutive sentences, evenly spread through ``paragraphs``."""
    pairs = []
    for p in paragraphs:
        sents = _SENTENCE_END.split(p)
        pairs += [" ".join(sents[i : i + 2]) for i in range(0, len(sents) - 1, 2)]
    return spread(pairs, n)


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------


@dataclass
class Quality:
    """A quality number over all evaluation items and its parts.

    ``value``: the headline (mean cosine / top-1 agreement over all items); ``worst``: the
    smallest per-item value (min cosine / worst prompt's agreement); ``counted`` and
    ``held_out``: the headline over the items from each half of the text (None when the
    caller gave no split)."""

    value: float
    worst: float
    counted: float | None = None
    held_out: float | None = None


@dataclass
class Variant:
    """One factorized model: its storage, table errors and quality."""

    rank: int
    num_hot: int
    memory_bytes: int  # FactorizedEmbedding.memory_bytes(): a, b, hot_rows, hot_ids
    dense_bytes: int  # the dense [V, D] table
    relative_error: float  # ||W - W_hat||_F / ||W||_F
    weighted_error: float | None  # frequency-weighted (held-out counts), see ReconstructionError
    quality: Quality

    @property
    def percent_of_dense(self) -> float:
        return 100.0 * self.memory_bytes / self.dense_bytes


@dataclass
class ModelStudy:
    """A model's sweep: the variants by (rank, num_hot) and what was measured."""

    model: str
    vocab_size: int
    dim: int
    dense_bytes: int
    metric: str  # "cosine" or "top-1 agreement"
    evaluation: str  # what the quality was measured on
    variants: list[Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def variant(self, rank: int, num_hot: int) -> Variant | None:
        for v in self.variants:
            if v.rank == rank and v.num_hot == num_hot:
                return v
        return None


@contextmanager
def replaced_input_embeddings(model: Any, module: torch.nn.Module) -> Iterator[None]:
    """``model``'s input embedding is ``module`` for the duration (restored afterwards; an
    output head tied to the old table keeps the old table)."""
    old = model.get_input_embeddings()
    model.set_input_embeddings(module)
    try:
        yield
    finally:
        model.set_input_embeddings(old)


def factorize_sweep(
    model: Any,
    ranks: Sequence[int],
    hot_sets: Sequence[torch.Tensor],
    evaluate: Callable[[], Quality],
    *,
    weight_counts: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Variant]:
    """Evaluate ``model`` with its input embedding factorized at each rank for each hot set.

    One SVD per hot set (of the non-hot rows, fp64), truncated to each rank; ranks above
    ``min(V - K, D)`` are skipped. ``evaluate()`` runs with the factorized table in place.
    ``weight_counts`` [V] weights :attr:`Variant.weighted_error`.
    """
    weight = model.get_input_embeddings().weight.detach()  # [V, D]
    padding_idx = getattr(model.get_input_embeddings(), "padding_idx", None)
    variants = []
    for hot in hot_sets:
        hot = check_hot_ids("factorize_sweep", hot, weight.shape[0], weight.device)
        _, vh = right_singular_vectors(weight, hot, torch.float64)
        max_rank = min(weight.shape[0] - hot.numel(), weight.shape[1])
        for rank in ranks:
            if rank > max_rank:
                continue
            a, b, hot_rows = factors_from_basis(weight, vh, rank, hot)
            module = FactorizedEmbedding.from_factors(
                a,
                b,
                hot_ids=hot if hot.numel() else None,
                hot_rows=hot_rows,
                padding_idx=padding_idx,
            )
            error = reconstruction_error(weight, module.to_dense(), weight_counts)
            with torch.inference_mode(), replaced_input_embeddings(model, module):
                quality = evaluate()
            variant = Variant(
                rank,
                hot.numel(),
                module.memory_bytes(),
                weight.numel() * weight.element_size(),
                error.relative,
                error.weighted,
                quality,
            )
            variants.append(variant)
            if log is not None:
                log(
                    f"  rank {rank:4d} hot {hot.numel():5d}: {variant.percent_of_dense:6.1f}% "
                    f"error {error.relative:.4f} quality {quality.value:.4f}"
                )
    return variants


def _halves(values: torch.Tensor, counted: int | None) -> tuple[float | None, float | None]:
    if counted is None:
        return None, None
    return values[:counted].mean().item(), values[counted:].mean().item()


def encoder_quality(
    model: Any,
    batch: Mapping[str, torch.Tensor],
    reference: torch.Tensor,
    counted: int | None = None,
) -> Quality:
    """Cosine of ``model``'s mean-pooled sentence embeddings of ``batch`` to ``reference``
    ``[B, D]`` (the unfactorized model's): mean, min, and the means over the first ``counted``
    sentences and the rest."""
    from fusedops.benchmarking.models import sentence_embeddings

    emb = sentence_embeddings(model, batch)  # [B, D], normalized
    cos = torch.nn.functional.cosine_similarity(emb.double(), reference.double(), dim=-1)  # [B]
    return Quality(cos.mean().item(), cos.min().item(), *_halves(cos, counted))


def top1(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Argmax next token at every position of the right-padded batch ``ids`` ``[B, S]``
    (``mask`` 1 on real tokens): ``[B, S]`` int64."""
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits.argmax(-1)


def causal_quality(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    reference: torch.Tensor,
    counted: int | None = None,
) -> Quality:
    """Top-1 next-token agreement of ``model`` with ``reference`` ``[B, S]`` (the unfactorized
    model's :func:`top1`) over the real tokens of ``ids``: the fraction of all positions
    that agree, the worst prompt's fraction, and the fractions over the first ``counted``
    prompts and the rest."""
    same = (top1(model, ids, mask) == reference) & mask.bool()  # [B, S]
    per_prompt = same.sum(1).double() / mask.sum(1).double()  # [B]
    total = same.sum().item() / mask.sum().item()
    if counted is None:
        return Quality(total, per_prompt.min().item())
    parts = [
        (same[rows].sum() / mask[rows].sum()).item()
        for rows in (slice(0, counted), slice(counted, None))
    ]
    return Quality(total, per_prompt.min().item(), *parts)


def encoder_sweep(
    model: Any,
    batch: Mapping[str, torch.Tensor],
    ranks: Sequence[int],
    hot_sets: Sequence[torch.Tensor],
    *,
    counted: int | None = None,
    weight_counts: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Variant]:
    """:func:`factorize_sweep` of an encoder scored by :func:`encoder_quality` on ``batch``."""
    from fusedops.benchmarking.models import sentence_embeddings

    reference = sentence_embeddings(model, batch)
    return factorize_sweep(
        model,
        ranks,
        hot_sets,
        lambda: encoder_quality(model, batch, reference, counted),
        weight_counts=weight_counts,
        log=log,
    )


def causal_sweep(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ranks: Sequence[int],
    hot_sets: Sequence[torch.Tensor],
    *,
    counted: int | None = None,
    weight_counts: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Variant]:
    """:func:`factorize_sweep` of a causal LM scored by :func:`causal_quality` on the
    right-padded prompts ``ids`` ``[B, S]`` (``mask`` 1 on real tokens)."""
    reference = top1(model, ids, mask)
    return factorize_sweep(
        model,
        ranks,
        hot_sets,
        lambda: causal_quality(model, ids, mask, reference, counted),
        weight_counts=weight_counts,
        log=log,
    )


# ----------------------------------------------------------------------------------------------
# The two real models
# ----------------------------------------------------------------------------------------------


def _counts(tokenizer: Any, paragraphs: Sequence[str], vocab: int) -> torch.Tensor:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in paragraphs]
    return token_frequencies(ids, vocab)


def _ranks_for(ranks: Sequence[int], dim: int) -> list[int]:
    """The requested ranks below ``D`` plus ``D`` itself (a full-rank sanity row)."""
    return sorted({r for r in ranks if r < dim} | {dim})


@dataclass(frozen=True)
class _SampleTokens:
    """The sample text as a model's tokenizer sees it: the split, the token counts ``[V]`` of
    each half and the hot tokens (the most frequent of the counted half)."""

    split: TextSplit
    counts: torch.Tensor  # [V], the counted half
    held_counts: torch.Tensor  # [V], the held-out half (weights the reconstruction error)
    hot: torch.Tensor  # [num_hot] int64

    @property
    def hot_sets(self) -> list[torch.Tensor]:
        """The sweep's hot sets: none, then all of :attr:`hot`."""
        return [self.hot[:0], self.hot]


def _sample_tokens(tokenizer: Any, model: Any, num_hot: int) -> _SampleTokens:
    """:class:`_SampleTokens` of ``tokenizer`` over ``model``'s vocabulary."""
    vocab = model.get_input_embeddings().weight.shape[0]
    split = split_text(sample_text())
    counts = _counts(tokenizer, split.counted, vocab)
    held_counts = _counts(tokenizer, split.held_out, vocab)
    return _SampleTokens(split, counts, held_counts, most_frequent(counts, num_hot))


def _model_study(
    name: str, model: Any, metric: str, evaluation: str, tokens: _SampleTokens
) -> ModelStudy:
    """An empty :class:`ModelStudy` of ``model``'s input table, noting how the hot tokens were
    chosen."""
    table = model.get_input_embeddings().weight  # [V, D]
    vocab, dim = table.shape
    study = ModelStudy(name, vocab, dim, table.numel() * table.element_size(), metric, evaluation)
    counts = tokens.counts
    study.notes.append(
        f"hot tokens: the {tokens.hot.numel()} most frequent of the counted half "
        f"({int((counts > 0).sum())} distinct tokens, {int(counts.sum())} in all)"
    )
    return study


def study_minilm(
    ranks: Sequence[int] = RANKS,
    num_hot: int = NUM_HOT,
    log: Callable[[str], None] | None = None,
) -> ModelStudy:
    """The all-MiniLM-L6-v2 sweep (the word table; sentence-embedding cosine)."""
    from fusedops.integrations import hf_models

    start = time.perf_counter()
    model, tokenizer = hf_models.load_encoder(hf_models.MINILM)
    tokens = _sample_tokens(tokenizer, model, num_hot)
    texts = spread(sentences(tokens.split.counted), SENTENCES_PER_HALF)
    texts += spread(sentences(tokens.split.held_out), SENTENCES_PER_HALF)
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    evaluation = (
        f"{len(texts)} sentences ({SENTENCES_PER_HALF} from the counted half of the sample "
        f"text, {len(texts) - SENTENCES_PER_HALF} held out), padded to "
        f"{batch['input_ids'].shape[1]} tokens"
    )
    study = _model_study("all-MiniLM-L6-v2", model, "cosine", evaluation, tokens)
    study.variants = encoder_sweep(
        model,
        batch,
        _ranks_for(ranks, study.dim),
        tokens.hot_sets,
        counted=SENTENCES_PER_HALF,
        weight_counts=tokens.held_counts,
        log=log,
    )
    study.seconds = time.perf_counter() - start
    return study


def study_smollm2(
    ranks: Sequence[int] = RANKS,
    num_hot: int = NUM_HOT,
    log: Callable[[str], None] | None = None,
) -> ModelStudy:
    """The SmolLM2-135M-Instruct sweep (input embedding; top-1 next-token agreement)."""
    from fusedops.integrations import hf_models

    start = time.perf_counter()
    model, tokenizer = hf_models.load_causal_lm(hf_models.SMOLLM2)
    tokens = _sample_tokens(tokenizer, model, num_hot)
    split = tokens.split
    texts = prompts(split.counted, PROMPTS_PER_HALF) + prompts(split.held_out, PROMPTS_PER_HALF)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), length), pad, dtype=torch.int64)  # [B, S], right-padded
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    evaluation = (
        f"every position of {len(texts)} prompts ({int(mask.sum())} tokens; two sentences each, "
        f"{PROMPTS_PER_HALF} from the counted half of the sample text, "
        f"{len(texts) - PROMPTS_PER_HALF} held out), teacher-forced"
    )
    study = _model_study("SmolLM2-135M-Instruct", model, "top-1 agreement", evaluation, tokens)
    study.notes.append(
        "the input table is tied to lm_head, which keeps the dense table: the memory column is "
        "the input embedding's own storage, saved only where it is held apart from the head"
    )
    study.variants = causal_sweep(
        model,
        ids,
        mask,
        _ranks_for(ranks, study.dim),
        tokens.hot_sets,
        counted=PROMPTS_PER_HALF,
        weight_counts=tokens.held_counts,
        log=log,
    )
    study.seconds = time.perf_counter() - start
    return study


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _quality_cell(q: Quality | None, metric: str) -> str:
    if q is None:
        return "-"
    if metric == "cosine":
        return f"{q.value:.4f} (min {q.worst:.3f})"
    return f"{100 * q.value:.1f}% (worst {100 * q.worst:.0f}%)"


def _pair(values: Sequence[str]) -> str:
    return " / ".join(values)


def _metric_text(metric: str, value: float) -> str:
    return f"mean cosine {value:.2f}" if metric == "cosine" else f"agreement {100 * value:.0f}%"


def summary_lines(study: ModelStudy) -> list[str]:
    """Per bar of :data:`BARS`: the smallest rank below full whose quality reaches it, per hot
    setting."""
    lines = []
    for bar in BARS[study.metric]:
        parts = []
        for num_hot in sorted({v.num_hot for v in study.variants}):
            good = [
                v
                for v in study.variants
                if v.num_hot == num_hot and v.rank < study.dim and v.quality.value >= bar
            ]
            label = "no hot tokens" if num_hot == 0 else f"{num_hot} hot tokens"
            if good:
                best = min(good, key=lambda v: v.rank)
                parts.append(f"{label}: rank {best.rank} ({best.percent_of_dense:.1f}% of dense)")
            else:
                parts.append(f"{label}: none of the tested ranks below full")
        text = _metric_text(study.metric, bar)
        lines.append(f"- smallest rank reaching {text}: " + "; ".join(parts))
    return lines


def study_markdown(study: ModelStudy) -> str:
    """The study's markdown section: the main table and the counted / held-out split."""
    hot_counts = sorted({v.num_hot for v in study.variants})
    hot = max(hot_counts) if hot_counts else 0
    ranks = sorted({v.rank for v in study.variants})
    main, detail = [], []
    for rank in ranks:
        plain, with_hot = study.variant(rank, 0), study.variant(rank, hot) if hot else None
        pair = [v for v in (plain, with_hot) if v is not None]
        label = f"{rank} (full)" if rank == study.dim else str(rank)
        main.append(
            [
                label,
                _pair([f"{v.memory_bytes / MB:.2f}" for v in pair]),
                _pair([f"{v.percent_of_dense:.1f}%" for v in pair]),
                _pair([f"{v.relative_error:.3f}" for v in pair]),
                _pair(
                    ["-" if v.weighted_error is None else f"{v.weighted_error:.3f}" for v in pair]
                ),
                _quality_cell(plain.quality if plain else None, study.metric),
                _quality_cell(with_hot.quality if with_hot else None, study.metric),
            ]
        )
        cells = [label]
        for v in (plain, with_hot):
            q = v.quality if v else None
            for part in (q.counted if q else None, q.held_out if q else None):
                if part is None:
                    cells.append("-")
                elif study.metric == "cosine":
                    cells.append(f"{part:.4f}")
                else:
                    cells.append(f"{100 * part:.1f}%")
        detail.append(cells)
    hot_label = f"{hot} hot" if hot else "hot"
    split = "no hot / " + hot_label
    metric = "mean cosine (min)" if study.metric == "cosine" else "top-1 agreement (worst prompt)"
    out = [
        f"## {study.model} (V={study.vocab_size}, D={study.dim})",
        "",
        f"Dense table: {study.dense_bytes / MB:.2f} MB (fp32). Quality: {metric} to the "
        f"unfactorized model over {study.evaluation}.",
        "",
        *[f"- {note}" for note in study.notes],
        *summary_lines(study),
        "",
        _table(
            [
                "rank",
                f"memory MB ({split})",
                f"% of dense ({split})",
                f"rel. error ({split})",
                f"freq-weighted error ({split})",
                "quality (no hot)",
                f"quality ({hot_label})",
            ],
            main,
        ),
        "",
        "Counted half vs held-out half of the evaluation set:",
        "",
        _table(
            [
                "rank",
                "no hot: counted",
                "no hot: held out",
                f"{hot_label}: counted",
                f"{hot_label}: held out",
            ],
            detail,
        ),
        "",
        f"({study.seconds:.0f} s)",
        "",
    ]
    return "\n".join(out)


def report_markdown(studies: Sequence[ModelStudy], *, header: str = "") -> str:
    """The whole report: an introduction, then one section per model."""
    intro = [
        "# Factorized input embeddings: memory vs quality",
        "",
        "Generated by `python -m fusedops.benchmarking.factorized_quality --out DIR`.",
        "",
        "Each model's input embedding is replaced by `fusedops.nn.FactorizedEmbedding`: a "
        "rank-r table `a @ b` (`a` [V, r], `b` [r, D]) fitted by truncated SVD "
        "(`fusedops.factorization.fit_factorization`), without and with the most frequent "
        "tokens' rows stored exactly. Memory is the module's stored tensors (a, b, hot rows, "
        "int64 hot ids; 1 MB = 10^6 bytes; the [V] int32 hot-slot map it derives at load "
        "time is not counted). Rel. error is `||W - W_hat||_F / ||W||_F` of the whole table; "
        "the frequency-weighted error weights each token's squared error and norm by its count "
        "in the held-out half of the sample text (the error a token of running text sees). "
        "The last row of each table, at full rank, is a sanity check (it stores more than the "
        "dense table).",
        "",
    ]
    if header:
        intro += [header, ""]
    return "\n".join(intro + [study_markdown(s) for s in studies])


def _jsonable(study: ModelStudy) -> dict[str, Any]:
    data = asdict(study)
    for v, variant in zip(data["variants"], study.variants, strict=True):
        v["percent_of_dense"] = variant.percent_of_dense
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusedops.benchmarking.factorized_quality", description=__doc__
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the report")
    parser.add_argument(
        "--models", default="minilm,smollm2", help="comma-separated: minilm, smollm2"
    )
    parser.add_argument("--ranks", default=",".join(map(str, RANKS)), help="comma-separated ranks")
    parser.add_argument("--num-hot", type=int, default=NUM_HOT, help="hot tokens kept exact")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--json", action="store_true", help="also write factorized-quality.json (every number)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    studies_by_name = {"minilm": study_minilm, "smollm2": study_smollm2}
    names = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in studies_by_name]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(studies_by_name)}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    studies = []
    for name in names:
        log(f"[{name}]")
        studies.append(studies_by_name[name](ranks, args.num_hot, log))
    import transformers

    header = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s); models in fp32."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "factorized-quality.md").write_text(report_markdown(studies, header=header))
    if args.json:
        payload = {"header": header, "studies": [_jsonable(s) for s in studies]}
        (args.out / "factorized-quality.json").write_text(json.dumps(payload, indent=1))
    log(f"wrote {args.out / 'factorized-quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
