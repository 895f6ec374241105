/* One-token RETRO inference: the CCA decode step, and the batched prefill of an empty
 * cache. The first CCA layer caches H (its normed input) for every position; when position
 * p is the last token of a chunk whose neighbours were handed, they are encoded against H
 * of that chunk's rows, and every CCA layer projects them to keys/values once. Positions
 * p .. p+m-1 then attend to them: the same m-1 shift as the batched forward. Handed
 * neighbours serve one encoding (a reset decoder never reuses a past query's). Each chunk
 * that comes into view leaves a copy of its keys/values in its slot, so a truncation back to
 * any position at or after the prefill restores the chunk in view there without encoding
 * anything again (retro_decoder_truncate). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

enum { NO_CHUNK = INT_MIN };

/* The batched prefill's buffers, for every chunk of a full context (allocated at the first
 * prefill: token-at-a-time users never pay for them). */
typedef struct {
    retro_layout L;        /* the prompt's chunks (one sequence of n rows) */
    joule_retro_chunk *ch; /* [nslots] */
    enc_acts enc;          /* their encoding */
    float *xn, *rstd, *Hc; /* [ctx, C], [ctx], [ctx, C] */
    cca_acts ca;           /* q, O [ctx, C]; kv [nslots*R, 2C]; P */
    cca_scratch cs;        /* rows, rows2 [ctx, C] */
    int32_t *tok;          /* [nslots*R] */
    uint8_t *valid;        /* [nslots*R] */
} retro_prefill;

typedef struct {
    retro_dims d;
    int nslots;          /* chunks one context can hand: slot (last + m - 1) / m */
    float *xn, *H;       /* [C], [ctx, C] */
    retro_rope rope;     /* [2m, hs/2] */
    int32_t *tok;        /* [nslots][k*2m] neighbours handed (PAD mapped to 0) */
    uint8_t *valid;      /* [nslots][k*2m] */
    int *slot_last;      /* [nslots] the chunk each slot was handed for */
    uint8_t *handed;     /* [nslots] */
    int act_last;        /* last token of the chunk in view for the steps; NO_CHUNK none */
    uint8_t *act_valid;  /* [k*2m] its neighbours' mask */
    enc_acts enc;
    enc_layer_w *ew;
    int *hpos;           /* [m] 0 .. m-1: positions of a chunk's rows */
    float *kv;           /* [ncca][k*2m, 2C] */
    int enc_gen;         /* encodings done so far (a reset decoder may encode the same chunk again) */
    int *kv_gen;         /* [ncca] encoding whose keys/values kv holds */
    float *q, *o, *P;    /* [C], [C], [H, k*2m] */
    retro_prefill *pf;   /* NULL until the first batched prefill */
    /* what truncation restores: per slot, the chunk that came into view (NO_CHUNK none),
     * its neighbours' mask and every CCA layer's keys/values */
    int *seen_last;      /* [nslots] */
    uint8_t *seen_valid; /* [nslots][k*2m] */
    float *seen_kv;      /* [nslots][ncca][k*2m, 2C] */
    int pf_n;            /* rows of the prefill since the last reset: truncation stops there */
} retro_dec;

static void prefill_free(retro_prefill *p) {
    if (!p) return;
    float *bufs[] = {p->xn, p->rstd, p->Hc, p->ca.q, p->ca.kv, p->ca.P, p->ca.O, p->cs.rows, p->cs.rows2};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(p->tok);
    joule_free(p->valid);
    free(p->ch);
    retro_layout_free(&p->L);
    retro_enc_free(&p->enc);
    free(p);
}

void retro_decoder_free(joule_decoder *dec) {
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    if (!s) return;
    float *bufs[] = {s->xn, s->H, s->kv, s->q, s->o, s->P, s->rope.cos, s->rope.sin, s->seen_kv};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(s->tok);
    joule_free(s->valid);
    free(s->slot_last);
    free(s->handed);
    free(s->act_valid);
    free(s->hpos);
    free(s->kv_gen);
    free(s->seen_last);
    joule_free(s->seen_valid);
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
    const size_t C = (size_t)d->C, R = (size_t)d->k * 2 * d->m, f = sizeof(float), half = (size_t)d->hs / 2 * 2 * d->m;
    s->nslots = retro_max_chunks(d->m, d->ctx);
    const size_t NR = (size_t)s->nslots * R;
    s->act_last = NO_CHUNK;
    s->xn = joule_alloc(C * f);
    s->H = joule_alloc((size_t)d->ctx * C * f);
    s->rope.cos = joule_alloc(half * f + f);
    s->rope.sin = joule_alloc(half * f + f);
    s->tok = joule_alloc((NR ? NR : 1) * sizeof(int32_t));
    s->valid = joule_alloc(NR ? NR : 1);
    s->slot_last = calloc((size_t)s->nslots, sizeof(int));
    s->handed = calloc((size_t)s->nslots, 1);
    s->act_valid = calloc(R + 1, 1);
    s->hpos = calloc((size_t)d->m, sizeof(int));
    s->kv = joule_alloc(((size_t)d->ncca * R * 2 * C + 1) * f);
    s->kv_gen = malloc(((size_t)d->ncca + 1) * sizeof(int));
    s->q = joule_alloc(C * f);
    s->o = joule_alloc(C * f);
    s->P = joule_alloc(((size_t)d->H * R + 1) * f);
    s->ew = calloc((size_t)d->Le + 1, sizeof *s->ew);
    s->seen_last = malloc((size_t)s->nslots * sizeof(int));
    s->seen_valid = joule_alloc(NR + 1);
    s->seen_kv = joule_alloc(((size_t)s->nslots * d->ncca * R * 2 * C + 1) * f);
    if (!s->seen_last || !s->seen_valid || !s->seen_kv) {
        retro_decoder_free(dec);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO decoder");
    }
    for (int i = 0; i < s->nslots; i++) s->seen_last[i] = NO_CHUNK;
    if (!s->xn || !s->H || !s->rope.cos || !s->rope.sin || !s->tok || !s->valid || !s->slot_last || !s->handed ||
        !s->act_valid || !s->hpos || !s->kv || !s->kv_gen || !s->q || !s->o || !s->P || !s->ew) {
        retro_decoder_free(dec);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO decoder");
    }
    joule_rope_tables(s->rope.cos, s->rope.sin, 2 * d->m, d->hs, d->theta);
    for (int i = 0; i < d->m; i++) s->hpos[i] = i;
    for (int c = 0; c < d->ncca; c++) s->kv_gen[c] = -1;
    int rc = R ? retro_enc_alloc(&s->enc, d, (int)R, d->m, false) : JOULE_OK;
    if (rc) retro_decoder_free(dec);
    return rc;
}

static retro_dec *dec_state(joule_decoder *dec) {
    return dec->m->ext_ops[JOULE_EXT_CCA] ? dec->ext[JOULE_EXT_CCA] : NULL;
}

int joule_retro_decoder_clear(joule_decoder *dec) {
    retro_dec *s = dec_state(dec);
    if (!s) return joule_fail(JOULE_ERR_ARG, "set neighbours: not a RETRO decoder");
    memset(s->handed, 0, (size_t)s->nslots);
    return JOULE_OK;
}

int joule_retro_decoder_set_neighbours(joule_decoder *dec, int last, const int32_t *tokens) {
    retro_dec *s = dec_state(dec);
    if (!s) return joule_fail(JOULE_ERR_ARG, "set neighbours: not a RETRO decoder");
    const int m = s->d.m, V = s->d.V;
    if (last < 1 - m || last >= s->d.ctx)
        return joule_fail(JOULE_ERR_ARG, "set neighbours: a chunk ending at position %d, outside [%d, %d)", last,
                          1 - m, s->d.ctx);
    if (dec->pos > 0 && last < dec->pos) /* an empty cache also takes one that ended before it */
        return joule_fail(JOULE_ERR_ARG, "set neighbours: position %d is already in the cache (%d tokens)", last,
                          dec->pos);
    const int slot = (last + m - 1) / m;
    s->handed[slot] = 0;
    if (!tokens) return JOULE_OK;
    const size_t n = (size_t)s->d.k * 2 * m;
    int32_t *tok = s->tok + (size_t)slot * n;
    uint8_t *valid = s->valid + (size_t)slot * n;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] != JOULE_RETRO_PAD && (tokens[i] < 0 || tokens[i] >= V))
            return joule_fail(JOULE_ERR_ARG, "neighbour token %d out of range [0, %d)", tokens[i], V);
        valid[i] = tokens[i] != JOULE_RETRO_PAD;
        tok[i] = valid[i] ? tokens[i] : 0;
    }
    s->slot_last[slot] = last;
    s->handed[slot] = 1;
    return JOULE_OK;
}

/* Forgets the chunks seen at or after position from (NO_CHUNK: all of them). */
static void forget_seen(retro_dec *s, int from) {
    for (int i = 0; i < s->nslots; i++)
        if (s->seen_last[i] != NO_CHUNK && s->seen_last[i] >= from) s->seen_last[i] = NO_CHUNK;
}

static int slot_of(const retro_dec *s, int last) { return (last + s->d.m - 1) / s->d.m; }

/* The chunk now in view (act_last) is recorded in its slot with its mask ... */
static void seen_valid_save(retro_dec *s) {
    const size_t R = (size_t)s->d.k * 2 * s->d.m;
    const int slot = slot_of(s, s->act_last);
    s->seen_last[slot] = s->act_last;
    memcpy(s->seen_valid + (size_t)slot * R, s->act_valid, R);
}

/* ... and with CCA layer c's keys/values, as they are computed. */
static void seen_kv_save(retro_dec *s, int c) {
    const size_t n = (size_t)s->d.k * 2 * s->d.m * 2 * s->d.C;
    memcpy(s->seen_kv + ((size_t)slot_of(s, s->act_last) * s->d.ncca + c) * n, s->kv + (size_t)c * n, n * sizeof(float));
}

/* First CCA layer, position p: the chunk ending at p (if handed) is encoded against its rows
 * of H and comes into view. */
static void step_encode(retro_dec *s, const joule_model *m, int p) {
    const retro_dims *d = &s->d;
    const int mm = d->m, R = d->k * 2 * mm, slot = (p + mm - 1) / mm;
    if (p == 0) { /* a new sequence: nothing of the last one stays in view */
        s->act_last = NO_CHUNK;
        forget_seen(s, NO_CHUNK);
        s->pf_n = 0;
    }
    if (!s->handed[slot] || s->slot_last[slot] != p) return;
    const int hlen = p + 1 < mm ? p + 1 : mm, zero = 0;
    const enc_chunks ch = {.G = 1, .NH = hlen, .hoff = &zero, .hlen = &hlen, .hpos = s->hpos + (mm - hlen)};
    enc_w ew = {.layers = s->ew};
    retro_enc_views(m, m->params, d, &ew);
    const int32_t *tok = s->tok + (size_t)slot * R;
    memcpy(s->act_valid, s->valid + (size_t)slot * R, (size_t)R);
    retro_enc_forward(&s->enc, d, &ew, tok, s->act_valid, &ch, s->H + (size_t)(p - hlen + 1) * d->C);
    s->handed[slot] = 0;
    s->act_last = p;
    s->enc_gen++;
    seen_valid_save(s);
}

int retro_decode_step(joule_decoder *dec, int l, const float *unused, float *x) {
    (void)unused;
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    const joule_model *m = dec->m;
    const retro_dims *d = &s->d;
    const int C = d->C, mm = d->m, p = dec->pos, c = d->ord[l], R = d->k * 2 * mm;
    if (R == 0) return JOULE_OK;
    cca_w w;
    retro_cca_views(m, m->params, l, &w);
    float rstd;
    joule_rmsnorm_forward(s->xn, &rstd, x, w.norm, 1, C, d->eps);
    if (l == d->l0) {
        memcpy(s->H + (size_t)p * C, s->xn, (size_t)C * sizeof(float));
        step_encode(s, m, p);
    }
    if (s->act_last == NO_CHUNK || p - s->act_last < 0 || p - s->act_last >= mm) return JOULE_OK;
    float *kv = s->kv + (size_t)c * R * 2 * C;
    if (s->kv_gen[c] != s->enc_gen) {
        joule_linear_forward(kv, s->enc.out, w.wkv, R, d->D, 2 * C);
        if (d->rope) joule_rope_forward(kv, 2 * C, d->k, 2 * mm, d->H, d->hs, 0, s->rope.cos, s->rope.sin);
        s->kv_gen[c] = s->enc_gen;
        seen_kv_save(s, c);
    }
    joule_sgemv(C, C, 1.0f, w.wq, C, s->xn, 0.0f, s->q);
    const int qpos = p - s->act_last + mm - 1;
    if (d->rope) joule_rope_rows(s->q, C, 1, &qpos, d->H, d->hs, s->rope.cos, s->rope.sin, false);
    retro_cca_one(s->o, s->P, s->q, kv, s->act_valid, d);
    joule_sgemv(C, C, 1.0f, w.wo, C, s->o, 1.0f, x);
    return JOULE_OK;
}

/* ---------------------------------------------------------------- batched prefill */

static int prefill_alloc(retro_dec *s) {
    if (s->pf) return JOULE_OK;
    const retro_dims *d = &s->d;
    retro_prefill *p = calloc(1, sizeof *p);
    if (!p) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO prefill buffers");
    s->pf = p;
    const size_t C = (size_t)d->C, T = (size_t)d->ctx, R = (size_t)d->k * 2 * d->m, G = (size_t)s->nslots;
    const size_t f = sizeof(float);
    bool ok = (p->xn = joule_alloc(T * C * f)) && (p->rstd = joule_alloc(T * f)) && (p->Hc = joule_alloc(T * C * f)) &&
              (p->ca.q = joule_alloc(T * C * f)) && (p->ca.O = joule_alloc(T * C * f)) &&
              (p->ca.kv = joule_alloc(G * R * 2 * C * f + f)) && (p->ca.P = joule_alloc(G * d->H * d->m * R * f + f)) &&
              (p->cs.rows = joule_alloc(T * C * f)) && (p->cs.rows2 = joule_alloc(T * C * f)) &&
              (p->tok = joule_alloc(G * R * sizeof(int32_t) + 1)) && (p->valid = joule_alloc(G * R + 1)) &&
              (p->ch = calloc(G + 1, sizeof *p->ch));
    int rc = ok ? retro_layout_alloc(&p->L, (int)G, (int)T)
                : joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO prefill buffers");
    if (!rc) rc = retro_enc_alloc(&p->enc, d, (int)(G * R), (int)T, false);
    if (rc) {
        prefill_free(p);
        s->pf = NULL;
    }
    return rc;
}

/* First CCA layer of a prefill over n rows: H, then every handed chunk that a row reads,
 * encoded in one pass; the last of them stays in view for the steps that follow. */
static int prefill_encode(retro_dec *s, const joule_model *m, int n) {
    retro_prefill *p = s->pf;
    const retro_dims *d = &s->d;
    const int C = d->C, mm = d->m, R = d->k * 2 * mm;
    memcpy(s->H, p->xn, (size_t)n * C * sizeof(float));
    int G = 0;
    for (int slot = 0; slot < s->nslots; slot++) {
        if (!s->handed[slot] || s->slot_last[slot] >= n) continue;
        p->ch[G] = (joule_retro_chunk){.seq = 0, .last = s->slot_last[slot]};
        memcpy(p->tok + (size_t)G * R, s->tok + (size_t)slot * R, (size_t)R * sizeof(int32_t));
        memcpy(p->valid + (size_t)G * R, s->valid + (size_t)slot * R, (size_t)R);
        s->handed[slot] = 0;
        G++;
    }
    int rc = retro_layout_build(&p->L, d, p->ch, G, 1, n);
    if (rc) return rc;
    s->act_last = NO_CHUNK;
    forget_seen(s, NO_CHUNK);
    s->pf_n = n;
    if (G == 0) return JOULE_OK;
    const int last = p->ch[G - 1].last;
    if (last + mm > n) { /* rows after the prompt still read it */
        s->act_last = last;
        memcpy(s->act_valid, p->valid + (size_t)(G - 1) * R, (size_t)R);
        seen_valid_save(s);
    }
    enc_w ew = {.layers = s->ew};
    retro_enc_views(m, m->params, d, &ew);
    const enc_chunks ch = {.G = G, .NH = p->L.NH, .hoff = p->L.hoff, .hlen = p->L.hlen, .hpos = p->L.hpos};
    retro_gather_rows(p->Hc, p->xn, &p->L, false, C);
    retro_enc_forward(&p->enc, d, &ew, p->tok, p->valid, &ch, p->Hc);
    s->enc_gen++;
    return JOULE_OK;
}

/* x[n, C]: residual rows of positions 0 .. n-1 at CCA layer l, as n retro_decode_step calls
 * would change them (the same FLOPs: queries only where a chunk's neighbours are in view). */
int retro_prefill_rows(joule_decoder *dec, int l, float *x, int n) {
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    const joule_model *m = dec->m;
    const retro_dims *d = &s->d;
    const int C = d->C, R = d->k * 2 * d->m, c = d->ord[l];
    if (dec->pos != 0 || n < 1 || n > d->ctx)
        return joule_fail(JOULE_ERR_ARG, "RETRO prefill: %d rows at position %d (needs an empty cache)", n, dec->pos);
    if (R == 0) return JOULE_OK;
    int rc = prefill_alloc(s);
    if (rc) return rc;
    retro_prefill *p = s->pf;
    cca_w w;
    retro_cca_views(m, m->params, l, &w);
    joule_rmsnorm_forward(p->xn, p->rstd, x, w.norm, n, C, d->eps);
    if (l == d->l0 && (rc = prefill_encode(s, m, n))) return rc;
    const int G = p->L.G;
    if (G == 0) return JOULE_OK;
    retro_cca_forward(x, &p->ca, &p->cs, x, p->xn, p->enc.out, p->valid, &w, &p->L, d, &s->rope);
    if (s->act_last != NO_CHUNK) { /* hand the last chunk's keys/values to the steps that follow */
        memcpy(s->kv + (size_t)c * R * 2 * C, p->ca.kv + (size_t)(G - 1) * R * 2 * C, (size_t)R * 2 * C * sizeof(float));
        s->kv_gen[c] = s->enc_gen;
        seen_kv_save(s, c);
    }
    return JOULE_OK;
}

/* ---------------------------------------------------------------- truncation */

int retro_decoder_truncate(joule_decoder *dec, int pos) {
    retro_dec *s = dec->ext[JOULE_EXT_CCA];
    const retro_dims *d = &s->d;
    if (pos > 0 && pos < s->pf_n)
        return joule_fail(JOULE_ERR_ARG,
                          "cannot truncate a RETRO decoder to %d tokens, inside its prefill of %d (only the last "
                          "prefilled chunk's neighbours are kept)",
                          pos, s->pf_n);
    /* neighbours handed for chunks not decoded yet came with the dropped tokens */
    for (int i = 0; i < s->nslots; i++)
        if (s->handed[i] && s->slot_last[i] >= pos) s->handed[i] = 0;
    forget_seen(s, pos);
    int best = -1;
    for (int i = 0; i < s->nslots; i++)
        if (s->seen_last[i] != NO_CHUNK && (best < 0 || s->seen_last[i] > s->seen_last[best])) best = i;
    s->act_last = best < 0 || pos == 0 ? NO_CHUNK : s->seen_last[best];
    if (s->act_last == NO_CHUNK) return JOULE_OK;
    /* the chunk in view at pos, exactly as it was: its mask and keys/values, no encoding */
    const size_t R = (size_t)d->k * 2 * d->m, n = R * 2 * (size_t)d->C;
    memcpy(s->act_valid, s->seen_valid + (size_t)best * R, R);
    memcpy(s->kv, s->seen_kv + (size_t)best * d->ncca * n, (size_t)d->ncca * n * sizeof(float));
    s->enc_gen++;
    for (int c = 0; c < d->ncca; c++) s->kv_gen[c] = s->enc_gen;
    return JOULE_OK;
}
