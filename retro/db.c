/* retro/db.c — opening a retrieval database (manifest, chunk store, FAISS index), searching
 * it with same-document exclusion, reading entries, verifying it, and recall@k against an
 * exact index. Building is retro/db_build.c; the formats are in docs/FORMATS.md. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_io_c.h>

#include "joule/data.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "db_shards.h"
#include "retro_internal.h"

#define MANIFEST_MAX (1u << 20)
#define VERIFY_SAMPLE 256
#define VERIFY_K 10

struct joule_retro_db {
    char *dir;
    char *manifest; /* text */
    char id[17];
    char factory[256];
    int m, dim;
    uint64_t n;
    uint32_t chunks_crc;
    uint64_t chunks_bytes;
    joule_embedder *emb;
    joule_db_shards shards; /* the index files (one, or S shards) */
    FaissIndex *index;      /* the first shard's (its search settings stand for all) */
    FaissParameterSpace *ps;
    joule_chunk_store store;
    /* search scratch, grown as needed (searching allocates only when a batch is larger
     * than any before) */
    float *e; /* embedded queries */
    size_t e_cap;
    float *q; /* pending queries gathered for a repeated search */
    size_t q_cap;
    int64_t *r_ids;
    float *r_dist;
    size_t r_cap;
    int *pending;
    const uint64_t **excl;
    int *n_excl;
    size_t p_cap;
};

int joule_db_chunk(const joule_retro_db *db) { return db->m; }
uint64_t joule_db_size(const joule_retro_db *db) { return db->n; }
const char *joule_db_id(const joule_retro_db *db) { return db->id; }
const char *joule_db_manifest_json(const joule_retro_db *db) { return db->manifest; }
const char *joule_db_factory(const joule_retro_db *db) { return db->factory; }
int joule_db_dim(const joule_retro_db *db) { return db->dim; }
int joule_db_n_shards(const joule_retro_db *db) { return db->shards.n; }
const joule_embedder *joule_db_embedder(const joule_retro_db *db) { return db->emb; }

static const char *faiss_msg(void) {
    const char *e = faiss_get_last_error();
    return e && *e ? e : "unknown FAISS error";
}

static void one_line(char *s) {
    for (; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
}

int joule_faiss_fail(int code, const char *what) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", faiss_msg());
    one_line(buf);
    return joule_fail(code, "%s: %s", what, buf);
}

/* ---- manifest ---- */

bool joule_json_u64(const cJSON *o, const char *key, uint64_t *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 9007199254740992.0 ||
        x->valuedouble != floor(x->valuedouble))
        return false;
    *v = (uint64_t)x->valuedouble;
    return true;
}

/* The manifest's description of one of the other files. */
static bool get_file(const cJSON *files, const char *name, uint64_t *bytes, uint32_t *crc) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(files, name);
    return cJSON_IsObject(f) && joule_json_u64(f, "bytes", bytes) && joule_json_crc(f, "crc32", crc);
}

static int parse_manifest(joule_retro_db *db, const char *path, char **spec_out, uint64_t *ckpt_bytes,
                          uint32_t *ckpt_crc) {
    cJSON *j = cJSON_Parse(db->manifest);
    if (!j) return joule_fail(JOULE_ERR_FORMAT, "%s: not valid JSON", path);
    const char *why = NULL;
    uint64_t ver = 0, m = 0, dim = 0;
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(j, "shards");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
    const cJSON *emb = cJSON_GetObjectItemCaseSensitive(j, "embedder");
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(j, "index");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(j, "files");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "tokenizer");
    const cJSON *spec = emb ? cJSON_GetObjectItemCaseSensitive(emb, "spec") : NULL;
    const cJSON *fac = idx ? cJSON_GetObjectItemCaseSensitive(idx, "factory") : NULL;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "joule-retro-db") != 0) why = "not a joule retrieval database manifest";
    else if (!joule_json_u64(j, "format_version", &ver) || (ver != 1 && ver != JOULE_DB_FORMAT_VERSION)) why = "unsupported format_version";
    else if ((ver == JOULE_DB_FORMAT_VERSION) != (shards != NULL)) why = "format_version 2 and a shards list go together";
    else if (!joule_json_u64(j, "chunk", &m) || m < 1 || m > JOULE_DB_MAX_CHUNK) why = "missing or invalid chunk";
    else if (!cJSON_IsString(tok) || strcmp(tok->valuestring, "bytes") != 0) why = "unsupported tokenizer";
    else if (!joule_json_u64(j, "entries", &db->n) || db->n < 1) why = "missing or invalid entries";
    else if (!cJSON_IsObject(emb) || !cJSON_IsString(spec) || !joule_json_u64(emb, "dim", &dim) || dim < 1 || dim > 65536)
        why = "missing or invalid embedder";
    else if (!cJSON_IsObject(idx) || !cJSON_IsString(fac) || strlen(fac->valuestring) >= sizeof db->factory)
        why = "missing or invalid index";
    else if (!cJSON_IsObject(files) || !get_file(files, JOULE_DB_CHUNKS, &db->chunks_bytes, &db->chunks_crc))
        why = "missing or invalid files";
    else if (strncmp(spec->valuestring, "model:", 6) == 0 &&
             (!joule_json_u64(emb, "checkpoint_bytes", ckpt_bytes) || !joule_json_crc(emb, "checkpoint_crc32", ckpt_crc)))
        why = "model embedder without checkpoint_bytes/checkpoint_crc32";
    int rc = why ? JOULE_OK : joule_db_shards_parse(&db->shards, j, db->n, path);
    if (!why && !rc) {
        db->m = (int)m;
        db->dim = (int)dim;
        snprintf(db->factory, sizeof db->factory, "%s", fac->valuestring);
        *spec_out = strdup(spec->valuestring);
        if (!*spec_out) why = "out of memory";
    }
    cJSON_Delete(j);
    return why ? joule_fail(JOULE_ERR_FORMAT, "%s: %s", path, why) : rc;
}

static int check_checkpoint(const char *spec, uint64_t bytes, uint32_t crc) {
    const char *path = spec + 6;
    uint32_t got;
    uint64_t size;
    int rc = joule_file_crc32(path, &got, &size);
    if (rc) return rc;
    if (size != bytes || got != crc)
        return joule_fail(JOULE_ERR_FORMAT, "%s: the embedder checkpoint changed since the database was built", path);
    return JOULE_OK;
}

/* The embedder the manifest names; its errors name the manifest, where the spec came from. */
static int open_embedder(joule_retro_db *db, const char *mpath, const char *spec, uint64_t ckpt_bytes,
                         uint32_t ckpt_crc) {
    int rc = strncmp(spec, "model:", 6) == 0 ? check_checkpoint(spec, ckpt_bytes, ckpt_crc) : JOULE_OK;
    if (!rc) rc = joule_embedder_create(&db->emb, spec);
    if (rc) rc = joule_fail(rc, "%s: embedder '%s': %s", mpath, joule_q(spec), joule_last_error());
    return rc;
}

int joule_db_open(joule_retro_db **out, const char *dir) {
    *out = NULL;
    joule_retro_db *db = calloc(1, sizeof *db);
    if (!db) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    char *mpath = joule_path_join(dir, JOULE_DB_MANIFEST);
    char *cpath = joule_path_join(dir, JOULE_DB_CHUNKS);
    char *spec = NULL;
    uint64_t ckpt_bytes = 0;
    uint32_t ckpt_crc = 0;
    int rc = JOULE_OK;
    db->dir = strdup(dir);
    if (!mpath || !cpath || !db->dir) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    struct stat st;
    if (!rc && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = joule_fail(JOULE_ERR_IO, "%s: not a database directory (missing)", dir);
    if (!rc) rc = joule_read_text(mpath, MANIFEST_MAX, &db->manifest);
    if (!rc) rc = parse_manifest(db, mpath, &spec, &ckpt_bytes, &ckpt_crc);
    if (!rc) joule_hash_hex(db->manifest, strlen(db->manifest), db->id);
    /* the index files are read whole anyway, so their checksums cost little; chunks.bin is
     * mapped lazily and only its header and size are checked here (joule_db_verify does the rest) */
    if (!rc) rc = joule_db_shards_check(&db->shards, dir, true);
    if (!rc) rc = joule_db_check_file(cpath, db->chunks_bytes, db->chunks_crc, false);
    if (!rc) rc = joule_chunk_store_open(&db->store, cpath, db->m, db->n);
    if (!rc) rc = open_embedder(db, mpath, spec, ckpt_bytes, ckpt_crc);
    if (!rc && joule_embedder_dim(db->emb) != db->dim)
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: embedder %s gives dimension %d, the manifest says %d", mpath, joule_q(spec),
                        joule_embedder_dim(db->emb), db->dim);
    if (!rc) rc = joule_db_shards_open(&db->shards, dir, db->dim);
    if (!rc) db->index = db->shards.s[0].index;
    if (!rc && faiss_ParameterSpace_new(&db->ps) != 0) rc = joule_faiss_fail(JOULE_ERR_RUNTIME, "ParameterSpace");
    free(mpath);
    free(cpath);
    free(spec);
    if (rc) {
        joule_db_close(db);
        return rc;
    }
    *out = db;
    return JOULE_OK;
}

void joule_db_close(joule_retro_db *db) {
    if (!db) return;
    joule_db_shards_close(&db->shards);
    if (db->ps) faiss_ParameterSpace_free(db->ps);
    joule_chunk_store_close(&db->store);
    joule_embedder_free(db->emb);
    free(db->e);
    free(db->q);
    free(db->r_ids);
    free(db->r_dist);
    free(db->pending);
    free(db->excl);
    free(db->n_excl);
    free(db->manifest);
    free(db->dir);
    free(db);
}

int joule_db_set_params(joule_retro_db *db, const char *params) {
    if (!params || !*params) return JOULE_OK;
    return joule_db_shards_set_params(&db->shards, db->ps, params, db->dir, db->factory);
}

int joule_retro_db_search_cost(const joule_retro_db *db, joule_search_cost *out) {
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(db->index);
    const int nprobe = ivf ? (int)faiss_IndexIVF_nprobe(ivf) : 0;
    /* the C API reads no HNSW parameter: the manifest's stored default */
    const char *es = db->manifest ? strstr(db->manifest, "efSearch=") : NULL;
    const int ef_search = es ? atoi(es + 9) : 0;
    return joule_retro_search_cost(joule_db_factory(db), joule_db_dim(db), joule_db_size(db), nprobe, ef_search, out);
}

/* ---- search ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return JOULE_OK;
    void *q = realloc(*p, need * elem);
    if (!q) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    *p = q;
    *cap = need;
    return JOULE_OK;
}

static int grow_results(joule_retro_db *db, size_t need) {
    if (need <= db->r_cap) return JOULE_OK;
    size_t cap = db->r_cap;
    int rc = grow((void **)&db->r_ids, &cap, need, sizeof(int64_t));
    cap = db->r_cap;
    if (!rc) rc = grow((void **)&db->r_dist, &cap, need, sizeof(float));
    if (!rc) db->r_cap = need;
    return rc;
}

static int grow_pending(joule_retro_db *db, size_t need) {
    if (need <= db->p_cap) return JOULE_OK;
    size_t c1 = db->p_cap, c2 = db->p_cap, c3 = db->p_cap;
    int rc = grow((void **)&db->pending, &c1, need, sizeof(int));
    if (!rc) rc = grow((void **)&db->excl, &c2, need, sizeof(uint64_t *));
    if (!rc) rc = grow((void **)&db->n_excl, &c3, need, sizeof(int));
    if (!rc) db->p_cap = need;
    return rc;
}

static bool excluded(uint64_t doc, const uint64_t *list, int n) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (list[mid] < doc) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && list[lo] == doc;
}

/* Every search of the database goes through here: one index or all shards, results in
 * (distance, id) order. */
static int faiss_search(joule_retro_db *db, const float *q, int n, int64_t kk, float *dist, int64_t *ids) {
    return joule_db_shards_search(&db->shards, db->dir, q, n, kk, dist, ids);
}

/* Exclusion rule: fetch k' = 2k + 16 candidates, keep those not excluded; a query left
 * with fewer than k whose k' results were all valid ids is searched again with k' four
 * times larger (capped at the database size), until it has k or the index is exhausted. */
int joule_db_search_vectors(joule_retro_db *db, const float *q, int n, int k, const uint64_t *const *excl,
                            const int *n_excl, int64_t *ids, float *dist) {
    if (n < 0 || k < 1) return joule_fail(JOULE_ERR_ARG, "search: need n >= 0 and k >= 1 (got n=%d, k=%d)", n, k);
    if (n == 0) return JOULE_OK;
    const int64_t N = (int64_t)db->n;
    if (!excl) {
        int rc = grow_results(db, (size_t)n * k);
        if (rc) return rc;
        if ((rc = faiss_search(db, q, n, k, db->r_dist, db->r_ids))) return rc;
        if (ids) memcpy(ids, db->r_ids, (size_t)n * k * sizeof *ids);
        if (dist)
            for (size_t i = 0; i < (size_t)n * k; i++) dist[i] = db->r_ids[i] < 0 ? INFINITY : db->r_dist[i];
        return JOULE_OK;
    }
    int rc = grow_pending(db, (size_t)n);
    if (rc) return rc;
    int n_pend = n;
    for (int i = 0; i < n; i++) db->pending[i] = i;
    int64_t kk = 2 * (int64_t)k + 16;
    if (kk > N) kk = N;
    const size_t D = (size_t)db->dim;
    for (;;) {
        const float *qp = q;
        if (n_pend != n) {
            if ((rc = grow((void **)&db->q, &db->q_cap, (size_t)n_pend * D, sizeof(float)))) return rc;
            for (int p = 0; p < n_pend; p++)
                memcpy(db->q + (size_t)p * D, q + (size_t)db->pending[p] * D, D * sizeof(float));
            qp = db->q;
        }
        if ((rc = grow_results(db, (size_t)n_pend * (size_t)kk))) return rc;
        if ((rc = faiss_search(db, qp, n_pend, kk, db->r_dist, db->r_ids))) return rc;
        int still = 0;
        for (int p = 0; p < n_pend; p++) {
            int i = db->pending[p];
            const int64_t *ri = db->r_ids + (size_t)p * kk;
            const float *rd = db->r_dist + (size_t)p * kk;
            int kept = 0;
            bool full = true;
            for (int64_t j = 0; j < kk && kept < k; j++) {
                if (ri[j] < 0 || ri[j] >= N) {
                    full = false;
                    break;
                }
                uint64_t doc = joule_chunk_store_get(&db->store, (uint64_t)ri[j])->doc_id;
                if (excl[i] && n_excl[i] > 0 && excluded(doc, excl[i], n_excl[i])) continue;
                if (ids) ids[(size_t)i * k + kept] = ri[j];
                if (dist) dist[(size_t)i * k + kept] = rd[j];
                kept++;
            }
            if (kept < k && full && kk < N) {
                db->pending[still++] = i;
                continue;
            }
            for (int j = kept; j < k; j++) {
                if (ids) ids[(size_t)i * k + j] = -1;
                if (dist) dist[(size_t)i * k + j] = INFINITY;
            }
        }
        if (still == 0) return JOULE_OK;
        n_pend = still;
        kk = kk * 4 > N ? N : kk * 4;
    }
}

static int embed_queries(joule_retro_db *db, const int32_t *chunks, int n) {
    int rc = grow((void **)&db->e, &db->e_cap, (size_t)n * (size_t)db->dim, sizeof(float));
    if (rc) return rc;
    return joule_embedder_embed(db->emb, chunks, n, db->m, db->e);
}

int joule_db_search(joule_retro_db *db, const int32_t *chunks, int n, int k, const uint64_t *exclude_doc,
                    int64_t *ids, float *dist) {
    if (n < 0 || k < 1) return joule_fail(JOULE_ERR_ARG, "search: need n >= 0 and k >= 1 (got n=%d, k=%d)", n, k);
    int rc = embed_queries(db, chunks, n);
    if (rc || !exclude_doc) return rc ? rc : joule_db_search_vectors(db, db->e, n, k, NULL, NULL, ids, dist);
    if ((rc = grow_pending(db, (size_t)n))) return rc;
    for (int i = 0; i < n; i++) {
        db->excl[i] = exclude_doc + i;
        db->n_excl[i] = exclude_doc[i] != UINT64_MAX;
    }
    return joule_db_search_vectors(db, db->e, n, k, db->excl, db->n_excl, ids, dist);
}

int joule_db_search_ex(joule_retro_db *db, const int32_t *chunks, int n, int k, const uint64_t *const *excl,
                       const int *n_excl, int64_t *ids, float *dist) {
    int rc = embed_queries(db, chunks, n);
    return rc ? rc : joule_db_search_vectors(db, db->e, n, k, excl, n_excl, ids, dist);
}

int joule_db_entry(const joule_retro_db *db, int64_t id, int32_t *tokens, uint64_t *doc_id) {
    if (id < 0 || (uint64_t)id >= db->n)
        return joule_fail(JOULE_ERR_ARG, "%s: entry %lld out of range [0, %llu)", db->dir, (long long)id,
                          (unsigned long long)db->n);
    const joule_chunk_record *r = joule_chunk_store_get(&db->store, (uint64_t)id);
    if (tokens) joule_chunk_record_tokens(r, db->m, tokens);
    if (doc_id) *doc_id = r->doc_id;
    return JOULE_OK;
}

/* ---- verify ---- */

static bool same_chunk(const joule_chunk_record *a, const joule_chunk_record *b, int m) {
    return a->chunk_len == b->chunk_len && memcmp(a->tokens, b->tokens, (size_t)m) == 0;
}

int joule_db_verify(joule_retro_db *db, double *self_recall) {
    char *cpath = joule_path_join(db->dir, JOULE_DB_CHUNKS);
    int rc = !cpath ? joule_fail(JOULE_ERR_NOMEM, "out of memory") : JOULE_OK;
    if (!rc) rc = joule_db_shards_check(&db->shards, db->dir, true);
    if (!rc) rc = joule_db_check_file(cpath, db->chunks_bytes, db->chunks_crc, true);
    if (!rc) rc = joule_chunk_store_check(&db->store, cpath);
    int ns = db->n < VERIFY_SAMPLE ? (int)db->n : VERIFY_SAMPLE;
    int k = VERIFY_K < (int)db->n ? VERIFY_K : (int)db->n;
    int32_t *chunks = rc ? NULL : malloc((size_t)ns * 2 * db->m * sizeof *chunks);
    int64_t *sid = rc ? NULL : malloc((size_t)ns * sizeof *sid);
    int64_t *ids = rc ? NULL : malloc((size_t)ns * k * sizeof *ids);
    if (!rc && (!chunks || !sid || !ids)) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) {
        joule_rng r;
        joule_rng_seed(&r, 0x7665726966ull);
        int32_t *tmp = chunks + (size_t)ns * db->m; /* second half: one entry's 2m tokens */
        for (int s = 0; s < ns; s++) {
            sid[s] = ns == (int)db->n ? s : (int64_t)joule_rng_below(&r, db->n);
            joule_chunk_record_tokens(joule_chunk_store_get(&db->store, (uint64_t)sid[s]), db->m, tmp);
            memcpy(chunks + (size_t)s * db->m, tmp, (size_t)db->m * sizeof *tmp);
        }
        rc = joule_db_search(db, chunks, ns, k, NULL, ids, NULL);
    }
    if (!rc) {
        int found = 0;
        for (int s = 0; s < ns; s++) {
            const joule_chunk_record *me = joule_chunk_store_get(&db->store, (uint64_t)sid[s]);
            for (int j = 0; j < k; j++) {
                int64_t id = ids[(size_t)s * k + j];
                if (id == sid[s] || (id >= 0 && same_chunk(me, joule_chunk_store_get(&db->store, (uint64_t)id), db->m))) {
                    found++;
                    break;
                }
            }
        }
        double rec = (double)found / ns;
        if (self_recall) *self_recall = rec;
        bool exact = strcmp(db->factory, "Flat") == 0;
        if ((exact && found < ns) || rec < 0.5)
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: only %d of %d sampled entries find themselves in the first %d "
                            "results: the index does not match the chunk store", db->dir, found, ns, k);
    }
    free(chunks);
    free(sid);
    free(ids);
    free(cpath);
    return rc;
}

/* ---- recall ---- */

int joule_db_recall(joule_retro_db *db, joule_retro_db *exact, const int32_t *chunks, int n, int k,
                    double *recall) {
    if (db->m != exact->m || db->n != exact->n || db->chunks_crc != exact->chunks_crc ||
        strcmp(joule_embedder_spec(db->emb), joule_embedder_spec(exact->emb)) != 0)
        return joule_fail(JOULE_ERR_ARG, "%s and %s do not hold the same entries and embedder: recall is undefined",
                          db->dir, exact->dir);
    if (n < 1 || k < 1) return joule_fail(JOULE_ERR_ARG, "recall: need at least one query and k >= 1");
    int64_t *a = malloc((size_t)n * k * sizeof *a), *b = malloc((size_t)n * k * sizeof *b);
    int rc = !a || !b ? joule_fail(JOULE_ERR_NOMEM, "out of memory") : JOULE_OK;
    if (!rc) rc = joule_db_search(db, chunks, n, k, NULL, a, NULL);
    if (!rc) rc = joule_db_search(exact, chunks, n, k, NULL, b, NULL);
    if (!rc) {
        uint64_t hit = 0, total = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < k; j++) {
                int64_t want = b[(size_t)i * k + j];
                if (want < 0) continue;
                total++;
                for (int t = 0; t < k; t++)
                    if (a[(size_t)i * k + t] == want) {
                        hit++;
                        break;
                    }
            }
        *recall = total ? (double)hit / (double)total : 1.0;
    }
    free(a);
    free(b);
    return rc;
}

int joule_db_sample_queries(const char *tokens_path, int m, int n, uint64_t seed, int32_t *chunks) {
    joule_tokens t;
    int rc = joule_tokens_open(&t, tokens_path);
    if (rc) return rc;
    uint64_t nc = t.n_tokens / (uint64_t)(m > 0 ? m : 1);
    if (m < 1 || nc == 0) {
        joule_tokens_close(&t);
        return joule_fail(JOULE_ERR_ARG, "%s: fewer than %d tokens: no query chunk", tokens_path, m);
    }
    joule_rng r;
    joule_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        uint64_t c = joule_rng_below(&r, nc);
        for (int j = 0; j < m; j++) chunks[(size_t)i * m + j] = t.tok[c * (uint64_t)m + (uint64_t)j];
    }
    joule_tokens_close(&t);
    return JOULE_OK;
}

/* ---- small helpers shared inside retro/ ---- */

void joule_hash_hex(const void *data, size_t len, char hex[17]) {
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
}

char *joule_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", dir, name);
    return s;
}
