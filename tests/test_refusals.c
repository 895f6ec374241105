/* test_refusals.c — every reader of a file joule reads refuses a bad one the same way: exit
 * status 2, one line on stderr that names the file, and nothing a terminal would act on
 * (text from the file is escaped), and it refuses before allocating what the file claims.
 * Readers: checkpoints and optimizer files, config / hardware / preset JSON, token files and
 * document indexes, database manifests, chunk stores and indexes (and a build's state),
 * neighbour files (through the library: the command that reads them is retro's), runs
 * for a fit. Also the messages of bad options. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <time.h>
#include <zlib.h>

#include "joule/retro_db.h"
#include "joule/safetensors.h"
#include "testutil.h"

#define TINY "--layers 1 --d-model 8 --heads 2 --d-ff 8 --ctx 8 --batch 2 --eval-every 0 --threads 1"

/* ---- fixture: one folder for the suite: a corpus, a trained model, a small database ---- */

static void suite_setup(void) {
    tu_make_dir("joule_refusals_");
    char text[8192];
    size_t n = 0;
    for (int i = 0; n < sizeof text - 100; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "paragraph %d of the refusal corpus, %x.\n\n", i, i * 40503u);
    tu_write(tu_path("corpus.txt"), text, n);
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --split blank-line --out d"), 0);
    ck_assert_int_eq(tu_joule("train --data d " TINY " --steps 2 --save-every 1 --out m.safetensors"), 0);
    ck_assert_int_eq(tu_joule("db build --data d/train.bin --out db --chunk 8 --embedder ngram:8 --index Flat"), 0);
}

/* ---- checks ---- */

/* `joule ARGS` must exit 2 with one line on stderr naming `named`, free of control bytes. */
static void refused(const char *named, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refused(const char *named, const char *fmt, ...) {
    char args[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    int rc = tu_joule("%s", args);
    size_t len;
    char *err = tu_must_read(tu_path("err.txt"), &len);
    ck_assert_msg(rc == 2, "joule %s: exit %d, wanted 2; stderr: %s", args, rc, err);
    ck_assert_msg(len > 0 && err[len - 1] == '\n' && memchr(err, '\n', len - 1) == NULL,
                  "joule %s: not one line: %s", args, err);
    for (size_t i = 0; i + 1 < len; i++)
        ck_assert_msg((unsigned char)err[i] >= 0x20 && err[i] != 0x7f, "joule %s: control byte 0x%02x in: %s", args,
                      (unsigned char)err[i], err);
    ck_assert_msg(strstr(err, named) != NULL, "joule %s: the message does not name %s: %s", args, named, err);
    free(err);
}

/* A safetensors file: header text as given (the length prefix computed), then `data`
 * zero bytes. */
static void raw_st(const char *name, const char *header, size_t data) {
    size_t h = strlen(header);
    unsigned char *buf = calloc(8 + h + data, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    tu_write(tu_path("%s", name), buf, 8 + h + data);
    free(buf);
}

/* A copy of checkpoint src with metadata key set to value (added when absent). */
static void with_meta(const char *src, const char *dst, const char *key, const char *value) {
    joule_st_file *f;
    joule_st_writer *w;
    ck_assert_int_eq(joule_st_open(&f, tu_path("%s", src)), JOULE_OK);
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    const char *k, *v;
    for (size_t i = 0; i < joule_st_meta_count(f); i++) {
        joule_st_meta_at(f, i, &k, &v);
        ck_assert_int_eq(joule_st_writer_add_meta(w, k, strcmp(k, key) ? v : value), JOULE_OK);
    }
    if (!joule_st_meta(f, key)) ck_assert_int_eq(joule_st_writer_add_meta(w, key, value), JOULE_OK);
    for (size_t i = 0; i < joule_st_count(f); i++) {
        const joule_st_tensor *t = joule_st_at(f, i);
        ck_assert_int_eq(joule_st_writer_add(w, t->name, t->dtype, t->shape, t->ndim, t->data), JOULE_OK);
    }
    ck_assert_int_eq(joule_st_writer_write(w, tu_path("%s", dst)), JOULE_OK);
    joule_st_writer_free(w);
    joule_st_close(f);
}

/* ---- checkpoints ---- */

START_TEST(test_checkpoint_refusals) {
    tu_write(tu_path("empty.safetensors"), "", 0);
    refused("empty.safetensors", "info --model empty.safetensors");
    tu_write(tu_path("short.safetensors"), "\x10\0\0\0", 4);
    refused("short.safetensors", "info --model short.safetensors");
    tu_write(tu_path("huge.safetensors"), "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10);
    refused("huge.safetensors", "info --model huge.safetensors");
    raw_st("notjson.safetensors", "{\"a\": [1, 2", 0);
    refused("notjson.safetensors", "info --model notjson.safetensors");
    /* names and values from the file with a newline and terminal escapes in them */
    raw_st("esc.safetensors", "{\"evil\\n\\u001b[31mname\":{\"dtype\":\"X\\u001b]0;pwned\\u0007\",\"shape\":[1],"
                              "\"data_offsets\":[0,4]}}",
           4);
    refused("esc.safetensors", "info --model esc.safetensors");
    raw_st("past.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
    refused("past.safetensors", "info --model past.safetensors");
    with_meta("m.safetensors", "arch.safetensors", "config", "{\"arch\":\"\\u001b[2Jdense\\nx\",\"n_layers\":1}");
    refused("arch.safetensors", "info --model arch.safetensors");
    with_meta("m.safetensors", "int.safetensors", "config",
              "{\"arch\":\"dense\",\"n_layers\":1e30,\"d_model\":8,\"n_heads\":2,\"d_ff\":8,\"ctx\":8,\"vocab\":256}");
    refused("int.safetensors", "info --model int.safetensors");
    with_meta("m.safetensors", "runid.safetensors", "run_id", "ab\ncd\x1b[0m");
    refused("runid.safetensors", "info --model runid.safetensors");
    /* a small file claiming a model of ~10^10 parameters: refused from its tensor table,
     * at once, without allocating what it claims */
    with_meta("m.safetensors", "big.safetensors", "config",
              "{\"arch\":\"dense\",\"n_layers\":8,\"d_model\":65536,\"n_heads\":64,\"d_ff\":65536,\"ctx\":65536,"
              "\"vocab\":256}");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    refused("big.safetensors", "info --model big.safetensors");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_msg(s < 5.0, "refusing a file that claims a large model took %.1f s", s);
    refused("nothere.safetensors", "info --model nothere.safetensors");
}
END_TEST

START_TEST(test_optimizer_refusals) {
    /* m.safetensors is at step 2; its optimizer file replaced by bad ones */
    const char *resume = "train --data d " TINY " --steps 3 --out r.safetensors --resume";
    size_t n;
    char *w = tu_must_read(tu_path("m.safetensors"), &n), *o;
    tu_write(tu_path("r.safetensors"), w, n);
    size_t on;
    o = tu_must_read(tu_path("m.optim.safetensors"), &on);
    tu_write(tu_path("r.optim.safetensors"), o, on / 2); /* truncated */
    refused("r.optim.safetensors", "%s", resume);
    /* another step's state */
    with_meta("m.optim.safetensors", "r.optim.safetensors", "step", "1");
    refused("r.optim.safetensors", "%s", resume);
    /* saved options out of range (they size the training buffers) */
    tu_write(tu_path("r.optim.safetensors"), o, on);
    with_meta("m.safetensors", "r.safetensors", "train_opts", "{\"batch\":1e9}");
    refused("r.safetensors", "train --data d --steps 3 --out r.safetensors --resume --threads 1");
    free(w);
    free(o);
}
END_TEST

/* ---- JSON: model config, hardware profile, preset ---- */

START_TEST(test_json_refusals) {
    tu_write_text(tu_path("c1.json"), "{\"arch\": \"dense\", \"n_layers\": ");
    refused("c1.json", "train --data d --config c1.json --steps 1 --out x.safetensors");
    tu_write_text(tu_path("c2.json"), "{\"arch\":\"dense\",\"n_layers\":1e30,\"d_model\":8,\"n_heads\":2,\"d_ff\":8,"
                                      "\"ctx\":8,\"vocab\":256}");
    refused("c2.json", "train --data d --config c2.json --steps 1 --out x.safetensors");
    refused("c2.json", "account --config c2.json");
    tu_write_text(tu_path("c3.json"), "{\"arch\":\"\\u001b[31mmoe\\n\",\"n_layers\":1,\"d_model\":8,\"n_heads\":2,"
                                      "\"d_ff\":8,\"ctx\":8,\"vocab\":256}");
    refused("c3.json", "account --config c3.json");
    /* a name with escapes is shown escaped where account prints it */
    tu_write_text(tu_path("c4.json"), "{\"name\":\"\\u001b[2Jx\\ny\",\"arch\":\"dense\",\"n_layers\":1,\"d_model\":8,"
                                      "\"n_heads\":2,\"d_ff\":8,\"ctx\":8,\"vocab\":256}");
    ck_assert_int_eq(tu_joule("account --config c4.json"), 0);
    char *out = tu_must_read(tu_path("out.txt"), NULL);
    ck_assert_msg(!strchr(out, '\x1b'), "account printed an escape sequence: %s", out);
    free(out);
    tu_write_text(tu_path("hw.json"), "{\"name\":\"x\",\"kind\":\"gpu\",\"peak_flops\":{\"\\u001b[31m\":1},"
                                      "\"tdp_w\":1,\"idle_w\":0}");
    refused("hw.json", "account --preset gpt3 --hardware ./hw.json");
    ck_assert_int_eq(mkdir(tu_path("hwdir.json"), 0755), 0);
    refused("hwdir.json", "account --preset gpt3 --hardware ./hwdir.json");
    tu_write_text(tu_path("preset.json"), "{\"arch\":\"dense\",\"n_layers\":2,\"d_model\":8,\"n_heads\":2,\"d_ff\":8,"
                                          "\"ctx\":8,\"vocab\":256,\"ffn\":\"\\u001b[5mgeglu\"}");
    refused("preset.json", "account --preset ./preset.json");
}
END_TEST

/* ---- token files ---- */

START_TEST(test_token_refusals) {
    size_t bn, in;
    char *bin = tu_must_read(tu_path("d/train.bin"), &bn), *idx = tu_must_read(tu_path("d/train.idx"), &in);
    const char *train = "train --train t.bin " TINY " --steps 1 --out x.safetensors";
    tu_write(tu_path("t.bin"), "JOULEXXX", 8); /* bad magic */
    tu_write(tu_path("t.idx"), idx, in);
    refused("t.bin", "%s", train);
    tu_write(tu_path("t.bin"), bin, bn - 1); /* truncated */
    refused("t.bin", "%s", train);
    tu_write(tu_path("t.bin"), bin, bn);
    idx[16] ^= 0x40; /* n_docs no longer matches */
    tu_write(tu_path("t.idx"), idx, in);
    refused("t.idx", "%s", train);
    remove(tu_path("t.idx"));
    refused("t.idx", "%s", train);
    free(bin);
    free(idx);
}
END_TEST

/* ---- databases ---- */

/* tu_dir/dst: a copy of db/ with `file` replaced by `data` (len bytes) and, when fix, the
 * manifest's size and crc32 of that file updated to match. */
static void db_with(const char *dst, const char *file, const void *data, size_t len, bool fix) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", tu_path("%s", dst), tu_path("db"), tu_path("%s", dst));
    ck_assert_int_eq(system(cmd), 0);
    tu_write(tu_path("%s/%s", dst, file), data, len);
    if (!fix) return;
    char *text = tu_must_read(tu_path("%s/manifest.json", dst), NULL);
    cJSON *m = cJSON_Parse(text), *f = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "files"), file);
    char crc[9];
    snprintf(crc, sizeof crc, "%08lx", crc32(crc32(0L, Z_NULL, 0), data, (uInt)len));
    cJSON_ReplaceItemInObject(f, "bytes", cJSON_CreateNumber((double)len));
    cJSON_ReplaceItemInObject(f, "crc32", cJSON_CreateString(crc));
    free(text);
    text = cJSON_Print(m);
    tu_write_text(tu_path("%s/manifest.json", dst), text);
    free(text);
    cJSON_Delete(m);
}

START_TEST(test_db_refusals) {
    size_t mn, cn, in;
    char *man = tu_must_read(tu_path("db/manifest.json"), &mn), *chk = tu_must_read(tu_path("db/chunks.bin"), &cn),
         *idx = tu_must_read(tu_path("db/index.faiss"), &in);
    db_with("b1", "manifest.json", "{\"format\":", 10, false);
    refused("b1/manifest.json", "db info b1");
    cJSON *mj = cJSON_Parse(man);
    cJSON_ReplaceItemInObject(mj, "format_version", cJSON_CreateNumber(7));
    char *v2 = cJSON_Print(mj);
    cJSON_Delete(mj);
    db_with("b2", "manifest.json", v2, strlen(v2), false);
    refused("b2/manifest.json", "db verify b2");
    db_with("b3", "chunks.bin", chk, cn - 8, false); /* truncated: size differs from the manifest */
    refused("b3/chunks.bin", "db verify b3");
    char *flip = malloc(in);
    memcpy(flip, idx, in);
    flip[in / 2] ^= 1;
    db_with("b4", "index.faiss", flip, in, false); /* crc differs */
    refused("b4/index.faiss", "db verify b4");
    db_with("b5", "index.faiss", idx, in - 100, true); /* truncated flat index behind a forged manifest */
    refused("b5/index.faiss", "db verify b5");
    /* forged: a flat index whose metric reads as 0xffffff01 unsigned but -255 as FAISS's
     * int, followed by 4 bytes only an unsigned reading skips (a fuzzing finding: FAISS then
     * threw out of read_index and leaked the index) */
    char *neg = malloc(in + 4);
    memcpy(neg, idx, 37);
    memcpy(neg + 33, "\x01\xff\xff\xff\0\0\0\0", 8);
    memcpy(neg + 41, idx + 37, in - 37);
    db_with("b8", "index.faiss", neg, in + 4, true);
    refused("b8/index.faiss", "db verify b8");
    ck_assert(tu_file_has("err.txt", "flat index")); /* refused by joule, before FAISS read it */
    free(neg);
    db_with("b6", "chunks.bin", chk, cn - 24, true); /* forged: not a whole number of records */
    refused("b6/chunks.bin", "db verify b6");
    char *spec = strdup(man);
    ck_assert_ptr_nonnull(strstr(spec, "\"ngram:8\""));
    memcpy(strstr(spec, "\"ngram:8\""), "\"ngram:3\"", 9);
    db_with("b7", "manifest.json", spec, mn, false);
    refused("b7/manifest.json", "db query b7 --text hello");
    /* an unfinished build whose state file is damaged */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && printf '{\"done\": 1e300}' > '%s'", tu_path("s.partial"),
             tu_path("s.partial/state.json"));
    ck_assert_int_eq(system(cmd), 0);
    refused("state.json", "db build --data d/train.bin --out s --chunk 8 --embedder ngram:8 --resume");
    free(man);
    free(chk);
    free(idx);
    free(flip);
    free(v2);
    free(spec);
}
END_TEST

/* The neighbour-file reader, through the library: its refusals carry the path, one line. */
START_TEST(test_neighbours_refusal) {
    joule_retro_db *db;
    ck_assert_int_eq(joule_db_open(&db, tu_path("db")), JOULE_OK);
    tu_write(tu_path("x.nbr"), "JOULENBR\x01\0\0\0\n\x1b[31m", 16);
    joule_neighbours *nb = NULL;
    int rc = joule_neighbours_open(&nb, tu_path("x.nbr"), db);
    ck_assert_int_eq(joule_exit_code(rc), 2);
    const char *m = joule_last_error();
    ck_assert_msg(strstr(m, "x.nbr") && !strchr(m, '\n') && !strchr(m, '\x1b'), "%s", m);
    joule_db_close(db);
}
END_TEST

/* ---- runs for a fit ---- */

START_TEST(test_runs_refusals) {
    tu_write_text(tu_path("r1.jsonl"), "{\"N\":1e999,\"D\":1e9,\"loss\":2}\n");
    refused("r1.jsonl", "fit --runs r1.jsonl");
    tu_write_text(tu_path("r2.csv"), "N,D,loss\n1e200,1e200,2\n");
    refused("r2.csv", "fit --runs r2.csv");
    tu_write_text(tu_path("r3.csv"), "N,D,loss\n1e9,abc\x1b[31m,2\n");
    refused("r3.csv", "fit --runs r3.csv");
    tu_write_text(tu_path("r4.csv"), "N,D\n1,2\n");
    refused("r4.csv", "fit --runs r4.csv");
}
END_TEST

/* ---- options ---- */

START_TEST(test_option_refusals) {
    refused("--lr", "train --data d --steps 1 --lr 1e39");
    refused("--lr", "train --data d --steps 1 --lr 1e-300");
    refused("--weight-decay", "train --data d --steps 1 --weight-decay 1e300");
    refused("--flops", "train --data d --flops 1e999");
    refused("--nprobe", "db query db --text hello --nprobe -1");
    refused("--nprobe", "db query db --text hello --nprobe=-1");
    refused("--checkpoint-every", "db build --data d --out z --checkpoint-every 0");
    refused("nothere.bin", "train --train nothere.bin --steps 1");
}
END_TEST

/* The escaping every message relies on (core/escape.c). */
START_TEST(test_escape) {
    char b[64];
    ck_assert_str_eq(joule_escape(b, sizeof b, "a\nb\tc\x1b[31m\\"), "a\\nb\\tc\\x1b[31m\\\\");
    ck_assert_str_eq(joule_escape(b, sizeof b, "caf\xc3\xa9 \xff\xc3"), "caf\xc3\xa9 \\xff\\xc3");
    ck_assert_str_eq(joule_escape(b, sizeof b, "\xc2\x9b" "2J \xe2\x80\xae"), "\\u009b2J \\u202e");
    ck_assert_str_eq(joule_sanitize_line(b, sizeof b, "p\\q\r"), "p\\q\\r");
    /* cut to fit, with "...", never inside an escape */
    ck_assert_str_eq(joule_escape(b, 12, "abcdefghijklmnop"), "abcdefgh...");
    ck_assert_str_eq(joule_escape(b, 11, "abcdefg\x01"), "abcdefg...");
    ck_assert_str_eq(joule_escape(b, 12, "abcdefg\x01"), "abcdefg\\x01");
    ck_assert_str_eq(joule_escape(b, 12, "abcdefghijk"), "abcdefghijk");
    char long_name[400];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    ck_assert_uint_le(strlen(joule_q(long_name)), JOULE_Q_MAX);
    /* joule_fail keeps one line whatever it is given */
    joule_fail(JOULE_ERR_FORMAT, "%s: bad \x1b]0;x\x07 value\n%s", "f.bin", "second line");
    ck_assert_ptr_null(strchr(joule_last_error(), '\n'));
    ck_assert_ptr_null(strchr(joule_last_error(), '\x1b'));
}
END_TEST

int main(void) {
    Suite *s = suite_create("refusals");
    TCase *tc = tu_tcase(s, "readers", 300, NULL, NULL);
    tcase_add_unchecked_fixture(tc, suite_setup, tu_remove_dir);
    tcase_add_test(tc, test_checkpoint_refusals);
    tcase_add_test(tc, test_optimizer_refusals);
    tcase_add_test(tc, test_json_refusals);
    tcase_add_test(tc, test_token_refusals);
    tcase_add_test(tc, test_db_refusals);
    tcase_add_test(tc, test_neighbours_refusal);
    tcase_add_test(tc, test_runs_refusals);
    tcase_add_test(tc, test_option_refusals);
    tc = tu_tcase(s, "escape", 30, NULL, NULL);
    tcase_add_test(tc, test_escape);
    return tu_run_suite(s);
}
