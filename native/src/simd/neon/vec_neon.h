// The vector type the generic SIMD code (simd/generic/) is instantiated with on AArch64 Advanced
// SIMD: 4 f32 lanes, masks as all-ones lanes. Included only by the translation units of simd/neon/.
// The interface is the one of avx512/vec_avx512.h.
#pragma once

#include <arm_neon.h>

#include <cstdint>

namespace moe {
namespace simd {
namespace neon {

struct Vec {
  static constexpr int kLanes = 4;
  using F = float32x4_t;
  using I = int32x4_t;
  using M = uint32x4_t;

  static M first(int n) { return vcltq_s32(iota(), vdupq_n_s32(n)); }  // lanes < n

  static F zero() { return vdupq_n_f32(0.0f); }
  static F set1(float x) { return vdupq_n_f32(x); }
  static F load(const float* p) { return vld1q_f32(p); }
  static F load_tail(const float* p, int n, float fill) {
    float buffer[kLanes] = {fill, fill, fill, fill};
    for (int i = 0; i < n; ++i) buffer[i] = p[i];
    return vld1q_f32(buffer);
  }
  static void store(float* p, F v) { vst1q_f32(p, v); }
  static void store_tail(float* p, F v, int n) {
    float buffer[kLanes];
    vst1q_f32(buffer, v);
    for (int i = 0; i < n; ++i) p[i] = buffer[i];
  }

  static F load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static F load_f16_tail(const uint16_t* p, int n) { return vcvt_f32_f16(vreinterpret_f16_u16(load_u16_tail(p, n))); }
  static F load_bf16(const uint16_t* p) { return widen_bf16(vld1_u16(p)); }
  static F load_bf16_tail(const uint16_t* p, int n) { return widen_bf16(load_u16_tail(p, n)); }

  // Keeps v in a register: the compiler would otherwise fold a load used by several FMAs into each
  // of them, one load per use.
  static void pin(F& v) { asm("" : "+w"(v)); }

  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F sub(F a, F b) { return vsubq_f32(a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F div(F a, F b) { return vdivq_f32(a, b); }
  static F fmadd(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static F max(F a, F b) { return vmaxq_f32(a, b); }
  static F min(F a, F b) { return vminq_f32(a, b); }
  static F abs(F a) { return vabsq_f32(a); }
  // Horizontal reductions, in a fixed order (halves, then pairs).
  static float reduce_add(F a) {
    const float32x2_t h = vadd_f32(vget_low_f32(a), vget_high_f32(a));
    return vget_lane_f32(vpadd_f32(h, h), 0);
  }
  static float reduce_max(F a) { return vmaxvq_f32(a); }

  static M gt(F a, F b) { return vcgtq_f32(a, b); }
  static M ge(F a, F b) { return vcgeq_f32(a, b); }
  static M lt(F a, F b) { return vcltq_f32(a, b); }
  static M eq(F a, F b) { return vceqq_f32(a, b); }
  static M mask_and(M a, M b) { return vandq_u32(a, b); }
  static M mask_andnot(M a, M b) { return vbicq_u32(b, a); }  // !a && b
  static uint32_t bits(M m) { return vaddvq_u32(vandq_u32(m, lane_bits())); }
  static F select(M m, F if_true, F if_false) { return vbslq_f32(m, if_true, if_false); }
  static F zero_where(M m, F a) { return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(a), m)); }

  // Stores the lanes of v selected by `lanes` (a bit per lane), and their indices base + lane, at
  // keys[0..) and index[0..) in lane order (room for a whole vector each). Returns how many.
  static int compress(float* keys, int32_t* index, F v, int32_t base, uint32_t lanes) {
    float all[kLanes];
    vst1q_f32(all, v);
    int n = 0;
    for (; lanes; lanes &= lanes - 1, ++n) {
      const int lane = __builtin_ctz(lanes);
      keys[n] = all[lane];
      index[n] = base + lane;
    }
    return n;
  }

  // r[i] lane j <- r[j] lane i. Always inlined: called, the vectors go through memory.
  [[gnu::always_inline]] static void transpose(F r[kLanes]) {
    const float32x4x2_t a = vtrnq_f32(r[0], r[1]), b = vtrnq_f32(r[2], r[3]);
    r[0] = vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0]));
    r[1] = vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1]));
    r[2] = vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0]));
    r[3] = vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1]));
  }
  // even <- lanes 0, 2 of the concatenation a:b (a first), odd <- lanes 1, 3.
  static void unzip(F a, F b, F& even, F& odd) {
    even = vuzp1q_f32(a, b);
    odd = vuzp2q_f32(a, b);
  }
  // The inverse of unzip: lo <- a0 b0 a1 b1, hi <- a2 b2 a3 b3.
  static void zip(F a, F b, F& lo, F& hi) {
    lo = vzip1q_f32(a, b);
    hi = vzip2q_f32(a, b);
  }
  static M int_gt(I a, I b) { return vcgtq_s32(a, b); }
  static M int_eq(I a, I b) { return vceqq_s32(a, b); }
  static I to_bits(F a) { return vreinterpretq_s32_f32(a); }
  static F from_bits(I a) { return vreinterpretq_f32_s32(a); }
  static I to_int(F a) { return vcvtnq_s32_f32(a); }
  static F to_float(I a) { return vcvtq_f32_s32(a); }
  static I int_add(I a, I b) { return vaddq_s32(a, b); }
  static I int_sub(I a, I b) { return vsubq_s32(a, b); }
  static I int_set1(int32_t x) { return vdupq_n_s32(x); }
  static I int_and(I a, I b) { return vandq_s32(a, b); }
  static I int_or(I a, I b) { return vorrq_s32(a, b); }
  static I and_or(I a, I mask, I b) { return int_or(int_and(a, mask), b); }  // (a & mask) | b
  template <int kShift> static I shift_left(I a) { return vshlq_n_s32(a, kShift); }
  template <int kShift> static I shift_right(I a) {
    return vreinterpretq_s32_u32(vshrq_n_u32(vreinterpretq_u32_s32(a), kShift));
  }
  static I shift_left_by(I a, I n) { return vshlq_s32(a, n); }  // each lane by its own n in [0, 32)
  static void store_int(int32_t* p, I a) { vst1q_s32(p, a); }
  static void store_int_tail(int32_t* p, I a, int n) {
    int32_t buffer[kLanes];
    vst1q_s32(buffer, a);
    for (int i = 0; i < n; ++i) p[i] = buffer[i];
  }
  static I int_load(const int32_t* p) { return vld1q_s32(p); }
  static I int_xor(I a, I b) { return veorq_s32(a, b); }
  static I int_max(I a, I b) { return vmaxq_s32(a, b); }
  static I int_min(I a, I b) { return vminq_s32(a, b); }
  template <int kShift> static I shift_right_arith(I a) { return vshrq_n_s32(a, kShift); }
  static I permute(I a, I index) {  // lane i = a[index[i]], through a byte table lookup
    const int32x4_t bytes = vaddq_s32(vmulq_n_s32(vshlq_n_s32(index, 2), 0x01010101), vdupq_n_s32(0x03020100));
    return vreinterpretq_s32_u8(vqtbl1q_u8(vreinterpretq_u8_s32(a), vreinterpretq_u8_s32(bytes)));
  }
  static I blend_bits(uint32_t bits, I if_set, I if_clear) {
    return vbslq_s32(vtstq_u32(vdupq_n_u32(bits), lane_bits()), if_set, if_clear);
  }

  // kLanes doubles, lanes [0, 2) and [2, 4) (group scores: keep_groups_across_tokens).
  struct D {
    float64x2_t lo, hi;
  };
  static D sum_double(F a, F b) {  // a + b in double, lane by lane
    return {vaddq_f64(vcvt_f64_f32(vget_low_f32(a)), vcvt_f64_f32(vget_low_f32(b))),
            vaddq_f64(vcvt_high_f64_f32(a), vcvt_high_f64_f32(b))};
  }
  static M ge_double(const D& a, const D& b) {
    return vcombine_u32(vmovn_u64(vcgeq_f64(a.lo, b.lo)), vmovn_u64(vcgeq_f64(a.hi, b.hi)));
  }

  // norm_of's accumulators: zero, acc + a^2 lane by lane in double, and their sum as
  // reduce_add_double sums an array.
  static D zero_double() { return {vdupq_n_f64(0.0), vdupq_n_f64(0.0)}; }
  static D add_squares_double(const D& acc, F a) {
    const float64x2_t lo = vcvt_f64_f32(vget_low_f32(a)), hi = vcvt_high_f64_f32(a);
    return {vaddq_f64(acc.lo, vmulq_f64(lo, lo)), vaddq_f64(acc.hi, vmulq_f64(hi, hi))};
  }
  static double reduce_double(const D& acc) { return vaddvq_f64(vaddq_f64(acc.lo, acc.hi)); }
  // acc[0] + ... + acc[kLanes - 1].
  static double reduce_add_double(const double* acc) {
    return vaddvq_f64(vaddq_f64(vld1q_f64(acc), vld1q_f64(acc + 2)));
  }
  // acc[0..n) += a[0..n) in double.
  static void add_to_double(double* acc, F a, int n) {
    float values[kLanes];
    vst1q_f32(values, a);
    for (int i = 0; i < n; ++i) acc[i] += values[i];
  }

 private:
  static I iota() {
    static const int32_t values[kLanes] = {0, 1, 2, 3};
    return vld1q_s32(values);
  }
  static uint32x4_t lane_bits() {
    static const uint32_t values[kLanes] = {1, 2, 4, 8};
    return vld1q_u32(values);
  }
  static uint16x4_t load_u16_tail(const uint16_t* p, int n) {
    uint16_t buffer[kLanes] = {};
    for (int i = 0; i < n; ++i) buffer[i] = p[i];
    return vld1_u16(buffer);
  }
  static F widen_bf16(uint16x4_t h) { return vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(h), 16)); }
};

}  // namespace neon
}  // namespace simd
}  // namespace moe
