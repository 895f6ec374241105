/* joule info — what a checkpoint holds: config, parameters, FLOPs, training state. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "retro_cli.h"
#include "joule/checkpoint.h"
#include "joule/model.h"
#include "joule/moe.h"
#include "joule/quant.h"

static const char USAGE[] =
    "Usage: joule info --model PATH [--json]\n"
    "\n"
    "Describes a checkpoint: its config (every field; layer kinds summarised), parameter\n"
    "counts (total, embedding, non-embedding), tensor count and file size, the training\n"
    "state saved with it (step, tokens, counted FLOPs, run id; none if the file\n"
    "was not written by training), and FLOPs per token: analytic forward FLOPs at full\n"
    "context (all matmuls, attention over the whole window), training FLOPs (3x forward)\n"
    "and 6N (N = non-embedding parameters) for comparison. For an MoE model, also the\n"
    "active parameters per token (all but the E - k experts a token skips in each MoE layer).\n"
    "Also the weights' precision (fp32, or bf16/int8 from 'joule quantize') with the kernels\n"
    "that run it, and the bytes of weights a batch-1 decode step reads (JSON: precision,\n"
    "decode_weight_bytes).\n"
    "\n"
    "Options:\n"
    "  --model PATH   checkpoint (.safetensors) to describe (required)\n"
    "  --json         print one JSON object instead of text\n"
    "  -h, --help     show this help and exit\n";

enum { OPT_MODEL = 256, OPT_JSON };

static const char *CMD = "info";

static const char *kind_name(joule_layer_kind k) {
    if (k.ffn == JOULE_FFN_MOE) return k.cca ? "MoE FFN + chunked cross-attention" : "MoE FFN";
    return k.cca ? "dense FFN + chunked cross-attention" : "dense FFN";
}

/* "0-3 dense FFN; 4 MoE FFN" */
static void layer_runs(const joule_config *c, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int l = 0; l < c->n_layers;) {
        int e = l;
        while (e + 1 < c->n_layers && c->kinds[e + 1].ffn == c->kinds[l].ffn && c->kinds[e + 1].cca == c->kinds[l].cca)
            e++;
        int w;
        if (e == l) w = snprintf(buf + used, n - used, "%s%d %s", used ? "; " : "", l, kind_name(c->kinds[l]));
        else w = snprintf(buf + used, n - used, "%s%d-%d %s", used ? "; " : "", l, e, kind_name(c->kinds[l]));
        if (w < 0 || (size_t)w >= n - used) break;
        used += (size_t)w;
        l = e + 1;
    }
}

/* What info reports of a checkpoint, gathered once for either form. */
typedef struct {
    const char *path;
    const joule_model *m;
    joule_train_state ts;
    uint64_t file_bytes;
    joule_param_counts pc;
    double fwd_tok, six_n; /* FLOPs per token */
    bool trained;
    char *optim_path;      /* NULL when out of memory */
    bool optim_present;
} info;

static void report_json(const info *in) {
    const joule_model *m = in->m;
    const joule_train_state *ts = &in->ts;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", in->path);
    cJSON_AddNumberToObject(o, "file_bytes", (double)in->file_bytes);
    char *cj = joule_config_to_json(&m->cfg);
    cJSON *cfgj = cj ? cJSON_Parse(cj) : NULL;
    free(cj);
    cJSON_AddItemToObject(o, "config", cfgj ? cfgj : cJSON_CreateNull());
    cJSON *p = cJSON_AddObjectToObject(o, "params");
    cJSON_AddNumberToObject(p, "total", (double)in->pc.total);
    cJSON_AddNumberToObject(p, "embedding", (double)in->pc.embedding);
    cJSON_AddNumberToObject(p, "non_embedding", (double)in->pc.non_embedding);
    cJSON_AddNumberToObject(p, "active", (double)joule_moe_active_params(m, false));
    cJSON_AddNumberToObject(p, "active_non_embedding", (double)joule_moe_active_params(m, true));
    cJSON_AddNumberToObject(o, "tensors", m->n_tensors);
    cJSON_AddStringToObject(o, "precision", joule_precision_name(m->quant ? m->quant->prec : JOULE_PREC_F32));
    cJSON_AddNumberToObject(o, "decode_weight_bytes", (double)joule_quant_decode_weight_bytes(m));
    cJSON *f = cJSON_AddObjectToObject(o, "flops_per_token");
    cJSON_AddNumberToObject(f, "forward", in->fwd_tok);
    cJSON_AddNumberToObject(f, "train", 3 * in->fwd_tok);
    cJSON_AddNumberToObject(f, "six_n", in->six_n);
    if (in->trained) {
        cJSON *t = cJSON_AddObjectToObject(o, "training");
        cJSON_AddNumberToObject(t, "step", (double)ts->step);
        cJSON_AddNumberToObject(t, "total_steps", (double)ts->total_steps);
        cJSON_AddNumberToObject(t, "tokens", (double)ts->tokens);
        cJSON_AddNumberToObject(t, "flops", (double)ts->flops);
        cJSON_AddNumberToObject(t, "seed", (double)ts->seed);
        cJSON_AddStringToObject(t, "run_id", ts->run_id);
        cJSON *opts = cJSON_Parse(ts->opts_json);
        cJSON_AddItemToObject(t, "options", opts ? opts : cJSON_CreateString(ts->opts_json));
    } else {
        cJSON_AddNullToObject(o, "training");
    }
    if (in->optim_path && in->optim_present) cJSON_AddStringToObject(o, "optimizer_file", in->optim_path);
    else cJSON_AddNullToObject(o, "optimizer_file");
    cli_print_json(o);
}

static void print_training(const joule_train_state *ts) {
    char a[32];
    printf("training:   step %" PRIu64 " of %" PRIu64 ", %s tokens, %.3g FLOPs counted, seed %" PRIu64 ", run %s\n",
           ts->step, ts->total_steps, cli_fmt_count(a, sizeof a, (double)ts->tokens), (double)ts->flops, ts->seed,
           ts->run_id);
    static char esc[4 * sizeof ts->opts_json]; /* text from the file, shown escaped */
    printf("            options %s\n", joule_escape(esc, sizeof esc, ts->opts_json));
}

static void report_text(const info *in) {
    const joule_model *m = in->m;
    const joule_config *cfg = &m->cfg;
    const joule_param_counts *pc = &in->pc;
    char a[32], b[32], d[32], runs[1024];
    layer_runs(cfg, runs, sizeof runs);
    printf("checkpoint: %s (%s bytes, %d tensors)\n", in->path, cli_fmt_count(a, sizeof a, (double)in->file_bytes),
           m->n_tensors);
    printf("config:     arch %s, %d layers, d_model %d, %d heads (head size %d), d_ff %d, ctx %d, vocab %d, %s\n",
           cfg->arch, cfg->n_layers, cfg->d_model, cfg->n_heads, cfg->d_model / cfg->n_heads, cfg->d_ff, cfg->ctx,
           cfg->vocab, cfg->tied ? "tied embedding" : "untied embedding");
    printf("            rope_theta %g, norm_eps %g, init_std %g\n", cfg->rope_theta, cfg->norm_eps, cfg->init_std);
    printf("layers:     %s\n", runs);
    printf("precision:  %s (%s kernels), %.1f MB of weights read per decoded token\n",
           joule_precision_name(m->quant ? m->quant->prec : JOULE_PREC_F32),
           joule_quant_kernel_name(m->quant ? m->quant->prec : JOULE_PREC_F32),
           (double)joule_quant_decode_weight_bytes(m) / 1e6);
    printf("params:     %" PRIu64 " total (%s), embedding %" PRIu64 " (%s), non-embedding %" PRIu64 " (%s)\n",
           pc->total, cli_fmt_count(a, sizeof a, (double)pc->total), pc->embedding,
           cli_fmt_count(b, sizeof b, (double)pc->embedding), pc->non_embedding,
           cli_fmt_count(d, sizeof d, (double)pc->non_embedding));
    if (joule_config_has_moe(cfg))
        printf("active:     %" PRIu64 " params per token (%s; non-embedding %s): top-%d of %d experts in each "
               "MoE layer\n",
               joule_moe_active_params(m, false), cli_fmt_count(a, sizeof a, (double)joule_moe_active_params(m, false)),
               cli_fmt_count(b, sizeof b, (double)joule_moe_active_params(m, true)), cfg->moe.top_k,
               cfg->moe.n_experts);
    printf("FLOPs/token at ctx %d: forward %s, training %s (3x forward); 6N = %s\n", cfg->ctx,
           cli_fmt_count(a, sizeof a, in->fwd_tok), cli_fmt_count(b, sizeof b, 3 * in->fwd_tok),
           cli_fmt_count(d, sizeof d, in->six_n));
    retro_cli_print_terms(cfg);
    if (in->trained) print_training(&in->ts);
    else printf("training:   none (not written by 'joule train')\n");
    printf("optimizer:  %s\n", in->optim_present ? in->optim_path : "none");
}

/* The command line: --model into *path; 0, -1 after --help, or the exit status of bad usage. */
static int parse_args(int argc, char **argv, const char **path, bool *json) {
    static const struct option LONG[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return -1;
        case OPT_MODEL: *path = optarg; break;
        case OPT_JSON: *json = true; break;
        default: return cli_bad_option(CMD, c, argv);
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!*path) return cli_usage_error(CMD, "--model PATH is required");
    return cli_check_input(CMD, *path, NULL);
}

int cmd_info(int argc, char **argv) {
    info in;
    memset(&in, 0, sizeof in);
    bool json = false;
    int rc = parse_args(argc, argv, &in.path, &json);
    if (rc) return rc < 0 ? 0 : rc;
    joule_model *m = NULL;
    int st = joule_checkpoint_load(&m, in.path, &in.ts);
    if (st) return cli_fail(CMD, st);
    const joule_config *cfg = &m->cfg;
    struct stat sb;
    in.m = m;
    in.file_bytes = stat(in.path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    in.pc = joule_model_param_counts(m);
    in.fwd_tok = (double)joule_model_forward_flops(cfg, 1, cfg->ctx) / cfg->ctx;
    in.six_n = 6.0 * (double)in.pc.non_embedding;
    in.trained = in.ts.run_id[0] != '\0';
    in.optim_path = joule_checkpoint_optim_path(in.path);
    in.optim_present = in.optim_path && stat(in.optim_path, &sb) == 0;
    if (json) report_json(&in);
    else report_text(&in);
    free(in.optim_path);
    joule_model_free(m);
    return 0;
}
