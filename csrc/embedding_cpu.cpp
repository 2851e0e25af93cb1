// CPU kernels of the fused embedding: see embedding_cpu.h for the interface and
// fusedops_math.h for the per-element arithmetic (shared with the CUDA kernel).
//
// Performance notes (B=8, S=1024, D=768 on a 2-core x86 VM, bench/bench_embedding.py):
// - The forward is a pure memory stream. When the positional row depends only on s (positions
//   absent, or identical for every batch row), tokens are visited s-major so each positional
//   row is read (learned) or computed (sinusoid) once and reused from L1 across the batch;
//   sin/cos then cost S*D instead of B*S*D evaluations.
// - Inner loops run over D with restrict pointers so gcc vectorizes them at the baseline ISA;
//   explicit AVX/AVX2/AVX-512 rows are picked at run time where the CPU has them (bf16: the
//   AVX-512 BF16 conversion, 32 elements and one full output line a step).
// - A large fp32 or bf16 output already mapped in memory is written with non-temporal stores
//   (no read-for-ownership of lines that are fully overwritten; use_streaming_stores in
//   cpu_vec.h), which is where most of the win over inductor comes from.
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

#include "c10_float_convert.h"
#include "cpu_vec.h"
#include "float_convert.h"
#include "fusedops_math.h"
#include "lookup_rows.h"
#include "lookup_schedule.h"

namespace fusedops {
namespace cpu {
namespace {

#if defined(FUSEDOPS_X86_SIMD)
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
#if defined(FUSEDOPS_X86_SIMD)
  if (cpu_has_avx()) {
    fused_row_stream_avx(out, w, scale, p, dim);
    return;
  }
#endif
#if defined(__SSE2__)
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

#if defined(FUSEDOPS_X86_SIMD)
// bf16 rows with AVX2: 16 elements a step, non-temporal stores when asked (same values as the
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
    const __m256i packed = bf16_pack16(lo, hi);
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

// bf16 rows with AVX-512: 32 elements (one 64-byte line of output) a step, converted with
// VCVTNEPS2BF16 (bf16_pack16_avx512: the same values as the portable loop). Against the AVX2
// rows this is ~3x fewer instructions per element and full-line stores. Non-temporal stores
// when asked and `out` is 64-byte aligned.
__attribute__((target("avx512bf16,avx512vl,avx512bw,avx512f,avx2"))) void fused_row_bf16_avx512(
    c10::BFloat16* __restrict out, const c10::BFloat16* __restrict w, float scale,
    const float* __restrict p, int64_t dim, bool stream) {
  const __m512 vscale = _mm512_set1_ps(scale);
  stream = stream && (reinterpret_cast<uintptr_t>(out) & 63) == 0;
  int64_t d = 0;
  for (; d + 32 <= dim; d += 32) {
    const __m512i raw = _mm512_loadu_si512(w + d);
    __m512 lo = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
    __m512 hi = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
    lo = _mm512_mul_ps(lo, vscale);
    hi = _mm512_mul_ps(hi, vscale);
    if (p != nullptr) {
      lo = _mm512_add_ps(lo, _mm512_loadu_ps(p + d));
      hi = _mm512_add_ps(hi, _mm512_loadu_ps(p + d + 16));
    }
    const __m512i packed = _mm512_inserti64x4(
        _mm512_castsi256_si512(bf16_pack16_avx512(lo)), bf16_pack16_avx512(hi), 1);
    if (stream) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(out + d), packed);
    } else {
      _mm512_storeu_si512(out + d, packed);
    }
  }
  for (; d < dim; ++d) {
    out[d] = from_f32<c10::BFloat16>(p != nullptr ? fused_value(to_f32(w[d]), scale, p[d])
                                                  : fused_value(to_f32(w[d]), scale));
  }
}

// fp16 rows with the F16C conversion instructions (one instruction per 8 halves, where the
// portable bit-twiddling above costs ~15 vector ops). Compiled for that target only and
// picked at run time, so the library still loads on CPUs without F16C. Same values as the
// portable path: mul then add in fp32 (no FMA), round-to-nearest-even back to fp16.
__attribute__((target("avx2,f16c"))) void fused_row_half_f16c(c10::Half* __restrict out,
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
#if defined(FUSEDOPS_X86_SIMD)
    if (cpu_has_avx512bf16()) {
      fused_row_bf16_avx512(out, w, scale, p, dim, stream);
      return;
    }
    if (cpu_has_avx2()) {
      fused_row_bf16_avx2(out, w, scale, p, dim, stream);
      return;
    }
#endif
    fused_row<c10::BFloat16>(out, w, scale, p, dim);
    return;
  }
#if defined(FUSEDOPS_X86_SIMD)
  if constexpr (std::is_same<T, c10::Half>::value) {
    if (cpu_has_avx2_f16c()) {
      fused_row_half_f16c(out, w, scale, p, dim);
      return;
    }
  }
#endif
  fused_row<T>(out, w, scale, p, dim);
}

// The forward's per-token work, run by run_lookup (lookup_schedule.h).
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

  void token(int64_t n, const float* prow, float* /*scratch*/) const {
    const int64_t row = shard_row(static_cast<int64_t>(a.ids[n]), a.vocab_start, a.num_rows);
    T* out = a.out + n * a.dim;
    if (row < 0) {  // another shard's id (or one the caller let through): positional term only
      write_masked(out, prow);
      return;
    }
    write_row(out, a.weight + row * a.weight_row_stride, a.scale, prow, a.dim, stream);
  }

  // A token without a row: fused_value(0, scale, p) like a zero table row, or zeros.
  void write_masked(T* __restrict out, const float* __restrict prow) const {
    if (prow == nullptr) {
      std::fill(out, out + a.dim, from_f32<T>(0.0f));
      return;
    }
    for (int64_t d = 0; d < a.dim; ++d) out[d] = from_f32<T>(fused_value(0.0f, a.scale, prow[d]));
  }

  // Pull token n's table row toward the cache ahead of use. Gathered rows are random in a
  // table far larger than the caches, so the hardware prefetchers cannot predict them: without
  // this each row costs a full DRAM round trip per thread.
  void prefetch_token(int64_t n) const {
    const int64_t id = shard_row(static_cast<int64_t>(a.ids[n]), a.vocab_start, a.num_rows);
    if (id < 0) return;
    prefetch_row(a.weight + id * a.weight_row_stride, a.dim * static_cast<int64_t>(sizeof(T)));
  }

  int64_t position(int64_t n) const { return a.position(n); }
  bool positions_repeat() const { return a.positions_repeat(); }
  int64_t scratch_size() const { return 0; }
};

}  // namespace

// The sinusoid row is the one compute-bound loop (fp64 sin/cos, ~40 flops per pair), so on
// x86-64 Linux it is also compiled for AVX2 and AVX-512 and picked at load time (ifunc). The
// results are bit-identical across clones: no FMA contraction (-ffp-contract=off), and every
// lane does the same IEEE operations as the scalar code.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FUSEDOPS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDOPS_CLONES
#endif

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

std::vector<float> sinusoid_inv_freqs(int64_t dim, float coef) {
  std::vector<float> inv_freq(static_cast<size_t>((dim + 1) / 2));
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    inv_freq[i] = sinusoid_inv_freq(static_cast<int64_t>(i), coef);
  }
  return inv_freq;
}

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
  const std::vector<float> inv_freq = a.pos_mode == PosMode::kSinusoid
                                          ? sinusoid_inv_freqs(a.dim, a.sinusoid_coef)
                                          : std::vector<float>();
  // Non-temporal stores for fp32 and bf16 rows (the fp16 rows have none).
  const bool stream =
      !std::is_same<T, c10::Half>::value &&
      use_streaming_stores(a.out, a.num_tokens * a.dim * static_cast<int64_t>(sizeof(T)));
  run_lookup(FwdPlan<T, I>{a, inv_freq.data(), stream});
}

template <typename T, typename I>
void embedding_bwd(const EmbeddingBwdArgs<T, I>& a) {
  const int64_t rows = a.num_rows;
  const int64_t dim = a.dim;
  if (rows <= 0 || dim <= 0) return;

  // Stable counting sort of tokens by row. After the fill, end[r] is one past the last token of
  // row r and row r starts at end[r - 1] (0 for r == 0). Skipped: padding and indices outside
  // the table (other shards' ids).
  std::vector<int64_t> end(static_cast<size_t>(rows) + 1, 0);
  for (int64_t n = 0; n < a.num_tokens; ++n) {
    const int64_t r = shard_row(static_cast<int64_t>(a.indices[n]), a.vocab_start, rows);
    if (r >= 0 && r != a.padding_idx) ++end[r + 1];
  }
  for (int64_t r = 0; r < rows; ++r) end[r + 1] += end[r];
  std::vector<int64_t> order(static_cast<size_t>(end[rows]));
  for (int64_t n = 0; n < a.num_tokens; ++n) {
    const int64_t r = shard_row(static_cast<int64_t>(a.indices[n]), a.vocab_start, rows);
    if (r >= 0 && r != a.padding_idx) order[end[r]++] = n;
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

#define FUSEDOPS_INSTANTIATE(T, I)                                  \
  template void embedding_fwd<T, I>(const EmbeddingFwdArgs<T, I>&); \
  template void embedding_bwd<T, I>(const EmbeddingBwdArgs<T, I>&);
FUSEDOPS_FOR_EACH_TABLE_AND_INDEX_TYPE(FUSEDOPS_INSTANTIATE)
#undef FUSEDOPS_INSTANTIATE

template int64_t find_first_outside<int32_t>(const int32_t*, int64_t, int64_t);
template int64_t find_first_outside<int64_t>(const int64_t*, int64_t, int64_t);
template bool rows_repeat<int32_t>(const int32_t*, int64_t, int64_t);
template bool rows_repeat<int64_t>(const int64_t*, int64_t, int64_t);

}  // namespace cpu
}  // namespace fusedops
