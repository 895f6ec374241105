/* One-token RETRO inference: the CCA decode step. The first CCA layer caches H (its
 * normed input) for every position; when position (u+1)m - 1 completes chunk u, the
 * neighbours handed for chunk u are encoded against H of that chunk, and every CCA layer
 * projects them to keys/values once. Positions (u+1)m - 1 .. (u+2)m - 2 then attend to
 * them: the same m-1 shift as the batched forward. */
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

typedef struct {
    retro_dims d;
    float *xn, *H;       /* [C], [ctx, C] */
    int32_t *tok;        /* [k*2m] neighbours of nbr_chunk (PAD mapped to 0) */
    uint8_t *valid;
    int nbr_chunk;       /* chunk the handed neighbours belong to; -1 none */
    int enc_chunk;       /* chunk encoded in enc.out; -1 none */
    enc_acts enc;
    enc_layer_w *ew;
    float *kv;           /* [ncca][k*2m, 2C] */
    int enc_gen;         /* encodings done so far (a reset decoder may encode chunk u again) */
    int *kv_gen;         /* [ncca] encoding whose keys/values kv holds */
    float *q, *o, *P;    /* [C], [C], [H, k*2m] */
    int qrow, nq, krow;  /* the one-query plan */
} retro_dec;

void retro_decoder_free(joule_decoder *dec) {
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    if (!s) return;
    float *bufs[] = {s->xn, s->H, s->kv, s->q, s->o, s->P};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(s->tok);
    joule_free(s->valid);
    free(s->kv_gen);
    free(s->ew);
    retro_enc_free(&s->enc);
    free(s);
    dec->ext[JOULE_EXT_CCA] = NULL;
}

int retro_decoder_create(joule_decoder *dec) {
    retro_dec *s = calloc(1, sizeof *s);
    if (!s) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO decoder");
    dec->ext[JOULE_EXT_CCA] = s;
    retro_dims *d = &s->d;
    retro_dims_from_config(d, &dec->m->cfg);
    const size_t C = (size_t)d->C, R = (size_t)d->k * 2 * d->m, f = sizeof(float);
    s->nbr_chunk = s->enc_chunk = -1;
    s->xn = joule_alloc(C * f);
    s->H = joule_alloc((size_t)d->ctx * C * f);
    s->tok = joule_alloc((R ? R : 1) * sizeof(int32_t));
    s->valid = joule_alloc(R ? R : 1);
    s->kv = joule_alloc(((size_t)d->ncca * R * 2 * C + 1) * f);
    s->kv_gen = malloc((size_t)d->ncca * sizeof(int));
    s->q = joule_alloc(C * f);
    s->o = joule_alloc(C * f);
    s->P = joule_alloc(((size_t)d->H * R + 1) * f);
    s->ew = calloc((size_t)d->Le, sizeof *s->ew);
    if (!s->xn || !s->H || !s->tok || !s->valid || !s->kv || !s->kv_gen || !s->q || !s->o || !s->P || !s->ew) {
        retro_decoder_free(dec);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO decoder");
    }
    for (int c = 0; c < d->ncca; c++) s->kv_gen[c] = -1;
    int rc = R ? retro_enc_alloc(&s->enc, d, (int)R, d->m, false) : JOULE_OK;
    if (rc) retro_decoder_free(dec);
    return rc;
}

int joule_retro_decoder_set_neighbours(joule_decoder *dec, int chunk, const int32_t *tokens) {
    retro_dec *s = dec->m->ext_ops[JOULE_EXT_CCA] ? dec->ext[JOULE_EXT_CCA] : NULL;
    if (!s) return joule_fail(JOULE_ERR_ARG, "set neighbours: not a RETRO decoder");
    s->nbr_chunk = -1;
    if (!tokens) return JOULE_OK;
    const int V = s->d.V;
    const size_t n = (size_t)s->d.k * 2 * s->d.m;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] != JOULE_RETRO_PAD && (tokens[i] < 0 || tokens[i] >= V))
            return joule_fail(JOULE_ERR_ARG, "neighbour token %d out of range [0, %d)", tokens[i], V);
        s->valid[i] = tokens[i] != JOULE_RETRO_PAD;
        s->tok[i] = s->valid[i] ? tokens[i] : 0;
    }
    s->nbr_chunk = chunk;
    return JOULE_OK;
}

int retro_decode_step(joule_decoder *dec, int l, const float *unused, float *x) {
    (void)unused;
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    const joule_model *m = dec->m;
    const retro_dims *d = &s->d;
    const int C = d->C, mm = d->m, pos = dec->pos, c = d->ord[l];
    const int R = d->k * 2 * mm;
    if (R == 0) return JOULE_OK;
    cca_w w;
    retro_cca_views(m, m->params, l, &w);
    float rstd;
    joule_rmsnorm_forward(s->xn, &rstd, x, w.norm, 1, C, d->eps);
    if (l == d->l0) {
        memcpy(s->H + (size_t)pos * C, s->xn, (size_t)C * sizeof(float));
        if ((pos + 1) % mm == 0) { /* chunk u just completed */
            const int u = (pos + 1) / mm - 1;
            s->enc_chunk = -1;
            if (s->nbr_chunk == u) {
                enc_w ew = {.layers = s->ew};
                retro_enc_views(m, m->params, d, &ew);
                retro_enc_forward(&s->enc, d, &ew, s->tok, s->valid, 1, 1, mm, s->H + (size_t)u * mm * C);
                s->enc_chunk = u;
                s->enc_gen++;
            }
        }
    }
    if (pos < mm - 1 || s->enc_chunk < 0 || s->enc_chunk != (pos + 1) / mm - 1) return JOULE_OK;
    float *kv = s->kv + (size_t)c * R * 2 * C;
    if (s->kv_gen[c] != s->enc_gen) {
        joule_linear_forward(kv, s->enc.out, w.wkv, R, d->D, 2 * C);
        s->kv_gen[c] = s->enc_gen;
    }
    joule_sgemv(C, C, 1.0f, w.wq, C, s->xn, 0.0f, s->q);
    s->qrow = s->krow = 0;
    s->nq = 1;
    const joule_gattn_plan p = {.G = 1, .H = d->H, .hs = d->hs, .max_q = 1, .nk = R, .qrow = &s->qrow,
                                .nq = &s->nq, .krow = &s->krow, .kmask = s->valid, .shared_keys = false};
    joule_gattn_forward(s->o, C, s->P, s->q, C, kv, 2 * C, kv + C, 2 * C, &p);
    joule_sgemv(C, C, 1.0f, w.wo, C, s->o, 1.0f, x);
    return JOULE_OK;
}
