/* joule account — parameters, FLOPs, memory, time, energy and CO2 of a configuration;
 * --meters lists the energy meters this machine offers. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/account.h"
#include "joule/checkpoint.h"
#include "joule/quant.h"
#include "joule/ops.h"

static const char USAGE[] =
    "Usage: joule account (--config FILE | --preset NAME | --model CHECKPOINT) [options]\n"
    "       joule account --meters [--power-watts W] [--hardware NAME]\n"
    "\n"
    "Parameters (total, embedding, non-embedding, active per token), forward FLOPs per token\n"
    "by term at a stated context, training FLOPs (6ND and the exact sum), inference FLOPs of a\n"
    "query (prompt + generated tokens with a KV cache), memory, and with --hardware the time,\n"
    "energy and CO2 of training and of a query. Formulas and sources: docs/ACCOUNTING.md.\n"
    "A config joule builds is counted exactly as joule computes it; others analytically.\n"
    "\n"
    "Options:\n"
    "  --config FILE       joule config JSON (a checkpoint's config, or the accounting form with\n"
    "                      vocab, ffn, pos_emb, biases, head_dim, kv_heads, moe, retro, retrieval)\n"
    "  --preset NAME       a published model: gpt3, chinchilla, palm, glam, retro (docs/presets)\n"
    "  --model PATH        a joule checkpoint (.safetensors): its config, counted exactly\n"
    "  --tokens D          training tokens (default: the preset's published tokens)\n"
    "  --ctx T             context for the attention terms (default: the config's ctx)\n"
    "  --attention CONV    joule (blocked causal, as joule runs it; default), kaplan (2 n_ctx d_attn\n"
    "                      per layer), palm (4 T d_attn per layer forward = 12 L H Q T / 3 training)\n"
    "  --prompt P          prompt tokens of a query (default 512)\n"
    "  --generate G        generated tokens of a query (default 128)\n"
    "  --bytes N           bytes per parameter for weights: 4 (fp32, default) or 2\n"
    "  --hardware NAME     profile from docs/hardware (or a .json path), or 'local' (measures the\n"
    "                      sgemm peak here); adds time, energy and CO2\n"
    "  --precision P       fp32, bf16, fp16, tf32, fp64, int8 (default: a quantised --model's\n"
    "                      precision when the profile has its peak, else fp32 on CPUs, bf16 on GPUs)\n"
    "  --utilization U     fraction of the peak achieved, (0, 1] (default 0.4)\n"
    "  --devices N         devices working together (default 1)\n"
    "  --pue X             data-centre power usage effectiveness, >= 1 (default 1.0)\n"
    "  --grid G            grid carbon intensity in gCO2e/kWh (default 475, a world average)\n"
    "  --peak-gflops G     with --hardware local: use this peak instead of measuring\n"
    "  --meters            list the energy meters found here (and why the others are not) and exit\n"
    "  --power-watts W     with --meters: a constant power meter of W watts\n"
    "  --json              print one JSON object\n"
    "  -h, --help          show this help and exit\n";

enum {
    OPT_CONFIG = 256,
    OPT_PRESET,
    OPT_MODEL,
    OPT_TOKENS,
    OPT_CTX,
    OPT_ATTN,
    OPT_PROMPT,
    OPT_GEN,
    OPT_BYTES,
    OPT_HW,
    OPT_PREC,
    OPT_UTIL,
    OPT_DEV,
    OPT_PUE,
    OPT_GRID,
    OPT_PEAK,
    OPT_METERS,
    OPT_WATTS,
    OPT_JSON
};

static const char *CMD = "account";

typedef struct {
    const char *config, *preset, *model, *hardware, *precision;
    joule_acct_opts ao;
    int prompt, generate, devices;
    double util, pue, grid, peak_gflops, watts;
    bool meters, json;
} account_args;

static int print_meters(const account_args *a) {
    joule_energy e;
    char profile[64];
    int rc = cli_energy_open(&e, a->hardware, a->watts, NULL, profile, sizeof profile);
    if (a->json) {
        cJSON *o = cJSON_CreateObject();
        for (int k = 0; k < JOULE_METER_COUNT; k++) {
            cJSON *m = cJSON_AddObjectToObject(o, joule_meter_names[k]);
            cJSON_AddBoolToObject(m, "on", rc == JOULE_OK && e.on[k]);
            cJSON_AddStringToObject(m, "detail", e.why[k]);
        }
        cJSON_AddStringToObject(o, "method", rc == JOULE_OK ? e.method : "none");
        cli_print_json(o);
    } else {
        printf("energy meters (tried in order: rapl, perf, nvml; constant with --power-watts; else the model):\n");
        for (int k = 0; k < JOULE_METER_COUNT; k++)
            printf("  %-9s %-4s %s\n", joule_meter_names[k], rc == JOULE_OK && e.on[k] ? "on" : "off", e.why[k]);
        printf("method of a measurement here: %s\n", rc == JOULE_OK ? e.method : "none");
    }
    if (rc == JOULE_OK) joule_energy_close(&e);
    return rc ? cli_fail(CMD, rc) : 0;
}

/* The precision of a quantised --model ("bf16", "int8"); NULL for fp32 or no model. */
static const char *g_model_precision;

static int load_model(const account_args *a, joule_acct_model *m) {
    char path[4096], dirs[8192];
    const char *p = a->config;
    int rc;
    if (a->model) {
        joule_model *jm;
        if ((rc = joule_checkpoint_load(&jm, a->model, NULL))) return rc;
        joule_acct_from_config(m, &jm->cfg);
        snprintf(m->name, sizeof m->name, "%s", a->model);
        g_model_precision = jm->quant ? joule_precision_name(jm->quant->prec) : NULL;
        joule_model_free(jm);
        return JOULE_OK;
    }
    if (a->preset) {
        cli_data_dirs("presets", dirs, sizeof dirs);
        if ((rc = joule_find_data_file(a->preset, dirs, path, sizeof path))) return rc;
        p = path;
    }
    char *text;
    if ((rc = joule_read_text(p, (size_t)64 << 20, &text))) return rc == JOULE_ERR_IO ? JOULE_ERR_ARG : rc;
    rc = joule_acct_from_json(m, text, p);
    free(text);
    return rc;
}

static const char *eng(char *buf, size_t n, double v) {
    if (v == 0)
        snprintf(buf, n, "0");
    else if (fabs(v) >= 1e4 || fabs(v) < 1e-2)
        snprintf(buf, n, "%.4g", v);
    else
        snprintf(buf, n, "%.4g", v);
    return buf;
}

static double pct(double ours, double pub) { return pub > 0 ? 100.0 * (ours - pub) / pub : NAN; }

typedef struct {
    bool have;
    joule_hw_profile hw;
    const char *precision;
    joule_acct_cost train, query;
    double query_memory_s; /* decode steps re-read the weights and the KV cache: a bandwidth floor */
} cost_part;

static int costs(const account_args *a, const joule_acct_result *r, const joule_acct_query *q, cost_part *c) {
    memset(c, 0, sizeof *c);
    if (!a->hardware) return JOULE_OK;
    char dirs[8192];
    cli_data_dirs("hardware", dirs, sizeof dirs);
    int rc;
    if (strcmp(a->hardware, "local") == 0) {
        joule_hw_profile power;
        if ((rc = joule_hw_load(&power, CLI_DEFAULT_CPU_PROFILE, dirs))) return rc;
        joule_hw_local(&c->hw, a->peak_gflops > 0 ? 0 : 1.0, &power);
        if (a->peak_gflops > 0) {
            c->hw.peak_flops[joule_hw_precision_index("fp32")] = a->peak_gflops * 1e9;
            snprintf(c->hw.source, sizeof c->hw.source,
                     "fp32 peak given (--peak-gflops); power: this machine's share of the cores of %s", power.name);
        }
    } else if ((rc = joule_hw_load(&c->hw, a->hardware, dirs))) {
        return rc;
    }
    c->precision = a->precision ? a->precision : strcmp(c->hw.kind, "gpu") == 0 ? "bf16" : "fp32";
    /* a quantised checkpoint runs at its own precision where the profile gives that peak */
    if (!a->precision && g_model_precision && c->hw.peak_flops[joule_hw_precision_index(g_model_precision)] > 0)
        c->precision = g_model_precision;
    double train = r->train_exact + r->train_search;
    if ((rc = joule_account_cost(train > 0 ? train : 0, &c->hw, c->precision, a->util, a->devices, a->pue, a->grid,
                                 &c->train)) ||
        (rc = joule_account_cost(q->total + q->search, &c->hw, c->precision, a->util, 1, a->pue, a->grid, &c->query)))
        return rc;
    static const double BYTES[JOULE_HW_PRECISIONS] = {8, 4, 4, 2, 2, 1}; /* fp64 fp32 tf32 bf16 fp16 int8 */
    const double bytes = BYTES[joule_hw_precision_index(c->precision)];
    if (c->hw.mem_bw_gbs > 0) /* each decode step reads every weight and, on average, half the final KV cache */
        c->query_memory_s = a->generate * (r->params * bytes + q->kv_cache_bytes / r->bytes_per_param * bytes / 2) /
                            (c->hw.mem_bw_gbs * 1e9);
    if (c->query_memory_s > c->query.seconds) { /* memory-bound: the device is busy for longer */
        double f = c->query_memory_s / c->query.seconds;
        c->query.seconds *= f;
        c->query.device_j *= f;
        c->query.facility_kwh *= f;
        c->query.kg_co2e *= f;
    }
    c->have = true;
    return JOULE_OK;
}

static void print_json(const account_args *a, const joule_acct_model *m, const joule_acct_result *r,
                       const joule_acct_query *q, const cost_part *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", m->name);
    cJSON_AddStringToObject(o, "counting", r->exact ? "exact" : "analytic");
    cJSON_AddStringToObject(o, "attention_convention", joule_attn_convention_name(r->conv));
    cJSON_AddNumberToObject(o, "ctx", r->ctx);
    cJSON *p = cJSON_AddObjectToObject(o, "params");
    CLI_JSON_NUMBERS(p, {"total", r->params}, {"embedding", r->params_embedding},
                     {"non_embedding", r->params_non_embedding}, {"active_per_token", r->params_active});
    if (r->params_experts > 0) cJSON_AddNumberToObject(p, "experts", r->params_experts);
    cJSON *f = cJSON_AddObjectToObject(o, "forward_flops_per_token");
    for (int i = 0; i < r->n_terms; i++)
        cJSON_AddNumberToObject(f, r->terms[i].name, r->terms[i].flops);
    cJSON_AddNumberToObject(f, "total", r->fwd_per_token);
    if (r->exact) cJSON_AddNumberToObject(o, "forward_flops_sequence", (double)r->fwd_sequence);
    if (r->search_per_query > 0) {
        cJSON *s = cJSON_AddObjectToObject(o, "retrieval_search");
        cJSON_AddStringToObject(s, "index", m->index);
        CLI_JSON_NUMBERS(s, {"flops_per_search", r->search_per_query}, {"searches_per_token", r->retrievals_per_token});
    }
    CLI_JSON_NUMBERS(cJSON_AddObjectToObject(o, "training"), {"tokens", r->tokens}, {"flops_6nd", r->train_6nd},
                     {"flops_exact", r->train_exact}, {"flops_search", r->train_search});
    cJSON *qq = cJSON_AddObjectToObject(o, "query");
    CLI_JSON_NUMBERS(qq, {"prompt", a->prompt}, {"generate", a->generate}, {"flops_prefill", q->prefill},
                     {"flops_decode", q->decode}, {"flops_total", q->total}, {"flops_search", q->search});
    if (joule_config_has_cca(&m->cfg)) CLI_JSON_NUMBERS(qq, {"flops_encoder", q->encoder}, {"flops_cca", q->cca});
    cJSON_AddNumberToObject(qq, "kv_cache_bytes", q->kv_cache_bytes);
    CLI_JSON_NUMBERS(cJSON_AddObjectToObject(o, "memory_bytes"), {"weights", r->mem_weights},
                     {"gradients", r->mem_grads}, {"optimizer", r->mem_optimizer},
                     {"activations_per_token", r->mem_activations_per_token});
    if (m->pub_params > 0 || m->pub_train_flops > 0) {
        cJSON *pb = cJSON_AddObjectToObject(o, "published");
        if (m->pub_params > 0)
            CLI_JSON_NUMBERS(pb, {"params", m->pub_params}, {"params_diff_pct", pct(r->params, m->pub_params)});
        if (m->pub_active_params > 0)
            CLI_JSON_NUMBERS(pb, {"active_params", m->pub_active_params},
                             {"active_params_diff_pct", pct(r->params_active, m->pub_active_params)});
        if (m->pub_train_flops > 0 && r->tokens > 0)
            CLI_JSON_NUMBERS(pb, {"train_flops", m->pub_train_flops},
                             {"train_6nd_diff_pct", pct(r->train_6nd, m->pub_train_flops)},
                             {"train_exact_diff_pct", pct(r->train_exact, m->pub_train_flops)});
        cJSON_AddStringToObject(pb, "source", m->source);
    }
    if (c->have) {
        cJSON *h = cJSON_AddObjectToObject(o, "cost");
        cJSON_AddStringToObject(h, "hardware", c->hw.name);
        cJSON_AddStringToObject(h, "precision", c->precision);
        CLI_JSON_NUMBERS(h, {"peak_flops", c->train.peak_flops}, {"utilization", a->util}, {"devices", a->devices},
                         {"pue", a->pue}, {"grid_gCO2e_per_kWh", a->grid});
        cJSON_AddStringToObject(h, "method", "modeled:tdp");
        CLI_JSON_NUMBERS(h, {"train_seconds", c->train.seconds}, {"train_energy_kwh", c->train.facility_kwh},
                         {"train_kg_co2e", c->train.kg_co2e}, {"query_seconds", c->query.seconds},
                         {"query_memory_seconds", c->query_memory_s}, {"query_joules", c->query.device_j * a->pue},
                         {"query_g_co2e", c->query.kg_co2e * 1000});
        cJSON_AddStringToObject(h, "source", c->hw.source);
        if (strcmp(c->hw.name, "local") == 0) cJSON_AddStringToObject(h, "blas_core", joule_blas_corename());
    }
    cli_print_json(o);
}

static void print_text(const account_args *a, const joule_acct_model *m, const joule_acct_result *r,
                       const joule_acct_query *q, const cost_part *c) {
    char b1[32], b2[32], b3[32], b4[32];
    printf("%s: %s counting (%s), attention convention %s at context %d\n", m->name, r->exact ? "exact" : "analytic",
           r->exact       ? "joule's own model tables"
           : m->buildable ? "extension not registered"
                          : "formulas of docs/ACCOUNTING.md",
           joule_attn_convention_name(r->conv), r->ctx);
    printf("parameters: total %s, embedding %s, non-embedding %s, active per token %s\n", eng(b1, sizeof b1, r->params),
           eng(b2, sizeof b2, r->params_embedding), eng(b3, sizeof b3, r->params_non_embedding),
           eng(b4, sizeof b4, r->params_active));
    if (m->pub_params > 0)
        printf("  published %s (%s): %+.2f%%\n", eng(b1, sizeof b1, m->pub_params), "total",
               pct(r->params, m->pub_params));
    if (m->pub_active_params > 0)
        printf("  published active %s: %+.2f%%\n", eng(b1, sizeof b1, m->pub_active_params),
               pct(r->params_active, m->pub_active_params));
    printf("forward FLOPs per token:\n");
    for (int i = 0; i < r->n_terms; i++)
        printf("  %-14s %12s  %5.1f%%\n", r->terms[i].name, eng(b1, sizeof b1, r->terms[i].flops),
               100 * r->terms[i].flops / r->fwd_per_token);
    printf("  %-14s %12s\n", "total", eng(b1, sizeof b1, r->fwd_per_token));
    if (r->exact)
        printf("  (= joule_model_forward_flops(1 x %d) / %d = %s)\n", r->ctx, r->ctx,
               eng(b1, sizeof b1, (double)r->fwd_sequence / r->ctx));
    if (r->search_per_query > 0)
        printf("retrieval search (%s, separate from the model): %s FLOPs per search, one search per %g tokens\n",
               m->index, eng(b1, sizeof b1, r->search_per_query), 1 / r->retrievals_per_token);
    if (r->tokens > 0) {
        printf("training on %s tokens: 6ND = %s FLOPs, exact 3 x forward = %s FLOPs", eng(b1, sizeof b1, r->tokens),
               eng(b2, sizeof b2, r->train_6nd), eng(b3, sizeof b3, r->train_exact));
        if (r->train_search > 0) printf(" (+ %s search)", eng(b1, sizeof b1, r->train_search));
        printf("\n");
        if (m->pub_train_flops > 0)
            printf("  published %s FLOPs: 6ND %+.2f%%, exact %+.2f%%\n", eng(b1, sizeof b1, m->pub_train_flops),
                   pct(r->train_6nd, m->pub_train_flops), pct(r->train_exact, m->pub_train_flops));
    } else {
        printf("training: give --tokens D for training FLOPs\n");
    }
    printf("query (%d prompt + %d generated tokens, KV cache): prefill %s, decode %s, total %s FLOPs", a->prompt,
           a->generate, eng(b1, sizeof b1, q->prefill), eng(b2, sizeof b2, q->decode), eng(b3, sizeof b3, q->total));
    if (q->search > 0) printf(" + %s search", eng(b1, sizeof b1, q->search));
    printf("; KV cache %.4g MB\n", q->kv_cache_bytes / 1e6);
    if (joule_config_has_cca(&m->cfg))
        printf("  of the query's total: neighbour encoder %s (%.1f%%), CCA %s (%.1f%%)\n", eng(b1, sizeof b1, q->encoder),
               100 * q->encoder / q->total, eng(b2, sizeof b2, q->cca), 100 * q->cca / q->total);
    printf("memory: weights %.4g GB (%d B/param), gradients %.4g GB, AdamW state %.4g GB, activations %.4g MB/token\n",
           r->mem_weights / 1e9, r->bytes_per_param, r->mem_grads / 1e9, r->mem_optimizer / 1e9,
           r->mem_activations_per_token / 1e6);
    if (c->have) {
        printf("on %d x %s at %s, utilisation %g (peak %s FLOP/s%s%s):\n", a->devices, c->hw.name, c->precision,
               a->util, eng(b1, sizeof b1, c->train.peak_flops), strcmp(c->hw.name, "local") == 0 ? ", BLAS " : "",
               strcmp(c->hw.name, "local") == 0 ? joule_blas_corename() : "");
        if (r->tokens > 0)
            printf("  training: %.4g days, %.4g kWh, %.4g t CO2e [modeled:tdp]\n", c->train.seconds / 86400,
                   c->train.facility_kwh, c->train.kg_co2e / 1000);
        printf("  query: %.4g s (%s), %.4g J, %.4g gCO2e [modeled:tdp]\n", c->query.seconds,
               c->query_memory_s >= c->query.seconds ? "memory-bound: decode re-reads the weights and KV cache"
                                                     : "compute-bound",
               c->query.device_j * a->pue,
               c->query.kg_co2e * 1000);
        printf("  (TDP %g W per device while busy; PUE %g; grid %g gCO2e/kWh; profile source: %s)\n", c->hw.tdp_w,
               a->pue, a->grid, c->hw.source);
    }
}

/* One option into a; 0, or EXIT_USAGE after one line naming it. */
static int parse_option(void *args, int c, char **argv) {
    account_args *a = args;
    switch (c) {
    case OPT_CONFIG: a->config = optarg; return 0;
    case OPT_PRESET: a->preset = optarg; return 0;
    case OPT_MODEL: a->model = optarg; return 0;
    case OPT_TOKENS: return cli_number_option(CMD, "--tokens", optarg, true, &a->ao.tokens);
    case OPT_CTX:
        if (!cli_parse_int(optarg, 1, 1 << 24, &a->ao.ctx))
            return cli_usage_error(CMD, "--ctx: '%s' is not in [1, 16777216]", optarg);
        return 0;
    case OPT_ATTN:
        if (joule_attn_convention_parse(optarg, &a->ao.conv))
            return cli_usage_error(CMD, "--attention: %s", joule_last_error());
        return 0;
    case OPT_PROMPT:
        if (!cli_parse_int(optarg, 1, 1 << 24, &a->prompt))
            return cli_usage_error(CMD, "--prompt: '%s' is not in [1, 16777216]", optarg);
        return 0;
    case OPT_GEN:
        if (!cli_parse_int(optarg, 0, 1 << 24, &a->generate))
            return cli_usage_error(CMD, "--generate: '%s' is not in [0, 16777216]", optarg);
        return 0;
    case OPT_BYTES:
        if (!cli_parse_int(optarg, 1, 8, &a->ao.bytes_per_param))
            return cli_usage_error(CMD, "--bytes: '%s' is not in [1, 8]", optarg);
        return 0;
    case OPT_HW: a->hardware = optarg; return 0;
    case OPT_PREC:
        if (joule_hw_precision_index(optarg) < 0)
            return cli_usage_error(CMD, "--precision: '%s' is not one of fp64 fp32 tf32 bf16 fp16 int8", optarg);
        a->precision = optarg;
        return 0;
    case OPT_UTIL:
        if (!cli_parse_double(optarg, &a->util) || !(a->util > 0 && a->util <= 1))
            return cli_usage_error(CMD, "--utilization: '%s' is not in (0, 1]", optarg);
        return 0;
    case OPT_DEV:
        if (!cli_parse_int(optarg, 1, 1 << 24, &a->devices))
            return cli_usage_error(CMD, "--devices: '%s' is not a positive integer", optarg);
        return 0;
    case OPT_PUE:
        if (!cli_parse_double(optarg, &a->pue) || !(a->pue >= 1 && a->pue < 10))
            return cli_usage_error(CMD, "--pue: '%s' is not in [1, 10)", optarg);
        return 0;
    case OPT_GRID:
        if (!cli_parse_double(optarg, &a->grid) || !(a->grid >= 0 && a->grid < 1e4))
            return cli_usage_error(CMD, "--grid: '%s' is not in [0, 10000) gCO2e/kWh", optarg);
        return 0;
    case OPT_PEAK: return cli_number_option(CMD, "--peak-gflops", optarg, true, &a->peak_gflops);
    case OPT_METERS: a->meters = true; return 0;
    case OPT_WATTS:
        if (!cli_parse_double(optarg, &a->watts) || !(a->watts > 0 && a->watts < 1e7))
            return cli_usage_error(CMD, "--power-watts: '%s' is not a positive power", optarg);
        return 0;
    case OPT_JSON: a->json = true; return 0;
    default: return cli_bad_option(CMD, c, argv);
    }
}

/* The command line into a; 0, -1 after --help, or the exit status of bad usage. */
static int parse_args(int argc, char **argv, account_args *a) {
    static const struct option LONG[] = {
        {"config", required_argument, NULL, OPT_CONFIG},
        {"preset", required_argument, NULL, OPT_PRESET},
        {"model", required_argument, NULL, OPT_MODEL},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"ctx", required_argument, NULL, OPT_CTX},
        {"attention", required_argument, NULL, OPT_ATTN},
        {"prompt", required_argument, NULL, OPT_PROMPT},
        {"generate", required_argument, NULL, OPT_GEN},
        {"bytes", required_argument, NULL, OPT_BYTES},
        {"hardware", required_argument, NULL, OPT_HW},
        {"precision", required_argument, NULL, OPT_PREC},
        {"utilization", required_argument, NULL, OPT_UTIL},
        {"devices", required_argument, NULL, OPT_DEV},
        {"pue", required_argument, NULL, OPT_PUE},
        {"grid", required_argument, NULL, OPT_GRID},
        {"peak-gflops", required_argument, NULL, OPT_PEAK},
        {"meters", no_argument, NULL, OPT_METERS},
        {"power-watts", required_argument, NULL, OPT_WATTS},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    CLI_CHECK(cli_parse_options(argc, argv, CMD, ":h", LONG, USAGE, parse_option, a));
    return 0;
}

int cmd_account(int argc, char **argv) {
    account_args a;
    memset(&a, 0, sizeof a);
    joule_acct_opts_init(&a.ao);
    a.prompt = 512;
    a.generate = 128;
    a.devices = 1;
    a.util = 0.4;
    a.pue = JOULE_DEFAULT_PUE;
    a.grid = JOULE_DEFAULT_GRID_G_PER_KWH;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (a.meters) return print_meters(&a);
    if (!!a.config + !!a.preset + !!a.model != 1)
        return cli_usage_error(CMD, "give exactly one of --config FILE, --preset NAME or --model CHECKPOINT");
    if (a.config && cli_check_input(CMD, a.config, NULL)) return EXIT_USAGE;
    if (a.model && cli_check_input(CMD, a.model, NULL)) return EXIT_USAGE;
    joule_acct_model m;
    joule_acct_result r;
    joule_acct_query q;
    cost_part cost;
    rc = load_model(&a, &m);
    if (rc) return cli_fail(CMD, rc);
    if ((rc = joule_account(&m, &a.ao, &r)) || (rc = joule_account_query(&m, &a.ao, a.prompt, a.generate, &q)) ||
        (rc = costs(&a, &r, &q, &cost)))
        return cli_fail(CMD, rc);
    if (a.json)
        print_json(&a, &m, &r, &q, &cost);
    else
        print_text(&a, &m, &r, &q, &cost);
    return 0;
}
