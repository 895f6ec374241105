/* The MoE FFN as a core extension (JOULE_EXT_MOE): parameter layout, activation state,
 * forward/backward wiring of router and experts, FLOPs, routing statistics. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ext.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "moe_internal.h"

joule_moe_config joule_moe_config_default(int d_ff) {
    joule_moe_config e;
    memset(&e, 0, sizeof e);
    e.n_experts = 8;
    e.top_k = 2;
    e.every = 2;
    e.d_ff_expert = d_ff;
    e.capacity_train = 1.25f;
    e.capacity_eval = 0.0f;
    e.renormalize = true;
    e.random_second = false;
    e.aux_alpha = 1e-2f;
    e.z_beta = 1e-3f;
    return e;
}

void joule_moe_apply(joule_config *c, const joule_moe_config *e) {
    snprintf(c->arch, sizeof c->arch, "moe");
    c->moe = *e;
    for (int l = 0; l < c->n_layers && l < JOULE_MAX_LAYERS; l++)
        c->kinds[l].ffn = e->every > 0 && l % e->every == e->every - 1 ? JOULE_FFN_MOE : JOULE_FFN_DENSE;
}

/* ---------------------------------------------------------------- state */

static moe_layer *layer_of(const joule_model *m, int l) {
    const moe_state *st = m->ext[JOULE_EXT_MOE];
    if (!st || l < 0 || l >= m->cfg.n_layers || st->slot[l] < 0) return NULL;
    return &st->layers[st->slot[l]];
}

static joule_moe_dims dims_of(const joule_config *c) {
    joule_moe_dims d = {c->d_model, c->moe.d_ff_expert, c->moe.n_experts, c->moe.top_k};
    return d;
}

static void moe_free(joule_model *m) {
    moe_state *st = m->ext[JOULE_EXT_MOE];
    if (!st) return;
    for (int i = 0; i < st->n; i++) {
        moe_layer *ly = &st->layers[i];
        joule_moe_route_free(&ly->route);
        joule_moe_dispatch_free(&ly->disp);
        float *bufs[] = {ly->logits, ly->h13, ly->g, ly->out};
        for (size_t b = 0; b < sizeof bufs / sizeof *bufs; b++) joule_free(bufs[b]);
        free(ly->acc_routed);
    }
    free(st->layers);
    moe_ep_free(st);
    float *bufs[] = {st->xperm, st->dout, st->dg, st->dh13, st->dlogits, st->dgate};
    for (size_t b = 0; b < sizeof bufs / sizeof *bufs; b++) joule_free(bufs[b]);
    free(st);
    m->ext[JOULE_EXT_MOE] = NULL;
}

static int moe_alloc(joule_model *m, int max_batch) {
    const joule_config *c = &m->cfg;
    const joule_moe_dims dm = dims_of(c);
    const size_t N = (size_t)max_batch * (size_t)c->ctx, A = N * (size_t)dm.k, f = sizeof(float);
    const size_t C = (size_t)dm.C, Fe = (size_t)dm.Fe, E = (size_t)dm.E;
    moe_state *st = calloc(1, sizeof *st);
    if (!st) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating MoE state");
    m->ext[JOULE_EXT_MOE] = st;
    for (int l = 0; l < c->n_layers; l++) st->slot[l] = c->kinds[l].ffn == JOULE_FFN_MOE ? st->n++ : -1;
    st->layers = calloc((size_t)st->n, sizeof *st->layers);
    bool ok = st->layers != NULL;
    for (int i = 0; ok && i < st->n; i++) {
        moe_layer *ly = &st->layers[i];
        ok = joule_moe_route_alloc(&ly->route, (int)N, dm.E, dm.k) == JOULE_OK &&
             joule_moe_dispatch_alloc(&ly->disp, (int)N, dm.E, dm.k) == JOULE_OK;
        ly->logits = joule_alloc(N * E * f);
        ly->h13 = joule_alloc(A * 2 * Fe * f);
        ly->g = joule_alloc(A * Fe * f);
        ly->out = joule_alloc(A * C * f);
        ly->acc_routed = calloc(E, sizeof *ly->acc_routed);
        ok = ok && ly->logits && ly->h13 && ly->g && ly->out && ly->acc_routed;
    }
    st->xperm = joule_alloc(A * C * f);
    st->dout = joule_alloc(A * C * f);
    st->dg = joule_alloc(A * Fe * f);
    st->dh13 = joule_alloc(A * 2 * Fe * f);
    st->dlogits = joule_alloc(N * E * f);
    st->dgate = joule_alloc(A * f);
    if (!ok || !st->xperm || !st->dout || !st->dg || !st->dh13 || !st->dlogits || !st->dgate) {
        moe_free(m);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating MoE activations for batch %d", max_batch);
    }
    return JOULE_OK;
}

/* ---------------------------------------------------------------- layout */

static void moe_layout(joule_model *m, int l) {
    const joule_config *c = &m->cfg;
    const int64_t C = c->d_model, Fe = c->moe.d_ff_expert;
    const float out_scale = 1.0f / sqrtf(2.0f * (float)c->n_layers);
    char name[96];
    snprintf(name, sizeof name, "layers.%d.moe.router.weight", l);
    if (joule_model_add_tensor(m, name, c->moe.n_experts, C) < 0) return;
    for (int e = 0; e < c->moe.n_experts; e++) {
        /* w1|w3 adjacent: one fused [2Fe, C] matmul per expert, as in the dense FFN. */
        snprintf(name, sizeof name, "layers.%d.moe.experts.%d.w1.weight", l, e);
        if (joule_model_add_tensor(m, name, Fe, C) < 0) return;
        snprintf(name, sizeof name, "layers.%d.moe.experts.%d.w3.weight", l, e);
        if (joule_model_add_tensor(m, name, Fe, C) < 0) return;
        snprintf(name, sizeof name, "layers.%d.moe.experts.%d.w2.weight", l, e);
        int t = joule_model_add_tensor(m, name, C, Fe);
        if (t < 0) return; /* joule_model_create fails on it */
        m->tensors[t].init_mult = out_scale;
    }
}

/* ---------------------------------------------------------------- forward / backward */

/* Adds the last forward's routing to the layer's running sums. */
static void accumulate(moe_layer *ly, int E) {
    const joule_moe_route *r = &ly->route;
    ly->acc_tokens += (uint64_t)r->n_total;
    ly->acc_dropped[0] += (uint64_t)r->dropped[0];
    ly->acc_dropped[1] += (uint64_t)r->dropped[1];
    ly->acc_skipped += (uint64_t)r->skipped;
    for (int i = 0; i < E; i++) ly->acc_routed[i] += (uint64_t)r->routed[i];
    ly->acc_entropy += r->entropy * r->n_total;
    ly->acc_lb += r->lb * r->n_total;
    ly->acc_z += r->z * r->n_total;
}

static int moe_forward(joule_model *m, int l, const float *x, float *y, int B, int T, bool train) {
    moe_layer *ly = layer_of(m, l);
    const joule_config *c = &m->cfg;
    if (!ly) return joule_fail(JOULE_ERR_ARG, "layer %d has no MoE state (call joule_model_alloc_train)", l);
    const joule_moe_dims dm = dims_of(c);
    const int N = B * T, first = m->ext_first[l][JOULE_EXT_MOE];
    const float *Wr = joule_model_param(m, first), *W = joule_model_param(m, first + 1);
    const joule_moe_config *e = &c->moe;
    joule_moe_router_opts o = {e->n_experts, e->top_k, train ? e->capacity_train : e->capacity_eval, e->renormalize,
                               train && e->random_second, joule_mix64(m->noise_seed, (uint64_t)l), e->aux_alpha,
                               e->z_beta, 0};
    moe_state *st = m->ext[JOULE_EXT_MOE];
    ly->ep_ran = train && st->ep;
    if (ly->ep_ran) {
        int rc = moe_ep_forward(m, l, ly, x, y, N, &o);
        if (rc) return rc;
        ly->x = x;
        accumulate(ly, dm.E);
        return JOULE_OK;
    }
    ly->opts = o;
    const double t0 = joule_now();
    joule_linear_forward(ly->logits, x, Wr, N, dm.C, dm.E);
    joule_moe_route_forward(&ly->route, ly->logits, N, &o);
    joule_moe_dispatch_build(&ly->disp, &ly->route, dm.E, dm.k);
    st->timing.route_fwd += joule_now() - t0;
    joule_moe_experts_forward(y, st->xperm, ly->h13, ly->g, ly->out, x, W, &ly->disp, ly->route.gate, &dm,
                              &st->timing);
    ly->x = x;
    accumulate(ly, dm.E);
    return JOULE_OK;
}

static int moe_backward(joule_model *m, int l, const float *dy, float *dx, int B, int T, float grad_scale) {
    moe_layer *ly = layer_of(m, l);
    moe_state *st = m->ext[JOULE_EXT_MOE];
    if (!ly || !ly->x || ly->route.N != B * T)
        return joule_fail(JOULE_ERR_ARG, "MoE layer %d: backward without a matching forward", l);
    if (ly->ep_ran) return moe_ep_backward(m, l, ly, dy, dx, grad_scale);
    const joule_moe_dims dm = dims_of(&m->cfg);
    const int N = B * T, first = m->ext_first[l][JOULE_EXT_MOE];
    const float *Wr = joule_model_param(m, first), *W = joule_model_param(m, first + 1);
    float *dWr = joule_model_grad(m, first), *dW = joule_model_grad(m, first + 1);
    joule_moe_experts_backward(dx, st->dgate, dW, st->xperm, st->dout, st->dg, st->dh13, dy, ly->x, W, ly->h13, ly->g,
                               ly->out, &ly->disp, ly->route.gate, &dm, &st->timing);
    const double t0 = joule_now();
    /* The aux losses are means already: they take grad_scale (1/accum) but not 1/n_valid. */
    joule_moe_route_backward(st->dlogits, &ly->route, st->dgate, &ly->opts, grad_scale);
    joule_linear_backward(dx, dWr, st->dlogits, ly->x, Wr, N, dm.C, dm.E, true);
    st->timing.route_bwd += joule_now() - t0;
    return JOULE_OK;
}

/* ---------------------------------------------------------------- FLOPs */

static uint64_t router_flops(const joule_config *c, uint64_t N) {
    return 2 * N * (uint64_t)c->d_model * (uint64_t)c->moe.n_experts;
}

/* One expert SwiGLU FFN on one token: w1|w3 (2 * 2 C Fe) and w2 (2 Fe C). */
static uint64_t expert_flops_per_row(const joule_config *c) {
    return 6 * (uint64_t)c->d_model * (uint64_t)c->moe.d_ff_expert;
}

static uint64_t moe_forward_flops(const joule_config *c, int l, int B, int T) {
    const uint64_t N = (uint64_t)B * (uint64_t)T;
    return router_flops(c, N) + (uint64_t)c->moe.top_k * N * expert_flops_per_row(c);
}

static int moe_flop_terms(const joule_config *c, int l, int B, int T, const char **names, uint64_t *flops, int max) {
    const uint64_t N = (uint64_t)B * (uint64_t)T;
    const char *term[2] = {"router", "experts"};
    const uint64_t value[2] = {router_flops(c, N), (uint64_t)c->moe.top_k * N * expert_flops_per_row(c)};
    int n = max < 2 ? max : 2;
    for (int i = 0; i < n; i++) {
        names[i] = term[i];
        flops[i] = value[i];
    }
    return n;
}

uint64_t joule_moe_last_forward_flops(const joule_model *m) {
    uint64_t total = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const moe_layer *ly = layer_of(m, l);
        if (ly && ly->x)
            total += router_flops(&m->cfg, (uint64_t)ly->route.N) + (uint64_t)ly->disp.rows * expert_flops_per_row(&m->cfg);
    }
    return total;
}

const joule_moe_route *joule_moe_last_route(const joule_model *m, int l) {
    const moe_layer *ly = layer_of(m, l);
    return ly && ly->x ? &ly->route : NULL;
}

uint64_t joule_moe_active_params(const joule_model *m, bool non_embedding) {
    joule_param_counts pc = joule_model_param_counts(m);
    uint64_t active = non_embedding ? pc.non_embedding : pc.total;
    const joule_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++)
        if (c->kinds[l].ffn == JOULE_FFN_MOE)
            active -= (uint64_t)(c->moe.n_experts - c->moe.top_k) * 3 * (uint64_t)c->d_model *
                      (uint64_t)c->moe.d_ff_expert;
    return active;
}

/* ---------------------------------------------------------------- statistics */

static double moe_aux_loss(const joule_model *m) {
    double s = 0.0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const moe_layer *ly = layer_of(m, l);
        if (ly && ly->x) s += ly->route.lb + ly->route.z;
    }
    return s;
}

/* Tokens per expert (routed, before capacity): min, max and max over mean. */
static void add_load(cJSON *o, const int32_t *last, const uint64_t *acc, int E) {
    double mn = 0, mx = 0, sum = 0;
    for (int i = 0; i < E; i++) {
        double v = last ? (double)last[i] : (double)acc[i];
        mn = i == 0 || v < mn ? v : mn;
        mx = i == 0 || v > mx ? v : mx;
        sum += v;
    }
    cJSON_AddNumberToObject(o, "tokens_min", mn);
    cJSON_AddNumberToObject(o, "tokens_max", mx);
    cJSON_AddNumberToObject(o, "max_over_mean", sum > 0 ? mx / (sum / E) : 0.0);
}

void joule_moe_stats_json(const joule_model *m, void *cjson_object, bool cumulative) {
    cJSON *root = cjson_object;
    const int E = m->cfg.moe.n_experts;
    cJSON *arr = cJSON_CreateArray();
    double aux = 0.0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const moe_layer *ly = layer_of(m, l);
        if (!ly || (cumulative ? ly->acc_tokens == 0 : !ly->x)) continue;
        const joule_moe_route *r = &ly->route;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", l);
        double tokens = cumulative ? (double)ly->acc_tokens : (double)r->n_total;
        double d1 = cumulative ? (double)ly->acc_dropped[0] : r->dropped[0];
        double d2 = cumulative ? (double)ly->acc_dropped[1] : r->dropped[1];
        double lb = cumulative ? ly->acc_lb / tokens : r->lb, z = cumulative ? ly->acc_z / tokens : r->z;
        add_load(o, cumulative ? NULL : r->routed, ly->acc_routed, E);
        cJSON_AddNumberToObject(o, "drop_first", d1 / tokens);
        cJSON_AddNumberToObject(o, "drop_second", m->cfg.moe.top_k == 2 ? d2 / tokens : 0.0);
        if (m->cfg.moe.random_second && m->cfg.moe.top_k == 2)
            cJSON_AddNumberToObject(o, "second_skipped", (cumulative ? (double)ly->acc_skipped : r->skipped) / tokens);
        cJSON_AddNumberToObject(o, "entropy", cumulative ? ly->acc_entropy / tokens : r->entropy);
        cJSON_AddNumberToObject(o, "lb", lb);
        cJSON_AddNumberToObject(o, "z", z);
        cJSON_AddItemToArray(arr, o);
        aux += lb + z;
    }
    cJSON_AddNumberToObject(root, "aux", aux);
    cJSON_AddItemToObject(root, "layers", arr);
    const moe_state *st = m->ext[JOULE_EXT_MOE];
    double s, b;
    int64_t calls;
    int ranks;
    if (st && st->ep) {
        moe_ep_stats(st, &s, &b, &calls, &ranks);
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "ranks", ranks);
        cJSON_AddNumberToObject(a, "bytes", b);
        cJSON_AddNumberToObject(a, "seconds", s);
        cJSON_AddNumberToObject(a, "calls", (double)calls);
        cJSON_AddItemToObject(root, "alltoall", a);
    }
}

static void moe_stats_json(const joule_model *m, void *cjson_object) { joule_moe_stats_json(m, cjson_object, false); }

void joule_moe_stats_reset(joule_model *m) {
    moe_state *st = m->ext[JOULE_EXT_MOE];
    if (!st) return;
    for (int i = 0; i < st->n; i++) {
        moe_layer *ly = &st->layers[i];
        ly->acc_tokens = ly->acc_skipped = 0;
        ly->acc_dropped[0] = ly->acc_dropped[1] = 0;
        memset(ly->acc_routed, 0, (size_t)m->cfg.moe.n_experts * sizeof *ly->acc_routed);
        ly->acc_entropy = ly->acc_lb = ly->acc_z = 0.0;
    }
    moe_ep_stats_reset(st);
}

joule_moe_timing *joule_moe_timing_of(const joule_model *m) {
    moe_state *st = m->ext[JOULE_EXT_MOE];
    return st ? &st->timing : NULL;
}

/* ---------------------------------------------------------------- registration */

static const joule_ext_ops MOE_OPS = {
    .name = "moe",
    .layout = moe_layout,
    .alloc = moe_alloc,
    .free = moe_free,
    .forward = moe_forward,
    .backward = moe_backward,
    .forward_flops = moe_forward_flops,
    .flop_terms = moe_flop_terms,
    .stats_json = moe_stats_json,
    .aux_loss = moe_aux_loss,
    .decoder_create = joule_moe_decoder_create,
    .decoder_free = joule_moe_decoder_free,
    .decode_step = joule_moe_decode_step,
    .decode_rows = joule_moe_decode_rows,
    .expert_parallel = moe_ep_enable,
};

void joule_moe_register(void) { joule_ext_register(JOULE_EXT_MOE, &MOE_OPS); }
