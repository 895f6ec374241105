/* `joule bench`: measured performance, always against the sgemm peak this same process
 * measures with the same BLAS kernels (machines here are shared and noisy, so only
 * ratios from one run are quoted). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/energy.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "retro_cli.h"

typedef struct {
    int layers, d_model, heads, d_ff, ctx, batch, steps, warmup, threads, tokens;
    bool json;
} bench_opts;

/* Best-of-repeats GB/s of summing a buffer of `bytes` with all threads: the bandwidth a
 * streaming reader of that working set can get (cache-resident when small, DRAM when big). */
static double read_bandwidth(size_t bytes, double seconds) {
    size_t n = bytes / sizeof(float);
    float *x = joule_alloc(n * sizeof(float));
    if (!x) return NAN;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = (float)(i & 7);
    double best = 0, t_end = joule_now() + seconds;
    volatile float sink = 0;
    do {
        double t0 = joule_now();
        float s = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
        for (size_t i = 0; i < n; i++) s += x[i];
        double gbs = (double)n * sizeof(float) / (joule_now() - t0) / 1e9;
        sink += s;
        if (gbs > best) best = gbs;
    } while (joule_now() < t_end);
    (void)sink;
    joule_free(x);
    return best;
}

int cmd_bench_moe(int argc, char **argv);
int cmd_bench_energy(int argc, char **argv); /* bench/bench_energy.c */

static int percentile_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void bench_header(const char *what) {
    const char *core = getenv("OPENBLAS_CORETYPE"), *wait = getenv("OMP_WAIT_POLICY");
    printf("joule bench %s: BLAS kernels %s (OPENBLAS_CORETYPE=%s), BLAS threading %s, OMP_WAIT_POLICY=%s, "
           "threads %d\n",
           what, joule_blas_corename(), core ? core : "unset", joule_blas_threading(), wait ? wait : "unset",
           joule_get_threads());
}

static int make_model(const bench_opts *o, joule_model **m) {
    joule_config c = joule_config_default(o->layers, o->d_model, o->heads, o->d_ff, o->ctx);
    int rc = joule_model_create(m, &c);
    if (rc) return rc;
    joule_model_init(*m, 1);
    return JOULE_OK;
}

/* Model FLOPs per training token (PaLM's convention): 6 N_mm + 12 L T d, where N_mm counts
 * the weights that take part in a matmul (every matrix, and the LM head once even when
 * tied) and T is the sequence length. The attention term is the full T x T; joule skips
 * the blocks above the causal diagonal, so its counted (hardware) FLOPs are lower, and the
 * benchmark reports both MFU and HFU. */
static double model_flops_per_token(const joule_model *m, int T) {
    const joule_config *c = &m->cfg;
    double n_mm = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].ndim == 2 && !m->tensors[i].embedding) n_mm += (double)m->tensors[i].numel;
    n_mm += (double)c->vocab * c->d_model; /* the head */
    return 6.0 * n_mm + 12.0 * c->n_layers * (double)T * c->d_model;
}

static int bench_train(const bench_opts *o) {
    bench_header("train");
    joule_model *m;
    int rc = make_model(o, &m);
    if (!rc) rc = joule_model_alloc_train(m, o->batch);
    if (rc) return cli_fail("bench train", rc);
    const int B = o->batch, T = o->ctx, N = B * T;
    double peak = joule_sgemm_peak_gflops(2048, 2.0);
    int32_t *in = malloc((size_t)N * sizeof *in), *tg = malloc((size_t)N * sizeof *tg);
    joule_rng r;
    joule_rng_seed(&r, 1);
    for (int i = 0; i < N; i++) {
        in[i] = (int32_t)joule_rng_below(&r, 256);
        tg[i] = (int32_t)joule_rng_below(&r, 256);
    }
    double *times = calloc((size_t)o->steps, sizeof *times);
    uint64_t counted = 0;
    cli_energy energy; /* over warm-up and timed steps */
    cli_energy_begin(&energy, "bench train");
    for (int s = 0; s < o->warmup + o->steps; s++) {
        double loss, t0 = joule_now();
        uint64_t f0 = joule_flops_counted();
        joule_model_zero_grad(m);
        joule_model_forward(m, in, tg, B, T, &loss);
        joule_model_backward(m, 1.0f);
        if (s >= o->warmup) {
            times[s - o->warmup] = joule_now() - t0;
            counted = joule_flops_counted() - f0;
        }
    }
    joule_energy_report er;
    memset(&er, 0, sizeof er);
    cli_energy_end(&energy, (uint64_t)N * (uint64_t)(o->warmup + o->steps), 0, false, &er);
    qsort(times, (size_t)o->steps, sizeof *times, percentile_cmp);
    double med = times[o->steps / 2];
    double fpt = model_flops_per_token(m, T), tps = N / med;
    double mfu = fpt * tps / (peak * 1e9);
    joule_param_counts pc = joule_model_param_counts(m);
    printf("model: layers %d, d_model %d, heads %d, d_ff %d, seq %d, batch %d (%.2fM params, %.2fM non-embedding)\n",
           o->layers, o->d_model, o->heads, o->d_ff, T, B, pc.total / 1e6, pc.non_embedding / 1e6);
    printf("sgemm peak (2048^3, best of 2 s):   %.1f GFLOPS\n", peak);
    printf("training step (fwd+bwd, median of %d): %.1f ms, %.0f tokens/s\n", o->steps, med * 1e3, tps);
    printf("model FLOPs/token = 6*N_mm + 12*L*T*d = %.4g; counted FLOPs/token = %.4g\n", fpt, (double)counted / N);
    double hfu = (double)counted / N * tps / (peak * 1e9);
    printf("model FLOPs: %.1f GFLOPS, MFU %.1f%% of the measured sgemm peak\n", fpt * tps / 1e9, 100 * mfu);
    printf("counted FLOPs: %.1f GFLOPS, HFU %.1f%% of the measured sgemm peak\n", (double)counted / N * tps / 1e9,
           100 * hfu);
    if (o->json)
        printf("{\"bench\":\"train\",\"core\":\"%s\",\"threads\":%d,\"peak_gflops\":%.2f,\"step_ms\":%.3f,"
               "\"tokens_per_s\":%.1f,\"model_flops_per_token\":%.6g,\"counted_flops_per_token\":%.6g,\"mfu\":%.4f,"
               "\"hfu\":%.4f,\"energy_j_per_token\":%.6g,\"energy_method\":\"%s\"}\n",
               joule_blas_corename(), joule_get_threads(), peak, med * 1e3, tps, fpt, (double)counted / N, mfu, hfu,
               er.tokens ? er.joules / (double)er.tokens : 0.0, er.method[0] ? er.method : "none");
    free(in);
    free(tg);
    free(times);
    joule_model_free(m);
    return 0;
}

static int bench_decode(const bench_opts *o) {
    bench_header("decode");
    joule_model *m;
    int rc = make_model(o, &m);
    if (rc) return cli_fail("bench decode", rc);
    joule_decoder *d;
    if ((rc = joule_decoder_create(&d, m))) return cli_fail("bench decode", rc);
    int n = o->tokens < m->cfg.ctx ? o->tokens : m->cfg.ctx;
    const float *lg;
    for (int i = 0; i < 16; i++) joule_decoder_step(d, i, &lg); /* warm-up */
    joule_decoder_reset(d);
    cli_energy energy;
    cli_energy_begin(&energy, "bench decode");
    double t0 = joule_now();
    int32_t tok = 'a';
    for (int i = 0; i < n; i++) {
        joule_decoder_step(d, tok, &lg);
        tok = (int32_t)(i % 200) + 32;
    }
    double dt = joule_now() - t0;
    joule_energy_report er;
    memset(&er, 0, sizeof er);
    cli_energy_end(&energy, (uint64_t)n, 0, false, &er);
    double tps = n / dt;
    /* Every weight matrix is read once per token; the embedding only one row. */
    double bytes = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (!m->tensors[i].embedding || !m->cfg.tied) bytes += (double)m->tensors[i].numel * 4;
    if (m->cfg.tied) bytes += (double)m->cfg.vocab * m->cfg.d_model * 4;
    double bw_ws = read_bandwidth((size_t)bytes, 1.0), bw_dram = read_bandwidth((size_t)1 << 30, 1.0);
    printf("batch-1 decode of %d tokens (positions 0..%d): %.0f tokens/s, %.2f ms/token\n", n, n - 1, tps, 1e3 * dt / n);
    printf("weights read per token: %.1f MB -> %.1f GB/s\n", bytes / 1e6, bytes * tps / 1e9);
    printf("read bandwidth measured here: %.1f GB/s for a %.0f MB working set (decode reaches %.0f%% of it), "
           "%.1f GB/s for 1 GiB\n",
           bw_ws, bytes / 1e6, 100 * bytes * tps / 1e9 / bw_ws, bw_dram);
    if (o->json)
        printf("{\"bench\":\"decode\",\"core\":\"%s\",\"threads\":%d,\"tokens_per_s\":%.1f,\"weight_gb_per_s\":%.3f,"
               "\"read_gb_per_s_working_set\":%.3f,\"read_gb_per_s_1gib\":%.3f,\"energy_j_per_token\":%.6g,"
               "\"energy_method\":\"%s\"}\n",
               joule_blas_corename(), joule_get_threads(), tps, bytes * tps / 1e9, bw_ws, bw_dram,
               er.tokens ? er.joules / (double)er.tokens : 0.0, er.method[0] ? er.method : "none");
    joule_decoder_free(d);
    joule_model_free(m);
    return 0;
}

static void usage(void) {
    printf("usage: joule bench train|decode|moe|energy [options]\n"
           "\n"
           "  train    sgemm peak and training-step throughput of a dense model; prints MFU\n"
           "           = (6*N_mm + 12*L*T*d) * tokens/s / measured sgemm peak\n"
           "  decode   batch-1 KV-cache decoding: tokens/s and GB/s of weights read\n"
           "  moe      MoE over dense tokens/s at equal active FLOPs, training and decode\n"
           "           (its own options: joule bench moe --help)\n"
           "  db       retrieval databases: build, query latency, recall, overhead over FAISS (bench db --help)\n"
           "  retro    RETRO model: train step and generation with retrieval vs without (bench retro --help)\n"
           "  energy   energy per query of checkpoints: latency, tokens/s, FLOPs, J/query\n"
           "           (its own options: joule bench energy --help)\n"
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
           "  --threads N     OpenMP/BLAS threads (all cores)\n"
           "  --json          also print one JSON line of results\n"
           "The BLAS kernel family in use (openblas_get_corename) is printed; OPENBLAS_CORETYPE is respected.\n");
}

int cmd_bench(int argc, char **argv) {
    bench_opts o = {6, 384, 6, 1024, 256, 8, 10, 2, 0, 256, false};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "moe")) return cmd_bench_moe(argc, argv); /* bench/bench_moe.c */
    if (!strcmp(argv[1], "energy")) return cmd_bench_energy(argc, argv);
    const char *what = argv[1];
    if (!strcmp(what, "db")) return bench_db(argc - 1, argv + 1); /* its own options */
    if (!strcmp(what, "retro")) return bench_retro(argc - 1, argv + 1); /* its own options */
    static const struct option opts[] = {
        {"layers", 1, 0, 'L'}, {"d-model", 1, 0, 'd'}, {"heads", 1, 0, 'H'}, {"d-ff", 1, 0, 'f'},
        {"ctx", 1, 0, 'c'},    {"batch", 1, 0, 'b'},   {"steps", 1, 0, 's'}, {"warmup", 1, 0, 'w'},
        {"threads", 1, 0, 't'}, {"tokens", 1, 0, 'n'}, {"json", 0, 0, 'j'},  {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        int *dst = NULL;
        int lo = 1;
        switch (ch) {
        case 'L': dst = &o.layers; break;
        case 'd': dst = &o.d_model; break;
        case 'H': dst = &o.heads; break;
        case 'f': dst = &o.d_ff; break;
        case 'c': dst = &o.ctx; break;
        case 'b': dst = &o.batch; break;
        case 's': dst = &o.steps; break;
        case 'w': dst = &o.warmup; lo = 0; break;
        case 't': dst = &o.threads; lo = 0; break;
        case 'n': dst = &o.tokens; break;
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
    return cli_usage_error("bench", "unknown benchmark '%s' (train, decode, moe, energy)", what);
}
