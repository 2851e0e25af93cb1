// CPU kernels of the factorized embedding: see factorized_embedding_cpu.h for the interface.
//
// All three products (forward a[ids] @ b, backward G @ b^T and a^T G) run through one register
// tile: tile_product computes C = A @ B for up to kMR rows of A (fp32, any row stride) and up to
// kNR columns of B (fp32, any row stride), then applies the epilogue (times scale, plus an
// optional fp32 positional row, one conversion to T) and stores each row where its pointer
// says. On CPUs with AVX-512 the tile is 8 x 48 accumulators in 24 zmm registers (per k: three
// loads of B, eight broadcasts of A, 24 FMAs, which keeps both FMA ports busy); elsewhere a
// portable loop the compiler vectorizes at the baseline ISA.
//
// Forward: b is packed once into fp32 column panels [r][kNR] (48 KB per panel at r = 256), and
// tokens are processed in tiles: the tile's factor tokens gather their a rows as fp32 [tile, r],
// then every panel of b is applied to all row blocks of the tile while it is in L1/L2, and the
// epilogue writes the output rows directly (hot tokens are a scaled copy of their exact row).
// Positional rows come from pos_weight directly (fp32), from a per-column fp32 table built once
// when positions repeat across the batch (sinusoid, or a learned table in fp16/bf16), or per
// token otherwise.
//
// Backward: the factor tokens are grouped by id (stable counting sort); G[u] sums the gradient
// rows of unique token u in token order (fp32). grad_a[t] = scale * G[u] @ b^T (b^T packed into
// panels) and grad_b = scale * A_u^T G (G packed into panels) with A_u the a rows of the unique
// tokens in ascending id order. Every output element is reduced over its reduction index in a
// fixed order (one FMA chain, or for grad_b's sum over the unique tokens FMA chains over chunks
// of kTokenChunk tokens whose results are added in chunk order; G sums an id's tokens in the same
// chunks), so results do not depend on how the outputs are split between threads.
// grad_hot is the embedding backward (embedding_bwd) over the tokens' hot slots.
#include "factorized_embedding_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "c10_float_convert.h"
#include "cpu_vec.h"
#include "embedding_cpu.h"
#include "fusedops_math.h"
#include "lookup_rows.h"
#include "lookup_schedule.h"

namespace fusedops {
namespace cpu {
namespace {

constexpr int kMR = 8;   // rows of a register tile
constexpr int kNR = 48;  // columns of a register tile (three 16-float vectors)
// Tokens per forward tile (the gathered a rows, 128 KB at r = 256) and unique tokens per
// backward tile.
constexpr int64_t kTileTokens = 128;
constexpr int64_t kBwdTileRows = 64;
// Backward sums over tokens (grad_b's over the unique tokens, G's over the tokens of one id) add
// chunks of this many tokens in fp32 and then the chunk sums in chunk order: the rounding error
// grows with the chunk length plus the number of chunks instead of with the token count (one
// 8192-term fp32 chain loses about 8x more than MKL's blocked GEMM). A constant, so the result
// does not depend on the thread count.
constexpr int64_t kTokenChunk = 256;

// An uninitialised fp32 buffer of n floats (std::vector would first zero it: a wasted pass over
// memory that is written in full right after).
using Floats = std::unique_ptr<float[]>;
inline Floats floats(int64_t n) {
  return Floats(new float[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// at::parallel_for grain of units of `work` elements (or multiply-adds) each: a loop of less
// total work than kGrainElems runs on the calling thread, where waking the pool costs more.
inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(work, 1));
}

// Where a register tile's results go: row i to rows[i][col + j] (j < nr), after
// v * scale (+ pos[i][col + j] when pos != nullptr and pos[i] != nullptr). stream: write full,
// aligned 64-byte lines of an fp32 output with non-temporal stores (the caller fences).
template <typename T>
struct TileOut {
  T* const* rows;
  const float* const* pos;
  int64_t col;
  float scale;
  bool stream = false;
};

template <typename T>
void tile_portable(int64_t K, const float* A, int64_t lda, int mr, const float* B, int64_t ldb,
                   int nr, int64_t kc, const TileOut<T>& o) {
  float acc[kMR][kNR];   // the sum over the current chunk of k
  float part[kMR][kNR];  // the sum of the finished chunks
  const int64_t step = kc > 0 && kc < K ? kc : K;
  for (int64_t k0 = 0;; k0 += step) {
    const int64_t k1 = std::min(K, k0 + step);
    for (int i = 0; i < mr; ++i) std::fill(acc[i], acc[i] + nr, 0.0f);
    for (int64_t k = k0; k < k1; ++k) {
      const float* __restrict bk = B + k * ldb;
      for (int i = 0; i < mr; ++i) {
        const float aik = A[i * lda + k];
        float* __restrict c = acc[i];
        for (int j = 0; j < nr; ++j) c[j] = add_rn(c[j], mul_rn(aik, bk[j]));
      }
    }
    if (step == K) break;  // one chain
    for (int i = 0; i < mr; ++i) {
      for (int j = 0; j < nr; ++j) part[i][j] = k0 == 0 ? acc[i][j] : add_rn(part[i][j], acc[i][j]);
    }
    if (k1 == K) {
      for (int i = 0; i < mr; ++i) std::copy(part[i], part[i] + nr, acc[i]);
      break;
    }
  }
  for (int i = 0; i < mr; ++i) {
    T* __restrict out = o.rows[i] + o.col;
    const float* p = o.pos != nullptr ? o.pos[i] : nullptr;
    if (p != nullptr) {
      p += o.col;
      for (int j = 0; j < nr; ++j) out[j] = from_f32<T>(fused_value(acc[i][j], o.scale, p[j]));
    } else {
      for (int j = 0; j < nr; ++j) out[j] = from_f32<T>(fused_value(acc[i][j], o.scale));
    }
  }
}

#if defined(FUSEDOPS_X86_SIMD)
// GCC's AVX-512 headers make the pass-through operand of unmasked intrinsics from a
// self-initialised variable, which -Wmaybe-uninitialized (or -Wuninitialized, depending on
// how far they are inlined) reports once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define FUSEDOPS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

bool cpu_has_avx512_tile() {
  static const bool has = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  return has;
}

// Lanes [off, off + 16) of a row of nr valid columns.
inline __mmask16 col_mask(int nr, int off) {
  const int n = std::min(16, std::max(0, nr - off));
  return static_cast<__mmask16>(n == 16 ? 0xffffu : (1u << n) - 1u);
}

// 16 fp32 -> 16 bf16 with the rounding of f32_to_bf16_bits (round to nearest even, NaN -> quiet
// NaN with its sign).
FUSEDOPS_AVX512 inline __m256i bf16_round16(__m512 v) {
  const __m512i x = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(x, bias), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

template <typename T>
FUSEDOPS_AVX512 inline void store16(T* out, __m512 v, __mmask16 m, bool stream) {
  if constexpr (std::is_same<T, float>::value) {
    if (stream && m == 0xffff && (reinterpret_cast<uintptr_t>(out) & 63) == 0) {
      _mm512_stream_ps(out, v);
    } else {
      _mm512_mask_storeu_ps(out, m, v);
    }
  } else if constexpr (std::is_same<T, c10::Half>::value) {
    _mm256_mask_storeu_epi16(out, m,
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_mask_storeu_epi16(out, m, bf16_round16(v));
  }
}

// M rows (1..kMR) and NV vectors of 16 columns (1..3): nr <= 16 * NV, so a narrow last panel
// (e.g. the 16 columns left of r = 64) costs no FMAs on absent columns.
template <typename T, int M, int NV>
FUSEDOPS_AVX512 void tile_avx512(int64_t K, const float* __restrict A, int64_t lda,
                                 const float* __restrict B, int64_t ldb, int nr, int64_t kc,
                                 const TileOut<T>& o) {
  __mmask16 mask[NV];
  for (int q = 0; q < NV; ++q) mask[q] = col_mask(nr, 16 * q);
  // Request the output lines (for writing) and the positional lines now, so that their cache
  // misses overlap the products instead of stalling the stores at the end.
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    const float* p = o.pos != nullptr ? o.pos[i] : nullptr;
    for (int q = 0; q < NV; ++q) {
      if (!o.stream) __builtin_prefetch(o.rows[i] + o.col + 16 * q, 1, 3);
      if (p != nullptr) __builtin_prefetch(p + o.col + 16 * q, 0, 3);
    }
  }
  // c: the sum over the current chunk of k (registers); part: the sum of the finished chunks
  // (memory: the registers are taken, and it is touched once per chunk).
  __m512 c[M][NV];
  alignas(64) float part[M][NV * 16];
  const int64_t step = kc > 0 && kc < K ? kc : K;
  for (int64_t k0 = 0;; k0 += step) {
    const int64_t k1 = std::min(K, k0 + step);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q) c[i][q] = _mm512_setzero_ps();
    }
    for (int64_t k = k0; k < k1; ++k) {
      const float* bk = B + k * ldb;
      __m512 bv[NV];
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q) bv[q] = _mm512_maskz_loadu_ps(mask[q], bk + 16 * q);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        const __m512 av = _mm512_set1_ps(A[i * lda + k]);
#pragma GCC unroll 3
        for (int q = 0; q < NV; ++q) c[i][q] = _mm512_fmadd_ps(av, bv[q], c[i][q]);
      }
    }
    if (step == K) break;  // one chain
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q) {
        float* pq = part[i] + 16 * q;
        _mm512_store_ps(pq, k0 == 0 ? c[i][q] : _mm512_add_ps(_mm512_load_ps(pq), c[i][q]));
      }
    }
    if (k1 == K) {
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
#pragma GCC unroll 3
        for (int q = 0; q < NV; ++q) c[i][q] = _mm512_load_ps(part[i] + 16 * q);
      }
      break;
    }
  }
  const __m512 vs = _mm512_set1_ps(o.scale);
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    T* out = o.rows[i] + o.col;
    const float* p = o.pos != nullptr ? o.pos[i] : nullptr;
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q) {
      // Multiply, then add: the two roundings of fused_value.
      __m512 v = _mm512_mul_ps(c[i][q], vs);
      if (p != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[q], p + o.col + 16 * q));
      store16<T>(out + 16 * q, v, mask[q], o.stream);
    }
  }
}

template <typename T, int NV>
void tile_avx512_rows(int64_t K, const float* A, int64_t lda, int mr, const float* B,
                      int64_t ldb, int nr, int64_t kc, const TileOut<T>& o) {
  switch (mr) {
    case 1: return tile_avx512<T, 1, NV>(K, A, lda, B, ldb, nr, kc, o);
    case 2: return tile_avx512<T, 2, NV>(K, A, lda, B, ldb, nr, kc, o);
    case 3: return tile_avx512<T, 3, NV>(K, A, lda, B, ldb, nr, kc, o);
    case 4: return tile_avx512<T, 4, NV>(K, A, lda, B, ldb, nr, kc, o);
    case 5: return tile_avx512<T, 5, NV>(K, A, lda, B, ldb, nr, kc, o);
    case 6: return tile_avx512<T, 6, NV>(K, A, lda, B, ldb, nr, kc, o);
    case 7: return tile_avx512<T, 7, NV>(K, A, lda, B, ldb, nr, kc, o);
    default: return tile_avx512<T, kMR, NV>(K, A, lda, B, ldb, nr, kc, o);
  }
}
#pragma GCC diagnostic pop
#endif

// C[i, j] = sum_k A[i * lda + k] * B[k * ldb + j] for i < mr <= kMR, j < nr <= kNR, through
// the epilogue of o. B is read only in columns j < nr. kc <= 0: each C[i, j] is one FMA chain
// over k; kc > 0: one chain per chunk of kc consecutive k, the chunk sums added in chunk order.
template <typename T>
void tile_product(int64_t K, const float* A, int64_t lda, int mr, const float* B, int64_t ldb,
                  int nr, const TileOut<T>& o, int64_t kc = 0) {
  if (mr <= 0 || nr <= 0) return;
#if defined(FUSEDOPS_X86_SIMD)
  if (cpu_has_avx512_tile()) {
    switch ((nr + 15) / 16) {
      case 1: return tile_avx512_rows<T, 1>(K, A, lda, mr, B, ldb, nr, kc, o);
      case 2: return tile_avx512_rows<T, 2>(K, A, lda, mr, B, ldb, nr, kc, o);
      default: return tile_avx512_rows<T, 3>(K, A, lda, mr, B, ldb, nr, kc, o);
    }
  }
#endif
  tile_portable<T>(K, A, lda, mr, B, ldb, nr, kc, o);
}

inline int64_t panels_of(int64_t cols) { return (cols + kNR - 1) / kNR; }

// fp32 column panels of a [rows, cols] matrix: dst[p][k][j] = src(k, p * kNR + j), zero past
// the last column. src(k, c) = src[k * row_stride + c * col_stride].
template <typename T>
Floats pack_panels(const T* src, int64_t rows, int64_t cols, int64_t row_stride,
                   int64_t col_stride) {
  const int64_t panels = panels_of(cols);
  Floats dst = floats(panels * rows * kNR);
  at::parallel_for(0, panels, grain_for(rows * kNR), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c0 = p * kNR;
      const int64_t nc = std::min<int64_t>(kNR, cols - c0);
      for (int64_t k = 0; k < rows; ++k) {
        float* __restrict d = dst.get() + (p * rows + k) * kNR;
        const T* s = src + k * row_stride + c0 * col_stride;
        for (int64_t j = 0; j < nc; ++j) d[j] = to_f32(s[j * col_stride]);
        std::fill(d + nc, d + kNR, 0.0f);
      }
    }
  });
  return dst;
}

// The forward's positional rows (fp32).
template <typename T, typename I>
struct PosRows {
  const FactorizedFwdArgs<T, I>& a;
  int64_t row_len = 0;          // 2 * ceil(D / 2): sinusoid_row's capacity
  std::vector<float> inv_freq;  // [ceil(D/2)] for kSinusoid
  bool direct = false;          // learned fp32 table: rows used in place
  Floats table;                 // [seq_len, row_len] when positions repeat across the batch

  explicit PosRows(const FactorizedFwdArgs<T, I>& args) : a(args) {
    if (a.pos_mode == PosMode::kNone) return;
    row_len = 2 * ((a.dim + 1) / 2);
    if (a.pos_mode == PosMode::kSinusoid) inv_freq = sinusoid_inv_freqs(a.dim, a.sinusoid_coef);
    direct = a.pos_mode == PosMode::kLearned && std::is_same<T, float>::value;
    if (direct) return;
    if (a.positions_repeat()) {
      table = floats(a.seq_len * row_len);
      at::parallel_for(0, a.seq_len, grain_for(a.dim), [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) fill(a.position(s), table.get() + s * row_len);
      });
    }
  }

  // Positional row pos built in buf (row_len floats).
  const float* fill(int64_t pos, float* buf) const {
    if (a.pos_mode == PosMode::kSinusoid) {
      sinusoid_row(pos, inv_freq.data(), a.dim, buf);
    } else if (pos >= 0 && pos < a.pos_rows) {
      row_to_f32(a.pos_weight + pos * a.pos_row_stride, buf, a.dim);
    } else {
      std::fill(buf, buf + a.dim, 0.0f);  // validated by the caller; never read OOB
    }
    return buf;
  }

  // Token n's positional row: in place, from the table, or built in buf (row_len floats).
  const float* row(int64_t n, float* buf) const {
    if (a.pos_mode == PosMode::kNone) return nullptr;
    if (direct) {
      const int64_t pos = a.position(n);
      if (pos < 0 || pos >= a.pos_rows) return nullptr;  // validated by the caller
      return reinterpret_cast<const float*>(a.pos_weight) + pos * a.pos_row_stride;
    }
    if (table != nullptr) return table.get() + (n % a.seq_len) * row_len;
    return fill(a.position(n), buf);
  }
  bool needs_buffer() const { return a.pos_mode != PosMode::kNone && !direct && table == nullptr; }
};

}  // namespace

template <typename T, typename I>
void factorized_fwd(const FactorizedFwdArgs<T, I>& a) {
  const int64_t N = a.num_tokens, D = a.dim, R = a.rank, V = a.num_rows;
  if (N <= 0 || D <= 0) return;
  // b as fp32 column panels [panels][R][kNR].
  const Floats bpack = pack_panels(a.b, R, D, a.b_row_stride, 1);
  const PosRows<T, I> pos(a);
  const int64_t panels = panels_of(D);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // A tile per thread at least (small N), at most kTileTokens.
  const int64_t per_thread = (N + threads - 1) / threads;
  const int64_t tile =
      std::min(kTileTokens, std::max<int64_t>(kMR, (per_thread + kMR - 1) / kMR * kMR));
  const int64_t tiles = (N + tile - 1) / tile;
  const int64_t a_bytes = R * static_cast<int64_t>(sizeof(T));
  // Non-temporal stores for a large fp32 output already mapped in memory (use_streaming_stores):
  // the register tile writes whole 64-byte lines, so no line is read for ownership.
  const bool stream = std::is_same<T, float>::value &&
                      use_streaming_stores(a.out, N * D * static_cast<int64_t>(sizeof(T)));

  at::parallel_for(0, tiles, grain_for(tile * (R + 1) * D), [&](int64_t t0, int64_t t1) {
    const Floats atile = floats(tile * R);
    const Floats pbuf = floats(pos.needs_buffer() ? tile * pos.row_len : 0);
    std::vector<T*> rows(static_cast<size_t>(tile));
    std::vector<const float*> prows(static_cast<size_t>(tile));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * tile;
      const int64_t n1 = std::min(N, n0 + tile);
      int64_t nf = 0;  // factor tokens of the tile
      for (int64_t n = n0; n < n1; ++n) {
        if (n + kPrefetchTokens < n1) {
          const int64_t ahead = static_cast<int64_t>(a.ids[n + kPrefetchTokens]);
          if (ahead >= 0 && ahead < V) prefetch_row(a.a + ahead * a.a_row_stride, a_bytes);
        }
        const float* p = pos.row(n, pbuf.get() + (n - n0) * pos.row_len);
        const int64_t id = static_cast<int64_t>(a.ids[n]);
        const bool valid = id >= 0 && id < V;  // validated by the caller; never read OOB
        const int64_t slot = valid && a.hot_slots != nullptr ? a.hot_slots[id] : -1;
        T* out = a.out + n * D;
        if (slot >= 0 && slot < a.num_hot) {
          fused_row(out, a.hot_rows + slot * a.hot_row_stride, a.scale, p, D);
          continue;
        }
        float* dst = atile.get() + nf * R;
        if (valid) {
          row_to_f32(a.a + id * a.a_row_stride, dst, R);
        } else {
          std::fill(dst, dst + R, 0.0f);
        }
        rows[nf] = out;
        prows[nf] = p;
        ++nf;
      }
      for (int64_t pn = 0; pn < panels; ++pn) {
        const int nr = static_cast<int>(std::min<int64_t>(kNR, D - pn * kNR));
        const float* bp = bpack.get() + pn * R * kNR;
        for (int64_t i0 = 0; i0 < nf; i0 += kMR) {
          const TileOut<T> o{rows.data() + i0,
                             a.pos_mode != PosMode::kNone ? prows.data() + i0 : nullptr,
                             pn * kNR, a.scale, stream};
          tile_product<T>(R, atile.get() + i0 * R, R,
                          static_cast<int>(std::min<int64_t>(kMR, nf - i0)), bp, kNR, nr, o);
        }
      }
    }
    if (stream) stream_fence();
  });
}

template <typename T, typename I>
void factorized_bwd(const FactorizedBwdArgs<T, I>& a) {
  const int64_t N = a.num_tokens, D = a.dim, R = a.rank, V = a.num_rows;
  // Token n's hot slot, or -1 (not hot, or an id outside [0, V)).
  auto slot_of = [&](int64_t id) -> int64_t {
    if (a.hot_slots == nullptr || id < 0 || id >= V) return -1;
    const int64_t s = a.hot_slots[id];
    return s >= 0 && s < a.num_hot ? s : -1;
  };

  if (a.grad_hot != nullptr && a.num_hot > 0 && D > 0) {
    // grad_hot is the embedding backward over the tokens' slots (-1: no hot row).
    std::vector<int32_t> slots(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) {
      const int64_t id = static_cast<int64_t>(a.ids[n]);
      slots[n] = static_cast<int32_t>(id == a.padding_idx ? -1 : slot_of(id));
    }
    EmbeddingBwdArgs<T, int32_t> e;
    e.grad_out = a.grad_out;
    e.indices = slots.data();
    e.num_tokens = N;
    e.dim = D;
    e.num_rows = a.num_hot;
    e.scale = a.scale;
    e.padding_idx = -1;
    e.grad_table = a.grad_hot;
    embedding_bwd(e);
  }
  if (a.grad_a == nullptr && a.grad_b == nullptr) return;
  if (R <= 0) return;  // grad_a [V, 0] and grad_b [0, D] hold no elements

  // Stable counting sort of the factor tokens by id: after the fill, end[t] is one past the last
  // token of id t, which starts at end[t - 1] (0 for t == 0).
  auto is_factor = [&](int64_t id) {
    return id >= 0 && id < V && id != a.padding_idx && slot_of(id) < 0;
  };
  std::vector<int64_t> end(static_cast<size_t>(V) + 1, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t id = static_cast<int64_t>(a.ids[n]);
    if (is_factor(id)) ++end[id + 1];
  }
  for (int64_t t = 0; t < V; ++t) end[t + 1] += end[t];
  std::vector<int64_t> order(static_cast<size_t>(end[V]));
  for (int64_t n = 0; n < N; ++n) {
    const int64_t id = static_cast<int64_t>(a.ids[n]);
    if (is_factor(id)) order[end[id]++] = n;
  }
  auto first = [&](int64_t t) { return t == 0 ? int64_t{0} : end[t - 1]; };
  std::vector<int64_t> uniq;  // the distinct factor ids, ascending
  for (int64_t t = 0; t < V; ++t) {
    if (end[t] != first(t)) uniq.push_back(t);
  }
  const int64_t U = static_cast<int64_t>(uniq.size());

  // G[u] = sum of the gradient rows of token uniq[u], fp32, in token order: as rows [U, D] (the
  // A operand of grad_a) and as column panels [panels][U][kNR] (the B operand of grad_b, which
  // then reads each panel contiguously instead of 192 bytes out of every row).
  const bool need_rows = a.grad_a != nullptr;
  const bool need_panels = a.grad_b != nullptr && D > 0;
  const int64_t d_panels = panels_of(D);
  const Floats G = floats(need_rows ? U * D : 0);
  const Floats Gp = floats(need_panels ? d_panels * U * kNR : 0);
  at::parallel_for(0, U, grain_for(D), [&](int64_t u0, int64_t u1) {
    std::vector<float> row(static_cast<size_t>(d_panels * kNR));
    std::vector<float> chunk(static_cast<size_t>(D));  // tokens past the first kTokenChunk
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t t = uniq[u];
      float* __restrict s = row.data();
      std::fill(row.begin(), row.end(), 0.0f);
      for (int64_t k0 = first(t); k0 < end[t]; k0 += kTokenChunk) {
        const int64_t k1 = std::min(end[t], k0 + kTokenChunk);
        float* c = k0 == first(t) ? s : chunk.data();
        if (c != s) std::fill(chunk.begin(), chunk.end(), 0.0f);
        for (int64_t k = k0; k < k1; ++k) {
          const T* __restrict g = a.grad_out + order[k] * D;
          for (int64_t d = 0; d < D; ++d) c[d] = add_rn(c[d], to_f32(g[d]));
        }
        if (c != s) {
          for (int64_t d = 0; d < D; ++d) s[d] = add_rn(s[d], c[d]);
        }
      }
      if (need_rows) std::memcpy(G.get() + u * D, s, static_cast<size_t>(D) * sizeof(float));
      if (need_panels) {
        for (int64_t pn = 0; pn < d_panels; ++pn) {
          std::memcpy(Gp.get() + (pn * U + u) * kNR, s + pn * kNR, kNR * sizeof(float));
        }
      }
    }
  });

  if (a.grad_a != nullptr) {
    // Rows of ids without factor tokens are zero: one memset per run of such rows.
    at::parallel_for(0, V, grain_for(R), [&](int64_t r0, int64_t r1) {
      int64_t t = r0;
      while (t < r1) {
        if (end[t] != first(t)) {
          ++t;
          continue;
        }
        int64_t t1 = t + 1;
        while (t1 < r1 && end[t1] == first(t1)) ++t1;
        std::memset(static_cast<void*>(a.grad_a + t * R), 0,
                    static_cast<size_t>((t1 - t) * R) * sizeof(T));
        t = t1;
      }
    });
    // grad_a[uniq[u]] = scale * G[u] @ b^T, b^T as fp32 column panels [panels][D][kNR].
    const Floats bt = pack_panels(a.b, D, R, 1, a.b_row_stride);
    const int64_t panels = panels_of(R);
    std::vector<T*> rows(static_cast<size_t>(U));
    for (int64_t u = 0; u < U; ++u) rows[u] = a.grad_a + uniq[u] * R;
    const int64_t tiles = (U + kBwdTileRows - 1) / kBwdTileRows;
    at::parallel_for(0, tiles, grain_for(kBwdTileRows * D * R), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t u0 = t * kBwdTileRows;
        const int64_t u1 = std::min(U, u0 + kBwdTileRows);
        for (int64_t pn = 0; pn < panels; ++pn) {
          const int nr = static_cast<int>(std::min<int64_t>(kNR, R - pn * kNR));
          for (int64_t i0 = u0; i0 < u1; i0 += kMR) {
            const TileOut<T> o{rows.data() + i0, nullptr, pn * kNR, a.scale};
            tile_product<T>(D, G.get() + i0 * D, D,
                            static_cast<int>(std::min<int64_t>(kMR, u1 - i0)),
                            bt.get() + pn * D * kNR, kNR, nr, o);
          }
        }
      }
    });
  }

  if (a.grad_b != nullptr && D > 0) {
    // grad_b = scale * A_u^T G: A_u^T [R, U] holds the a rows of the unique tokens as columns,
    // gathered kUBlock rows at a time into a buffer that is then written out transposed (runs
    // of kUBlock contiguous floats per rank index).
    constexpr int64_t kUBlock = 64;
    const Floats at_u = floats(R * U);
    const int64_t a_bytes = R * static_cast<int64_t>(sizeof(T));
    const int64_t ublocks = (U + kUBlock - 1) / kUBlock;
    at::parallel_for(0, ublocks, grain_for(kUBlock * R), [&](int64_t b0, int64_t b1) {
      const Floats buf = floats(kUBlock * R);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t u0 = blk * kUBlock;
        const int64_t nu = std::min(kUBlock, U - u0);
        for (int64_t j = 0; j < nu; ++j) {
          if (j + kPrefetchTokens < nu) {
            prefetch_row(a.a + uniq[u0 + j + kPrefetchTokens] * a.a_row_stride, a_bytes);
          }
          row_to_f32(a.a + uniq[u0 + j] * a.a_row_stride, buf.get() + j * R, R);
        }
        for (int64_t k = 0; k < R; ++k) {
          float* __restrict dst = at_u.get() + k * U + u0;
          for (int64_t j = 0; j < nu; ++j) dst[j] = buf[j * R + k];
        }
      }
    });
    std::vector<T*> rows(static_cast<size_t>(R));
    for (int64_t k = 0; k < R; ++k) rows[k] = a.grad_b + k * D;
    const int64_t blocks = (R + kMR - 1) / kMR;
    // Unit w: panel w / blocks, row block w % blocks (a thread's units share panels of G).
    at::parallel_for(0, d_panels * blocks, grain_for(kMR * kNR * U), [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t pn = w / blocks;
        const int64_t i0 = (w % blocks) * kMR;
        const int nr = static_cast<int>(std::min<int64_t>(kNR, D - pn * kNR));
        const TileOut<T> o{rows.data() + i0, nullptr, pn * kNR, a.scale};
        tile_product<T>(U, at_u.get() + i0 * U, U,
                        static_cast<int>(std::min<int64_t>(kMR, R - i0)),
                        Gp.get() + pn * U * kNR, kNR, nr, o, kTokenChunk);
      }
    });
  }
}

#define FUSEDOPS_INSTANTIATE(T, I)                                    \
  template void factorized_fwd<T, I>(const FactorizedFwdArgs<T, I>&); \
  template void factorized_bwd<T, I>(const FactorizedBwdArgs<T, I>&);
FUSEDOPS_FOR_EACH_TABLE_AND_INDEX_TYPE(FUSEDOPS_INSTANTIATE)
#undef FUSEDOPS_INSTANTIATE

}  // namespace cpu
}  // namespace fusedops
