"""Constants shared by the argument checks, the Triton kernels and the C++/CUDA kernels.

The C++ side mirrors these in ``csrc/lookup_constants.h``; a test compares the two.
"""

from __future__ import annotations

# Positional term of the table lookups (``fused_embedding``, ``int8_embedding``): the kernels'
# ``pos_mode`` argument.
POS_NONE = 0  # token rows only
POS_LEARNED = 1  # + a learned table row pos_weight[pos]
POS_SINUSOID = 2  # + the sinusoid of Vaswani et al., computed in the kernel

# Sinusoid positions lie in [0, SINUSOID_MAX_POSITION): there the kernels' angle reduction is
# exact, so the result is within ~1e-7 of sin/cos of the fp32 angle.
SINUSOID_MAX_POSITION = 1 << 16

# log2(e): the attention kernels run their softmax in the exp2 domain.
LOG2E = 1.4426950408889634
