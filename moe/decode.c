/* One-token MoE inference for the KV-cache decoder: the router of moe/router.c on a single
 * token (dropless, no random choice), then the chosen experts as matrix-vector products. */
#include <stdlib.h>

#include "joule/moe.h"
#include "joule/ops.h"

typedef struct {
    joule_moe_route route; /* one token */
    float *logits;         /* [E] */
    float *h13, *g;        /* [2Fe], [Fe] */
} moe_decoder;

void joule_moe_decoder_free(joule_decoder *d) {
    moe_decoder *s = d->ext[JOULE_EXT_MOE];
    if (!s) return;
    joule_moe_route_free(&s->route);
    joule_free(s->logits);
    joule_free(s->h13);
    joule_free(s->g);
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

int joule_moe_decode_step(joule_decoder *d, int l, const float *xn, float *x) {
    const joule_model *m = d->m;
    const joule_moe_config *e = &m->cfg.moe;
    moe_decoder *s = d->ext[JOULE_EXT_MOE];
    const int C = m->cfg.d_model, Fe = e->d_ff_expert, E = e->n_experts, k = e->top_k;
    const int first = m->ext_first[l][JOULE_EXT_MOE];
    if (!s || first < 0) return joule_fail(JOULE_ERR_ARG, "layer %d is not an MoE layer of this decoder", l);
    const float *Wr = joule_model_param(m, first), *W = joule_model_param(m, first + 1);
    const joule_moe_router_opts o = {E, k, 0.0f, e->renormalize, false, 0, e->aux_alpha, e->z_beta};
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
