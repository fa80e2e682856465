// exp and log over a Vec (see avx512/vec_avx512.h for the interface), and the widening loaders the
// kernels read their input through. Included by each ISA's translation units after they define
// MOE_SIMD_ISA and their Vec; everything lands in moe::simd::MOE_SIMD_ISA.
#pragma once

#include <cstdint>
#include <type_traits>

#include "moe_router.h"

namespace moe {
namespace simd {
namespace MOE_SIMD_ISA {

using F = Vec::F;
using M = Vec::M;
constexpr int kLanes = Vec::kLanes;

// Whether V rounds and scales by a power of two in one instruction each (AVX-512: round, times_pow2).
template <class V, class = void>
struct HasTimesPow2 : std::false_type {};
template <class V>
struct HasTimesPow2<V, decltype(void(V::times_pow2(typename V::F{}, typename V::F{})))> : std::true_type {};

// e^x to about 1 ulp (Cephes expf: x = n ln2 + r, a degree-6 polynomial for e^r). Underflow (x below
// about -87.3, -inf included) gives 0, overflow is clamped to a finite 2^127-ish value.
// n = x log2(e) rounded to the nearest integer. Without HasTimesPow2, adding 1.5 * 2^23 + 127 rounds
// it and leaves n + 127 in the sum's low bits, so that 2^n's bits are one shift away: no round,
// conversion or integer add (with the and-not for underflow below, not a blend: AVX2 9.4 -> 8.1 cycles
// a vector). The sum's ties go to its even value, an odd n: of every float x, the 35 whose x log2(e)
// is a half-integer take the other n than a round to even and come out 1 ulp apart (checked on AVX2;
// bench/NOTES.md item 70).
template <class V = Vec>
inline F vexp(F x) {
  constexpr bool kOwnPow2 = HasTimesPow2<V>::value;
  constexpr float kRound = 12582912.0f + 127.0f;
  const M tiny = V::lt(x, V::set1(-87.33654f));
  x = V::min(V::max(x, V::set1(-87.33654f)), V::set1(88.3762626647949f));
  const F p = V::mul(x, V::set1(1.44269504088896341f));
  F n, biased;
  if constexpr (kOwnPow2) {
    n = V::round(p);
  } else {
    biased = V::add(p, V::set1(kRound));
    n = V::sub(biased, V::set1(kRound));
  }
  F r = V::fmadd(n, V::set1(-0.693359375f), x);
  r = V::fmadd(n, V::set1(2.12194440e-4f), r);
  F y = V::set1(1.9875691500e-4f);
  y = V::fmadd(y, r, V::set1(1.3981999507e-3f));
  y = V::fmadd(y, r, V::set1(8.3334519073e-3f));
  y = V::fmadd(y, r, V::set1(4.1665795894e-2f));
  y = V::fmadd(y, r, V::set1(1.6666665459e-1f));
  y = V::fmadd(y, r, V::set1(5.0000001201e-1f));
  y = V::add(V::fmadd(y, V::mul(r, r), r), V::set1(1.0f));
  if constexpr (kOwnPow2) {
    y = V::times_pow2(y, n);
  } else {
    y = V::mul(y, V::from_bits(V::template shift_left<23>(V::to_bits(biased))));
  }
  return V::zero_where(tiny, y);
}

// ln x for normal x > 0 to about 1 ulp (Cephes logf).
inline F vlog(F x) {
  const Vec::I bits = Vec::to_bits(x);
  F e = Vec::to_float(Vec::int_sub(Vec::shift_right<23>(bits), Vec::int_set1(126)));
  F m = Vec::from_bits(Vec::and_or(bits, Vec::int_set1(0x007fffff), Vec::int_set1(0x3f000000)));
  const M low = Vec::lt(m, Vec::set1(0.707106781186547524f));  // m in [0.5, 1): use 2m - 1 below sqrt(1/2)
  e = Vec::select(low, Vec::sub(e, Vec::set1(1.0f)), e);
  m = Vec::sub(Vec::select(low, Vec::add(m, m), m), Vec::set1(1.0f));
  const F z = Vec::mul(m, m);
  F y = Vec::set1(7.0376836292e-2f);
  y = Vec::fmadd(y, m, Vec::set1(-1.1514610310e-1f));
  y = Vec::fmadd(y, m, Vec::set1(1.1676998740e-1f));
  y = Vec::fmadd(y, m, Vec::set1(-1.2420140846e-1f));
  y = Vec::fmadd(y, m, Vec::set1(1.4249322787e-1f));
  y = Vec::fmadd(y, m, Vec::set1(-1.6668057665e-1f));
  y = Vec::fmadd(y, m, Vec::set1(2.0000714765e-1f));
  y = Vec::fmadd(y, m, Vec::set1(-2.4999993993e-1f));
  y = Vec::fmadd(y, m, Vec::set1(3.3333331174e-1f));
  y = Vec::mul(Vec::mul(y, m), z);
  y = Vec::fmadd(e, Vec::set1(-2.12194440e-4f), y);
  y = Vec::fmadd(z, Vec::set1(-0.5f), y);
  return Vec::fmadd(e, Vec::set1(0.693359375f), Vec::add(m, y));
}

// Input loaders: full vectors and zero-filled tails of f32, f16 or bf16 rows.
struct LoadF32 {
  using T = float;
  static F load(const T* p) { return Vec::load(p); }
  static F tail(const T* p, int n) { return Vec::load_tail(p, n, 0.0f); }
};
struct LoadF16 {
  using T = uint16_t;
  static F load(const T* p) { return Vec::load_f16(p); }
  static F tail(const T* p, int n) { return Vec::load_f16_tail(p, n); }
};
struct LoadBF16 {
  using T = uint16_t;
  static F load(const T* p) { return Vec::load_bf16(p); }
  static F tail(const T* p, int n) { return Vec::load_bf16_tail(p, n); }
};

// dst[0..n) = src[0..n) widened to f32. With `next` (a prefetch never faults), the n elements there
// are fetched into L2 meanwhile: the logits path passes its next block, so that the block's
// selection overlaps their DRAM reads, which the hardware prefetcher, seeing short bursts, started
// too late (bench/NOTES.md item 16). The gate fetches its next slice itself and passes none.
template <class L>
inline void widen_span(const typename L::T* src, int64_t n, float* dst, const typename L::T* next = nullptr) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    if (next) __builtin_prefetch(next + i, 0, 2);
    Vec::store(dst + i, L::load(src + i));
  }
  if (i < n) Vec::store_tail(dst + i, L::tail(src + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

// Calls body(loader) with the loader of dtype.
template <typename Body>
inline void with_loader(moe_dtype dtype, Body&& body) {
  switch (dtype) {
    case MOE_DTYPE_F16:
      body(LoadF16{});
      break;
    case MOE_DTYPE_BF16:
      body(LoadBF16{});
      break;
    default:
      body(LoadF32{});
  }
}

// The kernels' widen (simd_backend.h): n values of dtype at src, rows of logits back to back, into
// dst as f32, with the next n values fetched into L2 meanwhile (the caller's next block).
inline void widen_block(const void* src, moe_dtype dtype, int64_t n, float* dst) {
  with_loader(dtype, [&](auto loader) {
    using L = decltype(loader);
    const auto* from = static_cast<const typename L::T*>(src);
    widen_span<L>(from, n, dst, from + n);
  });
}

}  // namespace MOE_SIMD_ISA
}  // namespace simd
}  // namespace moe
