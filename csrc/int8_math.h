// INT8 embedding: the per-element arithmetic and the type-erased kernel arguments shared by the
// CPU kernel (int8_embedding_cpu.cpp) and the CUDA kernel (int8_embedding_cuda_kernel.cu).
//
// Torch-free and `FUSEDOPS_HD` like fusedops_math.h, so the CPU tests exercise the exact code a
// GPU kernel runs. Rounding contract (python/fusedops/reference.py is the oracle):
//   w'  = fp32(float(q) * float(scales[row, d / group]))     dequantized value, one rounding
//   out = cast(fused_value(w', scale, P))                     (w' * scale) + P, no FMA
// where cast is round-to-nearest-even to fp32/fp16/bf16 and P is the positional value in fp32
// (learned row read as fp32, or the fp32 sinusoid below), absent -> w' * scale.
//
// FMA: every multiply and add here is mul_rn/add_rn (fusedops_math.h): __fmul_rn/__fadd_rn in
// device code, which nvcc never contracts into an FFMA, and plain operators on the host (built
// with -ffp-contract=off). So the CPU and the GPU round each operation the same way and give the
// same bits; tests/int8/test_int8_cuda_compile.py checks the SASS and PTX have no FMA.
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

// ---------------------------------------------------------------------------------------------
// The sinusoid in fp32 (no fp64 per element: GPUs with slow fp64 run it at full speed).
//
//   inv_freq[i]             = sinusoid_inv_freq(i, coef) (fusedops_math.h): once per pair and
//                             call, before the lookup (the reference's correctly rounded value)
//   angle                   = sinusoid_angle(pos, inv_freq[i]): fp32(float(pos) * inv_freq[i])
//   P[pos, 2i], P[pos, 2i+1] = sincos_f32(angle)
//
// sincos_f32 reduces angle = k * pi/2 + r, |r| <= pi/4 (k rounded to nearest), with pi/2 split
// Cody-Waite style into four fp32 pieces; the first three have 8 significant bits, so k * piece
// is exact for k < 2^16, which covers every angle here (positions < kSinusoidMaxPosition = 2^16,
// inv_freq <= 1). Then the single-precision minimax polynomials of sin and cos on [-pi/4, pi/4]
// (Cephes' coefficients, as in the Triton kernels' _sin_or_cos). Error against sin/cos of the
// same fp32 angle in fp64: below 1.5e-7 (tests/int8/test_int8_sinusoid.py checks every position
// below 2^16), the same bound as the fp32 sinusoid of the Triton embedding kernels.
namespace detail {
constexpr float kF32TwoOverPi = 0.636619772367581343f;
// Adding then subtracting 1.5 * 2^23 rounds |v| < 2^22 to the nearest integer (ties to even).
constexpr float kF32RoundMagic = 0x1.8p23f;
constexpr float kF32Pio2A = 1.5703125f;                 // 8 significant bits
constexpr float kF32Pio2B = 4.84466552734375e-4f;       // 8 significant bits
constexpr float kF32Pio2C = -6.407499313354492e-7f;     // 8 significant bits
constexpr float kF32Pio2D = 9.92093629470503e-10f;      // the rest of pi/2
constexpr float kF32Sin1 = -1.6666654611e-1f;
constexpr float kF32Sin2 = 8.3321608736e-3f;
constexpr float kF32Sin3 = -1.9515295891e-4f;
constexpr float kF32Cos1 = 4.166664568298827e-2f;
constexpr float kF32Cos2 = -1.388731625493765e-3f;
constexpr float kF32Cos3 = 2.443315711809948e-5f;
}  // namespace detail

// sin(angle) and cos(angle) in fp32 for 0 <= angle < 2^16 * pi/2; branch-free.
FUSEDOPS_HD inline void sincos_f32(float angle, float* sin_out, float* cos_out) {
  using namespace detail;
  const float k =
      add_rn(add_rn(mul_rn(angle, kF32TwoOverPi), kF32RoundMagic), -kF32RoundMagic);
  float r = add_rn(angle, -mul_rn(k, kF32Pio2A));
  r = add_rn(r, -mul_rn(k, kF32Pio2B));
  r = add_rn(r, -mul_rn(k, kF32Pio2C));
  r = add_rn(r, -mul_rn(k, kF32Pio2D));
  const int32_t q = static_cast<int32_t>(k);  // the quadrant, mod 4 below
  const float r2 = mul_rn(r, r);
  // sin r = r + r^3 * (S1 + r^2 * (S2 + r^2 * S3))
  float ps = add_rn(mul_rn(r2, kF32Sin3), kF32Sin2);
  ps = add_rn(mul_rn(r2, ps), kF32Sin1);
  const float sr = add_rn(r, mul_rn(mul_rn(r, r2), ps));
  // cos r = (1 - r^2 / 2) + r^4 * (C1 + r^2 * (C2 + r^2 * C3))
  float pc = add_rn(mul_rn(r2, kF32Cos3), kF32Cos2);
  pc = add_rn(mul_rn(r2, pc), kF32Cos1);
  const float cr = add_rn(add_rn(1.0f, mul_rn(-0.5f, r2)), mul_rn(mul_rn(r2, r2), pc));
  // angle = r + q * pi/2: sin = (sr, cr, -sr, -cr)[q mod 4], cos = (cr, -sr, -cr, sr)[q mod 4].
  const bool odd = (q & 1) != 0;
  const float a = odd ? cr : sr;
  const float b = odd ? sr : cr;
  *sin_out = (q & 2) != 0 ? -a : a;
  *cos_out = ((q + 1) & 2) != 0 ? -b : b;
}

// The sinusoid pair (P[pos, 2i], P[pos, 2i + 1]) for pair i's inv_freq and a position in
// [0, kSinusoidMaxPosition).
FUSEDOPS_HD inline void int8_sinusoid_pair(int64_t pos, float inv_freq, float* p_even,
                                           float* p_odd) {
  sincos_f32(sinusoid_angle(pos, inv_freq), p_even, p_odd);
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
  // [ceil(D / 2)] fp32 inv_freq per pair, sinusoid mode on CUDA: a device buffer the CUDA
  // launcher fills from sinusoid_coef before the lookup (the CPU kernel keeps its own).
  float* sinusoid_inv_freq = nullptr;
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
