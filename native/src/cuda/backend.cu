// The CUDA backend: device memory, streams, and the order of copies and launches of one call.
//
// A route runs on the router's compute stream, its input copies on the router's copy stream:
//  - hidden states or logits from the host go through pinned staging in chunks of about 16 MB; chunk
//    i+1 is staged and copied while chunk i's kernel runs, and (when nothing later changes them) chunk
//    i's outputs are copied back while chunk i+1 computes;
//  - inputs already on the device (moe_router_route_device) go straight to one launch;
//  - the token stage writes k_t, the slots, weights and counts itself when it can decide a token alone
//    (every token-choice strategy, norm once calibrated). Then a single launch does the whole route: its
//    last block runs the finalize step (counts and losses). Otherwise assign.cu's kernels follow:
//    norm statistics and decisions, capacity and dispatch, then the finalize step;
//  - expert choice and dropPolicy 'score' use token_stage: the token stage's results are copied back
//    and core/assign.cc runs on the host (its sorts are cheaper there).
// W is converted, padded and uploaded at the first call that needs it (per input type), and stays.
// Device buffers come from the engine's stream-ordered pool and grow to the largest batch seen; pinned
// staging likewise. Results travel device -> pinned -> caller, so a call that fails (a non-finite
// logit under 'reject', a CUDA error) has written nothing the caller sees.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../core/assign.h"
#include "../core/failure.h"
#include "../core/half.h"
#include "../core/scratch.h"
#include "cuda.h"
#include "kernels.cuh"
#include "params.cuh"
#include "runtime.cuh"

namespace moe {

namespace cuda {

namespace {

constexpr size_t kChunkBytes = size_t{16} << 20;

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Where each output lives in the device output block and its pinned mirror (one copy back).
struct OutputLayout {
  size_t result = 0, experts = 0, weights = 0, k = 0, invalid = 0, counts = 0, offsets = 0, slots = 0;
  size_t total = 0;
};

OutputLayout layout_for(int64_t tokens, int K, int E, int64_t slot_capacity) {
  OutputLayout l;
  size_t at = 0;
  const auto take = [&at](size_t bytes) {
    const size_t start = at;
    at += aligned(bytes);
    return start;
  };
  const size_t slots = static_cast<size_t>(tokens) * K;
  l.result = take(sizeof(Result));
  l.experts = take(slots * sizeof(int32_t));
  l.weights = take(slots * sizeof(float));
  l.k = take(static_cast<size_t>(tokens) * sizeof(int32_t));
  l.invalid = take(static_cast<size_t>(tokens));
  l.counts = take(static_cast<size_t>(E) * sizeof(int32_t));
  l.offsets = take(static_cast<size_t>(E + 1) * sizeof(int32_t));
  l.slots = take(static_cast<size_t>(slot_capacity) * sizeof(int32_t));
  l.total = at;
  return l;
}

GateMode gate_mode(const StageParams& p) {
  switch (p.dtype) {
    case MOE_DTYPE_BF16: return GateMode::kBf16;
    case MOE_DTYPE_F16: return GateMode::kF16;
    default: return p.config->options.exact_f32 ? GateMode::kF32 : GateMode::kTf32;
  }
}

class Event {
 public:
  Event() { check(cudaEventCreate(&event_), "cudaEventCreate"); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { cudaEventDestroy(event_); }
  void record(cudaStream_t stream) { check(cudaEventRecord(event_, stream), "cudaEventRecord"); }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class Stream {
 public:
  Stream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  cudaStream_t get() const { return stream_; }
  void wait(const Event& e) { check(cudaStreamWaitEvent(stream_, e.get(), 0), "cudaStreamWaitEvent"); }
  void synchronize() { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (the route's work)"); }

 private:
  cudaStream_t stream_ = nullptr;
};

// The token stage's launch for one chunk of rows: the fused gate or the logits kernel.
struct RowLaunch {
  bool is_logits = false;
  GateMode mode = GateMode::kF32;
  int D = 0;
  const void* weight = nullptr;
  float* partial = nullptr;
  unsigned* tickets = nullptr;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend() : ordinal_((use_device(), device().ordinal)) {}
  ~CudaBackend() override {
    // Work of a call that failed half-way may still run; the buffers below must outlive it.
    cudaStreamSynchronize(compute_.get());
    cudaStreamSynchronize(copy_.get());
  }

  moe_backend kind() const override { return MOE_BACKEND_CUDA; }

  // The plain f32 copy: the device formats are made from it at the first call that needs them, and a
  // CPU fallback packs its own from it.
  std::vector<float> pack_weight(const float* weight, int experts, int dim) const override {
    return std::vector<float>(weight, weight + static_cast<int64_t>(experts) * dim);
  }

  // The pinned staging and output mirrors (device memory is not host memory).
  int64_t host_bytes() const override {
    return capacity_bytes(uploaded_selection_bias_) + selection_staging_.bytes() + staging_[0].bytes() +
           staging_[1].bytes() + host_outputs_.bytes();
  }

  void token_stage(const StageParams& p, const TokenStage& out) override;
  bool run_route(const StageParams& p, const KParams& k, bool batch_norm, Workspace& ws) override;
  void write_route(moe_route_outputs* out) override;
  bool timing(moe_router_timing* out) const override;

 private:
  void begin_call(const StageParams& p);
  RowConfig row_config(const StageParams& p, const KParams& k, bool batch_norm) const;
  RowLaunch row_launch(const StageParams& p, int64_t chunk);
  int blocks_for(const RowLaunch& launch, const RowConfig& c, int64_t rows) const;
  int64_t chunk_rows(const StageParams& p) const;
  int count_blocks(const StageParams& p, const RowLaunch& launch, const RowConfig& c) const;
  template <class After>
  void run_rows(const StageParams& p, const RowLaunch& launch, const RowConfig& c, const RowOutputs& o,
                const Finalize& f, After&& after);
  void end_call();

  int ordinal_;
  Stream compute_, copy_;
  Event uploaded_[2], consumed_[2], allocated_, copied_, start_, kernels_begin_, kernels_end_, end_;
  bool profiled_ = false;

  // W on the device, per input type: [padded_E, padded_D], zero padded.
  DeviceArray<float> weight_f32_;
  DeviceArray<__nv_bfloat16> weight_bf16_;
  DeviceArray<__half> weight_f16_;
  bool have_f32_ = false, have_bf16_ = false, have_f16_ = false;
  DeviceArray<float> bias_, selection_bias_;
  bool have_bias_ = false;
  std::vector<float> uploaded_selection_bias_;
  PinnedArray<float> selection_staging_;

  // Per-call device buffers.
  DeviceArray<unsigned char> input_[2];
  PinnedArray<unsigned char> staging_[2];
  DeviceArray<int32_t> cand_e_;
  DeviceArray<float> cand_s_, cand_u_, top_scores_, full_key_, full_score_, full_logit_, partial_;
  DeviceArray<double> score_entropy_, norm_, lse_, loss_entropy_, block_partials_, norm_stats_;
  DeviceArray<Totals> totals_;
  DeviceArray<unsigned> tickets_;
  // The totals and the gate's tile tickets are zero: the last call was a route that finished (its
  // finalize step and last blocks clear them). Otherwise this call clears them first.
  bool clean_ = false, was_clean_ = false;
  DeviceArray<int> tile_counts_, kept_, padded_;
  DeviceArray<unsigned char> outputs_;
  PinnedArray<unsigned char> host_outputs_;

  // What write_route needs from the last run_route.
  OutputLayout layout_;
  int64_t tokens_ = 0;
  int K_ = 0, E_ = 0;
  bool dispatch_ = false, losses_ = false;
};

void CudaBackend::begin_call(const StageParams& p) {
  check(cudaSetDevice(ordinal_), "cudaSetDevice");
  const Config& c = *p.config;
  cudaStream_t stream = compute_.get();
  profiled_ = c.options.profile != 0;
  if (profiled_) start_.record(stream);
  was_clean_ = clean_;
  clean_ = false;
  if (totals_.reserve(1, stream) || !was_clean_)
    check(cudaMemsetAsync(totals_.get(), 0, sizeof(Totals), stream), "cudaMemsetAsync (totals)");

  // One-time uploads copy from pageable memory; they wait for their stream-ordered allocation.
  const auto upload = [stream](void* device, const void* host, size_t bytes, const char* what) {
    check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream), what);
    check(cudaStreamSynchronize(stream), what);
  };
  const int E = c.E;
  if (!have_bias_ && p.bias) {
    bias_.reserve(E, stream);
    upload(bias_.get(), p.bias, E * sizeof(float), "cudaMemcpyAsync (gate bias)");
    have_bias_ = true;
  }
  if (uploaded_selection_bias_.size() != static_cast<size_t>(E) ||
      !std::equal(uploaded_selection_bias_.begin(), uploaded_selection_bias_.end(), p.selection_bias)) {
    selection_bias_.reserve(E, stream);
    selection_staging_.reserve(E);
    std::copy(p.selection_bias, p.selection_bias + E, selection_staging_.get());
    check(cudaMemcpyAsync(selection_bias_.get(), selection_staging_.get(), E * sizeof(float),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (selection bias)");
    uploaded_selection_bias_.assign(p.selection_bias, p.selection_bias + E);
  }
  if (p.is_logits) return;

  // W in the format this input type's gate reads, at its first use.
  const GateMode mode = gate_mode(p);
  const int D = c.D;
  const int padded_D = (D + kGateK - 1) / kGateK * kGateK;
  const int padded_E = (E + 15) / 16 * 16;
  const size_t n = static_cast<size_t>(padded_E) * padded_D;
  const auto pack = [&](auto& array, bool& have, auto convert, const char* what) {
    if (have) return;
    using T = std::remove_pointer_t<decltype(array.get())>;
    std::vector<T> packed(n, convert(0.0f));
    for (int e = 0; e < E; ++e)
      for (int d = 0; d < D; ++d)
        packed[static_cast<size_t>(e) * padded_D + d] = convert(p.packed_weight[static_cast<size_t>(e) * D + d]);
    array.reserve(n, stream);
    upload(array.get(), packed.data(), n * sizeof(T), what);
    have = true;
  };
  switch (mode) {
    case GateMode::kBf16:
      pack(weight_bf16_, have_bf16_, [](float v) { return __float2bfloat16_rn(v); }, "cudaMemcpyAsync (W as bf16)");
      break;
    case GateMode::kF16:
      pack(weight_f16_, have_f16_, [](float v) { return __float2half_rn(v); }, "cudaMemcpyAsync (W as f16)");
      break;
    default:
      pack(weight_f32_, have_f32_, [](float v) { return v; }, "cudaMemcpyAsync (W as f32)");
      break;
  }
}

RowConfig CudaBackend::row_config(const StageParams& p, const KParams& k, bool batch_norm) const {
  const Config& c = *p.config;
  const moe_router_options& o = c.options;
  RowConfig r;
  r.E = c.E;
  r.K = c.K;
  r.kmin = c.kmin;
  r.scoring = o.scoring;
  r.strategy = o.strategy;
  r.keys_from_logits = o.order == MOE_ORDER_SELECT_THEN_SOFTMAX;
  r.group_count = o.group_count;
  r.group_size = c.group_size;
  r.group_select = o.group_select;
  r.normalize = c.normalize;
  r.weights_from_logits = c.weights_from_logits;
  r.scale = o.scale;
  r.top_p = k.top_p;
  r.threshold = k.threshold;
  r.norm_known = o.strategy == MOE_STRATEGY_NORM && !batch_norm;
  r.norm_mean = k.norm_mean;
  r.norm_std = k.norm_std;
  r.noise = p.noise;
  r.noise_std = static_cast<float>(o.noise_std);
  r.seed = o.noise_seed;
  r.step = p.step;
  r.bias = !p.is_logits && have_bias_ ? bias_.get() : nullptr;
  r.selection_bias = selection_bias_.get();
  return r;
}

int64_t CudaBackend::chunk_rows(const StageParams& p) const {
  if (p.input_on_device) return p.tokens;
  const int64_t row_bytes = static_cast<int64_t>(p.is_logits ? p.config->E : p.config->D) * dtype_size(p.dtype);
  return std::max<int64_t>(1, std::min<int64_t>(p.tokens, static_cast<int64_t>(kChunkBytes) / row_bytes));
}

int CudaBackend::blocks_for(const RowLaunch& launch, const RowConfig& c, int64_t rows) const {
  return launch.is_logits ? plan_topk_softmax(c, rows).blocks : plan_gate(c, launch.D, rows, launch.mode).tiles;
}

int CudaBackend::count_blocks(const StageParams& p, const RowLaunch& launch, const RowConfig& c) const {
  const int64_t chunk = chunk_rows(p);
  const int64_t full = p.tokens / chunk, rest = p.tokens % chunk;
  return static_cast<int>(full * blocks_for(launch, c, chunk) + (rest ? blocks_for(launch, c, rest) : 0));
}

RowLaunch CudaBackend::row_launch(const StageParams& p, int64_t chunk) {
  RowLaunch l;
  l.is_logits = p.is_logits;
  if (p.is_logits) return l;
  l.mode = gate_mode(p);
  l.D = p.config->D;
  switch (l.mode) {
    case GateMode::kBf16: l.weight = weight_bf16_.get(); break;
    case GateMode::kF16: l.weight = weight_f16_.get(); break;
    default: l.weight = weight_f32_.get(); break;
  }
  // Partial sums and tile tickets for whichever chunk shape splits D (the last chunk may, when the
  // full ones do not).
  cudaStream_t stream = compute_.get();
  const RowConfig c = row_config(p, KParams{}, false);
  size_t partial_floats = 0, tiles = 0;
  for (const int64_t n : {chunk, p.tokens % chunk}) {
    if (n == 0) continue;
    const GatePlan plan = plan_gate(c, l.D, n, l.mode);
    if (plan.splits == 1) continue;
    partial_floats = std::max(partial_floats, plan.partial_floats);
    tiles = std::max(tiles, static_cast<size_t>(plan.tiles));
  }
  if (tiles > 0) {
    partial_.reserve(partial_floats, stream);
    l.partial = partial_.get();
    if (tickets_.reserve(tiles, stream) || !was_clean_)
      check(cudaMemsetAsync(tickets_.get(), 0, tiles * sizeof(unsigned), stream), "cudaMemsetAsync (tickets)");
    l.tickets = tickets_.get();
  }
  return l;
}

// Runs the token stage over every row. Host rows travel in chunks through pinned staging (two slots):
// the copy of chunk i+1 overlaps the kernel of chunk i. after(begin, rows, slot_event) is called for
// chunk i once chunk i+1 is queued (and for the last chunk at the end), to queue its copy back.
template <class After>
void CudaBackend::run_rows(const StageParams& p, const RowLaunch& launch, const RowConfig& c, const RowOutputs& o,
                           const Finalize& f, After&& after) {
  cudaStream_t stream = compute_.get();
  const int64_t chunk = chunk_rows(p);
  int block_base = 0;
  const auto run = [&](const void* input, int64_t begin, int64_t rows) {
    RowOutputs chunk_outputs = o;
    chunk_outputs.block_base = block_base;
    if (launch.is_logits) {
      const LogitsPlan plan = plan_topk_softmax(c, rows);
      launch_topk_softmax(plan, input, p.dtype, begin, rows, c, chunk_outputs, f, stream);
      block_base += plan.blocks;
    } else {
      const GatePlan plan = plan_gate(c, launch.D, rows, launch.mode);
      launch_gate(plan, input, launch.weight, begin, rows, launch.partial, launch.tickets, c, chunk_outputs, f,
                  stream);
      block_base += plan.tiles;
    }
  };
  if (p.input_on_device) {
    if (profiled_) kernels_begin_.record(stream);
    run(p.input, 0, p.tokens);
    return;
  }
  const size_t row_bytes = static_cast<size_t>(p.is_logits ? c.E : launch.D) * dtype_size(p.dtype);
  const size_t chunk_bytes = static_cast<size_t>(chunk) * row_bytes;
  for (int slot = 0; slot < 2 && slot * chunk < p.tokens; ++slot) {
    input_[slot].reserve(chunk_bytes, stream);
    staging_[slot].reserve(chunk_bytes);
  }
  allocated_.record(stream);  // the copy stream uses what the compute stream allocated (and start_)
  copy_.wait(allocated_);
  int64_t previous_begin = -1, previous_rows = 0;
  int previous_slot = 0;
  for (int64_t begin = 0, i = 0; begin < p.tokens; begin += chunk, ++i) {
    const int slot = static_cast<int>(i % 2);
    const int64_t rows = std::min(chunk, p.tokens - begin);
    const size_t bytes = static_cast<size_t>(rows) * row_bytes;
    if (i >= 2) check(cudaEventSynchronize(uploaded_[slot].get()), "cudaEventSynchronize (staging slot)");
    std::memcpy(staging_[slot].get(), static_cast<const unsigned char*>(p.input) + begin * row_bytes, bytes);
    if (i >= 2) copy_.wait(consumed_[slot]);
    check(cudaMemcpyAsync(input_[slot].get(), staging_[slot].get(), bytes, cudaMemcpyHostToDevice, copy_.get()),
          "cudaMemcpyAsync (input chunk to the device)");
    uploaded_[slot].record(copy_.get());
    compute_.wait(uploaded_[slot]);
    if (profiled_ && i == 0) kernels_begin_.record(stream);
    run(input_[slot].get(), begin, rows);
    consumed_[slot].record(stream);
    if (previous_begin >= 0) after(previous_begin, previous_rows, consumed_[previous_slot]);
    previous_begin = begin;
    previous_rows = rows;
    previous_slot = slot;
  }
  after(previous_begin, previous_rows, consumed_[previous_slot]);
}

void CudaBackend::end_call() {
  copied_.record(copy_.get());
  compute_.wait(copied_);
  if (profiled_) end_.record(compute_.get());
  compute_.synchronize();
}

void CudaBackend::token_stage(const StageParams& p, const TokenStage& out) {
  const Config& c = *p.config;
  begin_call(p);
  cudaStream_t stream = compute_.get();
  const int64_t T = p.tokens;
  const size_t slots = static_cast<size_t>(T) * c.K, cells = static_cast<size_t>(T) * c.E;
  const RowConfig rc = row_config(p, KParams{}, true);
  const RowLaunch launch = row_launch(p, chunk_rows(p));

  RowOutputs o;
  cand_e_.reserve(slots, stream);
  cand_s_.reserve(slots, stream);
  cand_u_.reserve(slots, stream);
  outputs_.reserve(static_cast<size_t>(T), stream);
  o.cand_e = cand_e_.get();
  o.cand_s = cand_s_.get();
  o.cand_u = cand_u_.get();
  o.invalid = outputs_.get();
  if (p.want_top_scores) {
    top_scores_.reserve(slots, stream);
    o.top_scores = top_scores_.get();
  }
  if (p.want_score_entropy) {
    score_entropy_.reserve(static_cast<size_t>(T), stream);
    o.score_entropy = score_entropy_.get();
  }
  if (p.want_norm) {
    norm_.reserve(static_cast<size_t>(T), stream);
    o.norm = norm_.get();
  }
  if (p.want_losses) {
    lse_.reserve(static_cast<size_t>(T), stream);
    loss_entropy_.reserve(static_cast<size_t>(T), stream);
    o.lse = lse_.get();
    o.loss_entropy = loss_entropy_.get();
    o.losses = true;
    block_partials_.reserve(2 * static_cast<size_t>(count_blocks(p, launch, rc)), stream);
    o.block_partials = block_partials_.get();
  }
  if (p.want_full) {
    full_key_.reserve(cells, stream);
    full_score_.reserve(cells, stream);
    full_logit_.reserve(cells, stream);
    o.full_key = full_key_.get();
    o.full_score = full_score_.get();
    o.full_logit = full_logit_.get();
  }
  o.totals = totals_.get();
  run_rows(p, launch, rc, o, Finalize{}, [](int64_t, int64_t, const Event&) {});
  if (profiled_) kernels_end_.record(stream);
  end_call();

  const auto fetch = [](void* host, const void* device, size_t bytes, const char* what) {
    check(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), what);
  };
  fetch(out.candidate_expert, o.cand_e, slots * sizeof(int32_t), "cudaMemcpy (candidates)");
  fetch(out.candidate_score, o.cand_s, slots * sizeof(float), "cudaMemcpy (candidate scores)");
  fetch(out.candidate_logit, o.cand_u, slots * sizeof(float), "cudaMemcpy (candidate logits)");
  fetch(out.invalid, o.invalid, static_cast<size_t>(T), "cudaMemcpy (invalid flags)");
  if (o.top_scores) fetch(out.top_scores, o.top_scores, slots * sizeof(float), "cudaMemcpy (top scores)");
  if (o.score_entropy) fetch(out.score_entropy, o.score_entropy, T * sizeof(double), "cudaMemcpy (score entropy)");
  if (o.norm) fetch(out.norm, o.norm, T * sizeof(double), "cudaMemcpy (norms)");
  if (o.full_key) {
    fetch(out.full_key, o.full_key, cells * sizeof(float), "cudaMemcpy (keys)");
    if (out.full_score) fetch(out.full_score, o.full_score, cells * sizeof(float), "cudaMemcpy (scores)");
    if (out.full_logit) fetch(out.full_logit, o.full_logit, cells * sizeof(float), "cudaMemcpy (logits)");
  }
  if (p.want_losses) {
    fetch(out.logsumexp, o.lse, T * sizeof(double), "cudaMemcpy (logsumexp)");
    fetch(out.loss_entropy, o.loss_entropy, T * sizeof(double), "cudaMemcpy (loss entropy)");
    std::vector<unsigned long long> p_fixed(static_cast<size_t>(c.E));
    fetch(p_fixed.data(), totals_.get()->p_fixed, c.E * sizeof(unsigned long long), "cudaMemcpy (p sums)");
    for (int e = 0; e < c.E; ++e) out.p_sum[e] = static_cast<double>(p_fixed[e]) / kFixedOne;
  }
}

bool CudaBackend::run_route(const StageParams& p, const KParams& k, bool batch_norm, Workspace& ws) {
  const Config& c = *p.config;
  if (c.expert_choice || (c.capacity && c.options.drop_policy == MOE_DROP_SCORE)) return false;
  begin_call(p);
  cudaStream_t stream = compute_.get();
  const int64_t T = p.tokens;
  const int K = c.K, E = c.E;
  const bool rank = c.capacity || c.options.dispatch;
  const bool later = c.options.strategy == MOE_STRATEGY_NORM && batch_norm;
  const int64_t slot_capacity =
      c.options.dispatch ? T * K + static_cast<int64_t>(E) * (c.options.block_size - 1) : 0;
  layout_ = layout_for(T, K, E, slot_capacity);
  tokens_ = T;
  K_ = K;
  E_ = E;
  dispatch_ = c.options.dispatch != 0;
  losses_ = c.options.losses != 0;
  outputs_.reserve(layout_.total, stream);
  host_outputs_.reserve(layout_.total);
  unsigned char* device_out = outputs_.get();
  unsigned char* host_out = host_outputs_.get();

  const RowConfig rc = row_config(p, k, batch_norm);
  const RowLaunch launch = row_launch(p, chunk_rows(p));
  const size_t slots = static_cast<size_t>(T) * K;
  RowOutputs o;
  o.invalid = device_out + layout_.invalid;
  o.decide = true;
  o.weigh = !c.capacity;
  o.k = reinterpret_cast<int32_t*>(device_out + layout_.k);
  o.experts = reinterpret_cast<int32_t*>(device_out + layout_.experts);
  o.weights = reinterpret_cast<float*>(device_out + layout_.weights);
  o.losses = losses_;
  o.totals = totals_.get();
  if (c.capacity || later) {
    cand_e_.reserve(slots, stream);
    cand_s_.reserve(slots, stream);
    cand_u_.reserve(slots, stream);
    o.cand_e = cand_e_.get();
    o.cand_s = cand_s_.get();
    o.cand_u = cand_u_.get();
  }
  if (later) {
    norm_.reserve(static_cast<size_t>(T), stream);
    norm_stats_.reserve(2, stream);
    o.norm = norm_.get();
  }
  const int blocks = count_blocks(p, launch, rc);
  if (losses_) {
    block_partials_.reserve(2 * static_cast<size_t>(blocks), stream);
    o.block_partials = block_partials_.get();
  }
  Finalize f;
  f.tokens = T;
  f.E = E;
  f.K = K;
  f.losses = losses_;
  f.block_partials = o.block_partials;
  f.blocks = blocks;
  f.expert_counts = reinterpret_cast<int32_t*>(device_out + layout_.counts);
  f.result = reinterpret_cast<Result*>(device_out + layout_.result);
  f.totals = totals_.get();
  const bool single = !rank && !later && chunk_rows(p) >= T;
  Finalize in_kernel = f;
  in_kernel.in_kernel = single;
  in_kernel.arrivals = blocks;

  // Outputs that nothing after the token stage changes go back chunk by chunk.
  const bool per_chunk = !rank && !later && !single;
  const auto copy_back = [&](int64_t begin, int64_t rows, const Event& done) {
    if (!per_chunk) return;
    copy_.wait(done);
    const auto back = [&](size_t offset, size_t element, int per_token) {
      const size_t start = offset + static_cast<size_t>(begin) * per_token * element;
      check(cudaMemcpyAsync(host_out + start, device_out + start, static_cast<size_t>(rows) * per_token * element,
                            cudaMemcpyDeviceToHost, copy_.get()),
            "cudaMemcpyAsync (outputs to the host)");
    };
    back(layout_.experts, sizeof(int32_t), K);
    back(layout_.weights, sizeof(float), K);
    back(layout_.k, sizeof(int32_t), 1);
    back(layout_.invalid, 1, 1);
  };
  run_rows(p, launch, rc, o, in_kernel, copy_back);

  if (later) {
    launch_norm_statistics(o.norm, T, norm_stats_.get(), stream);
    launch_decide(rc, o, norm_stats_.get(), T, stream);
  }
  if (rank) {
    const int tiles = rank_tiles(static_cast<int64_t>(slots));
    tile_counts_.reserve(static_cast<size_t>(tiles) * E, stream);
    kept_.reserve(static_cast<size_t>(E), stream);
    padded_.reserve(static_cast<size_t>(E), stream);
    RankBuffers b{tile_counts_.get(), kept_.get(), padded_.get()};
    const int64_t capacity = c.capacity ? capacity_per_expert(c, T) : -1;
    int32_t* offsets = dispatch_ ? reinterpret_cast<int32_t*>(device_out + layout_.offsets) : nullptr;
    int32_t* dispatch = dispatch_ ? reinterpret_cast<int32_t*>(device_out + layout_.slots) : nullptr;
    launch_rank(o.experts, T, K, E, capacity, c.options.block_size, b, offsets, dispatch, totals_.get(), stream);
    if (c.capacity) launch_reweight(rc, o.experts, o.cand_s, o.cand_u, o.weights, T, stream);
    f.kept = kept_.get();
  }
  if (!single) launch_finalize(f, stream);
  if (profiled_) kernels_end_.record(stream);
  // The result block, and what the per-chunk copies did not move: everything, or from the counts on.
  const auto back = [&](size_t from, size_t to) {
    check(cudaMemcpyAsync(host_out + from, device_out + from, to - from, cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (route results to the host)");
  };
  if (per_chunk) {
    back(layout_.result, sizeof(Result));
    back(layout_.counts, layout_.total);
  } else {
    back(0, layout_.total);
  }
  end_call();
  clean_ = true;

  std::memcpy(ws.stage().invalid, host_out + layout_.invalid, static_cast<size_t>(T));
  const Result* result = reinterpret_cast<const Result*>(host_out + layout_.result);
  for (int e = 0; e < E; ++e) ws.counts_before[e] = result->counts_before[e];
  return true;
}

void CudaBackend::write_route(moe_route_outputs* out) {
  const unsigned char* h = host_outputs_.get();
  const size_t slots = static_cast<size_t>(tokens_) * K_;
  std::memcpy(out->experts, h + layout_.experts, slots * sizeof(int32_t));
  std::memcpy(out->weights, h + layout_.weights, slots * sizeof(float));
  std::memcpy(out->experts_per_token, h + layout_.k, static_cast<size_t>(tokens_) * sizeof(int32_t));
  std::memcpy(out->expert_counts, h + layout_.counts, static_cast<size_t>(E_) * sizeof(int32_t));
  if (dispatch_) {
    const int32_t* offsets = reinterpret_cast<const int32_t*>(h + layout_.offsets);
    std::memcpy(out->dispatch_offsets, offsets, static_cast<size_t>(E_ + 1) * sizeof(int32_t));
    std::memcpy(out->dispatch_slots, h + layout_.slots, static_cast<size_t>(offsets[E_]) * sizeof(int32_t));
    out->dispatch_length = offsets[E_];
  }
  const uint8_t* invalid = h + layout_.invalid;
  out->invalid_count = 0;
  for (int64_t t = 0; t < tokens_; ++t) {
    if (!invalid[t]) continue;
    if (out->invalid_tokens) out->invalid_tokens[out->invalid_count] = static_cast<int32_t>(t);
    ++out->invalid_count;
  }
  const Result* r = reinterpret_cast<const Result*>(h + layout_.result);
  out->dropped_assignments = r->dropped;
  if (losses_) {
    out->aux_loss = r->aux_loss;
    out->z_loss = r->z_loss;
    out->entropy = r->entropy;
  }
  out->flop_reduction = r->flop_reduction;
}

bool CudaBackend::timing(moe_router_timing* out) const {
  if (!profiled_) return false;
  float kernels = 0, total = 0;
  check(cudaEventElapsedTime(&kernels, kernels_begin_.get(), kernels_end_.get()), "cudaEventElapsedTime");
  check(cudaEventElapsedTime(&total, start_.get(), end_.get()), "cudaEventElapsedTime");
  out->kernels_ms = kernels;
  out->total_ms = total;
  return true;
}

}  // namespace

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<cuda::CudaBackend>(); }

}  // namespace moe
