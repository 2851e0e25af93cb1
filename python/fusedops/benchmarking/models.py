"""Model-level measurements: a Hugging Face model unpatched against ``fusedops.patch``.

Shared by ``fusedops demo``, ``fusedops generate`` and ``bench/bench_models.py``:

* :func:`generate_greedy`: ``model.generate`` (greedy) with the prefill time and decode rate
  read from a streamer's timestamps;
* :class:`Prefill` / :class:`Decode`: one prefill of ``n`` tokens (``logits_to_keep=1``, as
  ``generate`` does) and ``n`` greedy decode steps from a prefilled KV cache, as zero-argument
  calls for :func:`fusedops.benchmarking.measure`;
* :func:`logits_diff`, :func:`sentence_embeddings`, :func:`min_cosine`,
  :func:`embedding_table_bytes`: the parity numbers;
* :func:`time_alternating`: calls of several seconds timed in interleaved rounds;
* :class:`ModelSpec`: a model case for ``bench/`` (``fusedops`` = the patched model, ``eager`` =
  the same model unpatched; ``vs eager`` is the patched speed as a multiple of unpatched).

``transformers`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

import fusedops
from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.harness import EAGER, FUSED, Impl, OpSpec, Workload, dtype_name
from fusedops.benchmarking.timing import Timing, measure

PREFILL_TOKENS = 512
DECODE_TOKENS = 64
DECODE_PROMPT_TOKENS = 32
CHAT_PROMPT = "Explain in two sentences why the sky is blue."
SENTENCES = (
    "A fused kernel reads each input once and writes its output once.",
    "The cat sat on the mat.",
    "Rotary position embeddings rotate query and key vectors by position-dependent angles.",
    "Paris is the capital of France.",
    "Quantized embedding tables store one byte per weight and a scale per row.",
    "Hello!",
    "Attention weighs every key against the query and sums the values.",
    "Sentence embeddings are the mean of the token vectors, normalized to unit length.",
)
LOGITS_RTOL = 1e-4
"""Patched logits must be within ``LOGITS_RTOL * max |unpatched logit|`` of unpatched (fp32)."""

Context = Callable[[], AbstractContextManager[object]]


def patch_context(model: Any, **options: Any) -> Context:
    """``context()`` that patches ``model`` for the duration (``fusedops.patched``)."""
    return lambda: fusedops.patched(model, **options)


# -- inputs ------------------------------------------------------------------------------------


def chat_inputs(tokenizer: Any, prompt: str, device: torch.device | str = "cpu") -> dict:
    """``input_ids`` / ``attention_mask`` of ``prompt`` ([1, S]): one user turn through the
    tokenizer's chat template (with the generation prompt) when it has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        enc = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def random_ids(vocab_size: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[1, n]`` token ids drawn with a fixed seed (the same prompt every run)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, n), generator=gen).to(device)


# -- generation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """Greedy ``generate`` output: new token ids, their text, and the speed of the run."""

    tokens: tuple[int, ...]
    text: str
    prefill_ms: float
    decode_tokens_per_s: float | None  # None with fewer than 2 new tokens


class _Stamps:
    """A ``generate`` streamer recording when each chunk arrives: the prompt first, then each
    new token as soon as it is chosen."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate_greedy(
    model: Any,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    max_new_tokens: int,
    cache: str = "dynamic",
) -> Generation:
    """Greedy ``model.generate`` of up to ``max_new_tokens`` with Hugging Face's ``"dynamic"``
    or ``"static"`` KV cache; the prefill time is from the call to the first new token, the
    decode rate over the tokens after it."""
    stamps = _Stamps()
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=stamps,
            pad_token_id=_pad_id(model, tokenizer),
            cache_implementation=cache,
        )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()  # [N]
    token_times = stamps.times[1:]  # the first put() is the prompt
    prefill_ms = ((token_times[0] if token_times else time.perf_counter()) - t0) * 1e3
    rate = None
    if len(token_times) >= 2:
        rate = (len(token_times) - 1) / (token_times[-1] - token_times[0])
    text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else str(new)
    return Generation(tuple(new), text, prefill_ms, rate)


def _pad_id(model: Any, tokenizer: Any) -> int | None:
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
        pad = tokenizer.eos_token_id if pad is None else pad
    return pad


# -- timed calls -------------------------------------------------------------------------------


class Prefill:
    """One prefill forward of ``ids`` ([1, S]) with a fresh KV cache, keeping only the last
    position's logits (what ``generate`` computes)."""

    def __init__(self, model: Any, ids: torch.Tensor) -> None:
        self.model, self.ids = model, ids

    def __call__(self) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(self.ids, use_cache=True, logits_to_keep=1).logits


class Decode:
    """``n`` greedy decode steps (one token each) after ``prompt`` ([1, P]).

    :meth:`prepare` (or else the first call) prefills the prompt into a ``DynamicCache`` under
    whatever patching is active then; every call crops the cache back to the prompt and decodes
    ``n`` tokens, so only the decode steps are in the call.
    """

    def __init__(self, model: Any, prompt: torch.Tensor, n: int) -> None:
        self.model, self.prompt, self.n = model, prompt, n
        self.cache: Any = None
        self.first: torch.Tensor | None = None  # [1, 1] token after the prompt

    def prepare(self) -> None:
        """Prefill the prompt (once)."""
        from transformers import DynamicCache

        if self.cache is None:
            with torch.inference_mode():
                self.cache = DynamicCache(config=self.model.config)
                out = self.model(self.prompt, past_key_values=self.cache, use_cache=True)
                self.first = out.logits[:, -1:].argmax(-1)

    def __call__(self) -> list[int]:
        self.prepare()
        with torch.inference_mode():
            extra = self.cache.get_seq_length() - self.prompt.shape[1]
            if extra:
                self.cache.crop(-extra)  # back to the prompt
            token, tokens = self.first, []
            for _ in range(self.n):
                out = self.model(token, past_key_values=self.cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)  # [1, 1]
                tokens.append(int(token))
        return tokens


def time_alternating(
    calls: Mapping[str, tuple[Callable[[], object], Context]],
    *,
    rounds: int,
    reps: int = 1,
    warmup: bool = True,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> dict[str, Timing]:
    """Time calls of a second or more: each is called once untimed (first touch; not with
    ``warmup=False``), then ``rounds`` rounds time ``reps`` calls of each in turn (so drift of a
    shared machine hits all alike). ``calls`` maps a name to ``(fn, context)``; ``fn`` runs
    inside ``context()``."""
    for name, (fn, context) in calls.items() if warmup else ():
        t0 = time.perf_counter()
        with context():
            fn()
        if log is not None:
            log(f"  {label} {name}: first call {time.perf_counter() - t0:.1f} s")
    timings: dict[str, Timing] = {}
    for _ in range(rounds):
        for name, (fn, context) in calls.items():
            with context():
                t = measure(fn, warmup=0, reps=reps, min_reps=1)
            timings[name] = timings[name].merged(t) if name in timings else t
    return timings


# -- parity ------------------------------------------------------------------------------------


def sequence_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Logits of every position of ``ids`` ([1, S]) as fp32 ``[1, S, V]``."""
    with torch.inference_mode():
        return model(ids, use_cache=False).logits.float()


def logits_diff(reference: torch.Tensor, actual: torch.Tensor) -> tuple[float, float]:
    """``(max |actual - reference|, max |reference|)``."""
    diff = (actual.double() - reference.double()).abs().max().item()
    return diff, reference.abs().max().item()


def sentence_embeddings(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled (over non-padding tokens) and L2-normalized last hidden states ``[B, D]``:
    the sentence embedding of all-MiniLM-L6-v2."""
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state.float()  # [B, S, D]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # [B, D]
    return torch.nn.functional.normalize(pooled, dim=-1)


def min_cosine(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Smallest per-row cosine similarity of two ``[B, D]`` embedding batches (fp64)."""
    cos = torch.nn.functional.cosine_similarity(actual.double(), reference.double(), dim=-1)
    return cos.min().item()


def embedding_table_bytes(model: Any) -> int:
    """Bytes of the input embedding module's parameters and buffers (each storage once; an
    INT8 table counts its int8 rows and scales)."""
    module = model.get_input_embeddings()
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


# -- demo comparisons ---------------------------------------------------------------------------

UNPATCHED, PATCHED, PATCHED_INT8 = "unpatched", "patched", "patched+int8"


@dataclass(frozen=True)
class LogitsReference:
    """fp32 unpatched logits ``[1, S, V]`` of the token sequence ``ids`` ``[1, S]`` (the prompt
    and the greedy answer): the yardstick of a lower-precision comparison."""

    ids: torch.Tensor
    logits: torch.Tensor


@dataclass
class CausalComparison:
    """A causal LM unpatched against patched: greedy text, parity and speed.

    Parity: in fp32, the greedy tokens are identical and the patched logits are within
    :data:`LOGITS_RTOL` x max |logit| of unpatched. In a lower precision (with an fp32
    ``reference``), the patched logits' error against the fp32 logits is at most twice the
    unpatched model's own error plus that floor (rounding legitimately differs, as for
    attention); tokens identical is reported but not required there.
    """

    dtype: torch.dtype
    generations: dict[str, Generation]
    logits_err: float  # max |patched - unpatched|
    logits_max: float  # max |unpatched|
    ref_err: float  # max |patched - reference|
    bound: float  # what ref_err may be
    bound_text: str
    prefill: dict[str, Timing]
    decode: dict[str, Timing]
    report: Any
    reference: LogitsReference
    tokens_must_match: bool = True
    static_generations: dict[str, Generation] | None = None  # with Hugging Face's StaticCache

    @property
    def tokens_identical(self) -> bool:
        return self.generations[UNPATCHED].tokens == self.generations[PATCHED].tokens

    @property
    def static_tokens_identical(self) -> bool:
        static = self.static_generations or {}
        return static[UNPATCHED].tokens == static[PATCHED].tokens

    @property
    def logits_ok(self) -> bool:
        return self.ref_err <= self.bound


def compare_causal(
    model: Any,
    tokenizer: Any,
    *,
    prompt: str = CHAT_PROMPT,
    new_tokens: int = 32,
    prefill_tokens: int = PREFILL_TOKENS,
    decode_tokens: int = DECODE_TOKENS,
    prefill_rounds: int = 3,
    decode_rounds: int = 4,
    reference: LogitsReference | None = None,
    log: Callable[[str], None] | None = None,
) -> CausalComparison:
    """Greedy ``generate`` of ``prompt`` unpatched and patched (:func:`fusedops.patched` on
    the same model), the logits of a token sequence both ways, then interleaved timing of a
    ``prefill_tokens`` prefill and ``decode_tokens`` decode steps (after the greedy runs have
    warmed both paths).

    Without ``reference`` (the fp32 run) the sequence is the prompt and the unpatched answer,
    and the comparison's ``reference`` holds its logits for a later lower-precision run."""
    note = log or (lambda line: None)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = chat_inputs(tokenizer, prompt, device)
    patch = patch_context(model)
    note(f"  greedy generation of {new_tokens} tokens, unpatched and patched ...")
    generations = {UNPATCHED: generate_greedy(model, tokenizer, inputs, new_tokens)}
    with patch() as report:
        generations[PATCHED] = generate_greedy(model, tokenizer, inputs, new_tokens)
    # A static cache: the patched decode steps run fusedops.attention_with_kvcache.
    note(f"  greedy generation of {new_tokens} tokens with a static cache, both ways ...")
    static = {UNPATCHED: generate_greedy(model, tokenizer, inputs, new_tokens, cache="static")}
    with patch():
        static[PATCHED] = generate_greedy(model, tokenizer, inputs, new_tokens, cache="static")
    if reference is None:
        new = torch.tensor([generations[UNPATCHED].tokens], dtype=torch.long, device=device)
        ids = torch.cat([inputs["input_ids"], new], dim=1)  # [1, prompt + new]
    else:
        ids = reference.ids.to(device)
    unpatched = sequence_logits(model, ids)  # [1, S, V] fp32
    with patch():
        patched = sequence_logits(model, ids)
    err, ref_max = logits_diff(unpatched, patched)
    if reference is None:
        reference = LogitsReference(ids, unpatched)
        ref_err, bound = err, LOGITS_RTOL * ref_max
        bound_text = f"{LOGITS_RTOL:g} x max |logit|"
    else:
        own_err, fp32_max = logits_diff(reference.logits, unpatched)
        ref_err = logits_diff(reference.logits, patched)[0]
        bound = 2 * own_err + LOGITS_RTOL * fp32_max
        bound_text = f"2 x unpatched {dtype_name(dtype)}'s {own_err:.3g} + floor"
    vocab = model.config.vocab_size
    prefill = Prefill(model, random_ids(vocab, prefill_tokens, device))
    note(f"  prefill of {prefill_tokens} tokens: 1 warm-up + {prefill_rounds} timed calls each ...")
    prefill_t = time_alternating(
        {UNPATCHED: (prefill, contextlib.nullcontext), PATCHED: (prefill, patch)},
        rounds=prefill_rounds,
    )
    prompt_ids = random_ids(vocab, DECODE_PROMPT_TOKENS, device)
    note(f"  decode of {decode_tokens} tokens: {decode_rounds} timed runs each ...")
    decoders = {UNPATCHED: Decode(model, prompt_ids, decode_tokens)}
    decoders[PATCHED] = Decode(model, prompt_ids, decode_tokens)
    decoders[UNPATCHED].prepare()
    with patch():
        decoders[PATCHED].prepare()
    decode_t = time_alternating(
        {
            UNPATCHED: (decoders[UNPATCHED], contextlib.nullcontext),
            PATCHED: (decoders[PATCHED], patch),
        },
        rounds=decode_rounds,
        warmup=False,
    )
    return CausalComparison(
        dtype=dtype,
        generations=generations,
        logits_err=err,
        logits_max=ref_max,
        ref_err=ref_err,
        bound=bound,
        bound_text=bound_text,
        prefill=prefill_t,
        decode=decode_t,
        report=report,
        reference=reference,
        tokens_must_match=dtype == torch.float32,
        static_generations=static,
    )


@dataclass
class EncoderComparison:
    """An encoder unpatched, patched and patched with an INT8 word table: sentence-embedding
    cosine to unpatched, time per batch, input-embedding memory."""

    cosine: dict[str, float]
    timings: dict[str, Timing]
    table_bytes: dict[str, int]
    reports: dict[str, Any]
    batch_shape: tuple[int, int]

    BARS: ClassVar[dict[str, float]] = {PATCHED: 0.99999, PATCHED_INT8: 0.9999}
    """The smallest cosine to unpatched that passes, per variant."""


def compare_encoder(
    model: Any, tokenizer: Any, *, rounds: int = 3, reps: int = 3
) -> EncoderComparison:
    """``model`` against patched and INT8-patched copies (``copy.deepcopy``: the INT8 patch
    releases the float word table, so it cannot be undone) on the padded :data:`SENTENCES`."""
    import copy

    device = next(model.parameters()).device
    batch = encode_batch(tokenizer, device)
    models = {UNPATCHED: model, PATCHED: copy.deepcopy(model), PATCHED_INT8: copy.deepcopy(model)}
    reports = {
        PATCHED: fusedops.patch(models[PATCHED]),
        PATCHED_INT8: fusedops.patch(models[PATCHED_INT8], int8_embedding=True),
    }
    embeddings = {name: sentence_embeddings(m, batch) for name, m in models.items()}
    cosine = {name: min_cosine(embeddings[UNPATCHED], e) for name, e in embeddings.items()}
    calls: dict[str, tuple[Callable[[], object], Context]] = {
        name: ((lambda m=m: sentence_embeddings(m, batch)), contextlib.nullcontext)
        for name, m in models.items()
    }
    timings = time_alternating(calls, rounds=rounds, reps=reps)
    table_bytes = {name: embedding_table_bytes(m) for name, m in models.items()}
    shape = tuple(batch["input_ids"].shape)
    return EncoderComparison(cosine, timings, table_bytes, reports, (shape[0], shape[1]))


# -- bench cases -------------------------------------------------------------------------------

ModelName = Literal["smollm2", "tiny-llama", "minilm"]
Phase = Literal["prefill", "decode", "encode"]
TINY_LLAMA = {
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
"""A tiny random Llama (seed 0): per-call overhead dominates, so patching must cost none."""

_loaded: dict[str, Any] = {}  # one model at a time: {"key": ..., "model": ..., "tokenizer": ...}


def load_bench_model(name: ModelName, dtype: torch.dtype, device: torch.device) -> tuple:
    """``(model, tokenizer)`` in eval mode, kept for the next case with the same arguments."""
    key = f"{name}/{dtype}/{device}"
    if _loaded.get("key") != key:
        _loaded.clear()
        from fusedops.integrations import hf_models

        if name == "tiny-llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            torch.manual_seed(0)
            model, tokenizer = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).to(dtype), None
        elif name == "minilm":
            model, tokenizer = hf_models.load_encoder(hf_models.MINILM)
            model = model.to(dtype)
        else:
            model, tokenizer = hf_models.load_causal_lm(name, dtype=dtype)
        _loaded.update(key=key, model=model.to(device).eval(), tokenizer=tokenizer)
    return _loaded["model"], _loaded["tokenizer"]


def encode_batch(tokenizer: Any, device: torch.device | str = "cpu") -> dict:
    """:data:`SENTENCES` as one padded batch (``input_ids``, ``attention_mask``, ...)."""
    enc = tokenizer(list(SENTENCES), padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


@dataclass(frozen=True)
class ModelSpec(OpSpec):
    """A whole model, patched (``fusedops``) against unpatched (``eager``), on one phase.

    ``prefill``: one forward of ``tokens`` random ids (:class:`Prefill`); ``decode``: ``tokens``
    greedy steps after a :data:`DECODE_PROMPT_TOKENS` prompt (:class:`Decode`); ``encode``: the
    padded batch of :data:`SENTENCES` (``minilm``). The check compares the patched model's
    output with unpatched: logits within :data:`LOGITS_RTOL` of the largest (the same greedy
    tokens for ``decode``), sentence-embedding cosine >= 0.99999 for ``encode``.
    """

    op: ClassVar[str] = "model"
    name: str
    model: ModelName
    phase: Phase
    tokens: int = 0
    compile: bool = False
    patch_options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def shape(self) -> str:
        if self.phase == "encode":
            return f"B={len(SENTENCES)} padded"
        if self.phase == "decode":
            return f"P={DECODE_PROMPT_TOKENS} +{self.tokens} tokens"
        return f"S={self.tokens}"

    def default_backend(self, device: torch.device) -> str:
        return "auto"

    @property
    def axis(self) -> tuple[str, int, str]:
        n, unit = self.work()
        return f"{self.model} {self.phase}", n, unit

    def work(self) -> tuple[int, str]:
        """What one call processes, for the rate column: ``(tokens, "tokens")``, or
        ``(sentences, "sentences")`` for ``encode``."""
        if self.phase == "encode":
            return len(SENTENCES), "sentences"
        return self.tokens, "tokens"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        model, tokenizer = load_bench_model(self.model, dtype, device)
        options = dict(self.patch_options)

        @contextlib.contextmanager
        def context() -> Iterator[None]:
            with fusedops.use_backend(backend), fusedops.patched(model, **options):
                yield

        if self.phase == "encode":
            batch = encode_batch(tokenizer, device)
            fused = unpatched = lambda: sentence_embeddings(model, batch)
            check = _encode_check(model, batch, context)
        else:
            ids_for = (
                (lambda: random_ids(model.config.vocab_size, self.tokens, device))
                if self.phase == "prefill"
                else (lambda: random_ids(model.config.vocab_size, DECODE_PROMPT_TOKENS, device))
            )
            make = (
                (lambda: Prefill(model, ids_for()))
                if self.phase == "prefill"
                else (lambda: Decode(model, ids_for(), self.tokens))
            )
            fused, unpatched = make(), make()
            check = _causal_check(model, ids_for(), context, decode=self.phase == "decode")
        impls = [Impl(FUSED, fused, context=context), Impl(EAGER, unpatched)]
        return Workload(impls=impls, check=check, note="eager = the unpatched model")


def _causal_check(
    model: Any, ids: torch.Tensor, context: Context, *, decode: bool
) -> Callable[[], Accuracy]:
    def check() -> Accuracy:
        reference = sequence_logits(model, ids)
        with context():
            actual = sequence_logits(model, ids)
        err, ref_max = logits_diff(reference, actual)
        ok = err <= LOGITS_RTOL * ref_max
        detail = f"logits max abs diff {err:.3g} (max |logit| {ref_max:.3g})"
        if decode:
            steps = Decode(model, ids, 8)
            want = steps()
            with context():
                got = Decode(model, ids, 8)()
            ok = ok and got == want
            detail += f"; 8 greedy tokens {'identical' if got == want else 'DIFFER'}"
        return Accuracy(err, ref_max, ok, detail)

    return check


def _encode_check(model: Any, batch: dict, context: Context) -> Callable[[], Accuracy]:
    def check() -> Accuracy:
        reference = sentence_embeddings(model, batch)
        with context():
            actual = sentence_embeddings(model, batch)
        cos = min_cosine(reference, actual)
        err = (actual - reference).abs().max().item()
        return Accuracy(err, 1.0, cos >= 0.99999, f"min cosine {cos:.7f} (bar 0.99999)")

    return check
