/* Generation with live retrieval: joule_generate's loop over a retro_live sequence (the
 * history on its chunk grid, searched as chunks complete: retro_live.c). */
#include <stdlib.h>
#include <string.h>

#include "joule/sample.h"
#include "retro_live.h"

/* Feeds the last history token at cache position d->pos, retrieving first when it ends a
 * retrieved chunk. */
static int feed(retro_live *g, const float **logits) {
    int rc = retro_live_before_step(g);
    return rc ? rc : joule_decoder_step(g->d, g->hist[g->n - 1], logits);
}

/* Refills an empty cache with the history from the first chunk end at or after `from`, as
 * one batched prefill. */
static int feed_window(retro_live *g, size_t from, const float **logits) {
    size_t w0;
    int rc = retro_live_before_window(g, from, &w0);
    return rc ? rc : joule_decoder_prefill(g->d, g->hist + w0, (int)(g->n - w0), logits);
}

/* The first window: the last ctx tokens of the history, from a chunk's end. */
static int feed_start(retro_live *g, const float **logits) {
    const size_t T = (size_t)g->d->m->cfg.ctx;
    return feed_window(g, g->n > T ? g->n - T : 0, logits);
}

typedef struct {
    int (*on_token)(void *ctx, int seq, int32_t token);
    void *ctx;
    int seq;
} token_sink;

/* n_gen tokens from the state feed_start left (logits: the history's last). */
static int continue_loop(retro_live *g, const joule_model *m, const float *logits, int n_gen, const joule_sampler *s,
                         uint64_t seed, const token_sink *out, float *scratch) {
    const int T = m->cfg.ctx, V = m->cfg.vocab;
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    int rc = JOULE_OK;
    for (int step = 0; step < n_gen && !rc; step++) {
        int32_t tok = joule_sample(logits, V, s, &rng, scratch);
        retro_live_append(g, tok);
        g->stats->tokens++;
        if ((out->on_token && out->on_token(out->ctx, out->seq, tok)) || step == n_gen - 1) break;
        if (g->d->pos == T) { /* sliding window: rebuild from the last T/2 tokens */
            joule_decoder_reset(g->d);
            rc = feed_window(g, g->n - (size_t)(T / 2 > 0 ? T / 2 : 1), &logits);
        } else {
            rc = feed(g, &logits);
        }
    }
    return rc;
}

/* joule_retro_generate's callback behind the sink's, which names the sequence. */
typedef struct {
    int (*on_token)(void *ctx, int32_t token);
    void *ctx;
} one_sink;

static int one_token(void *ctx, int seq, int32_t token) {
    (void)seq;
    const one_sink *o = ctx;
    return o->on_token(o->ctx, token);
}

static int generate_loop(retro_live *g, const joule_model *m, int n_gen, const joule_sampler *s, uint64_t seed,
                         int (*on_token)(void *ctx, int32_t token), void *ctx, float *scratch) {
    one_sink o = {on_token, ctx};
    const token_sink out = {on_token ? one_token : NULL, &o, 0};
    const float *logits = NULL;
    int rc = feed_start(g, &logits);
    return rc ? rc : continue_loop(g, m, logits, n_gen, s, seed, &out, scratch);
}

int joule_retro_generate(const joule_model *m, joule_retro_db *db, const uint8_t *prompt, int n_prompt, int phase,
                         int n_gen, const joule_sampler *s, uint64_t seed, int (*on_token)(void *ctx, int32_t token), void *ctx,
                         joule_retro_gen_stats *stats) {
    memset(stats, 0, sizeof *stats);
    joule_decoder *d;
    int rc = joule_decoder_create(&d, m);
    if (rc) return rc;
    const double t_start = joule_now();
    retro_live g;
    float *scratch = malloc(2 * (size_t)m->cfg.vocab * sizeof *scratch);
    rc = scratch ? retro_live_init(&g, d, db, phase, (size_t)n_prompt + (size_t)n_gen + 1, stats)
                 : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) {
        if (n_prompt == 0) retro_live_append(&g, 0); /* start as at a document boundary */
        for (int i = 0; i < n_prompt; i++) retro_live_append(&g, prompt[i]);
        rc = generate_loop(&g, m, n_gen, s, seed, on_token, ctx, scratch);
        retro_live_free(&g);
    }
    stats->total_s = joule_now() - t_start;
    free(scratch);
    joule_decoder_free(d);
    return rc;
}

/* Continuation i > 0 starts from the prompt's state again: the history and its grid cut back
 * to the prompt, the decoder truncated to the prompt's window, or (a continuation that slid
 * the window) the prompt's window fed again, as a fresh call would. */
static int rewind_to_prompt(retro_live *g, size_t n0, const joule_retro_grid *grid0, size_t w00, int pos0,
                            const float *l0, const float **logits) {
    g->n = n0;
    g->grid = *grid0;
    if (g->w0 == w00 && g->d->pos >= pos0) {
        *logits = l0;
        return joule_decoder_truncate(g->d, pos0);
    }
    joule_decoder_reset(g->d);
    return feed_start(g, logits);
}

static int each_loop(retro_live *g, const joule_model *m, int n_gen, int n_seqs, const joule_sampler *samplers,
                     const uint64_t *seeds, int (*on_token)(void *ctx, int seq, int32_t token), void *ctx,
                     float *scratch, float *l0) {
    const size_t n0 = g->n;
    const joule_retro_grid grid0 = g->grid;
    const float *logits = NULL;
    int rc = feed_start(g, &logits);
    if (rc) return rc;
    /* the decoder's logits buffer is overwritten by the steps that follow: keep the prompt's */
    memcpy(l0, logits, (size_t)m->cfg.vocab * sizeof *l0);
    const size_t w00 = g->w0;
    const int pos0 = g->d->pos;
    logits = l0;
    for (int i = 0; i < n_seqs && !rc; i++) {
        if (i > 0 && (rc = rewind_to_prompt(g, n0, &grid0, w00, pos0, l0, &logits))) break;
        const token_sink out = {on_token, ctx, i};
        rc = continue_loop(g, m, logits, n_gen, &samplers[i], seeds[i], &out, scratch);
    }
    return rc;
}

int joule_retro_generate_each(const joule_model *m, joule_retro_db *db, const uint8_t *prompt, int n_prompt, int phase,
                              int n_gen, int n_seqs, const joule_sampler *samplers, const uint64_t *seeds,
                              int (*on_token)(void *ctx, int seq, int32_t token), void *ctx,
                              joule_retro_gen_stats *stats) {
    memset(stats, 0, sizeof *stats);
    if (n_seqs < 1) return joule_fail(JOULE_ERR_ARG, "generate: %d continuations (needs >= 1)", n_seqs);
    joule_decoder *d;
    int rc = joule_decoder_create(&d, m);
    if (rc) return rc;
    const double t_start = joule_now();
    retro_live g;
    float *scratch = malloc(3 * (size_t)m->cfg.vocab * sizeof *scratch);
    rc = scratch ? retro_live_init(&g, d, db, phase, (size_t)n_prompt + (size_t)n_gen + 1, stats)
                 : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) {
        if (n_prompt == 0) retro_live_append(&g, 0);
        for (int i = 0; i < n_prompt; i++) retro_live_append(&g, prompt[i]);
        rc = each_loop(&g, m, n_gen, n_seqs, samplers, seeds, on_token, ctx, scratch, scratch + 2 * (size_t)m->cfg.vocab);
        retro_live_free(&g);
    }
    stats->total_s = joule_now() - t_start;
    free(scratch);
    joule_decoder_free(d);
    return rc;
}
