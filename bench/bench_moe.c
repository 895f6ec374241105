/* `joule bench moe`: training and decode tokens/s of an MoE model over a dense model with
 * the same active FLOPs per token, measured in one run with the steps interleaved (dense,
 * MoE, dense, ...) so that the machine's noise hits both alike. Only the ratios are the
 * result; absolute rates on a shared machine are context. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "joule/model.h"
#include "joule/moe.h"
#include "joule/ops.h"

typedef struct {
    int layers, d_model, heads, d_ff, ctx, batch, steps, warmup, threads, tokens;
    int experts, top_k, every, d_ff_expert;
    float capacity;
    bool json;
} moe_bench_opts;

static const char USAGE[] =
    "usage: joule bench moe [options]\n"
    "\n"
    "Training-step and batch-1 decode tokens/s of an MoE model over the dense model with the\n"
    "same active FLOPs per token: the dense reference's FFN in every --moe-every-th layer is\n"
    "replaced by E experts of d_ff/top_k each, top-k routed, so a token's expert FLOPs equal\n"
    "the dense FFN's (plus the router's 2*d*E). Steps alternate dense/MoE in one process; the\n"
    "medians' ratio is reported (target >= 0.85), with the MoE layers' time by part (routing,\n"
    "permutation, expert matmuls).\n"
    "\n"
    "options (defaults: the dense reference L6 d384 and E=8, top-2, every other layer):\n"
    "  --layers N --d-model N --heads N --d-ff N --ctx N   dense reference (6, 384, 6, 1024, 256)\n"
    "  --experts N          experts per MoE layer (8)\n"
    "  --top-k N            1 or 2 (2)\n"
    "  --moe-every N        MoE FFN where l % N == N-1 (2)\n"
    "  --d-ff-expert N      expert hidden size (d_ff / top_k)\n"
    "  --capacity-factor F  training capacity factor; 0 = dropless (1.25)\n"
    "  --batch N            sequences per training step (8)\n"
    "  --steps N            timed training steps per model (10; medians)\n"
    "  --warmup N           untimed steps first (2)\n"
    "  --tokens N           tokens decoded per model and round, 5 rounds (256, at most ctx)\n"
    "  --threads N          OpenMP/BLAS threads (all cores)\n"
    "  --json               also print one JSON line of results\n";

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and returns its median; v[0] is then the best. */
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static int build(const moe_bench_opts *o, bool moe, int batch, joule_model **m) {
    joule_config c = joule_config_default(o->layers, o->d_model, o->heads, o->d_ff, o->ctx);
    if (moe) {
        joule_moe_config e = joule_moe_config_default(o->d_ff);
        e.n_experts = o->experts;
        e.top_k = o->top_k;
        e.every = o->every;
        e.d_ff_expert = o->d_ff_expert;
        e.capacity_train = o->capacity;
        joule_moe_apply(&c, &e);
    }
    int rc = joule_model_create(m, &c);
    if (rc) return rc;
    joule_model_init(*m, 1);
    if (batch > 0 && (rc = joule_model_alloc_train(*m, batch))) {
        joule_model_free(*m);
        *m = NULL;
    }
    return rc;
}

static double train_step(joule_model *m, const int32_t *in, const int32_t *tg, int B, int T) {
    double loss, t0 = joule_now();
    joule_model_zero_grad(m);
    joule_model_forward(m, in, tg, B, T, &loss);
    joule_model_backward(m, 1.0f);
    return joule_now() - t0;
}

/* Decodes the first n tokens of `tokens` from an empty cache; seconds. */
static double decode_run(joule_decoder *d, const int32_t *tokens, int n) {
    const float *lg;
    joule_decoder_reset(d);
    double t0 = joule_now();
    for (int i = 0; i < n; i++) joule_decoder_step(d, tokens[i], &lg);
    return joule_now() - t0;
}

static int run(const moe_bench_opts *o) {
    const char *cmd = "bench moe";
    printf("joule bench moe: BLAS kernels %s, BLAS threading %s, threads %d\n", joule_blas_corename(),
           joule_blas_threading(), joule_get_threads());
    joule_model *dense = NULL, *moe = NULL;
    int rc = build(o, false, o->batch, &dense);
    if (!rc) rc = build(o, true, o->batch, &moe);
    if (rc) {
        joule_model_free(dense);
        return cli_fail(cmd, rc);
    }
    joule_model_set_training(moe, true);
    const int B = o->batch, T = o->ctx, N = B * T;
    int32_t *in = malloc((size_t)N * sizeof *in), *tg = malloc((size_t)N * sizeof *tg);
    double *td = calloc((size_t)o->steps, sizeof *td), *tm = calloc((size_t)o->steps, sizeof *tm);
    if (!in || !tg || !td || !tm) {
        fprintf(stderr, "joule %s: out of memory\n", cmd);
        return EXIT_RUNTIME;
    }
    joule_rng r;
    joule_rng_seed(&r, 1);
    for (int i = 0; i < N; i++) {
        in[i] = (int32_t)joule_rng_below(&r, 256);
        tg[i] = (int32_t)joule_rng_below(&r, 256);
    }
    const double fd = (double)joule_model_forward_flops(&dense->cfg, B, T) / N;
    const double fm = (double)joule_model_forward_flops(&moe->cfg, B, T) / N;
    joule_param_counts pd = joule_model_param_counts(dense), pm = joule_model_param_counts(moe);
    printf("dense: layers %d, d_model %d, d_ff %d, seq %d, batch %d: %.2fM params, %.4g forward FLOPs/token\n",
           o->layers, o->d_model, o->d_ff, T, B, pd.total / 1e6, fd);
    printf("moe:   E %d, top-%d, every %d, d_ff_expert %d, capacity factor %g: %.2fM params (%.2fM active), %.4g "
           "forward FLOPs/token (x%.4f dense)\n",
           o->experts, o->top_k, o->every, o->d_ff_expert, o->capacity, pm.total / 1e6,
           joule_moe_active_params(moe, false) / 1e6, fm, fm / fd);

    uint64_t counted_moe = 0;
    for (int s = 0; s < o->warmup + o->steps; s++) {
        double a = train_step(dense, in, tg, B, T);
        uint64_t f0 = joule_flops_counted();
        if (s == o->warmup) memset(joule_moe_timing_of(moe), 0, sizeof(joule_moe_timing));
        double b = train_step(moe, in, tg, B, T);
        if (s < o->warmup) continue;
        td[s - o->warmup] = a;
        tm[s - o->warmup] = b;
        counted_moe = joule_flops_counted() - f0;
    }
    const double md = median(td, o->steps), mm = median(tm, o->steps);
    int dropped = 0, assignments = 0;
    for (int l = 0; l < moe->cfg.n_layers; l++) {
        const joule_moe_route *rt = joule_moe_last_route(moe, l);
        if (!rt) continue;
        dropped += rt->dropped[0] + rt->dropped[1];
        assignments += rt->N * o->top_k;
    }
    printf("training step (fwd+bwd), medians of %d interleaved: dense %.1f ms (%.0f tok/s), moe %.1f ms (%.0f tok/s)\n",
           o->steps, md * 1e3, N / md, mm * 1e3, N / mm);
    printf("  moe/dense training tokens/s = %.3f of the medians, %.3f of the best steps (target >= 0.85)\n", md / mm,
           td[0] / tm[0]);
    printf("  moe counted forward FLOPs/token %.4g (%.2f%% of the last step's assignments dropped)\n",
           (double)counted_moe / 3 / N, assignments ? 100.0 * dropped / assignments : 0.0);
    /* Mean per step of the MoE layers' parts (all of them, forward + backward). */
    const joule_moe_timing *tp = joule_moe_timing_of(moe);
    const double k = 1e3 / o->steps, route = (tp->route_fwd + tp->route_bwd) * k;
    const double permute = (tp->permute_fwd + tp->permute_bwd) * k, experts = (tp->experts_fwd + tp->experts_bwd) * k;
    double sum_m = 0;
    for (int i = 0; i < o->steps; i++) sum_m += tm[i]; /* the parts are means too */
    sum_m *= k;
    printf("  moe layers per step (mean, fwd+bwd): routing %.1f ms, permutation %.1f ms, experts %.1f ms; routing +\n"
           "  permutation = %.1f%% of the mean moe step (%.1f ms), experts = %.1f%%\n",
           route, permute, experts, 100 * (route + permute) / sum_m, sum_m, 100 * experts / sum_m);

    joule_decoder *dd = NULL, *dm = NULL;
    if ((rc = joule_decoder_create(&dd, dense)) || (rc = joule_decoder_create(&dm, moe))) {
        joule_decoder_free(dd);
        return cli_fail(cmd, rc);
    }
    const int n = o->tokens < T ? o->tokens : T;
    decode_run(dd, in, 16);
    decode_run(dm, in, 16);
    double rd[5], rm[5];
    for (int i = 0; i < 5; i++) {
        rd[i] = decode_run(dd, in, n);
        rm[i] = decode_run(dm, in, n);
    }
    const double dd_s = median(rd, 5), dm_s = median(rm, 5);
    printf("decode (batch 1, %d tokens, medians of 5 interleaved rounds): dense %.0f tok/s, moe %.0f tok/s\n", n,
           n / dd_s, n / dm_s);
    printf("  moe/dense decode tokens/s = %.3f of the medians, %.3f of the best rounds (target >= 0.85)\n",
           dd_s / dm_s, rd[0] / rm[0]);
    if (o->json)
        printf("{\"bench\":\"moe\",\"threads\":%d,\"dense_train_tokens_per_s\":%.1f,\"moe_train_tokens_per_s\":%.1f,"
               "\"train_ratio\":%.4f,\"dense_decode_tokens_per_s\":%.1f,\"moe_decode_tokens_per_s\":%.1f,"
               "\"decode_ratio\":%.4f,\"flops_ratio\":%.4f,\"routing_ms\":%.3f,\"permutation_ms\":%.3f,"
               "\"experts_ms\":%.3f}\n",
               joule_get_threads(), N / md, N / mm, md / mm, n / dd_s, n / dm_s, dd_s / dm_s, fm / fd, route, permute,
               experts);
    joule_decoder_free(dd);
    joule_decoder_free(dm);
    free(in);
    free(tg);
    free(td);
    free(tm);
    joule_model_free(dense);
    joule_model_free(moe);
    return 0;
}

int cmd_bench_moe(int argc, char **argv) {
    moe_bench_opts o = {6, 384, 6, 1024, 256, 8, 10, 2, 0, 256, 8, 2, 2, 0, 1.25f, false};
    /* Integer options by table: option i of getopt_long returns i. */
    const struct {
        const char *name;
        int *dst, lo, hi;
    } ints[] = {{"layers", &o.layers, 1, 1 << 20},      {"d-model", &o.d_model, 2, 1 << 16},
                {"heads", &o.heads, 1, 1 << 16},        {"d-ff", &o.d_ff, 1, 1 << 20},
                {"ctx", &o.ctx, 1, 1 << 16},            {"batch", &o.batch, 1, 1 << 16},
                {"steps", &o.steps, 1, 1 << 20},        {"warmup", &o.warmup, 0, 1 << 20},
                {"threads", &o.threads, 0, 4096},       {"tokens", &o.tokens, 1, 1 << 16},
                {"experts", &o.experts, 1, 4096},       {"top-k", &o.top_k, 1, 2},
                {"moe-every", &o.every, 1, JOULE_MAX_LAYERS}, {"d-ff-expert", &o.d_ff_expert, 1, 1 << 20}};
    enum { N_INTS = sizeof ints / sizeof ints[0], OPT_CF = 100, OPT_JSON, OPT_HELP };
    struct option opts[N_INTS + 4];
    for (int i = 0; i < N_INTS; i++) opts[i] = (struct option){ints[i].name, required_argument, NULL, i};
    opts[N_INTS] = (struct option){"capacity-factor", required_argument, NULL, OPT_CF};
    opts[N_INTS + 1] = (struct option){"json", no_argument, NULL, OPT_JSON};
    opts[N_INTS + 2] = (struct option){"help", no_argument, NULL, OPT_HELP};
    opts[N_INTS + 3] = (struct option){NULL, 0, NULL, 0};
    const char *cmd = "bench moe";
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc - 1, argv + 1, ":h", opts, NULL)) != -1) {
        if (ch >= 0 && ch < N_INTS) {
            if (!cli_parse_int(optarg, ints[ch].lo, ints[ch].hi, ints[ch].dst))
                return cli_usage_error(cmd, "--%s: '%s' is not an integer in [%d, %d]", ints[ch].name, optarg,
                                       ints[ch].lo, ints[ch].hi);
        } else if (ch == OPT_CF) {
            if (!cli_parse_float(optarg, &o.capacity) || !(o.capacity >= 0))
                return cli_usage_error(cmd, "--capacity-factor: '%s' is not a non-negative number", optarg);
        } else if (ch == OPT_JSON) {
            o.json = true;
        } else if (ch == OPT_HELP || ch == 'h') {
            fputs(USAGE, stdout);
            return 0;
        } else {
            return cli_bad_option(cmd, ch, argv + 1);
        }
    }
    if (optind < argc - 1) return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
    if (!o.d_ff_expert) o.d_ff_expert = o.d_ff / o.top_k > 0 ? o.d_ff / o.top_k : 1;
    if (o.top_k > o.experts) return cli_usage_error(cmd, "--top-k %d exceeds --experts %d", o.top_k, o.experts);
    if (o.every > o.layers) return cli_usage_error(cmd, "--moe-every %d leaves no MoE layer", o.every);
    cli_setup_threads(o.threads);
    return run(&o);
}
