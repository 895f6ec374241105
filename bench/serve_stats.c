/* `joule bench serve`: the figures of a trace (docs/BENCH.md, "joule bench serve"). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/bench_serve.h"

/* Nearest-rank percentiles and the mean of v[n] (sorted here); NaN when n is 0. */
static joule_pctl pctl(double *v, int n) {
    joule_pctl p = {NAN, NAN, NAN, NAN};
    if (n < 1) return p;
    qsort(v, (size_t)n, sizeof *v, joule_cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    const double q[3] = {0.50, 0.90, 0.99};
    double *out[3] = {&p.p50, &p.p90, &p.p99};
    for (int i = 0; i < 3; i++) {
        int k = (int)ceil(q[i] * n) - 1;
        *out[i] = v[k < 0 ? 0 : k];
    }
    p.mean = sum / n;
    return p;
}

static double tpot(const joule_serve_req *q) {
    return q->output_tokens > 1 ? (q->token_t[q->output_tokens - 1] - q->first) / (q->output_tokens - 1) : 0;
}

/* Latencies of the completed requests; goodput counts those within the SLO. */
static void latencies(const joule_serve_trace *tr, const joule_serve_slo *slo, joule_serve_summary *s) {
    size_t gaps = 0;
    for (int i = 0; i < tr->n; i++)
        if (tr->req[i].ok && tr->req[i].output_tokens > 1) gaps += (size_t)tr->req[i].output_tokens - 1;
    double *a = malloc((size_t)(tr->n + 1) * sizeof *a), *b = malloc((size_t)(tr->n + 1) * sizeof *b);
    double *c = malloc((size_t)(tr->n + 1) * sizeof *c), *itl = malloc((gaps + 1) * sizeof *itl);
    int n = 0, good = 0;
    size_t k = 0;
    for (int i = 0; a && b && c && itl && i < tr->n; i++) {
        const joule_serve_req *q = &tr->req[i];
        if (!q->ok) continue;
        a[n] = q->first - q->arrival;
        b[n] = tpot(q);
        c[n] = q->end - q->arrival;
        good += a[n] <= slo->ttft_s && b[n] <= slo->tpot_s;
        n++;
        for (int t = 1; t < q->output_tokens; t++) itl[k++] = q->token_t[t] - q->token_t[t - 1];
    }
    s->ttft = pctl(a, a ? n : 0);
    s->tpot = pctl(b, b ? n : 0);
    s->e2e = pctl(c, c ? n : 0);
    s->itl = pctl(itl, itl ? (int)k : 0);
    s->goodput_req_per_s = s->wall_s > 0 ? good / s->wall_s : NAN;
    s->slo_share = n ? (double)good / n : NAN;
    free(a);
    free(b);
    free(c);
    free(itl);
}

/* The steady-state window: from the first to the last point at the largest batch of the
 * run. */
static void steady(const joule_serve_trace *tr, joule_serve_summary *s) {
    int peak = 0, i0 = -1, i1 = -1;
    for (int i = 0; i < tr->n_pt; i++) peak = tr->pt[i].running > peak ? tr->pt[i].running : peak;
    for (int i = 0; i < tr->n_pt; i++)
        if (tr->pt[i].running == peak) {
            if (i0 < 0) i0 = i;
            i1 = i;
        }
    s->ss_in_flight = peak;
    s->ss_t0 = s->ss_t1 = s->ss_joules = s->ss_tokens = s->ss_j_per_token = s->ss_j_per_request = NAN;
    if (i0 < 0 || i1 <= i0) return;
    const joule_serve_point *p0 = &tr->pt[i0], *p1 = &tr->pt[i1];
    s->ss_t0 = p0->t;
    s->ss_t1 = p1->t;
    s->ss_tokens = (double)(p1->tokens - p0->tokens);
    s->ss_joules = p1->joules - p0->joules;
    if (s->ss_tokens > 0) s->ss_j_per_token = s->ss_joules / s->ss_tokens;
    if (s->completed) s->ss_j_per_request = s->ss_j_per_token * (double)s->output_tokens / s->completed;
}

void joule_serve_analyze(const joule_serve_trace *tr, const joule_serve_slo *slo, double idle_w,
                         joule_serve_summary *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->method, sizeof s->method, "%s", tr->method);
    s->requests = tr->n;
    double t_first = INFINITY, t_last = -INFINITY;
    for (int i = 0; i < tr->n; i++) {
        const joule_serve_req *q = &tr->req[i];
        t_first = q->arrival < t_first ? q->arrival : t_first;
        if (!q->ok) continue;
        s->completed++;
        s->output_tokens += (uint64_t)q->output_tokens;
        s->prompt_tokens += (uint64_t)q->prompt_tokens;
        t_last = q->end > t_last ? q->end : t_last;
    }
    s->wall_s = s->completed ? t_last - t_first : 0;
    s->req_per_s = s->wall_s > 0 ? s->completed / s->wall_s : NAN;
    s->tok_per_s = s->wall_s > 0 ? (double)s->output_tokens / s->wall_s : NAN;
    latencies(tr, slo, s);
    s->joules = tr->n_pt > 1 ? tr->pt[tr->n_pt - 1].joules - tr->pt[0].joules : NAN;
    s->j_per_request = s->completed ? s->joules / s->completed : NAN;
    s->j_per_token = s->output_tokens ? s->joules / (double)s->output_tokens : NAN;
    steady(tr, s);
    s->idle_w = idle_w;
    const double span = tr->n_pt > 1 ? tr->pt[tr->n_pt - 1].t - tr->pt[0].t : 0;
    const double sub = s->joules - idle_w * span;
    s->idle_sub_j_per_request = s->completed ? sub / s->completed : NAN;
    s->idle_sub_j_per_token = s->output_tokens ? sub / (double)s->output_tokens : NAN;
    s->ss_idle_sub_j_per_token = (s->ss_joules - idle_w * (s->ss_t1 - s->ss_t0)) / s->ss_tokens;
    s->busy_joules = tr->busy_joules;
    if (!isfinite(s->busy_joules)) {
        s->busy_joules = tr->n_pt > 1 ? 0 : NAN;
        for (int i = 1; i < tr->n_pt; i++)
            if (tr->pt[i - 1].in_flight > 0) s->busy_joules += tr->pt[i].joules - tr->pt[i - 1].joules;
    }
    s->busy_j_per_request = s->completed ? s->busy_joules / s->completed : NAN;
}
