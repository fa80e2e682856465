// The token stage after the gate on AVX2 (generic/topk_softmax.h), and the row helpers.
#define MOE_SIMD_ISA avx2
#include "vec_avx2.h"
//
#include "../simd_backend.h"
//
#include "../generic/topk_softmax.h"

namespace moe {
namespace simd {
namespace avx2 {

void widen(const void* src, moe_dtype dtype, int64_t n, float* dst) { widen_block(src, dtype, n, dst); }

double norm(const void* row, moe_dtype dtype, int64_t n) { return norm_of(row, dtype, n); }

void rows(const RowBlock& block) { rows_block(block); }

}  // namespace avx2
}  // namespace simd
}  // namespace moe
