/* Quantised checkpoints as safetensors (docs/FORMATS.md, "Quantised models"): writing,
 * and the checks and copies joule_checkpoint_load makes when a file says "precision". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ext.h"
#include "joule/quant.h"
#include "joule/safetensors.h"
#include "quant_internal.h"

#define SCALE_SUFFIX ".scale"

static const char SCHEME_INT8[] =
    "int8: per output row o, w[o,k] = q[o,k] * scale[o] (tensor NAME" SCALE_SUFFIX ", F32 [rows]); "
    "non-embedding matrices only";
static const char SCHEME_BF16[] = "bf16: non-embedding matrices rounded to nearest even";

/* The scale tensor's name for matrix `name`. */
static void scale_name(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s" SCALE_SUFFIX, name); }

int joule_quant_save(const joule_model *m, const char *path) {
    const joule_quant *q = m->quant;
    if (!q || q->prec == JOULE_PREC_F32) return joule_fail(JOULE_ERR_ARG, "%s: the model is not quantised", path);
    joule_st_writer *w;
    int rc = joule_st_writer_new(&w);
    if (rc) return rc;
    char *cfg = joule_config_to_json(&m->cfg);
    if (!cfg) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc && !(rc = joule_st_writer_add_meta(w, "format", "joule")) &&
        !(rc = joule_st_writer_add_meta(w, "format_version", JOULE_FORMAT_VERSION)) &&
        !(rc = joule_st_writer_add_meta(w, "config", cfg)) &&
        !(rc = joule_st_writer_add_meta(w, "precision", joule_precision_name(q->prec))))
        rc = joule_st_writer_add_meta(w, "quantization", q->prec == JOULE_PREC_INT8 ? SCHEME_INT8 : SCHEME_BF16);
    /* fp32 tensors and scales first, so each stays 4-byte aligned after 1- and 2-byte data */
    char name[160];
    for (int i = 0; !rc && i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (!q->quantised[i]) rc = joule_st_writer_add(w, t->name, JOULE_ST_F32, t->shape, t->ndim, m->params + t->offset);
        else if (q->prec == JOULE_PREC_INT8) {
            scale_name(name, sizeof name, t->name);
            rc = joule_st_writer_add(w, name, JOULE_ST_F32, t->shape, 1, q->scale + q->row_base[i]);
        }
    }
    for (int i = 0; !rc && i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (!q->quantised[i]) continue;
        if (q->prec == JOULE_PREC_BF16) rc = joule_st_writer_add(w, t->name, JOULE_ST_BF16, t->shape, 2, q->bf16 + t->offset);
        else rc = joule_st_writer_add(w, t->name, JOULE_ST_I8, t->shape, 2, q->i8 + t->offset);
    }
    if (!rc) rc = joule_st_writer_write(w, path);
    free(cfg);
    joule_st_writer_free(w);
    return rc;
}

/* Tensor `name` with exactly this dtype and shape, or NULL with the message set. */
static const joule_st_tensor *expect(const joule_st_file *f, const char *name, joule_st_dtype dt, const int64_t *shape,
                                     int ndim) {
    const joule_st_tensor *t = joule_st_find(f, name);
    if (!t) {
        joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' missing", joule_st_path(f), joule_q(name));
        return NULL;
    }
    bool same = t->dtype == dt && t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' is %s with %d dims, expected %s [%lld%s%lld]", joule_st_path(f),
                   joule_q(name), joule_st_dtype_name(t->dtype), t->ndim, joule_st_dtype_name(dt),
                   (long long)shape[0], ndim > 1 ? ", " : "", ndim > 1 ? (long long)shape[1] : 0LL);
        return NULL;
    }
    return t;
}

int joule_quant_file_precision(const joule_st_file *f, joule_precision *p) {
    const char *s = joule_st_meta(f, "precision");
    *p = JOULE_PREC_F32;
    if (!s) return JOULE_OK;
    if (joule_precision_parse(s, p))
        return joule_fail(JOULE_ERR_FORMAT, "%s: precision '%s' is not fp32, bf16 or int8", joule_st_path(f), joule_q(s));
    return JOULE_OK;
}

/* Every tensor of description d in the file at precision p (and nothing else). */
int joule_quant_check_file(const joule_st_file *f, const joule_model *d, joule_precision p) {
    size_t want = (size_t)d->n_tensors;
    char name[160];
    for (int i = 0; i < d->n_tensors; i++) {
        const joule_param_info *t = &d->tensors[i];
        const bool qd = joule_quant_applies(t);
        const joule_st_dtype dt = !qd ? JOULE_ST_F32 : p == JOULE_PREC_BF16 ? JOULE_ST_BF16 : JOULE_ST_I8;
        if (!expect(f, t->name, dt, t->shape, t->ndim)) return JOULE_ERR_FORMAT;
        if (!qd || p != JOULE_PREC_INT8) continue;
        want++;
        scale_name(name, sizeof name, t->name);
        if (!expect(f, name, JOULE_ST_F32, t->shape, 1)) return JOULE_ERR_FORMAT;
    }
    if (joule_st_count(f) != want)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %zu tensors, a %s model of this config has %zu", joule_st_path(f),
                          joule_st_count(f), joule_precision_name(p), want);
    return JOULE_OK;
}

/* Dequantised values of tensor i into the arena, from the quantised copy. */
static int fill_tensor(joule_quant *q, joule_model *m, const joule_st_file *f, int i) {
    const joule_param_info *t = &m->tensors[i];
    const joule_st_tensor *st = joule_st_find(f, t->name);
    float *w = m->params + t->offset;
    if (q->prec == JOULE_PREC_BF16) {
        memcpy(q->bf16 + t->offset, st->data, t->numel * 2);
        for (size_t k = 0; k < t->numel; k++) w[k] = joule_bf16_to_f32(q->bf16[t->offset + k]);
        return JOULE_OK;
    }
    char name[160];
    scale_name(name, sizeof name, t->name);
    float *s = q->scale + q->row_base[i];
    memcpy(q->i8 + t->offset, st->data, t->numel);
    memcpy(s, joule_st_find(f, name)->data, (size_t)t->shape[0] * sizeof(float));
    const size_t cols = (size_t)t->shape[1];
    for (int64_t r = 0; r < t->shape[0]; r++) {
        if (!isfinite(s[r]) || s[r] < 0)
            return joule_fail(JOULE_ERR_FORMAT, "%s: tensor '%s' row %lld has scale %g (must be finite, >= 0)",
                              joule_st_path(f), joule_q(name), (long long)r, (double)s[r]);
        for (size_t k = 0; k < cols; k++) w[(size_t)r * cols + k] = (float)q->i8[t->offset + (size_t)r * cols + k] * s[r];
    }
    return JOULE_OK;
}

int joule_quant_load_file(const joule_st_file *f, joule_model *m, joule_precision p) {
    joule_quant *q;
    int rc = joule_quant_new(&q, m, p);
    if (rc) return rc;
    for (int i = 0; i < m->n_tensors && !rc; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (!q->quantised[i]) memcpy(m->params + t->offset, joule_st_find(f, t->name)->data, t->numel * sizeof(float));
        else rc = fill_tensor(q, m, f, i);
    }
    if (rc) {
        joule_quant_free(q);
        return rc;
    }
    joule_quant_finish(q, m);
    m->quant = q;
    return JOULE_OK;
}
