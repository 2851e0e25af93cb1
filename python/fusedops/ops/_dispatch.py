"""Running an op on its resolved backend: implementation tables and the eager shortcut.

Each op module maps backend names to implementations (``{"cpp": ..., "triton": ...}``) and
its custom op runs ``implementation(op, table, backend)(...)``. :func:`run` calls a custom op;
eager calls skip the op's Python dispatch (tens of microseconds without autograd, over a
hundred with it: more than a decode-sized kernel) and compute the same thing: the op's
function directly, or, when autograd must record the call, the op's own autograd formula as an
``autograd.Function``. Under ``torch.compile`` / ``torch.export`` or a dispatch mode (fake
tensors) the custom op itself runs, so tracing sees one opaque op with its fake impl.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def implementation(op: str, table: Mapping[str, Callable], backend: str) -> Callable:
    """``table[backend]``; ``ValueError`` naming ``op`` for a backend it does not have."""
    impl = table.get(backend)
    if impl is None:
        raise ValueError(f"{op}: unknown kernel backend {backend!r}")
    return impl


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must record this call: grad mode on and an input requires grad."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def runs_eagerly() -> bool:
    """True outside ``torch.compile`` / ``torch.export`` tracing and any dispatch mode (fake
    tensors, ``make_fx``): an op's function may then be called directly."""
    return not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0


def autograd_function(
    name: str, function: Callable, setup_context: Callable, backward: Callable
) -> type[torch.autograd.Function]:
    """The autograd formula registered on a custom op (``function`` is the op's function) as
    an ``autograd.Function``: same values, same gradients, same double-backward behaviour (the
    backward runs the ops it would run under the custom op).

    The Function has the classic ``forward(ctx, *args)`` form: one with a separate
    ``setup_context`` goes through functorch's dispatch, several times the cost per call.
    """

    def forward(ctx, *args):
        output = function(*args)
        setup_context(ctx, args, output)
        return output

    return type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def run(
    op: Callable,
    function: Callable,
    grad: bool,
    *args: object,
    autograd: type[torch.autograd.Function] | None = None,
):
    """``op(*args)``, where ``op`` is a custom op of ``function``; eagerly ``function(*args)``
    when ``grad`` is False, ``autograd.apply(*args)`` when it is True and the op has one."""
    if runs_eagerly():
        if not grad:
            return function(*args)
        if autograd is not None:
            return autograd.apply(*args)
    return op(*args)
