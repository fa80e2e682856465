// The CUDA backend's face to the rest of the engine, in plain C++ (no CUDA headers), so core/ calls it
// the same way whether or not this binary has CUDA: cuda/absent.cc stands in when it was built without.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "../core/backend.h"
#include "../core/config.h"

namespace moe {

// True when this binary was built with the CUDA backend.
bool cuda_compiled();

// True when this binary has CUDA and cudaGetDeviceCount found at least one device. Asked once, cached.
bool cuda_usable();

// Whether the CUDA kernels cover this configuration (numExperts <= 1024, topK <= 32); when not, *why
// says what does not fit.
bool cuda_supports(const Config& config, std::string* why);

// The CUDA backend on the first visible device. Throws Failure(MOE_E_CUDA) when the device cannot be
// set up (stream creation, ...), Failure(MOE_E_BACKEND) when there is none.
std::unique_ptr<Backend> make_cuda_backend();

// Device memory for inputs kept on the GPU (moe_device_buffer). Each throws Failure(MOE_E_BACKEND)
// without a usable device and Failure(MOE_E_CUDA) when the CUDA call fails.
void* cuda_device_alloc(int64_t bytes);
void cuda_device_free(void* device) noexcept;
void cuda_copy_to_device(void* device, const void* host, int64_t bytes);
void cuda_copy_to_host(void* host, const void* device, int64_t bytes);

}  // namespace moe
