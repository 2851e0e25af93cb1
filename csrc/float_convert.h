// Element types of the type-erased kernels and exact fp16/bf16 <-> fp32 conversions, shared by the
// CPU kernels (fused embedding, INT8 embedding, RoPE) and the CUDA kernel.
//
// Torch-free and `FUSEDOPS_HD`, like fusedops_math.h. The conversions are branch-free so CPU
// loops over D vectorize at the baseline ISA, and exact like torch's: round to nearest even,
// NaN -> quiet NaN with its sign, fp16 overflow -> inf.
#pragma once

#include <cstdint>
#include <cstring>

#include "fusedops_math.h"

namespace fusedops {

// Element types of the scales, positional tables, rotary operands and outputs (the integer values
// are part of the launcher ABI).
enum class FloatKind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

FUSEDOPS_HD inline uint32_t f32_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
#endif
}
FUSEDOPS_HD inline float f32_from_bits(uint32_t u) {
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
  return f32_from_bits(static_cast<uint32_t>(h) << 16);
}

// fp16 -> fp32 (subnormals through an int->float conversion, immune to denormals-are-zero).
FUSEDOPS_HD inline float half_bits_to_f32(uint16_t hv) {
  const uint32_t h = hv;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const uint32_t sub = f32_bits(mul_rn(static_cast<float>(static_cast<int32_t>(em)), 0x1p-24f));
  // Normal: move the fields and rebias the exponent 15 -> 127; Inf/NaN: exponent 31 -> 255.
  const uint32_t inf_nan = 0u - static_cast<uint32_t>(em >= 0x7c00u);  // all-ones mask
  const uint32_t normal = (em << 13) + 0x38000000u + (inf_nan & 0x38000000u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(em < 0x400u);
  return f32_from_bits(sign | (is_sub & sub) | (~is_sub & normal));
}

// fp32 -> bf16, round to nearest even; NaN -> quiet NaN with its sign.
FUSEDOPS_HD inline uint16_t f32_to_bf16_bits(float v) {
  const uint32_t x = f32_bits(v);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t is_nan = 0u - static_cast<uint32_t>((x & 0x7fffffffu) > 0x7f800000u);
  return static_cast<uint16_t>((is_nan & ((x >> 16) | 0x40u)) | (~is_nan & rounded));
}

// fp32 -> fp16, round to nearest even; overflow -> inf; NaN -> quiet NaN.
FUSEDOPS_HD inline uint16_t f32_to_half_bits(float v) {
  const uint32_t x = f32_bits(v);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  // Below 2^-14 the result is subnormal: adding 0.5f leaves an ulp of 2^-24, the fp16
  // subnormal step, so the FPU does the round-to-nearest-even.
  const uint32_t sub = f32_bits(add_rn(f32_from_bits(ax), 0.5f)) - 0x3f000000u;
  // Normal: round the 13 dropped mantissa bits to nearest even, then rebias 127 -> 15.
  const uint32_t normal = (ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u) >> 13;
  // From 65520 (which rounds up to 2^16) on, the result is infinity.
  const uint32_t is_nan = 0u - static_cast<uint32_t>(ax > 0x7f800000u);
  const uint32_t is_inf = 0u - static_cast<uint32_t>(ax >= 0x477ff000u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(ax < 0x38800000u);
  uint32_t mag = (is_sub & sub) | (~is_sub & normal);
  mag = (is_inf & 0x7c00u) | (~is_inf & mag);
  mag = (is_nan & 0x7e00u) | (~is_nan & mag);
  return static_cast<uint16_t>(sign | mag);
}

// How an element of kind K is stored: float, or the 16 bits of an fp16/bf16.
template <FloatKind K>
struct FloatStorage {
  using type = uint16_t;
};
template <>
struct FloatStorage<FloatKind::kF32> {
  using type = float;
};

template <FloatKind K>
FUSEDOPS_HD inline float storage_to_f32(typename FloatStorage<K>::type v) {
  if constexpr (K == FloatKind::kF32) {
    return v;
  } else if constexpr (K == FloatKind::kF16) {
    return half_bits_to_f32(v);
  } else {
    return bf16_bits_to_f32(v);
  }
}

template <FloatKind K>
FUSEDOPS_HD inline typename FloatStorage<K>::type f32_to_storage(float v) {
  if constexpr (K == FloatKind::kF32) {
    return v;
  } else if constexpr (K == FloatKind::kF16) {
    return f32_to_half_bits(v);
  } else {
    return f32_to_bf16_bits(v);
  }
}

// Element i of a type-erased float array as fp32.
FUSEDOPS_HD inline float load_as_f32(const void* base, FloatKind kind, int64_t i) {
  if (kind == FloatKind::kF32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return kind == FloatKind::kF16 ? half_bits_to_f32(h) : bf16_bits_to_f32(h);
}

}  // namespace fusedops
