/* retro/db_shards.c — the index files of a retrieval database: one index.faiss or S shards
 * over contiguous entry ranges (retro/db_shards.h). Searching every shard and merging
 * their top-k by (distance, global id) gives a single Flat index's neighbours exactly: each
 * shard returns its own kk nearest, and the global kk nearest are among their union. The
 * single index's results are put in the same order, so ties break the same way. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/index_io_c.h>

#include "db_shards.h"
#include "retro_internal.h"

bool joule_json_crc(const cJSON *o, const char *key, uint32_t *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(x) || strlen(x->valuestring) != 8) return false;
    char *end;
    unsigned long c = strtoul(x->valuestring, &end, 16);
    if (*end) return false;
    *v = (uint32_t)c;
    return true;
}

int joule_db_check_file(const char *path, uint64_t bytes, uint32_t crc, bool full) {
    struct stat st;
    if (stat(path, &st) != 0) return joule_fail(JOULE_ERR_IO, "%s: missing", path);
    if ((uint64_t)st.st_size != bytes)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %llu bytes, the manifest says %llu (truncated or replaced)", path,
                          (unsigned long long)st.st_size, (unsigned long long)bytes);
    if (!full) return JOULE_OK;
    uint32_t got;
    int rc = joule_file_crc32(path, &got, NULL);
    if (rc) return rc;
    if (got != crc)
        return joule_fail(JOULE_ERR_FORMAT, "%s: checksum %08x, the manifest says %08x (corrupted)", path, got, crc);
    return JOULE_OK;
}

static bool file_entry(const cJSON *f, joule_db_shard *s) {
    return cJSON_IsObject(f) && joule_json_u64(f, "bytes", &s->bytes) && joule_json_crc(f, "crc32", &s->crc);
}

/* One shard of a format-2 manifest: its name must be the one joule writes (a manifest
 * cannot point outside the folder), its range must start where the previous one ended. */
static int parse_shard(const cJSON *o, int s, uint64_t first, joule_db_shard *out, const char *mpath) {
    snprintf(out->file, sizeof out->file, JOULE_DB_SHARD_FMT, s);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "file");
    if (!cJSON_IsString(name) || strcmp(name->valuestring, out->file) != 0)
        return joule_fail(JOULE_ERR_FORMAT, "%s: shard %d must be named %s", mpath, s, out->file);
    if (!file_entry(o, out) || !joule_json_u64(o, "first", &out->first) || !joule_json_u64(o, "entries", &out->entries) ||
        out->entries < 1)
        return joule_fail(JOULE_ERR_FORMAT, "%s: shard %s: missing or invalid first/entries/bytes/crc32", mpath, out->file);
    if (out->first != first)
        return joule_fail(JOULE_ERR_FORMAT, "%s: shard %s starts at entry %llu, not %llu where the previous one ends",
                          mpath, out->file, (unsigned long long)out->first, (unsigned long long)first);
    return JOULE_OK;
}

int joule_db_shards_parse(joule_db_shards *sh, const cJSON *j, uint64_t n, const char *mpath) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "shards");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(j, "files");
    int S = list ? cJSON_GetArraySize(list) : 1;
    if (list && (!cJSON_IsArray(list) || S < 1 || S > JOULE_DB_MAX_SHARDS || (uint64_t)S > n))
        return joule_fail(JOULE_ERR_FORMAT, "%s: invalid shards (1 to %d shards of at least one entry)", mpath,
                          JOULE_DB_MAX_SHARDS);
    if (!(sh->s = calloc((size_t)S, sizeof *sh->s))) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    sh->n = S;
    sh->sharded = list != NULL;
    if (!list) {
        snprintf(sh->s[0].file, sizeof sh->s[0].file, "%s", JOULE_DB_INDEX);
        sh->s[0].entries = n;
        if (!file_entry(cJSON_GetObjectItemCaseSensitive(files, JOULE_DB_INDEX), &sh->s[0]))
            return joule_fail(JOULE_ERR_FORMAT, "%s: missing or invalid files", mpath);
        return JOULE_OK;
    }
    uint64_t first = 0;
    for (int s = 0; s < S; s++) {
        int rc = parse_shard(cJSON_GetArrayItem(list, s), s, first, &sh->s[s], mpath);
        if (rc) return rc;
        first += sh->s[s].entries;
    }
    if (first != n)
        return joule_fail(JOULE_ERR_FORMAT, "%s: the shards hold %llu entries, the manifest says %llu", mpath,
                          (unsigned long long)first, (unsigned long long)n);
    return JOULE_OK;
}

int joule_db_shards_check(const joule_db_shards *sh, const char *dir, bool full) {
    int rc = JOULE_OK;
    for (int s = 0; s < sh->n && !rc; s++) {
        char *path = joule_path_join(dir, sh->s[s].file);
        rc = path ? joule_db_check_file(path, sh->s[s].bytes, sh->s[s].crc, full) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
        free(path);
    }
    return rc;
}

static int open_one(joule_db_shard *s, const char *path, int dim) {
    int rc = joule_faiss_precheck(path, dim, s->entries);
    if (rc) return rc;
    if (faiss_read_index_fname(path, 0, &s->index) != 0) return joule_faiss_fail(JOULE_ERR_FORMAT, path);
    if (faiss_Index_d(s->index) != dim || (uint64_t)faiss_Index_ntotal(s->index) != s->entries)
        return joule_fail(JOULE_ERR_FORMAT,
                          "%s: index holds %lld vectors of dimension %d, the manifest says %llu (entries [%llu, %llu)) of %d",
                          path, (long long)faiss_Index_ntotal(s->index), faiss_Index_d(s->index),
                          (unsigned long long)s->entries, (unsigned long long)s->first,
                          (unsigned long long)(s->first + s->entries), dim);
    FaissIndexFlat *flat = faiss_IndexFlat_cast(s->index);
    if (flat) {
        float *xb = NULL;
        size_t size = 0;
        faiss_IndexFlat_xb(flat, &xb, &size);
        s->xb = size == s->entries * (size_t)dim ? xb : NULL;
    }
    s->dim = dim;
    return JOULE_OK;
}

int joule_db_shards_open(joule_db_shards *sh, const char *dir, int dim) {
    int rc = JOULE_OK;
    for (int s = 0; s < sh->n && !rc; s++) {
        char *path = joule_path_join(dir, sh->s[s].file);
        rc = path ? open_one(&sh->s[s], path, dim) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
        free(path);
    }
    return rc;
}

void joule_db_shards_close(joule_db_shards *sh) {
    for (int s = 0; s < sh->n && sh->s; s++)
        if (sh->s[s].index) faiss_Index_free(sh->s[s].index);
    free(sh->s);
    free(sh->d);
    free(sh->id);
    free(sh->fd);
    free(sh->fid);
    memset(sh, 0, sizeof *sh);
}

int joule_db_shards_set_params(joule_db_shards *sh, FaissParameterSpace *ps, const char *params, const char *dir,
                               const char *factory) {
    for (int s = 0; s < sh->n; s++)
        if (faiss_ParameterSpace_set_index_parameters(ps, sh->s[s].index, params) != 0) {
            char what[512];
            snprintf(what, sizeof what, "%s: search parameters '%s' do not apply to index '%s'", dir, params, factory);
            return joule_faiss_fail(JOULE_ERR_ARG, what);
        }
    return JOULE_OK;
}

/* ---- search ---- */

/* The result order: nearer first, equal distances by lower id, missing (-1) last. */
static bool before(float da, int64_t ia, float db, int64_t ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    return da < db || (da == db && ia < ib);
}

/* FAISS returns each row by distance; ties are put in id order here (insertion sort: the
 * row is already nearly sorted). */
static void order_row(float *d, int64_t *id, int64_t kk) {
    for (int64_t j = 1; j < kk; j++) {
        float dj = d[j];
        int64_t ij = id[j], t = j;
        while (t > 0 && before(dj, ij, d[t - 1], id[t - 1])) {
            d[t] = d[t - 1];
            id[t] = id[t - 1];
            t--;
        }
        d[t] = dj;
        id[t] = ij;
    }
}

static int faiss_run(const joule_db_shard *s, const char *dir, const float *q, int n, int64_t kk, float *d, int64_t *id) {
    if (faiss_Index_search(s->index, n, q, kk, d, id) != 0) {
        char what[512];
        snprintf(what, sizeof what, "%s/%s: search failed", dir, s->file);
        return joule_faiss_fail(JOULE_ERR_RUNTIME, what);
    }
    return JOULE_OK;
}

/* Candidates FAISS proposes beyond kk for a Flat index (see exact_row). */
#define FLAT_MARGIN 8

/* Squared L2 in one fixed order (double sum, one rounding): the same value for a pair
 * whichever shard, batch or FAISS code path it comes through. */
static float exact_l2(const float *a, const float *b, int d) {
    double sum = 0;
    for (int j = 0; j < d; j++) {
        double t = (double)a[j] - (double)b[j];
        sum += t * t;
    }
    return (float)sum;
}

/* Every entry of shard s for one query: its kk nearest by (exact distance, id). */
static void brute_row(const joule_db_shard *s, const float *q, int64_t kk, float *d, int64_t *id) {
    for (int64_t j = 0; j < kk; j++) d[j] = INFINITY, id[j] = -1;
    for (uint64_t e = 0; e < s->entries; e++) {
        float x = exact_l2(q, s->xb + e * (size_t)s->dim, s->dim);
        if (id[kk - 1] >= 0 && !(x < d[kk - 1])) continue; /* ids rise: an equal distance loses */
        int64_t t = kk - 1;
        while (t > 0 && (id[t - 1] < 0 || x < d[t - 1])) {
            d[t] = d[t - 1];
            id[t] = id[t - 1];
            t--;
        }
        d[t] = x;
        id[t] = (int64_t)e;
    }
}

/* One query's kc FAISS candidates (fd, fid) -> its kk nearest by exact distance. An entry
 * FAISS did not return has a FAISS distance >= the last candidate's, so an exact one above
 * that minus FAISS's rounding bound; when that could still reach the kk-th, brute force. */
static void exact_row(const joule_db_shard *s, const float *q, float *fd, int64_t *fid, int64_t kc, int64_t kk,
                      float *d, int64_t *id) {
    const float last = fid[kc - 1] >= 0 ? fd[kc - 1] : INFINITY;
    double qn = 0;
    for (int j = 0; j < s->dim; j++) qn += (double)q[j] * q[j];
    /* BLAS distances |q|^2 + |x|^2 - 2 q.x: a few (d + 2) ulps of the norms (|x| <= 1: the
     * embedders normalise), taken four times over */
    const float eps = (float)(4 * 6e-8 * (s->dim + 2) * (qn + 1.0) * 2);
    for (int64_t j = 0; j < kc; j++)
        if (fid[j] >= 0) fd[j] = exact_l2(q, s->xb + (size_t)fid[j] * (size_t)s->dim, s->dim);
    order_row(fd, fid, kc);
    if ((uint64_t)kc < s->entries && kk <= kc && fid[kk - 1] >= 0 && last <= fd[kk - 1] + eps) {
        brute_row(s, q, kk, d, id);
        return;
    }
    for (int64_t j = 0; j < kk; j++) {
        d[j] = j < kc && fid[j] >= 0 ? fd[j] : INFINITY;
        id[j] = j < kc ? fid[j] : -1;
    }
}

static int grow_pair(float **d, int64_t **id, size_t *cap, size_t need) {
    if (need <= *cap) return JOULE_OK;
    float *nd = realloc(*d, need * sizeof *nd);
    if (nd) *d = nd;
    int64_t *ni = nd ? realloc(*id, need * sizeof *ni) : NULL;
    if (ni) *id = ni;
    if (!nd || !ni) return joule_fail(JOULE_ERR_NOMEM, "out of memory (search results of %zu)", need);
    *cap = need;
    return JOULE_OK;
}

/* Shard s's kk nearest of n queries, global ids, rows in (distance, id) order. */
static int search_one(joule_db_shards *sh, const joule_db_shard *s, const char *dir, const float *q, int n, int64_t kk,
                      float *d, int64_t *id) {
    int rc;
    if (!s->xb) {
        if ((rc = faiss_run(s, dir, q, n, kk, d, id))) return rc;
        for (int i = 0; i < n; i++) order_row(d + (size_t)i * kk, id + (size_t)i * kk, kk);
    } else {
        int64_t kc = kk + FLAT_MARGIN < (int64_t)s->entries ? kk + FLAT_MARGIN : (int64_t)s->entries;
        if ((rc = grow_pair(&sh->fd, &sh->fid, &sh->fcap, (size_t)n * (size_t)kc))) return rc;
        if ((rc = faiss_run(s, dir, q, n, kc, sh->fd, sh->fid))) return rc;
#pragma omp parallel for schedule(dynamic, 16)
        for (int i = 0; i < n; i++)
            exact_row(s, q + (size_t)i * s->dim, sh->fd + (size_t)i * kc, sh->fid + (size_t)i * kc, kc, kk,
                      d + (size_t)i * kk, id + (size_t)i * kk);
    }
    for (size_t r = 0; r < (size_t)n * (size_t)kk; r++)
        if (id[r] >= 0) id[r] += (int64_t)s->first;
    return JOULE_OK;
}

/* Query i's kk best over the shards' rows (each ordered): an S-way merge. */
static void merge_row(const joule_db_shards *sh, const size_t *off, const int64_t *kks, int i, int64_t kk,
                      float *dist, int64_t *ids) {
    int64_t head[JOULE_DB_MAX_SHARDS] = {0};
    for (int64_t j = 0; j < kk; j++) {
        int best = -1;
        float bd = INFINITY;
        int64_t bi = -1;
        for (int s = 0; s < sh->n; s++) {
            if (head[s] >= kks[s]) continue;
            size_t at = off[s] + (size_t)i * (size_t)kks[s] + (size_t)head[s];
            if (best < 0 || before(sh->d[at], sh->id[at], bd, bi)) {
                best = s;
                bd = sh->d[at];
                bi = sh->id[at];
            }
        }
        if (best >= 0 && bi >= 0) head[best]++;
        else bd = INFINITY, bi = -1;
        dist[j] = bd;
        ids[j] = bi;
    }
}

int joule_db_shards_search(joule_db_shards *sh, const char *dir, const float *q, int n, int64_t kk, float *dist,
                           int64_t *ids) {
    if (sh->n == 1) return search_one(sh, &sh->s[0], dir, q, n, kk, dist, ids);
    size_t off[JOULE_DB_MAX_SHARDS], need = 0;
    int64_t kks[JOULE_DB_MAX_SHARDS];
    for (int s = 0; s < sh->n; s++) {
        kks[s] = kk < (int64_t)sh->s[s].entries ? kk : (int64_t)sh->s[s].entries;
        off[s] = need;
        need += (size_t)n * (size_t)kks[s];
    }
    int rc = grow_pair(&sh->d, &sh->id, &sh->cap, need);
    if (rc) return rc;
    for (int s = 0; s < sh->n; s++) {
        rc = search_one(sh, &sh->s[s], dir, q, n, kks[s], sh->d + off[s], sh->id + off[s]);
        if (rc) return rc;
    }
    for (int i = 0; i < n; i++)
        merge_row(sh, off, kks, i, kk, dist + (size_t)i * (size_t)kk, ids + (size_t)i * (size_t)kk);
    return JOULE_OK;
}
