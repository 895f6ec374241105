/* moe/moe_internal.h — the pieces of moe/experts.c that the expert-parallel path
 * (moe/ep.c) runs on either side of its all-to-alls. Private to moe/. */
#ifndef JOULE_MOE_INTERNAL_H
#define JOULE_MOE_INTERNAL_H

#include "joule/moe.h"

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
