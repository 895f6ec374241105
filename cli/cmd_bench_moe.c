/* `joule bench moe`: parses and prints; the measurement (MoE over dense tokens/s at equal
 * active FLOPs, steps interleaved) is joule_bench_moe (bench/bench_moe.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "joule/bench.h"
#include "joule/ops.h"

typedef struct {
    joule_bench_moe_opts run;
    int threads;
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

static void report(const moe_bench_opts *o, const joule_bench_moe_result *r) {
    const int T = o->run.ctx, N = o->run.batch * T;
    const double fd = r->dense_flops, fm = r->moe_flops, md = r->dense_step_s, mm = r->moe_step_s;
    printf("dense: layers %d, d_model %d, d_ff %d, seq %d, batch %d: %.2fM params, %.4g forward FLOPs/token\n",
           o->run.layers, o->run.d_model, o->run.d_ff, T, o->run.batch, r->dense_params / 1e6, fd);
    printf("moe:   E %d, top-%d, every %d, d_ff_expert %d, capacity factor %g: %.2fM params (%.2fM active), %.4g "
           "forward FLOPs/token (x%.4f dense)\n",
           o->run.experts, o->run.top_k, o->run.every, o->run.d_ff_expert, o->run.capacity, r->moe_params / 1e6,
           r->moe_active_params / 1e6, fm, fm / fd);
    printf("training step (fwd+bwd), medians of %d interleaved: dense %.1f ms (%.0f tok/s), moe %.1f ms (%.0f tok/s)\n",
           o->run.steps, md * 1e3, N / md, mm * 1e3, N / mm);
    printf("  moe/dense training tokens/s = %.3f of the medians, %.3f of the best steps (target >= 0.85)\n", md / mm,
           r->dense_best_s / r->moe_best_s);
    printf("  moe counted forward FLOPs/token %.4g (%.2f%% of the last step's assignments dropped)\n",
           r->moe_counted_flops, 100.0 * r->dropped_fraction);
    const double route = r->routing_ms, permute = r->permutation_ms, experts = r->experts_ms;
    const double sum_m = r->moe_step_mean_ms;
    printf("  moe layers per step (mean, fwd+bwd): routing %.1f ms, permutation %.1f ms, experts %.1f ms; routing +\n"
           "  permutation = %.1f%% of the mean moe step (%.1f ms), experts = %.1f%%\n",
           route, permute, experts, 100 * (route + permute) / sum_m, sum_m, 100 * experts / sum_m);
    const int n = r->decode_tokens;
    const double dd_s = r->dense_decode_s, dm_s = r->moe_decode_s;
    printf("decode (batch 1, %d tokens, medians of 5 interleaved rounds): dense %.0f tok/s, moe %.0f tok/s\n", n,
           n / dd_s, n / dm_s);
    printf("  moe/dense decode tokens/s = %.3f of the medians, %.3f of the best rounds (target >= 0.85)\n",
           dd_s / dm_s, r->dense_decode_best_s / r->moe_decode_best_s);
    if (o->json)
        printf("{\"bench\":\"moe\",\"threads\":%d,\"dense_train_tokens_per_s\":%.1f,\"moe_train_tokens_per_s\":%.1f,"
               "\"train_ratio\":%.4f,\"dense_decode_tokens_per_s\":%.1f,\"moe_decode_tokens_per_s\":%.1f,"
               "\"decode_ratio\":%.4f,\"flops_ratio\":%.4f,\"routing_ms\":%.3f,\"permutation_ms\":%.3f,"
               "\"experts_ms\":%.3f}\n",
               joule_get_threads(), N / md, N / mm, md / mm, n / dd_s, n / dm_s, dd_s / dm_s, fm / fd, route, permute,
               experts);
}

static int run(const moe_bench_opts *o) {
    printf("joule bench moe: BLAS kernels %s, BLAS threading %s, threads %d\n", joule_blas_corename(),
           joule_blas_threading(), joule_get_threads());
    joule_bench_moe_result r;
    int rc = joule_bench_moe(&o->run, &r);
    if (rc) return cli_fail("bench moe", rc);
    report(o, &r);
    return 0;
}

int cmd_bench_moe(int argc, char **argv) {
    moe_bench_opts o = {.run = {.layers = 6, .d_model = 384, .heads = 6, .d_ff = 1024, .ctx = 256, .batch = 8,
                                .steps = 10, .warmup = 2, .tokens = 256, .experts = 8, .top_k = 2, .every = 2,
                                .d_ff_expert = 0, .capacity = 1.25f}};
    /* Integer options by table: option i of getopt_long returns i. */
    const struct {
        const char *name;
        int *dst, lo, hi;
    } ints[] = {{"layers", &o.run.layers, 1, 1 << 20},      {"d-model", &o.run.d_model, 2, 1 << 16},
                {"heads", &o.run.heads, 1, 1 << 16},        {"d-ff", &o.run.d_ff, 1, 1 << 20},
                {"ctx", &o.run.ctx, 1, 1 << 16},            {"batch", &o.run.batch, 1, 1 << 16},
                {"steps", &o.run.steps, 1, 1 << 20},        {"warmup", &o.run.warmup, 0, 1 << 20},
                {"threads", &o.threads, 0, 4096},       {"tokens", &o.run.tokens, 1, 1 << 16},
                {"experts", &o.run.experts, 1, 4096},       {"top-k", &o.run.top_k, 1, 2},
                {"moe-every", &o.run.every, 1, JOULE_MAX_LAYERS}, {"d-ff-expert", &o.run.d_ff_expert, 1, 1 << 20}};
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
            if (!cli_parse_float(optarg, &o.run.capacity) || !(o.run.capacity >= 0))
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
    if (!o.run.d_ff_expert) o.run.d_ff_expert = o.run.d_ff / o.run.top_k > 0 ? o.run.d_ff / o.run.top_k : 1;
    if (o.run.top_k > o.run.experts) return cli_usage_error(cmd, "--top-k %d exceeds --experts %d", o.run.top_k, o.run.experts);
    if (o.run.every > o.run.layers) return cli_usage_error(cmd, "--moe-every %d leaves no MoE layer", o.run.every);
    cli_setup_threads(o.threads);
    return run(&o);
}
