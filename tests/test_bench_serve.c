/* `joule bench serve`'s parts: the arrival processes have the right mean and dispersion;
 * the steady-state window and the energies on a simulated clock; idle subtraction on a
 * meter of known power; an in-process open-loop run completes every request, after its
 * arrival, with exactly the tokens asked for. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/bench_serve.h"
#include "testutil.h"

/* Mean and variance of the gaps of n arrivals. */
static void gap_stats(const double *t, int n, double *mean, double *var) {
    double s = 0, s2 = 0, prev = 0;
    for (int i = 0; i < n; i++) {
        const double g = t[i] - prev;
        prev = t[i];
        s += g;
        s2 += g * g;
    }
    *mean = s / n;
    *var = s2 / n - *mean * *mean;
}

START_TEST(test_poisson_and_gamma) {
    enum { N = 20000 };
    static double t[N], u[N];
    double mean, var;
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_POISSON, 4.0, 0, N, 7, t), JOULE_OK);
    for (int i = 1; i < N; i++) ck_assert(t[i] >= t[i - 1]);
    gap_stats(t, N, &mean, &var);
    ck_assert_msg(fabs(mean - 0.25) < 0.01, "Poisson gap mean %g, want 0.25", mean); /* sd of mean: 0.0018 */
    ck_assert_msg(fabs(var / (mean * mean) - 1.0) < 0.06, "Poisson gap CV^2 %g, want 1", var / (mean * mean));
    /* counts in unit windows: Poisson, so variance = mean (dispersion index 1) */
    int counts[6000] = {0}, w = (int)t[N - 1];
    for (int i = 0; i < N; i++)
        if ((int)t[i] < w) counts[(int)t[i]]++;
    double cm = 0, cv = 0;
    for (int i = 0; i < w; i++) cm += counts[i];
    cm /= w;
    for (int i = 0; i < w; i++) cv += (counts[i] - cm) * (counts[i] - cm);
    cv /= w - 1;
    ck_assert_msg(fabs(cm - 4.0) < 0.15 && fabs(cv / cm - 1.0) < 0.1, "counts mean %g dispersion %g", cm, cv / cm);
    /* same seed, same stream; another seed, another */
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_POISSON, 4.0, 0, N, 7, u), JOULE_OK);
    ck_assert_int_eq(memcmp(t, u, sizeof t), 0);
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_POISSON, 4.0, 0, N, 8, u), JOULE_OK);
    ck_assert_int_ne(memcmp(t, u, sizeof t), 0);
    /* gamma of shape k: same mean, CV^2 = 1/k */
    const double shapes[3] = {0.25, 1.0, 4.0};
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_GAMMA, 4.0, shapes[k], N, 9, u), JOULE_OK);
        gap_stats(u, N, &mean, &var);
        ck_assert_msg(fabs(mean - 0.25) < 0.015, "gamma(%g) gap mean %g", shapes[k], mean);
        ck_assert_msg(fabs(var / (mean * mean) * shapes[k] - 1.0) < 0.12, "gamma(%g) CV^2 %g", shapes[k],
                      var / (mean * mean));
    }
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_ALL, 0, 0, 5, 1, u), JOULE_OK);
    ck_assert(u[0] == 0 && u[4] == 0);
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_POISSON, 0, 0, 5, 1, u), JOULE_ERR_ARG);
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_GAMMA, 1, -1, 5, 1, u), JOULE_ERR_ARG);
}
END_TEST

/* A simulated run: 8 requests all at 0 on a server of 4 slots, each 10 tokens, one token
 * per slot per second; power 10 W idle + 2 J per token. The steady state is where the 4
 * slots run, [0, 19]; its energy and tokens follow. */
static void simulate(joule_serve_trace *tr) {
    memset(tr, 0, sizeof *tr);
    tr->n = 8;
    tr->req = calloc(8, sizeof *tr->req);
    snprintf(tr->method, sizeof tr->method, "measured:constant");
    for (int i = 0; i < 8; i++) { /* the first 4 run in [0, 10], the next 4 in [10, 20] */
        joule_serve_req *q = &tr->req[i];
        const double start = i < 4 ? 0 : 10;
        q->arrival = 0;
        q->output_tokens = 10;
        q->prompt_tokens = 5;
        q->token_t = malloc(10 * sizeof(double));
        for (int k = 0; k < 10; k++) q->token_t[k] = start + k + 1;
        q->first = start + 1;
        q->end = start + 10;
        q->ok = true;
    }
    tr->busy_joules = NAN;
    tr->pt = calloc(21, sizeof *tr->pt);
    for (int s = 0; s <= 20; s++) { /* one point per second */
        const int in_flight = s < 10 ? 8 : s < 20 ? 4 : 0, running = s < 20 ? 4 : 0;
        const uint64_t tokens = (uint64_t)(4 * s);
        tr->pt[s] = (joule_serve_point){.t = s, .in_flight = in_flight, .running = running, .tokens = tokens,
                                        .joules = 10.0 * s + 2.0 * (double)tokens};
    }
    tr->n_pt = tr->cap_pt = 21;
}

START_TEST(test_steady_window_and_idle_subtraction) {
    joule_serve_trace tr;
    simulate(&tr);
    joule_serve_slo slo = {.ttft_s = 5, .tpot_s = 2};
    joule_serve_summary s;
    joule_serve_analyze(&tr, &slo, 10.0, &s);
    ck_assert_int_eq(s.completed, 8);
    ck_assert_uint_eq(s.output_tokens, 80);
    ck_assert(fabs(s.wall_s - 20) < 1e-12);
    ck_assert(fabs(s.tok_per_s - 4) < 1e-12);
    /* TTFT: 1 s for four, 11 s for four; goodput counts the first four over 20 s */
    ck_assert(fabs(s.ttft.p50 - 1) < 1e-12 && fabs(s.ttft.p90 - 11) < 1e-12);
    ck_assert(fabs(s.tpot.p99 - 1) < 1e-12 && fabs(s.itl.p50 - 1) < 1e-12);
    ck_assert(fabs(s.goodput_req_per_s - 4.0 / 20) < 1e-12);
    /* whole run: 200 J idle-rate + 160 J of tokens over 8 requests, 80 tokens */
    ck_assert(fabs(s.joules - 360) < 1e-9);
    ck_assert(fabs(s.j_per_request - 45) < 1e-9 && fabs(s.j_per_token - 4.5) < 1e-9);
    /* steady state: the 4 slots busy, [0, 19]: 76 tokens, 190 + 152 J */
    ck_assert_int_eq(s.ss_in_flight, 4);
    ck_assert(s.ss_t0 == 0 && s.ss_t1 == 19);
    ck_assert(fabs(s.ss_tokens - 76) < 1e-12 && fabs(s.ss_joules - 342) < 1e-9);
    /* busy energy: every interval with a request in flight, here the whole run */
    ck_assert(fabs(s.busy_joules - 360) < 1e-9);
    ck_assert(fabs(s.ss_j_per_token - 4.5) < 1e-9 && fabs(s.ss_j_per_request - 45) < 1e-9);
    /* idle subtraction: 10 W x the run leaves exactly the 2 J per token */
    ck_assert(fabs(s.idle_sub_j_per_token - 2) < 1e-9 && fabs(s.idle_sub_j_per_request - 20) < 1e-9);
    ck_assert(fabs(s.ss_idle_sub_j_per_token - 2) < 1e-9);
    joule_serve_trace_free(&tr);
}
END_TEST

/* Idle power through a real meter set: the constant meter reads back its power. */
START_TEST(test_idle_power_constant_meter) {
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.constant_watts = 37.5;
    o.want[JOULE_METER_CONSTANT] = true;
    joule_energy e;
    ck_assert_msg(joule_energy_open(&e, &o) == JOULE_OK, "%s", joule_last_error());
    double w;
    ck_assert_int_eq(joule_serve_idle_power(&e, 0.2, &w), JOULE_OK);
    ck_assert_msg(fabs(w - 37.5) < 1e-6, "idle %g W", w);
    joule_energy_close(&e);
}
END_TEST

START_TEST(test_in_process_run) {
    joule_config c = joule_config_default(1, 32, 2, 64, 64);
    joule_model *m = tu_model(&c, 1, 4);
    enum { N = 10 };
    double arr[N];
    ck_assert_int_eq(joule_arrivals(JOULE_ARRIVE_POISSON, 200.0, 0, N, 3, arr), JOULE_OK);
    static uint8_t text[N][16];
    const uint8_t *prompts[N];
    int np[N], mt[N];
    for (int i = 0; i < N; i++) {
        memset(text[i], 'a' + i, sizeof text[i]);
        prompts[i] = text[i];
        np[i] = 4 + i;
        mt[i] = 3 + 2 * i;
    }
    joule_serve_load l = {.m = m, .sched = {.max_batch = 4, .step_tokens = 64}, .prompts = prompts, .n_prompt = np,
                          .max_tokens = mt, .arrivals = arr, .n = N};
    joule_serve_trace tr;
    ck_assert_msg(joule_serve_run(&l, &tr) == JOULE_OK, "%s", joule_last_error());
    int peak = 0;
    for (int i = 0; i < tr.n_pt; i++) peak = tr.pt[i].in_flight > peak ? tr.pt[i].in_flight : peak;
    ck_assert_int_le(peak, N);
    for (int i = 0; i < N; i++) {
        ck_assert(tr.req[i].ok);
        ck_assert_int_eq(tr.req[i].output_tokens, mt[i]);
        ck_assert(tr.req[i].first >= arr[i] && tr.req[i].end >= tr.req[i].first);
    }
    ck_assert_uint_eq(tr.pt[tr.n_pt - 1].tokens, 10 * 3 + 2 * 45);
    joule_serve_trace_free(&tr);
    joule_model_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("bench_serve");
    TCase *t = tu_tcase(s, "load", 60, NULL, NULL);
    tcase_add_test(t, test_poisson_and_gamma);
    tcase_add_test(t, test_steady_window_and_idle_subtraction);
    tcase_add_test(t, test_idle_power_constant_meter);
    tcase_add_test(t, test_in_process_run);
    return tu_run_suite(s);
}
