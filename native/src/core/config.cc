#include "config.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>

#include "failure.h"

namespace moe {

namespace {

// Every broken option of one options struct, a line each, so that a user fixes them in one round.
// The message reaches the caller through moe_error's 512 bytes; lines that would not fit there are
// counted instead of cut.
class Check {
 public:
  // Notes "option WHAT must be EXPECTED (got ACTUAL)" unless ok.
  void operator()(bool ok, const char* what, const char* expected, double actual) {
    if (!ok) add("option %s must be %s (got %g)", what, expected, actual);
  }

  void add(const char* format, ...) __attribute__((format(printf, 2, 3))) {
    char line[256];
    va_list args;
    va_start(args, format);
    std::vsnprintf(line, sizeof line, format, args);
    va_end(args);
    if (text_.size() + std::strlen(line) + kRoomForCount < sizeof(moe_error::message)) {
      if (!text_.empty()) text_ += '\n';
      text_ += line;
    } else {
      ++untold_;
    }
  }

  // Throws Failure(MOE_E_CONFIG) listing them, if there are any.
  void raise() const {
    if (text_.empty() && untold_ == 0) return;
    std::string message = text_;
    if (untold_ > 0) message += "\n(and " + std::to_string(untold_) + " more)";
    throw Failure(MOE_E_CONFIG, message);
  }

 private:
  static constexpr size_t kRoomForCount = 24;  // "\n(and N more)" and the NUL
  std::string text_;
  int untold_ = 0;
};

}  // namespace

Config resolve_config(const moe_router_options& given) {
  Config c;
  c.options = given;
  moe_router_options& o = c.options;
  Check check;

  check(o.input_dim >= 1, "inputDim", "an integer >= 1", o.input_dim);
  // A bound that is another option is that option only when it is right, else the most it could be,
  // so that one mistake (topK -1) is not also blamed on an option left at its default (minExperts 1).
  const bool experts_ok = o.num_experts >= 1 && o.num_experts <= 65536;
  check(experts_ok, "numExperts", "an integer in [1, 65536]", o.num_experts);
  const int experts_bound = experts_ok ? o.num_experts : 65536;
  const bool top_k_ok = o.top_k >= 1 && o.top_k <= experts_bound;
  check(top_k_ok, "topK", "an integer in [1, numExperts]", o.top_k);
  check(o.min_experts >= 1 && o.min_experts <= (top_k_ok ? o.top_k : experts_bound), "minExperts",
        "an integer in [1, topK]", o.min_experts);
  check(o.strategy >= MOE_STRATEGY_TOP_K && o.strategy <= MOE_STRATEGY_EXPERT_CHOICE, "strategy",
        "a known strategy", o.strategy);
  check(o.scoring == MOE_SCORING_SOFTMAX || o.scoring == MOE_SCORING_SIGMOID, "scoring",
        "softmax or sigmoid", o.scoring);
  check(o.order == MOE_ORDER_SOFTMAX_THEN_SELECT || o.order == MOE_ORDER_SELECT_THEN_SOFTMAX,
        "order", "a known order", o.order);
  check(o.top_p > 0 && o.top_p <= 1, "topP", "in (0, 1]", o.top_p);
  check(std::isfinite(o.threshold), "threshold", "finite", o.threshold);
  check(std::isfinite(o.scale), "scale", "finite", o.scale);
  check(o.normalize >= -1 && o.normalize <= 1, "normalize", "-1 (default), 0 or 1", o.normalize);
  check(o.bias_update_rate >= 0 && std::isfinite(o.bias_update_rate), "biasUpdateRate",
        "finite and >= 0", o.bias_update_rate);
  check(o.capacity_factor >= 0 && std::isfinite(o.capacity_factor), "capacityFactor",
        "finite and >= 0", o.capacity_factor);
  check(o.min_capacity >= 0, "minCapacity", "an integer >= 0", o.min_capacity);
  check(o.drop_policy == MOE_DROP_POSITION || o.drop_policy == MOE_DROP_SCORE, "dropPolicy",
        "position or score", o.drop_policy);
  check(o.noise_std >= 0 && std::isfinite(o.noise_std), "noise.std", "finite and >= 0",
        o.noise_std);
  check(o.block_size >= 1, "dispatch.blockSize", "an integer >= 1", o.block_size);
  check(o.validation == MOE_VALIDATION_REJECT || o.validation == MOE_VALIDATION_SANITIZE,
        "validation", "reject or sanitize", o.validation);
  check(o.backend >= MOE_BACKEND_AUTO && o.backend <= MOE_BACKEND_CUDA, "backend",
        "a known backend", o.backend);
  check(o.device >= MOE_DEVICE_AUTO && o.device <= MOE_DEVICE_CUDA, "device", "a known device",
        o.device);
  check(o.threads >= 0 && o.threads <= 1024, "threads", "an integer in [0, 1024]", o.threads);
  check(o.exact_f32 == 0 || o.exact_f32 == 1, "exactF32", "0 or 1", o.exact_f32);
  check(o.profile == 0 || o.profile == 1, "profile", "0 or 1", o.profile);

  if (o.group_count != 0 || o.group_select != 0) {
    const bool count_ok = o.group_count >= 1 && o.num_experts % o.group_count == 0;
    check(count_ok, "groups.count", "a divisor of numExperts", o.group_count);
    const bool select_ok = o.group_select >= 1 && o.group_select <= o.group_count;
    check(select_ok, "groups.select", "an integer in [1, groups.count]", o.group_select);
    if (count_ok) c.group_size = o.num_experts / o.group_count;
    if (count_ok && select_ok)
      check(static_cast<int64_t>(o.group_select) * c.group_size >= o.top_k, "groups.select",
            "large enough that groups.select * numExperts / groups.count >= topK", o.group_select);
    if (o.strategy == MOE_STRATEGY_EXPERT_CHOICE)
      check.add("option groups cannot be combined with strategy expert-choice");
  }
  check.raise();

  c.D = o.input_dim;
  c.E = o.num_experts;
  c.K = o.top_k;
  c.kmin = o.min_experts;
  if (o.normalize == -1) o.normalize = o.scoring == MOE_SCORING_SOFTMAX ? 1 : 0;
  c.weights_are_softmax = o.order == MOE_ORDER_SELECT_THEN_SOFTMAX;
  c.normalize = o.normalize == 1 || c.weights_are_softmax;
  c.weights_from_logits = c.weights_are_softmax || (o.scoring == MOE_SCORING_SOFTMAX && c.normalize);
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
