/* testutil.h — support code shared by the Check suites: one temp folder per fixture, paths
 * and whole-file reads/writes inside it, running the `joule` binary ($JOULE_BIN, set by CMake)
 * with its output captured, tiny models and token files, and the runner's main().
 *
 * Header-only: every test executable includes it once; `static inline` keeps the helpers a
 * suite does not use from warning. Helpers assert (ck_assert) instead of returning errors,
 * so they belong inside tests and fixtures, not in main(). */
#ifndef JOULE_TESTS_TESTUTIL_H
#define JOULE_TESTS_TESTUTIL_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before the first include (testutil.h uses nftw and mkdtemp)"
#endif

#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/model.h"
#include "joule/retro.h"
#include "joule/train.h"

/* ---------------------------------------------------------------- the temp folder */

/* The current test's (or suite's) folder, made by tu_make_dir. */
static char tu_dir[4096];

/* A fresh folder $TMPDIR/<tag>XXXXXX (/tmp without TMPDIR) in tu_dir. */
static inline void tu_make_dir(const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(tu_dir, sizeof tu_dir, "%s/%sXXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    ck_assert_msg(mkdtemp(tu_dir) != NULL, "cannot create %s", tu_dir);
}

static inline int tu_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    chmod(path, 0755); /* tests that make files unreadable still get them removed */
    return remove(path);
}

/* Removes tu_dir and everything below it. */
static inline void tu_remove_dir(void) {
    if (tu_dir[0]) nftw(tu_dir, tu_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* tu_dir/<printf(fmt, ...)> in a static buffer; 64 are rotated so a few can coexist. */
static inline const char *tu_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline const char *tu_path(const char *fmt, ...) {
    static char bufs[64][8192];
    static int k;
    char *b = bufs[k++ % 64];
    char rel[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    snprintf(b, sizeof bufs[0], "%s/%s", tu_dir, rel);
    return b;
}

/* ---------------------------------------------------------------- files */

static inline bool tu_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* The whole file, NUL-terminated (caller frees), its size in *len when len is not NULL;
 * NULL when it cannot be opened. */
static inline char *tu_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        char *g = realloc(buf, cap += 1 << 16);
        ck_assert_ptr_nonnull(g);
        buf = g;
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
    } while (got > 0);
    ck_assert_msg(!ferror(f), "cannot read %s", path);
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

/* tu_read that fails the test when the file cannot be opened. */
static inline char *tu_must_read(const char *path, size_t *len) {
    char *buf = tu_read(path, len);
    ck_assert_msg(buf != NULL, "cannot open %s", path);
    return buf;
}

static inline void tu_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static inline void tu_write_text(const char *path, const char *text) { tu_write(path, text, strlen(text)); }

/* tu_read of tu_dir/name. */
static inline char *tu_read_in(const char *name, size_t *len) { return tu_read(tu_path("%s", name), len); }

static inline int tu_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Fails the test unless tu_dir/name exists and mentions needle. */
static inline void tu_expect_in(const char *name, const char *needle) {
    char *text = tu_read_in(name, NULL);
    ck_assert_msg(text != NULL, "%s is missing", name);
    ck_assert_msg(strstr(text, needle) != NULL, "%s does not mention '%s':\n%s", name, needle, text);
    free(text);
}

/* Fails the test unless tu_dir/name mentions needle and is one line (a CLI error message). */
static inline void tu_expect_one_line(const char *name, const char *needle) {
    tu_expect_in(name, needle);
    size_t len;
    char *text = tu_read_in(name, &len);
    ck_assert_msg(tu_count_lines(text) == 1 && text[len - 1] == '\n', "expected one line in %s, got: %s", name, text);
    free(text);
}

/* Whether tu_dir/name (which must exist) mentions needle; prints the text when it does not,
 * for tests that assert on the result themselves. */
static inline bool tu_file_has(const char *name, const char *needle) {
    char *text = tu_read_in(name, NULL);
    ck_assert_msg(text != NULL, "%s is missing", name);
    bool ok = strstr(text, needle) != NULL;
    if (!ok) fprintf(stderr, "%s lacks '%s':\n%s\n", name, needle, text);
    free(text);
    return ok;
}

/* ---------------------------------------------------------------- numbers */

/* a[i] and b[i] agree within tol relative to 1 + |b[i]|, for every i < n. */
static inline void tu_expect_near(const float *a, const float *b, size_t n, double tol, const char *what) {
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(a[i] - b[i]) <= tol * (1.0 + fabs(b[i])), "%s[%zu]: %.9g vs %.9g", what, i, a[i], b[i]);
}

/* ---------------------------------------------------------------- the joule binary */

/* Runs `$JOULE_BIN ARGS` in tu_dir with stdout in out.txt and stderr in err.txt; returns the
 * exit status, or 1000 + the signal that ended it. */
static inline int tu_joule(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int tu_joule(const char *fmt, ...) {
    const char *bin = getenv("JOULE_BIN");
    ck_assert_msg(bin && *bin, "JOULE_BIN is not set (CMake sets it for every test)");
    char args[4096], cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s > out.txt 2> err.txt", tu_dir, bin, args);
    int st = system(cmd);
    ck_assert_int_ne(st, -1);
    return WIFSIGNALED(st) ? 1000 + WTERMSIG(st) : WEXITSTATUS(st);
}

/* ---------------------------------------------------------------- models and tokens */

/* A model of config c, initialised from seed, with training buffers for `batch` rows. */
static inline joule_model *tu_model(const joule_config *c, int batch, uint64_t seed) {
    joule_model *m;
    ck_assert_msg(joule_model_create(&m, c) == JOULE_OK, "%s", joule_last_error());
    joule_model_init(m, seed);
    ck_assert_int_eq(joule_model_alloc_train(m, batch), JOULE_OK);
    return m;
}

/* n byte tokens (0..255) from seed. */
static inline void tu_random_tokens(int32_t *t, int n, uint64_t seed) {
    joule_rng r;
    joule_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)joule_rng_below(&r, 256);
}

/* The small RETRO part of a test config: CCA from layer 1 in every layer, chunk m, k
 * neighbours, an encoder of enc_layers layers (d_model 8, 2 heads, d_ff enc_d_ff). */
static inline void tu_retro_apply(joule_config *c, int m, int k, int enc_layers, int enc_d_ff) {
    c->retro.chunk = m;
    c->retro.k = k;
    c->retro.cca_start = 1;
    c->retro.cca_every = 1;
    c->retro.enc_layers = enc_layers;
    c->retro.enc_d_model = 8;
    c->retro.enc_heads = 2;
    c->retro.enc_d_ff = enc_d_ff;
    joule_retro_config_apply(c);
}

/* The zero-initialised CCA output projections get N(0, std^2) values so retrieval matters. */
static inline void tu_randomise_cca_out(joule_model *m, float std, uint64_t seed) {
    joule_rng r;
    joule_rng_seed(&r, seed);
    for (int i = 0; i < m->n_tensors; i++)
        if (strstr(m->tensors[i].name, "cca.wo")) {
            float *w = joule_model_param(m, i);
            for (size_t j = 0; j < m->tensors[i].numel; j++) w[j] = std * joule_rng_normal(&r);
        }
}

/* A token file under construction; tu_tokens_doc adds one document, tu_tokens_commit ends it. */
static inline joule_token_writer *tu_tokens_open(const char *bin) {
    joule_token_writer *w;
    ck_assert_msg(joule_token_writer_open(&w, bin) == JOULE_OK, "%s", joule_last_error());
    return w;
}

/* Document `id`: `len` bytes of text, `repeat` times over. */
static inline void tu_tokens_doc(joule_token_writer *w, uint64_t id, const void *text, size_t len, int repeat) {
    ck_assert_int_eq(joule_token_writer_begin_doc(w, id), JOULE_OK);
    for (int r = 0; r < repeat; r++)
        ck_assert_int_eq(joule_token_writer_append(w, (const uint8_t *)text, len), JOULE_OK);
    ck_assert_int_eq(joule_token_writer_end_doc(w), JOULE_OK);
}

static inline void tu_tokens_commit(joule_token_writer *w) {
    ck_assert_msg(joule_token_writer_commit(w) == JOULE_OK, "%s", joule_last_error());
}

/* ---------------------------------------------------------------- short training runs */

/* For the exact-resume tests: resumes the checkpoint at `path`, or starts a model of config c
 * initialised from seed 77; with training buffers for `batch` rows. */
static inline joule_model *tu_train_model(const char *path, int resume, const joule_config *c, int batch) {
    if (!resume) return tu_model(c, batch, 77);
    joule_model *m;
    ck_assert_msg(joule_checkpoint_load(&m, path, NULL) == JOULE_OK, "%s", joule_last_error());
    ck_assert_int_eq(joule_model_alloc_train(m, batch), JOULE_OK);
    return m;
}

/* Options of those runs: tu_dir/<name>.safetensors and <name>.jsonl, bin for training and
 * validation, seed 77, 2 micro-batches of 2, evaluation every 4 steps, 3 warm-up steps; the
 * caller sets the length. The paths live in static buffers until the next call. */
static inline void tu_train_opts(joule_train_opts *o, const char *name, const char *bin, uint64_t stop_after,
                                 int resume) {
    static char out[8192], log[8192];
    snprintf(out, sizeof out, "%s/%s.safetensors", tu_dir, name);
    snprintf(log, sizeof log, "%s/%s.jsonl", tu_dir, name);
    joule_train_opts_init(o);
    o->train_path = o->val_path = bin;
    o->out_path = out;
    o->log_path = log;
    o->resume = resume;
    o->batch = o->accum = 2;
    o->seed = 77;
    o->stop_after = stop_after;
    o->eval_every = 4;
    o->adam.warmup_steps = 3;
}

/* ---------------------------------------------------------------- the runner */

/* A test case of suite s with a per-test fixture (either may be NULL) and a timeout. */
static inline TCase *tu_tcase(Suite *s, const char *name, double timeout_s, SFun setup, SFun teardown) {
    TCase *tc = tcase_create(name);
    if (setup || teardown) tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, timeout_s);
    suite_add_tcase(s, tc);
    return tc;
}

/* Runs every test of s (each forked by Check); the exit status for main(). */
static inline int tu_run_suite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
