/* The measurements of joule/bench.h on tiny models: results are filled and consistent
 * (the optimizer step only adds time), the energy window brackets the work, and
 * joule_median is the usual median. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>

#include "joule/bench.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "testutil.h"

static const joule_bench_model_opts TINY = {.layers = 1, .d_model = 32, .heads = 2, .d_ff = 64, .ctx = 32,
                                            .batch = 2, .steps = 3, .warmup = 1, .tokens = 16};

static void on_window(void *ctx, bool begin) {
    int *calls = ctx;
    ck_assert_int_eq(*calls, begin ? 0 : 1); /* begin once, then end once */
    (*calls)++;
}

START_TEST(test_median) {
    double odd[3] = {3, 1, 2}, even[4] = {4, 1, 3, 2};
    ck_assert_double_eq(joule_median(odd, 3), 2);
    ck_assert_double_eq(joule_median(even, 4), 2.5);
    ck_assert_double_eq(even[0], 1); /* sorted in place */
}
END_TEST

START_TEST(test_train) {
    joule_set_threads(1);
    int calls = 0;
    joule_bench_model_opts o = TINY;
    o.window = on_window;
    o.window_ctx = &calls;
    joule_bench_train_result r;
    ck_assert_int_eq(joule_bench_train(&o, &r), JOULE_OK);
    ck_assert_int_eq(calls, 2);
    ck_assert(r.step_s > 0 && r.full_step_s >= r.step_s);
    ck_assert(r.peak_gflops > 0);
    ck_assert(r.model_flops_per_token > 0 && r.counted_flops_per_token > 0);
    ck_assert(r.params.total > 0);
}
END_TEST

START_TEST(test_train_refuses_bad_model) {
    joule_bench_model_opts o = TINY;
    o.heads = 3; /* d_model 32 is not a multiple of 3 heads */
    joule_bench_train_result r;
    ck_assert_int_ne(joule_bench_train(&o, &r), JOULE_OK);
    ck_assert_str_ne(joule_last_error(), "");
}
END_TEST

START_TEST(test_moe) {
    joule_set_threads(1);
    joule_bench_moe_opts o = {.layers = 2, .d_model = 32, .heads = 2, .d_ff = 64, .ctx = 32, .batch = 2,
                              .steps = 2, .warmup = 1, .tokens = 8, .experts = 4, .top_k = 2, .every = 2,
                              .d_ff_expert = 32, .capacity = 1.25f};
    joule_bench_moe_result r;
    ck_assert_int_eq(joule_bench_moe(&o, &r), JOULE_OK);
    ck_assert(r.dense_step_s > 0 && r.moe_step_s > 0 && r.dense_best_s <= r.dense_step_s);
    ck_assert(r.moe_params > r.moe_active_params && r.moe_active_params > 0);
    ck_assert(r.dropped_fraction >= 0 && r.dropped_fraction <= 1);
    ck_assert_int_eq(r.decode_tokens, 8);
    ck_assert(r.dense_decode_s > 0 && r.moe_decode_s > 0);
}
END_TEST

/* Batched steps: filled, and the n-row step's counted FLOPs are n one-row steps' at the
 * same position (each sequence its own attention); bad row counts and short contexts are
 * refused. */
START_TEST(test_decode_rows) {
    joule_set_threads(1);
    joule_bench_model_opts o = TINY;
    o.ctx = 96;
    o.rows = 4;
    joule_bench_decode_result r;
    ck_assert_int_eq(joule_bench_decode(&o, &r), JOULE_OK);
    ck_assert_int_eq(r.rows, 4);
    ck_assert(r.step_gemv_s > 0 && r.step_one_s > 0 && r.step_rows_s > 0);
    joule_config c = joule_config_default(o.layers, o.d_model, o.heads, o.d_ff, o.ctx);
    joule_model *m = tu_model(&c, 1, 3);
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    const float *lg;
    for (int i = 0; i < r.positions; i++) ck_assert_int_eq(joule_decoder_step(d, 'a', &lg), JOULE_OK);
    joule_flops_reset();
    ck_assert_int_eq(joule_decoder_step(d, 'a', &lg), JOULE_OK);
    ck_assert_double_eq(r.step_rows_flops, 4.0 * (double)joule_flops_counted());
    ck_assert_int_ne(joule_bench_decode_rows(m, 1, &r), JOULE_OK);
    ck_assert_int_ne(joule_bench_decode_rows(m, JOULE_BENCH_MAX_ROWS + 1, &r), JOULE_OK);
    joule_decoder_free(d);
    joule_model_free(m);
    c = joule_config_default(1, 32, 2, 64, 64);
    m = tu_model(&c, 1, 3);
    ck_assert_int_ne(joule_bench_decode_rows(m, 4, &r), JOULE_OK); /* 16 + 64 steps need ctx 81 */
    joule_model_free(m);
}
END_TEST

static Suite *bench_suite(void) {
    Suite *s = suite_create("bench");
    TCase *t = tu_tcase(s, "measurements", 120, NULL, NULL);
    tcase_add_test(t, test_median);
    tcase_add_test(t, test_train);
    tcase_add_test(t, test_train_refuses_bad_model);
    tcase_add_test(t, test_moe);
    tcase_add_test(t, test_decode_rows);
    return s;
}

int main(void) {
    joule_moe_register();
    return tu_run_suite(bench_suite());
}
