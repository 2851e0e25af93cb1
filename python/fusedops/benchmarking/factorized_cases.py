"""The benchmark spec of the factorized embedding (low-rank table with exact hot rows).

``FactorizedSpec`` times :func:`fusedops.factorized_embedding` against the eager composition
``F.embedding(ids, a) @ b * scale + pos`` (:func:`fusedops.reference.factorized_embedding`,
which also swaps in the hot rows), ``torch.compile`` of it, and ``dense``: the fused lookup of
the dense table the factors stand for (what the factorization trades memory against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import fusedops
from fusedops import reference
from fusedops.benchmarking import counts
from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.cases import (
    attention_bound,
    computed_once,
    forward_calls,
    grads_calls,
    worst_of,
)
from fusedops.benchmarking.harness import Impl, OpSpec, Workload, backend_context, standard_impls

DENSE = "dense"
"""Peer: ``fused_embedding`` of the dense ``[V, D]`` table (``a @ b`` with the hot rows)."""


@dataclass(frozen=True)
class FactorizedSpec(OpSpec):
    """Factorized embedding: ``(a[ids] @ b or hot row) * sqrt(D) + pos_weight[s]``.

    ``a`` [V, rank], ``b`` [rank, D], ``hot`` exact rows (the ``hot`` lowest ids, a stand-in for
    the most frequent tokens), a learned ``[2048, D]`` positional table. ``backward`` times the
    gradients of ``a`` and ``b`` (through a forward done once).
    """

    op: ClassVar[str] = "factorized"
    extra_impls: ClassVar[tuple[str, ...]] = (DENSE,)
    name: str
    batch: int
    seq: int
    dim: int
    vocab: int
    rank: int
    hot: int = 0
    backward: bool = False
    compile: bool = True

    @property
    def shape(self) -> str:
        text = f"B={self.batch} S={self.seq} D={self.dim} V={self.vocab} r={self.rank}"
        return text + (f" K={self.hot}" if self.hot else "")

    @property
    def axis(self) -> tuple[str, int, str]:
        family = f"{self.name} V={self.vocab} D={self.dim} K={self.hot}"
        return family, self.rank, "rank"

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        gen = torch.Generator(device=device).manual_seed(0)
        ids = torch.randint(0, self.vocab, (self.batch, self.seq), generator=gen, device=device)

        def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
            t = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)
            return (t * std).to(dtype)

        a = randn(self.vocab, self.rank)  # [V, r]
        b = randn(self.rank, self.dim, std=self.rank**-0.5)  # [r, D]
        pos_weight = randn(2048, self.dim)  # [P, D]
        hot_ids = torch.arange(self.hot, device=device) if self.hot else None  # [K]
        hot_rows = randn(self.hot, self.dim) if self.hot else None  # [K, D]
        scale = math.sqrt(self.dim)
        kwargs: dict[str, Any] = {"hot_ids": hot_ids, "hot_rows": hot_rows, "scale": scale}
        # On CUDA the id check would synchronize the device (neither baseline checks).
        fused_kwargs = {**kwargs, "check_indices": device.type != "cuda"}

        def eager(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, pos: Any) -> torch.Tensor:
            return reference.factorized_embedding(ids, a, b, pos_weight=pos, **kwargs)

        def fused(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, pos: Any) -> torch.Tensor:
            return fusedops.factorized_embedding(ids, a, b, pos_weight=pos, **fused_kwargs)

        n_tokens = self.batch * self.seq
        if self.backward:
            a.requires_grad_(True)
            b.requires_grad_(True)
            grad_out = randn(self.batch, self.seq, self.dim)  # [B, S, D]
            timed = grads_calls((a, b), grad_out, ids, a, b, pos_weight)
        else:
            timed = forward_calls(ids, a, b, pos_weight)
        min_bytes = counts.min_bytes_factorized_embedding(
            n_tokens,
            self.dim,
            self.rank,
            dtype=dtype,
            pos_rows=min(self.seq, 2048),
            backward=self.backward,
            num_rows=self.vocab,
        )
        context = backend_context(backend)

        @computed_once
        def oracle() -> Any:
            """The same call of the reference on fp64 copies of the tables (fp64 math)."""
            a64 = a.detach().double().requires_grad_(self.backward)
            b64 = b.detach().double().requires_grad_(self.backward)
            hot64 = None if hot_rows is None else hot_rows.double()
            pos64 = pos_weight.double()

            def call(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, pos: Any):
                kw = {**kwargs, "hot_rows": hot64}
                return reference.factorized_embedding(ids, a, b, pos_weight=pos, **kw)

            if not self.backward:
                return call(ids, a64, b64, pos64)
            return grads_calls((a64, b64), grad_out.double(), ids, a64, b64, pos64)(call)()

        @computed_once
        def yardstick() -> Any:
            """The eager formula on the case's own tables (fp32 math for every dtype)."""
            return timed(eager)()

        def verify(actual: object) -> Accuracy:
            # Each output element sums r products: the bound of a reduction (attention's), not
            # one ulp of the output: at most twice the eager formula's error plus a floor.
            if not self.backward:
                return attention_bound(actual, oracle(), yardstick(), dtype)  # type: ignore[arg-type]
            results = [
                attention_bound(x, e, y, dtype)
                for x, e, y in zip(actual, oracle(), yardstick(), strict=True)  # type: ignore[call-overload]
            ]
            return worst_of(results, ["grad a", "grad b"])

        def check() -> Accuracy:
            with context():
                return verify(timed(fused)())

        extra: list[Impl] = []
        if not self.backward:
            dense = (a.double() @ b.double()).to(dtype)  # [V, D]
            if hot_ids is not None and hot_rows is not None:
                dense[hot_ids] = hot_rows

            def dense_lookup(ids: torch.Tensor, *_: Any) -> torch.Tensor:
                return fusedops.fused_embedding(
                    ids, dense, scale=scale, pos_weight=pos_weight, check_indices=False
                )

            extra.append(Impl(DENSE, timed(dense_lookup), context=context))
        impls = standard_impls(
            timed, fused, eager, context=context, compile=self.compile, extra=extra
        )
        share = (self.vocab + self.dim) * self.rank / (self.vocab * self.dim)
        note = f"a and b hold {share:.1%} of the dense table's elements"
        return Workload(impls=impls, check=check, verify=verify, min_bytes=min_bytes, note=note)
