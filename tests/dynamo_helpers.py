"""What the torch.compile tests of the ops share: a compiled function that really compiles
(cache reset, counted) and the kernel backend each traced custom-op call runs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._dynamo.testing import CompileCounterWithBackend

KERNEL_BACKENDS = ("cpp", "triton", "reference")


def compile_counted(
    fn: Callable, *, dynamic: bool = True
) -> tuple[Callable, CompileCounterWithBackend]:
    """``fn`` compiled into one graph (``fullgraph=True``) with the ``aot_eager`` backend
    (forward and backward traced, no code generated), and the counter of its compiled frames
    and graphs. Dynamo's caches are reset first: fusedops' backend choice is a traced
    constant, so a graph traced under another backend must never be reused."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=counter, dynamic=dynamic, fullgraph=True), counter


def op_backends(counter: CompileCounterWithBackend, op: torch._ops.OpOverload) -> list[str]:
    """The kernel backend argument (``"cpp"``, ``"triton"``...) of every call of custom op
    ``op`` in the graphs ``counter`` has seen, in order."""
    return [
        arg
        for gm in counter.graphs
        for node in gm.graph.nodes
        if node.target is op
        for arg in node.args
        if isinstance(arg, str) and arg in KERNEL_BACKENDS
    ]
