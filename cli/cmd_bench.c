/* `joule bench`: parses and prints; the measurements are the library's (bench/, joule/bench.h),
 * always against what this same process measures of the machine with the same BLAS kernels
 * (machines here are shared and noisy, so only ratios from one run are quoted). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/bench.h"
#include "joule/ops.h"

typedef struct {
    joule_bench_model_opts run;
    int threads;
    bool json;
} bench_opts;

static void bench_header(const char *what) {
    const char *core = getenv("OPENBLAS_CORETYPE"), *wait = getenv("OMP_WAIT_POLICY");
    printf("joule bench %s: BLAS kernels %s (OPENBLAS_CORETYPE=%s), BLAS threading %s, OMP_WAIT_POLICY=%s, "
           "threads %d\n",
           what, joule_blas_corename(), core ? core : "unset", joule_blas_threading(), wait ? wait : "unset",
           joule_get_threads());
}

/* The energy window around the measured work (joule_bench_model_opts.window). */
typedef struct {
    cli_energy meter;
    const char *label;
    uint64_t tokens;
    joule_energy_report report;
} energy_window;

static void on_window(void *ctx, bool begin) {
    energy_window *w = ctx;
    if (begin) cli_energy_begin(&w->meter, w->label);
    else cli_energy_end(&w->meter, w->tokens, 0, false, &w->report);
}

static double energy_per_token(const joule_energy_report *er) {
    return er->tokens ? er->joules / (double)er->tokens : 0.0;
}

int cmd_bench_dist(int argc, char **argv); /* cli/cmd_bench_dist.c */

static int bench_train(const bench_opts *o) {
    bench_header("train");
    const int B = o->run.batch, T = o->run.ctx, N = B * T;
    energy_window ew = {.label = "bench train", .tokens = (uint64_t)N * (uint64_t)(o->run.warmup + o->run.steps)};
    joule_bench_model_opts run = o->run;
    run.window = on_window;
    run.window_ctx = &ew;
    joule_bench_train_result r;
    int rc = joule_bench_train(&run, &r);
    if (rc) return cli_fail("bench train", rc);
    const double peak = r.peak_gflops, fpt = r.model_flops_per_token, cpt = r.counted_flops_per_token;
    const double tps = N / r.step_s, mfu = fpt * tps / (peak * 1e9), hfu = cpt * tps / (peak * 1e9);
    printf("model: layers %d, d_model %d, heads %d, d_ff %d, seq %d, batch %d (%.2fM params, %.2fM non-embedding)\n",
           o->run.layers, o->run.d_model, o->run.heads, o->run.d_ff, T, B, r.params.total / 1e6,
           r.params.non_embedding / 1e6);
    printf("sgemm peak (2048^3, best of 2 s):   %.1f GFLOPS\n", peak);
    printf("training step (fwd+bwd, median of %d): %.1f ms, %.0f tokens/s\n", o->run.steps, r.step_s * 1e3, tps);
    printf("training step (fwd+bwd+optimizer step, median of %d): %.1f ms, %.0f tokens/s (a framework's training "
           "step, e.g. PyTorch's, compares with this one)\n",
           o->run.steps, r.full_step_s * 1e3, N / r.full_step_s);
    printf("model FLOPs/token = 6*N_mm + 12*L*T*d = %.4g; counted FLOPs/token = %.4g\n", fpt, cpt);
    printf("model FLOPs: %.1f GFLOPS, MFU %.1f%% of the measured sgemm peak (fwd+bwd)\n", fpt * tps / 1e9, 100 * mfu);
    printf("counted FLOPs: %.1f GFLOPS, HFU %.1f%% of the measured sgemm peak (fwd+bwd)\n", cpt * tps / 1e9, 100 * hfu);
    if (o->json)
        printf("{\"bench\":\"train\",\"core\":\"%s\",\"threads\":%d,\"peak_gflops\":%.2f,\"step_ms\":%.3f,"
               "\"tokens_per_s\":%.1f,\"full_step_ms\":%.3f,\"full_tokens_per_s\":%.1f,"
               "\"model_flops_per_token\":%.6g,\"counted_flops_per_token\":%.6g,\"mfu\":%.4f,"
               "\"hfu\":%.4f,\"energy_j_per_token\":%.6g,\"energy_method\":\"%s\"}\n",
               joule_blas_corename(), joule_get_threads(), peak, r.step_s * 1e3, tps, r.full_step_s * 1e3,
               N / r.full_step_s, fpt, cpt, mfu, hfu, energy_per_token(&ew.report),
               ew.report.method[0] ? ew.report.method : "none");
    return 0;
}

/* The batched steps of bench decode (joule_bench_decode_rows): what n sequences per step
 * buy over one, on the same packed kernel, and over the gemv. */
static void print_rows(const joule_bench_decode_result *r, bool json) {
    const int n = r->rows;
    const double one = 1 / r->step_one_s, gemv = 1 / r->step_gemv_s, rows = n / r->step_rows_s;
    printf("batched steps, positions %d..%d, median of 5 alternated rounds of %d steps:\n", r->positions,
           r->positions + r->steps - 1, r->steps);
    printf("  1 sequence, gemv (joule_decoder_step):   %.3f ms/step, %.0f tokens/s\n", 1e3 * r->step_gemv_s, gemv);
    printf("  1 sequence, packed weights (batch of %d): %.3f ms/step, %.0f tokens/s\n", n, 1e3 * r->step_one_s, one);
    printf("  %d sequences, packed weights:             %.3f ms/step, %.0f tokens/s, %.1f GFLOP/s counted\n", n,
           1e3 * r->step_rows_s, rows, r->step_rows_flops / r->step_rows_s / 1e9);
    printf("  %d sequences per step: %.2fx the tokens/s of one on the same kernel, %.2fx of the gemv\n", n,
           rows / one, rows / gemv);
    if (json)
        printf("{\"bench\":\"decode_rows\",\"rows\":%d,\"step_gemv_ms\":%.4f,\"step_one_ms\":%.4f,"
               "\"step_rows_ms\":%.4f,\"rows_gflops\":%.2f,\"ratio_same_kernel\":%.3f,\"ratio_gemv\":%.3f}\n",
               n, 1e3 * r->step_gemv_s, 1e3 * r->step_one_s, 1e3 * r->step_rows_s,
               r->step_rows_flops / r->step_rows_s / 1e9, rows / one, rows / gemv);
}

static int bench_decode(const bench_opts *o) {
    bench_header("decode");
    energy_window ew = {.label = "bench decode", .tokens = (uint64_t)(o->run.tokens < o->run.ctx ? o->run.tokens
                                                                                                 : o->run.ctx)};
    joule_bench_model_opts run = o->run;
    run.window = on_window;
    run.window_ctx = &ew;
    joule_bench_decode_result r;
    int rc = joule_bench_decode(&run, &r);
    if (rc) return cli_fail("bench decode", rc);
    const int n = r.tokens;
    const double tps = n / r.seconds, bytes = r.weight_bytes, bw_ws = r.read_gbs_working_set;
    printf("batch-1 decode of %d tokens (positions 0..%d): %.0f tokens/s, %.2f ms/token\n", n, n - 1, tps,
           1e3 * r.seconds / n);
    printf("weights read per token: %.1f MB -> %.1f GB/s\n", bytes / 1e6, bytes * tps / 1e9);
    printf("read bandwidth measured here: %.1f GB/s for a %.0f MB working set (decode reaches %.0f%% of it), "
           "%.1f GB/s for 1 GiB\n",
           bw_ws, bytes / 1e6, 100 * bytes * tps / 1e9 / bw_ws, r.read_gbs_1gib);
    if (o->json)
        printf("{\"bench\":\"decode\",\"core\":\"%s\",\"threads\":%d,\"tokens_per_s\":%.1f,\"weight_gb_per_s\":%.3f,"
               "\"read_gb_per_s_working_set\":%.3f,\"read_gb_per_s_1gib\":%.3f,\"energy_j_per_token\":%.6g,"
               "\"energy_method\":\"%s\"}\n",
               joule_blas_corename(), joule_get_threads(), tps, bytes * tps / 1e9, bw_ws, r.read_gbs_1gib,
               energy_per_token(&ew.report), ew.report.method[0] ? ew.report.method : "none");
    if (r.rows) print_rows(&r, o->json);
    return 0;
}

static void usage(void) {
    printf("usage: joule bench train|decode|moe|energy [options]\n"
           "\n"
           "  train    sgemm peak and training-step throughput of a dense model, forward+backward\n"
           "           and forward+backward+optimizer step (what a PyTorch step compares with);\n"
           "           prints MFU = (6*N_mm + 12*L*T*d) * tokens/s (fwd+bwd) / measured sgemm peak\n"
           "  decode   batch-1 KV-cache decoding: tokens/s and GB/s of weights read; batched steps\n"
           "  moe      MoE over dense tokens/s at equal active FLOPs, training and decode\n"
           "           (its own options: joule bench moe --help)\n"
           "  db       retrieval databases: build, query latency, recall, overhead over FAISS (bench db --help)\n"
           "  retro    RETRO model: train step and generation with retrieval vs without (bench retro --help)\n"
           "  energy   energy per query of checkpoints: latency, tokens/s, FLOPs, J/query\n"
           "           (its own options: joule bench energy --help)\n"
           "  dist     data-parallel training: 1 rank x 2 threads against 2 ranks x 1 thread (MPI),\n"
           "           all-reduce share of the step (its own options: joule bench dist --help)\n"
           "  serve    open-loop load at request rates on the batching scheduler or a server URL\n"
           "           (its own options: joule bench serve --help)\n"
           "\n"
           "options (defaults: the reference model of the foundation issue):\n"
           "  --layers N      layers (6)\n"
           "  --d-model N     model width (384)\n"
           "  --heads N       attention heads (6)\n"
           "  --d-ff N        SwiGLU hidden size (1024)\n"
           "  --ctx N         sequence length (256)\n"
           "  --batch N       sequences per step, train (8)\n"
           "  --steps N       timed steps, train (10; the median is reported)\n"
           "  --warmup N      untimed steps first, train (2)\n"
           "  --tokens N      tokens decoded, decode (256, at most ctx)\n"
           "  --rows N        decode: then N sequences per batched step against one, on the\n"
           "                  packed weights and against the gemv (16; 0 = skip; ctx >= 81)\n"
           "  --threads N     OpenMP/BLAS threads (all cores)\n"
           "  --json          also print one JSON line of results\n"
           "The BLAS kernel family in use (openblas_get_corename) is printed; OPENBLAS_CORETYPE is respected.\n");
}

int cmd_bench(int argc, char **argv) {
    bench_opts o = {.run = {.layers = 6, .d_model = 384, .heads = 6, .d_ff = 1024, .ctx = 256, .batch = 8,
                            .steps = 10, .warmup = 2, .tokens = 256, .rows = 16}};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "moe")) return cmd_bench_moe(argc, argv);
    if (!strcmp(argv[1], "energy")) return cmd_bench_energy(argc, argv);
    if (!strcmp(argv[1], "serve")) return cmd_bench_serve(argc - 1, argv + 1); /* its own options */
    const char *what = argv[1];
    if (!strcmp(what, "db")) return cmd_bench_db(argc - 1, argv + 1); /* its own options */
    if (!strcmp(what, "retro")) return cmd_bench_retro(argc - 1, argv + 1); /* its own options */
    if (!strcmp(what, "dist")) return cmd_bench_dist(argc - 1, argv + 1); /* its own options */
    static const struct option opts[] = {
        {"layers", 1, 0, 'L'}, {"d-model", 1, 0, 'd'}, {"heads", 1, 0, 'H'}, {"d-ff", 1, 0, 'f'},
        {"ctx", 1, 0, 'c'},    {"batch", 1, 0, 'b'},   {"steps", 1, 0, 's'}, {"warmup", 1, 0, 'w'},
        {"threads", 1, 0, 't'}, {"tokens", 1, 0, 'n'}, {"json", 0, 0, 'j'},  {"help", 0, 0, 'h'},
        {"rows", 1, 0, 'r'},
        {0, 0, 0, 0}};
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        int *dst = NULL;
        int lo = 1;
        switch (ch) {
        case 'L': dst = &o.run.layers; break;
        case 'd': dst = &o.run.d_model; break;
        case 'H': dst = &o.run.heads; break;
        case 'f': dst = &o.run.d_ff; break;
        case 'c': dst = &o.run.ctx; break;
        case 'b': dst = &o.run.batch; break;
        case 's': dst = &o.run.steps; break;
        case 'w': dst = &o.run.warmup; lo = 0; break;
        case 't': dst = &o.threads; lo = 0; break;
        case 'n': dst = &o.run.tokens; break;
        case 'r': dst = &o.run.rows; lo = 0; break;
        case 'j': o.json = true; continue;
        case 'h': usage(); return 0;
        default: return cli_usage_error("bench", "unknown option");
        }
        if (!cli_parse_int(optarg, lo, 1 << 20, dst)) {
            const char *name = "?";
            for (const struct option *op = opts; op->name; op++)
                if (op->val == ch) name = op->name;
            return cli_usage_error("bench", "invalid value '%s' for --%s", optarg, name);
        }
    }
    if (optind < argc - 1) return cli_usage_error("bench", "unexpected argument '%s'", argv[optind + 1]);
    cli_setup_threads(o.threads);
    if (!strcmp(what, "train")) return bench_train(&o);
    if (!strcmp(what, "decode")) return bench_decode(&o);
    return cli_usage_error("bench", "unknown benchmark '%s' (train, decode, moe, energy, serve)", what);
}
