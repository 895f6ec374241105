/* The grouped attention kernel behind CCA and the encoder's two attentions (joule/retro.h):
 * many small groups of queries, each over its own keys (a chunk's m queries over k*2m
 * neighbour tokens; a neighbour's 2m tokens over each other or over its chunk's rows). */
#include <math.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

/* The group's products through joule_sgemm (counted there). Plain loops were tried for
 * these shapes (heads of 4-8, 32-128 keys) and ran 2-4x slower than OpenBLAS. */
static void prod_abt(int m, int n, int hs, float alpha, const float *A, int lda, const float *B, int ldb, float *C,
                     int ldc) {
    joule_sgemm(false, true, m, n, hs, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}
static void prod_ab(int m, int n, int hs, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc) {
    joule_sgemm(false, false, m, hs, n, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
static void prod_atb(int m, int n, int hs, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    joule_sgemm(true, false, n, hs, m, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
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
        prod_abt(nq, nkg, hs, scale, qg, ldq, kg, ldk, S, nk);
        for (int i = 0; i < nq; i++) joule_softmax_masked(S + (size_t)i * nk, mask, nkg);
        prod_ab(nq, nkg, hs, S, nk, vg, ldv, 0.0f, og, ldo);
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
    prod_abt(nq, nkg, hs, 1.0f, dog, ldo, v + ko * ldv + col, ldv, dSg, nk);
    for (int i = 0; i < nq; i++) {
        float *ds = dSg + (size_t)i * nk;
        const float *pr = S + (size_t)i * nk;
        float dot = 0.0f;
        for (int j = 0; j < nkg; j++) dot += pr[j] * ds[j];
        for (int j = 0; j < nkg; j++) ds[j] = scale * pr[j] * (ds[j] - dot);
    }
    prod_ab(nq, nkg, hs, dSg, nk, k + ko * ldk + col, ldk, 1.0f, dq + qo * ldq + col, ldq);
    prod_atb(nq, nkg, hs, dSg, nk, q + qo * ldq + col, ldq, dk + ko * ldk + col, ldk);
    prod_atb(nq, nkg, hs, S, nk, dog, ldo, dv + ko * ldv + col, ldv);
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

