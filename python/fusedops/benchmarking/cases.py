"""The benchmark specs of the four ops and their named sizes, shared by ``bench/`` and the demo.

Each spec (a frozen dataclass) holds an op's variant and sizes and builds its
:class:`~fusedops.benchmarking.harness.Workload`: ``fusedops`` (the fused op under the case's
backend), the eager baseline, ``torch.compile`` of it, op-specific extras, the minimum bytes or
FLOPs (:mod:`fusedops.benchmarking.counts`) and the check against the reference. Example::

    Case(EMBEDDING_LEARNED, torch.float32).build("cpu").check().ok
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

import fusedops
from fusedops import reference
from fusedops.baselines import (
    composed_int8_lookup,
    eager_attention,
    hf_apply_rotary,
    sdpa_attention,
)
from fusedops.benchmarking import counts
from fusedops.benchmarking.accuracy import Accuracy, compare, max_abs_error
from fusedops.benchmarking.harness import (
    Impl,
    OpSpec,
    Skipped,
    Workload,
    backend_context,
    standard_impls,
)
from fusedops.benchmarking.peers import (
    FLASH_ATTN,
    LIGER,
    SDPA,
    PeerUnavailable,
    flash_attn_causal,
    liger_embedding,
    liger_rope,
    sdpa_backends,
)
from fusedops.benchmarking.results import ERROR, error_text

FLOAT_TABLE = "F.embedding"
"""INT8 baseline: ``F.embedding`` of the unquantized table stored in the output dtype."""

# Attention passes when its max error against the reference is at most twice that of the eager
# formula in the same dtype plus this floor times max(1, max |reference|) (the tests' bound).
ATTENTION_FLOOR: dict[torch.dtype, float] = {
    torch.float32: 5e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}
# Attention's reference runs in fp64 up to this many scores, in fp32 above (memory).
_FP64_MAX_SCORES = 2**25


def forward_calls(*args: Any) -> Callable[[Callable[..., Any]], Callable[[], object]]:
    """``timed(fn)`` for a forward: ``fn(*args)``."""
    return lambda fn: lambda: fn(*args)


def grads_calls(
    params: tuple[torch.Tensor, ...], grad_out: torch.Tensor, *args: Any
) -> Callable[[Callable[..., Any]], Callable[[], tuple[torch.Tensor, ...]]]:
    """``timed(fn)`` for a backward: the gradients of ``fn(*args)`` with respect to ``params``
    for ``grad_out``; the forward runs once, on the first call, so only the backward is timed."""

    def timed(fn: Callable[..., Any]) -> Callable[[], tuple[torch.Tensor, ...]]:
        graph: list[torch.Tensor] = []

        def run() -> tuple[torch.Tensor, ...]:
            if not graph:
                graph.append(fn(*args))
            return torch.autograd.grad(graph[0], params, grad_out, retain_graph=True)

        return run

    return timed


def _backward_calls(
    param: torch.Tensor, grad_out: torch.Tensor, *args: Any
) -> Callable[[Callable[..., Any]], Callable[[], torch.Tensor]]:
    """:func:`grads_calls` of one parameter: ``timed(fn)`` returns its gradient alone."""
    grads = grads_calls((param,), grad_out, *args)

    def timed(fn: Callable[..., Any]) -> Callable[[], torch.Tensor]:
        run = grads(fn)
        return lambda: run()[0]

    return timed


def bind_peers(factories: dict[str, Callable[[], Impl]], skipped: list[Skipped]) -> list[Impl]:
    """Call each ``name -> factory`` and keep the :class:`Impl` it returns; a factory raising
    :class:`~fusedops.benchmarking.peers.PeerUnavailable` adds a :class:`Skipped` with its status
    instead, and any other error one with status ``error``: a broken peer never stops the case."""
    impls = []
    for name, factory in factories.items():
        try:
            impls.append(factory())
        except PeerUnavailable as exc:
            skipped.append(Skipped(name, exc.status, exc.reason))
        except Exception as exc:
            skipped.append(Skipped(name, ERROR, error_text(exc)))
    return impls


def computed_once(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` computed on the first call and kept (an oracle shared by every check)."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def _randn(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, device=gen.device, dtype=dtype)


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


@dataclass(frozen=True)
class EmbeddingSpec(OpSpec):
    """Fused embedding: ``weight[ids] * scale + P[position_offset + s]``.

    ``pos``: ``learned`` (table ``[pos_rows, D]``), ``sinusoid`` (computed in the kernel) or
    ``none``. ``scale=None`` means ``sqrt(D)``. ``backward`` times only the token-table gradient
    (through a forward done once). Eager is :func:`fusedops.reference.fused_embedding`.
    """

    op: ClassVar[str] = "embedding"
    optional_impls: ClassVar[tuple[str, ...]] = (LIGER,)
    name: str
    batch: int
    seq: int
    dim: int
    vocab: int
    pos: Literal["learned", "sinusoid", "none"] = "learned"
    pos_rows: int = 2048
    position_offset: int = 0
    scale: float | None = None
    backward: bool = False
    compile: bool = True

    @property
    def shape(self) -> str:
        text = f"B={self.batch} S={self.seq} D={self.dim} V={self.vocab}"
        return text + (f" P={self.pos_rows}" if self.pos == "learned" else "")

    @property
    def axis(self) -> tuple[str, int, str]:
        family = f"{self.name} V={self.vocab} D={self.dim}"
        return family, self.batch * self.seq, "tokens"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = _generator(device)
        ids = torch.randint(0, self.vocab, (self.batch, self.seq), generator=gen, device=device)
        weight = _randn(gen, dtype, self.vocab, self.dim)  # [V, D]
        pos_weight = _randn(gen, dtype, self.pos_rows, self.dim) if self.pos == "learned" else None
        scale = math.sqrt(self.dim) if self.scale is None else self.scale
        kwargs: dict[str, Any] = {
            "scale": scale,
            "sinusoidal": self.pos == "sinusoid",
            "position_offset": self.position_offset,
        }
        # On CUDA the id check would synchronize the device (neither baseline checks).
        fused_kwargs = {**kwargs, "check_indices": device.type != "cuda"}

        def eager(ids: torch.Tensor, weight: torch.Tensor, pos_weight: Any) -> torch.Tensor:
            return reference.fused_embedding(ids, weight, pos_weight=pos_weight, **kwargs)

        def fused(ids: torch.Tensor, weight: torch.Tensor, pos_weight: Any) -> torch.Tensor:
            return fusedops.fused_embedding(ids, weight, pos_weight=pos_weight, **fused_kwargs)

        n_tokens = self.batch * self.seq
        if self.backward:
            weight.requires_grad_(True)
            grad_out = _randn(gen, dtype, self.batch, self.seq, self.dim)  # [B, S, D]
            timed = _backward_calls(weight, grad_out, ids, weight, pos_weight)
            min_bytes = counts.min_bytes_embedding_backward(
                n_tokens, self.dim, self.vocab, dtype=dtype, id_dtype=ids.dtype
            )
        else:
            timed = forward_calls(ids, weight, pos_weight)
            pos_rows = min(self.seq, self.pos_rows) if self.pos == "learned" else 0
            min_bytes = counts.min_bytes_embedding(
                n_tokens, self.dim, dtype=dtype, id_dtype=ids.dtype, pos_rows=pos_rows
            )
        context = backend_context(backend)

        @computed_once
        def oracle() -> torch.Tensor:
            """The same call of the reference on fp64 copies of the tables (fp64 math)."""
            weight64 = weight.detach().double().requires_grad_(self.backward)
            pos64 = None if pos_weight is None else pos_weight.double()
            if not self.backward:
                return eager(ids, weight64, pos64)
            return _backward_calls(weight64, grad_out.double(), ids, weight64, pos64)(eager)()

        def verify(actual: object) -> Accuracy:
            return compare(actual, oracle(), dtype)  # type: ignore[arg-type]

        def check() -> Accuracy:
            with context():
                return verify(timed(fused)())

        def liger() -> Impl:
            gather = liger_embedding(device)
            # The positional term a model adds after the gather: rows offset .. offset + S.
            rows = slice(self.position_offset, self.position_offset + self.seq)
            if self.pos == "learned":
                assert pos_weight is not None
                positional: torch.Tensor | None = pos_weight[rows].float()  # [S, D]
            elif self.pos == "sinusoid":
                positions = torch.arange(rows.start, rows.stop, device=device)
                positional = reference.sinusoid_table(positions, self.dim)  # [S, D] fp32
            else:
                positional = None

            def composed(ids: torch.Tensor, weight: torch.Tensor, _pos: Any) -> torch.Tensor:
                out = gather(ids, weight).float() * scale  # [B, S, D] fp32
                return (out if positional is None else out + positional).to(dtype)

            return Impl(LIGER, timed(composed))

        skipped: list[Skipped] = []
        extra = bind_peers({LIGER: liger}, skipped)
        impls = standard_impls(
            timed, fused, eager, context=context, compile=self.compile, extra=extra
        )
        return Workload(
            impls=impls, check=check, verify=verify, min_bytes=min_bytes, skipped=skipped
        )


@dataclass(frozen=True)
class Int8Spec(OpSpec):
    """INT8 embedding lookup of a random ``[V, D]`` table quantized once
    (:func:`fusedops.quantize_embedding`; ``group_size=None``: one scale per row).

    Eager is the bitsandbytes-style composition (:func:`fusedops.baselines.composed_int8_lookup`);
    :data:`FLOAT_TABLE` gathers the unquantized table in the output dtype (what the INT8 table
    replaces; same byte count, so its GB/s compares time, not traffic). The check also bounds
    the quantization error: within half a quantization step of the fp32 table.
    """

    op: ClassVar[str] = "int8_embedding"
    extra_impls: ClassVar[tuple[str, ...]] = (FLOAT_TABLE,)
    name: str
    batch: int
    seq: int
    dim: int
    vocab: int
    group_size: int | None = None
    compile: bool = True

    @property
    def shape(self) -> str:
        text = f"B={self.batch} S={self.seq} D={self.dim} V={self.vocab}"
        return text + (f" g={self.group_size}" if self.group_size else "")

    def default_backend(self, device: torch.device) -> str:
        """The extension's kernel for the device: C++ on CPU, CUDA on GPU (``auto``)."""
        return "cpp" if device.type == "cpu" else "auto"

    @property
    def axis(self) -> tuple[str, int, str]:
        groups = f"g={self.group_size}" if self.group_size else "per-row"
        return f"{self.name} V={self.vocab} D={self.dim} {groups}", self.batch * self.seq, "tokens"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = _generator(device)
        ids = torch.randint(0, self.vocab, (self.batch, self.seq), generator=gen, device=device)
        weight = _randn(gen, torch.float32, self.vocab, self.dim)  # [V, D]
        qweight, scales = fusedops.quantize_embedding(weight, group_size=self.group_size)
        float_table = weight.to(dtype)  # [V, D] in the output dtype
        # On CUDA the id check would synchronize the device (neither baseline checks).
        fused_kwargs = {"check_indices": False} if device.type == "cuda" else {}

        def fused(ids: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
            return fusedops.int8_embedding(ids, qweight, scales, out_dtype=dtype, **fused_kwargs)

        def eager(ids: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
            return composed_int8_lookup(ids, qweight, scales, dtype)

        context = backend_context(backend, extension_op="int8_embedding_fwd")
        expected = computed_once(
            lambda: reference.int8_embedding(ids, qweight, scales)
        )  # [B, S, D]

        def verify(actual: object) -> Accuracy:
            return compare(actual, expected(), dtype)  # type: ignore[arg-type]

        def check() -> Accuracy:
            with context():
                accuracy = verify(fused(ids, qweight, scales))
            quant_err = (expected() - F.embedding(ids, weight)).abs()
            half_step = F.embedding(ids, scales) / 2  # [B, S, G]
            half_step = half_step.repeat_interleave(self.dim // scales.shape[1], dim=-1)
            quant_ok = bool((quant_err <= half_step * (1 + 1e-4)).all())
            detail = (
                f"{accuracy.detail}; quantization error {quant_err.max().item():.3g} against "
                f"the fp32 table ({'within' if quant_ok else 'BEYOND'} half a step)"
            )
            return Accuracy(accuracy.max_err, accuracy.ref_max, accuracy.ok and quant_ok, detail)

        def verify_float_table(actual: object) -> Accuracy:
            return compare(actual, F.embedding(ids, weight.double()), dtype)  # type: ignore[arg-type]

        stored = qweight.numel() * qweight.element_size() + scales.numel() * scales.element_size()
        fp32_bytes = weight.numel() * weight.element_size()
        float_lookup = Impl(
            FLOAT_TABLE, lambda: F.embedding(ids, float_table), verify=verify_float_table
        )
        impls = standard_impls(
            forward_calls(ids, qweight, scales),
            fused,
            eager,
            context=context,
            compile=self.compile,
            extra=[float_lookup],
        )
        min_bytes = counts.min_bytes_int8_embedding(
            self.batch * self.seq,
            self.dim,
            scales.shape[1],
            scale_dtype=scales.dtype,
            out_dtype=dtype,
            id_dtype=ids.dtype,
        )
        note = (
            f"int8+scales {stored / 2**20:.1f} vs fp32 {fp32_bytes / 2**20:.1f} MiB "
            f"({fp32_bytes / stored:.2f}x smaller)"
        )
        return Workload(impls=impls, check=check, verify=verify, min_bytes=min_bytes, note=note)


@dataclass(frozen=True)
class RopeSpec(OpSpec):
    """RoPE on q ``[B, Hq, S, D]`` and k ``[B, Hk, S, D]`` with the cos/sin a Llama attention
    layer receives: ``[1, S, D]`` (duplicated halves) in the activation dtype, gathered at
    positions ``position_offset ..``. Eager is transformers' ``apply_rotary_pos_emb``
    (:func:`fusedops.baselines.hf_apply_rotary`)."""

    op: ClassVar[str] = "rope"
    optional_impls: ClassVar[tuple[str, ...]] = (LIGER,)
    name: str
    batch: int
    heads_q: int
    heads_k: int
    seq: int
    dim: int
    position_offset: int = 0
    compile: bool = True

    @property
    def shape(self) -> str:
        return f"B={self.batch} Hq={self.heads_q} Hk={self.heads_k} S={self.seq} D={self.dim}"

    @property
    def axis(self) -> tuple[str, int, str]:
        family = f"{self.name} Hq={self.heads_q} Hk={self.heads_k} D={self.dim}"
        return family, self.batch * self.seq, "tokens"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = _generator(device)
        b, s, d = self.batch, self.seq, self.dim
        q = _randn(gen, dtype, b, self.heads_q, s, d)  # [B, Hq, S, D]
        k = _randn(gen, dtype, b, self.heads_k, s, d)  # [B, Hk, S, D]
        cache_cos, cache_sin = fusedops.rope_cos_sin(d, self.position_offset + s, device=device)
        rows = slice(self.position_offset, self.position_offset + s)
        cos = torch.cat((cache_cos[rows], cache_cos[rows]), dim=-1)[None].to(dtype)  # [1, S, D]
        sin = torch.cat((cache_sin[rows], cache_sin[rows]), dim=-1)[None].to(dtype)  # [1, S, D]

        def fused(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Any:
            return fusedops.apply_rotary(q, k, cos, sin)

        context = backend_context(backend)
        expected = computed_once(
            lambda: reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double())
        )

        def verify(actual: object) -> Accuracy:
            return compare(actual, expected(), dtype)  # type: ignore[arg-type]

        def check() -> Accuracy:
            with torch.no_grad(), context():
                return verify(fused(q, k, cos, sin))

        def liger() -> Impl:
            rope = liger_rope(device)
            # Own copies: a peer that rotates in place must not touch the shared inputs.
            ql, kl = q.clone(), k.clone()
            return Impl(LIGER, lambda: rope(ql, kl, cos, sin))

        skipped: list[Skipped] = []
        impls = standard_impls(
            forward_calls(q, k, cos, sin),
            fused,
            hf_apply_rotary,
            context=context,
            compile=self.compile,
            extra=bind_peers({LIGER: liger}, skipped),
        )
        min_bytes = counts.min_bytes_rope(b, self.heads_q, self.heads_k, s, d, d, dtype=dtype)
        return Workload(
            impls=impls, check=check, verify=verify, min_bytes=min_bytes, skipped=skipped
        )


def attention_bound(
    actual: torch.Tensor, expected: torch.Tensor, yardstick: torch.Tensor, dtype: torch.dtype
) -> Accuracy:
    """The tests' attention bound: ``max |actual - expected| <= 2 x`` the yardstick's error
    (the eager formula in the same dtype) ``+`` :data:`ATTENTION_FLOOR` ``x max(1, max
    |expected|)``."""
    if actual.dtype != dtype or actual.shape != expected.shape:
        got = f"{actual.dtype} {tuple(actual.shape)}"
        want = f"{dtype} {tuple(expected.shape)}"
        return Accuracy(float("inf"), 0.0, False, f"got {got}, expected {want}")
    err, base = max_abs_error(actual, expected), max_abs_error(yardstick, expected)
    ref_max = expected.abs().max().item() if expected.numel() else 0.0
    bound = 2 * base + ATTENTION_FLOOR[dtype] * max(1.0, ref_max)
    detail = (
        f"max abs error {err:.3g} (max |reference| {ref_max:.3g}); bound {bound:.3g} = "
        f"2 x the eager formula's {base:.3g} + floor"
    )
    return Accuracy(err, ref_max, err <= bound, detail)


def worst_of(results: list[Accuracy], names: list[str]) -> Accuracy:
    """One :class:`Accuracy` of several outputs: failed if any failed, the largest error."""
    worst = max(results, key=lambda r: (not r.ok, r.max_err))
    detail = "; ".join(f"{n}: {r.detail}" for n, r in zip(names, results, strict=True))
    ok = all(r.ok for r in results)
    return Accuracy(worst.max_err, max(r.ref_max for r in results), ok, detail)


@dataclass(frozen=True)
class AttentionSpec(OpSpec):
    """Causal (bottom-right) attention, q ``[B, Hq, Sq, D]``, k/v ``[B, Hkv, Sk, D]``.

    Eager is transformers' eager formula (:func:`fusedops.baselines.eager_attention`);
    :data:`SDPA` is :func:`fusedops.baselines.sdpa_attention` (on CUDA also each forced SDPA
    backend); ``flash_attn`` is flash-attention's ``flash_attn_func`` where installed.
    ``backward`` times forward + backward (``torch.autograd.grad`` of q, k, v) and checks the
    three gradients; forward cases check the output. Both use the bound of
    :func:`attention_bound`. Above :data:`_FP64_MAX_SCORES` scores (the reference materialises
    them) the forward check covers the last query rows (with the bottom-right mask they attend
    to every key) and the backward check batch 0 and the first kv head with its query heads.
    """

    op: ClassVar[str] = "attention"
    extra_impls: ClassVar[tuple[str, ...]] = (SDPA,)
    optional_impls: ClassVar[tuple[str, ...]] = (
        "sdpa_flash",
        "sdpa_efficient",
        "sdpa_math",
        FLASH_ATTN,
    )
    name: str
    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_k: int
    dim: int
    backward: bool = False
    compile: bool = True

    @property
    def shape(self) -> str:
        return (
            f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Sq={self.seq_q} "
            f"Sk={self.seq_k} D={self.dim}"
        )

    @property
    def axis(self) -> tuple[str, int, str]:
        family = f"{self.name} Hq={self.heads_q} Hkv={self.heads_kv} D={self.dim}"
        if self.seq_q == self.seq_k:  # the batch is free: sweeps hold B x S fixed or B = 1
            return family, self.seq_k, "sequence length"
        return f"{family} B={self.batch} Sq={self.seq_q}", self.seq_k, "keys"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = _generator(device)
        q = _randn(gen, dtype, self.batch, self.heads_q, self.seq_q, self.dim)
        k = _randn(gen, dtype, self.batch, self.heads_kv, self.seq_k, self.dim)
        v = _randn(gen, dtype, self.batch, self.heads_kv, self.seq_k, self.dim)
        dout = _randn(gen, dtype, *q.shape)  # [B, Hq, Sq, D]
        for t in (q, k, v):
            t.requires_grad_(self.backward)

        def timed(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
            if self.backward:
                return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

            def forward() -> torch.Tensor:
                with torch.no_grad():
                    return fn(q, k, v)

            return forward

        def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return fusedops.attention(q, k, v, causal=True)

        context = backend_context(backend)
        scores = self.batch * self.heads_q * self.seq_q * self.seq_k
        # Forward checks: the last query rows whose scores fit the fp64 reference.
        rows = max(1, min(self.seq_q, _FP64_MAX_SCORES // max(1, scores // self.seq_q)))
        # Backward checks: everything, or (too many scores) batch 0 and the first group of
        # query heads with its kv head: their gradients depend on nothing else.
        group = self.heads_q // self.heads_kv
        whole = scores <= _FP64_MAX_SCORES
        qh, kh = (slice(None), slice(None)) if whole else (slice(0, group), slice(0, 1))
        b = slice(None) if whole else slice(0, 1)
        sliced_scores = scores if whole else group * self.seq_q * self.seq_k
        oracle_dtype = torch.float64 if sliced_scores <= _FP64_MAX_SCORES else torch.float32

        @computed_once
        def oracle() -> tuple[torch.Tensor, ...]:
            """The reference and the eager formula (the yardstick): the last ``rows`` outputs
            for a forward, the three gradients (of the checked slice) for a backward."""
            if not self.backward:
                with torch.no_grad():
                    qs, ks, vs = q[:, :, -rows:], k, v
                    qo, ko, vo = (t.detach().to(torch.float64) for t in (qs, ks, vs))
                    return reference.attention(qo, ko, vo, causal=True), eager_attention(qs, k, v)
            qs, ks, vs = (t[b, h].detach() for t, h in ((q, qh), (k, kh), (v, kh)))
            douts = dout[b, qh]
            qo, ko, vo = (t.to(oracle_dtype).requires_grad_() for t in (qs, ks, vs))
            expected = torch.autograd.grad(
                reference.attention(qo, ko, vo, causal=True), (qo, ko, vo), douts.to(oracle_dtype)
            )
            qs, ks, vs = (t.requires_grad_() for t in (qs, ks, vs))
            yardstick = torch.autograd.grad(eager_attention(qs, ks, vs), (qs, ks, vs), douts)
            return (*expected, *yardstick)

        def verify(actual: object) -> Accuracy:
            if not self.backward:
                expected, yardstick = oracle()
                out = actual[:, :, -rows:]  # type: ignore[index]
                return attention_bound(out, expected, yardstick, dtype)
            grads = oracle()
            dq, dk, dv = actual  # type: ignore[misc]
            mine = (dq[b, qh], dk[b, kh], dv[b, kh])
            results = [
                attention_bound(a, e, y, dtype)
                for a, e, y in zip(mine, grads[:3], grads[3:], strict=True)
            ]
            return worst_of(results, ["dq", "dk", "dv"])

        def check() -> Accuracy:
            with context():
                return verify(timed(fused)())

        peers: dict[str, Callable[[], Impl]] = {}
        for name, forced in sdpa_backends(device):
            peers[name] = lambda name=name, forced=forced: Impl(
                name, timed(sdpa_attention), context=forced
            )

        def flash() -> Impl:
            return Impl(FLASH_ATTN, timed(flash_attn_causal(device, dtype)))

        peers[FLASH_ATTN] = flash
        skipped: list[Skipped] = []
        impls = standard_impls(
            timed,
            fused,
            eager_attention,
            context=context,
            compile=self.compile,
            extra=[Impl(SDPA, timed(sdpa_attention)), *bind_peers(peers, skipped)],
        )
        flops = counts.attention_flops(
            self.batch, self.heads_q, self.seq_q, self.seq_k, self.dim, backward=self.backward
        )
        return Workload(impls=impls, check=check, verify=verify, flops=flops, skipped=skipped)


@dataclass(frozen=True)
class EmbeddingLayerNormSpec(OpSpec):
    """BERT embeddings: ``LayerNorm(word[ids] + type[tt] + pos[offset + s])``, token types
    random in ``[0, 2)``. Eager is :func:`fusedops.reference.fused_embedding_layernorm`, the
    composition Hugging Face's ``BertEmbeddings`` runs (three ``F.embedding``, two adds,
    ``F.layer_norm``)."""

    op: ClassVar[str] = "embedding_layernorm"
    name: str
    batch: int
    seq: int
    dim: int
    vocab: int
    pos_rows: int = 512
    types: int = 2
    eps: float = 1e-12
    compile: bool = True

    @property
    def shape(self) -> str:
        return f"B={self.batch} S={self.seq} D={self.dim} V={self.vocab} P={self.pos_rows}"

    @property
    def axis(self) -> tuple[str, int, str]:
        return f"{self.name} V={self.vocab} D={self.dim}", self.batch * self.seq, "tokens"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = _generator(device)
        ids = torch.randint(0, self.vocab, (self.batch, self.seq), generator=gen, device=device)
        tt = torch.randint(0, self.types, ids.shape, generator=gen, device=device)
        tables = (
            _randn(gen, dtype, self.vocab, self.dim),  # [V, D]
            _randn(gen, dtype, self.pos_rows, self.dim),  # [P, D]
            _randn(gen, dtype, self.types, self.dim),  # [T, D]
            1 + 0.1 * _randn(gen, dtype, self.dim),  # [D]
            0.1 * _randn(gen, dtype, self.dim),  # [D]
        )
        # On CUDA the index check would synchronize the device (neither baseline checks).
        check = device.type != "cuda"

        def eager(ids: torch.Tensor, tt: torch.Tensor, w, p, t, g, b) -> torch.Tensor:
            return reference.fused_embedding_layernorm(ids, w, p, t, tt, g, b, self.eps)

        def fused(ids: torch.Tensor, tt: torch.Tensor, w, p, t, g, b) -> torch.Tensor:
            return fusedops.fused_embedding_layernorm(
                ids, w, p, t, tt, g, b, self.eps, check_indices=check
            )

        context = backend_context(backend)
        expected = computed_once(lambda: eager(ids, tt, *(x.double() for x in tables)))

        def verify(actual: object) -> Accuracy:
            return compare(actual, expected(), dtype)  # type: ignore[arg-type]

        def check_fn() -> Accuracy:
            with context():
                return verify(fused(ids, tt, *tables))

        n_tokens = self.batch * self.seq
        min_bytes = counts.min_bytes_embedding(
            n_tokens, self.dim, dtype=dtype, id_dtype=ids.dtype, pos_rows=self.seq
        )
        min_bytes += n_tokens * tt.dtype.itemsize + (self.types + 2) * self.dim * dtype.itemsize
        impls = standard_impls(
            forward_calls(ids, tt, *tables), fused, eager, context=context, compile=self.compile
        )
        return Workload(impls=impls, check=check_fn, verify=verify, min_bytes=min_bytes)


# Named sizes. GPT-2 small: the embedding and INT8 targets (learned [2048, D] positional table,
# sqrt(D) scale of Vaswani et al.).
_GPT2 = {"batch": 8, "seq": 1024, "dim": 768, "vocab": 50257}
# Decode: one new token for each of 8 sequences at position 1023: per-call overhead dominates.
_GPT2_DECODE = {"batch": 8, "seq": 1, "dim": 768, "vocab": 50257}

EMBEDDING_LEARNED = EmbeddingSpec("learned", **_GPT2)
EMBEDDING_PROMPT = EmbeddingSpec("learned", batch=1, seq=128, dim=768, vocab=50257)
EMBEDDING_DECODE = EmbeddingSpec("decode", **_GPT2_DECODE, position_offset=1023)
EMBEDDING_BACKWARD = EmbeddingSpec("learned-bwd", **_GPT2, backward=True)
# Transformer-base: sinusoid computed in the kernel, no positional table read.
EMBEDDING_SINUSOID = EmbeddingSpec(
    "sinusoid", batch=8, seq=1024, dim=512, vocab=32000, pos="sinusoid"
)
# Llama-style: plain gather of wide rows (scale 1), no positional term.
EMBEDDING_NO_POS = EmbeddingSpec(
    "no-pos", batch=4, seq=2048, dim=2048, vocab=32000, pos="none", scale=1.0
)

# BERT-base (all-MiniLM-L6-v2: D=384) embeddings of a padded batch.
EMBEDDING_LN_BERT = EmbeddingLayerNormSpec("bert-base", batch=8, seq=128, dim=768, vocab=30522)
EMBEDDING_LN_MINILM = EmbeddingLayerNormSpec("minilm", batch=32, seq=128, dim=384, vocab=30522)

INT8_PER_ROW = Int8Spec("per-row", **_GPT2)
INT8_GROUP128 = Int8Spec("group128", **_GPT2, group_size=128)
INT8_DECODE = Int8Spec("decode", **_GPT2_DECODE)

# Llama-2-7B-like attention layer, GQA 32/8: a 1024-token prefill and one decode step.
_LLAMA_HEADS = {"heads_q": 32, "heads_k": 8, "dim": 128}
ROPE_PREFILL = RopeSpec("prefill", batch=2, seq=1024, **_LLAMA_HEADS)
ROPE_DECODE = RopeSpec("decode", batch=2, seq=1, position_offset=1023, **_LLAMA_HEADS)

# The CPU target (fusedops' CPU path no slower than SDPA), Llama-like GQA 32/8 prefill and a
# KV-cache decode step.
_ATTENTION_CPU = {"batch": 1, "heads_q": 8, "heads_kv": 8, "seq_q": 1024, "seq_k": 1024, "dim": 64}
_PREFILL = {"batch": 2, "heads_q": 32, "heads_kv": 8, "seq_q": 2048, "seq_k": 2048, "dim": 128}
ATTENTION_CAUSAL = AttentionSpec("causal", **_ATTENTION_CPU)
ATTENTION_CAUSAL_BACKWARD = AttentionSpec("causal-fwd-bwd", **_ATTENTION_CPU, backward=True)
ATTENTION_PREFILL = AttentionSpec("prefill", **_PREFILL)
ATTENTION_PREFILL_BACKWARD = AttentionSpec("prefill-fwd-bwd", **_PREFILL, backward=True)
ATTENTION_DECODE = AttentionSpec(
    "decode", batch=8, heads_q=32, heads_kv=8, seq_q=1, seq_k=4096, dim=128
)

# Small sizes for Triton's interpreter (the demo without a GPU): kernels run in numpy there.
EMBEDDING_SMALL = EmbeddingSpec("learned", batch=2, seq=64, dim=128, vocab=1000, compile=False)
EMBEDDING_SMALL_SINUSOID = EmbeddingSpec(
    "sinusoid", batch=2, seq=64, dim=128, vocab=1000, pos="sinusoid", compile=False
)
ROPE_SMALL = RopeSpec("small", batch=1, heads_q=9, heads_k=3, seq=16, dim=64, compile=False)
ATTENTION_SMALL = AttentionSpec(
    "small", batch=1, heads_q=4, heads_kv=2, seq_q=64, seq_k=64, dim=64, compile=False
)
