/* Scaling-law fits: exact recovery of noise-free synthetic laws, noisy data inside the
 * bootstrap intervals, the published Chinchilla data (Epoch's extraction), compute-optimal
 * allocation, the runs reader, and `joule fit` end to end. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/fit.h"
#include "joule/svg.h"
#include "testutil.h"

static const joule_chin_fit TRUTH = {1.69, 406.4, 410.7, 0.34, 0.28, 0};

/* A 6 x 6 grid of model sizes and token counts; noise sigma on log L (0 = exact). */
static size_t synth_chinchilla(joule_run *runs, double sigma, uint64_t seed) {
    joule_rng r;
    joule_rng_seed(&r, seed);
    size_t n = 0;
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            joule_run *x = &runs[n++];
            x->N = 1e7 * pow(10, 0.6 * i);
            x->D = 1e9 * pow(10, 0.6 * j);
            x->C = 6 * x->N * x->D;
            x->loss = joule_chin_loss(&TRUTH, x->N, x->D) * exp(sigma * joule_rng_normal(&r));
        }
    return n;
}

static void rel_close(double got, double want, double tol, const char *what) {
    ck_assert_msg(fabs(got - want) <= tol * fabs(want), "%s: %.12g vs %.12g (rel tol %g)", what, got, want, tol);
}

START_TEST(test_chinchilla_noise_free_recovered) {
    joule_run runs[36];
    size_t n = synth_chinchilla(runs, 0, 1);
    joule_chin_fit f;
    ck_assert_msg(joule_fit_chinchilla(runs, n, 0, &f) == JOULE_OK, "%s", joule_last_error());
    rel_close(f.E, TRUTH.E, 1e-6, "E");
    rel_close(f.A, TRUTH.A, 1e-6, "A");
    rel_close(f.B, TRUTH.B, 1e-6, "B");
    rel_close(f.alpha, TRUTH.alpha, 1e-6, "alpha");
    rel_close(f.beta, TRUTH.beta, 1e-6, "beta");
    ck_assert(f.objective < 1e-12);
}
END_TEST

START_TEST(test_power_noise_free_recovered) {
    joule_run runs[12];
    const joule_pow_fit t = {2000, -0.155, 1.7, 0};
    for (int i = 0; i < 12; i++) {
        runs[i].C = 1e17 * pow(10, 0.5 * i);
        runs[i].N = runs[i].D = 0;
        runs[i].loss = joule_pow_loss(&t, runs[i].C);
    }
    joule_pow_fit f;
    ck_assert_msg(joule_fit_power(runs, 12, 0, &f) == JOULE_OK, "%s", joule_last_error());
    rel_close(f.a, t.a, 1e-6, "a");
    rel_close(f.b, t.b, 1e-6, "b");
    rel_close(f.c, t.c, 1e-6, "c");
    /* effective compute of a point exactly on the curve: multiplier 1 */
    rel_close(joule_pow_compute_for(&f, joule_pow_loss(&t, 3e20)) / 3e20, 1, 1e-5, "multiplier");
}
END_TEST

START_TEST(test_noisy_within_intervals_and_deterministic) {
    joule_run runs[36];
    size_t n = synth_chinchilla(runs, 0.01, 7);
    joule_chin_fit f, *b1, *b2;
    ck_assert_int_eq(joule_fit_chinchilla(runs, n, 0, &f), JOULE_OK);
    ck_assert_int_eq(joule_bootstrap_chinchilla(runs, n, 0, &f, 60, 42, NULL, NULL, &b1), JOULE_OK);
    ck_assert_int_eq(joule_bootstrap_chinchilla(runs, n, 0, &f, 60, 42, NULL, NULL, &b2), JOULE_OK);
    ck_assert_int_eq(memcmp(b1, b2, 60 * sizeof *b1), 0); /* same seed, same fits */
    double x[60], lo, hi, sd;
    const double truth[3] = {TRUTH.E, TRUTH.alpha, TRUTH.beta};
    const char *names[3] = {"E", "alpha", "beta"};
    for (int p = 0; p < 3; p++) {
        for (int k = 0; k < 60; k++)
            x[k] = p == 0 ? b1[k].E : p == 1 ? b1[k].alpha : b1[k].beta;
        joule_interval(x, 60, 0.99, &lo, &hi, &sd);
        ck_assert_msg(lo <= truth[p] && truth[p] <= hi, "%s: truth %g outside [%g, %g]", names[p], truth[p], lo, hi);
        ck_assert(sd > 0);
    }
    free(b1);
    free(b2);
}
END_TEST

START_TEST(test_compute_optimal_is_the_minimum) {
    const double C = 1e22;
    double N, D;
    joule_chin_optimal(&TRUTH, C, &N, &D);
    rel_close(6 * N * D, C, 1e-12, "C = 6ND");
    const double best = joule_chin_loss(&TRUTH, N, D);
    for (double f = 0.5; f <= 2.0; f *= 1.1) /* any other split of the budget is worse */
        ck_assert(joule_chin_loss(&TRUTH, N * f, C / (6 * N * f)) >= best - 1e-12);
    /* and the frontier inverts: the compute reaching that loss is C */
    rel_close(joule_chin_compute_for(&TRUTH, best), C, 1e-9, "compute for L*(C)");
    ck_assert(isinf(joule_chin_compute_for(&TRUTH, TRUTH.E)));
}
END_TEST

/* Epoch AI's extraction of Hoffmann et al.'s Figure 4 (../shared/oracles/README.md). */
START_TEST(test_chinchilla_published_data) {
    const char *src = getenv("JOULE_TEST_SRC");
    ck_assert_msg(src != NULL, "JOULE_TEST_SRC is not set (run through ctest)");
    char path[4096];
    /* The shared oracle folder when this checkout sits beside it, else the copy in tests/data. */
    snprintf(path, sizeof path, "%s/../shared/oracles/chinchilla_fig4_epoch_extracted.csv", src);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "%s/tests/data/chinchilla_fig4_epoch_extracted.csv", src);
    ck_assert_msg(access(path, R_OK) == 0, "oracle data missing: %s (see tests/data/README.md)", path);
    joule_run *all, *runs;
    size_t n_all, n;
    ck_assert_msg(joule_runs_load(path, &all, &n_all) == JOULE_OK, "%s", joule_last_error());
    ck_assert_uint_eq(n_all, 245);
    ck_assert_int_eq(joule_runs_drop_highest_loss(all, n_all, 5, &runs, &n), JOULE_OK);
    ck_assert_uint_eq(n, 240);
    joule_chin_fit f;
    ck_assert_int_eq(joule_fit_chinchilla(runs, n, 1e-3, &f), JOULE_OK);
    ck_assert_msg(fabs(f.E - 1.817) < 0.003, "E %g", f.E);
    ck_assert_msg(fabs(f.alpha - 0.348) < 0.002, "alpha %g", f.alpha);
    ck_assert_msg(fabs(f.beta - 0.366) < 0.002, "beta %g", f.beta);
    ck_assert_msg(fabs(f.objective - 1.0183e-3) < 0.001 * 1.0183e-3, "objective %.8g", f.objective);
    ck_assert_msg(fabs(f.A - 482) < 125, "A %g outside 482 +- 125", f.A);
    ck_assert_msg(fabs(f.B - 2085) < 1293, "B %g outside 2085 +- 1293", f.B);
    /* Hoffmann's own constants fit these points worse (README: 1.2312e-3) */
    joule_chin_fit h = {1.6934, 406.4, 410.7, 0.33917, 0.28491, 0};
    double obj = 0;
    for (size_t i = 0; i < n; i++) {
        double r = log(joule_chin_loss(&h, runs[i].N, runs[i].D)) - log(runs[i].loss);
        obj += fabs(r) <= 1e-3 ? 0.5 * r * r : 1e-3 * (fabs(r) - 0.5e-3);
    }
    ck_assert_msg(fabs(obj - 1.2312e-3) < 2e-6, "Hoffmann objective %.8g", obj);
    free(all);
    free(runs);
}
END_TEST

START_TEST(test_runs_reader) {
    tu_make_dir("joule_fit_");
    const char *path;
    joule_run *r;
    size_t n;
    path = tu_path("a.jsonl");
    tu_write_text(path, "{\"params\": 1e8, \"tokens\": 2e9, \"loss\": 3.1}\n\n{\"flops\": 5e18, \"loss\": 2.9}\n");
    ck_assert_msg(joule_runs_load(path, &r, &n) == JOULE_OK, "%s", joule_last_error());
    ck_assert_uint_eq(n, 2);
    ck_assert_double_eq(r[0].C, 6 * 1e8 * 2e9);
    ck_assert_double_eq(r[1].C, 5e18);
    free(r);
    path = tu_path("b.csv");
    tu_write_text(path, "N,D,loss\n1e8,2e9,3.1\n1e8,2e9x,3.0\n");
    ck_assert_int_eq(joule_runs_load(path, &r, &n), JOULE_ERR_FORMAT);
    ck_assert_msg(strstr(joule_last_error(), "b.csv:3") && strstr(joule_last_error(), "2e9x"), "%s",
                  joule_last_error());
    path = tu_path("c.csv");
    tu_write_text(path, "N,D,quality\n1e8,2e9,3.1\n");
    ck_assert_int_eq(joule_runs_load(path, &r, &n), JOULE_ERR_FORMAT);
    ck_assert_msg(strstr(joule_last_error(), "no loss column"), "%s", joule_last_error());
    path = tu_path("d.csv");
    tu_write_text(path, "C,loss\n1e18,-2\n");
    ck_assert_int_eq(joule_runs_load(path, &r, &n), JOULE_ERR_FORMAT);
    tu_remove_dir();
}
END_TEST

/* Tick and point labels: short, and never printf's "1e+04". */
START_TEST(test_svg_numbers) {
    const double v[] = {1e12, 2e11, 2.5e11, 9.99996e11, 15000, 0.05, 2.2, 0, 1e-4};
    const char *want[] = {"1e12", "2e11", "2.5e11", "1e12", "15000", "0.05", "2.2", "0", "1e-4"};
    for (int i = 0; i < 9; i++) {
        char b[32];
        joule_svg_number(b, sizeof b, v[i]);
        ck_assert_str_eq(b, want[i]);
    }
}
END_TEST

START_TEST(test_cli_fit) {
    tu_make_dir("joule_fitcli_");
    joule_run runs[36];
    size_t n = synth_chinchilla(runs, 0.005, 3);
    char *csv = calloc(1 << 16, 1);
    size_t len = (size_t)sprintf(csv, "params,tokens,loss\n");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(csv + len, "%.17g,%.17g,%.17g\n", runs[i].N, runs[i].D, runs[i].loss);
    tu_write_text(tu_path("runs.csv"), csv);
    free(csv);
    ck_assert_int_eq(tu_joule("fit --runs runs.csv --bootstrap 20 --predict 1e22 --budget 1e22 --backtest "
                               "--effective 1e20:2.4 --out fit.json --svg fit.svg"),
                     0);
    char *js = tu_read_in("fit.json", NULL), *svg = tu_read_in("fit.svg", NULL);
    ck_assert_ptr_nonnull(js);
    ck_assert_ptr_nonnull(svg);
    cJSON *o = cJSON_Parse(js);
    ck_assert_ptr_nonnull(o);
    cJSON *ch = cJSON_GetObjectItem(o, "chinchilla");
    ck_assert_ptr_nonnull(ch);
    double alpha = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "alpha"), "value")->valuedouble;
    ck_assert_msg(fabs(alpha - TRUTH.alpha) < 0.03, "alpha %g", alpha);
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "alpha"), "lo"));
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(o, "compute_optimal"));
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(o, "backtest"));
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(o, "effective_compute"));
    ck_assert_ptr_nonnull(
        cJSON_GetObjectItem(cJSON_GetObjectItem(o, "effective_compute"), "multiplier_chinchilla_optimal"));
    ck_assert_ptr_nonnull(strstr(svg, "<svg") ? strstr(svg, "</svg>") : NULL);
    ck_assert_ptr_nonnull(strstr(svg, "<polyline"));
    /* decade ticks, the formulas in the legend, the L(C) interval */
    ck_assert_ptr_nonnull(strstr(svg, ">1e22</text>"));
    ck_assert_ptr_nonnull(strstr(svg, ">L(C) = "));
    ck_assert_ptr_nonnull(strstr(svg, "bootstrap interval"));
    cJSON_Delete(o);
    free(js);
    free(svg);
    ck_assert_int_eq(tu_joule("fit --runs nosuch.csv"), 2);
    tu_write_text(tu_path("bad.csv"), "C,loss\n1e18,abc\n");
    ck_assert_int_eq(tu_joule("fit --runs bad.csv"), 2);
    char *err = tu_read_in("err.txt", NULL);
    ck_assert_msg(strstr(err, "bad.csv:2"), "%s", err);
    free(err);
    ck_assert_int_eq(tu_joule("fit --runs runs.csv --level 2"), 2);
    ck_assert_int_eq(tu_joule("fit --help"), 0);
    tu_remove_dir();
}
END_TEST

static Suite *fit_suite(void) {
    Suite *s = suite_create("fit");
    TCase *f = tu_tcase(s, "fits", 120, NULL, NULL);
    tcase_add_test(f, test_chinchilla_noise_free_recovered);
    tcase_add_test(f, test_power_noise_free_recovered);
    tcase_add_test(f, test_noisy_within_intervals_and_deterministic);
    tcase_add_test(f, test_compute_optimal_is_the_minimum);
    tcase_add_test(f, test_chinchilla_published_data);
    TCase *c = tu_tcase(s, "io", 120, NULL, NULL);
    tcase_add_test(c, test_runs_reader);
    tcase_add_test(c, test_cli_fit);
    tcase_add_test(f, test_svg_numbers);
    return s;
}

int main(void) {
    return tu_run_suite(fit_suite());
}
