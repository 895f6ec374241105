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

static inline int group_keys(const joule_gattn_plan *p, int g) { return p->nkg ? p->nkg[g] : p->nk; }

void joule_gattn_forward(float *out, int ldo, float *P, const float *q, int ldq, const float *k,
                         int ldk, const float *v, int ldv, const joule_gattn_plan *p) {
    const int H = p->H, hs = p->hs, nk = p->nk;
    const float scale = 1.0f / sqrtf((float)hs);
    /* One (group, head) per iteration; OpenBLAS runs single-threaded inside the region.
     * Decoding's single query stays on one thread: a parallel region costs more there. */
#pragma omp parallel for schedule(static) if (gattn_parallel(p))
    for (int gh = 0; gh < p->G * H; gh++) {
        const int g = gh / H, h = gh % H, nq = p->nq[g], nkg = group_keys(p, g);
        float *og = out + (size_t)p->qrow[g] * ldo + (size_t)h * hs;
        if (nkg == 0) { /* no keys: the group's queries read nothing */
            for (int i = 0; i < nq; i++) memset(og + (size_t)i * ldo, 0, (size_t)hs * sizeof *og);
            continue;
        }
        const uint8_t *mask = p->kmask ? p->kmask + (size_t)g * nk : NULL;
        float *S = slab(P, p, g, h);
        const float *qg = q + (size_t)p->qrow[g] * ldq + (size_t)h * hs;
        const float *kg = k + (size_t)p->krow[g] * ldk + (size_t)h * hs;
        const float *vg = v + (size_t)p->krow[g] * ldv + (size_t)h * hs;
        joule_sgemm(false, true, nq, nkg, hs, scale, qg, ldq, kg, ldk, 0.0f, S, nk);
        for (int i = 0; i < nq; i++) masked_softmax_row(S + (size_t)i * nk, mask, nkg);
        joule_sgemm(false, false, nq, hs, nkg, 1.0f, S, nk, vg, ldv, 0.0f, og, ldo);
    }
}

/* One (group, head) of the backward; dq/dk/dv accumulate. */
static void gattn_backward_one(float *dq, int ldq, float *dk, int ldk, float *dv, int ldv, float *dS,
                               const float *dout, int ldo, const float *q, const float *k, const float *v,
                               const float *P, const joule_gattn_plan *p, int g, int h) {
    const int hs = p->hs, nk = p->nk, nq = p->nq[g], nkg = group_keys(p, g);
    if (nkg == 0) return;
    const float scale = 1.0f / sqrtf((float)hs);
    const size_t qo = (size_t)p->qrow[g], ko = (size_t)p->krow[g], col = (size_t)h * hs;
    const float *S = P + ((size_t)g * p->H + (size_t)h) * (size_t)p->max_q * nk;
    float *dSg = slab(dS, p, g, h);
    const float *dog = dout + qo * ldo + col;
    /* dP = dO V^T, then dZ = scale * P (dP - rowsum(P dP)); masked entries have P = 0. */
    joule_sgemm(false, true, nq, nkg, hs, 1.0f, dog, ldo, v + ko * ldv + col, ldv, 0.0f, dSg, nk);
    for (int i = 0; i < nq; i++) {
        float *ds = dSg + (size_t)i * nk;
        const float *pr = S + (size_t)i * nk;
        float dot = 0.0f;
        for (int j = 0; j < nkg; j++) dot += pr[j] * ds[j];
        for (int j = 0; j < nkg; j++) ds[j] = scale * pr[j] * (ds[j] - dot);
    }
    joule_sgemm(false, false, nq, hs, nkg, 1.0f, dSg, nk, k + ko * ldk + col, ldk, 1.0f, dq + qo * ldq + col, ldq);
    joule_sgemm(true, false, nkg, hs, nq, 1.0f, dSg, nk, q + qo * ldq + col, ldq, 1.0f, dk + ko * ldk + col, ldk);
    joule_sgemm(true, false, nkg, hs, nq, 1.0f, S, nk, dog, ldo, 1.0f, dv + ko * ldv + col, ldv);
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
    uint64_t work = 0;
    for (int g = 0; g < p->G; g++) work += (uint64_t)p->nq[g] * (uint64_t)group_keys(p, g);
    return 4ull * (uint64_t)p->hs * (uint64_t)p->H * work;
}

/* ---------------------------------------------------------------- CCA sub-layer */

joule_gattn_plan retro_cca_plan(const retro_layout *L, const retro_dims *d, const uint8_t *valid) {
    return (joule_gattn_plan){.G = L->G, .H = d->H, .hs = d->hs, .max_q = d->m, .nk = d->k * 2 * d->m,
                              .qrow = L->qoff, .nq = L->nq, .krow = L->krow, .nkg = NULL, .kmask = valid,
                              .shared_keys = false};
}

/* Keys of the encoded neighbours rotated by their token's place in the neighbour (0 ..
 * 2m-1); queries by their row's distance from the chunk's first token. The score of a row
 * and a neighbour token then depends on how far apart they sit when the neighbour is laid
 * over the chunk (its continuation over the next one), RETRO's relative encoding. */
static void rotate_keys(float *kv, int R, const retro_dims *d, const retro_rope *rope, bool backward) {
    const int per = 2 * d->m;
    if (backward) joule_rope_backward(kv, 2 * d->C, R / per, per, d->H, d->hs, 0, rope->cos, rope->sin);
    else joule_rope_forward(kv, 2 * d->C, R / per, per, d->H, d->hs, 0, rope->cos, rope->sin);
}

void retro_cca_forward(float *y, cca_acts *a, cca_scratch *s, const float *x, const float *xn, const float *E,
                       const uint8_t *valid, const cca_w *w, const retro_layout *L, const retro_dims *d,
                       const retro_rope *rope) {
    const int C = d->C, N = L->B * L->T, NQ = L->NQ, R = L->G * d->k * 2 * d->m;
    retro_gather_rows(s->rows, xn, L, true, C);
    joule_linear_forward(a->q, s->rows, w->wq, NQ, C, C);
    joule_linear_forward(a->kv, E, w->wkv, R, d->D, 2 * C);
    if (d->rope) {
        joule_rope_rows(a->q, C, NQ, L->qpos, d->H, d->hs, rope->cos, rope->sin, false);
        rotate_keys(a->kv, R, d, rope, false);
    }
    const joule_gattn_plan p = retro_cca_plan(L, d, valid);
    joule_gattn_forward(a->O, C, a->P, a->q, C, a->kv, 2 * C, a->kv + C, 2 * C, &p);
    joule_linear_forward(s->rows, a->O, w->wo, NQ, C, C);
    if (y != x) memcpy(y, x, (size_t)N * C * sizeof *y);
    retro_scatter_add_rows(y, s->rows, L, true, C);
}

void retro_cca_backward(float *dxn, float *dE, const float *dy, const cca_acts *a, cca_scratch *s, const float *xn,
                        const float *E, const uint8_t *valid, const cca_w *w, const cca_w *g, const retro_layout *L,
                        const retro_dims *d, const retro_rope *rope) {
    const int C = d->C, N = L->B * L->T, NQ = L->NQ, R = L->G * d->k * 2 * d->m;
    float *dO = s->rows2, *dq = s->rows;
    retro_gather_rows(s->rows, dy, L, true, C);
    joule_linear_backward(dO, g->wo, s->rows, a->O, w->wo, NQ, C, C, false);
    memset(dq, 0, (size_t)NQ * C * sizeof *dq);
    memset(s->dkv, 0, (size_t)R * 2 * C * sizeof *s->dkv);
    const joule_gattn_plan p = retro_cca_plan(L, d, valid);
    joule_gattn_backward(dq, C, s->dkv, 2 * C, s->dkv + C, 2 * C, s->dS, dO, C, a->q, a->kv, a->kv + C, a->P, &p);
    if (d->rope) {
        joule_rope_rows(dq, C, NQ, L->qpos, d->H, d->hs, rope->cos, rope->sin, true);
        rotate_keys(s->dkv, R, d, rope, true);
    }
    joule_linear_backward(dE, g->wkv, s->dkv, E, w->wkv, R, d->D, 2 * C, true);
    /* dWq needs the gathered rows; then they give way to d(gathered xn) = dq Wq */
    float *X = s->rows2;
    retro_gather_rows(X, xn, L, true, C);
    joule_linear_backward(NULL, g->wq, dq, X, w->wq, NQ, C, C, false);
    joule_linear_backward(X, NULL, dq, NULL, w->wq, NQ, C, C, false);
    memset(dxn, 0, (size_t)N * C * sizeof *dxn);
    retro_scatter_add_rows(dxn, X, L, true, C);
}

uint64_t retro_cca_flops(const retro_dims *d, uint64_t G, uint64_t NQ) {
    if (d->k == 0 || G == 0) return 0;
    const uint64_t C = (uint64_t)d->C, D = (uint64_t)d->D, nk = (uint64_t)d->k * 2 * (uint64_t)d->m;
    return 2 * NQ * C * C         /* wq over the reading rows */
           + 2 * G * nk * D * 2 * C /* wk, wv over the encoded neighbours */
           + 4 * C * nk * NQ      /* scores and values */
           + 2 * NQ * C * C;      /* wo */
}

void retro_cca_one(float *o, float *P, const float *q, const float *kv, const uint8_t *valid, const retro_dims *d) {
    static const int zero = 0, one = 1;
    const joule_gattn_plan p = {.G = 1, .H = d->H, .hs = d->hs, .max_q = 1, .nk = d->k * 2 * d->m, .qrow = &zero,
                                .nq = &one, .krow = &zero, .nkg = NULL, .kmask = valid, .shared_keys = false};
    joule_gattn_forward(o, d->C, P, q, d->C, kv, 2 * d->C, kv + d->C, 2 * d->C, &p);
}
