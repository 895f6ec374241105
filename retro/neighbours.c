/* retro/neighbours.c — precomputed neighbours of every chunk of a token file's grid
 * (training and validation sets; grid.c), each searched with its own document excluded;
 * chunks that are never retrieved for hold -1. Format in docs/FORMATS.md (*.nbr). */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/data.h"
#include "joule/retro_db.h"
#include "retro_internal.h"

#define NBR_MAGIC "JOULENBR"
#define NBR_VERSION 2u /* 2: rows are the document-relative chunk grid */
#define NBR_HEADER 128u
#define NBR_MAX_K 1024

struct joule_neighbours {
    joule_mmap map;
    int m, k;
    uint64_t n_chunks;
    const int64_t *ids;
};

int joule_neighbours_k(const joule_neighbours *nb) { return nb->k; }
uint64_t joule_neighbours_count(const joule_neighbours *nb) { return nb->n_chunks; }
const int64_t *joule_neighbours_of(const joule_neighbours *nb, uint64_t chunk) {
    return chunk < nb->n_chunks ? nb->ids + chunk * (uint64_t)nb->k : NULL;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void make_header(uint8_t *h, int m, int k, uint32_t tok_crc, uint64_t n_chunks, uint64_t n_tokens,
                        const char *db_id, const char *tokens_path) {
    memset(h, 0, NBR_HEADER);
    memcpy(h, NBR_MAGIC, 8);
    uint32_t v = NBR_VERSION, mm = (uint32_t)m, kk = (uint32_t)k;
    memcpy(h + 8, &v, 4);
    memcpy(h + 12, &mm, 4);
    memcpy(h + 16, &kk, 4);
    memcpy(h + 20, &tok_crc, 4);
    memcpy(h + 24, &n_chunks, 8);
    memcpy(h + 32, &n_tokens, 8);
    snprintf((char *)h + 40, 24, "%s", db_id);
    snprintf((char *)h + 64, 64, "%s", base_name(tokens_path));
}

/* Fills query rows for the listed grid chunks and the document each must not retrieve from
 * (none when own_doc). */
static void chunk_queries(const joule_grid *g, const uint64_t *chunk, int n, bool own_doc, int32_t *rows,
                          const uint64_t **excl, int *n_excl) {
    const int m = g->m;
    for (int i = 0; i < n; i++) {
        uint64_t d, s;
        int len;
        joule_grid_chunk(g, chunk[i], &d, &s, &len);
        for (int p = 0; p < m; p++) rows[(size_t)i * m + p] = p < len ? g->t->tok[s + (uint64_t)p] : JOULE_DB_PAD;
        excl[i] = g->t->doc_ids + d;
        n_excl[i] = own_doc ? 0 : 1;
    }
}

int joule_neighbours_scratch_init(joule_neighbours_scratch *s, int m, int k) {
    memset(s, 0, sizeof *s);
    s->rows = malloc((size_t)JOULE_NBR_BATCH * m * sizeof *s->rows);
    s->chunk = malloc(JOULE_NBR_BATCH * sizeof *s->chunk);
    s->excl = malloc(JOULE_NBR_BATCH * sizeof *s->excl);
    s->n_excl = malloc(JOULE_NBR_BATCH * sizeof *s->n_excl);
    s->ids = malloc((size_t)JOULE_NBR_BATCH * k * sizeof *s->ids);
    if (!s->rows || !s->chunk || !s->excl || !s->n_excl || !s->ids) {
        joule_neighbours_scratch_free(s);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    return JOULE_OK;
}

void joule_neighbours_scratch_free(joule_neighbours_scratch *s) {
    free(s->rows);
    free(s->chunk);
    free(s->excl);
    free(s->n_excl);
    free(s->ids);
    memset(s, 0, sizeof *s);
}

int joule_neighbours_search(joule_retro_db *db, const joule_grid *g, const uint64_t *chunk, int n, int k,
                            bool own_doc, joule_neighbours_scratch *s, int64_t *ids) {
    for (int i0 = 0; i0 < n; i0 += JOULE_NBR_BATCH) {
        int b = n - i0 < JOULE_NBR_BATCH ? n - i0 : JOULE_NBR_BATCH;
        chunk_queries(g, chunk + i0, b, own_doc, s->rows, s->excl, s->n_excl);
        int rc = joule_db_search_ex(db, s->rows, b, k, s->excl, s->n_excl, ids + (size_t)i0 * k, NULL);
        if (rc) return rc;
    }
    return JOULE_OK;
}

/* Searches the retrieved chunks among [c0, c0 + n) and writes the n rows (-1 for the rest). */
static int build_rows(joule_retro_db *db, const joule_grid *g, uint64_t c0, int n, int k, joule_neighbours_scratch *s,
                      int64_t *rows, joule_atomic_file *f) {
    int q = 0;
    for (int i = 0; i < n; i++)
        if (joule_grid_retrieved(g, c0 + (uint64_t)i)) s->chunk[q++] = c0 + (uint64_t)i;
    int rc = joule_neighbours_search(db, g, s->chunk, q, k, false, s, s->ids);
    if (rc) return rc;
    for (size_t i = 0; i < (size_t)n * k; i++) rows[i] = -1;
    for (int j = 0; j < q; j++) memcpy(rows + (s->chunk[j] - c0) * (uint64_t)k, s->ids + (size_t)j * k, (size_t)k * 8);
    return joule_atomic_write(f, rows, (size_t)n * k * sizeof *rows);
}

int joule_neighbours_build(joule_retro_db *db, const char *tokens_path, const char *out_path, int k,
                           void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx) {
    if (k < 1 || k > NBR_MAX_K) return joule_fail(JOULE_ERR_ARG, "neighbours: k = %d not in [1, %d]", k, NBR_MAX_K);
    if (strlen(base_name(tokens_path)) >= 64)
        return joule_fail(JOULE_ERR_ARG, "%s: file name longer than 63 bytes", tokens_path);
    uint32_t tok_crc;
    int rc = joule_file_crc32(tokens_path, &tok_crc, NULL);
    if (rc) return rc;
    joule_tokens t;
    if ((rc = joule_tokens_open(&t, tokens_path))) return rc;
    joule_grid g;
    joule_neighbours_scratch s;
    joule_atomic_file f = {.fd = -1};
    int64_t *rows = malloc((size_t)JOULE_NBR_BATCH * k * sizeof *rows);
    rc = rows ? joule_grid_open(&g, &t, joule_db_chunk(db)) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (rc) {
        free(rows);
        joule_tokens_close(&t);
        return rc;
    }
    const uint64_t nc = g.n_chunks;
    rc = joule_neighbours_scratch_init(&s, g.m, k);
    if (!rc) rc = joule_atomic_open(&f, out_path);
    if (!rc) {
        uint8_t h[NBR_HEADER];
        make_header(h, g.m, k, tok_crc, nc, t.n_tokens, joule_db_id(db), tokens_path);
        rc = joule_atomic_write(&f, h, sizeof h);
    }
    for (uint64_t c0 = 0; c0 < nc && !rc; c0 += JOULE_NBR_BATCH) {
        int n = nc - c0 < JOULE_NBR_BATCH ? (int)(nc - c0) : JOULE_NBR_BATCH;
        rc = build_rows(db, &g, c0, n, k, &s, rows, &f);
        if (progress) progress(ctx, c0 + (uint64_t)n, nc);
    }
    if (!rc) rc = joule_atomic_commit(&f);
    else if (f.fd >= 0) joule_atomic_abort(&f);
    joule_neighbours_scratch_free(&s);
    joule_grid_close(&g);
    free(rows);
    joule_tokens_close(&t);
    return rc;
}

int joule_neighbours_open(joule_neighbours **out, const char *path, const joule_retro_db *db) {
    *out = NULL;
    joule_neighbours *nb = calloc(1, sizeof *nb);
    if (!nb) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = joule_mmap_open(&nb->map, path);
    const uint8_t *h = nb->map.data;
    uint32_t ver = 0, m = 0, k = 0, tok_crc = 0;
    uint64_t n_chunks = 0, n_tokens = 0;
    char id[25] = {0}, tok_name[65] = {0};
    if (!rc && nb->map.size >= NBR_HEADER) {
        memcpy(&ver, h + 8, 4);
        memcpy(&m, h + 12, 4);
        memcpy(&k, h + 16, 4);
        memcpy(&tok_crc, h + 20, 4);
        memcpy(&n_chunks, h + 24, 8);
        memcpy(&n_tokens, h + 32, 8);
        memcpy(id, h + 40, 24);
        memcpy(tok_name, h + 64, 64);
    }
    if (rc) {
    } else if (nb->map.size < NBR_HEADER) rc = joule_fail(JOULE_ERR_FORMAT, "%s: truncated header", path);
    else if (memcmp(h, NBR_MAGIC, 8) != 0) rc = joule_fail(JOULE_ERR_FORMAT, "%s: bad magic (not a joule neighbour file)", path);
    else if (ver != NBR_VERSION) rc = joule_fail(JOULE_ERR_FORMAT, "%s: unsupported format version %u", path, ver);
    else if (k < 1 || k > NBR_MAX_K || m < 1 || m > JOULE_DB_MAX_CHUNK || id[23] || tok_name[63])
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: invalid header", path);
    else if (n_chunks > n_tokens || n_chunks > (SIZE_MAX - NBR_HEADER) / 8 / k ||
             nb->map.size != NBR_HEADER + n_chunks * k * 8)
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: size does not match its header (truncated?)", path);
    else if ((int)m != joule_db_chunk(db))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: chunk size %u, the database's is %d", path, m, joule_db_chunk(db));
    else if (strcmp(id, joule_db_id(db)) != 0)
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: computed with database %s, not this one (%s)", path, id, joule_db_id(db));
    if (!rc) {
        /* the token file it was computed for lies beside it */
        char *copy = strdup(path);
        char *tpath = copy ? joule_path_join(dirname(copy), tok_name) : NULL;
        uint32_t crc = 0;
        uint64_t size = 0;
        if (!tpath) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        else if ((rc = joule_file_crc32(tpath, &crc, &size)))
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: its token file %s cannot be read", path, tpath);
        else if (crc != tok_crc || size != JOULE_DATA_HEADER_BYTES + n_tokens)
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: computed for another version of %s (token file changed)", path, tpath);
        free(tpath);
        free(copy);
    }
    if (!rc) {
        const int64_t *ids = (const int64_t *)(h + NBR_HEADER);
        int64_t N = (int64_t)joule_db_size(db);
        for (uint64_t i = 0; i < n_chunks * k; i++)
            if (ids[i] < -1 || ids[i] >= N) {
                rc = joule_fail(JOULE_ERR_FORMAT, "%s: neighbour id %lld out of the database's range", path, (long long)ids[i]);
                break;
            }
        nb->m = (int)m;
        nb->k = (int)k;
        nb->n_chunks = n_chunks;
        nb->ids = ids;
    }
    if (rc) {
        joule_neighbours_close(nb);
        return rc;
    }
    *out = nb;
    return JOULE_OK;
}

void joule_neighbours_close(joule_neighbours *nb) {
    if (!nb) return;
    joule_mmap_close(&nb->map);
    free(nb);
}
