/* The RETRO model: grouped attention and whole-model gradients (CCA + neighbour encoder),
 * the m-1 shift causality at the layer and model level, equality with the dense model when
 * retrieval contributes nothing, counted vs analytic FLOPs, KV-cache decoding with live
 * neighbours, checkpoints. Check forks each test; nothing threaded runs in main(). */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gradcheck.h"
#include "joule/account.h"
#include "joule/checkpoint.h"
#include "joule/ext.h"
#include "joule/model.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "testutil.h"

enum { TM = 4, TK = 2, TB = 2, TT = 16, TNCH = TT / TM, TNB = TB * TNCH * TK * 2 * TM };

/* 3 layers, CCA in layers 1 and 2 (the encoder runs in layer 1), chunk 4, ctx 16. */
static joule_config retro_config(int k) {
    joule_config c = joule_config_default(3, 16, 2, 24, TT);
    tu_retro_apply(&c, TM, TK, 2, 12);
    c.retro.k = k;
    return c;
}

/* Neighbours [B][nch][k][2m]; with pads, the continuation of some neighbours ends early
 * (a document's end) and one neighbour is missing entirely. */
static void random_neighbours(int32_t *nb, int n, bool pads, uint64_t seed) {
    tu_random_tokens(nb, n, seed);
    if (!pads) return;
    const int len = 2 * TM;
    for (int i = 0; i < n; i += 3 * len)
        for (int j = len - 3; j < len; j++) nb[i + j] = JOULE_RETRO_PAD;
    for (int j = 0; j < len; j++) nb[len + j] = JOULE_RETRO_PAD;
}

static void forward_ok(joule_model *m, const int32_t *nb, const int32_t *in, const int32_t *tg, int B, double *loss) {
    ck_assert_int_eq(joule_retro_set_neighbours(m, nb, B, nb ? TNCH : 0), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, in, tg, B, TT, loss), JOULE_OK);
}

/* ---------------------------------------------------------------- grouped attention */

typedef struct {
    joule_gattn_plan p;
    int ldq, ldk;
    float *q, *k, *v, *out, *P, *R;
    size_t nq_rows, nk_rows;
} gattn_case;

static double gattn_loss(gattn_case *g) {
    memset(g->out, 0, g->nq_rows * g->ldq * sizeof(float));
    joule_gattn_forward(g->out, g->ldq, g->P, g->q, g->ldq, g->k, g->ldk, g->v, g->ldk, &g->p);
    double s = 0;
    for (size_t i = 0; i < g->nq_rows * g->ldq; i++) s += (double)g->out[i] * g->R[i];
    return s;
}

static double fd(gattn_case *g, float *x, float eps) {
    float saved = *x;
    *x = saved + eps;
    double lp = gattn_loss(g);
    *x = saved - eps;
    double lm = gattn_loss(g);
    *x = saved;
    return (lp - lm) / (2.0 * eps);
}

static void check_gattn(bool shared) {
    enum { G = 3, H = 2, HS = 4, MQ = 3, NK = 5, LD = H * HS };
    int qrow[G] = {0, 3, 6}, nq[G] = {3, 2, 3};
    int krow[G] = {0, 5, 10};
    if (shared) krow[1] = 0, krow[2] = 3; /* overlapping key rows */
    uint8_t mask[G * NK] = {1, 1, 0, 1, 1, /* group 1 reads nothing */ 0, 0, 0, 0, 0, 1, 1, 1, 1, 0};
    gattn_case g = {.p = {.G = G, .H = H, .hs = HS, .max_q = MQ, .nk = NK, .qrow = qrow, .nq = nq, .krow = krow,
                          .kmask = mask, .shared_keys = shared},
                    .ldq = LD, .ldk = LD, .nq_rows = 9, .nk_rows = 15};
    float q[9 * LD], k[15 * LD], v[15 * LD], out[9 * LD], P[G * H * MQ * NK], R[9 * LD];
    float dq[9 * LD] = {0}, dk[15 * LD] = {0}, dv[15 * LD] = {0}, dS[G * H * MQ * NK];
    g.q = q, g.k = k, g.v = v, g.out = out, g.P = P, g.R = R;
    joule_rng r;
    joule_rng_seed(&r, 3);
    gc_fill_normal(q, 9 * LD, 1.0f, &r);
    gc_fill_normal(k, 15 * LD, 1.0f, &r);
    gc_fill_normal(v, 15 * LD, 1.0f, &r);
    gc_fill_normal(R, 9 * LD, 1.0f, &r);
    for (int i = 8 * LD; i < 9 * LD; i++) R[i] = 0.0f; /* row 8 belongs to no group */
    gattn_loss(&g);
    for (int j = 0; j < LD; j++) ck_assert_float_eq(out[3 * LD + j], 0.0f); /* fully masked group */
    joule_gattn_backward(dq, LD, dk, LD, dv, LD, dS, R, LD, q, k, v, P, &g.p);
    float *xs[3] = {q, k, v}, *ds[3] = {dq, dk, dv};
    size_t ns[3] = {9 * LD, 15 * LD, 15 * LD};
    for (int t = 0; t < 3; t++) {
        double maxg = 0, maxd = 0;
        for (size_t i = 0; i < ns[t]; i++) {
            double num = fd(&g, &xs[t][i], 1e-2f);
            maxg = fmax(maxg, fabs(num));
            maxd = fmax(maxd, fabs(num - ds[t][i]));
        }
        ck_assert_msg(maxd / (maxg + 1e-6) < 5e-3, "gattn %s grad %d: err %.3g of %.3g", shared ? "shared" : "", t,
                      maxd, maxg);
    }
    ck_assert_uint_eq(joule_gattn_forward_flops(&g.p), 4ull * HS * H * NK * 8);
}

START_TEST(test_gattn_gradient) { check_gattn(false); }
END_TEST

START_TEST(test_gattn_gradient_shared_keys) { check_gattn(true); }
END_TEST

/* ---------------------------------------------------------------- whole-model gradient */

/* Every tensor (decoder, CCA, encoder) against central differences of the float forward,
 * with padded and missing neighbours in the batch. */
START_TEST(test_retro_model_gradient) {
    joule_config c = retro_config(TK);
    c.init_std = 0.3f;
    joule_model *m = tu_model(&c, TB, 7);
    tu_randomise_cca_out(m, 0.3f, 8);
    int32_t in[TB * TT], tg[TB * TT], nb[TNB];
    tu_random_tokens(in, TB * TT, 1);
    tu_random_tokens(tg, TB * TT, 2);
    random_neighbours(nb, TNB, true, 3);
    double loss;
    joule_model_zero_grad(m);
    forward_ok(m, nb, in, tg, TB, &loss);
    ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
    const float eps = 1e-2f;
    double worst = 0;
    int checked = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const joule_param_info *t = &m->tensors[ti];
        double num[5], ana[5];
        int n = 0;
        for (size_t j = 0; j < t->numel && n < 5; j += t->numel / 5 + 1, n++) {
            float *p = m->params + t->offset + j, saved = *p;
            double lp, lm;
            *p = saved + eps;
            forward_ok(m, nb, in, tg, TB, &lp);
            *p = saved - eps;
            forward_ok(m, nb, in, tg, TB, &lm);
            *p = saved;
            num[n] = (lp - lm) / (2.0 * eps);
            ana[n] = m->grads[t->offset + j];
        }
        double maxg = 0, maxd = 0;
        for (int i = 0; i < n; i++) {
            maxg = fmax(maxg, fabs(num[i]));
            maxd = fmax(maxd, fabs(num[i] - ana[i]));
        }
        double rel = maxd / (maxg + 1e-4);
        worst = fmax(worst, rel);
        ck_assert_msg(rel < 3e-2, "tensor %s: max |numeric - analytic| %.3g vs max |g| %.3g", t->name, maxd, maxg);
        checked += strncmp(t->name, "retro.", 6) == 0 || strstr(t->name, "cca") != NULL;
    }
    ck_assert_int_ge(checked, 2 * 5 + 1 + 2 * 14 + 1);
    fprintf(stderr, "RETRO model gradient: worst relative error %.2e over %d tensors\n", worst, m->n_tensors);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- causality */

/* The first CCA layer (encoder included) called directly: neighbours of chunk j change no
 * output row before (j+1)m - 1, and an input row p changes no output row before p. */
START_TEST(test_cca_layer_causality) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, 1, 5);
    tu_randomise_cca_out(m, 0.5f, 6);
    const joule_ext_ops *ops = joule_ext_get(JOULE_EXT_CCA);
    const int C = c.d_model, N = TT, l0 = c.retro.cca_start, nbk = TNCH * TK * 2 * TM;
    float *x = malloc(sizeof(float) * N * C), *y0 = malloc(sizeof(float) * N * C), *y1 = malloc(sizeof(float) * N * C);
    joule_rng r;
    joule_rng_seed(&r, 1);
    gc_fill_normal(x, (size_t)N * C, 1.0f, &r);
    int32_t nb[TNCH * TK * 2 * TM], nb2[TNCH * TK * 2 * TM];
    random_neighbours(nb, nbk, false, 2);
    ck_assert_int_eq(joule_retro_set_neighbours(m, nb, 1, TNCH), JOULE_OK);
    ck_assert_int_eq(ops->forward(m, l0, x, y0, 1, TT, false), JOULE_OK);
    for (int p = 0; p < TM - 1; p++)
        for (int i = 0; i < C; i++) ck_assert_float_eq(y0[p * C + i], x[p * C + i]); /* no retrieval yet */
    for (int j = 0; j < TNCH; j++) {
        memcpy(nb2, nb, sizeof nb);
        for (int i = 0; i < TK * 2 * TM; i++) nb2[j * TK * 2 * TM + i] = (nb2[j * TK * 2 * TM + i] + 17) % 256;
        ck_assert_int_eq(joule_retro_set_neighbours(m, nb2, 1, TNCH), JOULE_OK);
        ck_assert_int_eq(ops->forward(m, l0, x, y1, 1, TT, false), JOULE_OK);
        const int first = (j + 1) * TM - 1;
        ck_assert_int_eq(memcmp(y0, y1, sizeof(float) * first * C), 0);
        ck_assert_int_ne(memcmp(y0 + first * C, y1 + first * C, sizeof(float) * C), 0);
    }
    for (int p = 0; p < TT; p++) {
        const float saved = x[p * C];
        x[p * C] += 0.5f;
        ck_assert_int_eq(joule_retro_set_neighbours(m, nb, 1, TNCH), JOULE_OK);
        ck_assert_int_eq(ops->forward(m, l0, x, y1, 1, TT, false), JOULE_OK);
        x[p * C] = saved;
        ck_assert_int_eq(memcmp(y0, y1, sizeof(float) * p * C), 0);
    }
    free(x);
    free(y0);
    free(y1);
    joule_model_free(m);
}
END_TEST

/* The whole model: neighbours of chunk j leave every logit before (j+1)m - 1 bit-identical
 * and change the one at (j+1)m - 1; a token change at p leaves logits before p alone. */
START_TEST(test_model_causality) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, 1, 9);
    tu_randomise_cca_out(m, 0.5f, 10);
    const int V = c.vocab, nbk = TNCH * TK * 2 * TM;
    int32_t in[TT], nb[TNCH * TK * 2 * TM], nb2[TNCH * TK * 2 * TM];
    tu_random_tokens(in, TT, 11);
    random_neighbours(nb, nbk, false, 12);
    float *ref = malloc(sizeof(float) * TT * V);
    forward_ok(m, nb, in, NULL, 1, NULL);
    memcpy(ref, joule_model_logits(m), sizeof(float) * TT * V);
    for (int j = 0; j < TNCH; j++) {
        memcpy(nb2, nb, sizeof nb);
        for (int i = 0; i < TK * 2 * TM; i++) nb2[j * TK * 2 * TM + i] ^= 0x55;
        forward_ok(m, nb2, in, NULL, 1, NULL);
        const float *lg = joule_model_logits(m);
        const int first = (j + 1) * TM - 1;
        ck_assert_int_eq(memcmp(ref, lg, sizeof(float) * first * V), 0);
        ck_assert_int_ne(memcmp(ref + first * V, lg + first * V, sizeof(float) * V), 0);
    }
    for (int p = 0; p < TT; p++) {
        int32_t in2[TT];
        memcpy(in2, in, sizeof in);
        in2[p] = (in2[p] + 1) % V;
        forward_ok(m, nb, in2, NULL, 1, NULL);
        ck_assert_int_eq(memcmp(ref, joule_model_logits(m), sizeof(float) * p * V), 0);
    }
    free(ref);
    joule_model_free(m);
}
END_TEST

/* Padding is masked, not read as some token (it is stored as token 0 internally): a
 * neighbour whose continuation is padding differs from the same neighbour with byte 0 there. */
START_TEST(test_padding_is_masked) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, 1, 13);
    tu_randomise_cca_out(m, 0.5f, 14);
    const int V = c.vocab, nbk = TNCH * TK * 2 * TM;
    int32_t in[TT], nb[TNCH * TK * 2 * TM];
    tu_random_tokens(in, TT, 15);
    random_neighbours(nb, nbk, false, 16);
    float *pad = malloc(sizeof(float) * TT * V);
    for (int i = 5; i < 2 * TM; i++) nb[i] = JOULE_RETRO_PAD; /* chunk 0, neighbour 0 ends early */
    forward_ok(m, nb, in, NULL, 1, NULL);
    memcpy(pad, joule_model_logits(m), sizeof(float) * TT * V);
    for (int i = 5; i < 2 * TM; i++) nb[i] = 0;
    forward_ok(m, nb, in, NULL, 1, NULL);
    ck_assert_int_ne(memcmp(pad + (TM - 1) * V, joule_model_logits(m) + (TM - 1) * V, sizeof(float) * V), 0);
    free(pad);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- equal to dense */

static void assert_logits_equal_dense(joule_model *r, const int32_t *nb) {
    joule_config dc = joule_config_default(3, 16, 2, 24, TT);
    joule_model *d = tu_model(&dc, TB, 21); /* name-keyed init: the shared tensors match */
    for (int i = 0; i < d->n_tensors; i++) {
        const joule_param_info *t = joule_model_find(r, d->tensors[i].name);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(memcmp(joule_model_param(d, i), r->params + t->offset, t->numel * sizeof(float)), 0);
    }
    int32_t in[TB * TT];
    tu_random_tokens(in, TB * TT, 22);
    forward_ok(r, nb, in, NULL, TB, NULL);
    ck_assert_int_eq(joule_model_forward(d, in, NULL, TB, TT, NULL), JOULE_OK);
    ck_assert_int_eq(memcmp(joule_model_logits(r), joule_model_logits(d), sizeof(float) * TB * TT * dc.vocab), 0);
    joule_model_free(d);
}

START_TEST(test_untrained_equals_dense) {
    joule_config rc = retro_config(TK);
    joule_model *r = tu_model(&rc, TB, 21); /* CCA output projections start at 0 */
    int32_t nb[TNB];
    random_neighbours(nb, TNB, true, 23);
    assert_logits_equal_dense(r, nb);
    joule_model_free(r);
}
END_TEST

START_TEST(test_k0_equals_dense) {
    joule_config rc = retro_config(0);
    joule_model *r = tu_model(&rc, TB, 21);
    tu_randomise_cca_out(r, 0.5f, 24);
    ck_assert_int_eq(joule_retro_set_neighbours(r, NULL, TB, TNCH), JOULE_OK);
    int32_t in[TB * TT];
    tu_random_tokens(in, TB * TT, 22);
    ck_assert_int_eq(joule_model_forward(r, in, NULL, TB, TT, NULL), JOULE_OK);
    assert_logits_equal_dense(r, NULL);
    joule_model_free(r);
}
END_TEST

START_TEST(test_retrieval_off_equals_dense) {
    joule_config rc = retro_config(TK);
    joule_model *r = tu_model(&rc, TB, 21);
    tu_randomise_cca_out(r, 0.5f, 25);
    assert_logits_equal_dense(r, NULL);
    joule_model_free(r);
}
END_TEST

/* ---------------------------------------------------------------- FLOPs */

/* Counted FLOPs of a forward and backward against the analytic ones: the regular layout of
 * training windows (joule_model_forward_flops), and any other layout
 * (joule_retro_chunks_flops: windows at a chunk boundary, a chunk that ended before the
 * window, a sequence without chunks). */
static void check_counted(joule_model *m, const joule_config *c, const joule_retro_chunk *ch, int n, uint64_t analytic) {
    int32_t in[TB * TT], tg[TB * TT], nb[TB * (TNCH + 1) * TK * 2 * TM];
    tu_random_tokens(in, TB * TT, 33);
    tu_random_tokens(tg, TB * TT, 34);
    random_neighbours(nb, n * TK * 2 * TM, true, 35);
    ck_assert_uint_eq(joule_retro_chunks_flops(c, ch, n, TB, TT), analytic);
    joule_flops_reset();
    ck_assert_int_eq(joule_retro_set_chunks(m, ch, n, nb, TB, TT), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, in, tg, TB, TT, NULL), JOULE_OK);
    ck_assert_uint_eq(joule_flops_counted(), analytic);
    ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
    ck_assert_uint_eq(joule_flops_counted(), 3 * analytic);
}

START_TEST(test_flops_counted_equal_analytic) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, TB, 31);
    tu_randomise_cca_out(m, 0.1f, 32);
    joule_retro_chunk ch[TB * (TNCH + 1)];
    const int n = joule_retro_regular_chunks(TM, TB, TT, ch);
    ck_assert_int_eq(n, TB * TNCH);
    const uint64_t analytic = joule_model_forward_flops(&c, TB, TT);
    check_counted(m, &c, ch, n, analytic);
    const joule_retro_chunk other[] = {{0, -2}, {0, 5}, {0, 15}, {1, 3}};
    const uint64_t a2 = joule_retro_chunks_flops(&c, other, 4, TB, TT);
    ck_assert_uint_ne(a2, analytic);
    check_counted(m, &c, other, 4, a2);
    /* the named terms add up, the encoder reported at the first CCA layer only */
    const joule_ext_ops *ops = joule_ext_get(JOULE_EXT_CCA);
    const char *names[4];
    uint64_t fl[4], sum = 0;
    for (int l = 0; l < c.n_layers; l++) {
        if (!c.kinds[l].cca) continue;
        int k = ops->flop_terms(&c, l, TB, TT, names, fl, 4);
        ck_assert_int_eq(k, l == c.retro.cca_start ? 2 : 1);
        ck_assert_str_eq(names[0], "cca");
        for (int i = 0; i < k; i++) sum += fl[i];
        ck_assert_uint_eq(ops->forward_flops(&c, l, TB, TT), l == c.retro.cca_start ? fl[0] + fl[1] : fl[0]);
    }
    joule_config dc = joule_config_default(3, 16, 2, 24, TT);
    ck_assert_uint_eq(analytic, joule_model_forward_flops(&dc, TB, TT) + sum);
    joule_model_free(m);
}
END_TEST

/* The accountant's search estimates by index type (FAISS does the work, nothing counts it). */
START_TEST(test_search_cost_formulas) {
    joule_search_cost sc;
    ck_assert_int_eq(joule_retro_search_cost("Flat", 128, 1000, 0, 0, &sc), JOULE_OK);
    ck_assert(sc.flops == 2.0 * 128 * 1000);
    ck_assert_int_eq(joule_retro_search_cost("IVF16,Flat", 128, 1000, 2, 0, &sc), JOULE_OK);
    ck_assert(sc.flops == 2.0 * 128 * 16 + 2.0 * 128 * 2 * 1000 / 16);
    ck_assert_int_eq(joule_retro_search_cost("IVF16,PQ8", 128, 1600, 0, 0, &sc), JOULE_OK);
    ck_assert(sc.flops == 2.0 * 128 * 16 + 2.0 * 128 * 256 + 1600.0 / 16 * 8); /* nprobe 1 */
    ck_assert_int_eq(joule_retro_search_cost("HNSW32", 64, 1000000, 0, 40, &sc), JOULE_OK);
    ck_assert(sc.flops == 2.0 * 64 * 40 * 64);
    ck_assert_ptr_nonnull(strstr(sc.method, "HNSW"));
    ck_assert_int_eq(joule_retro_search_cost("LSH", 64, 10, 0, 0, &sc), JOULE_ERR_ARG);
}
END_TEST

/* ---------------------------------------------------------------- decoding, checkpoints */

/* Token-at-a-time decoding, handed each chunk's neighbours as it completes, gives the
 * batched forward's logits at every position. */
START_TEST(test_decoder_matches_forward) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, 1, 41);
    tu_randomise_cca_out(m, 0.5f, 42);
    const int V = c.vocab, per = TK * 2 * TM;
    int32_t in[TT], nb[TNCH * TK * 2 * TM];
    tu_random_tokens(in, TT, 43);
    random_neighbours(nb, TNCH * per, true, 44);
    forward_ok(m, nb, in, NULL, 1, NULL);
    const float *ref = joule_model_logits(m);
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    for (int round = 0; round < 2; round++) { /* a reset decoder must not reuse old encodings */
        joule_decoder_reset(d);
        double worst = 0;
        for (int p = 0; p < TT; p++) {
            if ((p + 1) % TM == 0)
                ck_assert_int_eq(joule_retro_decoder_set_neighbours(d, p, nb + ((p + 1) / TM - 1) * per),
                                 JOULE_OK);
            const float *lg;
            ck_assert_int_eq(joule_decoder_step(d, in[p], &lg), JOULE_OK);
            for (int v = 0; v < V; v++) worst = fmax(worst, fabs(lg[v] - ref[p * V + v]));
        }
        ck_assert_msg(worst < 1e-4, "decoder vs forward: max |diff| %.3g", worst);
    }
    joule_decoder_free(d);
    joule_model_free(m);
}
END_TEST

/* Any layout, as evaluation windows have them (a chunk that ended before the window, chunks
 * not on the window's own grid): a prefill of the first rows, then steps, gives the batched
 * forward's logits at every position. */
START_TEST(test_decoder_matches_forward_any_layout) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, 1, 45);
    tu_randomise_cca_out(m, 0.5f, 46);
    const int V = c.vocab, per = TK * 2 * TM;
    const joule_retro_chunk ch[] = {{0, -2}, {0, 2}, {0, 9}, {0, 14}};
    int32_t in[TT], nb[4 * TK * 2 * TM];
    tu_random_tokens(in, TT, 47);
    random_neighbours(nb, 4 * per, true, 48);
    ck_assert_int_eq(joule_retro_set_chunks(m, ch, 4, nb, 1, TT), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, TT, NULL), JOULE_OK);
    const float *ref = joule_model_logits(m);
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(joule_retro_decoder_set_neighbours(d, ch[i].last, nb + i * per) == JOULE_OK, "%s", joule_last_error());
    const float *lg;
    ck_assert_int_eq(joule_decoder_prefill(d, in, 6, &lg), JOULE_OK);
    tu_expect_near(lg, ref + 5 * V, (size_t)V, 1e-4, "prefill");
    ck_assert_int_eq(joule_retro_decoder_set_neighbours(d, 3, nb), JOULE_ERR_ARG); /* already in the cache */
    for (int p = 6; p < TT; p++) {
        ck_assert_int_eq(joule_decoder_step(d, in[p], &lg), JOULE_OK);
        tu_expect_near(lg, ref + p * V, (size_t)V, 1e-4, "step");
    }
    joule_decoder_free(d);
    joule_model_free(m);
}
END_TEST

/* The accountant's RETRO terms of a query over n positions, from the sizes: the encoder of
 * each of the n/m completed chunks (as a batched forward counts it for one chunk), and per
 * CCA layer q, o and attention at positions m-1 .. n-1 plus keys/values per encoding. */
static void retro_check_terms(const joule_config *c, int n, const joule_acct_query *q) {
    const double chunks = n / TM, rows = n >= TM ? n - TM + 1 : 0, C = c->d_model, R = c->retro.k * 2 * TM;
    double cca = 0, cca1 = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (c->kinds[l].cca) {
            cca += rows * (4 * C * C + 4 * C * R) + chunks * 2 * R * c->retro.enc_d_model * 2 * C;
            cca1 += 4 * C * C + 4 * C * R + 2 * R * c->retro.enc_d_model * 2 * C;
        }
    /* one chunk of m rows read by one row, as a batched forward counts it, less its CCA */
    const joule_retro_chunk one = {0, TM - 1};
    const double enc1 = (double)joule_retro_chunks_flops(c, &one, 1, 1, TM) -
                        (double)joule_retro_chunks_flops(c, &one, 0, 1, TM) - cca1;
    ck_assert_msg(q->encoder == chunks * enc1, "n %d: encoder %.0f", n, q->encoder);
    ck_assert_msg(q->cca == cca, "n %d: cca %.0f, expected %.0f", n, q->cca, cca);
}

/* Counted FLOPs of token-at-a-time decoding with retrieval (neighbours handed for every
 * chunk as it completes) against the accountant's query, exactly: the prompt fed step by
 * step (prefill_steps) and the generated tokens (decode), for prompts shorter than, equal
 * to and not a multiple of the chunk, and queries that cross chunk boundaries. */
/* A model with CCA contributing, a sequence, every chunk's neighbours, the accountant. */
typedef struct {
    joule_model *m;
    int per; /* neighbour tokens per chunk */
    int32_t in[TT], nb[TNCH * TK * 2 * TM + 1];
    joule_acct_model a;
    joule_acct_opts o;
} decode_case;

static void decode_case_init(decode_case *k, joule_config c, uint64_t seed) {
    k->m = tu_model(&c, 1, seed);
    tu_randomise_cca_out(k->m, 0.5f, seed + 1);
    k->per = c.retro.k * 2 * TM;
    tu_random_tokens(k->in, TT, seed + 2);
    random_neighbours(k->nb, TNCH * k->per, true, seed + 3);
    joule_acct_from_config(&k->a, &c);
    joule_acct_opts_init(&k->o);
}

static void check_decode_flops(joule_config c) {
    decode_case k;
    decode_case_init(&k, c, 81);
    joule_model *m = k.m;
    const int per = k.per;
    const int32_t *in = k.in, *nb = k.nb;
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    static const int cases[][2] = {{1, 2}, {3, 1}, {3, 6}, {4, 4}, {5, 11}, {7, 2}, {8, 8}, {13, 3}, {16, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const int P = cases[i][0], G = cases[i][1];
        joule_acct_query q;
        ck_assert_int_eq(joule_account_query(&k.a, &k.o, P, G, &q), JOULE_OK);
        joule_decoder_reset(d);
        ck_assert_int_eq(joule_retro_decoder_clear(d), JOULE_OK);
        uint64_t counted[2] = {0, 0};
        for (int p = 0; p < P + G; p++) {
            if ((p + 1) % TM == 0)
                ck_assert_int_eq(joule_retro_decoder_set_neighbours(d, p, nb + ((p + 1) / TM - 1) * per),
                                 JOULE_OK);
            const float *lg;
            joule_flops_reset();
            ck_assert_int_eq(joule_decoder_step(d, in[p], &lg), JOULE_OK);
            counted[p >= P] += joule_flops_counted();
        }
        ck_assert_msg(q.prefill_steps == (double)counted[0], "P %d G %d: prompt counted %llu, analytic %.3f (diff %g)", P, G,
                      (unsigned long long)counted[0], q.prefill_steps, q.prefill_steps - (double)counted[0]);
        ck_assert_msg(q.decode == (double)counted[1], "P %d G %d: decode counted %llu, analytic %.0f", P, G,
                      (unsigned long long)counted[1], q.decode);
        /* the encoder runs once per completed chunk, CCA from position m-1 on */
        retro_check_terms(&c, P + G, &q);
    }
    joule_decoder_free(d);
    joule_model_free(m);
}

START_TEST(test_decode_flops_exact) { check_decode_flops(retro_config(TK)); }
END_TEST

/* RETRO with an MoE FFN in layer 1 (a CCA layer too). */
static joule_config retro_moe_config(void) {
    joule_config c = retro_config(TK);
    joule_moe_config e = joule_moe_config_default(c.d_ff);
    e.n_experts = 4;
    e.top_k = 2;
    e.every = 2;
    e.d_ff_expert = 12;
    joule_moe_apply(&c, &e);
    ck_assert(joule_config_has_moe(&c) && joule_config_has_cca(&c));
    return c;
}

START_TEST(test_decode_flops_exact_moe) { check_decode_flops(retro_moe_config()); }
END_TEST

/* Batched prefill of an empty cache against token-at-a-time steps, neighbours handed for
 * the chunks in `handed` (bit u: chunk u): the same logits and KV cache to 1e-5, the same
 * next steps, and (all chunks handed) the accountant's prefill less P-1 logits rows,
 * exactly. */
static void check_prefill(joule_config c, unsigned handed) {
    decode_case k0;
    decode_case_init(&k0, c, 91);
    joule_model *m = k0.m;
    const int per = k0.per, C = c.d_model, V = c.vocab;
    const int32_t *in = k0.in, *nb = k0.nb;
    joule_decoder *ds, *db;
    ck_assert_int_eq(joule_decoder_create(&ds, m), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&db, m), JOULE_OK);
    static const int prompts[] = {1, 3, 4, 5, 8, 11, 13, 16};
    for (size_t i = 0; i < sizeof prompts / sizeof *prompts; i++) {
        const int P = prompts[i];
        joule_decoder *both[2] = {ds, db};
        for (int k = 0; k < 2; k++) {
            joule_decoder_reset(both[k]);
            ck_assert_int_eq(joule_retro_decoder_clear(both[k]), JOULE_OK);
        }
        const float *ls = NULL, *lb = NULL;
        for (int p = 0; p < P; p++) {
            const int u = (p + 1) / TM - 1;
            if ((p + 1) % TM == 0 && (handed >> u & 1))
                ck_assert_int_eq(joule_retro_decoder_set_neighbours(ds, p, nb + u * per), JOULE_OK);
            ck_assert_int_eq(joule_decoder_step(ds, in[p], &ls), JOULE_OK);
        }
        for (int u = 0; (u + 1) * TM <= P; u++)
            if (handed >> u & 1) ck_assert_int_eq(joule_retro_decoder_set_neighbours(db, (u + 1) * TM - 1, nb + u * per), JOULE_OK);
        joule_flops_reset();
        ck_assert_int_eq(joule_decoder_prefill(db, in, P, &lb), JOULE_OK);
        const uint64_t counted = joule_flops_counted();
        ck_assert_int_eq(db->pos, P);
        tu_expect_near(lb, ls, (size_t)V, 1e-5, "prefill logits");
        for (int l = 0; l < c.n_layers; l++) {
            const size_t at = (size_t)l * TT * C;
            tu_expect_near(db->k_cache + at, ds->k_cache + at, (size_t)P * C, 1e-5, "k cache");
            tu_expect_near(db->v_cache + at, ds->v_cache + at, (size_t)P * C, 1e-5, "v cache");
        }
        if (handed == ~0u) {
            joule_acct_query q;
            ck_assert_int_eq(joule_account_query(&k0.a, &k0.o, P, 0, &q), JOULE_OK);
            ck_assert_msg((double)counted == q.prefill - 2.0 * C * V * (P - 1), "P %d: counted %llu analytic %.0f", P,
                          (unsigned long long)counted, q.prefill - 2.0 * C * V * (P - 1));
        }
        /* decoding on from either cache: the chunk in view and the next ones */
        for (int p = P; p < TT && p < P + 6; p++) {
            const int u = (p + 1) / TM - 1;
            for (int k = 0; k < 2; k++)
                if ((p + 1) % TM == 0 && (handed >> u & 1))
                    ck_assert_int_eq(joule_retro_decoder_set_neighbours(both[k], p, nb + u * per), JOULE_OK);
            ck_assert_int_eq(joule_decoder_step(ds, in[p], &ls), JOULE_OK);
            ck_assert_int_eq(joule_decoder_step(db, in[p], &lb), JOULE_OK);
            tu_expect_near(lb, ls, (size_t)V, 1e-5, "logits after prefill");
        }
    }
    joule_decoder_free(ds);
    joule_decoder_free(db);
    joule_model_free(m);
}

START_TEST(test_prefill_equals_steps) { check_prefill(retro_config(TK), ~0u); }
END_TEST

START_TEST(test_prefill_equals_steps_moe) { check_prefill(retro_moe_config(), ~0u); }
END_TEST

/* chunk 1 without neighbours: its positions read nothing, the others still do */
START_TEST(test_prefill_missing_chunk) { check_prefill(retro_config(TK), ~2u); }
END_TEST

/* Steps from position `from` to `to` of tokens tok, neighbours nb handed at every chunk end
 * (the chunk's own in nb: a continuation's chunks retrieve their own), logits into out[to - from][V]. */
static void steps_from(joule_decoder *d, const int32_t *tok, const int32_t *nb, int per, int from, int to, float *out) {
    const int V = d->m->cfg.vocab;
    for (int p = from; p < to; p++) {
        if ((p + 1) % TM == 0)
            ck_assert_int_eq(joule_retro_decoder_set_neighbours(d, p, nb + ((p + 1) / TM - 1) * per), JOULE_OK);
        const float *lg;
        ck_assert_int_eq(joule_decoder_step(d, tok[p], &lg), JOULE_OK);
        memcpy(out + (size_t)(p - from) * V, lg, (size_t)V * sizeof(float));
    }
}

/* Truncation of a RETRO decoder: after a continuation that completed chunks (new neighbours
 * encoded, another chunk in view), truncating back to the prompt (or into the continuation)
 * and decoding again gives bit-identical logits to the first time, for prompts ending
 * inside, at the end of and right after a chunk, from a prefill and from steps. */
static void check_truncate(bool prefilled) {
    decode_case k;
    decode_case_init(&k, retro_config(TK), 95);
    const int per = k.per, V = k.m->cfg.vocab;
    int32_t other[TT], nb2[TNCH * TK * 2 * TM + 1];
    tu_random_tokens(other, TT, 96); /* another continuation, with other neighbours */
    random_neighbours(nb2, TNCH * per, true, 97);
    float *first = malloc((size_t)TT * V * sizeof(float)), *again = malloc((size_t)TT * V * sizeof(float));
    float *scratch = malloc((size_t)TT * V * sizeof(float));
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, k.m), JOULE_OK);
    static const int prompts[] = {2, 4, 5, 7, 8, 9};
    for (size_t i = 0; i < sizeof prompts / sizeof *prompts; i++) {
        const int P = prompts[i], E = P + 7; /* the continuation completes one or two chunks */
        joule_decoder_reset(d);
        ck_assert_int_eq(joule_retro_decoder_clear(d), JOULE_OK);
        if (prefilled) {
            for (int u = 0; (u + 1) * TM <= P; u++)
                ck_assert_int_eq(joule_retro_decoder_set_neighbours(d, (u + 1) * TM - 1, k.nb + u * per), JOULE_OK);
            const float *lg;
            ck_assert_int_eq(joule_decoder_prefill(d, k.in, P, &lg), JOULE_OK);
            ck_assert_int_eq(joule_decoder_truncate(d, P - 1), P > 1 ? JOULE_ERR_ARG : JOULE_OK); /* inside it */
            if (P == 1) continue;
        } else {
            steps_from(d, k.in, k.nb, per, 0, P, scratch);
        }
        steps_from(d, k.in, k.nb, per, P, E, first);
        ck_assert_int_eq(joule_decoder_truncate(d, P), JOULE_OK);
        steps_from(d, other, nb2, per, P, E, scratch); /* a different continuation in between */
        ck_assert_int_eq(joule_decoder_truncate(d, P), JOULE_OK);
        steps_from(d, k.in, k.nb, per, P, E, again);
        ck_assert_msg(memcmp(first, again, (size_t)(E - P) * V * sizeof(float)) == 0, "prompt %d: logits differ", P);
        const int Q = P + 5; /* into the continuation, past a chunk it completed */
        ck_assert_int_eq(joule_decoder_truncate(d, Q), JOULE_OK);
        steps_from(d, k.in, k.nb, per, Q, E, again);
        ck_assert_msg(memcmp(first + (size_t)(Q - P) * V, again, (size_t)(E - Q) * V * sizeof(float)) == 0,
                      "prompt %d, truncated to %d: logits differ", P, Q);
        /* the neighbours of the continuation's chunks matter here: without them it decodes otherwise */
        ck_assert_int_eq(joule_decoder_truncate(d, P), JOULE_OK);
        for (int p = P; p < E; p++) {
            const float *lg;
            ck_assert_int_eq(joule_decoder_step(d, k.in[p], &lg), JOULE_OK);
            memcpy(again + (size_t)(p - P) * V, lg, (size_t)V * sizeof(float));
        }
        const int c1 = (P / TM + 1) * TM - 1; /* the first chunk the continuation completes */
        ck_assert_msg(memcmp(first + (size_t)(c1 - P) * V, again + (size_t)(c1 - P) * V, (size_t)V * sizeof(float)) != 0,
                      "prompt %d: the continuation's neighbours changed nothing", P);
    }
    joule_decoder_free(d);
    free(first);
    free(again);
    free(scratch);
    joule_model_free(k.m);
}

START_TEST(test_truncate_after_prefill) { check_truncate(true); }
END_TEST

START_TEST(test_truncate_after_steps) { check_truncate(false); }
END_TEST

START_TEST(test_checkpoint_round_trip) {
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, TB, 51);
    tu_randomise_cca_out(m, 0.5f, 52);
    tu_make_dir("joule_retro_");
    const char *path = tu_path("m.safetensors");
    ck_assert_int_eq(joule_checkpoint_save(m, path, NULL, NULL), JOULE_OK);
    joule_model *l;
    ck_assert_int_eq(joule_checkpoint_load(&l, path, NULL), JOULE_OK);
    ck_assert_int_eq(joule_model_alloc_train(l, TB), JOULE_OK);
    ck_assert_int_eq(l->cfg.retro.chunk, TM);
    ck_assert_int_eq(l->cfg.retro.enc_layers, 2);
    ck_assert(l->cfg.kinds[1].cca && l->cfg.kinds[2].cca && !l->cfg.kinds[0].cca);
    ck_assert_uint_eq(l->n_params, m->n_params);
    ck_assert_int_eq(memcmp(l->params, m->params, m->n_params * sizeof(float)), 0);
    int32_t in[TB * TT], nb[TNB];
    tu_random_tokens(in, TB * TT, 53);
    random_neighbours(nb, TNB, true, 54);
    forward_ok(m, nb, in, NULL, TB, NULL);
    forward_ok(l, nb, in, NULL, TB, NULL);
    ck_assert_int_eq(memcmp(joule_model_logits(m), joule_model_logits(l), sizeof(float) * TB * TT * c.vocab), 0);
    tu_remove_dir();
    joule_model_free(l);
    joule_model_free(m);
}
END_TEST

/* The positions field: written, read back; a config from before it existed reads as
 * "none" (the maths it was trained with); anything else is refused. */
START_TEST(test_positions_in_config) {
    joule_config c = retro_config(TK);
    ck_assert_int_eq(c.retro.positions, JOULE_RETRO_POS_ROPE);
    char *json = joule_config_to_json(&c);
    ck_assert_ptr_nonnull(strstr(json, "\"positions\":\"rope\""));
    joule_config r;
    ck_assert_int_eq(joule_config_from_json(&r, json, "t"), JOULE_OK);
    ck_assert_int_eq(r.retro.positions, JOULE_RETRO_POS_ROPE);
    char *old = strstr(json, ",\"positions\":\"rope\"");
    memmove(old, old + strlen(",\"positions\":\"rope\""), strlen(old + strlen(",\"positions\":\"rope\"")) + 1);
    ck_assert_int_eq(joule_config_from_json(&r, json, "t"), JOULE_OK);
    ck_assert_int_eq(r.retro.positions, JOULE_RETRO_POS_NONE);
    free(json);
    c.retro.positions = JOULE_RETRO_POS_NONE;
    json = joule_config_to_json(&c);
    char *p = strstr(json, "\"none\"");
    ck_assert_ptr_nonnull(p);
    memcpy(p + 1, "nope", 4);
    ck_assert_int_eq(joule_config_from_json(&r, json, "t"), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "retro.positions"));
    free(json);
    /* without positions a model computes, and decodes, as well: only the maths differs */
    joule_model *a = tu_model(&c, 1, 5), *b;
    joule_config cr = retro_config(TK);
    b = tu_model(&cr, 1, 5);
    tu_randomise_cca_out(a, 0.5f, 6);
    tu_randomise_cca_out(b, 0.5f, 6);
    int32_t in[TT], nb[TNCH * TK * 2 * TM];
    tu_random_tokens(in, TT, 7);
    random_neighbours(nb, TNCH * TK * 2 * TM, false, 8);
    forward_ok(a, nb, in, NULL, 1, NULL);
    forward_ok(b, nb, in, NULL, 1, NULL);
    ck_assert_int_ne(memcmp(joule_model_logits(a) + (TT - 1) * 256, joule_model_logits(b) + (TT - 1) * 256, 256 * 4), 0);
    joule_model_free(a);
    joule_model_free(b);
}
END_TEST

/* Same inputs and two threads: bit-identical gradients run to run. */
START_TEST(test_determinism) {
    joule_set_threads(2);
    joule_config c = retro_config(TK);
    joule_model *m = tu_model(&c, TB, 61);
    tu_randomise_cca_out(m, 0.5f, 62);
    int32_t in[TB * TT], tg[TB * TT], nb[TNB];
    tu_random_tokens(in, TB * TT, 63);
    tu_random_tokens(tg, TB * TT, 64);
    random_neighbours(nb, TNB, true, 65);
    float *g0 = malloc(m->n_params * sizeof(float));
    for (int run = 0; run < 2; run++) {
        joule_model_zero_grad(m);
        forward_ok(m, nb, in, tg, TB, NULL);
        ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
        if (run == 0) memcpy(g0, m->grads, m->n_params * sizeof(float));
    }
    ck_assert_int_eq(memcmp(g0, m->grads, m->n_params * sizeof(float)), 0);
    free(g0);
    joule_model_free(m);
}
END_TEST

START_TEST(test_bad_neighbours_refused) {
    joule_config rc = retro_config(TK);
    joule_model *m = tu_model(&rc, 1, 71);
    int32_t nb[TNCH * TK * 2 * TM] = {0};
    nb[5] = 256;
    ck_assert_int_eq(joule_retro_set_neighbours(m, nb, 1, TNCH), JOULE_ERR_ARG);
    nb[5] = 1;
    ck_assert_int_eq(joule_retro_set_neighbours(m, nb, 2, TNCH), JOULE_ERR_ARG); /* batch > capacity */
    ck_assert_int_eq(joule_retro_set_neighbours(m, nb, 1, TNCH - 1), JOULE_OK);
    int32_t in[TT] = {0};
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, TT, NULL), JOULE_ERR_ARG); /* wrong chunk count */
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "neighbours"));
    /* neighbours serve one forward: the next one, without any handed, is retrieval-off */
    tu_randomise_cca_out(m, 0.5f, 72);
    ck_assert_int_eq(joule_retro_set_neighbours(m, NULL, 1, TNCH), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, TT, NULL), JOULE_OK);
    float *off = malloc(sizeof(float) * TT * 256);
    memcpy(off, joule_model_logits(m), sizeof(float) * TT * 256);
    ck_assert_int_eq(joule_retro_set_neighbours(m, nb, 1, TNCH), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, TT, NULL), JOULE_OK);
    ck_assert_int_ne(memcmp(off, joule_model_logits(m), sizeof(float) * TT * 256), 0);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, TT, NULL), JOULE_OK);
    ck_assert_int_eq(memcmp(off, joule_model_logits(m), sizeof(float) * TT * 256), 0);
    free(off);
    joule_model_free(m);
}
END_TEST

/* Both modules fill every hook joule/ext.h marks required (the core calls them unchecked). */
START_TEST(test_required_hooks) {
    for (int k = 0; k < JOULE_EXT_COUNT; k++) {
        const joule_ext_ops *o = joule_ext_get((joule_ext_kind)k);
        ck_assert_ptr_nonnull(o);
        ck_assert(o->name && o->layout && o->alloc && o->forward && o->backward && o->forward_flops &&
                  o->flop_terms && o->decode_step);
    }
}
END_TEST

static Suite *retro_suite(void) {
    Suite *s = suite_create("retro_model");
    TCase *g = tu_tcase(s, "gradients", 120, NULL, NULL);
    tcase_add_test(g, test_gattn_gradient);
    tcase_add_test(g, test_gattn_gradient_shared_keys);
    tcase_add_test(g, test_retro_model_gradient);
    TCase *c = tu_tcase(s, "causality_and_equality", 60, NULL, NULL);
    tcase_add_test(c, test_cca_layer_causality);
    tcase_add_test(c, test_model_causality);
    tcase_add_test(c, test_padding_is_masked);
    tcase_add_test(c, test_untrained_equals_dense);
    tcase_add_test(c, test_k0_equals_dense);
    tcase_add_test(c, test_retrieval_off_equals_dense);
    tcase_add_test(c, test_flops_counted_equal_analytic);
    tcase_add_test(c, test_search_cost_formulas);
    tcase_add_test(c, test_decoder_matches_forward);
    tcase_add_test(c, test_decoder_matches_forward_any_layout);
    tcase_add_test(c, test_decode_flops_exact);
    tcase_add_test(c, test_decode_flops_exact_moe);
    tcase_add_test(c, test_prefill_equals_steps);
    tcase_add_test(c, test_prefill_equals_steps_moe);
    tcase_add_test(c, test_prefill_missing_chunk);
    tcase_add_test(c, test_truncate_after_prefill);
    tcase_add_test(c, test_truncate_after_steps);
    tcase_add_test(c, test_checkpoint_round_trip);
    tcase_add_test(c, test_positions_in_config);
    tcase_add_test(c, test_determinism);
    tcase_add_test(c, test_bad_neighbours_refused);
    tcase_add_test(c, test_required_hooks);
    return s;
}

int main(void) {
    joule_retro_register();
    joule_moe_register();
    return tu_run_suite(retro_suite());
}
