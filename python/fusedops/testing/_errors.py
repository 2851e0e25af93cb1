"""The exception raised by `fusedops.testing.gpu_compile` (kept apart so every helper module can
raise it without importing the public API module)."""

from __future__ import annotations

__all__ = ["GpuCompileError"]


class GpuCompileError(RuntimeError):
    """A kernel failed to compile or assemble for a GPU target (message holds the cause)."""


def _exception_text(exc: BaseException) -> str:
    """``exc``'s message followed by those of the exceptions that caused it, never empty.

    Triton's ``CompilationError`` (and others) may carry little text of their own and wrap the
    real error (e.g. the ValueError from ``tl.arange``) as ``__cause__``; a message is added only
    when the text so far does not already contain it.
    """
    text = str(exc).strip() or type(exc).__name__
    seen = {id(exc)}
    cur: BaseException | None = exc
    while cur is not None:
        nxt = cur.__cause__
        if nxt is None and not cur.__suppress_context__:
            nxt = cur.__context__
        cur = nxt
        if cur is None or id(cur) in seen:
            break
        seen.add(id(cur))
        msg = str(cur).strip()
        if (msg or type(cur).__name__) not in text:
            text += f"\n  caused by {type(cur).__name__}" + (f": {msg}" if msg else "")
    return text
