// Per-element arithmetic shared by the CPU kernels and the CUDA kernel.
//
// Everything here is torch-free and `FUSEDOPS_HD`, so the CPU tests exercise exactly the code a
// GPU kernel runs. The functions are branch-free straight-line code on purpose: the CPU kernels
// call them inside loops over D that the compiler vectorizes.
//
// Rounding contract (python/fusedops/reference.py is the oracle):
//   coef     = fp32(ln(base) / D)                       computed once on the host
//   inv_freq = fp32(exp(-2i * coef))                    exponential in fp64
//   angle    = fp32(float(pos) * inv_freq)              one fp32 multiply
//   P[pos,d] = fp32(sin(angle)) (d even) | fp32(cos(angle)) (d odd), sin/cos in fp64
// The fp64 sin/cos below is accurate to a few 1e-16, so after the final rounding to fp32 it
// agrees bit for bit with an fp64 libm except in vanishingly rare near-tie cases.
//
// nvcc contracts a*b+c into FMA by default, which would change the fused value and the
// polynomials by an ulp; the device versions use the _rn intrinsics to keep one rounding per
// operation, identical to the host (build the host side with -ffp-contract=off for the same
// reason: aarch64 gcc would otherwise emit FMAs).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDOPS_HD __host__ __device__
#else
#define FUSEDOPS_HD
#endif

namespace fusedops {

// ---------------------------------------------------------------------------------------------
// Correctly rounded primitive operations (plain operators on the host, _rn intrinsics on device
// so nvcc cannot fuse them).
FUSEDOPS_HD inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FUSEDOPS_HD inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FUSEDOPS_HD inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
FUSEDOPS_HD inline double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// ---------------------------------------------------------------------------------------------
// The fused embedding value: token row scaled, plus the positional value (0 when absent).
// Two roundings (multiply, then add), exactly like `emb.float() * scale + pos.float()`.
FUSEDOPS_HD inline float fused_value(float w, float scale, float p) {
  return add_rn(mul_rn(w, scale), p);
}
FUSEDOPS_HD inline float fused_value(float w, float scale) { return mul_rn(w, scale); }

// ---------------------------------------------------------------------------------------------
// Sinusoid.

// fp32(ln(base) / D): the only scalar the kernels receive. Host-side, computed in fp64.
inline float sinusoid_coef(double base, int64_t dim) {
  return static_cast<float>(std::log(base) / static_cast<double>(dim));
}

// inv_freq of pair i (features 2i and 2i+1). -2i * coef is exact in fp64 (coef has 24
// significant bits, i < 2^29), so only the exponential rounds, once, to fp32.
FUSEDOPS_HD inline float sinusoid_inv_freq(int64_t i, float coef) {
  return static_cast<float>(exp(-2.0 * static_cast<double>(i) * static_cast<double>(coef)));
}

FUSEDOPS_HD inline float sinusoid_angle(int64_t pos, float inv_freq) {
  return mul_rn(static_cast<float>(pos), inv_freq);
}

namespace detail {
// pi/2 split so that j * kPio2Hi and j * kPio2Mid are exact for |j| < 2^25 (28 significant bits
// each): the reduction x - j*pi/2 then loses nothing for |x| below kSinCosFastLimit.
constexpr double kPio2Hi = 0x1.921fb54p+0;
constexpr double kPio2Mid = 0x1.10b461p-30;
constexpr double kPio2Lo = 0x1.a62633145c06ep-58;
constexpr double kTwoOverPi = 0x1.45f306dc9c883p-1;
// Adding then subtracting 1.5 * 2^52 rounds to the nearest integer (ties to even) for
// |v| < 2^51 without a conversion instruction, so the loop stays in double lanes.
constexpr double kRoundMagic = 0x1.8p52;
}  // namespace detail

// Largest |x| for which sincos_fast is accurate (j < 2^24 quadrants); beyond it callers use the
// libm path. fp32 angles only get there for positions above ~1.6e7.
constexpr double kSinCosFastLimit = 0x1p24;

FUSEDOPS_HD inline double round_nearest(double v) {
  return add_rn(add_rn(v, detail::kRoundMagic), -detail::kRoundMagic);
}

// sin(x) and cos(x) in fp64 for |x| <= kSinCosFastLimit, branch-free (vectorizable).
// Cody-Waite reduction to r in [-pi/4, pi/4], quadrant q = j mod 4, Taylor polynomials whose
// truncation error at |r| = pi/4 is below 1e-17.
FUSEDOPS_HD inline void sincos_fast(double x, double* sin_out, double* cos_out) {
  using namespace detail;
  const double j = round_nearest(mul_rn(x, kTwoOverPi));
  double r = add_rn(x, -mul_rn(j, kPio2Hi));
  r = add_rn(r, -mul_rn(j, kPio2Mid));
  r = add_rn(r, -mul_rn(j, kPio2Lo));
  // q = j mod 4 in [0, 4) computed in doubles: round(j/4 - 3/8) == floor(j/4) for integer j.
  const double q = add_rn(j, -mul_rn(4.0, round_nearest(add_rn(mul_rn(j, 0.25), -0.375))));

  const double r2 = mul_rn(r, r);
  // sin r = r * (1 - r^2/3! + r^4/5! - ... - r^14/15!)
  double ps = -1.0 / 1307674368000.0;                  // -1/15!
  ps = add_rn(mul_rn(ps, r2), 1.0 / 6227020800.0);     // 1/13!
  ps = add_rn(mul_rn(ps, r2), -1.0 / 39916800.0);      // -1/11!
  ps = add_rn(mul_rn(ps, r2), 1.0 / 362880.0);         // 1/9!
  ps = add_rn(mul_rn(ps, r2), -1.0 / 5040.0);          // -1/7!
  ps = add_rn(mul_rn(ps, r2), 1.0 / 120.0);            // 1/5!
  ps = add_rn(mul_rn(ps, r2), -1.0 / 6.0);             // -1/3!
  const double sr = add_rn(r, mul_rn(mul_rn(r, r2), ps));
  // cos r = 1 - r^2/2! + r^4/4! - ... + r^16/16!
  double pc = 1.0 / 20922789888000.0;                  // 1/16!
  pc = add_rn(mul_rn(pc, r2), -1.0 / 87178291200.0);   // -1/14!
  pc = add_rn(mul_rn(pc, r2), 1.0 / 479001600.0);      // 1/12!
  pc = add_rn(mul_rn(pc, r2), -1.0 / 3628800.0);       // -1/10!
  pc = add_rn(mul_rn(pc, r2), 1.0 / 40320.0);          // 1/8!
  pc = add_rn(mul_rn(pc, r2), -1.0 / 720.0);           // -1/6!
  pc = add_rn(mul_rn(pc, r2), 1.0 / 24.0);             // 1/4!
  pc = add_rn(mul_rn(pc, r2), -0.5);                   // -1/2!
  const double cr = add_rn(1.0, mul_rn(r2, pc));

  // x = r + q*pi/2: sin x = (sr, cr, -sr, -cr)[q], cos x = (cr, -sr, -cr, sr)[q].
  const bool odd = (q == 1.0) | (q == 3.0);
  const double a = odd ? cr : sr;
  const double b = odd ? sr : cr;
  *sin_out = (q >= 2.0) ? -a : a;
  *cos_out = ((q == 1.0) | (q == 2.0)) ? -b : b;
}

// Positional value of feature d for position pos (the scalar spec of the sinusoid kernels).
FUSEDOPS_HD inline float sinusoid_value(int64_t pos, int64_t d, float coef) {
  const float angle = sinusoid_angle(pos, sinusoid_inv_freq(d / 2, coef));
  const double x = static_cast<double>(angle);
  double s, c;
  if (fabs(x) <= kSinCosFastLimit) {
    sincos_fast(x, &s, &c);
  } else {
    s = sin(x);
    c = cos(x);
  }
  return static_cast<float>((d % 2 == 0) ? s : c);
}

}  // namespace fusedops
