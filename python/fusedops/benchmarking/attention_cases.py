"""Benchmark specs of the decoder attention variants: sliding window (:class:`WindowSpec`),
packed sequences (:class:`VarlenSpec`) and one KV-cache decode step (:class:`DecodeSpec`).

``WindowSpec``: ``attention(..., sliding_window=w)`` against SDPA with the explicit window mask
(built once, outside the timing), the eager formula with that mask and, on CUDA,
flash-attention with ``window_size=(w - 1, 0)``; TFLOP/s count only the scores inside the window.
``VarlenSpec``: ``attention_varlen`` against a loop of per-sequence SDPA and eager calls.
``DecodeSpec``: ``attention_with_kvcache`` appending the new token at slot ``Sk - 1`` of every
sequence (the cache is full afterwards; repeating the call rewrites the same slot) against what a
plain PyTorch cache does (write the slot, gather a paged cache into a dense one, SDPA or the
eager formula with a key mask) and flash-attention's ``flash_attn_with_kvcache``. Decode is
memory-bound: GB/s count the cache read once plus q, out and the new k/v.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

import fusedops
from fusedops import reference
from fusedops.baselines import eager_attention, sdpa_attention
from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.cases import (
    SDPA,
    AttentionSpec,
    attention_bound,
    bind_peers,
    computed_once,
)
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
    PeerUnavailable,
    flash_attn_causal,
    flash_attn_kvcache,
)
from fusedops.benchmarking.results import NOT_RUNNABLE
from fusedops.masks import attention_mask

SDPA_MASK = "sdpa-mask"
"""Baseline: SDPA given the explicit boolean mask of the variant."""


def masked_eager(q, k, v, mask):
    """Transformers' eager formula with an explicit boolean mask broadcast to ``[B, H, Sq,
    Sk]``: k/v repeated for GQA, scores materialised, softmax in fp32."""
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
    extra_impls: ClassVar[tuple[str, ...]] = (SDPA_MASK,)
    optional_impls: ClassVar[tuple[str, ...]] = (FLASH_ATTN,)
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

    @property
    def axis(self) -> tuple[str, int, str]:
        family = f"{self.name} B={self.batch} H={self.heads} D={self.dim} w={self.window}"
        return family, self.seq, "sequence length"

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

        def verify(actual: object) -> Accuracy:
            with torch.no_grad():
                expected = reference.attention(q.float(), k.float(), v.float(), sliding_window=w)
                return attention_bound(actual, expected, masked_eager(q, k, v, mask), dtype)  # type: ignore[arg-type]

        def check() -> Accuracy:
            with torch.no_grad(), context():
                return verify(fused(q, k, v))

        def flash() -> Impl:
            func = flash_attn_causal(device, dtype, window=w)
            return Impl(FLASH_ATTN, _no_grad(lambda: func(q, k, v)))

        skipped: list[Skipped] = []
        sdpa = Impl(SDPA_MASK, _no_grad(lambda: F.scaled_dot_product_attention(q, k, v, mask)))
        impls = standard_impls(lambda fn: _no_grad(lambda: fn(q, k, v)), fused,
                               lambda q, k, v: masked_eager(q, k, v, mask), context=context,
                               compile=self.compile,
                               extra=[sdpa, *bind_peers({FLASH_ATTN: flash}, skipped)])  # fmt: skip
        # Scores inside the window: query i sees min(i + 1, w) keys.
        pairs = sum(min(i + 1, w) for i in range(self.seq))
        flops = 4 * self.batch * self.heads * pairs * self.dim
        return Workload(impls=impls, check=check, verify=verify, flops=flops, skipped=skipped)


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

    @property
    def axis(self) -> tuple[str, int, str]:
        family = f"{self.name} N={len(self.lengths)} H={self.heads} D={self.dim}"
        return family, sum(self.lengths), "tokens"

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

        def verify(actual: object) -> Accuracy:
            with torch.no_grad():
                expected = reference.attention_varlen(q.double(), k.double(), v.double(), cu, cu)
                yardstick = per_sequence(eager_attention)(q, k, v)
                return attention_bound(actual, expected, yardstick, dtype)  # type: ignore[arg-type]

        def check() -> Accuracy:
            with torch.no_grad(), context():
                return verify(fused(q, k, v))

        sdpa = Impl(SDPA, _no_grad(lambda: per_sequence(sdpa_attention)(q, k, v)))
        impls = standard_impls(lambda fn: _no_grad(lambda: fn(q, k, v)), fused,
                               per_sequence(eager_attention), context=context,
                               compile=self.compile, extra=[sdpa])  # fmt: skip
        flops = sum(4 * self.heads * n * n * self.dim // 2 for n in self.lengths)
        return Workload(impls=impls, check=check, verify=verify, flops=flops)


@dataclass(frozen=True)
class DecodeSpec(OpSpec):
    """One decode step over a full cache of ``seq_k`` keys per sequence: q ``[B, 1, Hq, D]``,
    a dense ``[B, Sk, Hkv, D]`` or paged (``block_size``, blocks shuffled) cache, split-K count
    ``num_splits`` (0: the heuristic, 1: off). On CPU fusedops runs its plain-PyTorch path, where
    the split count does not apply."""

    op: ClassVar[str] = "attention_decode"
    extra_impls: ClassVar[tuple[str, ...]] = (SDPA,)
    optional_impls: ClassVar[tuple[str, ...]] = (FLASH_ATTN,)
    name: str
    batch: int
    seq_k: int
    heads_q: int = 8
    heads_kv: int = 2
    dim: int = 128
    block_size: int = 0  # 0: dense cache
    num_splits: int = 0  # 0: the heuristic; 1: split-K off
    compile: bool = False

    @property
    def shape(self) -> str:
        cache = f"paged bs={self.block_size}" if self.block_size else "dense"
        splits = "auto" if self.num_splits == 0 else str(self.num_splits)
        return (
            f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Sk={self.seq_k} D={self.dim} "
            f"{cache} splits={splits}"
        )

    @property
    def axis(self) -> tuple[str, int, str]:
        cache = f"paged bs={self.block_size}" if self.block_size else "dense"
        family = (
            f"{self.name} B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} D={self.dim} {cache}"
        )
        return family, self.seq_k, "cache length"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = torch.Generator(device=device).manual_seed(0)
        b, hq, hkv, sk, d = self.batch, self.heads_q, self.heads_kv, self.seq_k, self.dim

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

        q, k, v = randn(b, 1, hq, d), randn(b, 1, hkv, d), randn(b, 1, hkv, d)
        lens = torch.full((b,), sk - 1, dtype=torch.int32, device=device)
        table = None
        if self.block_size:
            per_seq = math.ceil(sk / self.block_size)
            blocks = torch.randperm(b * per_seq, generator=gen, device=device)
            table = blocks.view(b, per_seq).to(torch.int32)  # [B, max_blocks]
            k_cache = randn(b * per_seq, self.block_size, hkv, d)
            v_cache = randn(b * per_seq, self.block_size, hkv, d)
        else:
            k_cache, v_cache = randn(b, sk, hkv, d), randn(b, sk, hkv, d)
        key_mask = torch.arange(sk, device=device) < (lens + 1).unsqueeze(1)  # [B, Sk]
        mask = key_mask.view(b, 1, 1, sk)
        rows = torch.arange(b, device=device)

        def fused() -> torch.Tensor:
            return fusedops.attention_with_kvcache(
                q, k_cache, v_cache, k, v, cache_seqlens=lens, block_table=table,
                num_splits=self.num_splits,
            )  # fmt: skip

        def dense_keys() -> tuple[torch.Tensor, torch.Tensor]:
            """Write the slot, return ``[B, Hkv, Sk, D]`` keys/values (paged: a gather)."""
            if table is None:
                k_cache[rows, lens.long()] = k[:, 0]
                v_cache[rows, lens.long()] = v[:, 0]
                return k_cache.transpose(1, 2), v_cache.transpose(1, 2)
            pos = lens.long()
            block = table.long()[rows, pos // self.block_size]
            k_cache[block, pos % self.block_size] = k[:, 0]
            v_cache[block, pos % self.block_size] = v[:, 0]
            keys = k_cache[table.long()].view(b, -1, hkv, d)[:, :sk]
            values = v_cache[table.long()].view(b, -1, hkv, d)[:, :sk]
            return keys.transpose(1, 2), values.transpose(1, 2)

        def sdpa() -> torch.Tensor:
            keys, values = dense_keys()
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=hq != hkv
            )
            return out.transpose(1, 2)

        def eager() -> torch.Tensor:
            keys, values = dense_keys()
            return masked_eager(q.transpose(1, 2), keys, values, mask).transpose(1, 2)

        context = backend_context(backend)

        @computed_once
        def oracle() -> tuple[torch.Tensor, torch.Tensor]:
            """The reference (fp32 math, per sequence; its cache write is the same slot every
            implementation writes) and the eager formula (the yardstick)."""
            with torch.no_grad():
                expected = reference.attention_with_kvcache(
                    q, k_cache, v_cache, k, v, cache_seqlens=lens, block_table=table
                )
                return expected, eager()

        def verify(actual: object) -> Accuracy:
            return attention_bound(actual, *oracle(), dtype)  # type: ignore[arg-type]

        def check() -> Accuracy:
            with torch.no_grad(), context():
                return verify(fused())

        def flash() -> Impl:
            func = flash_attn_kvcache(device, dtype)
            if table is not None and self.block_size % 256:
                size = self.block_size
                reason = f"flash_attn paged caches need block_size % 256 == 0, not {size}"
                raise PeerUnavailable(NOT_RUNNABLE, reason)

            def run() -> torch.Tensor:
                return func(q, k_cache, v_cache, k, v, cache_seqlens=lens, block_table=table)

            return Impl(FLASH_ATTN, _no_grad(run))

        skipped: list[Skipped] = []
        impls = standard_impls(
            lambda fn: fn,
            _no_grad(fused),
            _no_grad(eager),
            context=context,
            compile=False,
            extra=[Impl(SDPA, _no_grad(sdpa)), *bind_peers({FLASH_ATTN: flash}, skipped)],
        )
        elements = 2 * b * sk * hkv * d + 2 * b * hq * d + 2 * b * hkv * d
        return Workload(impls=impls, check=check, verify=verify,
                        min_bytes=elements * dtype.itemsize, skipped=skipped)  # fmt: skip


# Sliding-window prefill at 8k tokens with a 1k window (Mistral's pattern at a size the CPU
# runs in seconds), next to dense causal attention of the same size.
_LONG = {"batch": 1, "heads_q": 4, "heads_kv": 4, "seq_q": 8192, "seq_k": 8192, "dim": 64}
WINDOW_8K = WindowSpec("window-8k-w1k", batch=1, heads=4, seq=8192, dim=64, window=1024)
CAUSAL_8K = AttentionSpec("causal-8k", **_LONG, compile=False)
# Packed prefill: 8 sequences of mixed lengths (4k tokens), Llama-like head dim.
VARLEN = VarlenSpec("varlen-8seq", lengths=(1024, 17, 512, 900, 64, 1024, 300, 255), heads=8,
                    dim=64)  # fmt: skip

# One decode step of Hq=8 / Hkv=2, D=128: batch 1 and 8, caches of 4k and 32k keys, dense and
# paged (block size 256), the split-K heuristic and split-K off.
DECODE_GRID: list[DecodeSpec] = [
    DecodeSpec(f"b{batch}-{seq_k // 1024}k-{kind}" + ("-nosplit" if splits == 1 else ""),
               batch, seq_k, block_size=block_size, num_splits=splits)
    for batch, seq_k in ((1, 4096), (1, 32768), (8, 4096), (8, 32768))
    for kind, block_size in (("dense", 0), ("paged", 256))
    for splits in (0, 1)
]  # fmt: skip
