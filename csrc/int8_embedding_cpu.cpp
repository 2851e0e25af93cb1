// CPU kernel of the INT8 embedding lookup: see int8_embedding_cpu.h for the interface and
// int8_math.h for the per-element arithmetic (shared with the CUDA kernel).
//
// The same structure as the fp32 kernel in embedding_cpu.cpp:
// - a pure memory stream: int8 rows (D bytes) are gathered with software prefetch, the output
//   (4x larger for fp32) is written with non-temporal stores when it is large;
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

#if defined(__SSE2__)
#include <emmintrin.h>
#define FUSEDOPS_I8_HAVE_SSE2 1
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FUSEDOPS_I8_HAVE_AVX2_PATH 1
#endif

#include "embedding_cpu.h"
#include "int8_math.h"
#include "lookup_schedule.h"

namespace fusedops {
namespace cpu {
namespace {

// Same threshold as embedding_cpu.cpp.
constexpr int64_t kStreamMinBytes = int64_t{4} << 20;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FUSEDOPS_I8_CLONES __attribute__((target_clones("avx2", "default")))
#define FUSEDOPS_I8_SIN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDOPS_I8_CLONES
#define FUSEDOPS_I8_SIN_CLONES
#endif

template <FloatKind K>
struct OutType {
  using type = uint16_t;  // fp16 / bf16 bits
};
template <>
struct OutType<FloatKind::kF32> {
  using type = float;
};

template <FloatKind K>
inline typename OutType<K>::type cast_out(float v) {
  if constexpr (K == FloatKind::kF32) {
    return v;
  } else if constexpr (K == FloatKind::kF16) {
    return f32_to_half_bits(v);
  } else {
    return f32_to_bf16_bits(v);
  }
}

// The portable row: per scale group, a loop over its elements that gcc vectorizes.
// sc: the row's G scales as fp32; p: positional row as fp32 or nullptr.
template <FloatKind K>
inline void int8_row_generic(typename OutType<K>::type* __restrict out,
                             const int8_t* __restrict q, const float* __restrict sc, int64_t gs,
                             int64_t groups, float scale, const float* __restrict p) {
  for (int64_t g = 0; g < groups; ++g) {
    const float s = sc[g];
    const int8_t* __restrict qg = q + g * gs;
    typename OutType<K>::type* __restrict og = out + g * gs;
    if (p != nullptr) {
      const float* __restrict pg = p + g * gs;
      for (int64_t j = 0; j < gs; ++j) og[j] = cast_out<K>(int8_fused_value(qg[j], s, scale, pg[j]));
    } else {
      for (int64_t j = 0; j < gs; ++j) og[j] = cast_out<K>(int8_fused_value(qg[j], s, scale));
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

#if defined(FUSEDOPS_I8_HAVE_AVX2_PATH)
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}

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

// 8 fp32 -> 8 bf16 (low halves of 32-bit lanes), like f32_to_bf16_bits.
__attribute__((target("avx2"))) inline __m256i bf16_round8(__m256 v) {
  const __m256i x = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, quiet, nan);
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
      // packus works per 128-bit lane: put the 64-bit quarters back in order.
      const __m256i packed =
          _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round8(a), bf16_round8(b)), 0xd8);
      if constexpr (kStream) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + d), packed);
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), packed);
      }
    }
  }
}

// bf16 rows with the AVX512-BF16 conversion (VCVTNEPS2BF16: round to nearest even, NaN -> quiet
// NaN with sign and top payload, like f32_to_bf16_bits), 16 values per 512-bit step — ~1
// instruction per 16 values where the integer rounding above takes ~12 per 8. The instruction
// flushes fp32 subnormals to zero, which f32_to_bf16_bits does not: a 16-block holding any
// nonzero |v| < 2^-126 takes the integer path. Needs gs % 16 == 0; non-temporal stores when
// kStream (out 32-byte aligned). Measured (1 thread, B=8 S=1024 D=768): 2.9 ms -> ~1.9 ms.
template <bool kStream>
__attribute__((target("avx512bf16,avx512vl,avx512bw,avx512f,avx2"))) void int8_row_bf16_avx512(
    uint16_t* __restrict out, const int8_t* __restrict q, const float* __restrict sc, int64_t gs,
    int64_t groups, float scale, const float* __restrict p) {
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 tiny = _mm512_set1_ps(0x1p-126f);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 vs = _mm512_set1_ps(sc[g]);
    for (int64_t d = g * gs; d < (g + 1) * gs; d += 16) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + d));
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), vs),
                               vscale);
      if (p != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(p + d));
      const __m512 av = _mm512_abs_ps(v);
      const __mmask16 sub =
          _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(av, tiny, _CMP_LT_OQ), av, zero, _CMP_NEQ_UQ);
      __m256i packed;
      if (__builtin_expect(sub == 0, 1)) {
        packed = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
      } else {
        const __m256 a = _mm512_castps512_ps256(v);
        const __m256 b = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round8(a), bf16_round8(b)),
                                          0xd8);
      }
      if constexpr (kStream) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + d), packed);
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), packed);
      }
    }
  }
}

bool cpu_has_avx512bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2");
  return has;
}
#endif

// Non-temporal stores are weakly ordered: fence before the thread hands its rows back.
inline void stream_fence() {
#if defined(FUSEDOPS_I8_HAVE_SSE2)
  _mm_sfence();
#endif
}

// P[pos, :] into prow (capacity 2 * ceil(D/2)); positions are in [0, 2^16) (validated), where
// the fast sin/cos alone is exact — the same steps as sinusoid_pair_fast() with inv_freq
// precomputed once per call.
FUSEDOPS_I8_SIN_CLONES void int8_sinusoid_row(int64_t pos, const float* __restrict inv_freq,
                                              int64_t dim, float* __restrict prow) {
  const int64_t half = (dim + 1) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double x = static_cast<double>(sinusoid_angle(pos, inv_freq[i]));
    double s, c;
    sincos_fast(x, &s, &c);
    prow[2 * i] = static_cast<float>(s);
    prow[2 * i + 1] = static_cast<float>(c);
  }
}

template <FloatKind K>
struct Int8Plan {
  using OutT = typename OutType<K>::type;
  const Int8EmbeddingArgs& a;
  const float* inv_freq;  // [ceil(D/2)] for the sinusoid
  int64_t gs;             // group size D / G
  bool stream;            // non-temporal stores (large output, vector rows)
  bool fast;              // the AVX2/F16C row functions apply (CPU and group size)

  // Positional row of position pos as fp32, or nullptr. buf: capacity 2 * ceil(D/2).
  const float* pos_row(int64_t pos, float* buf) const {
    if (a.pos_mode == 1) {
      if (pos < 0 || pos >= a.pos_rows) return nullptr;  // validated by the caller
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
    if (a.pos_mode == 2) {
      int8_sinusoid_row(pos, inv_freq, a.dim, buf);
      return buf;
    }
    return nullptr;
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
#if defined(FUSEDOPS_I8_HAVE_AVX2_PATH)
      if (fast) {
        // Streaming needs a 32-byte aligned row; otherwise regular stores.
        const bool aligned = (reinterpret_cast<uintptr_t>(out) & 31) == 0;
        int8_row_f32_avx2(out, q, sc, gs, groups, a.scale, p, stream && aligned);
        return;
      }
#endif
      int8_row_f32(out, q, sc, gs, groups, a.scale, p);
    } else if constexpr (K == FloatKind::kF16) {
#if defined(FUSEDOPS_I8_HAVE_AVX2_PATH)
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
#if defined(FUSEDOPS_I8_HAVE_AVX2_PATH)
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
    const int64_t id = int8_token_id(a, n);
    OutT* out = static_cast<OutT*>(a.out) + n * a.dim;
    if (id < 0 || id >= a.num_rows) {  // validated by the caller; never read OOB
      std::fill(out, out + a.dim, cast_out<K>(0.0f));
      return;
    }
    row_scales(id, sc);
    write_row(out, a.qweight + id * a.qweight_row_stride, sc, prow);
  }

  // Gathered rows are random in a table larger than the caches: request them ahead of use.
  void prefetch_token(int64_t n) const {
    const int64_t id = int8_token_id(a, n);
    if (id < 0 || id >= a.num_rows) return;
    const char* row = reinterpret_cast<const char*>(a.qweight + id * a.qweight_row_stride);
    for (int64_t off = 0; off < a.dim; off += kCacheLine) __builtin_prefetch(row + off, 0, 3);
    const int64_t elem = a.scales_kind == FloatKind::kF32 ? 4 : 2;
    __builtin_prefetch(static_cast<const char*>(a.scales) + id * a.scales_row_stride * elem, 0, 3);
  }

  int64_t pos_buf_size() const { return a.pos_mode == 0 ? 0 : 2 * ((a.dim + 1) / 2); }

  // Token-major: each token gets its own positional row (cached while the position repeats).
  void run_token_major() const {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / a.dim);
    at::parallel_for(0, a.num_tokens, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(static_cast<size_t>(pos_buf_size()));
      std::vector<float> sc(static_cast<size_t>(a.num_groups));
      int64_t last_pos = 0;
      bool have_row = false;
      const float* prow = nullptr;
      for (int64_t n = begin; n < end; ++n) {
        if (n + kPrefetchTokens < end) prefetch_token(n + kPrefetchTokens);
        if (a.pos_mode != 0) {
          const int64_t pos = int8_token_position(a, n);
          if (!have_row || pos != last_pos) {
            prow = pos_row(pos, buf.data());
            last_pos = pos;
            have_row = true;
          }
        }
        token(n, prow, sc.data());
      }
      if (stream) stream_fence();
    });
  }

  // Position-major: the positional row of column s is built once and applied to every batch
  // row. Columns are split into batch chunks when S alone cannot feed all threads.
  void run_position_major() const {
    const PositionMajorPlan plan =
        plan_position_major(a.num_tokens, a.seq_len, a.dim, at::get_num_threads());
    at::parallel_for(0, plan.units(), plan.grain, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(static_cast<size_t>(pos_buf_size()));
      std::vector<float> sc(static_cast<size_t>(a.num_groups));
      int64_t last_s = -1;
      const float* prow = nullptr;
      for (int64_t u = begin; u < end; ++u) {
        const int64_t s = plan.column(u);
        if (s != last_s) {
          prow = pos_row(int8_token_position(a, s), buf.data());
          last_s = s;
        }
        for (int64_t b = plan.batch_begin(u); b < plan.batch_end(u); ++b) {
          const int64_t ahead = plan.token_ahead(u, b, end);
          if (ahead >= 0) prefetch_token(ahead);
          token(b * plan.seq + s, prow, sc.data());
        }
      }
      if (stream) stream_fence();
    });
  }

  void run() const {
    bool position_major = a.pos_mode != 0 && a.seq_len > 0 && a.num_tokens > a.seq_len;
    if (position_major && a.positions != nullptr) {
      position_major = a.ids_int64 ? rows_repeat(static_cast<const int64_t*>(a.positions),
                                                 a.num_tokens, a.seq_len)
                                   : rows_repeat(static_cast<const int32_t*>(a.positions),
                                                 a.num_tokens, a.seq_len);
    }
    if (position_major) {
      run_position_major();
    } else {
      run_token_major();
    }
  }
};

template <FloatKind K>
void run_plan(const Int8EmbeddingArgs& a, const float* inv_freq) {
  const int64_t gs = a.dim / a.num_groups;
  bool fast = false;
#if defined(FUSEDOPS_I8_HAVE_AVX2_PATH)
  if constexpr (K == FloatKind::kF32) fast = cpu_has_avx2() && gs % 8 == 0;
  if constexpr (K == FloatKind::kF16) fast = cpu_has_f16c() && gs % 8 == 0;
  if constexpr (K == FloatKind::kBF16) fast = cpu_has_avx2() && gs % 16 == 0;
#endif
  const int64_t out_bytes = a.num_tokens * a.dim * (K == FloatKind::kF32 ? 4 : 2);
  const bool stream = fast && out_bytes >= kStreamMinBytes;
  const Int8Plan<K> plan{a, inv_freq, gs, stream, fast};
  plan.run();
}

}  // namespace

void int8_embedding_fwd(const Int8EmbeddingArgs& a) {
  if (a.num_tokens <= 0 || a.dim <= 0 || a.num_groups <= 0) return;
  std::vector<float> inv_freq;
  if (a.pos_mode == 2) {
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
