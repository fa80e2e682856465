/*
 * moe_router.h — the C ABI of the dynamic-moe-router engine.
 *
 * This header is the one seam of the engine: the Node-API addon, the standalone C++ tools, the fuzzers
 * and any other language call exactly these functions. Plain C: no N-API, no STL, no exceptions cross it.
 *
 * Semantics of every computation are defined in docs/semantics.md.
 *
 * Conventions
 *  - Every tensor is row-major and contiguous. Sizes are in elements, not bytes.
 *  - Every function returns a moe_status. On failure it fills *err (when err is not NULL) with the same
 *    code and a readable message naming the argument, what was expected and what was found, and it
 *    writes nothing into caller outputs, with one exception: a route that fails with MOE_E_NONFINITE
 *    may have written experts, weights and experts_per_token (contents unspecified), because the fast
 *    backends assign each token while they compute its logits, before the batch is known to be clean.
 *  - A moe_router is safe to call from several threads: calls on one router are serialized internally.
 *    Destroying a router while another thread is inside a call on it is the caller's error.
 */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MOE_API __declspec(dllexport)
#else
#define MOE_API __attribute__((visibility("default")))
#endif

/* Result of every call. The names match the RouterError codes of the JavaScript API. */
typedef enum moe_status {
  MOE_OK = 0,
  MOE_E_SHAPE = 1,      /* a size or length does not match */
  MOE_E_DTYPE = 2,      /* an element type is not accepted */
  MOE_E_NONFINITE = 3,  /* NaN or infinity in the input under validation 'reject' */
  MOE_E_CONFIG = 4,     /* an option is out of range or options conflict */
  MOE_E_BACKEND = 5,    /* the asked-for backend or device is not available */
  MOE_E_CUDA = 6,       /* a CUDA call failed */
  MOE_E_DISPOSED = 7,   /* the router was destroyed (used by bindings that keep a handle) */
  MOE_E_INTERNAL = 8    /* a bug or an allocation failure inside the engine */
} moe_status;

/* Filled by a failing call. */
typedef struct moe_error {
  moe_status code;
  char message[512]; /* NUL-terminated */
} moe_error;

/* Element type of hidden states and logits. f16 and bf16 are passed as raw 16-bit patterns. */
typedef enum moe_dtype { MOE_DTYPE_F32 = 0, MOE_DTYPE_F16 = 1, MOE_DTYPE_BF16 = 2 } moe_dtype;

typedef enum moe_strategy {
  MOE_STRATEGY_TOP_K = 0,
  MOE_STRATEGY_TOP_P = 1,
  MOE_STRATEGY_THRESHOLD = 2,
  MOE_STRATEGY_ENTROPY = 3,
  MOE_STRATEGY_NORM = 4,
  MOE_STRATEGY_EXPERT_CHOICE = 5
} moe_strategy;

typedef enum moe_scoring { MOE_SCORING_SOFTMAX = 0, MOE_SCORING_SIGMOID = 1 } moe_scoring;

typedef enum moe_order {
  MOE_ORDER_SOFTMAX_THEN_SELECT = 0,
  MOE_ORDER_SELECT_THEN_SOFTMAX = 1
} moe_order;

typedef enum moe_drop_policy { MOE_DROP_POSITION = 0, MOE_DROP_SCORE = 1 } moe_drop_policy;

typedef enum moe_validation { MOE_VALIDATION_REJECT = 0, MOE_VALIDATION_SANITIZE = 1 } moe_validation;

/* Which kernels run. AUTO picks the best one this machine supports (CUDA when usable, else the widest
 * SIMD, else scalar); any other value forces that backend or fails with MOE_E_BACKEND. */
typedef enum moe_backend {
  MOE_BACKEND_AUTO = 0,
  MOE_BACKEND_SCALAR = 1,
  MOE_BACKEND_AVX2 = 2,
  MOE_BACKEND_AVX512 = 3,
  MOE_BACKEND_NEON = 4,
  MOE_BACKEND_CUDA = 5
} moe_backend;

/* Where the router may run. CPU excludes CUDA from AUTO; CUDA requires a usable device. */
typedef enum moe_device { MOE_DEVICE_AUTO = 0, MOE_DEVICE_CPU = 1, MOE_DEVICE_CUDA = 2 } moe_device;

/* Router options. Start from moe_router_options_default() and change what you need. */
typedef struct moe_router_options {
  int32_t input_dim;          /* D, >= 1 */
  int32_t num_experts;        /* E, 1 .. 65536 */
  int32_t top_k;              /* K, 1 .. E: the most experts a token may get */
  int32_t min_experts;        /* kmin, 1 .. K (default 1) */
  moe_strategy strategy;      /* default TOP_K */
  double top_p;               /* TOP_P: 0 < top_p <= 1 (default 0.9) */
  double threshold;           /* THRESHOLD: finite (default 0.1) */
  moe_scoring scoring;        /* default SOFTMAX */
  moe_order order;            /* default SOFTMAX_THEN_SELECT */
  int32_t normalize;          /* -1: default (on for softmax, off for sigmoid), 0: off, 1: on */
  double scale;               /* multiplies the weights (default 1) */
  int32_t group_count;        /* G: 0 = no group-limited routing; else E % G == 0 */
  int32_t group_select;       /* g: 1 .. G, with g * E / G >= K */
  double bias_update_rate;    /* gamma >= 0: aux-loss-free bias update after every route (default 0) */
  double capacity_factor;     /* 0 = dropless; > 0 enables capacity (expert-choice: default 1) */
  int32_t min_capacity;       /* >= 0 (default 4) */
  moe_drop_policy drop_policy;/* default POSITION */
  double noise_std;           /* 0 = no noise (default) */
  uint64_t noise_seed;        /* Philox key */
  int32_t dispatch;           /* 1: fill the dispatch layout */
  int32_t block_size;         /* >= 1: pad every expert segment to a multiple (1 = no padding) */
  int32_t losses;             /* 1: compute aux_loss, z_loss, entropy */
  moe_validation validation;  /* default REJECT */
  moe_backend backend;        /* default AUTO */
  moe_device device;          /* default AUTO */
  int32_t threads;            /* 0 = one per core; 1 = the calling thread only */
  int32_t exact_f32;          /* CUDA, f32 hidden states: 0 (default) = the gate product on TF32
                                 tensor cores (agreement with the oracle as for f16/bf16 input);
                                 1 = f32 FMA (agreement as for f32 input). f16/bf16 input always uses
                                 tensor cores, with W rounded to the input's type. CPU backends ignore it. */
  int32_t profile;            /* CUDA: 1 = time each call's device work (moe_router_last_timing) */
} moe_router_options;

/* Where one route call writes its results. Every array is owned by the caller and must have at least the
 * length given; a NULL optional array means "not wanted". Scalars are written by the call. */
typedef struct moe_route_outputs {
  int32_t *experts;            /* [T*K] expert of slot (t, j), -1 when unused or dropped */
  float *weights;              /* [T*K] weight of slot (t, j), 0 when unused or dropped */
  int32_t *experts_per_token;  /* [T] k_t chosen by the strategy */
  int32_t *expert_counts;      /* [E] surviving assignments per expert */
  int32_t *dispatch_offsets;   /* [E+1] optional: segment starts in dispatch_slots (needs dispatch) */
  int32_t *dispatch_slots;     /* [dispatch_capacity] optional: flat slots t*K + j, padding = T*K */
  int64_t dispatch_capacity;   /* length of dispatch_slots; moe_router_dispatch_capacity() is enough */
  int32_t *invalid_tokens;     /* [T] optional: tokens with a non-finite logit (sanitize) */

  int64_t dispatch_length;     /* written: number of entries of dispatch_slots used */
  int32_t invalid_count;       /* written: number of entries of invalid_tokens used */
  int64_t dropped_assignments; /* written: assignments removed by capacity / the expert-choice cap */
  double aux_loss;             /* written when options.losses */
  double z_loss;               /* written when options.losses */
  double entropy;              /* written when options.losses */
  double flop_reduction;       /* written: 1 - sum(k_t) / (T*K) */
  moe_backend backend;         /* written: the backend that ran this call (a CUDA router's call that
                                  fell back: the CPU backend; see moe_router_last_fallback) */
} moe_route_outputs;

/* Cumulative statistics over every route call since creation. */
typedef struct moe_router_stats {
  int64_t tokens;
  int64_t calls;
  int64_t assignments;          /* sum of k_t */
  int64_t dropped_assignments;
  double mean_experts_per_token;
  double flop_reduction;
  double load_balance_score;    /* 1 / (E * sum(u_e^2)), u the utilization; 1 before any assignment */
} moe_router_stats;

typedef struct moe_router moe_router;

/* Version of the engine, "MAJOR.MINOR.PATCH". */
MOE_API const char *moe_router_version(void);

/* Options with every default filled in (dimensions left 0). */
MOE_API moe_router_options moe_router_options_default(void);

/* Name of a backend ("scalar", "avx2", "avx512", "neon", "cuda") or "unknown". */
MOE_API const char *moe_backend_name(moe_backend backend);

/* Whether a backend can run on this machine in this build (AUTO: always 1). */
MOE_API int moe_backend_available(moe_backend backend);

/* Whether this binary was built with a backend, whether or not this machine can run it (a binary built
 * with CUDA on a machine without a GPU: compiled 1, available 0). */
MOE_API int moe_backend_compiled(moe_backend backend);

/* Creates a router. weight is [E, D] f32 (nn.Linear layout); bias [E] and selection_bias [E] are
 * optional (NULL). All three are copied (and the weight packed) before the call returns. Invalid
 * options: MOE_E_CONFIG, whose message names every invalid option, a line each. */
MOE_API moe_status moe_router_create(const moe_router_options *options, const float *weight,
                                     const float *bias, const float *selection_bias,
                                     moe_router **out, moe_error *err);

/* Frees the router. NULL is ignored. */
MOE_API void moe_router_destroy(moe_router *router);

/* The host memory the router holds, in bytes: its packed weight, statistics and the scratch its calls
 * grew (to the largest batch so far; it never shrinks). Measured at creation and when a route or
 * calibrate call ends, so a binding can tell its garbage collector what the router costs. */
MOE_API int64_t moe_router_host_bytes(const moe_router *router);

/* The backend that ran the router's most recent call (before any call: the one chosen at creation;
 * never AUTO). A CUDA router whose call fell back to the CPU (moe_router_last_fallback) reports the CPU
 * backend until a call runs on CUDA again. */
MOE_API moe_backend moe_router_backend(const moe_router *router);

/* 1 when the router's most recent call (or its creation, before any call) fell back from CUDA to the
 * CPU because a CUDA call failed; *reason (when not NULL) then gets MOE_E_CUDA and the CUDA error.
 * Only routers with device AUTO and backend AUTO fall back; the others fail with MOE_E_CUDA. */
MOE_API int moe_router_last_fallback(const moe_router *router, moe_error *reason);

/* Device timings of the most recent call of a CUDA router created with options.profile = 1. */
typedef struct moe_router_timing {
  double kernels_ms; /* from the first kernel's start to the last kernel's end */
  double total_ms;   /* from the first copy of the input to the last copy of the results */
} moe_router_timing;
MOE_API moe_status moe_router_last_timing(const moe_router *router, moe_router_timing *out,
                                          moe_error *err);

/* The options in force (defaults resolved). */
MOE_API void moe_router_get_options(const moe_router *router, moe_router_options *out);

/* Length of dispatch_slots that is always enough for `tokens` tokens with this router's options. */
MOE_API int64_t moe_router_dispatch_capacity(const moe_router *router, int64_t tokens);

/* Routes `tokens` rows of hidden states [tokens, D] of type dtype. */
MOE_API moe_status moe_router_route(moe_router *router, const void *hidden, moe_dtype dtype,
                                    int64_t tokens, moe_route_outputs *out, moe_error *err);

/* Routes `tokens` rows of gate logits [tokens, E] of type dtype (the gate is skipped). */
MOE_API moe_status moe_router_route_logits(moe_router *router, const void *logits, moe_dtype dtype,
                                           int64_t tokens, moe_route_outputs *out, moe_error *err);

/* Device memory that keeps inputs on the GPU between calls (the first visible CUDA device). Without a
 * usable device every call fails with MOE_E_BACKEND. */
typedef struct moe_device_buffer moe_device_buffer;
MOE_API moe_status moe_device_buffer_create(int64_t bytes, moe_device_buffer **out, moe_error *err);
/* Copies `bytes` from host memory to the buffer at byte `offset`, or back. */
MOE_API moe_status moe_device_buffer_upload(moe_device_buffer *buffer, int64_t offset, const void *src,
                                            int64_t bytes, moe_error *err);
MOE_API moe_status moe_device_buffer_download(const moe_device_buffer *buffer, int64_t offset,
                                              void *dst, int64_t bytes, moe_error *err);
MOE_API int64_t moe_device_buffer_size(const moe_device_buffer *buffer);
/* The buffer's device address, for other CUDA code of this process. */
MOE_API void *moe_device_buffer_pointer(const moe_device_buffer *buffer);
/* Frees the buffer. NULL is ignored. */
MOE_API void moe_device_buffer_free(moe_device_buffer *buffer);

/* Routes `tokens` rows of hidden states (is_logits 0) or logits (1) that live in a device buffer, from
 * its start. The outputs are host arrays, as for moe_router_route. A router running on the CPU reads
 * the rows back to the host first. */
MOE_API moe_status moe_router_route_device(moe_router *router, const moe_device_buffer *input,
                                           moe_dtype dtype, int64_t tokens, int is_logits,
                                           moe_route_outputs *out, moe_error *err);

/* Sets the strategy's parameter (top_p, threshold, or the norm centre) so that the mean k_t over the
 * sample is within 0.05 of mean_experts. The sample is hidden states, or logits when is_logits is 1.
 * Writes the parameter chosen and the mean k_t it gives. */
MOE_API moe_status moe_router_calibrate(moe_router *router, const void *sample, moe_dtype dtype,
                                        int64_t tokens, int is_logits, double mean_experts,
                                        double *parameter_out, double *mean_experts_out,
                                        moe_error *err);

/* Aux-loss-free bias update from counts [E] (needs bias_update_rate > 0). */
MOE_API moe_status moe_router_update_bias(moe_router *router, const int32_t *counts,
                                          moe_error *err);

/* Copies the current selection bias [E] into out. */
MOE_API void moe_router_get_selection_bias(const moe_router *router, float *out);

/* The noise step the next route will use; set it to replay a call. */
MOE_API uint64_t moe_router_get_step(const moe_router *router);
MOE_API void moe_router_set_step(moe_router *router, uint64_t step);

/* Cumulative statistics. Each array is optional (NULL):
 *   expert_utilization [E]  each expert's share of all surviving assignments;
 *   expert_assignments [E]  each expert's surviving assignments;
 *   k_histogram [K+1]       how many tokens got k = 0 .. K experts from the strategy. */
MOE_API void moe_router_get_stats(const moe_router *router, moe_router_stats *out,
                                  double *expert_utilization, int64_t *expert_assignments,
                                  int64_t *k_histogram);

/* A fast 128-bit hash of `bytes` bytes (for cache keys; not cryptographic): every byte and the length
 * reach the result. */
MOE_API void moe_hash128(const void *data, size_t bytes, uint64_t seed, uint64_t out[2]);

/* Forgets the cumulative statistics. */
MOE_API void moe_router_reset_stats(moe_router *router);

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTER_H */
