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

static int generate_loop(retro_live *g, const joule_model *m, int n_gen, const joule_sampler *s, uint64_t seed,
                         int (*on_token)(void *ctx, int32_t token), void *ctx, float *scratch) {
    const int T = m->cfg.ctx, V = m->cfg.vocab;
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    const float *logits = NULL;
    int rc = feed_window(g, g->n > (size_t)T ? g->n - (size_t)T : 0, &logits);
    for (int step = 0; step < n_gen && !rc; step++) {
        int32_t tok = joule_sample(logits, V, s, &rng, scratch);
        retro_live_append(g, tok);
        g->stats->tokens++;
        if ((on_token && on_token(ctx, tok)) || step == n_gen - 1) break;
        if (g->d->pos == T) { /* sliding window: rebuild from the last T/2 tokens */
            joule_decoder_reset(g->d);
            rc = feed_window(g, g->n - (size_t)(T / 2 > 0 ? T / 2 : 1), &logits);
        } else {
            rc = feed(g, &logits);
        }
    }
    return rc;
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
