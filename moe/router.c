/* MoE router: softmax over experts, top-k with renormalised gates, capacity and drops,
 * the load-balancing and z auxiliary losses, and the backward of all of it.
 * docs/MODEL.md §7 states the equations this file implements. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/moe.h"

#define MAX_EXPERTS 4096 /* joule_config_validate's limit */

int joule_moe_capacity(float capacity_factor, int top_k, int N, int E) {
    if (!(capacity_factor > 0)) return 0;
    /* The factor is a float (0.3f is 0.30000001): forgive its rounding, so 0.3 x 2 x 10 / 2
     * gives 3, not 4. */
    double x = (double)capacity_factor * top_k * (double)N / E;
    double c = ceil(x * (1.0 - 1e-6));
    return c < 1 ? 1 : (int)c;
}

int joule_moe_route_alloc(joule_moe_route *r, int max_tokens, int n_experts, int top_k) {
    memset(r, 0, sizeof *r);
    if (n_experts < 1 || n_experts > MAX_EXPERTS || top_k < 1 || top_k > 2 || top_k > n_experts)
        return joule_fail(JOULE_ERR_ARG, "moe router: %d experts, top-%d is not supported", n_experts, top_k);
    const size_t N = (size_t)max_tokens, E = (size_t)n_experts, k = (size_t)top_k;
    r->probs = joule_alloc(N * E * sizeof(float));
    r->lse = joule_alloc(N * sizeof(float));
    r->expert = joule_alloc(N * k * sizeof(int32_t));
    r->gate = joule_alloc(N * k * sizeof(float));
    r->kept = joule_alloc(N * k);
    r->routed = joule_alloc(E * sizeof(int32_t));
    r->first = joule_alloc(E * sizeof(int32_t));
    r->mean_prob = joule_alloc(E * sizeof(double));
    if (!r->probs || !r->lse || !r->expert || !r->gate || !r->kept || !r->routed || !r->first || !r->mean_prob) {
        joule_moe_route_free(r);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the MoE router for %d tokens", max_tokens);
    }
    return JOULE_OK;
}

void joule_moe_route_free(joule_moe_route *r) {
    joule_free(r->probs);
    joule_free(r->lse);
    joule_free(r->expert);
    joule_free(r->gate);
    joule_free(r->kept);
    joule_free(r->routed);
    joule_free(r->first);
    joule_free(r->mean_prob);
    memset(r, 0, sizeof *r);
}

/* Uniform in [0, 1) for token n: stateless, so the draw does not depend on threads. */
static float token_uniform(uint64_t key, int n) {
    return (float)(joule_mix64(key, (uint64_t)n) >> 40) * (1.0f / 16777216.0f);
}

/* Softmax, top-k and gates of token n (its random draw keyed by its index in the whole
 * batch, at). Returns whether a second choice was sampled. */
static bool route_token(joule_moe_route *r, const float *logit, int n, int at, const joule_moe_router_opts *o) {
    const int E = o->n_experts, k = o->top_k;
    float *p = r->probs + (size_t)n * E;
    float mx = logit[0];
    for (int j = 1; j < E; j++) mx = logit[j] > mx ? logit[j] : mx;
    float sum = 0.0f;
    for (int j = 0; j < E; j++) {
        p[j] = expf(logit[j] - mx);
        sum += p[j];
    }
    r->lse[n] = mx + logf(sum);
    const float inv = 1.0f / sum;
    /* Strict comparisons keep the lower index on ties. */
    int e1 = 0;
    for (int j = 0; j < E; j++) {
        p[j] *= inv;
        if (p[j] > p[e1]) e1 = j;
    }
    int32_t *ex = r->expert + (size_t)n * k;
    float *g = r->gate + (size_t)n * k;
    ex[0] = e1;
    if (k == 1) {
        g[0] = o->renormalize ? 1.0f : p[e1];
        return false;
    }
    int e2 = e1 == 0 ? 1 : 0;
    for (int j = 0; j < E; j++)
        if (j != e1 && p[j] > p[e2]) e2 = j;
    ex[1] = e2;
    const float s = p[e1] + p[e2];
    g[0] = o->renormalize ? p[e1] / s : p[e1];
    g[1] = o->renormalize ? p[e2] / s : p[e2];
    /* GShard: the second expert is used with probability 2 * (its renormalised gate). */
    return !o->random_second || token_uniform(o->noise_key, at) < 2.0f * (p[e2] / s);
}

void joule_moe_route_tokens(joule_moe_route *r, const float *logits, int N, const joule_moe_router_opts *o) {
    const int k = o->top_k;
    r->N = N;
    r->n_total = N;
#pragma omp parallel for schedule(static) if (N > 16)
    for (int n = 0; n < N; n++) {
        bool second = route_token(r, logits + (size_t)n * o->n_experts, n, o->token_base + n, o);
        r->kept[(size_t)n * k] = 1;
        if (k == 2) r->kept[(size_t)n * k + 1] = second;
    }
}

void joule_moe_route_place(joule_moe_route *r, const joule_moe_router_opts *o, int capacity, const int32_t *start) {
    const int E = o->n_experts, k = o->top_k, N = r->N;
    r->capacity = capacity;
    /* Placement: every first choice, in token order, before any second choice; an
     * assignment finding its expert full is dropped. */
    int32_t fill[MAX_EXPERTS];
    memset(r->routed, 0, (size_t)E * sizeof *r->routed);
    memset(r->first, 0, (size_t)E * sizeof *r->first);
    r->dropped[0] = r->dropped[1] = r->skipped = 0;
    for (int s = 0; s < k; s++) {
        if (start) memcpy(fill, start + (size_t)s * E, (size_t)E * sizeof *fill);
        else if (s == 0) memset(fill, 0, (size_t)E * sizeof *fill);
        for (int n = 0; n < N; n++) {
            const size_t a = (size_t)n * k + s;
            const int e = r->expert[a];
            if (s == 0) r->first[e]++;
            if (!r->kept[a]) {
                r->skipped++;
                continue;
            }
            r->routed[e]++;
            if (capacity && fill[e] >= capacity) {
                r->kept[a] = 0;
                r->dropped[s]++;
            } else {
                fill[e]++;
            }
        }
    }
}

void joule_moe_route_sums(const joule_moe_route *r, int E, double *prob_sum, double *ent_sum, double *z_sum) {
    double ent = 0.0, z = 0.0;
    for (int j = 0; j < E; j++) prob_sum[j] = 0.0;
    for (int n = 0; n < r->N; n++) {
        const float *p = r->probs + (size_t)n * E;
        for (int j = 0; j < E; j++) {
            prob_sum[j] += p[j];
            if (p[j] > 0) ent -= (double)p[j] * log((double)p[j]);
        }
        z += (double)r->lse[n] * r->lse[n];
    }
    *ent_sum = ent;
    *z_sum = z;
}

void joule_moe_route_losses(joule_moe_route *r, const joule_moe_router_opts *o, const double *prob_sum, double ent_sum,
                            double z_sum, int n_total) {
    const int E = o->n_experts;
    r->n_total = n_total;
    double lb = 0.0;
    for (int j = 0; j < E; j++) {
        r->mean_prob[j] = prob_sum[j] / n_total;
        lb += (double)r->first[j] / n_total * r->mean_prob[j];
    }
    r->lb = (double)o->aux_alpha * E * lb;
    r->z = (double)o->z_beta * z_sum / n_total;
    r->entropy = ent_sum / n_total;
}

void joule_moe_route_forward(joule_moe_route *r, const float *logits, int N, const joule_moe_router_opts *o) {
    joule_moe_route_tokens(r, logits, N, o);
    joule_moe_route_place(r, o, joule_moe_capacity(o->capacity_factor, o->top_k, N, o->n_experts), NULL);
    /* Statistics and losses in double, in a fixed order; mean_prob holds the sums first. */
    double ent, z;
    joule_moe_route_sums(r, o->n_experts, r->mean_prob, &ent, &z);
    joule_moe_route_losses(r, o, r->mean_prob, ent, z, N);
}

void joule_moe_route_backward(float *dlogits, const joule_moe_route *r, const float *dgate,
                              const joule_moe_router_opts *o, float aux_scale) {
    const int E = o->n_experts, k = o->top_k, N = r->N;
    /* d lb / d p[n][j] = alpha * E * f_j / Nt; d z / d logit[n][j] = beta * 2 lse_n p[n][j] / Nt,
     * Nt the tokens the losses are over (N, or every rank's under expert parallelism). */
    const float Nt = (float)r->n_total;
    const float lb_coef = aux_scale * o->aux_alpha * (float)E / Nt / Nt; /* times first[j] */
    const float z_coef = aux_scale * o->z_beta * 2.0f / Nt;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = r->probs + (size_t)n * E;
        const int32_t *ex = r->expert + (size_t)n * k;
        const float *dg = dgate + (size_t)n * k;
        float *dl = dlogits + (size_t)n * E;
        /* dl first holds dL/dp, then becomes dL/dlogit in place. */
        for (int j = 0; j < E; j++) dl[j] = lb_coef * (float)r->first[j];
        if (k == 1) {
            if (!o->renormalize) dl[ex[0]] += dg[0];
        } else if (o->renormalize) {
            const float p1 = p[ex[0]], p2 = p[ex[1]], s = p1 + p2, s2 = s * s;
            dl[ex[0]] += p2 * (dg[0] - dg[1]) / s2;
            dl[ex[1]] += p1 * (dg[1] - dg[0]) / s2;
        } else {
            dl[ex[0]] += dg[0];
            dl[ex[1]] += dg[1];
        }
        float dot = 0.0f;
        for (int j = 0; j < E; j++) dot += p[j] * dl[j];
        const float zc = z_coef * r->lse[n];
        for (int j = 0; j < E; j++) dl[j] = p[j] * (dl[j] - dot) + zc * p[j];
    }
}
