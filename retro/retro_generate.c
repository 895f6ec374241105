/* Generation with live retrieval: the history is a stream from a document's start, cut into
 * chunks by joule_retro_grid (docs/MODEL.md §7); each time a retrieved chunk completes, its
 * m tokens are embedded and searched in the database, and its k neighbours (chunk +
 * continuation) are handed to the decoder, which encodes them at the first CCA layer of that
 * same step (the chunk's last token is the first position to read them). */
#include <stdlib.h>
#include <string.h>

#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/sample.h"

typedef struct {
    joule_decoder *d;
    joule_retro_db *db;
    int m, k;
    int32_t *hist;   /* every token so far */
    uint8_t *ends;   /* per token: 2 when it ends a retrieved chunk (joule_retro_grid_mark) */
    size_t n;        /* tokens in hist */
    size_t w0;       /* history index of cache position 0 */
    joule_retro_grid grid;
    int32_t *nbr;    /* [k*2m] */
    int64_t *ids;    /* [k] */
    joule_retro_gen_stats *stats;
} live;

int joule_retro_decoder_retrieve(joule_decoder *d, joule_retro_db *db, const int32_t *chunk, int last, int64_t *ids,
                                 int32_t *nbr) {
    const int m = joule_db_chunk(db), k = d->m->cfg.retro.k, per = 2 * m;
    if (m != d->m->cfg.retro.chunk)
        return joule_fail(JOULE_ERR_ARG, "database chunks are %d tokens, the model's are %d", m, d->m->cfg.retro.chunk);
    int rc = joule_db_search(db, chunk, 1, k, NULL, ids, NULL);
    for (int j = 0; j < k && !rc; j++) {
        if (ids[j] < 0) {
            for (int i = 0; i < per; i++) nbr[j * per + i] = JOULE_RETRO_PAD;
        } else {
            rc = joule_db_entry(db, ids[j], nbr + (size_t)j * per, NULL);
        }
    }
    return rc ? rc : joule_retro_decoder_set_neighbours(d, last, nbr);
}

/* Searches the chunk ending at history index i and hands it to the decoder. */
static int retrieve(live *g, size_t i) {
    double t0 = joule_now();
    int rc = joule_retro_decoder_retrieve(g->d, g->db, g->hist + i + 1 - (size_t)g->m, (int)((int64_t)i - (int64_t)g->w0),
                                          g->ids, g->nbr);
    g->stats->retrieval_s += joule_now() - t0;
    g->stats->retrievals++;
    return rc;
}

/* A chunk whose first tokens came before the prompt (phase) ends the grid's chunk but
 * cannot be searched: it is marked as an end only. */
static void append(live *g, int32_t tok) {
    const bool retrieved = joule_retro_grid_feed(&g->grid, tok);
    g->hist[g->n] = tok;
    g->ends[g->n] = retrieved && g->n + 1 >= (size_t)g->m ? 2 : g->grid.fill == 0 ? 1 : 0;
    g->n++;
}

/* Feeds the last history token at cache position d->pos, retrieving first when it ends a
 * retrieved chunk. */
static int feed(live *g, const float **logits) {
    const size_t i = g->n - 1;
    int rc;
    if (g->db && g->k > 0 && g->ends[i] == 2 && (rc = retrieve(g, i))) return rc;
    return joule_decoder_step(g->d, g->hist[i], logits);
}

/* Refills an empty cache with the history from the last chunk end at or after index from
 * (so, as in training, the window starts at a chunk's last token), every chunk its rows
 * read retrieved first, as one batched prefill. */
static int feed_window(live *g, size_t from, const float **logits) {
    size_t w0 = from;
    while (w0 + 1 < g->n && !g->ends[w0]) w0++;
    if (!g->ends[w0]) w0 = from;
    g->w0 = w0;
    int rc = joule_retro_decoder_clear(g->d);
    const size_t lo = w0 + 1 > (size_t)g->m ? w0 + 1 - (size_t)g->m : 0;
    for (size_t i = lo; g->db && g->k > 0 && i < g->n && !rc; i++)
        if (g->ends[i] == 2) rc = retrieve(g, i);
    return rc ? rc : joule_decoder_prefill(g->d, g->hist + w0, (int)(g->n - w0), logits);
}

static int generate_loop(live *g, const joule_model *m, int n_gen, const joule_sampler *s, uint64_t seed,
                         int (*on_token)(void *ctx, int32_t token), void *ctx, float *scratch) {
    const int T = m->cfg.ctx, V = m->cfg.vocab;
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    const float *logits = NULL;
    int rc = feed_window(g, g->n > (size_t)T ? g->n - (size_t)T : 0, &logits);
    for (int step = 0; step < n_gen && !rc; step++) {
        int32_t tok = joule_sample(logits, V, s, &rng, scratch);
        append(g, tok);
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
    if (db && joule_db_chunk(db) != m->cfg.retro.chunk)
        return joule_fail(JOULE_ERR_ARG, "database chunks are %d tokens, the model's are %d", joule_db_chunk(db),
                          m->cfg.retro.chunk);
    live g = {.db = db, .m = m->cfg.retro.chunk, .k = m->cfg.retro.k, .stats = stats};
    if (phase < 0 || phase >= g.m)
        return joule_fail(JOULE_ERR_ARG, "generate: grid phase %d outside [0, %d)", phase, g.m);
    joule_retro_grid_init(&g.grid, g.m);
    g.grid.fill = phase;
    int rc = joule_decoder_create(&g.d, m);
    if (rc) return rc;
    const double t_start = joule_now();
    size_t cap = (size_t)n_prompt + (size_t)n_gen + 1;
    float *scratch = malloc(2 * (size_t)m->cfg.vocab * sizeof *scratch);
    g.hist = malloc(cap * sizeof *g.hist);
    g.ends = malloc(cap);
    g.nbr = malloc(((size_t)g.k * 2 * g.m + 1) * sizeof *g.nbr);
    g.ids = malloc(((size_t)g.k + 1) * sizeof *g.ids);
    if (!g.hist || !g.ends || !scratch || !g.nbr || !g.ids) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    } else {
        if (n_prompt == 0) append(&g, 0); /* start as at a document boundary */
        for (int i = 0; i < n_prompt; i++) append(&g, prompt[i]);
        rc = generate_loop(&g, m, n_gen, s, seed, on_token, ctx, scratch);
    }
    stats->total_s = joule_now() - t_start;
    free(g.hist);
    free(g.ends);
    free(scratch);
    free(g.nbr);
    free(g.ids);
    joule_decoder_free(g.d);
    return rc;
}
