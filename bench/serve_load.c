/* `joule bench serve` in process: arrivals, and the open-loop run over the scheduler.
 * Requests enter the scheduler when their arrival time has passed, at the next step
 * boundary, whatever the server's progress; the timeline gets a point after every step. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "joule/bench_serve.h"

/* Gamma(k, 1) by Marsaglia and Tsang's method (k < 1 through k + 1 and a power of U). */
static double gamma_draw(joule_rng *r, double k) {
    if (k < 1) {
        double u = joule_rng_float(r);
        return gamma_draw(r, k + 1) * pow(u > 0 ? u : 1e-300, 1.0 / k);
    }
    const double d = k - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = joule_rng_normal(r), v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = joule_rng_float(r);
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u > 0 ? u : 1e-300) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
    }
}

int joule_arrivals(joule_arrival_kind kind, double rate, double shape, int n, uint64_t seed, double *t) {
    if (n < 0) return joule_fail(JOULE_ERR_ARG, "arrivals: %d requests", n);
    if (kind != JOULE_ARRIVE_ALL && !(rate > 0 && isfinite(rate)))
        return joule_fail(JOULE_ERR_ARG, "arrivals: the rate must be > 0 requests/s, not %g", rate);
    if (kind == JOULE_ARRIVE_GAMMA && !(shape > 0 && isfinite(shape)))
        return joule_fail(JOULE_ERR_ARG, "arrivals: the gamma shape must be > 0, not %g", shape);
    joule_rng r;
    joule_rng_seed(&r, seed);
    double now = 0;
    for (int i = 0; i < n; i++) {
        if (kind == JOULE_ARRIVE_POISSON) {
            double u = joule_rng_float(&r); /* in [0, 1): 1 - u in (0, 1] */
            now += -log(1.0 - u) / rate;
        } else if (kind == JOULE_ARRIVE_GAMMA) {
            now += gamma_draw(&r, shape) / (shape * rate);
        }
        t[i] = now;
    }
    return JOULE_OK;
}

void joule_serve_trace_free(joule_serve_trace *tr) {
    for (int i = 0; tr->req && i < tr->n; i++) free(tr->req[i].token_t);
    free(tr->req);
    free(tr->pt);
    memset(tr, 0, sizeof *tr);
}

typedef struct {
    joule_serve_trace *tr;
    joule_serve_req *q;
    double t0;
    int *in_flight;
    uint64_t *tokens;
} req_ctx;

static int on_token(void *ctx, int32_t tok) {
    req_ctx *c = ctx;
    (void)tok;
    const double t = joule_now() - c->t0;
    if (c->q->output_tokens == 0) c->q->first = t;
    c->q->token_t[c->q->output_tokens++] = t;
    (*c->tokens)++;
    return 0;
}

static void on_finish(void *ctx, joule_sched_finish why, int status) {
    req_ctx *c = ctx;
    c->q->end = joule_now() - c->t0;
    c->q->ok = why == JOULE_FINISH_LENGTH && status == JOULE_OK;
    (*c->in_flight)--;
}

static int add_point(joule_serve_trace *tr, double t, int in_flight, int running, uint64_t tokens,
                     const joule_energy_window *w) {
    if (tr->n_pt == tr->cap_pt) {
        int cap = tr->cap_pt ? 2 * tr->cap_pt : 1024;
        joule_serve_point *p = realloc(tr->pt, (size_t)cap * sizeof *p);
        if (!p) return joule_fail(JOULE_ERR_NOMEM, "out of memory recording the timeline");
        tr->pt = p;
        tr->cap_pt = cap;
    }
    joule_energy_report r;
    double j = NAN;
    if (w && joule_energy_window_stop(w, &r) == JOULE_OK) j = r.joules;
    tr->pt[tr->n_pt++] = (joule_serve_point){.t = t, .in_flight = in_flight, .running = running, .tokens = tokens, .joules = j};
    return JOULE_OK;
}

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - floor(s)) * 1e9)};
    nanosleep(&ts, NULL);
}

int joule_serve_trace_alloc(const joule_serve_load *l, joule_serve_trace *tr) {
    memset(tr, 0, sizeof *tr);
    tr->n = l->n;
    tr->req = calloc((size_t)l->n, sizeof *tr->req);
    if (!tr->req) return joule_fail(JOULE_ERR_NOMEM, "out of memory for %d requests", l->n);
    for (int i = 0; i < l->n; i++) {
        joule_serve_req *q = &tr->req[i];
        q->arrival = l->arrivals[i];
        q->first = q->end = NAN;
        q->prompt_tokens = l->n_prompt[i];
        if (!(q->token_t = malloc((size_t)(l->max_tokens[i] > 0 ? l->max_tokens[i] : 1) * sizeof(double))))
            return joule_fail(JOULE_ERR_NOMEM, "out of memory for %d requests", l->n);
    }
    snprintf(tr->method, sizeof tr->method, "%s", l->meters ? l->meters->method : "none");
    tr->busy_joules = NAN;
    return JOULE_OK;
}

/* Submits every request whose arrival has passed; sleeps when nothing runs until the next. */
typedef struct {
    int in_flight;
    uint64_t tokens;
} run_counts;

static int run_loop(const joule_serve_load *l, joule_sched *s, joule_serve_trace *tr, req_ctx *ctx,
                    const joule_energy_window *w, run_counts *c) {
    const double t0 = joule_now();
    int next = 0, rc = JOULE_OK;
    bool busy = false;
    for (int i = 0; i < l->n; i++)
        ctx[i] = (req_ctx){.tr = tr, .q = &tr->req[i], .t0 = t0, .in_flight = &c->in_flight, .tokens = &c->tokens};
    while (!rc && (next < l->n || busy)) {
        double now = joule_now() - t0;
        if (!busy && next < l->n && l->arrivals[next] > now) {
            sleep_s(l->arrivals[next] - now);
            now = joule_now() - t0;
        }
        for (; next < l->n && l->arrivals[next] <= now; next++) {
            joule_sched_request q = {.prompt = l->prompts[next], .n_prompt = l->n_prompt[next],
                                     .max_tokens = l->max_tokens[next],
                                     .sampler = {.temperature = 0, .top_k = 0, .top_p = 1}, .seed = (uint64_t)next,
                                     .stop_at_eod = false, .on_token = on_token, .on_finish = on_finish,
                                     .ctx = &ctx[next]};
            if ((rc = joule_sched_submit(s, &q, NULL))) break;
            c->in_flight++;
        }
        if (!rc) rc = add_point(tr, now, c->in_flight, joule_sched_get_stats(s).running, c->tokens, w);
        if (!rc) rc = joule_sched_step(s, &busy);
        if (!rc) rc = add_point(tr, joule_now() - t0, c->in_flight, joule_sched_get_stats(s).running, c->tokens, w);
    }
    if (!rc) tr->wall_s = joule_now() - t0 - l->arrivals[0];
    return rc;
}

int joule_serve_run(const joule_serve_load *l, joule_serve_trace *tr) {
    req_ctx *ctx = NULL;
    joule_sched *s = NULL;
    if (l->n < 1) return joule_fail(JOULE_ERR_ARG, "bench serve: no requests");
    joule_sched_opts so = l->sched;
    so.max_queue = l->n; /* open loop: every arrival is taken */
    int rc = joule_serve_trace_alloc(l, tr);
    if (!rc && !(ctx = calloc((size_t)l->n, sizeof *ctx))) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = joule_sched_create(&s, l->m, &so);
    joule_energy_window w;
    run_counts counts = {0};
    if (!rc && l->meters) rc = joule_energy_window_start(&w, l->meters);
    if (!rc) rc = run_loop(l, s, tr, ctx, l->meters ? &w : NULL, &counts);
    joule_sched_free(s); /* before ctx and counts: it may still call on_finish */
    free(ctx);
    if (rc) joule_serve_trace_free(tr);
    return rc;
}

int joule_serve_idle_power(const joule_energy *e, double seconds, double *watts) {
    joule_energy_window w;
    joule_energy_report r;
    int rc = joule_energy_window_start(&w, e);
    if (rc) return rc;
    sleep_s(seconds);
    if ((rc = joule_energy_window_stop(&w, &r))) return rc;
    *watts = r.duration_s > 0 ? r.joules / r.duration_s : 0;
    return JOULE_OK;
}
