/* joule serve — an OpenAI-compatible HTTP server over the continuous-batching scheduler. */
#include <arpa/inet.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "acct_cli.h"
#include "cli.h"
#include "retro_cli.h"
#include "joule/ops.h"
#include "serve.h"
#include "joule/checkpoint.h"
#include "joule/retro.h"
#include "joule/retro_db.h"

static const char USAGE[] =
    "Usage: joule serve --model PATH [--db DIR] [--port P] [--host 127.0.0.1] [options]\n"
    "\n"
    "Serves the model over HTTP, OpenAI-compatible where it makes sense, until SIGINT or\n"
    "SIGTERM. Requests are decoded together by continuous batching: a request joins the\n"
    "running batch at the next step, prompts are prefilled under a per-step token budget,\n"
    "and a finished request leaves at once (docs/BENCH.md, \"Serving\").\n"
    "\n"
    "  POST /v1/completions  prompt, max_tokens (16), temperature (1), top_p (1), seed,\n"
    "                        stop (up to 4 strings), stream (server-sent events); byte 0\n"
    "                        (end of document) stops a completion unless ignore_eos is true\n"
    "  GET  /v1/models       the one model served\n"
    "  GET  /health          {\"status\":\"ok\"}\n"
    "  GET  /metrics         Prometheus text: requests by code, tokens, queue depth, batch\n"
    "                        size, latency histograms, energy joules with their method\n"
    "Bad requests get a 4xx JSON error naming the field; a full queue gets 429; connections\n"
    "over --max-connections are closed unanswered (counted in /metrics).\n"
    "\n"
    "Options:\n"
    "  --model PATH          checkpoint (.safetensors) to serve (required)\n"
    "  --db DIR              RETRO models: retrieve from DIR live, each time a chunk completes\n"
    "  --allow-db-mismatch   accept a database other than the model's training one\n"
    "  --host ADDR           IPv4 address to listen on (default 127.0.0.1: this machine only)\n"
    "  --port P              TCP port; 0 picks a free one (default 8000). The address is\n"
    "                        printed as \"listening on http://ADDR:PORT\"\n"
    "  --name NAME           model id in responses (default: the checkpoint's file name)\n"
    "  --max-batch N         sequences decoded together (default 16)\n"
    "  --max-queue N         requests waiting for a slot; more get 429 (default 64)\n"
    "  --step-tokens N       token budget of one step, decode rows + prefill (default 512)\n"
    "  --max-tokens N        largest max_tokens a request may ask (default 4096)\n"
    "  --max-body BYTES      largest request body; more gets 413 (default 1048576)\n"
    "  --max-connections N   connections served at once (default 256)\n"
    "  --stream-interval N   a streamed event per N new tokens (bytes), the rest with the\n"
    "                        last; each event costs the server a thread wake-up and a send\n"
    "                        (default 1: every token, as OpenAI's API)\n"
    "  --hardware NAME       CPU profile for modeled energy (default $JOULE_HARDWARE, else\n"
    "                        the profile matching this CPU, else a generic per-core TDP)\n"
    "  --threads N           threads for BLAS and joule's loops; 0 = all cores (default 0)\n"
    "  -h, --help            show this help and exit\n";

enum { OPT_MODEL = 256, OPT_HOST, OPT_PORT, OPT_NAME, OPT_MAX_BATCH, OPT_MAX_QUEUE, OPT_STEP_TOKENS, OPT_MAX_TOKENS,
       OPT_MAX_BODY, OPT_MAX_CONNS, OPT_HARDWARE, OPT_THREADS, OPT_STREAM_INTERVAL };

static const char *CMD = "serve";

typedef struct {
    const char *model_path, *host, *name, *hardware;
    int port, threads, max_body;
    srv_opts o;
    retro_db_cli rdb;
} serve_args;

static int parse_option(void *args, int c, char **argv) {
    serve_args *a = args;
    switch (c) {
    case OPT_MODEL: a->model_path = optarg; return 0;
    case OPT_HOST: a->host = optarg; return 0;
    case OPT_NAME: a->name = optarg; return 0;
    case OPT_HARDWARE: a->hardware = optarg; return 0;
    case OPT_PORT: return cli_int_option(CMD, "--port", optarg, 0, 65535, &a->port);
    case OPT_MAX_BATCH: return cli_int_option(CMD, "--max-batch", optarg, 1, 4096, &a->o.sched.max_batch);
    case OPT_MAX_QUEUE: return cli_int_option(CMD, "--max-queue", optarg, 0, 1 << 20, &a->o.sched.max_queue);
    case OPT_STEP_TOKENS: return cli_int_option(CMD, "--step-tokens", optarg, 1, 1 << 24, &a->o.sched.step_tokens);
    case OPT_MAX_TOKENS: return cli_int_option(CMD, "--max-tokens", optarg, 1, 1 << 24, &a->o.max_tokens);
    case OPT_MAX_BODY: return cli_int_option(CMD, "--max-body", optarg, 64, 1 << 30, &a->max_body);
    case OPT_MAX_CONNS: return cli_int_option(CMD, "--max-connections", optarg, 1, 4096, &a->o.max_conns);
    case OPT_THREADS: return cli_int_option(CMD, "--threads", optarg, 0, 4096, &a->threads);
    case OPT_STREAM_INTERVAL:
        return cli_int_option(CMD, "--stream-interval", optarg, 1, 1 << 20, &a->o.stream_interval);
    }
    const int r = retro_db_cli_option(&a->rdb, CMD, c, optarg);
    return r < 0 ? cli_bad_option(CMD, c, argv) : r;
}

static int parse_args(int argc, char **argv, serve_args *a) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"name", required_argument, NULL, OPT_NAME},
        {"max-batch", required_argument, NULL, OPT_MAX_BATCH},
        {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {"step-tokens", required_argument, NULL, OPT_STEP_TOKENS},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"stream-interval", required_argument, NULL, OPT_STREAM_INTERVAL},
        {"max-connections", required_argument, NULL, OPT_MAX_CONNS},
        {"hardware", required_argument, NULL, OPT_HARDWARE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"help", no_argument, NULL, 'h'},
        RETRO_DB_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    CLI_CHECK(cli_parse_options(argc, argv, CMD, ":h", LONG, USAGE, parse_option, a));
    if (!a->model_path) return cli_usage_error(CMD, "--model PATH is required");
    struct in_addr ip;
    if (inet_pton(AF_INET, a->host, &ip) != 1)
        return cli_usage_error(CMD, "--host: '%s' is not an IPv4 address", cli_text(a->host));
    a->o.max_body = (size_t)a->max_body;
    return cli_check_input(CMD, a->model_path, NULL);
}

/* Serves until SIGINT or SIGTERM (blocked in every thread, taken here by sigwait). */
static int run(const serve_args *a, const joule_model *m, joule_retro_db *db, const char *id) {
    joule_retro_feed feed = {.db = db};
    joule_sched_feeder f;
    joule_retro_feeder(&f, &feed);
    srv_opts o = a->o;
    o.sched.feeder = joule_config_has_cca(&m->cfg) ? &f : NULL;
    joule_energy meters;
    char profile[64];
    const bool metered = cli_energy_open(&meters, a->hardware ? a->hardware : getenv("JOULE_HARDWARE"), 0, NULL,
                                         profile, sizeof profile) == JOULE_OK;
    server s;
    struct MHD_Daemon *d = NULL;
    int port = a->port, rc = srv_init(&s, m, id, &o, metered ? &meters : NULL);
    if (!rc) rc = srv_http_start(&s, a->host, a->port, &d, &port);
    if (!rc) {
        printf("joule serve: listening on http://%s:%d (model %s, %s, ctx %d; energy %s)\n", a->host, port,
               cli_text(id), m->cfg.arch, m->cfg.ctx, metered ? meters.method : "not measured");
        fflush(stdout);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        int sig;
        sigwait(&set, &sig);
        fprintf(stderr, "joule serve: stopping (signal %d)\n", sig);
    }
    srv_stop(&s);
    if (d) MHD_stop_daemon(d);
    srv_free(&s);
    if (metered) joule_energy_close(&meters);
    return rc ? cli_fail(CMD, rc) : 0;
}

int cmd_serve(int argc, char **argv) {
    serve_args a = {.host = "127.0.0.1", .port = 8000, .max_body = 1 << 20,
                    .o = {.max_tokens = 4096, .max_conns = 256, .stream_interval = 1,
                          .sched = {.max_batch = 16, .max_queue = 64, .step_tokens = 512}}};
    int rc = parse_args(argc, argv, &a);
    joule_model *m = NULL;
    joule_retro_db *db = NULL;
    if (!rc && (rc = joule_checkpoint_load(&m, a.model_path, NULL))) rc = cli_fail(CMD, rc);
    if (!rc && a.rdb.dir) rc = retro_cli_open_db(CMD, m, a.rdb.dir, a.rdb.allow_mismatch, &db);
    if (!rc) {
        /* before any thread starts, so every thread inherits the mask */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);
        cli_setup_threads(a.threads);
        a.o.threads = joule_get_threads(); /* for the loop thread too (serve_state.c) */
        const char *base = strrchr(a.model_path, '/');
        rc = run(&a, m, db, a.name ? a.name : base ? base + 1 : a.model_path);
    }
    joule_db_close(db);
    joule_model_free(m);
    return rc < 0 ? 0 : rc;
}
