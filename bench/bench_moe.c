/* Training and decode tokens/s of an MoE model over a dense model with the same active
 * FLOPs per token, measured in one run with the steps interleaved (dense, MoE, dense, ...)
 * so that the machine's noise hits both alike. Only the ratios are the result; absolute
 * rates on a shared machine are context. */
#include <stdlib.h>
#include <string.h>

#include "joule/bench.h"
#include "joule/moe.h"
#include "joule/ops.h"

static int build(const joule_bench_moe_opts *o, bool moe, joule_model **m) {
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
    if ((rc = joule_model_alloc_train(*m, o->batch))) {
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

/* Interleaved training steps; td, tm: o->steps entries each. */
static void train_rounds(const joule_bench_moe_opts *o, joule_model *dense, joule_model *moe, const int32_t *in,
                         const int32_t *tg, double *td, double *tm, joule_bench_moe_result *r) {
    const int B = o->batch, T = o->ctx, N = B * T;
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
    double sum_m = 0;
    for (int i = 0; i < o->steps; i++) sum_m += tm[i]; /* the parts are means too */
    r->dense_step_s = joule_median(td, o->steps);
    r->moe_step_s = joule_median(tm, o->steps);
    r->dense_best_s = td[0];
    r->moe_best_s = tm[0];
    r->moe_counted_flops = (double)counted_moe / 3 / N;
    int dropped = 0, assignments = 0;
    for (int l = 0; l < moe->cfg.n_layers; l++) {
        const joule_moe_route *rt = joule_moe_last_route(moe, l);
        if (!rt) continue;
        dropped += rt->dropped[0] + rt->dropped[1];
        assignments += rt->N * o->top_k;
    }
    r->dropped_fraction = assignments ? (double)dropped / assignments : 0.0;
    /* Mean per step of the MoE layers' parts (all of them, forward + backward). */
    const joule_moe_timing *tp = joule_moe_timing_of(moe);
    const double k = 1e3 / o->steps;
    r->routing_ms = (tp->route_fwd + tp->route_bwd) * k;
    r->permutation_ms = (tp->permute_fwd + tp->permute_bwd) * k;
    r->experts_ms = (tp->experts_fwd + tp->experts_bwd) * k;
    r->moe_step_mean_ms = sum_m * k;
}

static int decode_rounds(const joule_bench_moe_opts *o, joule_model *dense, joule_model *moe, const int32_t *in,
                         joule_bench_moe_result *r) {
    joule_decoder *dd = NULL, *dm = NULL;
    int rc = joule_decoder_create(&dd, dense);
    if (!rc) rc = joule_decoder_create(&dm, moe);
    if (rc) {
        joule_decoder_free(dd);
        return rc;
    }
    const int n = o->tokens < o->ctx ? o->tokens : o->ctx;
    decode_run(dd, in, 16);
    decode_run(dm, in, 16);
    double rd[5], rm[5];
    for (int i = 0; i < 5; i++) {
        rd[i] = decode_run(dd, in, n);
        rm[i] = decode_run(dm, in, n);
    }
    r->decode_tokens = n;
    r->dense_decode_s = joule_median(rd, 5);
    r->moe_decode_s = joule_median(rm, 5);
    r->dense_decode_best_s = rd[0];
    r->moe_decode_best_s = rm[0];
    joule_decoder_free(dd);
    joule_decoder_free(dm);
    return JOULE_OK;
}

int joule_bench_moe(const joule_bench_moe_opts *o, joule_bench_moe_result *r) {
    memset(r, 0, sizeof *r);
    joule_model *dense = NULL, *moe = NULL;
    int rc = build(o, false, &dense);
    if (!rc && (rc = build(o, true, &moe))) joule_model_free(dense);
    if (rc) return rc;
    joule_model_set_training(moe, true);
    const int B = o->batch, T = o->ctx, N = B * T;
    int32_t *in = malloc((size_t)N * sizeof *in), *tg = malloc((size_t)N * sizeof *tg);
    double *td = calloc((size_t)o->steps, sizeof *td), *tm = calloc((size_t)o->steps, sizeof *tm);
    if (!in || !tg || !td || !tm) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        goto done;
    }
    joule_rng g;
    joule_rng_seed(&g, 1);
    for (int i = 0; i < N; i++) {
        in[i] = (int32_t)joule_rng_below(&g, 256);
        tg[i] = (int32_t)joule_rng_below(&g, 256);
    }
    r->dense_flops = (double)joule_model_forward_flops(&dense->cfg, B, T) / N;
    r->moe_flops = (double)joule_model_forward_flops(&moe->cfg, B, T) / N;
    r->dense_params = (double)joule_model_param_counts(dense).total;
    r->moe_params = (double)joule_model_param_counts(moe).total;
    r->moe_active_params = joule_moe_active_params(moe, false);
    train_rounds(o, dense, moe, in, tg, td, tm, r);
    rc = decode_rounds(o, dense, moe, in, r);
done:
    free(in);
    free(tg);
    free(td);
    free(tm);
    joule_model_free(dense);
    joule_model_free(moe);
    return rc;
}
