"""Attention benchmarks: fusedops vs SDPA vs the eager formula (and ``torch.compile`` of it).

``CASES`` is read by ``bench/run.py`` and by pytest-benchmark (``test_attention``). The specs,
FLOP counts and checks are in :mod:`fusedops.benchmarking.cases` (``AttentionSpec``): causal
(bottom-right), GQA without copies; on CPU fusedops' ``cpp`` path is SDPA with that mask.
TFLOP/s count ``4 * B * Hq * Sq * Sk * D / 2``, x3.5 for forward + backward.

Two more specs live here. ``WindowSpec``: sliding-window prefill (``sliding_window=w``) against
SDPA with the explicit window mask (built once, outside the timing) and the eager formula with
that mask; TFLOP/s count only the scores inside the window (``~ 4 * B * Hq * S * w * D``), and a
dense-causal row of the same size sits next to it. ``VarlenSpec``: packed sequences
(``attention_varlen``) against a loop of per-sequence SDPA calls and of the eager formula.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

import fusedops
from fusedops import reference
from fusedops.baselines import eager_attention, sdpa_attention
from fusedops.benchmarking import DECODE, Case, cases
from fusedops.benchmarking.accuracy import Accuracy, max_abs_error
from fusedops.benchmarking.cases import ATTENTION_FLOOR, SDPA
from fusedops.benchmarking.harness import Impl, OpSpec, Workload, backend_context, standard_impls
from fusedops.masks import attention_mask


def _bounded(actual, expected, yardstick, dtype) -> Accuracy:
    """The tests' attention bound: error <= 2 x the eager formula's (same dtype) + floor."""
    err, base = max_abs_error(actual, expected), max_abs_error(yardstick, expected)
    ref_max = expected.abs().max().item()
    bound = 2 * base + ATTENTION_FLOOR[dtype] * max(1.0, ref_max)
    detail = f"max abs error {err:.3g}; bound {bound:.3g} = 2 x eager's {base:.3g} + floor"
    return Accuracy(err, ref_max, err <= bound, detail)


def _masked_eager(q, k, v, mask):
    """Transformers' eager formula with an explicit boolean mask ``[1, 1, Sq, Sk]``."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def _no_grad(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return fn()

    return run


@dataclass(frozen=True)
class WindowSpec(OpSpec):
    """Sliding-window causal prefill, q/k/v ``[B, H, S, D]`` (forward)."""

    op: ClassVar[str] = "attention"
    extra_impls: ClassVar[tuple[str, ...]] = ("sdpa-mask",)
    name: str
    batch: int
    heads: int
    seq: int
    dim: int
    window: int
    compile: bool = False

    @property
    def shape(self) -> str:
        return f"B={self.batch} H={self.heads} S={self.seq} D={self.dim} w={self.window}"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (
            torch.randn(self.batch, self.heads, self.seq, self.dim, generator=gen, device=device,
                        dtype=dtype)
            for _ in range(3)
        )  # fmt: skip
        w = self.window
        mask = attention_mask(self.seq, self.seq, causal=True, key_padding_mask=None,
                              device=device, sliding_window=w)  # fmt: skip
        context = backend_context(backend)

        def fused(q, k, v):
            return fusedops.attention(q, k, v, sliding_window=w)

        def check() -> Accuracy:
            with torch.no_grad():
                with context():
                    actual = fused(q, k, v)
                expected = reference.attention(q.float(), k.float(), v.float(), sliding_window=w)
                return _bounded(actual, expected, _masked_eager(q, k, v, mask), dtype)

        sdpa = Impl("sdpa-mask", _no_grad(lambda: F.scaled_dot_product_attention(q, k, v, mask)))
        impls = standard_impls(lambda fn: _no_grad(lambda: fn(q, k, v)), fused,
                               lambda q, k, v: _masked_eager(q, k, v, mask), context=context,
                               compile=self.compile, extra=[sdpa])  # fmt: skip
        # Scores inside the window: query i sees min(i + 1, w) keys.
        pairs = sum(min(i + 1, w) for i in range(self.seq))
        return Workload(
            impls=impls, check=check, flops=4 * self.batch * self.heads * pairs * self.dim
        )


@dataclass(frozen=True)
class VarlenSpec(OpSpec):
    """Packed causal sequences of ``lengths`` tokens, q/k/v ``[T, H, D]`` (forward)."""

    op: ClassVar[str] = "attention_varlen"
    extra_impls: ClassVar[tuple[str, ...]] = (SDPA,)
    name: str
    lengths: tuple[int, ...]
    heads: int
    dim: int
    compile: bool = False

    @property
    def shape(self) -> str:
        return f"N={len(self.lengths)} T={sum(self.lengths)} H={self.heads} D={self.dim}"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = torch.Generator(device=device).manual_seed(0)
        total = sum(self.lengths)
        q, k, v = (
            torch.randn(total, self.heads, self.dim, generator=gen, device=device, dtype=dtype)
            for _ in range(3)
        )
        cu = torch.tensor([0, *self.lengths], device=device).cumsum(0).to(torch.int32)
        longest = max(self.lengths)
        bounds = cu.tolist()
        context = backend_context(backend)

        def fused(q, k, v):
            return fusedops.attention_varlen(q, k, v, cu, cu, longest, longest)

        def per_sequence(fn):
            def run(q, k, v):
                outs = []
                for a, b in itertools.pairwise(bounds):
                    seq = [x[a:b].transpose(0, 1)[None] for x in (q, k, v)]  # [1, H, S, D]
                    outs.append(fn(*seq)[0].transpose(0, 1))
                return torch.cat(outs)

            return run

        def check() -> Accuracy:
            with torch.no_grad():
                with context():
                    actual = fused(q, k, v)
                expected = reference.attention_varlen(q.double(), k.double(), v.double(), cu, cu)
                yardstick = per_sequence(eager_attention)(q, k, v)
                return _bounded(actual, expected, yardstick, dtype)

        sdpa = Impl(SDPA, _no_grad(lambda: per_sequence(sdpa_attention)(q, k, v)))
        impls = standard_impls(lambda fn: _no_grad(lambda: fn(q, k, v)), fused,
                               per_sequence(eager_attention), context=context,
                               compile=self.compile, extra=[sdpa])  # fmt: skip
        flops = sum(4 * self.heads * n * n * self.dim // 2 for n in self.lengths)
        return Workload(impls=impls, check=check, flops=flops)


# Sliding-window prefill at 8k tokens with a 1k window (Mistral's pattern at a size the CPU
# runs in seconds), next to dense causal attention of the same size.
_LONG = {"batch": 1, "heads_q": 4, "heads_kv": 4, "seq_q": 8192, "seq_k": 8192, "dim": 64}
WINDOW_8K = WindowSpec("window-8k-w1k", batch=1, heads=4, seq=8192, dim=64, window=1024)
CAUSAL_8K = cases.AttentionSpec("causal-8k", **_LONG, compile=False)
# Packed prefill: 8 sequences of mixed lengths (4k tokens), Llama-like head dim.
VARLEN = VarlenSpec("varlen-8seq", lengths=(1024, 17, 512, 900, 64, 1024, 300, 255), heads=8,
                    dim=64)  # fmt: skip

CASES: list[Case] = [
    Case(cases.ATTENTION_CAUSAL, torch.float32),
    Case(cases.ATTENTION_CAUSAL_BACKWARD, torch.float32),
    Case(cases.ATTENTION_PREFILL, torch.bfloat16),
    Case(cases.ATTENTION_PREFILL_BACKWARD, torch.bfloat16),
    Case(cases.ATTENTION_DECODE, torch.bfloat16, tags=DECODE),
    Case(WINDOW_8K, torch.float32),
    Case(CAUSAL_8K, torch.float32),
    Case(VARLEN, torch.float32),
]


def test_attention(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
