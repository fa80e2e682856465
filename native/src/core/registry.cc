// Which backends this binary has and which one AUTO means on this machine.
#include <memory>

#include "../cuda/cuda.h"
#include "../scalar/scalar.h"
#include "../simd/simd.h"
#include "backend.h"
#include "failure.h"

namespace moe {

bool backend_available(moe_backend kind) {
  switch (kind) {
    case MOE_BACKEND_AUTO:
    case MOE_BACKEND_SCALAR:
      return true;
    case MOE_BACKEND_AVX2:
    case MOE_BACKEND_AVX512:
    case MOE_BACKEND_NEON:
      return simd_supported(kind);
    case MOE_BACKEND_CUDA:
      return cuda_usable();
    default:
      return false;
  }
}

bool backend_compiled(moe_backend kind) {
  switch (kind) {
    case MOE_BACKEND_AUTO:
    case MOE_BACKEND_SCALAR:
      return true;
#if defined(__x86_64__)
    case MOE_BACKEND_AVX2:
    case MOE_BACKEND_AVX512:
      return true;
#elif defined(__aarch64__)
    case MOE_BACKEND_NEON:
      return true;
#endif
    case MOE_BACKEND_CUDA:
      return cuda_compiled();
    default:
      return false;
  }
}

moe_backend resolve_backend(moe_backend asked, moe_device device) {
  if (device == MOE_DEVICE_CUDA && asked != MOE_BACKEND_AUTO && asked != MOE_BACKEND_CUDA)
    fail(MOE_E_CONFIG, "option backend '%s' cannot run on device 'cuda'", moe_backend_name(asked));
  if (device == MOE_DEVICE_CPU && asked == MOE_BACKEND_CUDA)
    fail(MOE_E_CONFIG, "option backend 'cuda' cannot run on device 'cpu'");
  if (device == MOE_DEVICE_CUDA || asked == MOE_BACKEND_CUDA) {
    if (!backend_available(MOE_BACKEND_CUDA))
      fail(MOE_E_BACKEND, "device 'cuda' was asked for, but this binary has no usable CUDA device "
                          "(built without CUDA, or no GPU/driver found); use device 'auto' or 'cpu'");
    return MOE_BACKEND_CUDA;
  }
  if (asked != MOE_BACKEND_AUTO) {
    if (!backend_available(asked))
      fail(MOE_E_BACKEND, "backend '%s' is not available on this machine or in this build",
           moe_backend_name(asked));
    return asked;
  }
  if (device == MOE_DEVICE_AUTO && backend_available(MOE_BACKEND_CUDA)) return MOE_BACKEND_CUDA;
  for (moe_backend kind : {MOE_BACKEND_AVX512, MOE_BACKEND_AVX2, MOE_BACKEND_NEON}) {
    if (backend_available(kind)) return kind;
  }
  return MOE_BACKEND_SCALAR;
}

std::unique_ptr<Backend> make_backend(moe_backend kind, int threads) {
  switch (kind) {
    case MOE_BACKEND_SCALAR:
      return make_scalar_backend();
    case MOE_BACKEND_AVX2:
    case MOE_BACKEND_AVX512:
    case MOE_BACKEND_NEON:
      return make_simd_backend(kind, threads);
    case MOE_BACKEND_CUDA:
      return make_cuda_backend();
    default:
      fail(MOE_E_BACKEND, "backend '%s' is not available on this machine or in this build",
           moe_backend_name(kind));
  }
}

}  // namespace moe
