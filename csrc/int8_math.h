// INT8 embedding: the per-element arithmetic and the type-erased kernel arguments shared by the
// CPU kernel (int8_embedding_cpu.cpp) and the CUDA kernel (int8_embedding_cuda_kernel.cu).
//
// Torch-free and `FUSEDOPS_HD` like fusedops_math.h, so the CPU tests exercise the exact code a
// GPU kernel runs. Rounding contract (python/fusedops/reference.py is the oracle):
//   w'  = fp32(float(q) * float(scales[row, d / group]))     dequantized value, one rounding
//   out = cast(fused_value(w', scale, P))                     (w' * scale) + P, no FMA
// where cast is round-to-nearest-even to fp32/fp16/bf16 and P is the positional value in fp32
// (learned row read as fp32, or the sinusoid of fusedops_math.h), absent -> w' * scale.
#pragma once

#include <cstdint>

#include "float_convert.h"
#include "fusedops_math.h"
#include "lookup_constants.h"

namespace fusedops {

// ---------------------------------------------------------------------------------------------
// Dequantization and the fused value.

// w' = float(q) * s (float(q) is exact; one rounding).
FUSEDOPS_HD inline float dequant_value(int8_t q, float group_scale) {
  return mul_rn(static_cast<float>(q), group_scale);
}

// The int8 embedding value before the output cast: dequantize, scale, add the positional term.
FUSEDOPS_HD inline float int8_fused_value(int8_t q, float group_scale, float scale, float p) {
  return fused_value(dequant_value(q, group_scale), scale, p);
}
FUSEDOPS_HD inline float int8_fused_value(int8_t q, float group_scale, float scale) {
  return fused_value(dequant_value(q, group_scale), scale);
}

// The sinusoid pair (P[pos, 2i], P[pos, 2i + 1]) for positions in [0, kSinusoidMaxPosition), where
// the fp32 angle is at most 2^16 < kSinCosFastLimit, so the branch-free fast path alone is exact
// (no libm call: on the GPU that keeps the kernel free of local memory). Same values as
// sinusoid_value() of fusedops_math.h for those positions.
FUSEDOPS_HD inline void sinusoid_pair_fast(int64_t pos, int64_t i, float coef, float* p_even,
                                           float* p_odd) {
  const double x = static_cast<double>(sinusoid_angle(pos, sinusoid_inv_freq(i, coef)));
  double s, c;
  sincos_fast(x, &s, &c);
  *p_even = static_cast<float>(s);
  *p_odd = static_cast<float>(c);
}

// ---------------------------------------------------------------------------------------------
// Type-erased kernel arguments (CPU and CUDA launchers take the same struct).
struct Int8EmbeddingArgs {
  const void* ids = nullptr;        // [num_tokens] int32 or int64 (ids_int64); row n has s = n % S
  bool ids_int64 = true;
  int64_t num_tokens = 0;           // N
  int64_t seq_len = 1;              // S (N % S == 0)
  const int8_t* qweight = nullptr;  // [num_rows, dim], element (r, d) at r * qweight_row_stride + d
  int64_t num_rows = 0;             // V
  int64_t vocab_start = 0;          // id t reads row t - vocab_start (a vocabulary shard)
  int64_t qweight_row_stride = 0;
  int64_t dim = 0;                  // D
  const void* scales = nullptr;     // [num_rows, num_groups] of scales_kind, row stride below
  FloatKind scales_kind = FloatKind::kF32;
  int64_t num_groups = 1;           // G (D % G == 0); group size D / G
  int64_t scales_row_stride = 1;
  float scale = 1.0f;
  PosMode pos_mode = PosMode::kNone;
  const void* pos_weight = nullptr;  // [pos_rows, dim] of pos_kind (learned)
  FloatKind pos_kind = FloatKind::kF32;
  int64_t pos_rows = 0;
  int64_t pos_row_stride = 0;
  const void* positions = nullptr;  // [num_tokens], same index type as ids, or nullptr
  int64_t position_offset = 0;      // pos = position_offset + s when positions is nullptr
  float sinusoid_coef = 0.0f;       // fp32(ln(base) / D)
  void* out = nullptr;              // [num_tokens, dim] contiguous, out_kind
  FloatKind out_kind = FloatKind::kF32;
};

// The id of flat token n and its position (position_offset + s without a positions tensor).
FUSEDOPS_HD inline int64_t int8_token_id(const Int8EmbeddingArgs& a, int64_t n) {
  return a.ids_int64 ? static_cast<const int64_t*>(a.ids)[n]
                     : static_cast<int64_t>(static_cast<const int32_t*>(a.ids)[n]);
}
FUSEDOPS_HD inline int64_t int8_token_position(const Int8EmbeddingArgs& a, int64_t n) {
  if (a.positions == nullptr) return a.position_offset + n % a.seq_len;
  return a.ids_int64 ? static_cast<const int64_t*>(a.positions)[n]
                     : static_cast<int64_t>(static_cast<const int32_t*>(a.positions)[n]);
}

// Positions lie in [0, limit): the learned table's rows, or the sinusoid range.
FUSEDOPS_HD inline int64_t int8_position_limit(const Int8EmbeddingArgs& a) {
  return a.pos_mode == PosMode::kLearned ? a.pos_rows : kSinusoidMaxPosition;
}

// Masking: how both kernels treat indices outside their range. The CPU binding and, by default,
// the CUDA binding reject them before the launch; with check_indices=False the CUDA kernel meets
// them, and with a vocab_start (the table is the shard of rows [vocab_start, vocab_start + V)
// of a larger vocabulary) both kernels meet the other shards' ids. Like fused_embedding's Triton
// kernel, nothing is read outside a table: a token whose row id - vocab_start lies outside
// [0, num_rows) gets a zero token term (q = 0 with scale 0), a position outside
// [0, int8_position_limit) a zero positional term.

// Token n's row of qweight, or -1 when it has none (masked). Unsigned arithmetic: wraps instead
// of overflowing for any id, and one compare checks both ends.
FUSEDOPS_HD inline int64_t int8_token_row(const Int8EmbeddingArgs& a, int64_t n) {
  const uint64_t row =
      static_cast<uint64_t>(int8_token_id(a, n)) - static_cast<uint64_t>(a.vocab_start);
  return row < static_cast<uint64_t>(a.num_rows) ? static_cast<int64_t>(row) : -1;
}
FUSEDOPS_HD inline bool int8_position_in_range(const Int8EmbeddingArgs& a, int64_t pos) {
  return pos >= 0 && pos < int8_position_limit(a);
}

// Token n's row (-1: masked) and position (pos_ok false: no positional term, or a masked one).
struct Int8TokenIndex {
  int64_t row;
  int64_t pos;
  bool pos_ok;
};
FUSEDOPS_HD inline Int8TokenIndex int8_token_index(const Int8EmbeddingArgs& a, int64_t n) {
  Int8TokenIndex t{int8_token_row(a, n), 0, false};
  if (a.pos_mode != PosMode::kNone) {
    t.pos = int8_token_position(a, n);
    t.pos_ok = int8_position_in_range(a, t.pos);
  }
  return t;
}

}  // namespace fusedops
