/* The packed few-row kernel of batched decode steps (core/rows_kernel.h): its products
 * against a double-precision reference at every row count the tiling has a case for; each
 * row's bits independent of the other rows, of n and of the thread count (what lets a
 * request's output not depend on what else is in the batch); and through
 * joule_decoder_step_batch / joule_decoder_batch_prefill: a sequence's logits are the same
 * bits whatever batch it is stepped in, and near joule_decoder_step's. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/rows_kernel.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "testutil.h"

enum { IC = 37, OC = 70, NMAX = 27 }; /* OC: two full panels and a partial one */

static void fill(float *x, size_t n, uint64_t seed) {
    joule_rng r;
    joule_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = joule_rng_float(&r) * 2.0f - 1.0f;
}

static float W[OC * IC], in[NMAX * IC];

static joule_rows_packed pack(void) {
    joule_rows_packed pk = {.W = W, .IC = IC, .OC = OC};
    const size_t nf = joule_rows_pack_floats(IC, OC);
    ck_assert_uint_eq(nf, 3u * IC * JOULE_ROWS_PANEL);
    pk.p = joule_alloc(nf * sizeof(float));
    ck_assert_ptr_nonnull(pk.p);
    joule_rows_pack(pk.p, W, IC, OC);
    return pk;
}

START_TEST(test_products_match_reference) {
    fill(W, sizeof W / sizeof *W, 1);
    fill(in, sizeof in / sizeof *in, 2);
    joule_rows_packed pk = pack();
    joule_set_threads(1);
    static float out[NMAX * OC], prev[NMAX * OC];
    for (int n = 1; n <= NMAX; n++)
        for (int beta = 0; beta <= 1; beta++) {
            fill(prev, (size_t)n * OC, 3 + (uint64_t)n);
            memcpy(out, prev, sizeof(float) * (size_t)n * OC);
            joule_flops_reset();
            joule_rows_matmul(out, in, &pk, n, (float)beta);
            ck_assert_uint_eq(joule_flops_counted(), 2ull * (uint64_t)n * IC * OC);
            for (int i = 0; i < n; i++)
                for (int o = 0; o < OC; o++) {
                    double ref = beta ? prev[i * OC + o] : 0.0;
                    for (int k = 0; k < IC; k++) ref += (double)in[i * IC + k] * W[o * IC + k];
                    ck_assert_msg(fabs(out[i * OC + o] - ref) <= 1e-5 * (1 + fabs(ref)), "n %d beta %d [%d,%d]: %g vs %g",
                                  n, beta, i, o, out[i * OC + o], ref);
                }
        }
    joule_free(pk.p);
}
END_TEST

/* Row i alone (n = 1), inside every n > i, at 1 and 2 threads: the same bits. */
START_TEST(test_rows_independent_of_batch) {
    fill(W, sizeof W / sizeof *W, 4);
    fill(in, sizeof in / sizeof *in, 5);
    joule_rows_packed pk = pack();
    static float alone[NMAX * OC], out[NMAX * OC];
    joule_set_threads(1);
    for (int i = 0; i < NMAX; i++) joule_rows_matmul(alone + i * OC, in + i * IC, &pk, 1, 0.0f);
    for (int threads = 1; threads <= 2; threads++) {
        joule_set_threads(threads);
        for (int n = 1; n <= NMAX; n++) {
            joule_rows_matmul(out, in, &pk, n, 0.0f);
            ck_assert_msg(memcmp(out, alone, sizeof(float) * (size_t)n * OC) == 0, "n %d threads %d", n, threads);
        }
    }
    joule_set_threads(1);
    joule_free(pk.p);
}
END_TEST

/* Two decoders with the same prompt, stepped with the same token in different batches
 * (other sequences, another n, another slot): bit-identical logits, near the single step. */
START_TEST(test_step_independent_of_companions) {
    joule_config c = joule_config_default(2, 32, 4, 64, 48);
    joule_model *m = tu_model(&c, 1, 9);
    joule_set_threads(1);
    enum { N = 5 };
    joule_decoder *d[N], *ref;
    ck_assert_int_eq(joule_decoder_create(&ref, m), JOULE_OK);
    for (int i = 0; i < N; i++) ck_assert_int_eq(joule_decoder_create(&d[i], m), JOULE_OK);
    joule_decoder_batch *b1, *b2;
    ck_assert_int_eq(joule_decoder_batch_create(&b1, m, N), JOULE_OK);
    ck_assert_int_eq(joule_decoder_batch_create(&b2, m, 3), JOULE_OK);
    int32_t p[N][12];
    for (int i = 0; i < N; i++) tu_random_tokens(p[i], 12, 20 + (uint64_t)i);
    memcpy(p[1], p[0], sizeof p[0]); /* d[0] and d[1] hold the same sequence */
    const float *lg, *la, *lb;
    const int len[N] = {3, 3, 5, 8, 12};
    for (int i = 0; i < N; i++) /* d[0] through b1, d[1] through b2 */
        ck_assert_int_eq(joule_decoder_batch_prefill(i % 2 ? b2 : b1, d[i], p[i], len[i], &lg), JOULE_OK);
    ck_assert_int_eq(joule_decoder_prefill(ref, p[0], 3, &lg), JOULE_OK);
    /* the batch prefill: the same cache as the decoder's own, to rounding */
    tu_expect_near(d[0]->k_cache, ref->k_cache, 3 * (size_t)c.d_model, 1e-5, "prefill k cache");
    static float row[256];
    for (int step = 0; step < 4; step++) {
        int32_t tok[N];
        tu_random_tokens(tok, N, 40 + (uint64_t)step);
        tok[1] = tok[0];
        joule_decoder *s1[4] = {d[2], d[0], d[3], d[4]}, *s2[2] = {d[1], d[4]};
        int32_t t1[4] = {tok[2], tok[0], tok[3], tok[4]}, t2[2] = {tok[0], 7};
        ck_assert_int_eq(joule_decoder_step_batch(b1, s1, 4, t1, &la), JOULE_OK);
        memcpy(row, la + c.vocab, sizeof(float) * (size_t)c.vocab);
        ck_assert_int_eq(joule_decoder_step_batch(b2, s2, 2, t2, &lb), JOULE_OK);
        ck_assert_msg(memcmp(row, lb, sizeof(float) * (size_t)c.vocab) == 0, "step %d: logits depend on the batch", step);
        ck_assert_int_eq(joule_decoder_step(ref, tok[0], &lg), JOULE_OK);
        tu_expect_near(row, lg, (size_t)c.vocab, 1e-5, "batched vs single step");
        /* undo d[4]'s second step so that both batches keep stepping the same positions */
        ck_assert_int_eq(joule_decoder_truncate(d[4], d[4]->pos - 1), JOULE_OK);
    }
    joule_decoder_batch_free(b1);
    joule_decoder_batch_free(b2);
    for (int i = 0; i < N; i++) joule_decoder_free(d[i]);
    joule_decoder_free(ref);
    joule_model_free(m);
}
END_TEST

/* A batch of max_n 1 runs the gemvs of joule_decoder_step, and its attention walks the
 * cache row by row, where a step past position 64 on 2 threads goes head by head (one head
 * per thread): the logits must still be the same bits (head_dot's fixed order). Head sizes
 * 64 (the AVX-512 path), 24 (a lane tail) and 8. */
static void check_one_row_batch(int d_model, int heads) {
    joule_config c = joule_config_default(2, d_model, heads, 2 * d_model, 96);
    joule_model *m = tu_model(&c, 1, 11);
    joule_set_threads(2);
    joule_decoder *a, *b;
    joule_decoder_batch *bt;
    ck_assert_int_eq(joule_decoder_create(&a, m), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&b, m), JOULE_OK);
    ck_assert_int_eq(joule_decoder_batch_create(&bt, m, 1), JOULE_OK);
    int32_t tok[80];
    tu_random_tokens(tok, 80, 5);
    const float *la, *lb;
    for (int i = 0; i < 80; i++) {
        ck_assert_int_eq(joule_decoder_step(a, tok[i], &la), JOULE_OK);
        ck_assert_int_eq(joule_decoder_step_batch(bt, &b, 1, &tok[i], &lb), JOULE_OK);
        ck_assert_msg(memcmp(la, lb, sizeof(float) * (size_t)c.vocab) == 0, "d %d heads %d, token %d: logits differ",
                      d_model, heads, i);
    }
    joule_decoder_batch_free(bt);
    joule_decoder_free(a);
    joule_decoder_free(b);
    joule_model_free(m);
}

START_TEST(test_one_row_batch_equals_step) {
    check_one_row_batch(128, 2);
    check_one_row_batch(48, 2);
    check_one_row_batch(32, 4);
}
END_TEST

int main(void) {
    Suite *s = suite_create("rows_kernel");
    TCase *t = tu_tcase(s, "rows_kernel", 60, NULL, NULL);
    tcase_add_test(t, test_products_match_reference);
    tcase_add_test(t, test_rows_independent_of_batch);
    tcase_add_test(t, test_step_independent_of_companions);
    tcase_add_test(t, test_one_row_batch_equals_step);
    return tu_run_suite(s);
}
