// Module entry: the RouterWrap class and a few engine-wide queries.
#include <napi.h>

#include <cstdio>

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

// hash128(view: TypedArray) -> 32 hex digits of moe_hash128 over the view's bytes.
Napi::Value Hash128(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    moe_addon::make_error(env, MOE_E_DTYPE, "hash128 needs a TypedArray").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  const char* data = static_cast<const char*>(view.ArrayBuffer().Data()) + view.ByteOffset();
  uint64_t digest[2];
  moe_hash128(data, view.ByteLength(), 0, digest);
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(digest[0]),
                static_cast<unsigned long long>(digest[1]));
  return Napi::String::New(env, hex, 32);
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
  exports.Set("hash128", Napi::Function::New(env, Hash128));
  exports.Set("backendCompiled", Napi::Function::New(env, BackendCompiled));
  return exports;
}

}  // namespace

NODE_API_MODULE(moe_router, Init)
