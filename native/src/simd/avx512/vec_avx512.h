// The vector type the generic SIMD code (simd/generic/) is instantiated with on AVX-512F (+BW, VL,
// DQ, F16C): 16 f32 lanes, k-register masks. Included only by the translation units of simd/avx512/,
// which are compiled with the AVX-512 flags.
#pragma once

// GCC 12's AVX-512 intrinsics start some results from a self-initialized "undefined" vector, which
// -Wuninitialized reports wherever they are inlined; the reports point into the header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

namespace moe {
namespace simd {
namespace avx512 {

struct Vec {
  static constexpr int kLanes = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  // Loads and stores. A tail (n < kLanes valid lanes) never touches memory past the n-th element.
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load_tail(const float* p, int n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first(n), p);
  }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store_tail(float* p, F v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }
  static M first(int n) { return static_cast<M>(n >= kLanes ? 0xffff : (1u << n) - 1); }  // lanes < n

  // Widening loads of raw f16 / bf16 bits (bf16 is the top half of an f32: a shift widens it).
  static F load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load_f16_tail(const uint16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), p)); }
  static F load_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static F load_bf16_tail(const uint16_t* p, int n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first(n), p)), 16));
  }

  // Keeps v in a register: the compiler would otherwise fold a load used by several FMAs into each
  // of them as a memory operand, one load per use.
  static void pin(F& v) { asm("" : "+x"(v)); }

  // Arithmetic.
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F abs(F a) { return _mm512_abs_ps(a); }
  static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F times_pow2(F a, F n) { return _mm512_scalef_ps(a, n); }  // a * 2^n, n integral, one rounding (vexp)
  // Horizontal reductions, in a fixed order (halves, then quarters, ...).
  static float reduce_add(F a) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)));
  }
  static float reduce_max(F a) {
    const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 e = _mm_max_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_max_ss(e, _mm_movehdup_ps(e)));
  }

  // Comparisons and masks.
  static M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M mask_and(M a, M b) { return static_cast<M>(a & b); }
  static M mask_andnot(M a, M b) { return static_cast<M>(~a & b); }  // !a && b
  static uint32_t bits(M m) { return m; }
  static F select(M m, F if_true, F if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static F zero_where(M m, F a) { return _mm512_mask_mov_ps(a, m, _mm512_setzero_ps()); }  // +0 where m, else a

  static void store_int(int32_t* p, I a) { _mm512_storeu_si512(p, a); }
  static void store_int_tail(int32_t* p, I a, int n) { _mm512_mask_storeu_epi32(p, first(n), a); }
  static I int_load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static I int_xor(I a, I b) { return _mm512_xor_si512(a, b); }
  static I int_max(I a, I b) { return _mm512_max_epi32(a, b); }
  static I int_min(I a, I b) { return _mm512_min_epi32(a, b); }
  template <int kShift> static I shift_right_arith(I a) { return _mm512_srai_epi32(a, kShift); }
  static I permute(I a, I index) { return _mm512_permutexvar_epi32(index, a); }  // lane i = a[index[i]]
  // lane i = (index[i] & 16 ? b : a)[index[i] & 15]
  static I int_permute2(I a, I index, I b) { return _mm512_permutex2var_epi32(a, index, b); }
  // lane i = a[index[i] & 15] where bit i of `lanes` is set, src[i] elsewhere
  static I int_permute_masked(I src, uint32_t lanes, I index, I a) {
    return _mm512_mask_permutexvar_epi32(src, static_cast<M>(lanes), index, a);
  }
  static M int_test(I a, I b) { return _mm512_test_epi32_mask(a, b); }  // lanes where a & b != 0
  static I blend_bits(uint32_t bits, I if_set, I if_clear) {
    return _mm512_mask_blend_epi32(static_cast<M>(bits), if_clear, if_set);
  }

  // Stores the lanes of v selected by `lanes` (a bit per lane), and their indices base + lane, at
  // keys[0..) and index[0..) in lane order; writes a whole vector to each. Returns how many.
  static int compress(float* keys, int32_t* index, F v, int32_t base, uint32_t lanes) {
    const M m = static_cast<M>(lanes);
    _mm512_storeu_ps(keys, _mm512_maskz_compress_ps(m, v));
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm512_storeu_si512(index, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(iota, _mm512_set1_epi32(base))));
    return __builtin_popcount(lanes);
  }

  // counts[e] += how many lanes of expert[0..n) hold e (e < E <= kCountMaxE), where no lane holds
  // an expert twice: each lane's experts as a 64-bit mask (a shift and an or per vector and half),
  // then, lane by lane, a masked add of 1 to a byte per expert (at most kLanes). Against an
  // increment per lane and slot (two loads and a store each): bench/NOTES.md item 18.
  static constexpr int kCountMaxE = 64;
  static void add_counts(const I* expert, int n, int E, int32_t* counts) {
    const __m512i one = _mm512_set1_epi64(1);
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();  // lanes 0..7, 8..15
    for (int j = 0; j < n; ++j) {
      lo = _mm512_or_si512(lo, _mm512_sllv_epi64(one, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(expert[j]))));
      hi = _mm512_or_si512(hi, _mm512_sllv_epi64(one, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(expert[j], 1))));
    }
    alignas(64) uint64_t mask[kLanes];
    _mm512_store_si512(mask, lo);
    _mm512_store_si512(mask + 8, hi);
    asm("" : "+m"(mask));  // each mask loaded into a k register (not a vmovq and a kmovq)
    __m512i bytes = _mm512_setzero_si512();
    const __m512i ones = _mm512_set1_epi8(1);
    for (int l = 0; l < kLanes; ++l) bytes = _mm512_mask_add_epi8(bytes, _cvtu64_mask64(mask[l]), bytes, ones);
    alignas(64) uint8_t count[64];
    _mm512_store_si512(count, bytes);
    for (int e0 = 0; e0 < E; e0 += kLanes) {
      const M m = first(E - e0);
      const __m512i add = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(count + e0)));
      _mm512_mask_storeu_epi32(counts + e0, m, _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, counts + e0), add));
    }
  }

  // r[i] lane j <- r[j] lane i. Always inlined: called, the vectors go through memory.
  [[gnu::always_inline]] static void transpose(F r[kLanes]) {
    F t[kLanes];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
      t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
      t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
      t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
      r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
      r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
      r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
    }
  }
  // even <- lanes 0, 2, 4, .. of the concatenation a:b (a first), odd <- lanes 1, 3, 5, ..
  static void unzip(F a, F b, F& even, F& odd) {
    even = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
    odd = _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
  }
  // The inverse of unzip: lo <- a0 b0 a1 b1 .. from the low halves, hi <- the same from the high ones.
  static void zip(F a, F b, F& lo, F& hi) {
    lo = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b);
    hi = _mm512_permutex2var_ps(a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), b);
  }
  static M int_gt(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }
  static M int_eq(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  // Bits of floats, for exp and log.
  static I to_bits(F a) { return _mm512_castps_si512(a); }
  static F from_bits(I a) { return _mm512_castsi512_ps(a); }
  static I to_int(F a) { return _mm512_cvtps_epi32(a); }  // a already integral
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static I int_add(I a, I b) { return _mm512_add_epi32(a, b); }
  static I int_sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I int_set1(int32_t x) { return _mm512_set1_epi32(x); }
  static I int_and(I a, I b) { return _mm512_and_si512(a, b); }
  static I int_or(I a, I b) { return _mm512_or_si512(a, b); }
  static I and_or(I a, I mask, I b) { return _mm512_ternarylogic_epi32(a, mask, b, 0xea); }  // (a & mask) | b, one op
  template <int kShift> static I shift_left(I a) { return _mm512_slli_epi32(a, kShift); }
  template <int kShift> static I shift_right(I a) { return _mm512_srli_epi32(a, kShift); }
  static I shift_left_by(I a, I n) { return _mm512_sllv_epi32(a, n); }  // each lane by its own n in [0, 32)

  // kLanes doubles, lanes [0, 8) and [8, 16) (group scores: keep_groups_across_tokens).
  struct D {
    __m512d lo, hi;
  };
  static D sum_double(F a, F b) {  // a + b in double, lane by lane
    return {_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a)), _mm512_cvtps_pd(_mm512_castps512_ps256(b))),
            _mm512_add_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(b, 1)))};
  }
  static M ge_double(const D& a, const D& b) {
    return static_cast<M>(_mm512_cmp_pd_mask(a.lo, b.lo, _CMP_GE_OQ) |
                          static_cast<unsigned>(_mm512_cmp_pd_mask(a.hi, b.hi, _CMP_GE_OQ)) << 8);
  }

  // norm_of's accumulators: zero, acc + a^2 lane by lane in double, and their sum as
  // reduce_add_double sums an array.
  static D zero_double() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
  static D add_squares_double(const D& acc, F a) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
    const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1));
    return {_mm512_add_pd(acc.lo, _mm512_mul_pd(lo, lo)), _mm512_add_pd(acc.hi, _mm512_mul_pd(hi, hi))};
  }
  static double reduce_double(const D& acc) { return _mm512_reduce_add_pd(_mm512_add_pd(acc.lo, acc.hi)); }
  // acc[0] + ... + acc[kLanes - 1].
  static double reduce_add_double(const double* acc) {
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_loadu_pd(acc), _mm512_loadu_pd(acc + 8)));
  }
  // acc[0..n) += a[0..n) in double.
  static void add_to_double(double* acc, F a, int n) {
    add_to_double(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(a)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1)), n);
  }
  static void add_to_double(double* acc, __m512d lo, __m512d hi, int n) {
    const __mmask8 mlo = static_cast<__mmask8>(n >= 8 ? 0xff : (1u << n) - 1);
    const __mmask8 mhi = static_cast<__mmask8>(n >= 16 ? 0xff : n <= 8 ? 0 : (1u << (n - 8)) - 1);
    _mm512_mask_storeu_pd(acc, mlo, _mm512_add_pd(_mm512_maskz_loadu_pd(mlo, acc), lo));
    _mm512_mask_storeu_pd(acc + 8, mhi, _mm512_add_pd(_mm512_maskz_loadu_pd(mhi, acc + 8), hi));
  }
};

}  // namespace avx512
}  // namespace simd
}  // namespace moe
