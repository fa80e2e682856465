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

// hash128(view: TypedArray, prefix = '') -> prefix followed by the 32 hex digits of moe_hash128 over
// the view's bytes: a cache key made in one call and one string. A key is asked for on every cached
// route, so this uses one napi_get_typedarray_info call rather than Napi::TypedArray's several.
Napi::Value Hash128(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  // Bytes per element of each napi_typedarray_type, Int8Array … BigUint64Array.
  static constexpr size_t kElementBytes[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8};
  if (info.Length() < 1 ||
      napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      static_cast<size_t>(type) >= sizeof kElementBytes / sizeof kElementBytes[0]) {
    moe_addon::make_error(env, MOE_E_DTYPE, "hash128 needs a TypedArray").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  constexpr size_t kMaxPrefix = 200;
  char key[kMaxPrefix + 1 + 32];
  size_t at = 0;
  // The prefix is read NUL-terminated into key[0, kMaxPrefix + 1); one that fills it may be cut short.
  if (info.Length() > 1 && !info[1].IsUndefined() &&
      (napi_get_value_string_latin1(env, info[1], key, kMaxPrefix + 1, &at) != napi_ok || at == kMaxPrefix)) {
    moe_addon::make_error(env, MOE_E_DTYPE, "hash128's prefix must be a string shorter than 200 characters")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t digest[2];
  moe_hash128(data, length * kElementBytes[type], 0, digest);
  static constexpr char kHex[] = "0123456789abcdef";
  for (uint64_t word : digest)
    for (int shift = 60; shift >= 0; shift -= 4) key[at++] = kHex[(word >> shift) & 15];
  napi_value out;
  napi_create_string_latin1(env, key, at, &out);
  return Napi::Value(env, out);
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
