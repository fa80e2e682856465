// The C ABI (native/include/moe_router.h): argument checks, the router object, and the one place
// where engine exceptions become status codes.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "../cuda/cuda.h"
#include "assign.h"
#include "backend.h"
#include "config.h"
#include "failure.h"
#include "half.h"
#include "moe_router.h"
#include "scratch.h"

struct moe_device_buffer {
  void* data = nullptr;
  int64_t bytes = 0;
};

struct moe_router {
  moe::Config config;
  moe_backend backend_kind = MOE_BACKEND_SCALAR;  // chosen at creation
  moe_backend last_backend = MOE_BACKEND_SCALAR;  // ran the most recent call
  std::unique_ptr<moe::Backend> backend;
  std::vector<float> packed_weight, bias, selection_bias;

  // A CUDA router with device and backend 'auto' reruns a call whose CUDA work failed on the CPU,
  // through a CPU backend made at the first failure.
  bool may_fall_back = false;
  bool fell_back = false;  // the most recent call (or the creation) did
  std::string fallback_reason;
  moe_backend fallback_kind = MOE_BACKEND_SCALAR;
  std::unique_ptr<moe::Backend> fallback;
  std::vector<float> fallback_weight;
  std::vector<unsigned char> host_input;  // a device input read back for a CPU backend
  bool has_bias = false;
  uint64_t step = 0;
  bool norm_calibrated = false;
  moe::KParams k_params;

  int64_t tokens = 0, calls = 0, assignments = 0, dropped = 0;
  std::vector<int64_t> expert_total;
  std::vector<int64_t> k_histogram;  // [K+1]

  moe::Workspace workspace;
  std::vector<float> bias_snapshot;  // the selection bias a running call uses
  moe::KParams k_snapshot;           // the strategy parameters a running fused call uses

  // The host memory held (moe_router_host_bytes), measured when a call releases compute_mutex.
  std::atomic<int64_t> host_bytes{0};

  // compute_mutex serializes route and calibrate (they share the workspace) and is held for a whole
  // call. state_mutex guards the small mutable state above (step, parameters, selection bias,
  // statistics) and is only held for copies, so getters never wait for a long route.
  mutable std::mutex compute_mutex;
  mutable std::mutex state_mutex;
};

namespace {

using moe::fail;

// Runs body, turning any exception into a status and a message.
template <typename Body>
moe_status guarded(moe_error* err, Body&& body) {
  moe_status code = MOE_OK;
  const char* message = "";
  std::string owned;
  try {
    body();
  } catch (const moe::Failure& f) {
    code = f.code();
    owned = f.what();
    message = owned.c_str();
  } catch (const std::bad_alloc&) {
    code = MOE_E_INTERNAL;
    message = "out of memory";
  } catch (const std::exception& e) {
    code = MOE_E_INTERNAL;
    owned = std::string("internal error: ") + e.what();
    message = owned.c_str();
  } catch (...) {
    code = MOE_E_INTERNAL;
    message = "internal error";
  }
  if (err) {
    err->code = code;
    // Not snprintf on success: a formatted copy of "" was a measurable part of a small route.
    if (code == MOE_OK)
      err->message[0] = '\0';
    else
      std::snprintf(err->message, sizeof err->message, "%s", message);
  }
  return code;
}

void check_range(const moe_device_buffer* buffer, int64_t offset, const void* host, int64_t bytes) {
  if (!buffer) fail(MOE_E_DISPOSED, "device buffer is NULL (freed or never created)");
  if (bytes > 0 && !host) fail(MOE_E_SHAPE, "host pointer is NULL");
  if (offset < 0 || bytes < 0 || offset > buffer->bytes || bytes > buffer->bytes - offset)
    fail(MOE_E_SHAPE, "bytes [%lld, %lld) are outside the device buffer of %lld bytes",
         static_cast<long long>(offset), static_cast<long long>(offset + bytes),
         static_cast<long long>(buffer->bytes));
}

void check_router(const moe_router* router) {
  if (!router) fail(MOE_E_DISPOSED, "router is NULL (destroyed or never created)");
}

void check_input(const void* data, moe_dtype dtype, int64_t tokens, const char* name) {
  if (dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_F16 && dtype != MOE_DTYPE_BF16)
    fail(MOE_E_DTYPE, "%s dtype must be f32, f16 or bf16 (got code %d)", name, static_cast<int>(dtype));
  if (tokens < 0 || tokens > (int64_t{1} << 31) / 1024)
    fail(MOE_E_SHAPE, "%s must have between 0 and 2097152 rows (got %lld)", name,
         static_cast<long long>(tokens));
  if (tokens > 0 && !data) fail(MOE_E_SHAPE, "%s is NULL", name);
}

void check_outputs(const moe_router* r, int64_t tokens, const moe_route_outputs* out) {
  if (!out) fail(MOE_E_SHAPE, "outputs is NULL");
  if (tokens > 0 && (!out->experts || !out->weights || !out->experts_per_token))
    fail(MOE_E_SHAPE, "outputs.experts, outputs.weights and outputs.experts_per_token are required");
  if (!out->expert_counts) fail(MOE_E_SHAPE, "outputs.expert_counts is required");
  if (r->config.options.dispatch) {
    if (!out->dispatch_offsets) fail(MOE_E_SHAPE, "outputs.dispatch_offsets is required (dispatch is on)");
    const int64_t need = moe_router_dispatch_capacity(r, tokens);
    if (need > 0 && (!out->dispatch_slots || out->dispatch_capacity < need))
      fail(MOE_E_SHAPE, "outputs.dispatch_slots must hold %lld entries (got %lld)",
           static_cast<long long>(need), static_cast<long long>(out->dispatch_capacity));
  }
}

// The host memory a router holds: itself, its weights and statistics, and the scratch its backends and
// workspace grew to.
int64_t measure_host_bytes(const moe_router* r) {
  int64_t bytes = static_cast<int64_t>(sizeof(moe_router)) +
                  moe::capacity_bytes(r->packed_weight, r->bias, r->selection_bias, r->fallback_weight,
                                      r->host_input, r->expert_total, r->k_histogram, r->bias_snapshot) +
                  r->workspace.host_bytes() + r->backend->host_bytes();
  if (r->fallback) bytes += r->fallback->host_bytes();
  return bytes;
}

// Holds compute_mutex for a call and, when the call ends (returning or failing), records the memory
// the router holds then: a call is where its scratch grows.
class ComputeCall {
 public:
  explicit ComputeCall(moe_router* r) : r_(r), lock_(r->compute_mutex) {}
  ~ComputeCall() { r_->host_bytes.store(measure_host_bytes(r_), std::memory_order_relaxed); }
  ComputeCall(const ComputeCall&) = delete;
  ComputeCall& operator=(const ComputeCall&) = delete;

 private:
  moe_router* r_;
  std::lock_guard<std::mutex> lock_;
};

// The token stage of one call, with what this router's strategy and options need. Takes a snapshot
// of the mutable state; call with compute_mutex held. With `out`, the backend may fuse the
// assignment of each token into the stage (backend.h).
moe::StageParams stage_params(moe_router* r, const void* input, moe_dtype dtype, int64_t tokens,
                              bool is_logits, moe_route_outputs* out) {
  const moe::Config& c = r->config;
  bool norm_calibrated;
  {
    std::lock_guard<std::mutex> lock(r->state_mutex);
    r->bias_snapshot = r->selection_bias;
    r->k_snapshot = r->k_params;
    norm_calibrated = r->norm_calibrated;
  }
  moe::StageParams p;
  p.config = &c;
  p.packed_weight = r->packed_weight.data();
  p.bias = r->has_bias ? r->bias.data() : nullptr;
  p.selection_bias = r->bias_snapshot.data();
  p.input = input;
  p.dtype = dtype;
  p.tokens = tokens;
  p.is_logits = is_logits;
  p.noise = c.options.noise_std > 0;
  p.step = moe_router_get_step(r);
  p.want_norm = c.options.strategy == MOE_STRATEGY_NORM;
  p.want_top_scores = c.options.strategy == MOE_STRATEGY_THRESHOLD;
  p.want_score_entropy = c.options.strategy == MOE_STRATEGY_ENTROPY;
  p.want_losses = c.options.losses != 0;
  p.want_full = c.expert_choice;
  p.scores_are_keys = p.want_full && c.options.order == MOE_ORDER_SOFTMAX_THEN_SELECT &&
                     std::all_of(r->bias_snapshot.begin(), r->bias_snapshot.end(), [](float b) { return b == 0.0f; });
  p.norm_from_batch = c.options.strategy == MOE_STRATEGY_NORM && !norm_calibrated;
  // Capacity by position drops from the fused slots (assign); by score it needs every slot's s.
  const bool fusable_capacity = !c.capacity || c.options.drop_policy == MOE_DROP_POSITION;
  if (out && r->backend->fuses_assignment() && !c.expert_choice && fusable_capacity) {
    p.k_params = &r->k_snapshot;
    p.fused_out = out;
  }
  return p;
}

// `name` is the argument's (hidden, logits, sample).
void reject_invalid(const moe_router* r, const moe::TokenStage& st, int64_t tokens, const char* name) {
  if (r->config.options.validation != MOE_VALIDATION_REJECT || tokens == 0) return;
  const void* bad = std::memchr(st.invalid, 1, static_cast<size_t>(tokens));
  if (bad)
    fail(MOE_E_NONFINITE,
         "%s row %lld gives a non-finite gate logit (NaN or infinity in the input, or overflow); "
         "validation 'sanitize' routes such tokens and lists them in invalidTokens",
         name, static_cast<long long>(static_cast<const uint8_t*>(bad) - st.invalid));
}

// The strategy parameters in force; for the norm strategy, the batch's own statistics until calibrate.
moe::KParams k_params_for(const moe_router* r, const moe::TokenStage& st, int64_t tokens) {
  moe::KParams k;
  bool calibrated;
  {
    std::lock_guard<std::mutex> lock(r->state_mutex);
    k = r->k_params;
    calibrated = r->norm_calibrated;
  }
  if (r->config.options.strategy == MOE_STRATEGY_NORM && !calibrated)
    moe::norm_statistics(st.norm, tokens, &k.norm_mean, &k.norm_std);
  return k;
}

// Call with state_mutex held.
void bias_update(moe_router* r, const int64_t* counts) {
  const moe::Config& c = r->config;
  double mean = 0;
  for (int e = 0; e < c.E; ++e) mean += static_cast<double>(counts[e]);
  mean /= c.E;
  const float rate = static_cast<float>(c.options.bias_update_rate);
  for (int e = 0; e < c.E; ++e) {
    const double gap = mean - static_cast<double>(counts[e]);
    r->selection_bias[e] += gap > 0 ? rate : (gap < 0 ? -rate : 0.0f);
  }
}

// The CPU backend a CUDA router falls back to, made (and its weight packed) on first use.
moe::Backend& fallback_backend(moe_router* r) {
  if (!r->fallback) {
    r->fallback_kind = moe::resolve_backend(MOE_BACKEND_AUTO, MOE_DEVICE_CPU);
    auto backend = moe::make_backend(r->fallback_kind, r->config.options.threads);
    r->fallback_weight = backend->pack_weight(r->packed_weight.data(), r->config.E, r->config.D);
    r->fallback = std::move(backend);
  }
  return *r->fallback;
}

// The input of p where a CPU backend can read it: a device input is copied back to the host.
moe::StageParams on_host(moe_router* r, moe::StageParams p) {
  if (!p.input_on_device) return p;
  const int64_t row = p.is_logits ? r->config.E : r->config.D;
  r->host_input.resize(static_cast<size_t>(p.tokens * row) * moe::dtype_size(p.dtype));
  moe::cuda_copy_to_host(r->host_input.data(), p.input, static_cast<int64_t>(r->host_input.size()));
  p.input = r->host_input.data();
  p.input_on_device = false;
  return p;
}

// Runs work(backend, its packed weight, p) on the router's backend. When the CUDA work of a router that
// may fall back fails, reruns it on the CPU and records why. Returns the backend that ran it.
template <typename Work>
moe_backend with_fallback(moe_router* r, const moe::StageParams& p, Work&& work) {
  // What router.backend and lastFallback report; written under state_mutex so getters never wait.
  const auto record = [r](moe_backend kind, bool fell_back, const char* reason) {
    std::lock_guard<std::mutex> lock(r->state_mutex);
    r->last_backend = kind;
    r->fell_back = fell_back;
    if (reason) r->fallback_reason = reason;
  };
  if (r->backend_kind != MOE_BACKEND_CUDA) {
    work(*r->backend, r->packed_weight, on_host(r, p));
    record(r->backend_kind, false, nullptr);
    return r->backend_kind;
  }
  std::string reason;
  try {
    work(*r->backend, r->packed_weight, p);
    record(MOE_BACKEND_CUDA, false, nullptr);
    return MOE_BACKEND_CUDA;
  } catch (const moe::Failure& f) {
    if (f.code() != MOE_E_CUDA || !r->may_fall_back) throw;
    reason = f.what();
  }
  moe::Backend& cpu = fallback_backend(r);
  work(cpu, r->fallback_weight, on_host(r, p));
  record(r->fallback_kind, true, reason.c_str());
  return r->fallback_kind;
}

// Whether the norm strategy takes its statistics from the batch (not calibrated yet).
bool norm_from_batch(const moe_router* r) {
  std::lock_guard<std::mutex> lock(r->state_mutex);
  return r->config.options.strategy == MOE_STRATEGY_NORM && !r->norm_calibrated;
}

// One route on one backend: both stages on the backend when it can (CUDA), else its token stage and
// the shared assignment stage (which a SIMD backend may have fused into its token stage).
void route_on(moe_router* r, moe::Backend& backend, const std::vector<float>& weight, moe::StageParams p,
              moe_route_outputs* out) {
  p.packed_weight = weight.data();
  const moe::TokenStage& st = r->workspace.prepare(r->config, p);
  if (p.tokens > 0 && backend.run_route(p, r->k_snapshot, norm_from_batch(r), r->workspace)) {
    reject_invalid(r, st, p.tokens, p.is_logits ? "logits" : "hidden");
    backend.write_route(out);  // from here on nothing fails
    for (int64_t t = 0; t < p.tokens; ++t) ++r->workspace.k_histogram[out->experts_per_token[t]];
    return;
  }
  if (p.tokens > 0) backend.token_stage(p, st);
  reject_invalid(r, st, p.tokens, p.is_logits ? "logits" : "hidden");
  // From here on nothing fails: the outputs are written.
  moe::assign(r->config, p, k_params_for(r, st, p.tokens), r->workspace, out);
}

// A route call after its arguments were checked (inside guarded).
void route_checked(moe_router* r, const void* input, bool on_device, moe_dtype dtype, int64_t tokens,
                   bool is_logits, moe_route_outputs* out) {
  check_outputs(r, tokens, out);
  ComputeCall call(r);
  moe::StageParams p = stage_params(r, input, dtype, tokens, is_logits, out);
  p.input_on_device = on_device;
  out->backend = with_fallback(r, p, [&](moe::Backend& backend, const std::vector<float>& weight, const moe::StageParams& q) {
    route_on(r, backend, weight, q, out);
  });

  const moe::Config& c = r->config;
  std::lock_guard<std::mutex> state(r->state_mutex);
  ++r->calls;
  r->tokens += tokens;
  const std::vector<int64_t>& histogram = r->workspace.k_histogram;
  for (int k = 0; k <= c.K; ++k) {
    r->assignments += k * histogram[k];
    r->k_histogram[k] += histogram[k];
  }
  r->dropped += out->dropped_assignments;
  for (int e = 0; e < c.E; ++e) r->expert_total[e] += out->expert_counts[e];
  if (c.options.bias_update_rate > 0) bias_update(r, r->workspace.counts_before.data());
  ++r->step;
}

moe_status route(moe_router* r, const void* input, moe_dtype dtype, int64_t tokens, bool is_logits,
                 moe_route_outputs* out, moe_error* err) {
  return guarded(err, [&] {
    check_router(r);
    check_input(input, dtype, tokens, is_logits ? "logits" : "hidden");
    route_checked(r, input, false, dtype, tokens, is_logits, out);
  });
}

// The backend a new router runs on: the resolved one, except that a configuration the CUDA kernels do
// not cover, or a CUDA device that cannot be set up, sends an 'auto' router to the CPU.
void choose_backend(moe_router* r) {
  const moe_router_options& o = r->config.options;
  const bool automatic = o.backend == MOE_BACKEND_AUTO && o.device == MOE_DEVICE_AUTO;
  moe_backend kind = moe::resolve_backend(o.backend, o.device);
  std::string why;
  if (kind == MOE_BACKEND_CUDA && !moe::cuda_supports(r->config, &why)) {
    if (!automatic) fail(MOE_E_CONFIG, "device 'cuda': %s; use device 'auto' or 'cpu'", why.c_str());
    kind = moe::resolve_backend(MOE_BACKEND_AUTO, MOE_DEVICE_CPU);
  }
  r->may_fall_back = automatic && kind == MOE_BACKEND_CUDA;
  try {
    r->backend = moe::make_backend(kind, o.threads);
  } catch (const moe::Failure& f) {
    if (f.code() != MOE_E_CUDA || !r->may_fall_back) throw;
    r->fell_back = true;
    r->fallback_reason = f.what();
    r->may_fall_back = false;
    kind = moe::resolve_backend(MOE_BACKEND_AUTO, MOE_DEVICE_CPU);
    r->backend = moe::make_backend(kind, o.threads);
  }
  r->backend_kind = r->last_backend = kind;
}

// Mean k_t over a calibrated sample for one parameter value.
double mean_k(const moe_router* r, const moe::TokenStage& st, int64_t tokens, const moe::KParams& k) {
  double sum = 0;
  for (int64_t t = 0; t < tokens; ++t) sum += moe::decide_k(r->config, moe::token_row(r->config, st, t), k);
  return tokens > 0 ? sum / tokens : 0;
}

}  // namespace

extern "C" {

const char* moe_router_version(void) { return "0.1.0"; }

moe_router_options moe_router_options_default(void) {
  moe_router_options o;
  std::memset(&o, 0, sizeof o);
  o.min_experts = 1;
  o.strategy = MOE_STRATEGY_TOP_K;
  o.top_p = 0.9;
  o.threshold = 0.1;
  o.scoring = MOE_SCORING_SOFTMAX;
  o.order = MOE_ORDER_SOFTMAX_THEN_SELECT;
  o.normalize = -1;
  o.scale = 1.0;
  o.min_capacity = 4;
  o.drop_policy = MOE_DROP_POSITION;
  o.block_size = 1;
  o.validation = MOE_VALIDATION_REJECT;
  o.backend = MOE_BACKEND_AUTO;
  o.device = MOE_DEVICE_AUTO;
  return o;
}

const char* moe_backend_name(moe_backend backend) {
  switch (backend) {
    case MOE_BACKEND_AUTO: return "auto";
    case MOE_BACKEND_SCALAR: return "scalar";
    case MOE_BACKEND_AVX2: return "avx2";
    case MOE_BACKEND_AVX512: return "avx512";
    case MOE_BACKEND_NEON: return "neon";
    case MOE_BACKEND_CUDA: return "cuda";
  }
  return "unknown";
}

int moe_backend_available(moe_backend backend) { return moe::backend_available(backend) ? 1 : 0; }

int moe_backend_compiled(moe_backend backend) { return moe::backend_compiled(backend) ? 1 : 0; }

moe_status moe_router_create(const moe_router_options* options, const float* weight, const float* bias,
                             const float* selection_bias, moe_router** out, moe_error* err) {
  return guarded(err, [&] {
    if (!out) fail(MOE_E_CONFIG, "out is NULL");
    *out = nullptr;
    if (!options) fail(MOE_E_CONFIG, "options is NULL");
    auto r = std::make_unique<moe_router>();
    r->config = moe::resolve_config(*options);
    const moe::Config& c = r->config;
    if (!weight) fail(MOE_E_SHAPE, "weight is NULL (expected [%d, %d] f32)", c.E, c.D);
    const int64_t n = static_cast<int64_t>(c.E) * c.D;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(weight[i]))
        fail(MOE_E_NONFINITE, "weight has a non-finite value at [%lld, %lld]",
             static_cast<long long>(i / c.D), static_cast<long long>(i % c.D));
    for (const auto& [values, name] : {std::pair{bias, "bias"}, std::pair{selection_bias, "selectionBias"}})
      if (values)
        for (int e = 0; e < c.E; ++e)
          if (!std::isfinite(values[e]))
            fail(MOE_E_NONFINITE, "%s has a non-finite value at [%d]", name, e);

    choose_backend(r.get());
    r->packed_weight = r->backend->pack_weight(weight, c.E, c.D);
    r->has_bias = bias != nullptr;
    r->bias = bias ? std::vector<float>(bias, bias + c.E) : std::vector<float>(c.E, 0.0f);
    r->selection_bias = selection_bias ? std::vector<float>(selection_bias, selection_bias + c.E)
                                       : std::vector<float>(c.E, 0.0f);
    r->k_params.top_p = c.options.top_p;
    r->k_params.threshold = c.options.threshold;
    r->expert_total.assign(c.E, 0);
    r->k_histogram.assign(c.K + 1, 0);
    r->host_bytes = measure_host_bytes(r.get());
    *out = r.release();
  });
}

void moe_router_destroy(moe_router* router) { delete router; }

int64_t moe_router_host_bytes(const moe_router* router) {
  return router->host_bytes.load(std::memory_order_relaxed);
}

moe_backend moe_router_backend(const moe_router* router) {
  std::lock_guard<std::mutex> lock(router->state_mutex);
  return router->last_backend;
}

int moe_router_last_fallback(const moe_router* router, moe_error* reason) {
  std::lock_guard<std::mutex> lock(router->state_mutex);
  if (!router->fell_back) return 0;
  if (reason) {
    reason->code = MOE_E_CUDA;
    std::snprintf(reason->message, sizeof reason->message, "%s", router->fallback_reason.c_str());
  }
  return 1;
}

moe_status moe_router_last_timing(const moe_router* router, moe_router_timing* out, moe_error* err) {
  return guarded(err, [&] {
    check_router(router);
    if (!out) fail(MOE_E_SHAPE, "out is NULL");
    // The backend's timings belong to the call that last held compute_mutex.
    std::lock_guard<std::mutex> lock(router->compute_mutex);
    if (!router->backend->timing(out))
      fail(MOE_E_CONFIG, "no timings: they need a CUDA router created with options.profile = 1 that has "
                         "routed at least once");
  });
}

void moe_router_get_options(const moe_router* router, moe_router_options* out) {
  std::lock_guard<std::mutex> lock(router->state_mutex);
  *out = router->config.options;
  out->top_p = router->k_params.top_p;
  out->threshold = router->k_params.threshold;
}

int64_t moe_router_dispatch_capacity(const moe_router* router, int64_t tokens) {
  const moe::Config& c = router->config;
  if (!c.options.dispatch) return 0;
  return tokens * c.K + static_cast<int64_t>(c.E) * (c.options.block_size - 1);
}

moe_status moe_router_route(moe_router* router, const void* hidden, moe_dtype dtype, int64_t tokens,
                            moe_route_outputs* out, moe_error* err) {
  return route(router, hidden, dtype, tokens, false, out, err);
}

moe_status moe_router_route_logits(moe_router* router, const void* logits, moe_dtype dtype,
                                   int64_t tokens, moe_route_outputs* out, moe_error* err) {
  return route(router, logits, dtype, tokens, true, out, err);
}

moe_status moe_device_buffer_create(int64_t bytes, moe_device_buffer** out, moe_error* err) {
  return guarded(err, [&] {
    if (!out) fail(MOE_E_SHAPE, "out is NULL");
    *out = nullptr;
    if (bytes < 0) fail(MOE_E_SHAPE, "bytes must be >= 0 (got %lld)", static_cast<long long>(bytes));
    if (!moe::cuda_usable())
      fail(MOE_E_BACKEND, "device buffers need a usable CUDA device, and this machine or binary has none "
                          "(built without CUDA, or no GPU/driver found); keep tensors on 'cpu'");
    auto buffer = std::make_unique<moe_device_buffer>();
    buffer->data = moe::cuda_device_alloc(bytes);
    buffer->bytes = bytes;
    *out = buffer.release();
  });
}

moe_status moe_device_buffer_upload(moe_device_buffer* buffer, int64_t offset, const void* src, int64_t bytes,
                                    moe_error* err) {
  return guarded(err, [&] {
    check_range(buffer, offset, src, bytes);
    if (bytes > 0) moe::cuda_copy_to_device(static_cast<char*>(buffer->data) + offset, src, bytes);
  });
}

moe_status moe_device_buffer_download(const moe_device_buffer* buffer, int64_t offset, void* dst,
                                      int64_t bytes, moe_error* err) {
  return guarded(err, [&] {
    check_range(buffer, offset, dst, bytes);
    if (bytes > 0) moe::cuda_copy_to_host(dst, static_cast<const char*>(buffer->data) + offset, bytes);
  });
}

int64_t moe_device_buffer_size(const moe_device_buffer* buffer) { return buffer ? buffer->bytes : 0; }

void* moe_device_buffer_pointer(const moe_device_buffer* buffer) { return buffer ? buffer->data : nullptr; }

void moe_device_buffer_free(moe_device_buffer* buffer) {
  if (!buffer) return;
  moe::cuda_device_free(buffer->data);
  delete buffer;
}

moe_status moe_router_route_device(moe_router* router, const moe_device_buffer* input, moe_dtype dtype,
                                   int64_t tokens, int is_logits, moe_route_outputs* out, moe_error* err) {
  return guarded(err, [&] {
    check_router(router);
    const char* name = is_logits ? "logits" : "hidden";
    if (!input) fail(MOE_E_SHAPE, "%s device buffer is NULL", name);
    check_input(input->data, dtype, tokens, name);
    const int64_t row = is_logits ? router->config.E : router->config.D;
    const int64_t need = tokens * row * static_cast<int64_t>(moe::dtype_size(dtype));
    if (need > input->bytes)
      fail(MOE_E_SHAPE, "%s needs %lld bytes for %lld rows, but its device buffer holds %lld", name,
           static_cast<long long>(need), static_cast<long long>(tokens), static_cast<long long>(input->bytes));
    route_checked(router, input->data, true, dtype, tokens, is_logits != 0, out);
  });
}

moe_status moe_router_calibrate(moe_router* r, const void* sample, moe_dtype dtype, int64_t tokens,
                                int is_logits, double target, double* parameter_out,
                                double* mean_out, moe_error* err) {
  return guarded(err, [&] {
    check_router(r);
    check_input(sample, dtype, tokens, "sample");
    const moe::Config& c = r->config;
    const moe_strategy strategy = c.options.strategy;
    if (strategy != MOE_STRATEGY_TOP_P && strategy != MOE_STRATEGY_THRESHOLD &&
        strategy != MOE_STRATEGY_NORM)
      fail(MOE_E_CONFIG, "calibrate needs strategy 'top-p', 'threshold' or 'norm' (this router uses "
                         "a strategy without a parameter)");
    if (!(target >= c.kmin && target <= c.K))
      fail(MOE_E_CONFIG, "meanExperts must be in [minExperts, topK] = [%d, %d] (got %g)", c.kmin, c.K,
           target);
    if (tokens < 1) fail(MOE_E_SHAPE, "sample must have at least one row (got 0)");

    ComputeCall call(r);
    moe::StageParams p = stage_params(r, sample, dtype, tokens, is_logits != 0, nullptr);
    p.noise = false;
    p.want_losses = false;
    p.want_full = false;
    with_fallback(r, p, [&](moe::Backend& backend, const std::vector<float>& weight, moe::StageParams q) {
      q.packed_weight = weight.data();
      backend.token_stage(q, r->workspace.prepare(c, q));
    });
    const moe::TokenStage& st = r->workspace.stage();
    reject_invalid(r, st, tokens, "sample");

    // Bisection on the parameter; mean k_t is monotone in each of them.
    moe::KParams k = k_params_for(r, st, tokens);
    double* parameter = nullptr;
    double low = 0, high = 1;
    bool increasing = true;  // does mean k grow with the parameter?
    if (strategy == MOE_STRATEGY_TOP_P) {
      // From the least topP a router takes (it must be > 0), so that every value tried, and the
      // mean reported with the one chosen, is what routing with it gives.
      parameter = &k.top_p;
      low = std::nextafter(0.0, 1.0);
      high = 1;
    } else if (strategy == MOE_STRATEGY_THRESHOLD) {
      parameter = &k.threshold;
      increasing = false;
      float top = 0;
      for (int64_t i = 0; i < tokens * c.K; ++i) top = std::max(top, st.top_scores[i]);
      low = 0;
      high = std::nextafter(static_cast<double>(top), 2.0);
    } else {
      parameter = &k.norm_mean;
      increasing = false;
      double mean = 0, std_dev = 0;
      moe::norm_statistics(st.norm, tokens, &mean, &std_dev);
      k.norm_std = std_dev;
      low = mean - 10 * std_dev;
      high = mean + 10 * std_dev;
    }
    double best = *parameter, best_gap = INFINITY, best_mean = 0;
    const auto consider = [&](double value) {
      *parameter = value;
      const double m = mean_k(r, st, tokens, k);
      if (std::fabs(m - target) < best_gap) {
        best_gap = std::fabs(m - target);
        best = value;
        best_mean = m;
      }
      return m;
    };
    consider(low);
    consider(high);
    for (int iteration = 0; iteration < 64 && best_gap > 0.05 * 0.5; ++iteration) {
      const double mid = 0.5 * (low + high);
      const double m = consider(mid);
      if ((m < target) == increasing) low = mid; else high = mid;
    }
    *parameter = best;
    {
      std::lock_guard<std::mutex> state(r->state_mutex);
      r->k_params = k;
      if (strategy == MOE_STRATEGY_NORM) r->norm_calibrated = true;
    }
    if (parameter_out) *parameter_out = best;
    if (mean_out) *mean_out = best_mean;
  });
}

moe_status moe_router_update_bias(moe_router* r, const int32_t* counts, moe_error* err) {
  return guarded(err, [&] {
    check_router(r);
    if (!counts) fail(MOE_E_SHAPE, "counts is NULL (expected [%d] int32)", r->config.E);
    if (!(r->config.options.bias_update_rate > 0))
      fail(MOE_E_CONFIG, "updateBias needs option biasUpdateRate > 0");
    std::vector<int64_t> wide(counts, counts + r->config.E);
    std::lock_guard<std::mutex> state(r->state_mutex);
    bias_update(r, wide.data());
  });
}

void moe_router_get_selection_bias(const moe_router* router, float* out) {
  std::lock_guard<std::mutex> lock(router->state_mutex);
  std::copy(router->selection_bias.begin(), router->selection_bias.end(), out);
}

uint64_t moe_router_get_step(const moe_router* router) {
  std::lock_guard<std::mutex> lock(router->state_mutex);
  return router->step;
}

void moe_router_set_step(moe_router* router, uint64_t step) {
  std::lock_guard<std::mutex> lock(router->state_mutex);
  router->step = step;
}

void moe_router_get_stats(const moe_router* r, moe_router_stats* out, double* utilization,
                          int64_t* expert_assignments, int64_t* k_histogram) {
  std::lock_guard<std::mutex> lock(r->state_mutex);
  const int E = r->config.E;
  out->tokens = r->tokens;
  out->calls = r->calls;
  out->assignments = r->assignments;
  out->dropped_assignments = r->dropped;
  out->mean_experts_per_token = r->tokens > 0 ? static_cast<double>(r->assignments) / r->tokens : 0;
  out->flop_reduction =
      r->tokens > 0 ? 1.0 - static_cast<double>(r->assignments) / (static_cast<double>(r->tokens) * r->config.K) : 0;
  int64_t total = 0;
  for (int e = 0; e < E; ++e) total += r->expert_total[e];
  double sum_sq = 0;
  for (int e = 0; e < E; ++e) {
    const double share = total > 0 ? static_cast<double>(r->expert_total[e]) / total : 0;
    if (utilization) utilization[e] = share;
    sum_sq += share * share;
  }
  out->load_balance_score = total > 0 ? 1.0 / (E * sum_sq) : 1.0;
  if (expert_assignments) std::copy(r->expert_total.begin(), r->expert_total.end(), expert_assignments);
  if (k_histogram) std::copy(r->k_histogram.begin(), r->k_histogram.end(), k_histogram);
}

void moe_router_reset_stats(moe_router* r) {
  std::lock_guard<std::mutex> lock(r->state_mutex);
  r->tokens = r->calls = r->assignments = r->dropped = 0;
  std::fill(r->expert_total.begin(), r->expert_total.end(), 0);
  std::fill(r->k_histogram.begin(), r->k_histogram.end(), 0);
}

}  // extern "C"
