/* `joule bench retro`: parses and prints; the measurement (RETRO's training steps and
 * generation with retrieval against without) is joule_bench_retro (bench/bench_retro.c). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "joule/bench.h"
#include "joule/checkpoint.h"
#include "joule/ops.h"
#include "retro_cli.h"

static const char *CMD = "bench retro";

static const char USAGE[] =
    "Usage: joule bench retro --model RETRO.safetensors --db DIR [options]\n"
    "\n"
    "Times training steps (forward + backward, random tokens and neighbours) with retrieval\n"
    "against the same model with retrieval off (the base model's work), and greedy generation\n"
    "with live retrieval from DIR against generation without; runs alternate and medians are\n"
    "reported, with the share of generation time spent embedding, searching and fetching.\n"
    "\n"
    "Options:\n"
    "  --model PATH    a RETRO checkpoint (required)\n"
    "  --db DIR        its database (required)\n"
    "  --batch N       sequences per training step (8)\n"
    "  --steps N       timed steps and generations of each kind (5)\n"
    "  --tokens N      tokens generated per generation (256)\n"
    "  --threads N     OpenMP/BLAS threads (0 = all cores)\n";

typedef struct {
    const char *model, *db;
    joule_bench_retro_opts run;
    int threads;
} retro_bench_opts;

/* 0 to run, -1 after --help, else the exit code. */
static int parse(int argc, char **argv, retro_bench_opts *o) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, 'm'}, {"db", required_argument, NULL, 'd'},
        {"batch", required_argument, NULL, 'b'}, {"steps", required_argument, NULL, 's'},
        {"tokens", required_argument, NULL, 'n'}, {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    int c;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", LONG, NULL)) != -1) {
        int *dst = NULL;
        switch (c) {
        case 'h': fputs(USAGE, stdout); return -1;
        case 'm': o->model = optarg; continue;
        case 'd': o->db = optarg; continue;
        case 'b': dst = &o->run.batch; break;
        case 's': dst = &o->run.steps; break;
        case 'n': dst = &o->run.tokens; break;
        case 't': dst = &o->threads; break;
        default: return cli_bad_option(CMD, c, argv);
        }
        if (!cli_parse_int(optarg, dst == &o->threads ? 0 : 1, 1 << 20, dst))
            return cli_usage_error(CMD, "'%s' is not a valid count", optarg);
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!o->model || !o->db) return cli_usage_error(CMD, "--model and --db are required");
    return cli_check_input(CMD, o->model, NULL);
}

static void report(const retro_bench_opts *o, const joule_bench_retro_result *r) {
    const double mon = r->train_on_s, moff = r->train_off_s, gon = r->gen_on_s, goff = r->gen_off_s;
    const int n_gen = r->gen_tokens;
    printf("train step (batch %d x %d): retrieval %.1f ms (%.3g FLOPs), off %.1f ms (%.3g FLOPs): time x%.2f, FLOPs x%.2f\n",
           o->run.batch, r->seq, 1e3 * mon, (double)r->flops_on, 1e3 * moff, (double)r->flops_off, mon / moff,
           (double)r->flops_on / (double)r->flops_off);
    printf("generate %d tokens: live retrieval %.1f tok/s, off %.1f tok/s: time x%.2f; retrieval (embed+search+fetch) "
           "%.1f%% of generation time (median)\n",
           n_gen, n_gen / gon, n_gen / goff, gon / goff, 100.0 * r->retrieval_share);
}

int cmd_bench_retro(int argc, char **argv) {
    retro_bench_opts o = {.run = {.batch = 8, .steps = 5, .tokens = 256}};
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    joule_model *m = NULL;
    int st = joule_checkpoint_load(&m, o.model, NULL);
    if (st) return cli_fail(CMD, st);
    joule_retro_db *db = NULL;
    if ((rc = retro_cli_open_db(CMD, m, o.db, true, &db))) {
        joule_model_free(m);
        return rc;
    }
    cli_setup_threads(o.threads);
    const joule_config *cfg = &m->cfg;
    printf("model %s: ctx %d, chunk %d, k %d; database %s (%" PRIu64 " chunks, %s); %d threads\n", o.model, cfg->ctx,
           cfg->retro.chunk, cfg->retro.k, o.db, joule_db_size(db), joule_db_factory(db), joule_get_threads());
    joule_bench_retro_result r;
    if ((st = joule_bench_retro(m, db, &o.run, &r))) {
        rc = cli_fail(CMD, st);
    } else {
        report(&o, &r);
        retro_cli_retrieval_cost(db, cfg->retro.chunk, NULL);
    }
    joule_db_close(db);
    joule_model_free(m);
    return rc;
}
