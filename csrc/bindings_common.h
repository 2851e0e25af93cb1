// Helpers of the torch bindings (embedding_bindings.cpp, int8_bindings.cpp, int8_bindings_cuda.cpp,
// rope_bindings.cpp): dtype predicates, device checks, huge-page advice for large outputs, and the
// index checks and messages of the table lookups (fused embedding, INT8 embedding).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "embedding_cpu.h"
#include "float_convert.h"
#include "lookup_constants.h"

namespace fusedops {

inline bool is_index_dtype(at::ScalarType t) { return t == at::kInt || t == at::kLong; }

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// The kernels' element kind of a float dtype (is_float_dtype(t) must hold).
inline FloatKind float_kind(at::ScalarType t) {
  return t == at::kFloat ? FloatKind::kF32 : t == at::kHalf ? FloatKind::kF16 : FloatKind::kBF16;
}

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
                    t.device());
}

// A 2-D tensor with unit inner stride (a copy only when the caller passed another layout).
inline at::Tensor unit_inner_stride(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

// A large result is normally fresh mmap'ed memory that nothing has touched yet, and first-touch
// page faults are expensive (on the development VM a 42 MB clone() takes ~20 ms). With
// transparent huge pages in "madvise" mode, asking for them before the first write makes the
// faults 2 MiB instead of 4 KiB. Measured there: the bf16 embedding forward with a 34 MB output
// ~22 -> ~12 ms, RoPE out of place at q [2, 32, 1024, 128] fp32 about half the cost, and for
// the [V, D] gradient table (154 MB for GPT-2) the 4 KiB faults cost about as much as the writes
// themselves. Advisory: failures (THP off, old kernel) are ignored, a small or non-contiguous
// tensor is left alone, and a buffer that is already populated keeps its pages.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 4 * kHuge || !t.is_contiguous()) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// ---------------------------------------------------------------------------------------------
// Table lookups: [..., S] ids -> [..., S, D] rows, plus a positional term (PosMode).

inline PosMode pos_mode_arg(int64_t pos_mode, const char* op) {
  TORCH_CHECK_VALUE(pos_mode >= 0 && pos_mode <= 2, op,
                    ": pos_mode must be 0 (none), 1 (learned) or 2 (sinusoid), got ", pos_mode);
  return static_cast<PosMode>(pos_mode);
}

inline void check_sinusoid_base(double base, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(base) && base > 0.0, op,
                    ": sinusoid_base must be a positive finite number, got ", base);
}

// Positions lie in [0, limit): the learned table's rows, or the sinusoid range.
inline int64_t position_limit(PosMode mode, int64_t pos_rows) {
  return mode == PosMode::kLearned ? pos_rows : kSinusoidMaxPosition;
}

// The output shape [*ids.shape, dim].
inline std::vector<int64_t> lookup_out_shape(const at::Tensor& ids, int64_t dim) {
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(dim);
  return shape;
}

// Throw the IndexError of a bad index, with the same message on every device (value: the first
// bad index).
inline void bad_id(const char* op, int64_t value, int64_t rows) {
  TORCH_CHECK_INDEX(false, op, ": input_ids contains id ", value, " outside [0, ", rows, ")");
}
inline void bad_position(const char* op, int64_t value, PosMode mode, int64_t pos_rows) {
  if (mode == PosMode::kLearned) {
    TORCH_CHECK_INDEX(false, op, ": position ", value, " outside the positional table [0, ",
                      pos_rows, ")");
  }
  TORCH_CHECK_INDEX(false, op, ": sinusoid position ", value, " outside [0, ",
                    kSinusoidMaxPosition, ")");
}

// Host-side range checks of CPU index arrays (one vectorized pass each).
template <typename I>
void check_ids_cpu(const char* op, const I* ids, int64_t n, int64_t rows) {
  const int64_t k = cpu::find_first_outside<I>(ids, n, rows);
  if (k >= 0) bad_id(op, static_cast<int64_t>(ids[k]), rows);
}
template <typename I>
void check_positions_cpu(const char* op, const I* pos, int64_t n, PosMode mode,
                         int64_t pos_rows) {
  const int64_t k = cpu::find_first_outside<I>(pos, n, position_limit(mode, pos_rows));
  if (k >= 0) bad_position(op, static_cast<int64_t>(pos[k]), mode, pos_rows);
}

// Positions offset + s for s in [0, seq) (no positions tensor; seq >= 1): reject the first one
// outside the range. A host-side check of host values: no device access.
inline void check_position_offset(const char* op, int64_t offset, int64_t seq, PosMode mode,
                                  int64_t pos_rows) {
  const int64_t hi = position_limit(mode, pos_rows);
  if (offset < 0 || offset >= hi) bad_position(op, offset, mode, pos_rows);
  // offset + seq - 1 < hi, written without overflow. Learned: the first position past the
  // table; sinusoid: the last position asked for.
  if (seq - 1 >= hi - offset) {
    bad_position(op, mode == PosMode::kLearned ? hi : offset + seq - 1, mode, pos_rows);
  }
}

}  // namespace fusedops
