/* joule/moe.h — top-2 mixture-of-experts FFN layers (GShard/GLaM routing).
 *
 * An MoE layer replaces a layer's SwiGLU FFN by E expert SwiGLU FFNs and a router
 * (a linear map d -> E, no bias). docs/MODEL.md §7 states every equation. The module
 * plugs into the core through joule_ext_ops (JOULE_EXT_MOE): call joule_moe_register()
 * once, before creating or loading a model whose config has MoE layers.
 *
 * The pieces below are op pairs with explicit buffers (no allocation inside forward or
 * backward); moe/moe.c wires them into a model layer:
 *   router  (moe/router.c)   softmax, top-k, capacity and drops, aux losses
 *   dispatch/experts (moe/experts.c)  stable grouping by expert, one sgemm per expert,
 *                                      scatter-add of the gated outputs
 * Ownership: structs filled by *_alloc own their buffers until the matching *_free.
 */
#ifndef JOULE_MOE_H
#define JOULE_MOE_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Registers the MoE implementation with the core (idempotent). */
void joule_moe_register(void);

/* Defaults of docs/MODEL.md §7: E 8, top-2, every 2, d_ff_expert = d_ff, capacity factor
 * 1.25 in training and dropless (0) in evaluation, gates renormalised, no random second
 * expert, aux_alpha 1e-2, z_beta 1e-3. */
joule_moe_config joule_moe_config_default(int d_ff);
/* Makes c an MoE model: arch "moe", c->moe = *e, and layer l gets an MoE FFN when
 * l % every == every - 1 (GLaM's every other layer for every = 2; all for every = 1). */
void joule_moe_apply(joule_config *c, const joule_moe_config *e);

/* Expert capacity for N tokens: ceil(cf * k * N / E); 0 (no limit) when cf == 0. */
int joule_moe_capacity(float capacity_factor, int top_k, int N, int E);

/* ---- router (moe/router.c) ---- */

typedef struct {
    int n_experts, top_k;
    float capacity_factor; /* 0 = dropless */
    bool renormalize;
    bool random_second;    /* keep the 2nd choice with probability min(1, 2*g2) */
    uint64_t noise_key;    /* random_second: token n draws from joule_mix64(noise_key, n) */
    float aux_alpha, z_beta;
    int token_base;        /* index of token 0 in the whole batch (expert parallelism: the
                            * rank's offset), for random_second's draws; 0 otherwise */
} joule_moe_router_opts;

/* Routing of N tokens. Buffers are sized for max_tokens by joule_moe_route_alloc. */
typedef struct {
    float *probs;      /* [N,E] softmax of the router logits, fp32 */
    float *lse;        /* [N] logsumexp of the logits */
    int32_t *expert;   /* [N,k] chosen experts, first choice first (ties: lower index) */
    float *gate;       /* [N,k] combine weights (also set for dropped assignments) */
    uint8_t *kept;     /* [N,k] 1 = computed, 0 = dropped (capacity) or not sampled */
    int32_t *routed;   /* [E] assignments routed to each expert before capacity */
    int32_t *first;    /* [E] tokens whose first choice is the expert (f_i = first/N) */
    double *mean_prob; /* [E] P_i, mean router probability */
    int N, capacity;   /* tokens routed here; capacity per expert (0 = dropless) */
    int n_total;       /* tokens the statistics, losses and capacity are over: N, or every
                        * rank's under expert parallelism (moe/ep.c), where routed, first,
                        * dropped, skipped and the losses are also every rank's */
    int dropped[2];    /* first / second choices dropped by capacity */
    int skipped;       /* second choices not sampled (random_second) */
    double lb, z;      /* weighted load-balancing and z losses */
    double entropy;    /* mean router entropy (nats) */
} joule_moe_route;

int joule_moe_route_alloc(joule_moe_route *r, int max_tokens, int n_experts, int top_k);
void joule_moe_route_free(joule_moe_route *r);
/* Softmax, top-k, gates, capacity (all first choices before any second, in token order),
 * statistics and the two auxiliary losses for logits[N,E]. */
void joule_moe_route_forward(joule_moe_route *r, const float *logits, int N, const joule_moe_router_opts *o);
/* joule_moe_route_forward in its phases, for a batch spread over ranks (moe/ep.c):
 * tokens: softmax, top-k, gates, random second choices (kept = sampled); sets N, n_total = N.
 * place: capacity and drops in placement order, each expert's fill starting from
 *   start[s*E + e] for choice s (NULL: 0); sets routed, first, dropped, skipped, capacity.
 * sums: this batch's sums of router probabilities [E], entropies and squared lse.
 * losses: mean_prob, lb, z, entropy from such sums over n_total tokens and r->first. */
void joule_moe_route_tokens(joule_moe_route *r, const float *logits, int N, const joule_moe_router_opts *o);
void joule_moe_route_place(joule_moe_route *r, const joule_moe_router_opts *o, int capacity, const int32_t *start);
void joule_moe_route_sums(const joule_moe_route *r, int E, double *prob_sum, double *ent_sum, double *z_sum);
void joule_moe_route_losses(joule_moe_route *r, const joule_moe_router_opts *o, const double *prob_sum,
                            double ent_sum, double z_sum, int n_total);
/* dlogits[N,E] (overwritten) = gradient through the gates given dgate[N,k] (zero where
 * dropped), plus aux_scale times the gradient of lb + z. */
void joule_moe_route_backward(float *dlogits, const joule_moe_route *r, const float *dgate,
                              const joule_moe_router_opts *o, float aux_scale);

/* ---- dispatch and experts (moe/experts.c) ---- */

/* Kept assignments grouped by expert, in token order within an expert (a stable
 * permutation): rows [offset[e], offset[e+1]) belong to expert e. */
typedef struct {
    int32_t *offset; /* [E+1] */
    int32_t *order;  /* [E] experts by rows, largest first (the order they are scheduled in) */
    uint64_t *keys;  /* [E] scratch for sorting them */
    int32_t *assign; /* [rows] assignment index n*k + s of each row */
    int32_t *row_of; /* [N,k] row of each assignment, -1 when dropped */
    int rows, N;
} joule_moe_dispatch;

int joule_moe_dispatch_alloc(joule_moe_dispatch *d, int max_tokens, int n_experts, int top_k);
void joule_moe_dispatch_free(joule_moe_dispatch *d);
void joule_moe_dispatch_build(joule_moe_dispatch *d, const joule_moe_route *r, int n_experts, int top_k);

/* Wall time of the MoE layers by part, summed over forwards and backwards (seconds):
 * route = router matmul, softmax/top-k/capacity, grouping; permute = gathering token rows
 * into expert order and scattering/summing them back; experts = the expert matmuls and
 * SwiGLU. Filled when a non-NULL pointer is passed (the model keeps one; see
 * joule_moe_timing_of). */
typedef struct {
    double route_fwd, permute_fwd, experts_fwd;
    double route_bwd, permute_bwd, experts_bwd;
} joule_moe_timing;

/* Expert weights W: E blocks of [w1 (Fe x C) | w3 (Fe x C) | w2 (C x Fe)], contiguous,
 * so each expert's w1|w3 is one [2Fe, C] matrix. */
typedef struct {
    int C, Fe, E, k;
} joule_moe_dims;

/* y[N,C] += sum over kept assignments of gate * SwiGLU_e(x[n]). Keeps h13[rows,2Fe],
 * g[rows,Fe] and out[rows,C] (ungated expert outputs) for backward; xperm[rows,C] is
 * scratch for the gathered inputs. One sgemm pair per non-empty expert. */
void joule_moe_experts_forward(float *y, float *xperm, float *h13, float *g, float *out, const float *x,
                               const float *W, const joule_moe_dispatch *d, const float *gate,
                               const joule_moe_dims *dm, joule_moe_timing *tm);
/* dx[N,C] = d/dx (overwritten), dgate[N,k] (overwritten; 0 where dropped), dW += .
 * Scratch: xperm, dout [rows,C], dg [rows,Fe], dh13 [rows,2Fe]. */
void joule_moe_experts_backward(float *dx, float *dgate, float *dW, float *xperm, float *dout, float *dg,
                                float *dh13, const float *dy, const float *x, const float *W,
                                const float *h13, const float *g, const float *out,
                                const joule_moe_dispatch *d, const float *gate, const joule_moe_dims *dm,
                                joule_moe_timing *tm);

/* ---- model-level helpers (moe/moe.c) ---- */

/* The routing of layer l's last forward (NULL when l is not an MoE layer or nothing ran). */
const joule_moe_route *joule_moe_last_route(const joule_model *m, int l);
/* Forward FLOPs the MoE layers performed in the last forward: router plus kept
 * assignments only (the analytic count minus dropped assignments). */
uint64_t joule_moe_last_forward_flops(const joule_model *m);
/* Parameters one token uses: everything but the E - k experts it is not routed to in each
 * MoE layer (non-embedding when non_embedding is true). Equals the total for dense. */
uint64_t joule_moe_active_params(const joule_model *m, bool non_embedding);
/* Routing statistics into a cJSON object (void* keeps cJSON out of this header): of the
 * last forward, or summed over every forward since joule_moe_stats_reset / alloc. */
void joule_moe_stats_json(const joule_model *m, void *cjson_object, bool cumulative);
void joule_moe_stats_reset(joule_model *m);
/* The model's MoE time split since alloc or the last reset (NULL for a dense model). */
joule_moe_timing *joule_moe_timing_of(const joule_model *m);

/* ---- decoding (moe/decode.c): route, run the chosen experts (sgemv for one token,
 * grouped sgemms for rows), dropless. The core calls these through the registered ops. ---- */
int joule_moe_decoder_create(joule_decoder *d);
void joule_moe_decoder_free(joule_decoder *d);
/* x[C] += MoE_l(xn[C]). */
int joule_moe_decode_step(joule_decoder *d, int l, const float *xn, float *x);
/* x[n,C] += MoE_l(xn[n,C]), each row as joule_moe_decode_step would (to float rounding),
 * as one routed, grouped pass: one sgemm pair per expert that has rows. Its buffers are the
 * decoder's, allocated at the first call for max(ctx, n) rows. */
int joule_moe_decode_rows(joule_decoder *d, int l, const float *xn, float *x, int n);

#ifdef __cplusplus
}
#endif
#endif
