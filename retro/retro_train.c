/* Batches with neighbours for training and evaluation: the database and the precomputed
 * neighbour files of the token files (built once, next to them, on first use), and the
 * prepare hook that turns a batch's chunk-aligned window starts into the neighbour tokens
 * the model reads (docs/MODEL.md §7). */
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

struct joule_retro_data {
    joule_retro_db *db;
    int m, k;
    bool retrieval;
    int n;
    char *tokens_path[MAX_SOURCES];
    char *nbr_path[MAX_SOURCES];
    joule_neighbours *nb[MAX_SOURCES];
    int32_t *buf; /* [cap] neighbour tokens of one batch */
    size_t cap;
    bool own_doc;     /* live search, the chunk's own document allowed (leaky upper bound) */
    int32_t *qbuf;    /* [qcap] query chunks of one batch (own_doc) */
    int64_t *qids;    /* [qcap / m * k] */
    size_t qcap;
    uint64_t same_doc_dropped;
    /* on demand: per source, the neighbours of every chunk [n_chunks][k] and whether each
     * has been searched yet; filled by the batches that need them */
    bool on_demand;
    int64_t *od_ids[MAX_SOURCES];
    uint8_t *od_done[MAX_SOURCES];
    uint64_t od_chunks[MAX_SOURCES];
    joule_neighbours_scratch od_scratch;
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
        joule_neighbours_close(rd->nb[i]);
        free(rd->tokens_path[i]);
        free(rd->nbr_path[i]);
        free(rd->od_ids[i]);
        free(rd->od_done[i]);
    }
    joule_neighbours_scratch_free(&rd->od_scratch);
    joule_db_close(rd->db);
    free(rd->buf);
    free(rd->qbuf);
    free(rd->qids);
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
static int open_neighbours(joule_retro_data *rd, int i, joule_retro_progress_fn progress, void *ctx) {
    const char *path = rd->nbr_path[i];
    if (access(path, F_OK) == 0) {
        int rc = joule_neighbours_open(&rd->nb[i], path, rd->db);
        if (!rc && joule_neighbours_k(rd->nb[i]) >= rd->k) return JOULE_OK;
        joule_neighbours_close(rd->nb[i]);
        rd->nb[i] = NULL;
    }
    progress_adapter a = {progress, ctx, path};
    int rc = joule_neighbours_build(rd->db, rd->tokens_path[i], path, rd->k, progress ? on_build_progress : NULL, &a);
    if (!rc) rc = joule_neighbours_open(&rd->nb[i], path, rd->db);
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
    int rc = joule_db_open(&rd->db, db_dir);
    if (!rc && joule_db_chunk(rd->db) != rd->m)
        rc = joule_fail(JOULE_ERR_ARG, "%s: database chunks are %d tokens, the model's are %d", db_dir,
                        joule_db_chunk(rd->db), rd->m);
    if (!rc && c->retro.db_id[0] && strcmp(c->retro.db_id, joule_db_id(rd->db)) != 0 && !o->allow_db_mismatch)
        rc = joule_fail(JOULE_ERR_ARG,
                        "%s: database %s is not the one the model was trained with (%s); "
                        "allow it with --allow-db-mismatch",
                        db_dir, joule_db_id(rd->db), c->retro.db_id);
    if (!rc && rd->on_demand && rd->k > 0) rc = joule_neighbours_scratch_init(&rd->od_scratch, rd->m, rd->k);
    for (int i = 0; i < n && !rc; i++) {
        rd->tokens_path[i] = strdup(tokens_paths[i]);
        rd->nbr_path[i] = joule_retro_neighbours_path(tokens_paths[i], joule_db_id(rd->db));
        rd->n = i + 1;
        if (!rd->tokens_path[i] || !rd->nbr_path[i]) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        else if (rd->k > 0 && !rd->on_demand) rc = open_neighbours(rd, i, o->progress, o->ctx);
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

/* Is doc one of the documents holding tokens [s, e) of t? */
static bool same_document(const joule_tokens *t, uint64_t s, uint64_t e, uint64_t doc) {
    for (uint64_t d = joule_tokens_doc_at(t, s), d1 = joule_tokens_doc_at(t, e - 1); d <= d1; d++)
        if (t->doc_ids[d] == doc) return true;
    return false;
}

int joule_retro_prepare(void *ctx, joule_model *m, const joule_tokens *t, const uint64_t *starts, int B, int T) {
    joule_retro_data *rd = ctx;
    const int nch = T / rd->m;
    if (!rd->retrieval || rd->k == 0) return joule_retro_set_neighbours(m, NULL, B, nch);
    const size_t need = (size_t)B * nch * rd->k * 2 * rd->m;
    if (need > rd->cap) {
        int32_t *grown = realloc(rd->buf, need * sizeof *grown);
        if (!grown) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        rd->buf = grown;
        rd->cap = need;
    }
    int rc = joule_retro_batch_neighbours(rd, t, starts, B, T, rd->buf);
    return rc ? rc : joule_retro_set_neighbours(m, rd->buf, B, nch);
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

/* Own-document mode: the batch's chunks searched now, nothing excluded. */
static int live_neighbours(joule_retro_data *rd, const joule_tokens *t, const uint64_t *starts, int B, int T,
                           int32_t *out) {
    const int mm = rd->m, k = rd->k, nch = T / mm, n = B * nch;
    const size_t need = (size_t)n * mm;
    if (need > rd->qcap) {
        int32_t *q = realloc(rd->qbuf, need * sizeof *q);
        int64_t *ids = q ? realloc(rd->qids, (size_t)n * k * sizeof *ids) : NULL;
        if (q) rd->qbuf = q;
        if (!q || !ids) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        rd->qids = ids;
        rd->qcap = need;
    }
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < (size_t)nch * mm; i++) rd->qbuf[(size_t)b * nch * mm + i] = t->tok[starts[b] + i];
    int rc = joule_db_search(rd->db, rd->qbuf, n, k, NULL, rd->qids, NULL);
    for (size_t i = 0; i < (size_t)n * k && !rc; i++) rc = fetch_entry(rd, rd->qids[i], out + i * 2 * mm, NULL, t->path);
    return rc;
}

/* Searches the n listed chunks of source src and stores their neighbours. */
static int search_listed(joule_retro_data *rd, int src, const joule_tokens *t, int n) {
    joule_neighbours_scratch *s = &rd->od_scratch;
    int rc = joule_neighbours_search(rd->db, t, s->chunk, n, rd->k, s, s->ids);
    for (int i = 0; i < n; i++) {
        if (!rc)
            memcpy(rd->od_ids[src] + s->chunk[i] * (uint64_t)rd->k, s->ids + (size_t)i * rd->k,
                   (size_t)rd->k * sizeof(int64_t));
        rd->od_done[src][s->chunk[i]] = rc ? 0 : 1;
    }
    if (!rc) rd->searches += (uint64_t)n;
    return rc;
}

/* On demand: searches the chunks of the batch's windows not searched yet, each once, in the
 * order the batch lists them, so a run's searches depend only on its own batches. */
static int fill_on_demand(joule_retro_data *rd, int src, const joule_tokens *t, const uint64_t *starts, int B,
                          int nch) {
    const uint64_t nc = (t->n_tokens + (uint64_t)rd->m - 1) / (uint64_t)rd->m;
    if (!rd->od_ids[src]) {
        rd->od_ids[src] = malloc(nc * (size_t)rd->k * sizeof(int64_t));
        rd->od_done[src] = calloc(nc, 1);
        if (!rd->od_ids[src] || !rd->od_done[src]) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        rd->od_chunks[src] = nc;
    } else if (rd->od_chunks[src] != nc) {
        return joule_fail(JOULE_ERR_ARG, "%s: token file changed size while in use", t->path);
    }
    uint8_t *done = rd->od_done[src];
    int n = 0, rc = JOULE_OK;
    const double t0 = joule_now();
    for (int b = 0; b < B && !rc; b++)
        for (int u = 0; u < nch && !rc; u++) {
            const uint64_t chunk = starts[b] / (uint64_t)rd->m + (uint64_t)u;
            if (done[chunk]) continue;
            done[chunk] = 2; /* listed: a repeat within the batch is not searched twice */
            rd->od_scratch.chunk[n++] = chunk;
            if (n == JOULE_NBR_BATCH) {
                rc = search_listed(rd, src, t, n);
                n = 0;
            }
        }
    if (n && !rc) rc = search_listed(rd, src, t, n);
    rd->search_s += joule_now() - t0;
    return rc;
}

int joule_retro_batch_neighbours(joule_retro_data *rd, const joule_tokens *t, const uint64_t *starts, int B, int T,
                                 int32_t *out) {
    const int mm = rd->m, k = rd->k, nch = T / mm, per = 2 * mm;
    for (int b = 0; b < B; b++)
        if (starts[b] % (uint64_t)mm || starts[b] + (uint64_t)T > t->n_tokens)
            return joule_fail(JOULE_ERR_ARG, "%s: window at %" PRIu64 " is not a whole window aligned to chunks of %d",
                              t->path, starts[b], mm);
    if (rd->own_doc) return live_neighbours(rd, t, starts, B, T, out);
    int src = -1;
    for (int i = 0; i < rd->n; i++)
        if (strcmp(rd->tokens_path[i], t->path) == 0) src = i;
    if (src < 0) return joule_fail(JOULE_ERR_ARG, "%s: no neighbour file opened for this token file", t->path);
    const joule_neighbours *nb = rd->nb[src];
    const char *what = rd->on_demand ? t->path : rd->nbr_path[src];
    int nbk = k;
    if (rd->on_demand) {
        int rc = fill_on_demand(rd, src, t, starts, B, nch);
        if (rc) return rc;
    } else {
        nbk = joule_neighbours_k(nb);
    }
    for (int b = 0; b < B; b++) {
        for (int u = 0; u < nch; u++) {
            const uint64_t chunk = starts[b] / (uint64_t)mm + (uint64_t)u, s = chunk * (uint64_t)mm;
            const int64_t *ids = rd->on_demand ? rd->od_ids[src] + chunk * (uint64_t)k : joule_neighbours_of(nb, chunk);
            if (!ids) return joule_fail(JOULE_ERR_FORMAT, "%s: no neighbours for chunk %" PRIu64, what, chunk);
            for (int j = 0; j < k; j++) {
                int32_t *dst = out + (((size_t)b * nch + u) * k + j) * per;
                uint64_t doc = 0;
                int64_t id = j < nbk ? ids[j] : -1;
                int rc = fetch_entry(rd, id, dst, &doc, what);
                if (rc) return rc;
                /* Training never sees its own document (the search excludes it; this guards
                 * against a file computed with another rule). */
                if (id >= 0 && same_document(t, s, s + (uint64_t)mm, doc)) {
                    rd->same_doc_dropped++;
                    fetch_entry(rd, -1, dst, NULL, NULL);
                }
            }
        }
    }
    return JOULE_OK;
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
