"""KV-cache decode benchmarks: ``fusedops.attention_with_kvcache`` vs SDPA with an explicit key
mask vs the eager formula.

One decode step: the new token's k/v are appended at slot ``Sk - 1`` of every sequence (the
cache is full afterwards; repeating the call rewrites the same slot) and one query per head
attends the ``Sk`` keys. ``DecodeSpec`` varies batch, cache length, a dense or paged cache
(``block_size`` 256, blocks shuffled) and the split-K count (``splits=auto`` or ``1`` = off).
The baselines do what a plain PyTorch cache does: write the slot, then (paged) gather the
blocks into a dense ``[B, Hkv, Sk, D]`` and attend with a boolean key mask ``[B, 1, 1, Sk]``
(SDPA, GQA without copies; eager: transformers' formula, k/v repeated, scores materialised).
Decode is memory-bound: GB/s count the cache read once (``2 * B * Sk * Hkv * D`` elements) plus
q, out and the new k/v. On CPU fusedops runs its plain-PyTorch path (views of a dense cache, a
gather of a paged one, then SDPA): the split count does not apply there, so the ``splits=1``
rows repeat the ``auto`` ones; the split matters only on the GPU (Triton flash-decoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from bench_attention import _bounded, _masked_eager, _no_grad

import fusedops
from fusedops import reference
from fusedops.benchmarking import DECODE, Case
from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.cases import SDPA
from fusedops.benchmarking.harness import Impl, OpSpec, Workload, backend_context, standard_impls


@dataclass(frozen=True)
class DecodeSpec(OpSpec):
    """One decode step over a full cache of ``seq_k`` keys per sequence."""

    op: ClassVar[str] = "attention_decode"
    extra_impls: ClassVar[tuple[str, ...]] = (SDPA,)
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
            return _masked_eager(q.transpose(1, 2), keys, values, mask).transpose(1, 2)

        context = backend_context(backend)

        def check() -> Accuracy:
            with torch.no_grad():
                with context():
                    actual = fused()
                f32 = [t.float() for t in (q, k_cache, v_cache, k, v)]
                expected = reference.attention_with_kvcache(
                    *f32, cache_seqlens=lens, block_table=table
                )
                yardstick = eager()
            return _bounded(actual, expected, yardstick, dtype)

        impls = standard_impls(
            lambda fn: fn,
            _no_grad(fused),
            _no_grad(eager),
            context=context,
            compile=False,
            extra=[Impl(SDPA, _no_grad(sdpa))],
        )
        elements = 2 * b * sk * hkv * d + 2 * b * hq * d + 2 * b * hkv * d
        return Workload(impls=impls, check=check, min_bytes=elements * dtype.itemsize)


def _cases() -> list[Case]:
    out = []
    for batch, seq_k in ((1, 4096), (1, 32768), (8, 4096), (8, 32768)):
        size = f"b{batch}-{seq_k // 1024}k"
        for kind, block_size in (("dense", 0), ("paged", 256)):
            for splits in (0, 1):
                name = f"{size}-{kind}" + ("-nosplit" if splits == 1 else "")
                spec = DecodeSpec(name, batch, seq_k, block_size=block_size, num_splits=splits)
                out.append(Case(spec, torch.bfloat16, tags=DECODE))
    return out


CASES: list[Case] = _cases()


def test_attention_decode(run_bench, case: Case, impl: str) -> None:
    """One case, one implementation (parametrized and timed by ``bench/conftest.py``)."""
    run_bench(case, impl)
