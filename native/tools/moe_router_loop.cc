// moe_router_loop: one routing option's cost on given logits, over the C ABI, with a hash of its
// outputs. A loop of `reps` calls of moe_router_route_logits on the same T x E standard-normal logits
// (seeded: every build routes the same batch), so the input stays in cache where it fits: the
// kernels' own cost, and the hash says whether two builds route alike. bench/NOTES.md calls it `lgo`.
//
//   moe_router_loop T E K reps mode [threads=1] [backend=0]
//
// Prints: [dropped N] backend median MS min MS NS/token hash EXPERTS_WEIGHTS DISPATCH.
// backend: 0 auto, 1 scalar, 2 avx2, 3 avx512, 4 neon (moe_backend). LGO_SPIKES=1 in the environment
// makes every 16th token periodic (experts 0 and 1 far above the rest, expert 2 below), a batch with
// a period of the bands' sampling stride (bench/NOTES.md item 100).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "moe_router.h"

namespace {

// The modes: routing options on top of the defaults (top-k, softmax, normalized).
const char* const kModes[] = {
    "0 default",
    "1 scoring sigmoid",
    "2 DeepSeek-V3: sigmoid, selection bias, groups 8/4, normalized, scale 2.5",
    "3 normalize false",
    "4 top-p 0.6",
    "5 dispatch",
    "6 sigmoid, selection bias",
    "7 threshold 0.05",
    "8 capacity 1.25",
    "9 select-then-softmax",
    "10 losses",
    "11 capacity 1",
    "12 capacity 0.5",
    "13 capacity 1, drop by score",
    "14 DeepSeek-V2: groups 8/3, normalize false, scale 16",
    "15 selection bias (softmax)",
    "16 expert choice",
    "17 entropy, min experts 2",
    "18 norm, min experts 2 (batch statistics)",
    "19 norm, min experts 2, calibrated",
};
constexpr int kModeCount = sizeof kModes / sizeof kModes[0];

int fail(const moe_error& err) {
  std::fprintf(stderr, "%s\n", err.message);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int mode = argc > 5 ? std::atoi(argv[5]) : -1;
  if (argc < 6 || mode < 0 || mode >= kModeCount) {
    std::fprintf(stderr, "usage: moe_router_loop T E K reps mode [threads=1] [backend=0]\nmodes:\n");
    for (const char* m : kModes) std::fprintf(stderr, "  %s\n", m);
    return 2;
  }
  const int64_t T = std::atoll(argv[1]);
  const int E = std::atoi(argv[2]), K = std::atoi(argv[3]), reps = std::max(1, std::atoi(argv[4]));
  moe_router_options o = moe_router_options_default();
  o.input_dim = 16;  // (logits are routed; the gate weight is never read)
  o.num_experts = E;
  o.top_k = K;
  o.threads = argc > 6 ? std::atoi(argv[6]) : 1;
  o.backend = static_cast<moe_backend>(argc > 7 ? std::atoi(argv[7]) : 0);
  std::mt19937 g(42);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> bias(static_cast<size_t>(E));
  for (float& b : bias) b = 0.1f * normal(g);
  bool use_bias = false;
  switch (mode) {
    case 1: o.scoring = MOE_SCORING_SIGMOID; break;
    case 2:
      o.scoring = MOE_SCORING_SIGMOID;
      use_bias = true;
      o.group_count = 8;
      o.group_select = 4;
      o.normalize = 1;
      o.scale = 2.5;
      break;
    case 3: o.normalize = 0; break;
    case 4: o.strategy = MOE_STRATEGY_TOP_P; o.top_p = 0.6; break;
    case 5: o.dispatch = 1; break;
    case 6: o.scoring = MOE_SCORING_SIGMOID; use_bias = true; break;
    case 7: o.strategy = MOE_STRATEGY_THRESHOLD; o.threshold = 0.05; break;
    case 8: o.capacity_factor = 1.25; break;
    case 9: o.order = MOE_ORDER_SELECT_THEN_SOFTMAX; break;
    case 10: o.losses = 1; break;
    case 11: o.capacity_factor = 1.0; break;
    case 12: o.capacity_factor = 0.5; break;
    case 13: o.capacity_factor = 1.0; o.drop_policy = MOE_DROP_SCORE; break;
    case 14: o.group_count = 8; o.group_select = 3; o.normalize = 0; o.scale = 16; break;
    case 15: use_bias = true; break;
    case 16: o.strategy = MOE_STRATEGY_EXPERT_CHOICE; break;
    case 17: o.strategy = MOE_STRATEGY_ENTROPY; o.min_experts = 2; break;
    case 18: case 19: o.strategy = MOE_STRATEGY_NORM; o.min_experts = 2; break;
  }
  const std::vector<float> weight(static_cast<size_t>(E) * o.input_dim, 0.f);
  moe_router* r = nullptr;
  moe_error err;
  if (moe_router_create(&o, weight.data(), nullptr, use_bias ? bias.data() : nullptr, &r, &err) != MOE_OK)
    return fail(err);
  std::vector<float> x(static_cast<size_t>(T) * E);
  for (float& v : x) v = normal(g);
  if (std::getenv("LGO_SPIKES"))
    for (int64_t t = 0; t < T; t += 16) {
      x[t * E] = 12;
      if (E > 1) x[t * E + 1] = 9;
      if (E > 2) x[t * E + 2] = -12;
    }
  if (mode == 19) {
    double param, mean;
    if (moe_router_calibrate(r, x.data(), MOE_DTYPE_F32, T, 1, 0.5 * (2 + K), &param, &mean, &err) != MOE_OK)
      return fail(err);
  }
  std::vector<int32_t> experts(static_cast<size_t>(T) * K), per_token(static_cast<size_t>(T)), counts(E),
      offsets(E + 1);
  std::vector<float> weights(static_cast<size_t>(T) * K);
  const int64_t capacity = moe_router_dispatch_capacity(r, T);
  std::vector<int32_t> slots(static_cast<size_t>(std::max<int64_t>(capacity, 1)));
  moe_route_outputs out{};
  out.experts = experts.data();
  out.weights = weights.data();
  out.experts_per_token = per_token.data();
  out.expert_counts = counts.data();
  if (o.dispatch) {
    out.dispatch_offsets = offsets.data();
    out.dispatch_slots = slots.data();
    out.dispatch_capacity = capacity;
  }
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (moe_router_route_logits(r, x.data(), MOE_DTYPE_F32, T, &out, &err) != MOE_OK) return fail(err);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  uint64_t h[2], routed[2], dispatched[2] = {0, 0};
  moe_hash128(experts.data(), experts.size() * sizeof(int32_t), 0, h);
  moe_hash128(weights.data(), weights.size() * sizeof(float), h[0], routed);
  if (o.dispatch) moe_hash128(slots.data(), out.dispatch_length * sizeof(int32_t), routed[0], dispatched);
  if (o.capacity_factor > 0) std::printf("dropped %lld  ", static_cast<long long>(out.dropped_assignments));
  std::printf("%s median %.4f ms min %.4f  %.2f ns/token  hash %016llx %016llx\n", moe_backend_name(out.backend),
              ms[ms.size() / 2], ms[0], ms[ms.size() / 2] * 1e6 / static_cast<double>(T),
              static_cast<unsigned long long>(routed[0]), static_cast<unsigned long long>(dispatched[0]));
  moe_router_destroy(r);
  return 0;
}
