/* joule bench serve — open-loop load on the continuous-batching scheduler in this process,
 * or on an OpenAI-compatible server at a URL: a rate sweep, latency, goodput and energy. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "retro_cli.h"
#include "joule/bench_serve.h"
#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "joule/retro_db.h"

static const char USAGE[] =
    "Usage: joule bench serve (--model PATH | --url URL) [options]\n"
    "\n"
    "Open-loop load: N requests arrive at times drawn in advance, whatever the server's\n"
    "progress, at each rate of --rate (Poisson, or gamma with --gamma), or all at once\n"
    "('inf', ML.ENERGY's mode). Prompts are P tokens drawn from the validation split; each\n"
    "request asks for exactly G tokens (greedy, no end-of-document stop). With --model the\n"
    "target is the continuous-batching scheduler in this process (as `joule serve` runs it);\n"
    "with --url, any OpenAI-compatible server (POST URL/v1/completions, streamed).\n"
    "Per run: TTFT, TPOT, inter-token latency p50/p90/p99, throughput, goodput under the SLO,\n"
    "energy per request and per output token over the whole run and over the steady-state\n"
    "window, and the idle power measured before the load with the idle-subtracted figures\n"
    "apart (docs/BENCH.md, \"joule bench serve\", defines each).\n"
    "\n"
    "Options:\n"
    "  --model PATH        checkpoint to load in this process\n"
    "  --url URL           load a server instead (http://HOST:PORT); energy from its /metrics\n"
    "  --name NAME         model id sent to the server (default: the server's first model)\n"
    "  --db DIR            RETRO models in process: live retrieval from DIR\n"
    "  --allow-db-mismatch accept a database other than the model's training one\n"
    "  --data DIR          prepared corpus; prompts from DIR/val.bin (data/default)\n"
    "  --requests N        requests per run (64)\n"
    "  --prompt P          prompt tokens (64)\n"
    "  --generate G        tokens asked per request (32)\n"
    "  --rate LIST         request rates per second, comma-separated; inf = all at once (inf)\n"
    "  --gamma K           gamma arrivals of shape K (burstiness; 1 = Poisson) (Poisson)\n"
    "  --max-batch LIST    in process: scheduler slots, comma-separated; each value runs the\n"
    "                      whole rate list (16)\n"
    "  --step-tokens N     in process: token budget of a scheduler step (512)\n"
    "  --slo-ttft MS       goodput counts requests with TTFT <= MS ... (1000)\n"
    "  --slo-tpot MS       ... and TPOT <= MS milliseconds (100)\n"
    "  --idle S            seconds of idle measured before the load; 0 = none (2)\n"
    "  --seed N            arrivals and prompt draws (1)\n"
    "  --out DIR           DIR/serve.json, serve.csv, serve.svg (results/serve)\n"
    "  --hardware NAME     CPU profile for modeled energy (default $JOULE_HARDWARE, else the\n"
    "                      profile matching this CPU, else a generic per-core TDP)\n"
    "  --threads N         threads for BLAS and joule's loops; 0 = all cores (0)\n"
    "  -h, --help          show this help and exit\n";

enum { OPT_MODEL = 256, OPT_URL, OPT_NAME, OPT_DATA, OPT_REQUESTS, OPT_PROMPT, OPT_GENERATE, OPT_RATE, OPT_GAMMA,
       OPT_MAX_BATCH, OPT_STEP_TOKENS, OPT_SLO_TTFT, OPT_SLO_TPOT, OPT_IDLE, OPT_SEED, OPT_OUT, OPT_HARDWARE,
       OPT_THREADS };

static const char *CMD = "bench serve";
#define MAX_RUNS 32

typedef struct {
    const char *model_path, *url, *name, *data, *out, *hardware;
    int requests, prompt, generate, step_tokens, threads;
    double rates[MAX_RUNS], gamma, slo_ttft_ms, slo_tpot_ms, idle_s;
    int n_rates, batches[MAX_RUNS], n_batches;
    uint64_t seed;
    retro_db_cli rdb;
} bs_args;

/* "a,b,c" of numbers (inf allowed for rates) into v; false on a bad item. */
static bool parse_list(const char *s, double *v, int *n, bool allow_inf) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        double x;
        if (*n == MAX_RUNS) return false;
        if (allow_inf && !strcmp(t, "inf")) x = INFINITY;
        else if (!cli_parse_double(t, &x) || !(x > 0 && isfinite(x))) return false;
        v[(*n)++] = x;
    }
    return *n > 0;
}

static int parse_option(void *args, int c, char **argv) {
    bs_args *a = args;
    double v[MAX_RUNS];
    switch (c) {
    case OPT_MODEL: a->model_path = optarg; return 0;
    case OPT_URL: a->url = optarg; return 0;
    case OPT_NAME: a->name = optarg; return 0;
    case OPT_DATA: a->data = optarg; return 0;
    case OPT_OUT: a->out = optarg; return 0;
    case OPT_HARDWARE: a->hardware = optarg; return 0;
    case OPT_REQUESTS: return cli_int_option(CMD, "--requests", optarg, 1, 1 << 20, &a->requests);
    case OPT_PROMPT: return cli_int_option(CMD, "--prompt", optarg, 1, 1 << 20, &a->prompt);
    case OPT_GENERATE: return cli_int_option(CMD, "--generate", optarg, 1, 1 << 20, &a->generate);
    case OPT_STEP_TOKENS: return cli_int_option(CMD, "--step-tokens", optarg, 1, 1 << 24, &a->step_tokens);
    case OPT_THREADS: return cli_int_option(CMD, "--threads", optarg, 0, 4096, &a->threads);
    case OPT_SEED: return cli_u64_option(CMD, "--seed", optarg, &a->seed);
    case OPT_GAMMA: return cli_number_option(CMD, "--gamma", optarg, true, &a->gamma);
    case OPT_SLO_TTFT: return cli_number_option(CMD, "--slo-ttft", optarg, true, &a->slo_ttft_ms);
    case OPT_SLO_TPOT: return cli_number_option(CMD, "--slo-tpot", optarg, true, &a->slo_tpot_ms);
    case OPT_IDLE: return cli_range_option(CMD, "--idle", optarg, 0, 3600, &a->idle_s);
    case OPT_RATE:
        if (!parse_list(optarg, a->rates, &a->n_rates, true))
            return cli_usage_error(CMD, "--rate: '%s' is not a list of rates > 0 (or inf), at most %d", optarg, MAX_RUNS);
        return 0;
    case OPT_MAX_BATCH:
        if (!parse_list(optarg, v, &a->n_batches, false))
            return cli_usage_error(CMD, "--max-batch: '%s' is not a list of integers >= 1", optarg);
        for (int i = 0; i < a->n_batches; i++) {
            if (v[i] != floor(v[i]) || v[i] > 4096) return cli_usage_error(CMD, "--max-batch: '%s' is not a list of integers in [1, 4096]", optarg);
            a->batches[i] = (int)v[i];
        }
        return 0;
    }
    const int r = retro_db_cli_option(&a->rdb, CMD, c, optarg);
    return r < 0 ? cli_bad_option(CMD, c, argv) : r;
}

static int parse_args(int argc, char **argv, bs_args *a) {
    static const struct option LONG[] = {
        {"model", 1, 0, OPT_MODEL},         {"url", 1, 0, OPT_URL},           {"name", 1, 0, OPT_NAME},
        {"data", 1, 0, OPT_DATA},           {"requests", 1, 0, OPT_REQUESTS}, {"prompt", 1, 0, OPT_PROMPT},
        {"generate", 1, 0, OPT_GENERATE},   {"rate", 1, 0, OPT_RATE},         {"gamma", 1, 0, OPT_GAMMA},
        {"max-batch", 1, 0, OPT_MAX_BATCH}, {"step-tokens", 1, 0, OPT_STEP_TOKENS},
        {"slo-ttft", 1, 0, OPT_SLO_TTFT},   {"slo-tpot", 1, 0, OPT_SLO_TPOT}, {"idle", 1, 0, OPT_IDLE},
        {"seed", 1, 0, OPT_SEED},           {"out", 1, 0, OPT_OUT},           {"hardware", 1, 0, OPT_HARDWARE},
        {"threads", 1, 0, OPT_THREADS},     {"help", 0, 0, 'h'},              RETRO_DB_LONG_OPTIONS,
        {0, 0, 0, 0}};
    CLI_CHECK(cli_parse_options(argc, argv, CMD, ":h", LONG, USAGE, parse_option, a));
    if (!a->model_path == !a->url) return cli_usage_error(CMD, "give one of --model PATH or --url URL");
    if (a->url && strncmp(a->url, "http://", 7))
        return cli_usage_error(CMD, "--url: '%s' does not start with http://", cli_text(a->url));
    if (a->model_path) CLI_CHECK(cli_check_input(CMD, a->model_path, NULL));
    char val[4096];
    snprintf(val, sizeof val, "%s/val.bin", a->data);
    return cli_check_input(CMD, val, "prepare a corpus with 'joule data prepare' or name one with --data");
}

/* P tokens at a random place of the validation split, per request (seed, i). */
static int draw_prompts(const bs_args *a, uint8_t **text, int *np, int *mt) {
    char path[4096];
    snprintf(path, sizeof path, "%s/val.bin", a->data);
    joule_tokens t;
    int rc = joule_tokens_open(&t, path);
    if (rc) return rc;
    if (t.n_tokens < (uint64_t)a->prompt) {
        joule_tokens_close(&t);
        return joule_fail(JOULE_ERR_FORMAT, "%s: %llu tokens, fewer than the prompt's %d", path,
                          (unsigned long long)t.n_tokens, a->prompt);
    }
    for (int i = 0; i < a->requests; i++) {
        joule_rng r;
        joule_rng_seed(&r, joule_mix64(a->seed, (uint64_t)i));
        const uint64_t at = joule_rng_below(&r, t.n_tokens - (uint64_t)a->prompt + 1);
        for (int k = 0; k < a->prompt; k++) text[i][k] = (uint8_t)t.tok[at + (uint64_t)k];
        np[i] = a->prompt;
        mt[i] = a->generate;
    }
    joule_tokens_close(&t);
    return JOULE_OK;
}

static void print_run(double rate, int batch, const joule_serve_summary *s) {
    char r[32];
    snprintf(r, sizeof r, isinf(rate) ? "inf" : "%g", rate);
    printf("rate %-5s batch %-3d  %4d/%-4d ok  %8.1f tok/s  %6.2f req/s  goodput %6.2f req/s  TTFT p50/p90/p99 "
           "%.1f/%.1f/%.1f ms  TPOT p50/p90/p99 %.2f/%.2f/%.2f ms  ITL p99 %.2f ms\n",
           r, batch, s->completed, s->requests, s->tok_per_s, s->req_per_s,
           s->goodput_req_per_s, 1e3 * s->ttft.p50, 1e3 * s->ttft.p90, 1e3 * s->ttft.p99, 1e3 * s->tpot.p50,
           1e3 * s->tpot.p90, 1e3 * s->tpot.p99, 1e3 * s->itl.p99);
    printf("    energy [%s]: whole run %.4g J/request %.4g J/token; steady state (%d in flight, %.2f s) %.4g "
           "J/request %.4g J/token\n",
           s->method, s->j_per_request, s->j_per_token, s->ss_in_flight, s->ss_t1 - s->ss_t0, s->ss_j_per_request,
           s->ss_j_per_token);
    printf("    while busy (>= 1 request in flight) %.4g J/request\n", s->busy_j_per_request);
    printf("    idle %.3g W (measured before the load); idle-subtracted, apart: %.4g J/request %.4g J/token\n",
           s->idle_w, s->idle_sub_j_per_request, s->idle_sub_j_per_token);
    fflush(stdout);
}

typedef struct {
    joule_model *m;
    joule_retro_db *db;
    joule_energy meters;
    bool metered;
    double idle_w;
    uint8_t **text;
    const uint8_t **prompts;
    int *np, *mt;
    double *arrivals;
} bs_state;

static int one_run(const bs_args *a, bs_state *st, double rate, int batch, joule_serve_summary *out) {
    const joule_arrival_kind kind = isinf(rate) ? JOULE_ARRIVE_ALL : a->gamma > 0 ? JOULE_ARRIVE_GAMMA : JOULE_ARRIVE_POISSON;
    int rc = joule_arrivals(kind, rate, a->gamma, a->requests, a->seed, st->arrivals);
    if (rc) return rc;
    joule_retro_feed feed = {.db = st->db};
    joule_sched_feeder f;
    joule_retro_feeder(&f, &feed);
    joule_serve_load l = {.m = st->m, .sched = {.max_batch = batch, .step_tokens = a->step_tokens},
                          .prompts = st->prompts, .n_prompt = st->np, .max_tokens = st->mt, .arrivals = st->arrivals,
                          .n = a->requests, .meters = st->metered ? &st->meters : NULL};
    if (st->m && joule_config_has_cca(&st->m->cfg)) l.sched.feeder = &f;
    joule_serve_trace tr;
    rc = a->url ? joule_serve_run_url(a->url, a->name, &l, &tr) : joule_serve_run(&l, &tr);
    if (rc) return rc;
    const joule_serve_slo slo = {.ttft_s = a->slo_ttft_ms / 1e3, .tpot_s = a->slo_tpot_ms / 1e3};
    joule_serve_analyze(&tr, &slo, st->idle_w, out);
    joule_serve_trace_free(&tr);
    print_run(rate, a->url ? 0 : batch, out);
    return JOULE_OK;
}

/* The model (and database), the meters, idle power, the prompts. */
static int setup(const bs_args *a, bs_state *st) {
    int rc = JOULE_OK;
    const size_t n = (size_t)a->requests;
    st->text = calloc(n, sizeof *st->text);
    st->prompts = calloc(n, sizeof *st->prompts);
    st->np = calloc(n, sizeof *st->np);
    st->mt = calloc(n, sizeof *st->mt);
    st->arrivals = calloc(n, sizeof *st->arrivals);
    if (!st->text || !st->prompts || !st->np || !st->mt || !st->arrivals) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!(st->text[i] = malloc((size_t)a->prompt))) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        st->prompts[i] = st->text[i];
    }
    if ((rc = draw_prompts(a, st->text, st->np, st->mt))) return rc;
    if (a->model_path) {
        if ((rc = joule_checkpoint_load(&st->m, a->model_path, NULL))) return rc;
        if (a->prompt > st->m->cfg.ctx)
            return joule_fail(JOULE_ERR_ARG, "--prompt %d: longer than the model's context %d", a->prompt, st->m->cfg.ctx);
        char profile[64];
        st->metered = cli_energy_open(&st->meters, a->hardware ? a->hardware : getenv("JOULE_HARDWARE"), 0, NULL,
                                      profile, sizeof profile) == JOULE_OK;
        if (st->metered && a->idle_s > 0 && (rc = joule_serve_idle_power(&st->meters, a->idle_s, &st->idle_w))) return rc;
    }
    return rc;
}

static void teardown(const bs_args *a, bs_state *st) {
    for (int i = 0; st->text && i < a->requests; i++) free(st->text[i]);
    free(st->text);
    free(st->prompts);
    free(st->np);
    free(st->mt);
    free(st->arrivals);
    if (st->metered) joule_energy_close(&st->meters);
    joule_db_close(st->db);
    joule_model_free(st->m);
}

static int write_outputs(const bs_args *a, const char *model, const double *rates, const joule_serve_summary *s, int n) {
    const joule_serve_slo slo = {.ttft_s = a->slo_ttft_ms / 1e3, .tpot_s = a->slo_tpot_ms / 1e3};
    char path[4096];
    const char *names[3] = {"serve.json", "serve.csv", "serve.svg"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", a->out, names[i]);
        if (cli_make_parent_dirs(CMD, path)) return EXIT_RUNTIME;
        int rc = i == 0 ? joule_serve_write_json(path, model, rates, s, n, &slo)
                 : i == 1 ? joule_serve_write_csv(path, model, rates, s, n)
                          : joule_serve_write_svg(path, rates, s, n);
        if (rc) return cli_fail(CMD, rc);
        printf("wrote %s\n", path);
    }
    return 0;
}

int cmd_bench_serve(int argc, char **argv) {
    bs_args a = {.data = "data/default", .out = "results/serve", .requests = 64, .prompt = 64, .generate = 32,
                 .step_tokens = 512, .rates = {INFINITY}, .n_rates = 1, .batches = {16}, .n_batches = 1,
                 .slo_ttft_ms = 1000, .slo_tpot_ms = 100, .idle_s = 2, .seed = 1};
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    cli_setup_threads(a.threads);
    bs_state st = {0};
    if ((rc = setup(&a, &st))) {
        teardown(&a, &st);
        return cli_fail(CMD, rc);
    }
    if (a.model_path && a.rdb.dir && (rc = retro_cli_open_db(CMD, st.m, a.rdb.dir, a.rdb.allow_mismatch, &st.db))) {
        teardown(&a, &st);
        return rc;
    }
    printf("joule bench serve: %s, %d requests of %d + %d tokens, energy %s, idle %.3g W, BLAS kernels %s, threads %d\n",
           a.url ? a.url : a.model_path, a.requests, a.prompt, a.generate,
           a.url ? "from the server's /metrics" : st.metered ? st.meters.method : "not measured", st.idle_w,
           joule_blas_corename(), joule_get_threads());
    joule_serve_summary sum[MAX_RUNS];
    double rates[MAX_RUNS];
    int n = 0;
    const int nb = a.url ? 1 : a.n_batches;
    for (int b = 0; b < nb && !rc; b++)
        for (int r = 0; r < a.n_rates && !rc && n < MAX_RUNS; r++, n++) {
            rates[n] = isinf(a.rates[r]) ? 0 : a.rates[r];
            rc = one_run(&a, &st, a.rates[r], a.batches[b], &sum[n]);
        }
    const char *base = a.model_path ? strrchr(a.model_path, '/') : NULL;
    const char *model = a.url ? (a.name ? a.name : a.url) : base ? base + 1 : a.model_path;
    int wrc = rc ? 0 : write_outputs(&a, model, rates, sum, n);
    teardown(&a, &st);
    return rc ? cli_fail(CMD, rc) : wrc;
}
