// moe_router_time: milliseconds per canonical workload (../shared/workloads.json) for each CPU backend,
// over the C ABI. Median of many runs; the input rotates over copies that together exceed the last-
// level cache, so no run finds its input already cached. Prints the floor of each workload:
// max(FLOPs / GEMM ceiling, bytes read and written / read bandwidth), from the ceilings given.
// Next to wall-clock time it prints the process CPU time per call: on a machine shared with other
// work, a preempted thread inflates the wall time but not the CPU time (with --threads 1, CPU time is
// the kernels' own cost).
//
//   moe_router_time [--workloads path/to/workloads.json] [--backends scalar,avx2,avx512]
//                   [--dtypes f32,bf16] [--threads N] [--runs N] [--only name]
//                   [--gflops 150] [--gbps 28] [--copies N]
// --copies N rotates over N copies of the input instead (--copies 2: a shape small enough for the
// caches is measured in them, where the kernels' own cost shows; bench/NOTES.md's "in cache").
// Gate workloads route hidden states with losses on (scores, top-k, renormalize, aux loss, as the
// workloads file describes them); logits workloads route logits. Both are top-k with softmax.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <time.h>

#include "moe_router.h"

namespace {

struct Workload {
  std::string name;
  bool logits = false;
  int64_t T = 0;
  int D = 0, E = 0, K = 0;
};

// Reads the "gate" and "logits" arrays of workloads.json (flat objects of a name and integers).
std::vector<Workload> read_workloads(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::stringstream buffer;
  buffer << file.rdbuf();
  const std::string text = buffer.str();
  const size_t logits_at = text.find("\"logits\"");
  const auto number = [&](size_t from, size_t to, const char* key) -> int64_t {
    const std::string quoted = std::string("\"") + key + "\"";
    const size_t at = text.find(quoted, from);
    if (at == std::string::npos || at > to) return 0;
    return std::strtoll(text.c_str() + text.find(':', at) + 1, nullptr, 10);
  };
  std::vector<Workload> out;
  for (size_t at = text.find("\"name\""); at != std::string::npos; at = text.find("\"name\"", at + 1)) {
    const size_t end = text.find('}', at);
    const size_t open = text.find('"', text.find(':', at)) + 1;
    Workload w;
    w.name = text.substr(open, text.find('"', open) - open);
    w.logits = logits_at != std::string::npos && at > logits_at;
    w.T = number(at, end, "T");
    w.D = static_cast<int>(number(at, end, "D"));
    w.E = static_cast<int>(number(at, end, "E"));
    w.K = static_cast<int>(number(at, end, "k"));
    out.push_back(w);
  }
  return out;
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

moe_backend backend_named(const std::string& name) {
  for (moe_backend b : {MOE_BACKEND_SCALAR, MOE_BACKEND_AVX2, MOE_BACKEND_AVX512, MOE_BACKEND_NEON, MOE_BACKEND_CUDA})
    if (name == moe_backend_name(b)) return b;
  return MOE_BACKEND_AUTO;
}

double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

struct Rng {
  uint64_t state = 0x2545f4914f6cdd1dull;
  float normal() {  // sum of 4 uniforms, scaled: cheap and close enough for timing data
    float sum = 0;
    for (int i = 0; i < 4; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      sum += static_cast<float>(state >> 40) * 0x1.0p-24f;
    }
    return (sum - 2.0f) * 1.7320508f;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string workloads_path = "../shared/workloads.json", backends = "avx2,avx512", dtypes = "f32,bf16", only;
  int threads = 0, runs = 31, copies_given = 0;
  double gflops = 150, gbps = 28;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--workloads") workloads_path = value;
    else if (flag == "--backends") backends = value;
    else if (flag == "--dtypes") dtypes = value;
    else if (flag == "--threads") threads = std::atoi(value.c_str());
    else if (flag == "--runs") runs = std::atoi(value.c_str());
    else if (flag == "--only") only = value;
    else if (flag == "--gflops") gflops = std::atof(value.c_str());
    else if (flag == "--gbps") gbps = std::atof(value.c_str());
    else if (flag == "--copies") copies_given = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }

  std::printf("%-16s %-5s %-7s %9s %9s %9s %9s %9s %7s\n", "workload", "dtype", "backend", "median_ms", "p10_ms",
              "p90_ms", "cpu_ms", "floor_ms", "/floor");
  Rng rng;
  for (const Workload& w : read_workloads(workloads_path)) {
    if (!only.empty() && w.name != only) continue;
    const int row = w.logits ? w.E : w.D;
    std::vector<float> weight(static_cast<size_t>(w.E) * std::max(w.D, 1));
    for (float& x : weight) x = rng.normal() / std::sqrt(static_cast<float>(std::max(w.D, 1)));
    for (const std::string& dtype_name : split(dtypes)) {
      const moe_dtype dtype = dtype_name == "bf16" ? MOE_DTYPE_BF16 : MOE_DTYPE_F32;
      const size_t element = dtype == MOE_DTYPE_F32 ? 4 : 2;
      const size_t input_bytes = static_cast<size_t>(w.T) * row * element;
      // Copies of the input, unless given together at least 96 MiB (beyond any last-level cache here).
      const size_t copies = copies_given > 0 ? static_cast<size_t>(copies_given)
                            : std::max<size_t>(2, (size_t{96} << 20) / std::max<size_t>(input_bytes, 1) + 1);
      std::vector<std::vector<uint8_t>> inputs(std::min<size_t>(copies, 64));
      for (auto& input : inputs) {
        input.resize(input_bytes);
        for (int64_t i = 0; i < w.T * row; ++i) {
          const float v = rng.normal() * (w.logits ? 2.0f : 1.0f);
          if (dtype == MOE_DTYPE_F32) std::memcpy(input.data() + 4 * i, &v, 4);
          else {
            const uint16_t h = to_bf16(v);
            std::memcpy(input.data() + 2 * i, &h, 2);
          }
        }
      }
      const double flops = w.logits ? 0.0 : 2.0 * w.T * w.D * w.E;
      const double bytes = input_bytes + (w.logits ? 0.0 : 4.0 * w.E * w.D) + 8.0 * w.T * w.K + 4.0 * w.T;
      const double floor_ms = std::max(flops / (gflops * 1e9), bytes / (gbps * 1e9)) * 1e3;

      for (const std::string& backend_name : split(backends)) {
        const moe_backend backend = backend_named(backend_name);
        if (!moe_backend_available(backend)) continue;
        moe_router_options o = moe_router_options_default();
        o.input_dim = w.logits ? 1 : w.D;
        o.num_experts = w.E;
        o.top_k = w.K;
        o.losses = w.logits ? 0 : 1;
        o.backend = backend;
        o.threads = threads;
        moe_router* router = nullptr;
        moe_error err{};
        std::vector<float> gate(static_cast<size_t>(w.E) * o.input_dim, 0.01f);
        if (moe_router_create(&o, w.logits ? gate.data() : weight.data(), nullptr, nullptr, &router, &err) != MOE_OK) {
          std::fprintf(stderr, "%s: %s\n", w.name.c_str(), err.message);
          return 1;
        }
        std::vector<int32_t> experts(w.T * w.K), per_token(w.T), counts(w.E), invalid(w.T);
        std::vector<float> weights(w.T * w.K);
        moe_route_outputs out{};
        out.experts = experts.data();
        out.weights = weights.data();
        out.experts_per_token = per_token.data();
        out.expert_counts = counts.data();
        out.invalid_tokens = invalid.data();
        std::vector<double> ms, cpu;
        const int warmup = 3;
        for (int r = 0; r < runs + warmup; ++r) {
          const void* input = inputs[r % inputs.size()].data();
          const double cpu_start = cpu_ms();
          const auto start = std::chrono::steady_clock::now();
          const moe_status status = w.logits ? moe_router_route_logits(router, input, dtype, w.T, &out, &err)
                                             : moe_router_route(router, input, dtype, w.T, &out, &err);
          const auto stop = std::chrono::steady_clock::now();
          const double cpu_stop = cpu_ms();
          if (status != MOE_OK) {
            std::fprintf(stderr, "%s: %s\n", w.name.c_str(), err.message);
            return 1;
          }
          if (r >= warmup) {
            ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
            cpu.push_back(cpu_stop - cpu_start);
          }
        }
        moe_router_destroy(router);
        std::sort(ms.begin(), ms.end());
        std::sort(cpu.begin(), cpu.end());
        const double median = ms[ms.size() / 2];
        std::printf("%-16s %-5s %-7s %9.4f %9.4f %9.4f %9.4f %9.4f %7.2f\n", w.name.c_str(), dtype_name.c_str(),
                    backend_name.c_str(), median, ms[ms.size() / 10], ms[ms.size() * 9 / 10], cpu[cpu.size() / 2],
                    floor_ms, median / floor_ms);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
