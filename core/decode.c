/* Token-at-a-time inference with a KV cache: the path `joule generate` and the decode
 * benchmark use. Matrix-vector products go through joule_sgemv (counted). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/model.h"
#include "joule/ops.h"

int joule_decoder_create(joule_decoder **out, const joule_model *m) {
    *out = NULL;
    const joule_config *c = &m->cfg;
    joule_decoder *d = calloc(1, sizeof *d);
    if (!d) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the decoder");
    const size_t L = (size_t)c->n_layers, T = (size_t)c->ctx, C = (size_t)c->d_model;
    const size_t F = (size_t)c->d_ff, H = (size_t)c->n_heads, f = sizeof(float);
    d->m = m;
    d->k_cache = joule_alloc(L * T * C * f);
    d->v_cache = joule_alloc(L * T * C * f);
    d->x = joule_alloc(C * f);
    d->xn = joule_alloc(C * f);
    d->qkv = joule_alloc(3 * C * f);
    d->att_out = joule_alloc(C * f);
    d->h13 = joule_alloc(2 * F * f);
    d->g = joule_alloc(F * f);
    d->scores = joule_alloc(H * T * f);
    d->logits = joule_alloc((size_t)c->vocab * f);
    if (!d->k_cache || !d->v_cache || !d->x || !d->xn || !d->qkv || !d->att_out || !d->h13 || !d->g ||
        !d->scores || !d->logits) {
        joule_decoder_free(d);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the KV cache");
    }
    for (int k = 0; k < JOULE_EXT_COUNT; k++) {
        int rc = m->ext_ops[k] && m->ext_ops[k]->decoder_create ? m->ext_ops[k]->decoder_create(d) : JOULE_OK;
        if (rc) {
            joule_decoder_free(d);
            return rc;
        }
    }
    *out = d;
    return JOULE_OK;
}

void joule_decoder_free(joule_decoder *d) {
    if (!d) return;
    for (int k = 0; k < JOULE_EXT_COUNT; k++)
        if (d->m->ext_ops[k] && d->m->ext_ops[k]->decoder_free && d->ext[k]) d->m->ext_ops[k]->decoder_free(d);
    float *bufs[] = {d->k_cache, d->v_cache, d->x, d->xn, d->qkv, d->att_out, d->h13, d->g, d->scores, d->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    joule_free(d->pf);
    free(d);
}

void joule_decoder_reset(joule_decoder *d) { d->pos = 0; }

/* Attention of one query over the cached positions [0, pos], one head per iteration. */
static void attend(joule_decoder *d, int l, int pos) {
    const joule_config *c = &d->m->cfg;
    const int C = c->d_model, H = c->n_heads, hs = C / H, T = c->ctx;
    const float *kc = d->k_cache + (size_t)l * T * C;
    const float *vc = d->v_cache + (size_t)l * T * C;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) if (pos > 64)
    for (int h = 0; h < H; h++) {
        const float *q = d->qkv + h * hs;
        float *s = d->scores + (size_t)h * T;
        float mx = -INFINITY;
        for (int t = 0; t <= pos; t++) {
            const float *k = kc + (size_t)t * C + h * hs;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int i = 0; i < hs; i++) dot += q[i] * k[i];
            s[t] = dot * scale;
            mx = s[t] > mx ? s[t] : mx;
        }
        float sum = 0.0f;
        for (int t = 0; t <= pos; t++) {
            s[t] = expf(s[t] - mx);
            sum += s[t];
        }
        float inv = 1.0f / sum;
        float *o = d->att_out + h * hs;
        for (int i = 0; i < hs; i++) o[i] = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *v = vc + (size_t)t * C + h * hs;
            float p = s[t] * inv;
#pragma omp simd
            for (int i = 0; i < hs; i++) o[i] += p * v[i];
        }
    }
    /* Same FLOPs as the batched path's two T x T products restricted to this row. */
    joule_flops_add(4ull * (uint64_t)(pos + 1) * (uint64_t)C);
}

int joule_decoder_step(joule_decoder *d, int32_t token, const float **logits) {
    const joule_model *m = d->m;
    const joule_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_ff, V = c->vocab, H = c->n_heads, hs = C / H, T = c->ctx;
    if (d->pos >= T) return joule_fail(JOULE_ERR_ARG, "KV cache full (%d tokens)", T);
    if (token < 0 || token >= V) return joule_fail(JOULE_ERR_ARG, "token %d out of range [0, %d)", token, V);
    const int pos = d->pos;
    float rstd;
    memcpy(d->x, m->w.tok_emb + (size_t)token * C, (size_t)C * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        const joule_layer_weights *w = &m->w.layers[l];
        joule_rmsnorm_forward(d->xn, &rstd, d->x, w->attn_norm, 1, C, c->norm_eps);
        joule_sgemv(3 * C, C, 1.0f, w->wqkv, C, d->xn, 0.0f, d->qkv);
        joule_rope_forward(d->qkv, 3 * C, 1, 1, H, hs, pos, m->rope_cos, m->rope_sin);
        joule_rope_forward(d->qkv + C, 3 * C, 1, 1, H, hs, pos, m->rope_cos, m->rope_sin);
        memcpy(d->k_cache + ((size_t)l * T + pos) * C, d->qkv + C, (size_t)C * sizeof(float));
        memcpy(d->v_cache + ((size_t)l * T + pos) * C, d->qkv + 2 * C, (size_t)C * sizeof(float));
        attend(d, l, pos);
        joule_sgemv(C, C, 1.0f, w->wo, C, d->att_out, 1.0f, d->x);
        int rc;
        if (c->kinds[l].cca && (rc = m->ext_ops[JOULE_EXT_CCA]->decode_step(d, l, NULL, d->x))) return rc;

        joule_rmsnorm_forward(d->xn, &rstd, d->x, w->ffn_norm, 1, C, c->norm_eps);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            if ((rc = m->ext_ops[JOULE_EXT_MOE]->decode_step(d, l, d->xn, d->x))) return rc;
            continue;
        }
        joule_sgemv(2 * F, C, 1.0f, w->w13, C, d->xn, 0.0f, d->h13);
        joule_swiglu_forward(d->g, d->h13, 1, F);
        joule_sgemv(C, F, 1.0f, w->w2, F, d->g, 1.0f, d->x);
    }
    joule_rmsnorm_forward(d->xn, &rstd, d->x, m->w.norm, 1, C, c->norm_eps);
    joule_sgemv(V, C, 1.0f, m->w.lm_head, C, d->xn, 0.0f, d->logits);
    d->pos++;
    *logits = d->logits;
    return JOULE_OK;
}

/* ---- batched prefill ---- */

/* Row buffers of one prefill pass, carved from d->pf. */
typedef struct {
    float *x, *xn, *qkv, *ao, *h13, *g, *rstd, *att;
} prefill_bufs;

static int prefill_scratch(joule_decoder *d, prefill_bufs *b) {
    const joule_config *c = &d->m->cfg;
    const size_t T = (size_t)c->ctx, C = (size_t)c->d_model, F = (size_t)c->d_ff, H = (size_t)c->n_heads;
    const size_t sizes[8] = {T * C, T * C, 3 * T * C, T * C, 2 * T * F, T * F, T, H * T * T};
    size_t total = 0;
    for (int i = 0; i < 8; i++) total += sizes[i];
    /* Once per decoder: a prompt's worth of rows costs more than a step's scratch, and
     * token-at-a-time users (joule generate) never pay it. */
    if (!d->pf && !(d->pf = joule_alloc(total * sizeof(float))))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the prefill buffers (%zu floats)", total);
    float **dst[8] = {&b->x, &b->xn, &b->qkv, &b->ao, &b->h13, &b->g, &b->rstd, &b->att};
    float *p = d->pf;
    for (int i = 0; i < 8; i++) {
        *dst[i] = p;
        p += sizes[i];
    }
    return JOULE_OK;
}

int joule_decoder_prefill(joule_decoder *d, const int32_t *tokens, int n, const float **logits) {
    const joule_model *m = d->m;
    const joule_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_ff, V = c->vocab, H = c->n_heads, hs = C / H, T = c->ctx;
    if (n < 1 || n > T - d->pos)
        return joule_fail(JOULE_ERR_ARG, "prefill of %d tokens does not fit the KV cache (%d of %d used)", n, d->pos, T);
    int rc;
    /* CCA without a rows op follows the sequence position by position; keep that order. */
    const joule_ext_ops *cca = m->ext_ops[JOULE_EXT_CCA];
    if (d->pos > 0 || (joule_config_has_cca(c) && !cca->prefill_rows)) {
        for (int i = 0; i < n; i++)
            if ((rc = joule_decoder_step(d, tokens[i], logits))) return rc;
        return JOULE_OK;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return joule_fail(JOULE_ERR_ARG, "token %d out of range [0, %d)", tokens[i], V);
    prefill_bufs b;
    if ((rc = prefill_scratch(d, &b))) return rc;
    joule_embedding_forward(b.x, tokens, m->w.tok_emb, n, C);
    for (int l = 0; l < c->n_layers; l++) {
        const joule_layer_weights *w = &m->w.layers[l];
        joule_rmsnorm_forward(b.xn, b.rstd, b.x, w->attn_norm, n, C, c->norm_eps);
        joule_linear_forward(b.qkv, b.xn, w->wqkv, n, C, 3 * C);
        joule_rope_forward(b.qkv, 3 * C, 1, n, H, hs, 0, m->rope_cos, m->rope_sin);
        joule_rope_forward(b.qkv + C, 3 * C, 1, n, H, hs, 0, m->rope_cos, m->rope_sin);
        float *kc = d->k_cache + (size_t)l * T * C, *vc = d->v_cache + (size_t)l * T * C;
        for (int t = 0; t < n; t++) {
            memcpy(kc + (size_t)t * C, b.qkv + (size_t)t * 3 * C + C, (size_t)C * sizeof(float));
            memcpy(vc + (size_t)t * C, b.qkv + (size_t)t * 3 * C + 2 * C, (size_t)C * sizeof(float));
        }
        joule_attention_forward(b.ao, b.att, b.qkv, 1, n, C, H);
        joule_sgemm(false, true, n, C, C, 1.0f, b.ao, C, w->wo, C, 1.0f, b.x, C);
        if (c->kinds[l].cca && (rc = cca->prefill_rows(d, l, b.x, n))) return rc;
        joule_rmsnorm_forward(b.xn, b.rstd, b.x, w->ffn_norm, n, C, c->norm_eps);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            /* The one-token op, whose routing is the dropless inference routing. */
            for (int t = 0; t < n; t++)
                if ((rc = m->ext_ops[JOULE_EXT_MOE]->decode_step(d, l, b.xn + (size_t)t * C, b.x + (size_t)t * C)))
                    return rc;
            continue;
        }
        joule_linear_forward(b.h13, b.xn, w->w13, n, C, 2 * F);
        joule_swiglu_forward(b.g, b.h13, n, F);
        joule_sgemm(false, true, n, C, F, 1.0f, b.g, F, w->w2, F, 1.0f, b.x, C);
    }
    float rstd;
    memcpy(d->x, b.x + (size_t)(n - 1) * C, (size_t)C * sizeof(float));
    joule_rmsnorm_forward(d->xn, &rstd, d->x, m->w.norm, 1, C, c->norm_eps);
    joule_sgemv(V, C, 1.0f, m->w.lm_head, C, d->xn, 0.0f, d->logits);
    d->pos = n;
    *logits = d->logits;
    return JOULE_OK;
}
