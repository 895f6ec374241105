/* MoE inference for the KV-cache decoder, dropless and without random choices:
 *   one token  the router of moe/router.c on that token, the chosen experts as sgemvs;
 *   n rows     (a prompt's prefill, or one token of each of n sequences) the same router over
 *              all rows, then the stable grouping by expert and one sgemm pair per non-empty
 *              expert of moe/experts.c, so each expert's weights are read once per call. */
#include <stdlib.h>

#include "joule/ext.h"
#include "joule/moe.h"
#include "joule/ops.h"

typedef struct {
    joule_moe_route route; /* one token */
    float *logits;         /* [E] */
    float *h13, *g;        /* [2Fe], [Fe] */
    /* the rows op's scratch for `cap` rows, allocated at its first call */
    int cap;
    joule_moe_route rroute;
    joule_moe_dispatch disp;
    float *rlogits;          /* [cap, E] */
    float *xperm, *out;      /* [cap*k, C] */
    float *rh13, *rg;        /* [cap*k, 2Fe], [cap*k, Fe] */
} moe_decoder;

static void free_rows(moe_decoder *s) {
    joule_moe_route_free(&s->rroute);
    joule_moe_dispatch_free(&s->disp);
    float *bufs[] = {s->rlogits, s->xperm, s->out, s->rh13, s->rg};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    s->rlogits = s->xperm = s->out = s->rh13 = s->rg = NULL;
    s->cap = 0;
}

void joule_moe_decoder_free(joule_decoder *d) {
    moe_decoder *s = d->ext[JOULE_EXT_MOE];
    if (!s) return;
    joule_moe_route_free(&s->route);
    joule_free(s->logits);
    joule_free(s->h13);
    joule_free(s->g);
    free_rows(s);
    free(s);
    d->ext[JOULE_EXT_MOE] = NULL;
}

int joule_moe_decoder_create(joule_decoder *d) {
    const joule_moe_config *e = &d->m->cfg.moe;
    moe_decoder *s = calloc(1, sizeof *s);
    if (!s) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the MoE decoder");
    d->ext[JOULE_EXT_MOE] = s;
    int rc = joule_moe_route_alloc(&s->route, 1, e->n_experts, e->top_k);
    s->logits = joule_alloc((size_t)e->n_experts * sizeof(float));
    s->h13 = joule_alloc(2 * (size_t)e->d_ff_expert * sizeof(float));
    s->g = joule_alloc((size_t)e->d_ff_expert * sizeof(float));
    if (rc || !s->logits || !s->h13 || !s->g) {
        joule_moe_decoder_free(d);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the MoE decoder");
    }
    return JOULE_OK;
}

/* Dropless inference routing: no capacity, no random second expert. */
static joule_moe_router_opts inference_opts(const joule_moe_config *e) {
    const joule_moe_router_opts o = {e->n_experts, e->top_k, 0.0f, e->renormalize, false, 0, e->aux_alpha, e->z_beta, 0};
    return o;
}

/* Layer l's router and expert weights, or an error when l is not an MoE layer. */
static int layer_weights(joule_decoder *d, int l, const float **Wr, const float **W) {
    const int first = d->m->ext_first[l][JOULE_EXT_MOE];
    if (!d->ext[JOULE_EXT_MOE] || first < 0)
        return joule_fail(JOULE_ERR_ARG, "layer %d is not an MoE layer of this decoder", l);
    *Wr = joule_model_param(d->m, first);
    *W = joule_model_param(d->m, first + 1);
    return JOULE_OK;
}

int joule_moe_decode_step(joule_decoder *d, int l, const float *xn, float *x) {
    const joule_model *m = d->m;
    const joule_moe_config *e = &m->cfg.moe;
    moe_decoder *s = d->ext[JOULE_EXT_MOE];
    const int C = m->cfg.d_model, Fe = e->d_ff_expert, E = e->n_experts, k = e->top_k;
    const float *Wr = NULL, *W = NULL;
    int rc = layer_weights(d, l, &Wr, &W);
    if (rc) return rc;
    const joule_moe_router_opts o = inference_opts(e);
    joule_sgemv(E, C, 1.0f, Wr, C, xn, 0.0f, s->logits);
    joule_moe_route_forward(&s->route, s->logits, 1, &o);
    for (int j = 0; j < k; j++) {
        const float *w13 = W + (size_t)s->route.expert[j] * 3 * Fe * C, *w2 = w13 + 2 * (size_t)Fe * C;
        joule_sgemv(2 * Fe, C, 1.0f, w13, C, xn, 0.0f, s->h13);
        joule_swiglu_forward(s->g, s->h13, 1, Fe);
        joule_sgemv(C, Fe, s->route.gate[j], w2, Fe, s->g, 1.0f, x);
    }
    return JOULE_OK;
}

/* The rows op's buffers for at least n rows: ctx rows at the first call (a prompt), more
 * only when a batch wider than the context arrives. */
static int reserve_rows(moe_decoder *s, const joule_config *c, int n) {
    if (n <= s->cap) return JOULE_OK;
    free_rows(s);
    const joule_moe_config *e = &c->moe;
    const int cap = n > c->ctx ? n : c->ctx;
    const size_t A = (size_t)cap * (size_t)e->top_k, C = (size_t)c->d_model, Fe = (size_t)e->d_ff_expert;
    const size_t f = sizeof(float);
    bool ok = joule_moe_route_alloc(&s->rroute, cap, e->n_experts, e->top_k) == JOULE_OK &&
              joule_moe_dispatch_alloc(&s->disp, cap, e->n_experts, e->top_k) == JOULE_OK;
    s->rlogits = joule_alloc((size_t)cap * (size_t)e->n_experts * f);
    s->xperm = joule_alloc(A * C * f);
    s->out = joule_alloc(A * C * f);
    s->rh13 = joule_alloc(A * 2 * Fe * f);
    s->rg = joule_alloc(A * Fe * f);
    if (!ok || !s->rlogits || !s->xperm || !s->out || !s->rh13 || !s->rg) {
        free_rows(s);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the MoE decoder's buffers for %d rows", cap);
    }
    s->cap = cap;
    return JOULE_OK;
}

int joule_moe_decode_rows(joule_decoder *d, int l, const float *xn, float *x, int n) {
    const joule_model *m = d->m;
    const joule_moe_config *e = &m->cfg.moe;
    moe_decoder *s = d->ext[JOULE_EXT_MOE];
    const float *Wr = NULL, *W = NULL;
    int rc = layer_weights(d, l, &Wr, &W);
    if (!rc) rc = reserve_rows(s, &m->cfg, n);
    if (rc) return rc;
    const joule_moe_router_opts o = inference_opts(e);
    const joule_moe_dims dm = {m->cfg.d_model, e->d_ff_expert, e->n_experts, e->top_k};
    joule_linear_forward(s->rlogits, xn, Wr, n, dm.C, dm.E);
    joule_moe_route_forward(&s->rroute, s->rlogits, n, &o);
    joule_moe_dispatch_build(&s->disp, &s->rroute, dm.E, dm.k);
    joule_moe_experts_forward(x, s->xperm, s->rh13, s->rg, s->out, xn, W, &s->disp, s->rroute.gate, &dm, NULL);
    return JOULE_OK;
}
