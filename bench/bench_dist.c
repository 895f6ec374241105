/* The data- or expert-parallel training step, measured (joule/bench_dist.h): the time of
 * the whole step, of the gradient all-reduce and of the MoE all-to-alls inside it, each
 * step's slowest rank. */
#include "joule/bench_dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/dist.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "joule/optim.h"
#include "joule/train.h"

/* Random tokens for micro-batch `micro` of this rank: different per rank and micro-batch,
 * as a data-parallel step's are. */
static void fill_tokens(int32_t *in, int32_t *tg, int n, uint64_t seed) {
    joule_rng g;
    joule_rng_seed(&g, seed);
    for (int i = 0; i < n; i++) {
        in[i] = (int32_t)joule_rng_below(&g, 256);
        tg[i] = (int32_t)joule_rng_below(&g, 256);
    }
}

typedef struct {
    joule_model *m;
    joule_adamw opt;
    joule_adamw_opts adam;
    int32_t *in, *tg; /* accum micro-batches */
    bool ep;
} dist_run;

/* Seconds and bytes of the all-to-alls so far in this process. */
static void a2a_so_far(double *s, double *b) {
    const joule_dist_stats *st = joule_dist_get_stats();
    *s = st->seconds[JOULE_DIST_ALLTOALL];
    *b = st->bytes[JOULE_DIST_ALLTOALL];
}

/* One step: t[0] its seconds, t[1] of its all-reduce, t[2] of waiting for the other ranks
 * to finish their backward, t[3] of its all-to-alls; t[4] the bytes these sent. */
static int one_step(dist_run *d, const joule_bench_model_opts *o, int accum, double *t) {
    const int N = o->batch * o->ctx, micros = accum * joule_dist_size();
    int rc = joule_dist_barrier(); /* every rank starts the step together */
    double a2a_s, a2a_b;
    a2a_so_far(&a2a_s, &a2a_b);
    double t0 = joule_now(), loss;
    joule_model_zero_grad(d->m);
    for (int a = 0; a < accum && !rc; a++) {
        rc = joule_model_forward(d->m, d->in + (size_t)a * N, d->tg + (size_t)a * N, o->batch, o->ctx, &loss);
        if (!rc) rc = joule_model_backward(d->m, 1.0f / (float)micros);
    }
    double t1 = joule_now();
    /* a barrier first, so that the all-reduce's time is the transfer, not the wait for a
     * slower rank's backward (that wait is the skew, reported apart) */
    if (!rc) rc = joule_dist_barrier();
    double t1b = joule_now();
    if (!rc) rc = joule_train_allreduce_grads(d->m);
    double t2 = joule_now();
    double norm = 0;
    if (!rc && d->ep) rc = joule_train_grad_norm_owned(d->m, &norm);
    else if (!rc) norm = joule_grad_norm(d->m);
    if (rc) return rc;
    float clip = (d->adam.grad_clip > 0 && norm > d->adam.grad_clip) ? (float)(d->adam.grad_clip / norm) : 1.0f;
    joule_adamw_update(&d->opt, d->m, &d->adam, d->adam.lr, clip);
    t[0] = joule_now() - t0;
    t[1] = t2 - t1b;
    t[2] = t1b - t1;
    double s1, b1;
    a2a_so_far(&s1, &b1);
    t[3] = s1 - a2a_s;
    t[4] = b1 - a2a_b;
    return JOULE_OK;
}

static int measure(dist_run *d, const joule_bench_model_opts *o, int accum, joule_bench_dist_result *r) {
    /* per timed step: step, all-reduce, its share, skew, all-to-all, its share, its bytes */
    enum { STEP, AR, AR_SHARE, SKEW, A2A, A2A_SHARE, A2A_BYTES, N_SERIES };
    double *v = calloc((size_t)o->steps * N_SERIES, sizeof *v);
    int rc = v ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "bench dist: out of memory");
    for (int s = 0; s < o->warmup + o->steps && !rc; s++) {
        double t[5];
        if ((rc = one_step(d, o, accum, t))) break;
        /* the step lasts as long as its slowest rank (outside the timed part) */
        if ((rc = joule_dist_allreduce_max_f64(t, 5))) break;
        if (s < o->warmup) continue;
        const double x[N_SERIES] = {t[0], t[1], t[1] / t[0], t[2], t[3], t[3] / t[0], t[4]};
        for (int k = 0; k < N_SERIES; k++) v[(size_t)k * o->steps + (size_t)(s - o->warmup)] = x[k];
    }
    double med[N_SERIES];
    for (int k = 0; !rc && k < N_SERIES; k++) med[k] = joule_median(v + (size_t)k * o->steps, o->steps);
    if (!rc) {
        r->step_s = med[STEP];
        r->allreduce_s = med[AR];
        r->allreduce_share = med[AR_SHARE];
        r->skew_s = med[SKEW];
        r->alltoall_s = med[A2A];
        r->alltoall_share = med[A2A_SHARE];
        r->alltoall_bytes = med[A2A_BYTES];
    }
    free(v);
    return rc;
}

int joule_bench_dist(const joule_bench_model_opts *o, int accum, joule_bench_dist_mode mode,
                     joule_bench_dist_result *r) {
    memset(r, 0, sizeof *r);
    if (accum < 1 || o->steps < 1 || o->warmup < 0) return joule_fail(JOULE_ERR_ARG, "bench dist: accum and steps must be >= 1");
    dist_run d;
    memset(&d, 0, sizeof d);
    joule_config c = joule_config_default(o->layers, o->d_model, o->heads, o->d_ff, o->ctx);
    if (mode != JOULE_BENCH_DIST_DENSE) { /* bench moe's model of equal active FLOPs */
        joule_moe_config e = joule_moe_config_default(o->d_ff / 2 > 0 ? o->d_ff / 2 : 1);
        joule_moe_apply(&c, &e);
    }
    d.ep = mode == JOULE_BENCH_DIST_EP && joule_dist_size() > 1;
    int rc = joule_model_create(&d.m, &c);
    if (rc) return rc;
    joule_model_init(d.m, 1);
    const size_t N = (size_t)o->batch * o->ctx;
    d.adam = joule_adamw_defaults();
    d.in = malloc((size_t)accum * N * sizeof *d.in);
    d.tg = malloc((size_t)accum * N * sizeof *d.tg);
    if (!d.in || !d.tg) rc = joule_fail(JOULE_ERR_NOMEM, "bench dist: out of memory");
    if (!rc) rc = joule_model_alloc_train(d.m, o->batch);
    if (!rc) rc = joule_adamw_init(&d.opt, d.m->n_params);
    if (!rc && d.ep) rc = joule_train_expert_parallel(d.m, joule_dist_size());
    joule_model_set_training(d.m, true); /* training forwards: MoE capacity, expert parallelism */
    for (int a = 0; a < accum && !rc; a++)
        fill_tokens(d.in + (size_t)a * N, d.tg + (size_t)a * N, (int)N,
                    joule_mix64((uint64_t)joule_dist_rank(), (uint64_t)a));
    if (!rc) rc = measure(&d, o, accum, r);
    if (!rc) {
        const int ranks = joule_dist_size();
        r->ranks = ranks;
        r->accum = accum;
        r->threads = joule_get_threads();
        r->tokens_per_step = (double)ranks * accum * (double)N;
        r->params = (double)d.m->n_params;
        double shared = 0; /* expert parallelism all-reduces only the tensors every rank holds */
        for (int i = 0; i < d.m->n_tensors; i++) shared += d.m->tensors[i].owner < 0 ? (double)d.m->tensors[i].numel : 0;
        r->grad_bytes = 4.0 * shared;
        r->sent_bytes = ranks > 1 ? 2.0 * (ranks - 1) / ranks * r->grad_bytes : 0;
    }
    joule_adamw_free(&d.opt);
    free(d.in);
    free(d.tg);
    joule_model_free(d.m);
    return rc;
}
