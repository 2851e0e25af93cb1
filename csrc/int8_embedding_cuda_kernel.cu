// CUDA kernels of the INT8 embedding lookup (torch-free: compiled by nvcc alone in the tests).
// Arithmetic: int8_math.h, the same __host__ __device__ functions the CPU kernel runs.
//
// Ids and positions outside their range (which reach the kernel when the binding skips its check,
// check_indices=False, and the other shards' ids when the table is a vocabulary shard starting at
// vocab_start) are masked, never read: int8_token_row / int8_position_in_range of int8_math.h,
// the rule the CPU kernel follows too.
//
// Work split: one warp per token row, grid-stride over rows (int64 row and element offsets).
// Each lane owns 16-element chunks of the row: one 16-byte load of int8 (LDG.E.128), its group
// scale (a broadcast load: the lanes of a warp read the same few scales), the positional chunk
// (learned: 16-byte loads; sinusoid: 8 pairs' inv_freq in two 16-byte loads, then 8 fp32 sin/cos
// pairs), then 16 fp32 results stored as 16-byte vectors (4 for fp32 out, 2 for fp16/bf16).
//
// Sinusoid: the per-pair inv_freq (an fp64 exp each, the reference's correctly rounded value) is
// computed once per call by int8_sinusoid_inv_freq_kernel into a ceil(D/2) buffer; the lookup
// kernels then use fp32 only (int8_math.h's sincos_f32), so GPUs with slow fp64 lose nothing.
// tests/int8/test_int8_cuda_compile.py checks their SASS/PTX has no fp64 and no FMA.
//
// Why a warp per row (no GPU here, so reasoning + SASS rather than a measurement): a row is D
// bytes of int8 — 768 for GPT-2 — i.e. 48 chunks of 16 bytes, so a warp covers it in 2 steps
// and a block per row would leave most of its threads idle for D <= 4096 (<= 256 chunks).
// The kernel is bound by the output writes (4x the int8 read for fp32 out); many independent
// warps, each with 16-byte loads and stores in flight, is what keeps the memory system busy.
// 8 warps per 256-thread block; no shared memory, no synchronization. ptxas: 48 registers for
// the vectorized kernel on sm_80 and sm_90, 0 spills, 0 stack, so no register cap is needed: 5
// resident blocks = 40 warps per SM, each with 16-byte loads and 4x16-byte stores in flight,
// is well above what Little's law asks to saturate HBM (a few KB in flight per SM).
#include "int8_embedding_cuda_kernel.h"

#include <cstdint>

#include "int8_math.h"

namespace fusedops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

// 16 fp32 positional values of chunk c (elements 16c .. 16c+15) of a learned row, 16-byte
// loads (the launcher checked the alignment).
__device__ __forceinline__ void load_pos16(const Int8EmbeddingArgs& a, int64_t pos, int64_t c,
                                           float p[16]) {
  const int64_t off = pos * a.pos_row_stride + c * 16;
  if (a.pos_kind == FloatKind::kF32) {
    const float4* src =
        reinterpret_cast<const float4*>(static_cast<const float*>(a.pos_weight) + off);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float4 v = __ldg(src + k);
      p[4 * k] = v.x;
      p[4 * k + 1] = v.y;
      p[4 * k + 2] = v.z;
      p[4 * k + 3] = v.w;
    }
  } else {
    const uint4* src =
        reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(a.pos_weight) + off);
    const bool half = a.pos_kind == FloatKind::kF16;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const uint4 v = __ldg(src + k);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint16_t lo = static_cast<uint16_t>(w[j] & 0xffffu);
        const uint16_t hi = static_cast<uint16_t>(w[j] >> 16);
        p[8 * k + 2 * j] = half ? half_bits_to_f32(lo) : bf16_bits_to_f32(lo);
        p[8 * k + 2 * j + 1] = half ? half_bits_to_f32(hi) : bf16_bits_to_f32(hi);
      }
    }
  }
}

template <FloatKind K>
__device__ __forceinline__ void store16(void* out, int64_t off, const float v[16]) {
  if constexpr (K == FloatKind::kF32) {
    float4* dst = reinterpret_cast<float4*>(static_cast<float*>(out) + off);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      dst[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
    }
  } else {
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t lo = f32_to_storage<K>(v[2 * j]);
      const uint32_t hi = f32_to_storage<K>(v[2 * j + 1]);
      w[j] = lo | (hi << 16);
    }
    uint4* dst = reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + off);
    dst[0] = make_uint4(w[0], w[1], w[2], w[3]);
    dst[1] = make_uint4(w[4], w[5], w[6], w[7]);
  }
}

// The vectorized kernel: D % 16 == 0, group size % 16 == 0, 16-byte aligned rows.
template <FloatKind K>
__global__ void __launch_bounds__(kThreads) int8_embedding_vec_kernel(const Int8EmbeddingArgs a) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  // Chunks of 16 elements per row and per scale group (the launcher checked they fit 32 bits).
  const uint32_t chunks = static_cast<uint32_t>(a.dim / 16);
  const uint32_t group_chunks = static_cast<uint32_t>(a.dim / a.num_groups / 16);
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
       n < a.num_tokens; n += warps) {
    const Int8TokenIndex t = int8_token_index(a, n);  // row -1: zero token term
    const int64_t row = t.row < 0 ? 0 : t.row;
    const int4* qrow = reinterpret_cast<const int4*>(a.qweight + row * a.qweight_row_stride);
    for (uint32_t c = lane; c < chunks; c += 32) {
      int4 raw = make_int4(0, 0, 0, 0);
      float s = 0.0f;
      if (t.row >= 0) {
        raw = __ldg(qrow + c);
        const uint32_t g = a.num_groups == 1 ? 0u : c / group_chunks;
        s = load_as_f32(a.scales, a.scales_kind, t.row * a.scales_row_stride + g);
      }
      const uint32_t w[4] = {static_cast<uint32_t>(raw.x), static_cast<uint32_t>(raw.y),
                             static_cast<uint32_t>(raw.z), static_cast<uint32_t>(raw.w)};
      float v[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int8_t q = static_cast<int8_t>((w[j / 4] >> (8 * (j % 4))) & 0xffu);
        v[j] = int8_fused_value(q, s, a.scale);
      }
      if (a.pos_mode != PosMode::kNone) {
        float p[16];
        if (!t.pos_ok) {
#pragma unroll
          for (int j = 0; j < 16; ++j) p[j] = 0.0f;
        } else if (a.pos_mode == PosMode::kLearned) {
          load_pos16(a, t.pos, c, p);
        } else {
          // Pairs 8c .. 8c+7 (the launcher checked the buffer is 16-byte aligned).
          const float4* f = reinterpret_cast<const float4*>(a.sinusoid_inv_freq) + 2 * c;
          const float4 f0 = __ldg(f);
          const float4 f1 = __ldg(f + 1);
          const float inv_freq[8] = {f0.x, f0.y, f0.z, f0.w, f1.x, f1.y, f1.z, f1.w};
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            int8_sinusoid_pair(t.pos, inv_freq[k], &p[2 * k], &p[2 * k + 1]);
          }
        }
#pragma unroll
        for (int j = 0; j < 16; ++j) v[j] = add_rn(v[j], p[j]);
      }
      store16<K>(a.out, n * a.dim + static_cast<int64_t>(c) * 16, v);
    }
  }
}

// The per-element kernel for every other shape/alignment: a warp per row, a lane per element.
template <FloatKind K>
__global__ void __launch_bounds__(kThreads) int8_embedding_elem_kernel(const Int8EmbeddingArgs a) {
  using Out = typename FloatStorage<K>::type;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t gs = a.dim / a.num_groups;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
       n < a.num_tokens; n += warps) {
    const Int8TokenIndex t = int8_token_index(a, n);  // row -1: zero token term
    for (int64_t d = lane; d < a.dim; d += 32) {
      int8_t q = 0;
      float s = 0.0f;
      if (t.row >= 0) {
        q = a.qweight[t.row * a.qweight_row_stride + d];
        s = load_as_f32(a.scales, a.scales_kind, t.row * a.scales_row_stride + d / gs);
      }
      float v;
      if (a.pos_mode != PosMode::kNone) {
        float p = 0.0f;
        if (t.pos_ok && a.pos_mode == PosMode::kLearned) {
          p = load_as_f32(a.pos_weight, a.pos_kind, t.pos * a.pos_row_stride + d);
        } else if (t.pos_ok) {
          float p_even, p_odd;
          int8_sinusoid_pair(t.pos, __ldg(a.sinusoid_inv_freq + d / 2), &p_even, &p_odd);
          p = (d % 2 == 0) ? p_even : p_odd;
        }
        v = int8_fused_value(q, s, a.scale, p);
      } else {
        v = int8_fused_value(q, s, a.scale);
      }
      static_cast<Out*>(a.out)[n * a.dim + d] = f32_to_storage<K>(v);
    }
  }
}

// inv_freq[i] = sinusoid_inv_freq(i, coef) for the pairs i < ceil(D/2): the sinusoid's one fp64
// step, an exp per pair and call (not per element).
__global__ void __launch_bounds__(kThreads)
    int8_sinusoid_inv_freq_kernel(float coef, int64_t pairs, float* inv_freq) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < pairs;
       i += stride) {
    inv_freq[i] = sinusoid_inv_freq(i, coef);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int64_t elem_bytes(FloatKind k) { return k == FloatKind::kF32 ? 4 : 2; }

template <FloatKind K>
void launch(const Int8EmbeddingArgs& a, bool vec, unsigned blocks, cudaStream_t stream) {
  if (vec) {
    int8_embedding_vec_kernel<K><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    int8_embedding_elem_kernel<K><<<blocks, kThreads, 0, stream>>>(a);
  }
}

}  // namespace

bool int8_embedding_vectorized(const Int8EmbeddingArgs& a) {
  if (a.dim <= 0 || a.num_groups <= 0 || a.dim % 16 != 0) return false;
  if ((a.dim / a.num_groups) % 16 != 0 || a.dim / 16 > int64_t{0x7fffffff}) return false;
  if (!aligned16(a.qweight) || a.qweight_row_stride % 16 != 0 || !aligned16(a.out)) return false;
  if (a.pos_mode == PosMode::kLearned &&
      (!aligned16(a.pos_weight) || (a.pos_row_stride * elem_bytes(a.pos_kind)) % 16 != 0)) {
    return false;
  }
  if (a.pos_mode == PosMode::kSinusoid && !aligned16(a.sinusoid_inv_freq)) return false;
  return true;
}

cudaError_t int8_embedding_fwd(const Int8EmbeddingArgs& a, cudaStream_t stream) {
  if (a.num_tokens <= 0 || a.dim <= 0) return cudaSuccess;
  if (a.pos_mode == PosMode::kSinusoid) {
    if (a.sinusoid_inv_freq == nullptr) return cudaErrorInvalidValue;
    const int64_t pairs = (a.dim + 1) / 2;
    const int64_t want_freq = (pairs + kThreads - 1) / kThreads;
    const unsigned freq_blocks = static_cast<unsigned>(want_freq < 1024 ? want_freq : 1024);
    int8_sinusoid_inv_freq_kernel<<<freq_blocks, kThreads, 0, stream>>>(a.sinusoid_coef, pairs,
                                                                       a.sinusoid_inv_freq);
  }
  const int64_t want = (a.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const unsigned blocks = static_cast<unsigned>(want < kMaxBlocks ? want : kMaxBlocks);
  const bool vec = int8_embedding_vectorized(a);
  switch (a.out_kind) {
    case FloatKind::kF32:
      launch<FloatKind::kF32>(a, vec, blocks, stream);
      break;
    case FloatKind::kF16:
      launch<FloatKind::kF16>(a, vec, blocks, stream);
      break;
    case FloatKind::kBF16:
      launch<FloatKind::kBF16>(a, vec, blocks, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fusedops
