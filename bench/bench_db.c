/* Retrieval databases: build throughput (embedding and indexing apart), query latency and
 * throughput, recall@k against Flat, and the overhead of joule's search path over calling
 * FAISS directly on the same pre-embedded queries. The FAISS baseline is the one place
 * outside retro/ that calls FAISS: it is what is being compared. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_io_c.h>

#include "joule/bench.h"
#include "joule/ops.h"

int joule_bench_db_build(const char *src, const char *dir, const char *factory, int chunk, uint64_t max_chunks,
                         joule_bench_db_build_result *r) {
    memset(r, 0, sizeof *r);
    joule_db_build_opts b;
    joule_db_build_opts_init(&b);
    b.sources = &src;
    b.n_sources = 1;
    b.out_dir = dir;
    b.chunk = chunk;
    b.index = factory;
    b.max_chunks = max_chunks;
    double t0 = joule_now();
    int rc = joule_db_build(&b, &r->embed_s, &r->index_s);
    if (rc) return rc;
    r->wall_s = joule_now() - t0;
    joule_retro_db *db;
    if ((rc = joule_db_open(&db, dir))) return rc;
    r->entries = (double)joule_db_size(db);
    snprintf(r->factory, sizeof r->factory, "%s", joule_db_factory(db));
    joule_db_close(db);
    return JOULE_OK;
}

/* Latency (batch 1) and throughput (one batch) of joule_db_search, and recall against flat. */
static int query_run(joule_retro_db *db, joule_retro_db *flat, const int32_t *q, int Q, int k, int reps,
                     int64_t *ids, double *lat, double *tp, joule_bench_db_query_result *r) {
    const int m = joule_db_chunk(db);
    int rc = joule_db_search(db, q, 1, k, NULL, ids, NULL); /* warm-up */
    for (int i = 0; i < Q && !rc; i++) {
        double t0 = joule_now();
        rc = joule_db_search(db, q + (size_t)i * m, 1, k, NULL, ids, NULL);
        lat[i] = joule_now() - t0;
    }
    for (int i = 0; i < reps && !rc; i++) {
        double t0 = joule_now();
        rc = joule_db_search(db, q, Q, k, NULL, ids, NULL);
        tp[i] = joule_now() - t0;
    }
    r->recall = 1;
    if (!rc && flat) rc = joule_db_recall(db, flat, q, Q, k, &r->recall);
    if (rc) return rc;
    qsort(lat, (size_t)Q, sizeof *lat, joule_cmp_double);
    r->p50_s = lat[Q / 2];
    r->p90_s = lat[(Q * 9) / 10];
    r->batch_s = joule_median(tp, reps);
    return JOULE_OK;
}

int joule_bench_db_query(const char *dir, const char *params, joule_retro_db *flat, const int32_t *q, int nq, int k,
                         int reps, joule_bench_db_query_result *r) {
    memset(r, 0, sizeof *r);
    joule_retro_db *db;
    int rc = joule_db_open(&db, dir);
    if (rc) return rc;
    int64_t *ids = malloc((size_t)nq * k * sizeof *ids);
    double *lat = malloc((size_t)nq * sizeof *lat), *tp = malloc((size_t)reps * sizeof *tp);
    if (!ids || !lat || !tp) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = joule_db_set_params(db, params);
    if (!rc) rc = query_run(db, flat, q, nq, k, reps, ids, lat, tp, r);
    if (!rc) snprintf(r->name, sizeof r->name, "%s%s%s", joule_db_factory(db), *params ? " " : "", params);
    free(ids);
    free(lat);
    free(tp);
    joule_db_close(db);
    return rc;
}

/* The buffers of one overhead measurement. */
typedef struct {
    float *x, *dist;
    int64_t *ids;
    double *tj, *tf, *ratio;
} overhead_bufs;

static void free_overhead(overhead_bufs *b) {
    free(b->x);
    free(b->dist);
    free(b->ids);
    free(b->tj);
    free(b->tf);
    free(b->ratio);
}

/* All nq queries in batches of `batch` through joule (joule true) or bare FAISS; seconds. */
static int search_all(joule_retro_db *db, FaissIndex *raw, bool joule, const overhead_bufs *b, int nq, int batch,
                      int d, int k, double *secs) {
    int rc = JOULE_OK;
    double t0 = joule_now();
    for (int i = 0; i < nq && !rc; i += batch) {
        int n = nq - i < batch ? nq - i : batch;
        if (joule)
            rc = joule_db_search_vectors(db, b->x + (size_t)i * d, n, k, NULL, NULL, b->ids + (size_t)i * k,
                                         b->dist + (size_t)i * k);
        else if (faiss_Index_search(raw, n, b->x + (size_t)i * d, k, b->dist + (size_t)i * k, b->ids + (size_t)i * k))
            rc = joule_fail(JOULE_ERR_RUNTIME, "faiss search failed");
    }
    *secs = joule_now() - t0;
    return rc;
}

static int overhead_run(joule_retro_db *db, FaissIndex *raw, const int32_t *q, int nq, int batch, int k, int reps,
                        overhead_bufs *b, joule_bench_db_overhead_result *r) {
    const int d = joule_db_dim(db), m = joule_db_chunk(db);
    int rc = joule_embedder_embed((joule_embedder *)joule_db_embedder(db), q, nq, m, b->x);
    /* rep 0 warms up both; the order alternates so neither side always runs second */
    for (int i = 0; i < reps + 1 && !rc; i++) {
        double t[2] = {0, 0};
        for (int side = 0; side < 2 && !rc; side++) {
            bool joule = (side ^ (i & 1)) == 0;
            rc = search_all(db, raw, joule, b, nq, batch, d, k, &t[joule ? 0 : 1]);
        }
        if (i > 0) {
            b->tj[i - 1] = t[0];
            b->tf[i - 1] = t[1];
            b->ratio[i - 1] = t[0] / t[1];
        }
    }
    if (rc) return rc;
    double minj = b->tj[0], minf = b->tf[0];
    for (int i = 1; i < reps; i++) {
        minj = fmin(minj, b->tj[i]);
        minf = fmin(minf, b->tf[i]);
    }
    r->joule_s = joule_median(b->tj, reps);
    r->faiss_s = joule_median(b->tf, reps);
    r->ratio_median = joule_median(b->ratio, reps);
    r->ratio_min = minj / minf;
    snprintf(r->factory, sizeof r->factory, "%s", joule_db_factory(db));
    return JOULE_OK;
}

int joule_bench_db_overhead(const char *dir, const int32_t *q, int nq, int batch, int k, int reps,
                            joule_bench_db_overhead_result *r) {
    memset(r, 0, sizeof *r);
    joule_retro_db *db;
    int rc = joule_db_open(&db, dir);
    if (rc) return rc;
    char path[4200];
    snprintf(path, sizeof path, "%s/index.faiss", dir);
    FaissIndex *raw = NULL;
    if (faiss_read_index_fname(path, 0, &raw) != 0) {
        joule_db_close(db);
        return joule_fail(JOULE_ERR_IO, "%s: cannot read", path);
    }
    const int d = joule_db_dim(db);
    overhead_bufs b = {malloc((size_t)nq * d * sizeof *b.x), malloc((size_t)nq * k * sizeof *b.dist),
                       malloc((size_t)nq * k * sizeof *b.ids), malloc((size_t)reps * sizeof *b.tj),
                       malloc((size_t)reps * sizeof *b.tf), malloc((size_t)reps * sizeof *b.ratio)};
    if (!b.x || !b.dist || !b.ids || !b.tj || !b.tf || !b.ratio) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = overhead_run(db, raw, q, nq, batch, k, reps, &b, r);
    free_overhead(&b);
    faiss_Index_free(raw);
    joule_db_close(db);
    return rc;
}
