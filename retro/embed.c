/* retro/embed.c — chunk embedders. "ngram": signed feature hashing of byte n-grams
 * (n = 1..4) into DIM buckets — a seeded sparse random projection of the n-gram counts —
 * then L2-normalised, so squared L2 distance is 2 - 2 cos. "model:<ckpt>": the mean of a
 * frozen joule checkpoint's final-norm hidden states over the chunk's tokens (RETRO's
 * frozen-BERT embedding, with our own decoder standing in for BERT). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/checkpoint.h"
#include "joule/model.h"
#include "joule/retro_db.h"
#include "retro_internal.h"

#define NGRAM_DEFAULT_DIM 128
#define NGRAM_MAX_N 4
#define NGRAM_SEED 0x6a6f756c65ull /* fixed: part of the embedder's definition */
#define MODEL_BATCH 32             /* chunks per forward of the model embedder */

struct joule_embedder {
    char spec[PATH_MAX + 16];
    int dim;
    joule_model *model; /* model embedder only */
    int32_t *inputs;    /* [MODEL_BATCH * ctx] */
};

int joule_embedder_dim(const joule_embedder *e) { return e->dim; }
const char *joule_embedder_spec(const joule_embedder *e) { return e->spec; }

static int create_model(joule_embedder *e, const char *path) {
    char abs[PATH_MAX];
    if (!realpath(path, abs)) return joule_fail(JOULE_ERR_IO, "%s: embedder checkpoint not found", path);
    int rc = joule_checkpoint_load(&e->model, abs, NULL);
    if (rc) return rc;
    rc = joule_model_alloc_train(e->model, MODEL_BATCH);
    if (rc) return rc;
    e->dim = e->model->cfg.d_model;
    e->inputs = malloc((size_t)MODEL_BATCH * (size_t)e->model->cfg.ctx * sizeof(int32_t));
    if (!e->inputs) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    snprintf(e->spec, sizeof e->spec, "model:%s", abs);
    return JOULE_OK;
}

int joule_embedder_create(joule_embedder **out, const char *spec) {
    *out = NULL;
    if (!spec || !*spec) spec = "ngram";
    joule_embedder *e = calloc(1, sizeof *e);
    if (!e) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = JOULE_OK;
    if (strcmp(spec, "ngram") == 0) {
        e->dim = NGRAM_DEFAULT_DIM;
    } else if (strncmp(spec, "ngram:", 6) == 0) {
        char *end;
        long d = strtol(spec + 6, &end, 10);
        if (end == spec + 6 || *end || d < 8 || d > 4096)
            rc = joule_fail(JOULE_ERR_ARG, "embedder '%s': dimension must be an integer in [8, 4096]", spec);
        e->dim = (int)d;
    } else if (strncmp(spec, "model:", 6) == 0 && spec[6]) {
        rc = create_model(e, spec + 6);
    } else {
        rc = joule_fail(JOULE_ERR_ARG, "unknown embedder '%s' (ngram, ngram:DIM, model:<checkpoint>)", spec);
    }
    if (rc) {
        joule_embedder_free(e);
        return rc;
    }
    if (!e->model) snprintf(e->spec, sizeof e->spec, "ngram:%d", e->dim);
    *out = e;
    return JOULE_OK;
}

void joule_embedder_free(joule_embedder *e) {
    if (!e) return;
    joule_model_free(e->model);
    free(e->inputs);
    free(e);
}

/* Tokens before the first PAD (or m). */
static int chunk_len(const int32_t *t, int m) {
    int n = 0;
    while (n < m && t[n] != JOULE_DB_PAD) n++;
    return n;
}

static void ngram_embed(int dim, const int32_t *t, int m, float *out) {
    memset(out, 0, (size_t)dim * sizeof *out);
    int len = chunk_len(t, m);
    for (int n = 1; n <= NGRAM_MAX_N; n++) {
        for (int i = 0; i + n <= len; i++) {
            uint64_t key = (uint64_t)n << 32;
            for (int j = 0; j < n; j++) key |= (uint64_t)(t[i + j] & 0xff) << (8 * j);
            uint64_t h = joule_mix64(NGRAM_SEED, key);
            out[(h >> 1) % (uint64_t)dim] += (h & 1) ? 1.0f : -1.0f;
        }
    }
    double ss = 0;
    for (int j = 0; j < dim; j++) ss += (double)out[j] * out[j];
    if (ss > 0) {
        float s = (float)(1.0 / sqrt(ss));
        for (int j = 0; j < dim; j++) out[j] *= s;
    }
}

/* The model is causal, so positions past a short chunk's end (filled with EOD) do not
 * change the hidden states averaged over its first len positions. */
static int model_embed(joule_embedder *e, const int32_t *chunks, int n, int m, float *out) {
    joule_model *md = e->model;
    const int C = md->cfg.d_model;
    if (m > md->cfg.ctx)
        return joule_fail(JOULE_ERR_ARG, "embedder %s: chunk size %d exceeds the model's context %d", e->spec, m,
                          md->cfg.ctx);
    for (int b0 = 0; b0 < n; b0 += MODEL_BATCH) {
        int B = n - b0 < MODEL_BATCH ? n - b0 : MODEL_BATCH;
        for (int b = 0; b < B; b++) {
            const int32_t *t = chunks + (size_t)(b0 + b) * m;
            int len = chunk_len(t, m);
            for (int j = 0; j < m; j++) e->inputs[(size_t)b * m + j] = j < len ? t[j] : JOULE_EOD_TOKEN;
        }
        int rc = joule_model_forward(md, e->inputs, NULL, B, m, NULL);
        if (rc) return rc;
        const float *h = joule_model_hidden(md);
        for (int b = 0; b < B; b++) {
            const int32_t *t = chunks + (size_t)(b0 + b) * m;
            int len = chunk_len(t, m);
            float *o = out + (size_t)(b0 + b) * C;
            memset(o, 0, (size_t)C * sizeof *o);
            for (int j = 0; j < len; j++) {
                const float *hj = h + ((size_t)b * m + j) * C;
                for (int c = 0; c < C; c++) o[c] += hj[c];
            }
            if (len > 0)
                for (int c = 0; c < C; c++) o[c] /= (float)len;
        }
    }
    return JOULE_OK;
}

int joule_embedder_embed(joule_embedder *e, const int32_t *chunks, int n, int m, float *out) {
    if (n < 0 || m < 1) return joule_fail(JOULE_ERR_ARG, "embed: bad sizes n=%d m=%d", n, m);
    for (size_t i = 0; i < (size_t)n * m; i++)
        if (chunks[i] != JOULE_DB_PAD && (chunks[i] < 0 || chunks[i] > 255))
            return joule_fail(JOULE_ERR_ARG, "embed: token %d is not a byte", chunks[i]);
    if (e->model) return model_embed(e, chunks, n, m, out);
#pragma omp parallel for schedule(static) if (n >= 64)
    for (int i = 0; i < n; i++) ngram_embed(e->dim, chunks + (size_t)i * m, m, out + (size_t)i * e->dim);
    return JOULE_OK;
}
