// The vector type the generic SIMD code (simd/generic/) is instantiated with on AVX2 + FMA + F16C:
// 8 f32 lanes, masks as all-ones lanes. Included only by the translation units of simd/avx2/, which
// are compiled with those flags. The interface is the one of avx512/vec_avx512.h.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace moe {
namespace simd {
namespace avx2 {

// For each 8-bit mask, its set bits' positions in increasing order, 4 bits each (Vec::compress).
struct SelectedLanes {
  uint32_t packed[256];
};
constexpr SelectedLanes make_selected_lanes() {
  SelectedLanes t{};
  for (uint32_t mask = 0; mask < 256; ++mask) {
    int n = 0;
    for (uint32_t lane = 0; lane < 8; ++lane)
      if (mask & (1u << lane)) t.packed[mask] |= lane << (4 * n++);
  }
  return t;
}
constexpr SelectedLanes kSelectedLanes = make_selected_lanes();

struct Vec {
  static constexpr int kLanes = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256;

  static __m256i first_i(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static M first(int n) { return _mm256_castsi256_ps(first_i(n)); }  // lanes < n

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load_tail(const float* p, int n, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, first_i(n)), first(n));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store_tail(float* p, F v, int n) { _mm256_maskstore_ps(p, first_i(n), v); }

  static F load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load_f16_tail(const uint16_t* p, int n) { return _mm256_cvtph_ps(load_u16_tail(p, n)); }
  static F load_bf16(const uint16_t* p) { return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load_bf16_tail(const uint16_t* p, int n) { return widen_bf16(load_u16_tail(p, n)); }

  // Keeps v in a register: the compiler would otherwise fold a load used by several FMAs into each
  // of them as a memory operand, one load per use.
  static void pin(F& v) { asm("" : "+x"(v)); }

  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F abs(F a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
  static float reduce_add(F a) {
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)));
  }
  static float reduce_max(F a) {
    const __m128 q = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 e = _mm_max_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_max_ss(e, _mm_movehdup_ps(e)));
  }

  static M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M mask_and(M a, M b) { return _mm256_and_ps(a, b); }
  static M mask_andnot(M a, M b) { return _mm256_andnot_ps(a, b); }  // !a && b
  static uint32_t bits(M m) { return static_cast<uint32_t>(_mm256_movemask_ps(m)); }
  static F select(M m, F if_true, F if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static F zero_where(M m, F a) { return _mm256_andnot_ps(m, a); }

  static void store_int(int32_t* p, I a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a); }
  static void store_int_tail(int32_t* p, I a, int n) { _mm256_maskstore_epi32(p, first_i(n), a); }
  static I int_load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I int_xor(I a, I b) { return _mm256_xor_si256(a, b); }
  static I int_max(I a, I b) { return _mm256_max_epi32(a, b); }
  static I int_min(I a, I b) { return _mm256_min_epi32(a, b); }
  template <int kShift> static I shift_right_arith(I a) { return _mm256_srai_epi32(a, kShift); }
  static I permute(I a, I index) { return _mm256_permutevar8x32_epi32(a, index); }  // lane i = a[index[i]]
  static F gather(const float* base, I index) { return _mm256_i32gather_ps(base, index, 4); }  // lane i = base[index[i]]
  static I blend_bits(uint32_t bits, I if_set, I if_clear) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit), lane_bit);
    return _mm256_blendv_epi8(if_clear, if_set, set);
  }

  // Stores the lanes of v selected by `lanes` (a bit per lane), and their indices base + lane, at
  // keys[0..) and index[0..) in lane order; writes a whole vector to each. Returns how many.
  // Branch-free: a table gives, per 8-bit mask, the selected lanes packed 4 bits each (a loop over
  // the set bits mispredicted on random masks).
  static int compress(float* keys, int32_t* index, F v, int32_t base, uint32_t lanes) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i lane = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kSelectedLanes.packed[lanes])), shifts), _mm256_set1_epi32(7));
    _mm256_storeu_ps(keys, _mm256_permutevar8x32_ps(v, lane));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(index), _mm256_add_epi32(lane, _mm256_set1_epi32(base)));
    return __builtin_popcount(lanes);
  }

  // r[i] lane j <- r[j] lane i. Always inlined: called, the vectors go through memory.
  [[gnu::always_inline]] static void transpose(F r[kLanes]) {
    F t[kLanes];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
      r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
      t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
    }
    for (int i = 0; i < kLanes; ++i) r[i] = t[i];
  }
  // even <- lanes 0, 2, 4, .. of the concatenation a:b (a first), odd <- lanes 1, 3, 5, ..
  static void unzip(F a, F b, F& even, F& odd) {
    // In each 128-bit half: a's pair, then b's; then the 64-bit quarters into order.
    const auto order = [](__m256 x) {
      return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(x), _MM_SHUFFLE(3, 1, 2, 0)));
    };
    even = order(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    odd = order(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // The inverse of unzip: lo <- a0 b0 a1 b1 .. from the low halves, hi <- the same from the high ones.
  static void zip(F a, F b, F& lo, F& hi) {
    const __m256 l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);  // pairs 0 1 | 4 5, 2 3 | 6 7
    lo = _mm256_permute2f128_ps(l, h, 0x20);
    hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
  static M int_gt(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(a, b)); }
  static M int_eq(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
  static I to_bits(F a) { return _mm256_castps_si256(a); }
  static F from_bits(I a) { return _mm256_castsi256_ps(a); }
  static I to_int(F a) { return _mm256_cvtps_epi32(a); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static I int_add(I a, I b) { return _mm256_add_epi32(a, b); }
  static I int_sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I int_set1(int32_t x) { return _mm256_set1_epi32(x); }
  static I int_and(I a, I b) { return _mm256_and_si256(a, b); }
  static I int_or(I a, I b) { return _mm256_or_si256(a, b); }
  static I and_or(I a, I mask, I b) { return int_or(int_and(a, mask), b); }  // (a & mask) | b
  template <int kShift> static I shift_left(I a) { return _mm256_slli_epi32(a, kShift); }
  template <int kShift> static I shift_right(I a) { return _mm256_srli_epi32(a, kShift); }
  static I shift_left_by(I a, I n) { return _mm256_sllv_epi32(a, n); }  // each lane by its own n in [0, 32)

  // kLanes doubles, lanes [0, 4) and [4, 8) (group scores: keep_groups_across_tokens).
  struct D {
    __m256d lo, hi;
  };
  static D sum_double(F a, F b) {  // a + b in double, lane by lane
    return {_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_castps256_ps128(b))),
            _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)))};
  }
  static M ge_double(const D& a, const D& b) {
    // Each 64-bit lane's mask is two equal 32-bit halves: the even ones of both, [lo0 lo1 hi0 hi1 | lo2
    // lo3 hi2 hi3], then the middle quarters swapped.
    const __m256 lo = _mm256_castpd_ps(_mm256_cmp_pd(a.lo, b.lo, _CMP_GE_OQ));
    const __m256 hi = _mm256_castpd_ps(_mm256_cmp_pd(a.hi, b.hi, _CMP_GE_OQ));
    const __m256 even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
  }

  // norm_of's accumulators: zero, acc + a^2 lane by lane in double, and their sum as
  // reduce_add_double sums an array.
  static D zero_double() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  static D add_squares_double(const D& acc, F a) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
    return {_mm256_add_pd(acc.lo, _mm256_mul_pd(lo, lo)), _mm256_add_pd(acc.hi, _mm256_mul_pd(hi, hi))};
  }
  static double reduce_double(const D& acc) {
    const __m256d quad = _mm256_add_pd(acc.lo, acc.hi);
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(quad), _mm256_extractf128_pd(quad, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
  }
  // acc[0] + ... + acc[kLanes - 1].
  static double reduce_add_double(const double* acc) {
    const __m256d quad = _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_loadu_pd(acc + 4));
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(quad), _mm256_extractf128_pd(quad, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
  }
  // acc[0..n) += a[0..n) in double.
  static void add_to_double(double* acc, F a, int n) {
    add_to_double(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), n);
  }
  static void add_to_double(double* acc, __m256d lo, __m256d hi, int n) {
    const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i mlo = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), iota);
    const __m256i mhi = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - 4), iota);
    _mm256_maskstore_pd(acc, mlo, _mm256_add_pd(_mm256_maskload_pd(acc, mlo), lo));
    _mm256_maskstore_pd(acc + 4, mhi, _mm256_add_pd(_mm256_maskload_pd(acc + 4, mhi), hi));
  }

 private:
  static __m128i load_u16_tail(const uint16_t* p, int n) {
    alignas(16) uint16_t buffer[8] = {};
    for (int i = 0; i < n; ++i) buffer[i] = p[i];
    return _mm_load_si128(reinterpret_cast<const __m128i*>(buffer));
  }
  static F widen_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
};

}  // namespace avx2
}  // namespace simd
}  // namespace moe
