/* joule/bench_serve.h — `joule bench serve`: an open-loop load generator and its report.
 *
 * Requests arrive at times drawn in advance (Poisson, gamma, or all at once as ML.ENERGY
 * loads a server) whatever the server's progress: open loop. The target is the
 * continuous-batching scheduler in this process (bench/serve_load.c) or any
 * OpenAI-compatible server at a URL (bench/serve_http.c). Each request's arrival, token
 * times and end are kept, and the run's timeline: for every scheduler step (in process) or
 * every token event (URL), the time, the requests in flight, the tokens generated so far
 * and the energy so far. joule_serve_analyze turns those into the figures docs/BENCH.md
 * ("joule bench serve") defines: TTFT, TPOT, ITL percentiles, throughput, goodput under an
 * SLO, energy per request and per output token over the whole run and over the
 * steady-state window, and the idle-subtracted figures apart.
 * Ownership: plain value types; joule_serve_run fills a caller-freed joule_serve_trace.
 */
#ifndef JOULE_BENCH_SERVE_H
#define JOULE_BENCH_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/energy.h"
#include "joule/model.h"
#include "joule/serve.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { JOULE_ARRIVE_POISSON = 0, JOULE_ARRIVE_GAMMA = 1, JOULE_ARRIVE_ALL = 2 } joule_arrival_kind;

/* n increasing arrival times in seconds from 0: Poisson at `rate` per second (exponential
 * gaps of mean 1/rate), gamma gaps of shape k and the same mean (coefficient of variation
 * 1/sqrt(k); k = 1 is Poisson: vLLM's "burstiness"), or all at 0. Deterministic in seed. */
int joule_arrivals(joule_arrival_kind kind, double rate, double shape, int n, uint64_t seed, double *t);

/* One request as the client saw it (seconds on the run's clock; NaN where not reached). */
typedef struct {
    double arrival, first, end;
    int prompt_tokens, output_tokens;
    double *token_t; /* [output_tokens] times of its tokens (a URL's events: one per event) */
    bool ok;         /* completed (not refused, not failed) */
} joule_serve_req;

/* The run at one instant: requests in flight (arrived, not ended), tokens generated and
 * joules spent since the start. */
typedef struct {
    double t;
    int in_flight; /* arrived, not ended (queued included) */
    int running;   /* decoding in the server's batch: the scheduler's slots in use in process;
                      in_flight for a URL, whose batch the client cannot see */
    uint64_t tokens;
    double joules;
} joule_serve_point;

typedef struct {
    joule_serve_req *req;  /* [n] */
    int n;
    joule_serve_point *pt; /* [n_pt] in time order */
    int n_pt, cap_pt;
    char method[96];       /* the energy's method ("none" without a meter) */
    double wall_s;         /* first arrival to last end */
    double busy_joules;    /* energy while requests were in flight as the server counts it
                              (its joule_energy_busy_joules_total); NaN: from the timeline */
} joule_serve_trace;

void joule_serve_trace_free(joule_serve_trace *tr);

/* The in-process load: prompts[i] (n_prompt[i] tokens) arrive at arrivals[i] and ask for
 * max_tokens[i] tokens (greedy, no end-of-document stop: exactly that many, as `bench
 * energy` queries). meters may be NULL (no energy). */
typedef struct {
    const joule_model *m;
    joule_sched_opts sched;
    const uint8_t *const *prompts;
    const int *n_prompt, *max_tokens;
    const double *arrivals;
    int n;
    const joule_energy *meters;
} joule_serve_load;
int joule_serve_run(const joule_serve_load *l, joule_serve_trace *tr);
/* A trace of l's requests, none run yet (both runners start from it). */
int joule_serve_trace_alloc(const joule_serve_load *l, joule_serve_trace *tr);

/* The same load against an OpenAI-compatible server (POST url/v1/completions, streamed;
 * "ignore_eos": true so each asks for exactly max_tokens). Energy: the server's
 * joule_energy_joules_total from url/metrics when it has one, else none. One thread per
 * request in flight. */
int joule_serve_run_url(const char *url, const char *model, const joule_serve_load *l, joule_serve_trace *tr);

/* Reads joule_energy_joules_total (and joule_energy_busy_joules_total, NaN when absent)
 * with its method from url/metrics: JOULE_OK, or an error when the server has none. */
int joule_serve_scrape_energy(const char *url, double *joules, double *busy_joules, char *method, size_t method_n);

typedef struct {
    double ttft_s, tpot_s; /* a request meets the SLO when its TTFT and TPOT are within */
} joule_serve_slo;

typedef struct {
    double p50, p90, p99, mean;
} joule_pctl;

typedef struct {
    int requests, completed;
    uint64_t output_tokens, prompt_tokens;
    double wall_s, req_per_s, tok_per_s, goodput_req_per_s, slo_share;
    joule_pctl ttft, tpot, itl, e2e;
    /* energy; NaN without a meter */
    double joules, j_per_request, j_per_token;            /* whole run (MLPerf-style) */
    double ss_t0, ss_t1, ss_joules, ss_tokens;            /* steady-state window */
    double ss_j_per_token, ss_j_per_request;              /* ML.ENERGY-style */
    int ss_in_flight;                                     /* the batch size it is saturated at */
    double idle_w;                                        /* idle power measured before the load */
    double idle_sub_j_per_request, idle_sub_j_per_token;  /* whole run less idle_w x wall */
    double ss_idle_sub_j_per_token;
    double busy_joules, busy_j_per_request; /* energy while >= 1 request was in flight */
    char method[96];
} joule_serve_summary;

/* The figures of a trace (docs/BENCH.md): percentiles nearest-rank over completed
 * requests; steady state = from the first to the last timeline point at the run's largest
 * batch (running), as ML.ENERGY measures while the batch is saturated; energies as the
 * differences of the timeline's cumulative joules. */
void joule_serve_analyze(const joule_serve_trace *tr, const joule_serve_slo *slo, double idle_w,
                         joule_serve_summary *s);

/* Idle power: the meters over `seconds` of sleep, in watts (the method is e->method). */
int joule_serve_idle_power(const joule_energy *e, double seconds, double *watts);

/* Result files of a sweep of n runs (rates[i]: the rate of run i, 0 = all at once):
 * JSON with ML.ENERGY's field names where one exists (docs/BENCH.md maps them), CSV with
 * CodeCarbon's emissions.csv columns (one row per run; unknown values empty), SVG of
 * latency and J/request against rate. Atomic writes. */
int joule_serve_write_json(const char *path, const char *model, const double *rates, const joule_serve_summary *s,
                           int n, const joule_serve_slo *slo);
int joule_serve_write_csv(const char *path, const char *model, const double *rates, const joule_serve_summary *s,
                          int n);
int joule_serve_write_svg(const char *path, const double *rates, const joule_serve_summary *s, int n);

#ifdef __cplusplus
}
#endif
#endif
