// CPU kernel of the INT8 embedding lookup: see int8_embedding_cpu.h for the interface and
// int8_math.h for the per-element arithmetic (shared with the CUDA kernel).
//
// The same structure as the fp32 kernel in embedding_cpu.cpp:
// - a pure memory stream: int8 rows (D bytes) are gathered with software prefetch, the output
//   (4x larger for fp32) is written with non-temporal stores when it is large and already
//   mapped (use_streaming_stores in cpu_vec.h);
// - when the positional row depends only on s, tokens are visited s-major so each positional row
//   is converted (learned, any float dtype) or computed (sinusoid) once and reused from L1;
// - inner loops run over one scale group of D: one scale per group broadcast, int8 -> fp32
//   widening, two multiplies and an add per element (no FMA: -ffp-contract=off and the AVX
//   intrinsics keep the roundings of int8_fused_value()).
#include "int8_embedding_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_vec.h"
#include "embedding_cpu.h"
#include "int8_math.h"
#include "lookup_schedule.h"

namespace fusedops {
namespace cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FUSEDOPS_I8_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FUSEDOPS_I8_CLONES
#endif

// The portable row: per scale group, a loop over its elements that gcc vectorizes.
// sc: the row's G scales as fp32; p: positional row as fp32 or nullptr.
template <FloatKind K>
inline void int8_row_generic(typename FloatStorage<K>::type* __restrict out,
                             const int8_t* __restrict q, const float* __restrict sc, int64_t gs,
                             int64_t groups, float scale, const float* __restrict p) {
  for (int64_t g = 0; g < groups; ++g) {
    const float s = sc[g];
    const int8_t* __restrict qg = q + g * gs;
    typename FloatStorage<K>::type* __restrict og = out + g * gs;
    if (p != nullptr) {
      const float* __restrict pg = p + g * gs;
      for (int64_t j = 0; j < gs; ++j) {
        og[j] = f32_to_storage<K>(int8_fused_value(qg[j], s, scale, pg[j]));
      }
    } else {
      for (int64_t j = 0; j < gs; ++j) og[j] = f32_to_storage<K>(int8_fused_value(qg[j], s, scale));
    }
  }
}

// The portable rows, also compiled for AVX2 and picked at load time.
FUSEDOPS_I8_CLONES void int8_row_f32(float* __restrict out, const int8_t* __restrict q,
                                     const float* __restrict sc, int64_t gs, int64_t groups,
                                     float scale, const float* __restrict p) {
  int8_row_generic<FloatKind::kF32>(out, q, sc, gs, groups, scale, p);
}
FUSEDOPS_I8_CLONES void int8_row_f16(uint16_t* __restrict out, const int8_t* __restrict q,
                                     const float* __restrict sc, int64_t gs, int64_t groups,
                                     float scale, const float* __restrict p) {
  int8_row_generic<FloatKind::kF16>(out, q, sc, gs, groups, scale, p);
}
FUSEDOPS_I8_CLONES void int8_row_bf16(uint16_t* __restrict out, const int8_t* __restrict q,
                                      const float* __restrict sc, int64_t gs, int64_t groups,
                                      float scale, const float* __restrict p) {
  int8_row_generic<FloatKind::kBF16>(out, q, sc, gs, groups, scale, p);
}

#if defined(FUSEDOPS_X86_SIMD)
// 8 int8 -> 8 fp32 values int8_fused_value(q, s, scale[, p]) (mul, mul, add: no FMA).
__attribute__((target("avx2"))) inline __m256 i8x8_value(__m128i raw8, __m256 vs, __m256 vscale) {
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw8)), vs), vscale);
}

// fp32 rows with AVX2, 16 elements a step within a group; non-temporal stores when `stream`
// (then out must be 32-byte aligned). Needs gs % 8 == 0.
template <bool kPos, bool kStream>
__attribute__((target("avx2"))) void int8_row_f32_avx2_impl(float* __restrict out,
                                                            const int8_t* __restrict q,
                                                            const float* __restrict sc,
                                                            int64_t gs, int64_t groups,
                                                            float scale,
                                                            const float* __restrict p) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 vs = _mm256_set1_ps(sc[g]);
    const int64_t d0 = g * gs;
    const int64_t d1 = d0 + gs;
    int64_t d = d0;
    for (; d + 16 <= d1; d += 16) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + d));
      __m256 a = i8x8_value(raw, vs, vscale);
      __m256 b = i8x8_value(_mm_srli_si128(raw, 8), vs, vscale);
      if constexpr (kPos) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(p + d));
        b = _mm256_add_ps(b, _mm256_loadu_ps(p + d + 8));
      }
      if constexpr (kStream) {
        _mm256_stream_ps(out + d, a);
        _mm256_stream_ps(out + d + 8, b);
      } else {
        _mm256_storeu_ps(out + d, a);
        _mm256_storeu_ps(out + d + 8, b);
      }
    }
    if (d < d1) {  // gs % 16 == 8: one 8-wide step left
      const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + d));
      __m256 a = i8x8_value(raw, vs, vscale);
      if constexpr (kPos) a = _mm256_add_ps(a, _mm256_loadu_ps(p + d));
      if constexpr (kStream) {
        _mm256_stream_ps(out + d, a);
      } else {
        _mm256_storeu_ps(out + d, a);
      }
    }
  }
}

void int8_row_f32_avx2(float* out, const int8_t* q, const float* sc, int64_t gs, int64_t groups,
                       float scale, const float* p, bool stream) {
  if (stream) {
    if (p != nullptr) {
      int8_row_f32_avx2_impl<true, true>(out, q, sc, gs, groups, scale, p);
    } else {
      int8_row_f32_avx2_impl<false, true>(out, q, sc, gs, groups, scale, p);
    }
  } else if (p != nullptr) {
    int8_row_f32_avx2_impl<true, false>(out, q, sc, gs, groups, scale, p);
  } else {
    int8_row_f32_avx2_impl<false, false>(out, q, sc, gs, groups, scale, p);
  }
}

// fp16 rows with F16C (round to nearest even, like f32_to_half_bits); non-temporal stores when
// kStream (out 16-byte aligned). Needs gs % 8 == 0.
template <bool kStream>
__attribute__((target("avx2,f16c"))) void int8_row_f16_f16c(uint16_t* __restrict out,
                                                            const int8_t* __restrict q,
                                                            const float* __restrict sc,
                                                            int64_t gs, int64_t groups,
                                                            float scale,
                                                            const float* __restrict p) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 vs = _mm256_set1_ps(sc[g]);
    for (int64_t d = g * gs; d < (g + 1) * gs; d += 8) {
      __m256 a = i8x8_value(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + d)), vs, vscale);
      if (p != nullptr) a = _mm256_add_ps(a, _mm256_loadu_ps(p + d));
      const __m128i h = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if constexpr (kStream) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(out + d), h);
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + d), h);
      }
    }
  }
}

// bf16 rows with AVX2, 16 elements a step; non-temporal stores when kStream (out 32-byte
// aligned). Needs gs % 16 == 0.
template <bool kStream>
__attribute__((target("avx2"))) void int8_row_bf16_avx2(uint16_t* __restrict out,
                                                        const int8_t* __restrict q,
                                                        const float* __restrict sc, int64_t gs,
                                                        int64_t groups, float scale,
                                                        const float* __restrict p) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 vs = _mm256_set1_ps(sc[g]);
    for (int64_t d = g * gs; d < (g + 1) * gs; d += 16) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + d));
      __m256 a = i8x8_value(raw, vs, vscale);
      __m256 b = i8x8_value(_mm_srli_si128(raw, 8), vs, vscale);
      if (p != nullptr) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(p + d));
        b = _mm256_add_ps(b, _mm256_loadu_ps(p + d + 8));
      }
      const __m256i packed = bf16_pack16(a, b);
      if constexpr (kStream) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + d), packed);
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), packed);
      }
    }
  }
}

// bf16 rows with the AVX512-BF16 conversion (bf16_pack16_avx512), 16 values per 512-bit step.
// Needs gs % 16 == 0; non-temporal stores when kStream (out 32-byte aligned). Measured (1 thread,
// B=8 S=1024 D=768): 2.9 ms -> ~1.9 ms against the AVX2 rows.
template <bool kStream>
__attribute__((target("avx512bf16,avx512vl,avx512bw,avx512f,avx2"))) void int8_row_bf16_avx512(
    uint16_t* __restrict out, const int8_t* __restrict q, const float* __restrict sc, int64_t gs,
    int64_t groups, float scale, const float* __restrict p) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 vs = _mm512_set1_ps(sc[g]);
    for (int64_t d = g * gs; d < (g + 1) * gs; d += 16) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + d));
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), vs),
                               vscale);
      if (p != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(p + d));
      const __m256i packed = bf16_pack16_avx512(v);
      if constexpr (kStream) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + d), packed);
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), packed);
      }
    }
  }
}
#endif

// The sinusoid row P[pos, :] (int8_math.h, fp32: the arithmetic of the CUDA kernel) into prow
// (capacity 2 * ceil(D/2): an odd D writes one spare element). Branch-free, so gcc vectorizes
// the AVX2 clone; the clones round identically (mul_rn/add_rn, no FMA).
FUSEDOPS_I8_CLONES void int8_sinusoid_row(int64_t pos, const float* __restrict inv_freq,
                                          int64_t dim, float* __restrict prow) {
  const int64_t pairs = (dim + 1) / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    float s, c;
    int8_sinusoid_pair(pos, inv_freq[i], &s, &c);
    prow[2 * i] = s;
    prow[2 * i + 1] = c;
  }
}

// The lookup's per-token work, run by run_lookup (lookup_schedule.h).
template <FloatKind K>
struct Int8Plan {
  using OutT = typename FloatStorage<K>::type;
  const Int8EmbeddingArgs& a;
  const float* inv_freq;  // [ceil(D/2)] for the sinusoid
  int64_t gs;             // group size D / G
  bool stream;            // non-temporal stores (large output, vector rows)
  bool fast;              // the AVX2/F16C row functions apply (CPU and group size)

  // Positional row of position pos as fp32 (zeros when masked), or nullptr without a positional
  // term. buf: capacity 2 * ceil(D/2).
  const float* pos_row(int64_t pos, float* buf) const {
    if (a.pos_mode == PosMode::kNone) return nullptr;
    if (!int8_position_in_range(a, pos)) {
      std::fill(buf, buf + a.dim, 0.0f);
      return buf;
    }
    if (a.pos_mode == PosMode::kLearned) {
      const int64_t base = pos * a.pos_row_stride;
      if (a.pos_kind == FloatKind::kF32) return static_cast<const float*>(a.pos_weight) + base;
      const uint16_t* src = static_cast<const uint16_t*>(a.pos_weight) + base;
      if (a.pos_kind == FloatKind::kF16) {
        for (int64_t d = 0; d < a.dim; ++d) buf[d] = half_bits_to_f32(src[d]);
      } else {
        for (int64_t d = 0; d < a.dim; ++d) buf[d] = bf16_bits_to_f32(src[d]);
      }
      return buf;
    }
    int8_sinusoid_row(pos, inv_freq, a.dim, buf);
    return buf;
  }

  void row_scales(int64_t id, float* sc) const {
    const int64_t base = id * a.scales_row_stride;
    const int64_t groups = a.num_groups;
    if (a.scales_kind == FloatKind::kF32) {
      const float* src = static_cast<const float*>(a.scales) + base;
      for (int64_t g = 0; g < groups; ++g) sc[g] = src[g];
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(a.scales) + base;
      if (a.scales_kind == FloatKind::kF16) {
        for (int64_t g = 0; g < groups; ++g) sc[g] = half_bits_to_f32(src[g]);
      } else {
        for (int64_t g = 0; g < groups; ++g) sc[g] = bf16_bits_to_f32(src[g]);
      }
    }
  }

  void write_row(OutT* out, const int8_t* q, const float* sc, const float* p) const {
    const int64_t groups = a.num_groups;
    if constexpr (K == FloatKind::kF32) {
#if defined(FUSEDOPS_X86_SIMD)
      if (fast) {
        // Streaming needs a 32-byte aligned row; otherwise regular stores.
        const bool aligned = (reinterpret_cast<uintptr_t>(out) & 31) == 0;
        int8_row_f32_avx2(out, q, sc, gs, groups, a.scale, p, stream && aligned);
        return;
      }
#endif
      int8_row_f32(out, q, sc, gs, groups, a.scale, p);
    } else if constexpr (K == FloatKind::kF16) {
#if defined(FUSEDOPS_X86_SIMD)
      if (fast) {
        if (stream && (reinterpret_cast<uintptr_t>(out) & 15) == 0) {
          int8_row_f16_f16c<true>(out, q, sc, gs, groups, a.scale, p);
        } else {
          int8_row_f16_f16c<false>(out, q, sc, gs, groups, a.scale, p);
        }
        return;
      }
#endif
      int8_row_f16(out, q, sc, gs, groups, a.scale, p);
    } else {
#if defined(FUSEDOPS_X86_SIMD)
      if (fast) {
        const bool stream_row = stream && (reinterpret_cast<uintptr_t>(out) & 31) == 0;
        if (cpu_has_avx512bf16()) {
          if (stream_row) {
            int8_row_bf16_avx512<true>(out, q, sc, gs, groups, a.scale, p);
          } else {
            int8_row_bf16_avx512<false>(out, q, sc, gs, groups, a.scale, p);
          }
          return;
        }
        if (stream_row) {
          int8_row_bf16_avx2<true>(out, q, sc, gs, groups, a.scale, p);
        } else {
          int8_row_bf16_avx2<false>(out, q, sc, gs, groups, a.scale, p);
        }
        return;
      }
#endif
      int8_row_bf16(out, q, sc, gs, groups, a.scale, p);
    }
  }

  void token(int64_t n, const float* prow, float* sc) const {
    const int64_t id = int8_token_row(a, n);
    OutT* out = static_cast<OutT*>(a.out) + n * a.dim;
    if (id < 0) {  // masked (int8_math.h): q = 0 with scale 0, plus the positional term
      for (int64_t d = 0; d < a.dim; ++d) {
        out[d] = f32_to_storage<K>(prow != nullptr ? int8_fused_value(0, 0.0f, a.scale, prow[d])
                                                   : int8_fused_value(0, 0.0f, a.scale));
      }
      return;
    }
    row_scales(id, sc);
    write_row(out, a.qweight + id * a.qweight_row_stride, sc, prow);
  }

  // Gathered rows are random in a table larger than the caches: request them ahead of use.
  void prefetch_token(int64_t n) const {
    const int64_t id = int8_token_row(a, n);
    if (id < 0) return;
    const char* row = reinterpret_cast<const char*>(a.qweight + id * a.qweight_row_stride);
    for (int64_t off = 0; off < a.dim; off += kCacheLine) __builtin_prefetch(row + off, 0, 3);
    const int64_t elem = a.scales_kind == FloatKind::kF32 ? 4 : 2;
    __builtin_prefetch(static_cast<const char*>(a.scales) + id * a.scales_row_stride * elem, 0, 3);
  }

  int64_t position(int64_t n) const { return int8_token_position(a, n); }
  bool positions_repeat() const {
    if (a.positions == nullptr) return true;
    return a.ids_int64
               ? rows_repeat(static_cast<const int64_t*>(a.positions), a.num_tokens, a.seq_len)
               : rows_repeat(static_cast<const int32_t*>(a.positions), a.num_tokens, a.seq_len);
  }
  int64_t scratch_size() const { return a.num_groups; }  // the row's scales as fp32
};

template <FloatKind K>
void run_plan(const Int8EmbeddingArgs& a, const float* inv_freq) {
  const int64_t gs = a.dim / a.num_groups;
  bool fast = false;
#if defined(FUSEDOPS_X86_SIMD)
  if constexpr (K == FloatKind::kF32) fast = cpu_has_avx2() && gs % 8 == 0;
  if constexpr (K == FloatKind::kF16) fast = cpu_has_avx2_f16c() && gs % 8 == 0;
  if constexpr (K == FloatKind::kBF16) fast = cpu_has_avx2() && gs % 16 == 0;
#endif
  const int64_t out_bytes = a.num_tokens * a.dim * (K == FloatKind::kF32 ? 4 : 2);
  const bool stream = fast && use_streaming_stores(a.out, out_bytes);
  run_lookup(Int8Plan<K>{a, inv_freq, gs, stream, fast});
}

}  // namespace

void int8_embedding_fwd(const Int8EmbeddingArgs& a) {
  if (a.num_tokens <= 0 || a.dim <= 0 || a.num_groups <= 0) return;
  std::vector<float> inv_freq;
  if (a.pos_mode == PosMode::kSinusoid) {
    inv_freq.resize(static_cast<size_t>((a.dim + 1) / 2));
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      inv_freq[i] = sinusoid_inv_freq(static_cast<int64_t>(i), a.sinusoid_coef);
    }
  }
  switch (a.out_kind) {
    case FloatKind::kF32:
      run_plan<FloatKind::kF32>(a, inv_freq.data());
      break;
    case FloatKind::kF16:
      run_plan<FloatKind::kF16>(a, inv_freq.data());
      break;
    case FloatKind::kBF16:
      run_plan<FloatKind::kBF16>(a, inv_freq.data());
      break;
  }
}

}  // namespace cpu
}  // namespace fusedops
