/* Token-at-a-time inference with a KV cache: the path `joule generate` and the decode
 * benchmark use. Matrix-vector products go through joule_sgemv (counted). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/model.h"
#include "joule/ext.h"
#include "joule/ops.h"
#include "joule/quant.h"
#include "par.h"
#include "rows_kernel.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* y[OC] = W x + beta y: the quantised kernel when m is a quantised model, else sgemv. */
static void mv(const joule_model *m, float *y, const float *W, const float *x, int IC, int OC, float beta) {
    if (!joule_quant_matmul(m, W, y, x, 1, IC, OC, beta)) joule_sgemv(OC, IC, 1.0f, W, IC, x, beta, y);
}

/* out[n,OC] = in[n,IC] W^T + beta out: the quantised kernel, else one sgemm. */
static void mm(const joule_model *m, float *out, const float *in, const float *W, int n, int IC, int OC, float beta) {
    if (!joule_quant_matmul(m, W, out, in, n, IC, OC, beta))
        joule_sgemm(false, true, n, OC, IC, 1.0f, in, IC, W, IC, beta, out, OC);
}

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

int joule_decoder_truncate(joule_decoder *d, int pos) {
    if (pos < 0 || pos > d->pos)
        return joule_fail(JOULE_ERR_ARG, "cannot truncate a decoder of %d tokens to %d", d->pos, pos);
    for (int k = 0; k < JOULE_EXT_COUNT; k++) {
        const joule_ext_ops *o = d->m->ext_ops[k];
        int rc = o && o->decoder_truncate ? o->decoder_truncate(d, pos) : JOULE_OK;
        if (rc) return rc;
    }
    d->pos = pos;
    return JOULE_OK;
}

/* q . k over one head's hs values, in 16 fixed lanes summed by a fixed tree: the same bits
 * from the AVX-512 path and the portable one, wherever it is inlined (an `omp simd`
 * reduction leaves the order to the compiler, and here ended in 16 dependent scalar adds
 * through the stack). */
static inline float head_dot(const float *q, const float *k, int hs) {
#if defined(__AVX512F__)
    if (hs % 16 == 0) {
        __m512 a = _mm512_setzero_ps();
        for (int i = 0; i < hs; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), a);
        const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
        const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
        const __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
        return _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1)));
    }
#endif
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= hs; i += 16)
        for (int j = 0; j < 16; j++) acc[j] = fmaf(q[i + j], k[i + j], acc[j]);
    for (int j = 0; i + j < hs; j++) acc[j] = fmaf(q[i + j], k[i + j], acc[j]);
    for (int w = 8; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

/* Scores s[0..pos] to softmax weights in place (max-subtracted); returns 1 / their sum. */
static inline float softmax_weights(float *s, int pos, float mx) {
    float sum = 0.0f;
    for (int t = 0; t <= pos; t++) {
        s[t] = expf(s[t] - mx);
        sum += s[t];
    }
    return 1.0f / sum;
}

/* Head h of one query q (a qkv row) over the cached positions [0, pos] of layer l; s holds
 * ctx scores, o the head's slice of the output row. */
static void attend_head(const joule_decoder *d, int l, int pos, int h, const float *q, float *s, float *o) {
    const joule_config *c = &d->m->cfg;
    const int C = c->d_model, hs = C / c->n_heads, T = c->ctx;
    const float *kc = d->k_cache + (size_t)l * T * C;
    const float *vc = d->v_cache + (size_t)l * T * C;
    const float scale = 1.0f / sqrtf((float)hs);
    q += h * hs;
    o += h * hs;
    float mx = -INFINITY;
    for (int t = 0; t <= pos; t++) {
        s[t] = head_dot(q, kc + (size_t)t * C + h * hs, hs) * scale;
        mx = s[t] > mx ? s[t] : mx;
    }
    const float inv = softmax_weights(s, pos, mx);
    for (int i = 0; i < hs; i++) o[i] = 0.0f;
    for (int t = 0; t <= pos; t++) {
        const float *v = vc + (size_t)t * C + h * hs;
        const float p = s[t] * inv;
        for (int i = 0; i < hs; i++) o[i] += p * v[i];
    }
}

/* The cache rows a step reads are a few KB per layer and sequence, on pages of their own:
 * the hardware prefetcher restarts at every 4 KB page and the loads wait on memory (the
 * attention of a 16-row step was a quarter of its time), so the loops below fetch the row
 * PREFETCH_ROWS ahead themselves. */
#define PREFETCH_ROWS 8
static inline void prefetch_row(const float *row, int C) {
    for (int i = 0; i < C; i += 16) __builtin_prefetch(row + i, 0, 3);
}

/* Every head of one query q over positions [0, pos] of layer l, walking the cache a whole
 * row at a time: each K and V row is read once, in address order (the hardware prefetcher
 * streams it), where a head at a time strides through every row once per head. Per head
 * the arithmetic and its order are attend_head's, so the bits are too. s: H * ctx scores;
 * o: the C-wide output row. */
static void attend_all_heads(const joule_decoder *d, int l, int pos, const float *q, float *s, float *o) {
    const joule_config *c = &d->m->cfg;
    const int C = c->d_model, H = c->n_heads, hs = C / H, T = c->ctx;
    const float *kc = d->k_cache + (size_t)l * T * C;
    const float *vc = d->v_cache + (size_t)l * T * C;
    const float scale = 1.0f / sqrtf((float)hs);
    for (int t = 0; t < PREFETCH_ROWS && t <= pos; t++) prefetch_row(kc + (size_t)t * C, C);
    for (int t = 0; t <= pos; t++) {
        if (t + PREFETCH_ROWS <= pos) prefetch_row(kc + (size_t)(t + PREFETCH_ROWS) * C, C);
        else prefetch_row(vc + (size_t)(t + PREFETCH_ROWS - pos - 1) * C, C); /* V's first rows */
        for (int h = 0; h < H; h++) s[(size_t)h * T + t] = head_dot(q + h * hs, kc + (size_t)t * C + h * hs, hs) * scale;
    }
    for (int h = 0; h < H; h++) { /* the weights p = e / sum, as attend_head forms them */
        float *sh = s + (size_t)h * T, mx = -INFINITY;
        for (int t = 0; t <= pos; t++) mx = sh[t] > mx ? sh[t] : mx;
        const float inv = softmax_weights(sh, pos, mx);
        for (int t = 0; t <= pos; t++) sh[t] *= inv;
    }
    for (int i = 0; i < C; i++) o[i] = 0.0f;
    for (int t = 0; t <= pos; t++) {
        if (t + PREFETCH_ROWS <= pos) prefetch_row(vc + (size_t)(t + PREFETCH_ROWS) * C, C);
        const float *v = vc + (size_t)t * C;
        for (int h = 0; h < H; h++) {
            const float p = s[(size_t)h * T + t];
            for (int i = h * hs; i < (h + 1) * hs; i++) o[i] += p * v[i];
        }
    }
}

/* Attention of one query over the cached positions [0, pos], one head per iteration. */
static void attend(joule_decoder *d, int l, int pos) {
    const joule_config *c = &d->m->cfg;
    const int H = c->n_heads, T = c->ctx;
    if (!joule_par_worth((uint64_t)pos, 65)) { /* row order, the same bits */
        attend_all_heads(d, l, pos, d->qkv, d->scores, d->att_out);
    } else {
#pragma omp parallel for schedule(static)
        for (int h = 0; h < H; h++) attend_head(d, l, pos, h, d->qkv, d->scores + (size_t)h * T, d->att_out);
    }
    /* Same FLOPs as the batched path's two T x T products restricted to this row. */
    joule_flops_add(4ull * (uint64_t)(pos + 1) * (uint64_t)c->d_model);
}

/* x[n,C] += MoE_l(xn[n,C]): grouped through the rows op when asked and the module has
 * one, else row by row through the one-token op. */
static int moe_rows(joule_decoder *d, int l, const float *xn, float *x, int n, bool grouped) {
    const joule_ext_ops *ops = d->m->ext_ops[JOULE_EXT_MOE];
    const int C = d->m->cfg.d_model;
    if (grouped && ops->decode_rows) return ops->decode_rows(d, l, xn, x, n);
    for (int t = 0; t < n; t++) {
        int rc = ops->decode_step(d, l, xn + (size_t)t * C, x + (size_t)t * C);
        if (rc) return rc;
    }
    return JOULE_OK;
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
        mv(m, d->qkv, w->wqkv, d->xn, C, 3 * C, 0.0f);
        joule_rope_forward(d->qkv, 3 * C, 1, 1, H, hs, pos, m->rope_cos, m->rope_sin);
        joule_rope_forward(d->qkv + C, 3 * C, 1, 1, H, hs, pos, m->rope_cos, m->rope_sin);
        memcpy(d->k_cache + ((size_t)l * T + pos) * C, d->qkv + C, (size_t)C * sizeof(float));
        memcpy(d->v_cache + ((size_t)l * T + pos) * C, d->qkv + 2 * C, (size_t)C * sizeof(float));
        attend(d, l, pos);
        mv(m, d->x, w->wo, d->att_out, C, C, 1.0f);
        int rc;
        if (c->kinds[l].cca && (rc = m->ext_ops[JOULE_EXT_CCA]->decode_step(d, l, NULL, d->x))) return rc;

        joule_rmsnorm_forward(d->xn, &rstd, d->x, w->ffn_norm, 1, C, c->norm_eps);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            if ((rc = m->ext_ops[JOULE_EXT_MOE]->decode_step(d, l, d->xn, d->x))) return rc;
            continue;
        }
        mv(m, d->h13, w->w13, d->xn, C, 2 * F, 0.0f);
        joule_swiglu_forward(d->g, d->h13, 1, F);
        mv(m, d->x, w->w2, d->g, F, C, 1.0f);
    }
    joule_rmsnorm_forward(d->xn, &rstd, d->x, m->w.norm, 1, C, c->norm_eps);
    joule_sgemv(V, C, 1.0f, m->w.lm_head, C, d->xn, 0.0f, d->logits);
    d->pos++;
    *logits = d->logits;
    return JOULE_OK;
}

struct joule_decoder_batch {
    const joule_model *m;
    int max_n;
    float *x, *xn, *qkv, *ao, *h13, *g, *rstd, *scores, *logits; /* max_n rows each */
    joule_rows_packed *pk; /* the fp32 matrices a step multiplies, packed (rows_kernel.h) */
    int n_pk;
    float *pf; /* joule_decoder_batch_prefill's scratch, allocated at creation */
};

/* OpenBLAS packs the weight matrix at every sgemm call (about three passes over it) where
 * a gemv streams it once, so a few rows go faster as gemvs: sgemm wins from about 4 rows
 * per thread (docs/BENCH.md). For matrices the batch did not pack (MoE experts). */
static bool rows_as_gemm(int n) { return n >= 4 * joule_get_threads(); }

/* OpenBLAS packs the weight matrix at every sgemm call (about three passes over it); the
 * batch's copy packed once (rows_kernel.h) avoids that. Every row count uses it, one row
 * included (faster than the gemv on the reference model, docs/BENCH.md), so that a row's
 * bits never depend on how many others share its step. */
static const joule_rows_packed *packed(const joule_decoder_batch *b, const float *W, int IC, int OC) {
    for (int i = 0; i < b->n_pk; i++)
        if (b->pk[i].W == W && b->pk[i].IC == IC && b->pk[i].OC == OC) return &b->pk[i];
    return NULL;
}

/* out[n,OC] = in[n,IC] W[OC,IC]^T + beta out: the quantised kernel, the packed kernel, or
 * for a matrix the batch did not pack (max_n 1, MoE experts) gemvs, or one sgemm for many
 * rows. */
static void rows_matmul(const joule_decoder_batch *b, float *out, const float *in, const float *W, int n, int IC,
                        int OC, float beta) {
    const joule_model *m = b->m;
    if (joule_quant_matmul(m, W, out, in, n, IC, OC, beta)) return;
    const joule_rows_packed *pk = packed(b, W, IC, OC);
    if (pk) {
        joule_rows_matmul(out, in, pk, n, beta);
        return;
    }
    if (rows_as_gemm(n)) {
        joule_sgemm(false, true, n, OC, IC, 1.0f, in, IC, W, IC, beta, out, OC);
        return;
    }
    for (int i = 0; i < n; i++) joule_sgemv(OC, IC, 1.0f, W, IC, in + (size_t)i * IC, beta, out + (size_t)i * OC);
}

/* A prefill's product: the batch's kernels when it runs through one, else mm. */
static void pmm(const joule_model *m, const joule_decoder_batch *bt, float *out, const float *in, const float *W, int n,
                int IC, int OC, float beta) {
    if (bt) rows_matmul(bt, out, in, W, n, IC, OC, beta);
    else mm(m, out, in, W, n, IC, OC, beta);
}

/* ---- batched prefill ---- */

/* Row buffers of one prefill pass, carved from d->pf. */
typedef struct {
    float *x, *xn, *qkv, *ao, *h13, *g, *rstd, *att;
} prefill_bufs;

static size_t prefill_floats(const joule_config *c, size_t sizes[8]) {
    const size_t T = (size_t)c->ctx, C = (size_t)c->d_model, F = (size_t)c->d_ff, H = (size_t)c->n_heads;
    const size_t s[8] = {T * C, T * C, 3 * T * C, T * C, 2 * T * F, T * F, T, H * T * T};
    size_t total = 0;
    for (int i = 0; i < 8; i++) total += (sizes[i] = s[i]);
    return total;
}

/* *pf: the scratch, allocated at the first call (the decoder's own, or a batch's). */
static int prefill_scratch(const joule_config *c, float **pf, prefill_bufs *b) {
    size_t sizes[8];
    const size_t total = prefill_floats(c, sizes);
    /* Once per decoder: a prompt's worth of rows costs more than a step's scratch, and
     * token-at-a-time users (joule generate) never pay it. */
    if (!*pf && !(*pf = joule_alloc(total * sizeof(float))))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the prefill buffers (%zu floats)", total);
    float **dst[8] = {&b->x, &b->xn, &b->qkv, &b->ao, &b->h13, &b->g, &b->rstd, &b->att};
    float *p = *pf;
    for (int i = 0; i < 8; i++) {
        *dst[i] = p;
        p += sizes[i];
    }
    return JOULE_OK;
}

/* bt: the batch whose packed weights the products use (joule_decoder_batch_prefill), or NULL. */
static int prefill(joule_decoder *d, const joule_decoder_batch *bt, float **pf, const int32_t *tokens, int n,
                   const float **logits) {
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
    if ((rc = prefill_scratch(c, pf, &b))) return rc;
    joule_embedding_forward(b.x, tokens, m->w.tok_emb, n, C);
    for (int l = 0; l < c->n_layers; l++) {
        const joule_layer_weights *w = &m->w.layers[l];
        joule_rmsnorm_forward(b.xn, b.rstd, b.x, w->attn_norm, n, C, c->norm_eps);
        pmm(m, bt, b.qkv, b.xn, w->wqkv, n, C, 3 * C, 0.0f);
        joule_rope_forward(b.qkv, 3 * C, 1, n, H, hs, 0, m->rope_cos, m->rope_sin);
        joule_rope_forward(b.qkv + C, 3 * C, 1, n, H, hs, 0, m->rope_cos, m->rope_sin);
        float *kc = d->k_cache + (size_t)l * T * C, *vc = d->v_cache + (size_t)l * T * C;
        for (int t = 0; t < n; t++) {
            memcpy(kc + (size_t)t * C, b.qkv + (size_t)t * 3 * C + C, (size_t)C * sizeof(float));
            memcpy(vc + (size_t)t * C, b.qkv + (size_t)t * 3 * C + 2 * C, (size_t)C * sizeof(float));
        }
        joule_attention_forward(b.ao, b.att, b.qkv, 1, n, C, H);
        pmm(m, bt, b.x, b.ao, w->wo, n, C, C, 1.0f);
        if (c->kinds[l].cca && (rc = cca->prefill_rows(d, l, b.x, n))) return rc;
        joule_rmsnorm_forward(b.xn, b.rstd, b.x, w->ffn_norm, n, C, c->norm_eps);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            if ((rc = moe_rows(d, l, b.xn, b.x, n, true))) return rc;
            continue;
        }
        pmm(m, bt, b.h13, b.xn, w->w13, n, C, 2 * F, 0.0f);
        joule_swiglu_forward(b.g, b.h13, n, F);
        pmm(m, bt, b.x, b.g, w->w2, n, F, C, 1.0f);
    }
    float rstd;
    memcpy(d->x, b.x + (size_t)(n - 1) * C, (size_t)C * sizeof(float));
    joule_rmsnorm_forward(d->xn, &rstd, d->x, m->w.norm, 1, C, c->norm_eps);
    joule_sgemv(V, C, 1.0f, m->w.lm_head, C, d->xn, 0.0f, d->logits);
    d->pos = n;
    *logits = d->logits;
    return JOULE_OK;
}

int joule_decoder_prefill(joule_decoder *d, const int32_t *tokens, int n, const float **logits) {
    return prefill(d, NULL, &d->pf, tokens, n, logits);
}

/* ---- batched step over n sequences ---- */

void joule_decoder_batch_free(joule_decoder_batch *b) {
    if (!b) return;
    for (int i = 0; i < b->n_pk; i++) joule_free(b->pk[i].p);
    free(b->pk);
    joule_free(b->pf);
    float *bufs[] = {b->x, b->xn, b->qkv, b->ao, b->h13, b->g, b->rstd, b->scores, b->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) joule_free(bufs[i]);
    free(b);
}

static int pack_one(joule_decoder_batch *b, const float *W, int IC, int OC) {
    const size_t nf = joule_rows_pack_floats(IC, OC);
    joule_rows_packed *pk = &b->pk[b->n_pk];
    if (!nf || !(pk->p = joule_alloc(nf * sizeof(float))))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory packing a %d x %d matrix for batched steps", OC, IC);
    joule_rows_pack(pk->p, W, IC, OC);
    pk->W = W;
    pk->IC = IC;
    pk->OC = OC;
    b->n_pk++;
    return JOULE_OK;
}

/* The fp32 matrices of a step, packed once here so that no step repacks them; a quantised
 * model keeps its own kernels (joule_quant_matmul), MoE layers their expert path. */
static int pack_weights(joule_decoder_batch *b) {
    const joule_model *m = b->m;
    const joule_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_ff;
    if (m->quant || joule_config_has_cca(c)) return JOULE_OK;
    if (!(b->pk = calloc(4 * (size_t)c->n_layers + 1, sizeof *b->pk)))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory packing the weights for batched steps");
    int rc = JOULE_OK;
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const joule_layer_weights *w = &m->w.layers[l];
        if ((rc = pack_one(b, w->wqkv, C, 3 * C)) || (rc = pack_one(b, w->wo, C, C))) break;
        if (c->kinds[l].ffn != JOULE_FFN_MOE && !(rc = pack_one(b, w->w13, C, 2 * F))) rc = pack_one(b, w->w2, F, C);
    }
    return rc ? rc : pack_one(b, m->w.lm_head, C, c->vocab);
}

int joule_decoder_batch_create(joule_decoder_batch **out, const joule_model *m, int max_n) {
    *out = NULL;
    if (max_n < 1) return joule_fail(JOULE_ERR_ARG, "a decoder batch needs room for >= 1 sequence, not %d", max_n);
    const joule_config *c = &m->cfg;
    joule_decoder_batch *b = calloc(1, sizeof *b);
    if (!b) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the decoder batch");
    const size_t n = (size_t)max_n, C = (size_t)c->d_model, F = (size_t)c->d_ff, f = sizeof(float);
    b->m = m;
    b->max_n = max_n;
    b->x = joule_alloc(n * C * f);
    b->xn = joule_alloc(n * C * f);
    b->qkv = joule_alloc(n * 3 * C * f);
    b->ao = joule_alloc(n * C * f);
    b->h13 = joule_alloc(n * 2 * F * f);
    b->g = joule_alloc(n * F * f);
    b->rstd = joule_alloc(n * f);
    b->scores = joule_alloc(n * (size_t)c->n_heads * (size_t)c->ctx * f);
    b->logits = joule_alloc(n * (size_t)c->vocab * f);
    if (!b->x || !b->xn || !b->qkv || !b->ao || !b->h13 || !b->g || !b->rstd || !b->scores || !b->logits) {
        joule_decoder_batch_free(b);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating a decoder batch of %d sequences", max_n);
    }
    size_t sizes[8];
    b->pf = joule_alloc(prefill_floats(c, sizes) * sizeof(float));
    int rc = !b->pf ? joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the prefill buffers of a decoder batch")
             : max_n > 1 ? pack_weights(b)
                         : JOULE_OK;
    if (rc) {
        joule_decoder_batch_free(b);
        return rc;
    }
    *out = b;
    return JOULE_OK;
}

int joule_decoder_batch_prefill(joule_decoder_batch *b, joule_decoder *d, const int32_t *tokens, int n,
                                const float **logits) {
    if (d->m != b->m) return joule_fail(JOULE_ERR_ARG, "batched prefill: a decoder of another model");
    return prefill(d, b, &b->pf, tokens, n, logits);
}

static int check_batch(const joule_decoder_batch *b, joule_decoder *const *ds, int n, const int32_t *tokens) {
    const joule_config *c = &b->m->cfg;
    if (n < 1 || n > b->max_n)
        return joule_fail(JOULE_ERR_ARG, "batched step of %d sequences (this batch holds 1 to %d)", n, b->max_n);
    for (int i = 0; i < n; i++) {
        if (ds[i]->m != b->m) return joule_fail(JOULE_ERR_ARG, "sequence %d: a decoder of another model", i);
        if (ds[i]->pos >= c->ctx) return joule_fail(JOULE_ERR_ARG, "sequence %d: KV cache full (%d tokens)", i, c->ctx);
        if (tokens[i] < 0 || tokens[i] >= c->vocab)
            return joule_fail(JOULE_ERR_ARG, "sequence %d: token %d out of range [0, %d)", i, tokens[i], c->vocab);
        for (int j = 0; j < i; j++)
            if (ds[j] == ds[i]) return joule_fail(JOULE_ERR_ARG, "sequences %d and %d share one decoder", j, i);
    }
    return JOULE_OK;
}

static void attend_seq(joule_decoder_batch *b, joule_decoder *const *ds, int l, int i) {
    const joule_config *c = &b->m->cfg;
    const int C = c->d_model;
    attend_all_heads(ds[i], l, ds[i]->pos, b->qkv + (size_t)i * 3 * C, b->scores + (size_t)i * c->n_heads * c->ctx,
                     b->ao + (size_t)i * C);
}

/* Each sequence's query row over its own cache; the sequences share the threads. */
static void attend_batch(joule_decoder_batch *b, joule_decoder *const *ds, int n, int l) {
    const int C = b->m->cfg.d_model;
    uint64_t work = 0;
    for (int i = 0; i < n; i++) work += (uint64_t)ds[i]->pos + 1;
    JOULE_PAR_FOR(n > 1 && joule_par_worth(work, 64), i, n, attend_seq(b, ds, l, i));
    joule_flops_add(4ull * work * (uint64_t)C);
}

int joule_decoder_step_batch(joule_decoder_batch *b, joule_decoder *const *ds, int n, const int32_t *tokens,
                             const float **logits) {
    const joule_model *m = b->m;
    const joule_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_ff, V = c->vocab, H = c->n_heads, hs = C / H, T = c->ctx;
    int rc = check_batch(b, ds, n, tokens);
    if (rc) return rc;
    if (joule_config_has_cca(c)) {
        for (int i = 0; i < n; i++) {
            const float *li;
            if ((rc = joule_decoder_step(ds[i], tokens[i], &li))) return rc;
            memcpy(b->logits + (size_t)i * V, li, (size_t)V * sizeof(float));
        }
        *logits = b->logits;
        return JOULE_OK;
    }
    joule_embedding_forward(b->x, tokens, m->w.tok_emb, n, C);
    for (int l = 0; l < c->n_layers; l++) {
        const joule_layer_weights *w = &m->w.layers[l];
        joule_rmsnorm_forward(b->xn, b->rstd, b->x, w->attn_norm, n, C, c->norm_eps);
        rows_matmul(b, b->qkv, b->xn, w->wqkv, n, C, 3 * C, 0.0f);
        for (int i = 0; i < n; i++) {
            float *q = b->qkv + (size_t)i * 3 * C;
            const int pos = ds[i]->pos;
            joule_rope_forward(q, 3 * C, 1, 1, H, hs, pos, m->rope_cos, m->rope_sin);
            joule_rope_forward(q + C, 3 * C, 1, 1, H, hs, pos, m->rope_cos, m->rope_sin);
            memcpy(ds[i]->k_cache + ((size_t)l * T + pos) * C, q + C, (size_t)C * sizeof(float));
            memcpy(ds[i]->v_cache + ((size_t)l * T + pos) * C, q + 2 * C, (size_t)C * sizeof(float));
        }
        attend_batch(b, ds, n, l);
        rows_matmul(b, b->x, b->ao, w->wo, n, C, C, 1.0f);
        joule_rmsnorm_forward(b->xn, b->rstd, b->x, w->ffn_norm, n, C, c->norm_eps);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            /* Rows of different sequences: the routing is per token, so they mix freely. */
            if ((rc = moe_rows(ds[0], l, b->xn, b->x, n, rows_as_gemm(n)))) return rc;
            continue;
        }
        rows_matmul(b, b->h13, b->xn, w->w13, n, C, 2 * F, 0.0f);
        joule_swiglu_forward(b->g, b->h13, n, F);
        rows_matmul(b, b->x, b->g, w->w2, n, F, C, 1.0f);
    }
    joule_rmsnorm_forward(b->xn, b->rstd, b->x, m->w.norm, n, C, c->norm_eps);
    rows_matmul(b, b->logits, b->xn, m->w.lm_head, n, C, V, 0.0f);
    for (int i = 0; i < n; i++) ds[i]->pos++;
    *logits = b->logits;
    return JOULE_OK;
}
