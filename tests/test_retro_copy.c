/* RETRO uses what it retrieves. A corpus of random-letter documents, each present twice (the
 * copy later in the file under another id, at its natural offset, no padding): a chunk's
 * nearest neighbour in a Flat database, its own document excluded, is exactly its twin, and
 * the continuation handed with it is exactly the text that follows. A small RETRO model
 * trained on it must learn to copy that continuation: evaluated on the training file with
 * the own document excluded, its bits-per-byte fall far below retrieval off and below the
 * entropy of the letters themselves, which no model that does not copy can beat. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/data.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/train.h"
#include "testutil.h"

enum { M = 16, K = 2, CTX = 64, DOCS = 400 };

static char g_train[4200], g_db[4200];

/* DOCS documents of 40..300 random letters and spaces (log2(27) = 4.75 bits each), then the
 * same documents again under other ids. */
static void setup(void) {
    tu_make_dir("joule_retrocopy_");
    snprintf(g_train, sizeof g_train, "%s/train.bin", tu_dir);
    snprintf(g_db, sizeof g_db, "%s/db", tu_dir);
    joule_token_writer *w = tu_tokens_open(g_train);
    static char text[DOCS][300];
    int len[DOCS];
    joule_rng r;
    joule_rng_seed(&r, 1);
    for (int d = 0; d < DOCS; d++) {
        len[d] = 40 + (int)joule_rng_below(&r, 261);
        for (int i = 0; i < len[d]; i++) text[d][i] = "abcdefghijklmnopqrstuvwxyz "[joule_rng_below(&r, 27)];
    }
    for (int copy = 0; copy < 2; copy++)
        for (int d = 0; d < DOCS; d++) tu_tokens_doc(w, (uint64_t)(copy * DOCS + d), text[d], (size_t)len[d], 1);
    tu_tokens_commit(w);
    joule_db_build_opts o;
    joule_db_build_opts_init(&o);
    const char *src = g_train;
    o.sources = &src;
    o.n_sources = 1;
    o.out_dir = g_db;
    o.chunk = M;
    o.index = "Flat";
    ck_assert_int_eq(joule_db_build(&o, NULL, NULL), JOULE_OK);
}

static joule_config copy_config(void) {
    joule_config c = joule_config_default(2, 32, 2, 64, CTX);
    c.retro.chunk = M;
    c.retro.k = K;
    joule_retro_config_apply(&c); /* CCA in layer 1 (the depth rule), RoPE positions */
    return c;
}

/* Every chunk retrieved for in the first copy: its nearest neighbour is its twin, chunk and
 * continuation token for token. */
START_TEST(test_twin_retrieved_exactly) {
    joule_config c = copy_config();
    const char *paths[1] = {g_train};
    joule_retro_data *rd;
    ck_assert_int_eq(joule_retro_data_open(&rd, &c, g_db, paths, 1, false, NULL, NULL), JOULE_OK);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, g_train), JOULE_OK);
    const uint64_t half = t.doc_offsets[DOCS];
    uint64_t chunks = 0;
    for (uint64_t s = 0; s + CTX <= half; s += CTX) {
        joule_retro_chunk *ch;
        const int32_t *nb;
        int n;
        ck_assert_int_eq(joule_retro_batch_chunks(rd, &t, &s, 1, CTX, &ch, &nb, &n), JOULE_OK);
        for (int i = 0; i < n; i++) {
            const uint64_t last = (uint64_t)((int64_t)s + ch[i].last), end = t.doc_offsets[joule_tokens_doc_at(&t, last) + 1];
            const int32_t *first = nb + (size_t)i * K * 2 * M;
            for (int j = 0; j < 2 * M; j++) {
                const uint64_t p = last + 1 - M + (uint64_t)j;
                ck_assert_int_eq(first[j], p < end ? (int32_t)t.tok[p] : JOULE_RETRO_PAD);
            }
            chunks++;
        }
    }
    ck_assert_uint_gt(chunks, 1000);
    joule_tokens_close(&t);
    joule_retro_data_close(rd);
}
END_TEST

START_TEST(test_model_copies_its_twin) {
    joule_set_threads(1);
    joule_config c = copy_config();
    joule_model *m = tu_model(&c, 8, 1);
    const char *paths[1] = {g_train};
    joule_retro_data *rd;
    ck_assert_int_eq(joule_retro_data_open(&rd, &c, g_db, paths, 1, false, NULL, NULL), JOULE_OK);
    char out[4400];
    snprintf(out, sizeof out, "%s/r.safetensors", tu_dir);
    joule_train_opts o;
    joule_train_opts_init(&o);
    o.train_path = g_train;
    o.out_path = out;
    o.batch = 8;
    o.max_steps = 800;
    o.adam.lr = 3e-3f;
    o.adam.min_lr = 3e-4f;
    o.adam.warmup_steps = 100;
    joule_retro_train_hooks(&o, rd);
    joule_train_progress p;
    ck_assert_int_eq(joule_train(m, &o, &p), JOULE_OK);
    ck_assert_uint_eq(p.flops, p.flops_analytic);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, g_train), JOULE_OK);
    joule_eval_result on, off;
    ck_assert_int_eq(joule_evaluate_prepared(m, &t, CTX, 8, 600, joule_retro_prepare, rd, &on, NULL, NULL), JOULE_OK);
    joule_retro_data_set_retrieval(rd, false);
    ck_assert_int_eq(joule_evaluate_prepared(m, &t, CTX, 8, 600, joule_retro_prepare, rd, &off, NULL, NULL), JOULE_OK);
    fprintf(stderr, "duplicated corpus, 800 steps: %.4f bpb with retrieval, %.4f without (%.2fx)\n", on.bpb, off.bpb,
            on.bpb / off.bpb);
    ck_assert_msg(on.bpb < 0.5 * off.bpb, "retrieval on %.4f bpb, off %.4f", on.bpb, off.bpb);
    ck_assert_msg(on.bpb < 0.75 * log2(27.0), "retrieval on %.4f bpb: not copying (letters carry 4.75)", on.bpb);
    joule_tokens_close(&t);
    joule_retro_data_close(rd);
    joule_model_free(m);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("retro_copy");
    TCase *tc = tu_tcase(s, "duplicated_corpus", 600, setup, tu_remove_dir);
    tcase_add_test(tc, test_twin_retrieved_exactly);
    tcase_add_test(tc, test_model_copies_its_twin);
    return s;
}

int main(void) {
    joule_retro_register();
    return tu_run_suite(suite());
}
