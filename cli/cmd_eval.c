/* joule eval — validation loss and bits-per-byte of a checkpoint. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "retro_cli.h"
#include "joule/checkpoint.h"
#include "joule/compare.h"
#include "joule/data.h"
#include "joule/ops.h"
#include "joule/quant.h"
#include "joule/train.h"
#include "moe_cli.h"

static const char USAGE[] =
    "Usage: joule eval --model PATH [--data DIR | --tokens FILE] [options]\n"
    "\n"
    "Reports the mean next-token loss over consecutive non-overlapping windows of the\n"
    "model's context length (inputs tok[wT..wT+T-1], targets shifted by one);\n"
    "bits-per-byte = loss / ln 2. Each window scores T targets, each predicted from the\n"
    "bytes before it in the same window (no context carries across windows).\n"
    "\n"
    "Options:\n"
    "  --model PATH     checkpoint (.safetensors) to evaluate (required)\n"
    "  --data DIR       prepared corpus; evaluates DIR/<split>.bin (default data/default)\n"
    "  --split NAME     val or train, with --data (default val)\n"
    "  --tokens FILE    token file (.bin) to evaluate, instead of --data\n"
    "  --windows N      evaluate at most the first N windows; 0 = all (default 0)\n"
    "  --batch N        windows per forward pass (default 8)\n"
    "  --seq N          window length T, at most the model's context (default: the model's ctx)\n"
    "  --db DIR         RETRO models: bits-per-byte with retrieval from DIR on and off (a\n"
    "                   database of the training split only, or one that also holds the\n"
    "                   validation split: the 'leaky' setting, are two runs)\n"
    "  --allow-db-mismatch  accept a database other than the model's training one\n"
    "  --include-own-doc, --leaky  with --db: search live with nothing excluded, so a chunk may\n"
    "                   retrieve its own document (the leaky setting; default: the clean one,\n"
    "                   excluded as in training)\n"
    "  --leakage        with --db: bits-per-byte by overlap with the database, as in the RETRO\n"
    "                   paper: each evaluated chunk's r = the longest run of bytes it shares with\n"
    "                   one of its nearest entries, over the chunk length; bpb with retrieval on\n"
    "                   and off over the chunks with r <= 0, 1/8, 1/4, 1/2, 3/4, 1, with counts\n"
    "  --baseline PATH  with --leakage: a dense model scored on the same bytes\n"
    "  --leakage-neighbours N  entries searched per chunk for r (default 10)\n"
    "  --neighbours-on-demand  with --db: no neighbour file; search each chunk of the evaluated\n"
    "                   windows when first read (a few windows of a large split pay for only those)\n"
    "  --prompts N      also score N prompts of ctx-n bytes evenly spaced over the file, as\n"
    "                   'joule compare' does (docs/COMPARE.md section 3): exact match of the\n"
    "                   next n bytes under greedy decoding and, on the same prompts, per-byte\n"
    "                   accuracy and mean log-probability under teacher forcing and the edit\n"
    "                   distance of the greedy continuation (not with --db: a RETRO model is\n"
    "                   scored with retrieval off)\n"
    "  --match-bytes N  with --prompts: n, 1..64 (default 8)\n"
    "  --samples S      with --prompts: continuations sampled per prompt; the pass rate is the\n"
    "                   share equal to the target (default 0: none)\n"
    "  --temperature F  of the samples, > 0 (default 1)\n"
    "  --seed N         of the samples (default 1)\n"
    "  --reference PATH another checkpoint of the same vocabulary (e.g. the fp32 model a\n"
    "                   quantised one came from): also reports its bpb on the same windows and\n"
    "                   the mean KL divergence KL(reference || model) of the next-byte\n"
    "                   distributions, in bits per byte (time and FLOPs stay the model's own)\n"
    "  --json           print one JSON object instead of text\n"
    "  --threads N      threads for BLAS and joule's loops; 0 = all cores (default 0)\n"
    "  -h, --help       show this help and exit\n"
    "\n"
    "Prints loss (nats), bits-per-byte, tokens scored, windows, counted FLOPs, wall time\n"
    "and tokens/s, MFU against the sgemm peak (measured at start, or $JOULE_PEAK_GFLOPS) and\n"
    "the energy with its method (docs/ACCOUNTING.md; $JOULE_HARDWARE, $JOULE_POWER_WATTS).\n"
    "JSON keys: model, tokens_file, loss, bpb, tokens, windows, seq, batch, flops,\n"
    "flops_analytic, peak_gflops, mfu, energy_j, energy_method, J_per_token, wall_s,\n"
    "tokens_per_s, threads, precision; with --reference also reference, reference_bpb and\n"
    "kl_bits (mean KL, bits per byte); with --prompts also prompts: prompts, prompt_bytes, n,\n"
    "samples, temperature, seed, the means (exact_match, byte_accuracy, logprob, edit_distance,\n"
    "pass_rate) and per_prompt (start, exact, edit, tf_correct, logprob, passes); for an MoE\n"
    "model also moe: per-layer routing statistics over the\n"
    "whole evaluation (tokens per expert min/max and max/mean, fractions of first and second\n"
    "choices dropped, router entropy, lb and z losses).\n";

enum {
    OPT_MODEL = 256, OPT_DATA, OPT_SPLIT, OPT_TOKENS, OPT_WINDOWS, OPT_BATCH, OPT_SEQ, OPT_JSON, OPT_THREADS,
    OPT_PROMPTS, OPT_MATCH_BYTES, OPT_SAMPLES, OPT_TEMPERATURE, OPT_SEED, OPT_REF
};

static const char *CMD = "eval";

typedef struct {
    cli_progress bar;
    int seq;
} eval_progress;

static void on_eval_progress(void *ctx, uint64_t done, uint64_t total) {
    eval_progress *ep = ctx;
    (void)total;
    cli_progress_update(&ep->bar, (double)(done * (uint64_t)ep->seq), NULL);
}

typedef struct {
    const char *model_path, *data_dir, *split, *tokens_path, *ref_path;
    joule_model *ref; /* --reference, loaded */
    uint64_t max_windows;
    int batch, seq, threads;
    bool json;
    joule_prompt_opts po; /* po.windows = 0: no prompt metrics */
    retro_db_cli rdb;
    char buf[4096];
} eval_args;

static int parse_option(void *args, int c, char **argv) {
    eval_args *a = args;
    switch (c) {
    case OPT_MODEL: a->model_path = optarg; return 0;
    case OPT_DATA: a->data_dir = optarg; return 0;
    case OPT_SPLIT:
        if (strcmp(optarg, "val") && strcmp(optarg, "train"))
            return cli_usage_error(CMD, "--split: '%s' is not val or train", optarg);
        a->split = optarg;
        return 0;
    case OPT_TOKENS: a->tokens_path = optarg; return 0;
    case OPT_WINDOWS: return cli_u64_option(CMD, "--windows", optarg, &a->max_windows);
    case OPT_BATCH:
        return cli_int_option(CMD, "--batch", optarg, 1, 1 << 16, &a->batch);
    case OPT_SEQ:
        return cli_int_option(CMD, "--seq", optarg, 1, 1 << 16, &a->seq);
    case OPT_JSON: a->json = true; return 0;
    case OPT_REF: a->ref_path = optarg; return 0;
    case OPT_THREADS: return cli_int_option(CMD, "--threads", optarg, 0, 4096, &a->threads);
    case OPT_PROMPTS: return cli_int_option(CMD, "--prompts", optarg, 1, 1 << 24, &a->po.windows);
    case OPT_MATCH_BYTES: return cli_int_option(CMD, "--match-bytes", optarg, 1, 64, &a->po.n);
    case OPT_SAMPLES: return cli_int_option(CMD, "--samples", optarg, 0, 1 << 16, &a->po.samples);
    case OPT_TEMPERATURE: {
        double t;
        CLI_CHECK(cli_number_option(CMD, "--temperature", optarg, true, &t));
        a->po.temperature = (float)t;
        return 0;
    }
    case OPT_SEED: return cli_u64_option(CMD, "--seed", optarg, &a->po.seed);
    }
    const int r = retro_db_cli_option(&a->rdb, CMD, c, optarg);
    return r < 0 ? cli_bad_option(CMD, c, argv) : r;
}

/* The command line into a; 0, -1 after --help, or the exit status of bad usage. Also
 * checks the input files. */
static int parse_args(int argc, char **argv, eval_args *a) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"data", required_argument, NULL, OPT_DATA},
        {"split", required_argument, NULL, OPT_SPLIT},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"windows", required_argument, NULL, OPT_WINDOWS},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"seq", required_argument, NULL, OPT_SEQ},
        {"json", no_argument, NULL, OPT_JSON},
        {"reference", required_argument, NULL, OPT_REF},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"prompts", required_argument, NULL, OPT_PROMPTS},
        {"match-bytes", required_argument, NULL, OPT_MATCH_BYTES},
        {"samples", required_argument, NULL, OPT_SAMPLES},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, 'h'},
        RETRO_EVAL_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const retro_db_cli *rdb = &a->rdb;
    CLI_CHECK(cli_parse_options(argc, argv, CMD, ":h", LONG, USAGE, parse_option, a));
    if (!a->model_path) return cli_usage_error(CMD, "--model PATH is required");
    if (rdb->own_doc && !rdb->dir) return cli_usage_error(CMD, "--include-own-doc needs --db DIR");
    if (rdb->on_demand && !rdb->dir) return cli_usage_error(CMD, "--neighbours-on-demand needs --db DIR");
    if ((rdb->leakage || rdb->baseline || rdb->leak_k) && !rdb->dir)
        return cli_usage_error(CMD, "--leakage needs --db DIR");
    if ((rdb->baseline || rdb->leak_k) && !rdb->leakage)
        return cli_usage_error(CMD, "--baseline and --leakage-neighbours go with --leakage");
    if (a->po.windows && rdb->dir) return cli_usage_error(CMD, "--prompts does not go with --db");
    if (!a->po.windows && (a->po.samples || a->po.n != JOULE_COMPARE_EM_BYTES))
        return cli_usage_error(CMD, "--match-bytes and --samples go with --prompts N");
    if (a->tokens_path && (a->data_dir || a->split))
        return cli_usage_error(CMD, "give either --data/--split or --tokens");
    if (!a->tokens_path) {
        snprintf(a->buf, sizeof a->buf, "%s/%s.bin", a->data_dir ? a->data_dir : "data/default",
                 a->split ? a->split : "val");
        a->tokens_path = a->buf;
    }
    CLI_CHECK(cli_check_input(CMD, a->model_path, NULL));
    if (a->ref_path && rdb->dir) return cli_usage_error(CMD, "--reference does not go with --db");
    if (a->ref_path) CLI_CHECK(cli_check_input(CMD, a->ref_path, NULL));
    return cli_check_input(CMD, a->tokens_path, a->data_dir || !strstr(a->tokens_path, "data/default/")
                                                     ? NULL
                                                     : "prepare it with 'joule data prepare --preset default'");
}

/* The measurement the report prints. */
typedef struct {
    joule_prompt_score *ps; /* NULL without --prompts */
    joule_prompt_means pm;
    joule_eval_result r;
    uint64_t nw;     /* windows */
    double analytic; /* forward FLOPs */
    double peak;     /* FLOP/s */
    double kl, ref_loss; /* with --reference: nats per token */
} eval_run;

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

/* --prompts: the means and every prompt's scores. */
static void prompts_json(cJSON *o, const joule_prompt_opts *po, const eval_run *e) {
    cJSON *p = cJSON_AddObjectToObject(o, "prompts");
    cJSON_AddNumberToObject(p, "prompts", po->windows);
    cJSON_AddNumberToObject(p, "prompt_bytes", po->prompt);
    cJSON_AddNumberToObject(p, "n", po->n);
    cJSON_AddNumberToObject(p, "samples", po->samples);
    cJSON_AddNumberToObject(p, "temperature", po->temperature);
    cJSON_AddNumberToObject(p, "seed", (double)po->seed);
    cJSON_AddNumberToObject(p, "exact_match", e->pm.exact_match);
    cJSON_AddNumberToObject(p, "byte_accuracy", e->pm.byte_accuracy);
    cJSON_AddNumberToObject(p, "logprob", e->pm.logprob);
    cJSON_AddNumberToObject(p, "edit_distance", e->pm.edit_distance);
    cJSON_AddItemToObject(p, "pass_rate", num_or_null(e->pm.pass_rate));
    cJSON *arr = cJSON_AddArrayToObject(p, "per_prompt");
    for (int w = 0; w < po->windows; w++) {
        const joule_prompt_score *s = &e->ps[w];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "start", (double)s->start);
        cJSON_AddBoolToObject(x, "exact", s->edit == 0);
        cJSON_AddNumberToObject(x, "edit", s->edit);
        cJSON_AddNumberToObject(x, "tf_correct", s->tf_correct);
        cJSON_AddNumberToObject(x, "logprob", s->logprob);
        cJSON_AddNumberToObject(x, "passes", s->passes);
        cJSON_AddItemToArray(arr, x);
    }
}

static void report_json(const eval_args *a, const joule_model *m, const eval_run *e, cli_energy *energy) {
    const joule_eval_result *r = &e->r;
    double tps = r->wall_s > 0 ? (double)r->tokens / r->wall_s : 0;
    joule_energy_report er;
    memset(&er, 0, sizeof er);
    cli_energy_end(energy, r->tokens, 0, true, &er);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", a->model_path);
    cJSON_AddStringToObject(o, "tokens_file", a->tokens_path);
    cJSON_AddNumberToObject(o, "loss", r->loss);
    cJSON_AddNumberToObject(o, "bpb", r->bpb);
    cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
    cJSON_AddNumberToObject(o, "windows", (double)e->nw);
    cJSON_AddNumberToObject(o, "seq", a->seq);
    cJSON_AddNumberToObject(o, "batch", a->batch);
    cJSON_AddNumberToObject(o, "flops", (double)r->flops);
    cJSON_AddNumberToObject(o, "flops_analytic", e->analytic);
    cJSON_AddNumberToObject(o, "peak_gflops", e->peak / 1e9);
    cJSON_AddNumberToObject(o, "mfu", r->wall_s > 0 && e->peak > 0 ? e->analytic / r->wall_s / e->peak : 0);
    cJSON_AddNumberToObject(o, "energy_j", er.joules);
    cJSON_AddStringToObject(o, "energy_method", er.method[0] ? er.method : "none");
    cJSON_AddNumberToObject(o, "J_per_token", r->tokens ? er.joules / (double)r->tokens : 0);
    cJSON_AddNumberToObject(o, "wall_s", r->wall_s);
    cJSON_AddNumberToObject(o, "tokens_per_s", tps);
    cJSON_AddNumberToObject(o, "threads", joule_get_threads());
    cJSON_AddStringToObject(o, "precision", joule_precision_name(m->quant ? m->quant->prec : JOULE_PREC_F32));
    if (a->ref) {
        cJSON_AddStringToObject(o, "reference", a->ref_path);
        cJSON_AddNumberToObject(o, "reference_bpb", e->ref_loss / M_LN2);
        cJSON_AddNumberToObject(o, "kl_bits", e->kl / M_LN2);
    }
    if (e->ps) prompts_json(o, &a->po, e);
    cli_moe_eval_report(m, o);
    cli_print_json(o);
}

static void report_text(const eval_args *a, const joule_model *m, const eval_run *e, cli_energy *energy) {
    const joule_eval_result *r = &e->r;
    double tps = r->wall_s > 0 ? (double)r->tokens / r->wall_s : 0;
    char b[32];
    printf("model:  %s\n", a->model_path);
    printf("data:   %s (%" PRIu64 " windows of %d tokens%s)\n", a->tokens_path, e->nw, a->seq,
           a->max_windows && e->nw == a->max_windows ? ", limited by --windows" : "");
    printf("loss:   %.4f nats/token\n", r->loss);
    printf("bpb:    %.4f bits/byte\n", r->bpb);
    if (a->ref) {
        printf("ref:    %.4f bits/byte (%s on the same windows)\n", e->ref_loss / M_LN2, a->ref_path);
        printf("KL:     %.3g bits/byte, mean KL(reference || model) of the next-byte distributions\n", e->kl / M_LN2);
    }
    printf("tokens: %" PRIu64 "\n", r->tokens);
    printf("FLOPs:  %.3g counted, %.3g analytic (forward)\n", (double)r->flops, e->analytic);
    printf("time:   %.2fs (%s tok/s, %d threads)\n", r->wall_s, cli_fmt_count(b, sizeof b, tps), joule_get_threads());
    cli_print_mfu(stdout, e->analytic, (double)r->flops, r->wall_s, e->peak);
    if (e->ps) {
        const joule_prompt_opts *po = &a->po;
        printf("prompts: %d of %d bytes + the next %d: exact match %.4f, byte accuracy %.4f, log-prob %.4f nats/byte, "
               "edit distance %.3f", po->windows, po->prompt, po->n, e->pm.exact_match, e->pm.byte_accuracy,
               e->pm.logprob, e->pm.edit_distance);
        if (po->samples) printf(", pass rate %.4f (%d samples at temperature %g, seed %llu)", e->pm.pass_rate,
                                po->samples, po->temperature, (unsigned long long)po->seed);
        printf("\n");
    }
    joule_energy_report er;
    memset(&er, 0, sizeof er);
    cli_energy_end(energy, r->tokens, 0, false, &er);
    cli_moe_eval_report(m, NULL);
}

/* The evaluation of nw windows of t, timed and metered, then its report. */
static int evaluate(const eval_args *a, joule_model *m, joule_tokens *t, uint64_t nw, eval_run *pre) {
    eval_run e = *pre;
    e.nw = nw;
    e.peak = cli_peak_flops();
    cli_energy energy;
    cli_energy_begin(&energy, "eval");
    eval_progress ep = {.seq = a->seq};
    cli_progress_start(&ep.bar, "eval", "tok", (double)(nw * (uint64_t)a->seq));
    int st = a->ref ? joule_evaluate_kl(m, a->ref, t, a->seq, a->batch, nw, &e.r, &e.kl, &e.ref_loss, on_eval_progress, &ep)
                    : joule_evaluate(m, t, a->seq, a->batch, nw, &e.r, on_eval_progress, &ep);
    if (st) {
        if (ep.bar.tty && ep.bar.printed) fputc('\n', stderr);
        joule_energy_close(&energy.meters);
        return cli_fail(CMD, st);
    }
    if (ep.bar.printed) cli_progress_finish(&ep.bar, (double)e.r.tokens, NULL);
    e.analytic = (double)nw * (double)joule_model_forward_flops(&m->cfg, 1, a->seq);
    if (a->json) report_json(a, m, &e, &energy);
    else report_text(a, m, &e, &energy);
    return 0;
}

/* The windows to score (nw), the model's buffers, then RETRO's evaluation or evaluate. */
static int run(eval_args *a, joule_model *m, joule_tokens *t) {
    if (!a->seq) a->seq = m->cfg.ctx;
    if (a->seq > m->cfg.ctx)
        return cli_usage_error(CMD, "--seq %d is longer than the model's context %d", a->seq, m->cfg.ctx);
    int st = joule_tokens_open(t, a->tokens_path);
    if (st) return cli_fail(CMD, st);
    uint64_t nw = joule_eval_windows(t, a->seq);
    if (a->max_windows && nw > a->max_windows) nw = a->max_windows;
    if (nw == 0) {
        fprintf(stderr, "joule %s: %s: %" PRIu64 " tokens is too short for one window of %d\n", CMD, a->tokens_path,
                t->n_tokens, a->seq);
        return EXIT_USAGE;
    }
    cli_setup_threads(a->threads);
    if ((st = joule_model_alloc_train(m, a->batch))) return cli_fail(CMD, st);
    if (a->ref_path) {
        if ((st = joule_checkpoint_load(&a->ref, a->ref_path, NULL)) || (st = joule_model_alloc_train(a->ref, a->batch)))
            return cli_fail(CMD, st);
        if (a->ref->cfg.vocab != m->cfg.vocab || a->ref->cfg.ctx < a->seq)
            return cli_usage_error(CMD, "--reference %s: vocabulary %d, context %d; the model needs %d and %d", a->ref_path,
                                   a->ref->cfg.vocab, a->ref->cfg.ctx, m->cfg.vocab, a->seq);
    }
    if (a->rdb.dir) return retro_cli_eval(CMD, m, t, &a->rdb, a->seq, a->batch, nw, a->json, a->model_path);
    eval_run e = {0};
    if (a->po.windows) {
        a->po.prompt = m->cfg.ctx - a->po.n;
        if (a->po.prompt < 1)
            return cli_usage_error(CMD, "--match-bytes %d leaves no prompt in the model's context %d", a->po.n, m->cfg.ctx);
        if (!(e.ps = malloc((size_t)a->po.windows * sizeof *e.ps))) return cli_fail(CMD, joule_fail(JOULE_ERR_NOMEM, "out of memory"));
        if ((st = joule_prompt_metrics(m, NULL, t, &a->po, e.ps, &e.pm))) {
            free(e.ps);
            return cli_fail(CMD, st);
        }
    }
    st = evaluate(a, m, t, nw, &e);
    free(e.ps);
    return st;
}

int cmd_eval(int argc, char **argv) {
    eval_args a = {.batch = 8, .po = {.n = JOULE_COMPARE_EM_BYTES, .temperature = 1.0f, .seed = 1}};
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    joule_model *m = NULL;
    if ((rc = joule_checkpoint_load(&m, a.model_path, NULL))) return cli_fail(CMD, rc);
    joule_tokens t = {0};
    rc = run(&a, m, &t);
    joule_tokens_close(&t); /* safe on a zeroed or failed one */
    joule_model_free(a.ref);
    joule_model_free(m);
    return rc;
}
