// x86 vector pieces shared by the CPU kernels (embedding_cpu.cpp, int8_embedding_cpu.cpp,
// rope_cpu.cpp): run-time CPU feature tests, fp32 -> bf16 packing with the rounding of
// f32_to_bf16_bits (float_convert.h), and the fence after non-temporal stores.
//
// The vector functions carry their own target attributes, so the library is built for the
// baseline ISA and still loads everywhere; callers test the CPU first. FUSEDOPS_X86_SIMD says
// whether they exist (x86-64 with gcc or clang).
#pragma once

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FUSEDOPS_X86_SIMD 1
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace fusedops {
namespace cpu {

// Below this many output bytes the result likely stays in cache for its consumer, so regular
// stores are kept; above it the output streams past the caches anyway.
constexpr int64_t kStreamMinBytes = int64_t{4} << 20;

// Whether a large output is written with non-temporal stores. They skip the read-for-ownership
// of lines that are overwritten whole, which pays when the memory is already mapped (an
// allocation the allocator reuses: B=8 S=1024 D=768 bf16, 1 thread, 2.8 -> 2.45 ms). Fresh
// memory is different: each first touch faults in a page the OS has just zeroed through the
// cache, so regular stores hit those lines and non-temporal ones first evict them (B=4 S=2048
// D=2048 bf16: 10.1 ms regular, 11.5 ms non-temporal). mincore() tells the two apart by
// probing the first, middle and last page.
inline bool use_streaming_stores(const void* out, int64_t bytes) {
  if (bytes < kStreamMinBytes) return false;
#if defined(__linux__)
  constexpr uintptr_t kPage = 4096;
  const uintptr_t p = reinterpret_cast<uintptr_t>(out);
  for (const uintptr_t at : {p, p + bytes / 2, p + bytes - 1}) {
    unsigned char resident = 0;
    if (mincore(reinterpret_cast<void*>(at & ~(kPage - 1)), 1, &resident) != 0 ||
        (resident & 1) == 0) {
      return false;
    }
  }
#endif
  return true;
}

// Non-temporal stores are weakly ordered: fence before a thread hands its rows back.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

#if defined(FUSEDOPS_X86_SIMD)
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
inline bool cpu_has_avx2_f16c() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}
// AVX512-BF16 with the VL/BW extensions the bf16 rows use.
inline bool cpu_has_avx512bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2");
  return has;
}

// 8 fp32 -> 8 bf16 in the low halves of the 32-bit lanes: round to nearest even, NaN -> quiet
// NaN with its sign (f32_to_bf16_bits).
__attribute__((target("avx2"))) inline __m256i bf16_round8(__m256 v) {
  const __m256i x = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(x, bias), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

// 8 fp32 -> 8 bf16 in order.
__attribute__((target("avx2"))) inline __m128i bf16_pack8(__m256 v) {
  const __m256i bits = bf16_round8(v);
  return _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
}

// 16 fp32 (lo, hi) -> 16 bf16 in order. packus works per 128-bit lane ([lo0-3, hi0-3 | lo4-7,
// hi4-7]), so the 64-bit quarters are put back in order after it.
__attribute__((target("avx2"))) inline __m256i bf16_pack16(__m256 lo, __m256 hi) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round8(lo), bf16_round8(hi)), 0xd8);
}

// 16 fp32 -> 16 bf16 in order with VCVTNEPS2BF16: one instruction where the integer rounding
// above takes ~12 per 8 values, with the same results (round to nearest even, NaN -> quiet NaN
// with sign and top payload) except that the instruction flushes fp32 subnormals to zero, which
// f32_to_bf16_bits does not: a 16-block holding any nonzero |v| < 2^-126 takes the integer path.
__attribute__((target("avx512bf16,avx512vl,avx512bw,avx512f,avx2"))) inline __m256i
bf16_pack16_avx512(__m512 v) {
  const __m512 av = _mm512_abs_ps(v);
  const __mmask16 tiny = _mm512_cmp_ps_mask(av, _mm512_set1_ps(0x1p-126f), _CMP_LT_OQ);
  const __mmask16 sub = _mm512_mask_cmp_ps_mask(tiny, av, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  if (__builtin_expect(sub == 0, 1)) return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return bf16_pack16(lo, hi);
}
#endif

}  // namespace cpu
}  // namespace fusedops
