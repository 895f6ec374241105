/* Chunked cross-attention: the grouped attention kernel and the CCA sub-layer op pair
 * (docs/MODEL.md §7). Every product goes through joule_sgemm (counted). */
#include <math.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

/* ---------------------------------------------------------------- grouped attention */

/* Row s (n entries) becomes the softmax over its valid entries; masked ones get 0, and
 * a row without a valid entry is all 0 (its query then reads nothing). */
static void masked_softmax_row(float *s, const uint8_t *mask, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        if (!mask || mask[j]) mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) {
        memset(s, 0, (size_t)n * sizeof *s);
        return;
    }
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        s[j] = (!mask || mask[j]) ? expf(s[j] - mx) : 0.0f;
        sum += s[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) s[j] *= inv;
}

static inline bool gattn_parallel(const joule_gattn_plan *p) {
    return (size_t)p->G * p->H * p->max_q * p->nk >= 4096;
}

static inline float *slab(float *P, const joule_gattn_plan *p, int g, int h) {
    return P + ((size_t)g * p->H + (size_t)h) * (size_t)p->max_q * (size_t)p->nk;
}

void joule_gattn_forward(float *out, int ldo, float *P, const float *q, int ldq, const float *k,
                         int ldk, const float *v, int ldv, const joule_gattn_plan *p) {
    const int H = p->H, hs = p->hs, nk = p->nk;
    const float scale = 1.0f / sqrtf((float)hs);
    /* One (group, head) per iteration; OpenBLAS runs single-threaded inside the region.
     * Decoding's single query stays on one thread: a parallel region costs more there. */
#pragma omp parallel for schedule(static) if (gattn_parallel(p))
    for (int gh = 0; gh < p->G * H; gh++) {
        const int g = gh / H, h = gh % H, nq = p->nq[g];
        const uint8_t *mask = p->kmask ? p->kmask + (size_t)g * nk : NULL;
        float *S = slab(P, p, g, h);
        const float *qg = q + (size_t)p->qrow[g] * ldq + (size_t)h * hs;
        const float *kg = k + (size_t)p->krow[g] * ldk + (size_t)h * hs;
        const float *vg = v + (size_t)p->krow[g] * ldv + (size_t)h * hs;
        joule_sgemm(false, true, nq, nk, hs, scale, qg, ldq, kg, ldk, 0.0f, S, nk);
        for (int i = 0; i < nq; i++) masked_softmax_row(S + (size_t)i * nk, mask, nk);
        joule_sgemm(false, false, nq, hs, nk, 1.0f, S, nk, vg, ldv, 0.0f,
                    out + (size_t)p->qrow[g] * ldo + (size_t)h * hs, ldo);
    }
}

/* One (group, head) of the backward; dq/dk/dv accumulate. */
static void gattn_backward_one(float *dq, int ldq, float *dk, int ldk, float *dv, int ldv, float *dS,
                               const float *dout, int ldo, const float *q, const float *k, const float *v,
                               const float *P, const joule_gattn_plan *p, int g, int h) {
    const int hs = p->hs, nk = p->nk, nq = p->nq[g];
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t qo = (size_t)p->qrow[g], ko = (size_t)p->krow[g], col = (size_t)h * hs;
    const float *S = P + ((size_t)g * p->H + (size_t)h) * (size_t)p->max_q * nk;
    float *dSg = slab(dS, p, g, h);
    const float *dog = dout + qo * ldo + col;
    /* dP = dO V^T, then dZ = scale * P (dP - rowsum(P dP)); masked entries have P = 0. */
    joule_sgemm(false, true, nq, nk, hs, 1.0f, dog, ldo, v + ko * ldv + col, ldv, 0.0f, dSg, nk);
    for (int i = 0; i < nq; i++) {
        float *ds = dSg + (size_t)i * nk;
        const float *pr = S + (size_t)i * nk;
        float dot = 0.0f;
        for (int j = 0; j < nk; j++) dot += pr[j] * ds[j];
        for (int j = 0; j < nk; j++) ds[j] = scale * pr[j] * (ds[j] - dot);
    }
    joule_sgemm(false, false, nq, hs, nk, 1.0f, dSg, nk, k + ko * ldk + col, ldk, 1.0f, dq + qo * ldq + col, ldq);
    joule_sgemm(true, false, nk, hs, nq, 1.0f, dSg, nk, q + qo * ldq + col, ldq, 1.0f, dk + ko * ldk + col, ldk);
    joule_sgemm(true, false, nk, hs, nq, 1.0f, S, nk, dog, ldo, 1.0f, dv + ko * ldv + col, ldv);
}

void joule_gattn_backward(float *dq, int ldq, float *dk, int ldk, float *dv, int ldv, float *dS,
                          const float *dout, int ldo, const float *q, const float *k, const float *v,
                          const float *P, const joule_gattn_plan *p) {
    if (p->shared_keys) {
        /* Groups share key rows: one head per thread, groups in order (deterministic). */
#pragma omp parallel for schedule(static) if (gattn_parallel(p))
        for (int h = 0; h < p->H; h++)
            for (int g = 0; g < p->G; g++)
                gattn_backward_one(dq, ldq, dk, ldk, dv, ldv, dS, dout, ldo, q, k, v, P, p, g, h);
    } else {
#pragma omp parallel for schedule(static) if (gattn_parallel(p))
        for (int gh = 0; gh < p->G * p->H; gh++)
            gattn_backward_one(dq, ldq, dk, ldk, dv, ldv, dS, dout, ldo, q, k, v, P, p, gh / p->H, gh % p->H);
    }
}

uint64_t joule_gattn_forward_flops(const joule_gattn_plan *p) {
    uint64_t rows = 0;
    for (int g = 0; g < p->G; g++) rows += (uint64_t)p->nq[g];
    return 4ull * (uint64_t)p->hs * (uint64_t)p->H * (uint64_t)p->nk * rows;
}

/* ---------------------------------------------------------------- CCA sub-layer */

void retro_cca_plan(joule_gattn_plan *p, int *qrow, int *nq, int *krow, const uint8_t *valid, const retro_dims *d,
                    int B, int T) {
    const int m = d->m, nch = T / m, nk = d->k * 2 * m;
    for (int b = 0; b < B; b++)
        for (int u = 0; u < nch; u++) {
            const int g = b * nch + u, first = (u + 1) * m - 1; /* the m-1 shift */
            qrow[g] = b * T + first;
            nq[g] = T - first < m ? T - first : m;
            krow[g] = g * nk;
        }
    *p = (joule_gattn_plan){.G = B * nch, .H = d->H, .hs = d->hs, .max_q = m, .nk = nk,
                            .qrow = qrow, .nq = nq, .krow = krow, .kmask = valid, .shared_keys = false};
}

void retro_cca_forward(float *y, float *O, float *P, float *q, float *kv, const float *x, const float *xn,
                       const float *E, const cca_w *w, const joule_gattn_plan *p, int N, int R, int C, int D) {
    joule_linear_forward(q, xn, w->wq, N, C, C);
    joule_linear_forward(kv, E, w->wkv, R, D, 2 * C);
    /* Positions before the first complete chunk (and any row outside a group) read nothing. */
    memset(O, 0, (size_t)N * C * sizeof *O);
    joule_gattn_forward(O, C, P, q, C, kv, 2 * C, kv + C, 2 * C, p);
    memcpy(y, x, (size_t)N * C * sizeof *y);
    joule_sgemm(false, true, N, C, C, 1.0f, O, C, w->wo, C, 1.0f, y, C);
}

void retro_cca_backward(float *dxn, float *dE, float *dO, float *dq, float *dkv, float *dS, const float *dy,
                        const float *O, const float *P, const float *q, const float *kv, const float *xn,
                        const float *E, const cca_w *w, const cca_w *g, const joule_gattn_plan *p, int N, int R,
                        int C, int D) {
    joule_linear_backward(dO, g->wo, dy, O, w->wo, N, C, C, false);
    memset(dq, 0, (size_t)N * C * sizeof *dq);
    memset(dkv, 0, (size_t)R * 2 * C * sizeof *dkv);
    joule_gattn_backward(dq, C, dkv, 2 * C, dkv + C, 2 * C, dS, dO, C, q, kv, kv + C, P, p);
    joule_linear_backward(dxn, g->wq, dq, xn, w->wq, N, C, C, false);
    joule_linear_backward(dE, g->wkv, dkv, E, w->wkv, R, D, 2 * C, true);
}

uint64_t retro_cca_flops(const retro_dims *d, int B, int T) {
    const int nch = T / d->m;
    if (d->k == 0 || nch == 0) return 0;
    const uint64_t N = (uint64_t)B * T, C = (uint64_t)d->C, D = (uint64_t)d->D;
    const uint64_t R = (uint64_t)B * nch * d->k * 2 * d->m, nk = (uint64_t)d->k * 2 * d->m;
    const uint64_t queries = (uint64_t)B * (uint64_t)(T - d->m + 1); /* positions m-1 .. T-1 */
    return 2 * N * C * C          /* wq */
           + 2 * R * D * 2 * C    /* wk, wv over the encoded neighbours */
           + 4 * C * nk * queries /* scores and values */
           + 2 * N * C * C;       /* wo */
}
