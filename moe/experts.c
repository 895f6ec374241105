/* MoE experts: group the kept assignments by expert (a stable permutation), run one
 * SwiGLU FFN per non-empty expert on its contiguous rows (two sgemms), and scatter-add the
 * gated outputs back to their tokens; the backward retraces the same permutation. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "joule/moe.h"
#include "joule/ops.h"
#include "moe_internal.h"

/* Experts run side by side, each on one thread with single-threaded BLAS (OpenBLAS runs
 * single-threaded inside a parallel region), when there are enough of them to keep every
 * thread busy: one synchronisation per phase instead of one per expert sgemm, which is
 * what costs most on a loaded machine. Otherwise each expert's sgemms use all threads.
 * Either way an expert's result does not depend on which thread computes it. */
static bool side_by_side(int E) {
    const int t = omp_get_max_threads();
    return t > 1 && E >= 2 * t;
}

int joule_moe_dispatch_alloc(joule_moe_dispatch *d, int max_tokens, int n_experts, int top_k) {
    memset(d, 0, sizeof *d);
    const size_t A = (size_t)max_tokens * (size_t)top_k;
    d->offset = joule_alloc(((size_t)n_experts + 1) * sizeof(int32_t));
    d->order = joule_alloc((size_t)n_experts * sizeof(int32_t));
    d->keys = joule_alloc((size_t)n_experts * sizeof(uint64_t));
    d->assign = joule_alloc(A * sizeof(int32_t));
    d->row_of = joule_alloc(A * sizeof(int32_t));
    if (!d->offset || !d->order || !d->keys || !d->assign || !d->row_of) {
        joule_moe_dispatch_free(d);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the MoE dispatch for %d tokens", max_tokens);
    }
    return JOULE_OK;
}

void joule_moe_dispatch_free(joule_moe_dispatch *d) {
    joule_free(d->offset);
    joule_free(d->order);
    joule_free(d->keys);
    joule_free(d->assign);
    joule_free(d->row_of);
    memset(d, 0, sizeof *d);
}

static int descending(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x < y) - (x > y);
}

void joule_moe_dispatch_build(joule_moe_dispatch *d, const joule_moe_route *r, int n_experts, int top_k) {
    const int E = n_experts;
    const size_t A = (size_t)r->N * (size_t)top_k;
    int32_t *off = d->offset;
    memset(off, 0, ((size_t)E + 1) * sizeof *off);
    for (size_t a = 0; a < A; a++)
        if (r->kept[a]) off[r->expert[a] + 1]++;
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    d->rows = off[E];
    d->N = r->N;
    /* Counting sort in assignment order (token order): off[e] walks to the start of e+1,
     * then the offsets shift back by one expert. */
    for (size_t a = 0; a < A; a++) {
        if (!r->kept[a]) {
            d->row_of[a] = -1;
            continue;
        }
        int32_t row = off[r->expert[a]]++;
        d->assign[row] = (int32_t)a;
        d->row_of[a] = row;
    }
    for (int e = E; e > 0; e--) off[e] = off[e - 1];
    off[0] = 0;
    moe_order_experts(d->order, d->keys, off, E);
}

void moe_order_experts(int32_t *order, uint64_t *keys, const int32_t *off, int n) {
    /* Largest experts first (ties: lower index), so side-by-side threads finish together. */
    for (int e = 0; e < n; e++) keys[e] = (uint64_t)(off[e + 1] - off[e]) << 12 | (uint64_t)(4095 - e);
    qsort(keys, (size_t)n, sizeof *keys, descending);
    for (int i = 0; i < n; i++) order[i] = 4095 - (int32_t)(keys[i] & 4095);
}

/* Adds the time since *t0 to *slot (when timing) and restarts the clock. */
static void lap(joule_moe_timing *tm, double *slot, double *t0) {
    if (!tm) return;
    double now = joule_now();
    *slot += now - *t0;
    *t0 = now;
}

void moe_gather_rows(float *xperm, const float *x, const joule_moe_dispatch *d, int C, int k) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < d->rows; r++)
        memcpy(xperm + (size_t)r * C, x + (size_t)(d->assign[r] / k) * C, (size_t)C * sizeof(float));
}

void moe_ffn_forward(float *h13, float *g, float *out, const float *xin, const float *W, const int32_t *off,
                     const int32_t *order, int n, const joule_moe_dims *dm) {
    const int C = dm->C, Fe = dm->Fe;
    const size_t stride = 3 * (size_t)Fe * C;
    const bool side = side_by_side(n);
#pragma omp parallel for schedule(dynamic, 1) if (side)
    for (int i = 0; i < n; i++) {
        const int e = order[i], o = off[e], R = off[e + 1] - o;
        if (R == 0) continue; /* an idle expert costs nothing */
        const float *w13 = W + e * stride;
        joule_sgemm(false, true, R, 2 * Fe, C, 1.0f, xin + (size_t)o * C, C, w13, C, 0.0f, h13 + (size_t)o * 2 * Fe,
                    2 * Fe);
    }
    joule_swiglu_forward(g, h13, off[n], Fe);
#pragma omp parallel for schedule(dynamic, 1) if (side)
    for (int i = 0; i < n; i++) {
        const int e = order[i], o = off[e], R = off[e + 1] - o;
        if (R == 0) continue;
        const float *w2 = W + e * stride + 2 * (size_t)Fe * C;
        joule_sgemm(false, true, R, C, Fe, 1.0f, g + (size_t)o * Fe, Fe, w2, Fe, 0.0f, out + (size_t)o * C, C);
    }
}

void moe_combine(float *y, const float *out, const joule_moe_dispatch *d, const float *gate, int C, int k) {
    /* Scatter-add per token (each token owns its row of y): deterministic, no atomics. */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < d->N; n++) {
        float *yn = y + (size_t)n * C;
        for (int s = 0; s < k; s++) {
            const size_t a = (size_t)n * k + s;
            const int32_t r = d->row_of[a];
            if (r < 0) continue;
            const float gv = gate[a], *on = out + (size_t)r * C;
#pragma omp simd
            for (int c = 0; c < C; c++) yn[c] += gv * on[c];
        }
    }
}

void joule_moe_experts_forward(float *y, float *xperm, float *h13, float *g, float *out, const float *x,
                               const float *W, const joule_moe_dispatch *d, const float *gate,
                               const joule_moe_dims *dm, joule_moe_timing *tm) {
    double t0 = tm ? joule_now() : 0;
    moe_gather_rows(xperm, x, d, dm->C, dm->k);
    lap(tm, tm ? &tm->permute_fwd : NULL, &t0);
    moe_ffn_forward(h13, g, out, xperm, W, d->offset, d->order, dm->E, dm);
    lap(tm, tm ? &tm->experts_fwd : NULL, &t0);
    moe_combine(y, out, d, gate, dm->C, dm->k);
    lap(tm, tm ? &tm->permute_fwd : NULL, &t0);
}

void moe_gated_dout(float *dout, float *dgate, const float *dy, const float *out, const joule_moe_dispatch *d,
                    const float *gate, int C, int k) {
    memset(dgate, 0, (size_t)d->N * k * sizeof(float));
    /* Row r carries gate * dy of its token; its gate's gradient is dy . (ungated output). */
#pragma omp parallel for schedule(static)
    for (int r = 0; r < d->rows; r++) {
        const int32_t a = d->assign[r];
        const float *dyn = dy + (size_t)(a / k) * C, *on = out + (size_t)r * C;
        float *dr = dout + (size_t)r * C;
        const float gv = gate[a];
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) {
            dr[c] = gv * dyn[c];
            dot += dyn[c] * on[c];
        }
        dgate[a] = dot;
    }
}

void moe_ffn_backward(float *xin, float *dW, float *dg, float *dh13, const float *dout, const float *W,
                      const float *h13, const float *g, const int32_t *off, const int32_t *order, int n,
                      const joule_moe_dims *dm) {
    const int C = dm->C, Fe = dm->Fe;
    const size_t stride = 3 * (size_t)Fe * C;
    const bool side = side_by_side(n);
#pragma omp parallel for schedule(dynamic, 1) if (side)
    for (int i = 0; i < n; i++) {
        const int e = order[i], o = off[e], R = off[e + 1] - o;
        if (R == 0) continue;
        const size_t w2 = e * stride + 2 * (size_t)Fe * C;
        joule_linear_backward(dg + (size_t)o * Fe, dW + w2, dout + (size_t)o * C, g + (size_t)o * Fe, W + w2, R, Fe,
                              C, false);
    }
    joule_swiglu_backward(dh13, dg, h13, off[n], Fe);
#pragma omp parallel for schedule(dynamic, 1) if (side)
    for (int i = 0; i < n; i++) {
        const int e = order[i], o = off[e], R = off[e + 1] - o;
        if (R == 0) continue;
        const size_t w13 = e * stride;
        /* dW first: it reads the gathered inputs, which the input gradient then overwrites. */
        joule_linear_backward(NULL, dW + w13, dh13 + (size_t)o * 2 * Fe, xin + (size_t)o * C, W + w13, R, C,
                              2 * Fe, false);
        joule_linear_backward(xin + (size_t)o * C, NULL, dh13 + (size_t)o * 2 * Fe, NULL, W + w13, R, C, 2 * Fe,
                              false);
    }
}

void moe_sum_dx(float *dx, const float *dxperm, const joule_moe_dispatch *d, int C, int k) {
    /* Sum each token's rows in slot order. */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < d->N; n++) {
        float *dxn = dx + (size_t)n * C;
        memset(dxn, 0, (size_t)C * sizeof(float));
        for (int s = 0; s < k; s++) {
            const int32_t r = d->row_of[(size_t)n * k + s];
            if (r < 0) continue;
            const float *src = dxperm + (size_t)r * C;
#pragma omp simd
            for (int c = 0; c < C; c++) dxn[c] += src[c];
        }
    }
}

void joule_moe_experts_backward(float *dx, float *dgate, float *dW, float *xperm, float *dout, float *dg,
                                float *dh13, const float *dy, const float *x, const float *W,
                                const float *h13, const float *g, const float *out,
                                const joule_moe_dispatch *d, const float *gate, const joule_moe_dims *dm,
                                joule_moe_timing *tm) {
    double t0 = tm ? joule_now() : 0;
    moe_gather_rows(xperm, x, d, dm->C, dm->k);
    moe_gated_dout(dout, dgate, dy, out, d, gate, dm->C, dm->k);
    lap(tm, tm ? &tm->permute_bwd : NULL, &t0);
    moe_ffn_backward(xperm, dW, dg, dh13, dout, W, h13, g, d->offset, d->order, dm->E, dm);
    lap(tm, tm ? &tm->experts_bwd : NULL, &t0);
    /* xperm now holds d(gathered input) */
    moe_sum_dx(dx, xperm, d, dm->C, dm->k);
    lap(tm, tm ? &tm->permute_bwd : NULL, &t0);
}
