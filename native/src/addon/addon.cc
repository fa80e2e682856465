// Module entry: the RouterWrap class and a few engine-wide queries.
#include <napi.h>

#include "moe_router.h"
#include "router_wrap.h"

namespace {

Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), moe_router_version());
}

// backendAvailable(code: number) -> boolean
Napi::Value BackendAvailable(const Napi::CallbackInfo& info) {
  const int code = info[0].As<Napi::Number>().Int32Value();
  return Napi::Boolean::New(info.Env(), moe_backend_available(static_cast<moe_backend>(code)) != 0);
}

// backendCompiled(code: number) -> boolean: built into this binary, runnable here or not.
Napi::Value BackendCompiled(const Napi::CallbackInfo& info) {
  const int code = info[0].As<Napi::Number>().Int32Value();
  return Napi::Boolean::New(info.Env(), moe_backend_compiled(static_cast<moe_backend>(code)) != 0);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Router", moe_addon::RouterWrap::Define(env));
  exports.Set("DeviceBuffer", moe_addon::DeviceWrap::Define(env));
  exports.Set("version", Napi::Function::New(env, Version));
  exports.Set("backendAvailable", Napi::Function::New(env, BackendAvailable));
  exports.Set("backendCompiled", Napi::Function::New(env, BackendCompiled));
  return exports;
}

}  // namespace

NODE_API_MODULE(moe_router, Init)
