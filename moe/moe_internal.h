/* moe/moe_internal.h — private to moe/: the model's MoE state (moe/moe.c), the
 * expert-parallel path (moe/ep.c), and the pieces of moe/experts.c that the latter runs on
 * either side of its all-to-alls. */
#ifndef JOULE_MOE_INTERNAL_H
#define JOULE_MOE_INTERNAL_H

#include "joule/moe.h"

/* The MoE state of a model (m->ext[JOULE_EXT_MOE]), moe/moe.c's; moe/ep.c reads it. */
typedef struct {
    joule_moe_route route;
    joule_moe_dispatch disp;
    joule_moe_router_opts opts; /* of the last forward, reused by its backward */
    float *logits;              /* [N,E] */
    float *h13, *g, *out;       /* [N*k, 2Fe], [N*k, Fe], [N*k, C] */
    const float *x; /* the forward's input (the core keeps it until the next forward) */
    /* sums over forwards since the last reset (joule eval reports them) */
    uint64_t acc_tokens, acc_dropped[2], acc_skipped;
    uint64_t *acc_routed; /* [E] */
    double acc_entropy, acc_lb, acc_z; /* token-weighted sums */
    bool ep_ran; /* the last forward took the expert-parallel path (its backward must too) */
} moe_layer;

typedef struct {
    int slot[JOULE_MAX_LAYERS]; /* model layer -> index in layers[], -1 for dense */
    int n;
    moe_layer *layers;
    float *xperm, *dout, *dg, *dh13, *dlogits, *dgate; /* backward scratch shared by layers */
    joule_moe_timing timing;
    struct moe_ep *ep; /* expert parallelism (moe/ep.c); NULL when off */
} moe_state;


/* ---- expert parallelism (moe/ep.c) ---- */

/* The expert_parallel hook (joule/ext.h): ranks 1 frees the state and clears the owners. */
int moe_ep_enable(joule_model *m, int ranks, int rank);
void moe_ep_free(moe_state *st);
/* The training forward and backward of MoE layer l over the ranks: as moe.c's local
 * ones, with the routed rows exchanged by all-to-all (docs/SCALING.md §EP). */
int moe_ep_forward(joule_model *m, int l, moe_layer *ly, const float *x, float *y, int N,
                   const joule_moe_router_opts *o);
int moe_ep_backward(joule_model *m, int l, moe_layer *ly, const float *dy, float *dx, float grad_scale);
/* The MoE layers' all-to-alls since the last stats reset (zeros and ranks 1 when off). */
void moe_ep_stats(const moe_state *st, double *seconds, double *bytes, int64_t *calls, int *ranks);
void moe_ep_stats_reset(moe_state *st);

/* order[n]: experts 0..n-1 by rows (off[e+1]-off[e]), largest first, ties to the lower
 * index; keys[n] is scratch. */
void moe_order_experts(int32_t *order, uint64_t *keys, const int32_t *off, int n);
/* xperm[rows,C] = the token row of each dispatched assignment, in dispatch order. */
void moe_gather_rows(float *xperm, const float *x, const joule_moe_dispatch *d, int C, int k);
/* The n experts whose weights start at W (3 Fe C floats each) on their rows of xin:
 * expert e's rows are [off[e], off[e+1]); out = SwiGLU_e (ungated), h13 and g kept. */
void moe_ffn_forward(float *h13, float *g, float *out, const float *xin, const float *W, const int32_t *off,
                     const int32_t *order, int n, const joule_moe_dims *dm);
/* y[N,C] += gate * out row of each kept assignment, per token in slot order. */
void moe_combine(float *y, const float *out, const joule_moe_dispatch *d, const float *gate, int C, int k);
/* dout[rows,C] = gate * dy of each row's token; dgate[N,k] = dy . out (0 where dropped). */
void moe_gated_dout(float *dout, float *dgate, const float *dy, const float *out, const joule_moe_dispatch *d,
                    const float *gate, int C, int k);
/* Backward of moe_ffn_forward: dW += (for the n experts at dW), xin (the inputs) is
 * overwritten with their gradient; dg, dh13 scratch of the rows. */
void moe_ffn_backward(float *xin, float *dW, float *dg, float *dh13, const float *dout, const float *W,
                      const float *h13, const float *g, const int32_t *off, const int32_t *order, int n,
                      const joule_moe_dims *dm);
/* dx[N,C] = sum of each token's rows of dxperm (overwrites). */
void moe_sum_dx(float *dx, const float *dxperm, const joule_moe_dispatch *d, int C, int k);

#endif
