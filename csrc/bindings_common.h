// Helpers of the torch bindings (embedding_bindings.cpp, factorized_embedding_bindings.cpp,
// embedding_layernorm_bindings.cpp, int8_bindings.cpp, int8_bindings_cuda.cpp, rope_bindings.cpp):
// dtype predicates and dispatch, tensor checks, huge-page advice for large outputs, the index
// checks and messages of the table lookups (fused, factorized and INT8 embedding), and the
// positional arguments of the fused and factorized embedding forwards.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "embedding_cpu.h"
#include "float_convert.h"
#include "fusedops_math.h"
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

// AT_DISPATCH over the float dtypes the CPU kernels are instantiated for (is_float_dtype).
#define FUSEDOPS_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                          \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
                    t.device());
}

// A contiguous CPU int32/int64 index tensor.
inline void check_index_tensor(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK_TYPE(is_index_dtype(t.scalar_type()), op, ": ", name,
                   " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// A 2-D float32/float16/bfloat16 CPU tensor. dims follows "must be 2-D" in the message (e.g.
// " [rows, D]", or "").
inline void check_float_matrix(const at::Tensor& t, const char* op, const char* name,
                               const char* dims) {
  check_cpu(t, op, name);
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D", dims, ", got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   " must be float32/float16/bfloat16, got ", t.scalar_type());
}

// Rows that are contiguous (any row stride) in a 2-D tensor.
inline void check_unit_inner_stride(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.size(1) <= 1 || t.stride(1) == 1, op, ": ", name,
                    " must have stride(1) == 1, got strides ", t.strides());
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

// ---------------------------------------------------------------------------------------------
// Forwards of the fused and factorized embedding: input_ids, the positional term, the index
// checks and the kernel arguments they share (cpu::LookupFwdArgs).

// input_ids: a contiguous CPU int32/int64 tensor [..., S] with at least one dim.
inline void check_input_ids(const at::Tensor& input_ids, const char* op) {
  check_index_tensor(input_ids, op, "input_ids");
  TORCH_CHECK_VALUE(input_ids.dim() >= 1, op, ": input_ids must have at least 1 dim, got ",
                    input_ids.dim());
}

// The learned positional table pos_mode 1 asks for (the caller checks its layout).
inline const at::Tensor& learned_table(const std::optional<at::Tensor>& pos_weight,
                                       const char* op) {
  TORCH_CHECK_VALUE(pos_weight.has_value(), op, ": pos_mode 1 (learned) needs pos_weight");
  return *pos_weight;
}

// A forward's positional term and the index tensors its kernel reads. ids and positions share
// one index dtype (one per kernel instantiation): the int32 one is widened when they differ.
struct LookupPositions {
  PosMode mode = PosMode::kNone;
  const at::Tensor* pos_weight = nullptr;  // kLearned: the [pos_rows, D] table
  int64_t pos_rows = 0;
  int64_t position_offset = 0;
  double sinusoid_base = 0.0;
  at::Tensor ids;        // input_ids [..., S], or its int64 copy
  at::Tensor positions;  // explicit positions [..., S]; undefined: position_offset + s
};

// The LookupPositions of a forward whose learned table (kLearned) the caller has validated:
// checks the sinusoid base and the explicit positions (used with any positional term: CPU
// int32/int64, contiguous, input_ids' shape). pos_weight must outlive the result.
inline LookupPositions lookup_positions(const char* op, const at::Tensor& input_ids, PosMode mode,
                                        const std::optional<at::Tensor>& pos_weight,
                                        const std::optional<at::Tensor>& positions,
                                        int64_t position_offset, double sinusoid_base) {
  LookupPositions lp;
  lp.mode = mode;
  if (mode == PosMode::kLearned) {
    lp.pos_weight = &*pos_weight;
    lp.pos_rows = pos_weight->size(0);
  }
  if (mode == PosMode::kSinusoid) check_sinusoid_base(sinusoid_base, op);
  lp.position_offset = position_offset;
  lp.sinusoid_base = sinusoid_base;
  lp.ids = input_ids;
  if (mode != PosMode::kNone && positions.has_value()) {
    check_index_tensor(*positions, op, "positions");
    TORCH_CHECK_VALUE(positions->sizes() == input_ids.sizes(), op, ": positions shape ",
                      positions->sizes(), " must equal input_ids shape ", input_ids.sizes());
    lp.positions = *positions;
    if (lp.positions.scalar_type() != lp.ids.scalar_type()) {
      lp.ids = lp.ids.to(at::kLong);
      lp.positions = lp.positions.to(at::kLong);
    }
  }
  return lp;
}

// Every index of a forward with at least one token in range, before anything is written: the
// ids in [0, *id_rows) (nullopt: not checked here, e.g. the ids of a vocabulary shard, which
// its caller checked against the whole vocabulary), and the explicit positions or
// position_offset + s for s < S in the positional range. op: the public op named in the
// IndexError.
inline void check_lookup_indices(const char* op, const LookupPositions& lp,
                                 std::optional<int64_t> id_rows) {
  const int64_t n = lp.ids.numel();
  AT_DISPATCH_INDEX_TYPES(lp.ids.scalar_type(), "lookup_index_check", [&] {
    if (id_rows.has_value()) {
      check_ids_cpu<index_t>(op, lp.ids.const_data_ptr<index_t>(), n, *id_rows);
    }
    if (lp.positions.defined()) {
      check_positions_cpu<index_t>(op, lp.positions.const_data_ptr<index_t>(), n, lp.mode,
                                   lp.pos_rows);
    }
  });
  if (lp.mode != PosMode::kNone && !lp.positions.defined()) {
    check_position_offset(op, lp.position_offset, lp.ids.size(-1), lp.mode, lp.pos_rows);
  }
}

// The cpu::LookupFwdArgs fields (tokens, scale, positional term, output) of a validated forward
// writing out [..., S, D].
template <typename T, typename I>
void set_lookup_args(cpu::LookupFwdArgs<T, I>& args, const LookupPositions& lp, double scale,
                     at::Tensor& out) {
  args.ids = lp.ids.const_data_ptr<I>();
  args.num_tokens = lp.ids.numel();
  args.seq_len = lp.ids.size(-1);
  args.dim = out.size(-1);
  args.scale = static_cast<float>(scale);
  args.pos_mode = lp.mode;
  if (lp.mode == PosMode::kLearned) {
    args.pos_weight = lp.pos_weight->const_data_ptr<T>();
    args.pos_rows = lp.pos_rows;
    args.pos_row_stride = lp.pos_weight->stride(0);
  }
  args.positions = lp.positions.defined() ? lp.positions.const_data_ptr<I>() : nullptr;
  args.position_offset = lp.position_offset;
  args.sinusoid_coef =
      lp.mode == PosMode::kSinusoid ? sinusoid_coef(lp.sinusoid_base, args.dim) : 0.0f;
  args.out = out.mutable_data_ptr<T>();
}

}  // namespace fusedops
