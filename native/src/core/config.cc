#include "config.h"

#include <cmath>

#include "failure.h"

namespace moe {

namespace {

void require(bool ok, const char* what, const char* expected, double actual) {
  if (!ok) fail(MOE_E_CONFIG, "option %s must be %s (got %g)", what, expected, actual);
}

}  // namespace

Config resolve_config(const moe_router_options& given) {
  Config c;
  c.options = given;
  moe_router_options& o = c.options;

  require(o.input_dim >= 1, "inputDim", "an integer >= 1", o.input_dim);
  require(o.num_experts >= 1 && o.num_experts <= 65536, "numExperts", "an integer in [1, 65536]",
          o.num_experts);
  require(o.top_k >= 1 && o.top_k <= o.num_experts, "topK", "an integer in [1, numExperts]", o.top_k);
  require(o.min_experts >= 1 && o.min_experts <= o.top_k, "minExperts", "an integer in [1, topK]",
          o.min_experts);
  require(o.strategy >= MOE_STRATEGY_TOP_K && o.strategy <= MOE_STRATEGY_EXPERT_CHOICE, "strategy",
          "a known strategy", o.strategy);
  require(o.scoring == MOE_SCORING_SOFTMAX || o.scoring == MOE_SCORING_SIGMOID, "scoring",
          "softmax or sigmoid", o.scoring);
  require(o.order == MOE_ORDER_SOFTMAX_THEN_SELECT || o.order == MOE_ORDER_SELECT_THEN_SOFTMAX,
          "order", "a known order", o.order);
  require(o.top_p > 0 && o.top_p <= 1, "topP", "in (0, 1]", o.top_p);
  require(std::isfinite(o.threshold), "threshold", "finite", o.threshold);
  require(std::isfinite(o.scale), "scale", "finite", o.scale);
  require(o.normalize >= -1 && o.normalize <= 1, "normalize", "-1 (default), 0 or 1", o.normalize);
  require(o.bias_update_rate >= 0 && std::isfinite(o.bias_update_rate), "biasUpdateRate",
          "finite and >= 0", o.bias_update_rate);
  require(o.capacity_factor >= 0 && std::isfinite(o.capacity_factor), "capacityFactor",
          "finite and >= 0", o.capacity_factor);
  require(o.min_capacity >= 0, "minCapacity", "an integer >= 0", o.min_capacity);
  require(o.drop_policy == MOE_DROP_POSITION || o.drop_policy == MOE_DROP_SCORE, "dropPolicy",
          "position or score", o.drop_policy);
  require(o.noise_std >= 0 && std::isfinite(o.noise_std), "noise.std", "finite and >= 0",
          o.noise_std);
  require(o.block_size >= 1, "dispatch.blockSize", "an integer >= 1", o.block_size);
  require(o.validation == MOE_VALIDATION_REJECT || o.validation == MOE_VALIDATION_SANITIZE,
          "validation", "reject or sanitize", o.validation);
  require(o.backend >= MOE_BACKEND_AUTO && o.backend <= MOE_BACKEND_CUDA, "backend",
          "a known backend", o.backend);
  require(o.device >= MOE_DEVICE_AUTO && o.device <= MOE_DEVICE_CUDA, "device", "a known device",
          o.device);
  require(o.threads >= 0 && o.threads <= 1024, "threads", "an integer in [0, 1024]", o.threads);
  require(o.exact_f32 == 0 || o.exact_f32 == 1, "exactF32", "0 or 1", o.exact_f32);
  require(o.profile == 0 || o.profile == 1, "profile", "0 or 1", o.profile);

  if (o.group_count != 0 || o.group_select != 0) {
    require(o.group_count >= 1 && o.num_experts % o.group_count == 0, "groups.count",
            "a divisor of numExperts", o.group_count);
    require(o.group_select >= 1 && o.group_select <= o.group_count, "groups.select",
            "an integer in [1, groups.count]", o.group_select);
    c.group_size = o.num_experts / o.group_count;
    require(static_cast<int64_t>(o.group_select) * c.group_size >= o.top_k, "groups.select",
            "large enough that groups.select * numExperts / groups.count >= topK",
            o.group_select);
    if (o.strategy == MOE_STRATEGY_EXPERT_CHOICE)
      fail(MOE_E_CONFIG, "option groups cannot be combined with strategy expert-choice");
  }

  c.D = o.input_dim;
  c.E = o.num_experts;
  c.K = o.top_k;
  c.kmin = o.min_experts;
  if (o.normalize == -1) o.normalize = o.scoring == MOE_SCORING_SOFTMAX ? 1 : 0;
  c.weights_are_softmax = o.order == MOE_ORDER_SELECT_THEN_SOFTMAX;
  c.normalize = o.normalize == 1 || c.weights_are_softmax;
  c.expert_choice = o.strategy == MOE_STRATEGY_EXPERT_CHOICE;
  if (c.expert_choice && o.capacity_factor == 0) o.capacity_factor = 1;
  c.capacity = !c.expert_choice && o.capacity_factor > 0;
  return c;
}

int64_t capacity_per_expert(const Config& c, int64_t tokens) {
  const double raw = std::ceil(c.options.capacity_factor * static_cast<double>(tokens) * c.K / c.E);
  const int64_t capacity = static_cast<int64_t>(raw);
  if (c.expert_choice) return capacity < tokens ? capacity : tokens;
  return capacity > c.options.min_capacity ? capacity : c.options.min_capacity;
}

}  // namespace moe
