// Constants of the table lookups (fused embedding, INT8 embedding), shared by the bindings and the
// CPU and CUDA kernels. python/fusedops/constants.py defines the same values for the Python side;
// fusedops._C exports these as POS_NONE, POS_LEARNED, POS_SINUSOID and SINUSOID_MAX_POSITION, and
// tests/test_cpp_constants.py checks that the two agree. Torch-free (nvcc compiles it alone).
#pragma once

#include <cstdint>

namespace fusedops {

// The positional term of a lookup: the `pos_mode` argument of the ops.
enum class PosMode : int {
  kNone = 0,      // token rows only
  kLearned = 1,   // + a learned table row pos_weight[pos]
  kSinusoid = 2,  // + the sinusoid of Vaswani et al., computed in the kernel
};

// Sinusoid positions lie in [0, kSinusoidMaxPosition): there the kernels' angle reduction is
// exact (fusedops_math.h).
constexpr int64_t kSinusoidMaxPosition = int64_t{1} << 16;

}  // namespace fusedops
