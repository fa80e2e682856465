#include "runtime.cuh"

#include <cstdint>
#include <limits>
#include <mutex>

#include "../core/failure.h"
#include "cuda.h"
#include "kernels.cuh"
#include "params.cuh"

namespace moe {

namespace {

// The answer of cudaGetDeviceCount, asked once: no driver, no device, or a device older than the
// oldest architecture this binary carries (sm_75) all mean "not usable".
struct Probe {
  bool usable = false;
  cuda::DeviceInfo info;
};

const Probe& probe() {
  static const Probe result = [] {
    Probe p;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
      cudaGetLastError();
      return p;
    }
    int major = 0, minor = 0, sms = 0, optin = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) != cudaSuccess) {
      cudaGetLastError();
      return p;
    }
    p.usable = major * 10 + minor >= 75;
    p.info.ordinal = 0;
    p.info.multiprocessors = sms;
    p.info.shared_optin = static_cast<size_t>(optin);
    return p;
  }();
  return result;
}

}  // namespace

namespace cuda {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();
  fail(MOE_E_CUDA, "CUDA error in %s: %s (%s)", what, cudaGetErrorString(status),
       cudaGetErrorName(status));
}

const DeviceInfo& device() {
  const Probe& p = probe();
  if (!p.usable)
    fail(MOE_E_BACKEND, "no usable CUDA device (no driver, no GPU, or one older than sm_75)");
  return p.info;
}

void use_device() { check(cudaSetDevice(device().ordinal), "cudaSetDevice"); }

cudaMemPool_t pool() {
  static std::once_flag once;
  static cudaMemPool_t made = nullptr;
  static cudaError_t status = cudaSuccess;
  std::call_once(once, [] {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device().ordinal;
    status = cudaMemPoolCreate(&made, &props);
    if (status != cudaSuccess) return;
    uint64_t keep = std::numeric_limits<uint64_t>::max();
    status = cudaMemPoolSetAttribute(made, cudaMemPoolAttrReleaseThreshold, &keep);
  });
  check(status, "cudaMemPoolCreate (the engine's device memory pool)");
  return made;
}

void allow_shared(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
        "cudaFuncSetAttribute (dynamic shared memory)");
}

}  // namespace cuda

bool cuda_compiled() { return true; }
bool cuda_usable() { return probe().usable; }

bool cuda_supports(const Config& c, std::string* why) {
  if (c.E > cuda::kMaxExperts || c.K > cuda::kMaxTopK) {
    if (why)
      *why = "the CUDA kernels take numExperts <= " + std::to_string(cuda::kMaxExperts) +
             " and topK <= " + std::to_string(cuda::kMaxTopK) + " (got " + std::to_string(c.E) +
             " and " + std::to_string(c.K) + ")";
    return false;
  }
  if (!probe().usable) return true;  // nothing to measure against; creating the backend will say why
  const size_t need = cuda::gate_shared_bytes(c.E, c.K, c.group_size > 0 ? c.options.group_count : 0, c.D);
  if (need > probe().info.shared_optin) {
    if (why)
      *why = "the fused gate for numExperts " + std::to_string(c.E) + " needs " + std::to_string(need / 1024) +
             " KB of shared memory per block, and this GPU allows " +
             std::to_string(probe().info.shared_optin / 1024) + " KB";
    return false;
  }
  return true;
}

void* cuda_device_alloc(int64_t bytes) {
  cuda::use_device();
  void* p = nullptr;
  cuda::check(cudaMalloc(&p, static_cast<size_t>(bytes > 0 ? bytes : 1)), "cudaMalloc (device buffer)");
  return p;
}

void cuda_device_free(void* device) noexcept {
  if (device) cudaFree(device);
}

void cuda_copy_to_device(void* device, const void* host, int64_t bytes) {
  cuda::use_device();
  cuda::check(cudaMemcpy(device, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice),
              "cudaMemcpy (upload to a device buffer)");
}

void cuda_copy_to_host(void* host, const void* device, int64_t bytes) {
  cuda::use_device();
  cuda::check(cudaMemcpy(host, device, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost),
              "cudaMemcpy (download from a device buffer)");
}

}  // namespace moe
