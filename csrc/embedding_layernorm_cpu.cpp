// CPU kernels of the fused BERT embedding + LayerNorm: see embedding_layernorm_cpu.h.
//
// Forward (MiniLM batch, 32 x 128 tokens, D=384: ~6 MB gathered and ~6 MB written): one pass
// per token row on at::parallel_for threads. The word row (random in a table far larger than
// the caches) is prefetched a few tokens ahead; word + type + position are added into an fp32
// row buffer that stays in L1 while the row sum accumulates; a second pass over the buffer
// centres it and sums the squares (no cancellation, unlike E[x^2] - mean^2); a third writes
// (x - mean) * rstd * gamma + beta in the output dtype. The passes run on 16 fp32 lanes (GCC
// vector extensions, compiled for AVX-512, AVX2 and the baseline ISA and picked at run time),
// with element d in lane d % 16 and the lanes then summed pairwise: the same arithmetic on
// every ISA. Small fp16/bf16 tables (token types, positions) are converted to fp32 once per call.
// Backward: the same regather, the LayerNorm input gradient dx [N, D] in fp32, and per-chunk
// partial sums of the LayerNorm parameter gradients over chunks of rows whose size depends only
// on D; the chunks are then reduced in order. The table gradients are a stable counting sort of
// tokens by row and one thread per row summing its tokens' dx rows in token order. Nothing
// depends on the thread count, so results are bit-identical run to run.
#include "embedding_layernorm_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "c10_float_convert.h"
#include "cpu_vec.h"
#include "embedding_cpu.h"  // FUSEDOPS_FOR_EACH_TABLE_AND_INDEX_TYPE
#include "float_convert.h"

namespace fusedops {
namespace cpu {
namespace {

constexpr int64_t kGrainElems = int64_t{1} << 15;  // elements of work per parallel task
constexpr int kLanes = 16;                         // independent fp32 accumulators
constexpr int64_t kCacheLine = 64;
// How many tokens ahead the forward prefetches a word row: the rows are random in a table far
// larger than the caches, so the hardware prefetchers cannot predict them.
constexpr int64_t kPrefetchTokens = 2;

// sum(x[0..n)) in kLanes interleaved partial sums, then the lanes in order.
inline float lane_sum(const float* __restrict x, int64_t n) {
  float lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[d + j];
  }
  for (int j = 0; d < n; ++d, ++j) lanes[j] += x[d];
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  return s;
}

// sum(x[d] * y[d]) the same way.
inline float lane_dot(const float* __restrict x, const float* __restrict y, int64_t n) {
  float lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[d + j] * y[d + j];
  }
  for (int j = 0; d < n; ++d, ++j) lanes[j] += x[d] * y[d];
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  return s;
}

// x = weight[ids[n]] + type_weight[tt(n)] + pos_weight[pos(n)] in fp32.
template <typename T, typename I>
inline void gather_row(const EmbeddingLayerNormArgs<T, I>& a, int64_t n, float* __restrict x) {
  const int64_t dim = a.dim;
  const T* __restrict w = a.weight + static_cast<int64_t>(a.ids[n]) * a.weight_row_stride;
  for (int64_t d = 0; d < dim; ++d) x[d] = to_f32(w[d]);
  if (a.type_weight != nullptr) {
    const int64_t t = a.type_ids != nullptr ? static_cast<int64_t>(a.type_ids[n]) : 0;
    const T* __restrict tw = a.type_weight + t * a.type_row_stride;
    for (int64_t d = 0; d < dim; ++d) x[d] += to_f32(tw[d]);
  }
  if (a.pos_weight != nullptr) {
    const int64_t p = a.positions != nullptr ? static_cast<int64_t>(a.positions[n])
                                             : a.position_offset + n % a.seq_len;
    const T* __restrict pw = a.pos_weight + p * a.pos_row_stride;
    for (int64_t d = 0; d < dim; ++d) x[d] += to_f32(pw[d]);
  }
}

template <typename T>
inline void param_to_f32(const T* p, int64_t dim, float fill, std::vector<float>& out) {
  out.assign(static_cast<size_t>(dim), fill);
  if (p != nullptr) {
    for (int64_t d = 0; d < dim; ++d) out[d] = to_f32(p[d]);
  }
}

// out[r] = sum of dx[n] over tokens n with index(n) == r, in token order (r != skip); rows
// without tokens are zero. index(n) must lie in [0, rows).
template <typename T, typename IndexFn>
void table_grad(const float* dx, int64_t tokens, int64_t dim, int64_t rows, int64_t skip,
                IndexFn index, T* out) {
  std::vector<int64_t> end(static_cast<size_t>(rows) + 1, 0);
  for (int64_t n = 0; n < tokens; ++n) {
    const int64_t r = index(n);
    if (r != skip) ++end[r + 1];
  }
  for (int64_t r = 0; r < rows; ++r) end[r + 1] += end[r];
  std::vector<int64_t> order(static_cast<size_t>(end[rows]));
  for (int64_t n = 0; n < tokens; ++n) {
    const int64_t r = index(n);
    if (r != skip) order[end[r]++] = n;
  }
  // end[r] is now one past the last token of row r; row r starts at end[r - 1].
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(dim, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t stop) {
    std::vector<float> acc(static_cast<size_t>(dim));
    for (int64_t r = begin; r < stop; ++r) {
      const int64_t k0 = r == 0 ? 0 : end[r - 1];
      T* __restrict o = out + r * dim;
      if (k0 == end[r]) {
        std::memset(static_cast<void*>(o), 0, static_cast<size_t>(dim) * sizeof(T));
        continue;
      }
      float* __restrict s = acc.data();
      std::fill(s, s + dim, 0.0f);
      for (int64_t k = k0; k < end[r]; ++k) {
        const float* __restrict g = dx + order[k] * dim;
        for (int64_t d = 0; d < dim; ++d) s[d] += g[d];
      }
      for (int64_t d = 0; d < dim; ++d) o[d] = from_f32<T>(s[d]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Forward rows. One generic body in GCC vector extensions (16 fp32 lanes), inlined into one
// wrapper per ISA (AVX-512, AVX2 + F16C, baseline) that the compiler lowers to zmm, 2 x ymm or
// 4 x xmm: the same IEEE operations in the same order everywhere, so every ISA (and every
// thread count: each row is one thread's) gives bit-identical results.

using f32x16 = float __attribute__((vector_size(64)));
using u32x16 = uint32_t __attribute__((vector_size(64)));
using u16x16 = uint16_t __attribute__((vector_size(32)));

#define FUSEDOPS_ROW_INLINE inline __attribute__((always_inline))

// 16 elements of T at p as fp32 (unaligned).
template <typename T>
FUSEDOPS_ROW_INLINE f32x16 load16(const T* p) {
  if constexpr (std::is_same<T, float>::value) {
    f32x16 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    u16x16 h;
    std::memcpy(&h, p, sizeof(h));
    return reinterpret_cast<f32x16>(__builtin_convertvector(h, u32x16) << 16);
  } else {
    float f[kLanes];
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    for (int j = 0; j < kLanes; ++j) f[j] = half_bits_to_f32(h[j]);
    f32x16 v;
    std::memcpy(&v, f, sizeof(v));
    return v;
  }
}

// 16 fp32 -> 16 elements of T at p (unaligned), rounded like from_f32<T>.
template <typename T>
FUSEDOPS_ROW_INLINE void store16(T* p, f32x16 v) {
  if constexpr (std::is_same<T, float>::value) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    // f32_to_bf16_bits lane-wise: round to nearest even, NaN -> quiet NaN with its sign.
    const u32x16 x = reinterpret_cast<u32x16>(v);
    const u32x16 rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const u32x16 is_nan = reinterpret_cast<u32x16>((x & 0x7fffffffu) > 0x7f800000u);
    const u32x16 bits = (is_nan & ((x >> 16) | 0x40u)) | (~is_nan & rounded);
    const u16x16 h = __builtin_convertvector(bits, u16x16);
    std::memcpy(p, &h, sizeof(h));
  } else {
    float f[kLanes];
    std::memcpy(f, &v, sizeof(v));
    uint16_t* h = reinterpret_cast<uint16_t*>(p);
    for (int j = 0; j < kLanes; ++j) h[j] = f32_to_half_bits(f[j]);
  }
}

// Sum of the 16 lanes, after adding the scalar tail t[0..r) to lanes 0..r-1: a pairwise tree
// (lane j += lane j + w for w = 8, 4, 2, 1), a 4-add dependency chain instead of 16.
FUSEDOPS_ROW_INLINE float reduce_lanes(f32x16 acc, const float* tail, int64_t r) {
  float lanes[kLanes];
  std::memcpy(lanes, &acc, sizeof(acc));
  for (int64_t j = 0; j < r; ++j) lanes[j] += tail[j];
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) lanes[j] += lanes[j + w];
  }
  return lanes[0];
}

// One token row's sources and LayerNorm parameters (fp32 gamma/beta, D floats each).
template <typename T>
struct RowIn {
  const T* w;       // word row
  const float* tw;  // token-type row (fp32) or nullptr
  const float* pw;  // positional row (fp32) or nullptr
  const float* gamma;
  const float* beta;
  float eps;
  int64_t dim;
};

// out = LayerNorm(w + tw + pw) * gamma + beta through the fp32 row buffer x [D]; writes the
// row's mean and rstd. x is summed in 16 interleaved lanes (element d in lane d % 16), then the lanes
// pairwise (reduce_lanes); mean = sum / D; the centred values
// c = x - mean summed squared the same way; var = sum / D; rstd = 1 / sqrt(var + eps);
// out = c * rstd * gamma + beta (no FMA: -ffp-contract=off).
template <typename T>
FUSEDOPS_ROW_INLINE void layernorm_row(const RowIn<T>& in, float* __restrict x, T* __restrict out,
                                       float* mean, float* rstd) {
  const int64_t dim = in.dim;
  const int64_t body = dim - dim % kLanes;
  const int64_t rem = dim - body;
  f32x16 acc = {};
  for (int64_t d = 0; d < body; d += kLanes) {
    f32x16 v = load16(in.w + d);
    if (in.tw != nullptr) v += load16(in.tw + d);
    if (in.pw != nullptr) v += load16(in.pw + d);
    std::memcpy(x + d, &v, sizeof(v));
    acc += v;
  }
  for (int64_t d = body; d < dim; ++d) {
    float v = to_f32(in.w[d]);
    if (in.tw != nullptr) v += in.tw[d];
    if (in.pw != nullptr) v += in.pw[d];
    x[d] = v;
  }
  const float mu = reduce_lanes(acc, x + body, rem) / static_cast<float>(dim);

  f32x16 sq = {};
  for (int64_t d = 0; d < body; d += kLanes) {
    f32x16 v;
    std::memcpy(&v, x + d, sizeof(v));
    v -= mu;
    std::memcpy(x + d, &v, sizeof(v));
    sq += v * v;
  }
  float tail[kLanes];
  for (int64_t d = body; d < dim; ++d) {
    x[d] -= mu;
    tail[d - body] = x[d] * x[d];
  }
  const float var = reduce_lanes(sq, tail, rem) / static_cast<float>(dim);
  const float r = 1.0f / std::sqrt(var + in.eps);

  for (int64_t d = 0; d < body; d += kLanes) {
    f32x16 v, g, b;
    std::memcpy(&v, x + d, sizeof(v));
    std::memcpy(&g, in.gamma + d, sizeof(g));
    std::memcpy(&b, in.beta + d, sizeof(b));
    store16(out + d, v * r * g + b);
  }
  for (int64_t d = body; d < dim; ++d) out[d] = from_f32<T>(x[d] * r * in.gamma[d] + in.beta[d]);
  *mean = mu;
  *rstd = r;
}

// The fp32 rows of a small table (token types, positions). fp32 tables are read in place;
// fp16/bf16 ones are converted once per call when they have no more rows than the call has
// tokens (BERT: 2 type rows, 512 positions), and otherwise row by row into a scratch buffer.
template <typename T>
struct Fp32Table {
  const T* table = nullptr;  // [rows, D] at row_stride, or nullptr: no such term
  int64_t row_stride = 0;
  int64_t dim = 0;
  std::vector<float> converted;  // [rows, D], or empty

  Fp32Table(const T* t, int64_t rows, int64_t stride, int64_t d, int64_t tokens)
      : table(t), row_stride(stride), dim(d) {
    if (std::is_same<T, float>::value || t == nullptr || rows > tokens) return;
    converted.resize(static_cast<size_t>(rows * dim));
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElems / dim), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t d = 0; d < dim; ++d) converted[r * dim + d] = to_f32(t[r * row_stride + d]);
      }
    });
  }

  // Row r as fp32 (scratch: D floats, used when the table was not converted).
  const float* row(int64_t r, float* scratch) const {
    if (table == nullptr) return nullptr;
    if constexpr (std::is_same<T, float>::value) {
      return table + r * row_stride;
    } else {
      if (!converted.empty()) return converted.data() + r * dim;
      for (int64_t d = 0; d < dim; ++d) scratch[d] = to_f32(table[r * row_stride + d]);
      return scratch;
    }
  }
};

// The forward's per-call state: arguments, fp32 gamma/beta [D], fp32 small tables, outputs.
template <typename T, typename I>
struct FwdRows {
  const EmbeddingLayerNormArgs<T, I>& a;
  const float* gamma;
  const float* beta;
  const Fp32Table<T>& types;
  const Fp32Table<T>& positions;
  T* out;  // [N, D]
  float* mean;
  float* rstd;
};

// Tokens [begin, end) with fp32 scratch x [3 * D] (row buffer, type row, positional row).
template <typename T, typename I>
FUSEDOPS_ROW_INLINE void fwd_rows(const FwdRows<T, I>& k, int64_t begin, int64_t end,
                                  float* __restrict x) {
  const EmbeddingLayerNormArgs<T, I>& a = k.a;
  const int64_t row_bytes = a.dim * static_cast<int64_t>(sizeof(T));
  auto word_row = [&](int64_t n) {
    return a.weight + static_cast<int64_t>(a.ids[n]) * a.weight_row_stride;
  };
  for (int64_t n = begin; n < std::min(end, begin + kPrefetchTokens); ++n) {
    const char* row = reinterpret_cast<const char*>(word_row(n));
    for (int64_t off = 0; off < row_bytes; off += kCacheLine) __builtin_prefetch(row + off, 0, 3);
  }
  for (int64_t n = begin; n < end; ++n) {
    if (n + kPrefetchTokens < end) {
      const char* row = reinterpret_cast<const char*>(word_row(n + kPrefetchTokens));
      for (int64_t off = 0; off < row_bytes; off += kCacheLine) {
        __builtin_prefetch(row + off, 0, 3);
      }
    }
    const int64_t t = a.type_ids != nullptr ? static_cast<int64_t>(a.type_ids[n]) : 0;
    const int64_t p = a.positions != nullptr ? static_cast<int64_t>(a.positions[n])
                                             : a.position_offset + n % a.seq_len;
    const RowIn<T> in{word_row(n),
                      k.types.row(t, x + a.dim),
                      k.positions.row(p, x + 2 * a.dim),
                      k.gamma,
                      k.beta,
                      a.eps,
                      a.dim};
    layernorm_row(in, x, k.out + n * a.dim, k.mean + n, k.rstd + n);
  }
}

template <typename T, typename I>
void fwd_rows_base(const FwdRows<T, I>& k, int64_t begin, int64_t end, float* x) {
  fwd_rows(k, begin, end, x);
}

#if defined(FUSEDOPS_X86_SIMD)
template <typename T, typename I>
__attribute__((target("avx2,f16c"))) void fwd_rows_avx2(const FwdRows<T, I>& k, int64_t begin,
                                                        int64_t end, float* x) {
  fwd_rows(k, begin, end, x);
}

template <typename T, typename I>
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c"))) void fwd_rows_avx512(
    const FwdRows<T, I>& k, int64_t begin, int64_t end, float* x) {
  fwd_rows(k, begin, end, x);
}

inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && cpu_has_avx2_f16c();
  return has;
}
#endif

// The widest row loop this CPU runs.
template <typename T, typename I>
auto pick_fwd_rows() -> void (*)(const FwdRows<T, I>&, int64_t, int64_t, float*) {
#if defined(FUSEDOPS_X86_SIMD)
  if (cpu_has_avx512()) return fwd_rows_avx512<T, I>;
  if (cpu_has_avx2_f16c()) return fwd_rows_avx2<T, I>;
#endif
  return fwd_rows_base<T, I>;
}

}  // namespace

template <typename T, typename I>
void embedding_layernorm_fwd(const EmbeddingLayerNormArgs<T, I>& a, T* out, float* mean,
                             float* rstd) {
  const int64_t dim = a.dim;
  if (a.num_tokens <= 0 || dim <= 0) return;
  std::vector<float> gamma, beta;
  param_to_f32(a.ln_weight, dim, 1.0f, gamma);
  param_to_f32(a.ln_bias, dim, 0.0f, beta);
  const int64_t n = a.num_tokens;
  const Fp32Table<T> types(a.type_weight, a.type_weight != nullptr ? a.num_type_rows : 0,
                           a.type_row_stride, dim, n);
  const Fp32Table<T> positions(a.pos_weight, a.pos_weight != nullptr ? a.num_pos_rows : 0,
                               a.pos_row_stride, dim, n);
  const FwdRows<T, I> rows{a, gamma.data(), beta.data(), types, positions, out, mean, rstd};
  const auto run_rows = pick_fwd_rows<T, I>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / dim);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> x(static_cast<size_t>(3 * dim));  // [3, D] fp32 scratch
    run_rows(rows, begin, end, x.data());
  });
}

template <typename T, typename I>
void embedding_layernorm_bwd(const EmbeddingLayerNormArgs<T, I>& a, const T* grad_out,
                             const float* mean, const float* rstd,
                             const EmbeddingLayerNormGrads<T>& grads) {
  const int64_t dim = a.dim;
  const int64_t tokens = a.num_tokens;
  if (dim <= 0) return;
  const bool need_ln = grads.ln_weight != nullptr || grads.ln_bias != nullptr;
  const bool need_type_sum = grads.type_weight != nullptr && a.type_ids == nullptr;
  std::vector<float> gamma;
  param_to_f32(a.ln_weight, dim, 1.0f, gamma);

  // Chunks of rows whose size depends on D only; partial sums per chunk: [chunks, 3, D].
  const int64_t chunk = std::max<int64_t>(1, kGrainElems / dim);
  const int64_t chunks = tokens > 0 ? (tokens + chunk - 1) / chunk : 0;
  // [N, D] fp32, fully written below (no zero-fill).
  std::unique_ptr<float[]> dx(new float[static_cast<size_t>(std::max<int64_t>(tokens, 0) * dim)]);
  std::vector<float> partial(need_ln || need_type_sum ? static_cast<size_t>(chunks * 3 * dim) : 0,
                             0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> buf(static_cast<size_t>(2 * dim));
    float* __restrict x = buf.data();
    float* __restrict wdy = buf.data() + dim;
    const float* __restrict g = gamma.data();
    for (int64_t c = c0; c < c1; ++c) {
      float* __restrict pw = partial.empty() ? nullptr : partial.data() + c * 3 * dim;
      float* __restrict pb = pw == nullptr ? nullptr : pw + dim;
      float* __restrict pt = pw == nullptr ? nullptr : pw + 2 * dim;
      for (int64_t n = c * chunk; n < std::min(tokens, (c + 1) * chunk); ++n) {
        gather_row(a, n, x);
        const float mu = mean[n];
        const float r = rstd[n];
        const T* __restrict dy = grad_out + n * dim;
        for (int64_t d = 0; d < dim; ++d) {
          x[d] = (x[d] - mu) * r;  // xhat
          wdy[d] = to_f32(dy[d]) * g[d];
        }
        const float c1v = lane_dot(x, wdy, dim) / static_cast<float>(dim);
        const float c2v = lane_sum(wdy, dim) / static_cast<float>(dim);
        float* __restrict out = dx.get() + n * dim;
        for (int64_t d = 0; d < dim; ++d) out[d] = (wdy[d] - (x[d] * c1v + c2v)) * r;
        if (need_ln) {
          for (int64_t d = 0; d < dim; ++d) {
            const float dyf = to_f32(dy[d]);
            pw[d] += dyf * x[d];
            pb[d] += dyf;
          }
        }
        if (need_type_sum) {
          for (int64_t d = 0; d < dim; ++d) pt[d] += out[d];
        }
      }
    }
  });

  // Chunk partials in chunk order: [3, D] totals.
  std::vector<float> total(static_cast<size_t>(3 * dim), 0.0f);
  for (int64_t c = 0; c < (partial.empty() ? 0 : chunks); ++c) {
    const float* p = partial.data() + c * 3 * dim;
    for (int64_t d = 0; d < 3 * dim; ++d) total[d] += p[d];
  }
  if (grads.ln_weight != nullptr) {
    for (int64_t d = 0; d < dim; ++d) grads.ln_weight[d] = from_f32<T>(total[d]);
  }
  if (grads.ln_bias != nullptr) {
    for (int64_t d = 0; d < dim; ++d) grads.ln_bias[d] = from_f32<T>(total[dim + d]);
  }

  const float* g = dx.get();
  if (grads.weight != nullptr) {
    table_grad(g, tokens, dim, grads.num_rows, grads.padding_idx,
               [&](int64_t n) { return static_cast<int64_t>(a.ids[n]); }, grads.weight);
  }
  if (grads.pos_weight != nullptr) {
    table_grad(
        g, tokens, dim, grads.pos_rows, -1,
        [&](int64_t n) {
          return a.positions != nullptr ? static_cast<int64_t>(a.positions[n])
                                        : a.position_offset + n % a.seq_len;
        },
        grads.pos_weight);
  }
  if (grads.type_weight != nullptr) {
    if (a.type_ids != nullptr) {
      table_grad(g, tokens, dim, grads.type_rows, -1,
                 [&](int64_t n) { return static_cast<int64_t>(a.type_ids[n]); },
                 grads.type_weight);
    } else {
      std::memset(static_cast<void*>(grads.type_weight), 0,
                  static_cast<size_t>(grads.type_rows * dim) * sizeof(T));
      for (int64_t d = 0; d < dim; ++d) grads.type_weight[d] = from_f32<T>(total[2 * dim + d]);
    }
  }
}

#define FUSEDOPS_INSTANTIATE(T, I)                                                            \
  template void embedding_layernorm_fwd<T, I>(const EmbeddingLayerNormArgs<T, I>&, T*, float*, \
                                              float*);                                        \
  template void embedding_layernorm_bwd<T, I>(const EmbeddingLayerNormArgs<T, I>&, const T*,  \
                                              const float*, const float*,                     \
                                              const EmbeddingLayerNormGrads<T>&);
FUSEDOPS_FOR_EACH_TABLE_AND_INDEX_TYPE(FUSEDOPS_INSTANTIATE)
#undef FUSEDOPS_INSTANTIATE

}  // namespace cpu
}  // namespace fusedops
