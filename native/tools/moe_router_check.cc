// moe_router_check: a backend (CUDA by default) against the scalar oracle, then timings of the
// canonical workloads. Plain C++ over the C ABI (native/include/moe_router.h); the CUDA runtime is
// used directly only for the device-to-device copy that the timings are compared with.
//
//   moe_router_check [--backend cuda|scalar|avx2|avx512|neon] [--cases N] [--seed S]
//                    [--no-check] [--no-bench] [--iterations N] [--json FILE]
//
// Agreement (docs/semantics.md §13): the tool computes every token's gate logits, scores and keys in
// double. A slot may differ from the oracle only where the keys involved (or the group scores, or the
// strategy's decision for k_t) are within the tolerance of each other: 1e-5 of the largest key for f32
// input, 1e-2 for f16/bf16 input and for f32 hidden states on TF32 tensor cores (exact_f32 0). Where
// every slot agrees, k_t, counts, drops and dispatch must be equal, weights and losses within the
// tolerance (relative). Downstream of a near-tie, capacity and expert choice may legitimately move other
// tokens too: such cases count as inconclusive (their outputs are still checked for consistency). Every
// case also runs twice on the backend under test, which must give the same bits.
//
// Exit status: 0 all cases agree, 1 a case disagrees, 2 bad arguments, 77 the backend under test is
// not available (for CUDA: "no CUDA device").
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../src/core/half.h"
#include "../src/core/philox.h"
#include "moe_router.h"

#if defined(MOE_ROUTER_CHECK_CUDA)
#include <cuda_runtime.h>
#endif

namespace {

constexpr int kExitDisagree = 1, kExitUsage = 2, kExitUnavailable = 77;
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- f32 -> f16 / bf16, round to nearest even (inputs are generated in f32 and narrowed) ----

uint32_t f32_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

uint16_t to_bf16(float v) {
  const uint32_t b = f32_bits(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b >> 16) | 0x40u);
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

uint16_t to_f16(float v) {
  const uint32_t b = f32_bits(v);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int exponent = static_cast<int>((b >> 23) & 0xffu);
  uint32_t mantissa = b & 0x7fffffu;
  if (exponent == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mantissa ? 0x200u : 0u));
  const int e = exponent - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mantissa |= 0x800000u;
    const int shift = 14 - e;
    const uint32_t half = 1u << (shift - 1), rest = mantissa & ((1u << shift) - 1);
    uint32_t h = mantissa >> shift;
    if (rest > half || (rest == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  const uint32_t rest = mantissa & 0x1fffu;
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mantissa >> 13);
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

const char* dtype_name(moe_dtype d) { return d == MOE_DTYPE_F32 ? "f32" : d == MOE_DTYPE_F16 ? "f16" : "bf16"; }

const char* strategy_name(moe_strategy s) {
  static const char* const names[] = {"top-k", "top-p", "threshold", "entropy", "norm", "expert-choice"};
  return names[s];
}

// ---- cases ----

struct Case {
  moe_router_options o{};
  moe_dtype dtype = MOE_DTYPE_F32;
  bool logits = false;
  bool on_device = false;
  int64_t T = 0;
  std::vector<float> weight, bias, selection_bias;
  std::vector<float> values;    // the input as f32 (already rounded to dtype)
  std::vector<uint16_t> bits;   // the input as f16/bf16 bits
  double tolerance = 1e-5;

  int row() const { return logits ? o.num_experts : o.input_dim; }
  const void* data() const { return dtype == MOE_DTYPE_F32 ? static_cast<const void*>(values.data()) : bits.data(); }
  size_t bytes() const { return values.size() * (dtype == MOE_DTYPE_F32 ? 4 : 2); }
};

std::string describe(const Case& c) {
  char text[512];
  std::snprintf(text, sizeof text,
                "%s %s T=%" PRId64 " D=%d E=%d K=%d kmin=%d %s %s %s%s%s%s%s%s%s%s%s%s%s",
                c.logits ? "logits" : "hidden", dtype_name(c.dtype), c.T, c.o.input_dim, c.o.num_experts,
                c.o.top_k, c.o.min_experts, strategy_name(c.o.strategy),
                c.o.scoring == MOE_SCORING_SOFTMAX ? "softmax" : "sigmoid",
                c.o.order == MOE_ORDER_SOFTMAX_THEN_SELECT ? "softmax-then-select" : "select-then-softmax",
                c.o.group_count ? " groups" : "", c.o.capacity_factor > 0 ? " capacity" : "",
                c.o.drop_policy == MOE_DROP_SCORE ? "(score)" : "", c.o.dispatch ? " dispatch" : "",
                c.o.losses ? " losses" : "", c.o.noise_std > 0 ? " noise" : "",
                c.o.validation == MOE_VALIDATION_SANITIZE ? " sanitize" : "", c.o.exact_f32 ? " exact-f32" : "",
                c.on_device ? " device-input" : "", c.selection_bias.empty() ? "" : " selection-bias");
  return text;
}

class Generator {
 public:
  explicit Generator(uint64_t seed) : random_(seed) {}

  Case next(bool device_inputs) {
    Case c;
    moe_router_options& o = c.o;
    o = moe_router_options_default();
    static const int kExperts[] = {1, 2, 3, 7, 8, 16, 33, 64, 100, 128, 160, 256, 384, 512, 700, 1024};
    o.num_experts = pick(kExperts);
    const int E = o.num_experts;
    o.top_k = range(1, std::min(E, chance(0.8) ? 8 : 32));
    static const int kDims[] = {1, 7, 16, 64, 130, 256, 1000};
    o.input_dim = pick(kDims);
    static const int kTokens[] = {1, 2, 17, 64, 300, 1000, 3000};
    c.T = pick(kTokens);
    c.logits = chance(0.4);
    static const moe_dtype kTypes[] = {MOE_DTYPE_F32, MOE_DTYPE_F16, MOE_DTYPE_BF16};
    c.dtype = pick(kTypes);
    o.strategy = static_cast<moe_strategy>(range(0, 5));
    o.scoring = chance(0.3) ? MOE_SCORING_SIGMOID : MOE_SCORING_SOFTMAX;
    o.order = chance(0.25) ? MOE_ORDER_SELECT_THEN_SOFTMAX : MOE_ORDER_SOFTMAX_THEN_SELECT;
    if (o.strategy != MOE_STRATEGY_TOP_K && o.strategy != MOE_STRATEGY_EXPERT_CHOICE)
      o.min_experts = range(1, o.top_k);
    o.top_p = 0.3 + 0.65 * uniform();
    o.threshold = (0.2 + 2.0 * uniform()) / E;
    if (chance(0.2)) o.normalize = chance(0.5) ? 0 : 1;
    if (chance(0.2)) o.scale = 2.5;
    if (o.strategy != MOE_STRATEGY_EXPERT_CHOICE && E > 1 && chance(0.25)) {
      std::vector<int> divisors;
      for (int g = 2; g <= E; ++g)
        if (E % g == 0) divisors.push_back(g);
      const int G = divisors[range(0, static_cast<int>(divisors.size()) - 1)];
      const int size = E / G;
      const int least = (o.top_k + size - 1) / size;
      o.group_count = G;
      o.group_select = range(least, G);
    }
    if (o.strategy == MOE_STRATEGY_EXPERT_CHOICE) {
      if (chance(0.5)) o.capacity_factor = 0.5 + 1.5 * uniform();
    } else if (chance(0.3)) {
      o.capacity_factor = 0.3 + 1.2 * uniform();
      o.min_capacity = range(0, 4);
      o.drop_policy = chance(0.3) ? MOE_DROP_SCORE : MOE_DROP_POSITION;
    }
    if (chance(0.4)) {
      o.dispatch = 1;
      static const int kBlocks[] = {1, 1, 4, 16};
      o.block_size = pick(kBlocks);
    }
    o.losses = chance(0.5);
    if (chance(0.15)) {
      o.noise_std = 0.5;
      o.noise_seed = random_();
    }
    const bool poison = chance(0.15);
    if (poison || chance(0.1)) o.validation = MOE_VALIDATION_SANITIZE;
    if (!c.logits && c.dtype == MOE_DTYPE_F32 && chance(0.4)) o.exact_f32 = 1;
    c.on_device = device_inputs && chance(0.3);

    const int D = o.input_dim;
    c.weight.resize(static_cast<size_t>(E) * D);
    for (float& w : c.weight) w = static_cast<float>(normal() / std::sqrt(static_cast<double>(D)));
    if (chance(0.4)) {
      c.bias.resize(E);
      for (float& b : c.bias) b = static_cast<float>(0.3 * normal());
    }
    if (chance(0.3)) {
      c.selection_bias.resize(E);
      for (float& b : c.selection_bias) b = static_cast<float>(0.02 * normal());
    }
    const size_t n = static_cast<size_t>(c.T) * c.row();
    c.values.resize(n);
    for (int64_t t = 0; t < c.T; ++t) {
      const double spread = (c.logits ? 2.0 : 1.0) * (chance(0.2) ? 3.0 : 1.0);
      for (int i = 0; i < c.row(); ++i) c.values[t * c.row() + i] = static_cast<float>(spread * normal());
    }
    if (poison) {
      static const float kBad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                   -std::numeric_limits<float>::infinity()};
      for (int bad = 0; bad < std::max<int64_t>(1, c.T / 50); ++bad)
        c.values[static_cast<size_t>(range(0, static_cast<int>(n) - 1))] = pick(kBad);
    }
    if (c.dtype != MOE_DTYPE_F32) {
      c.bits.resize(n);
      for (size_t i = 0; i < n; ++i) {
        c.bits[i] = c.dtype == MOE_DTYPE_F16 ? to_f16(c.values[i]) : to_bf16(c.values[i]);
        c.values[i] = c.dtype == MOE_DTYPE_F16 ? moe::f16_to_f32(c.bits[i]) : moe::bf16_to_f32(c.bits[i]);
      }
    }
    const bool loose = c.dtype != MOE_DTYPE_F32 || (!c.logits && !o.exact_f32);
    c.tolerance = loose ? 1e-2 : 1e-5;
    return c;
  }

  double uniform() { return std::uniform_real_distribution<double>(0, 1)(random_); }
  double normal() { return std::normal_distribution<double>(0, 1)(random_); }
  int range(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(random_); }
  bool chance(double p) { return uniform() < p; }
  template <class T, size_t N>
  T pick(const T (&items)[N]) {
    return items[range(0, static_cast<int>(N) - 1)];
  }

 private:
  std::mt19937_64 random_;
};

// ---- running a route ----

struct Outputs {
  moe_status status = MOE_OK;
  moe_error error{};
  std::vector<int32_t> experts, per_token, counts, offsets, slots, invalid;
  std::vector<float> weights;
  moe_route_outputs raw{};
};

struct Router {
  moe_router* router = nullptr;
  moe_error error{};
  Router(const Case& c, moe_backend backend) {
    moe_router_options o = c.o;
    o.backend = backend;
    o.device = backend == MOE_BACKEND_CUDA ? MOE_DEVICE_CUDA : MOE_DEVICE_CPU;
    if (moe_router_create(&o, c.weight.data(), c.bias.empty() ? nullptr : c.bias.data(),
                          c.selection_bias.empty() ? nullptr : c.selection_bias.data(), &router, &error) != MOE_OK)
      router = nullptr;
  }
  ~Router() { moe_router_destroy(router); }
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;
};

Outputs route(moe_router* router, const Case& c, bool on_device) {
  Outputs out;
  const int64_t T = c.T;
  const int K = c.o.top_k, E = c.o.num_experts;
  out.experts.assign(static_cast<size_t>(T * K), -7);
  out.weights.assign(static_cast<size_t>(T * K), -7.0f);
  out.per_token.assign(static_cast<size_t>(T), -7);
  out.counts.assign(static_cast<size_t>(E), -7);
  out.invalid.assign(static_cast<size_t>(T), -7);
  moe_route_outputs& r = out.raw;
  r.experts = out.experts.data();
  r.weights = out.weights.data();
  r.experts_per_token = out.per_token.data();
  r.expert_counts = out.counts.data();
  r.invalid_tokens = out.invalid.data();
  if (c.o.dispatch) {
    out.offsets.assign(static_cast<size_t>(E + 1), -7);
    out.slots.assign(static_cast<size_t>(moe_router_dispatch_capacity(router, T)), -7);
    r.dispatch_offsets = out.offsets.data();
    r.dispatch_slots = out.slots.data();
    r.dispatch_capacity = static_cast<int64_t>(out.slots.size());
  }
  if (!on_device) {
    out.status = c.logits ? moe_router_route_logits(router, c.data(), c.dtype, T, &r, &out.error)
                          : moe_router_route(router, c.data(), c.dtype, T, &r, &out.error);
    return out;
  }
  moe_device_buffer* buffer = nullptr;
  out.status = moe_device_buffer_create(static_cast<int64_t>(c.bytes()), &buffer, &out.error);
  if (out.status == MOE_OK)
    out.status = moe_device_buffer_upload(buffer, 0, c.data(), static_cast<int64_t>(c.bytes()), &out.error);
  if (out.status == MOE_OK)
    out.status = moe_router_route_device(router, buffer, c.dtype, T, c.logits ? 1 : 0, &r, &out.error);
  moe_device_buffer_free(buffer);
  return out;
}

// ---- the reference in double ----

struct Reference {
  std::vector<double> key;      // [T][E], -inf where masked or invalid
  std::vector<double> score;    // [T][E]
  std::vector<double> norm;     // [T]
  std::vector<char> ambiguous_groups;  // [T] the kept groups are within the tolerance of a dropped one
};

Reference reference(const Case& c) {
  const moe_router_options& o = c.o;
  const int E = o.num_experts, D = o.input_dim;
  Reference ref;
  ref.key.assign(static_cast<size_t>(c.T) * E, 0);
  ref.score.assign(static_cast<size_t>(c.T) * E, 0);
  ref.norm.assign(static_cast<size_t>(c.T), 0);
  ref.ambiguous_groups.assign(static_cast<size_t>(c.T), 0);
  std::vector<double> u(E), s(E);
  for (int64_t t = 0; t < c.T; ++t) {
    const float* x = c.values.data() + t * c.row();
    double norm = 0;
    for (int i = 0; i < c.row(); ++i) norm += static_cast<double>(x[i]) * x[i];
    ref.norm[t] = std::sqrt(norm);
    for (int e = 0; e < E; ++e) {
      double v;
      if (c.logits) {
        v = x[e];
      } else {
        v = c.bias.empty() ? 0.0 : c.bias[e];
        for (int d = 0; d < D; ++d) v += static_cast<double>(x[d]) * c.weight[static_cast<size_t>(e) * D + d];
      }
      if (o.noise_std > 0)
        v += o.noise_std * moe::routing_normal(o.noise_seed, 0, static_cast<uint32_t>(t), static_cast<uint32_t>(e));
      u[e] = std::isfinite(v) ? v : -kInf;
    }
    if (o.scoring == MOE_SCORING_SIGMOID) {
      for (int e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-u[e]));
    } else {
      const double m = *std::max_element(u.begin(), u.end());
      double sum = 0;
      for (int e = 0; e < E; ++e) sum += m == -kInf ? 0.0 : std::exp(u[e] - m);
      for (int e = 0; e < E; ++e) s[e] = m == -kInf ? 0.0 : std::exp(u[e] - m) / sum;
    }
    double* key = ref.key.data() + t * E;
    for (int e = 0; e < E; ++e) {
      ref.score[t * E + e] = s[e];
      const double b = c.selection_bias.empty() ? 0.0 : c.selection_bias[e];
      key[e] = u[e] == -kInf ? -kInf : (o.order == MOE_ORDER_SELECT_THEN_SOFTMAX ? u[e] : s[e]) + b;
    }
    if (o.group_count > 0) {
      const int G = o.group_count, size = E / G;
      std::vector<std::pair<double, int>> groups(G);
      double largest = 0;
      for (int e = 0; e < E; ++e)
        if (std::isfinite(key[e])) largest = std::max(largest, std::fabs(key[e]));
      for (int g = 0; g < G; ++g) {
        std::vector<double> k(key + g * size, key + (g + 1) * size);
        std::sort(k.rbegin(), k.rend());
        groups[g] = {size == 1 ? k[0] : k[0] + k[1], g};
      }
      std::stable_sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      if (o.group_select < G) {
        const double kept = groups[o.group_select - 1].first, dropped = groups[o.group_select].first;
        if (kept == dropped || std::fabs(kept - dropped) <= 2 * c.tolerance * std::max(largest, 1e-30))
          ref.ambiguous_groups[t] = 1;
      }
      for (int r = o.group_select; r < G; ++r)
        for (int e = groups[r].second * size; e < (groups[r].second + 1) * size; ++e) key[e] = -kInf;
    }
  }
  return ref;
}

// ---- comparison ----

struct Verdict {
  bool pass = true;
  bool inconclusive = false;
  int near_ties = 0;  // tokens whose slots differ only at near-ties
  double weight_error = 0, loss_error = 0;
  std::string why;
  void fail(const std::string& reason) {
    if (pass) why = reason;
    pass = false;
  }
};

std::string format(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* f, ...) {
  char text[512];
  va_list args;
  va_start(args, f);
  std::vsnprintf(text, sizeof text, f, args);
  va_end(args);
  return text;
}

// Outputs that must hold whatever the numbers: the backend's outputs agree with themselves.
void check_consistency(const Case& c, const Outputs& out, Verdict& v) {
  const int64_t T = c.T;
  const int K = c.o.top_k, E = c.o.num_experts;
  std::vector<int> counts(E, 0);
  int64_t sum_k = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int k = out.per_token[t];
    sum_k += k;
    if (k < 0 || k > K) return v.fail(format("token %" PRId64 ": k_t = %d outside [0, %d]", t, k, K));
    for (int j = 0; j < K; ++j) {
      const int e = out.experts[t * K + j];
      const float w = out.weights[t * K + j];
      if (e < -1 || e >= E) return v.fail(format("token %" PRId64 " slot %d: expert %d", t, j, e));
      if (e < 0 && w != 0.0f) return v.fail(format("token %" PRId64 " slot %d: weight %g on an empty slot", t, j, w));
      if (e < 0) continue;
      if (!std::isfinite(w)) return v.fail(format("token %" PRId64 " slot %d: weight %g", t, j, w));
      ++counts[e];
      for (int i = 0; i < j; ++i)
        if (out.experts[t * K + i] == e) return v.fail(format("token %" PRId64 ": expert %d twice", t, e));
    }
  }
  for (int e = 0; e < E; ++e)
    if (counts[e] != out.counts[e]) return v.fail(format("expert %d: count %d, but %d slots hold it", e, out.counts[e], counts[e]));
  const double flops = T > 0 ? 1.0 - static_cast<double>(sum_k) / (static_cast<double>(T) * K) : 0.0;
  if (std::fabs(flops - out.raw.flop_reduction) > 1e-9) return v.fail("flop_reduction does not match k_t");
  if (c.o.dispatch) {
    const int B = c.o.block_size;
    if (out.offsets[0] != 0) return v.fail("dispatch offsets[0] != 0");
    for (int e = 0; e < E; ++e) {
      const int begin = out.offsets[e], end = out.offsets[e + 1];
      if (end - begin != (counts[e] + B - 1) / B * B) return v.fail(format("dispatch segment %d has the wrong length", e));
      int64_t previous = -1;
      for (int i = begin; i < end; ++i) {
        const int32_t slot = out.slots[i];
        if (i - begin < counts[e]) {
          if (slot <= previous || slot >= T * K || out.experts[slot] != e)
            return v.fail(format("dispatch segment %d entry %d: slot %d", e, i - begin, slot));
          previous = slot;
        } else if (slot != T * K) {
          return v.fail(format("dispatch segment %d: padding %d, not %" PRId64, e, slot, T * K));
        }
      }
    }
    if (out.raw.dispatch_length != out.offsets[E]) return v.fail("dispatch_length != offsets[E]");
  }
  for (int i = 1; i < out.raw.invalid_count; ++i)
    if (out.invalid[i] <= out.invalid[i - 1]) return v.fail("invalid tokens not ascending");
}

bool near(double a, double b, double tolerance) {
  return a == b || std::fabs(a - b) <= tolerance * std::max({std::fabs(a), std::fabs(b), 1e-6});
}

// Whether token t's k_t decision lies within the tolerance of its boundary (in the reference).
bool k_ambiguous(const Case& c, const Reference& ref, int64_t t, double batch_mean, double batch_std) {
  const moe_router_options& o = c.o;
  const int E = o.num_experts, K = o.top_k, kmin = o.min_experts;
  const double tol = c.tolerance;
  const double* key = ref.key.data() + t * E;
  const double* s = ref.score.data() + t * E;
  const auto near_integer = [&](double v) { return std::fabs(v - std::floor(v + 0.5)) <= tol * (K - kmin + 1) || std::fabs(v - std::floor(v) - 0.5) <= tol * (K - kmin + 1); };
  switch (o.strategy) {
    case MOE_STRATEGY_TOP_P: {
      std::vector<int> order(E);
      for (int e = 0; e < E; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
      double cumulative = 0;
      for (int j = 0; j < std::min(K, E); ++j) {
        cumulative += s[order[j]];
        if (std::fabs(cumulative - o.top_p) <= tol) return true;
      }
      return false;
    }
    case MOE_STRATEGY_THRESHOLD:
      for (int e = 0; e < E; ++e)
        if (std::fabs(s[e] - o.threshold) <= tol * std::max(o.threshold, 1e-6)) return true;
      return false;
    case MOE_STRATEGY_ENTROPY: {
      double h = 0;
      for (int e = 0; e < E; ++e)
        if (s[e] > 0) h -= s[e] * std::log(s[e]);
      return E > 1 && near_integer((K - kmin) * h / std::log(static_cast<double>(E)) + 0.5);
    }
    case MOE_STRATEGY_NORM: {
      if (batch_std <= 0 || !std::isfinite(ref.norm[t])) return false;
      const double z = (ref.norm[t] - batch_mean) / batch_std;
      return near_integer((K - kmin) * 0.5 * std::erfc(-z / std::sqrt(2.0)) + 0.5);
    }
    default:
      return false;
  }
}

// The tolerance band of token t's keys.
double key_band(const Case& c, const Reference& ref, int64_t t) {
  const int E = c.o.num_experts;
  double largest = 0;
  for (int e = 0; e < E; ++e)
    if (std::isfinite(ref.key[t * E + e])) largest = std::max(largest, std::fabs(ref.key[t * E + e]));
  return c.tolerance * std::max(largest, 1e-30);
}

bool tie(double a, double b, double band) { return a == b || std::fabs(a - b) <= band; }

// Whether anything upstream of capacity or expert choice is ambiguous within the tolerance: a token
// whose K-th and (K+1)-th keys, group scores or k_t decision are near-ties, or (expert choice) an
// expert whose C-th and (C+1)-th tokens, or a token whose K-th and (K+1)-th choosing experts, are.
bool upstream_ambiguity(const Case& c, const Reference& ref, double mean, double std_dev) {
  const moe_router_options& o = c.o;
  const int E = o.num_experts, K = o.top_k;
  const int64_t T = c.T;
  if (o.strategy != MOE_STRATEGY_EXPERT_CHOICE) {
    for (int64_t t = 0; t < T; ++t) {
      if (ref.ambiguous_groups[t] || k_ambiguous(c, ref, t, mean, std_dev)) return true;
      std::vector<double> keys(ref.key.begin() + t * E, ref.key.begin() + (t + 1) * E);
      std::sort(keys.rbegin(), keys.rend());
      if (K < E && tie(keys[K - 1], keys[K], key_band(c, ref, t))) return true;
    }
    return false;
  }
  const double factor = o.capacity_factor > 0 ? o.capacity_factor : 1.0;
  const int64_t C = std::min<int64_t>(T, static_cast<int64_t>(std::ceil(factor * T * K / E)));
  double largest = 0;
  for (double k : ref.key)
    if (std::isfinite(k)) largest = std::max(largest, std::fabs(k));
  const double band = c.tolerance * std::max(largest, 1e-30);
  std::vector<std::vector<double>> chosen(static_cast<size_t>(T));
  for (int e = 0; e < E; ++e) {
    std::vector<std::pair<double, int64_t>> column(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) column[t] = {ref.key[t * E + e], t};
    std::stable_sort(column.begin(), column.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    if (C < T && tie(column[C - 1].first, column[C].first, band)) return true;
    for (int64_t r = 0; r < C; ++r) chosen[column[r].second].push_back(column[r].first);
  }
  for (auto& keys : chosen) {
    if (static_cast<int>(keys.size()) <= K) continue;
    std::sort(keys.rbegin(), keys.rend());
    if (tie(keys[K - 1], keys[K], band)) return true;
  }
  return false;
}

Verdict compare(const Case& c, const Outputs& oracle, const Outputs& tested, const Outputs& again) {
  Verdict v;
  if (oracle.status != tested.status) {
    v.fail(format("status %d (%s) vs oracle %d (%s)", tested.status, tested.error.message, oracle.status,
                  oracle.error.message));
    return v;
  }
  if (oracle.status != MOE_OK) return v;  // both refused the call the same way
  const bool same_bits = tested.experts == again.experts && tested.per_token == again.per_token &&
                         tested.counts == again.counts && tested.slots == again.slots &&
                         std::memcmp(tested.weights.data(), again.weights.data(), tested.weights.size() * 4) == 0 &&
                         std::memcmp(&tested.raw.aux_loss, &again.raw.aux_loss, sizeof(double)) == 0;
  if (!same_bits) v.fail("two runs of the same call differ");
  check_consistency(c, tested, v);
  if (!v.pass) return v;

  const Reference ref = reference(c);
  double batch_mean = 0, batch_std = 0;
  {
    double sum = 0, n = 0;
    for (double x : ref.norm)
      if (std::isfinite(x)) sum += x, ++n;
    batch_mean = n > 0 ? sum / n : 0;
    for (double x : ref.norm)
      if (std::isfinite(x)) batch_std += (x - batch_mean) * (x - batch_mean);
    batch_std = n > 0 ? std::sqrt(batch_std / n) : 0;
  }
  const int64_t T = c.T;
  const int K = c.o.top_k, E = c.o.num_experts;
  const bool downstream = c.o.strategy == MOE_STRATEGY_EXPERT_CHOICE || c.o.capacity_factor > 0;
  int64_t unexplained = -1;  // the first token that differs with no near-tie of its own
  bool all_equal = true;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* a = oracle.experts.data() + t * K;
    const int32_t* b = tested.experts.data() + t * K;
    if (std::equal(a, a + K, b) && oracle.per_token[t] == tested.per_token[t]) {
      for (int j = 0; j < K; ++j) {
        const double wa = oracle.weights[t * K + j], wb = tested.weights[t * K + j];
        const double error = std::fabs(wa - wb) / std::max(std::fabs(wa), 1e-6);
        v.weight_error = std::max(v.weight_error, error);
        if (error > c.tolerance)
          v.fail(format("token %" PRId64 " slot %d: weight %.9g vs oracle %.9g", t, j, wb, wa));
      }
      continue;
    }
    all_equal = false;
    // A difference of the token's own making is a near-tie of its keys, group scores or k_t decision.
    bool explained = ref.ambiguous_groups[t] != 0;
    if (!explained && oracle.per_token[t] != tested.per_token[t])
      explained = k_ambiguous(c, ref, t, batch_mean, batch_std);
    if (!explained && oracle.per_token[t] == tested.per_token[t]) {
      const double* key = ref.key.data() + t * E;
      const double band = key_band(c, ref, t);
      explained = true;
      for (int j = 0; j < K && explained; ++j)
        explained = a[j] == b[j] || (a[j] >= 0 && b[j] >= 0 && tie(key[a[j]], key[b[j]], band));
    }
    if (explained) {
      ++v.near_ties;
    } else if (unexplained < 0) {
      unexplained = t;
    }
  }
  if (unexplained >= 0) {
    // Capacity and expert choice move tokens that have no near-tie of their own when one elsewhere
    // changed the counts; without any upstream ambiguity that cannot happen.
    if (downstream && upstream_ambiguity(c, ref, batch_mean, batch_std)) {
      v.inconclusive = true;
      return v;
    }
    const int32_t* a = oracle.experts.data() + unexplained * K;
    const int32_t* b = tested.experts.data() + unexplained * K;
    const int j = static_cast<int>(std::mismatch(a, a + K, b).first - a);
    v.fail(format("token %" PRId64 ": experts differ from the oracle beyond near-ties (slot %d: %d vs %d, k_t %d vs %d)",
                  unexplained, j, j < K ? b[j] : -1, j < K ? a[j] : -1, tested.per_token[unexplained],
                  oracle.per_token[unexplained]));
    return v;
  }
  if (!all_equal) {
    // Near-ties move counts (and, through capacity or expert choice, other tokens): nothing more to
    // compare exactly.
    v.inconclusive = downstream;
    return v;
  }
  if (tested.counts != oracle.counts) v.fail("expert counts differ");
  if (tested.raw.dropped_assignments != oracle.raw.dropped_assignments) v.fail("dropped assignments differ");
  if (c.o.dispatch && (tested.offsets != oracle.offsets || tested.slots != oracle.slots)) v.fail("dispatch differs");
  if (tested.raw.invalid_count != oracle.raw.invalid_count ||
      !std::equal(oracle.invalid.begin(), oracle.invalid.begin() + oracle.raw.invalid_count, tested.invalid.begin()))
    v.fail("invalid tokens differ");
  if (c.o.losses) {
    const double pairs[3][2] = {{oracle.raw.aux_loss, tested.raw.aux_loss},
                                {oracle.raw.z_loss, tested.raw.z_loss},
                                {oracle.raw.entropy, tested.raw.entropy}};
    for (const auto& p : pairs) {
      const double error = std::fabs(p[0] - p[1]) / std::max(std::fabs(p[0]), 1e-9);
      v.loss_error = std::max(v.loss_error, error);
      if (!near(p[0], p[1], c.tolerance)) v.fail(format("loss %.12g vs oracle %.12g", p[1], p[0]));
    }
  }
  return v;
}

moe_backend backend_named(const std::string& name) {
  for (int b = MOE_BACKEND_SCALAR; b <= MOE_BACKEND_CUDA; ++b)
    if (name == moe_backend_name(static_cast<moe_backend>(b))) return static_cast<moe_backend>(b);
  return MOE_BACKEND_AUTO;
}

int run_checks(moe_backend backend, int cases, uint64_t seed) {
  Generator generator(seed);
  int failures = 0, inconclusive = 0, near_tie_cases = 0, refused = 0;
  double weight_error[2] = {0, 0}, loss_error[2] = {0, 0};  // [f32 tolerance, 16-bit tolerance]
  int by_strategy[6] = {}, failed_by_strategy[6] = {};
  for (int i = 0; i < cases; ++i) {
    Case c = generator.next(backend == MOE_BACKEND_CUDA);
    Router oracle(c, MOE_BACKEND_SCALAR), tested(c, backend);
    if (!oracle.router || !tested.router) {
      // Both must refuse a configuration the same way (the CUDA kernels' limits aside).
      if (!oracle.router && !tested.router && oracle.error.code == tested.error.code) {
        ++refused;
        continue;
      }
      if (oracle.router && tested.error.code == MOE_E_CONFIG && std::strstr(tested.error.message, "device 'cuda':")) {
        ++refused;
        continue;
      }
      std::printf("FAIL case %d (%s): router creation: oracle %s / tested %s\n", i, describe(c).c_str(),
                  oracle.router ? "ok" : oracle.error.message, tested.router ? "ok" : tested.error.message);
      ++failures;
      continue;
    }
    const Outputs expected = route(oracle.router, c, false);
    const Outputs first = route(tested.router, c, c.on_device);
    moe_router_set_step(tested.router, 0);
    const Outputs second = route(tested.router, c, c.on_device);
    Verdict v = compare(c, expected, first, second);
    if (first.status == MOE_OK && first.raw.backend != backend)  // (device 'cuda' never falls back)
      v.fail(format("the outputs name backend %s", moe_backend_name(first.raw.backend)));
    const int loose = c.tolerance > 1e-4 ? 1 : 0;
    weight_error[loose] = std::max(weight_error[loose], v.weight_error);
    loss_error[loose] = std::max(loss_error[loose], v.loss_error);
    ++by_strategy[c.o.strategy];
    if (v.near_ties) ++near_tie_cases;
    if (v.inconclusive) ++inconclusive;
    if (!v.pass) {
      ++failures;
      ++failed_by_strategy[c.o.strategy];
      std::printf("FAIL case %d (%s): %s\n", i, describe(c).c_str(), v.why.c_str());
    }
  }
  std::printf("\nagreement of '%s' with the scalar oracle (seed %" PRIu64 "): %d cases, %d disagree, %d inconclusive "
              "(near-ties upstream of capacity/expert choice), %d with near-tie slots, %d refused alike\n",
              moe_backend_name(backend), seed, cases, failures, inconclusive, near_tie_cases, refused);
  for (int s = 0; s < 6; ++s)
    std::printf("  %-14s %4d cases, %d disagree\n", strategy_name(static_cast<moe_strategy>(s)), by_strategy[s],
                failed_by_strategy[s]);
  std::printf("  largest relative error: weights %.2e (f32, tolerance 1e-5) %.2e (f16/bf16/tf32, tolerance 1e-2); "
              "losses %.2e / %.2e\n",
              weight_error[0], weight_error[1], loss_error[0], loss_error[1]);
  return failures;
}

// ---- timings ----

struct Workload {
  const char* name;
  bool logits;
  int64_t T;
  int D, E, K;
};

// The canonical workloads of shared/workloads.json.
const Workload kWorkloads[] = {
    {"decode-olmoe", false, 8, 2048, 64, 8},      {"mixtral-prefill", false, 4096, 4096, 8, 2},
    {"olmoe-prefill", false, 4096, 2048, 64, 8},  {"qwen3-prefill", false, 2048, 4096, 128, 8},
    {"dsv3-prefill", false, 1024, 7168, 256, 8},  {"logits-64x8", true, 65536, 0, 64, 8},
    {"logits-256x8", true, 16384, 0, 256, 8},     {"logits-8x2", true, 65536, 0, 8, 2},
    {"logits-256x8-t8192", true, 8192, 0, 256, 8}, {"decode-logits-256x8", true, 64, 0, 256, 8},
};

#if defined(MOE_ROUTER_CHECK_CUDA)

bool cuda_ok(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return true;
  std::printf("CUDA error in %s: %s\n", what, cudaGetErrorString(status));
  return false;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Device-to-device copy bandwidth, counting bytes read plus bytes written (GB/s).
double copy_bandwidth() {
  const size_t bytes = size_t{512} << 20;
  void *a = nullptr, *b = nullptr;
  cudaEvent_t start, stop;
  if (!cuda_ok(cudaMalloc(&a, bytes), "cudaMalloc") || !cuda_ok(cudaMalloc(&b, bytes), "cudaMalloc")) return 0;
  cudaMemset(a, 1, bytes);
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> ms;
  for (int i = 0; i < 23; ++i) {
    cudaEventRecord(start);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float elapsed = 0;
    cudaEventElapsedTime(&elapsed, start, stop);
    if (i >= 3) ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (median(ms) * 1e-3) / 1e9;
}

struct Timing {
  std::string name, dtype;
  int64_t T;
  int D, E, K;
  double median_us = 0, p10_us = 0, p90_us = 0, bytes = 0, gbps = 0, copy_fraction = 0;
};

bool time_workload(const Workload& w, moe_dtype dtype, int iterations, double copy_gbps, int l2_bytes,
                   Timing* result) {
  moe_router_options o = moe_router_options_default();
  o.input_dim = w.logits ? 1 : w.D;
  o.num_experts = w.E;
  o.top_k = w.K;
  o.losses = w.logits ? 0 : 1;
  o.backend = MOE_BACKEND_CUDA;
  o.device = MOE_DEVICE_CUDA;
  o.profile = 1;
  std::mt19937_64 random(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> weight(static_cast<size_t>(w.E) * o.input_dim);
  for (float& v : weight) v = normal(random) / std::sqrt(static_cast<float>(o.input_dim));
  moe_router* router = nullptr;
  moe_error error{};
  if (moe_router_create(&o, weight.data(), nullptr, nullptr, &router, &error) != MOE_OK) {
    std::printf("%s: %s\n", w.name, error.message);
    return false;
  }
  const int row = w.logits ? w.E : w.D;
  const size_t elements = static_cast<size_t>(w.T) * row;
  const size_t element_bytes = dtype == MOE_DTYPE_F32 ? 4 : 2;
  const size_t input_bytes = elements * element_bytes;
  // Rotate among enough inputs that together they do not fit in L2.
  const int inputs = static_cast<int>(std::clamp<int64_t>(3LL * l2_bytes / std::max<size_t>(input_bytes, 1) + 1, 2, 16));
  std::vector<moe_device_buffer*> buffers(inputs, nullptr);
  std::vector<float> values(elements);
  std::vector<uint16_t> bits(elements);
  bool ok = true;
  for (int i = 0; i < inputs && ok; ++i) {
    for (size_t j = 0; j < elements; ++j) {
      values[j] = normal(random) * (w.logits ? 2.0f : 1.0f);
      bits[j] = to_bf16(values[j]);
    }
    ok = moe_device_buffer_create(static_cast<int64_t>(input_bytes), &buffers[i], &error) == MOE_OK &&
         moe_device_buffer_upload(buffers[i], 0, dtype == MOE_DTYPE_F32 ? static_cast<const void*>(values.data()) : bits.data(),
                                  static_cast<int64_t>(input_bytes), &error) == MOE_OK;
  }
  std::vector<int32_t> experts(static_cast<size_t>(w.T) * w.K), per_token(w.T), counts(w.E), invalid(w.T);
  std::vector<float> weights(experts.size());
  moe_route_outputs out{};
  out.experts = experts.data();
  out.weights = weights.data();
  out.experts_per_token = per_token.data();
  out.expert_counts = counts.data();
  out.invalid_tokens = invalid.data();
  std::vector<double> us;
  for (int i = 0; i < 10 + iterations && ok; ++i) {
    ok = moe_router_route_device(router, buffers[i % inputs], dtype, w.T, w.logits ? 1 : 0, &out, &error) == MOE_OK;
    moe_router_timing timing{};
    if (ok) ok = moe_router_last_timing(router, &timing, &error) == MOE_OK;
    if (ok && i >= 10) us.push_back(timing.kernels_ms * 1e3);
  }
  if (!ok) std::printf("%s: %s\n", w.name, error.message);
  for (moe_device_buffer* b : buffers) moe_device_buffer_free(b);
  moe_router_destroy(router);
  if (!ok) return false;
  std::sort(us.begin(), us.end());
  Timing& t = *result;
  t.name = w.name;
  t.dtype = dtype_name(dtype);
  t.T = w.T;
  t.D = w.D;
  t.E = w.E;
  t.K = w.K;
  t.median_us = us[us.size() / 2];
  t.p10_us = us[us.size() / 10];
  t.p90_us = us[us.size() * 9 / 10];
  // Bytes the route must move: its input, W (in the gate's type), and experts, weights and k_t.
  const double weight_bytes = w.logits ? 0.0 : static_cast<double>(w.E) * w.D * element_bytes;
  t.bytes = static_cast<double>(input_bytes) + weight_bytes + static_cast<double>(w.T) * (w.K * 8.0 + 4.0);
  t.gbps = t.bytes / (t.median_us * 1e-6) / 1e9;
  t.copy_fraction = t.gbps / copy_gbps;
  return true;
}

int run_bench(int iterations, const std::string& json) {
  int l2 = 0;
  cudaDeviceProp props{};
  if (!cuda_ok(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties")) return kExitDisagree;
  cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
  const double copy_gbps = copy_bandwidth();
  std::printf("\n%s, %d SMs, %d MB L2; device-to-device copy: %.0f GB/s (read + write)\n", props.name,
              props.multiProcessorCount, l2 >> 20, copy_gbps);
  std::printf("kernel time per route (CUDA events around the route's kernels; warm-up 10, median of %d, inputs "
              "rotated)\n", iterations);
  std::printf("%-20s %-5s %7s %5s %5s %3s %10s %10s %10s %9s %7s\n", "workload", "dtype", "T", "D", "E", "K", "median us",
              "p10 us", "p90 us", "GB/s", "% copy");
  std::vector<Timing> all;
  for (const Workload& w : kWorkloads) {
    for (moe_dtype dtype : {MOE_DTYPE_F32, MOE_DTYPE_BF16}) {
      Timing t;
      if (!time_workload(w, dtype, iterations, copy_gbps, l2, &t)) return kExitDisagree;
      std::printf("%-20s %-5s %7" PRId64 " %5d %5d %3d %10.2f %10.2f %10.2f %9.0f %6.1f%%\n", t.name.c_str(),
                  t.dtype.c_str(), t.T, t.D, t.E, t.K, t.median_us, t.p10_us, t.p90_us, t.gbps, 100 * t.copy_fraction);
      all.push_back(t);
    }
  }
  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"device\": \"" << props.name << "\", \"copy_gbps\": " << copy_gbps << ", \"workloads\": [\n";
    for (size_t i = 0; i < all.size(); ++i) {
      const Timing& t = all[i];
      f << "  {\"name\": \"" << t.name << "\", \"dtype\": \"" << t.dtype << "\", \"T\": " << t.T << ", \"D\": " << t.D
        << ", \"E\": " << t.E << ", \"K\": " << t.K << ", \"median_us\": " << t.median_us << ", \"p10_us\": " << t.p10_us
        << ", \"p90_us\": " << t.p90_us << ", \"bytes\": " << t.bytes << ", \"gbps\": " << t.gbps << "}"
        << (i + 1 < all.size() ? ",\n" : "\n");
    }
    f << "]}\n";
  }
  return 0;
}

#endif  // MOE_ROUTER_CHECK_CUDA

int usage() {
  std::fprintf(stderr,
               "usage: moe_router_check [--backend cuda|scalar|avx2|avx512|neon] [--cases N] [--seed S]\n"
               "                        [--no-check] [--no-bench] [--iterations N] [--json FILE]\n");
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend_name = "cuda", json;
  int cases = 400, iterations = 200;
  uint64_t seed = 1;
  bool check = true, bench = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--backend" && has_value) {
      backend_name = argv[++i];
    } else if (a == "--cases" && has_value) {
      cases = std::atoi(argv[++i]);
    } else if (a == "--seed" && has_value) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--iterations" && has_value) {
      iterations = std::max(10, std::atoi(argv[++i]));
    } else if (a == "--json" && has_value) {
      json = argv[++i];
    } else if (a == "--no-check") {
      check = false;
    } else if (a == "--no-bench") {
      bench = false;
    } else {
      return usage();
    }
  }
  const moe_backend backend = backend_named(backend_name);
  if (backend == MOE_BACKEND_AUTO) return usage();
  std::printf("dynamic-moe-router %s, checking backend '%s'\n", moe_router_version(), backend_name.c_str());
  if (!moe_backend_available(backend)) {
    if (backend == MOE_BACKEND_CUDA)
      std::printf("no CUDA device: this machine or binary cannot run the CUDA backend (no GPU or driver, or "
                  "built without CUDA); nothing checked\n");
    else
      std::printf("backend '%s' is not available on this machine; nothing checked\n", backend_name.c_str());
    return kExitUnavailable;
  }
  int failures = 0;
  if (check) failures = run_checks(backend, cases, seed);
#if defined(MOE_ROUTER_CHECK_CUDA)
  if (bench && backend == MOE_BACKEND_CUDA) {
    const int status = run_bench(iterations, json);
    if (status != 0) return status;
  }
#else
  (void)iterations;
  (void)json;
  if (bench && backend == MOE_BACKEND_CUDA) std::printf("timings need a build with CUDA\n");
#endif
  return failures > 0 ? kExitDisagree : 0;
}
