// Issue cost of single AVX-512 operations on this machine, in cycles: twelve independent chains of
// one operation each, so that throughput, not latency, bounds the loop; the clock from a chain of
// dependent scalar adds (one a cycle). A guide to what a kernel's operations cost (bench/NOTES.md,
// item 20), not a benchmark of the router.
//   g++ -O2 -mavx512f -mavx512dq -std=c++17 bench/op-cost.cc -o /tmp/op-cost && /tmp/op-cost
#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {

constexpr int kChains = 12;
constexpr long kRounds = 20000000;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double cycles_per_second() {
  long x = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < kRounds * 10; ++i) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  return 4.0 * kRounds * 10 / seconds_since(t0);
}

template <class Op>
double cycles_per_op(Op op, double hz) {
  __m512 v[kChains];
  for (int i = 0; i < kChains; ++i) v[i] = _mm512_set1_ps(1.0f + i);
  const __m512 other = _mm512_set1_ps(0.5f);
  const __m512i index = _mm512_setr_epi32(0, 18, 4, 6, 8, 26, 12, 14, 16, 2, 20, 22, 24, 10, 28, 30);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < kRounds; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) v[j] = op(v[j], other, index);
  }
  const double s = seconds_since(t0);
  float sink = 0;
  for (int i = 0; i < kChains; ++i) sink += _mm512_reduce_add_ps(v[i]);
  asm volatile("" : : "x"(sink));
  return s * hz / (static_cast<double>(kRounds) * kChains);
}

__m512 bits(__m512i a) { return _mm512_castsi512_ps(a); }
__m512i ints(__m512 a) { return _mm512_castps_si512(a); }

}  // namespace

int main() {
  const double hz = cycles_per_second();
  std::printf("clock %.2f GHz\n", hz / 1e9);
  const auto row = [&](const char* name, auto op) { std::printf("%-22s %.2f cycles\n", name, cycles_per_op(op, hz)); };
  row("vpermt2ps (2 sources)", [](__m512 a, __m512 b, __m512i i) { return _mm512_permutex2var_ps(a, i, b); });
  row("vpermps", [](__m512 a, __m512, __m512i i) { return _mm512_permutexvar_ps(i, a); });
  row("vunpcklps", [](__m512 a, __m512 b, __m512i) { return _mm512_unpacklo_ps(a, b); });
  row("vshufps", [](__m512 a, __m512 b, __m512i) { return _mm512_shuffle_ps(a, b, 0x44); });
  row("vshuff32x4", [](__m512 a, __m512 b, __m512i) { return _mm512_shuffle_f32x4(a, b, 0x88); });
  row("vblendmps", [](__m512 a, __m512 b, __m512i) { return _mm512_mask_blend_ps(0xf0f0, a, b); });
  row("vmaxps", [](__m512 a, __m512 b, __m512i) { return _mm512_max_ps(a, b); });
  row("vpminsd", [](__m512 a, __m512 b, __m512i) { return bits(_mm512_min_epi32(ints(a), ints(b))); });
  row("vpternlogd", [](__m512 a, __m512 b, __m512i i) { return bits(_mm512_ternarylogic_epi32(ints(a), ints(b), i, 0xea)); });
  row("vfmadd", [](__m512 a, __m512 b, __m512i) { return _mm512_fmadd_ps(a, b, b); });
  row("vmulps", [](__m512 a, __m512 b, __m512i) { return _mm512_mul_ps(a, b); });
  row("vscalefps", [](__m512 a, __m512 b, __m512i) { return _mm512_scalef_ps(a, b); });
  row("vdivps", [](__m512 a, __m512 b, __m512i) { return _mm512_div_ps(b, a); });
  row("vpcmpd + vpaddd{k}", [](__m512 a, __m512 b, __m512i i) {
    const __mmask16 m = _mm512_cmpgt_epi32_mask(ints(a), i);
    return bits(_mm512_mask_add_epi32(ints(a), m, ints(a), ints(b)));
  });
}
