/* Element-wise, normalisation and attention ops: the non-GEMM part of a training step.
 *
 * Everything here must stay cheap next to the matmuls, so inner loops are written to be
 * vectorised by the compiler (`omp simd` reductions, no calls in the loop bodies), and
 * exp goes through exp_fast below rather than libm: glibc's expf is a scalar call that
 * does not vectorise without -ffast-math, and with it the cross-entropy forward was ~9x,
 * SwiGLU ~8x and the attention forward ~1.6x slower (N = 2048, V = 4096, F = 1024).
 *
 * Determinism: every loop over rows is `schedule(static)` and each output element is
 * written by one thread; reductions across rows (embedding and RMSNorm gain gradients)
 * are parallelised over columns instead, so each sum runs in row order whatever the
 * thread count.
 */
#include "joule/ops.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "par.h"

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */

/* exp(x) within ~1 ulp, as straight-line arithmetic so loops calling it vectorise.
 * x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact n*ln2_hi); exp(r) by its
 * degree-7 Taylor polynomial (truncation < 1e-8 relative); 2^n built in the exponent bits.
 * Inputs are clamped to [-88, 88]: below about -87.7 the result is 0 (no denormals), above
 * 88 it saturates at exp(88) ~ 1.65e38 instead of inf. NaN stays NaN. */
static inline float exp_fast(float x) {
    x = x < -88.0f ? -88.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float nf = (x * 1.44269504f + shifter) - shifter;
    float r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)nf + 127) * (1 << 23); /* n = -127 gives +0: the underflow */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid_fast(float x) { return 1.0f / (1.0f + exp_fast(-x)); }

/* This thread's share [*c0, *c1) of C columns, cut at multiples of 16 floats (one cache
 * line) so that threads never write to the same line. */
static void thread_columns(int C, int *c0, int *c1) {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int lines = (C + 15) / 16;
    int per = lines / nt, extra = lines % nt;
    int first = id * per + (id < extra ? id : extra);
    int count = per + (id < extra ? 1 : 0);
    *c0 = first * 16 < C ? first * 16 : C;
    *c1 = (first + count) * 16 < C ? (first + count) * 16 : C;
}

/* ------------------------------------------------------------------------------------ */
/* embedding                                                                            */

static inline void embedding_row(float *out, const int32_t *tok, const float *emb, int n, int C) {
    memcpy(out + (size_t)n * C, emb + (size_t)tok[n] * C, sizeof(float) * (size_t)C);
}

void joule_embedding_forward(float *out, const int32_t *tok, const float *emb, int N, int C) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)N * (uint64_t)C, JOULE_PAR_MIN_WORK), n, N,
                  embedding_row(out, tok, emb, n, C));
}

void joule_embedding_backward(float *demb, const float *dout, const int32_t *tok, int N, int C) {
    /* Rows of demb repeat when tokens do, so split the columns: each thread adds whole
     * rows of its columns in token order (no atomics, same sums for any thread count). */
#pragma omp parallel
    {
        int c0, c1;
        thread_columns(C, &c0, &c1);
        for (int n = 0; n < N; n++) {
            float *restrict d = demb + (size_t)tok[n] * C;
            const float *restrict g = dout + (size_t)n * C;
#pragma omp simd
            for (int c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* RMSNorm                                                                              */

static inline void rmsnorm_row(float *out, float *rstd, const float *in, const float *gain, int n, int C,
                               float eps) {
    const float *restrict x = in + (size_t)n * C;
    float *restrict y = out + (size_t)n * C;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += x[c] * x[c];
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    rstd[n] = r;
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] = x[c] * r * gain[c];
}

void joule_rmsnorm_forward(float *out, float *rstd, const float *in, const float *gain, int N,
                           int C, float eps) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)N * (uint64_t)C, JOULE_PAR_MIN_WORK), n, N,
                  rmsnorm_row(out, rstd, in, gain, n, C, eps));
}

void joule_rmsnorm_backward(float *din, float *dgain, const float *dout, const float *in,
                            const float *gain, const float *rstd, int N, int C) {
    /* d/dx_k of x_c r g_c with r = (mean(x^2) + eps)^-1/2 is
     *   r g_k [c == k] - x_c g_c r^3 x_k / C,
     * so din = r g dout - x r^3 dot(dout g, x) / C. */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict x = in + (size_t)n * C;
        const float *restrict dy = dout + (size_t)n * C;
        float *restrict dx = din + (size_t)n * C;
        float r = rstd[n], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) dot += dy[c] * gain[c] * x[c];
        float k = r * r * r * dot / (float)C;
#pragma omp simd
        for (int c = 0; c < C; c++) dx[c] += r * gain[c] * dy[c] - k * x[c];
    }
    /* dgain sums over rows: parallel over columns, rows in order (deterministic). */
#pragma omp parallel
    {
        int c0, c1;
        thread_columns(C, &c0, &c1);
        for (int n = 0; n < N; n++) {
            const float *restrict x = in + (size_t)n * C;
            const float *restrict dy = dout + (size_t)n * C;
            float r = rstd[n];
#pragma omp simd
            for (int c = c0; c < c1; c++) dgain[c] += dy[c] * x[c] * r;
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* rotary position embedding                                                            */

void joule_rope_tables(float *cos_tab, float *sin_tab, int max_pos, int hs, float theta) {
    int half = hs / 2;
    for (int i = 0; i < half; i++) {
        double freq = pow((double)theta, -2.0 * i / (double)hs);
        for (int p = 0; p < max_pos; p++) {
            double a = (double)p * freq;
            cos_tab[(size_t)p * half + i] = (float)cos(a);
            sin_tab[(size_t)p * half + i] = (float)sin(a);
        }
    }
}

/* Rotates every (2i, 2i+1) pair of each head of row n by the angle of its position: pos[n]
 * when pos is given, else pos0 + n % T; sign = -1 rotates by the negative angle (the
 * transpose, i.e. the backward). */
static inline void rope_row(float *x, int ld, int n, int T, const int *pos_of, int nheads, int hs, int pos0,
                            const float *cos_tab, const float *sin_tab, float sign) {
    const int half = hs / 2, pos = pos_of ? pos_of[n] : pos0 + n % T;
    const float *restrict cs = cos_tab + (size_t)pos * half;
    const float *restrict sn = sin_tab + (size_t)pos * half;
    for (int h = 0; h < nheads; h++) {
        float *restrict v = x + (size_t)n * ld + (size_t)h * hs;
#pragma omp simd
        for (int i = 0; i < half; i++) {
            float c = cs[i], s = sign * sn[i];
            float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c - x1 * s;
            v[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

static void rope_apply(float *x, int ld, int N, int T, const int *pos_of, int nheads, int hs, int pos0,
                       const float *cos_tab, const float *sin_tab, float sign) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)N * (uint64_t)nheads * (uint64_t)hs, 8192), n, N,
                  rope_row(x, ld, n, T, pos_of, nheads, hs, pos0, cos_tab, sin_tab, sign));
}

void joule_rope_forward(float *x, int ld, int B, int T, int nheads, int hs, int pos0,
                        const float *cos_tab, const float *sin_tab) {
    rope_apply(x, ld, B * T, T, NULL, nheads, hs, pos0, cos_tab, sin_tab, 1.0f);
}

void joule_rope_backward(float *dx, int ld, int B, int T, int nheads, int hs, int pos0,
                         const float *cos_tab, const float *sin_tab) {
    rope_apply(dx, ld, B * T, T, NULL, nheads, hs, pos0, cos_tab, sin_tab, -1.0f);
}

void joule_rope_rows(float *x, int ld, int n, const int *pos, int nheads, int hs, const float *cos_tab,
                     const float *sin_tab, bool backward) {
    rope_apply(x, ld, n, 1, pos, nheads, hs, 0, cos_tab, sin_tab, backward ? -1.0f : 1.0f);
}

void joule_softmax_masked(float *s, const uint8_t *mask, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        if (!mask || mask[j]) mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) {
        memset(s, 0, (size_t)n * sizeof *s);
        return;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        s[j] = (!mask || mask[j]) ? exp_fast(s[j] - mx) : 0.0f;
        sum += s[j];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < n; j++) s[j] *= inv;
}

/* ------------------------------------------------------------------------------------ */
/* causal self-attention                                                                */

/* Rows are processed in blocks of ATT_BLOCK: the row block [i0, i1) only attends to keys
 * [0, i1), so each product skips the part above the block diagonal (37.5% of the FLOPs
 * at T = 256; attention forward + backward 1.4x faster than full T x T products there).
 * 32 and 128 were both slower: more waste on the diagonal blocks vs GEMMs too small. */
enum { ATT_BLOCK = 64 };

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* Row i of S (length T) becomes softmax over its first i+1 entries; the rest are zeroed.
 * Only entries [0, i] are read, so the caller need not have computed the others. */
static void causal_softmax_row(float *restrict s, int i, int T) {
    float m = s[0];
#pragma omp simd reduction(max : m)
    for (int j = 0; j <= i; j++) m = s[j] > m ? s[j] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j <= i; j++) {
        s[j] = exp_fast(s[j] - m);
        sum += s[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j <= i; j++) s[j] *= inv;
    for (int j = i + 1; j < T; j++) s[j] = 0.0f;
}

/* One (batch, head): q, k, v point at the head's columns of the batch's first token
 * (row stride 3C); out at the head's columns (row stride C); att is its [T, T] slab. */
static void attention_head_forward(float *out, float *att, const float *q, const float *k,
                                   const float *v, int T, int C, int hs, float scale) {
    int ld = 3 * C;
    for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
        int i1 = min_int(i0 + ATT_BLOCK, T), rows = i1 - i0;
        float *s = att + (size_t)i0 * T;
        joule_sgemm(false, true, rows, i1, hs, scale, q + (size_t)i0 * ld, ld, k, ld, 0.0f, s,
                    T);
        for (int i = i0; i < i1; i++) causal_softmax_row(att + (size_t)i * T, i, T);
        joule_sgemm(false, false, rows, hs, i1, 1.0f, s, T, v, ld, 0.0f,
                    out + (size_t)i0 * C, C);
    }
}

uint64_t joule_attention_forward_flops(int B, int T, int C) {
    uint64_t pairs = 0; /* sum over row blocks of rows x keys attended */
    for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
        int i1 = min_int(i0 + ATT_BLOCK, T);
        pairs += (uint64_t)(i1 - i0) * (uint64_t)i1;
    }
    /* two products (Q K^T and P V), 2 FLOPs per multiply-add, hs per pair per head */
    return 4ull * (uint64_t)B * pairs * (uint64_t)C;
}

void joule_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C,
                             int H) {
    int hs = C / H;
    float scale = 1.0f / sqrtf((float)hs);
    /* One (b, h) per iteration; OpenBLAS runs single-threaded inside the parallel region. */
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * 3 * C + (size_t)h * hs;
        attention_head_forward(out + (size_t)b * T * C + (size_t)h * hs,
                               att + (size_t)bh * T * T, q, q + C, q + 2 * C, T, C, hs, scale);
    }
}

/* dP (in ds) -> dZ, the gradient w.r.t. the unscaled scores Q K^T, for row i:
 * dZ_ij = scale * P_ij (dP_ij - sum_j' P_ij' dP_ij') for j <= i, 0 for i < j < end. */
static void softmax_backward_row(float *restrict ds, const float *restrict p, int i, int end,
                                 float scale) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j <= i; j++) dot += p[j] * ds[j];
#pragma omp simd
    for (int j = 0; j <= i; j++) ds[j] = scale * p[j] * (ds[j] - dot);
    for (int j = i + 1; j < end; j++) ds[j] = 0.0f;
}

static void attention_head_backward(float *dq, float *dk, float *dv, float *datt,
                                    const float *dout, const float *q, const float *k,
                                    const float *v, const float *att, int T, int C, int hs,
                                    float scale) {
    int ld = 3 * C;
    /* Row blocks: dP = dO V^T, then dZ in place, then dQ = dZ K. Only columns [0, i1). */
    for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
        int i1 = min_int(i0 + ATT_BLOCK, T), rows = i1 - i0;
        float *ds = datt + (size_t)i0 * T;
        joule_sgemm(false, true, rows, i1, hs, 1.0f, dout + (size_t)i0 * C, C, v, ld, 0.0f, ds,
                    T);
        for (int i = i0; i < i1; i++)
            softmax_backward_row(datt + (size_t)i * T, att + (size_t)i * T, i, i1, scale);
        joule_sgemm(false, false, rows, hs, i1, 1.0f, ds, T, k, ld, 0.0f, dq + (size_t)i0 * ld,
                    ld);
    }
    /* Column blocks: key j only receives from queries i >= j, so dV[j0:j1] = P[j0:T, j0:j1]^T
     * dO[j0:T] and dK likewise with dZ and Q. Every entry read lies in a computed row block
     * (zeroed above the diagonal there). */
    for (int j0 = 0; j0 < T; j0 += ATT_BLOCK) {
        int j1 = min_int(j0 + ATT_BLOCK, T), cols = j1 - j0;
        size_t corner = (size_t)j0 * T + j0;
        joule_sgemm(true, false, cols, hs, T - j0, 1.0f, att + corner, T, dout + (size_t)j0 * C,
                    C, 0.0f, dv + (size_t)j0 * ld, ld);
        joule_sgemm(true, false, cols, hs, T - j0, 1.0f, datt + corner, T, q + (size_t)j0 * ld,
                    ld, 0.0f, dk + (size_t)j0 * ld, ld);
    }
}

void joule_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int H) {
    int hs = C / H;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        size_t head = (size_t)b * T * 3 * C + (size_t)h * hs;
        const float *q = qkv + head;
        float *dq = dqkv + head;
        attention_head_backward(dq, dq + C, dq + 2 * C, datt + (size_t)bh * T * T,
                                dout + (size_t)b * T * C + (size_t)h * hs, q, q + C, q + 2 * C,
                                att + (size_t)bh * T * T, T, C, hs, scale);
    }
}

/* ------------------------------------------------------------------------------------ */
/* SwiGLU                                                                               */

static inline void swiglu_row(float *g, const float *h13, int n, int F) {
    const float *restrict h1 = h13 + (size_t)n * 2 * F;
    const float *restrict h3 = h1 + F;
    float *restrict y = g + (size_t)n * F;
#pragma omp simd
    for (int f = 0; f < F; f++) y[f] = h1[f] * sigmoid_fast(h1[f]) * h3[f];
}

void joule_swiglu_forward(float *g, const float *h13, int N, int F) {
    JOULE_PAR_FOR(joule_par_worth((uint64_t)N * (uint64_t)F, JOULE_PAR_MIN_WORK), n, N, swiglu_row(g, h13, n, F));
}

void joule_swiglu_backward(float *dh13, const float *dg, const float *h13, int N, int F) {
    /* silu'(x) = s + x s (1 - s) with s = sigmoid(x). */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict h1 = h13 + (size_t)n * 2 * F;
        const float *restrict h3 = h1 + F;
        const float *restrict dy = dg + (size_t)n * F;
        float *restrict d1 = dh13 + (size_t)n * 2 * F;
        float *restrict d3 = d1 + F;
#pragma omp simd
        for (int f = 0; f < F; f++) {
            float x = h1[f], s = sigmoid_fast(x);
            d1[f] = dy[f] * h3[f] * (s + x * s * (1.0f - s));
            d3[f] = dy[f] * x * s;
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* softmax cross-entropy                                                                */

double joule_xent_forward(float *losses, float *probs, const float *logits,
                          const int32_t *targets, int N, int V) {
    /* probs may alias logits: each row reads an entry before overwriting that same entry. */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        int t = targets[n];
        float m = x[0];
#pragma omp simd reduction(max : m)
        for (int j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
        float xt = t >= 0 ? x[t] : 0.0f;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++) {
            p[j] = exp_fast(x[j] - m);
            sum += p[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < V; j++) p[j] *= inv;
        losses[n] = t >= 0 ? logf(sum) - (xt - m) : 0.0f;
    }
    double total = 0.0;
    int count = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        total += losses[n];
        count++;
    }
    return count > 0 ? total / count : 0.0;
}

void joule_xent_backward(float *dlogits, const float *probs, const int32_t *targets, int N,
                         int V, float scale) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        int t = targets[n];
        if (t < 0) {
            memset(d, 0, sizeof(float) * (size_t)V);
            continue;
        }
#pragma omp simd
        for (int j = 0; j < V; j++) d[j] = scale * p[j];
        d[t] -= scale;
    }
}
