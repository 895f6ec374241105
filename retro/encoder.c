/* The neighbour encoder (docs/MODEL.md §7): a small bidirectional Transformer over each
 * retrieved neighbour (2m tokens: chunk + continuation, padding masked) whose tokens also
 * cross-attend to the decoder's activations H of the chunk the neighbour was retrieved
 * for, as in RETRO. Per layer:
 *   e += Wo  SelfAttn(RoPE(Wq n1), RoPE(Wk n1), Wv n1),   n1 = RMSNorm(e)
 *   e += Wxo CrossAttn(Wxq n2, Wxk H_u, Wxv H_u),          n2 = RMSNorm(e)
 *        (with positions: queries at their place in the neighbour, keys at theirs in the
 *        chunk, so a neighbour token finds the chunk token it lies over)
 *   e += W2 SwiGLU(W1 n3, W3 n3),                          n3 = RMSNorm(e)
 * E = RMSNorm(e). */
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

int retro_enc_alloc(enc_acts *a, const retro_dims *d, int rows, int hrows, bool train) {
    memset(a, 0, sizeof *a);
    const size_t R = (size_t)rows, NH = (size_t)hrows, D = (size_t)d->D, Fe = (size_t)d->Fe, L = (size_t)d->Le;
    const size_t m = (size_t)d->m, He = (size_t)d->He, G = R / (2 * m), f = sizeof(float);
    const size_t P1 = G * He * 2 * m * 2 * m, P2 = G * He * 2 * m * m;
    a->cap_rows = rows;
    a->cap_hrows = hrows;
    a->train = train;
    float **bufs[] = {&a->res, &a->n1, &a->rstd1, &a->qkv, &a->P1, &a->o1, &a->mid1, &a->n2, &a->rstd2,
                      &a->qx, &a->kvx, &a->P2, &a->o2, &a->mid2, &a->n3, &a->rstd3, &a->h13, &a->g,
                      &a->out, &a->rstdf, &a->rope_cos, &a->rope_sin, &a->dres, &a->dn, &a->dqkv, &a->dq,
                      &a->dkvx, &a->dh13, &a->dg, &a->dS};
    /* Inference keeps one layer's activations (reused); training keeps every layer's. */
    const size_t LL = train ? L : 1;
    const size_t sizes[] = {(L + 1) * R * D, LL * R * D, LL * R, LL * R * 3 * D, LL * P1, LL * R * D, LL * R * D,
                            LL * R * D, LL * R, LL * R * D, LL * NH * 2 * D, LL * P2, LL * R * D, LL * R * D,
                            LL * R * D, LL * R, LL * R * 2 * Fe, LL * R * Fe, R * D, R, 2 * m * (size_t)d->hse / 2,
                            2 * m * (size_t)d->hse / 2, R * D, R * D, R * 3 * D, R * D, NH * 2 * D, R * 2 * Fe, R * Fe,
                            (P1 > P2 ? P1 : P2)};
    const size_t nbuf = sizeof bufs / sizeof *bufs, nfwd = train ? nbuf : nbuf - 8;
    for (size_t i = 0; i < nfwd; i++) {
        *bufs[i] = joule_alloc((sizes[i] ? sizes[i] : 1) * f);
        if (!*bufs[i]) {
            retro_enc_free(a);
            return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO encoder's activations");
        }
    }
    int **ibufs[] = {&a->qrow_s, &a->nq_s, &a->qrow_x, &a->nq_x, &a->krow_x, &a->nk_x};
    for (size_t i = 0; i < sizeof ibufs / sizeof *ibufs; i++) {
        *ibufs[i] = calloc(G ? G : 1, sizeof(int));
        if (!*ibufs[i]) {
            retro_enc_free(a);
            return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO encoder's activations");
        }
    }
    joule_rope_tables(a->rope_cos, a->rope_sin, 2 * d->m, d->hse, d->theta);
    return JOULE_OK;
}

void retro_enc_free(enc_acts *a) {
    float *bufs[] = {a->res, a->n1, a->rstd1, a->qkv, a->P1, a->o1, a->mid1, a->n2, a->rstd2, a->qx,
                     a->kvx, a->P2, a->o2, a->mid2, a->n3, a->rstd3, a->h13, a->g, a->out, a->rstdf,
                     a->rope_cos, a->rope_sin, a->dres, a->dn, a->dqkv, a->dq, a->dkvx, a->dh13, a->dg, a->dS};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    free(a->qrow_s);
    free(a->nq_s);
    free(a->qrow_x);
    free(a->nq_x);
    free(a->krow_x);
    free(a->nk_x);
    memset(a, 0, sizeof *a);
}

/* Per-layer buffer of layer i (training keeps all layers; inference reuses slot 0). */
#define LAYER(buf, i, size) ((buf) + (a->train ? (size_t)(i) * (size) : 0))

typedef struct {
    joule_gattn_plan self, cross;
} enc_plans;

/* Self-attention: each neighbour is a group over its own 2m tokens. Cross-attention:
 * neighbour j of chunk g reads chunk g's rows of Hc. */
static enc_plans make_plans(enc_acts *a, const retro_dims *d, const uint8_t *valid, const enc_chunks *ch) {
    const int m = d->m, k = d->k, G = ch->G * k;
    for (int g = 0; g < ch->G; g++)
        for (int j = 0; j < k; j++) {
            const int i = g * k + j;
            a->qrow_s[i] = a->qrow_x[i] = i * 2 * m;
            a->nq_s[i] = a->nq_x[i] = 2 * m;
            a->krow_x[i] = ch->hoff[g];
            a->nk_x[i] = ch->hlen[g];
        }
    enc_plans p;
    p.self = (joule_gattn_plan){.G = G, .H = d->He, .hs = d->hse, .max_q = 2 * m, .nk = 2 * m, .qrow = a->qrow_s,
                                .nq = a->nq_s, .krow = a->qrow_s, .kmask = valid, .shared_keys = false};
    p.cross = (joule_gattn_plan){.G = G, .H = d->He, .hs = d->hse, .max_q = 2 * m, .nk = m, .qrow = a->qrow_x,
                                 .nq = a->nq_x, .krow = a->krow_x, .nkg = a->nk_x, .kmask = NULL,
                                 .shared_keys = true};
    return p;
}

/* Positions of the cross-attention (docs/MODEL.md §7): queries at their token's place in
 * the neighbour (0 .. 2m-1), keys at their row's place in the chunk (hpos). */
static void rotate_cross(enc_acts *a, const retro_dims *d, float *q, float *kv, const enc_chunks *ch, bool backward) {
    if (!d->rope) return;
    const int per = 2 * d->m, D = d->D;
    if (backward) joule_rope_backward(q, D, a->R / per, per, d->He, d->hse, 0, a->rope_cos, a->rope_sin);
    else joule_rope_forward(q, D, a->R / per, per, d->He, d->hse, 0, a->rope_cos, a->rope_sin);
    joule_rope_rows(kv, 2 * D, ch->NH, ch->hpos, d->He, d->hse, a->rope_cos, a->rope_sin, backward);
}

void retro_enc_forward(enc_acts *a, const retro_dims *d, const enc_w *w, const int32_t *tok, const uint8_t *valid,
                       const enc_chunks *ch, const float *Hc) {
    const int m = d->m, D = d->D, Fe = d->Fe, C = d->C, He = d->He, hse = d->hse;
    const int R = ch->G * d->k * 2 * m, G = R / (2 * m), NH = ch->NH;
    const size_t RD = (size_t)R * D, P1 = (size_t)G * He * 4 * m * m, P2 = (size_t)G * He * 2 * m * m;
    const size_t cap = (size_t)a->cap_rows * D; /* layer stride of res */
    a->G = ch->G;
    a->R = R;
    a->NH = NH;
    a->tok = tok;
    a->valid = valid;
    enc_plans p = make_plans(a, d, valid, ch);
    joule_embedding_forward(a->res, tok, w->tok_emb, R, D);
    for (int i = 0; i < d->Le; i++) {
        const enc_layer_w *lw = &w->layers[i];
        float *e = a->res + (size_t)i * cap, *next = a->res + (size_t)(i + 1) * cap;
        float *n1 = LAYER(a->n1, i, RD), *qkv = LAYER(a->qkv, i, 3 * RD), *o1 = LAYER(a->o1, i, RD);
        float *mid1 = LAYER(a->mid1, i, RD), *n2 = LAYER(a->n2, i, RD), *qx = LAYER(a->qx, i, RD);
        float *kvx = LAYER(a->kvx, i, (size_t)a->cap_hrows * 2 * D), *o2 = LAYER(a->o2, i, RD);
        float *mid2 = LAYER(a->mid2, i, RD), *n3 = LAYER(a->n3, i, RD), *h13 = LAYER(a->h13, i, (size_t)R * 2 * Fe);
        float *g = LAYER(a->g, i, (size_t)R * Fe);
        /* bidirectional self-attention within each neighbour (relative positions by RoPE) */
        joule_rmsnorm_forward(n1, LAYER(a->rstd1, i, R), e, lw->attn_norm, R, D, d->eps);
        joule_linear_forward(qkv, n1, lw->wqkv, R, D, 3 * D);
        joule_rope_forward(qkv, 3 * D, G, 2 * m, He, hse, 0, a->rope_cos, a->rope_sin);
        joule_rope_forward(qkv + D, 3 * D, G, 2 * m, He, hse, 0, a->rope_cos, a->rope_sin);
        joule_gattn_forward(o1, D, LAYER(a->P1, i, P1), qkv, 3 * D, qkv + D, 3 * D, qkv + 2 * D, 3 * D, &p.self);
        memcpy(mid1, e, RD * sizeof(float));
        joule_sgemm(false, true, R, D, D, 1.0f, o1, D, lw->wo, D, 1.0f, mid1, D);
        /* cross-attention to the decoder's rows of the retrieving chunk */
        joule_rmsnorm_forward(n2, LAYER(a->rstd2, i, R), mid1, lw->xnorm, R, D, d->eps);
        joule_linear_forward(qx, n2, lw->xwq, R, D, D);
        joule_linear_forward(kvx, Hc, lw->xwkv, NH, C, 2 * D);
        rotate_cross(a, d, qx, kvx, ch, false);
        joule_gattn_forward(o2, D, LAYER(a->P2, i, P2), qx, D, kvx, 2 * D, kvx + D, 2 * D, &p.cross);
        memcpy(mid2, mid1, RD * sizeof(float));
        joule_sgemm(false, true, R, D, D, 1.0f, o2, D, lw->xwo, D, 1.0f, mid2, D);
        /* SwiGLU FFN */
        joule_rmsnorm_forward(n3, LAYER(a->rstd3, i, R), mid2, lw->ffn_norm, R, D, d->eps);
        joule_linear_forward(h13, n3, lw->w13, R, D, 2 * Fe);
        joule_swiglu_forward(g, h13, R, Fe);
        memcpy(next, mid2, RD * sizeof(float));
        joule_sgemm(false, true, R, D, Fe, 1.0f, g, Fe, lw->w2, Fe, 1.0f, next, D);
    }
    joule_rmsnorm_forward(a->out, a->rstdf, a->res + (size_t)d->Le * cap, w->norm, R, D, d->eps);
}

void retro_enc_backward(enc_acts *a, const retro_dims *d, const enc_w *w, const enc_w *gw, const float *dE,
                        const enc_chunks *ch, const float *Hc, float *dHc) {
    const int m = d->m, D = d->D, Fe = d->Fe, C = d->C, He = d->He, hse = d->hse;
    const int R = a->R, G = R / (2 * m), NH = a->NH;
    const size_t RD = (size_t)R * D, P1 = (size_t)G * He * 4 * m * m, P2 = (size_t)G * He * 2 * m * m;
    const size_t cap = (size_t)a->cap_rows * D;
    enc_plans p = make_plans(a, d, a->valid, ch);
    memset(a->dres, 0, RD * sizeof(float));
    memset(dHc, 0, (size_t)NH * C * sizeof(float));
    joule_rmsnorm_backward(a->dres, gw->norm, dE, a->res + (size_t)d->Le * cap, w->norm, a->rstdf, R, D);
    for (int i = d->Le - 1; i >= 0; i--) {
        const enc_layer_w *lw = &w->layers[i], *lg = &gw->layers[i];
        const float *e = a->res + (size_t)i * cap;
        const float *n1 = LAYER(a->n1, i, RD), *qkv = LAYER(a->qkv, i, 3 * RD), *o1 = LAYER(a->o1, i, RD);
        const float *mid1 = LAYER(a->mid1, i, RD), *n2 = LAYER(a->n2, i, RD), *qx = LAYER(a->qx, i, RD);
        const float *kvx = LAYER(a->kvx, i, (size_t)a->cap_hrows * 2 * D), *o2 = LAYER(a->o2, i, RD);
        const float *mid2 = LAYER(a->mid2, i, RD), *n3 = LAYER(a->n3, i, RD);
        const float *h13 = LAYER(a->h13, i, (size_t)R * 2 * Fe), *g = LAYER(a->g, i, (size_t)R * Fe);
        /* FFN; dres holds d(layer output) */
        joule_linear_backward(a->dg, lg->w2, a->dres, g, lw->w2, R, Fe, D, false);
        joule_swiglu_backward(a->dh13, a->dg, h13, R, Fe);
        joule_linear_backward(a->dn, lg->w13, a->dh13, n3, lw->w13, R, D, 2 * Fe, false);
        joule_rmsnorm_backward(a->dres, lg->ffn_norm, a->dn, mid2, lw->ffn_norm, LAYER(a->rstd3, i, R), R, D);
        /* cross-attention; dres holds d(mid2) */
        joule_linear_backward(a->dn, lg->xwo, a->dres, o2, lw->xwo, R, D, D, false); /* dn = d(o2) */
        memset(a->dq, 0, RD * sizeof(float));
        memset(a->dkvx, 0, (size_t)NH * 2 * D * sizeof(float));
        joule_gattn_backward(a->dq, D, a->dkvx, 2 * D, a->dkvx + D, 2 * D, a->dS, a->dn, D, qx, kvx, kvx + D,
                             LAYER(a->P2, i, P2), &p.cross);
        rotate_cross(a, d, a->dq, a->dkvx, ch, true);
        joule_linear_backward(dHc, lg->xwkv, a->dkvx, Hc, lw->xwkv, NH, C, 2 * D, true);
        joule_linear_backward(a->dn, lg->xwq, a->dq, n2, lw->xwq, R, D, D, false);
        joule_rmsnorm_backward(a->dres, lg->xnorm, a->dn, mid1, lw->xnorm, LAYER(a->rstd2, i, R), R, D);
        /* self-attention; dres holds d(mid1) */
        joule_linear_backward(a->dn, lg->wo, a->dres, o1, lw->wo, R, D, D, false); /* dn = d(o1) */
        memset(a->dqkv, 0, 3 * RD * sizeof(float));
        joule_gattn_backward(a->dqkv, 3 * D, a->dqkv + D, 3 * D, a->dqkv + 2 * D, 3 * D, a->dS, a->dn, D, qkv,
                             qkv + D, qkv + 2 * D, LAYER(a->P1, i, P1), &p.self);
        joule_rope_backward(a->dqkv, 3 * D, G, 2 * m, He, hse, 0, a->rope_cos, a->rope_sin);
        joule_rope_backward(a->dqkv + D, 3 * D, G, 2 * m, He, hse, 0, a->rope_cos, a->rope_sin);
        joule_linear_backward(a->dn, lg->wqkv, a->dqkv, n1, lw->wqkv, R, D, 3 * D, false);
        joule_rmsnorm_backward(a->dres, lg->attn_norm, a->dn, e, lw->attn_norm, LAYER(a->rstd1, i, R), R, D);
    }
    joule_embedding_backward(gw->tok_emb, a->dres, a->tok, R, D);
}

uint64_t retro_enc_flops(const retro_dims *d, uint64_t G, uint64_t NH) {
    if (d->k == 0 || G == 0) return 0;
    const uint64_t m = (uint64_t)d->m, R = G * (uint64_t)d->k * 2 * m, NHk = NH * (uint64_t)d->k;
    const uint64_t D = (uint64_t)d->D, C = (uint64_t)d->C, Fe = (uint64_t)d->Fe;
    const uint64_t layer = 2 * R * D * 3 * D + 4 * D * 2 * m * R + 2 * R * D * D /* self-attention */
                           + 2 * R * D * D + 2 * NH * C * 2 * D                 /* cross: queries, keys/values */
                           + 4 * D * 2 * m * NHk + 2 * R * D * D               /* cross: attention, output */
                           + 2 * R * D * 2 * Fe + 2 * R * Fe * D;              /* FFN */
    return (uint64_t)d->Le * layer;
}
