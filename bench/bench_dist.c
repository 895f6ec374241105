/* The data-parallel training step, measured (joule/bench_dist.h): the time of the whole
 * step and of the gradient all-reduce inside it, each step's slowest rank. */
#include "joule/bench_dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/dist.h"
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
} dist_run;

/* One step; *ar_s the seconds of its all-reduce, *skew_s of waiting for the other ranks
 * to finish their backward. */
static int one_step(dist_run *d, const joule_bench_model_opts *o, int accum, double *step_s, double *ar_s,
                    double *skew_s) {
    const int N = o->batch * o->ctx, micros = accum * joule_dist_size();
    int rc = joule_dist_barrier(); /* every rank starts the step together */
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
    if (rc) return rc;
    double norm = joule_grad_norm(d->m);
    float clip = (d->adam.grad_clip > 0 && norm > d->adam.grad_clip) ? (float)(d->adam.grad_clip / norm) : 1.0f;
    joule_adamw_update(&d->opt, d->m, &d->adam, d->adam.lr, clip);
    *step_s = joule_now() - t0;
    *ar_s = t2 - t1b;
    *skew_s = t1b - t1;
    return JOULE_OK;
}

static int measure(dist_run *d, const joule_bench_model_opts *o, int accum, joule_bench_dist_result *r) {
    double *step = calloc((size_t)o->steps, sizeof *step), *ar = calloc((size_t)o->steps, sizeof *ar),
           *share = calloc((size_t)o->steps, sizeof *share), *skew = calloc((size_t)o->steps, sizeof *skew);
    int rc = step && ar && share && skew ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "bench dist: out of memory");
    for (int s = 0; s < o->warmup + o->steps && !rc; s++) {
        double t[3];
        if ((rc = one_step(d, o, accum, &t[0], &t[1], &t[2]))) break;
        /* the step lasts as long as its slowest rank (outside the timed part) */
        if ((rc = joule_dist_allreduce_max_f64(t, 3))) break;
        if (s < o->warmup) continue;
        step[s - o->warmup] = t[0];
        ar[s - o->warmup] = t[1];
        share[s - o->warmup] = t[1] / t[0];
        skew[s - o->warmup] = t[2];
    }
    if (!rc) {
        r->step_s = joule_median(step, o->steps);
        r->allreduce_s = joule_median(ar, o->steps);
        r->allreduce_share = joule_median(share, o->steps);
        r->skew_s = joule_median(skew, o->steps);
    }
    free(skew);
    free(step);
    free(ar);
    free(share);
    return rc;
}

int joule_bench_dist(const joule_bench_model_opts *o, int accum, joule_bench_dist_result *r) {
    memset(r, 0, sizeof *r);
    if (accum < 1 || o->steps < 1 || o->warmup < 0) return joule_fail(JOULE_ERR_ARG, "bench dist: accum and steps must be >= 1");
    dist_run d;
    memset(&d, 0, sizeof d);
    joule_config c = joule_config_default(o->layers, o->d_model, o->heads, o->d_ff, o->ctx);
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
        r->grad_bytes = 4.0 * (double)d.m->n_params;
        r->sent_bytes = ranks > 1 ? 2.0 * (ranks - 1) / ranks * r->grad_bytes : 0;
    }
    joule_adamw_free(&d.opt);
    free(d.in);
    free(d.tg);
    joule_model_free(d.m);
    return rc;
}
