/* joule compare — dense vs MoE vs RETRO at equal training compute, resumable. */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/compare.h"
#include "joule/dist.h"

static const char USAGE[] =
    "Usage: joule compare --budgets LIST [options]\n"
    "\n"
    "Equal-compute comparison (docs/COMPARE.md). For every budget (training FLOPs) and\n"
    "architecture: size a model by the rule below, train it until the counted budget is spent,\n"
    "evaluate validation bits-per-byte and, on the same prompts, exact match of the next n\n"
    "bytes under greedy decoding, per-byte accuracy and mean log-probability under teacher\n"
    "forcing, the edit distance of the greedy continuation and (--samples) pass rates, and\n"
    "measure the training energy. Then fit the dense L(C) = a C^b + c, give each other run's\n"
    "effective compute multiplier with bootstrap intervals, backtest the loss and the\n"
    "exact-match metric on the largest budget from the smaller ones, predict the largest\n"
    "budget's pass rates per difficulty bucket (GPT-4 report 3.2), and draw the emergence\n"
    "panel (every metric against compute, normalised).\n"
    "\n"
    "Resumable: every finished run is a checkpoint in DIR/runs/ and a row of DIR/results.jsonl;\n"
    "running the command again skips finished runs and retries failed ones. Ctrl-C stops the\n"
    "run in progress (it is redone next time) and keeps the rest; twice exits at once.\n"
    "A failed run is recorded with its error and the command exits 1 at the end.\n"
    "\n"
    "Spread over processes: 'mpirun -np N joule compare ...' runs the same grid with each run\n"
    "on one rank (docs/COMPARE.md section 8): runs planned longest first (training FLOPs) onto\n"
    "the least-loaded rank, RETRO and RETRO-fit after the dense run of their budget; every rank\n"
    "writes its runs' files, rank 0 results.jsonl and the report. Same rows and numbers as one\n"
    "process at the same --threads; a killed job is resumed by the same command, under mpirun\n"
    "or not. The folder and --data must be on a file system every rank sees.\n"
    "\n"
    "What to run:\n"
    "  --budgets LIST        training FLOPs per run, comma-separated, e.g. 1e12,2e12,4e12,8e12\n"
    "  --archs LIST          architectures among dense, moe, retro, retro-fit (default\n"
    "                        dense,moe,retro; retro-fit needs dense runs of the same budgets)\n"
    "  --data DIR            prepared corpus: DIR/train.bin and DIR/val.bin (default data/default)\n"
    "  --out DIR             comparison folder (default runs/compare): results.csv, results.jsonl,\n"
    "                        fit.json, report.md, loss_vs_compute.svg, energy_vs_bpb.svg,\n"
    "                        emergence.svg, runs/ (checkpoints, per-prompt metrics)\n"
    "\n"
    "Sizing rule (a model of the fixed-aspect family d_model = i x 8, layers = d_model / aspect,\n"
    "heads of 8, d_ff = ffn-mult x d_model, whose total parameters are nearest N = sqrt(C / 6r);\n"
    "smaller when the budget buys fewer than --min-steps steps):\n"
    "  --tokens-per-param R  r, training tokens per parameter (default 20, Chinchilla's D ~ 20 N)\n"
    "  --aspect A            d_model / layers (default 32)\n"
    "  --ffn-mult M          d_ff / d_model (default 3)\n"
    "  --ctx N               context = training sequence length in bytes (default 256: RETRO\n"
    "                        needs several chunks in view, ctx >= 8 x --retro-chunk)\n"
    "  --min-steps N         fewest optimizer steps a run may have (default 50: the last step then\n"
    "                        leaves at most 2%% of the budget unspent)\n"
    "  --experts N           MoE: experts per MoE layer (default 8); each of d_ff / top-k, so a\n"
    "  --top-k N             token costs the dense model's FLOPs plus the router (default 2)\n"
    "  --moe-every N         MoE FFN in every N-th layer (default 2)\n"
    "  --retro-chunk M       RETRO: chunk length in bytes (default 32). The RETRO model is the\n"
    "                        dense one plus CCA from layer round(layers/6) (>= 1) every 3rd, and\n"
    "                        an encoder of --retro-enc-layers x --retro-enc-d-model\n"
    "  --retro-enc-layers N  RETRO: encoder layers (default 1)\n"
    "  --retro-enc-d-model N RETRO: encoder width, a multiple of 8; 0 = about d_model / 6, at\n"
    "                        least 8 (default 0: encoder + CCA about 10-30%% of the decoder's FLOPs)\n"
    "  --retrofit-fraction F retro-fit: the fitting stage's budget over the dense run's (default\n"
    "                        0.25; at least --min-steps steps)\n"
    "  --db-chunks N         RETRO: the database holds the first N chunks of the train split,\n"
    "                        built once in DIR/db; 0 = all (default 0). The search FLOPs\n"
    "                        (FAISS's, analytic) are reported apart from the budget\n"
    "  --db-index STRING     RETRO: the database's FAISS index (default: Flat below 50000\n"
    "                        entries, else IVF<sqrt N>,Flat)\n"
    "  --db-nprobe N         RETRO: IVF lists probed per search; 0 = the index's default, 16\n"
    "                        (default 4: every run searches each chunk it reads, and at 16 the\n"
    "                        search cost more than the model at demo sizes)\n"
    "  --neighbour-files     RETRO: compute the neighbours of the whole train and val splits\n"
    "                        once, into files next to them that later runs share (default: search\n"
    "                        each chunk the first time a run's batches read it)\n"
    "\n"
    "Training and evaluation:\n"
    "  --batch N             sequences per step (default 8)\n"
    "  --lr F                peak learning rate, cosine to lr/10 (default 3e-3)\n"
    "  --seed N              initialisation and batches (default 1)\n"
    "  --eval-windows N      validation windows of ctx bytes for bits-per-byte; 0 = all (default 256)\n"
    "  --em-windows N        prompts of ctx-n bytes, evenly spaced over val.bin, for every\n"
    "                        metric on the same prompts (default 128)\n"
    "  --match-bytes N       n: each prompt's target is the next n bytes, 1..64 (default 8)\n"
    "  --samples S           continuations sampled per prompt for its pass rate (the share\n"
    "                        equal to the target); 0 = none, no capability prediction (default 0)\n"
    "  --temperature F       of the samples, > 0 (default 1); seeded by --seed, prompt, sample\n"
    "  --queries N           energy per query of each trained model ('joule bench energy': ctx/2\n"
    "                        prompt and ctx/2 generated bytes, 2 warm-up queries); 0 = skip\n"
    "                        (default 16)\n"
    "  --precisions LIST     fp32, bf16, int8 (default fp32): after the runs, each finished run\n"
    "                        of the grid is quantised to every precision listed (written once to\n"
    "                        runs/<run>.<precision>.safetensors, reused by reruns) and measured\n"
    "                        like the run: val bpb on its windows, mean KL from the fp32 model,\n"
    "                        energy per query; one point per precision in precisions.jsonl, the\n"
    "                        report's Precision table and energy_vs_bpb.svg. fp32 is always one\n"
    "                        of them: the runs' own numbers, unchanged\n"
    "\n"
    "Report:\n"
    "  --bootstrap N         resamples for the intervals (default 200)\n"
    "  --level F             interval level (default 0.9)\n"
    "  --buckets N           difficulty buckets of the capability prediction (default 3)\n"
    "  --report-only         rebuild the report from DIR/results.jsonl without running anything\n"
    "\n"
    "Other:\n"
    "  --threads N           threads for BLAS and joule's loops, per run; 0 = all cores, or 1 per\n"
    "                        rank under mpirun (default 0). Small models often train fastest on\n"
    "                        1, above all on a busy machine\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Energy comes from the automatic meters (RAPL, perf, NVML, else modeled:tdp with the profile\n"
    "$JOULE_HARDWARE, else the one matching this CPU, else modeled:tdp-generic; $JOULE_POWER_WATTS\n"
    "for a constant power); the method is in every row.\n";

enum {
    OPT_BUDGETS = 256, OPT_ARCHS, OPT_DATA, OPT_OUT, OPT_TPP, OPT_ASPECT, OPT_FFN_MULT, OPT_CTX, OPT_MIN_STEPS,
    OPT_EXPERTS, OPT_TOP_K, OPT_MOE_EVERY, OPT_BATCH, OPT_LR, OPT_SEED, OPT_EVAL_WINDOWS, OPT_EM_WINDOWS,
    OPT_BOOTSTRAP, OPT_LEVEL, OPT_REPORT_ONLY, OPT_THREADS, OPT_RETRO_CHUNK, OPT_DB_CHUNKS, OPT_QUERIES, OPT_NEIGHBOURS,
    OPT_ENC_LAYERS, OPT_ENC_D_MODEL, OPT_RETROFIT, OPT_DB_INDEX, OPT_DB_NPROBE, OPT_MATCH_BYTES, OPT_SAMPLES,
    OPT_TEMPERATURE, OPT_BUCKETS, OPT_PRECISIONS,
};

static const char *CMD = "compare";

static volatile int g_interrupt;

static void on_signal(int sig) {
    (void)sig;
    if (g_interrupt) _exit(EXIT_INTERRUPTED);
    g_interrupt = 1;
    static const char msg[] = "\njoule compare: interrupt: stopping the run in progress (Ctrl-C again to exit "
                              "at once); finished runs are kept\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
}

/* "1e12,2e12" -> ascending, duplicates dropped. */
static int parse_budgets(const char *s, double *out, int *n) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", s);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        double v;
        if (!cli_parse_double(t, &v) || !(v > 0) || !isfinite(v))
            return cli_usage_error(CMD, "--budgets: '%s' is not a positive number of FLOPs", t);
        if (*n == JOULE_COMPARE_MAX_BUDGETS)
            return cli_usage_error(CMD, "--budgets: at most %d budgets", JOULE_COMPARE_MAX_BUDGETS);
        bool dup = false;
        for (int i = 0; i < *n; i++) dup |= fabs(out[i] - v) <= 1e-9 * v;
        if (!dup) out[(*n)++] = v;
    }
    if (*n == 0) return cli_usage_error(CMD, "--budgets: no budget given");
    for (int i = 1; i < *n; i++)
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
            double t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return 0;
}

static int parse_archs(const char *s, bool *archs) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    memset(archs, 0, JOULE_ARCH_COUNT * sizeof *archs);
    int any = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int a = 0;
        while (a < JOULE_ARCH_COUNT && strcmp(joule_arch_names[a], t) != 0) a++;
        if (a == JOULE_ARCH_COUNT)
            return cli_usage_error(CMD, "--archs: '%s' is not one of dense, moe, retro, retro-fit", t);
        archs[a] = true;
        any = 1;
    }
    if (!any) return cli_usage_error(CMD, "--archs: no architecture given");
    return 0;
}

/* "bf16,int8" -> fp32 first, then the others in the order given, duplicates dropped. */
static int parse_precisions(const char *s, joule_precision *out, int *n) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    out[0] = JOULE_PREC_F32;
    *n = 1;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        joule_precision p;
        if (joule_precision_parse(t, &p))
            return cli_usage_error(CMD, "--precisions: '%s' is not one of fp32, bf16, int8", joule_q(t));
        bool dup = false;
        for (int i = 0; i < *n; i++) dup |= out[i] == p;
        if (!dup) out[(*n)++] = p;
    }
    return 0;
}

/* ---- progress ---- */

typedef struct {
    cli_progress bar;
    bool bar_on;
    const char *retrieval; /* the set-up phase being shown */
    char who[32];          /* "rank R: " before each run's lines under mpirun, else "" */
} compare_ui;

static void on_run_start(void *ctx, int k, int n, const char *arch, double budget, const joule_config *c,
                         uint64_t steps, double eta_s) {
    compare_ui *ui = ctx;
    char eta[32] = "ETA ?";
    if (isfinite(eta_s)) {
        char d[32];
        snprintf(eta, sizeof eta, "ETA %s", cli_fmt_duration(d, sizeof d, eta_s));
    }
    if (c)
        printf("%srun %d of %d: %s, budget %.3g FLOPs: %d layers x d_model %d%s, %llu steps; %s\n", ui->who, k, n, arch, budget,
               c->n_layers, c->d_model, joule_config_has_moe(c) ? " + experts" : "", (unsigned long long)steps, eta);
    else
        printf("%srun %d of %d: %s, budget %.3g FLOPs; %s\n", ui->who, k, n, arch, budget, eta);
    fflush(stdout);
    cli_progress_start(&ui->bar, arch, "step", (double)steps);
    ui->bar_on = c != NULL && joule_dist_rank() == 0; /* one rank draws progress */
}

static void on_step(void *ctx, const joule_train_progress *p) {
    compare_ui *ui = ctx;
    char extra[64];
    snprintf(extra, sizeof extra, "loss %.3f", p->loss);
    if (ui->bar_on && p->step < p->total_steps) cli_progress_update(&ui->bar, (double)p->step, extra);
}

static void on_run_end(void *ctx, const joule_compare_row *r) {
    compare_ui *ui = ctx;
    if (ui->bar.tty && ui->bar.printed) fputc('\n', stderr);
    char tag[96] = ""; /* spread, the ranks' lines interleave: name the run */
    if (ui->who[0]) snprintf(tag, sizeof tag, "%s%s %.3g:", ui->who, r->arch, r->budget);
    if (!r->ok) {
        printf("%s  FAILED: %s\n", tag, r->error);
    } else {
        char w[32];
        printf("%s  val bpb %.4f, exact match %.4f, byte accuracy %.4f, counted FLOPs %.4g (%.2f%% of the budget), %s, energy %.4g J [%s]\n",
               tag, r->val_bpb, r->exact_match, r->byte_accuracy, (double)r->flops_counted, 100 * r->spent,
               cli_fmt_duration(w, sizeof w, r->wall_s), r->energy_j,
               r->energy_method[0] ? r->energy_method : "not measured");
    }
    fflush(stdout);
}

static void on_precision(void *ctx, const joule_compare_prec_row *r, bool reused) {
    (void)ctx;
    if (reused) return;
    if (!r->ok) printf("precision %s of %s %.3g: FAILED: %s\n", r->precision, r->arch, r->budget, r->error);
    else
        printf("precision %s of %s %.3g: val bpb %.4f, KL %.4g bits/byte, %.4g J/query, %.3g MB of weights per token\n",
               r->precision, r->arch, r->budget, r->val_bpb, r->kl_bits, r->query_j, r->weight_bytes / 1e6);
    fflush(stdout);
}

/* RETRO's set-up: the database build, then the neighbour files. */
static void on_retrieval(void *ctx, const char *what, uint64_t done, uint64_t total) {
    compare_ui *ui = ctx;
    if (!ui->retrieval || strcmp(ui->retrieval, what) != 0) {
        if (ui->retrieval) cli_progress_finish(&ui->bar, ui->bar.total, NULL);
        ui->retrieval = what;
        printf("retro set-up: %s\n", what);
        fflush(stdout);
        cli_progress_start(&ui->bar, what, "chunk", (double)total);
    }
    if (done >= total) {
        cli_progress_finish(&ui->bar, (double)done, NULL);
        ui->retrieval = NULL;
    } else {
        cli_progress_update(&ui->bar, (double)done, NULL);
    }
}

static const struct option LONG[] = {
    {"budgets", required_argument, NULL, OPT_BUDGETS},
    {"archs", required_argument, NULL, OPT_ARCHS},
    {"data", required_argument, NULL, OPT_DATA},
    {"out", required_argument, NULL, OPT_OUT},
    {"tokens-per-param", required_argument, NULL, OPT_TPP},
    {"aspect", required_argument, NULL, OPT_ASPECT},
    {"ffn-mult", required_argument, NULL, OPT_FFN_MULT},
    {"ctx", required_argument, NULL, OPT_CTX},
    {"min-steps", required_argument, NULL, OPT_MIN_STEPS},
    {"experts", required_argument, NULL, OPT_EXPERTS},
    {"top-k", required_argument, NULL, OPT_TOP_K},
    {"moe-every", required_argument, NULL, OPT_MOE_EVERY},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"lr", required_argument, NULL, OPT_LR},
    {"seed", required_argument, NULL, OPT_SEED},
    {"eval-windows", required_argument, NULL, OPT_EVAL_WINDOWS},
    {"em-windows", required_argument, NULL, OPT_EM_WINDOWS},
    {"bootstrap", required_argument, NULL, OPT_BOOTSTRAP},
    {"level", required_argument, NULL, OPT_LEVEL},
    {"report-only", no_argument, NULL, OPT_REPORT_ONLY},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"retro-chunk", required_argument, NULL, OPT_RETRO_CHUNK},
    {"db-chunks", required_argument, NULL, OPT_DB_CHUNKS},
    {"queries", required_argument, NULL, OPT_QUERIES},
    {"neighbour-files", no_argument, NULL, OPT_NEIGHBOURS},
    {"retro-enc-layers", required_argument, NULL, OPT_ENC_LAYERS},
    {"retro-enc-d-model", required_argument, NULL, OPT_ENC_D_MODEL},
    {"retrofit-fraction", required_argument, NULL, OPT_RETROFIT},
    {"db-index", required_argument, NULL, OPT_DB_INDEX},
    {"db-nprobe", required_argument, NULL, OPT_DB_NPROBE},
    {"match-bytes", required_argument, NULL, OPT_MATCH_BYTES},
    {"samples", required_argument, NULL, OPT_SAMPLES},
    {"temperature", required_argument, NULL, OPT_TEMPERATURE},
    {"buckets", required_argument, NULL, OPT_BUCKETS},
    {"precisions", required_argument, NULL, OPT_PRECISIONS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct {
    joule_compare_settings s;
    joule_compare_plan p;
    double budgets[JOULE_COMPARE_MAX_BUDGETS];
    const char *data, *out;
    joule_compare_report_opts ro;
    bool report_only;
    int threads;
    joule_precision precisions[3];
} compare_opts;

#define INT_OPT(var, lo, hi, name) CLI_CHECK(cli_int_option(CMD, name, optarg, lo, hi, &(var)))

/* One option of getopt's: 0, or the exit code of a bad value. */
static int one_option(compare_opts *o, int c, char **argv) {
    int rc;
    switch (c) {
    case OPT_BUDGETS:
        if ((rc = parse_budgets(optarg, o->budgets, &o->p.n_budgets))) return rc;
        break;
    case OPT_ARCHS:
        if ((rc = parse_archs(optarg, o->p.archs))) return rc;
        break;
    case OPT_DATA: o->data = optarg; break;
    case OPT_OUT: o->out = optarg; break;
    case OPT_TPP: CLI_CHECK(cli_number_option(CMD, "--tokens-per-param", optarg, true, &o->s.tokens_per_param)); break;
    case OPT_ASPECT: INT_OPT(o->s.aspect, 1, 4096, "--aspect"); break;
    case OPT_FFN_MULT: INT_OPT(o->s.ffn_mult, 1, 64, "--ffn-mult"); break;
    case OPT_CTX: INT_OPT(o->s.ctx, 2, 1 << 16, "--ctx"); break;
    case OPT_MIN_STEPS: INT_OPT(o->s.min_steps, 1, 1 << 30, "--min-steps"); break;
    case OPT_EXPERTS: INT_OPT(o->s.experts, 2, 4096, "--experts"); break;
    case OPT_TOP_K: INT_OPT(o->s.top_k, 1, 2, "--top-k"); break;
    case OPT_MOE_EVERY: INT_OPT(o->s.moe_every, 1, JOULE_MAX_LAYERS, "--moe-every"); break;
    case OPT_BATCH: INT_OPT(o->s.batch, 1, 1 << 16, "--batch"); break;
    case OPT_LR: CLI_CHECK(cli_number_option(CMD, "--lr", optarg, true, &o->s.lr)); break;
    case OPT_SEED: CLI_CHECK(cli_u64_option(CMD, "--seed", optarg, &o->s.seed)); break;
    case OPT_EVAL_WINDOWS: CLI_CHECK(cli_u64_option(CMD, "--eval-windows", optarg, &o->s.eval_windows)); break;
    case OPT_EM_WINDOWS: INT_OPT(o->s.em_windows, 1, 1 << 24, "--em-windows"); break;
    case OPT_MATCH_BYTES: INT_OPT(o->s.match_bytes, 1, 64, "--match-bytes"); break;
    case OPT_SAMPLES: INT_OPT(o->s.samples, 0, 1 << 16, "--samples"); break;
    case OPT_TEMPERATURE:
        CLI_CHECK(cli_number_option(CMD, "--temperature", optarg, true, &o->s.temperature));
        break;
    case OPT_BUCKETS: INT_OPT(o->ro.buckets, 1, 64, "--buckets"); break;
    case OPT_PRECISIONS:
        if ((rc = parse_precisions(optarg, o->precisions, &o->p.n_precisions))) return rc;
        break;
    case OPT_BOOTSTRAP: INT_OPT(o->ro.bootstrap, 0, 100000, "--bootstrap"); break;
    case OPT_LEVEL:
        if (!cli_parse_double(optarg, &o->ro.level) || !(o->ro.level > 0 && o->ro.level < 1))
            return cli_usage_error(CMD, "--level: '%s' is not a number in (0, 1)", optarg);
        break;
    case OPT_REPORT_ONLY: o->report_only = true; break;
    case OPT_THREADS: INT_OPT(o->threads, 0, 4096, "--threads"); break;
    case OPT_QUERIES: INT_OPT(o->s.queries, 0, 1 << 20, "--queries"); break;
    case OPT_RETRO_CHUNK: INT_OPT(o->s.retro_chunk, 1, 4096, "--retro-chunk"); break;
    case OPT_NEIGHBOURS: o->s.neighbour_files = true; break;
    case OPT_DB_CHUNKS: CLI_CHECK(cli_u64_option(CMD, "--db-chunks", optarg, &o->s.db_chunks)); break;
    case OPT_ENC_LAYERS: INT_OPT(o->s.retro_enc_layers, 1, 64, "--retro-enc-layers"); break;
    case OPT_ENC_D_MODEL: INT_OPT(o->s.retro_enc_d_model, 0, 65536, "--retro-enc-d-model"); break;
    case OPT_RETROFIT: CLI_CHECK(cli_number_option(CMD, "--retrofit-fraction", optarg, true, &o->s.retrofit_fraction)); break;
    case OPT_DB_NPROBE: INT_OPT(o->s.db_nprobe, 0, 1 << 20, "--db-nprobe"); break;
    case OPT_DB_INDEX:
        if (strlen(optarg) >= sizeof o->s.db_index)
            return cli_usage_error(CMD, "--db-index: longer than %zu bytes", sizeof o->s.db_index - 1);
        snprintf(o->s.db_index, sizeof o->s.db_index, "%s", optarg);
        break;
    default: return cli_bad_option(CMD, c, argv);
    }
    return 0;
}

/* 0 to run, -1 after --help, else the exit code. */
static int parse(int argc, char **argv, compare_opts *o) {
    joule_compare_settings_init(&o->s);
    memset(&o->p, 0, sizeof o->p);
    o->p.archs[JOULE_ARCH_DENSE] = o->p.archs[JOULE_ARCH_MOE] = o->p.archs[JOULE_ARCH_RETRO] = true;
    o->data = "data/default";
    o->out = "runs/compare";
    o->ro = (joule_compare_report_opts){200, 0.9, 1, 3};
    o->report_only = false;
    o->threads = 0;
    int c, rc;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, USAGE)) != -1) {
        if (c == CLI_HELP) return -1;
        if ((rc = one_option(o, c, argv))) return rc;
    }
    const joule_compare_settings *s = &o->s;
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (s->top_k > s->experts) return cli_usage_error(CMD, "--top-k %d is more than --experts %d", s->top_k, s->experts);
    if (s->retro_enc_d_model % s->head_dim)
        return cli_usage_error(CMD, "--retro-enc-d-model %d is not a multiple of %d", s->retro_enc_d_model, s->head_dim);
    if (s->match_bytes >= s->ctx)
        return cli_usage_error(CMD, "--match-bytes %d leaves no prompt in a context of %d", s->match_bytes, s->ctx);
    if (o->ro.bootstrap == 1) return cli_usage_error(CMD, "--bootstrap: give 0 (none) or at least 2 resamples");
    if (o->report_only) return 0;
    if (o->p.n_budgets == 0) return cli_usage_error(CMD, "no budgets: give --budgets LIST, e.g. 1e12,2e12,4e12,8e12");
    char train[4096], val[4096];
    snprintf(train, sizeof train, "%s/train.bin", o->data);
    snprintf(val, sizeof val, "%s/val.bin", o->data);
    const char *hint = "prepare it with 'joule data prepare --preset default' or give --data DIR";
    if ((rc = cli_check_input(CMD, train, hint)) || (rc = cli_check_input(CMD, val, hint))) return rc;
    return 0;
}

/* Every run's energy comes from one set of meters per process, so the methods agree. Spread,
 * each rank meters its own runs and rank 0 says which meter. */
static bool open_meters(joule_energy *meters, bool say) {
    const char *w = getenv("JOULE_POWER_WATTS");
    double watts = 0;
    if (w && *w && !cli_parse_double(w, &watts)) watts = 0;
    char profile[64];
    bool metered = cli_energy_open(meters, getenv("JOULE_HARDWARE"), watts, NULL, profile, sizeof profile) == 0;
    if (!say) return metered;
    if (!metered) fprintf(stderr, "joule %s: energy not measured: %s\n", CMD, joule_last_error());
    else printf("energy: %s%s%s\n", meters->method, strstr(meters->method, "tdp") ? ", profile " : "",
                strstr(meters->method, "tdp") ? profile : "");
    return metered;
}

/* The grid, with progress and Ctrl-C handling; oc receives the rows. */
static int run_grid(compare_opts *o, joule_compare_outcome *oc) {
    const bool spread = joule_dist_size() > 1, root = joule_dist_rank() == 0;
    /* under mpirun the ranks share the cores: one thread each unless told */
    cli_setup_threads(o->threads == 0 && spread ? 1 : o->threads);
    joule_energy meters;
    bool metered = open_meters(&meters, root);
    compare_ui ui;
    memset(&ui, 0, sizeof ui);
    if (spread) snprintf(ui.who, sizeof ui.who, "rank %d: ", joule_dist_rank());
    joule_compare_plan *p = &o->p;
    p->settings = &o->s;
    p->data_dir = o->data;
    p->out_dir = o->out;
    p->budgets = o->budgets;
    p->meters = metered ? &meters : NULL;
    p->interrupt = &g_interrupt;
    p->on_run_start = on_run_start;
    p->on_run_end = on_run_end;
    p->on_step = root ? on_step : NULL;
    p->on_retrieval = on_retrieval; /* rank 0 alone sets retrieval up */
    p->precisions = o->precisions;
    p->on_precision = on_precision;
    p->ctx = &ui;
    int rc = root ? cli_make_parent_dirs(CMD, o->out) : 0; /* rank 0 alone creates the folder */
    if (rc) {
        if (metered) joule_energy_close(&meters);
        return rc;
    }
    static const int SIGNALS[2] = {SIGINT, SIGTERM};
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART}, old[2];
    sigemptyset(&sa.sa_mask);
    g_interrupt = 0;
    for (int i = 0; i < 2; i++) sigaction(SIGNALS[i], &sa, &old[i]);
    rc = joule_compare_grid(p, oc);
    for (int i = 0; i < 2; i++) sigaction(SIGNALS[i], &old[i], NULL);
    if (metered) joule_energy_close(&meters);
    if (rc && spread) { /* main then ends every rank: say which one failed */
        char why[1024];
        snprintf(why, sizeof why, "%s", joule_last_error());
        joule_fail(rc, "rank %d: %s", joule_dist_rank(), why);
    }
    if (rc) return cli_fail(CMD, rc);
    if (root)
        printf("%d run%s done, %d already finished, %d failed in %s\n", oc->ran, oc->ran == 1 ? "" : "s", oc->skipped,
           oc->failed, o->out);
    if (root && p->n_precisions > 1)
        printf("precisions: %d point%s measured, %d reused, %d failed (precisions.jsonl)\n", oc->prec_measured,
               oc->prec_measured == 1 ? "" : "s", oc->prec_reused, oc->prec_failed);
    return 0;
}

/* The report from the rows, and the exit code the runs call for. */
static int report(const compare_opts *o, const joule_compare_row *rows, int n_rows, int prec_failed, bool interrupted) {
    char *summary = NULL;
    int rc = joule_compare_report(o->out, rows, n_rows, &o->ro, &summary);
    if (rc) {
        free(summary);
        fflush(stdout);
        return cli_fail(CMD, rc);
    }
    printf("\n%s\nreport: %s/report.md, fit.json, results.csv, loss_vs_compute.svg, energy_vs_bpb.svg, emergence.svg\n",
           summary ? summary : "", o->out);
    free(summary);
    int failed = 0;
    for (int i = 0; i < n_rows; i++) failed += !rows[i].ok;
    fflush(stdout);
    if (interrupted) {
        fprintf(stderr, "joule %s: interrupted; finished runs are kept in %s: run the same command to continue\n", CMD,
                o->out);
        return EXIT_INTERRUPTED;
    }
    if (failed) {
        fprintf(stderr, "joule %s: %d run%s failed (see %s/report.md); fix the cause and rerun to retry them\n", CMD,
                failed, failed == 1 ? " has" : "s have", o->out);
        return EXIT_RUNTIME;
    }
    if (prec_failed) {
        fprintf(stderr, "joule %s: %d precision point%s failed (see %s/precisions.jsonl); rerun to retry\n", CMD,
                prec_failed, prec_failed == 1 ? "" : "s", o->out);
        return EXIT_RUNTIME;
    }
    return 0;
}

/* Spread, rank 0 has written the report: every rank ends with its exit code, so that no rank
 * returns (and, non-zero, ends the job) before the report is on disk. */
static int agree_exit(int rc) {
    if (joule_dist_size() == 1) return rc;
    int32_t code = rc;
    if (joule_dist_bcast(&code, sizeof code, 0) != JOULE_OK) return cli_fail(CMD, JOULE_ERR_RUNTIME);
    return code;
}

int cmd_compare(int argc, char **argv) {
    compare_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    joule_compare_outcome oc;
    memset(&oc, 0, sizeof oc);
    const bool root = joule_dist_rank() == 0;
    if (o.report_only) {
        if (!root) return agree_exit(0); /* rank 0 rebuilds the report alone */
        char path[4096];
        snprintf(path, sizeof path, "%s/results.jsonl", o.out);
        if ((rc = cli_check_input(CMD, path, "nothing to report (check --out)"))) return rc;
        if ((rc = joule_compare_rows_load(path, &oc.rows, &oc.n_rows))) return cli_fail(CMD, rc);
    } else if ((rc = run_grid(&o, &oc))) {
        free(oc.rows);
        return rc;
    }
    rc = root ? report(&o, oc.rows, oc.n_rows, oc.prec_failed, oc.interrupted) : 0;
    free(oc.rows);
    return agree_exit(rc);
}
