/* joule train — train a model under a step, token or FLOP budget. */
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
#include "joule/dist.h"
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
    "  --threads N        threads for BLAS and joule's loops; 0 = all cores, divided among\n"
    "                     the ranks on the node under mpirun (default 0)\n"
    "  -h, --help         show this help and exit\n"
    "\n"
    "Data parallel: 'mpirun -np N joule train ...' runs N ranks, each drawing accum\n"
    "micro-batches of the step (rank r the step's micro-batches r*accum .. r*accum+accum-1),\n"
    "gradients summed over ranks with MPI_Allreduce: the same batches as one process with\n"
    "--accum N x accum. Rank 0 alone prints, validates and writes the checkpoint and log;\n"
    "--resume needs the same N and a checkpoint every rank can read.\n"
    "  --expert-parallel  MoE only, under mpirun -np N (N must divide the experts; N = 1 does\n"
    "                     nothing): each rank holds E/N experts of each MoE layer and takes\n"
    "                     batch windows of each micro-batch of N x batch; routed rows travel\n"
    "                     by MPI_Alltoallv. Equals one process with --batch N x batch\n"
    RETRO_TRAIN_USAGE;

enum {
    OPT_STEPS = 256, OPT_TOKENS, OPT_FLOPS, OPT_CONFIG, OPT_LAYERS, OPT_D_MODEL, OPT_HEADS, OPT_D_FF, OPT_CTX,
    OPT_UNTIED, OPT_DATA, OPT_TRAIN, OPT_VAL, OPT_OUT, OPT_LOG, OPT_NO_LOG, OPT_SAVE_EVERY, OPT_RESUME,
    OPT_STOP_AFTER, OPT_BATCH, OPT_ACCUM, OPT_SEQ, OPT_LR, OPT_MIN_LR, OPT_WARMUP, OPT_WD, OPT_CLIP, OPT_SEED,
    OPT_EVAL_EVERY, OPT_EVAL_WINDOWS, OPT_THREADS, OPT_ARCH, OPT_EXPERT_PARALLEL,
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
    {"expert-parallel", no_argument, NULL, OPT_EXPERT_PARALLEL},
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
    uint64_t start_step, start_tokens, start_flops; /* where this call began */
    bool resumed;
    double val_bpb;
    uint64_t val_step;
    bool quiet; /* a rank other than 0 of a data-parallel run */
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
    if (!ui->quiet && p->step < p->total_steps) /* the last step is shown by cli_progress_finish */
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

/* Analytic FLOPs of one training step: 3 x the forward of each micro-batch, all ranks'. */
static double step_flops(const joule_config *c, const joule_train_opts *o) {
    return 3.0 * (double)joule_model_forward_flops(c, o->batch, o->seq) * o->accum * joule_dist_size();
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

/* The command line: training options parsed straight into o, the rest beside them. */
typedef struct {
    joule_train_opts o;
    unsigned given;      /* JOULE_TRAIN_GIVEN_* of the options given (the rest may come from a resume) */
    int n_budgets;
    /* model */
    const char *config_path;
    int sizes[5];        /* layers, d_model, heads, d_ff, ctx */
    unsigned sizes_set;  /* bit i: sizes[i] given */
    bool untied, arch_given;
    cli_moe_opts moe;
    retro_train_cli rt;
    /* data and output */
    const char *data_dir, *log_opt;
    char train_buf[4096], val_buf[4096];
    bool no_log;
    int threads;
} train_args;

enum { SIZE_LAYERS, SIZE_D_MODEL, SIZE_HEADS, SIZE_D_FF, SIZE_CTX };

static void args_init(train_args *a) {
    memset(a, 0, sizeof *a);
    joule_train_opts_init(&a->o);
    a->o.out_path = "runs/model.safetensors";
    a->o.interrupt = &g_interrupt;
    a->o.data_parallel = 1; /* under mpirun, the ranks train one model together */
    int sizes[5] = {DEF_LAYERS, DEF_D_MODEL, DEF_HEADS, DEF_D_FF, DEF_CTX};
    memcpy(a->sizes, sizes, sizeof sizes);
    retro_train_cli_init(&a->rt);
}

static bool model_flags(const train_args *a) {
    return a->config_path || a->sizes_set || a->untied || cli_moe_any(&a->moe);
}

#define INT_OPT(var, lo, hi, name) CLI_CHECK(cli_int_option(CMD, name, optarg, lo, hi, &(var)))

/* One size of the model: sizes[i] in [lo, hi]. */
static int size_option(train_args *a, int i, int lo, int hi, const char *name) {
    a->sizes_set |= 1u << i;
    return cli_int_option(CMD, name, optarg, lo, hi, &a->sizes[i]);
}

/* A number option of AdamW into *dst, within [lo, hi]; *v gets the double given. */
static int real_option(train_args *a, unsigned bit, const char *name, double lo, double hi, float *dst, double *v) {
    CLI_CHECK(cli_range_option(CMD, name, optarg, lo, hi, v));
    *dst = (float)*v;
    a->given |= bit;
    return 0;
}

static int budget_option(train_args *a, int c) {
    joule_train_opts *o = &a->o;
    a->n_budgets++;
    a->given |= JOULE_TRAIN_GIVEN_BUDGET;
    if (c == OPT_FLOPS) return cli_range_option(CMD, "--flops", optarg, 1, JOULE_TRAIN_MAX_FLOPS, &o->max_flops);
    uint64_t *dst = c == OPT_STEPS ? &o->max_steps : &o->max_tokens;
    if (cli_parse_u64(optarg, dst) && *dst) return 0;
    if (c == OPT_STEPS) return cli_usage_error(CMD, "--steps: '%s' is not a positive integer", optarg);
    return cli_usage_error(CMD, "--tokens: '%s' is not a positive integer (k/M/G suffixes allowed)", optarg);
}

static int arch_option(train_args *a) {
    if (strcmp(optarg, "dense") && strcmp(optarg, "moe") && strcmp(optarg, "retro"))
        return cli_usage_error(CMD, "--arch: '%s' is not dense, moe or retro", optarg);
    /* The kinds compose: --arch retro with MoE options gives a RETRO model whose FFNs are MoE. */
    a->rt.retro = strcmp(optarg, "retro") == 0;
    a->moe.arch = a->rt.retro ? NULL : strcmp(optarg, "moe") == 0 ? "moe" : "dense";
    a->arch_given = true;
    return 0;
}

/* One option of the command line; 0, or the exit status after one line naming it. */
static int parse_option(void *args, int c, char **argv) {
    train_args *a = args;
    joule_train_opts *o = &a->o;
    double v;
    switch (c) {
    case OPT_STEPS: case OPT_TOKENS: case OPT_FLOPS: return budget_option(a, c);
    case OPT_CONFIG: a->config_path = optarg; return 0;
    case OPT_LAYERS: return size_option(a, SIZE_LAYERS, 1, JOULE_MAX_LAYERS, "--layers");
    case OPT_D_MODEL: return size_option(a, SIZE_D_MODEL, 2, 65536, "--d-model");
    case OPT_HEADS: return size_option(a, SIZE_HEADS, 1, 65536, "--heads");
    case OPT_D_FF: return size_option(a, SIZE_D_FF, 1, 1 << 20, "--d-ff");
    case OPT_CTX: return size_option(a, SIZE_CTX, 1, 1 << 16, "--ctx");
    case OPT_UNTIED: a->untied = true; return 0;
    case OPT_DATA: a->data_dir = optarg; return 0;
    case OPT_TRAIN: o->train_path = optarg; return 0;
    case OPT_VAL: o->val_path = optarg; return 0;
    case OPT_OUT: o->out_path = optarg; return 0;
    case OPT_LOG: a->log_opt = optarg; return 0;
    case OPT_NO_LOG: a->no_log = true; return 0;
    case OPT_SAVE_EVERY: INT_OPT(o->save_every, 0, INT32_MAX, "--save-every"); return 0;
    case OPT_RESUME: o->resume = 1; return 0;
    case OPT_STOP_AFTER: return cli_u64_option(CMD, "--stop-after", optarg, &o->stop_after);
    case OPT_BATCH: a->given |= JOULE_TRAIN_GIVEN_BATCH; return cli_int_option(CMD, "--batch", optarg, 1, 1 << 16, &o->batch);
    case OPT_ACCUM: a->given |= JOULE_TRAIN_GIVEN_ACCUM; return cli_int_option(CMD, "--accum", optarg, 1, 1 << 16, &o->accum);
    case OPT_SEQ: a->given |= JOULE_TRAIN_GIVEN_SEQ; return cli_int_option(CMD, "--seq", optarg, 1, 1 << 16, &o->seq);
    case OPT_LR:
        CLI_CHECK(real_option(a, JOULE_TRAIN_GIVEN_LR, "--lr", JOULE_LR_MIN, JOULE_LR_MAX, &o->adam.lr, &v));
        if (!(a->given & JOULE_TRAIN_GIVEN_MIN_LR)) o->adam.min_lr = joule_adamw_min_lr(v);
        return 0;
    case OPT_MIN_LR: return real_option(a, JOULE_TRAIN_GIVEN_MIN_LR, "--min-lr", 0, JOULE_LR_MAX, &o->adam.min_lr, &v);
    case OPT_WARMUP:
        a->given |= JOULE_TRAIN_GIVEN_WARMUP;
        return cli_int_option(CMD, "--warmup", optarg, 0, INT32_MAX, &o->adam.warmup_steps);
    case OPT_WD: return real_option(a, JOULE_TRAIN_GIVEN_WEIGHT_DECAY, "--weight-decay", 0, 100, &o->adam.weight_decay, &v);
    case OPT_CLIP: return real_option(a, JOULE_TRAIN_GIVEN_GRAD_CLIP, "--clip", 0, 1e6, &o->adam.grad_clip, &v);
    case OPT_SEED: a->given |= JOULE_TRAIN_GIVEN_SEED; return cli_u64_option(CMD, "--seed", optarg, &o->seed);
    case OPT_EVAL_EVERY: return cli_int_option(CMD, "--eval-every", optarg, 0, INT32_MAX, &o->eval_every);
    case OPT_EVAL_WINDOWS: return cli_u64_option(CMD, "--eval-windows", optarg, &o->eval_windows);
    case OPT_THREADS: return cli_int_option(CMD, "--threads", optarg, 0, 4096, &a->threads);
    case OPT_ARCH: return arch_option(a);
    case OPT_EXPERT_PARALLEL: o->expert_parallel = 1; return 0;
    }
    if (c >= OPT_MOE_FIRST && c < OPT_MOE_LAST) return cli_moe_parse(CMD, &a->moe, c, optarg);
    int r = retro_train_cli_option(&a->rt, CMD, c, optarg);
    return r < 0 ? cli_bad_option(CMD, c, argv) : r;
}

/* The command line into a; 0, -1 after --help, or the exit status of bad usage. Also
 * checks the input files and fills in the default data paths. */
static int parse_args(int argc, char **argv, train_args *a) {
    joule_train_opts *o = &a->o;
    CLI_CHECK(cli_parse_options(argc, argv, CMD, ":h", LONG, USAGE, parse_option, a));
    if (a->n_budgets > 1) return cli_usage_error(CMD, "give exactly one budget: --steps, --tokens or --flops");
    if (a->n_budgets == 0 && !o->resume)
        return cli_usage_error(CMD, "no budget: give one of --steps N, --tokens N or --flops F");
    if (a->data_dir && (o->train_path || o->val_path)) return cli_usage_error(CMD, "give either --data or --train/--val");
    if (o->val_path && !o->train_path) return cli_usage_error(CMD, "--val needs --train");
    if (a->no_log && a->log_opt) return cli_usage_error(CMD, "give either --log or --no-log");
    if (!o->train_path) {
        const char *dir = a->data_dir ? a->data_dir : "data/default";
        snprintf(a->train_buf, sizeof a->train_buf, "%s/train.bin", dir);
        snprintf(a->val_buf, sizeof a->val_buf, "%s/val.bin", dir);
        o->train_path = a->train_buf;
        o->val_path = a->val_buf;
    }
    const char *hint = a->data_dir || strcmp(o->train_path, "data/default/train.bin")
                           ? "prepare it with 'joule data prepare'"
                           : "prepare it with 'joule data prepare --preset default' or give --data DIR";
    CLI_CHECK(cli_check_input(CMD, o->train_path, hint));
    return o->val_path ? cli_check_input(CMD, o->val_path, hint) : 0;
}

/* The model the options describe: the sizes, over a --config file's, then MoE and RETRO. */
static int build_config(train_args *a, joule_config *cfg) {
    const int *s = a->sizes;
    *cfg = joule_config_default(s[SIZE_LAYERS], s[SIZE_D_MODEL], s[SIZE_HEADS], s[SIZE_D_FF], s[SIZE_CTX]);
    if (a->config_path) {
        CLI_CHECK(cli_check_input(CMD, a->config_path, NULL));
        char *text = cli_read_file(a->config_path, NULL);
        if (!text) return cli_error(EXIT_RUNTIME, CMD, "%s: %s", a->config_path, strerror(errno));
        int st = joule_config_from_json(cfg, text, a->config_path);
        free(text);
        if (st) return cli_fail(CMD, st);
        int *f[5] = {&cfg->n_layers, &cfg->d_model, &cfg->n_heads, &cfg->d_ff, &cfg->ctx};
        for (int i = 0; i < 5; i++)
            if (a->sizes_set & (1u << i)) *f[i] = s[i];
    }
    if (a->untied) cfg->tied = false;
    if (a->arch_given && a->rt.retro && a->moe.given) a->moe.arch = "moe";
    CLI_CHECK(cli_moe_finish(CMD, &a->moe, cfg));
    CLI_CHECK(retro_train_cli_config(&a->rt, CMD, cfg, a->o.resume, model_flags(a)));
    int st = joule_config_validate(cfg, a->config_path ? a->config_path : "model options");
    return st ? cli_fail(CMD, st) : 0;
}

/* --expert-parallel on this model and job: refused with one line (printed by rank 0 alone,
 * since every rank reaches the same verdict) for a model without experts, a RETRO model,
 * or experts that do not split evenly over the ranks. */
static int check_expert_parallel(const joule_config *cfg) {
    bool moe = false, retro = false;
    for (int l = 0; l < cfg->n_layers; l++) {
        moe |= cfg->kinds[l].ffn == JOULE_FFN_MOE;
        retro |= cfg->kinds[l].cca;
    }
    const int n = joule_dist_size();
    const char *why = !moe ? "needs an MoE model (--arch moe); this one is dense"
                      : retro ? "is not supported for RETRO models"
                      : cfg->moe.n_experts % n ? "needs the experts to split evenly over the ranks" : NULL;
    if (!why) return 0;
    if (joule_dist_rank() != 0) return EXIT_USAGE;
    if (moe && !retro)
        return cli_usage_error(CMD, "--expert-parallel: %d experts do not split over %d ranks (E %% N must be 0)",
                               cfg->moe.n_experts, n);
    return cli_usage_error(CMD, "--expert-parallel %s", why);
}

/* Resuming: the model and training state saved at --out, which model options given must
 * match; options not given come from the saved run (joule_train_opts_resume). */
static int load_saved(train_args *a, joule_config *cfg, joule_model **m, joule_train_state *saved) {
    const char *out = a->o.out_path;
    CLI_CHECK(cli_check_input(CMD, out, "nothing to resume (check --out)"));
    /* rank 0 alone finishes an interrupted save (renames); the others wait, then read */
    int st = joule_dist_rank() == 0 ? joule_checkpoint_recover(out) : JOULE_OK;
    if (st || (st = joule_dist_barrier()) || (st = joule_checkpoint_load(m, out, saved))) return cli_fail(CMD, st);
    if ((*m)->quant) return cli_quantised_refusal(CMD, out, *m);
    if (saved->run_id[0] == '\0')
        return cli_error(EXIT_USAGE, CMD, "%s: no training state to resume (not written by 'joule train')", out);
    if (model_flags(a)) {
        char *want = joule_config_to_json(cfg), *have = joule_config_to_json(&(*m)->cfg);
        bool same = want && have && strcmp(want, have) == 0;
        if (!same)
            cli_error(0, CMD, "%s: the checkpoint's model %s differs from the model options %s", out,
                      have ? have : "?", want ? want : "?");
        free(want);
        free(have);
        if (!same) return EXIT_USAGE;
    }
    *cfg = (*m)->cfg;
    st = joule_train_opts_resume(&a->o, saved, a->given, out);
    return st ? cli_fail(CMD, st) : 0;
}

/* The log path, the folders, and every file a save writes, checked before training so that
 * a bad --out costs nothing. *log_path and *optim_path: caller frees. */
static int prepare_outputs(const train_args *a, char **log_path, char **optim_path) {
    const char *out = a->o.out_path;
    if (!a->no_log) {
        *log_path = a->log_opt ? strdup(a->log_opt) : path_with_suffix(out, ".log.jsonl");
        if (!*log_path) return cli_error(EXIT_RUNTIME, CMD, "out of memory");
    }
    *optim_path = joule_checkpoint_optim_path(out);
    if (joule_dist_rank() != 0) return *optim_path ? 0 : cli_error(EXIT_RUNTIME, CMD, "out of memory");
    CLI_CHECK(cli_make_parent_dirs(CMD, out));
    if (*log_path) CLI_CHECK(cli_make_parent_dirs(CMD, *log_path));
    return check_outputs(out, *optim_path, *log_path);
}

/* The model and what is about to run, before the progress bar. */
static void print_plan(const joule_model *m, const joule_config *cfg, const joule_train_opts *o, uint64_t total,
                       const joule_train_state *saved) {
    joule_param_counts pc = joule_model_param_counts(m);
    uint64_t tok_step = (uint64_t)o->batch * (uint64_t)o->seq * (uint64_t)o->accum * (uint64_t)joule_dist_size();
    char b1[32], b2[32], b3[32];
    printf("model: %s\n", layer_summary(cfg));
    cli_moe_print_summary(m);
    printf("plan: %s params (%s non-embedding), %" PRIu64 " tokens/step (batch %d x seq %d x accum %d), "
           "%" PRIu64 " steps, %s FLOPs/step analytic, %d threads, OpenBLAS %s\n",
           cli_fmt_count(b1, sizeof b1, (double)pc.total), cli_fmt_count(b2, sizeof b2, (double)pc.non_embedding),
           tok_step, o->batch, o->seq, o->accum, total, sci(b3, sizeof b3, step_flops(cfg, o)), joule_get_threads(),
           joule_blas_corename());
    if (joule_dist_size() > 1 && o->expert_parallel)
        printf("expert parallel: %d ranks x batch %d x accum %d, %d of %d experts per rank, routed rows by "
               "MPI_Alltoallv, the rest all-reduced (as one process with --batch %d)\n",
               joule_dist_size(), o->batch, o->accum, cfg->moe.n_experts / joule_dist_size(), cfg->moe.n_experts,
               o->batch * joule_dist_size());
    else if (joule_dist_size() > 1)
        printf("data parallel: %d ranks x batch %d x accum %d, gradients summed with MPI_Allreduce\n",
               joule_dist_size(), o->batch, o->accum);
    else if (o->expert_parallel)
        printf("expert parallel: 1 rank, nothing to split (runs as one process)\n");
    if (o->resume)
        printf("resuming %s at step %" PRIu64 " of %" PRIu64 " (run %s)\n", o->out_path, saved->step,
               saved->total_steps, saved->run_id);
    fflush(stdout);
}

/* joule_train with Ctrl-C caught (save and stop) and the energy window around it. */
static int run_training(joule_model *m, joule_train_opts *o, train_ui *ui, uint64_t total, cli_energy *energy,
                        joule_train_progress *last, double *elapsed) {
    o->on_step = on_step;
    o->ctx = ui;
    if (!ui->quiet) cli_progress_start(&ui->bar, "train", "step", (double)(total - ui->start_step));
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    g_interrupt = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    o->peak_flops = cli_peak_flops();
    cli_energy_begin(energy, "train");
    double t0 = joule_now();
    memset(last, 0, sizeof *last);
    int st = joule_train(m, o, last);
    *elapsed = joule_now() - t0;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (st) {
        if (!ui->quiet && ui->bar.tty && ui->bar.printed) fputc('\n', stderr);
        joule_energy_close(&energy->meters);
        return cli_fail(CMD, st);
    }
    format_extra(ui, last);
    if (!ui->quiet) cli_progress_finish(&ui->bar, (double)(last->step - ui->start_step), ui->extra);
    return 0;
}

/* The energy line; under mpirun rank 0's, then every rank's meter or model summed (each
 * rank measures with its own meters, labelled with their method). */
static void report_energy(cli_energy *energy, uint64_t tokens) {
    joule_energy_report er;
    memset(&er, 0, sizeof er);
    er.joules = NAN;
    cli_energy_end(energy, tokens / (uint64_t)joule_dist_size(), 0, false, &er); /* this rank's tokens */
    if (joule_dist_size() < 2) return;
    double sum[2] = {isfinite(er.joules) ? er.joules : 0, isfinite(er.joules) ? 0 : 1};
    if (joule_dist_allreduce_sum_f64(sum, 2) != JOULE_OK) {
        printf("energy, all ranks: not summed (%s)\n", joule_last_error());
        return;
    }
    if (sum[1] > 0) printf("energy, all %d ranks: not measured on %g rank(s)\n", joule_dist_size(), sum[1]);
    else
        printf("energy, all %d ranks: %.4g J [%s per rank, summed over ranks], %.4g J/token\n", joule_dist_size(),
               sum[0], er.method, tokens ? sum[0] / (double)tokens : 0.0);
}

/* What the run did: throughput, FLOPs, MFU, energy, losses, files; the exit status. */
static int report(const joule_config *cfg, const joule_train_opts *o, const train_ui *ui, const joule_train_progress *last,
                  uint64_t total, double elapsed, cli_energy *energy, const char *optim_path) {
    uint64_t run_steps = last->step - ui->start_step, run_tokens = last->tokens - ui->start_tokens;
    double step_wall = last->run_wall_s;
    char b1[32], b2[32], b3[32], b4[32];
    printf("trained %" PRIu64 " steps (%" PRIu64 " of %" PRIu64 " done), %s tokens in %s (%s in steps): %s tok/s\n",
           run_steps, last->step, total, cli_fmt_count(b1, sizeof b1, (double)run_tokens),
           cli_fmt_duration(b2, sizeof b2, elapsed), cli_fmt_duration(b3, sizeof b3, step_wall),
           cli_fmt_count(b4, sizeof b4, step_wall > 0 ? (double)run_tokens / step_wall : 0));
    printf("FLOPs (whole run): counted %s, analytic %s, counted/analytic %.4f\n",
           sci(b1, sizeof b1, (double)last->flops), sci(b2, sizeof b2, (double)last->flops_analytic),
           last->flops_analytic ? (double)last->flops / (double)last->flops_analytic : 0.0);
    cli_print_mfu(stdout, (double)run_steps * step_flops(cfg, o), (double)(last->flops - ui->start_flops),
                  step_wall, o->peak_flops);
    report_energy(energy, run_tokens);
    if (!o->val_path) snprintf(b3, sizeof b3, "n/a (no validation file)");
    else if (isnan(ui->val_bpb)) snprintf(b3, sizeof b3, "n/a (not evaluated)");
    else if (ui->val_step == last->step) snprintf(b3, sizeof b3, "%.4f", ui->val_bpb);
    else snprintf(b3, sizeof b3, "%.4f (at step %" PRIu64 ")", ui->val_bpb, ui->val_step);
    printf("final: train loss %.4f, val bpb %s\n", last->loss, b3);
    printf("checkpoint: %s (optimizer state: %s)\n", o->out_path, optim_path ? optim_path : "?");
    printf("log: %s\n", o->log_path ? o->log_path : "none");
    if (g_interrupt) {
        cli_error(0, CMD, "interrupted at step %" PRIu64 " of %" PRIu64 "; saved; add --resume to continue",
                  last->step, total);
        return EXIT_INTERRUPTED;
    }
    if (last->step < total)
        printf("stopped after step %" PRIu64 " of %" PRIu64 " (--stop-after); add --resume to continue\n",
               last->step, total);
    return 0;
}

/* From the parsed command line to the end of training: the model (new or resumed), the
 * outputs, the plan, the run and its report. */
static int train(train_args *a, joule_model **m, char **log_path, char **optim_path) {
    joule_train_opts *o = &a->o;
    joule_config cfg;
    joule_train_state saved;
    memset(&saved, 0, sizeof saved);
    CLI_CHECK(build_config(a, &cfg));
    if (o->resume) CLI_CHECK(load_saved(a, &cfg, m, &saved));
    if (o->expert_parallel) CLI_CHECK(check_expert_parallel(&cfg));
    if (!o->seq) o->seq = cfg.ctx;
    if (o->seq > cfg.ctx) return cli_usage_error(CMD, "--seq %d is longer than the model's context %d", o->seq, cfg.ctx);
    uint64_t total = joule_train_plan_steps(o, &cfg);
    CLI_CHECK(prepare_outputs(a, log_path, optim_path));
    o->log_path = *log_path;

    cli_setup_threads(a->threads);
    int st;
    if (!*m) {
        if ((st = joule_model_create(m, &cfg))) return cli_fail(CMD, st);
        joule_model_init(*m, o->seed);
    }
    if ((st = joule_model_alloc_train(*m, o->batch))) return cli_fail(CMD, st);
    CLI_CHECK(retro_train_cli_attach(&a->rt, CMD, *m, o, o->resume, o->train_path, o->val_path));
    print_plan(*m, &cfg, o, total, &saved);
    if (o->resume && saved.step >= total && saved.total_steps == total) {
        printf("nothing to do: %s is already at step %" PRIu64 " of %" PRIu64 "\n", o->out_path, saved.step, total);
        return 0;
    }

    train_ui ui;
    memset(&ui, 0, sizeof ui);
    ui.start_step = saved.step;
    ui.start_tokens = saved.tokens;
    ui.start_flops = saved.flops;
    ui.resumed = o->resume;
    ui.val_bpb = NAN;
    ui.quiet = joule_dist_rank() != 0;
    cli_energy energy;
    joule_train_progress last;
    double elapsed;
    CLI_CHECK(run_training(*m, o, &ui, total, &energy, &last, &elapsed));
    return report(&cfg, o, &ui, &last, total, elapsed, &energy, *optim_path);
}

int cmd_train(int argc, char **argv) {
    /* data parallel: rank 0 alone prints (errors still come from the rank that has them) */
    if (joule_dist_rank() != 0 && !freopen("/dev/null", "w", stdout)) return cli_error(EXIT_RUNTIME, CMD, "/dev/null: cannot open");
    train_args a;
    args_init(&a);
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    joule_model *m = NULL;
    char *log_path = NULL, *optim_path = NULL;
    rc = train(&a, &m, &log_path, &optim_path);
    retro_train_cli_free(&a.rt);
    free(log_path);
    free(optim_path);
    joule_model_free(m);
    return rc;
}
