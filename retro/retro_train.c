/* Batches with neighbours for training and evaluation: the database, the chunk grid and
 * the neighbours of the token files (precomputed files built once next to them, or searched
 * on demand), the window sampler that draws training windows on the grid, and the prepare
 * hook that turns a batch's windows into the chunks and neighbour tokens the model reads
 * (docs/MODEL.md §7). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/retro.h"
#include "joule/retro_db.h"
#include "retro_internal.h"
#include "retro_model.h"

enum { MAX_SOURCES = 4 };

/* One token file the data serves: its grid, and its neighbours (a file, or on demand). */
typedef struct {
    char *tokens_path, *nbr_path;
    joule_neighbours *nb;
    const joule_tokens *t; /* the caller's, refreshed at each call (the grid reads its index) */
    joule_grid grid;  /* built at first use */
    bool grid_open;
    uint64_t n_tokens, n_docs; /* of the file the grid was built for */
    int64_t *od_ids;  /* on demand: [n_chunks][k], filled by the batches that need them */
    uint8_t *od_done; /* [n_chunks] */
} source;

struct joule_retro_data {
    joule_retro_db *db;
    int m, k;
    bool retrieval;
    bool own_doc;     /* live search, the chunk's own document allowed (leaky upper bound) */
    bool on_demand;
    int n;
    source src[MAX_SOURCES];
    /* one batch: its chunks, their grid ids and neighbour tokens */
    joule_retro_chunk *chunks;
    uint64_t *ids;
    int32_t *buf;
    int cap_chunks;
    int64_t *live_ids; /* own-document mode: [cap_chunks][k] */
    joule_neighbours_scratch scratch;
    uint64_t same_doc_dropped;
    uint64_t searches;
    double search_s;
};

char *joule_retro_neighbours_path(const char *tokens_path, const char *db_id) {
    size_t n = strlen(tokens_path);
    if (n > 4 && strcmp(tokens_path + n - 4, ".bin") == 0) n -= 4;
    size_t len = n + strlen(db_id) + 8;
    char *p = malloc(len);
    if (p) snprintf(p, len, "%.*s.%s.nbr", (int)n, tokens_path, db_id);
    return p;
}

void joule_retro_data_close(joule_retro_data *rd) {
    if (!rd) return;
    for (int i = 0; i < rd->n; i++) {
        source *s = &rd->src[i];
        joule_neighbours_close(s->nb);
        if (s->grid_open) joule_grid_close(&s->grid);
        free(s->tokens_path);
        free(s->nbr_path);
        free(s->od_ids);
        free(s->od_done);
    }
    joule_neighbours_scratch_free(&rd->scratch);
    joule_db_close(rd->db);
    free(rd->chunks);
    free(rd->ids);
    free(rd->buf);
    free(rd->live_ids);
    free(rd);
}

typedef struct {
    joule_retro_progress_fn fn;
    void *ctx;
    const char *what;
} progress_adapter;

static void on_build_progress(void *ctx, uint64_t done, uint64_t total) {
    progress_adapter *a = ctx;
    a->fn(a->ctx, a->what, done, total);
}

/* Opens a neighbour file, (re)building it when it is missing, stale or holds fewer than k. */
static int open_neighbours(joule_retro_data *rd, source *s, joule_retro_progress_fn progress, void *ctx) {
    const char *path = s->nbr_path;
    if (access(path, F_OK) == 0) {
        int rc = joule_neighbours_open(&s->nb, path, rd->db);
        if (!rc && joule_neighbours_k(s->nb) >= rd->k) return JOULE_OK;
        joule_neighbours_close(s->nb);
        s->nb = NULL;
    }
    progress_adapter a = {progress, ctx, path};
    int rc = joule_neighbours_build(rd->db, s->tokens_path, path, rd->k, progress ? on_build_progress : NULL, &a);
    if (!rc) rc = joule_neighbours_open(&s->nb, path, rd->db);
    return rc;
}

void joule_retro_data_opts_init(joule_retro_data_opts *o) { memset(o, 0, sizeof *o); }

int joule_retro_data_open(joule_retro_data **out, const joule_config *c, const char *db_dir,
                          const char *const *tokens_paths, int n, bool allow_db_mismatch,
                          joule_retro_progress_fn progress, void *ctx) {
    joule_retro_data_opts o;
    joule_retro_data_opts_init(&o);
    o.allow_db_mismatch = allow_db_mismatch;
    o.progress = progress;
    o.ctx = ctx;
    return joule_retro_data_open_opts(out, c, db_dir, tokens_paths, n, &o);
}

static int open_db(joule_retro_data *rd, const joule_config *c, const char *db_dir, bool allow_mismatch) {
    int rc = joule_db_open(&rd->db, db_dir);
    if (!rc && joule_db_chunk(rd->db) != rd->m)
        rc = joule_fail(JOULE_ERR_ARG, "%s: database chunks are %d tokens, the model's are %d", db_dir,
                        joule_db_chunk(rd->db), rd->m);
    if (!rc && c->retro.db_id[0] && strcmp(c->retro.db_id, joule_db_id(rd->db)) != 0 && !allow_mismatch)
        rc = joule_fail(JOULE_ERR_ARG,
                        "%s: database %s is not the one the model was trained with (%s); "
                        "allow it with --allow-db-mismatch",
                        db_dir, joule_db_id(rd->db), c->retro.db_id);
    return rc;
}

int joule_retro_data_open_opts(joule_retro_data **out, const joule_config *c, const char *db_dir,
                               const char *const *tokens_paths, int n, const joule_retro_data_opts *o) {
    *out = NULL;
    if (!joule_config_has_cca(c)) return joule_fail(JOULE_ERR_ARG, "%s: the model has no RETRO layers", db_dir);
    if (n < 0 || n > MAX_SOURCES) return joule_fail(JOULE_ERR_ARG, "retro data: %d token files (at most %d)", n, MAX_SOURCES);
    joule_retro_data *rd = calloc(1, sizeof *rd);
    if (!rd) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    rd->m = c->retro.chunk;
    rd->k = c->retro.k;
    rd->retrieval = true;
    rd->on_demand = o->on_demand;
    int rc = open_db(rd, c, db_dir, o->allow_db_mismatch);
    if (!rc && rd->k > 0) rc = joule_neighbours_scratch_init(&rd->scratch, rd->m, rd->k);
    for (int i = 0; i < n && !rc; i++) {
        source *s = &rd->src[i];
        s->tokens_path = strdup(tokens_paths[i]);
        s->nbr_path = joule_retro_neighbours_path(tokens_paths[i], joule_db_id(rd->db));
        rd->n = i + 1;
        if (!s->tokens_path || !s->nbr_path) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        else if (rd->k > 0 && !rd->on_demand) rc = open_neighbours(rd, s, o->progress, o->ctx);
    }
    if (rc) {
        joule_retro_data_close(rd);
        return rc;
    }
    *out = rd;
    return JOULE_OK;
}

void joule_retro_data_search_stats(const joule_retro_data *rd, uint64_t *searches, double *seconds) {
    if (searches) *searches = rd->searches;
    if (seconds) *seconds = rd->search_s;
}

void joule_retro_data_set_retrieval(joule_retro_data *rd, bool on) { rd->retrieval = on; }
void joule_retro_data_set_own_document(joule_retro_data *rd, bool allowed) { rd->own_doc = allowed; }
const char *joule_retro_data_db_id(const joule_retro_data *rd) { return joule_db_id(rd->db); }
joule_retro_db *joule_retro_data_db(joule_retro_data *rd) { return rd->db; }
uint64_t joule_retro_data_same_doc_dropped(const joule_retro_data *rd) { return rd->same_doc_dropped; }

/* The source serving token file t, its grid ready (checked against a neighbour file's). */
static int source_of(joule_retro_data *rd, const joule_tokens *t, source **out) {
    source *s = NULL;
    for (int i = 0; i < rd->n; i++)
        if (strcmp(rd->src[i].tokens_path, t->path) == 0) s = &rd->src[i];
    if (!s) return joule_fail(JOULE_ERR_ARG, "%s: not one of the token files the RETRO data was opened with", t->path);
    if (!s->grid_open) {
        int rc = joule_grid_open(&s->grid, t, rd->m);
        if (rc) return rc;
        s->grid_open = true;
        s->n_tokens = t->n_tokens;
        s->n_docs = t->n_docs;
        if (s->nb && joule_neighbours_count(s->nb) != s->grid.n_chunks)
            return joule_fail(JOULE_ERR_FORMAT, "%s: %" PRIu64 " rows, the chunk grid of %s has %" PRIu64, s->nbr_path,
                              joule_neighbours_count(s->nb), t->path, s->grid.n_chunks);
    }
    if (s->n_tokens != t->n_tokens || s->n_docs != t->n_docs)
        return joule_fail(JOULE_ERR_ARG, "%s: token file changed while in use", t->path);
    s->grid.t = t; /* the same file, perhaps another mapping of it */
    s->t = t;
    *out = s;
    return JOULE_OK;
}

int joule_retro_data_grid(joule_retro_data *rd, const joule_tokens *t, const joule_grid **grid) {
    source *s = NULL;
    int rc = source_of(rd, t, &s);
    *grid = rc ? NULL : &s->grid;
    return rc;
}

bool joule_retro_data_own_doc(const joule_retro_data *rd) { return rd->own_doc; }

int joule_retro_sample_windows(void *ctx, const joule_tokens *t, uint64_t seed, uint64_t step, int micro, int B, int T,
                               uint64_t *starts) {
    joule_retro_data *rd = ctx;
    source *s = NULL;
    int rc = source_of(rd, t, &s);
    return rc ? rc : joule_grid_sample(&s->grid, seed, step, micro, B, T, starts);
}

/* Grows the batch buffers to n chunks. */
static int reserve(joule_retro_data *rd, int n) {
    if (n <= rd->cap_chunks) return JOULE_OK;
    joule_retro_chunk *ch = realloc(rd->chunks, (size_t)n * sizeof *ch);
    if (ch) rd->chunks = ch;
    uint64_t *ids = ch ? realloc(rd->ids, (size_t)n * sizeof *ids) : NULL;
    if (ids) rd->ids = ids;
    int32_t *buf = ids ? realloc(rd->buf, (size_t)n * rd->k * 2 * rd->m * sizeof *buf) : NULL;
    if (buf) rd->buf = buf;
    int64_t *live = buf ? realloc(rd->live_ids, (size_t)n * (rd->k + 1) * sizeof *live) : NULL;
    if (live) rd->live_ids = live;
    if (!live) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    rd->cap_chunks = n;
    return JOULE_OK;
}

/* Searches the listed chunks of source s (their own document excluded) and stores them. */
static int search_listed(joule_retro_data *rd, source *s, int n) {
    joule_neighbours_scratch *sc = &rd->scratch;
    int rc = joule_neighbours_search(rd->db, &s->grid, sc->chunk, n, rd->k, false, sc, sc->ids);
    for (int i = 0; i < n; i++) {
        if (!rc)
            memcpy(s->od_ids + sc->chunk[i] * (uint64_t)rd->k, sc->ids + (size_t)i * rd->k,
                   (size_t)rd->k * sizeof(int64_t));
        s->od_done[sc->chunk[i]] = rc ? 0 : 1;
    }
    if (!rc) rd->searches += (uint64_t)n;
    return rc;
}

/* On demand: searches the batch's chunks not searched yet, each once, in the order the
 * batch lists them, so a run's searches depend only on its own batches. */
static int fill_on_demand(joule_retro_data *rd, source *s, const uint64_t *ids, int n) {
    if (!s->od_ids) {
        s->od_ids = malloc((s->grid.n_chunks + 1) * (size_t)rd->k * sizeof(int64_t));
        s->od_done = calloc(s->grid.n_chunks + 1, 1);
        if (!s->od_ids || !s->od_done) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    int q = 0, rc = JOULE_OK;
    const double t0 = joule_now();
    for (int i = 0; i < n && !rc; i++) {
        if (s->od_done[ids[i]]) continue;
        s->od_done[ids[i]] = 2; /* listed: a repeat within the batch is not searched twice */
        rd->scratch.chunk[q++] = ids[i];
        if (q == JOULE_NBR_BATCH) {
            rc = search_listed(rd, s, q);
            q = 0;
        }
    }
    if (q && !rc) rc = search_listed(rd, s, q);
    rd->search_s += joule_now() - t0;
    return rc;
}

/* Writes entry id's 2m tokens to dst, or padding for a missing neighbour (id < 0). */
static int fetch_entry(joule_retro_data *rd, int64_t id, int32_t *dst, uint64_t *doc, const char *what) {
    if (id < 0) {
        for (int i = 0; i < 2 * rd->m; i++) dst[i] = JOULE_RETRO_PAD;
        return JOULE_OK;
    }
    if ((uint64_t)id >= joule_db_size(rd->db))
        return joule_fail(JOULE_ERR_FORMAT, "%s: neighbour id %" PRId64 " past the database's %" PRIu64 " entries",
                          what, id, joule_db_size(rd->db));
    return joule_db_entry(rd->db, id, dst, doc);
}

/* The k neighbour ids of listed chunk i (its grid id ids[i]) in the current mode. */
static const int64_t *neighbour_ids(joule_retro_data *rd, source *s, int i, int *nbk) {
    *nbk = rd->k;
    if (rd->own_doc) return rd->live_ids + (size_t)i * rd->k;
    if (rd->on_demand) return s->od_ids + rd->ids[i] * (uint64_t)rd->k;
    *nbk = joule_neighbours_k(s->nb);
    return joule_neighbours_of(s->nb, rd->ids[i]);
}

/* Neighbour tokens [n][k][2m] of the listed chunks. Outside the leaky mode a neighbour from
 * the chunk's own document is dropped (the search excludes them; this guards against a
 * file computed with another rule) and counted. */
static int fetch_listed(joule_retro_data *rd, source *s, int n, int32_t *out) {
    const int k = rd->k, per = 2 * rd->m;
    const char *what = rd->on_demand || rd->own_doc ? s->tokens_path : s->nbr_path;
    if (rd->own_doc) {
        int rc = joule_neighbours_search(rd->db, &s->grid, rd->ids, n, k, true, &rd->scratch, rd->live_ids);
        if (rc) return rc;
    } else if (rd->on_demand) {
        int rc = fill_on_demand(rd, s, rd->ids, n);
        if (rc) return rc;
    }
    for (int i = 0; i < n; i++) {
        int nbk;
        const int64_t *ids = neighbour_ids(rd, s, i, &nbk);
        if (!ids) return joule_fail(JOULE_ERR_FORMAT, "%s: no neighbours for chunk %" PRIu64, what, rd->ids[i]);
        uint64_t doc;
        joule_grid_chunk(&s->grid, rd->ids[i], &doc, NULL, NULL);
        for (int j = 0; j < k; j++) {
            int32_t *dst = out + ((size_t)i * k + j) * per;
            uint64_t ndoc = 0;
            const int64_t id = j < nbk ? ids[j] : -1;
            int rc = fetch_entry(rd, id, dst, &ndoc, what);
            if (rc) return rc;
            if (id >= 0 && !rd->own_doc && ndoc == s->t->doc_ids[doc]) {
                rd->same_doc_dropped++;
                fetch_entry(rd, -1, dst, NULL, NULL);
            }
        }
    }
    return JOULE_OK;
}

/* The chunks the windows read, without their neighbours. */
static int window_chunks(joule_retro_data *rd, source *s, const uint64_t *starts, int B, int T, int *n) {
    const int per_window = retro_max_chunks(rd->m, T);
    int rc = reserve(rd, B * per_window), G = 0;
    int *last = rc ? NULL : malloc((size_t)per_window * sizeof *last);
    if (!rc && !last) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int b = 0; b < B && !rc; b++) {
        if (starts[b] >= s->t->n_tokens || s->t->n_tokens - starts[b] < (uint64_t)T) {
            rc = joule_fail(JOULE_ERR_ARG, "%s: a window of %d tokens at %" PRIu64 " runs past the end", s->t->path, T,
                            starts[b]);
            break;
        }
        const int g = joule_grid_window(&s->grid, starts[b], T, rd->ids + G, last);
        for (int i = 0; i < g; i++) rd->chunks[G + i] = (joule_retro_chunk){.seq = b, .last = last[i]};
        G += g;
    }
    free(last);
    *n = G;
    return rc;
}

int joule_retro_batch_flops(void *ctx, const joule_config *c, const joule_tokens *t, const uint64_t *starts, int B,
                            int T, uint64_t *flops) {
    joule_retro_data *rd = ctx;
    source *s = NULL;
    int n = 0, rc = JOULE_OK;
    if (rd->retrieval && rd->k > 0 && !(rc = source_of(rd, t, &s))) rc = window_chunks(rd, s, starts, B, T, &n);
    if (!rc) *flops = joule_retro_chunks_flops(c, rd->chunks, n, B, T);
    return rc;
}

int joule_retro_batch_chunks(joule_retro_data *rd, const joule_tokens *t, const uint64_t *starts, int B, int T,
                             joule_retro_chunk **chunks, const int32_t **tokens, int *n) {
    source *s = NULL;
    int rc = source_of(rd, t, &s), G = 0;
    if (!rc) rc = window_chunks(rd, s, starts, B, T, &G);
    if (!rc && rd->k > 0 && G > 0) rc = fetch_listed(rd, s, G, rd->buf);
    *chunks = rd->chunks;
    *tokens = rd->buf;
    *n = G;
    return rc;
}

void joule_retro_train_hooks(joule_train_opts *o, joule_retro_data *rd) {
    o->batch_flops = joule_retro_batch_flops;
    o->prepare = joule_retro_prepare;
    o->sample_windows = joule_retro_sample_windows;
    o->windows_name = "retro-grid";
    o->prepare_ctx = rd;
}

int joule_retro_prepare(void *ctx, joule_model *m, const joule_tokens *t, const uint64_t *starts, int B, int T) {
    joule_retro_data *rd = ctx;
    if (!rd->retrieval || rd->k == 0) return joule_retro_set_chunks(m, NULL, 0, NULL, B, T);
    joule_retro_chunk *chunks;
    const int32_t *tokens;
    int n;
    int rc = joule_retro_batch_chunks(rd, t, starts, B, T, &chunks, &tokens, &n);
    return rc ? rc : joule_retro_set_chunks(m, chunks, n, tokens, B, T);
}

void joule_retro_freeze_base(joule_model *m) {
    for (int i = 0; i < m->n_tensors; i++) m->tensors[i].frozen = true;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int j = 0; j < m->ext_count[l][JOULE_EXT_CCA]; j++) m->tensors[m->ext_first[l][JOULE_EXT_CCA] + j].frozen = false;
}

int joule_retro_init_from(joule_model *m, const joule_model *base, const char *what) {
    for (int i = 0; i < base->n_tensors; i++) {
        const joule_param_info *bt = &base->tensors[i];
        const joule_param_info *t = joule_model_find(m, bt->name);
        if (!t || t->numel != bt->numel || t->shape[0] != bt->shape[0] || t->shape[1] != bt->shape[1])
            return joule_fail(JOULE_ERR_ARG, "%s: tensor %s has no counterpart of the same shape in the RETRO model",
                              what, bt->name);
        memcpy(m->params + t->offset, base->params + bt->offset, bt->numel * sizeof(float));
    }
    return JOULE_OK;
}
