// The gate kernels on AVX2 (generic/gate.h): dot tiles of 3 tokens x 4 experts, panel tiles of
// 6 tokens x 16 experts (12 ymm accumulators) over D in slices of 256. Against slices of 128 each
// tile reads, adds and stores its u half as often: prefill took 2-5% less (f32; bf16 1.5-2%) on one
// or two threads, while decode bf16 took 3% more, its two panels' slices no longer fitting L1 beside
// its rows (bench/NOTES.md item 66).
#define MOE_SIMD_ISA avx2
#include "vec_avx2.h"
//
#include "../simd_backend.h"
//
#include "../generic/gate.h"

namespace moe {
namespace simd {
namespace avx2 {

namespace {
constexpr int kDotTokens = 3, kDotExperts = 4, kPanelTokens = 6, kPanelVectors = 2, kKc = 256, kDotMaxExperts = 24;
}

const GateShape kGateShape = {Vec::kLanes,  kDotExperts, kDotTokens, kPanelVectors * Vec::kLanes,
                              kPanelTokens, kKc,         kDotMaxExperts};

static_assert(kDotMaxExperts <= kDotMaxGroups * kDotExperts, "the dot kernel's saved accumulators");

void gate(const GateBlock& block) {
  gate_block<kDotTokens, kDotExperts, kPanelTokens, kPanelVectors, kKc>(block);
}

}  // namespace avx2
}  // namespace simd
}  // namespace moe
