// Stands in for the CUDA backend in a binary built without CUDA (MOE_ROUTER_CUDA=OFF, or no nvcc).
#include "../core/failure.h"
#include "cuda.h"

namespace moe {

namespace {

[[noreturn]] void no_cuda() {
  fail(MOE_E_BACKEND, "this binary was built without CUDA (rebuild with nvcc on the PATH, or "
                      "MOE_ROUTER_CUDA=ON); use device 'auto' or 'cpu'");
}

}  // namespace

bool cuda_compiled() { return false; }
bool cuda_usable() { return false; }

bool cuda_supports(const Config&, std::string* why) {
  if (why) *why = "this binary was built without CUDA";
  return false;
}

std::unique_ptr<Backend> make_cuda_backend() { no_cuda(); }
void* cuda_device_alloc(int64_t) { no_cuda(); }
void cuda_device_free(void*) noexcept {}
void cuda_copy_to_device(void*, const void*, int64_t) { no_cuda(); }
void cuda_copy_to_host(void*, const void*, int64_t) { no_cuda(); }

}  // namespace moe
