// CUDA runtime plumbing shared by the backend's .cu files: checks that turn a failing CUDA call into
// Failure(MOE_E_CUDA) naming the call, the device's properties, the engine's stream-ordered memory pool,
// and grow-only device and pinned host arrays.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moe::cuda {

// Throws Failure(MOE_E_CUDA) naming `what` when status is not cudaSuccess (and clears a non-sticky
// error so that the next call does not see it again).
void check(cudaError_t status, const char* what);

// After a kernel launch: throws when the launch failed.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

struct DeviceInfo {
  int ordinal = 0;
  int multiprocessors = 0;
  size_t shared_optin = 0;  // dynamic shared memory a block may use after opting in, bytes
};

// The device the engine runs on: the first visible one. Throws Failure(MOE_E_BACKEND) without one.
const DeviceInfo& device();

// Makes that device the calling thread's current one (and throws like device()).
void use_device();

// The engine's memory pool on that device; memory freed into it is kept for reuse.
cudaMemPool_t pool();

// Opts a kernel into `bytes` of dynamic shared memory when that is more than the default 48 KB.
void allow_shared(const void* kernel, size_t bytes);

// A grow-only device array from the pool, allocated in stream order. Contents do not survive growth.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (data_) cudaFree(data_);  // the owner synchronized its streams; nothing to report here
  }

  // Room for n elements; returns true when it had to reallocate.
  bool reserve(size_t n, cudaStream_t stream) {
    if (n <= capacity_) return false;
    if (data_) check(cudaFreeAsync(data_, stream), "cudaFreeAsync (device workspace)");
    data_ = nullptr;
    capacity_ = 0;
    void* p = nullptr;
    check(cudaMallocFromPoolAsync(&p, n * sizeof(T), pool(), stream),
          "cudaMallocFromPoolAsync (device workspace)");
    data_ = static_cast<T*>(p);
    capacity_ = n;
    return true;
  }
  T* get() const { return data_; }

 private:
  T* data_ = nullptr;
  size_t capacity_ = 0;
};

// A grow-only pinned host array (page-locked, so copies to and from it run asynchronously). Grow it
// only while no copy that uses it is in flight.
template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() {
    if (data_) cudaFreeHost(data_);
  }

  void reserve(size_t n) {
    if (n <= capacity_) return;
    if (data_) check(cudaFreeHost(data_), "cudaFreeHost (pinned staging)");
    data_ = nullptr;
    capacity_ = 0;
    void* p = nullptr;
    check(cudaMallocHost(&p, n * sizeof(T)), "cudaMallocHost (pinned staging)");
    data_ = static_cast<T*>(p);
    capacity_ = n;
  }
  T* get() const { return data_; }
  int64_t bytes() const { return static_cast<int64_t>(capacity_ * sizeof(T)); }

 private:
  T* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace moe::cuda
