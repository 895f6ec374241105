/* Tests for RETRO retrieval databases: chunking, exact search against a brute force written
 * here, same-document exclusion (including the re-search path), round trip, refusal of
 * corrupted files, interrupted builds and resume, neighbour files, the model embedder, and
 * the `joule db` commands end to end. Each test builds tiny corpora in its own temp dir;
 * FAISS and OpenMP run only in Check's forked children. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/model.h"
#include "joule/retro_db.h"
#include "testutil.h"

static void setup(void) { tu_make_dir("joule_retrodb_"); }

/* A token file of n_docs documents with the given lengths (without the EOD) and ids
 * first_id, first_id + 2, ... (gaps like a train split). Text: words from a small vocabulary,
 * so n-gram embeddings have structure; `dup` documents repeat one sentence throughout. */
static void write_tokens(const char *bin, const int *lens, int n_docs, uint64_t first_id, uint64_t seed, int dup) {
    static const char *words[] = {"alpha", "beta", "gamma", "delta", "river", "stone", "light", "north",
                                  "apple", "table", "cloud", "seven", "green", "quiet", "ocean", "paper"};
    joule_token_writer *w = tu_tokens_open(bin);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int d = 0; d < n_docs; d++) {
        uint8_t *buf = malloc((size_t)lens[d] + 1);
        for (int i = 0; i < lens[d];) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            const char *wd = d < dup ? "same words again " : words[(s * 0x2545F4914F6CDD1Dull) >> 60];
            for (const char *c = wd; *c && i < lens[d]; c++) buf[i++] = (uint8_t)*c;
            if (i < lens[d] && d >= dup) buf[i++] = ' ';
        }
        tu_tokens_doc(w, first_id + 2 * (uint64_t)d, buf, (size_t)lens[d], 1);
        free(buf);
    }
    tu_tokens_commit(w);
}

/* n_docs documents of pseudo-random lengths in [1, maxlen]. */
static void write_random_tokens(const char *bin, int n_docs, int maxlen, uint64_t first_id, uint64_t seed, int dup) {
    int *lens = malloc((size_t)n_docs * sizeof *lens);
    joule_rng r;
    joule_rng_seed(&r, seed);
    for (int d = 0; d < n_docs; d++) lens[d] = 1 + (int)joule_rng_below(&r, (uint64_t)maxlen);
    write_tokens(bin, lens, n_docs, first_id, seed, dup);
    free(lens);
}

static int build_db(const char *src, const char *out, int m, const char *emb, const char *index) {
    joule_db_build_opts o;
    joule_db_build_opts_init(&o);
    o.sources = &src;
    o.n_sources = 1;
    o.out_dir = out;
    o.chunk = m;
    o.embedder = emb;
    o.index = index;
    o.batch = 100;
    return joule_db_build(&o, NULL, NULL);
}

#define OK(call) ck_assert_msg((call) == JOULE_OK, "%s: %s", #call, joule_last_error())

static void expect_fail(int rc, const char *needle) {
    ck_assert_int_ne(rc, JOULE_OK);
    ck_assert_msg(strstr(joule_last_error(), needle) != NULL, "error '%s' does not mention '%s'", joule_last_error(),
                  needle);
    ck_assert_msg(strchr(joule_last_error(), '\n') == NULL, "error is not one line: %s", joule_last_error());
}

/* ---- chunking ---- */

START_TEST(test_chunking) {
    const int m = 8;
    /* lengths with EOD: 1, 8, 9, 16, 20 */
    int lens[] = {0, 7, 8, 15, 19};
    write_tokens(tu_path("t.bin"), lens, 5, 10, 1, 0);
    OK(build_db(tu_path("t.bin"), tu_path("db"), m, "ngram:16", NULL));
    joule_retro_db *db;
    OK(joule_db_open(&db, tu_path("db")));
    ck_assert_int_eq(joule_db_chunk(db), m);
    ck_assert_uint_eq(joule_db_size(db), 1 + 1 + 2 + 2 + 3);
    ck_assert_str_eq(joule_db_factory(db), "Flat");
    joule_tokens t;
    OK(joule_tokens_open(&t, tu_path("t.bin")));
    int64_t id = 0;
    for (uint64_t d = 0; d < t.n_docs; d++) {
        uint64_t s = t.doc_offsets[d], e = t.doc_offsets[d + 1];
        for (uint64_t p = s; p < e; p += m, id++) {
            int32_t tok[16];
            uint64_t doc;
            OK(joule_db_entry(db, id, tok, &doc));
            ck_assert_uint_eq(doc, t.doc_ids[d]);
            for (int j = 0; j < 2 * m; j++) {
                int32_t want = p + (uint64_t)j < e ? t.tok[p + (uint64_t)j] : JOULE_DB_PAD;
                ck_assert_msg(tok[j] == want, "entry %lld token %d: %d, want %d", (long long)id, j, tok[j], want);
            }
        }
    }
    ck_assert_int_eq(id, (int64_t)joule_db_size(db));
    /* the last token of each document is the EOD and no entry reaches past it */
    int32_t tok[16];
    OK(joule_db_entry(db, 1, tok, NULL)); /* document of 8 tokens: full chunk, empty continuation */
    ck_assert_int_eq(tok[7], JOULE_EOD_TOKEN);
    for (int j = 8; j < 16; j++) ck_assert_int_eq(tok[j], JOULE_DB_PAD);
    ck_assert_int_ne(joule_db_entry(db, id, tok, NULL), JOULE_OK);
    joule_tokens_close(&t);
    joule_db_close(db);
}
END_TEST

START_TEST(test_default_index) {
    char buf[64];
    joule_db_default_index(1000, buf, sizeof buf);
    ck_assert_str_eq(buf, "Flat");
    joule_db_default_index(1000000, buf, sizeof buf);
    ck_assert_str_eq(buf, "IVF4096,Flat");
    joule_db_default_index(100000, buf, sizeof buf);
    ck_assert_str_eq(buf, "IVF1024,Flat");
}
END_TEST

/* ---- exact search ---- */

/* Brute force: all entries' chunk embeddings. */
static float *embed_all(joule_retro_db *db, joule_embedder *e) {
    int m = joule_db_chunk(db), d = joule_embedder_dim(e);
    uint64_t n = joule_db_size(db);
    float *x = malloc(n * (size_t)d * sizeof *x);
    int32_t *tok = malloc((size_t)2 * m * sizeof *tok);
    for (uint64_t i = 0; i < n; i++) {
        OK(joule_db_entry(db, (int64_t)i, tok, NULL));
        OK(joule_embedder_embed(e, tok, 1, m, x + i * d));
    }
    free(tok);
    return x;
}

static float l2(const float *a, const float *b, int d) {
    double s = 0;
    for (int j = 0; j < d; j++) s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
    return (float)s;
}

/* Checks ids/dist are the k nearest entries to q among those not in `skip` docs: each id's
 * true distance equals the reported one, results are sorted, and the k-th distance equals
 * the brute-force k-th (ties can swap ids, never distances). */
static void check_exact(joule_retro_db *db, const float *all, const float *q, int d, int k, const uint64_t *skip,
                        int n_skip, const int64_t *ids, const float *dist) {
    uint64_t n = joule_db_size(db);
    float *bd = malloc(n * sizeof *bd);
    uint64_t cnt = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t doc;
        OK(joule_db_entry(db, (int64_t)i, NULL, &doc));
        bool ex = false;
        for (int s = 0; s < n_skip; s++) ex |= doc == skip[s];
        if (!ex) bd[cnt++] = l2(q, all + i * d, d);
    }
    /* partial selection sort of the k smallest */
    for (int j = 0; j < k && (uint64_t)j < cnt; j++)
        for (uint64_t i = (uint64_t)j + 1; i < cnt; i++)
            if (bd[i] < bd[j]) {
                float t = bd[i];
                bd[i] = bd[j];
                bd[j] = t;
            }
    for (int j = 0; j < k; j++) {
        if ((uint64_t)j >= cnt) {
            ck_assert_int_eq(ids[j], -1);
            continue;
        }
        ck_assert_msg(ids[j] >= 0, "result %d missing", j);
        uint64_t doc;
        OK(joule_db_entry(db, ids[j], NULL, &doc));
        for (int s = 0; s < n_skip; s++) ck_assert_msg(doc != skip[s], "excluded document %llu returned", (unsigned long long)doc);
        ck_assert_float_eq_tol(l2(q, all + (size_t)ids[j] * d, d), dist[j], 1e-4f);
        ck_assert_float_eq_tol(dist[j], bd[j], 1e-4f);
        if (j) ck_assert(dist[j] >= dist[j - 1] - 1e-6f);
    }
    free(bd);
}

START_TEST(test_flat_exact) {
    write_random_tokens(tu_path("t.bin"), 300, 120, 0, 2, 0);
    OK(build_db(tu_path("t.bin"), tu_path("db"), 16, "ngram:32", "Flat"));
    joule_retro_db *db;
    OK(joule_db_open(&db, tu_path("db")));
    joule_embedder *e;
    OK(joule_embedder_create(&e, "ngram:32"));
    float *all = embed_all(db, e);
    enum { Q = 40, K = 6 };
    int32_t q[Q * 16];
    OK(joule_db_sample_queries(tu_path("t.bin"), 16, Q, 5, q));
    int64_t ids[Q * K];
    float dist[Q * K], qv[32];
    OK(joule_db_search(db, q, Q, K, NULL, ids, dist));
    for (int i = 0; i < Q; i++) {
        OK(joule_embedder_embed(e, q + i * 16, 1, 16, qv));
        check_exact(db, all, qv, 32, K, NULL, 0, ids + i * K, dist + i * K);
    }
    /* one query at a time (FAISS's non-BLAS path) gives the same answers */
    int64_t one[K];
    OK(joule_db_search(db, q + 3 * 16, 1, K, NULL, one, NULL));
    for (int j = 0; j < K; j++) ck_assert_int_eq(one[j], ids[3 * K + j]);
    /* more neighbours than entries: -1 past the end */
    free(all);
    joule_embedder_free(e);
    joule_db_close(db);
}
END_TEST

START_TEST(test_exclusion) {
    /* 3 documents repeat one sentence (many identical chunks), then varied ones: excluding a
     * repeated document forces the search past 2k+16 candidates (the re-search path). */
    write_random_tokens(tu_path("t.bin"), 200, 100, 100, 3, 0);
    int lens[] = {900, 900, 900, 50, 60, 70, 80, 90, 100, 110};
    write_tokens(tu_path("r.bin"), lens, 10, 1, 4, 3);
    const char *srcs[] = {tu_path("r.bin"), tu_path("t.bin")};
    joule_db_build_opts o;
    joule_db_build_opts_init(&o);
    o.sources = srcs;
    o.n_sources = 2;
    o.out_dir = tu_path("db");
    o.chunk = 16;
    o.embedder = "ngram:32";
    o.batch = 64;
    OK(joule_db_build(&o, NULL, NULL));
    joule_retro_db *db;
    OK(joule_db_open(&db, tu_path("db")));
    joule_embedder *e;
    OK(joule_embedder_create(&e, "ngram:32"));
    float *all = embed_all(db, e);
    enum { K = 5 };
    int32_t tok[32], q[4 * 16];
    uint64_t docs[4];
    int64_t qid[4] = {3, 60, 130, (int64_t)joule_db_size(db) - 1};
    for (int i = 0; i < 4; i++) {
        OK(joule_db_entry(db, qid[i], tok, &docs[i]));
        memcpy(q + i * 16, tok, 16 * sizeof *tok);
    }
    ck_assert_uint_eq(docs[0], 1); /* a repeated document */
    int64_t ids[4 * K];
    float dist[4 * K], qv[32];
    OK(joule_db_search(db, q, 4, K, docs, ids, dist));
    for (int i = 0; i < 4; i++) {
        OK(joule_embedder_embed(e, q + i * 16, 1, 16, qv));
        check_exact(db, all, qv, 32, K, &docs[i], 1, ids + i * K, dist + i * K);
    }
    /* several documents at once: all three repeated ones */
    uint64_t three[] = {1, 3, 5};
    const uint64_t *ex[1] = {three};
    int nex[1] = {3};
    OK(joule_db_search_ex(db, q, 1, K, ex, nex, ids, dist));
    OK(joule_embedder_embed(e, q, 1, 16, qv));
    check_exact(db, all, qv, 32, K, three, 3, ids, dist);
    /* UINT64_MAX excludes nothing: the query's own entry comes first */
    uint64_t none = UINT64_MAX;
    OK(joule_db_search(db, q + 16 * 2, 1, K, &none, ids, dist));
    ck_assert_float_eq_tol(dist[0], 0.0f, 1e-5f);
    free(all);
    joule_embedder_free(e);
    joule_db_close(db);
}
END_TEST

START_TEST(test_more_than_entries) {
    int lens[] = {20, 10};
    write_tokens(tu_path("t.bin"), lens, 2, 0, 5, 0);
    OK(build_db(tu_path("t.bin"), tu_path("db"), 8, "ngram:16", NULL));
    joule_retro_db *db;
    OK(joule_db_open(&db, tu_path("db")));
    ck_assert_uint_eq(joule_db_size(db), 3 + 2);
    int32_t tok[16];
    OK(joule_db_entry(db, 0, tok, NULL));
    int64_t ids[8];
    float dist[8];
    OK(joule_db_search(db, tok, 1, 8, NULL, ids, dist));
    for (int j = 0; j < 5; j++) ck_assert_int_ge(ids[j], 0);
    for (int j = 5; j < 8; j++) {
        ck_assert_int_eq(ids[j], -1);
        ck_assert(isinf(dist[j]));
    }
    uint64_t doc0 = 0; /* excluding document 0 leaves document 2's two entries */
    OK(joule_db_search(db, tok, 1, 4, &doc0, ids, dist));
    ck_assert_int_ge(ids[0], 3);
    ck_assert_int_ge(ids[1], 3);
    ck_assert_int_eq(ids[2], -1);
    ck_assert_int_eq(ids[3], -1);
    joule_db_close(db);
}
END_TEST

/* ---- round trip and refusal of damaged databases ---- */

START_TEST(test_round_trip) {
    write_random_tokens(tu_path("t.bin"), 120, 150, 0, 6, 0);
    OK(build_db(tu_path("t.bin"), tu_path("db"), 16, NULL, "IVF8,Flat"));
    ck_assert(!tu_exists(tu_path("db.partial")));
    joule_retro_db *a, *b;
    OK(joule_db_open(&a, tu_path("db")));
    OK(joule_db_open(&b, tu_path("db")));
    ck_assert_str_eq(joule_db_id(a), joule_db_id(b));
    ck_assert_int_eq((int)strlen(joule_db_id(a)), 16);
    ck_assert_str_eq(joule_db_factory(a), "IVF8,Flat");
    ck_assert_int_eq(joule_db_dim(a), 128);
    ck_assert_ptr_nonnull(strstr(joule_db_manifest_json(a), "\"tokenizer\":\t\"bytes\""));
    double self = 0;
    OK(joule_db_set_params(a, "nprobe=8"));
    OK(joule_db_verify(a, &self));
    ck_assert_double_eq_tol(self, 1.0, 1e-9);
    expect_fail(joule_db_set_params(a, "efSearch=16"), "efSearch=16");
    expect_fail(joule_db_set_params(a, "nosuch=3"), "nosuch");
    /* the same queries give the same answers from both handles */
    int32_t q[4 * 16];
    OK(joule_db_sample_queries(tu_path("t.bin"), 16, 4, 9, q));
    int64_t ia[12], ib[12];
    OK(joule_db_set_params(b, "nprobe=8"));
    OK(joule_db_search(a, q, 4, 3, NULL, ia, NULL));
    OK(joule_db_search(b, q, 4, 3, NULL, ib, NULL));
    for (int i = 0; i < 12; i++) ck_assert_int_eq(ia[i], ib[i]);
    joule_db_close(a);
    joule_db_close(b);
    /* building over an existing database is refused */
    expect_fail(build_db(tu_path("t.bin"), tu_path("db"), 16, NULL, NULL), "already exists");
    expect_fail(build_db(tu_path("t.bin"), tu_path("db2"), 16, "nosuch", NULL), "nosuch");
    expect_fail(build_db(tu_path("t.bin"), tu_path("db3"), 16, NULL, "NoSuchIndex"), "NoSuchIndex");
    ck_assert(!tu_exists(tu_path("db2")) && !tu_exists(tu_path("db3")));
}
END_TEST

/* Damages `file` of the database with `how` and checks open (or verify) names it. */
static void damage_and_check(const char *file, const char *how, bool verify_only) {
    const char *p = tu_path("db/%s", file);
    size_t len;
    unsigned char *orig = (unsigned char *)tu_must_read(p, &len);
    unsigned char *bad = malloc(len + 1);
    memcpy(bad, orig, len);
    size_t blen = len;
    if (!strcmp(how, "truncate")) blen = len - 7;
    else if (!strcmp(how, "flip")) bad[len - 20] ^= 0x5a;
    else if (!strcmp(how, "header")) bad[3] ^= 0x20;
    tu_write(p, bad, blen);
    joule_retro_db *db = NULL;
    int rc = joule_db_open(&db, tu_path("db"));
    if (verify_only) {
        OK(rc);
        rc = joule_db_verify(db, NULL);
        joule_db_close(db);
    }
    expect_fail(rc, file);
    ck_assert_ptr_null(verify_only ? NULL : db);
    tu_write(p, orig, len);
    free(orig);
    free(bad);
    OK(joule_db_open(&db, tu_path("db")));
    joule_db_close(db);
}

START_TEST(test_corrupt) {
    write_random_tokens(tu_path("t.bin"), 80, 150, 0, 7, 0);
    OK(build_db(tu_path("t.bin"), tu_path("db"), 16, "ngram:16", NULL));
    damage_and_check("index.faiss", "truncate", false);
    damage_and_check("index.faiss", "flip", false);
    damage_and_check("index.faiss", "header", false);
    damage_and_check("chunks.bin", "truncate", false);
    damage_and_check("chunks.bin", "header", false);
    damage_and_check("chunks.bin", "flip", true); /* body: only the full check reads it */
    damage_and_check("manifest.json", "truncate", false);
    damage_and_check("manifest.json", "header", false);
    /* a manifest that is valid JSON but describes other files */
    size_t len;
    char *m = tu_must_read(tu_path("db/manifest.json"), &len);
    char *e = strstr(m, "\"entries\":");
    ck_assert_ptr_nonnull(e);
    char *bad = malloc(len + 8);
    int pre = (int)(e - m);
    snprintf(bad, len + 8, "%.*s\"entries\":\t1%s", pre, m, strchr(e, ','));
    tu_write(tu_path("db/manifest.json"), bad, strlen(bad));
    joule_retro_db *db = NULL;
    expect_fail(joule_db_open(&db, tu_path("db")), "db/");
    /* a missing file */
    tu_write(tu_path("db/manifest.json"), m, len);
    ck_assert_int_eq(rename(tu_path("db/chunks.bin"), tu_path("chunks.bin")), 0);
    expect_fail(joule_db_open(&db, tu_path("db")), "chunks.bin");
    expect_fail(joule_db_open(&db, tu_path("nowhere")), "nowhere");
    free(m);
    free(bad);
}
END_TEST

/* ---- interrupted builds ---- */

typedef struct {
    int batches, stop_after;
} stopper;

static bool stop_cb(void *ctx, const char *phase, uint64_t done, uint64_t total) {
    stopper *s = ctx;
    if (strcmp(phase, "add") != 0) return true;
    return ++s->batches < s->stop_after;
}

static void files_equal(const char *a, const char *b) {
    size_t la, lb;
    unsigned char *x = (unsigned char *)tu_must_read(a, &la), *y = (unsigned char *)tu_must_read(b, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_msg(memcmp(x, y, la) == 0, "%s and %s differ", a, b);
    free(x);
    free(y);
}

START_TEST(test_interrupt_resume) {
    write_random_tokens(tu_path("t.bin"), 150, 200, 0, 8, 0);
    const char *src = tu_path("t.bin");
    joule_db_build_opts o;
    joule_db_build_opts_init(&o);
    o.sources = &src;
    o.n_sources = 1;
    o.chunk = 16;
    o.embedder = "ngram:32";
    o.index = "IVF8,Flat";
    o.batch = 64;
    o.out_dir = tu_path("ref");
    OK(joule_db_build(&o, NULL, NULL));

    stopper s = {0, 3};
    o.out_dir = tu_path("db");
    o.checkpoint_every = 2;
    o.progress = stop_cb;
    o.ctx = &s;
    expect_fail(joule_db_build(&o, NULL, NULL), "--resume");
    ck_assert(!tu_exists(tu_path("db")));
    ck_assert(tu_exists(tu_path("db.partial")));
    ck_assert(!tu_exists(tu_path("db.partial/manifest.json")));
    joule_retro_db *db = NULL;
    ck_assert_int_ne(joule_db_open(&db, tu_path("db.partial")), JOULE_OK);
    ck_assert_int_ne(joule_db_open(&db, tu_path("db")), JOULE_OK);

    /* other options cannot resume this build */
    o.progress = NULL;
    o.resume = true;
    o.chunk = 8;
    expect_fail(joule_db_build(&o, NULL, NULL), "cannot resume");
    o.chunk = 16;
    /* interrupt the resumed build once more, then finish */
    s.batches = 0;
    s.stop_after = 2;
    o.progress = stop_cb;
    expect_fail(joule_db_build(&o, NULL, NULL), "interrupted");
    o.progress = NULL;
    OK(joule_db_build(&o, NULL, NULL));
    ck_assert(!tu_exists(tu_path("db.partial")));
    files_equal(tu_path("db/chunks.bin"), tu_path("ref/chunks.bin"));
    files_equal(tu_path("db/index.faiss"), tu_path("ref/index.faiss"));
    files_equal(tu_path("db/manifest.json"), tu_path("ref/manifest.json"));
    OK(joule_db_open(&db, tu_path("db")));
    OK(joule_db_verify(db, NULL));
    joule_db_close(db);

    /* resuming with nothing to resume says so; a fresh build removes a stale partial dir */
    o.out_dir = tu_path("other");
    expect_fail(joule_db_build(&o, NULL, NULL), "no unfinished build");
    ck_assert_int_eq(mkdir(tu_path("other.partial"), 0777), 0);
    tu_write(tu_path("other.partial/state.json"), "{", 1);
    expect_fail(joule_db_build(&o, NULL, NULL), "state.json");
    o.resume = false;
    OK(joule_db_build(&o, NULL, NULL));
    files_equal(tu_path("other/index.faiss"), tu_path("ref/index.faiss"));
}
END_TEST

/* ---- neighbour files ---- */

START_TEST(test_neighbours) {
    /* short documents: many end in a chunk shorter than 16 */
    write_random_tokens(tu_path("train.bin"), 400, 40, 0, 9, 0);
    OK(build_db(tu_path("train.bin"), tu_path("db"), 16, "ngram:32", NULL));
    joule_retro_db *db;
    OK(joule_db_open(&db, tu_path("db")));
    enum { K = 3 };
    OK(joule_neighbours_build(db, tu_path("train.bin"), tu_path("train.nbr"), K, NULL, NULL));
    joule_neighbours *nb;
    OK(joule_neighbours_open(&nb, tu_path("train.nbr"), db));
    ck_assert_int_eq(joule_neighbours_k(nb), K);
    joule_tokens t;
    OK(joule_tokens_open(&t, tu_path("train.bin")));
    /* one row per chunk of the document-relative grid: the database's own entries */
    const uint64_t nc = joule_db_size(db);
    ck_assert_uint_eq(joule_neighbours_count(nb), nc);
    ck_assert_ptr_null(joule_neighbours_of(nb, nc));
    /* the same search, every retrieved chunk in one batch as the builder does (FAISS's batched
     * and single-query paths may order near-ties differently) */
    int32_t *q = malloc(nc * 16 * sizeof *q);
    const uint64_t **ex = malloc(nc * sizeof *ex);
    int *nex = malloc(nc * sizeof *nex);
    int64_t *want = malloc(nc * K * sizeof *want);
    uint64_t *row = malloc(nc * sizeof *row);
    int nq = 0;
    uint64_t c = 0;
    for (uint64_t d = 0; d < t.n_docs; d++)
        for (uint64_t s = t.doc_offsets[d]; s < t.doc_offsets[d + 1]; s += 16, c++) {
            int32_t entry[32];
            OK(joule_db_entry(db, (int64_t)c, entry, NULL)); /* entry c is this very chunk */
            for (int i = 0; i < 16; i++) ck_assert_int_eq(entry[i], s + i < t.doc_offsets[d + 1] ? t.tok[s + i] : JOULE_DB_PAD);
            if (s + 16 >= t.doc_offsets[d + 1]) { /* short, or holding the end of the document */
                for (int j = 0; j < K; j++) ck_assert_int_eq(joule_neighbours_of(nb, c)[j], -1);
                continue;
            }
            for (int i = 0; i < 16; i++) q[(size_t)nq * 16 + i] = t.tok[s + i];
            ex[nq] = t.doc_ids + d;
            nex[nq] = 1;
            row[nq++] = c;
        }
    ck_assert_uint_eq(c, nc);
    ck_assert_int_gt(nq, 0);
    ck_assert_int_lt(nq, (int)nc);
    ck_assert_int_le(nq, 1024);
    OK(joule_db_search_ex(db, q, nq, K, ex, nex, want, NULL));
    for (int i = 0; i < nq; i++) {
        const int64_t *ids = joule_neighbours_of(nb, row[i]);
        for (int j = 0; j < K; j++) {
            ck_assert_int_eq(ids[j], want[(size_t)i * K + j]);
            ck_assert_int_ge(ids[j], 0);
            uint64_t doc;
            OK(joule_db_entry(db, ids[j], NULL, &doc));
            ck_assert_uint_ne(doc, ex[i][0]);
        }
    }
    free(q);
    free(ex);
    free(nex);
    free(want);
    free(row);
    joule_neighbours_close(nb);
    joule_tokens_close(&t);

    /* another database is refused */
    OK(build_db(tu_path("train.bin"), tu_path("db2"), 16, "ngram:16", NULL));
    joule_retro_db *db2;
    OK(joule_db_open(&db2, tu_path("db2")));
    expect_fail(joule_neighbours_open(&nb, tu_path("train.nbr"), db2), "train.nbr");
    joule_db_close(db2);
    /* a truncated file, and a changed token file, are refused */
    size_t len;
    unsigned char *orig = (unsigned char *)tu_must_read(tu_path("train.nbr"), &len);
    tu_write(tu_path("train.nbr"), orig, len - 8);
    expect_fail(joule_neighbours_open(&nb, tu_path("train.nbr"), db), "truncated");
    tu_write(tu_path("train.nbr"), orig, len);
    OK(joule_neighbours_open(&nb, tu_path("train.nbr"), db));
    joule_neighbours_close(nb);
    unsigned char *tok = (unsigned char *)tu_must_read(tu_path("train.bin"), &len);
    tok[100] = tok[100] == 'a' ? 'b' : 'a';
    tu_write(tu_path("train.bin"), tok, len);
    expect_fail(joule_neighbours_open(&nb, tu_path("train.nbr"), db), "token file changed");
    free(tok);
    free(orig);
    joule_db_close(db);
}
END_TEST

/* ---- the model embedder ---- */

START_TEST(test_model_embedder) {
    joule_config c = joule_config_default(2, 16, 2, 24, 16);
    joule_model *m;
    OK(joule_model_create(&m, &c));
    joule_model_init(m, 3);
    OK(joule_checkpoint_save(m, tu_path("tiny.safetensors"), NULL, NULL));
    OK(joule_model_alloc_train(m, 1));
    joule_embedder *e;
    OK(joule_embedder_create(&e, tu_path("tiny.safetensors")) == JOULE_OK ? JOULE_ERR_RUNTIME : JOULE_OK);
    char spec[8300];
    snprintf(spec, sizeof spec, "model:%s", tu_path("tiny.safetensors"));
    OK(joule_embedder_create(&e, spec));
    ck_assert_int_eq(joule_embedder_dim(e), 16);
    enum { N = 40, M = 12 }; /* more chunks than one forward batch */
    int32_t chunks[N * M];
    joule_rng r;
    joule_rng_seed(&r, 4);
    for (int i = 0; i < N; i++) {
        int len = i % 5 == 0 ? 1 + i % M : M; /* some short chunks, padded */
        for (int j = 0; j < M; j++) chunks[i * M + j] = j < len ? (int32_t)joule_rng_below(&r, 256) : JOULE_DB_PAD;
    }
    float *out = malloc(N * 16 * sizeof *out);
    OK(joule_embedder_embed(e, chunks, N, M, out));
    for (int i = 0; i < N; i++) {
        int len = 0;
        while (len < M && chunks[i * M + len] != JOULE_DB_PAD) len++;
        OK(joule_model_forward(m, chunks + i * M, NULL, 1, len, NULL)); /* the chunk alone */
        const float *h = joule_model_hidden(m);
        for (int k = 0; k < 16; k++) {
            double s = 0;
            for (int j = 0; j < len; j++) s += h[j * 16 + k];
            ck_assert_float_eq_tol(out[i * 16 + k], (float)(s / len), 1e-5f);
        }
    }
    /* a database built with it round-trips, and notices a changed checkpoint */
    int lens[] = {50, 70, 33};
    write_tokens(tu_path("t.bin"), lens, 3, 0, 11, 0);
    OK(build_db(tu_path("t.bin"), tu_path("db"), M, spec, NULL));
    joule_retro_db *db;
    OK(joule_db_open(&db, tu_path("db")));
    OK(joule_db_verify(db, NULL));
    joule_db_close(db);
    joule_model_init(m, 4);
    OK(joule_checkpoint_save(m, tu_path("tiny.safetensors"), NULL, NULL));
    expect_fail(joule_db_open(&db, tu_path("db")), "checkpoint changed");
    /* chunks longer than the model's context are refused */
    int32_t longc[20] = {0};
    joule_embedder_free(e);
    OK(joule_embedder_create(&e, spec));
    expect_fail(joule_embedder_embed(e, longc, 1, 20, out), "context");
    free(out);
    joule_embedder_free(e);
    joule_model_free(m);
}
END_TEST


/* ---- the CLI, end to end ---- */

START_TEST(test_cli) {
    ck_assert_int_eq(mkdir(tu_path("corpus"), 0777), 0);
    write_random_tokens(tu_path("corpus/train.bin"), 300, 150, 0, 12, 0);
    write_random_tokens(tu_path("corpus/val.bin"), 30, 150, 1, 13, 0);
    ck_assert_int_eq(tu_joule("db build --data corpus --out flat --chunk 16 --embedder ngram:32 --threads 1"), 0);
    tu_expect_in("out.txt", "built flat:");
    ck_assert_int_eq(tu_joule("db build --data corpus --with-val --out ivf --chunk 16 --embedder ngram:32 --index "
                         "IVF8,Flat --batch 50"), 0);
    ck_assert_int_eq(tu_joule("db info flat"), 0);
    tu_expect_in("out.txt", "chunks.bin");
    ck_assert_int_eq(tu_joule("db info flat --json"), 0);
    tu_expect_one_line("out.txt", "\"factory\":\"Flat\"");
    ck_assert_int_eq(tu_joule("db query flat --text 'alpha beta gamma delta river' -k 2"), 0);
    tu_expect_in("out.txt", "  2. id ");
    ck_assert_int_eq(tu_joule("db query ivf --text 'alpha beta' -k 3 --nprobe 8 --exclude-doc 4"), 0);
    tu_expect_in("out.txt", "nprobe=8");
    ck_assert_int_eq(tu_joule("db verify flat"), 0);
    tu_expect_in("out.txt", "ok:");
    ck_assert_int_eq(tu_joule("db recall ivf --exact flat --queries corpus -n 50 -k 5 --nprobe 8"), 2);
    tu_expect_one_line("err.txt", "do not hold the same entries"); /* ivf also holds val */
    ck_assert_int_eq(tu_joule("db build --data corpus --out ivf2 --chunk 16 --embedder ngram:32 --index IVF8,Flat"), 0);
    /* missing folders above --out are made, as train --out makes them; a trailing / names the folder */
    ck_assert_int_eq(tu_joule("db build --data corpus --out new/deeper/db/ --chunk 16 --embedder ngram:32"), 0);
    tu_expect_in("out.txt", "built new/deeper/db:");
    ck_assert(tu_exists(tu_path("new/deeper/db/manifest.json")));
    ck_assert_int_eq(tu_joule("db recall ivf2 --exact flat --queries corpus -n 50 -k 5 --nprobe 8"), 0);
    tu_expect_in("out.txt", "recall@5");
    ck_assert_int_eq(tu_joule("db neighbours flat --tokens corpus/train.bin -k 2"), 0);
    ck_assert(tu_exists(tu_path("corpus/train.nbr")));
    /* help for every subcommand */
    const char *subs[] = {"build", "info", "query", "verify", "recall", "neighbours"};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(tu_joule("db %s --help", subs[i]), 0);
        tu_expect_in("out.txt", "Usage: joule db");
    }
    /* bad usage and bad input: one line, exit 2 */
    ck_assert_int_eq(tu_joule("db build --out x"), 2);
    tu_expect_one_line("err.txt", "--data");
    ck_assert_int_eq(tu_joule("db build --data nowhere --out x"), 2);
    tu_expect_one_line("err.txt", "nowhere");
    ck_assert_int_eq(tu_joule("db build --data corpus --out flat"), 2);
    tu_expect_one_line("err.txt", "already exists");
    ck_assert_int_eq(tu_joule("db build --data corpus --out y --resume"), 2);
    tu_expect_one_line("err.txt", "no unfinished build");
    ck_assert_int_eq(tu_joule("db query flat --text hi --nprobe 4"), 2);
    tu_expect_one_line("err.txt", "nprobe=4");
    ck_assert_int_eq(tu_joule("db query flat --text hi --out z"), 2);
    tu_expect_one_line("err.txt", "does not apply");
    ck_assert_int_eq(tu_joule("db query flat -k 0 --text hi"), 2);
    ck_assert_int_eq(tu_joule("db frobnicate"), 2);
    ck_assert_int_eq(tu_joule("db info nowhere"), 2);
    tu_expect_one_line("err.txt", "nowhere");
    /* a damaged store: open still works, verify names the file */
    size_t len;
    unsigned char *b = (unsigned char *)tu_must_read(tu_path("flat/chunks.bin"), &len);
    b[len / 2] ^= 0x11;
    tu_write(tu_path("flat/chunks.bin"), b, len);
    free(b);
    ck_assert_int_eq(tu_joule("db verify flat"), 2);
    tu_expect_one_line("err.txt", "chunks.bin");
    ck_assert_int_eq(tu_joule("db neighbours flat --tokens corpus/train.bin"), 0); /* open checks only the header */
    unlink(tu_path("flat/index.faiss"));
    ck_assert_int_eq(tu_joule("db query flat --text hi"), 1);
    tu_expect_one_line("err.txt", "index.faiss");
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("retro_db");
    TCase *tc = tu_tcase(s, "db", 120, setup, tu_remove_dir);
    tcase_add_test(tc, test_chunking);
    tcase_add_test(tc, test_default_index);
    tcase_add_test(tc, test_flat_exact);
    tcase_add_test(tc, test_exclusion);
    tcase_add_test(tc, test_more_than_entries);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_corrupt);
    tcase_add_test(tc, test_interrupt_resume);
    tcase_add_test(tc, test_neighbours);
    tcase_add_test(tc, test_model_embedder);
    TCase *cli = tu_tcase(s, "cli", 180, setup, tu_remove_dir);
    tcase_add_test(cli, test_cli);
    return s;
}

int main(void) {
    return tu_run_suite(suite());
}
