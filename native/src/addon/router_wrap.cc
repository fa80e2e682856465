#include "router_wrap.h"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <string>
#include <vector>

namespace moe_addon {

namespace {

const char* status_code(moe_status status) {
  switch (status) {
    case MOE_OK: return "OK";
    case MOE_E_SHAPE: return "E_SHAPE";
    case MOE_E_DTYPE: return "E_DTYPE";
    case MOE_E_NONFINITE: return "E_NONFINITE";
    case MOE_E_CONFIG: return "E_CONFIG";
    case MOE_E_BACKEND: return "E_BACKEND";
    case MOE_E_CUDA: return "E_CUDA";
    case MOE_E_DISPOSED: return "E_DISPOSED";
    case MOE_E_INTERNAL: return "E_INTERNAL";
  }
  return "E_INTERNAL";
}

// A typed array argument seen as raw memory.
struct View {
  void* data = nullptr;
  size_t length = 0;
};

// Reads argument `value` as a typed array of `type` with at least `min_length` elements.
// On a mismatch throws a JavaScript error and returns false. One napi_get_typedarray_info call
// answers all of it (type, length and the data pointer, byte offset applied): a route parses nine
// arrays, and the several calls per array of Napi::TypedArray's accessors were most of its binding cost.
bool typed_view(Napi::Env env, Napi::Value value, napi_typedarray_type type, size_t min_length,
                const char* name, View* out) {
  static const char* const kTypeNames[] = {"Int8Array",    "Uint8Array",   "Uint8ClampedArray",
                                           "Int16Array",   "Uint16Array",  "Int32Array",
                                           "Uint32Array",  "Float32Array", "Float64Array",
                                           "BigInt64Array", "BigUint64Array"};
  char message[256];
  napi_typedarray_type actual;
  size_t length = 0;
  void* data = nullptr;
  // A value that is not a typed array makes the call fail with napi_invalid_arg (nothing thrown).
  if (napi_get_typedarray_info(env, value, &actual, &length, &data, nullptr, nullptr) != napi_ok ||
      actual != type) {
    std::snprintf(message, sizeof message, "%s must be a %s", name, kTypeNames[type]);
    make_error(env, MOE_E_DTYPE, message).ThrowAsJavaScriptException();
    return false;
  }
  if (length < min_length) {
    std::snprintf(message, sizeof message, "%s must have at least %zu elements (got %zu)", name,
                  min_length, length);
    make_error(env, MOE_E_SHAPE, message).ThrowAsJavaScriptException();
    return false;
  }
  out->data = data;
  out->length = length;
  return true;
}

// Same, but null/undefined gives an empty view.
bool optional_view(Napi::Env env, Napi::Value value, napi_typedarray_type type, size_t min_length,
                   const char* name, View* out) {
  if (value.IsNull() || value.IsUndefined()) return true;
  return typed_view(env, value, type, min_length, name, out);
}

// A boolean argument, read without coercion: ToBoolean is a JavaScript operation, which fails in an
// environment that is being torn down (a Worker terminated while it routes), and the empty value it
// then returns is fatal to read (node-addon-api's Error::New of a null env aborts the process).
bool flag(Napi::Value value) { return value.IsBoolean() && value.As<Napi::Boolean>().Value(); }

// The number argument `value` (`name` in the message), or false after throwing E_DTYPE. The
// TypeScript layer passes numbers, but reading a value of another type would leave an exception
// pending, and the next throw (a call's own error) would abort the process.
bool number_arg(Napi::Env env, Napi::Value value, const char* name, double* out) {
  if (!value.IsNumber()) {
    const std::string message = std::string(name) + " must be a number";
    make_error(env, MOE_E_DTYPE, message.c_str()).ThrowAsJavaScriptException();
    return false;
  }
  *out = value.As<Napi::Number>().DoubleValue();
  return true;
}

// The dtype code argument (moe_dtype), or false after throwing E_DTYPE.
bool dtype_arg(Napi::Env env, Napi::Value value, moe_dtype* out) {
  double code = -1;
  if (!number_arg(env, value, "dtype", &code)) return false;
  if (code != MOE_DTYPE_F32 && code != MOE_DTYPE_F16 && code != MOE_DTYPE_BF16) {
    make_error(env, MOE_E_DTYPE, "dtype must be 0 (f32), 1 (f16) or 2 (bf16)").ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<moe_dtype>(code);
  return true;
}

double number_field(Napi::Object object, const char* name, double fallback) {
  Napi::Value v = object.Get(name);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
}

moe_router_options read_options(Napi::Object o) {
  moe_router_options opt = moe_router_options_default();
  const auto i32 = [&](const char* name, int32_t fallback) {
    return static_cast<int32_t>(number_field(o, name, fallback));
  };
  opt.input_dim = i32("inputDim", 0);
  opt.num_experts = i32("numExperts", 0);
  opt.top_k = i32("topK", 0);
  opt.min_experts = i32("minExperts", opt.min_experts);
  opt.strategy = static_cast<moe_strategy>(i32("strategy", opt.strategy));
  opt.top_p = number_field(o, "topP", opt.top_p);
  opt.threshold = number_field(o, "threshold", opt.threshold);
  opt.scoring = static_cast<moe_scoring>(i32("scoring", opt.scoring));
  opt.order = static_cast<moe_order>(i32("order", opt.order));
  opt.normalize = i32("normalize", opt.normalize);
  opt.scale = number_field(o, "scale", opt.scale);
  opt.group_count = i32("groupCount", 0);
  opt.group_select = i32("groupSelect", 0);
  opt.bias_update_rate = number_field(o, "biasUpdateRate", 0);
  opt.capacity_factor = number_field(o, "capacityFactor", 0);
  opt.min_capacity = i32("minCapacity", opt.min_capacity);
  opt.drop_policy = static_cast<moe_drop_policy>(i32("dropPolicy", opt.drop_policy));
  opt.noise_std = number_field(o, "noiseStd", 0);
  opt.noise_seed = static_cast<uint64_t>(number_field(o, "noiseSeed", 0));
  opt.dispatch = i32("dispatch", 0);
  opt.block_size = i32("blockSize", 1);
  opt.losses = i32("losses", 0);
  opt.validation = static_cast<moe_validation>(i32("validation", opt.validation));
  opt.backend = static_cast<moe_backend>(i32("backend", opt.backend));
  opt.device = static_cast<moe_device>(i32("device", opt.device));
  opt.threads = i32("threads", 0);
  opt.exact_f32 = i32("exactF32", 0);
  return opt;
}

// Where each output of a route lies in the one ArrayBuffer that receives them all (outputLayout()
// hands it to JavaScript, which makes its views once per pooled buffer). One buffer instead of eight
// typed arrays: the binding's cost is per argument, and a small route is mostly binding. Every region
// starts on a 64-byte boundary; the dispatch regions exist only for routers with dispatch on.
struct OutputLayout {
  enum Region { kScalars, kExperts, kWeights, kPerToken, kCounts, kInvalid, kOffsets, kSlots, kRegions };
  size_t offset[kRegions] = {};
  size_t slot_capacity = 0;
  size_t bytes = 0;
  bool dispatch = false;
};

constexpr size_t kScalarCount = 8;  // what write_scalars writes, as doubles, at offset 0

OutputLayout output_layout(moe_router* router, const moe_router_options& options, size_t tokens) {
  OutputLayout l;
  l.dispatch = options.dispatch != 0;
  l.slot_capacity = l.dispatch ? static_cast<size_t>(moe_router_dispatch_capacity(router, static_cast<int64_t>(tokens))) : 0;
  const size_t K = options.top_k, E = options.num_experts, word = sizeof(int32_t);
  const size_t size[OutputLayout::kRegions] = {kScalarCount * sizeof(double),
                                               tokens * K * word,
                                               tokens * K * sizeof(float),
                                               tokens * word,
                                               E * word,
                                               tokens * word,
                                               l.dispatch ? (E + 1) * word : 0,
                                               l.slot_capacity * word};
  size_t at = 0;
  for (int r = 0; r < OutputLayout::kRegions; ++r) {
    l.offset[r] = at;
    at += (size[r] + 63) / 64 * 64;
  }
  l.bytes = at;
  return l;
}

// Everything one route call needs, gathered on the JavaScript thread.
struct RouteCall {
  const void* input = nullptr;
  DeviceHandle device_input;  // set instead of input for rows on the device
  moe_dtype dtype = MOE_DTYPE_F32;
  int64_t tokens = 0;
  bool is_logits = false;
  moe_route_outputs outputs{};
  double* scalars = nullptr;  // kScalarCount doubles receiving the scalar results
};

// Parses the route arguments of Route/RouteAsync; false after throwing.
bool parse_route(const Napi::CallbackInfo& info, moe_router* router, RouteCall* call) {
  Napi::Env env = info.Env();
  if (info.Length() < 5) {
    make_error(env, MOE_E_SHAPE, "route expects 5 arguments").ThrowAsJavaScriptException();
    return false;
  }
  moe_router_options options;
  moe_router_get_options(router, &options);
  double tokens = 0;
  if (!dtype_arg(env, info[1], &call->dtype) || !number_arg(env, info[2], "tokens", &tokens)) return false;
  call->tokens = static_cast<int64_t>(tokens);
  call->is_logits = flag(info[3]);
  if (call->tokens < 0) {
    make_error(env, MOE_E_SHAPE, "tokens must be >= 0").ThrowAsJavaScriptException();
    return false;
  }
  const size_t T = static_cast<size_t>(call->tokens);
  const size_t row = call->is_logits ? options.num_experts : static_cast<size_t>(options.input_dim);
  const napi_typedarray_type input_type =
      call->dtype == MOE_DTYPE_F32 ? napi_float32_array : napi_uint16_array;
  // Host rows are the common case: the device-buffer test (an instanceof) only for other values.
  View input;
  if (!info[0].IsTypedArray()) call->device_input = DeviceWrap::Of(env, info[0]);
  if (!call->device_input &&
      !typed_view(env, info[0], input_type, T * row, call->is_logits ? "logits" : "hidden", &input))
    return false;
  const OutputLayout layout = output_layout(router, options, T);
  void* data = nullptr;
  size_t bytes = 0;
  // Fails with napi_invalid_arg, nothing thrown, for a value that is not an ArrayBuffer.
  if (napi_get_arraybuffer_info(env, info[4], &data, &bytes) != napi_ok) {
    make_error(env, MOE_E_DTYPE, "outputs must be an ArrayBuffer").ThrowAsJavaScriptException();
    return false;
  }
  if (bytes < layout.bytes || reinterpret_cast<uintptr_t>(data) % alignof(double) != 0) {
    char message[160];
    std::snprintf(message, sizeof message, "outputs must be an aligned ArrayBuffer of at least %zu bytes (got %zu)",
                  layout.bytes, bytes);
    make_error(env, MOE_E_SHAPE, message).ThrowAsJavaScriptException();
    return false;
  }
  char* base = static_cast<char*>(data);
  const auto region = [&](OutputLayout::Region r) { return reinterpret_cast<int32_t*>(base + layout.offset[r]); };
  call->input = input.data;
  moe_route_outputs& out = call->outputs;
  out.experts = region(OutputLayout::kExperts);
  out.weights = reinterpret_cast<float*>(region(OutputLayout::kWeights));
  out.experts_per_token = region(OutputLayout::kPerToken);
  out.expert_counts = region(OutputLayout::kCounts);
  out.invalid_tokens = region(OutputLayout::kInvalid);
  out.dispatch_offsets = layout.dispatch ? region(OutputLayout::kOffsets) : nullptr;
  out.dispatch_slots = layout.dispatch ? region(OutputLayout::kSlots) : nullptr;
  out.dispatch_capacity = static_cast<int64_t>(layout.slot_capacity);
  call->scalars = reinterpret_cast<double*>(base + layout.offset[OutputLayout::kScalars]);
  return true;
}

moe_status run_route(moe_router* router, RouteCall* call, moe_error* err) {
  if (call->device_input)
    return moe_router_route_device(router, call->device_input.get(), call->dtype, call->tokens,
                                   call->is_logits ? 1 : 0, &call->outputs, err);
  return call->is_logits
             ? moe_router_route_logits(router, call->input, call->dtype, call->tokens, &call->outputs, err)
             : moe_router_route(router, call->input, call->dtype, call->tokens, &call->outputs, err);
}

void write_scalars(const RouteCall& call) {
  const moe_route_outputs& o = call.outputs;
  double* s = call.scalars;
  s[0] = static_cast<double>(o.dispatch_length);
  s[1] = o.invalid_count;
  s[2] = static_cast<double>(o.dropped_assignments);
  s[3] = o.aux_loss;
  s[4] = o.z_loss;
  s[5] = o.entropy;
  s[6] = o.flop_reduction;
  s[7] = o.backend;
}

// Runs one route on a libuv worker; holds references to every array it touches until it settles
// the promise of `deferred`. (Settling fails only in an environment being torn down, where nothing
// waits for it.)
class RouteWorker : public Napi::AsyncWorker {
 public:
  RouteWorker(Napi::Env env, RouterHandle router, std::shared_ptr<MemoryReport> memory, const RouteCall& call,
              const Napi::CallbackInfo& info, napi_deferred deferred)
      : Napi::AsyncWorker(env, "moe-router:route"),
        router_(std::move(router)),
        memory_(std::move(memory)),
        call_(call),
        deferred_(deferred) {
    for (size_t i = 0; i < 5; ++i)
      if (info[i].IsObject()) keep_.push_back(Napi::Persistent(info[i].As<Napi::Object>()));
  }

  void Execute() override { status_ = run_route(router_.get(), &call_, &error_); }

  void OnOK() override {
    memory_->update(Env(), router_.get());
    if (status_ != MOE_OK) {
      napi_reject_deferred(Env(), deferred_, make_error(Env(), status_, error_.message).Value());
      return;
    }
    write_scalars(call_);
    napi_resolve_deferred(Env(), deferred_, Env().Undefined());
  }

  void OnError(const Napi::Error& e) override { napi_reject_deferred(Env(), deferred_, e.Value()); }

 private:
  RouterHandle router_;
  std::shared_ptr<MemoryReport> memory_;
  RouteCall call_;
  napi_deferred deferred_;
  std::vector<Napi::ObjectReference> keep_;
  moe_status status_ = MOE_OK;
  moe_error error_{};
};

}  // namespace

void MemoryReport::update(napi_env env, const moe_router* router) {
  if (closed_) return;
  const int64_t now = moe_router_host_bytes(router);
  int64_t total = 0;
  if (now != reported_ && napi_adjust_external_memory(env, now - reported_, &total) == napi_ok) reported_ = now;
}

void MemoryReport::close(napi_env env) {
  int64_t total = 0;
  if (!closed_ && reported_ != 0) napi_adjust_external_memory(env, -reported_, &total);
  reported_ = 0;
  closed_ = true;
}

// The addon's per-environment state: the NativeDeviceBuffer class, to recognize its instances.
struct AddonData {
  Napi::FunctionReference device_buffer;
};

Napi::Function DeviceWrap::Define(Napi::Env env) {
  Napi::Function constructor = DefineClass(env, "NativeDeviceBuffer",
                                           {InstanceMethod<&DeviceWrap::Upload>("upload"),
                                            InstanceAccessor<&DeviceWrap::Size>("size"),
                                            InstanceMethod<&DeviceWrap::Free>("free")});
  auto* data = new AddonData{Napi::Persistent(constructor)};
  env.SetInstanceData<AddonData>(data);
  return constructor;
}

DeviceWrap::DeviceWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    make_error(env, MOE_E_SHAPE, "NativeDeviceBuffer(bytes)").ThrowAsJavaScriptException();
    return;
  }
  moe_device_buffer* buffer = nullptr;
  moe_error err{};
  if (moe_device_buffer_create(info[0].As<Napi::Number>().Int64Value(), &buffer, &err) != MOE_OK) {
    make_error(env, err.code, err.message).ThrowAsJavaScriptException();
    return;
  }
  buffer_ = DeviceHandle(buffer, moe_device_buffer_free);
}

DeviceHandle DeviceWrap::Of(Napi::Env env, Napi::Value value) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (!data || !value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->device_buffer.Value()))
    return nullptr;
  return Unwrap(value.As<Napi::Object>())->buffer_;
}

Napi::Value DeviceWrap::Upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!buffer_) {
    make_error(env, MOE_E_DISPOSED, "device buffer was freed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    make_error(env, MOE_E_DTYPE, "upload(data) needs a typed array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::TypedArray array = info[0].As<Napi::TypedArray>();
  const void* src = static_cast<const char*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  moe_error err{};
  if (moe_device_buffer_upload(buffer_.get(), 0, src, static_cast<int64_t>(array.ByteLength()), &err) != MOE_OK)
    make_error(env, err.code, err.message).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value DeviceWrap::Size(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(moe_device_buffer_size(buffer_.get())));
}

Napi::Value DeviceWrap::Free(const Napi::CallbackInfo& info) {
  buffer_.reset();
  return info.Env().Undefined();
}

Napi::Error make_error(Napi::Env env, moe_status code, const char* message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, status_code(code)));
  return error;
}

Napi::Function RouterWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeRouter",
                     {InstanceMethod<&RouterWrap::Route>("route"),
                      InstanceMethod<&RouterWrap::RouteAsync>("routeAsync"),
                      InstanceMethod<&RouterWrap::Calibrate>("calibrate"),
                      InstanceMethod<&RouterWrap::UpdateBias>("updateBias"),
                      InstanceMethod<&RouterWrap::SelectionBias>("selectionBias"),
                      InstanceMethod<&RouterWrap::GetStep>("getStep"),
                      InstanceMethod<&RouterWrap::SetStep>("setStep"),
                      InstanceMethod<&RouterWrap::Stats>("stats"),
                      InstanceMethod<&RouterWrap::ResetStats>("resetStats"),
                      InstanceMethod<&RouterWrap::Backend>("backend"),
                      InstanceMethod<&RouterWrap::HostBytes>("hostBytes"),
                      InstanceMethod<&RouterWrap::LastFallback>("lastFallback"),
                      InstanceMethod<&RouterWrap::Parameters>("parameters"),
                      InstanceMethod<&RouterWrap::OutputLayoutOf>("outputLayout"),
                      InstanceMethod<&RouterWrap::Dispose>("dispose")});
}

// new NativeRouter(options, weight: Float32Array, bias: Float32Array | null, selectionBias | null)
RouterWrap::RouterWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RouterWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsObject()) {
    make_error(env, MOE_E_CONFIG, "NativeRouter(options, weight, bias, selectionBias)")
        .ThrowAsJavaScriptException();
    return;
  }
  const moe_router_options options = read_options(info[0].As<Napi::Object>());
  const size_t E = options.num_experts > 0 ? options.num_experts : 0;
  const size_t D = options.input_dim > 0 ? options.input_dim : 0;
  View weight, bias, selection_bias;
  if (!typed_view(env, info[1], napi_float32_array, E * D, "weight", &weight) ||
      !optional_view(env, info[2], napi_float32_array, E, "bias", &bias) ||
      !optional_view(env, info[3], napi_float32_array, E, "selectionBias", &selection_bias))
    return;
  moe_router* router = nullptr;
  moe_error err{};
  if (moe_router_create(&options, static_cast<float*>(weight.data), static_cast<float*>(bias.data),
                        static_cast<float*>(selection_bias.data), &router, &err) != MOE_OK) {
    make_error(env, err.code, err.message).ThrowAsJavaScriptException();
    return;
  }
  router_ = RouterHandle(router, moe_router_destroy);
  memory_->update(env, router);
}

moe_router* RouterWrap::Live(Napi::Env env) {
  if (!router_) {
    make_error(env, MOE_E_DISPOSED, "router was disposed").ThrowAsJavaScriptException();
    return nullptr;
  }
  return router_.get();
}

Napi::Value RouterWrap::Route(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  RouteCall call;
  if (!router || !parse_route(info, router, &call)) return env.Undefined();
  moe_error err{};
  const moe_status status = run_route(router, &call, &err);
  memory_->update(env, router);  // (a failed call may have grown the scratch too)
  if (status != MOE_OK) {
    make_error(env, err.code, err.message).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  write_scalars(call);
  return env.Undefined();
}

Napi::Value RouterWrap::RouteAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  RouteCall call;
  if (!router || !parse_route(info, router, &call)) return env.Undefined();
  // The promise by hand: node-addon-api's Promise::Deferred leaves its handles unset when creating
  // it fails, as it does in an environment being torn down (a Worker terminated while it routes),
  // and returning that garbage crashed the process. Then nothing is queued.
  napi_deferred deferred = nullptr;
  napi_value promise = nullptr;
  if (napi_create_promise(env, &deferred, &promise) != napi_ok) return env.Undefined();
  (new RouteWorker(env, router_, memory_, call, info, deferred))->Queue();
  return Napi::Value(env, promise);
}

Napi::Value RouterWrap::Calibrate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  if (!router) return env.Undefined();
  moe_router_options options;
  moe_router_get_options(router, &options);
  moe_dtype dtype = MOE_DTYPE_F32;
  double rows = 0, target = 0;
  if (!dtype_arg(env, info[1], &dtype) || !number_arg(env, info[2], "tokens", &rows) ||
      !number_arg(env, info[4], "meanExperts", &target))
    return env.Undefined();
  const int64_t tokens = static_cast<int64_t>(rows);
  const bool is_logits = flag(info[3]);
  const size_t row = is_logits ? options.num_experts : options.input_dim;
  View sample;
  if (tokens < 0 ||
      !typed_view(env, info[0], dtype == MOE_DTYPE_F32 ? napi_float32_array : napi_uint16_array,
                  static_cast<size_t>(tokens) * row, "sample", &sample))
    return env.Undefined();
  double parameter = 0, reached = 0;
  moe_error err{};
  const moe_status status = moe_router_calibrate(router, sample.data, dtype, tokens, is_logits ? 1 : 0, target,
                                                 &parameter, &reached, &err);
  memory_->update(env, router);
  if (status != MOE_OK) {
    make_error(env, err.code, err.message).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, parameter);
  result.Set(1u, reached);
  return result;
}

Napi::Value RouterWrap::UpdateBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  if (!router) return env.Undefined();
  moe_router_options options;
  moe_router_get_options(router, &options);
  View counts;
  if (!typed_view(env, info[0], napi_int32_array, options.num_experts, "counts", &counts))
    return env.Undefined();
  moe_error err{};
  if (moe_router_update_bias(router, static_cast<int32_t*>(counts.data), &err) != MOE_OK)
    make_error(env, err.code, err.message).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value RouterWrap::SelectionBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  if (!router) return env.Undefined();
  moe_router_options options;
  moe_router_get_options(router, &options);
  View out;
  if (typed_view(env, info[0], napi_float32_array, options.num_experts, "out", &out))
    moe_router_get_selection_bias(router, static_cast<float*>(out.data));
  return env.Undefined();
}

Napi::Value RouterWrap::GetStep(const Napi::CallbackInfo& info) {
  moe_router* router = Live(info.Env());
  if (!router) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), static_cast<double>(moe_router_get_step(router)));
}

Napi::Value RouterWrap::SetStep(const Napi::CallbackInfo& info) {
  moe_router* router = Live(info.Env());
  if (router) moe_router_set_step(router, static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue()));
  return info.Env().Undefined();
}

// stats(utilization: Float64Array(E), assignments: Float64Array(E), kHistogram: Float64Array(K+1))
//   -> [tokens, calls, assignments, dropped, mean, flopReduction, balance]
Napi::Value RouterWrap::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  if (!router) return env.Undefined();
  moe_router_options options;
  moe_router_get_options(router, &options);
  View utilization, assignments, histogram;
  if (!typed_view(env, info[0], napi_float64_array, options.num_experts, "utilization", &utilization) ||
      !typed_view(env, info[1], napi_float64_array, options.num_experts, "assignments", &assignments) ||
      !typed_view(env, info[2], napi_float64_array, options.top_k + 1, "kHistogram", &histogram))
    return env.Undefined();
  std::vector<int64_t> totals(options.num_experts), k_counts(options.top_k + 1);
  moe_router_stats stats{};
  moe_router_get_stats(router, &stats, static_cast<double*>(utilization.data), totals.data(),
                       k_counts.data());
  std::copy(totals.begin(), totals.end(), static_cast<double*>(assignments.data));
  std::copy(k_counts.begin(), k_counts.end(), static_cast<double*>(histogram.data));
  const double values[] = {static_cast<double>(stats.tokens), static_cast<double>(stats.calls),
                           static_cast<double>(stats.assignments),
                           static_cast<double>(stats.dropped_assignments), stats.mean_experts_per_token,
                           stats.flop_reduction, stats.load_balance_score};
  Napi::Array result = Napi::Array::New(env, 7);
  for (uint32_t i = 0; i < 7; ++i) result.Set(i, values[i]);
  return result;
}

Napi::Value RouterWrap::ResetStats(const Napi::CallbackInfo& info) {
  moe_router* router = Live(info.Env());
  if (router) moe_router_reset_stats(router);
  return info.Env().Undefined();
}

Napi::Value RouterWrap::Backend(const Napi::CallbackInfo& info) {
  moe_router* router = Live(info.Env());
  if (!router) return info.Env().Undefined();
  return Napi::String::New(info.Env(), moe_backend_name(moe_router_backend(router)));
}

Napi::Value RouterWrap::LastFallback(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  if (!router) return env.Undefined();
  moe_error reason{};
  if (!moe_router_last_fallback(router, &reason)) return env.Null();
  Napi::Object result = Napi::Object::New(env);
  result.Set("code", Napi::String::New(env, status_code(reason.code)));
  result.Set("message", Napi::String::New(env, reason.message));
  return result;
}

// parameters() -> [topP, threshold]: the values in force (calibrate changes them).
Napi::Value RouterWrap::Parameters(const Napi::CallbackInfo& info) {
  moe_router* router = Live(info.Env());
  if (!router) return info.Env().Undefined();
  moe_router_options options;
  moe_router_get_options(router, &options);
  Napi::Array result = Napi::Array::New(info.Env(), 2);
  result.Set(0u, options.top_p);
  result.Set(1u, options.threshold);
  return result;
}

// outputLayout(tokens) -> [bytes, scalars, experts, weights, expertsPerToken, expertCounts,
//   invalidTokens, dispatchOffsets, dispatchSlots, slotCapacity]: byte offsets (-1: no such region).
Napi::Value RouterWrap::OutputLayoutOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  moe_router* router = Live(env);
  if (!router) return env.Undefined();
  const int64_t tokens = info[0].As<Napi::Number>().Int64Value();
  if (tokens < 0) {
    make_error(env, MOE_E_SHAPE, "tokens must be >= 0").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  moe_router_options options;
  moe_router_get_options(router, &options);
  const OutputLayout layout = output_layout(router, options, static_cast<size_t>(tokens));
  Napi::Array result = Napi::Array::New(env, OutputLayout::kRegions + 2);
  result.Set(0u, static_cast<double>(layout.bytes));
  for (uint32_t r = 0; r < OutputLayout::kRegions; ++r) {
    const bool absent = !layout.dispatch && (r == OutputLayout::kOffsets || r == OutputLayout::kSlots);
    result.Set(r + 1, absent ? -1.0 : static_cast<double>(layout.offset[r]));
  }
  result.Set(static_cast<uint32_t>(OutputLayout::kRegions + 1), static_cast<double>(layout.slot_capacity));
  return result;
}

Napi::Value RouterWrap::HostBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), router_ ? static_cast<double>(moe_router_host_bytes(router_.get())) : 0.0);
}

Napi::Value RouterWrap::Dispose(const Napi::CallbackInfo& info) {
  router_.reset();  // a route still running on a worker keeps its own reference
  memory_->close(info.Env());
  return info.Env().Undefined();
}

void RouterWrap::Finalize(Napi::BasicEnv env) { memory_->close(env); }

}  // namespace moe_addon
