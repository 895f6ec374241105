/* Tests for corpus preparation, token files and batches.
 *
 * Prepared documents are checked against a second, deliberately simple splitter
 * written here (whole files in memory, line by line), so the streaming splitter in
 * core/corpus.c is compared with an independent reading of the same rules. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/data.h"
#include "testutil.h"

/* ---- fixtures: one fresh temporary directory per test ---- */

static void setup(void) { tu_make_dir("joule_data_"); }

/* ---- the independent reference splitter ---- */

typedef struct {
    char **s;
    size_t *len;
    size_t n, cap;
} docs;

static void docs_add(docs *d, const char *s, size_t len) {
    if (len == 0) return; /* empty documents are skipped */
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 16;
        d->s = realloc(d->s, d->cap * sizeof *d->s);
        d->len = realloc(d->len, d->cap * sizeof *d->len);
    }
    d->s[d->n] = malloc(len);
    memcpy(d->s[d->n], s, len);
    d->len[d->n++] = len;
}

static void docs_free(docs *d) {
    for (size_t i = 0; i < d->n; i++) free(d->s[i]);
    free(d->s);
    free(d->len);
    memset(d, 0, sizeof *d);
}

static int line_splits(const char *line, size_t n, joule_split_mode mode, const char *sep) {
    if (mode == JOULE_SPLIT_BLANK_LINE) {
        for (size_t i = 0; i < n; i++)
            if (!strchr(" \t\r\f\v", line[i]) || line[i] == 0) return 0;
        return 1;
    }
    size_t m = strlen(sep);
    if (n == m + 1 && line[m] == '\r') n = m;
    return n == m && memcmp(line, sep, m) == 0;
}

/* Append the documents of one file's text (NULs already removed) to d. */
static void ref_split(docs *d, const char *text, size_t len, joule_split_mode mode, const char *sep) {
    if (mode == JOULE_SPLIT_FILE) {
        docs_add(d, text, len);
        return;
    }
    char *cur = malloc(len + 1);
    size_t cur_len = 0, i = 0;
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len; /* line is text[i, end) */
        if (line_splits(text + i, end - i, mode, sep)) {
            docs_add(d, cur, cur_len);
            cur_len = 0;
        } else {
            size_t with_nl = nl ? end + 1 - i : end - i;
            memcpy(cur + cur_len, text + i, with_nl);
            cur_len += with_nl;
        }
        i = nl ? end + 1 : len;
    }
    docs_add(d, cur, cur_len);
    free(cur);
}

static void ref_split_file(docs *d, const char *path, joule_split_mode mode, const char *sep) {
    size_t len;
    char *text = tu_must_read(path, &len);
    size_t w = 0;
    for (size_t i = 0; i < len; i++)
        if (text[i]) text[w++] = text[i];
    ref_split(d, text, w, mode, sep);
    free(text);
}

/* ---- test corpora ---- */

static char g_c_text[16384];

/* in/: a.txt, b.txt, bin.dat (binary), empty.txt, .hidden.txt, sub/c.txt (CRLF, with a
 * NUL after the first 8 KiB), sub/.git/x.txt (hidden folder). Read order: a, b, empty, c. */
static const char *make_small_corpus(void) {
    mkdir(tu_path("in"), 0755);
    mkdir(tu_path("in/sub"), 0755);
    mkdir(tu_path("in/sub/.git"), 0755);
    tu_write_text(tu_path("in/a.txt"), "Hello world.\n\nSecond para\nline two\n \t\n\n\nThird\n");
    tu_write_text(tu_path("in/b.txt"), "one\n%\ntwo\nlines\n%\n%\nthree");
    tu_write(tu_path("in/bin.dat"), "\x01\x02\0binary\n", 10);
    tu_write_text(tu_path("in/empty.txt"), "");
    tu_write_text(tu_path("in/.hidden.txt"), "secret\n");
    tu_write_text(tu_path("in/sub/.git/x.txt"), "also secret\n");
    size_t n = 0;
    for (int i = 0; n < 9000; i++) n += (size_t)sprintf(g_c_text + n, "line %d of c\r\n", i);
    g_c_text[n++] = 0; /* dropped from the text, too late to make the file binary */
    n += (size_t)sprintf(g_c_text + n, "after nul\r\n%%\r\nafter sep\r\n\r\ntail");
    tu_write(tu_path("in/sub/c.txt"), g_c_text, n);
    static char in[8192];
    snprintf(in, sizeof in, "%s", tu_path("in"));
    return in;
}

static void ref_small_corpus(docs *d, joule_split_mode mode, const char *sep) {
    const char *files[] = {"in/a.txt", "in/b.txt", "in/empty.txt", "in/sub/c.txt"};
    for (int i = 0; i < 4; i++) ref_split_file(d, tu_path("%s", files[i]), mode, sep);
}

/* A file of n_paras short paragraphs separated by blank lines. */
static void make_paragraphs(const char *path, int n_paras) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < n_paras; i++) fprintf(f, "Paragraph %d says %d.\nIt has two lines.\n\n", i, i * 7919 % 1000);
    fclose(f);
}

static int prepare_inputs(const char *input, const char *out, joule_split_mode mode, const char *sep,
                          uint64_t seed, double val_fraction, joule_prepare_report *r) {
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    const char *inputs[1] = {input};
    o.inputs = inputs;
    o.n_inputs = 1;
    o.out_dir = out;
    o.split = mode;
    o.separator = sep;
    o.seed = seed;
    o.val_fraction = val_fraction;
    return joule_data_prepare(&o, r);
}

/* ---- reading prepared output ---- */

typedef struct {
    joule_tokens split[2]; /* train, val */
} prepared;

static void open_prepared(prepared *p, const char *dir) {
    char path[8192];
    snprintf(path, sizeof path, "%s/train.bin", dir);
    ck_assert_msg(joule_tokens_open(&p->split[0], path) == JOULE_OK, "%s", joule_last_error());
    snprintf(path, sizeof path, "%s/val.bin", dir);
    ck_assert_msg(joule_tokens_open(&p->split[1], path) == JOULE_OK, "%s", joule_last_error());
}

static void close_prepared(prepared *p) {
    joule_tokens_close(&p->split[0]);
    joule_tokens_close(&p->split[1]);
}

/* Every document ends with the one EOD and holds no other 0 byte. */
static void check_eod(const joule_tokens *t) {
    for (uint64_t i = 0; i < t->n_docs; i++) {
        uint64_t a = t->doc_offsets[i], b = t->doc_offsets[i + 1];
        ck_assert_uint_eq(t->tok[b - 1], 0);
        ck_assert_ptr_null(memchr(t->tok + a, 0, b - 1 - a));
    }
}

/* Train and val documents, put back in id order, are exactly the reference documents. */
static void check_documents(const prepared *p, const docs *want) {
    uint64_t total = p->split[0].n_docs + p->split[1].n_docs;
    ck_assert_uint_eq(total, want->n);
    int *seen = calloc(total, sizeof *seen);
    for (int s = 0; s < 2; s++) {
        const joule_tokens *t = &p->split[s];
        check_eod(t);
        for (uint64_t i = 0; i < t->n_docs; i++) {
            uint64_t id = t->doc_ids[i];
            ck_assert_uint_lt(id, total);
            ck_assert_int_eq(seen[id]++, 0);
            uint64_t a = t->doc_offsets[i], len = t->doc_offsets[i + 1] - a - 1;
            ck_assert_msg(len == want->len[id] && memcmp(t->tok + a, want->s[id], len) == 0,
                          "document %llu differs from the reference", (unsigned long long)id);
        }
    }
    free(seen);
}

static cJSON *read_meta(const char *dir) {
    char path[8192];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    size_t len;
    char *text = tu_must_read(path, &len);
    cJSON *m = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(m);
    return m;
}

static double meta_num(const cJSON *m, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(m, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    ck_assert_msg(cJSON_IsNumber(x), "meta.json: %s%s%s missing", a, b ? "." : "", b ? b : "");
    return x->valuedouble;
}

static void check_meta(const char *dir, const joule_prepare_report *r, const char *mode) {
    cJSON *m = read_meta(dir);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(m, "tokenizer")->valuestring, "bytes");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(m, "split_mode")->valuestring, mode);
    ck_assert_int_eq((int)meta_num(m, "vocab_size", NULL), 256);
    ck_assert_int_eq((int)meta_num(m, "format_version", NULL), 1);
    ck_assert_uint_eq((uint64_t)meta_num(m, "train", "documents"), r->train_docs);
    ck_assert_uint_eq((uint64_t)meta_num(m, "train", "tokens"), r->train_tokens);
    ck_assert_uint_eq((uint64_t)meta_num(m, "val", "documents"), r->val_docs);
    ck_assert_uint_eq((uint64_t)meta_num(m, "val", "tokens"), r->val_tokens);
    cJSON_Delete(m);
}

/* Prepare the small corpus in one mode and compare everything with the reference. */
static void roundtrip_small(joule_split_mode mode, const char *sep, const char *mode_name) {
    const char *in = make_small_corpus();
    joule_prepare_report r;
    int rc = prepare_inputs(in, tu_path("out"), mode, sep, 42, 0.3, &r);
    ck_assert_msg(rc == JOULE_OK, "%s", joule_last_error());
    ck_assert_uint_eq(r.n_files, 4);
    ck_assert_uint_eq(r.skipped_hidden, 2);
    ck_assert_uint_eq(r.skipped_binary, 1);
    docs want = {0};
    ref_small_corpus(&want, mode, sep);
    ck_assert_uint_eq(r.n_docs, want.n);
    ck_assert_uint_eq(r.train_docs + r.val_docs, want.n);
    ck_assert_uint_ge(r.train_docs, 1);
    ck_assert_uint_ge(r.val_docs, 1);
    prepared p;
    open_prepared(&p, tu_path("out"));
    ck_assert_uint_eq(p.split[0].n_docs, r.train_docs);
    ck_assert_uint_eq(p.split[0].n_tokens, r.train_tokens);
    ck_assert_uint_eq(p.split[1].n_tokens, r.val_tokens);
    check_documents(&p, &want);
    check_meta(tu_path("out"), &r, mode_name);
    close_prepared(&p);
    docs_free(&want);
}

/* ---- preparation tests ---- */

START_TEST(test_prepare_file_mode) {
    roundtrip_small(JOULE_SPLIT_FILE, NULL, "file");
    /* a, b, c: the empty file gives no document, the binary and hidden ones are skipped */
    docs want = {0};
    ref_small_corpus(&want, JOULE_SPLIT_FILE, NULL);
    ck_assert_uint_eq(want.n, 3);
    docs_free(&want);
}
END_TEST

START_TEST(test_prepare_blank_line_mode) {
    roundtrip_small(JOULE_SPLIT_BLANK_LINE, NULL, "blank-line");
    docs d = {0};
    ref_split_file(&d, tu_path("in/a.txt"), JOULE_SPLIT_BLANK_LINE, NULL);
    ck_assert_uint_eq(d.n, 3);
    ck_assert(d.len[1] == 21 && !memcmp(d.s[1], "Second para\nline two\n", 21));
    docs_free(&d);
}
END_TEST

START_TEST(test_prepare_separator_mode) {
    roundtrip_small(JOULE_SPLIT_SEPARATOR, "%", "separator");
    docs d = {0};
    ref_split_file(&d, tu_path("in/b.txt"), JOULE_SPLIT_SEPARATOR, "%");
    ck_assert_uint_eq(d.n, 3);
    ck_assert(d.len[1] == 10 && !memcmp(d.s[1], "two\nlines\n", 10));
    ck_assert(d.len[2] == 5 && !memcmp(d.s[2], "three", 5));
    docs_free(&d);
}
END_TEST

/* A multi-character separator, lines longer than it, and chunk-sized content. */
START_TEST(test_prepare_long_separator_and_big_file) {
    mkdir(tu_path("in"), 0755);
    size_t cap = 3u << 20, n = 0;
    char *text = malloc(cap);
    for (int i = 0; n + 100 < cap; i++) {
        n += (size_t)sprintf(text + n, "record %d ----- not a separator\n", i);
        if (i % 1000 == 999) n += (size_t)sprintf(text + n, i % 2000 == 999 ? "-----\n" : "-----\r\n");
    }
    tu_write(tu_path("in/big.txt"), text, n);
    free(text);
    joule_prepare_report r;
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_SEPARATOR, "-----", 3, 0.2, &r), JOULE_OK);
    docs want = {0};
    ref_split_file(&want, tu_path("in/big.txt"), JOULE_SPLIT_SEPARATOR, "-----");
    ck_assert_uint_gt(want.n, 50);
    prepared p;
    open_prepared(&p, tu_path("out"));
    check_documents(&p, &want);
    close_prepared(&p);
    docs_free(&want);
}
END_TEST

static void file_bytes_equal(const char *a, const char *b) {
    size_t na, nb;
    char *x = tu_must_read(a, &na), *y = tu_must_read(b, &nb);
    ck_assert_msg(na == nb && memcmp(x, y, na) == 0, "%s and %s differ", a, b);
    free(x);
    free(y);
}

START_TEST(test_prepare_deterministic) {
    mkdir(tu_path("in"), 0755);
    make_paragraphs(tu_path("in/p.txt"), 300);
    joule_prepare_report r1, r2, r3;
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("o1"), JOULE_SPLIT_BLANK_LINE, NULL, 5, 0.2, &r1), JOULE_OK);
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("o2"), JOULE_SPLIT_BLANK_LINE, NULL, 5, 0.2, &r2), JOULE_OK);
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("o3"), JOULE_SPLIT_BLANK_LINE, NULL, 6, 0.2, &r3), JOULE_OK);
    const char *names[] = {"train.bin", "train.idx", "val.bin", "val.idx", "meta.json"};
    for (int i = 0; i < 5; i++) file_bytes_equal(tu_path("o1/%s", names[i]), tu_path("o2/%s", names[i]));
    /* Another seed splits the same 300 documents differently. */
    ck_assert_uint_eq(r3.n_docs, 300);
    prepared a, b;
    open_prepared(&a, tu_path("o1"));
    open_prepared(&b, tu_path("o3"));
    int same = a.split[1].n_docs == b.split[1].n_docs &&
               !memcmp(a.split[1].doc_ids, b.split[1].doc_ids, a.split[1].n_docs * sizeof(uint64_t));
    ck_assert_msg(!same, "seeds 5 and 6 gave the same validation documents");
    close_prepared(&a);
    close_prepared(&b);
}
END_TEST

START_TEST(test_prepare_val_fraction) {
    mkdir(tu_path("in"), 0755);
    make_paragraphs(tu_path("in/p.txt"), 4000);
    joule_prepare_report r;
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_BLANK_LINE, NULL, 1, 0.05, &r), JOULE_OK);
    ck_assert_uint_eq(r.n_docs, 4000);
    double frac = (double)r.val_docs / (double)r.n_docs;
    ck_assert_msg(frac > 0.035 && frac < 0.065, "validation fraction %.4f", frac);
}
END_TEST

/* Two documents always give one in each split, whatever the seed and fraction. */
START_TEST(test_prepare_both_splits_nonempty) {
    mkdir(tu_path("in"), 0755);
    tu_write_text(tu_path("in/1.txt"), "first\n");
    tu_write_text(tu_path("in/2.txt"), "second\n");
    const double fracs[] = {0.01, 0.5, 0.99};
    for (int f = 0; f < 3; f++)
        for (uint64_t seed = 0; seed < 12; seed++) {
            joule_prepare_report r;
            ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_FILE, NULL, seed, fracs[f], &r),
                             JOULE_OK);
            ck_assert_uint_eq(r.train_docs, 1);
            ck_assert_uint_eq(r.val_docs, 1);
            docs want = {0};
            ref_split_file(&want, tu_path("in/1.txt"), JOULE_SPLIT_FILE, NULL);
            ref_split_file(&want, tu_path("in/2.txt"), JOULE_SPLIT_FILE, NULL);
            prepared p;
            open_prepared(&p, tu_path("out"));
            check_documents(&p, &want);
            close_prepared(&p);
            docs_free(&want);
        }
}
END_TEST

/* One document goes to training; validation is a valid empty file. */
START_TEST(test_prepare_single_document) {
    mkdir(tu_path("in"), 0755);
    tu_write_text(tu_path("in/only.txt"), "alone\n");
    joule_prepare_report r;
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_FILE, NULL, 9, 0.99, &r), JOULE_OK);
    ck_assert_uint_eq(r.train_docs, 1);
    ck_assert_uint_eq(r.val_docs, 0);
    prepared p;
    open_prepared(&p, tu_path("out"));
    ck_assert_uint_eq(p.split[1].n_tokens, 0);
    ck_assert_uint_eq(p.split[0].n_tokens, 7);
    ck_assert_uint_eq(joule_eval_windows(&p.split[1], 4), 0);
    close_prepared(&p);
}
END_TEST

START_TEST(test_prepare_no_text) {
    mkdir(tu_path("in"), 0755);
    tu_write_text(tu_path("in/empty.txt"), "");
    tu_write_text(tu_path("in/blank.txt"), "\n\n  \n");
    joule_prepare_report r;
    int rc = prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_BLANK_LINE, NULL, 1, 0.05, &r);
    ck_assert_int_eq(rc, JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "no text"));
    ck_assert_int_ne(access(tu_path("out/meta.json"), F_OK), 0);
    ck_assert_int_ne(access(tu_path("out/train.bin"), F_OK), 0);
}
END_TEST

/* Preparing into a folder inside the input twice must not read the first output. */
START_TEST(test_prepare_skips_output_folder) {
    const char *in = make_small_corpus();
    joule_prepare_report r1, r2;
    ck_assert_int_eq(prepare_inputs(in, tu_path("in/zz_out"), JOULE_SPLIT_FILE, NULL, 1, 0.3, &r1), JOULE_OK);
    ck_assert_int_eq(prepare_inputs(in, tu_path("in/zz_out"), JOULE_SPLIT_FILE, NULL, 1, 0.3, &r2), JOULE_OK);
    ck_assert_uint_eq(r1.n_docs, r2.n_docs);
    ck_assert_uint_eq(r1.train_tokens, r2.train_tokens);
}
END_TEST

/* Symlinked files are read; symlinked folders are not followed (no cycles). */
START_TEST(test_prepare_symlinks) {
    mkdir(tu_path("in"), 0755);
    tu_write_text(tu_path("in/a.txt"), "alpha\n");
    ck_assert_int_eq(symlink("a.txt", tu_path("in/b_link.txt")), 0);
    ck_assert_int_eq(symlink(".", tu_path("in/loop")), 0);
    ck_assert_int_eq(symlink("missing", tu_path("in/broken")), 0);
    joule_prepare_report r;
    ck_assert_msg(prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_FILE, NULL, 1, 0.5, &r) == JOULE_OK, "%s",
                  joule_last_error());
    ck_assert_uint_eq(r.n_files, 2);
    ck_assert_uint_eq(r.n_docs, 2);
    ck_assert_uint_eq(r.skipped_other, 2);
}
END_TEST

static uint64_t g_prog_done, g_prog_total, g_prog_calls, g_warn_calls;
static void on_progress(void *ctx, uint64_t done, uint64_t total) {
    ck_assert_uint_le(done, total);
    ck_assert_uint_ge(done, g_prog_done);
    g_prog_done = done;
    g_prog_total = total;
    g_prog_calls++;
}
static void on_warn(void *ctx, const char *msg) {
    ck_assert_ptr_null(strchr(msg, '\n'));
    g_warn_calls++;
}

START_TEST(test_prepare_progress_and_warnings) {
    const char *in = make_small_corpus();
    make_paragraphs(tu_path("in/p.txt"), 60000); /* a few MiB: several progress calls */
    struct stat st;
    ck_assert_int_eq(stat(tu_path("in/p.txt"), &st), 0);
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    o.inputs = &in;
    o.n_inputs = 1;
    o.out_dir = tu_path("out");
    o.progress = on_progress;
    o.warn = on_warn;
    joule_prepare_report r;
    ck_assert_int_eq(joule_data_prepare(&o, &r), JOULE_OK);
    ck_assert_uint_ge(g_prog_calls, 3);
    ck_assert_uint_eq(g_prog_done, g_prog_total);
    ck_assert_uint_gt(g_prog_total, (uint64_t)st.st_size);
    ck_assert_uint_eq(g_warn_calls, 1); /* the binary file; hidden entries are only counted */
}
END_TEST

START_TEST(test_prepare_bad_options) {
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_ARG); /* no output */
    o.out_dir = tu_path("out");
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_ARG); /* no input */
    const char *in = make_small_corpus();
    o.inputs = &in;
    o.n_inputs = 1;
    o.preset = "default";
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_ARG); /* both */
    o.preset = NULL;
    const double bad_fracs[] = {0.0, 1.0, -0.1, NAN};
    for (int i = 0; i < 4; i++) {
        o.val_fraction = bad_fracs[i];
        ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_ARG);
    }
    o.val_fraction = 0.1;
    o.split = JOULE_SPLIT_SEPARATOR;
    o.separator = "";
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_ARG);
    const char *missing = tu_path("nope");
    o.split = JOULE_SPLIT_FILE;
    o.inputs = &missing;
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_IO);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "nope"));

    ck_assert_int_eq(joule_prepare_parse_split(&o, "blank-line"), JOULE_OK);
    ck_assert_int_eq(o.split, JOULE_SPLIT_BLANK_LINE);
    ck_assert_int_eq(joule_prepare_parse_split(&o, "sep:%"), JOULE_OK);
    ck_assert_int_eq(o.split, JOULE_SPLIT_SEPARATOR);
    ck_assert_str_eq(o.separator, "%");
    ck_assert_int_eq(joule_prepare_parse_split(&o, "file"), JOULE_OK);
    ck_assert_int_eq(o.split, JOULE_SPLIT_FILE);
    ck_assert_int_eq(joule_prepare_parse_split(&o, "blank_line"), JOULE_ERR_ARG);
    ck_assert_int_eq(joule_prepare_parse_split(&o, "sep:"), JOULE_ERR_ARG);
}
END_TEST

START_TEST(test_preset_missing_files) {
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    o.preset = "default";
    o.preset_root = tu_dir;
    o.out_dir = tu_path("out");
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_IO);
    const char *msg = joule_last_error();
    ck_assert_msg(strstr(msg, "gcide.dict.dz") && strstr(msg, "apt-get install dict-gcide fortunes"), "%s", msg);
    o.preset = "fortunes";
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_IO);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "games/fortunes"));
    o.preset = "wikipedia";
    ck_assert_int_eq(joule_data_prepare(&o, NULL), JOULE_ERR_ARG);
}
END_TEST

/* A small fake preset tree: a gzip'd dictionary with an index, and a fortune folder. */
START_TEST(test_preset_fake_tree) {
    mkdir(tu_path("root"), 0755);
    mkdir(tu_path("root/dictd"), 0755);
    mkdir(tu_path("root/games"), 0755);
    mkdir(tu_path("root/games/fortunes"), 0755);
    mkdir(tu_path("root/games/fortunes/off"), 0755);
    /* text: header at 0 (len 6) then articles "cat\n" at 7, "dog\n" at 12 (two headwords) */
    tu_write_text(tu_path("root/dictd/text"), "HEADER\ncat\n\ndog\n\n");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "gzip -c '%s' > '%s'", tu_path("root/dictd/text"), tu_path("root/dictd/gcide.dict.dz"));
    ck_assert_int_eq(system(cmd), 0);
    /* DICT base64: 0=A, 6=G, 7=H, 4=E, 12=M */
    /* "kitty" overlaps "dog": articles are clipped at the next one */
    tu_write_text(tu_path("root/dictd/gcide.index"), "00-database-info\tA\tG\n00-web1913-info\tA\tG\ncat\tH\tE\n"
                                                "kitty\tH\tG\ndog\tM\tE\nhound\tM\tE\n");
    tu_write_text(tu_path("root/games/fortunes/a"), "f1\n%\nf2\nmore\n%\n");
    tu_write_text(tu_path("root/games/fortunes/a.dat"), "\x01\x02");
    ck_assert_int_eq(symlink("a", tu_path("root/games/fortunes/a.u8")), 0);
    tu_write_text(tu_path("root/games/fortunes/off/rude"), "nope\n%\n");
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    o.preset = "default";
    o.preset_root = tu_path("root");
    o.out_dir = tu_path("out");
    joule_prepare_report r;
    ck_assert_msg(joule_data_prepare(&o, &r) == JOULE_OK, "%s", joule_last_error());
    docs want = {0};
    docs_add(&want, "cat\n\n", 5);
    docs_add(&want, "dog\n", 4);
    docs_add(&want, "f1\n", 3);
    docs_add(&want, "f2\nmore\n", 8);
    prepared p;
    open_prepared(&p, tu_path("out"));
    check_documents(&p, &want);
    close_prepared(&p);
    docs_free(&want);
    check_meta(tu_path("out"), &r, "preset");

    /* An index entry past the end of the text is a format error naming the file. */
    tu_write_text(tu_path("root/dictd/gcide.index"), "cat\tH\tE\nfar\tBA\tE\n");
    ck_assert_int_eq(joule_data_prepare(&o, &r), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "gcide.dict.dz"));
    tu_write_text(tu_path("root/dictd/gcide.index"), "cat\tH\n");
    ck_assert_int_eq(joule_data_prepare(&o, &r), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "gcide.index:1"));
}
END_TEST

/* The real preset, when the Debian packages are installed. */
START_TEST(test_preset_default) {
    if (access("/usr/share/dictd/gcide.dict.dz", R_OK) != 0 || access("/usr/share/games/fortunes", R_OK) != 0) {
        fprintf(stderr, "test_preset_default: skipped, dict-gcide or fortunes not installed\n");
        return;
    }
    joule_prepare_opts o;
    joule_prepare_opts_init(&o);
    o.preset = "default";
    o.out_dir = tu_path("out");
    joule_prepare_report r;
    ck_assert_msg(joule_data_prepare(&o, &r) == JOULE_OK, "%s", joule_last_error());
    fprintf(stderr,
            "test_preset_default: %llu files, %llu docs (train %llu docs / %llu tokens, val %llu docs / %llu "
            "tokens) in %.2f s\n",
            (unsigned long long)r.n_files, (unsigned long long)r.n_docs, (unsigned long long)r.train_docs,
            (unsigned long long)r.train_tokens, (unsigned long long)r.val_docs, (unsigned long long)r.val_tokens,
            r.seconds);
    ck_assert_uint_gt(r.n_docs, 100000);
    ck_assert_uint_gt(r.train_tokens + r.val_tokens, 40000000);
    double frac = (double)r.val_docs / (double)r.n_docs;
    ck_assert_msg(frac > 0.045 && frac < 0.055, "validation fraction %.4f", frac);
    ck_assert_double_lt(r.seconds, 20.0);
    prepared p;
    open_prepared(&p, tu_path("out"));
    /* Articles start at their headword: the one for "1-dodecanol" is a whole document. */
    const char *head = "1-dodecanol \\1-dodecanol\\ n.";
    int found = 0;
    for (int s = 0; s < 2 && !found; s++) {
        const joule_tokens *t = &p.split[s];
        const uint8_t *hit = memmem(t->tok, t->n_tokens, head, strlen(head));
        if (!hit) continue;
        found = 1;
        uint64_t pos = (uint64_t)(hit - t->tok);
        ck_assert_uint_eq(t->doc_offsets[joule_tokens_doc_at(t, pos)], pos);
    }
    ck_assert(found);
    close_prepared(&p);
}
END_TEST

/* ---- token writer ---- */

START_TEST(test_writer_move_last_doc) {
    joule_token_writer *a, *b;
    ck_assert_int_eq(joule_token_writer_open(&a, tu_path("a.bin")), JOULE_OK);
    ck_assert_int_eq(joule_token_writer_open(&b, tu_path("b.bin")), JOULE_OK);
    const char *texts[] = {"zero", "one!", "two.."};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(joule_token_writer_begin_doc(a, (uint64_t)i * 10), JOULE_OK);
        ck_assert_int_eq(joule_token_writer_append(a, (const uint8_t *)texts[i], strlen(texts[i])), JOULE_OK);
        ck_assert_int_eq(joule_token_writer_end_doc(a), JOULE_OK);
    }
    ck_assert_int_eq(joule_token_writer_move_last_doc(a, b), JOULE_OK);
    ck_assert_uint_eq(joule_token_writer_docs(a), 2);
    ck_assert_uint_eq(joule_token_writer_tokens(a), 10);
    ck_assert_uint_eq(joule_token_writer_tokens(b), 6);
    ck_assert_int_eq(joule_token_writer_move_last_doc(b, b), JOULE_ERR_ARG);
    ck_assert_int_eq(joule_token_writer_commit(a), JOULE_OK);
    ck_assert_int_eq(joule_token_writer_commit(b), JOULE_OK);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, tu_path("a.bin")), JOULE_OK);
    ck_assert_uint_eq(t.n_docs, 2);
    ck_assert_int_eq(memcmp(t.tok, "zero\0one!\0", 10), 0);
    ck_assert_uint_eq(t.doc_ids[1], 10);
    joule_tokens_close(&t);
    ck_assert_int_eq(joule_tokens_open(&t, tu_path("b.bin")), JOULE_OK);
    ck_assert_uint_eq(t.n_docs, 1);
    ck_assert_int_eq(memcmp(t.tok, "two..\0", 6), 0);
    ck_assert_uint_eq(t.doc_ids[0], 20);
    joule_tokens_close(&t);
}
END_TEST

/* ---- reader validation: one broken file per test case ---- */

/* Prepare the small corpus, copy train.bin/.idx to bad.bin/.idx, return their bytes. */
static void make_bad_copy(char **bin, size_t *bin_len, char **idx, size_t *idx_len) {
    const char *in = make_small_corpus();
    ck_assert_int_eq(prepare_inputs(in, tu_path("out"), JOULE_SPLIT_BLANK_LINE, NULL, 1, 0.2, NULL), JOULE_OK);
    *bin = tu_must_read(tu_path("out/train.bin"), bin_len);
    *idx = tu_must_read(tu_path("out/train.idx"), idx_len);
}

static void expect_open_fails(int want_rc, const char *want_name, const char *want_words) {
    joule_tokens t;
    int rc = joule_tokens_open(&t, tu_path("bad.bin"));
    const char *msg = joule_last_error();
    ck_assert_msg(rc == want_rc, "status %d, wanted %d: %s", rc, want_rc, msg);
    ck_assert_msg(strstr(msg, want_name) != NULL, "message does not name %s: %s", want_name, msg);
    ck_assert_msg(strstr(msg, want_words) != NULL, "message lacks '%s': %s", want_words, msg);
    ck_assert_ptr_null(strchr(msg, '\n'));
}

typedef enum {
    BAD_TRUNCATED_BIN,
    BAD_BIN_MAGIC,
    BAD_BIN_VERSION,
    BAD_IDX_MAGIC,
    BAD_IDX_VERSION,
    BAD_NOT_MONOTONE,
    BAD_LAST_OFFSET,
    BAD_NDOCS_MISMATCH,
    BAD_TRUNCATED_IDX,
    BAD_MISSING_IDX,
    BAD_NO_EOD,
    BAD_IDS_ORDER,
    BAD_COUNT
} bad_kind;

START_TEST(test_reader_rejects) {
    char *bin, *idx;
    size_t bin_len, idx_len;
    make_bad_copy(&bin, &bin_len, &idx, &idx_len);
    uint64_t n_docs, *off = (uint64_t *)(idx + 64);
    memcpy(&n_docs, idx + 16, 8);
    ck_assert_uint_ge(n_docs, 2);
    int rc_want = JOULE_ERR_FORMAT;
    const char *name = "bad.idx", *words = "";
    switch ((bad_kind)_i) {
    case BAD_TRUNCATED_BIN: bin_len--; name = "bad.bin"; words = "truncated"; break;
    case BAD_BIN_MAGIC: bin[0] = 'X'; name = "bad.bin"; words = "magic"; break;
    case BAD_BIN_VERSION: bin[8] = 2; name = "bad.bin"; words = "version 2"; break;
    case BAD_IDX_MAGIC: idx[7] = 'Y'; words = "magic"; break;
    case BAD_IDX_VERSION: idx[8] = 9; words = "version 9"; break;
    case BAD_NOT_MONOTONE: off[1] = off[0]; words = "not increasing"; break;
    case BAD_LAST_OFFSET: off[n_docs] -= 1; words = "last document offset"; break;
    case BAD_NDOCS_MISMATCH: bin[24] ^= 1; words = "documents but"; break;
    case BAD_TRUNCATED_IDX: idx_len -= 8; words = "does not match"; break;
    case BAD_MISSING_IDX: idx_len = SIZE_MAX; rc_want = JOULE_ERR_ARG; words = "cannot open"; break;
    case BAD_NO_EOD: bin[64 + off[1] - 1] = 'x'; words = "EOD"; break;
    case BAD_IDS_ORDER: off[n_docs + 2] = off[n_docs + 1]; words = "ids not increasing"; break;
    default: ck_abort();
    }
    tu_write(tu_path("bad.bin"), bin, bin_len);
    if (idx_len != SIZE_MAX) tu_write(tu_path("bad.idx"), idx, idx_len);
    expect_open_fails(rc_want, name, words);
    free(bin);
    free(idx);
}
END_TEST

START_TEST(test_reader_rejects_misc) {
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, tu_path("none.bin")), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "none.bin"));
    ck_assert_int_eq(joule_tokens_open(&t, tu_path("tokens.dat")), JOULE_ERR_ARG);
    tu_write(tu_path("tiny.bin"), "JOULE", 5);
    ck_assert_int_eq(joule_tokens_open(&t, tu_path("tiny.bin")), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "tiny.bin"));
}
END_TEST

/* ---- batches and evaluation windows ---- */

static void open_paragraph_tokens(joule_tokens *t, int n_paras) {
    mkdir(tu_path("in"), 0755);
    make_paragraphs(tu_path("in/p.txt"), n_paras);
    ck_assert_int_eq(prepare_inputs(tu_path("in"), tu_path("out"), JOULE_SPLIT_BLANK_LINE, NULL, 1, 0.1, NULL), JOULE_OK);
    ck_assert_int_eq(joule_tokens_open(t, tu_path("out/train.bin")), JOULE_OK);
}

/* Start of the window (inputs, last target) in the token stream, or -1. */
static int64_t find_window(const joule_tokens *t, const int32_t *in, const int32_t *tg, int T) {
    for (uint64_t s = 0; s + (uint64_t)T < t->n_tokens; s++) {
        int ok = 1;
        for (int i = 0; ok && i < T; i++) ok = t->tok[s + i] == (uint8_t)in[i];
        if (ok && t->tok[s + T] == (uint8_t)tg[T - 1]) return (int64_t)s;
    }
    return -1;
}

START_TEST(test_batch_sample) {
    joule_tokens t;
    open_paragraph_tokens(&t, 200);
    enum { B = 4, T = 24 };
    int32_t in1[B * T], tg1[B * T], in2[B * T], tg2[B * T];
    ck_assert_int_eq(joule_batch_sample(&t, 7, 3, 1, B, T, in1, tg1), JOULE_OK);
    ck_assert_int_eq(joule_batch_sample(&t, 7, 3, 1, B, T, in2, tg2), JOULE_OK);
    ck_assert_int_eq(memcmp(in1, in2, sizeof in1), 0);
    ck_assert_int_eq(memcmp(tg1, tg2, sizeof tg1), 0);
    ck_assert_int_eq(joule_batch_sample(&t, 7, 4, 1, B, T, in2, tg2), JOULE_OK);
    ck_assert_int_ne(memcmp(in1, in2, sizeof in1), 0);
    ck_assert_int_eq(joule_batch_sample(&t, 7, 3, 2, B, T, in2, tg2), JOULE_OK);
    ck_assert_int_ne(memcmp(in1, in2, sizeof in1), 0);
    ck_assert_int_eq(joule_batch_sample(&t, 8, 3, 1, B, T, in2, tg2), JOULE_OK);
    ck_assert_int_ne(memcmp(in1, in2, sizeof in1), 0);
    for (int b = 0; b < B; b++) {
        const int32_t *in = in1 + b * T, *tg = tg1 + b * T;
        for (int i = 0; i + 1 < T; i++) ck_assert_int_eq(tg[i], in[i + 1]);
        ck_assert_int_ge(find_window(&t, in, tg, T), 0);
    }
    joule_tokens_close(&t);
}
END_TEST

/* With n_tokens = T + 2 there are exactly two starts, 0 and 1, and both occur. */
START_TEST(test_batch_sample_edges) {
    joule_tokens t;
    open_paragraph_tokens(&t, 3);
    int T = (int)t.n_tokens - 2;
    int32_t *in = malloc(sizeof(int32_t) * (size_t)(T + 1)), *tg = malloc(sizeof(int32_t) * (size_t)(T + 1));
    int seen[2] = {0, 0};
    for (uint64_t step = 0; step < 64; step++) {
        ck_assert_int_eq(joule_batch_sample(&t, 1, step, 0, 1, T, in, tg), JOULE_OK);
        int64_t s = find_window(&t, in, tg, T);
        ck_assert(s == 0 || s == 1);
        seen[s] = 1;
    }
    ck_assert(seen[0] && seen[1]);
    ck_assert_int_eq(joule_batch_sample(&t, 1, 0, 0, 1, T + 1, in, tg), JOULE_OK);
    ck_assert_int_eq(joule_batch_sample(&t, 1, 0, 0, 1, T + 2, in, tg), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "train.bin"));
    ck_assert_int_eq(joule_batch_sample(&t, 1, 0, 0, 0, 4, in, tg), JOULE_ERR_ARG);
    free(in);
    free(tg);
    joule_tokens_close(&t);
}
END_TEST

START_TEST(test_eval_windows) {
    joule_tokens t;
    open_paragraph_tokens(&t, 50);
    uint64_t n = t.n_tokens;
    const int Ts[] = {1, 7, 64, (int)n - 1, (int)n, (int)n + 5};
    for (int k = 0; k < 6; k++) {
        int T = Ts[k];
        uint64_t nw = joule_eval_windows(&t, T);
        if (nw > 0) ck_assert_uint_le(nw * T + 1, n);
        ck_assert_uint_gt((nw + 1) * T + 1, n);
        int32_t *in = malloc(sizeof(int32_t) * (size_t)T), *tg = malloc(sizeof(int32_t) * (size_t)T);
        for (uint64_t w = 0; w < nw; w++) {
            joule_eval_window(&t, T, w, in, tg);
            for (int i = 0; i < T; i++) {
                ck_assert_int_eq(in[i], t.tok[w * T + i]);
                ck_assert_int_eq(tg[i], t.tok[w * T + i + 1]);
            }
        }
        free(in);
        free(tg);
    }
    ck_assert_uint_eq(joule_eval_windows(&t, 0), 0);
    joule_tokens_close(&t);
}
END_TEST

START_TEST(test_doc_at) {
    joule_tokens t;
    open_paragraph_tokens(&t, 40);
    for (uint64_t pos = 0; pos < t.n_tokens; pos++) {
        uint64_t d = joule_tokens_doc_at(&t, pos);
        ck_assert_uint_lt(d, t.n_docs);
        ck_assert(t.doc_offsets[d] <= pos && pos < t.doc_offsets[d + 1]);
    }
    ck_assert_uint_eq(joule_tokens_doc_at(&t, t.n_tokens), UINT64_MAX);
    joule_tokens_close(&t);
}
END_TEST

static TCase *tcase(Suite *s, const char *name) { return tu_tcase(s, name, 60, setup, tu_remove_dir); }

static Suite *data_suite(void) {
    Suite *s = suite_create("data");
    TCase *tc = tcase(s, "prepare");
    tcase_add_test(tc, test_prepare_file_mode);
    tcase_add_test(tc, test_prepare_blank_line_mode);
    tcase_add_test(tc, test_prepare_separator_mode);
    tcase_add_test(tc, test_prepare_long_separator_and_big_file);
    tcase_add_test(tc, test_prepare_deterministic);
    tcase_add_test(tc, test_prepare_val_fraction);
    tcase_add_test(tc, test_prepare_both_splits_nonempty);
    tcase_add_test(tc, test_prepare_single_document);
    tcase_add_test(tc, test_prepare_no_text);
    tcase_add_test(tc, test_prepare_skips_output_folder);
    tcase_add_test(tc, test_prepare_symlinks);
    tcase_add_test(tc, test_prepare_progress_and_warnings);
    tcase_add_test(tc, test_prepare_bad_options);

    tc = tcase(s, "preset");
    tcase_add_test(tc, test_preset_missing_files);
    tcase_add_test(tc, test_preset_fake_tree);
    tcase_add_test(tc, test_preset_default);

    tc = tcase(s, "tokens");
    tcase_add_test(tc, test_writer_move_last_doc);
    tcase_add_loop_test(tc, test_reader_rejects, 0, BAD_COUNT);
    tcase_add_test(tc, test_reader_rejects_misc);
    tcase_add_test(tc, test_doc_at);

    tc = tcase(s, "batches");
    tcase_add_test(tc, test_batch_sample);
    tcase_add_test(tc, test_batch_sample_edges);
    tcase_add_test(tc, test_eval_windows);
    return s;
}

int main(void) {
    return tu_run_suite(data_suite());
}
