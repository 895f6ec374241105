/* Generation with live retrieval: each time a chunk of m tokens completes in the KV cache,
 * it is embedded and searched in the database, and its k neighbours (chunk +
 * continuation) are handed to the decoder, which encodes them at the first CCA layer of
 * that same step (docs/MODEL.md §7: position (u+1)m - 1 is the first to read chunk u's
 * neighbours). */
#include <stdlib.h>
#include <string.h>

#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/sample.h"

typedef struct {
    joule_decoder *d;
    joule_retro_db *db;
    int m, k;
    int32_t *win;    /* [ctx] tokens in the cache, by position */
    int32_t *nbr;    /* [k*2m] */
    int64_t *ids;    /* [k] */
    joule_retro_gen_stats *stats;
} live;

int joule_retro_decoder_retrieve(joule_decoder *d, joule_retro_db *db, const int32_t *win, int u, int64_t *ids,
                                 int32_t *nbr) {
    const int m = joule_db_chunk(db), k = d->m->cfg.retro.k, per = 2 * m;
    if (m != d->m->cfg.retro.chunk)
        return joule_fail(JOULE_ERR_ARG, "database chunks are %d tokens, the model's are %d", m, d->m->cfg.retro.chunk);
    int rc = joule_db_search(db, win + (size_t)u * m, 1, k, NULL, ids, NULL);
    for (int j = 0; j < k && !rc; j++) {
        if (ids[j] < 0) {
            for (int i = 0; i < per; i++) nbr[j * per + i] = JOULE_RETRO_PAD;
        } else {
            rc = joule_db_entry(db, ids[j], nbr + (size_t)j * per, NULL);
        }
    }
    return rc ? rc : joule_retro_decoder_set_neighbours(d, u, nbr);
}

/* Searches chunk u of the window and hands the decoder its neighbours. */
static int retrieve(live *g, int u) {
    double t0 = joule_now();
    int rc = joule_retro_decoder_retrieve(g->d, g->db, g->win, u, g->ids, g->nbr);
    g->stats->retrieval_s += joule_now() - t0;
    g->stats->retrievals++;
    return rc;
}

/* Feeds one token at position d->pos, retrieving first when it completes a chunk. */
static int feed(live *g, int32_t tok, const float **logits) {
    const int pos = g->d->pos;
    g->win[pos] = tok;
    int rc;
    if (g->db && g->k > 0 && (pos + 1) % g->m == 0 && (rc = retrieve(g, (pos + 1) / g->m - 1))) return rc;
    return joule_decoder_step(g->d, tok, logits);
}

/* n tokens into an empty cache as one batched prefill, every chunk they complete retrieved
 * first (what feed() would do token by token). */
static int feed_prompt(live *g, const int32_t *tok, int n, const float **logits) {
    memcpy(g->win, tok, (size_t)n * sizeof *tok);
    int rc = joule_retro_decoder_set_neighbours(g->d, -1, NULL);
    for (int u = 0; g->db && g->k > 0 && (u + 1) * g->m <= n && !rc; u++) rc = retrieve(g, u);
    return rc ? rc : joule_decoder_prefill(g->d, tok, n, logits);
}

int joule_retro_generate(const joule_model *m, joule_retro_db *db, const uint8_t *prompt, int n_prompt, int n_gen,
                         const joule_sampler *s, uint64_t seed, int (*on_token)(void *ctx, int32_t token), void *ctx,
                         joule_retro_gen_stats *stats) {
    memset(stats, 0, sizeof *stats);
    const int T = m->cfg.ctx, V = m->cfg.vocab;
    if (db && joule_db_chunk(db) != m->cfg.retro.chunk)
        return joule_fail(JOULE_ERR_ARG, "database chunks are %d tokens, the model's are %d", joule_db_chunk(db),
                          m->cfg.retro.chunk);
    live g = {.db = db, .m = m->cfg.retro.chunk, .k = m->cfg.retro.k, .stats = stats};
    int rc = joule_decoder_create(&g.d, m);
    if (rc) return rc;
    const double t_start = joule_now();
    size_t cap = (size_t)n_prompt + (size_t)n_gen + 1;
    int32_t *hist = malloc(cap * sizeof *hist);
    float *scratch = malloc(2 * (size_t)V * sizeof *scratch);
    g.win = malloc((size_t)T * sizeof *g.win);
    g.nbr = malloc(((size_t)g.k * 2 * g.m + 1) * sizeof *g.nbr);
    g.ids = malloc(((size_t)g.k + 1) * sizeof *g.ids);
    if (!hist || !scratch || !g.win || !g.nbr || !g.ids) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t n = 0;
    if (n_prompt == 0) hist[n++] = 0; /* start as at a document boundary */
    for (int i = 0; i < n_prompt; i++) hist[n++] = prompt[i];
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    const float *logits = NULL;
    const size_t first = n > (size_t)T ? n - (size_t)T : 0;
    if ((rc = feed_prompt(&g, hist + first, (int)(n - first), &logits))) goto done;
    for (int step = 0; step < n_gen; step++) {
        int32_t tok = joule_sample(logits, V, s, &rng, scratch);
        hist[n++] = tok;
        stats->tokens++;
        if (on_token && on_token(ctx, tok)) break;
        if (step == n_gen - 1) break;
        if (g.d->pos == T) { /* sliding window: rebuild from the last T/2 tokens */
            joule_decoder_reset(g.d);
            size_t keep = (size_t)(T / 2 > 0 ? T / 2 : 1);
            if ((rc = feed_prompt(&g, hist + (n - keep), (int)keep, &logits))) goto done;
        } else if ((rc = feed(&g, tok, &logits))) {
            goto done;
        }
    }
done:
    stats->total_s = joule_now() - t_start;
    free(hist);
    free(scratch);
    free(g.win);
    free(g.nbr);
    free(g.ids);
    joule_decoder_free(g.d);
    return rc;
}
