// Run-time CPU feature detection for the SIMD backends. An instruction set counts only when the CPU
// has it AND the OS saves its registers on context switches (XCR0, read with xgetbv).
#include "simd.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace moe {

namespace {

#if defined(__x86_64__)
struct X86Features {
  bool avx2 = false;    // AVX2 + FMA + F16C, YMM state enabled
  bool avx512 = false;  // AVX-512 F/BW/VL/DQ + the above, ZMM and opmask state enabled
};

X86Features detect() {
  X86Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & bit_FMA, f16c = c & bit_F16C, osxsave = c & bit_OSXSAVE, avx = c & bit_AVX;
  if (!(fma && f16c && osxsave && avx)) return f;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_state = (xcr0_lo & 0x6) == 0x6;            // SSE and AVX state
  const bool zmm_state = (xcr0_lo & 0xe6) == 0xe6;          // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!ymm_state || __get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = b & bit_AVX2;
  const unsigned avx512 = bit_AVX512F | bit_AVX512BW | bit_AVX512VL | bit_AVX512DQ;
  f.avx512 = f.avx2 && zmm_state && (b & avx512) == avx512;
  return f;
}

const X86Features& features() {
  static const X86Features f = detect();
  return f;
}
#endif

}  // namespace

bool simd_supported(moe_backend kind) {
  switch (kind) {
#if defined(__x86_64__)
    case MOE_BACKEND_AVX2:
      return features().avx2;
    case MOE_BACKEND_AVX512:
      return features().avx512;
#elif defined(__aarch64__)
    case MOE_BACKEND_NEON:
      return true;  // Advanced SIMD is part of every AArch64 CPU
#endif
    default:
      return false;
  }
}

}  // namespace moe
