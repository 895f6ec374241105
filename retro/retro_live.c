/* Live retrieval while decoding (retro_live.h): each time a retrieved chunk of the history's
 * grid completes, its m tokens are embedded and searched in the database, and its k
 * neighbours (chunk + continuation) are handed to the decoder, which encodes them at the
 * first CCA layer of that same step (the chunk's last token is the first position to read
 * them). */
#include <stdlib.h>
#include <string.h>

#include "retro_live.h"

int retro_live_init(retro_live *g, joule_decoder *d, joule_retro_db *db, int phase, size_t cap,
                    joule_retro_gen_stats *stats) {
    const joule_config *c = &d->m->cfg;
    memset(g, 0, sizeof *g);
    g->d = d;
    g->db = db;
    g->m = c->retro.chunk;
    g->k = c->retro.k;
    g->cap = cap;
    g->stats = stats;
    if (db && joule_db_chunk(db) != g->m)
        return joule_fail(JOULE_ERR_ARG, "database chunks are %d tokens, the model's are %d", joule_db_chunk(db), g->m);
    if (phase < 0 || phase >= g->m) return joule_fail(JOULE_ERR_ARG, "generate: grid phase %d outside [0, %d)", phase, g->m);
    joule_retro_grid_init(&g->grid, g->m);
    g->grid.fill = phase;
    g->hist = malloc(cap * sizeof *g->hist);
    g->ends = malloc(cap);
    g->nbr = malloc(((size_t)g->k * 2 * g->m + 1) * sizeof *g->nbr);
    g->ids = malloc(((size_t)g->k + 1) * sizeof *g->ids);
    if (!g->hist || !g->ends || !g->nbr || !g->ids) {
        retro_live_free(g);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    return JOULE_OK;
}

void retro_live_free(retro_live *g) {
    free(g->hist);
    free(g->ends);
    free(g->nbr);
    free(g->ids);
    g->hist = NULL;
    g->ends = NULL;
    g->nbr = NULL;
    g->ids = NULL;
}

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
static int retrieve(retro_live *g, size_t i) {
    double t0 = joule_now();
    int rc = joule_retro_decoder_retrieve(g->d, g->db, g->hist + i + 1 - (size_t)g->m, (int)((int64_t)i - (int64_t)g->w0),
                                          g->ids, g->nbr);
    g->stats->retrieval_s += joule_now() - t0;
    g->stats->retrievals++;
    return rc;
}

/* A chunk whose first tokens came before the prompt (phase) ends the grid's chunk but
 * cannot be searched: it is marked as an end only. */
void retro_live_append(retro_live *g, int32_t tok) {
    const bool retrieved = joule_retro_grid_feed(&g->grid, tok);
    g->hist[g->n] = tok;
    g->ends[g->n] = retrieved && g->n + 1 >= (size_t)g->m ? 2 : g->grid.fill == 0 ? 1 : 0;
    g->n++;
}

int retro_live_before_step(retro_live *g) {
    const size_t i = g->n - 1;
    return g->db && g->k > 0 && g->ends[i] == 2 ? retrieve(g, i) : JOULE_OK;
}

int retro_live_before_window(retro_live *g, size_t from, size_t *w0_out) {
    size_t w0 = from;
    while (w0 + 1 < g->n && !g->ends[w0]) w0++;
    if (!g->ends[w0]) w0 = from;
    g->w0 = w0;
    int rc = joule_retro_decoder_clear(g->d);
    const size_t lo = w0 + 1 > (size_t)g->m ? w0 + 1 - (size_t)g->m : 0;
    for (size_t i = lo; g->db && g->k > 0 && i < g->n && !rc; i++)
        if (g->ends[i] == 2) rc = retrieve(g, i);
    *w0_out = w0;
    return rc;
}
