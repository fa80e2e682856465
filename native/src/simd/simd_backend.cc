// The SIMD backends' driver, compiled for the baseline CPU: it packs the gate weight, cuts a batch
// into fixed-size chunks of token blocks, runs them on the thread pool through one ISA's kernels
// (simd_backend.h) and combines the per-chunk sums in chunk order. Chunk boundaries depend on the
// batch's shape (T, E, D) only, never on the thread count, so every result is bit-identical for any
// `threads`.
#include "simd_backend.h"

#include <algorithm>
#include <cstring>

#include "../core/failure.h"
#include "../core/half.h"
#include "../core/philox.h"
#include "../core/scratch.h"
#include "../core/thread_pool.h"
#include "simd.h"

namespace moe {
namespace simd {

namespace {

// Tokens per block: a multiple of every tile height (3, 4, 6, 8), small enough that a block's
// logits stay in L1/L2 between the gate and the rest of the stage.
constexpr int kBlockTokens = 48;
// Chunks per call at most, and the per-chunk [E] loss sums at most (in doubles), over all chunks.
constexpr int64_t kMaxChunks = 256;
constexpr int64_t kMaxChunkSums = int64_t{1} << 18;
// A call runs on the pool only above this much work (multiply-adds; a logits entry counts as
// kLogitsWork); below it, waking the workers costs more than they save.
constexpr int64_t kParallelWork = int64_t{1} << 18;
constexpr int64_t kLogitsWork = 16;
// A chunk holds at least this much work, whatever T: each chunk costs two atomic operations on lines
// the threads share (~0.1-0.2 us each on this VM), which chunks of ~1 us (logits-8x2 had 228 of 288
// tokens) made a fifth of the time.
constexpr int64_t kMinChunkWork = int64_t{1} << 17;
// Logits that are widened (bf16, f16) or noised into scratch go in blocks of about this many bytes
// of f32, a whole number of gate blocks: with E = 8 a gate block is three groups of tokens, whose
// per-block costs made bf16 logits slower than f32 (measured flat from 32 to 128 KiB; NOTES item 16).
constexpr int64_t kWidenedBlockBytes = int64_t{1} << 15;

const Kernels* kernels_for(moe_backend kind) {
#if defined(__x86_64__)
  static const Kernels avx2_kernels = {MOE_BACKEND_AVX2, avx2::kGateShape, avx2::gate, avx2::widen,
                                       avx2::norm, avx2::rows};
  static const Kernels avx512_kernels = {MOE_BACKEND_AVX512, avx512::kGateShape, avx512::gate,
                                         avx512::widen, avx512::norm, avx512::rows};
  if (kind == MOE_BACKEND_AVX2) return &avx2_kernels;
  if (kind == MOE_BACKEND_AVX512) return &avx512_kernels;
#elif defined(__aarch64__)
  static const Kernels neon_kernels = {MOE_BACKEND_NEON, neon::kGateShape, neon::gate, neon::widen,
                                       neon::norm, neon::rows};
  if (kind == MOE_BACKEND_NEON) return &neon_kernels;
#endif
  (void)kind;
  return nullptr;
}

// What one thread works in; grown to the largest call seen, then reused.
struct ThreadScratch {
  std::vector<float> u;         // a block's logits: [kBlockTokens or logits_block_tokens][u stride]
  std::vector<float> widened;   // GateBlock::widened
  std::vector<uint32_t> row;    // RowBlock::scratch
  std::vector<ScratchLine> loss;  // RowBlock::loss_scratch
  std::vector<double> group_score;
  std::vector<int32_t> group_order, order;
  std::vector<int64_t> counts, counts_valid, k_histogram;  // fused sums (integers: order-free)

  int64_t host_bytes() const {
    return capacity_bytes(u, widened, row, loss, group_score, group_order, order, counts, counts_valid,
                          k_histogram);
  }
};

class SimdBackend final : public Backend {
 public:
  SimdBackend(const Kernels& kernels, int threads)
      : k_(kernels), threads_(ThreadPool::resolve_threads(threads)), scratch_(threads_) {}

  moe_backend kind() const override { return k_.kind; }
  bool fuses_assignment() const override { return true; }

  int64_t host_bytes() const override {
    int64_t bytes = capacity_bytes(scratch_, chunk_p_sum_, job_slot_);
    for (const ThreadScratch& s : scratch_) bytes += s.host_bytes();
    return bytes;
  }

  std::vector<float> pack_weight(const float* weight, int experts, int dim) const override {
    const GateShape& g = k_.shape;
    if (dot(experts)) {
      // Groups of dot_experts experts, each [ceil(D / lanes)][dot_experts][lanes], zero past D and E.
      const int ne = g.dot_experts, lanes = g.lanes;
      const int64_t chunks = (dim + lanes - 1) / lanes;
      std::vector<float> packed(static_cast<size_t>(gate_stride(experts) * chunks * lanes), 0.0f);
      for (int e = 0; e < experts; ++e)
        for (int d = 0; d < dim; ++d)
          packed[((e / ne * chunks + d / lanes) * ne + e % ne) * lanes + d % lanes] =
              weight[static_cast<int64_t>(e) * dim + d];
      return packed;
    }
    // Panels of panel_experts experts, each [D][panel_experts], zero past E.
    const int nr = g.panel_experts;
    std::vector<float> packed(static_cast<size_t>(gate_stride(experts)) * dim, 0.0f);
    for (int e = 0; e < experts; ++e) {
      float* panel = packed.data() + static_cast<int64_t>(e / nr) * dim * nr + e % nr;
      for (int d = 0; d < dim; ++d) panel[static_cast<int64_t>(d) * nr] = weight[static_cast<int64_t>(e) * dim + d];
    }
    return packed;
  }

  void token_stage(const StageParams& params, const TokenStage& out) override {
    // Norm with the batch's statistics, fused: every token's norm first (finish_block then leaves
    // them), and the assignment's parameters with the batch's centre and spread, as the core's
    // k_params_for takes them from the same norms.
    StageParams p = params;
    KParams batch_k;
    if (norms_first(p)) {
      batch_norms(p, out);
      batch_k = *p.k_params;
      norm_statistics(out.norm, p.tokens, &batch_k.norm_mean, &batch_k.norm_std);
      p.k_params = &batch_k;
    }
    const Config& c = *p.config;
    const int E = c.E;
    const int64_t T = p.tokens;

    // Fixed-size chunks of whole blocks.
    const int64_t blocks = (T + kBlockTokens - 1) / kBlockTokens;
    const int64_t max_chunks = std::clamp<int64_t>(kMaxChunkSums / E, 1, kMaxChunks);
    const int64_t token_work = E * (p.is_logits ? kLogitsWork : c.D);
    const int64_t min_blocks = (kMinChunkWork + token_work * kBlockTokens - 1) / (token_work * kBlockTokens);
    const int64_t chunk_tokens = std::max((blocks + max_chunks - 1) / max_chunks, min_blocks) * kBlockTokens;
    const int64_t chunks = (T + chunk_tokens - 1) / chunk_tokens;
    const int64_t work = T * token_work;
    const int64_t panels = gate_stride(E) / k_.shape.panel_experts;
    // A batch of one block whose gate spans several panels (decoding: few tokens, large E x D) is
    // split by panels instead: first every thread computes whole panels of u, then the caller runs
    // the rest of the stage. Each u is computed by the same instructions either way.
    const bool by_panels = !p.is_logits && !dot(E) && chunks == 1 && panels > 1;
    const int threads = static_cast<int>(std::min<int64_t>(work < kParallelWork ? 1 : threads_, by_panels ? panels : chunks));

    const int64_t u_words = p.is_logits ? logits_block_tokens(E) * padded(E) : kBlockTokens * std::max(gate_stride(E), padded(E));
    const int64_t row_words = kRowArrays * padded(E) + kSlotArrays * padded(c.K);
    for (int slot = 0; slot < threads; ++slot) {
      ThreadScratch& s = scratch_[slot];
      grown(s.u, u_words);
      grown(s.row, row_words);
      if (p.want_losses) grown(s.loss, kLossLines * padded(E));
      if (!p.is_logits)
        grown(s.widened, kBlockTokens * k_.shape.kc);
      if (p.fused_out) {
        zeroed(s.counts, E);
        zeroed(s.counts_valid, E);
        zeroed(s.k_histogram, c.K + 1);
      }
    }
    double* chunk_p_sum = p.want_losses ? grown(chunk_p_sum_, chunks * E) : nullptr;
    if (chunk_p_sum) std::fill(chunk_p_sum, chunk_p_sum + chunks * E, 0.0);

    if (by_panels && threads > 1) {
      // Each thread a run of consecutive panels, so that the rows left after the whole tiles go two
      // panels at a time (rows_across_panels): one panel a job gave them half the FMA chains the core
      // needs (AVX2 decode-olmoe, 4 panels: bench/NOTES.md item 38). Each thread writes its own u,
      // and the caller copies the other threads' columns into its u afterwards: written straight into
      // the caller's u, every row's lines went back and forth between the cores twice a call (a line
      // where two threads' columns meet, and the lines the caller read last call), and each thread's
      // half of AVX2 decode-olmoe's gate took 14.1 us instead of 12.6 (item 63).
      const auto job_panel = [&](int64_t job) { return static_cast<int>(job * panels / threads); };
      int* job_slot = grown(job_slot_, threads);
      auto gate_panels = [&](int64_t job, int slot) {
        GateBlock g = gate_block(p, 0, static_cast<int>(T), scratch_[slot].u.data(), scratch_[slot]);
        g.panel_begin = job_panel(job);
        g.panel_end = job_panel(job + 1);
        k_.gate(g);
        job_slot[job] = slot;
      };
      ThreadPool::instance().run(threads, threads, gate_panels);
      float* u = scratch_[0].u.data();
      const int64_t stride = gate_stride(E), width = k_.shape.panel_experts;
      for (int job = 0; job < threads; ++job) {
        if (job_slot[job] == 0) continue;
        const float* from = scratch_[job_slot[job]].u.data();
        const int64_t column = job_panel(job) * width, columns = (job_panel(job + 1) - job_panel(job)) * width;
        for (int64_t r = 0; r < T; ++r)
          std::memcpy(u + r * stride + column, from + r * stride + column, columns * sizeof(float));
      }
      finish_block(p, out, 0, static_cast<int>(T), u, stride, scratch_[0], chunk_p_sum);
    } else {
      auto body = [&](int64_t chunk, int slot) {
        const int64_t first = chunk * chunk_tokens;
        run_chunk(p, out, first, std::min(T, first + chunk_tokens), scratch_[slot],
                  chunk_p_sum ? chunk_p_sum + chunk * E : nullptr);
      };
      ThreadPool::instance().run(chunks, threads, body);
    }

    // Combine: loss sums in chunk order, integer counts in any order.
    if (chunk_p_sum) {
      std::fill(out.p_sum, out.p_sum + E, 0.0);
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        for (int e = 0; e < E; ++e) out.p_sum[e] += chunk_p_sum[chunk * E + e];
    }
    if (p.fused_out) {
      for (int slot = 0; slot < threads; ++slot) {
        const ThreadScratch& s = scratch_[slot];
        for (int e = 0; e < E; ++e) {
          out.counts[e] += s.counts[e];
          out.counts_valid[e] += s.counts_valid[e];
        }
        for (int k = 0; k <= c.K; ++k) out.k_histogram[k] += s.k_histogram[k];
      }
    }
  }

 private:
  // The dot kernel for small E, unless whole panels fit E exactly (measured: the panel kernel wins
  // there, the dot kernel wherever panels would be padded).
  bool dot(int experts) const {
    return experts <= k_.shape.dot_max_experts && experts % k_.shape.panel_experts != 0;
  }

  // Whether token_stage computes every norm before the rest of the stage (norm_from_batch, fused).
  static bool norms_first(const StageParams& p) { return p.norm_from_batch && p.fused_out; }

  // The norms of the input rows of tokens [first, end) into out.norm.
  void row_norms(const StageParams& p, const TokenStage& out, int64_t first, int64_t end) const {
    const int64_t row_length = p.is_logits ? p.config->E : p.config->D;
    const size_t row_bytes = static_cast<size_t>(row_length) * dtype_size(p.dtype);
    const char* in = static_cast<const char*>(p.input);
    for (int64_t t = first; t < end; ++t) out.norm[t] = k_.norm(in + t * row_bytes, p.dtype, row_length);
  }

  // Every token's norm into out.norm, in chunks on the pool.
  void batch_norms(const StageParams& p, const TokenStage& out) const {
    const int64_t T = p.tokens, row_length = p.is_logits ? p.config->E : p.config->D;
    constexpr int64_t kNormTokens = 256;
    const int threads = T * row_length < kParallelWork ? 1 : threads_;
    auto body = [&](int64_t chunk, int) {
      row_norms(p, out, chunk * kNormTokens, std::min(T, (chunk + 1) * kNormTokens));
    };
    ThreadPool::instance().run((T + kNormTokens - 1) / kNormTokens, threads, body);
  }

  // Tokens per block of widened logits.
  static int64_t logits_block_tokens(int experts) {
    return std::max<int64_t>(1, kWidenedBlockBytes / (kBlockTokens * 4 * padded(experts))) * kBlockTokens;
  }

  // Row stride of a block's gate logits: the packed expert count.
  int64_t gate_stride(int experts) const {
    const int unit = dot(experts) ? k_.shape.dot_experts : k_.shape.panel_experts;
    return (experts + unit - 1) / unit * unit;
  }

  // The gate of tokens [first, first + rows) over every panel, into u.
  GateBlock gate_block(const StageParams& p, int64_t first, int rows, float* u, ThreadScratch& s) const {
    const Config& c = *p.config;
    GateBlock g;
    g.input = static_cast<const char*>(p.input) + first * c.D * dtype_size(p.dtype);
    g.dtype = p.dtype;
    g.rows = rows;
    g.dim = c.D;
    g.experts = c.E;
    g.weight = p.packed_weight;
    g.bias = p.bias;
    g.dot = dot(c.E);
    g.panel_begin = 0;
    g.panel_end = static_cast<int>(gate_stride(c.E) / k_.shape.panel_experts);
    g.u = u;
    g.u_stride = gate_stride(c.E);
    g.widened = s.widened.data();
    return g;
  }

  // Tokens [first, end) of one chunk, block by block (f32 logits: as one block): their logits, then
  // the rest of the stage.
  void run_chunk(const StageParams& p, const TokenStage& out, int64_t first, int64_t end,
                 ThreadScratch& s, double* p_sum) const {
    const Config& c = *p.config;
    const int E = c.E;
    const size_t row_bytes = static_cast<size_t>(p.is_logits ? E : c.D) * dtype_size(p.dtype);
    if (p.is_logits && p.dtype == MOE_DTYPE_F32 && !p.noise) {
      // The logits are u as they are: the whole chunk in one block (nothing to keep in cache between
      // a gate and the rest, and the per-block setup is paid once).
      finish_block(p, out, first, static_cast<int>(end - first),
                   reinterpret_cast<const float*>(static_cast<const char*>(p.input) + first * row_bytes), E, s, p_sum);
      return;
    }
    const int64_t block = p.is_logits ? logits_block_tokens(E) : kBlockTokens;
    for (int64_t t0 = first; t0 < end; t0 += block) {
      const int rows = static_cast<int>(std::min<int64_t>(block, end - t0));
      const char* in = static_cast<const char*>(p.input) + t0 * row_bytes;
      if (!p.is_logits) {
        GateBlock g = gate_block(p, t0, rows, s.u.data(), s);
        // Past this chunk's end too: a thread takes the chunks of its region of the pool in order.
        g.rows_after = static_cast<int>(std::min<int64_t>(kBlockTokens, p.tokens - t0 - rows));
        k_.gate(g);
        finish_block(p, out, t0, rows, s.u.data(), gate_stride(E), s, p_sum);
      } else {  // logits to widen, or to add noise to: copied, rows back to back
        k_.widen(in, p.dtype, static_cast<int64_t>(rows) * E, s.u.data());
        finish_block(p, out, t0, rows, s.u.data(), E, s, p_sum);
      }
    }
  }

  // The rest of the stage for a block whose logits are u (s.u when the stage may add noise to them).
  void finish_block(const StageParams& p, const TokenStage& out, int64_t first, int rows, const float* u,
                    int64_t u_stride, ThreadScratch& s, double* p_sum) const {
    const Config& c = *p.config;
    const int64_t row_length = p.is_logits ? c.E : c.D;
    const size_t row_bytes = static_cast<size_t>(row_length) * dtype_size(p.dtype);
    const char* in = static_cast<const char*>(p.input) + first * row_bytes;
    if (p.noise) add_noise(p, first, rows, s.u.data(), u_stride);
    if (p.want_norm && !norms_first(p)) row_norms(p, out, first, first + rows);
    RowBlock rb;
    rb.config = &c;
    rb.params = &p;
    rb.out = &out;
    rb.first = first;
    rb.rows = rows;
    rb.u = u;
    rb.u_stride = u_stride;
    rb.u_is_input = static_cast<const void*>(u) == in;  // f32 logits, read in place
    rb.sums.p_sum = p_sum;
    if (p.fused_out) {
      rb.sums.counts = s.counts.data();
      rb.sums.counts_valid = s.counts_valid.data();
      rb.sums.k_histogram = s.k_histogram.data();
    }
    rb.scratch = s.row.data();
    rb.loss_scratch = s.loss.data();
    rb.group_score = &s.group_score;
    rb.group_order = &s.group_order;
    rb.order = &s.order;
    k_.rows(rb);
  }

  // u += std * n(step, t, e), exactly as the oracle adds it (docs/semantics.md §8).
  static void add_noise(const StageParams& p, int64_t first, int rows, float* u, int64_t stride) {
    const Config& c = *p.config;
    const float std_dev = static_cast<float>(c.options.noise_std);
    for (int r = 0; r < rows; ++r)
      for (int e = 0; e < c.E; ++e)
        u[r * stride + e] += std_dev * routing_normal(c.options.noise_seed, p.step,
                                                      static_cast<uint32_t>(first + r),
                                                      static_cast<uint32_t>(e));
  }

  const Kernels& k_;
  const int threads_;
  std::vector<ThreadScratch> scratch_;  // one per thread slot
  std::vector<double> chunk_p_sum_;     // [chunks][E]
  std::vector<int> job_slot_;           // the slot that ran each job of a gate split by panels
};

}  // namespace

}  // namespace simd

std::unique_ptr<Backend> make_simd_backend(moe_backend kind, int threads) {
  const simd::Kernels* kernels = simd::kernels_for(kind);
  if (!kernels || !simd_supported(kind))
    fail(MOE_E_BACKEND, "backend '%s' is not available on this machine or in this build",
         moe_backend_name(kind));
  return std::make_unique<simd::SimdBackend>(*kernels, threads);
}

}  // namespace moe
