// The SIMD CPU backends (x86-64 AVX2+FMA, AVX-512; arm64 NEON): which ones this machine can run, and
// their factory. Kernels live in one folder per instruction set over the shared code of generic/;
// simd_backend.cc drives them (blocks, threads, reductions) and is compiled without ISA flags.
#pragma once

#include <memory>

#include "../core/backend.h"

namespace moe {

// Whether this CPU and OS can run the backend's instructions (and this binary has its kernels).
bool simd_supported(moe_backend kind);

// A SIMD backend running on up to `threads` threads (0: one per hardware thread).
std::unique_ptr<Backend> make_simd_backend(moe_backend kind, int threads);

}  // namespace moe
