// The gate kernels on NEON (generic/gate.h): dot tiles of 3 tokens x 8 experts, panel tiles of
// 8 tokens x 8 experts (16 q-register accumulators) over D in slices of 128.
#define MOE_SIMD_ISA neon
#include "vec_neon.h"
//
#include "../simd_backend.h"
//
#include "../generic/gate.h"

namespace moe {
namespace simd {
namespace neon {

namespace {
constexpr int kDotTokens = 3, kDotExperts = 8, kPanelTokens = 8, kPanelVectors = 2, kKc = 128, kDotMaxExperts = 24;
}

const GateShape kGateShape = {Vec::kLanes,  kDotExperts, kDotTokens, kPanelVectors * Vec::kLanes,
                              kPanelTokens, kKc,         kDotMaxExperts};

static_assert(kDotMaxExperts <= kDotMaxGroups * kDotExperts, "the dot kernel's saved accumulators");

void gate(const GateBlock& block) {
  gate_block<kDotTokens, kDotExperts, kPanelTokens, kPanelVectors, kKc>(block);
}

}  // namespace neon
}  // namespace simd
}  // namespace moe
