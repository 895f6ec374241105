/* The RETRO extension: JOULE_EXT_CCA's op table (layout, activations, forward/backward,
 * FLOPs), the neighbours handed to a model before forward, and config defaults.
 * The encoder is global: its tensors are laid out with, and it runs in, the first CCA
 * layer l0, whose input H = RMSNorm(x_l0) the neighbours cross-attend to; its backward runs
 * in l0's backward, the last CCA backward, once every CCA layer has added into dE. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"
#include "retro_model.h"

void retro_dims_from_config(retro_dims *d, const joule_config *c) {
    const joule_retro_config *r = &c->retro;
    memset(d, 0, sizeof *d);
    d->C = c->d_model;
    d->H = c->n_heads;
    d->hs = c->d_model / c->n_heads;
    d->D = r->enc_d_model;
    d->He = r->enc_heads;
    d->hse = r->enc_d_model / r->enc_heads;
    d->Fe = r->enc_d_ff;
    d->Le = r->enc_layers;
    d->m = r->chunk;
    d->k = r->k;
    d->V = c->vocab;
    d->ctx = c->ctx;
    d->eps = c->norm_eps;
    d->theta = c->rope_theta;
    d->l0 = d->l_last = -1;
    for (int l = 0; l < c->n_layers; l++) {
        d->ord[l] = -1;
        if (!c->kinds[l].cca) continue;
        if (d->l0 < 0) d->l0 = l;
        d->l_last = l;
        d->ord[l] = d->ncca++;
    }
}

/* ---------------------------------------------------------------- layout and views */

static void layout(joule_model *m, int l) {
    retro_dims d;
    retro_dims_from_config(&d, &m->cfg);
    const int64_t C = d.C, D = d.D, Fe = d.Fe;
    char name[96];
    static const char *cca[CCA_TENSORS] = {"cca_norm", "cca.wq", "cca.wk", "cca.wv", "cca.wo"};
    const int64_t cshape[CCA_TENSORS][2] = {{C, 0}, {C, C}, {C, D}, {C, D}, {C, C}};
    for (int i = 0; i < CCA_TENSORS; i++) {
        snprintf(name, sizeof name, "layers.%d.%s.weight", l, cca[i]);
        int t = joule_model_add_tensor(m, name, cshape[i][0], cshape[i][1]);
        /* Zero output projection: an untrained RETRO model (or a freshly RETRO-fitted one)
         * computes exactly the dense model's function. */
        if (t >= 0 && i == CCA_TENSORS - 1) m->tensors[t].init_mult = 0.0f;
    }
    if (l != d.l0) return;
    int t = joule_model_add_tensor(m, "retro.encoder.tok_emb.weight", d.V, D);
    if (t >= 0) m->tensors[t].embedding = true;
    static const char *enc[ENC_LAYER_TENSORS] = {"attn_norm", "attn.wq", "attn.wk", "attn.wv", "attn.wo",
                                                 "xattn_norm", "xattn.wq", "xattn.wk", "xattn.wv", "xattn.wo",
                                                 "ffn_norm", "ffn.w1", "ffn.w3", "ffn.w2"};
    const int64_t eshape[ENC_LAYER_TENSORS][2] = {{D, 0}, {D, D}, {D, D}, {D, D}, {D, D}, {D, 0}, {D, D},
                                                  {D, C}, {D, C}, {D, D}, {D, 0}, {Fe, D}, {Fe, D}, {D, Fe}};
    const float out_scale = 1.0f / sqrtf(3.0f * (float)d.Le); /* three residual branches per layer */
    for (int i = 0; i < d.Le; i++)
        for (int j = 0; j < ENC_LAYER_TENSORS; j++) {
            snprintf(name, sizeof name, "retro.encoder.layers.%d.%s.weight", i, enc[j]);
            t = joule_model_add_tensor(m, name, eshape[j][0], eshape[j][1]);
            if (t >= 0 && (j == 4 || j == 9 || j == 13)) m->tensors[t].init_mult = out_scale;
        }
    joule_model_add_tensor(m, "retro.encoder.norm.weight", D, 0);
}

#define AT(i) (base ? (float *)base + m->tensors[i].offset : NULL)

void retro_cca_views(const joule_model *m, const float *base, int l, cca_w *w) {
    const int f = m->ext_first[l][JOULE_EXT_CCA];
    w->norm = AT(f);
    w->wq = AT(f + 1);
    w->wkv = AT(f + 2);
    w->wo = AT(f + 4);
}

void retro_enc_views(const joule_model *m, const float *base, const retro_dims *d, enc_w *w) {
    const int f = m->ext_first[d->l0][JOULE_EXT_CCA] + CCA_TENSORS;
    w->tok_emb = AT(f);
    for (int i = 0; i < d->Le; i++) {
        const int t = f + 1 + i * ENC_LAYER_TENSORS;
        enc_layer_w *lw = &w->layers[i];
        lw->attn_norm = AT(t);
        lw->wqkv = AT(t + 1);
        lw->wo = AT(t + 4);
        lw->xnorm = AT(t + 5);
        lw->xwq = AT(t + 6);
        lw->xwkv = AT(t + 7);
        lw->xwo = AT(t + 9);
        lw->ffn_norm = AT(t + 10);
        lw->w13 = AT(t + 11);
        lw->w2 = AT(t + 13);
    }
    w->norm = AT(f + 1 + d->Le * ENC_LAYER_TENSORS);
}
#undef AT

/* ---------------------------------------------------------------- training state */

typedef struct {
    retro_dims d;
    int maxB, nch_max, Rmax, Nmax;
    int32_t *tok;     /* [Rmax] neighbour tokens, PAD mapped to 0 */
    uint8_t *valid;   /* [Rmax] */
    bool have_nbr;    /* neighbours handed for the next forward (consumed by it) */
    int nbr_B, nbr_nch;
    bool active;      /* the last forward ran CCA */
    int cur_B, cur_T;
    int *qrow, *nq, *krow;
    joule_gattn_plan plan;
    const float **x;  /* [ncca] CCA inputs of the last forward (core activations) */
    float *xn, *rstd, *q, *kv, *P, *O; /* [ncca][...] */
    enc_acts enc;
    enc_layer_w *ew, *eg;
    float *dE, *dxn, *dq, *dkv, *dO, *dS;
} retro_state;

static void state_free(joule_model *m) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    if (!s) return;
    float *bufs[] = {s->xn, s->rstd, s->q, s->kv, s->P, s->O, s->dE, s->dxn, s->dq, s->dkv, s->dO, s->dS};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(s->tok);
    joule_free(s->valid);
    free(s->qrow);
    free(s->nq);
    free(s->krow);
    free((void *)s->x);
    free(s->ew);
    free(s->eg);
    retro_enc_free(&s->enc);
    free(s);
    m->ext[JOULE_EXT_CCA] = NULL;
}

static int state_alloc(joule_model *m, int max_batch) {
    retro_state *s = calloc(1, sizeof *s);
    if (!s) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO state");
    m->ext[JOULE_EXT_CCA] = s;
    retro_dims *d = &s->d;
    retro_dims_from_config(d, &m->cfg);
    s->maxB = max_batch;
    s->nch_max = d->ctx / d->m;
    s->Nmax = max_batch * d->ctx;
    s->Rmax = max_batch * s->nch_max * d->k * 2 * d->m;
    const size_t L = (size_t)d->ncca, N = (size_t)s->Nmax, R = (size_t)s->Rmax, C = (size_t)d->C;
    const size_t G = (size_t)max_batch * s->nch_max, f = sizeof(float);
    const size_t Psz = G * d->H * d->m * (size_t)d->k * 2 * d->m;
    float **bufs[] = {&s->xn, &s->rstd, &s->q, &s->kv, &s->P, &s->O, &s->dE, &s->dxn, &s->dq, &s->dkv, &s->dO, &s->dS};
    const size_t sizes[] = {L * N * C, L * N, L * N * C, L * R * 2 * C, L * Psz, L * N * C,
                            R * d->D, N * C, N * C, R * 2 * C, N * C, Psz};
    bool ok = true;
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) ok = ok && (*bufs[i] = joule_alloc((sizes[i] ? sizes[i] : 1) * f));
    s->tok = joule_alloc((R ? R : 1) * sizeof(int32_t));
    s->valid = joule_alloc(R ? R : 1);
    s->qrow = calloc(G ? G : 1, sizeof(int));
    s->nq = calloc(G ? G : 1, sizeof(int));
    s->krow = calloc(G ? G : 1, sizeof(int));
    s->x = calloc(L, sizeof *s->x);
    s->ew = calloc((size_t)d->Le, sizeof *s->ew);
    s->eg = calloc((size_t)d->Le, sizeof *s->eg);
    if (!ok || !s->tok || !s->valid || !s->qrow || !s->nq || !s->krow || !s->x || !s->ew || !s->eg) {
        state_free(m);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating RETRO activations for batch %d", max_batch);
    }
    int rc = retro_enc_alloc(&s->enc, d, s->Rmax, s->Nmax, true);
    if (rc) state_free(m);
    return rc;
}

/* Copies tokens [n] into tok/valid; PAD becomes a masked token 0. */
static int take_tokens(int32_t *tok, uint8_t *valid, const int32_t *src, size_t n, int V) {
    for (size_t i = 0; i < n; i++) {
        if (src[i] == JOULE_RETRO_PAD) {
            tok[i] = 0;
            valid[i] = 0;
        } else if (src[i] < 0 || src[i] >= V) {
            return joule_fail(JOULE_ERR_ARG, "neighbour token %d out of range [0, %d)", src[i], V);
        } else {
            tok[i] = src[i];
            valid[i] = 1;
        }
    }
    return JOULE_OK;
}

int joule_retro_set_neighbours(joule_model *m, const int32_t *tokens, int B, int nch) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    if (!s) return joule_fail(JOULE_ERR_ARG, "set neighbours: not a RETRO model with training buffers");
    s->have_nbr = false;
    if (!tokens) return JOULE_OK;
    if (B < 1 || B > s->maxB || nch < 0 || nch > s->nch_max)
        return joule_fail(JOULE_ERR_ARG, "set neighbours: %d x %d chunks exceed the model's %d x %d", B, nch,
                          s->maxB, s->nch_max);
    int rc = take_tokens(s->tok, s->valid, tokens, (size_t)B * nch * s->d.k * 2 * s->d.m, s->d.V);
    if (rc) return rc;
    s->have_nbr = true;
    s->nbr_B = B;
    s->nbr_nch = nch;
    return JOULE_OK;
}

/* ---------------------------------------------------------------- forward / backward */

static int forward(joule_model *m, int l, const float *x, float *y, int B, int T, bool train) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    const retro_dims *d = &s->d;
    const int c = d->ord[l], C = d->C, N = B * T, nch = T / d->m, R = B * nch * d->k * 2 * d->m;
    if (l == d->l0) {
        s->active = s->have_nbr && d->k > 0 && nch > 0;
        s->have_nbr = false; /* neighbours belong to one forward: a later one without them runs retrieval-off */
        if (s->active && (s->nbr_B != B || s->nbr_nch != nch))
            return joule_fail(JOULE_ERR_ARG, "RETRO forward: neighbours given for %d x %d chunks, batch has %d x %d",
                              s->nbr_B, s->nbr_nch, B, nch);
        s->cur_B = B;
        s->cur_T = T;
    }
    if (!s->active) { /* retrieval off: the sub-layer is the identity */
        memcpy(y, x, (size_t)N * C * sizeof *y);
        return JOULE_OK;
    }
    const size_t NC = (size_t)s->Nmax * C;
    float *xn = s->xn + c * NC, *rstd = s->rstd + (size_t)c * s->Nmax;
    s->x[c] = x;
    cca_w w;
    retro_cca_views(m, m->params, l, &w);
    joule_rmsnorm_forward(xn, rstd, x, w.norm, N, C, d->eps);
    if (l == d->l0) {
        enc_w ew = {.layers = s->ew};
        retro_enc_views(m, m->params, d, &ew);
        retro_enc_forward(&s->enc, d, &ew, s->tok, s->valid, B, nch, T, xn);
        retro_cca_plan(&s->plan, s->qrow, s->nq, s->krow, s->valid, d, B, T);
    }
    const size_t Psz = (size_t)s->maxB * s->nch_max * d->H * d->m * d->k * 2 * d->m;
    retro_cca_forward(y, s->O + c * NC, s->P + c * Psz, s->q + c * NC, s->kv + (size_t)c * s->Rmax * 2 * C, x, xn,
                      s->enc.out, &w, &s->plan, N, R, C, d->D);
    (void)train;
    return JOULE_OK;
}

static int backward(joule_model *m, int l, const float *dy, float *dx, int B, int T, float grad_scale) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    const retro_dims *d = &s->d;
    if (!s->active) return JOULE_OK; /* identity: dres already holds dL/dx */
    const int c = d->ord[l], C = d->C, N = B * T, nch = T / d->m, R = B * nch * d->k * 2 * d->m;
    const size_t NC = (size_t)s->Nmax * C;
    const size_t Psz = (size_t)s->maxB * s->nch_max * d->H * d->m * d->k * 2 * d->m;
    if (l == d->l_last) memset(s->dE, 0, (size_t)R * d->D * sizeof(float));
    cca_w w, g;
    retro_cca_views(m, m->params, l, &w);
    retro_cca_views(m, m->grads, l, &g);
    const float *xn = s->xn + c * NC;
    retro_cca_backward(s->dxn, s->dE, s->dO, s->dq, s->dkv, s->dS, dy, s->O + c * NC, s->P + c * Psz, s->q + c * NC,
                       s->kv + (size_t)c * s->Rmax * 2 * C, xn, s->enc.out, &w, &g, &s->plan, N, R, C, d->D);
    if (l == d->l0) {
        enc_w ew = {.layers = s->ew}, eg = {.layers = s->eg};
        retro_enc_views(m, m->params, d, &ew);
        retro_enc_views(m, m->grads, d, &eg);
        retro_enc_backward(&s->enc, d, &ew, &eg, s->dE, xn, s->dxn);
    }
    /* dy and dx are the same buffer (the core's dres): the residual path is already in it. */
    joule_rmsnorm_backward(dx, g.norm, s->dxn, s->x[c], w.norm, s->rstd + (size_t)c * s->Nmax, N, C);
    (void)grad_scale;
    return JOULE_OK;
}

static uint64_t forward_flops(const joule_config *c, int l, int B, int T) {
    retro_dims d;
    retro_dims_from_config(&d, c);
    return retro_cca_flops(&d, B, T) + (l == d.l0 ? retro_enc_flops(&d, B, T) : 0);
}

static int flop_terms(const joule_config *c, int l, int B, int T, const char **names, uint64_t *flops, int max) {
    retro_dims d;
    retro_dims_from_config(&d, c);
    int n = 0;
    if (n < max) {
        names[n] = "cca";
        flops[n++] = retro_cca_flops(&d, B, T);
    }
    if (l == d.l0 && n < max) {
        names[n] = "encoder";
        flops[n++] = retro_enc_flops(&d, B, T);
    }
    return n;
}

/* ---------------------------------------------------------------- registration, config */

static const joule_ext_ops RETRO_OPS = {
    .name = "retro",
    .layout = layout,
    .alloc = state_alloc,
    .free = state_free,
    .forward = forward,
    .backward = backward,
    .forward_flops = forward_flops,
    .flop_terms = flop_terms,
    .stats_json = NULL,
    .aux_loss = NULL,
    .decoder_create = retro_decoder_create,
    .decoder_free = retro_decoder_free,
    .decode_step = retro_decode_step,
    .decode_flop_terms = retro_decode_flop_terms,
    .prefill_rows = retro_prefill_rows,
};

void joule_retro_register(void) { joule_ext_register(JOULE_EXT_CCA, &RETRO_OPS); }

void joule_retro_config_apply(joule_config *c) {
    joule_retro_config *r = &c->retro;
    snprintf(c->arch, sizeof c->arch, "retro");
    if (r->chunk <= 0) r->chunk = c->ctx <= 128 ? 16 : 32;
    if (r->chunk > c->ctx) r->chunk = c->ctx;
    if (r->k <= 0) r->k = 2;
    if (r->cca_start <= 0 && r->cca_every <= 0) r->cca_start = c->n_layers / 3;
    if (r->cca_every <= 0) r->cca_every = 3;
    if (r->enc_layers <= 0) r->enc_layers = 2;
    if (r->enc_heads <= 0) r->enc_heads = c->n_heads / 2 > 0 ? c->n_heads / 2 : 1;
    if (r->enc_d_model <= 0) {
        /* about d_model/2, a multiple of 2 * heads so the head size is even */
        int unit = 2 * r->enc_heads, dm = c->d_model / 2 / unit * unit;
        r->enc_d_model = dm > 0 ? dm : unit;
    }
    if (r->enc_d_ff <= 0) r->enc_d_ff = c->d_ff / 2 > 0 ? c->d_ff / 2 : 1;
    for (int l = 0; l < c->n_layers && l < JOULE_MAX_LAYERS; l++)
        c->kinds[l].cca = l >= r->cca_start && (l - r->cca_start) % r->cca_every == 0;
}
