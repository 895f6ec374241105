#define _GNU_SOURCE
/* Sampling (greedy, temperature, top-k, top-p) and the generation loop. */
#include "joule/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Indices sorted by probability, descending; ties by index for determinism. */
static int by_prob_desc(const void *a, const void *b, void *probs) {
    const float *p = probs;
    float pa = p[*(const int *)a], pb = p[*(const int *)b];
    if (pa != pb) return pa > pb ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

int32_t joule_sample(const float *logits, int V, const joule_sampler *s, joule_rng *rng, float *scratch) {
    if (s->temperature <= 0.0f) return argmax(logits, V);
    float *p = scratch;
    int *idx = (int *)(scratch + V);
    float mx = logits[argmax(logits, V)];
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        p[i] = expf((logits[i] - mx) / s->temperature);
        sum += p[i];
    }
    for (int i = 0; i < V; i++) {
        p[i] = (float)(p[i] / sum);
        idx[i] = i;
    }
    qsort_r(idx, (size_t)V, sizeof *idx, by_prob_desc, p);
    int keep = V;
    if (s->top_k > 0 && s->top_k < keep) keep = s->top_k;
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        double mass = 0.0;
        for (int i = 0; i < keep; i++) {
            mass += p[idx[i]];
            if (mass >= s->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double kept = 0.0;
    for (int i = 0; i < keep; i++) kept += p[idx[i]];
    double r = (double)joule_rng_float(rng) * kept, acc = 0.0;
    for (int i = 0; i < keep; i++) {
        acc += p[idx[i]];
        if (r < acc) return idx[i];
    }
    return idx[keep - 1];
}

int joule_generate(const joule_model *m, const uint8_t *prompt, int n_prompt, int n_gen,
                   const joule_sampler *s, uint64_t seed,
                   int (*on_token)(void *ctx, int32_t token), void *ctx) {
    const int T = m->cfg.ctx, V = m->cfg.vocab;
    joule_decoder *d;
    int rc = joule_decoder_create(&d, m);
    if (rc) return rc;
    /* history of every token fed, for rebuilding the cache when it fills */
    size_t cap = (size_t)n_prompt + (size_t)n_gen + 1;
    int32_t *hist = malloc(cap * sizeof *hist);
    float *scratch = malloc(2 * (size_t)V * sizeof *scratch);
    if (!hist || !scratch) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t n = 0;
    if (n_prompt == 0) hist[n++] = 0; /* start as if at a document boundary */
    for (int i = 0; i < n_prompt; i++) hist[n++] = prompt[i];
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    const float *logits = NULL;
    size_t fed = 0;
    /* Keep at most the last T tokens of the prompt. */
    if (n > (size_t)T) fed = n - (size_t)T;
    for (size_t i = fed; i < n; i++)
        if ((rc = joule_decoder_step(d, hist[i], &logits))) goto done;
    for (int g = 0; g < n_gen; g++) {
        int32_t tok = joule_sample(logits, V, s, &rng, scratch);
        hist[n++] = tok;
        if (on_token && on_token(ctx, tok)) break;
        if (g == n_gen - 1) break;
        if (d->pos == T) {
            joule_decoder_reset(d);
            size_t keep = (size_t)(T / 2 > 0 ? T / 2 : 1);
            for (size_t i = n - keep; i < n; i++)
                if ((rc = joule_decoder_step(d, hist[i], &logits))) goto done;
        } else if ((rc = joule_decoder_step(d, tok, &logits))) {
            goto done;
        }
    }
done:
    free(hist);
    free(scratch);
    joule_decoder_free(d);
    return rc;
}
