// Row helpers of the CPU table-lookup kernels (embedding_cpu.cpp, factorized_embedding_cpu.cpp):
// a row converted to fp32, a row scaled plus an optional fp32 positional row and stored as T
// (fused_value: mul then add, one rounding each), and a row pulled toward the cache.
#pragma once

#include <cstdint>

#include "c10_float_convert.h"
#include "fusedops_math.h"
#include "lookup_schedule.h"

namespace fusedops {
namespace cpu {

// dst[k] = fp32(src[k]) for k < n.
template <typename T>
inline void row_to_f32(const T* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = to_f32(src[k]);
}

// out = w * scale (+ p) over dim elements. p == nullptr means no positional term.
template <typename T>
inline void fused_row(T* __restrict out, const T* __restrict w, float scale,
                      const float* __restrict p, int64_t dim) {
  if (p != nullptr) {
    for (int64_t d = 0; d < dim; ++d) out[d] = from_f32<T>(fused_value(to_f32(w[d]), scale, p[d]));
  } else {
    for (int64_t d = 0; d < dim; ++d) out[d] = from_f32<T>(fused_value(to_f32(w[d]), scale));
  }
}

// Prefetch the `bytes` bytes at `row` for reading, one cache line at a time. Gathered rows are
// random in a table far larger than the caches, so the hardware prefetchers cannot predict them.
inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(p + off, 0, 3);
}

}  // namespace cpu
}  // namespace fusedops
