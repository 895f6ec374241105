/* A dense model's training step and batch-1 decode, against what this same process measures
 * of the machine (sgemm peak, read bandwidth) with the same kernels and threads: machines
 * here are shared and noisy, so only ratios from one run mean much. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/bench.h"
#include "joule/energy.h"
#include "joule/ops.h"
#include "joule/optim.h"

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

static int make_model(const joule_bench_model_opts *o, joule_model **m) {
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

static void window(const joule_bench_model_opts *o, bool begin) {
    if (o->window) o->window(o->window_ctx, begin);
}

/* The optimizer step as joule_train takes it: gradient norm, clipping, AdamW. */
static void optimizer_step(joule_adamw *opt, joule_model *m, const joule_adamw_opts *a) {
    double norm = joule_grad_norm(m);
    float clip = (a->grad_clip > 0 && norm > a->grad_clip) ? (float)(a->grad_clip / norm) : 1.0f;
    joule_adamw_update(opt, m, a, a->lr, clip);
}

int joule_bench_train(const joule_bench_model_opts *o, joule_bench_train_result *r) {
    memset(r, 0, sizeof *r);
    joule_model *m;
    int rc = make_model(o, &m);
    if (!rc && (rc = joule_model_alloc_train(m, o->batch))) joule_model_free(m);
    if (rc) return rc;
    const int B = o->batch, T = o->ctx, N = B * T;
    r->peak_gflops = joule_sgemm_peak_gflops(2048, 2.0);
    int32_t *in = malloc((size_t)N * sizeof *in), *tg = malloc((size_t)N * sizeof *tg);
    double *fb = calloc((size_t)o->steps, sizeof *fb), *full = calloc((size_t)o->steps, sizeof *full);
    joule_adamw opt = {0};
    const joule_adamw_opts adam = joule_adamw_defaults();
    if (!in || !tg || !fb || !full) rc = joule_fail(JOULE_ERR_NOMEM, "bench train: out of memory");
    if (!rc) rc = joule_adamw_init(&opt, m->n_params);
    if (rc) goto done;
    joule_rng g;
    joule_rng_seed(&g, 1);
    for (int i = 0; i < N; i++) {
        in[i] = (int32_t)joule_rng_below(&g, 256);
        tg[i] = (int32_t)joule_rng_below(&g, 256);
    }
    uint64_t counted = 0;
    window(o, true);
    for (int s = 0; s < o->warmup + o->steps; s++) {
        double loss, t0 = joule_now();
        uint64_t f0 = joule_flops_counted();
        joule_model_zero_grad(m);
        joule_model_forward(m, in, tg, B, T, &loss);
        joule_model_backward(m, 1.0f);
        double t1 = joule_now();
        optimizer_step(&opt, m, &adam);
        if (s >= o->warmup) {
            fb[s - o->warmup] = t1 - t0;
            full[s - o->warmup] = joule_now() - t0;
            counted = joule_flops_counted() - f0;
        }
    }
    window(o, false);
    r->step_s = joule_median(fb, o->steps);
    r->full_step_s = joule_median(full, o->steps);
    r->model_flops_per_token = model_flops_per_token(m, T);
    r->counted_flops_per_token = (double)counted / N;
    r->params = joule_model_param_counts(m);
done:
    joule_adamw_free(&opt);
    free(in);
    free(tg);
    free(fb);
    free(full);
    joule_model_free(m);
    return rc;
}

int joule_bench_decode(const joule_bench_model_opts *o, joule_bench_decode_result *r) {
    memset(r, 0, sizeof *r);
    joule_model *m;
    int rc = make_model(o, &m);
    if (rc) return rc;
    joule_decoder *d;
    if ((rc = joule_decoder_create(&d, m))) {
        joule_model_free(m);
        return rc;
    }
    const int n = o->tokens < m->cfg.ctx ? o->tokens : m->cfg.ctx;
    const float *lg;
    for (int i = 0; i < 16; i++) joule_decoder_step(d, i, &lg); /* warm-up */
    joule_decoder_reset(d);
    window(o, true);
    double t0 = joule_now();
    int32_t tok = 'a';
    for (int i = 0; i < n; i++) {
        joule_decoder_step(d, tok, &lg);
        tok = (int32_t)(i % 200) + 32;
    }
    r->seconds = joule_now() - t0;
    window(o, false);
    r->tokens = n;
    /* Every weight matrix is read once per token; the embedding only one row. */
    double bytes = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (!m->tensors[i].embedding || !m->cfg.tied) bytes += (double)m->tensors[i].numel * 4;
    if (m->cfg.tied) bytes += (double)m->cfg.vocab * m->cfg.d_model * 4;
    r->weight_bytes = bytes;
    r->read_gbs_working_set = read_bandwidth((size_t)bytes, 1.0);
    r->read_gbs_1gib = read_bandwidth((size_t)1 << 30, 1.0);
    joule_decoder_free(d);
    if (o->rows > 0) rc = joule_bench_decode_rows(m, o->rows, r);
    joule_model_free(m);
    return rc;
}
