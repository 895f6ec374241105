/* One-token RETRO inference: the CCA decode step, and the batched prefill of an empty
 * cache. The first CCA layer caches H (its normed input) for every position; when position
 * (u+1)m - 1 completes chunk u, the neighbours handed for chunk u are encoded against H of
 * that chunk, and every CCA layer projects them to keys/values once. Positions
 * (u+1)m - 1 .. (u+2)m - 2 then attend to them: the same m-1 shift as the batched forward.
 * Handed neighbours serve one encoding (a reset decoder never reuses a past query's). */
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

/* The batched prefill's buffers, for every chunk of a full context (allocated at the first
 * prefill: token-at-a-time users never pay for them). */
typedef struct {
    enc_acts enc;                    /* the prompt's encoded chunks, compacted */
    float *xn, *rstd, *q, *o;        /* [ctx, C], [ctx], [ctx, C], [ctx, C] */
    float *Hc;                       /* [nch*m, C] H rows of the encoded chunks */
    float *kv, *P;                   /* [nch*R, 2C], [nch][H][m][R] */
    int32_t *tok;                    /* [nch*R] */
    uint8_t *valid;                  /* [nch*R] */
    int *chunk, *qrow, *nq, *krow;   /* [nch] */
    int n_enc;                       /* chunks encoded by the last prefill */
} retro_prefill;

typedef struct {
    retro_dims d;
    int nch;             /* chunks in a full context */
    float *xn, *H;       /* [C], [ctx, C] */
    int32_t *tok;        /* [nch][k*2m] neighbours handed per chunk (PAD mapped to 0) */
    uint8_t *valid;      /* [nch][k*2m] */
    uint8_t *handed;     /* [nch] */
    int enc_chunk;       /* chunk whose keys/values the step path reads; -1 none */
    enc_acts enc;
    enc_layer_w *ew;
    float *kv;           /* [ncca][k*2m, 2C] */
    int enc_gen;         /* encodings done so far (a reset decoder may encode chunk u again) */
    int *kv_gen;         /* [ncca] encoding whose keys/values kv holds */
    float *q, *o, *P;    /* [C], [C], [H, k*2m] */
    int qrow, nq, krow;  /* the one-query plan */
    retro_prefill *pf;   /* NULL until the first batched prefill */
} retro_dec;

static void prefill_free(retro_prefill *p) {
    if (!p) return;
    float *bufs[] = {p->xn, p->rstd, p->q, p->o, p->Hc, p->kv, p->P};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(p->tok);
    joule_free(p->valid);
    free(p->chunk);
    free(p->qrow);
    free(p->nq);
    free(p->krow);
    retro_enc_free(&p->enc);
    free(p);
}

void retro_decoder_free(joule_decoder *dec) {
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    if (!s) return;
    float *bufs[] = {s->xn, s->H, s->kv, s->q, s->o, s->P};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(s->tok);
    joule_free(s->valid);
    free(s->handed);
    free(s->kv_gen);
    free(s->ew);
    retro_enc_free(&s->enc);
    prefill_free(s->pf);
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
    s->nch = d->ctx / d->m;
    const size_t NR = (size_t)s->nch * R;
    s->enc_chunk = -1;
    s->xn = joule_alloc(C * f);
    s->H = joule_alloc((size_t)d->ctx * C * f);
    s->tok = joule_alloc((NR ? NR : 1) * sizeof(int32_t));
    s->valid = joule_alloc(NR ? NR : 1);
    s->handed = calloc((size_t)s->nch + 1, 1);
    s->kv = joule_alloc(((size_t)d->ncca * R * 2 * C + 1) * f);
    s->kv_gen = malloc((size_t)d->ncca * sizeof(int));
    s->q = joule_alloc(C * f);
    s->o = joule_alloc(C * f);
    s->P = joule_alloc(((size_t)d->H * R + 1) * f);
    s->ew = calloc((size_t)d->Le, sizeof *s->ew);
    if (!s->xn || !s->H || !s->tok || !s->valid || !s->handed || !s->kv || !s->kv_gen || !s->q || !s->o || !s->P ||
        !s->ew) {
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
    if (chunk < 0 && !tokens) {
        memset(s->handed, 0, (size_t)s->nch);
        return JOULE_OK;
    }
    if (chunk < 0 || chunk >= s->nch)
        return joule_fail(JOULE_ERR_ARG, "set neighbours: chunk %d outside the context's %d chunks", chunk, s->nch);
    s->handed[chunk] = 0;
    if (!tokens) return JOULE_OK;
    const int V = s->d.V;
    const size_t n = (size_t)s->d.k * 2 * s->d.m;
    int32_t *tok = s->tok + (size_t)chunk * n;
    uint8_t *valid = s->valid + (size_t)chunk * n;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] != JOULE_RETRO_PAD && (tokens[i] < 0 || tokens[i] >= V))
            return joule_fail(JOULE_ERR_ARG, "neighbour token %d out of range [0, %d)", tokens[i], V);
        valid[i] = tokens[i] != JOULE_RETRO_PAD;
        tok[i] = valid[i] ? tokens[i] : 0;
    }
    s->handed[chunk] = 1;
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
            if (s->handed[u]) {
                enc_w ew = {.layers = s->ew};
                retro_enc_views(m, m->params, d, &ew);
                retro_enc_forward(&s->enc, d, &ew, s->tok + (size_t)u * R, s->valid + (size_t)u * R, 1, 1, mm,
                                  s->H + (size_t)u * mm * C);
                s->handed[u] = 0;
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
                                .nq = &s->nq, .krow = &s->krow, .kmask = s->valid + (size_t)s->enc_chunk * R,
                                .shared_keys = false};
    joule_gattn_forward(s->o, C, s->P, s->q, C, kv, 2 * C, kv + C, 2 * C, &p);
    joule_sgemv(C, C, 1.0f, w.wo, C, s->o, 1.0f, x);
    return JOULE_OK;
}

/* ---------------------------------------------------------------- batched prefill */

static int prefill_alloc(retro_dec *s) {
    if (s->pf) return JOULE_OK;
    const retro_dims *d = &s->d;
    retro_prefill *p = calloc(1, sizeof *p);
    if (!p) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO prefill buffers");
    const size_t C = (size_t)d->C, T = (size_t)d->ctx, R = (size_t)d->k * 2 * d->m, nch = (size_t)s->nch;
    const size_t f = sizeof(float);
    p->xn = joule_alloc(T * C * f);
    p->rstd = joule_alloc(T * f);
    p->q = joule_alloc(T * C * f);
    p->o = joule_alloc(T * C * f);
    p->Hc = joule_alloc(nch * d->m * C * f + f);
    p->kv = joule_alloc(nch * R * 2 * C * f + f);
    p->P = joule_alloc(nch * d->H * d->m * R * f + f);
    p->tok = joule_alloc(nch * R * sizeof(int32_t) + 1);
    p->valid = joule_alloc(nch * R + 1);
    int **ib[] = {&p->chunk, &p->qrow, &p->nq, &p->krow};
    bool ok = true;
    for (int i = 0; i < 4; i++) ok = ok && (*ib[i] = calloc(nch + 1, sizeof(int)));
    s->pf = p;
    if (!ok || !p->xn || !p->rstd || !p->q || !p->o || !p->Hc || !p->kv || !p->P || !p->tok || !p->valid) {
        prefill_free(p);
        s->pf = NULL;
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO prefill buffers");
    }
    int rc = retro_enc_alloc(&p->enc, d, (int)(nch * R), (int)(nch * d->m), false);
    if (rc) {
        prefill_free(p);
        s->pf = NULL;
    }
    return rc;
}

/* First CCA layer of a prefill over n rows: H, then every completed chunk with neighbours
 * handed encoded in one pass (compacted: chunk p->chunk[j] at rows j*R). */
static void prefill_encode(retro_dec *s, const joule_model *m, int n) {
    retro_prefill *p = s->pf;
    const retro_dims *d = &s->d;
    const int C = d->C, mm = d->m, R = d->k * 2 * mm;
    memcpy(s->H, p->xn, (size_t)n * C * sizeof(float));
    p->n_enc = 0;
    for (int u = 0; (u + 1) * mm <= n; u++) {
        if (!s->handed[u]) continue;
        const int j = p->n_enc++;
        p->chunk[j] = u;
        memcpy(p->tok + (size_t)j * R, s->tok + (size_t)u * R, (size_t)R * sizeof(int32_t));
        memcpy(p->valid + (size_t)j * R, s->valid + (size_t)u * R, (size_t)R);
        memcpy(p->Hc + (size_t)j * mm * C, s->H + (size_t)u * mm * C, (size_t)mm * C * sizeof(float));
        s->handed[u] = 0;
    }
    /* the step after the prefill reads the last completed chunk's keys/values, if encoded */
    const int last = n / mm - 1;
    s->enc_chunk = p->n_enc > 0 && p->chunk[p->n_enc - 1] == last ? last : -1;
    if (p->n_enc == 0) return;
    enc_w ew = {.layers = s->ew};
    retro_enc_views(m, m->params, d, &ew);
    retro_enc_forward(&p->enc, d, &ew, p->tok, p->valid, 1, p->n_enc, p->n_enc * mm, p->Hc);
    s->enc_gen++;
}

/* Encoded chunks j .. e-1 that follow one another have contiguous query rows, so their
 * projections run as one product of *rows rows starting at qrow[j]. Returns e. */
static int consecutive_run(const retro_prefill *p, int j, int G, int *rows) {
    int e = j + 1;
    while (e < G && p->chunk[e] == p->chunk[e - 1] + 1) e++;
    *rows = p->qrow[e - 1] + p->nq[e - 1] - p->qrow[j];
    return e;
}

/* x[n, C]: residual rows of positions 0 .. n-1 at CCA layer l, as n retro_decode_step calls
 * would change them (the same FLOPs: queries only where a chunk's neighbours are in view). */
int retro_prefill_rows(joule_decoder *dec, int l, float *x, int n) {
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    const joule_model *m = dec->m;
    const retro_dims *d = &s->d;
    const int C = d->C, mm = d->m, R = d->k * 2 * mm, c = d->ord[l];
    if (dec->pos != 0 || n < 1 || n > d->ctx)
        return joule_fail(JOULE_ERR_ARG, "RETRO prefill: %d rows at position %d (needs an empty cache)", n, dec->pos);
    if (R == 0) return JOULE_OK;
    int rc = prefill_alloc(s);
    if (rc) return rc;
    retro_prefill *p = s->pf;
    cca_w w;
    retro_cca_views(m, m->params, l, &w);
    joule_rmsnorm_forward(p->xn, p->rstd, x, w.norm, n, C, d->eps);
    if (l == d->l0) prefill_encode(s, m, n);
    const int G = p->n_enc;
    if (G == 0) return JOULE_OK;
    joule_linear_forward(p->kv, p->enc.out, w.wkv, G * R, d->D, 2 * C);
    for (int j = 0; j < G; j++) {
        const int first = (p->chunk[j] + 1) * mm - 1; /* the m-1 shift */
        p->qrow[j] = first;
        p->nq[j] = n - first < mm ? n - first : mm;
        p->krow[j] = j * R;
    }
    /* queries and output projection over runs of rows whose chunks are consecutive */
    for (int j = 0, e, rows; j < G; j = e) {
        e = consecutive_run(p, j, G, &rows);
        const size_t r0 = (size_t)p->qrow[j] * C;
        joule_linear_forward(p->q + r0, p->xn + r0, w.wq, rows, C, C);
    }
    const joule_gattn_plan plan = {.G = G, .H = d->H, .hs = d->hs, .max_q = mm, .nk = R, .qrow = p->qrow,
                                   .nq = p->nq, .krow = p->krow, .kmask = p->valid, .shared_keys = false};
    joule_gattn_forward(p->o, C, p->P, p->q, C, p->kv, 2 * C, p->kv + C, 2 * C, &plan);
    for (int j = 0, e, rows; j < G; j = e) {
        e = consecutive_run(p, j, G, &rows);
        const size_t r0 = (size_t)p->qrow[j] * C;
        joule_sgemm(false, true, rows, C, C, 1.0f, p->o + r0, C, w.wo, C, 1.0f, x + r0, C);
    }
    if (s->enc_chunk >= 0) { /* hand the last chunk's keys/values to the steps that follow */
        memcpy(s->kv + (size_t)c * R * 2 * C, p->kv + (size_t)(G - 1) * R * 2 * C, (size_t)R * 2 * C * sizeof(float));
        s->kv_gen[c] = s->enc_gen;
    }
    return JOULE_OK;
}
