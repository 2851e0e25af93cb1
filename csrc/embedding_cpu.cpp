// CPU kernels of the fused embedding: see embedding_cpu.h for the interface and
// fusedops_math.h for the per-element arithmetic (shared with the CUDA kernels).
//
// Performance notes (B=8, S=1024, D=768 fp32 on a 2-core x86 box, see the lead's bench):
// - The forward is a pure memory stream. When the positional row depends only on s (positions
//   absent, or identical for every batch row), tokens are visited s-major so each positional
//   row is read (learned) or computed (sinusoid) once and reused from L1 across the batch;
//   sin/cos then cost S*D instead of B*S*D evaluations.
// - Inner loops run over D with restrict pointers so gcc vectorizes them at the baseline ISA;
//   a large fp32 output is written with non-temporal stores (no read-for-ownership of lines
//   that are fully overwritten), which is where most of the win over inductor comes from.
// - The backward is a stable counting sort by row followed by a row-parallel reduction: every
//   output row is summed by one thread in token order, so results do not depend on threads.
#include "embedding_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#define FUSEDOPS_HAVE_SSE2_STREAM 1
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FUSEDOPS_HAVE_F16C_PATH 1
#endif

#include "fusedops_math.h"
#include "lookup_schedule.h"

namespace fusedops {
namespace cpu {
namespace {

// Below this many output bytes the result likely stays in cache for its consumer, so regular
// stores are kept; above it the output streams past the caches anyway.
constexpr int64_t kStreamMinBytes = int64_t{4} << 20;

inline uint32_t f32_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

inline float to_f32(float v) { return v; }
// bf16 is the top half of an fp32: widening is a shift (vectorizes; c10's cast may not).
inline float to_f32(c10::BFloat16 v) { return f32_from_bits(static_cast<uint32_t>(v.x) << 16); }

// fp16 <-> fp32 written as selects over integer/float ops so loops over D vectorize at the
// baseline ISA (c10's portable versions do not vectorize without F16C, which made fp16 ~3x
// slower than fp32). Exact: checked against torch on all 65536 halves and random floats.
inline float to_f32(c10::Half v) {
  const uint32_t h = v.x;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  // Subnormal: mantissa * 2^-24 (an int->float conversion, immune to denormals-are-zero).
  const uint32_t sub = f32_bits(static_cast<float>(static_cast<int32_t>(em)) * 0x1p-24f);
  // Normal: move the fields and rebias the exponent 15 -> 127; Inf/NaN: exponent 31 -> 255.
  const uint32_t inf_nan = 0u - static_cast<uint32_t>(em >= 0x7c00u);  // all-ones mask
  const uint32_t normal = (em << 13) + 0x38000000u + (inf_nan & 0x38000000u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(em < 0x400u);
  return f32_from_bits(sign | (is_sub & sub) | (~is_sub & normal));
}

template <typename T>
inline T from_f32(float v);

template <>
inline float from_f32<float>(float v) {
  return v;
}

// Round-to-nearest-even fp32 -> bf16 (what c10 does), branch-free so loops vectorize;
// NaN becomes the quiet NaN 0x7fc0 with its sign.
template <>
inline c10::BFloat16 from_f32<c10::BFloat16>(float v) {
  const uint32_t x = f32_bits(v);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t is_nan = 0u - static_cast<uint32_t>((x & 0x7fffffffu) > 0x7f800000u);
  const uint32_t bits = (is_nan & ((x >> 16) | 0x40u)) | (~is_nan & rounded);
  return c10::BFloat16(static_cast<uint16_t>(bits), c10::BFloat16::from_bits());
}

template <>
inline c10::Half from_f32<c10::Half>(float v) {
  const uint32_t x = f32_bits(v);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  // Below 2^-14 the result is subnormal: adding 0.5f leaves an ulp of 2^-24, the fp16
  // subnormal step, so the FPU does the round-to-nearest-even for us.
  const uint32_t sub = f32_bits(f32_from_bits(ax) + 0.5f) - 0x3f000000u;
  // Normal: round the 13 dropped mantissa bits to nearest even, then rebias 127 -> 15.
  const uint32_t normal = (ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u) >> 13;
  // From 65520 (which rounds up to 2^16) on, the result is infinity; NaN stays a quiet NaN.
  // Branch-free selects (masks) so gcc if-converts and vectorizes the loop.
  const uint32_t is_nan = 0u - static_cast<uint32_t>(ax > 0x7f800000u);
  const uint32_t is_inf = 0u - static_cast<uint32_t>(ax >= 0x477ff000u);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(ax < 0x38800000u);
  uint32_t mag = (is_sub & sub) | (~is_sub & normal);
  mag = (is_inf & 0x7c00u) | (~is_inf & mag);
  mag = (is_nan & 0x7e00u) | (~is_nan & mag);
  return c10::Half(static_cast<uint16_t>(sign | mag), c10::Half::from_bits());
}

template <typename T>
inline void row_to_f32(const T* __restrict src, float* __restrict dst, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) dst[d] = to_f32(src[d]);
}

// out = w * scale (+ p). p == nullptr means no positional term.
template <typename T>
inline void fused_row(T* __restrict out, const T* __restrict w, float scale,
                      const float* __restrict p, int64_t dim) {
  if (p != nullptr) {
    for (int64_t d = 0; d < dim; ++d) out[d] = from_f32<T>(fused_value(to_f32(w[d]), scale, p[d]));
  } else {
    for (int64_t d = 0; d < dim; ++d) out[d] = from_f32<T>(fused_value(to_f32(w[d]), scale));
  }
}

#if defined(FUSEDOPS_HAVE_F16C_PATH)
// The streaming row with 32-byte AVX vectors, for CPUs that have them (picked at run time).
__attribute__((target("avx"))) void fused_row_stream_avx(float* __restrict out,
                                                         const float* __restrict w, float scale,
                                                         const float* __restrict p, int64_t dim) {
  int64_t d = 0;
  for (; d < dim && (reinterpret_cast<uintptr_t>(out + d) & 31) != 0; ++d) {
    out[d] = p != nullptr ? fused_value(w[d], scale, p[d]) : fused_value(w[d], scale);
  }
  const __m256 vscale = _mm256_set1_ps(scale);
  if (p != nullptr) {
    for (; d + 16 <= dim; d += 16) {
      const __m256 a =
          _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w + d), vscale), _mm256_loadu_ps(p + d));
      const __m256 b = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w + d + 8), vscale),
                                     _mm256_loadu_ps(p + d + 8));
      _mm256_stream_ps(out + d, a);
      _mm256_stream_ps(out + d + 8, b);
    }
  } else {
    for (; d + 16 <= dim; d += 16) {
      _mm256_stream_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(w + d), vscale));
      _mm256_stream_ps(out + d + 8, _mm256_mul_ps(_mm256_loadu_ps(w + d + 8), vscale));
    }
  }
  for (; d < dim; ++d) {
    out[d] = p != nullptr ? fused_value(w[d], scale, p[d]) : fused_value(w[d], scale);
  }
}

bool cpu_has_avx() {
  static const bool has = __builtin_cpu_supports("avx");
  return has;
}
#endif

// Same values as fused_row<float> (same mul then add), written with non-temporal stores.
inline void fused_row_stream(float* __restrict out, const float* __restrict w, float scale,
                             const float* __restrict p, int64_t dim) {
#if defined(FUSEDOPS_HAVE_F16C_PATH)
  if (cpu_has_avx()) {
    fused_row_stream_avx(out, w, scale, p, dim);
    return;
  }
#endif
#if defined(FUSEDOPS_HAVE_SSE2_STREAM)
  int64_t d = 0;
  // Peel to the 16-byte alignment _mm_stream_ps needs (rows are only 4-byte aligned when D%4).
  for (; d < dim && (reinterpret_cast<uintptr_t>(out + d) & 15) != 0; ++d) {
    out[d] = p != nullptr ? fused_value(w[d], scale, p[d]) : fused_value(w[d], scale);
  }
  const __m128 vscale = _mm_set1_ps(scale);
  if (p != nullptr) {
    for (; d + 8 <= dim; d += 8) {
      const __m128 a = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(w + d), vscale), _mm_loadu_ps(p + d));
      const __m128 b =
          _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(w + d + 4), vscale), _mm_loadu_ps(p + d + 4));
      _mm_stream_ps(out + d, a);
      _mm_stream_ps(out + d + 4, b);
    }
  } else {
    for (; d + 8 <= dim; d += 8) {
      _mm_stream_ps(out + d, _mm_mul_ps(_mm_loadu_ps(w + d), vscale));
      _mm_stream_ps(out + d + 4, _mm_mul_ps(_mm_loadu_ps(w + d + 4), vscale));
    }
  }
  for (; d < dim; ++d) {
    out[d] = p != nullptr ? fused_value(w[d], scale, p[d]) : fused_value(w[d], scale);
  }
#else
  fused_row<float>(out, w, scale, p, dim);
#endif
}

// Non-temporal stores are weakly ordered: fence before the thread hands its rows back.
inline void stream_fence() {
#if defined(FUSEDOPS_HAVE_SSE2_STREAM)
  _mm_sfence();
#endif
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FUSEDOPS_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FUSEDOPS_ROW_CLONES
#endif

// bf16 rows: the portable loop, also compiled for AVX2 (8 lanes of the integer rounding) and
// picked at load time.
FUSEDOPS_ROW_CLONES void fused_row_bf16(c10::BFloat16* __restrict out,
                                        const c10::BFloat16* __restrict w, float scale,
                                        const float* __restrict p, int64_t dim) {
  fused_row<c10::BFloat16>(out, w, scale, p, dim);
}

#if defined(FUSEDOPS_HAVE_F16C_PATH)
// 8 fp32 -> 8 bf16 in the low halves of 32-bit lanes: round to nearest even; NaN -> quiet NaN
// (the same values as from_f32<c10::BFloat16>).
__attribute__((target("avx2"))) inline __m256i bf16_round_rne(__m256 v) {
  const __m256i x = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(x, bias), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

// 16 fp32 -> 16 bf16 in order. packus works per 128-bit lane ([lo0-3, hi0-3 | lo4-7, hi4-7]),
// so the 64-bit quarters are put back in order after it.
__attribute__((target("avx2"))) inline __m256i bf16_pack_rne(__m256 lo, __m256 hi) {
  const __m256i packed = _mm256_packus_epi32(bf16_round_rne(lo), bf16_round_rne(hi));
  return _mm256_permute4x64_epi64(packed, 0xd8);
}

// bf16 rows with AVX2: 16 elements a step, streaming stores when asked (same values as the
// portable loop).
__attribute__((target("avx2"))) void fused_row_bf16_avx2(c10::BFloat16* __restrict out,
                                                         const c10::BFloat16* __restrict w,
                                                         float scale, const float* __restrict p,
                                                         int64_t dim, bool stream) {
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t d = 0;
  if (stream) {
    for (; d < dim && (reinterpret_cast<uintptr_t>(out + d) & 31) != 0; ++d) {
      out[d] = from_f32<c10::BFloat16>(p != nullptr ? fused_value(to_f32(w[d]), scale, p[d])
                                                    : fused_value(to_f32(w[d]), scale));
    }
  }
  for (; d + 16 <= dim; d += 16) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d));
    __m256 lo = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw)), 16));
    __m256 hi = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(raw, 1)), 16));
    lo = _mm256_mul_ps(lo, vscale);
    hi = _mm256_mul_ps(hi, vscale);
    if (p != nullptr) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(p + d));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(p + d + 8));
    }
    const __m256i packed = bf16_pack_rne(lo, hi);
    if (stream) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(out + d), packed);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), packed);
    }
  }
  for (; d < dim; ++d) {
    out[d] = from_f32<c10::BFloat16>(p != nullptr ? fused_value(to_f32(w[d]), scale, p[d])
                                                  : fused_value(to_f32(w[d]), scale));
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// fp16 rows with the F16C conversion instructions (one instruction per 8 halves, where the
// portable bit-twiddling above costs ~15 vector ops). Compiled for that target only and
// picked at run time, so the library still loads on CPUs without F16C. Same values as the
// portable path: mul then add in fp32 (no FMA), round-to-nearest-even back to fp16.
__attribute__((target("avx,f16c"))) void fused_row_half_f16c(c10::Half* __restrict out,
                                                             const c10::Half* __restrict w,
                                                             float scale,
                                                             const float* __restrict p,
                                                             int64_t dim) {
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + d)));
    x = _mm256_mul_ps(x, vscale);
    if (p != nullptr) x = _mm256_add_ps(x, _mm256_loadu_ps(p + d));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + d),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; d < dim; ++d) {
    const float v = p != nullptr ? fused_value(to_f32(w[d]), scale, p[d])
                                 : fused_value(to_f32(w[d]), scale);
    out[d] = from_f32<c10::Half>(v);
  }
}

bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}
#endif

template <typename T>
inline void write_row(T* out, const T* w, float scale, const float* p, int64_t dim, bool stream) {
  if constexpr (std::is_same<T, float>::value) {
    if (stream) {
      fused_row_stream(out, w, scale, p, dim);
      return;
    }
  }
  if constexpr (std::is_same<T, c10::BFloat16>::value) {
#if defined(FUSEDOPS_HAVE_F16C_PATH)
    if (cpu_has_avx2()) {
      fused_row_bf16_avx2(out, w, scale, p, dim, stream);
      return;
    }
#endif
    fused_row_bf16(out, w, scale, p, dim);
    return;
  }
#if defined(FUSEDOPS_HAVE_F16C_PATH)
  if constexpr (std::is_same<T, c10::Half>::value) {
    if (cpu_has_f16c()) {
      fused_row_half_f16c(out, w, scale, p, dim);
      return;
    }
  }
#endif
  fused_row<T>(out, w, scale, p, dim);
}

// The sinusoid row is the one compute-bound loop (fp64 sin/cos, ~40 flops per pair), so on
// x86-64 Linux it is also compiled for AVX2 and AVX-512 and picked at load time (ifunc). The
// results are bit-identical across clones: no FMA contraction (-ffp-contract=off), and every
// lane does the same IEEE operations as the scalar code.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FUSEDOPS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDOPS_CLONES
#endif

// P[pos, :] into prow (capacity 2 * ceil(D/2) floats: odd D writes one spare element).
FUSEDOPS_CLONES void sinusoid_row(int64_t pos, const float* __restrict inv_freq, int64_t dim,
                  float* __restrict prow) {
  const int64_t half = (dim + 1) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double x = static_cast<double>(sinusoid_angle(pos, inv_freq[i]));
    double s, c;
    sincos_fast(x, &s, &c);
    prow[2 * i] = static_cast<float>(s);
    prow[2 * i + 1] = static_cast<float>(c);
  }
  // inv_freq[0] == 1 is the largest, so float(pos) bounds every angle; beyond the fast range
  // (positions above ~1.6e7) redo the large angles with libm.
  if (std::fabs(static_cast<double>(static_cast<float>(pos))) > kSinCosFastLimit) {
    for (int64_t i = 0; i < half; ++i) {
      const double x = static_cast<double>(sinusoid_angle(pos, inv_freq[i]));
      if (std::fabs(x) > kSinCosFastLimit) {
        prow[2 * i] = static_cast<float>(std::sin(x));
        prow[2 * i + 1] = static_cast<float>(std::cos(x));
      }
    }
  }
}

template <typename T, typename I>
struct FwdPlan {
  const EmbeddingFwdArgs<T, I>& a;
  const float* inv_freq;  // [ceil(D/2)] for kSinusoid
  bool stream;

  // Positional row for position pos as fp32, or nullptr (no positional term / out of range).
  // buf has capacity 2 * ceil(D/2).
  const float* pos_row(int64_t pos, float* buf) const {
    if (a.pos_mode == PosMode::kLearned) {
      if (pos < 0 || pos >= a.pos_rows) return nullptr;  // validated by the caller; never read OOB
      const T* src = a.pos_weight + pos * a.pos_row_stride;
      if constexpr (std::is_same<T, float>::value) {
        return src;
      } else {
        row_to_f32(src, buf, a.dim);
        return buf;
      }
    }
    if (a.pos_mode == PosMode::kSinusoid) {
      sinusoid_row(pos, inv_freq, a.dim, buf);
      return buf;
    }
    return nullptr;
  }

  void token(int64_t n, const float* prow) const {
    const int64_t id = static_cast<int64_t>(a.ids[n]);
    T* out = a.out + n * a.dim;
    if (id < 0 || id >= a.num_rows) {  // validated by the caller; never read OOB
      std::fill(out, out + a.dim, from_f32<T>(0.0f));
      return;
    }
    write_row(out, a.weight + id * a.weight_row_stride, a.scale, prow, a.dim, stream);
  }

  // Pull token n's table row toward the cache ahead of use. Gathered rows are random in a
  // table far larger than the caches, so the hardware prefetchers cannot predict them: without
  // this each row costs a full DRAM round trip per thread.
  void prefetch_token(int64_t n) const {
    const int64_t id = static_cast<int64_t>(a.ids[n]);
    if (id < 0 || id >= a.num_rows) return;
    const char* row = reinterpret_cast<const char*>(a.weight + id * a.weight_row_stride);
    const int64_t bytes = a.dim * static_cast<int64_t>(sizeof(T));
    for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(row + off, 0, 3);
  }

  int64_t position(int64_t n, int64_t s) const {
    return a.positions != nullptr ? static_cast<int64_t>(a.positions[n]) : a.position_offset + s;
  }

  // Token-major: each token gets its own positional row (cached while pos repeats).
  void run_token_major() const {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / a.dim);
    at::parallel_for(0, a.num_tokens, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(a.pos_mode == PosMode::kNone ? 0 : 2 * ((a.dim + 1) / 2));
      int64_t last_pos = 0;
      const float* prow = nullptr;
      bool have_row = false;
      for (int64_t n = begin; n < end; ++n) {
        if (n + kPrefetchTokens < end) prefetch_token(n + kPrefetchTokens);
        if (a.pos_mode != PosMode::kNone) {
          const int64_t pos = position(n, n % a.seq_len);
          if (!have_row || pos != last_pos) {
            prow = pos_row(pos, buf.data());
            last_pos = pos;
            have_row = true;
          }
        }
        token(n, prow);
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
      std::vector<float> buf(2 * ((a.dim + 1) / 2));
      int64_t last_s = -1;
      const float* prow = nullptr;
      for (int64_t u = begin; u < end; ++u) {
        const int64_t s = plan.column(u);
        if (s != last_s) {
          prow = pos_row(position(s, s), buf.data());
          last_s = s;
        }
        for (int64_t b = plan.batch_begin(u); b < plan.batch_end(u); ++b) {
          const int64_t ahead = plan.token_ahead(u, b, end);
          if (ahead >= 0) prefetch_token(ahead);
          token(b * plan.seq + s, prow);
        }
      }
      if (stream) stream_fence();
    });
  }
};

}  // namespace

template <typename I>
int64_t find_first_outside(const I* v, int64_t n, int64_t hi) {
  using U = typename std::make_unsigned<I>::type;
  // Negative values wrap to >= 2^(bits-1) >= bound, so one unsigned compare checks both ends.
  const U bound = static_cast<U>(std::min<int64_t>(
      hi, static_cast<int64_t>(std::numeric_limits<I>::max()) + (sizeof(I) < 8 ? 1 : 0)));
  constexpr int64_t kBlock = 4096;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    // Branch-free OR-reduction (vectorizes); only a block that has a bad value is rescanned.
    U bad = 0;
    for (int64_t k = b0; k < b1; ++k) bad |= static_cast<U>(static_cast<U>(v[k]) >= bound);
    if (bad != 0) {
      for (int64_t k = b0; k < b1; ++k) {
        if (static_cast<U>(v[k]) >= bound) return k;
      }
    }
  }
  return -1;
}

template <typename I>
int64_t find_first_negative(const I* v, int64_t n) {
  constexpr int64_t kBlock = 4096;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    I low = 0;
    for (int64_t k = b0; k < b1; ++k) low = std::min(low, v[k]);
    if (low < 0) {
      for (int64_t k = b0; k < b1; ++k) {
        if (v[k] < 0) return k;
      }
    }
  }
  return -1;
}

template <typename I>
bool rows_repeat(const I* positions, int64_t num_tokens, int64_t seq_len) {
  for (int64_t b0 = seq_len; b0 < num_tokens; b0 += seq_len) {
    if (std::memcmp(positions + b0, positions, static_cast<size_t>(seq_len) * sizeof(I)) != 0) {
      return false;
    }
  }
  return true;
}

template <typename T, typename I>
void embedding_fwd(const EmbeddingFwdArgs<T, I>& a) {
  if (a.num_tokens <= 0 || a.dim <= 0) return;
  std::vector<float> inv_freq;
  if (a.pos_mode == PosMode::kSinusoid) {
    inv_freq.resize((a.dim + 1) / 2);
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      inv_freq[i] = sinusoid_inv_freq(static_cast<int64_t>(i), a.sinusoid_coef);
    }
  }
  // Streaming stores only for fp32: measured on bf16 they lost to regular stores (D=2048:
  // 13.5 vs 11.0 ms), so fused_row_bf16_avx2 keeps its stream path switched off for now.
  const bool stream = std::is_same<T, float>::value &&
                      a.num_tokens * a.dim * static_cast<int64_t>(sizeof(T)) >= kStreamMinBytes;
  const FwdPlan<T, I> plan{a, inv_freq.data(), stream};
  const bool position_major =
      a.pos_mode != PosMode::kNone && a.seq_len > 0 && a.num_tokens > a.seq_len &&
      (a.positions == nullptr || rows_repeat(a.positions, a.num_tokens, a.seq_len));
  if (position_major) {
    plan.run_position_major();
  } else {
    plan.run_token_major();
  }
}

template <typename T, typename I>
void embedding_bwd(const EmbeddingBwdArgs<T, I>& a) {
  const int64_t rows = a.num_rows;
  const int64_t dim = a.dim;
  if (rows <= 0 || dim <= 0) return;

  // Stable counting sort of tokens by row. After the fill, end[r] is one past the last token of
  // row r and row r starts at end[r - 1] (0 for r == 0). Skipped: padding and invalid indices.
  std::vector<int64_t> end(static_cast<size_t>(rows) + 1, 0);
  for (int64_t n = 0; n < a.num_tokens; ++n) {
    const int64_t r = static_cast<int64_t>(a.indices[n]);
    if (r >= 0 && r < rows && r != a.padding_idx) ++end[r + 1];
  }
  for (int64_t r = 0; r < rows; ++r) end[r + 1] += end[r];
  std::vector<int64_t> order(static_cast<size_t>(end[rows]));
  for (int64_t n = 0; n < a.num_tokens; ++n) {
    const int64_t r = static_cast<int64_t>(a.indices[n]);
    if (r >= 0 && r < rows && r != a.padding_idx) order[end[r]++] = n;
  }
  // end[r] now holds the old end[r + 1].

  const int64_t grain = std::max<int64_t>(1, kGrainElems / dim);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t stop) {
    std::vector<float> acc(static_cast<size_t>(dim));
    int64_t r = begin;
    while (r < stop) {
      const int64_t k0 = r == 0 ? 0 : end[r - 1];
      if (k0 == end[r]) {
        // A run of rows without tokens: one memset (large ones go non-temporal in libc).
        int64_t r1 = r + 1;
        while (r1 < stop && end[r1 - 1] == end[r1]) ++r1;
        std::memset(static_cast<void*>(a.grad_table + r * dim), 0,
                    static_cast<size_t>((r1 - r) * dim) * sizeof(T));
        r = r1;
        continue;
      }
      float* __restrict s = acc.data();
      std::fill(s, s + dim, 0.0f);
      for (int64_t k = k0; k < end[r]; ++k) {
        const T* __restrict g = a.grad_out + order[k] * dim;
        for (int64_t d = 0; d < dim; ++d) s[d] = add_rn(s[d], to_f32(g[d]));
      }
      T* __restrict out = a.grad_table + r * dim;
      for (int64_t d = 0; d < dim; ++d) out[d] = from_f32<T>(mul_rn(s[d], a.scale));
      ++r;
    }
  });
}

#define FUSEDOPS_INSTANTIATE(T, I)                                        \
  template void embedding_fwd<T, I>(const EmbeddingFwdArgs<T, I>&);       \
  template void embedding_bwd<T, I>(const EmbeddingBwdArgs<T, I>&);
#define FUSEDOPS_INSTANTIATE_T(T) \
  FUSEDOPS_INSTANTIATE(T, int32_t) \
  FUSEDOPS_INSTANTIATE(T, int64_t)
FUSEDOPS_INSTANTIATE_T(float)
FUSEDOPS_INSTANTIATE_T(c10::Half)
FUSEDOPS_INSTANTIATE_T(c10::BFloat16)
#undef FUSEDOPS_INSTANTIATE_T
#undef FUSEDOPS_INSTANTIATE

template int64_t find_first_outside<int32_t>(const int32_t*, int64_t, int64_t);
template int64_t find_first_outside<int64_t>(const int64_t*, int64_t, int64_t);
template int64_t find_first_negative<int32_t>(const int32_t*, int64_t);
template int64_t find_first_negative<int64_t>(const int64_t*, int64_t);
template bool rows_repeat<int32_t>(const int32_t*, int64_t, int64_t);
template bool rows_repeat<int64_t>(const int64_t*, int64_t, int64_t);

}  // namespace cpu
}  // namespace fusedops
