/* Mixture-of-experts layers: routing rules, auxiliary losses, gradients with and without
 * drops, equivalence with the dense FFN, FLOP accounting, determinism and exact resume,
 * checkpoints, KV-cache decoding, and the CLI end to end.
 * Check forks each test; nothing threaded runs in main() (registration is not). */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/model.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "joule/safetensors.h"
#include "joule/train.h"
#include "testutil.h"

/* A small MoE config: every layer MoE unless `every` says otherwise. */
static joule_config moe_config(int layers, int every, int E, int k) {
    joule_config c = joule_config_default(layers, 16, 2, 24, 16);
    joule_moe_config e = joule_moe_config_default(24);
    e.n_experts = E;
    e.top_k = k;
    e.every = every;
    e.d_ff_expert = 12;
    joule_moe_apply(&c, &e);
    return c;
}

static joule_moe_router_opts router_opts(int E, int k, float cf) {
    joule_moe_router_opts o = {E, k, cf, true, false, 0, 1e-2f, 1e-3f, 0};
    return o;
}

/* ---------------------------------------------------------------- routing rules */

/* Checks every routing invariant of one routed batch. */
static void check_route_invariants(const joule_moe_route *r, const joule_moe_router_opts *o) {
    const int N = r->N, E = o->n_experts, k = o->top_k;
    int load[64] = {0};
    for (int n = 0; n < N; n++) {
        const int32_t *ex = r->expert + (size_t)n * k;
        const float *g = r->gate + (size_t)n * k, *p = r->probs + (size_t)n * E;
        for (int j = 0; j < E; j++) ck_assert(p[ex[0]] >= p[j]);
        if (k == 2) {
            ck_assert_int_ne(ex[0], ex[1]); /* never the same expert twice */
            ck_assert(g[0] >= g[1]);
            if (o->renormalize) ck_assert_float_eq_tol(g[0] + g[1], 1.0f, 1e-6f);
            for (int j = 0; j < E; j++)
                if (j != ex[0]) ck_assert(p[ex[1]] >= p[j]);
        }
        for (int s = 0; s < k; s++) load[ex[s]] += r->kept[(size_t)n * k + s];
    }
    for (int e = 0; e < E; e++)
        if (r->capacity) ck_assert_int_le(load[e], r->capacity);
    /* First choices outrank second choices: once a first choice to e is dropped, no second
     * choice to e is kept; within a slot, drops follow token order. */
    for (int e = 0; e < E; e++) {
        bool dropped_slot[2] = {false, false};
        for (int s = 0; s < k; s++)
            for (int n = 0; n < N; n++) {
                const size_t a = (size_t)n * k + s;
                if (r->expert[a] != e || (s == 1 && o->random_second && !r->kept[a])) continue;
                if (!r->kept[a]) dropped_slot[s] = true;
                else ck_assert_msg(!dropped_slot[s] && !(s == 1 && dropped_slot[0]),
                                   "expert %d kept token %d slot %d after a drop", e, n, s);
            }
    }
}

START_TEST(test_gate_and_capacity_invariants) {
    const int N = 96, E = 8;
    float logits[96 * 8];
    joule_rng rng;
    joule_rng_seed(&rng, 3);
    for (int i = 0; i < N * E; i++) logits[i] = 2.0f * joule_rng_normal(&rng);
    for (int k = 1; k <= 2; k++) {
        joule_moe_route r;
        ck_assert_int_eq(joule_moe_route_alloc(&r, N, E, k), JOULE_OK);
        const float factors[] = {0.25f, 0.5f, 1.0f, 1.25f, 0.0f};
        for (int f = 0; f < 5; f++)
            for (int variant = 0; variant < 3; variant++) {
                joule_moe_router_opts o = router_opts(E, k, factors[f]);
                o.renormalize = variant != 1;
                o.random_second = variant == 2;
                o.noise_key = 99;
                joule_moe_route_forward(&r, logits, N, &o);
                ck_assert_int_eq(r.capacity, joule_moe_capacity(factors[f], k, N, E));
                check_route_invariants(&r, &o);
                if (factors[f] == 0.0f) ck_assert_int_eq(r.dropped[0] + r.dropped[1], 0);
                if (factors[f] == 0.25f) ck_assert_int_gt(r.dropped[0] + r.dropped[1], 0);
            }
        joule_moe_route_free(&r);
    }
    /* ceil(cf * k * N / E), forgiving the float rounding of cf */
    ck_assert_int_eq(joule_moe_capacity(1.25f, 2, 2048, 8), 640);
    ck_assert_int_eq(joule_moe_capacity(0.3f, 2, 10, 2), 3);
    ck_assert_int_eq(joule_moe_capacity(1.0f, 2, 5, 4), 3);
    ck_assert_int_eq(joule_moe_capacity(0.0f, 2, 5, 4), 0);
}
END_TEST

/* The hand-worked example: 4 tokens, 4 experts, top-2, renormalised gates. Logits are
 * ln(p) so the softmax returns p:
 *   token 0: p = (.5, .3, .1, .1)  first e0, second e1, gates .5/.8 = .625 and .375
 *   token 1: p = (.6, .1, .2, .1)  first e0, second e2, gates .75 and .25
 *   token 2: p = (.1, .4, .4, .1)  tie between e1 and e2: the lower index e1 is first;
 *                                  gates .5 and .5
 *   token 3: p = (.1, .1, .2, .6)  first e3, second e2, gates .75 and .25
 * Capacity factor 0.5: capacity = ceil(0.5 * 2 * 4 / 4) = 1.
 *   first choices in token order: t0->e0 kept (e0 1/1), t1->e0 DROPPED (full),
 *                                 t2->e1 kept, t3->e3 kept
 *   then second choices:          t0->e1 DROPPED (e1 full), t1->e2 kept (e2 1/1),
 *                                 t2->e2 DROPPED, t3->e2 DROPPED
 *   so token 1 is served by its second choice only; first drops 1/4, second drops 3/4.
 * Capacity factor 1: capacity 2.
 *   first: t0->e0, t1->e0 (e0 2/2), t2->e1, t3->e3, all kept
 *   second: t0->e1 kept (e1 2/2), t1->e2 kept, t2->e2 kept (e2 2/2), t3->e2 DROPPED.
 * Rows grouped by expert in token order (cf 1): e0 [t0 t1], e1 [t0 t2], e2 [t1 t2], e3 [t3].
 * Routed load before capacity: e0 2, e1 2, e2 3, e3 1. f = (2, 1, 0, 1)/4,
 * P = (1.3, .9, .9, .9)/4, so lb = alpha * 4 * (.5*.325 + .25*.225 + .25*.225) = 1.1 alpha. */
START_TEST(test_hand_worked_example) {
    const float p[4][4] = {{.5f, .3f, .1f, .1f}, {.6f, .1f, .2f, .1f}, {.1f, .4f, .4f, .1f}, {.1f, .1f, .2f, .6f}};
    float logits[16];
    for (int i = 0; i < 16; i++) logits[i] = logf(p[i / 4][i % 4]);
    joule_moe_route r;
    joule_moe_dispatch d;
    ck_assert_int_eq(joule_moe_route_alloc(&r, 4, 4, 2), JOULE_OK);
    ck_assert_int_eq(joule_moe_dispatch_alloc(&d, 4, 4, 2), JOULE_OK);
    joule_moe_router_opts o = router_opts(4, 2, 0.5f);
    joule_moe_route_forward(&r, logits, 4, &o);
    const int32_t experts[8] = {0, 1, 0, 2, 1, 2, 3, 2};
    const float gates[8] = {.625f, .375f, .75f, .25f, .5f, .5f, .75f, .25f};
    const uint8_t kept_half[8] = {1, 0, 0, 1, 1, 0, 1, 0};
    for (int a = 0; a < 8; a++) {
        ck_assert_int_eq(r.expert[a], experts[a]);
        ck_assert_float_eq_tol(r.gate[a], gates[a], 1e-6f);
        ck_assert_int_eq(r.kept[a], kept_half[a]);
    }
    ck_assert_int_eq(r.capacity, 1);
    ck_assert_int_eq(r.dropped[0], 1);
    ck_assert_int_eq(r.dropped[1], 3);
    const int32_t routed[4] = {2, 2, 3, 1};
    for (int e = 0; e < 4; e++) ck_assert_int_eq(r.routed[e], routed[e]);
    ck_assert_double_eq_tol(r.lb, 1.1 * 1e-2, 1e-8);

    o.capacity_factor = 1.0f;
    joule_moe_route_forward(&r, logits, 4, &o);
    const uint8_t kept_one[8] = {1, 1, 1, 1, 1, 1, 1, 0};
    for (int a = 0; a < 8; a++) ck_assert_int_eq(r.kept[a], kept_one[a]);
    joule_moe_dispatch_build(&d, &r, 4, 2);
    const int32_t offsets[5] = {0, 2, 4, 6, 7}, rows[7] = {0, 2, 1, 4, 3, 5, 6}; /* assignment n*2+s per row */
    ck_assert_int_eq(d.rows, 7);
    for (int e = 0; e < 5; e++) ck_assert_int_eq(d.offset[e], offsets[e]);
    for (int i = 0; i < 7; i++) ck_assert_int_eq(d.assign[i], rows[i]);
    ck_assert_int_eq(d.row_of[7], -1);

    /* Combine weights: y = sum over kept assignments of gate * SwiGLU_e(x), against a
     * plain reference with C = 3, Fe = 2 and made-up weights. */
    const joule_moe_dims dm = {3, 2, 4, 2};
    float W[4 * 18], x[12], y[12] = {0}, xperm[24], h13[32], g[16], out[24];
    for (int i = 0; i < 4 * 18; i++) W[i] = 0.1f * (float)((i * 7) % 11) - 0.5f;
    for (int i = 0; i < 12; i++) x[i] = 0.3f * (float)(i % 5) - 0.4f;
    joule_moe_experts_forward(y, xperm, h13, g, out, x, W, &d, r.gate, &dm, NULL);
    for (int n = 0; n < 4; n++) {
        double ref[3] = {0, 0, 0};
        for (int s = 0; s < 2; s++) {
            if (!kept_one[n * 2 + s]) continue;
            const float *w = W + experts[n * 2 + s] * 18;
            double gg[2];
            for (int f = 0; f < 2; f++) {
                double h1 = 0, h3 = 0;
                for (int c = 0; c < 3; c++) {
                    h1 += (double)w[f * 3 + c] * x[n * 3 + c];
                    h3 += (double)w[6 + f * 3 + c] * x[n * 3 + c];
                }
                gg[f] = h1 / (1 + exp(-h1)) * h3;
            }
            for (int c = 0; c < 3; c++) ref[c] += gates[n * 2 + s] * (w[12 + c * 2] * gg[0] + w[12 + c * 2 + 1] * gg[1]);
        }
        for (int c = 0; c < 3; c++) ck_assert_double_eq_tol(y[n * 3 + c], ref[c], 1e-6);
    }
    joule_moe_dispatch_free(&d);
    joule_moe_route_free(&r);
}
END_TEST

START_TEST(test_aux_losses) {
    const int E = 8, N = 64;
    float logits[64 * 8];
    joule_moe_route r;
    ck_assert_int_eq(joule_moe_route_alloc(&r, N, E, 2), JOULE_OK);
    joule_moe_router_opts o = router_opts(E, 2, 0.0f);
    o.aux_alpha = 0.01f;
    o.z_beta = 0.001f;
    /* All-zero logits: P_i = 1/E and (ties to the lowest index) f_0 = 1: lb = alpha;
     * lse = ln E, so z = beta (ln E)^2. */
    memset(logits, 0, sizeof logits);
    joule_moe_route_forward(&r, logits, N, &o);
    ck_assert_double_eq_tol(r.lb, 0.01f, 1e-9);
    ck_assert_double_eq_tol(r.z, 0.001f * log(8.0) * log(8.0), 1e-9);
    /* Perfectly uniform routing: token n prefers expert n % E, so f_i = P_i = 1/E. */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < E; j++) logits[n * E + j] = j == n % E ? 3.0f : 0.0f;
    joule_moe_route_forward(&r, logits, N, &o);
    for (int j = 0; j < E; j++) ck_assert_int_eq(r.first[j], N / E);
    ck_assert_double_eq_tol(r.lb, 0.01f, 1e-8);
    /* Everything to expert 2: f_2 = 1, P_2 = 1: lb = alpha * E. */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < E; j++) logits[n * E + j] = j == 2 ? 40.0f : 0.0f;
    joule_moe_route_forward(&r, logits, N, &o);
    ck_assert_int_eq(r.first[2], N);
    ck_assert_double_eq_tol(r.lb, 0.01f * E, 1e-8);
    joule_moe_route_free(&r);
}
END_TEST

/* ---------------------------------------------------------------- equivalence with dense */

START_TEST(test_one_expert_top1_equals_dense) {
    joule_config d = joule_config_default(2, 16, 2, 24, 16);
    joule_config c = d;
    joule_moe_config e = joule_moe_config_default(24);
    e.n_experts = 1;
    e.top_k = 1;
    e.every = 1;
    e.aux_alpha = e.z_beta = 0.0f; /* the aux losses would add router gradients */
    joule_moe_apply(&c, &e);
    const int B = 2, T = 16, N = B * T, V = 256;
    joule_model *md = tu_model(&d, B, 5), *mm = tu_model(&c, B, 5);
    /* Same seed: every tensor but the FFNs already agrees (init streams keyed by name). */
    const char *parts[] = {"w1", "w3", "w2"};
    char dn[96], mn[96];
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < 3; i++) {
            snprintf(dn, sizeof dn, "layers.%d.ffn.%s.weight", l, parts[i]);
            snprintf(mn, sizeof mn, "layers.%d.moe.experts.0.%s.weight", l, parts[i]);
            const joule_param_info *a = joule_model_find(md, dn), *b = joule_model_find(mm, mn);
            ck_assert(a && b && a->numel == b->numel);
            memcpy(mm->params + b->offset, md->params + a->offset, a->numel * sizeof(float));
        }
    int32_t in[32], tg[32];
    tu_random_tokens(in, N, 1);
    tu_random_tokens(tg, N, 2);
    for (int train = 0; train < 2; train++) {
        joule_model_set_training(mm, train);
        double ld, lm;
        joule_model_zero_grad(md);
        joule_model_zero_grad(mm);
        ck_assert_int_eq(joule_model_forward(md, in, tg, B, T, &ld), JOULE_OK);
        ck_assert_int_eq(joule_model_forward(mm, in, tg, B, T, &lm), JOULE_OK);
        const float *a = joule_model_logits(md), *b = joule_model_logits(mm);
        for (int i = 0; i < N * V; i++) ck_assert_float_eq_tol(a[i], b[i], 1e-6f);
        ck_assert_double_eq_tol(ld, lm, 1e-6);
        ck_assert_int_eq(joule_model_backward(md, 1.0f), JOULE_OK);
        ck_assert_int_eq(joule_model_backward(mm, 1.0f), JOULE_OK);
        /* Gradients of the shared tensors and of the expert vs the dense FFN. */
        for (int t = 0; t < md->n_tensors; t++) {
            const joule_param_info *pd = &md->tensors[t];
            const char *ffn = strstr(pd->name, ".ffn.w");
            if (ffn) snprintf(mn, sizeof mn, "%.*s.moe.experts.0.%s", (int)(ffn - pd->name), pd->name, ffn + 5);
            else snprintf(mn, sizeof mn, "%s", pd->name);
            const joule_param_info *pm = joule_model_find(mm, mn);
            ck_assert_msg(pm != NULL, "no %s", mn);
            for (size_t i = 0; i < pd->numel; i++)
                ck_assert_msg(fabsf(md->grads[pd->offset + i] - mm->grads[pm->offset + i]) <= 1e-6f,
                              "%s[%zu]: %g vs %g", pd->name, i, md->grads[pd->offset + i], mm->grads[pm->offset + i]);
        }
    }
    joule_model_free(md);
    joule_model_free(mm);
}
END_TEST

/* ---------------------------------------------------------------- gradients */

static bool same_routing(const joule_model *m, const uint8_t *kept0, const int32_t *ex0) {
    size_t at = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const joule_moe_route *r = joule_moe_last_route(m, l);
        if (!r) continue;
        const size_t A = (size_t)r->N * m->cfg.moe.top_k;
        if (memcmp(kept0 + at, r->kept, A) || memcmp(ex0 + at, r->expert, A * sizeof(int32_t))) return false;
        at += A;
    }
    return true;
}

static size_t save_routing(const joule_model *m, uint8_t *kept, int32_t *ex) {
    size_t at = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const joule_moe_route *r = joule_moe_last_route(m, l);
        if (!r) continue;
        const size_t A = (size_t)r->N * m->cfg.moe.top_k;
        memcpy(kept + at, r->kept, A);
        memcpy(ex + at, r->expert, A * sizeof(int32_t));
        at += A;
    }
    return at;
}

static double total_loss(joule_model *m, const int32_t *in, const int32_t *tg, int B, int T) {
    double loss;
    ck_assert_int_eq(joule_model_forward(m, in, tg, B, T, &loss), JOULE_OK);
    return loss + joule_model_aux_loss(m);
}

/* d(LM loss + aux losses) by central differences of the float forward against the
 * backward, a few entries of every tensor. A perturbation that changes the routing (a
 * different expert or drop) makes the loss discontinuous there: such samples are skipped
 * and counted, and most must remain. */
static void check_moe_grad(joule_config c, bool expect_drops) {
    c.init_std = 0.3f;
    c.moe.aux_alpha = 0.5f; /* large, so the aux gradients are visible next to the LM's */
    c.moe.z_beta = 0.05f;
    const int B = 2, T = 8, N = B * T;
    joule_model *m = tu_model(&c, B, 7);
    joule_model_set_training(m, true);
    m->noise_seed = 1234;
    int32_t in[16], tg[16];
    tu_random_tokens(in, N, 1);
    tu_random_tokens(tg, N, 2);
    joule_model_zero_grad(m);
    double l0 = total_loss(m, in, tg, B, T);
    ck_assert(isfinite(l0));
    ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
    uint8_t kept[512];
    int32_t ex[512];
    int drops = 0;
    for (int l = 0; l < c.n_layers; l++) {
        const joule_moe_route *r = joule_moe_last_route(m, l);
        if (r) drops += r->dropped[0] + r->dropped[1];
    }
    ck_assert_msg(expect_drops ? drops > 0 : drops == 0, "%d assignments dropped", drops);
    save_routing(m, kept, ex);
    const float eps = 1e-2f;
    int checked = 0, skipped = 0;
    double worst = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const joule_param_info *t = &m->tensors[ti];
        double num[6], ana[6];
        int k = 0;
        for (size_t j = 0; j < t->numel && k < 6; j += t->numel / 6 + 1) {
            float *p = m->params + t->offset + j;
            float saved = *p;
            *p = saved + eps;
            double lp = total_loss(m, in, tg, B, T);
            bool ok = same_routing(m, kept, ex);
            *p = saved - eps;
            double lm = total_loss(m, in, tg, B, T);
            ok = ok && same_routing(m, kept, ex);
            *p = saved;
            if (!ok) {
                skipped++;
                continue;
            }
            num[k] = (lp - lm) / (2.0 * eps);
            ana[k] = m->grads[t->offset + j];
            k++;
        }
        double maxg = 0, maxd = 0;
        for (int i = 0; i < k; i++) {
            maxg = fmax(maxg, fabs(num[i]));
            maxd = fmax(maxd, fabs(num[i] - ana[i]));
        }
        checked += k;
        double rel = maxd / (maxg + 1e-4);
        worst = fmax(worst, rel);
        ck_assert_msg(rel < 2e-2, "tensor %s: max |numeric - analytic| %.3g vs max |g| %.3g", t->name, maxd, maxg);
    }
    fprintf(stderr, "moe gradient (%s, renorm %d, random second %d, %d drops): worst relative error %.2e, %d samples, "
                    "%d skipped\n",
            expect_drops ? "drops" : "no drops", c.moe.renormalize, c.moe.random_second, drops, worst, checked, skipped);
    ck_assert_int_gt(checked, 4 * skipped);
    joule_model_free(m);
}

START_TEST(test_gradients_no_drops) {
    for (int renorm = 0; renorm < 2; renorm++) {
        joule_config c = moe_config(2, 1, 4, 2);
        c.moe.capacity_train = 2.0f; /* capacity = N: nothing can be dropped */
        c.moe.renormalize = renorm;
        check_moe_grad(c, false);
    }
    joule_config c = moe_config(2, 1, 4, 1); /* Switch-style top-1 with the raw gate */
    c.moe.renormalize = false;
    c.moe.capacity_train = 0.0f;
    check_moe_grad(c, false);
}
END_TEST

START_TEST(test_gradients_with_drops) {
    joule_config c = moe_config(2, 1, 4, 2);
    c.moe.capacity_train = 0.5f;
    check_moe_grad(c, true);
    c.moe.random_second = true;
    c.moe.capacity_train = 0.75f;
    check_moe_grad(c, true);
}
END_TEST

/* ---------------------------------------------------------------- FLOPs, params */

START_TEST(test_counted_flops_match_analytic) {
    joule_config c = moe_config(3, 2, 4, 2); /* layer 1 MoE, layers 0 and 2 dense */
    c.moe.capacity_train = 0.5f;
    const int B = 2, T = 16, N = B * T;
    joule_model *m = tu_model(&c, B, 9);
    int32_t in[32], tg[32];
    tu_random_tokens(in, N, 3);
    tu_random_tokens(tg, N, 4);
    const joule_ext_ops *ops = joule_ext_get(JOULE_EXT_MOE);
    const uint64_t moe_analytic = ops->forward_flops(&c, 1, B, T);
    const char *names[4];
    uint64_t terms[4];
    ck_assert_int_eq(ops->flop_terms(&c, 1, B, T, names, terms, 4), 2);
    ck_assert_str_eq(names[0], "router");
    ck_assert_uint_eq(terms[0], 2ull * N * 16 * 4);
    ck_assert_uint_eq(terms[0] + terms[1], moe_analytic);
    ck_assert_uint_eq(terms[1], 2ull * N * 6 * 16 * 12); /* top_k * N * 6 C Fe */
    for (int train = 0; train < 2; train++) {
        joule_model_set_training(m, train);
        double loss;
        joule_flops_reset();
        ck_assert_int_eq(joule_model_forward(m, in, tg, B, T, &loss), JOULE_OK);
        const joule_moe_route *r = joule_moe_last_route(m, 1);
        const uint64_t dropped = (uint64_t)(r->dropped[0] + r->dropped[1]);
        /* analytic with the dropped assignments excluded */
        const uint64_t expect = joule_model_forward_flops(&c, B, T) - dropped * 6 * 16 * 12;
        ck_assert_uint_eq(joule_flops_counted(), expect);
        ck_assert_uint_eq(joule_moe_last_forward_flops(m), moe_analytic - dropped * 6 * 16 * 12);
        if (train) ck_assert_uint_gt(dropped, 0);
        else ck_assert_uint_eq(dropped, 0); /* evaluation is dropless by default */
        ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
        ck_assert_uint_eq(joule_flops_counted(), 3 * expect);
    }
    /* Active parameters: all but E - k experts of each MoE layer. */
    joule_param_counts pc = joule_model_param_counts(m);
    ck_assert_uint_eq(joule_moe_active_params(m, false), pc.total - 2ull * 3 * 16 * 12);
    ck_assert_uint_eq(joule_moe_active_params(m, true), pc.non_embedding - 2ull * 3 * 16 * 12);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- inference */

START_TEST(test_kv_cache_matches_forward) {
    joule_config c = moe_config(2, 1, 4, 2);
    const int T = 16, V = 256;
    joule_model *m = tu_model(&c, 1, 13);
    int32_t in[16];
    tu_random_tokens(in, T, 4);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, T, NULL), JOULE_OK);
    const float *full = joule_model_logits(m);
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    const uint64_t C = 16, L = 2, moe_layer = 2 * C * 4 + 2 * 6 * C * 12; /* router + top-2 experts */
    for (int t = 0; t < T; t++) {
        const float *lg;
        joule_flops_reset();
        ck_assert_int_eq(joule_decoder_step(d, in[t], &lg), JOULE_OK);
        /* docs/MODEL.md §10 with the FFN replaced by the MoE layer's 2CE + k 6CFe */
        ck_assert_uint_eq(joule_flops_counted(), L * (8 * C * C + 4 * (uint64_t)(t + 1) * C + moe_layer) + 2 * 256 * C);
        for (int v = 0; v < V; v++)
            ck_assert_msg(fabsf(lg[v] - full[(size_t)t * V + v]) < 1e-4f, "pos %d token %d: %g vs %g", t, v, lg[v],
                          full[(size_t)t * V + v]);
    }
    joule_decoder_free(d);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- checkpoints */

START_TEST(test_checkpoint_round_trip) {
    tu_make_dir("joule_moe_");
    const char *dir = tu_dir;
    joule_config c = moe_config(2, 2, 4, 2);
    c.moe.capacity_train = 1.5f;
    c.moe.capacity_eval = 2.0f;
    c.moe.renormalize = false;
    c.moe.random_second = true;
    c.moe.aux_alpha = 0.02f;
    c.moe.z_beta = 0.002f;
    joule_model *m, *r;
    ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
    joule_model_init(m, 3);
    char path[4200];
    snprintf(path, sizeof path, "%s/moe.safetensors", dir);
    ck_assert_int_eq(joule_checkpoint_save(m, path, NULL, NULL), JOULE_OK);
    ck_assert_msg(joule_checkpoint_load(&r, path, NULL) == JOULE_OK, "%s", joule_last_error());
    ck_assert_uint_eq(r->n_params, m->n_params);
    ck_assert(memcmp(r->params, m->params, m->n_params * sizeof(float)) == 0);
    ck_assert(memcmp(&r->cfg.moe, &c.moe, sizeof c.moe) == 0);
    ck_assert_int_eq(r->cfg.kinds[0].ffn, JOULE_FFN_DENSE);
    ck_assert_int_eq(r->cfg.kinds[1].ffn, JOULE_FFN_MOE);
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
    const joule_st_tensor *t = joule_st_find(f, "layers.1.moe.router.weight");
    ck_assert(t && t->shape[0] == 4 && t->shape[1] == 16);
    t = joule_st_find(f, "layers.1.moe.experts.3.w1.weight");
    ck_assert(t && t->shape[0] == 12 && t->shape[1] == 16);
    t = joule_st_find(f, "layers.1.moe.experts.3.w2.weight");
    ck_assert(t && t->shape[0] == 16 && t->shape[1] == 12);
    ck_assert_ptr_nonnull(joule_st_find(f, "layers.0.ffn.w1.weight"));
    ck_assert_ptr_null(joule_st_find(f, "layers.1.ffn.w1.weight"));
    joule_st_close(f);
    joule_model_free(m);
    joule_model_free(r);
    unlink(path);
    rmdir(dir);
}
END_TEST

/* ---------------------------------------------------------------- training */

/* One document of repeated sentences is plenty for a dozen steps. */
static void write_corpus(const char *bin) {
    const char *text = "the rain in spain stays mainly in the plain. a stitch in time saves nine. many hands "
                       "make light work, said the miller. ";
    joule_token_writer *w = tu_tokens_open(bin);
    tu_tokens_doc(w, 0, text, strlen(text), 40);
    tu_tokens_commit(w);
}

/* 12 steps of 2 micro-batches with random second choices (the per-step noise), split or
 * not by stop_after / resume. */
static void train_run(const char *name, uint64_t stop_after, int resume, const char *bin) {
    joule_config c = moe_config(2, 1, 4, 2);
    c.moe.random_second = true;
    c.moe.capacity_train = 1.0f;
    joule_train_opts o;
    tu_train_opts(&o, name, bin, stop_after, resume);
    joule_model *m = tu_train_model(o.out_path, resume, &c, 2);
    o.max_steps = 12;
    o.eval_windows = 2;
    ck_assert_msg(joule_train(m, &o, NULL) == JOULE_OK, "train failed: %s", joule_last_error());
    joule_model_free(m);
}

START_TEST(test_determinism_and_resume) {
    joule_set_threads(2);
    tu_make_dir("joule_moe_");
    const char *dir = tu_dir;
    char bin[4200], a[4200], b[4200], c[4200];
    snprintf(bin, sizeof bin, "%s/corpus.bin", dir);
    write_corpus(bin);
    train_run("straight", 0, 0, bin);
    train_run("again", 0, 0, bin);
    train_run("split", 6, 0, bin);
    train_run("split", 0, 1, bin);
    snprintf(a, sizeof a, "%s/straight.safetensors", dir);
    snprintf(b, sizeof b, "%s/split.safetensors", dir);
    snprintf(c, sizeof c, "%s/again.safetensors", dir);
    joule_model *ma, *mb, *mc;
    ck_assert_int_eq(joule_checkpoint_load(&ma, a, NULL), JOULE_OK);
    ck_assert_int_eq(joule_checkpoint_load(&mb, b, NULL), JOULE_OK);
    ck_assert_int_eq(joule_checkpoint_load(&mc, c, NULL), JOULE_OK);
    ck_assert(memcmp(ma->params, mc->params, ma->n_params * sizeof(float)) == 0);
    ck_assert(memcmp(ma->params, mb->params, ma->n_params * sizeof(float)) == 0);
    /* The logs agree line for line (loss and routing statistics), and carry the MoE
     * statistics apart from the LM loss. */
    snprintf(a, sizeof a, "%s/straight.jsonl", dir);
    snprintf(b, sizeof b, "%s/split.jsonl", dir);
    char *la = tu_must_read(a, NULL), *lb = tu_must_read(b, NULL);
    char *sa = NULL, *sb = NULL;
    int lines = 0;
    for (char *x = strtok_r(la, "\n", &sa), *y = strtok_r(lb, "\n", &sb); x && y;
         x = strtok_r(NULL, "\n", &sa), y = strtok_r(NULL, "\n", &sb), lines++) {
        cJSON *jx = cJSON_Parse(x), *jy = cJSON_Parse(y);
        ck_assert(jx && jy);
        ck_assert_double_eq(cJSON_GetObjectItem(jx, "loss")->valuedouble, cJSON_GetObjectItem(jy, "loss")->valuedouble);
        cJSON *mx = cJSON_GetObjectItem(jx, "moe"), *my = cJSON_GetObjectItem(jy, "moe");
        ck_assert(mx && my);
        char *px = cJSON_PrintUnformatted(mx), *py = cJSON_PrintUnformatted(my);
        ck_assert_str_eq(px, py);
        ck_assert(cJSON_GetObjectItem(mx, "aux")->valuedouble > 0);
        const cJSON *l0 = cJSON_GetArrayItem(cJSON_GetObjectItem(mx, "layers"), 0);
        const char *keys[] = {"layer", "tokens_min", "tokens_max", "max_over_mean", "drop_first", "drop_second",
                              "second_skipped", "entropy", "lb", "z"};
        for (int k = 0; k < 10; k++) ck_assert_msg(cJSON_GetObjectItem(l0, keys[k]) != NULL, "no %s", keys[k]);
        free(px);
        free(py);
        cJSON_Delete(jx);
        cJSON_Delete(jy);
    }
    ck_assert_int_eq(lines, 12);
    free(la);
    free(lb);
    joule_model_free(ma);
    joule_model_free(mb);
    joule_model_free(mc);
    tu_remove_dir();
}
END_TEST

/* ---------------------------------------------------------------- CLI end to end */

static cJSON *out_json(void) {
    char *s = tu_must_read(tu_path("out.txt"), NULL);
    cJSON *j = cJSON_Parse(s);
    ck_assert_msg(j != NULL, "not JSON: %s", s);
    free(s);
    return j;
}

START_TEST(test_cli_end_to_end) {
    tu_make_dir("joule_moe_cli.");
    write_corpus(tu_path("train.bin"));
    const char *tiny = "--layers 2 --d-model 32 --heads 2 --d-ff 64 --ctx 32 --batch 4 --threads 1";
    ck_assert_int_eq(tu_joule("train --train train.bin --val train.bin %s --steps 12 --eval-every 6 --arch moe --experts 4 "
                         "--top-k 2 --moe-every 2 --capacity-factor 1.0 --d-ff-expert 32 --out m.safetensors",
                         tiny),
                     0);
    ck_assert(tu_file_has("out.txt", "MoE"));
    char *text = tu_must_read(tu_path("m.log.jsonl"), NULL);
    ck_assert_ptr_nonnull(strstr(text, "\"moe\":{\"aux\":"));
    free(text);

    ck_assert_int_eq(tu_joule("eval --model m.safetensors --tokens train.bin --windows 8 --json --threads 1"), 0);
    cJSON *j = out_json();
    const cJSON *moe = cJSON_GetObjectItem(j, "moe");
    ck_assert_ptr_nonnull(moe);
    const cJSON *l0 = cJSON_GetArrayItem(cJSON_GetObjectItem(moe, "layers"), 0);
    ck_assert_int_eq((int)cJSON_GetObjectItem(l0, "layer")->valuedouble, 1);
    ck_assert_double_eq(cJSON_GetObjectItem(l0, "drop_first")->valuedouble, 0.0); /* dropless evaluation */
    cJSON_Delete(j);
    ck_assert_int_eq(tu_joule("eval --model m.safetensors --tokens train.bin --windows 8 --threads 1"), 0);
    ck_assert(tu_file_has("out.txt", "routing"));

    ck_assert_int_eq(tu_joule("generate --model m.safetensors -n 16 --temperature 0 --prompt 'the ' --threads 1"), 0);
    ck_assert(tu_file_has("out.txt", "the "));

    ck_assert_int_eq(tu_joule("info --model m.safetensors --json"), 0);
    j = out_json();
    const cJSON *p = cJSON_GetObjectItem(j, "params");
    const double total = cJSON_GetObjectItem(p, "total")->valuedouble;
    const double active = cJSON_GetObjectItem(p, "active")->valuedouble;
    ck_assert_double_eq(total - active, 2.0 * 3 * 32 * 32); /* E - k = 2 idle experts, one MoE layer */
    const cJSON *mc = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "config"), "moe");
    ck_assert_int_eq((int)cJSON_GetObjectItem(mc, "experts")->valuedouble, 4);
    ck_assert_int_eq((int)cJSON_GetObjectItem(mc, "d_ff_expert")->valuedouble, 32);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(mc, "renormalize")));
    cJSON_Delete(j);

    /* The routing options reach the config; --config of an MoE model keeps its layers. */
    ck_assert_int_eq(tu_joule("train --train train.bin %s --steps 2 --arch moe --experts 3 --moe-every 1 --top-k 1 "
                         "--router-no-renorm --router-random-second --aux-alpha 0.02 --z-beta 0 "
                         "--eval-capacity-factor 2 --out o.safetensors --no-log",
                         tiny),
                     0);
    ck_assert_int_eq(tu_joule("info --model o.safetensors --json"), 0);
    j = out_json();
    mc = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "config"), "moe");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(mc, "renormalize")) && cJSON_IsTrue(cJSON_GetObjectItem(mc, "random_second")));
    ck_assert_double_eq_tol(cJSON_GetObjectItem(mc, "aux_alpha")->valuedouble, 0.02, 1e-9);
    ck_assert_double_eq(cJSON_GetObjectItem(mc, "z_beta")->valuedouble, 0.0);
    ck_assert_double_eq(cJSON_GetObjectItem(mc, "capacity_eval")->valuedouble, 2.0);
    ck_assert_double_eq(cJSON_GetObjectItem(mc, "capacity_train")->valuedouble, 1.25); /* the default */
    const cJSON *layers = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "config"), "layers");
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(layers, 0), "ffn")->valuestring, "moe");
    char *cj = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "config"));
    tu_write_text(tu_path("cfg.json"), cj);
    free(cj);
    cJSON_Delete(j);
    ck_assert_int_eq(tu_joule("train --train train.bin --config cfg.json --batch 2 --steps 1 --out c.safetensors --no-log"),
                     0);
    ck_assert(tu_file_has("out.txt", "MoE FFN in layers 0,1"));
    ck_assert_int_eq(tu_joule("info --model m.safetensors"), 0);
    ck_assert(tu_file_has("out.txt", "active"));

    /* MoE options without --arch moe, and bad values, are usage errors. */
    ck_assert_int_eq(tu_joule("train --train train.bin %s --steps 1 --experts 4 --out x.safetensors", tiny), 2);
    ck_assert_int_eq(tu_joule("train --train train.bin %s --steps 1 --arch moe --top-k 3 --out x.safetensors", tiny), 2);
    ck_assert_int_eq(tu_joule("train --train train.bin %s --steps 1 --arch moe --experts 1 --out x.safetensors", tiny), 2);
    ck_assert_int_eq(tu_joule("train --train train.bin %s --steps 1 --arch moa --out x.safetensors", tiny), 2);
    tu_remove_dir();
}
END_TEST

static Suite *moe_suite(void) {
    Suite *s = suite_create("moe");
    TCase *r = tu_tcase(s, "routing", 60, NULL, NULL);
    tcase_add_test(r, test_gate_and_capacity_invariants);
    tcase_add_test(r, test_hand_worked_example);
    tcase_add_test(r, test_aux_losses);
    TCase *g = tu_tcase(s, "model", 180, NULL, NULL);
    tcase_add_test(g, test_one_expert_top1_equals_dense);
    tcase_add_test(g, test_gradients_no_drops);
    tcase_add_test(g, test_gradients_with_drops);
    tcase_add_test(g, test_counted_flops_match_analytic);
    tcase_add_test(g, test_kv_cache_matches_forward);
    tcase_add_test(g, test_checkpoint_round_trip);
    TCase *t = tu_tcase(s, "training", 300, NULL, NULL);
    tcase_add_test(t, test_determinism_and_resume);
    tcase_add_test(t, test_cli_end_to_end);
    return s;
}

int main(void) {
    joule_moe_register();
    return tu_run_suite(moe_suite());
}
