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
#include <cstring>

#include "fusedops_math.h"

namespace fusedops {

// Element types of the scales, positional table and output (the kernels are type-erased over
// them; the integer values are part of the launcher ABI).
enum class FloatKind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// ---------------------------------------------------------------------------------------------
// Bit casts and 16-bit float conversions (branch-free, so CPU loops over D vectorize; exact:
// the same functions as the fp32 embedding kernels in embedding_cpu.cpp).
FUSEDOPS_HD inline uint32_t i8_f32_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
#endif
}
FUSEDOPS_HD inline float i8_f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
#endif
}

// bf16 -> fp32: the top half of an fp32.
FUSEDOPS_HD inline float bf16_bits_to_f32(uint16_t h) {
  return i8_f32_from_bits(static_cast<uint32_t>(h) << 16);
}

// fp16 -> fp32 (subnormals through an int->float conversion, immune to denormals-are-zero).
FUSEDOPS_HD inline float half_bits_to_f32(uint16_t hv) {
  const uint32_t h = hv;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const uint32_t sub =
      i8_f32_bits(mul_rn(static_cast<float>(static_cast<int32_t>(em)), 0x1p-24f));
  const uint32_t inf_nan = 0u - static_cast<uint32_t>(em >= 0x7c00u);
  const uint32_t normal = (em << 13) + 0x38000000u + (inf_nan & 0x38000000u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(em < 0x400u);
  return i8_f32_from_bits(sign | (is_sub & sub) | (~is_sub & normal));
}

// fp32 -> bf16, round to nearest even; NaN -> quiet NaN with its sign.
FUSEDOPS_HD inline uint16_t f32_to_bf16_bits(float v) {
  const uint32_t x = i8_f32_bits(v);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t is_nan = 0u - static_cast<uint32_t>((x & 0x7fffffffu) > 0x7f800000u);
  return static_cast<uint16_t>((is_nan & ((x >> 16) | 0x40u)) | (~is_nan & rounded));
}

// fp32 -> fp16, round to nearest even; overflow -> inf; NaN -> quiet NaN.
FUSEDOPS_HD inline uint16_t f32_to_half_bits(float v) {
  const uint32_t x = i8_f32_bits(v);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  // Below 2^-14 the result is subnormal: adding 0.5f leaves an ulp of 2^-24, the fp16
  // subnormal step, so the FPU does the round-to-nearest-even.
  const uint32_t sub = i8_f32_bits(add_rn(i8_f32_from_bits(ax), 0.5f)) - 0x3f000000u;
  const uint32_t normal = (ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u) >> 13;
  const uint32_t is_nan = 0u - static_cast<uint32_t>(ax > 0x7f800000u);
  const uint32_t is_inf = 0u - static_cast<uint32_t>(ax >= 0x477ff000u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(ax < 0x38800000u);
  uint32_t mag = (is_sub & sub) | (~is_sub & normal);
  mag = (is_inf & 0x7c00u) | (~is_inf & mag);
  mag = (is_nan & 0x7e00u) | (~is_nan & mag);
  return static_cast<uint16_t>(sign | mag);
}

// Element i of a type-erased float array as fp32.
FUSEDOPS_HD inline float load_as_f32(const void* base, FloatKind kind, int64_t i) {
  if (kind == FloatKind::kF32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return kind == FloatKind::kF16 ? half_bits_to_f32(h) : bf16_bits_to_f32(h);
}

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

// The sinusoid pair (P[pos, 2i], P[pos, 2i + 1]) for positions in [0, 2^16) — the limit the
// bindings enforce — where the fp32 angle is at most 2^16 < kSinCosFastLimit, so the branch-free
// fast path alone is exact (no libm call: on the GPU that keeps the kernel free of local memory).
// Same values as sinusoid_value() of fusedops_math.h for those positions.
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
  int64_t qweight_row_stride = 0;
  int64_t dim = 0;                  // D
  const void* scales = nullptr;     // [num_rows, num_groups] of scales_kind, row stride below
  FloatKind scales_kind = FloatKind::kF32;
  int64_t num_groups = 1;           // G (D % G == 0); group size D / G
  int64_t scales_row_stride = 1;
  float scale = 1.0f;
  int pos_mode = 0;                 // 0 none, 1 learned, 2 sinusoid
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

// The token row of flat token n and its position (positions validated by the caller).
FUSEDOPS_HD inline int64_t int8_token_id(const Int8EmbeddingArgs& a, int64_t n) {
  return a.ids_int64 ? static_cast<const int64_t*>(a.ids)[n]
                     : static_cast<int64_t>(static_cast<const int32_t*>(a.ids)[n]);
}
FUSEDOPS_HD inline int64_t int8_token_position(const Int8EmbeddingArgs& a, int64_t n) {
  if (a.positions == nullptr) return a.position_offset + n % a.seq_len;
  return a.ids_int64 ? static_cast<const int64_t*>(a.positions)[n]
                     : static_cast<int64_t>(static_cast<const int32_t*>(a.positions)[n]);
}

}  // namespace fusedops
