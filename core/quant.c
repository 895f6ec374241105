/* Quantised weights of a model: the rule, the conversion, and the dispatch of products to
 * the bf16 / int8 kernels (core/kernels_*.c). File I/O: core/quant_io.c. */
#include "joule/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ext.h"
#include "joule/ops.h"
#include "quant_internal.h"

static const char *const NAMES[3] = {"fp32", "bf16", "int8"};

const char *joule_precision_name(joule_precision p) { return (unsigned)p < 3 ? NAMES[p] : "?"; }

int joule_precision_parse(const char *s, joule_precision *out) {
    if (s && !strcmp(s, "f32")) s = "fp32";
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, NAMES[i])) {
            *out = (joule_precision)i;
            return JOULE_OK;
        }
    return joule_fail(JOULE_ERR_ARG, "precision '%s' is not fp32, bf16 or int8", joule_q(s ? s : "(null)"));
}

double joule_precision_bytes(joule_precision p) { return p == JOULE_PREC_BF16 ? 2.0 : p == JOULE_PREC_INT8 ? 1.0 : 4.0; }

bool joule_quant_applies(const joule_param_info *t) { return t->ndim == 2 && !t->embedding; }

/* -1 not yet read, 0 no, 1 forced by JOULE_KERNELS=portable or a test */
static int g_portable = -1;

void joule_quant_force_portable(bool on) { g_portable = on; }

bool joule_quant_portable_forced(void) {
    if (g_portable < 0) {
        const char *e = getenv("JOULE_KERNELS");
        g_portable = e && !strcmp(e, "portable");
    }
    return g_portable == 1;
}

const char *joule_quant_kernel_name(joule_precision p) {
    if (p == JOULE_PREC_BF16) return joule_quant_native_bf16() ? "avx512bf16" : "portable";
    if (p == JOULE_PREC_INT8) return joule_quant_native_vnni() ? "avx512vnni" : "portable";
    return "sgemm";
}

void joule_quant_free(joule_quant *q) {
    if (!q) return;
    joule_free(q->bf16);
    joule_free(q->i8);
    joule_free(q->scale);
    joule_free(q->wsum);
    free(q->row_base);
    free(q->quantised);
    free(q);
}

/* The tables (which tensors, where their rows start) and the buffers for precision p. */
static int quant_alloc(joule_quant **out, const joule_model *m, joule_precision p) {
    joule_quant *q = calloc(1, sizeof *q);
    if (q) {
        q->prec = p;
        q->row_base = calloc((size_t)m->n_tensors, sizeof *q->row_base);
        q->quantised = calloc((size_t)m->n_tensors, sizeof *q->quantised);
    }
    if (!q || !q->row_base || !q->quantised) {
        joule_quant_free(q);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the quantised weights");
    }
    for (int i = 0; i < m->n_tensors; i++) {
        q->row_base[i] = q->n_rows;
        q->quantised[i] = p != JOULE_PREC_F32 && joule_quant_applies(&m->tensors[i]);
        if (q->quantised[i]) q->n_rows += (size_t)m->tensors[i].shape[0];
    }
    bool ok = true;
    if (p == JOULE_PREC_BF16) ok = (q->bf16 = joule_alloc(m->n_params * sizeof(uint16_t))) != NULL;
    if (p == JOULE_PREC_INT8)
        ok = (q->i8 = joule_alloc(m->n_params)) && (q->scale = joule_alloc((q->n_rows + 1) * sizeof(float))) &&
             (q->wsum = joule_alloc((q->n_rows + 1) * sizeof(int32_t)));
    if (!ok) {
        joule_quant_free(q);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating %zu quantised weights", m->n_params);
    }
    *out = q;
    return JOULE_OK;
}

int joule_quant_new(joule_quant **out, const joule_model *m, joule_precision p) { return quant_alloc(out, m, p); }

/* Row sums of the int8 rows (the VNNI kernel's offset correction). */
void joule_quant_finish(joule_quant *q, const joule_model *m) {
    if (q->prec != JOULE_PREC_INT8) return;
    for (int i = 0; i < m->n_tensors; i++) {
        if (!q->quantised[i]) continue;
        const joule_param_info *t = &m->tensors[i];
        for (int64_t r = 0; r < t->shape[0]; r++) {
            const int8_t *row = q->i8 + t->offset + (size_t)r * (size_t)t->shape[1];
            int32_t s = 0;
            for (int64_t k = 0; k < t->shape[1]; k++) s += row[k];
            q->wsum[q->row_base[i] + (size_t)r] = s;
        }
    }
}

static void quantise_tensor(joule_quant *q, joule_model *m, int i) {
    const joule_param_info *t = &m->tensors[i];
    float *w = m->params + t->offset;
    if (q->prec == JOULE_PREC_BF16) {
        for (size_t k = 0; k < t->numel; k++) {
            q->bf16[t->offset + k] = joule_f32_to_bf16(w[k]);
            w[k] = joule_bf16_to_f32(q->bf16[t->offset + k]);
        }
        return;
    }
    const size_t cols = (size_t)t->shape[1];
    for (int64_t r = 0; r < t->shape[0]; r++) {
        float *row = w + (size_t)r * cols;
        int8_t *qr = q->i8 + t->offset + (size_t)r * cols;
        float amax = 0.0f;
        for (size_t k = 0; k < cols; k++) amax = fmaxf(amax, fabsf(row[k]));
        const float s = amax / 127.0f;
        for (size_t k = 0; k < cols; k++) {
            float v = s > 0.0f ? nearbyintf(row[k] / s) : 0.0f;
            qr[k] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
            row[k] = (float)qr[k] * s;
        }
        q->scale[q->row_base[i] + (size_t)r] = s;
    }
}

int joule_quant_from_model(joule_quant **out, joule_model *m, joule_precision p) {
    *out = NULL;
    if (p != JOULE_PREC_BF16 && p != JOULE_PREC_INT8)
        return joule_fail(JOULE_ERR_ARG, "quantise to bf16 or int8, not %s", joule_precision_name(p));
    for (size_t k = 0; k < m->n_params; k++)
        if (!isfinite(m->params[k])) return joule_fail(JOULE_ERR_ARG, "the model has a non-finite weight");
    joule_quant *q;
    int rc = quant_alloc(&q, m, p);
    if (rc) return rc;
    for (int i = 0; i < m->n_tensors; i++)
        if (q->quantised[i]) quantise_tensor(q, m, i);
    joule_quant_finish(q, m);
    *out = q;
    return JOULE_OK;
}

uint64_t joule_quant_decode_weight_bytes(const joule_model *m) {
    const joule_quant *q = m->quant;
    const double qb = joule_precision_bytes(q ? q->prec : JOULE_PREC_F32);
    double bytes = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (i == 0) bytes += 4.0 * (double)t->shape[1]; /* tok_emb: one row */
        else if (q && q->quantised[i]) bytes += qb * (double)t->numel + (q->scale ? 8.0 * (double)t->shape[0] : 0);
        else bytes += 4.0 * (double)t->numel;
    }
    if (m->cfg.tied) bytes += 4.0 * (double)m->tensors[0].numel; /* the lm_head reads all of tok_emb */
    return (uint64_t)bytes;
}

/* Index of the tensor starting at arena offset off, or -1 (tensors are in offset order). */
static int tensor_at(const joule_model *m, size_t off) {
    int lo = 0, hi = m->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (m->tensors[mid].offset == off) return mid;
        if (m->tensors[mid].offset < off) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

bool joule_quant_matmul(const joule_model *m, const float *W, float *out, const float *in, int n, int IC, int OC,
                        float beta) {
    const joule_quant *q = m->quant;
    if (!q || q->prec == JOULE_PREC_F32 || n < 1 || IC > JOULE_QUANT_MAX_IC || W < m->params ||
        W >= m->params + m->n_params)
        return false;
    if (q->prec == JOULE_PREC_BF16 && n >= JOULE_QUANT_BF16_SGEMM_ROWS) return false; /* sgemm is faster there */
    const size_t off = (size_t)(W - m->params), end = off + (size_t)IC * (size_t)OC;
    const int first = tensor_at(m, off);
    if (first < 0) return false;
    /* A fused product (wq|wk|wv, w1|w3) spans adjacent tensors: all must be quantised rows
     * of width IC, so their rows (and int8 scales) are contiguous. */
    for (int i = first; i < m->n_tensors && m->tensors[i].offset < end; i++)
        if (!q->quantised[i] || m->tensors[i].shape[1] != IC) return false;
    joule_flops_add(2ull * (uint64_t)n * (uint64_t)IC * (uint64_t)OC);
    if (q->prec == JOULE_PREC_BF16) joule_bf16_matmul(out, in, q->bf16 + off, n, IC, OC, beta);
    else
        joule_i8_matmul(out, in, q->i8 + off, q->scale + q->row_base[first], q->wsum + q->row_base[first], n, IC, OC,
                        beta);
    return true;
}
