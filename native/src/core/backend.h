// The seam between the shared routing logic (core/) and the kernels of one backend.
//
// A route runs in two stages:
//  1. the token stage (a backend's kernels): for every token, its gate logits u, scores s, selection
//     keys, group mask and its K best candidates in key order, plus the per-token quantities the
//     strategies and losses need. This is where all the O(T·D·E) and O(T·E) work is.
//  2. the assignment stage (core/assign.cc, shared): experts per token, expert choice, capacity,
//     weights, counts, dispatch and losses, all O(T·K) or O(T·E) bookkeeping on stage 1's results.
//     A backend may run the per-token part of it (k_t, experts, weights, counts) inside stage 1, on
//     the same shared code, so that the common call makes one pass over the tokens (fused_out below).
// A backend whose memory is not the host's (CUDA) may run both stages itself and keep the results
// until the router has checked them (run_route / write_route below).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "config.h"
#include "moe_router.h"

namespace moe {

struct KParams;
class Workspace;

// What one token stage is asked to compute.
struct StageParams {
  const Config* config = nullptr;
  const float* packed_weight = nullptr;  // the backend's own packing of W
  const float* bias = nullptr;           // [E] gate bias or nullptr
  const float* selection_bias = nullptr; // [E] current selection bias (zeros when none was given)
  const void* input = nullptr;           // [T, D] hidden states, or [T, E] logits
  bool input_on_device = false;          // input is a CUDA device address (CUDA backend only)
  moe_dtype dtype = MOE_DTYPE_F32;
  int64_t tokens = 0;
  bool is_logits = false;
  bool noise = false;       // add std * n(step, t, e) to u
  uint64_t step = 0;
  bool want_norm = false;       // per-token L2 norm of the input row (strategy norm)
  bool want_top_scores = false; // per-token K largest unmasked scores (strategy threshold)
  bool want_score_entropy = false;  // per-token H(s) (strategy entropy)
  bool want_losses = false;     // per-token logsumexp(u), H(p) and the sum of p over valid tokens
  bool want_full = false;       // the whole [T, E] key, s and u matrices (expert choice)
  // With want_full: the keys are the scores s but where u = -inf (key -inf, s 0), as without a
  // selection bias in softmax-then-select order; the s matrix is then absent (TokenStage::full_score
  // null) and not written.
  bool scores_are_keys = false;
  // With want_full: u is the input itself (f32 logits on the host, without noise; a non-finite entry
  // stands for the -inf of a sanitized one), so the u matrix is absent (TokenStage::full_logit null)
  // and not written, and the assignment reads u from the input.
  bool logits_in_input() const {
    return want_full && is_logits && dtype == MOE_DTYPE_F32 && !noise && !input_on_device;
  }
  // Fused assignment, only for a backend that fuses_assignment(), on token-choice calls without
  // capacity or with dropPolicy 'position', whose k_t needs nothing but the token itself and k_params
  // (or, with norm_from_batch, the batch's norms): the token stage also runs assign_token for every
  // token, writing k_t, experts and weights into fused_out, and fills TokenStage::counts,
  // counts_valid and k_histogram; capacity's drops follow in assign. The candidate, top_scores and
  // score_entropy buffers are then absent.
  const KParams* k_params = nullptr;
  moe_route_outputs* fused_out = nullptr;
  // Norm strategy, not calibrated: its centre and spread are the batch's (norm_statistics). Fused,
  // the backend computes every token's norm first and takes them from those.
  bool norm_from_batch = false;
};

// Where the token stage writes. The router owns and sizes these buffers.
struct TokenStage {
  int32_t* candidate_expert = nullptr;  // [T*K] the K best experts in key order
  float* candidate_score = nullptr;     // [T*K] their s
  float* candidate_logit = nullptr;     // [T*K] their u (-inf for a sanitized entry)
  float* top_scores = nullptr;          // [T*K] want_top_scores: K largest s among unmasked experts
  double* score_entropy = nullptr;      // [T] want_score_entropy: -sum s ln s
  double* norm = nullptr;               // [T] want_norm: ||input row||_2
  uint8_t* invalid = nullptr;           // [T] 1 when the token has a non-finite logit
  double* logsumexp = nullptr;          // [T] want_losses (valid tokens)
  double* loss_entropy = nullptr;       // [T] want_losses: H(p) (valid tokens)
  double* p_sum = nullptr;              // [E] want_losses: sum over valid tokens of p, fixed order
  float* full_key = nullptr;            // [T*E] want_full
  float* full_score = nullptr;          // [T*E] want_full, unless scores_are_keys
  float* full_logit = nullptr;          // [T*E] want_full, unless logits_in_input()
  int64_t* counts = nullptr;            // [E] fused: assignments per expert, every token
  int64_t* counts_valid = nullptr;      // [E] fused: the same over valid tokens
  int64_t* k_histogram = nullptr;       // [K+1] fused: tokens per k_t
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual moe_backend kind() const = 0;
  // Packs the gate weight W [E, D] into the layout this backend's gate kernel reads.
  virtual std::vector<float> pack_weight(const float* weight, int experts, int dim) const = 0;
  // Runs the token stage for all p.tokens tokens. In reject mode an invalid token is only flagged;
  // the rest of its outputs may be left unwritten.
  virtual void token_stage(const StageParams& p, const TokenStage& out) = 0;
  // Whether token_stage can run the fused assignment (StageParams::fused_out).
  virtual bool fuses_assignment() const { return false; }


  // Both stages in the backend (CUDA): runs the whole route of p (p.tokens > 0) and keeps the outputs
  // until write_route. Fills ws.stage().invalid and ws.counts_before, as token_stage + assign would,
  // and writes nothing the caller sees. `batch_norm`: strategy norm takes its statistics from this
  // batch. Returns false when this call needs the host assignment stage (token_stage + assign then).
  virtual bool run_route(const StageParams& p, const KParams& k, bool batch_norm, Workspace& ws) {
    (void)p, (void)k, (void)batch_norm, (void)ws;
    return false;
  }
  // Writes the outputs of the last successful run_route into out. Cannot fail.
  virtual void write_route(moe_route_outputs* out) { (void)out; }
  // The host memory its scratch holds (bytes), grown to the largest call so far; each backend lists
  // its buffers, so one it adds goes into that list too.
  virtual int64_t host_bytes() const { return 0; }
  // Device timings of the last call, when the router's options ask for them (CUDA).
  virtual bool timing(moe_router_timing* out) const {
    (void)out;
    return false;
  }
};

// Backends compiled into this binary that can run on this machine.
bool backend_available(moe_backend kind);
// Backends compiled into this binary.
bool backend_compiled(moe_backend kind);
// The backend AUTO resolves to for a device choice.
moe_backend resolve_backend(moe_backend asked, moe_device device);
// Creates a backend; throws Failure(MOE_E_BACKEND) when it is not available.
std::unique_ptr<Backend> make_backend(moe_backend kind, int threads);

}  // namespace moe
