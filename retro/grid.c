/* retro/grid.c — where chunks start in a token file (docs/MODEL.md §7): per document, every
 * m tokens from its first. The database, the neighbour files, training windows, evaluation
 * and generation all follow this one rule, so a chunk and its twin elsewhere in the corpus
 * are the same m tokens and their continuations line up. */
#include <stdlib.h>
#include <string.h>

#include "joule/common.h"
#include "retro_internal.h"
#include "retro_model.h"

int joule_grid_open(joule_grid *g, const joule_tokens *t, int m) {
    memset(g, 0, sizeof *g);
    if (m < 1) return joule_fail(JOULE_ERR_ARG, "chunk size %d must be >= 1", m);
    g->first = malloc(((size_t)t->n_docs + 1) * sizeof *g->first);
    if (!g->first) return joule_fail(JOULE_ERR_NOMEM, "out of memory for the chunk grid of %s", t->path);
    uint64_t n = 0;
    for (uint64_t d = 0; d < t->n_docs; d++) {
        g->first[d] = n;
        n += (t->doc_offsets[d + 1] - t->doc_offsets[d] + (uint64_t)m - 1) / (uint64_t)m;
    }
    g->first[t->n_docs] = n;
    g->t = t;
    g->m = m;
    g->n_chunks = n;
    return JOULE_OK;
}

void joule_grid_close(joule_grid *g) {
    free(g->first);
    memset(g, 0, sizeof *g);
}

/* The document holding chunk c: the last d with first[d] <= c. */
static uint64_t doc_of_chunk(const joule_grid *g, uint64_t c) {
    uint64_t lo = 0, hi = g->t->n_docs; /* first[lo] <= c < first[hi] */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (g->first[mid] <= c) lo = mid;
        else hi = mid;
    }
    return lo;
}

void joule_grid_chunk(const joule_grid *g, uint64_t c, uint64_t *doc, uint64_t *start, int *len) {
    const uint64_t d = doc_of_chunk(g, c), s = g->t->doc_offsets[d] + (c - g->first[d]) * (uint64_t)g->m;
    const uint64_t end = g->t->doc_offsets[d + 1];
    if (doc) *doc = d;
    if (start) *start = s;
    if (len) *len = (int)(end - s < (uint64_t)g->m ? end - s : (uint64_t)g->m);
}

bool joule_grid_retrieved(const joule_grid *g, uint64_t c) {
    uint64_t d, s;
    int len;
    joule_grid_chunk(g, c, &d, &s, &len);
    return len == g->m && s + (uint64_t)g->m < g->t->doc_offsets[d + 1]; /* the EOD comes after it */
}

uint64_t joule_grid_chunk_at(const joule_grid *g, uint64_t pos) {
    const uint64_t d = joule_tokens_doc_at(g->t, pos);
    return g->first[d] + (pos - g->t->doc_offsets[d]) / (uint64_t)g->m;
}

int joule_grid_window(const joule_grid *g, uint64_t a, int T, uint64_t *ids, int *last) {
    const uint64_t m = (uint64_t)g->m, from = a + 1 > m ? a + 1 - m : 0, end = a + (uint64_t)T;
    int n = 0;
    for (uint64_t c = joule_grid_chunk_at(g, from); c < g->n_chunks; c++) {
        uint64_t s;
        int len;
        joule_grid_chunk(g, c, NULL, &s, &len);
        const uint64_t lt = s + (uint64_t)len - 1; /* its last token */
        if (lt >= end) break;
        if (lt < from || !joule_grid_retrieved(g, c)) continue;
        ids[n] = c;
        last[n++] = (int)((int64_t)lt - (int64_t)a);
    }
    return n;
}

int joule_grid_sample(const joule_grid *g, uint64_t seed, uint64_t step, int micro, int B, int T, uint64_t *starts) {
    const joule_tokens *t = g->t;
    if (B < 1 || T < 1 || t->n_tokens < (uint64_t)T + 1 || g->n_chunks == 0)
        return joule_fail(JOULE_ERR_ARG, "%s: %llu tokens, fewer than context + 1 = %d", t->path,
                          (unsigned long long)t->n_tokens, T + 1);
    joule_rng rng;
    joule_rng_seed(&rng, joule_mix64(joule_mix64(seed, step), (uint64_t)(int64_t)micro));
    /* chunks are in file order: those whose last token leaves T + 1 tokens are a prefix */
    const uint64_t limit = t->n_tokens - (uint64_t)T - 1; /* the latest start */
    uint64_t lo = 0, hi = g->n_chunks;                     /* count of chunks ending <= limit */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2, s;
        int len;
        joule_grid_chunk(g, mid, NULL, &s, &len);
        if (s + (uint64_t)len - 1 <= limit) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0)
        return joule_fail(JOULE_ERR_ARG, "%s: no chunk ends early enough for a window of %d tokens", t->path, T);
    for (int b = 0; b < B; b++) {
        uint64_t s;
        int len;
        joule_grid_chunk(g, joule_rng_below(&rng, lo), NULL, &s, &len);
        starts[b] = s + (uint64_t)len - 1;
    }
    return JOULE_OK;
}
