/* The Transformer: parameter layout, forward, backward. Op maths lives in core/ops.c;
 * this file only wires buffers together, in one place for every layer kind. */
#include "joule/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ext.h"
#include "joule/ops.h"
#include "joule/quant.h"

struct joule_acts {
    int B, T; /* capacity */
    int cur_B, cur_T;
    bool has_targets;
    double n_valid;
    float *res;       /* [L+1][N,C] residual stream entering each layer; [L] leaves the last */
    float *attn_xn;   /* [L][N,C] */
    float *attn_rstd; /* [L][N] */
    float *qkv;       /* [L][N,3C] after rotary */
    float *att;       /* [L][B,H,T,T] */
    float *attn_out;  /* [L][N,C] before Wo */
    float *mid;       /* [L][N,C] residual after attention */
    float *mid_cca;   /* [L][N,C] residual after chunked cross-attention (CCA layers) */
    float *ffn_xn;    /* [L][N,C] */
    float *ffn_rstd;  /* [L][N] */
    float *h13;       /* [Ld][N,2F], Ld = layers with a dense FFN (MoE layers keep their own) */
    float *g;         /* [Ld][N,F] */
    int ffn_slot[JOULE_MAX_LAYERS]; /* layer l's index in h13 / g; -1 for an MoE layer */
    float *xf;        /* [N,C] final norm output */
    float *rstd_f;    /* [N] */
    float *logits;    /* [N,V] */
    float *probs;     /* [N,V] softmax, then dlogits in backward */
    float *losses;    /* [N] */
    int32_t *targets; /* [N] */
    int32_t *inputs;  /* [N] */
    /* backward scratch, shared by all layers */
    float *dres, *dxn, *dqkv, *datt, *dattn_out, *dh13, *dg;
};

/* ---------------------------------------------------------------- layout */

int joule_model_add_tensor(joule_model *m, const char *name, int64_t d0, int64_t d1) {
    if (m->n_tensors == m->cap_tensors) {
        int cap = m->cap_tensors ? 2 * m->cap_tensors : 64;
        joule_param_info *nt = cap <= JOULE_MAX_PARAMS ? realloc(m->tensors, (size_t)cap * sizeof *nt) : NULL;
        if (!nt) {
            m->layout_failed = true;
            return -1;
        }
        m->tensors = nt;
        m->cap_tensors = cap;
    }
    joule_param_info *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 0;
    t->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    t->offset = m->n_params;
    t->decay = t->ndim == 2;
    t->embedding = false;
    t->init_mult = 1.0f;
    t->owner = -1;
    m->n_params += t->numel;
    return m->n_tensors - 1;
}

#define add_tensor joule_model_add_tensor

/* Per-layer views, by the tensors' recorded offsets (extensions bind their own). */
typedef struct {
    int attn_norm, wq, wo, ffn_norm, w1, w2; /* tensor indices; -1 when absent */
} layer_index;

static int build_layout(joule_model *m, layer_index *li) {
    const joule_config *c = &m->cfg;
    const int64_t C = c->d_model, F = c->d_ff, V = c->vocab;
    const float out_scale = 1.0f / sqrtf(2.0f * (float)c->n_layers);
    char name[96];
    m->n_tensors = 0;
    m->n_params = 0;
    add_tensor(m, "tok_emb.weight", V, C);
    m->tensors[0].embedding = true;
    for (int l = 0; l < c->n_layers; l++) {
        /* Order matters: wq|wk|wv and w1|w3 must stay adjacent (fused matmuls). */
        static const char *attn[] = {"wq", "wk", "wv", "wo"};
        for (int k = 0; k < JOULE_EXT_COUNT; k++) {
            m->ext_first[l][k] = -1;
            m->ext_count[l][k] = 0;
        }
        snprintf(name, sizeof name, "layers.%d.attn_norm.weight", l);
        li[l].attn_norm = add_tensor(m, name, C, 0);
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "layers.%d.attn.%s.weight", l, attn[i]);
            int t = add_tensor(m, name, C, C);
            if (i == 0) li[l].wq = t;
            if (i == 3) li[l].wo = t;
        }
        if (li[l].wo >= 0) m->tensors[li[l].wo].init_mult = out_scale;
        if (c->kinds[l].cca) {
            m->ext_first[l][JOULE_EXT_CCA] = m->n_tensors;
            m->ext_ops[JOULE_EXT_CCA]->layout(m, l);
            m->ext_count[l][JOULE_EXT_CCA] = m->n_tensors - m->ext_first[l][JOULE_EXT_CCA];
        }
        snprintf(name, sizeof name, "layers.%d.ffn_norm.weight", l);
        li[l].ffn_norm = add_tensor(m, name, C, 0);
        li[l].w1 = li[l].w2 = -1;
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            m->ext_first[l][JOULE_EXT_MOE] = m->n_tensors;
            m->ext_ops[JOULE_EXT_MOE]->layout(m, l);
            m->ext_count[l][JOULE_EXT_MOE] = m->n_tensors - m->ext_first[l][JOULE_EXT_MOE];
        } else {
            snprintf(name, sizeof name, "layers.%d.ffn.w1.weight", l);
            li[l].w1 = add_tensor(m, name, F, C);
            snprintf(name, sizeof name, "layers.%d.ffn.w3.weight", l);
            add_tensor(m, name, F, C);
            snprintf(name, sizeof name, "layers.%d.ffn.w2.weight", l);
            li[l].w2 = add_tensor(m, name, C, F);
            if (li[l].w2 >= 0) m->tensors[li[l].w2].init_mult = out_scale;
        }
        if (m->layout_failed) break;
    }
    add_tensor(m, "norm.weight", C, 0);
    if (!c->tied && add_tensor(m, "lm_head.weight", V, C) >= 0) m->tensors[m->n_tensors - 1].embedding = true;
    if (m->layout_failed)
        return joule_fail(JOULE_ERR_NOMEM, "model config: cannot lay out %d+ tensors (limit %d)", m->n_tensors,
                          JOULE_MAX_PARAMS);
    return JOULE_OK;
}

static void bind_views(joule_weights *w, float *base, const joule_model *m, const layer_index *li) {
    const joule_config *c = &m->cfg;
#define AT(i) ((i) >= 0 ? base + m->tensors[i].offset : NULL)
    w->tok_emb = base;
    for (int l = 0; l < c->n_layers; l++) {
        joule_layer_weights *lw = &w->layers[l];
        lw->attn_norm = AT(li[l].attn_norm);
        lw->wqkv = AT(li[l].wq);
        lw->wo = AT(li[l].wo);
        lw->ffn_norm = AT(li[l].ffn_norm);
        lw->w13 = AT(li[l].w1);
        lw->w2 = AT(li[l].w2);
    }
    const joule_param_info *norm = joule_model_find(m, "norm.weight");
    w->norm = base + norm->offset;
    if (c->tied) {
        w->lm_head = w->tok_emb;
    } else {
        w->lm_head = base + joule_model_find(m, "lm_head.weight")->offset;
    }
#undef AT
}

/* Gradient views mirror the parameter views at the same offsets. */
static void translate_views(joule_weights *g, const joule_weights *w, const float *from, float *to) {
#define TR(p) ((p) ? to + ((p) - from) : NULL)
    *g = *w;
    g->tok_emb = TR(w->tok_emb);
    for (int l = 0; l < JOULE_MAX_LAYERS; l++) {
        joule_layer_weights *gl = &g->layers[l];
        const joule_layer_weights *wl = &w->layers[l];
        gl->attn_norm = TR(wl->attn_norm);
        gl->wqkv = TR(wl->wqkv);
        gl->wo = TR(wl->wo);
        gl->ffn_norm = TR(wl->ffn_norm);
        gl->w13 = TR(wl->w13);
        gl->w2 = TR(wl->w2);
    }
    g->norm = TR(w->norm);
    g->lm_head = TR(w->lm_head);
#undef TR
}

static int create(joule_model **out, const joule_config *cfg, bool allocate) {
    *out = NULL;
    int rc = joule_config_validate(cfg, "model config");
    if (rc) return rc;
    const joule_ext_kind need[2] = {JOULE_EXT_MOE, JOULE_EXT_CCA};
    const bool used[2] = {joule_config_has_moe(cfg), joule_config_has_cca(cfg)};
    const char *module[2] = {"MoE (call joule_moe_register)", "RETRO (call joule_retro_register)"};
    for (int k = 0; k < 2; k++)
        if (used[k] && !joule_ext_get(need[k]))
            return joule_fail(JOULE_ERR_ARG, "model config: the %s module is not registered", module[k]);
    joule_model *m = calloc(1, sizeof *m);
    layer_index *li = calloc((size_t)cfg->n_layers, sizeof *li);
    if (!m || !li) {
        free(m);
        free(li);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the model");
    }
    m->cfg = *cfg;
    for (int k = 0; k < 2; k++) m->ext_ops[need[k]] = used[k] ? joule_ext_get(need[k]) : NULL;
    if ((rc = build_layout(m, li))) {
        free(li);
        joule_model_free(m);
        return rc;
    }
    if (!allocate) {
        free(li);
        *out = m;
        return JOULE_OK;
    }
    const int hs = cfg->d_model / cfg->n_heads;
    m->params = joule_alloc(m->n_params * sizeof(float));
    m->rope_cos = joule_alloc((size_t)cfg->ctx * (size_t)(hs / 2) * sizeof(float));
    m->rope_sin = joule_alloc((size_t)cfg->ctx * (size_t)(hs / 2) * sizeof(float));
    if (!m->params || !m->rope_cos || !m->rope_sin) {
        free(li);
        joule_model_free(m);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating %zu parameters", m->n_params);
    }
    bind_views(&m->w, m->params, m, li);
    free(li);
    joule_rope_tables(m->rope_cos, m->rope_sin, cfg->ctx, hs, cfg->rope_theta);
    *out = m;
    return JOULE_OK;
}

int joule_model_create(joule_model **out, const joule_config *cfg) { return create(out, cfg, true); }
int joule_model_describe(joule_model **out, const joule_config *cfg) { return create(out, cfg, false); }

static void free_acts(joule_acts *a) {
    if (!a) return;
    float *bufs[] = {a->res,   a->attn_xn, a->attn_rstd, a->qkv,    a->att,   a->attn_out,
                     a->mid_cca, a->mid,   a->ffn_xn,  a->ffn_rstd,  a->h13,    a->g,     a->xf,
                     a->rstd_f, a->logits, a->probs,     a->losses, a->dres,  a->dxn,
                     a->dqkv,  a->datt,    a->dattn_out, a->dh13,   a->dg};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(a->targets);
    joule_free(a->inputs);
    free(a);
}

void joule_model_free(joule_model *m) {
    if (!m) return;
    for (int k = 0; k < JOULE_EXT_COUNT; k++)
        if (m->ext_ops[k] && m->ext[k] && m->ext_ops[k]->free) m->ext_ops[k]->free(m);
    joule_quant_free(m->quant);
    free(m->tensors);
    joule_free(m->params);
    joule_free(m->grads);
    joule_free(m->rope_cos);
    joule_free(m->rope_sin);
    free_acts(m->acts);
    free(m);
}

const joule_param_info *joule_model_find(const joule_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

joule_param_counts joule_model_param_counts(const joule_model *m) {
    joule_param_counts pc = {0, 0, 0};
    for (int i = 0; i < m->n_tensors; i++) {
        pc.total += m->tensors[i].numel;
        if (m->tensors[i].embedding) pc.embedding += m->tensors[i].numel;
    }
    pc.non_embedding = pc.total - pc.embedding;
    return pc;
}

void joule_model_init(joule_model *m, uint64_t seed) {
    const joule_config *c = &m->cfg;
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        float *p = m->params + t->offset;
        /* One stream per tensor, keyed by its name, so adding tensors (MoE experts, CCA)
         * never changes the initial values of the others. */
        uint64_t key = 1469598103934665603ull; /* FNV-1a */
        for (const char *ch = t->name; *ch; ch++) key = (key ^ (uint8_t)*ch) * 1099511628211ull;
        joule_rng r;
        joule_rng_seed(&r, joule_mix64(seed, key));
        if (t->ndim == 1) {
            for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f;
            continue;
        }
        float std = c->init_std * t->init_mult;
        for (size_t k = 0; k < t->numel; k++) p[k] = std * joule_rng_normal(&r);
    }
}

/* ---------------------------------------------------------------- activations */

int joule_model_alloc_train(joule_model *m, int max_batch) {
    const joule_config *c = &m->cfg;
    if (max_batch < 1) return joule_fail(JOULE_ERR_ARG, "batch size must be >= 1");
    free_acts(m->acts);
    m->acts = NULL;
    if (!m->grads) {
        m->grads = joule_alloc(m->n_params * sizeof(float));
        if (!m->grads) return JOULE_ERR_NOMEM;
        translate_views(&m->g, &m->w, m->params, m->grads);
    }
    joule_acts *a = calloc(1, sizeof *a);
    if (!a) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating activations");
    const size_t L = (size_t)c->n_layers, B = (size_t)max_batch, T = (size_t)c->ctx;
    const size_t N = B * T, C = (size_t)c->d_model, F = (size_t)c->d_ff, V = (size_t)c->vocab;
    const size_t H = (size_t)c->n_heads, f = sizeof(float);
    a->B = max_batch;
    a->T = c->ctx;
    a->res = joule_alloc((L + 1) * N * C * f);
    a->attn_xn = joule_alloc(L * N * C * f);
    a->attn_rstd = joule_alloc(L * N * f);
    a->qkv = joule_alloc(L * N * 3 * C * f);
    a->att = joule_alloc(L * B * H * T * T * f);
    a->attn_out = joule_alloc(L * N * C * f);
    a->mid = joule_alloc(L * N * C * f);
    if (joule_config_has_cca(c)) a->mid_cca = joule_alloc(L * N * C * f);
    a->ffn_xn = joule_alloc(L * N * C * f);
    a->ffn_rstd = joule_alloc(L * N * f);
    size_t Ld = 0;
    for (int l = 0; l < c->n_layers; l++) a->ffn_slot[l] = c->kinds[l].ffn == JOULE_FFN_MOE ? -1 : (int)Ld++;
    a->h13 = joule_alloc((Ld ? Ld : 1) * N * 2 * F * f);
    a->g = joule_alloc((Ld ? Ld : 1) * N * F * f);
    a->xf = joule_alloc(N * C * f);
    a->rstd_f = joule_alloc(N * f);
    a->logits = joule_alloc(N * V * f);
    a->probs = joule_alloc(N * V * f);
    a->losses = joule_alloc(N * f);
    a->targets = joule_alloc(N * sizeof(int32_t));
    a->inputs = joule_alloc(N * sizeof(int32_t));
    a->dres = joule_alloc(N * C * f);
    a->dxn = joule_alloc(N * C * f);
    a->dqkv = joule_alloc(N * 3 * C * f);
    a->datt = joule_alloc(B * H * T * T * f);
    a->dattn_out = joule_alloc(N * C * f);
    a->dh13 = joule_alloc(N * 2 * F * f);
    a->dg = joule_alloc(N * F * f);
    m->acts = a;
    m->max_batch = max_batch;
    if ((joule_config_has_cca(c) && !a->mid_cca) || !a->res || !a->attn_xn || !a->attn_rstd || !a->qkv || !a->att || !a->attn_out || !a->mid ||
        !a->ffn_xn || !a->ffn_rstd || !a->h13 || !a->g || !a->xf || !a->rstd_f || !a->logits ||
        !a->probs || !a->losses || !a->targets || !a->inputs || !a->dres || !a->dxn || !a->dqkv ||
        !a->datt || !a->dattn_out || !a->dh13 || !a->dg) {
        free_acts(a);
        m->acts = NULL;
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating activations for batch %d", max_batch);
    }
    for (int k = 0; k < JOULE_EXT_COUNT; k++) {
        if (!m->ext_ops[k]) continue;
        if (m->ext[k] && m->ext_ops[k]->free) m->ext_ops[k]->free(m);
        m->ext[k] = NULL;
        int rc = m->ext_ops[k]->alloc(m, max_batch);
        if (rc) return rc;
    }
    return JOULE_OK;
}

void joule_model_zero_grad(joule_model *m) {
    if (m->grads) memset(m->grads, 0, m->n_params * sizeof(float));
}

static void copy_par(float *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

/* ---------------------------------------------------------------- forward */

/* out[N,OC] = in W^T + beta out; a quantised model's layer matrices go through its
 * kernels, so evaluation scores what decoding computes. */
static void linear(const joule_model *m, float *out, const float *in, const float *W, int N, int IC, int OC, float beta) {
    if (!joule_quant_matmul(m, W, out, in, N, IC, OC, beta))
        joule_sgemm(false, true, N, OC, IC, 1.0f, in, IC, W, IC, beta, out, OC);
}

int joule_model_forward(joule_model *m, const int32_t *inputs, const int32_t *targets, int B,
                        int T, double *loss) {
    const joule_config *c = &m->cfg;
    joule_acts *a = m->acts;
    if (!a) return joule_fail(JOULE_ERR_ARG, "model has no activation buffers (call joule_model_alloc_train)");
    if (B < 1 || B > a->B || T < 1 || T > c->ctx)
        return joule_fail(JOULE_ERR_ARG, "batch %dx%d exceeds the model's %dx%d", B, T, a->B, c->ctx);
    const int C = c->d_model, F = c->d_ff, V = c->vocab, H = c->n_heads, hs = C / H;
    const size_t N = (size_t)B * (size_t)T;
    const size_t NC = N * (size_t)C, NA = (size_t)a->B * a->T; /* layer strides use capacity */
    for (size_t n = 0; n < N; n++) {
        if (inputs[n] < 0 || inputs[n] >= V)
            return joule_fail(JOULE_ERR_ARG, "input token %d out of range [0, %d)", inputs[n], V);
        if (targets && targets[n] >= V)
            return joule_fail(JOULE_ERR_ARG, "target token %d out of range [0, %d)", targets[n], V);
    }
    a->cur_B = B;
    a->cur_T = T;
    a->has_targets = false;
    memcpy(a->inputs, inputs, N * sizeof(int32_t));
    int rc;

    joule_embedding_forward(a->res, inputs, m->w.tok_emb, (int)N, C);
    for (int l = 0; l < c->n_layers; l++) {
        const joule_layer_weights *w = &m->w.layers[l];
        const float *x = a->res + (size_t)l * NA * C;
        float *xn = a->attn_xn + (size_t)l * NA * C;
        float *qkv = a->qkv + (size_t)l * NA * 3 * C;
        float *att = a->att + (size_t)l * a->B * H * a->T * a->T;
        float *ao = a->attn_out + (size_t)l * NA * C;
        float *mid = a->mid + (size_t)l * NA * C;
        joule_rmsnorm_forward(xn, a->attn_rstd + (size_t)l * NA, x, w->attn_norm, (int)N, C, c->norm_eps);
        linear(m, qkv, xn, w->wqkv, (int)N, C, 3 * C, 0.0f);
        joule_rope_forward(qkv, 3 * C, B, T, H, hs, 0, m->rope_cos, m->rope_sin);
        joule_rope_forward(qkv + C, 3 * C, B, T, H, hs, 0, m->rope_cos, m->rope_sin);
        joule_attention_forward(ao, att, qkv, B, T, C, H);
        copy_par(mid, x, NC);
        linear(m, mid, ao, w->wo, (int)N, C, C, 1.0f);

        if (c->kinds[l].cca) {
            float *mc = a->mid_cca + (size_t)l * NA * C;
            if ((rc = m->ext_ops[JOULE_EXT_CCA]->forward(m, l, mid, mc, B, T, m->training))) return rc;
            mid = mc;
        }

        float *fxn = a->ffn_xn + (size_t)l * NA * C;
        float *next = a->res + (size_t)(l + 1) * NA * C;
        joule_rmsnorm_forward(fxn, a->ffn_rstd + (size_t)l * NA, mid, w->ffn_norm, (int)N, C, c->norm_eps);
        copy_par(next, mid, NC);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            if ((rc = m->ext_ops[JOULE_EXT_MOE]->forward(m, l, fxn, next, B, T, m->training))) return rc;
            continue;
        }
        float *h13 = a->h13 + (size_t)a->ffn_slot[l] * NA * 2 * F;
        float *g = a->g + (size_t)a->ffn_slot[l] * NA * F;
        linear(m, h13, fxn, w->w13, (int)N, C, 2 * F, 0.0f);
        joule_swiglu_forward(g, h13, (int)N, F);
        linear(m, next, g, w->w2, (int)N, F, C, 1.0f);
    }
    const float *xL = a->res + (size_t)c->n_layers * NA * C;
    joule_rmsnorm_forward(a->xf, a->rstd_f, xL, m->w.norm, (int)N, C, c->norm_eps);
    joule_linear_forward(a->logits, a->xf, m->w.lm_head, (int)N, C, V);

    a->has_targets = targets != NULL;
    if (targets) {
        memcpy(a->targets, targets, N * sizeof(int32_t));
        double mean = joule_xent_forward(a->losses, a->probs, a->logits, targets, (int)N, V);
        size_t valid = 0;
        for (size_t n = 0; n < N; n++) valid += targets[n] >= 0;
        a->n_valid = (double)valid;
        if (loss) *loss = mean;
    } else if (loss) {
        *loss = 0.0;
    }
    return JOULE_OK;
}

const float *joule_model_logits(const joule_model *m) { return m->acts ? m->acts->logits : NULL; }
const float *joule_model_hidden(const joule_model *m) { return m->acts ? m->acts->xf : NULL; }

/* ---------------------------------------------------------------- backward */

int joule_model_backward(joule_model *m, float grad_scale) {
    const joule_config *c = &m->cfg;
    joule_acts *a = m->acts;
    if (!a || !a->has_targets) return joule_fail(JOULE_ERR_ARG, "backward needs a forward with targets");
    const int B = a->cur_B, T = a->cur_T;
    const int C = c->d_model, F = c->d_ff, V = c->vocab, H = c->n_heads, hs = C / H;
    const size_t N = (size_t)B * (size_t)T, NA = (size_t)a->B * a->T;
    const float scale = a->n_valid > 0 ? grad_scale / (float)a->n_valid : 0.0f;
    int rc;

    joule_xent_backward(a->probs, a->probs, a->targets, (int)N, V, scale);
    const float *xL = a->res + (size_t)c->n_layers * NA * C;
    joule_linear_backward(a->dxn, m->g.lm_head, a->probs, a->xf, m->w.lm_head, (int)N, C, V, false);
    memset(a->dres, 0, N * C * sizeof(float));
    joule_rmsnorm_backward(a->dres, m->g.norm, a->dxn, xL, m->w.norm, a->rstd_f, (int)N, C);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const joule_layer_weights *w = &m->w.layers[l];
        joule_layer_weights *gw = &m->g.layers[l];
        const float *x = a->res + (size_t)l * NA * C;
        const float *xn = a->attn_xn + (size_t)l * NA * C;
        const float *qkv = a->qkv + (size_t)l * NA * 3 * C;
        const float *att = a->att + (size_t)l * a->B * H * a->T * a->T;
        const float *ao = a->attn_out + (size_t)l * NA * C;
        const float *mid = a->mid + (size_t)l * NA * C;
        const float *ffn_in = c->kinds[l].cca ? a->mid_cca + (size_t)l * NA * C : mid;
        const float *fxn = a->ffn_xn + (size_t)l * NA * C;

        /* FFN: next = ffn_in + FFN(RMSNorm(ffn_in)); dres holds d(next). */
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            if ((rc = m->ext_ops[JOULE_EXT_MOE]->backward(m, l, a->dres, a->dxn, B, T, grad_scale))) return rc;
        } else {
            const float *h13 = a->h13 + (size_t)a->ffn_slot[l] * NA * 2 * F;
            const float *g = a->g + (size_t)a->ffn_slot[l] * NA * F;
            joule_linear_backward(a->dg, gw->w2, a->dres, g, w->w2, (int)N, F, C, false);
            joule_swiglu_backward(a->dh13, a->dg, h13, (int)N, F);
            joule_linear_backward(a->dxn, gw->w13, a->dh13, fxn, w->w13, (int)N, C, 2 * F, false);
        }
        joule_rmsnorm_backward(a->dres, gw->ffn_norm, a->dxn, ffn_in, w->ffn_norm,
                               a->ffn_rstd + (size_t)l * NA, (int)N, C);
        /* CCA: ffn_in = mid + CCA(mid); dres becomes d(mid). */
        if (c->kinds[l].cca &&
            (rc = m->ext_ops[JOULE_EXT_CCA]->backward(m, l, a->dres, a->dres, B, T, grad_scale)))
            return rc;

        /* Attention: mid = x + Wo Attn(RoPE(W_qkv RMSNorm(x))); dres holds d(mid). */
        joule_linear_backward(a->dattn_out, gw->wo, a->dres, ao, w->wo, (int)N, C, C, false);
        joule_attention_backward(a->dqkv, a->datt, a->dattn_out, qkv, att, B, T, C, H);
        joule_rope_backward(a->dqkv, 3 * C, B, T, H, hs, 0, m->rope_cos, m->rope_sin);
        joule_rope_backward(a->dqkv + C, 3 * C, B, T, H, hs, 0, m->rope_cos, m->rope_sin);
        joule_linear_backward(a->dxn, gw->wqkv, a->dqkv, xn, w->wqkv, (int)N, C, 3 * C, false);
        joule_rmsnorm_backward(a->dres, gw->attn_norm, a->dxn, x, w->attn_norm,
                               a->attn_rstd + (size_t)l * NA, (int)N, C);
    }
    joule_embedding_backward(m->g.tok_emb, a->dres, a->inputs, (int)N, C);
    return JOULE_OK;
}

/* ---------------------------------------------------------------- FLOPs */

uint64_t joule_model_forward_flops(const joule_config *c, int B, int T) {
    const uint64_t N = (uint64_t)B * (uint64_t)T, C = (uint64_t)c->d_model, F = (uint64_t)c->d_ff;
    const uint64_t V = (uint64_t)c->vocab, L = (uint64_t)c->n_layers;
    uint64_t attn = 2 * N * C * 3 * C /* qkv */
                    + 2 * N * C * C   /* wo */
                    + joule_attention_forward_flops(B, T, c->d_model);
    const uint64_t ffn = 2 * N * C * 2 * F /* w1, w3 */
                         + 2 * N * F * C;  /* w2 */
    uint64_t total = L * attn + 2 * N * C * V;
    for (int l = 0; l < c->n_layers; l++) {
        const joule_ext_ops *moe = joule_ext_get(JOULE_EXT_MOE), *cca = joule_ext_get(JOULE_EXT_CCA);
        if (c->kinds[l].cca && cca) total += cca->forward_flops(c, l, B, T);
        if (c->kinds[l].ffn != JOULE_FFN_MOE) total += ffn;
        else if (moe) total += moe->forward_flops(c, l, B, T);
    }
    return total;
}

double joule_model_aux_loss(const joule_model *m) {
    double s = 0.0;
    for (int k = 0; k < JOULE_EXT_COUNT; k++)
        if (m->ext_ops[k] && m->ext_ops[k]->aux_loss) s += m->ext_ops[k]->aux_loss(m);
    return s;
}

void joule_model_set_training(joule_model *m, bool train) { m->training = train; }

/* ---------------------------------------------------------------- extension registry */

static const joule_ext_ops *g_ext[JOULE_EXT_COUNT];

void joule_ext_register(joule_ext_kind kind, const joule_ext_ops *ops) {
    if ((int)kind >= 0 && kind < JOULE_EXT_COUNT) g_ext[kind] = ops;
}

const joule_ext_ops *joule_ext_get(joule_ext_kind kind) {
    return (int)kind >= 0 && kind < JOULE_EXT_COUNT ? g_ext[kind] : NULL;
}
