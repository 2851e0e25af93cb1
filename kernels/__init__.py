"""Triton kernels and their launchers (no autograd, no modules).

Triton decides at decoration time whether a kernel runs compiled or in its interpreter, so
``INTERPRET`` records the mode these kernels were created in: CPU tensors can run them only
when it is true (``TRITON_INTERPRET=1`` set before ``fusedops`` is imported).
"""

from __future__ import annotations

import triton

INTERPRET: bool = bool(triton.knobs.runtime.interpret)
