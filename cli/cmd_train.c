/* joule train — train a model under a step, token or FLOP budget. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acct_cli.h"
#include "cli.h"
#include "retro_cli.h"
#include "joule/checkpoint.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "joule/train.h"
#include "moe_cli.h"

#define DEF_LAYERS 4
#define DEF_D_MODEL 256
#define DEF_HEADS 4
#define DEF_D_FF 768
#define DEF_CTX 256

static const char USAGE[] =
    "Usage: joule train (--steps N | --tokens N | --flops F) [options]\n"
    "\n"
    "Trains a byte-level Transformer with AdamW (linear warm-up, cosine decay) and writes a\n"
    "checkpoint. Each step draws batch x accum windows of seq+1 tokens at random positions\n"
    "of the training file (the same ones for a given seed, so a resumed run matches an\n"
    "uninterrupted one). Ctrl-C saves and stops after the current step; twice exits at once.\n"
    "\n"
    "Budget (exactly one; with --resume the saved schedule is used when none is given):\n"
    "  --steps N          optimizer steps\n"
    "  --tokens N         training tokens, e.g. 2M; steps = ceil(N / tokens per step)\n"
    "  --flops F          training FLOPs, e.g. 1e15; steps = floor(F / analytic FLOPs per step)\n"
    "\n"
    "Model (a new run; with --resume the model comes from the checkpoint and these must match it):\n"
    "  --config FILE      model config JSON (the \"config\" object of 'joule info --json');\n"
    "                     the flags below override its fields\n"
    "  --layers N         Transformer layers (default 4)\n"
    "  --d-model N        residual stream width (default 256)\n"
    "  --heads N          attention heads; d-model/heads must be even (default 4)\n"
    "  --d-ff N           SwiGLU hidden width (default 768)\n"
    "  --ctx N            context length in bytes (default 256)\n"
    "  --untied           separate output matrix instead of reusing the embedding (default tied)\n"
    CLI_MOE_USAGE
    "\n"
    "Data:\n"
    "  --data DIR         prepared corpus: DIR/train.bin and DIR/val.bin (default data/default)\n"
    "  --train FILE       training token file (.bin), instead of --data\n"
    "  --val FILE         validation token file (.bin), with --train (default: no validation)\n"
    "\n"
    "Output:\n"
    "  --out PATH         checkpoint to write (default runs/model.safetensors), folders\n"
    "                     created; the optimizer state goes beside it in\n"
    "                     <PATH without .safetensors>.optim.safetensors\n"
    "  --log PATH         JSON-lines log, one object per step: step, tokens, loss, lr, grad_norm,\n"
    "                     wall_s, flops, ... (default <PATH of --out without .safetensors>.log.jsonl)\n"
    "  --no-log           write no log\n"
    "  --save-every N     also save every N steps (default 0: only at the end)\n"
    "  --resume           continue the run saved at --out (appending to the log); options not\n"
    "                     given are taken from the checkpoint, options given must match it\n"
    "  --stop-after N     save and stop once N steps are done, e.g. to split a run (default 0: no)\n"
    "\n"
    "Optimisation:\n"
    "  --batch N          sequences per micro-batch (default 8)\n"
    "  --accum N          micro-batches per step, gradients accumulated (default 1)\n"
    "  --seq N            tokens per sequence, at most ctx (default ctx)\n"
    "  --lr F             peak learning rate, in [1e-9, 10] (default 1e-3)\n"
    "  --min-lr F         learning rate at the end of the cosine decay, in [0, 10] (default lr/10)\n"
    "  --warmup N         linear warm-up steps (default min(100, total steps / 5))\n"
    "  --weight-decay F   decoupled AdamW weight decay, matrices only, in [0, 100] (default 0.1)\n"
    "  --clip F           clip the global gradient norm to F, in [0, 1e6]; 0 disables (default 1.0)\n"
    "  --seed N           seed of the initialisation and of the batches (default 1)\n"
    "\n"
    "Evaluation:\n"
    "  --eval-every N     validation loss every N steps and at the end; 0 = only at the end\n"
    "                     (default 100)\n"
    "  --eval-windows N   validation windows (of seq tokens) per evaluation; 0 = all (default 64)\n"
    "\n"
    "Other:\n"
    "  --threads N        threads for BLAS and joule's loops; 0 = all cores (default 0)\n"
    "  -h, --help         show this help and exit\n"
    RETRO_TRAIN_USAGE;

enum {
    OPT_STEPS = 256, OPT_TOKENS, OPT_FLOPS, OPT_CONFIG, OPT_LAYERS, OPT_D_MODEL, OPT_HEADS, OPT_D_FF, OPT_CTX,
    OPT_UNTIED, OPT_DATA, OPT_TRAIN, OPT_VAL, OPT_OUT, OPT_LOG, OPT_NO_LOG, OPT_SAVE_EVERY, OPT_RESUME,
    OPT_STOP_AFTER, OPT_BATCH, OPT_ACCUM, OPT_SEQ, OPT_LR, OPT_MIN_LR, OPT_WARMUP, OPT_WD, OPT_CLIP, OPT_SEED,
    OPT_EVAL_EVERY, OPT_EVAL_WINDOWS, OPT_THREADS, OPT_ARCH,
};

static const struct option LONG[] = {
    {"steps", required_argument, NULL, OPT_STEPS},
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"flops", required_argument, NULL, OPT_FLOPS},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"layers", required_argument, NULL, OPT_LAYERS},
    {"d-model", required_argument, NULL, OPT_D_MODEL},
    {"heads", required_argument, NULL, OPT_HEADS},
    {"d-ff", required_argument, NULL, OPT_D_FF},
    {"ctx", required_argument, NULL, OPT_CTX},
    {"untied", no_argument, NULL, OPT_UNTIED},
    {"data", required_argument, NULL, OPT_DATA},
    {"train", required_argument, NULL, OPT_TRAIN},
    {"val", required_argument, NULL, OPT_VAL},
    {"out", required_argument, NULL, OPT_OUT},
    {"log", required_argument, NULL, OPT_LOG},
    {"no-log", no_argument, NULL, OPT_NO_LOG},
    {"save-every", required_argument, NULL, OPT_SAVE_EVERY},
    {"resume", no_argument, NULL, OPT_RESUME},
    {"stop-after", required_argument, NULL, OPT_STOP_AFTER},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"accum", required_argument, NULL, OPT_ACCUM},
    {"seq", required_argument, NULL, OPT_SEQ},
    {"lr", required_argument, NULL, OPT_LR},
    {"min-lr", required_argument, NULL, OPT_MIN_LR},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"weight-decay", required_argument, NULL, OPT_WD},
    {"clip", required_argument, NULL, OPT_CLIP},
    {"seed", required_argument, NULL, OPT_SEED},
    {"eval-every", required_argument, NULL, OPT_EVAL_EVERY},
    {"eval-windows", required_argument, NULL, OPT_EVAL_WINDOWS},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"arch", required_argument, NULL, OPT_ARCH},
    CLI_MOE_LONG_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    RETRO_TRAIN_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

static const char *CMD = "train";

/* ---- Ctrl-C ---- */

static volatile int g_interrupt;

static void on_signal(int sig) {
    (void)sig;
    if (g_interrupt) {
        static const char msg[] = "\njoule train: interrupted again: exiting without saving\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        _exit(EXIT_INTERRUPTED);
    }
    g_interrupt = 1;
    static const char msg[] =
        "\njoule train: interrupt: saving and stopping after this step (Ctrl-C again to exit at once)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
}

/* ---- progress ---- */

typedef struct {
    cli_progress bar;
    uint64_t start_step;
    bool resumed;
    double val_bpb;
    uint64_t val_step;
    char extra[160];
} train_ui;

static void format_extra(train_ui *ui, const joule_train_progress *p) {
    char val[32];
    if (isnan(ui->val_bpb)) snprintf(val, sizeof val, "-");
    else snprintf(val, sizeof val, "%.3f", ui->val_bpb);
    int n = 0;
    if (ui->resumed)
        n = snprintf(ui->extra, sizeof ui->extra, "step %" PRIu64 "/%" PRIu64 " ", p->step, p->total_steps);
    snprintf(ui->extra + n, sizeof ui->extra - (size_t)n, "loss %.3f val_bpb %s lr %.3g", p->loss, val, p->lr);
}

static void on_step(void *ctx, const joule_train_progress *p) {
    train_ui *ui = ctx;
    if (!isnan(p->val_loss)) {
        ui->val_bpb = p->val_loss / M_LN2;
        ui->val_step = p->step;
    }
    format_extra(ui, p);
    if (p->step < p->total_steps) /* the last step is shown by cli_progress_finish */
        cli_progress_update(&ui->bar, (double)(p->step - ui->start_step), ui->extra);
}

/* ---- helpers ---- */

static char *path_with_suffix(const char *path, const char *suffix) {
    const char *ext = ".safetensors";
    size_t n = strlen(path), e = strlen(ext);
    if (n > e && strcmp(path + n - e, ext) == 0) n -= e;
    char *out = malloc(n + strlen(suffix) + 1);
    if (!out) return NULL;
    memcpy(out, path, n);
    strcpy(out + n, suffix);
    return out;
}

static const char *sci(char *buf, size_t n, double v) {
    snprintf(buf, n, "%.3g", v);
    return buf;
}

/* A number field of the saved training options (checkpoint metadata, so untrusted): left
 * as it is when absent; 0, or EXIT_USAGE after one line when it is outside [lo, hi]. */
static int saved_num(const cJSON *o, const char *key, double lo, double hi, double *out, const char *path) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        return cli_error(EXIT_USAGE, CMD, "%s: saved option '%s' is not a number in [%g, %g]", path, key, lo, hi);
    }
    *out = v->valuedouble;
    return 0;
}

/* The same for a whole number. */
static int saved_int(const cJSON *o, const char *key, int lo, int hi, int *out, const char *path) {
    double v = *out;
    int rc = saved_num(o, key, lo, hi, &v, path);
    if (!rc && v != floor(v)) {
        return cli_error(EXIT_USAGE, CMD, "%s: saved option '%s' is not a whole number", path, key);
    }
    if (!rc) *out = (int)v;
    return rc;
}

static char *layer_summary(const joule_config *c) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%d layer%s, d_model %d, %d head%s, d_ff %d, ctx %d, %s", c->n_layers,
             c->n_layers == 1 ? "" : "s", c->d_model, c->n_heads, c->n_heads == 1 ? "" : "s", c->d_ff, c->ctx,
             c->tied ? "tied embedding" : "untied embedding");
    return buf;
}

/* Every file a save writes, checked before training so that a bad --out costs nothing. */
static int check_outputs(const char *out, const char *optim_path, const char *log_path) {
    char *next = joule_checkpoint_optim_next_path(out);
    if (!optim_path || !next) {
        free(next);
        return cli_error(EXIT_RUNTIME, CMD, "out of memory");
    }
    int rc = cli_check_output(CMD, out);
    if (!rc) rc = cli_check_output(CMD, optim_path);
    if (!rc) rc = cli_check_output(CMD, next);
    if (!rc && log_path) rc = cli_check_output(CMD, log_path);
    free(next);
    return rc;
}

#define INT_OPT(var, lo, hi, name) CLI_CHECK(cli_int_option(CMD, name, optarg, lo, hi, &(var)))

int cmd_train(int argc, char **argv) {
    /* model */
    const char *config_path = NULL;
    int layers = DEF_LAYERS, d_model = DEF_D_MODEL, heads = DEF_HEADS, d_ff = DEF_D_FF, ctx = DEF_CTX;
    bool layers_set = false, d_model_set = false, heads_set = false, d_ff_set = false, ctx_set = false;
    bool untied = false;
    /* data and output */
    const char *data_dir = NULL, *train_path = NULL, *val_path = NULL;
    const char *out = "runs/model.safetensors", *log_opt = NULL;
    bool no_log = false, resume = false;
    int save_every = 0;
    uint64_t stop_after = 0;
    /* budget */
    uint64_t steps = 0, tokens = 0;
    double flops = 0;
    int n_budgets = 0;
    /* optimisation */
    int batch = 8, accum = 1, seq = 0, warmup = -1, eval_every = 100, threads = 0;
    bool batch_set = false, accum_set = false, seq_set = false, seed_set = false;
    double lr = 1e-3, min_lr = -1, wd = 0.1, clip = 1.0;
    bool lr_set = false, wd_set = false, clip_set = false;
    uint64_t seed = 1, eval_windows = 64;
    cli_moe_opts moe_opts;
    memset(&moe_opts, 0, sizeof moe_opts);
    retro_train_cli rt;
    retro_train_cli_init(&rt);
    bool arch_given = false;

    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return 0;
        case OPT_STEPS:
            if (!cli_parse_u64(optarg, &steps) || steps == 0)
                return cli_usage_error(CMD, "--steps: '%s' is not a positive integer", optarg);
            n_budgets++;
            break;
        case OPT_TOKENS:
            if (!cli_parse_u64(optarg, &tokens) || tokens == 0)
                return cli_usage_error(CMD, "--tokens: '%s' is not a positive integer (k/M/G suffixes allowed)",
                                       optarg);
            n_budgets++;
            break;
        case OPT_FLOPS:
            CLI_CHECK(cli_range_option(CMD, "--flops", optarg, 1, JOULE_TRAIN_MAX_FLOPS, &flops));
            n_budgets++;
            break;
        case OPT_CONFIG: config_path = optarg; break;
        case OPT_LAYERS: INT_OPT(layers, 1, JOULE_MAX_LAYERS, "--layers"); layers_set = true; break;
        case OPT_D_MODEL: INT_OPT(d_model, 2, 65536, "--d-model"); d_model_set = true; break;
        case OPT_HEADS: INT_OPT(heads, 1, 65536, "--heads"); heads_set = true; break;
        case OPT_D_FF: INT_OPT(d_ff, 1, 1 << 20, "--d-ff"); d_ff_set = true; break;
        case OPT_CTX: INT_OPT(ctx, 1, 1 << 16, "--ctx"); ctx_set = true; break;
        case OPT_UNTIED: untied = true; break;
        case OPT_DATA: data_dir = optarg; break;
        case OPT_TRAIN: train_path = optarg; break;
        case OPT_VAL: val_path = optarg; break;
        case OPT_OUT: out = optarg; break;
        case OPT_LOG: log_opt = optarg; break;
        case OPT_NO_LOG: no_log = true; break;
        case OPT_SAVE_EVERY: INT_OPT(save_every, 0, INT32_MAX, "--save-every"); break;
        case OPT_RESUME: resume = true; break;
        case OPT_STOP_AFTER: CLI_CHECK(cli_u64_option(CMD, "--stop-after", optarg, &stop_after)); break;
        case OPT_BATCH: INT_OPT(batch, 1, 1 << 16, "--batch"); batch_set = true; break;
        case OPT_ACCUM: INT_OPT(accum, 1, 1 << 16, "--accum"); accum_set = true; break;
        case OPT_SEQ: INT_OPT(seq, 1, 1 << 16, "--seq"); seq_set = true; break;
        case OPT_LR:
            CLI_CHECK(cli_range_option(CMD, "--lr", optarg, JOULE_LR_MIN, JOULE_LR_MAX, &lr));
            lr_set = true;
            break;
        case OPT_MIN_LR: CLI_CHECK(cli_range_option(CMD, "--min-lr", optarg, 0, JOULE_LR_MAX, &min_lr)); break;
        case OPT_WARMUP: INT_OPT(warmup, 0, INT32_MAX, "--warmup"); break;
        case OPT_WD:
            CLI_CHECK(cli_range_option(CMD, "--weight-decay", optarg, 0, 100, &wd));
            wd_set = true;
            break;
        case OPT_CLIP:
            CLI_CHECK(cli_range_option(CMD, "--clip", optarg, 0, 1e6, &clip));
            clip_set = true;
            break;
        case OPT_SEED:
            CLI_CHECK(cli_u64_option(CMD, "--seed", optarg, &seed));
            seed_set = true;
            break;
        case OPT_EVAL_EVERY: INT_OPT(eval_every, 0, INT32_MAX, "--eval-every"); break;
        case OPT_EVAL_WINDOWS: CLI_CHECK(cli_u64_option(CMD, "--eval-windows", optarg, &eval_windows)); break;
        case OPT_THREADS: INT_OPT(threads, 0, 4096, "--threads"); break;
        case OPT_ARCH:
            if (strcmp(optarg, "dense") && strcmp(optarg, "moe") && strcmp(optarg, "retro"))
                return cli_usage_error(CMD, "--arch: '%s' is not dense, moe or retro", optarg);
            /* The kinds compose: --arch retro with MoE options gives a RETRO model whose
             * FFNs are MoE. */
            rt.retro = strcmp(optarg, "retro") == 0;
            moe_opts.arch = rt.retro ? NULL : strcmp(optarg, "moe") == 0 ? "moe" : "dense";
            arch_given = true;
            break;
        default:
            if (c >= OPT_MOE_FIRST && c < OPT_MOE_LAST) {
                int bad = cli_moe_parse(CMD, &moe_opts, c, optarg);
                if (bad) return bad;
                break;
            } else {
                int r = retro_train_cli_option(&rt, CMD, c, optarg);
                if (r < 0) return cli_bad_option(CMD, c, argv);
                if (r > 0) return r;
            }
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (n_budgets > 1) return cli_usage_error(CMD, "give exactly one budget: --steps, --tokens or --flops");
    if (n_budgets == 0 && !resume)
        return cli_usage_error(CMD, "no budget: give one of --steps N, --tokens N or --flops F");
    if (data_dir && (train_path || val_path)) return cli_usage_error(CMD, "give either --data or --train/--val");
    if (val_path && !train_path) return cli_usage_error(CMD, "--val needs --train");
    if (no_log && log_opt) return cli_usage_error(CMD, "give either --log or --no-log");
    bool model_flags = config_path || layers_set || d_model_set || heads_set || d_ff_set || ctx_set || untied ||
                       cli_moe_any(&moe_opts);

    /* Data files. */
    char train_buf[4096], val_buf[4096];
    if (!train_path) {
        const char *dir = data_dir ? data_dir : "data/default";
        snprintf(train_buf, sizeof train_buf, "%s/train.bin", dir);
        snprintf(val_buf, sizeof val_buf, "%s/val.bin", dir);
        train_path = train_buf;
        val_path = val_buf;
    }
    const char *hint = data_dir || strcmp(train_path, "data/default/train.bin")
                           ? "prepare it with 'joule data prepare'"
                           : "prepare it with 'joule data prepare --preset default' or give --data DIR";
    int rc = cli_check_input(CMD, train_path, hint);
    if (rc) return rc;
    if (val_path && (rc = cli_check_input(CMD, val_path, hint))) return rc;

    /* The model: from flags/config, or from the checkpoint when resuming. */
    joule_config cfg = joule_config_default(layers, d_model, heads, d_ff, ctx);
    if (config_path) {
        if ((rc = cli_check_input(CMD, config_path, NULL))) return rc;
        char *text = cli_read_file(config_path, NULL);
        if (!text) {
            return cli_error(EXIT_RUNTIME, CMD, "%s: %s", config_path, strerror(errno));
        }
        int st = joule_config_from_json(&cfg, text, config_path);
        free(text);
        if (st) return cli_fail(CMD, st);
        if (layers_set) cfg.n_layers = layers;
        if (d_model_set) cfg.d_model = d_model;
        if (heads_set) cfg.n_heads = heads;
        if (d_ff_set) cfg.d_ff = d_ff;
        if (ctx_set) cfg.ctx = ctx;
    }
    if (untied) cfg.tied = false;
    if (arch_given && rt.retro && moe_opts.given) moe_opts.arch = "moe";
    if ((rc = cli_moe_finish(CMD, &moe_opts, &cfg))) return rc;
    if ((rc = retro_train_cli_config(&rt, CMD, &cfg, resume, model_flags))) {
        retro_train_cli_free(&rt);
        return rc;
    }
    int st = joule_config_validate(&cfg, config_path ? config_path : "model options");
    if (st) {
        retro_train_cli_free(&rt);
        return cli_fail(CMD, st);
    }

    joule_model *m = NULL;
    joule_train_state saved;
    memset(&saved, 0, sizeof saved);
    cJSON *saved_opts = NULL;
    char *log_path = NULL, *optim_path = NULL;
    int ret = 0;
    if (resume) {
        if ((rc = cli_check_input(CMD, out, "nothing to resume (check --out)"))) return rc;
        if ((st = joule_checkpoint_recover(out)) || (st = joule_checkpoint_load(&m, out, &saved)))
            return cli_fail(CMD, st);
        if (saved.run_id[0] == '\0') {
            ret = cli_error(EXIT_USAGE, CMD, "%s: no training state to resume (not written by 'joule train')", out);
            goto done;
        }
        if (model_flags) {
            char *a = joule_config_to_json(&cfg), *b = joule_config_to_json(&m->cfg);
            bool same = a && b && strcmp(a, b) == 0;
            if (!same)
                cli_error(0, CMD, "%s: the checkpoint's model %s differs from the model options %s", out, b ? b : "?",
                          a ? a : "?");
            free(a);
            free(b);
            if (!same) {
                ret = EXIT_USAGE;
                goto done;
            }
        }
        cfg = m->cfg;
        /* Options not given come from the saved run, in the ranges the options have. */
        saved_opts = cJSON_Parse(saved.opts_json);
        if ((!batch_set && (ret = saved_int(saved_opts, "batch", 1, 1 << 16, &batch, out))) ||
            (!accum_set && (ret = saved_int(saved_opts, "accum", 1, 1 << 16, &accum, out))) ||
            (!seq_set && (ret = saved_int(saved_opts, "seq", 1, 1 << 16, &seq, out))) ||
            (!lr_set && (ret = saved_num(saved_opts, "lr", JOULE_LR_MIN, JOULE_LR_MAX, &lr, out))) ||
            (min_lr < 0 && !lr_set && (ret = saved_num(saved_opts, "min_lr", 0, JOULE_LR_MAX, &min_lr, out))) ||
            (!wd_set && (ret = saved_num(saved_opts, "weight_decay", 0, 100, &wd, out))) ||
            (!clip_set && (ret = saved_num(saved_opts, "grad_clip", 0, 1e6, &clip, out))) ||
            (warmup < 0 && (ret = saved_int(saved_opts, "warmup_steps", 0, INT32_MAX, &warmup, out))))
            goto done;
        if (!seed_set) seed = saved.seed;
        if (n_budgets == 0) steps = saved.total_steps;
    }
    if (!seq) seq = cfg.ctx;
    if (seq > cfg.ctx) {
        ret = cli_usage_error(CMD, "--seq %d is longer than the model's context %d", seq, cfg.ctx);
        goto done;
    }
    joule_train_opts o;
    joule_train_opts_init(&o);
    o.train_path = train_path;
    o.val_path = val_path;
    o.out_path = out;
    o.resume = resume;
    o.batch = batch;
    o.accum = accum;
    o.seq = seq;
    o.seed = seed;
    o.max_steps = steps;
    o.max_tokens = tokens;
    o.max_flops = flops;
    o.stop_after = stop_after;
    uint64_t total = joule_train_plan_steps(&o, &cfg);
    if (min_lr < 0) min_lr = lr / 10;
    if (warmup < 0) warmup = (int)(total / 5 < 100 ? total / 5 : 100);
    o.adam.lr = (float)lr;
    o.adam.min_lr = (float)min_lr;
    o.adam.weight_decay = (float)wd;
    o.adam.grad_clip = (float)clip;
    o.adam.warmup_steps = warmup;
    if (saved_opts) { /* betas and eps are not command-line options: keep the saved ones */
        double b1 = o.adam.beta1, b2 = o.adam.beta2, eps = o.adam.eps;
        if ((ret = saved_num(saved_opts, "beta1", 0, 0.99999, &b1, out)) ||
            (ret = saved_num(saved_opts, "beta2", 0, 0.99999, &b2, out)) ||
            (ret = saved_num(saved_opts, "eps", 1e-30, 1, &eps, out)))
            goto done;
        o.adam.beta1 = (float)b1;
        o.adam.beta2 = (float)b2;
        o.adam.eps = (float)eps;
    }
    o.eval_every = eval_every;
    o.eval_windows = eval_windows;
    o.save_every = save_every;
    o.interrupt = &g_interrupt;

    /* Output paths. */
    if (!no_log) {
        log_path = log_opt ? strdup(log_opt) : path_with_suffix(out, ".log.jsonl");
        if (!log_path) {
            ret = cli_error(EXIT_RUNTIME, CMD, "out of memory");
            goto done;
        }
    }
    if ((ret = cli_make_parent_dirs(CMD, out))) goto done;
    if (log_path && (ret = cli_make_parent_dirs(CMD, log_path))) goto done;
    optim_path = joule_checkpoint_optim_path(out);
    if ((ret = check_outputs(out, optim_path, log_path))) goto done;
    o.log_path = log_path;

    cli_setup_threads(threads);
    if (!m) {
        if ((st = joule_model_create(&m, &cfg))) {
            ret = cli_fail(CMD, st);
            goto done;
        }
        joule_model_init(m, seed);
    }
    if ((st = joule_model_alloc_train(m, batch))) {
        ret = cli_fail(CMD, st);
        goto done;
    }
    if ((ret = retro_train_cli_attach(&rt, CMD, m, &o, resume, train_path, val_path))) goto done;


    /* Summary of what is about to run. */
    joule_param_counts pc = joule_model_param_counts(m);
    uint64_t tok_step = (uint64_t)batch * (uint64_t)seq * (uint64_t)accum;
    double flops_step = 3.0 * (double)joule_model_forward_flops(&cfg, batch, seq) * accum;
    char b1[32], b2[32], b3[32], b4[32];
    printf("model: %s\n", layer_summary(&cfg));
    cli_moe_print_summary(m);
    printf("plan: %s params (%s non-embedding), %" PRIu64 " tokens/step (batch %d x seq %d x accum %d), "
           "%" PRIu64 " steps, %s FLOPs/step analytic, %d threads, OpenBLAS %s\n",
           cli_fmt_count(b1, sizeof b1, (double)pc.total), cli_fmt_count(b2, sizeof b2, (double)pc.non_embedding),
           tok_step, batch, seq, accum, total, sci(b3, sizeof b3, flops_step), joule_get_threads(),
           joule_blas_corename());
    if (resume)
        printf("resuming %s at step %" PRIu64 " of %" PRIu64 " (run %s)\n", out, saved.step, saved.total_steps,
               saved.run_id);
    fflush(stdout);
    if (resume && saved.step >= total && saved.total_steps == total) {
        printf("nothing to do: %s is already at step %" PRIu64 " of %" PRIu64 "\n", out, saved.step, total);
        goto done;
    }

    train_ui ui;
    memset(&ui, 0, sizeof ui);
    ui.start_step = saved.step;
    ui.resumed = resume;
    ui.val_bpb = NAN;
    o.on_step = on_step;
    o.ctx = &ui;
    cli_progress_start(&ui.bar, "train", "step", (double)(total - saved.step));

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    g_interrupt = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    o.peak_flops = cli_peak_flops();
    cli_energy energy;
    cli_energy_begin(&energy, "train");
    double t0 = joule_now();
    joule_train_progress last;
    memset(&last, 0, sizeof last);
    st = joule_train(m, &o, &last);
    double elapsed = joule_now() - t0;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (st) {
        if (ui.bar.tty && ui.bar.printed) fputc('\n', stderr);
        joule_energy_close(&energy.meters);
        ret = cli_fail(CMD, st);
        goto done;
    }
    format_extra(&ui, &last);
    cli_progress_finish(&ui.bar, (double)(last.step - saved.step), ui.extra);

    uint64_t run_steps = last.step - saved.step, run_tokens = last.tokens - saved.tokens;
    double step_wall = last.run_wall_s;
    printf("trained %" PRIu64 " steps (%" PRIu64 " of %" PRIu64 " done), %s tokens in %s (%s in steps): %s tok/s\n",
           run_steps, last.step, total, cli_fmt_count(b1, sizeof b1, (double)run_tokens),
           cli_fmt_duration(b2, sizeof b2, elapsed), cli_fmt_duration(b3, sizeof b3, step_wall),
           cli_fmt_count(b4, sizeof b4, step_wall > 0 ? (double)run_tokens / step_wall : 0));
    printf("FLOPs (whole run): counted %s, analytic %s, counted/analytic %.4f\n",
           sci(b1, sizeof b1, (double)last.flops), sci(b2, sizeof b2, (double)last.flops_analytic),
           last.flops_analytic ? (double)last.flops / (double)last.flops_analytic : 0.0);
    cli_print_mfu(stdout, (double)run_steps * flops_step, (double)(last.flops - saved.flops), step_wall,
                  o.peak_flops);
    cli_energy_end(&energy, run_tokens, 0, false, NULL);
    if (!val_path) snprintf(b3, sizeof b3, "n/a (no validation file)");
    else if (isnan(ui.val_bpb)) snprintf(b3, sizeof b3, "n/a (not evaluated)");
    else if (ui.val_step == last.step) snprintf(b3, sizeof b3, "%.4f", ui.val_bpb);
    else snprintf(b3, sizeof b3, "%.4f (at step %" PRIu64 ")", ui.val_bpb, ui.val_step);
    printf("final: train loss %.4f, val bpb %s\n", last.loss, b3);
    printf("checkpoint: %s (optimizer state: %s)\n", out, optim_path ? optim_path : "?");
    printf("log: %s\n", log_path ? log_path : "none");
    if (g_interrupt) {
        cli_error(0, CMD, "interrupted at step %" PRIu64 " of %" PRIu64 "; saved; add --resume to continue", last.step,
                  total);
        ret = EXIT_INTERRUPTED;
    } else if (last.step < total) {
        printf("stopped after step %" PRIu64 " of %" PRIu64 " (--stop-after); add --resume to continue\n",
               last.step, total);
    }
done:
    retro_train_cli_free(&rt);
    cJSON_Delete(saved_opts);
    free(log_path);
    free(optim_path);
    joule_model_free(m);
    return ret;
}
