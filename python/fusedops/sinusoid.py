"""The scalar from which every sinusoid implementation forms its angles.

``P[pos, 2i] = sin(pos * inv_freq[i])`` and ``P[pos, 2i + 1] = cos(pos * inv_freq[i])`` with
``inv_freq[i] = fp32(exp(-2i * c))`` and ``c = fp32(ln(base) / D)`` (see
:func:`fusedops.reference.sinusoid_table`, the spec): ``c`` is the only number the kernels get.
"""

from __future__ import annotations

import math

import torch


def sinusoid_coefficient(dim: int, base: float = 10000.0) -> float:
    """``ln(base) / dim`` rounded once to fp32, e.g. ``sinusoid_coefficient(768)``.

    Traceable by ``torch.compile`` with static or symbolic ``dim`` (the fp32 rounding is a
    0-d tensor read back as a Python float), so the reference runs compiled with
    ``dynamic=True`` too; the kernels call it outside tracing, inside their custom ops.
    """
    return float(torch.tensor(math.log(base) / dim, dtype=torch.float32))
