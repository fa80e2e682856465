// Module entry: the RouterWrap class and a few engine-wide queries.
#include <napi.h>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

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

// hash128(view: TypedArray, prefix = '', rows?) -> prefix followed by the 32 hex digits of
// moe_hash128 over the view's bytes: a cache key made in one call and one string. With `rows`, an
// array of `rows` such keys, one per equal row of the view (token mode's keys in one call). Keys are
// asked for on every cached route, so this uses one napi_get_typedarray_info call rather than
// Napi::TypedArray's several, and writes the hex digits itself.
Napi::Value Hash128(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto fail = [&](const char* message, moe_status code = MOE_E_DTYPE) {
    moe_addon::make_error(env, code, message).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  // Bytes per element of each napi_typedarray_type, Int8Array … BigUint64Array.
  static constexpr size_t kElementBytes[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8};
  if (info.Length() < 1 ||
      napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      static_cast<size_t>(type) >= sizeof kElementBytes / sizeof kElementBytes[0])
    return fail("hash128 needs a TypedArray");
  constexpr size_t kMaxPrefix = 200;
  char key[kMaxPrefix + 1 + 32];
  size_t prefix = 0;
  // The prefix is read NUL-terminated into key[0, kMaxPrefix + 1); one that fills it may be cut short.
  if (info.Length() > 1 && !info[1].IsUndefined() &&
      (napi_get_value_string_latin1(env, info[1], key, kMaxPrefix + 1, &prefix) != napi_ok || prefix == kMaxPrefix))
    return fail("hash128's prefix must be a string shorter than 200 characters");
  const auto key_of = [&](const char* bytes, size_t count) {
    uint64_t digest[2];
    moe_hash128(bytes, count, 0, digest);
    static constexpr char kHex[] = "0123456789abcdef";
    size_t at = prefix;
    for (uint64_t word : digest)
      for (int shift = 60; shift >= 0; shift -= 4) key[at++] = kHex[(word >> shift) & 15];
    napi_value out;
    napi_create_string_latin1(env, key, at, &out);
    return out;
  };
  const char* bytes = static_cast<const char*>(data);
  const size_t element = kElementBytes[type];
  if (info.Length() < 3 || info[2].IsUndefined()) return Napi::Value(env, key_of(bytes, length * element));
  const double rows = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
  if (!(rows >= 0 && rows <= 4294967295.0) || rows != static_cast<double>(static_cast<uint32_t>(rows)) ||
      (rows == 0 ? length != 0 : length % static_cast<uint32_t>(rows) != 0))
    return fail("hash128's rows must be a whole number that divides the view's length", MOE_E_SHAPE);
  const uint32_t n = static_cast<uint32_t>(rows);
  const size_t row_bytes = n == 0 ? 0 : length / n * element;
  Napi::Array keys = Napi::Array::New(env, n);
  for (uint32_t r = 0; r < n; ++r) napi_set_element(env, keys, r, key_of(bytes + r * row_bytes, row_bytes));
  return keys;
}

// backendCompiled(code: number) -> boolean: built into this binary, runnable here or not.
Napi::Value BackendCompiled(const Napi::CallbackInfo& info) {
  const int code = info[0].As<Napi::Number>().Int32Value();
  return Napi::Boolean::New(info.Env(), moe_backend_compiled(static_cast<moe_backend>(code)) != 0);
}

// Keeps this library loaded for the rest of the process. Node unloads an addon when the last
// environment that loaded it (a Worker) exits, and the engine's thread pool, whose threads run this
// library's code, lives as long as the process. (Windows would pin it with GetModuleHandleEx; no
// Windows build exists.)
void pin_library() {
#if defined(__unix__) || defined(__APPLE__)
  static const bool pinned = [] {
    Dl_info self{};
    return dladdr(reinterpret_cast<void*>(&pin_library), &self) != 0 && self.dli_fname != nullptr &&
           dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) != nullptr;
  }();
  (void)pinned;
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  pin_library();
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
