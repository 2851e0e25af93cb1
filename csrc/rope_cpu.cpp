// CPU kernel of the rotary position embedding: see rope_cpu.h for the interface and the formulas.
//
// Work split: the tokens of one batch row are cut into blocks of kBlockTokens; a work unit is
// (batch row, token block, head group). A unit converts the cos/sin values of its tokens to fp32
// once (sign and layout folded in, see fill_tables) into a small L1-resident buffer, then walks
// every head of q and k it owns, rotating that head's rows of the block: in the HF layout those
// rows are one contiguous run of kBlockTokens * D elements, so each head is a sequential stream.
// Heads are split into groups only when the token units alone cannot feed every thread (decode).
//
// Rows: explicit AVX2 (+F16C for fp16) code picked at run time when the CPU has it, otherwise a
// portable loop over fixed-size chunks that the compiler vectorizes at the baseline ISA (SSE2 /
// NEON). Both compute the same roundings: two fp32 products, one add or subtract (the sign of
// sin is folded into the table, and x + (-(b*s)) == x - b*s exactly), no FMA (-ffp-contract=off).
#include "rope_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu_vec.h"

namespace fusedops {
namespace cpu {
namespace {

// Tokens per work unit: the fp32 cos/sin of a block (2 * 16 * R floats at most, 16 KiB for
// R = 128 interleaved) stay in L1 while every head of the block is rotated.
constexpr int64_t kBlockTokens = 16;
// Elements per parallel chunk: enough to amortize a task.
constexpr int64_t kGrainElems = int64_t{1} << 15;
// Elements per step of the portable row loop (a fixed trip count the compiler unrolls and
// vectorizes; local arrays make in-place rotation safe without alias checks).
constexpr int64_t kChunk = 8;

// One row: x (input) -> y (output, may be x). c, s: the token's tables from fill_tables.
using RowFn = void (*)(const void* x, void* y, const float* c, const float* s, int64_t rotary,
                       int64_t dim, bool copy_tail);

template <FloatKind K>
inline void copy_tail_of(const void* x, void* y, int64_t rotary, int64_t dim) {
  using St = typename FloatStorage<K>::type;
  if (dim > rotary) {
    std::memcpy(static_cast<St*>(y) + rotary, static_cast<const St*>(x) + rotary,
                static_cast<size_t>(dim - rotary) * sizeof(St));
  }
}

// The scalar rotation of pairs [j0, h) (half layout) / elements [d0, rotary) (interleaved): the
// tails of the vector loops below.
template <FloatKind K>
inline void rotate_half_scalar(const typename FloatStorage<K>::type* x,
                               typename FloatStorage<K>::type* y, const float* c, const float* s,
                               int64_t j0, int64_t h) {
  for (int64_t j = j0; j < h; ++j) {
    const float a = storage_to_f32<K>(x[j]);
    const float b = storage_to_f32<K>(x[h + j]);
    y[j] = f32_to_storage<K>(a * c[j] - b * s[j]);
    y[h + j] = f32_to_storage<K>(b * c[j] + a * s[j]);
  }
}
template <FloatKind K>
inline void rotate_interleaved_scalar(const typename FloatStorage<K>::type* x,
                                      typename FloatStorage<K>::type* y, const float* c,
                                      const float* s, int64_t d0, int64_t rotary) {
  for (int64_t d = d0; d < rotary; d += 2) {
    const float a = storage_to_f32<K>(x[d]);
    const float b = storage_to_f32<K>(x[d + 1]);
    y[d] = f32_to_storage<K>(a * c[d] + b * s[d]);
    y[d + 1] = f32_to_storage<K>(b * c[d + 1] + a * s[d + 1]);
  }
}

// Half layout, portable. c[j], s[j] for j < R/2 (s already negated for the backward).
template <FloatKind K>
void row_half_generic(const void* xv, void* yv, const float* c, const float* s, int64_t rotary,
                      int64_t dim, bool copy_tail) {
  using St = typename FloatStorage<K>::type;
  const St* x = static_cast<const St*>(xv);
  St* y = static_cast<St*>(yv);
  const int64_t h = rotary / 2;
  int64_t j = 0;
  for (; j + kChunk <= h; j += kChunk) {
    float a[kChunk], b[kChunk], ya[kChunk], yb[kChunk];
    for (int64_t i = 0; i < kChunk; ++i) a[i] = storage_to_f32<K>(x[j + i]);
    for (int64_t i = 0; i < kChunk; ++i) b[i] = storage_to_f32<K>(x[h + j + i]);
    for (int64_t i = 0; i < kChunk; ++i) {
      ya[i] = a[i] * c[j + i] - b[i] * s[j + i];
      yb[i] = b[i] * c[j + i] + a[i] * s[j + i];
    }
    for (int64_t i = 0; i < kChunk; ++i) y[j + i] = f32_to_storage<K>(ya[i]);
    for (int64_t i = 0; i < kChunk; ++i) y[h + j + i] = f32_to_storage<K>(yb[i]);
  }
  rotate_half_scalar<K>(x, y, c, s, j, h);
  if (copy_tail) copy_tail_of<K>(xv, yv, rotary, dim);
}

// Interleaved layout, portable. c[2j] = c[2j+1] = cos; s[2j] = -sin, s[2j+1] = +sin, so
// y[d] = x[d]*c[d] + x[d^1]*s[d] for every d < R.
template <FloatKind K>
void row_interleaved_generic(const void* xv, void* yv, const float* c, const float* s,
                             int64_t rotary, int64_t dim, bool copy_tail) {
  using St = typename FloatStorage<K>::type;
  const St* x = static_cast<const St*>(xv);
  St* y = static_cast<St*>(yv);
  int64_t d = 0;
  for (; d + kChunk <= rotary; d += kChunk) {
    float a[kChunk], r[kChunk];
    for (int64_t i = 0; i < kChunk; ++i) a[i] = storage_to_f32<K>(x[d + i]);
    for (int64_t i = 0; i < kChunk; ++i) r[i] = a[i] * c[d + i] + a[i ^ 1] * s[d + i];
    for (int64_t i = 0; i < kChunk; ++i) y[d + i] = f32_to_storage<K>(r[i]);
  }
  rotate_interleaved_scalar<K>(x, y, c, s, d, rotary);
  if (copy_tail) copy_tail_of<K>(xv, yv, rotary, dim);
}

#if defined(FUSEDOPS_X86_SIMD)
// 8 elements <-> 8 fp32 lanes. bf16: widening is a shift; narrowing rounds to nearest even
// (NaN -> quiet NaN), the same values as f32_to_bf16_bits. fp16: F16C, round to nearest even.
template <FloatKind K>
__attribute__((target("avx2,f16c"))) inline __m256 load8(const typename FloatStorage<K>::type* p) {
  if constexpr (K == FloatKind::kF32) {
    return _mm256_loadu_ps(p);
  } else {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (K == FloatKind::kF16) {
      return _mm256_cvtph_ps(raw);
    } else {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    }
  }
}

template <FloatKind K>
__attribute__((target("avx2,f16c"))) inline void store8(typename FloatStorage<K>::type* p,
                                                        __m256 v) {
  if constexpr (K == FloatKind::kF32) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (K == FloatKind::kF16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bf16_pack8(v));
  }
}

template <FloatKind K>
__attribute__((target("avx2,f16c"))) void row_half_avx2(const void* xv, void* yv, const float* c,
                                                        const float* s, int64_t rotary,
                                                        int64_t dim, bool copy_tail) {
  using St = typename FloatStorage<K>::type;
  const St* x = static_cast<const St*>(xv);
  St* y = static_cast<St*>(yv);
  const int64_t h = rotary / 2;
  int64_t j = 0;
  for (; j + 8 <= h; j += 8) {
    const __m256 a = load8<K>(x + j);
    const __m256 b = load8<K>(x + h + j);
    const __m256 vc = _mm256_loadu_ps(c + j);
    const __m256 vs = _mm256_loadu_ps(s + j);
    const __m256 ya = _mm256_sub_ps(_mm256_mul_ps(a, vc), _mm256_mul_ps(b, vs));
    const __m256 yb = _mm256_add_ps(_mm256_mul_ps(b, vc), _mm256_mul_ps(a, vs));
    store8<K>(y + j, ya);
    store8<K>(y + h + j, yb);
  }
  rotate_half_scalar<K>(x, y, c, s, j, h);
  if (copy_tail) copy_tail_of<K>(xv, yv, rotary, dim);
}

template <FloatKind K>
__attribute__((target("avx2,f16c"))) void row_interleaved_avx2(const void* xv, void* yv,
                                                               const float* c, const float* s,
                                                               int64_t rotary, int64_t dim,
                                                               bool copy_tail) {
  using St = typename FloatStorage<K>::type;
  const St* x = static_cast<const St*>(xv);
  St* y = static_cast<St*>(yv);
  int64_t d = 0;
  for (; d + 8 <= rotary; d += 8) {
    const __m256 v = load8<K>(x + d);
    const __m256 swapped = _mm256_permute_ps(v, 0xb1);  // (x1, x0, x3, x2, ...)
    store8<K>(y + d, _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(c + d)),
                                   _mm256_mul_ps(swapped, _mm256_loadu_ps(s + d))));
  }
  rotate_interleaved_scalar<K>(x, y, c, s, d, rotary);
  if (copy_tail) copy_tail_of<K>(xv, yv, rotary, dim);
}
#endif

// Tests force the portable rows on any CPU with FUSEDOPS_ROPE_GENERIC=1 (read per call).
bool use_avx2() {
#if defined(FUSEDOPS_X86_SIMD)
  if (!cpu_has_avx2_f16c()) return false;
  const char* env = std::getenv("FUSEDOPS_ROPE_GENERIC");
  return env == nullptr || env[0] == '\0' || env[0] == '0';
#else
  return false;
#endif
}

template <FloatKind K>
RowFn pick_row(bool interleaved, bool avx2) {
#if defined(FUSEDOPS_X86_SIMD)
  if (avx2) return interleaved ? &row_interleaved_avx2<K> : &row_half_avx2<K>;
#else
  (void)avx2;
#endif
  return interleaved ? &row_interleaved_generic<K> : &row_half_generic<K>;
}

RowFn pick_row(FloatKind kind, bool interleaved, bool avx2) {
  switch (kind) {
    case FloatKind::kF16:
      return pick_row<FloatKind::kF16>(interleaved, avx2);
    case FloatKind::kBF16:
      return pick_row<FloatKind::kBF16>(interleaved, avx2);
    default:
      return pick_row<FloatKind::kF32>(interleaved, avx2);
  }
}

int64_t elem_size(FloatKind kind) { return kind == FloatKind::kF32 ? 4 : 2; }

int64_t token_position(const RopeArgs& a, int64_t b, int64_t s) {
  if (a.positions == nullptr) return a.position_offset + s;
  const int64_t off = b * a.positions_stride_b + s * a.positions_stride_s;
  return a.positions_int64 ? static_cast<const int64_t*>(a.positions)[off]
                           : static_cast<int64_t>(static_cast<const int32_t*>(a.positions)[off]);
}

// The fp32 tables of tokens [s0, s0 + n) of batch row b, `width` floats per token:
//   half:        c[j] = cos, s[j] = sin'                      (width R/2)
//   interleaved: c[2j] = c[2j+1] = cos, s[2j] = -sin', s[2j+1] = sin'   (width R)
// with sin' = -sin for the backward.
void fill_tables(const RopeArgs& a, int64_t b, int64_t s0, int64_t n, float* cbuf, float* sbuf,
                 int64_t width) {
  const int64_t half = a.rotary_dim / 2;
  const float sign = a.backward ? -1.0f : 1.0f;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t s = s0 + t;
    const int64_t row = a.cache ? token_position(a, b, s) : s;
    const int64_t cbase = (a.cache ? 0 : b * a.cos.stride_b) + row * a.cos.stride_row;
    const int64_t sbase = (a.cache ? 0 : b * a.sin.stride_b) + row * a.sin.stride_row;
    float* c = cbuf + t * width;
    float* sn = sbuf + t * width;
    for (int64_t j = 0; j < half; ++j) {
      const float cv = load_as_f32(a.cos.data, a.cos.kind, cbase + j * a.cos.stride_col);
      const float sv = sign * load_as_f32(a.sin.data, a.sin.kind, sbase + j * a.sin.stride_col);
      if (a.interleaved) {
        c[2 * j] = cv;
        c[2 * j + 1] = cv;
        sn[2 * j] = -sv;
        sn[2 * j + 1] = sv;
      } else {
        c[j] = cv;
        sn[j] = sv;
      }
    }
  }
}

}  // namespace

const char* rope_isa() { return use_avx2() ? "avx2" : "generic"; }

void rope_fwd(const RopeArgs& a) {
  const int64_t heads = a.q.heads + a.k.heads;
  if (a.batch <= 0 || a.seq <= 0 || a.dim <= 0 || heads <= 0 || a.rotary_dim <= 0) return;
  const RowFn row = pick_row(a.kind, a.interleaved, use_avx2());
  const int64_t esize = elem_size(a.kind);
  const int64_t width = a.interleaved ? a.rotary_dim : a.rotary_dim / 2;
  const int64_t block = std::min(kBlockTokens, a.seq);
  const int64_t blocks = (a.seq + block - 1) / block;
  const int64_t token_units = a.batch * blocks;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Split the heads only when there are too few token units to balance the threads.
  const int64_t groups =
      std::min<int64_t>(heads, std::max<int64_t>(1, (4 * threads + token_units - 1) / token_units));
  const int64_t units = token_units * groups;
  const int64_t unit_elems = block * ((heads + groups - 1) / groups) * a.dim;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, unit_elems));

  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> cbuf(static_cast<size_t>(block * width));
    std::vector<float> sbuf(static_cast<size_t>(block * width));
    int64_t filled = -1;  // token unit whose tables are in the buffers
    for (int64_t u = begin; u < end; ++u) {
      const int64_t tu = u / groups;
      const int64_t g = u % groups;
      const int64_t b = tu / blocks;
      const int64_t s0 = (tu % blocks) * block;
      const int64_t n = std::min(block, a.seq - s0);
      if (tu != filled) {
        fill_tables(a, b, s0, n, cbuf.data(), sbuf.data(), width);
        filled = tu;
      }
      const int64_t h0 = g * heads / groups;
      const int64_t h1 = (g + 1) * heads / groups;
      for (int64_t hh = h0; hh < h1; ++hh) {
        const bool is_q = hh < a.q.heads;
        const RopeTensor& x = is_q ? a.q : a.k;
        const int64_t h = is_q ? hh : hh - a.q.heads;
        const bool copy_tail = x.in != x.out;
        const char* in = static_cast<const char*>(x.in) +
                         (b * x.in_stride_b + h * x.in_stride_h + s0 * x.in_stride_s) * esize;
        char* out = static_cast<char*>(x.out) +
                    (b * x.out_stride_b + h * x.out_stride_h + s0 * x.out_stride_s) * esize;
        const int64_t in_step = x.in_stride_s * esize;
        const int64_t out_step = x.out_stride_s * esize;
        for (int64_t t = 0; t < n; ++t) {
          row(in + t * in_step, out + t * out_step, cbuf.data() + t * width,
              sbuf.data() + t * width, a.rotary_dim, a.dim, copy_tail);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace fusedops
