// fp32 <-> c10 storage types (float, c10::BFloat16, c10::Half) for the CPU kernels that
// template on the element type (embedding_cpu.cpp, embedding_layernorm_cpu.cpp). The roundings
// are float_convert.h's, so CPU and CUDA results agree bit for bit.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "float_convert.h"

namespace fusedops {
namespace cpu {

inline float to_f32(float v) { return v; }
inline float to_f32(c10::BFloat16 v) { return bf16_bits_to_f32(v.x); }
inline float to_f32(c10::Half v) { return half_bits_to_f32(v.x); }

template <typename T>
inline T from_f32(float v);
template <>
inline float from_f32<float>(float v) {
  return v;
}
template <>
inline c10::BFloat16 from_f32<c10::BFloat16>(float v) {
  return c10::BFloat16(f32_to_bf16_bits(v), c10::BFloat16::from_bits());
}
template <>
inline c10::Half from_f32<c10::Half>(float v) {
  return c10::Half(f32_to_half_bits(v), c10::Half::from_bits());
}

}  // namespace cpu
}  // namespace fusedops
