/* Tests for sharded retrieval databases (joule db build --shards S): the merged search
 * returns exactly the unsharded Flat database's neighbours (ids and distances, ties between
 * duplicate entries broken by lower id on both paths), with and without same-document
 * exclusion, for S = 1, 2, 3; a missing or mismatched shard is refused naming its file;
 * an interrupted sharded build resumes to the same files; the CLI builds and shows shards. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/data.h"
#include "joule/retro_db.h"
#include "testutil.h"

static void setup(void) { tu_make_dir("joule_shards_"); }

#define OK(call) ck_assert_msg((call) == JOULE_OK, "%s: %s", #call, joule_last_error())

static void expect_fail(int rc, const char *needle) {
    ck_assert_int_ne(rc, JOULE_OK);
    ck_assert_msg(strstr(joule_last_error(), needle) != NULL, "error '%s' does not mention '%s'", joule_last_error(),
                  needle);
    ck_assert_msg(strchr(joule_last_error(), '\n') == NULL, "error is not one line: %s", joule_last_error());
}

/* n_docs documents of words; the first `dup` documents repeat one sentence, so many entries
 * have identical chunks (equal distances to every query: ties). */
static void write_corpus(const char *bin, int n_docs, int dup, uint64_t seed) {
    static const char *words[] = {"alpha", "beta", "gamma", "delta", "river", "stone", "light", "north",
                                  "apple", "table", "cloud", "seven", "green", "quiet", "ocean", "paper"};
    joule_token_writer *w = tu_tokens_open(bin);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int d = 0; d < n_docs; d++) {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        int len = d < dup ? 48 : 20 + (int)((s * 0x2545F4914F6CDD1Dull) >> 57);
        char *buf = malloc((size_t)len + 1);
        for (int i = 0; i < len;) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            const char *wd = d < dup ? "same words again " : words[(s * 0x2545F4914F6CDD1Dull) >> 60];
            for (const char *c = wd; *c && i < len; c++) buf[i++] = *c;
            if (i < len && d >= dup) buf[i++] = ' ';
        }
        tu_tokens_doc(w, 1 + (uint64_t)d, buf, (size_t)len, 1);
        free(buf);
    }
    tu_tokens_commit(w);
}

static void opts(joule_db_build_opts *o, const char **src, const char *out, const char *index, int shards) {
    joule_db_build_opts_init(o);
    o->sources = src;
    o->n_sources = 1;
    o->out_dir = out;
    o->chunk = 16;
    o->embedder = "ngram:32";
    o->index = index;
    o->batch = 50;
    o->shards = shards;
}

static int build(const char *src, const char *out, const char *index, int shards) {
    joule_db_build_opts o;
    opts(&o, &src, out, index, shards);
    return joule_db_build(&o, NULL, NULL);
}

/* Every entry's chunk as a query (n >= 20: FAISS's BLAS path), and the first 7 alone (its
 * direct path), each excluding its own document when excl. */
typedef struct {
    int n, k;
    int32_t *q;
    uint64_t *doc;
    int64_t *ids;
    float *dist;
} queries;

static void make_queries(joule_retro_db *db, queries *qs, int k) {
    const int m = joule_db_chunk(db);
    qs->n = (int)joule_db_size(db);
    qs->k = k;
    qs->q = malloc((size_t)qs->n * m * sizeof *qs->q);
    qs->doc = malloc((size_t)qs->n * sizeof *qs->doc);
    int32_t *tok = malloc((size_t)2 * m * sizeof *tok);
    for (int i = 0; i < qs->n; i++) {
        OK(joule_db_entry(db, i, tok, &qs->doc[i]));
        memcpy(qs->q + (size_t)i * m, tok, (size_t)m * sizeof *tok);
    }
    free(tok);
}

static void search_all(joule_retro_db *db, const queries *qs, int n, bool excl, int64_t *ids, float *dist) {
    OK(joule_db_search(db, qs->q, n, qs->k, excl ? qs->doc : NULL, ids, dist));
}

/* Results in (distance, id) order, and at least one tie among them (so the rule is tested). */
static int check_order(const int64_t *ids, const float *dist, int n, int k) {
    int ties = 0;
    for (int i = 0; i < n; i++)
        for (int j = 1; j < k; j++) {
            size_t a = (size_t)i * k + j - 1, b = a + 1;
            if (ids[b] < 0) continue;
            ck_assert_msg(ids[a] >= 0 && (dist[a] < dist[b] || (dist[a] == dist[b] && ids[a] < ids[b])),
                          "query %d: (%g, %lld) before (%g, %lld)", i, dist[a], (long long)ids[a], dist[b],
                          (long long)ids[b]);
            ties += dist[a] == dist[b];
        }
    return ties;
}

START_TEST(test_sharded_equals_unsharded) {
    write_corpus(tu_path("t.bin"), 60, 12, 3);
    OK(build(tu_path("t.bin"), tu_path("one"), "Flat", 0));
    joule_retro_db *ref;
    OK(joule_db_open(&ref, tu_path("one")));
    ck_assert_int_eq(joule_db_n_shards(ref), 1);
    queries qs;
    make_queries(ref, &qs, 12);
    const size_t nk = (size_t)qs.n * qs.k;
    int64_t *rid[2], *sid = malloc(nk * sizeof *sid);
    float *rd[2], *sd = malloc(nk * sizeof *sd);
    for (int e = 0; e < 2; e++) {
        rid[e] = malloc(nk * sizeof *rid[e]);
        rd[e] = malloc(nk * sizeof *rd[e]);
        search_all(ref, &qs, qs.n, e, rid[e], rd[e]);
        ck_assert_int_gt(check_order(rid[e], rd[e], qs.n, qs.k), 100);
    }
    for (int S = 1; S <= 3; S++) {
        char name[16];
        snprintf(name, sizeof name, "s%d", S);
        OK(build(tu_path("t.bin"), tu_path("%s", name), "Flat", S));
        ck_assert(tu_exists(tu_path("%s/%s", name, S > 1 ? "shard.0.faiss" : "index.faiss")));
        ck_assert(!tu_exists(tu_path("%s/%s", name, S > 1 ? "index.faiss" : "shard.0.faiss")));
        joule_retro_db *db;
        OK(joule_db_open(&db, tu_path("%s", name)));
        ck_assert_int_eq(joule_db_n_shards(db), S);
        OK(joule_db_verify(db, NULL));
        for (int e = 0; e < 2; e++) {
            search_all(db, &qs, qs.n, e, sid, sd);
            for (size_t r = 0; r < nk; r++)
                if (sid[r] != rid[e][r] || sd[r] != rd[e][r])
                    ck_abort_msg("S=%d excl=%d: query %zu rank %zu: id %lld dist %.9g, unsharded id %lld dist %.9g", S, e,
                                 r / qs.k, r % qs.k, (long long)sid[r], sd[r], (long long)rid[e][r], rd[e][r]);
            ck_assert_msg(memcmp(sid, rid[e], nk * sizeof *sid) == 0, "S=%d excl=%d: ids differ", S, e);
            ck_assert_msg(memcmp(sd, rd[e], nk * sizeof *sd) == 0, "S=%d excl=%d: distances differ", S, e);
            /* a few queries alone take FAISS's other distance path: still the same */
            search_all(db, &qs, 7, e, sid, sd);
            ck_assert_int_gt(check_order(sid, sd, 7, qs.k), 0);
            search_all(ref, &qs, 7, e, rid[e] + nk / 2, rd[e] + nk / 2); /* scratch half of the reference */
            ck_assert(memcmp(sid, rid[e] + nk / 2, (size_t)7 * qs.k * sizeof *sid) == 0);
            ck_assert(memcmp(sd, rd[e] + nk / 2, (size_t)7 * qs.k * sizeof *sd) == 0);
            search_all(ref, &qs, qs.n, e, rid[e], rd[e]);
        }
        /* k beyond a shard's size (the smallest shard has fewer than 40 entries) */
        int64_t big_a[80], big_b[80];
        float da[80], db_[80];
        OK(joule_db_search(db, qs.q, 1, 80, NULL, big_a, da));
        OK(joule_db_search(ref, qs.q, 1, 80, NULL, big_b, db_));
        ck_assert(memcmp(big_a, big_b, sizeof big_a) == 0 && memcmp(da, db_, sizeof da) == 0);
        joule_db_close(db);
    }
    joule_db_close(ref);
    for (int e = 0; e < 2; e++) {
        free(rid[e]);
        free(rd[e]);
    }
    free(sid);
    free(sd);
    free(qs.q);
    free(qs.doc);
}
END_TEST

static void replace_in(const char *path, const char *from, const char *to) {
    size_t len;
    char *s = tu_must_read(path, &len), *at = strstr(s, from);
    ck_assert_msg(at != NULL, "%s has no '%s'", path, from);
    char *out = malloc(len + strlen(to) + 1);
    size_t pre = (size_t)(at - s);
    memcpy(out, s, pre);
    strcpy(out + pre, to);
    strcat(out, at + strlen(from));
    tu_write_text(path, out);
    free(out);
    free(s);
}

static void copy_file(const char *from, const char *to) {
    size_t len;
    char *s = tu_must_read(from, &len);
    tu_write(to, s, len);
    free(s);
}

START_TEST(test_refusals) {
    write_corpus(tu_path("t.bin"), 30, 4, 5);
    joule_retro_db *db = NULL;
    /* one shard per entry at most */
    expect_fail(build(tu_path("t.bin"), tu_path("many"), "Flat", 255), "each shard needs at least one");
    ck_assert(!tu_exists(tu_path("many.partial")));
    OK(build(tu_path("t.bin"), tu_path("db"), "Flat", 3));
    ck_assert(tu_file_has("db/manifest.json", "\"format_version\":\t2"));
    OK(build(tu_path("t.bin"), tu_path("old"), "Flat", 1));
    ck_assert(tu_file_has("old/manifest.json", "\"format_version\":\t1")); /* unsharded: as before */
    copy_file(tu_path("db/manifest.json"), tu_path("manifest.keep"));
    copy_file(tu_path("db/shard.1.faiss"), tu_path("shard.keep"));
    copy_file(tu_path("db/shard.2.faiss"), tu_path("shard2.keep"));

    unlink(tu_path("db/shard.1.faiss"));
    expect_fail(joule_db_open(&db, tu_path("db")), "shard.1.faiss: missing");
    copy_file(tu_path("db/shard.0.faiss"), tu_path("db/shard.1.faiss")); /* another shard's file */
    expect_fail(joule_db_open(&db, tu_path("db")), "shard.1.faiss");
    copy_file(tu_path("shard.keep"), tu_path("db/shard.1.faiss"));
    OK(joule_db_open(&db, tu_path("db")));
    joule_db_close(db);

    /* one flipped byte: the checksum */
    size_t len;
    char *s = tu_must_read(tu_path("db/shard.2.faiss"), &len);
    s[len - 5] ^= 1;
    tu_write(tu_path("db/shard.2.faiss"), s, len);
    free(s);
    expect_fail(joule_db_open(&db, tu_path("db")), "shard.2.faiss: checksum");
    copy_file(tu_path("shard.keep"), tu_path("db/shard.2.faiss")); /* (wrong file: size) */
    expect_fail(joule_db_open(&db, tu_path("db")), "shard.2.faiss");
    copy_file(tu_path("shard2.keep"), tu_path("db/shard.2.faiss"));
    OK(joule_db_open(&db, tu_path("db")));
    const uint64_t first1 = joule_db_size(db) / 3;
    joule_db_close(db);
    char from[64], to[64], want[96];
    snprintf(from, sizeof from, "\"first\":\t%llu", (unsigned long long)first1);
    snprintf(to, sizeof to, "\"first\":\t%llu", (unsigned long long)first1 + 1);
    snprintf(want, sizeof want, "shard shard.1.faiss starts at entry %llu", (unsigned long long)first1 + 1);

    /* manifest ranges: a gap, a range the index does not hold, a name outside the scheme */
    replace_in(tu_path("db/manifest.json"), from, to);
    expect_fail(joule_db_open(&db, tu_path("db")), want);
    copy_file(tu_path("manifest.keep"), tu_path("db/manifest.json"));
    replace_in(tu_path("db/manifest.json"), "\"file\":\t\"shard.1.faiss\"", "\"file\":\t\"../shard.1.faiss\"");
    expect_fail(joule_db_open(&db, tu_path("db")), "must be named shard.1.faiss");
    copy_file(tu_path("manifest.keep"), tu_path("db/manifest.json"));
    replace_in(tu_path("db/manifest.json"), "\"format_version\":\t2", "\"format_version\":\t1");
    expect_fail(joule_db_open(&db, tu_path("db")), "go together");
    copy_file(tu_path("manifest.keep"), tu_path("db/manifest.json"));
    OK(joule_db_open(&db, tu_path("db")));
    joule_db_close(db);
}
END_TEST

typedef struct {
    int batches, stop_after;
} stopper;

static bool stop_cb(void *ctx, const char *phase, uint64_t done, uint64_t total) {
    (void)done, (void)total;
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

/* An IVF database in 2 shards: interrupted and resumed, it ends with the same files as an
 * uninterrupted build; a build killed while writing shards (a leftover shard file, no
 * manifest) is finished by --resume. */
START_TEST(test_resume) {
    write_corpus(tu_path("t.bin"), 120, 6, 8);
    const char *src = tu_path("t.bin");
    OK(build(src, tu_path("ref"), "IVF4,Flat", 2));
    joule_db_build_opts o;
    opts(&o, &src, tu_path("db"), "IVF4,Flat", 2);
    stopper st = {0, 3};
    o.checkpoint_every = 1;
    o.progress = stop_cb;
    o.ctx = &st;
    expect_fail(joule_db_build(&o, NULL, NULL), "--resume");
    /* a shard file as a kill during the final writes would leave it */
    copy_file(tu_path("ref/shard.1.faiss"), tu_path("db.partial/shard.1.faiss"));
    o.progress = NULL;
    o.resume = true;
    o.shards = 3;
    expect_fail(joule_db_build(&o, NULL, NULL), "cannot resume");
    o.shards = 2;
    OK(joule_db_build(&o, NULL, NULL));
    for (int s = 0; s < 2; s++) files_equal(tu_path("db/shard.%d.faiss", s), tu_path("ref/shard.%d.faiss", s));
    files_equal(tu_path("db/manifest.json"), tu_path("ref/manifest.json"));
    OK(joule_db_build(&o, NULL, NULL)); /* already built with these options: accepted */
    /* a fresh build removes a stale partial folder holding shard files */
    ck_assert_int_eq(mkdir(tu_path("x.partial"), 0777), 0);
    copy_file(tu_path("ref/shard.0.faiss"), tu_path("x.partial/shard.0.faiss"));
    OK(build(src, tu_path("x"), "IVF4,Flat", 2));
    files_equal(tu_path("x/shard.0.faiss"), tu_path("ref/shard.0.faiss"));
}
END_TEST

START_TEST(test_cli) {
    write_corpus(tu_path("t.bin"), 30, 4, 9);
    ck_assert_int_eq(tu_joule("db build --data %s --out %s --chunk 16 --embedder ngram:32 --shards 3", tu_path("t.bin"),
                              tu_path("db")), 0);
    tu_expect_in("out.txt", "in 3 shards");
    ck_assert_int_eq(tu_joule("db info %s", tu_path("db")), 0);
    tu_expect_in("out.txt", "shard.2.faiss");
    tu_expect_in("out.txt", "entries [0, ");
    ck_assert_int_eq(tu_joule("db verify %s", tu_path("db")), 0);
    tu_expect_in("out.txt", "3 shards");
    ck_assert_int_eq(tu_joule("db build --data %s --out %s --shards 0", tu_path("t.bin"), tu_path("x")), 2);
    tu_expect_one_line("err.txt", "--shards");
    unlink(tu_path("db/shard.0.faiss"));
    ck_assert_int_ne(tu_joule("db verify %s", tu_path("db")), 0);
    tu_expect_one_line("err.txt", "shard.0.faiss: missing");
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("retro_shards");
    TCase *tc = tu_tcase(s, "shards", 120, setup, tu_remove_dir);
    tcase_add_test(tc, test_sharded_equals_unsharded);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_cli);
    return s;
}

int main(void) { return tu_run_suite(suite()); }
