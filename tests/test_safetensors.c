/* Tests for the safetensors reader and writer: round trips, and one test per kind of broken
 * file, each checking the status and that the message names the file and the problem. */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/safetensors.h"
#include "testutil.h"

/* ---- fixtures: one fresh temporary directory per test ---- */

static void setup(void) { tu_make_dir("joule_st_"); }

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A hand-made file: length prefix, `hl` bytes of `header` verbatim, then `data_len` bytes
 * of data. */
static void write_raw_n(const char *path, const char *header, size_t hl, size_t data_len) {
    unsigned char *buf = calloc(1, 8 + hl + data_len + 1);
    put_le64(buf, hl);
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + hl + i] = (unsigned char)i;
    tu_write(path, buf, 8 + hl + data_len);
    free(buf);
}

static void write_raw(const char *path, const char *header, size_t data_len) {
    write_raw_n(path, header, strlen(header), data_len);
}

/* Opening `path` must fail with JOULE_ERR_FORMAT and a message naming the file and
 * containing `keyword`. */
#define ASSERT_REJECTS(path, keyword)                                                              \
    do {                                                                                           \
        joule_st_file *f_ = (joule_st_file *)1;                                                    \
        int rc_ = joule_st_open(&f_, (path));                                                      \
        ck_assert_msg(rc_ == JOULE_ERR_FORMAT, "status %d, message: %s", rc_, joule_last_error()); \
        ck_assert_ptr_null(f_);                                                                    \
        ck_assert_msg(strstr(joule_last_error(), (path)), "no path in: %s", joule_last_error());   \
        ck_assert_msg(strstr(joule_last_error(), (keyword)), "no '%s' in: %s", (keyword),          \
                      joule_last_error());                                                         \
    } while (0)

#define ASSERT_ERR(rc, code, path, keyword)                                                        \
    do {                                                                                           \
        int rc2_ = (rc);                                                                           \
        ck_assert_msg(rc2_ == (code), "status %d, message: %s", rc2_, joule_last_error());         \
        ck_assert_msg(strstr(joule_last_error(), (path)), "no path in: %s", joule_last_error());   \
        ck_assert_msg(strstr(joule_last_error(), (keyword)), "no '%s' in: %s", (keyword),          \
                      joule_last_error());                                                         \
    } while (0)

/* A valid file with a known layout: tensor "a" F32 [2, 3] and "b" F32 [4], metadata
 * format_version = "1". Returns its path. */
static const char *write_small_model(const char *name) {
    static float a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {-1, -2, -3, -4};
    joule_st_writer *w;
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "a", JOULE_ST_F32, (int64_t[]){2, 3}, 2, a), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "b", JOULE_ST_F32, (int64_t[]){4}, 1, b), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add_meta(w, "format_version", "1"), JOULE_OK);
    const char *path = tu_path("%s", name);
    ck_assert_int_eq(joule_st_writer_write(w, path), JOULE_OK);
    joule_st_writer_free(w);
    return path;
}

/* ---- round trips ---- */

START_TEST(test_round_trip) {
    joule_rng rng;
    joule_rng_seed(&rng, 42);
    float emb[16 * 8], wq[8 * 8], gain[8];
    for (size_t i = 0; i < 16 * 8; i++)
        emb[i] = joule_rng_normal(&rng);
    for (size_t i = 0; i < 8 * 8; i++)
        wq[i] = joule_rng_normal(&rng);
    for (size_t i = 0; i < 8; i++)
        gain[i] = 1.0f + 0.01f * (float)i;
    emb[3] = -0.0f; /* bitwise equality must keep the sign of zero */

    joule_st_writer *w;
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    ck_assert_int_eq(
        joule_st_writer_add(w, "tok_emb.weight", JOULE_ST_F32, (int64_t[]){16, 8}, 2, emb),
        JOULE_OK);
    ck_assert_int_eq(
        joule_st_writer_add(w, "layers.0.attn.wq.weight", JOULE_ST_F32, (int64_t[]){8, 8}, 2, wq),
        JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "norm.gain", JOULE_ST_F32, (int64_t[]){8}, 1, gain),
                     JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add_meta(w, "format_version", "1"), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add_meta(w, "config", "{\"d_model\": 8}"), JOULE_OK);
    const char *path = tu_path("model.safetensors");
    ck_assert_int_eq(joule_st_writer_write(w, path), JOULE_OK);
    joule_st_writer_free(w);

    /* Layout, read straight from the bytes. */
    size_t n;
    unsigned char *raw = (unsigned char *)tu_must_read(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | raw[i];
    ck_assert_uint_eq((8 + hl) % 64, 0);
    ck_assert_uint_eq(n, 8 + hl + sizeof emb + sizeof wq + sizeof gain);
    ck_assert_int_eq(raw[8], '{');

    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ck_assert_str_eq(joule_st_path(f), path);
    ck_assert_uint_eq(joule_st_count(f), 3);
    const char *names[3] = {"tok_emb.weight", "layers.0.attn.wq.weight", "norm.gain"};
    const void *src[3] = {emb, wq, gain};
    size_t sizes[3] = {sizeof emb, sizeof wq, sizeof gain};
    uint64_t pos = 0;
    for (size_t i = 0; i < 3; i++) {
        const joule_st_tensor *t = joule_st_at(f, i);
        ck_assert_str_eq(t->name, names[i]); /* order added = order in file */
        ck_assert_int_eq(t->dtype, JOULE_ST_F32);
        ck_assert_uint_eq(t->nbytes, sizes[i]);
        ck_assert_uint_eq(t->offset, pos); /* contiguous, no gaps */
        ck_assert_int_eq(memcmp(t->data, src[i], sizes[i]), 0);
        ck_assert_int_eq(memcmp(raw + 8 + hl + pos, src[i], sizes[i]), 0);
        ck_assert_ptr_eq(joule_st_find(f, names[i]), t);
        pos += sizes[i];
    }
    ck_assert_ptr_null(joule_st_at(f, 3));
    ck_assert_ptr_null(joule_st_find(f, "nope"));
    const joule_st_tensor *t0 = joule_st_at(f, 0);
    ck_assert_int_eq(t0->ndim, 2);
    ck_assert_int_eq(t0->shape[0], 16);
    ck_assert_int_eq(t0->shape[1], 8);
    ck_assert_int_eq(t0->shape[2], 0);

    const float *p;
    ck_assert_int_eq(joule_st_expect_f32(f, "layers.0.attn.wq.weight", (int64_t[]){8, 8}, 2, &p),
                     JOULE_OK);
    ck_assert_int_eq(memcmp(p, wq, sizeof wq), 0);
    ck_assert_uint_eq((uintptr_t)p % 64, 0); /* data start 64-aligned, first tensor 512 bytes */

    ck_assert_str_eq(joule_st_meta(f, "format_version"), "1");
    ck_assert_str_eq(joule_st_meta(f, "config"), "{\"d_model\": 8}");
    ck_assert_ptr_null(joule_st_meta(f, "absent"));
    ck_assert_uint_eq(joule_st_meta_count(f), 2);
    const char *k, *v;
    ck_assert_int_eq(joule_st_meta_at(f, 1, &k, &v), JOULE_OK);
    ck_assert_str_eq(k, "config");
    ck_assert_int_eq(joule_st_meta_at(f, 2, &k, &v), JOULE_ERR_ARG);
    ck_assert_int_eq(joule_st_expect_meta(f, "format_version", "1"), JOULE_OK);
    joule_st_close(f);
    free(raw);
}
END_TEST

/* Scalars, zero-element tensors, other dtypes, names and metadata needing JSON escapes. */
START_TEST(test_round_trip_edge_cases) {
    float scalar = 3.5f;
    int64_t ids[3] = {-1, 0, INT64_MAX};
    uint8_t bytes[3] = {0, 1, 255};
    joule_st_writer *w;
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "scalar", JOULE_ST_F32, NULL, 0, &scalar), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "bytes", JOULE_ST_U8, (int64_t[]){3}, 1, bytes),
                     JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "empty", JOULE_ST_F32, (int64_t[]){0, 5}, 2, NULL),
                     JOULE_OK);
    ck_assert_int_eq(
        joule_st_writer_add(w, "ids \"q\" \\ \n é", JOULE_ST_I64, (int64_t[]){3}, 1, ids),
        JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add_meta(w, "note", "tab\there \"quoted\" ünï"), JOULE_OK);
    for (int i = 0; i < 40; i++) { /* past the writer's first growth */
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        ck_assert_int_eq(joule_st_writer_add_meta(w, key, key + 1), JOULE_OK);
    }
    const char *path = tu_path("edge.safetensors");
    ck_assert_int_eq(joule_st_writer_write(w, path), JOULE_OK);
    joule_st_writer_free(w);

    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ck_assert_uint_eq(joule_st_count(f), 4);
    const joule_st_tensor *t = joule_st_find(f, "scalar");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->nbytes, 4);
    const float *p;
    ck_assert_int_eq(joule_st_expect_f32(f, "scalar", NULL, 0, &p), JOULE_OK);
    ck_assert_float_eq(*p, 3.5f);
    t = joule_st_find(f, "empty");
    ck_assert_uint_eq(t->nbytes, 0);
    ck_assert_int_eq(t->shape[1], 5);
    t = joule_st_find(f, "ids \"q\" \\ \n é");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, JOULE_ST_I64);
    ck_assert_int_eq(memcmp(t->data, ids, sizeof ids), 0);
    /* 4 + 3 bytes precede the I64 tensor, so it is misaligned in the map:
     * the generic view still works through memcpy. */
    int64_t last;
    memcpy(&last, (const unsigned char *)t->data + 16, sizeof last);
    ck_assert(last == INT64_MAX);
    ck_assert_int_eq(memcmp(joule_st_find(f, "bytes")->data, bytes, 3), 0);
    ck_assert_str_eq(joule_st_meta(f, "note"), "tab\there \"quoted\" ünï");
    ck_assert_uint_eq(joule_st_meta_count(f), 41);
    ck_assert_str_eq(joule_st_meta(f, "k39"), "39");
    joule_st_close(f);

    /* An empty writer makes a valid empty file; writing again replaces it atomically. */
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_write(w, path), JOULE_OK);
    joule_st_writer_free(w);
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ck_assert_uint_eq(joule_st_count(f), 0);
    ck_assert_uint_eq(joule_st_meta_count(f), 0);
    joule_st_close(f);
    size_t n;
    free(tu_must_read(path, &n));
    ck_assert_uint_eq(n, 64);
}
END_TEST

/* No temporary file is left next to the target. */
START_TEST(test_write_leaves_no_temp_files) {
    write_small_model("m.safetensors");
    write_small_model("m.safetensors");
    DIR *d = opendir(tu_dir);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            ck_assert_str_eq(e->d_name, "m.safetensors");
            files++;
        }
    closedir(d);
    ck_assert_int_eq(files, 1);
}
END_TEST

START_TEST(test_writer_rejects_bad_arguments) {
    float x[4] = {0};
    joule_st_writer *w;
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "x", JOULE_ST_F32, (int64_t[]){4}, 1, x), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add(w, "x", JOULE_ST_F32, (int64_t[]){4}, 1, x),
                     JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "duplicate"));
    ck_assert_int_eq(joule_st_writer_add(w, "__metadata__", JOULE_ST_F32, (int64_t[]){4}, 1, x),
                     JOULE_ERR_ARG);
    ck_assert_int_eq(joule_st_writer_add(w, "neg", JOULE_ST_F32, (int64_t[]){-4}, 1, x),
                     JOULE_ERR_ARG);
    ck_assert_int_eq(
        joule_st_writer_add(w, "deep", JOULE_ST_F32, (int64_t[9]){1, 1, 1, 1, 1, 1, 1, 1, 1}, 9, x),
        JOULE_ERR_ARG);
    ck_assert_int_eq(
        joule_st_writer_add(w, "huge", JOULE_ST_F32, (int64_t[]){1ll << 40, 1ll << 40}, 2, x),
        JOULE_ERR_ARG);
    ck_assert_int_eq(joule_st_writer_add(w, "nodata", JOULE_ST_F32, (int64_t[]){4}, 1, NULL),
                     JOULE_ERR_ARG);
    ck_assert_int_eq(joule_st_writer_add(w, "\xff", JOULE_ST_F32, (int64_t[]){4}, 1, x),
                     JOULE_ERR_ARG);
    ck_assert_int_eq(joule_st_writer_add(w, "bad dtype", (joule_st_dtype)99, (int64_t[]){4}, 1, x),
                     JOULE_ERR_ARG);
    ck_assert_int_eq(joule_st_writer_add_meta(w, "k", "v"), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_add_meta(w, "k", "w"), JOULE_ERR_ARG);
    /* Failed adds leave the writer intact. */
    const char *path = tu_path("ok.safetensors");
    ck_assert_int_eq(joule_st_writer_write(w, path), JOULE_OK);
    joule_st_writer_free(w);
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ck_assert_uint_eq(joule_st_count(f), 1);
    joule_st_close(f);
}
END_TEST

/* ---- broken files ---- */

/* A missing file is the caller's mistake (JOULE_ERR_ARG: the CLI exits 2), not an I/O error. */
START_TEST(test_nonexistent_is_arg_error) {
    const char *path = tu_path("missing.safetensors");
    joule_st_file *f = (joule_st_file *)1;
    ASSERT_ERR(joule_st_open(&f, path), JOULE_ERR_ARG, path, "cannot open");
    ck_assert_ptr_null(f);
}
END_TEST

/* Files joule_st_open must refuse with JOULE_ERR_FORMAT, naming the file and the problem.
 * RAW: the file is exactly `bytes` (n of them); HDR: `bytes` is the header (n bytes, 0 =
 * strlen), behind its length and followed by data_len bytes of data. */
enum { RAW, HDR };
static const struct {
    int kind;
    const char *bytes;
    size_t n, data_len;
    const char *keyword; /* the message must contain it */
} REJECTS[] = {
    /* length prefix */
    {RAW, "", 0, 0, "empty"},
    {RAW, "\x10\0\0", 3, 0, "too short"},
    {RAW, "\xe8\x03\0\0\0\0\0\0{}", 10, 0, "header length 1000 past end of file"},
    {RAW, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10, 0, "header length 18446744073709551615 exceeds"},
    {RAW, "\xf8\xff\xff\xff\xff\xff\xff\xff{}", 10, 0, "exceeds"}, /* 8 + length wraps to 0 */
    /* JSON */
    {HDR, "{\"a\": {\"dtype\": \"F32\",", 0, 0, "not valid JSON"},
    {HDR, "{} x", 0, 0, "trailing bytes"},
    {HDR, "{\"a\0\": 1}", 9, 0, "not valid JSON"},
    {HDR, "{\"\xc3\x28\": 1}", 0, 0, "UTF-8"},
    {HDR, "{\"\xed\xa0\x80\": 1}", 0, 0, "UTF-8"}, /* UTF-8-encoded surrogate */
    {HDR, "[1, 2]", 0, 0, "not a JSON object"},
    {HDR, "\"str\"", 0, 0, "not a JSON object"},
    {HDR, "", 0, 0, "not a JSON object"},
    {HDR, "{\"a\": [1]}", 0, 0, "tensor 'a' entry is not an object"},
    /* dtype */
    {HDR, "{\"w\": {\"dtype\": \"F33\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 0, 4,
     "tensor 'w' has unknown dtype 'F33'"},
    {HDR, "{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 0, 4, "dtype 4 is not a string"},
    {HDR, "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 0, 4, "tensor 'w' has no dtype"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 0, 4,
     "field 'dtype' twice"},
    /* size */
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", 0, 20,
     "tensor 'w' data_offsets [0, 20] span 20 bytes but shape [2, 3] of F32 needs 24"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}", 0, 4,
     "overflows"},
    /* shape and offsets entries */
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 0, 4,
     "tensor 'w' shape entry 0 is -1, not a non-negative integer"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 1.5], \"data_offsets\": [0, 4]}}", 0, 4,
     "shape entry 1 is 1.5, not a non-negative integer"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 0, 4,
     "not a non-negative integer"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 0, 4, "shape is not an array"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 0, 4, "9 dims"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, -4]}}", 0, 4,
     "data_offsets entry 1 is -4"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 0, 4, "is not [begin, end]"},
    /* offsets against the data */
    {HDR,
     "{\"layers.0.attn.wq.weight\": {\"dtype\": \"F32\", \"shape\": [32, 32], \"data_offsets\": [0, 4096]}}", 0,
     2048, "tensor 'layers.0.attn.wq.weight' data_offsets [0, 4096] past end of data (2048 bytes)"},
    {HDR, "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", 0, 8, "begin after end"},
    {HDR,
     "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
     " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
     0, 12, "tensor 'b' data_offsets [4, 12] overlaps tensor 'a' [0, 8]"},
    {HDR,
     "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
     " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
     0, 8, "overlaps"},
    {HDR, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 0, 12,
     "gap in data section: bytes [0, 4)"},
    {HDR, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 0, 12,
     "data section is 12 bytes but tensors cover only 8"},
    /* names and metadata */
    {HDR,
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
     " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
     0, 8, "duplicate tensor name 'w'"},
    {HDR, "{\"__metadata__\": {}, \"__metadata__\": {}}", 0, 0, "duplicate __metadata__"},
    {HDR, "{\"__metadata__\": {\"k\": \"1\", \"k\": \"2\"}}", 0, 0, "duplicate __metadata__ key 'k'"},
    {HDR, "{\"__metadata__\": {\"format_version\": 1}}", 0, 0,
     "__metadata__ value for 'format_version' is not a string"},
    {HDR, "{\"__metadata__\": [\"a\"]}", 0, 0, "__metadata__ is not an object"},
};
#define N_REJECTS ((int)(sizeof REJECTS / sizeof REJECTS[0]))

START_TEST(test_rejects) {
    const char *path = tu_path("reject.safetensors");
    if (REJECTS[_i].kind == RAW) tu_write(path, REJECTS[_i].bytes, REJECTS[_i].n);
    else write_raw_n(path, REJECTS[_i].bytes, REJECTS[_i].n ? REJECTS[_i].n : strlen(REJECTS[_i].bytes),
                     REJECTS[_i].data_len);
    ASSERT_REJECTS(path, REJECTS[_i].keyword);
}
END_TEST

START_TEST(test_rejects_truncated_file) {
    const char *path = write_small_model("trunc.safetensors");
    size_t n;
    free(tu_must_read(path, &n));
    ck_assert_int_eq(truncate(path, (off_t)n - 4), 0);
    ASSERT_REJECTS(path, "past end of data");
    /* Cut inside the header too. */
    ck_assert_int_eq(truncate(path, 20), 0);
    ASSERT_REJECTS(path, "past end of file");
}
END_TEST

/* Out of header order but contiguous is fine; iteration follows the data. */
START_TEST(test_tensors_in_data_order) {
    const char *path = tu_path("v.safetensors");
    write_raw(path,
              "{\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]},"
              " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
              8);
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ck_assert_str_eq(joule_st_at(f, 0)->name, "a");
    ck_assert_str_eq(joule_st_at(f, 1)->name, "b");
    joule_st_close(f);
}
END_TEST

/* ---- checked lookups ---- */

START_TEST(test_expect_missing_tensor) {
    const char *path = write_small_model("m.safetensors");
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    const float *p = (const float *)1;
    ASSERT_ERR(joule_st_expect_f32(f, "x", (int64_t[]){2, 3}, 2, &p), JOULE_ERR_FORMAT, path,
               "missing tensor 'x'");
    ck_assert_ptr_null(p);
    joule_st_close(f);
}
END_TEST

START_TEST(test_expect_wrong_shape) {
    const char *path = write_small_model("m.safetensors");
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    const float *p;
    ASSERT_ERR(joule_st_expect_f32(f, "a", (int64_t[]){3, 2}, 2, &p), JOULE_ERR_FORMAT, path,
               "tensor 'a' has shape [2, 3], expected [3, 2]");
    ASSERT_ERR(joule_st_expect_f32(f, "a", (int64_t[]){6}, 1, &p), JOULE_ERR_FORMAT, path,
               "tensor 'a' has shape [2, 3], expected [6]");
    ASSERT_ERR(joule_st_expect_f32(f, "a", NULL, 9, &p), JOULE_ERR_ARG, path, "out of range");
    ck_assert_int_eq(joule_st_expect_f32(f, "a", (int64_t[]){2, 3}, 2, &p), JOULE_OK);
    ck_assert_float_eq(p[5], 6.0f);
    joule_st_close(f);
}
END_TEST

START_TEST(test_expect_wrong_dtype) {
    const char *path = tu_path("d.safetensors");
    write_raw(path, "{\"w\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [0, 4]}}  ",
              4);
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    const float *p;
    ASSERT_ERR(joule_st_expect_f32(f, "w", (int64_t[]){2}, 1, &p), JOULE_ERR_FORMAT, path,
               "tensor 'w' has dtype BF16, expected F32");
    joule_st_close(f);
}
END_TEST

/* A foreign file whose header length puts F32 data off a 4-byte boundary: the generic view
 * opens it, the float view refuses instead of handing out a misaligned float*. */
START_TEST(test_expect_unaligned_f32) {
    const char *path = tu_path("u.safetensors");
    char hdr[128];
    strcpy(hdr, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}");
    while ((8 + strlen(hdr)) % 4 != 1)
        strcat(hdr, " ");
    write_raw(path, hdr, 4);
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ck_assert_uint_ne((uintptr_t)joule_st_find(f, "w")->data % 4, 0);
    const float *p;
    ASSERT_ERR(joule_st_expect_f32(f, "w", (int64_t[]){1}, 1, &p), JOULE_ERR_FORMAT, path,
               "not 4-byte aligned");
    joule_st_close(f);
}
END_TEST

START_TEST(test_expect_meta_version) {
    const char *path = write_small_model("m.safetensors");
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ASSERT_ERR(joule_st_expect_meta(f, "format_version", "2"), JOULE_ERR_FORMAT, path,
               "format_version is '1', this joule reads '2'");
    ASSERT_ERR(joule_st_expect_meta(f, "tokenizer", "bpe"), JOULE_ERR_FORMAT, path,
               "no tokenizer in __metadata__, this joule reads 'bpe'");
    joule_st_close(f);

    path = tu_path("nometa.safetensors");
    write_raw(path, "{}", 0);
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    ASSERT_ERR(joule_st_expect_meta(f, "format_version", "1"), JOULE_ERR_FORMAT, path,
               "no format_version");
    joule_st_close(f);
}
END_TEST

/* ---- robustness: every prefix and many corruptions of a valid file ---- */

START_TEST(test_truncations_and_corruptions_never_crash) {
    const char *path = write_small_model("good.safetensors");
    size_t n;
    unsigned char *good = (unsigned char *)tu_must_read(path, &n);
    const char *bad = tu_path("bad.safetensors");
    for (size_t len = 0; len < n; len++) {
        tu_write(bad, good, len);
        joule_st_file *f;
        ck_assert_int_eq(joule_st_open(&f, bad), JOULE_ERR_FORMAT);
    }
    /* Random byte flips in the length prefix and header: either still valid or a format
     * error, never a crash (this is mostly for the sanitizer build). */
    unsigned char *mut = malloc(n);
    joule_rng rng;
    joule_rng_seed(&rng, 7);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | good[i];
    for (int it = 0; it < 3000; it++) {
        memcpy(mut, good, n);
        int flips = 1 + (int)joule_rng_below(&rng, 3);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)joule_rng_below(&rng, 8 + hl);
            mut[at] = (it % 2) ? (unsigned char)joule_rng_u64(&rng)
                               : (unsigned char)"{}[]\",:0123456789-. e"[joule_rng_below(&rng, 21)];
        }
        tu_write(bad, mut, n);
        joule_st_file *f;
        int rc = joule_st_open(&f, bad);
        ck_assert_msg(rc == JOULE_OK || rc == JOULE_ERR_FORMAT, "status %d: %s", rc,
                      joule_last_error());
        if (rc == JOULE_OK) {
            for (size_t i = 0; i < joule_st_count(f); i++) {
                const joule_st_tensor *t = joule_st_at(f, i);
                volatile unsigned char sink = 0;
                for (size_t b = 0; b < t->nbytes; b++)
                    sink ^= ((const unsigned char *)t->data)[b];
                (void)sink;
            }
            joule_st_close(f);
        }
    }
    free(mut);
    free(good);
}
END_TEST

static Suite *safetensors_suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tu_tcase(s, "core", 30, setup, tu_remove_dir);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_round_trip_edge_cases);
    tcase_add_test(tc, test_write_leaves_no_temp_files);
    tcase_add_test(tc, test_writer_rejects_bad_arguments);
    tcase_add_test(tc, test_nonexistent_is_arg_error);
    tcase_add_loop_test(tc, test_rejects, 0, N_REJECTS);
    tcase_add_test(tc, test_rejects_truncated_file);
    tcase_add_test(tc, test_tensors_in_data_order);
    tcase_add_test(tc, test_expect_missing_tensor);
    tcase_add_test(tc, test_expect_wrong_shape);
    tcase_add_test(tc, test_expect_wrong_dtype);
    tcase_add_test(tc, test_expect_unaligned_f32);
    tcase_add_test(tc, test_expect_meta_version);
    tcase_add_test(tc, test_truncations_and_corruptions_never_crash);
    return s;
}

int main(void) {
    return tu_run_suite(safetensors_suite());
}
