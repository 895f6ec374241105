/* Chunked cross-attention: the CCA sub-layer op pair (docs/MODEL.md §7), on the grouped
 * attention kernel of gattn.c. Every product is counted. */
#include <math.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

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
