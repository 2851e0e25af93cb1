// CPU kernels of the fused BERT embedding + LayerNorm: see embedding_layernorm_cpu.h.
//
// Forward: at::parallel_for over token rows; each row is gathered into an fp32 buffer (word +
// type + position), normalised in two passes over that L1-resident buffer (mean, then the
// centred sum of squares: no cancellation), and written once. Reductions use 16 independent
// fp32 lanes so gcc vectorizes them without reassociating (-ffp-contract=off, no fast-math).
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
#include <vector>

#include "float_convert.h"

namespace fusedops {
namespace cpu {
namespace {

constexpr int64_t kGrainElems = int64_t{1} << 15;  // elements of work per parallel task
constexpr int kLanes = 16;                         // independent fp32 accumulators

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

}  // namespace

template <typename T, typename I>
void embedding_layernorm_fwd(const EmbeddingLayerNormArgs<T, I>& a, T* out, float* mean,
                             float* rstd) {
  const int64_t dim = a.dim;
  if (a.num_tokens <= 0 || dim <= 0) return;
  std::vector<float> gamma, beta;
  param_to_f32(a.ln_weight, dim, 1.0f, gamma);
  param_to_f32(a.ln_bias, dim, 0.0f, beta);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / dim);
  at::parallel_for(0, a.num_tokens, grain, [&](int64_t begin, int64_t stop) {
    std::vector<float> buf(static_cast<size_t>(dim));
    float* __restrict x = buf.data();
    const float* __restrict g = gamma.data();
    const float* __restrict b = beta.data();
    for (int64_t n = begin; n < stop; ++n) {
      gather_row(a, n, x);
      const float mu = lane_sum(x, dim) / static_cast<float>(dim);
      for (int64_t d = 0; d < dim; ++d) x[d] -= mu;
      const float var = lane_dot(x, x, dim) / static_cast<float>(dim);
      const float r = 1.0f / std::sqrt(var + a.eps);
      T* __restrict o = out + n * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] = from_f32<T>(x[d] * r * g[d] + b[d]);
      mean[n] = mu;
      rstd[n] = r;
    }
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
#define FUSEDOPS_INSTANTIATE_T(T)  \
  FUSEDOPS_INSTANTIATE(T, int32_t) \
  FUSEDOPS_INSTANTIATE(T, int64_t)
FUSEDOPS_INSTANTIATE_T(float)
FUSEDOPS_INSTANTIATE_T(c10::Half)
FUSEDOPS_INSTANTIATE_T(c10::BFloat16)
#undef FUSEDOPS_INSTANTIATE_T
#undef FUSEDOPS_INSTANTIATE

}  // namespace cpu
}  // namespace fusedops
