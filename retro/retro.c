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
    d->rope = r->positions == JOULE_RETRO_POS_ROPE;
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
    int maxB, gmax, Rmax, Nmax;
    int32_t *tok;     /* [Rmax] neighbour tokens, PAD mapped to 0 */
    uint8_t *valid;   /* [Rmax] */
    joule_retro_chunk *chunks; /* [gmax] handed for the next forward */
    bool have_nbr;    /* chunks handed for the next forward (consumed by it) */
    int nbr_G, nbr_B, nbr_T;
    bool active;      /* the last forward ran CCA */
    retro_layout L;   /* of the last forward */
    retro_rope rope;  /* [2m, hs/2] for the decoder's heads */
    const float **x;  /* [ncca] CCA inputs of the last forward (core activations) */
    float *xn, *rstd; /* [ncca][Nmax, C], [ncca][Nmax] */
    cca_acts *ca;     /* [ncca] */
    cca_scratch cs;
    float *Hc, *dHc;  /* [Nmax, C] chunk rows of the first CCA layer's xn, compacted */
    enc_acts enc;
    enc_layer_w *ew, *eg;
    float *dE, *dxn;
} retro_state;

/* The state's float buffers, in one list for allocation and release. */
#define STATE_BUFS(s) {&(s)->xn, &(s)->rstd, &(s)->cs.rows, &(s)->cs.rows2, &(s)->cs.dkv, &(s)->cs.dS, &(s)->Hc, \
                       &(s)->dHc, &(s)->dE, &(s)->dxn, &(s)->rope.cos, &(s)->rope.sin}

static void state_free(joule_model *m) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    if (!s) return;
    float **bufs[] = STATE_BUFS(s);
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(*bufs[i]);
    for (int c = 0; s->ca && c < s->d.ncca; c++) {
        joule_free(s->ca[c].q);
        joule_free(s->ca[c].kv);
        joule_free(s->ca[c].P);
        joule_free(s->ca[c].O);
    }
    free(s->ca);
    joule_free(s->tok);
    joule_free(s->valid);
    free(s->chunks);
    free((void *)s->x);
    free(s->ew);
    free(s->eg);
    retro_layout_free(&s->L);
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
    s->gmax = max_batch * retro_max_chunks(d->m, d->ctx);
    s->Nmax = max_batch * d->ctx;
    s->Rmax = s->gmax * d->k * 2 * d->m;
    const size_t L = (size_t)d->ncca, N = (size_t)s->Nmax, R = (size_t)s->Rmax, C = (size_t)d->C, f = sizeof(float);
    const size_t Psz = (size_t)s->gmax * d->H * d->m * (size_t)d->k * 2 * d->m;
    float **bufs[] = STATE_BUFS(s);
    const size_t half = (size_t)d->hs / 2 * 2 * d->m;
    const size_t sizes[] = {L * N * C, L * N, N * C, N * C, R * 2 * C, Psz, N * C, N * C, R * d->D, N * C, half, half};
    bool ok = true;
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) ok = ok && (*bufs[i] = joule_alloc((sizes[i] ? sizes[i] : 1) * f));
    s->ca = calloc(L ? L : 1, sizeof *s->ca);
    for (size_t c = 0; ok && s->ca && c < L; c++) {
        cca_acts *a = &s->ca[c];
        ok = (a->q = joule_alloc(N * C * f + f)) && (a->kv = joule_alloc(R * 2 * C * f + f)) &&
             (a->P = joule_alloc(Psz * f + f)) && (a->O = joule_alloc(N * C * f + f));
    }
    s->tok = joule_alloc((R ? R : 1) * sizeof(int32_t));
    s->valid = joule_alloc(R ? R : 1);
    s->chunks = calloc((size_t)s->gmax + 1, sizeof *s->chunks);
    s->x = calloc(L ? L : 1, sizeof *s->x);
    s->ew = calloc((size_t)d->Le + 1, sizeof *s->ew);
    s->eg = calloc((size_t)d->Le + 1, sizeof *s->eg);
    if (!ok || !s->ca || !s->tok || !s->valid || !s->chunks || !s->x || !s->ew || !s->eg) {
        state_free(m);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating RETRO activations for batch %d", max_batch);
    }
    joule_rope_tables(s->rope.cos, s->rope.sin, 2 * d->m, d->hs, d->theta);
    int rc = retro_layout_alloc(&s->L, s->gmax, s->Nmax);
    if (!rc) rc = retro_enc_alloc(&s->enc, d, s->Rmax, s->Nmax, true);
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

int joule_retro_set_chunks(joule_model *m, const joule_retro_chunk *chunks, int n, const int32_t *tokens, int B,
                           int T) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    if (!s) return joule_fail(JOULE_ERR_ARG, "set neighbours: not a RETRO model with training buffers");
    s->have_nbr = false;
    if (!tokens) return JOULE_OK;
    if (B < 1 || B > s->maxB || T < 1 || T > s->d.ctx || n < 0 || n > B * retro_max_chunks(s->d.m, T))
        return joule_fail(JOULE_ERR_ARG, "set neighbours: %d chunks over %d x %d exceed the model's %d x %d", n, B, T,
                          s->maxB, s->d.ctx);
    /* the layout is checked now, so a bad one fails here rather than in the forward */
    int rc = retro_layout_build(&s->L, &s->d, chunks, n, B, T);
    if (!rc) rc = take_tokens(s->tok, s->valid, tokens, (size_t)n * s->d.k * 2 * s->d.m, s->d.V);
    if (rc) return rc;
    memcpy(s->chunks, chunks, (size_t)n * sizeof *chunks);
    s->have_nbr = true;
    s->nbr_G = n;
    s->nbr_B = B;
    s->nbr_T = T;
    return JOULE_OK;
}

int joule_retro_set_neighbours(joule_model *m, const int32_t *tokens, int B, int nch) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    if (!s) return joule_fail(JOULE_ERR_ARG, "set neighbours: not a RETRO model with training buffers");
    if (!tokens) return joule_retro_set_chunks(m, NULL, 0, NULL, B, nch * s->d.m);
    if (B < 1 || B > s->maxB || nch < 0 || nch * s->d.m > s->d.ctx)
        return joule_fail(JOULE_ERR_ARG, "set neighbours: %d x %d chunks exceed the model's %d x %d", B, nch, s->maxB,
                          s->d.ctx / s->d.m);
    joule_retro_chunk *ch = malloc(((size_t)B * nch + 1) * sizeof *ch);
    if (!ch) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int b = 0; b < B; b++)
        for (int u = 0; u < nch; u++) ch[b * nch + u] = (joule_retro_chunk){.seq = b, .last = (u + 1) * s->d.m - 1};
    int rc = joule_retro_set_chunks(m, ch, B * nch, tokens, B, nch * s->d.m);
    free(ch);
    return rc;
}

/* ---------------------------------------------------------------- forward / backward */

static enc_chunks enc_chunks_of(const retro_layout *L) {
    return (enc_chunks){.G = L->G, .NH = L->NH, .hoff = L->hoff, .hlen = L->hlen, .hpos = L->hpos};
}

static int forward(joule_model *m, int l, const float *x, float *y, int B, int T, bool train) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    const retro_dims *d = &s->d;
    const int c = d->ord[l], C = d->C, N = B * T;
    (void)train;
    if (l == d->l0) {
        s->active = s->have_nbr && d->k > 0 && s->nbr_G > 0;
        s->have_nbr = false; /* neighbours belong to one forward: a later one without them runs retrieval-off */
        if (s->active && (s->nbr_B != B || s->nbr_T != T))
            return joule_fail(JOULE_ERR_ARG, "RETRO forward: neighbours given for %d x %d, batch is %d x %d", s->nbr_B,
                              s->nbr_T, B, T);
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
        const enc_chunks ch = enc_chunks_of(&s->L);
        retro_gather_rows(s->Hc, xn, &s->L, false, C);
        retro_enc_forward(&s->enc, d, &ew, s->tok, s->valid, &ch, s->Hc);
    }
    retro_cca_forward(y, &s->ca[c], &s->cs, x, xn, s->enc.out, s->valid, &w, &s->L, d, &s->rope);
    return JOULE_OK;
}

static int backward(joule_model *m, int l, const float *dy, float *dx, int B, int T, float grad_scale) {
    retro_state *s = m->ext[JOULE_EXT_CCA];
    const retro_dims *d = &s->d;
    (void)grad_scale;
    if (!s->active) return JOULE_OK; /* identity: dres already holds dL/dx */
    const int c = d->ord[l], C = d->C, N = B * T, R = s->L.G * d->k * 2 * d->m;
    const size_t NC = (size_t)s->Nmax * C;
    if (l == d->l_last) memset(s->dE, 0, (size_t)R * d->D * sizeof(float));
    cca_w w, g;
    retro_cca_views(m, m->params, l, &w);
    retro_cca_views(m, m->grads, l, &g);
    const float *xn = s->xn + c * NC;
    retro_cca_backward(s->dxn, s->dE, dy, &s->ca[c], &s->cs, xn, s->enc.out, s->valid, &w, &g, &s->L, d, &s->rope);
    if (l == d->l0) { /* every CCA layer has added into dE: the encoder's backward, into dxn */
        enc_w ew = {.layers = s->ew}, eg = {.layers = s->eg};
        retro_enc_views(m, m->params, d, &ew);
        retro_enc_views(m, m->grads, d, &eg);
        const enc_chunks ch = enc_chunks_of(&s->L);
        retro_enc_backward(&s->enc, d, &ew, &eg, s->dE, &ch, s->Hc, s->dHc);
        retro_scatter_add_rows(s->dxn, s->dHc, &s->L, false, C);
    }
    /* dy and dx are the same buffer (the core's dres): the residual path is already in it. */
    joule_rmsnorm_backward(dx, g.norm, s->dxn, s->x[c], w.norm, s->rstd + (size_t)c * s->Nmax, N, C);
    return JOULE_OK;
}

/* The regular layout's costs (joule_retro_regular_chunks): what joule_model_forward_flops counts. */
static void regular_flops(const joule_config *c, int l, int B, int T, uint64_t *cca, uint64_t *enc) {
    retro_dims d;
    retro_dims_from_config(&d, c);
    int G, NH, NQ;
    retro_regular_counts(d.m, T, &G, &NH, &NQ);
    *cca = retro_cca_flops(&d, (uint64_t)B * G, (uint64_t)B * NQ);
    *enc = l == d.l0 ? retro_enc_flops(&d, (uint64_t)B * G, (uint64_t)B * NH) : 0;
}

static uint64_t forward_flops(const joule_config *c, int l, int B, int T) {
    uint64_t cca, enc;
    regular_flops(c, l, B, T, &cca, &enc);
    return cca + enc;
}

static int flop_terms(const joule_config *c, int l, int B, int T, const char **names, uint64_t *flops, int max) {
    retro_dims d;
    retro_dims_from_config(&d, c);
    uint64_t cca, enc;
    regular_flops(c, l, B, T, &cca, &enc);
    int n = 0;
    if (n < max) {
        names[n] = "cca";
        flops[n++] = cca;
    }
    if (l == d.l0 && n < max) {
        names[n] = "encoder";
        flops[n++] = enc;
    }
    return n;
}

uint64_t joule_retro_chunks_flops(const joule_config *c, const joule_retro_chunk *ch, int n, int B, int T) {
    retro_dims d;
    retro_dims_from_config(&d, c);
    uint64_t NQ = 0, NH = 0;
    for (int i = 0; i < n; i++) {
        const int last = ch[i].last, q0 = last > 0 ? last : 0, q1 = last + d.m < T ? last + d.m : T;
        const int h0 = last - d.m + 1 > 0 ? last - d.m + 1 : 0;
        NQ += (uint64_t)(q1 - q0);
        NH += last + 1 > h0 ? (uint64_t)(last + 1 - h0) : 0;
    }
    uint64_t total = joule_model_forward_flops(c, B, T);
    for (int l = 0; l < c->n_layers; l++) {
        if (d.ord[l] < 0) continue;
        total -= forward_flops(c, l, B, T);
        total += retro_cca_flops(&d, (uint64_t)n, NQ) + (l == d.l0 ? retro_enc_flops(&d, (uint64_t)n, NH) : 0);
    }
    return total;
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
    .decoder_truncate = retro_decoder_truncate,
};

void joule_retro_register(void) { joule_ext_register(JOULE_EXT_CCA, &RETRO_OPS); }

void joule_retro_config_apply(joule_config *c) {
    joule_retro_config *r = &c->retro;
    snprintf(c->arch, sizeof c->arch, "retro");
    if (r->chunk <= 0) r->chunk = c->ctx <= 128 ? 16 : 32;
    if (r->chunk > c->ctx) r->chunk = c->ctx;
    if (r->k <= 0) r->k = 2;
    /* The paper's 32-layer model starts CCA at layer 6 (index 5), every 3rd after; scaled to
     * depth that is round(L/6), and never layer 0 in a deeper model: the encoder then reads
     * rows that have passed at least one attention and FFN (docs/MODEL.md §7). */
    if (r->cca_start <= 0 && r->cca_every <= 0) {
        const int L = c->n_layers, s = (L + 3) / 6;
        r->cca_start = L >= 2 && s < 1 ? 1 : s;
    }
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
