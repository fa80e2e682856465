// RouterWrap: the JavaScript object around one moe_router. It converts arguments to the C ABI and
// back and does nothing else; option parsing and friendly checks live in src/router.ts.
#pragma once

#include <napi.h>

#include <memory>

#include "moe_router.h"

namespace moe_addon {

using RouterHandle = std::shared_ptr<moe_router>;
using DeviceHandle = std::shared_ptr<moe_device_buffer>;

// What the JavaScript engine has been told a router's native memory costs
// (napi_adjust_external_memory): its object is small, and without this an unreferenced router of
// megabytes waited for a collection that the JavaScript heap alone had no reason to start. Shared by
// the router's object and its routes in flight; used on the JavaScript thread only.
class MemoryReport {
 public:
  // Reports the router's size now (moe_router_host_bytes), as the change since the last report;
  // nothing once closed.
  void update(napi_env env, const moe_router* router);
  // Takes back everything reported, for good (dispose, or the object's collection).
  void close(napi_env env);

 private:
  int64_t reported_ = 0;
  bool closed_ = false;
};

// A JavaScript Error carrying `code` (E_SHAPE, …); src/errors.ts turns it into a RouterError.
Napi::Error make_error(Napi::Env env, moe_status code, const char* message);

// DeviceWrap: the JavaScript object around one moe_device_buffer (Tensor.to('cuda')).
class DeviceWrap : public Napi::ObjectWrap<DeviceWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new NativeDeviceBuffer(bytes); throws E_BACKEND without a usable CUDA device.
  explicit DeviceWrap(const Napi::CallbackInfo& info);
  // The buffer of a JavaScript value when it is a live NativeDeviceBuffer, else null.
  static DeviceHandle Of(Napi::Env env, Napi::Value value);

 private:
  // upload(data: Float32Array | Uint16Array): copies the array's bytes to the buffer's start.
  Napi::Value Upload(const Napi::CallbackInfo& info);
  Napi::Value Size(const Napi::CallbackInfo& info);
  // free(): gives the device memory back now (a route still running keeps its own reference).
  Napi::Value Free(const Napi::CallbackInfo& info);

  DeviceHandle buffer_;
};

class RouterWrap : public Napi::ObjectWrap<RouterWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit RouterWrap(const Napi::CallbackInfo& info);

 private:
  // (input: TypedArray | NativeDeviceBuffer, dtype, tokens, isLogits, outputs: ArrayBuffer) -> undefined;
  // every output, and the scalars as doubles, lands in `outputs` as outputLayout(tokens) places them.
  Napi::Value Route(const Napi::CallbackInfo& info);
  // Same arguments -> Promise<void>; runs on a libuv worker thread.
  Napi::Value RouteAsync(const Napi::CallbackInfo& info);
  // (sample, dtype, tokens, isLogits, meanExperts) -> [parameter, meanExperts]
  Napi::Value Calibrate(const Napi::CallbackInfo& info);
  Napi::Value UpdateBias(const Napi::CallbackInfo& info);
  Napi::Value SelectionBias(const Napi::CallbackInfo& info);
  Napi::Value GetStep(const Napi::CallbackInfo& info);
  Napi::Value SetStep(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value ResetStats(const Napi::CallbackInfo& info);
  Napi::Value Backend(const Napi::CallbackInfo& info);
  // hostBytes() -> moe_router_host_bytes, 0 once disposed.
  Napi::Value HostBytes(const Napi::CallbackInfo& info);
  // lastFallback() -> null | { code, message }: the CUDA failure the most recent call fell back from.
  Napi::Value LastFallback(const Napi::CallbackInfo& info);
  Napi::Value Parameters(const Napi::CallbackInfo& info);
  // outputLayout(tokens) -> byte offsets of each output in a route's ArrayBuffer, and its size.
  Napi::Value OutputLayoutOf(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  // The object was collected: the router is freed with it (when no route holds it still).
  void Finalize(Napi::BasicEnv env) override;

  // The live handle, or throws E_DISPOSED (returns nullptr after throwing).
  moe_router* Live(Napi::Env env);

  RouterHandle router_;
  std::shared_ptr<MemoryReport> memory_ = std::make_shared<MemoryReport>();
};

}  // namespace moe_addon
