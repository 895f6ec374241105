/* joule/ops.h — the layer ops of the Transformer core, as forward/backward pairs.
 *
 * Conventions (shared by every op):
 * - float32, row-major. N = rows (tokens, B*T), C = d_model, H heads, hs = C/H head size,
 *   F = d_ff, V = vocab. Activations are [N, C] with token n = b*T + t.
 * - No op allocates; every buffer is passed in by the caller.
 * - Backward functions ACCUMULATE (+=) into parameter gradients (so micro-batches add up)
 *   and into the input gradient only where stated; otherwise they overwrite (=).
 * - Every matrix product goes through joule_sgemm, which counts 2*M*N*K FLOPs.
 * - Ops parallelise with OpenMP over rows/heads with static schedules and fixed-order
 *   reductions, so results are bit-identical for a given thread count.
 */
#ifndef JOULE_OPS_H
#define JOULE_OPS_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- counted BLAS (core/blas.c) ---- */

/* C = alpha * op(A) op(B) + beta * C, row-major; op(X) = X^T when trans_X. Counts 2*M*N*K. */
void joule_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *Cm, int ldc);

/* y[M] = alpha * A[M,N] x[N] + beta * y (row-major A, no transpose). Counts 2*M*N. */
void joule_sgemv(int M, int N, float alpha, const float *A, int lda, const float *x, float beta,
                 float *y);

/* FLOPs counted so far by joule_sgemm and joule_flops_add (process-wide, thread-safe). */
uint64_t joule_flops_counted(void);
void joule_flops_reset(void);
void joule_flops_add(uint64_t flops);

/* out[N,OC] = in[N,IC] W[OC,IC]^T  (nn.Linear without bias). */
void joule_linear_forward(float *out, const float *in, const float *W, int N, int IC, int OC);
/* dW[OC,IC] += dout^T in.  din[N,IC] = dout W (accumulate_din: +=). din or dW may be NULL. */
void joule_linear_backward(float *din, float *dW, const float *dout, const float *in,
                           const float *W, int N, int IC, int OC, bool accumulate_din);

/* Threads used by BLAS and by joule's OpenMP loops (one pool: OpenBLAS's OpenMP build). */
void joule_set_threads(int n);
int joule_get_threads(void);
/* Name of the OpenBLAS kernel family in use, e.g. "Haswell" or "SkylakeX". */
const char *joule_blas_corename(void);
/* How OpenBLAS was built to run in parallel: "openmp" (shares joule's pool), "pthreads"
 * (a second pool) or "sequential". */
const char *joule_blas_threading(void);

/* ---- element-wise and normalisation ops (core/ops.c) ---- */

/* Token embedding: out[n,:] = emb[tok[n],:]. */
void joule_embedding_forward(float *out, const int32_t *tok, const float *emb, int N, int C);
/* demb[tok[n],:] += dout[n,:]  (deterministic order). */
void joule_embedding_backward(float *demb, const float *dout, const int32_t *tok, int N, int C);

/* RMSNorm: out = in * rstd * gain, rstd[n] = 1/sqrt(mean(in[n]^2) + eps). rstd saved for backward. */
void joule_rmsnorm_forward(float *out, float *rstd, const float *in, const float *gain, int N,
                           int C, float eps);
/* din += ..., dgain += ... */
void joule_rmsnorm_backward(float *din, float *dgain, const float *dout, const float *in,
                            const float *gain, const float *rstd, int N, int C);

/* Rotary tables for positions [0, max_pos): cos/sin[p*(hs/2) + i] for angle
 * p * theta^(-2i/hs). */
void joule_rope_tables(float *cos_tab, float *sin_tab, int max_pos, int hs, float theta);
/* In place on the first `nheads*hs` columns of each row of x (row stride ld): the pair
 * (2i, 2i+1) of each head of token n = b*T + t is rotated by the angle of position pos0 + t. */
void joule_rope_forward(float *x, int ld, int B, int T, int nheads, int hs, int pos0,
                        const float *cos_tab, const float *sin_tab);
/* In place: turns d(rotated) into d(unrotated) (rotation by the negative angle). */
void joule_rope_backward(float *dx, int ld, int B, int T, int nheads, int hs, int pos0,
                         const float *cos_tab, const float *sin_tab);
/* Rows with positions of their own (RETRO's cross-attentions): row r of n rotated by the
 * angle of pos[r]; backward rotates by the negative angle (d(rotated) -> d(unrotated)). */
void joule_rope_rows(float *x, int ld, int n, const int *pos, int nheads, int hs, const float *cos_tab,
                     const float *sin_tab, bool backward);

/* s[n] becomes the softmax over the entries whose mask is non-zero (mask NULL: all);
 * masked ones get 0, and a row with none valid is all 0 (RETRO's attentions). */
void joule_softmax_masked(float *s, const uint8_t *mask, int n);

/* Causal multi-head self-attention on a fused qkv buffer [N, 3C] (row: q | k | v, each
 * head h at columns h*hs within its part; rotary already applied to q and k).
 * out[N,C] (head h at columns h*hs); att[B,H,T,T] keeps the softmax probabilities
 * (entries above the diagonal are 0). Scale 1/sqrt(hs). */
void joule_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C,
                             int H);
/* FLOPs joule_attention_forward counts for these sizes: the score and value products of
 * every row block against the keys up to the block's end (the part above the causal
 * diagonal is skipped). The backward counts exactly twice this. */
uint64_t joule_attention_forward_flops(int B, int T, int C);
/* dqkv[N,3C] = gradient w.r.t. qkv (overwritten). datt is scratch of the size of att. */
void joule_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int H);

/* SwiGLU gate on a fused buffer h13[N, 2F] (row: h1 = x W1^T | h3 = x W3^T):
 * g[N,F] = silu(h1) * h3. */
void joule_swiglu_forward(float *g, const float *h13, int N, int F);
/* dh13[N,2F] = gradient w.r.t. h13 (overwritten). */
void joule_swiglu_backward(float *dh13, const float *dg, const float *h13, int N, int F);

/* Softmax cross-entropy over V classes: losses[n] = -log softmax(logits[n])[target[n]].
 * probs[N,V] receives the softmax (may alias logits). Returns the mean loss (double sum,
 * fixed order). A target < 0 is ignored (loss 0, excluded from the mean). */
double joule_xent_forward(float *losses, float *probs, const float *logits,
                          const int32_t *targets, int N, int V);
/* dlogits[N,V] = scale * (probs - onehot(target)) (overwritten; rows with target < 0 get 0).
 * dlogits may alias probs. */
void joule_xent_backward(float *dlogits, const float *probs, const int32_t *targets, int N,
                         int V, float scale);

#ifdef __cplusplus
}
#endif
#endif
