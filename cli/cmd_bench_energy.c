/* `joule bench energy`: energy per query of one or more checkpoints (bench/energy_query.c),
 * one model after another in this process, then JSON + CSV + SVG and the tables. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/bench_energy.h"
#include "joule/checkpoint.h"
#include "joule/ops.h"
#include "joule/quant.h"

#define MAX_MODELS 32

static const char USAGE[] =
    "usage: joule bench energy --model FILE [--model FILE ...] [options]\n"
    "\n"
    "Energy per query: N queries with prompts drawn from the validation split (P tokens\n"
    "each), G greedily generated tokens per query (one batched prefill, then G-1 KV-cache\n"
    "steps), after W warm-up queries that are excluded from the steady-state measurement\n"
    "window. Per model: latency p50/p95/p99 per query, to first token and per token,\n"
    "tokens/s, FLOPs per query (analytic from the accountant and counted), energy per query\n"
    "and per generated token with its method (modeled:tdp when the machine has no meter),\n"
    "Wh and gCO2e per 1,000 queries, peak memory, BLAS kernels and threads; for RETRO models\n"
    "the share of time and FLOPs that retrieval takes (docs/BENCH.md).\n"
    "\n"
    "options:\n"
    "  --model FILE        a checkpoint (.safetensors); repeat for several models\n"
    "  --data DIR          prepared corpus; prompts come from DIR/val.bin (data/default)\n"
    "  --db DIR            retrieval database of the RETRO models (searched live, one search\n"
    "                      per completed chunk; other models ignore it)\n"
    "  --queries N         measured queries per model (32)\n"
    "  --prompt P          prompt tokens (64)\n"
    "  --generate G        generated tokens per query (32); P + G - 1 <= the model's ctx\n"
    "  --batch N           queries decoded together, one batched step per token: each weight\n"
    "                      matrix read once for the N sequences (RETRO: one by one) (1)\n"
    "  --warmup N          warm-up queries, not measured (4)\n"
    "  --seed N            prompt draws (1): the same seed draws the same prompts\n"
    "  --out DIR           writes DIR/energy.json, energy.csv, energy.svg (results/energy)\n"
    "  --compare           print the models side by side\n"
    "  --pue X             facility overhead for Wh and gCO2e, >= 1 (1.0)\n"
    "  --grid G            grid intensity, gCO2e per kWh (475)\n"
    "  --hardware NAME     CPU profile for modeled:tdp (default $JOULE_HARDWARE, else the profile\n"
    "                      matching this CPU, else a generic per-core TDP: modeled:tdp-generic)\n"
    "  --meter M           auto, rapl, perf, nvml, constant, tdp (auto)\n"
    "  --power-watts W     the constant meter: W watts for the wall time\n"
    "  --threads N         OpenMP/BLAS threads (all cores)\n"
    "  --quality-windows N after the energy runs, bits-per-byte of each model over the first N\n"
    "                      windows (ctx tokens) of DIR/val.bin and the mean KL divergence of its\n"
    "                      next-byte distributions from the first model's (give the fp32 model\n"
    "                      first, then its 'joule quantize' copies); 0 = skip (0)\n"
    "  -h, --help          this help\n"
    "Exit status: 0 ok, 2 bad usage or input (missing model or corpus, prompt too long), 1 a\n"
    "model failed at run time (the others are still reported).\n";

typedef struct {
    const char *models[MAX_MODELS];
    int n_models;
    const char *data, *out, *hardware, *meter;
    double power_watts;
    int threads, quality_windows;
    bool compare;
    joule_bench_energy_opts run;
} energy_cli_opts;

/* The bar starts with the first finished query, so that a refused run prints only its error. */
typedef struct {
    cli_progress bar;
    bool started;
    const char *label;
} progress_state;

static void progress_cb(void *ctx, int done, int total) {
    progress_state *p = ctx;
    if (!p->started) cli_progress_start(&p->bar, p->label, "query", total);
    p->started = true;
    cli_progress_update(&p->bar, done, NULL);
}

static int parse(int argc, char **argv, energy_cli_opts *o) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},  {"data", 1, 0, 'D'},     {"queries", 1, 0, 'q'}, {"prompt", 1, 0, 'p'},
        {"generate", 1, 0, 'g'}, {"batch", 1, 0, 'b'},  {"warmup", 1, 0, 'w'},  {"seed", 1, 0, 's'},
        {"out", 1, 0, 'o'},    {"compare", 0, 0, 'c'},  {"pue", 1, 0, 'P'},     {"grid", 1, 0, 'G'},
        {"hardware", 1, 0, 'H'}, {"meter", 1, 0, 'M'},  {"power-watts", 1, 0, 'W'}, {"threads", 1, 0, 't'},
        {"db", 1, 0, 'd'},     {"help", 0, 0, 'h'},   {"quality-windows", 1, 0, 'Q'}, {0, 0, 0, 0}};
    const char *cmd = "bench energy";
    opterr = 0;
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        int *dst = NULL, lo = 1;
        switch (ch) {
        case 'm':
            if (o->n_models == MAX_MODELS) return cli_usage_error(cmd, "at most %d models", MAX_MODELS);
            o->models[o->n_models++] = optarg;
            continue;
        case 'D': o->data = optarg; continue;
        case 'd': o->run.db_dir = optarg; continue;
        case 'o': o->out = optarg; continue;
        case 'c': o->compare = true; continue;
        case 'H': o->hardware = optarg; continue;
        case 'M': o->meter = optarg; continue;
        case 'h': fputs(USAGE, stdout); return -1;
        case 'q': dst = &o->run.queries; break;
        case 'p': dst = &o->run.prompt; break;
        case 'g': dst = &o->run.generate; break;
        case 'b': dst = &o->run.batch; break;
        case 'w': dst = &o->run.warmup; lo = 0; break;
        case 't': dst = &o->threads; lo = 0; break;
        case 'Q': dst = &o->quality_windows; lo = 0; break;
        case 's':
            if (!cli_parse_u64(optarg, &o->run.seed))
                return cli_usage_error(cmd, "invalid value '%s' for --seed", optarg);
            continue;
        case 'P':
            if (!cli_parse_double(optarg, &o->run.pue) || !(o->run.pue >= 1))
                return cli_usage_error(cmd, "--pue: '%s' is not a number >= 1", optarg);
            continue;
        case 'G':
            if (!cli_parse_double(optarg, &o->run.grid_g_per_kwh) || !(o->run.grid_g_per_kwh >= 0))
                return cli_usage_error(cmd, "--grid: '%s' is not a number >= 0", optarg);
            continue;
        case 'W':
            if (!cli_parse_double(optarg, &o->power_watts) || !(o->power_watts > 0))
                return cli_usage_error(cmd, "--power-watts: '%s' is not a number > 0", optarg);
            continue;
        default: return cli_bad_option(cmd, ch, argv);
        }
        if (!cli_parse_int(optarg, lo, 1 << 20, dst)) {
            const char *name = "?";
            for (const struct option *op = opts; op->name; op++)
                if (op->val == ch) name = op->name;
            return cli_usage_error(cmd, "invalid value '%s' for --%s", optarg, name);
        }
    }
    if (optind < argc) return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (o->n_models == 0) return cli_usage_error(cmd, "give at least one --model FILE");
    for (int i = 0; i < o->n_models; i++) {
        int rc = cli_check_input(cmd, o->models[i], NULL);
        if (rc) return rc;
    }
    char val[4096];
    snprintf(val, sizeof val, "%s/val.bin", o->data);
    return cli_check_input(cmd, val, "prepare a corpus with 'joule data prepare' or name one with --data");
}

/* Loads and runs one model; prints its summary. */
static int run_model(const energy_cli_opts *o, const char *path, joule_bench_energy_result *r) {
    bool reset = joule_bench_energy_reset_peak_rss();
    joule_model *m;
    int rc = joule_checkpoint_load(&m, path, NULL);
    if (rc) return rc;
    progress_state bar = {.started = false, .label = path};
    joule_bench_energy_opts run = o->run;
    run.progress = progress_cb;
    run.ctx = &bar;
    rc = joule_bench_energy_run(m, path, &run, r);
    if (bar.started) cli_progress_finish(&bar.bar, rc ? 0 : o->run.warmup + o->run.queries, NULL);
    joule_model_free(m);
    if (rc) return rc;
    r->peak_rss_reset = reset;
    joule_bench_energy_print(stdout, r);
    return JOULE_OK;
}

/* --quality-windows: each result's bpb and KL from the first model, after every energy
 * run, so the reference's memory never shows in another model's peak RSS. */
static int quality(const energy_cli_opts *o, joule_bench_energy_result *res, int n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/val.bin", o->data);
    joule_tokens t = {0};
    joule_model *ref = NULL, *m = NULL;
    int rc = joule_tokens_open(&t, path);
    if (!rc && !(rc = joule_checkpoint_load(&ref, o->models[0], NULL))) rc = joule_model_alloc_train(ref, 8);
    for (int k = 0; !rc && k < n; k++) { /* every model ran (the caller checks), so res[k] is models[k] */
        if ((rc = joule_checkpoint_load(&m, o->models[k], NULL))) break;
        joule_eval_result er;
        double kl = 0, ref_loss = 0;
        if (!(rc = joule_model_alloc_train(m, 8)) &&
            !(rc = joule_evaluate_kl(m, ref, &t, m->cfg.ctx, 8, (uint64_t)o->quality_windows, &er, &kl, &ref_loss, NULL, NULL))) {
            res[k].quality = true;
            res[k].bpb = er.bpb;
            res[k].kl_bits = kl / M_LN2;
        }
        joule_model_free(m);
        m = NULL;
    }
    joule_model_free(ref);
    joule_tokens_close(&t);
    return rc ? cli_fail("bench energy", rc) : 0;
}

static int write_outputs(const char *dir, const joule_bench_energy_result *r, int n) {
    static const char *names[3] = {"energy.json", "energy.csv", "energy.svg"};
    int (*writers[3])(const char *, const joule_bench_energy_result *, int) = {
        joule_bench_energy_write_json, joule_bench_energy_write_csv, joule_bench_energy_write_svg};
    for (int i = 0; i < 3; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (cli_make_parent_dirs("bench energy", path)) return EXIT_RUNTIME;
        int rc = writers[i](path, r, n);
        if (rc) return cli_fail("bench energy", rc);
        printf("wrote %s\n", path);
    }
    return 0;
}

int cmd_bench_energy(int argc, char **argv) {
    energy_cli_opts o;
    memset(&o, 0, sizeof o);
    o.data = "data/default";
    o.out = "results/energy";
    joule_bench_energy_opts_init(&o.run);
    /* argv[0] is "bench", argv[1] "energy" */
    int rc = parse(argc - 1, argv + 1, &o);
    if (rc) return rc < 0 ? 0 : rc;
    cli_setup_threads(o.threads);
    o.run.data_dir = o.data;

    joule_energy meters;
    char profile[64];
    const char *hw = o.hardware ? o.hardware : getenv("JOULE_HARDWARE");
    if ((rc = cli_energy_open(&meters, hw, o.power_watts, o.meter, profile, sizeof profile)))
        return cli_fail("bench energy", rc);
    o.run.meters = &meters;
    printf("joule bench energy: energy %s%s%s, BLAS kernels %s, threads %d\n", meters.method,
           strstr(meters.method, "tdp") ? " with profile " : "", strstr(meters.method, "tdp") ? profile : "",
           joule_blas_corename(), joule_get_threads());

    joule_bench_energy_result *res = calloc((size_t)o.n_models, sizeof *res);
    if (!res) {
        joule_energy_close(&meters);
        return cli_fail("bench energy", joule_fail(JOULE_ERR_NOMEM, "out of memory"));
    }
    int n = 0, worst = 0;
    for (int i = 0; i < o.n_models; i++) {
        if ((rc = run_model(&o, o.models[i], &res[n]))) {
            int code = cli_fail("bench energy", rc);
            worst = code > worst ? code : worst;
            continue;
        }
        n++;
    }
    joule_energy_close(&meters);
    if (n == o.n_models && o.quality_windows > 0 && (rc = quality(&o, res, n))) worst = worst ? worst : rc;
    if (n > 0 && o.compare) joule_bench_energy_print_compare(stdout, res, n);
    if (n > 0 && (rc = write_outputs(o.out, res, n))) worst = worst ? worst : rc;
    free(res);
    return worst;
}
