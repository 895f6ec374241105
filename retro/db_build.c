/* retro/db_build.c — building a retrieval database: count and cut the corpus into entries,
 * train the index on a seeded sample when it needs training, then stream batches (write the
 * records, embed, add), with resume points, into <out>.partial/ renamed to <out> at the end.
 *
 * Resume points and the end of a build (retro/db_resume.c) are arranged so that a kill at
 * any instant leaves a folder --resume finishes: --resume truncates chunks.bin to the last
 * point, reads that point's index snapshot and carries on. Entries are added in the same
 * order either way, so for Flat and IVF indexes the result is byte-identical to an
 * uninterrupted build (HNSW's graph depends on insertion batches and threads). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "db_build.h"
#include "db_shards.h"

#define FLAT_BELOW 50000
#define MAX_TRAIN 262144 /* training vectors at most (FAISS uses at most 256 per centroid) */
/* A resume point every CHECKPOINT_BATCHES batches or CHECKPOINT_SECONDS, whichever comes
 * first: 65536 entries at the default batch, so even a short build loses little. */
#define CHECKPOINT_BATCHES 16
#define CHECKPOINT_SECONDS 60.0
/* Search defaults stored in the index. FAISS's own (nprobe=1, efSearch=16) measured
 * recall@10 against Flat of 0.16 (IVF) and 0.31-0.40 (HNSW) on 60k-200k entries of the
 * default corpus; nprobe=16 gave 0.62 (IVF1024, 60k) and efSearch=64 0.44-0.71, at a few
 * times the cost. Queries can still set their own. */
#define DEFAULT_NPROBE 16
#define DEFAULT_EF_SEARCH 64

void joule_db_build_opts_init(joule_db_build_opts *o) {
    memset(o, 0, sizeof *o);
    o->chunk = 64;
    o->embedder = "ngram";
    o->seed = 1;
    o->batch = 4096;
}

void joule_db_ivf_index(uint64_t n, char *buf, size_t n_buf) {
    double want = 4.0 * sqrt((double)n);
    uint64_t nlist = 1;
    while ((double)nlist * 1.5 < want) nlist *= 2; /* power of two nearest want (geometrically) */
    snprintf(buf, n_buf, "IVF%llu,Flat", (unsigned long long)nlist);
}

void joule_db_default_index(uint64_t n, char *buf, size_t n_buf) {
    if (n < FLAT_BELOW) snprintf(buf, n_buf, "Flat");
    else joule_db_ivf_index(n, buf, n_buf);
}

int db_fail_errno(const char *path, const char *what) {
    return joule_fail(JOULE_ERR_IO, "%s: %s failed: %s", path, what, strerror(errno));
}

int db_fsync_path(const char *path, bool dir) {
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return db_fail_errno(path, "open");
    int rc = fsync(fd) != 0 ? db_fail_errno(path, "fsync") : JOULE_OK;
    close(fd);
    return rc;
}

static int describe_sources(build *b) {
    b->sources = cJSON_CreateArray();
    if (!b->sources) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int i = 0; i < b->o->n_sources; i++) {
        char abs[PATH_MAX];
        const char *p = b->o->sources[i];
        if (!realpath(p, abs)) return joule_fail(JOULE_ERR_IO, "%s: %s", p, strerror(errno));
        uint32_t crc;
        int rc = joule_file_crc32(p, &crc, NULL);
        if (rc) return rc;
        char hex[9];
        snprintf(hex, sizeof hex, "%08x", crc);
        cJSON *s = cJSON_CreateObject();
        if (!s) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        cJSON_AddItemToArray(b->sources, s);
        cJSON_AddStringToObject(s, "path", abs);
        cJSON_AddNumberToObject(s, "tokens", (double)b->ck.files[i].n_tokens);
        cJSON_AddNumberToObject(s, "documents", (double)b->ck.files[i].n_docs);
        cJSON_AddStringToObject(s, "crc32", hex);
    }
    return JOULE_OK;
}

/* Entries (capped by max_chunks) and the documents they come from. */
static void count_entries(build *b) {
    uint64_t cap = b->o->max_chunks ? b->o->max_chunks : UINT64_MAX, n = 0, docs = 0;
    const uint64_t m = (uint64_t)b->o->chunk;
    for (int i = 0; i < b->ck.n_files && n < cap; i++) {
        const joule_tokens *t = &b->ck.files[i];
        for (uint64_t d = 0; d < t->n_docs && n < cap; d++) {
            uint64_t c = (t->doc_offsets[d + 1] - t->doc_offsets[d] + m - 1) / m;
            n += c < cap - n ? c : cap - n;
            docs++;
        }
    }
    b->n = n;
    b->docs = docs;
}

static int make_params(build *b) {
    cJSON *p = cJSON_CreateObject();
    if (!p) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    cJSON_AddNumberToObject(p, "chunk", b->o->chunk);
    cJSON_AddStringToObject(p, "embedder", joule_embedder_spec(b->emb));
    cJSON_AddStringToObject(p, "factory", b->factory);
    cJSON_AddNumberToObject(p, "seed", (double)b->o->seed);
    cJSON_AddNumberToObject(p, "entries", (double)b->n);
    cJSON_AddItemReferenceToObject(p, "sources", b->sources);
    if (b->o->shards > 1) cJSON_AddNumberToObject(p, "shards", b->o->shards); /* absent: one index, as before */
    b->params = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    return b->params ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
}

static bool report(build *b, const char *phase, uint64_t done, uint64_t total) {
    return b->o->progress ? b->o->progress(b->o->ctx, phase, done, total) : true;
}

/* Chunk tokens of the records in b->recs (m each, PAD past the chunk). */
static void records_to_tokens(build *b, int count) {
    const int m = b->o->chunk;
    for (int i = 0; i < count; i++) {
        const joule_chunk_record *r = (const joule_chunk_record *)(b->recs + (size_t)i * b->rec);
        for (int j = 0; j < m; j++) b->toks[(size_t)i * m + j] = (uint32_t)j < r->chunk_len ? r->tokens[j] : JOULE_DB_PAD;
    }
}

int db_embed_batch(build *b, int count, float *out) {
    double t0 = joule_now();
    records_to_tokens(b, count);
    int rc = joule_embedder_embed(b->emb, b->toks, count, b->o->chunk, out);
    b->embed_s += joule_now() - t0;
    return rc;
}

/* Trains the index on a seeded uniform sample of the entries (selection sampling: one pass,
 * exactly `want` entries, in order). */
static int train_index(build *b) {
    uint64_t want = b->n;
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(b->index);
    uint64_t need = ivf ? 64 * (uint64_t)faiss_IndexIVF_nlist(ivf) : 0;
    if (need < 16384) need = 16384; /* PQ and SQ codebooks: 256 centroids each */
    if (want > need) want = need;
    if (want > MAX_TRAIN) want = MAX_TRAIN;
    const int dim = joule_embedder_dim(b->emb), B = b->o->batch;
    float *x = malloc((size_t)want * dim * sizeof *x);
    if (!x) return joule_fail(JOULE_ERR_NOMEM, "out of memory (training sample of %llu vectors)", (unsigned long long)want);
    joule_rng r;
    joule_rng_seed(&r, b->o->seed);
    uint64_t got = 0;
    int in_batch = 0, rc = JOULE_OK;
    joule_chunk_record *rec = (joule_chunk_record *)(b->recs + (size_t)B * b->rec); /* spare slot */
    for (uint64_t i = 0; i < b->n && got < want && !rc; i++) {
        if (!joule_chunker_next(&b->ck, rec)) break;
        if (joule_rng_below(&r, b->n - i) >= want - got - (uint64_t)in_batch) continue;
        memcpy(b->recs + (size_t)in_batch * b->rec, rec, b->rec);
        if (++in_batch == B || got + (uint64_t)in_batch == want) {
            rc = db_embed_batch(b, in_batch, x + got * dim);
            got += (uint64_t)in_batch;
            in_batch = 0;
            if (!report(b, "train", got, want)) rc = joule_fail(JOULE_ERR_RUNTIME, "%s: interrupted while sampling", b->partial);
        }
    }
    if (!rc) {
        double t0 = joule_now();
        if (faiss_Index_train(b->index, (int64_t)got, x) != 0) rc = joule_faiss_fail(JOULE_ERR_RUNTIME, "training the index");
        b->index_s += joule_now() - t0;
        b->trained_on = got;
    }
    free(x);
    joule_chunker_close(&b->ck);
    if (!rc) rc = joule_chunker_open(&b->ck, b->o->sources, b->o->n_sources, b->o->chunk);
    return rc;
}

int db_start_fresh(build *b) {
    /* the index first: a bad factory string then leaves nothing behind */
    if (faiss_index_factory(&b->index, joule_embedder_dim(b->emb), b->factory, METRIC_L2) != 0) {
        char what[300];
        snprintf(what, sizeof what, "index '%s'", b->factory);
        return joule_faiss_fail(JOULE_ERR_ARG, what);
    }
    int rc = joule_db_partial_remove(b->partial);
    if (rc) return rc;
    if (mkdir(b->partial, 0777) != 0) return db_fail_errno(b->partial, "mkdir");
    b->created = true;
    if (!faiss_Index_is_trained(b->index) && (rc = train_index(b))) return rc;
    b->fd = open(b->chunks_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (b->fd < 0) return db_fail_errno(b->chunks_path, "open");
    uint8_t hdr[JOULE_CHUNKS_HEADER];
    joule_chunk_store_header(hdr, b->o->chunk, b->n);
    if (write(b->fd, hdr, sizeof hdr) != (ssize_t)sizeof hdr) return db_fail_errno(b->chunks_path, "write");
    b->done = 0;
    return db_checkpoint(b);
}

static int add_all(build *b) {
    const int B = b->o->batch, every = b->o->checkpoint_every > 0 ? b->o->checkpoint_every : CHECKPOINT_BATCHES;
    int batches = 0;
    double last = joule_now();
    while (b->done < b->n) {
        int count = 0;
        while (count < B && b->done + (uint64_t)count < b->n &&
               joule_chunker_next(&b->ck, (joule_chunk_record *)(b->recs + (size_t)count * b->rec)))
            count++;
        if (count == 0) return joule_fail(JOULE_ERR_RUNTIME, "%s: the corpus changed while building", b->partial);
        size_t bytes = (size_t)count * b->rec;
        if (write(b->fd, b->recs, bytes) != (ssize_t)bytes) return db_fail_errno(b->chunks_path, "write");
        int rc = db_embed_batch(b, count, b->vecs);
        if (rc) return rc;
        double t0 = joule_now();
        if (faiss_Index_add(b->index, count, b->vecs) != 0) return joule_faiss_fail(JOULE_ERR_RUNTIME, "adding to the index");
        b->index_s += joule_now() - t0;
        b->done += (uint64_t)count;
        batches++;
        bool go_on = report(b, "add", b->done, b->n);
        bool due = batches >= every || joule_now() - last >= CHECKPOINT_SECONDS;
        if (b->done < b->n && (due || !go_on)) {
            if ((rc = db_checkpoint(b))) return rc;
            last = joule_now();
            batches = 0;
        }
        if (!go_on && b->done < b->n)
            return joule_fail(JOULE_ERR_RUNTIME, "%s: interrupted after %llu of %llu entries; run again with --resume "
                              "to continue", b->partial, (unsigned long long)b->done, (unsigned long long)b->n);
    }
    return JOULE_OK;
}

static int add_file_entry(cJSON *files, const char *name, const char *path) {
    uint32_t crc;
    uint64_t size;
    int rc = joule_file_crc32(path, &crc, &size);
    if (rc) return rc;
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", crc);
    cJSON *f = cJSON_AddObjectToObject(files, name);
    if (!f) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    cJSON_AddNumberToObject(f, "bytes", (double)size);
    cJSON_AddStringToObject(f, "crc32", hex);
    return JOULE_OK;
}

static int write_manifest(build *b) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    cJSON_AddStringToObject(j, "format", "joule-retro-db");
    /* format 1 when unsharded: such a manifest (and so its id) stays what it was */
    cJSON_AddNumberToObject(j, "format_version", b->o->shards > 1 ? JOULE_DB_FORMAT_VERSION : 1);
    cJSON_AddNumberToObject(j, "chunk", b->o->chunk);
    cJSON_AddStringToObject(j, "tokenizer", "bytes");
    cJSON_AddNumberToObject(j, "vocab_size", 256);
    cJSON_AddNumberToObject(j, "pad_token", JOULE_DB_PAD);
    cJSON *e = cJSON_AddObjectToObject(j, "embedder");
    const char *spec = joule_embedder_spec(b->emb);
    cJSON_AddStringToObject(e, "spec", spec);
    cJSON_AddNumberToObject(e, "dim", joule_embedder_dim(b->emb));
    int rc = JOULE_OK;
    if (strncmp(spec, "model:", 6) == 0) {
        uint32_t crc;
        uint64_t size;
        rc = joule_file_crc32(spec + 6, &crc, &size);
        char hex[9];
        snprintf(hex, sizeof hex, "%08x", crc);
        cJSON_AddNumberToObject(e, "checkpoint_bytes", (double)size);
        cJSON_AddStringToObject(e, "checkpoint_crc32", hex);
    } else {
        cJSON_AddStringToObject(e, "kind", "signed hashed byte n-grams, n=1..4, L2-normalised");
    }
    cJSON *ix = cJSON_AddObjectToObject(j, "index");
    cJSON_AddStringToObject(ix, "factory", b->factory);
    cJSON_AddStringToObject(ix, "metric", "L2");
    cJSON_AddStringToObject(ix, "default_params", b->default_params);
    cJSON_AddNumberToObject(ix, "trained_on", (double)b->trained_on);
    cJSON_AddNumberToObject(ix, "seed", (double)b->o->seed);
    cJSON_AddNumberToObject(j, "entries", (double)b->n);
    cJSON_AddNumberToObject(j, "documents", (double)b->docs);
    cJSON_AddItemReferenceToObject(j, "sources", b->sources);
    cJSON *files = cJSON_AddObjectToObject(j, "files");
    if (!rc && b->o->shards <= 1) rc = add_file_entry(files, JOULE_DB_INDEX, b->index_path);
    if (!rc) rc = add_file_entry(files, JOULE_DB_CHUNKS, b->chunks_path);
    if (!rc && b->o->shards > 1) rc = db_shards_manifest(b, j);
    cJSON_AddStringToObject(j, "created_by", "joule " JOULE_VERSION_STRING);
    char *text = rc ? NULL : cJSON_Print(j);
    cJSON_Delete(j);
    if (!rc && !text) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = joule_write_file_atomic(b->manifest_path, text, strlen(text));
    free(text);
    return rc;
}

static void set_default_search(build *b) {
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(b->index);
    if (ivf) {
        size_t nlist = faiss_IndexIVF_nlist(ivf), np = nlist < DEFAULT_NPROBE ? nlist : DEFAULT_NPROBE;
        faiss_IndexIVF_set_nprobe(ivf, np);
        snprintf(b->default_params, sizeof b->default_params, "nprobe=%zu", np);
        return;
    }
    FaissParameterSpace *ps = NULL;
    char want[32];
    snprintf(want, sizeof want, "efSearch=%d", DEFAULT_EF_SEARCH);
    /* any index with an HNSW part takes efSearch; others refuse it and keep FAISS's defaults */
    if (strstr(b->factory, "HNSW") && faiss_ParameterSpace_new(&ps) == 0 &&
        faiss_ParameterSpace_set_index_parameters(ps, b->index, want) == 0)
        snprintf(b->default_params, sizeof b->default_params, "%s", want);
    if (ps) faiss_ParameterSpace_free(ps);
}

static int finish(build *b) {
    if (fsync(b->fd) != 0) return db_fail_errno(b->chunks_path, "fsync");
    if (close(b->fd) != 0) {
        b->fd = -1;
        return db_fail_errno(b->chunks_path, "close");
    }
    b->fd = -1;
    set_default_search(b);
    if (b->o->shards > 1) {
        int rc = db_write_shards(b);
        return rc ? rc : write_manifest(b);
    }
    double t0 = joule_now();
    int rc = joule_faiss_write(b->index, b->index_path);
    b->index_s += joule_now() - t0;
    if (rc) {
        unlink(b->index_path); /* a full disk: resume writes it again */
        return rc;
    }
    return write_manifest(b); /* atomic, and last: its presence means complete */
}

static int check_opts(const joule_db_build_opts *o) {
    if (!o->out_dir || !*o->out_dir) return joule_fail(JOULE_ERR_ARG, "no output directory");
    if (o->n_sources < 1) return joule_fail(JOULE_ERR_ARG, "no token files to build from");
    if (o->chunk < 1 || o->chunk > JOULE_DB_MAX_CHUNK)
        return joule_fail(JOULE_ERR_ARG, "chunk size %d not in [1, %d]", o->chunk, JOULE_DB_MAX_CHUNK);
    if (o->batch < 1 || o->batch > (1 << 20)) return joule_fail(JOULE_ERR_ARG, "batch %d not in [1, 2^20]", o->batch);
    if (o->checkpoint_every < 0) return joule_fail(JOULE_ERR_ARG, "checkpoint_every must be >= 0");
    if (o->shards < 0 || o->shards > JOULE_DB_MAX_SHARDS)
        return joule_fail(JOULE_ERR_ARG, "shards %d not in [1, %d]", o->shards, JOULE_DB_MAX_SHARDS);
    struct stat st;
    if (!o->resume && stat(o->out_dir, &st) == 0) /* --resume decides for itself (db_resume) */
        return joule_fail(JOULE_ERR_ARG, "%s: already exists; remove it or choose another output", o->out_dir);
    return JOULE_OK;
}

/* Paths, the corpus walk, the embedder, batch buffers and the parameters of a build. */
static int prepare(build *b) {
    const joule_db_build_opts *o = b->o;
    size_t plen = strlen(o->out_dir) + 16;
    if (!(b->partial = malloc(plen))) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    snprintf(b->partial, plen, "%s.partial", o->out_dir);
    b->chunks_path = joule_path_join(b->partial, JOULE_DB_CHUNKS);
    b->index_path = joule_path_join(b->partial, JOULE_DB_INDEX);
    b->state_path = joule_path_join(b->partial, JOULE_DB_STATE);
    b->manifest_path = joule_path_join(b->partial, JOULE_DB_MANIFEST);
    if (!b->chunks_path || !b->index_path || !b->state_path || !b->manifest_path)
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = joule_chunker_open(&b->ck, o->sources, o->n_sources, o->chunk);
    if (rc) return rc;
    count_entries(b);
    if (b->n == 0) return joule_fail(JOULE_ERR_ARG, "%s: no tokens to build from", o->sources[0]);
    if ((uint64_t)o->shards > b->n)
        return joule_fail(JOULE_ERR_ARG, "%d shards for %llu entries: each shard needs at least one", o->shards,
                          (unsigned long long)b->n);
    if ((rc = joule_embedder_create(&b->emb, o->embedder))) return rc;
    if (o->index && *o->index) snprintf(b->factory, sizeof b->factory, "%s", o->index);
    else joule_db_default_index(b->n, b->factory, sizeof b->factory);
    b->rec = joule_chunk_record_bytes(o->chunk);
    b->recs = calloc((size_t)o->batch + 1, b->rec);
    b->toks = malloc((size_t)o->batch * o->chunk * sizeof *b->toks);
    b->vecs = malloc((size_t)o->batch * joule_embedder_dim(b->emb) * sizeof *b->vecs);
    if (!b->recs || !b->toks || !b->vecs) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if ((rc = describe_sources(b))) return rc;
    return make_params(b);
}

static void release(build *b) {
    if (b->fd >= 0) close(b->fd);
    if (b->index) faiss_Index_free(b->index);
    joule_chunker_close(&b->ck);
    joule_embedder_free(b->emb);
    cJSON_Delete(b->sources);
    free(b->params);
    free(b->recs);
    free(b->toks);
    free(b->vecs);
    free(b->partial);
    free(b->chunks_path);
    free(b->index_path);
    free(b->state_path);
    free(b->manifest_path);
}

int joule_db_build(const joule_db_build_opts *o, double *embed_s, double *index_s) {
    int rc = check_opts(o);
    if (rc) return rc;
    build b = {.o = o, .fd = -1};
    if (!(rc = prepare(&b))) rc = o->resume ? db_resume(&b) : db_start_fresh(&b);
    if (!rc && !b.complete && !(rc = add_all(&b))) rc = finish(&b);
    if (!rc && !b.built) rc = db_commit(&b);
    if (rc && b.created && !b.have_point) {
        /* nothing to resume from: leave no <out>.partial behind (the first error stands) */
        char why[1024];
        snprintf(why, sizeof why, "%s", joule_last_error());
        if (b.fd >= 0) close(b.fd);
        b.fd = -1;
        joule_db_partial_remove(b.partial);
        joule_fail(rc, "%s", why);
    }
    if (embed_s) *embed_s = b.embed_s;
    if (index_s) *index_s = b.index_s;
    release(&b);
    return rc;
}
