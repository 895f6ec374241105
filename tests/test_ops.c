/* Tests of the layer ops (core/ops.c): each float op against a plain double reference
 * written here, each backward against central differences of that reference, plus the
 * structural properties (causality, normalisation, invertibility, determinism).
 *
 * Check forks every test, and a child forked after OpenMP/OpenBLAS started threads can
 * hang, so main() does nothing threaded: all op calls happen inside the tests.
 * Set JOULE_TEST_VERBOSE=1 to print the errors measured. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "joule/common.h"
#include "joule/ops.h"
#include "testutil.h"

#define FWD_TOL 1e-5  /* float forward vs double reference */
#define GRAD_TOL 1e-3 /* float backward vs central differences */
#define FD_EPS 1e-5   /* central-difference step (inputs are O(1)) */

static float *fbuf(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    ck_assert_ptr_nonnull(p);
    return p;
}

static double *dbuf(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    ck_assert_ptr_nonnull(p);
    return p;
}

static void report(const char *what, double err) {
    if (getenv("JOULE_TEST_VERBOSE")) printf("  %-50s max rel err %.3g\n", what, err);
}

static void check_err(const char *what, double err, double tol) {
    report(what, err);
    ck_assert_msg(err < tol, "%s: relative error %g >= %g", what, err, tol);
}

/* ==================================================================================== */
/* counted sgemm                                                                        */

START_TEST(test_sgemm_counts_flops) {
    enum { M = 3, N = 5, K = 7 };
    joule_rng rng;
    joule_rng_seed(&rng, 1);
    float A[M * K], At[K * M], Bm[K * N], Bt[N * K], Cm[M * N];
    gc_fill_uniform(A, M * K, -1, 1, &rng);
    gc_fill_uniform(Bm, K * N, -1, 1, &rng);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) At[k * M + i] = A[i * K + k];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) Bt[j * K + k] = Bm[k * N + j];
    double ref[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)A[i * K + k] * Bm[k * N + j];
            ref[i * N + j] = s;
        }
    /* All four transpose combinations give the same product and count 2*M*N*K each. */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            joule_flops_reset();
            joule_sgemm(ta, tb, M, N, K, 1.0f, ta ? At : A, ta ? M : K, tb ? Bt : Bm,
                        tb ? K : N, 0.0f, Cm, N);
            ck_assert_uint_eq(joule_flops_counted(), 2ull * M * N * K);
            ck_assert_double_lt(gc_rel_err(Cm, ref, M * N), 1e-6);
        }
    joule_flops_add(10);
    ck_assert_uint_eq(joule_flops_counted(), 2ull * M * N * K + 10);
    joule_flops_reset();
    ck_assert_uint_eq(joule_flops_counted(), 0);
}
END_TEST

/* ==================================================================================== */
/* embedding                                                                            */

typedef struct {
    const int32_t *tok;
    const double *R;
    int N, C;
} emb_ctx;

static double emb_loss(const double *emb, void *vctx) {
    emb_ctx *c = vctx;
    double L = 0;
    for (int n = 0; n < c->N; n++)
        for (int j = 0; j < c->C; j++) L += emb[(size_t)c->tok[n] * c->C + j] * c->R[n * c->C + j];
    return L;
}

START_TEST(test_embedding) {
    enum { N = 16, C = 16, VOC = 11 };
    joule_rng rng;
    joule_rng_seed(&rng, 2);
    int32_t tok[N];
    for (int n = 0; n < N; n++) tok[n] = (int32_t)joule_rng_below(&rng, VOC);
    float *emb = fbuf(VOC * C), *out = fbuf(N * C), *R = fbuf(N * C), *demb = fbuf(VOC * C);
    float *demb0 = fbuf(VOC * C);
    gc_fill_uniform(emb, VOC * C, -1, 1, &rng);
    gc_fill_uniform(R, N * C, -1, 1, &rng);
    gc_fill_uniform(demb0, VOC * C, -1, 1, &rng);

    joule_embedding_forward(out, tok, emb, N, C);
    for (int n = 0; n < N; n++)
        ck_assert_mem_eq(out + n * C, emb + (size_t)tok[n] * C, C * sizeof(float));

    memcpy(demb, demb0, VOC * C * sizeof(float));
    joule_embedding_backward(demb, R, tok, N, C);
    double *x = dbuf(VOC * C), *Rd = dbuf(N * C), *g = dbuf(VOC * C), *got = dbuf(VOC * C);
    gc_to_double(x, emb, VOC * C);
    gc_to_double(Rd, R, N * C);
    emb_ctx ctx = {tok, Rd, N, C};
    gc_numgrad(emb_loss, &ctx, x, VOC * C, FD_EPS, g);
    for (int i = 0; i < VOC * C; i++) got[i] = (double)demb[i] - demb0[i];
    check_err("embedding backward vs finite differences", gc_rel_err_d(got, g, VOC * C),
              GRAD_TOL);
    free(emb), free(out), free(R), free(demb), free(demb0), free(x), free(Rd), free(g), free(got);
}
END_TEST

START_TEST(test_embedding_repeated_tokens) {
    /* Tokens repeat (2 appears three times); rows of unused tokens stay bit-identical. */
    enum { N = 6, C = 40, VOC = 5 };
    int32_t tok[N] = {2, 0, 2, 3, 2, 0};
    joule_rng rng;
    joule_rng_seed(&rng, 3);
    float *dout = fbuf(N * C), *demb = fbuf(VOC * C), *before = fbuf(VOC * C);
    gc_fill_uniform(dout, N * C, -1, 1, &rng);
    gc_fill_uniform(before, VOC * C, -1, 1, &rng);
    memcpy(demb, before, VOC * C * sizeof(float));
    joule_embedding_backward(demb, dout, tok, N, C);
    for (int j = 0; j < C; j++) {
        float want2 = before[2 * C + j] + dout[0 * C + j] + dout[2 * C + j] + dout[4 * C + j];
        float want0 = before[0 * C + j] + dout[1 * C + j] + dout[5 * C + j];
        ck_assert_float_eq_tol(demb[2 * C + j], want2, 1e-6f);
        ck_assert_float_eq_tol(demb[0 * C + j], want0, 1e-6f);
        ck_assert_float_eq_tol(demb[3 * C + j], before[3 * C + j] + dout[3 * C + j], 1e-6f);
    }
    ck_assert_mem_eq(demb + 1 * C, before + 1 * C, C * sizeof(float));
    ck_assert_mem_eq(demb + 4 * C, before + 4 * C, C * sizeof(float));
    free(dout), free(demb), free(before);
}
END_TEST

/* ==================================================================================== */
/* RMSNorm                                                                              */

static void ref_rmsnorm(double *out, const double *in, const double *gain, int N, int C,
                        double eps) {
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += in[n * C + c] * in[n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) out[n * C + c] = in[n * C + c] * r * gain[c];
    }
}

typedef struct {
    const double *R;
    double *out;
    int N, C;
    double eps;
} rms_ctx;

/* x = [in (N*C) | gain (C)] */
static double rms_loss(const double *x, void *vctx) {
    rms_ctx *c = vctx;
    ref_rmsnorm(c->out, x, x + c->N * c->C, c->N, c->C, c->eps);
    return gc_dot(c->out, c->R, (size_t)c->N * c->C);
}

START_TEST(test_rmsnorm) {
    enum { N = 16, C = 16 };
    const float eps = 1e-5f;
    joule_rng rng;
    joule_rng_seed(&rng, 4);
    float *in = fbuf(N * C), *gain = fbuf(C), *out = fbuf(N * C), *rstd = fbuf(N);
    float *R = fbuf(N * C), *din = fbuf(N * C), *dgain = fbuf(C);
    float *din0 = fbuf(N * C), *dgain0 = fbuf(C);
    gc_fill_uniform(in, N * C, -1, 1, &rng);
    gc_fill_uniform(gain, C, 0.5f, 1.5f, &rng);
    gc_fill_uniform(R, N * C, -1, 1, &rng);
    gc_fill_uniform(din0, N * C, -1, 1, &rng);
    gc_fill_uniform(dgain0, C, -1, 1, &rng);

    double *x = dbuf(N * C + C), *Rd = dbuf(N * C), *ref = dbuf(N * C), *g = dbuf(N * C + C);
    gc_to_double(x, in, N * C);
    gc_to_double(x + N * C, gain, C);
    gc_to_double(Rd, R, N * C);
    ref_rmsnorm(ref, x, x + N * C, N, C, eps);
    joule_rmsnorm_forward(out, rstd, in, gain, N, C, eps);
    check_err("rmsnorm forward", gc_rel_err(out, ref, N * C), FWD_TOL);

    memcpy(din, din0, sizeof(float) * N * C);
    memcpy(dgain, dgain0, sizeof(float) * C);
    joule_rmsnorm_backward(din, dgain, R, in, gain, rstd, N, C);
    rms_ctx ctx = {Rd, dbuf(N * C), N, C, eps};
    gc_numgrad(rms_loss, &ctx, x, N * C + C, FD_EPS, g);
    double *got = dbuf(N * C + C);
    for (int i = 0; i < N * C; i++) got[i] = (double)din[i] - din0[i];
    for (int i = 0; i < C; i++) got[N * C + i] = (double)dgain[i] - dgain0[i];
    check_err("rmsnorm backward din (accumulated)", gc_rel_err_d(got, g, N * C), GRAD_TOL);
    check_err("rmsnorm backward dgain (accumulated)",
              gc_rel_err_d(got + N * C, g + N * C, C), GRAD_TOL);
    free(ctx.out), free(got);
    free(in), free(gain), free(out), free(rstd), free(R), free(din), free(dgain), free(din0),
        free(dgain0), free(x), free(Rd), free(ref), free(g);
}
END_TEST

START_TEST(test_rmsnorm_unit_rms) {
    enum { N = 9, C = 100 };
    joule_rng rng;
    joule_rng_seed(&rng, 5);
    float *in = fbuf(N * C), *gain = fbuf(C), *out = fbuf(N * C), *rstd = fbuf(N);
    gc_fill_normal(in, N * C, 3.0f, &rng);
    gc_fill_value(gain, C, 1.0f);
    joule_rmsnorm_forward(out, rstd, in, gain, N, C, 1e-6f);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)out[n * C + c] * out[n * C + c];
        ck_assert_double_eq_tol(sqrt(ss / C), 1.0, 1e-5);
    }
    free(in), free(gain), free(out), free(rstd);
}
END_TEST

/* ==================================================================================== */
/* RoPE                                                                                 */

/* Rotation applied straight from the angle (computed here, not from the tables). */
static void ref_rope(double *x, int ld, int B, int T, int nheads, int hs, int pos0,
                     double theta, double sign) {
    for (int n = 0; n < B * T; n++) {
        double pos = pos0 + n % T;
        for (int h = 0; h < nheads; h++)
            for (int i = 0; i < hs / 2; i++) {
                double a = sign * pos * pow(theta, -2.0 * i / hs);
                double *v = x + (size_t)n * ld + h * hs + 2 * i;
                double x0 = v[0], x1 = v[1];
                v[0] = x0 * cos(a) - x1 * sin(a);
                v[1] = x0 * sin(a) + x1 * cos(a);
            }
    }
}

enum { RB = 2, RT = 8, RC = 16, RH = 4, RHS = RC / RH, RMAXPOS = 32 };
static const float RTHETA = 10000.0f;
static const int RPOS0 = 5;

START_TEST(test_rope_tables) {
    float cs[RMAXPOS * RHS / 2], sn[RMAXPOS * RHS / 2];
    joule_rope_tables(cs, sn, RMAXPOS, RHS, RTHETA);
    for (int p = 0; p < RMAXPOS; p++)
        for (int i = 0; i < RHS / 2; i++) {
            double a = p * pow(10000.0, -2.0 * i / RHS);
            ck_assert_double_eq_tol(cs[p * RHS / 2 + i], cos(a), 1e-7);
            ck_assert_double_eq_tol(sn[p * RHS / 2 + i], sin(a), 1e-7);
        }
    /* pair 0 turns by exactly pos radians */
    ck_assert_double_eq_tol(cs[3 * RHS / 2], cos(3.0), 1e-7);
}
END_TEST

/* rope on the q and k parts of a fused [N, 3C] buffer, as the model calls it */
static void rope_qk(float *qkv, const float *cs, const float *sn, int backward) {
    for (int part = 0; part < 2; part++) {
        float *x = qkv + part * RC;
        if (backward)
            joule_rope_backward(x, 3 * RC, RB, RT, RH, RHS, RPOS0, cs, sn);
        else
            joule_rope_forward(x, 3 * RC, RB, RT, RH, RHS, RPOS0, cs, sn);
    }
}

static void ref_rope_qk(double *qkv, double sign) {
    for (int part = 0; part < 2; part++)
        ref_rope(qkv + part * RC, 3 * RC, RB, RT, RH, RHS, RPOS0, RTHETA, sign);
}

typedef struct {
    const double *R;
    double *tmp;
} rope_ctx;

static double rope_loss(const double *x, void *vctx) {
    rope_ctx *c = vctx;
    size_t n = (size_t)RB * RT * 3 * RC;
    memcpy(c->tmp, x, n * sizeof(double));
    ref_rope_qk(c->tmp, 1.0);
    return gc_dot(c->tmp, c->R, n);
}

START_TEST(test_rope) {
    const size_t n = (size_t)RB * RT * 3 * RC;
    joule_rng rng;
    joule_rng_seed(&rng, 6);
    float cs[RMAXPOS * RHS / 2], sn[RMAXPOS * RHS / 2];
    joule_rope_tables(cs, sn, RMAXPOS, RHS, RTHETA);
    float *x = fbuf(n), *x0 = fbuf(n), *R = fbuf(n);
    gc_fill_uniform(x0, n, -1, 1, &rng);
    gc_fill_uniform(R, n, -1, 1, &rng);
    double *xd = dbuf(n), *ref = dbuf(n), *Rd = dbuf(n), *g = dbuf(n);
    gc_to_double(xd, x0, n);
    gc_to_double(Rd, R, n);

    /* forward: matches the reference on q and k, leaves v bit-identical */
    memcpy(x, x0, n * sizeof(float));
    rope_qk(x, cs, sn, 0);
    memcpy(ref, xd, n * sizeof(double));
    ref_rope_qk(ref, 1.0);
    check_err("rope forward (q and k of fused qkv)", gc_rel_err(x, ref, n), FWD_TOL);
    for (int r = 0; r < RB * RT; r++)
        ck_assert_mem_eq(x + r * 3 * RC + 2 * RC, x0 + r * 3 * RC + 2 * RC, RC * sizeof(float));

    /* backward: the gradient of sum(rope(x) * R), i.e. R rotated back */
    memcpy(x, R, n * sizeof(float));
    rope_qk(x, cs, sn, 1);
    rope_ctx ctx = {Rd, dbuf(n)};
    gc_numgrad(rope_loss, &ctx, xd, n, FD_EPS, g);
    check_err("rope backward vs finite differences", gc_rel_err(x, g, n), GRAD_TOL);
    free(ctx.tmp);
    free(x), free(x0), free(R), free(xd), free(ref), free(Rd), free(g);
}
END_TEST

START_TEST(test_rope_norm_and_inverse) {
    const size_t n = (size_t)RB * RT * 3 * RC;
    joule_rng rng;
    joule_rng_seed(&rng, 7);
    float cs[RMAXPOS * RHS / 2], sn[RMAXPOS * RHS / 2];
    joule_rope_tables(cs, sn, RMAXPOS, RHS, RTHETA);
    float *x = fbuf(n), *x0 = fbuf(n);
    gc_fill_uniform(x0, n, -1, 1, &rng);
    memcpy(x, x0, n * sizeof(float));
    rope_qk(x, cs, sn, 0);
    for (size_t i = 0; i < n; i += 2) {
        double a = hypot(x0[i], x0[i + 1]), b = hypot(x[i], x[i + 1]);
        ck_assert_double_eq_tol(a, b, 1e-6 * (1 + a));
    }
    rope_qk(x, cs, sn, 1);
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)x[i] - x0[i]));
    report("rope backward(forward(x)) - x (abs)", worst);
    ck_assert_double_lt(worst, 1e-6);
    free(x), free(x0);
}
END_TEST

/* ==================================================================================== */
/* attention                                                                            */

static void ref_attention(double *out, double *att, const double *qkv, int B, int T, int C,
                          int H) {
    int hs = C / H;
    double scale = 1.0 / sqrt((double)hs);
    double *p = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double *q = qkv + ((size_t)b * T + i) * 3 * C + h * hs;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j <= i; j++) {
                    const double *k = qkv + ((size_t)b * T + j) * 3 * C + C + h * hs;
                    double s = 0;
                    for (int d = 0; d < hs; d++) s += q[d] * k[d];
                    p[j] = s * scale;
                    m = fmax(m, p[j]);
                }
                for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - m));
                double *o = out + ((size_t)b * T + i) * C + h * hs;
                for (int d = 0; d < hs; d++) o[d] = 0;
                for (int j = 0; j <= i; j++) {
                    p[j] /= sum;
                    const double *v = qkv + ((size_t)b * T + j) * 3 * C + 2 * C + h * hs;
                    for (int d = 0; d < hs; d++) o[d] += p[j] * v[d];
                }
                if (att)
                    for (int j = 0; j < T; j++)
                        att[(((size_t)b * H + h) * T + i) * T + j] = j <= i ? p[j] : 0.0;
            }
    free(p);
}

typedef struct {
    const double *R;
    double *out;
    int B, T, C, H;
} att_ctx;

static double att_loss(const double *qkv, void *vctx) {
    att_ctx *c = vctx;
    ref_attention(c->out, NULL, qkv, c->B, c->T, c->C, c->H);
    return gc_dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

/* Forward (out and att) against the reference and backward against central differences,
 * on all of qkv or on `nsample` random coordinates of it. att and datt start as NaN so any
 * read of an entry the op did not write shows up. */
static void check_attention(int B, int T, int C, int H, int nsample, uint64_t seed,
                            const char *label) {
    size_t N = (size_t)B * T, nqkv = N * 3 * C, natt = (size_t)B * H * T * T;
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    float *qkv = fbuf(nqkv), *out = fbuf(N * C), *att = fbuf(natt), *datt = fbuf(natt);
    float *R = fbuf(N * C), *dqkv = fbuf(nqkv);
    gc_fill_uniform(qkv, nqkv, -1.5f, 1.5f, &rng);
    gc_fill_uniform(R, N * C, -1, 1, &rng);
    gc_fill_value(att, natt, NAN);
    gc_fill_value(datt, natt, NAN);
    gc_fill_value(dqkv, nqkv, NAN);
    double *x = dbuf(nqkv), *Rd = dbuf(N * C), *ref = dbuf(N * C), *refatt = dbuf(natt);
    gc_to_double(x, qkv, nqkv);
    gc_to_double(Rd, R, N * C);

    joule_attention_forward(out, att, qkv, B, T, C, H);
    ref_attention(ref, refatt, x, B, T, C, H);
    char what[128];
    snprintf(what, sizeof what, "attention forward out %s", label);
    check_err(what, gc_rel_err(out, ref, N * C), FWD_TOL);
    snprintf(what, sizeof what, "attention forward att %s", label);
    check_err(what, gc_rel_err(att, refatt, natt), FWD_TOL);

    joule_attention_backward(dqkv, datt, R, qkv, att, B, T, C, H);
    size_t count = nsample > 0 ? (size_t)nsample : nqkv;
    size_t *idx = malloc(count * sizeof *idx);
    if (nsample > 0)
        gc_sample_indices(idx, count, nqkv, &rng);
    else
        for (size_t i = 0; i < count; i++) idx[i] = i;
    double *g = dbuf(count), *got = dbuf(count);
    att_ctx ctx = {Rd, dbuf(N * C), B, T, C, H};
    gc_numgrad_at(att_loss, &ctx, x, idx, count, FD_EPS, g);
    for (size_t k = 0; k < count; k++) got[k] = dqkv[idx[k]];
    snprintf(what, sizeof what, "attention backward dqkv %s", label);
    check_err(what, gc_rel_err_d(got, g, count), GRAD_TOL);
    for (size_t i = 0; i < nqkv; i++) ck_assert(isfinite(dqkv[i]));
    free(ctx.out), free(idx), free(g), free(got);
    free(qkv), free(out), free(att), free(datt), free(R), free(dqkv), free(x), free(Rd),
        free(ref), free(refatt);
}

START_TEST(test_attention_small) {
    check_attention(2, 8, 16, 2, 0, 10, "B2 T8 C16 H2");
    check_attention(2, 7, 16, 4, 0, 11, "B2 T7 C16 H4");
}
END_TEST

START_TEST(test_attention_t64) { check_attention(1, 64, 16, 2, 300, 12, "B1 T64 C16 H2"); }
END_TEST

/* More than one row block, the last one ragged. */
START_TEST(test_attention_multiblock) {
    check_attention(2, 150, 16, 2, 300, 13, "B2 T150 C16 H2");
}
END_TEST

START_TEST(test_attention_rows) {
    enum { B = 2, T = 150, C = 32, H = 4 };
    joule_rng rng;
    joule_rng_seed(&rng, 14);
    float *qkv = fbuf(B * T * 3 * C), *out = fbuf(B * T * C), *att = fbuf(B * H * T * T);
    gc_fill_uniform(qkv, B * T * 3 * C, -3, 3, &rng);
    gc_fill_value(att, B * H * T * T, NAN);
    joule_attention_forward(out, att, qkv, B, T, C, H);
    for (int r = 0; r < B * H; r++)
        for (int i = 0; i < T; i++) {
            const float *p = att + ((size_t)r * T + i) * T;
            double sum = 0;
            for (int j = 0; j <= i; j++) {
                ck_assert(p[j] >= 0.0f && p[j] <= 1.0f);
                sum += p[j];
            }
            ck_assert_double_eq_tol(sum, 1.0, 1e-5);
            for (int j = i + 1; j < T; j++) ck_assert(p[j] == 0.0f);
        }
    free(qkv), free(out), free(att);
}
END_TEST

/* Changing token t's keys and values leaves every output before t bit-identical. */
static void check_causality(int T, int t) {
    enum { B = 2, C = 16, H = 2 };
    joule_rng rng;
    joule_rng_seed(&rng, 15);
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C, natt = (size_t)B * H * T * T;
    float *qkv = fbuf(nqkv), *out1 = fbuf(nout), *out2 = fbuf(nout), *att = fbuf(natt);
    gc_fill_uniform(qkv, nqkv, -1, 1, &rng);
    joule_attention_forward(out1, att, qkv, B, T, C, H);
    float *kv = qkv + ((size_t)1 * T + t) * 3 * C + C; /* batch 1, token t: k | v */
    for (int j = 0; j < 2 * C; j++) kv[j] = 5.0f * (joule_rng_float(&rng) - 0.5f);
    joule_attention_forward(out2, att, qkv, B, T, C, H);
    ck_assert_mem_eq(out1, out2, (size_t)T * C * sizeof(float));               /* batch 0 */
    ck_assert_mem_eq(out1 + T * C, out2 + T * C, (size_t)t * C * sizeof(float)); /* b1, < t */
    ck_assert(memcmp(out1 + (T + t) * C, out2 + (T + t) * C, C * sizeof(float)) != 0);
    free(qkv), free(out1), free(out2), free(att);
}

START_TEST(test_attention_causality) {
    check_causality(8, 3);
    check_causality(64, 40);
    check_causality(150, 100);
}
END_TEST

/* ==================================================================================== */
/* SwiGLU                                                                               */

static void ref_swiglu(double *g, const double *h13, int N, int F) {
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double a = h13[n * 2 * F + f], b = h13[n * 2 * F + F + f];
            g[n * F + f] = a / (1.0 + exp(-a)) * b;
        }
}

typedef struct {
    const double *R;
    double *out;
    int N, F;
} swiglu_ctx;

static double swiglu_loss(const double *h13, void *vctx) {
    swiglu_ctx *c = vctx;
    ref_swiglu(c->out, h13, c->N, c->F);
    return gc_dot(c->out, c->R, (size_t)c->N * c->F);
}

START_TEST(test_swiglu) {
    enum { N = 16, F = 24 };
    joule_rng rng;
    joule_rng_seed(&rng, 16);
    float *h13 = fbuf(N * 2 * F), *g = fbuf(N * F), *R = fbuf(N * F), *dh13 = fbuf(N * 2 * F);
    gc_fill_uniform(h13, N * 2 * F, -4, 4, &rng);
    gc_fill_uniform(R, N * F, -1, 1, &rng);
    double *x = dbuf(N * 2 * F), *Rd = dbuf(N * F), *ref = dbuf(N * F), *gr = dbuf(N * 2 * F);
    gc_to_double(x, h13, N * 2 * F);
    gc_to_double(Rd, R, N * F);
    joule_swiglu_forward(g, h13, N, F);
    ref_swiglu(ref, x, N, F);
    check_err("swiglu forward", gc_rel_err(g, ref, N * F), FWD_TOL);
    gc_fill_value(dh13, N * 2 * F, NAN); /* overwritten, not accumulated */
    joule_swiglu_backward(dh13, R, h13, N, F);
    swiglu_ctx ctx = {Rd, dbuf(N * F), N, F};
    gc_numgrad(swiglu_loss, &ctx, x, N * 2 * F, FD_EPS, gr);
    check_err("swiglu backward vs finite differences", gc_rel_err(dh13, gr, N * 2 * F), GRAD_TOL);
    free(ctx.out);
    free(h13), free(g), free(R), free(dh13), free(x), free(Rd), free(ref), free(gr);
}
END_TEST

START_TEST(test_swiglu_extremes) {
    /* Saturated gates: silu(-big) = -0, silu(big) = big; no inf or NaN anywhere. */
    enum { F = 8 };
    const float a[F] = {-1000.0f, -100.0f, -30.0f, -0.0f, 0.0f, 30.0f, 100.0f, 1000.0f};
    float h13[2 * F], g[F], dg[F], dh13[2 * F];
    for (int f = 0; f < F; f++) h13[f] = a[f], h13[F + f] = 2.0f, dg[f] = 1.0f;
    joule_swiglu_forward(g, h13, 1, F);
    joule_swiglu_backward(dh13, dg, h13, 1, F);
    for (int f = 0; f < F; f++) {
        double s = 1.0 / (1.0 + exp(-(double)a[f]));
        ck_assert_double_eq_tol(g[f], 2.0 * a[f] * s, 1e-6 * (1 + fabs(a[f])));
        ck_assert(isfinite(dh13[f]) && isfinite(dh13[F + f]));
        ck_assert_double_eq_tol(dh13[f], 2.0 * (s + a[f] * s * (1 - s)), 1e-6);
    }
}
END_TEST

/* ==================================================================================== */
/* softmax cross-entropy                                                                */

static double ref_xent(double *losses, double *probs, const double *logits,
                       const int32_t *targets, int N, int V) {
    double total = 0;
    int count = 0;
    for (int n = 0; n < N; n++) {
        const double *x = logits + n * V;
        double m = -INFINITY, sum = 0;
        for (int j = 0; j < V; j++) m = fmax(m, x[j]);
        for (int j = 0; j < V; j++) sum += exp(x[j] - m);
        if (probs)
            for (int j = 0; j < V; j++) probs[n * V + j] = exp(x[j] - m) / sum;
        double l = targets[n] >= 0 ? log(sum) + m - x[targets[n]] : 0.0;
        if (losses) losses[n] = l;
        if (targets[n] >= 0) total += l, count++;
    }
    return count ? total / count : 0.0;
}

typedef struct {
    const int32_t *targets;
    int N, V;
} xent_ctx;

static double xent_loss(const double *logits, void *vctx) {
    xent_ctx *c = vctx;
    return ref_xent(NULL, NULL, logits, c->targets, c->N, c->V);
}

enum { XN = 16, XV = 11 };

START_TEST(test_xent) {
    joule_rng rng;
    joule_rng_seed(&rng, 17);
    int32_t tgt[XN];
    for (int n = 0; n < XN; n++) tgt[n] = (int32_t)joule_rng_below(&rng, XV);
    tgt[3] = -1, tgt[10] = -1;
    float *logits = fbuf(XN * XV), *probs = fbuf(XN * XV), *losses = fbuf(XN);
    float *dl = fbuf(XN * XV);
    gc_fill_uniform(logits, XN * XV, -4, 4, &rng);
    double *x = dbuf(XN * XV), *rp = dbuf(XN * XV), *rl = dbuf(XN), *g = dbuf(XN * XV);
    gc_to_double(x, logits, XN * XV);

    double mean = joule_xent_forward(losses, probs, logits, tgt, XN, XV);
    double rmean = ref_xent(rl, rp, x, tgt, XN, XV);
    check_err("xent forward losses", gc_rel_err(losses, rl, XN), FWD_TOL);
    check_err("xent forward probs", gc_rel_err(probs, rp, XN * XV), FWD_TOL);
    ck_assert_double_eq_tol(mean, rmean, 1e-5 * rmean);
    ck_assert(losses[3] == 0.0f && losses[10] == 0.0f);

    gc_fill_value(dl, XN * XV, NAN);
    joule_xent_backward(dl, probs, tgt, XN, XV, 1.0f / (XN - 2));
    xent_ctx ctx = {tgt, XN, XV};
    gc_numgrad(xent_loss, &ctx, x, XN * XV, FD_EPS, g);
    check_err("xent backward vs finite differences", gc_rel_err(dl, g, XN * XV), GRAD_TOL);
    for (int j = 0; j < XV; j++) ck_assert(dl[3 * XV + j] == 0.0f && dl[10 * XV + j] == 0.0f);
    free(logits), free(probs), free(losses), free(dl), free(x), free(rp), free(rl), free(g);
}
END_TEST

START_TEST(test_xent_zero_logits_and_ignored) {
    int32_t tgt[XN];
    for (int n = 0; n < XN; n++) tgt[n] = n % XV;
    float *logits = fbuf(XN * XV), *probs = fbuf(XN * XV), *losses = fbuf(XN);
    double mean = joule_xent_forward(losses, probs, logits, tgt, XN, XV);
    ck_assert_double_eq_tol(mean, log((double)XV), 1e-6);
    for (int n = 0; n < XN; n++) ck_assert_double_eq_tol(losses[n], log((double)XV), 1e-6);
    for (int i = 0; i < XN * XV; i++) ck_assert_double_eq_tol(probs[i], 1.0 / XV, 1e-7);

    /* all ignored: mean 0, gradient 0 */
    for (int n = 0; n < XN; n++) tgt[n] = -1;
    ck_assert(joule_xent_forward(losses, probs, logits, tgt, XN, XV) == 0.0);
    joule_xent_backward(probs, probs, tgt, XN, XV, 1.0f);
    for (int i = 0; i < XN * XV; i++) ck_assert(probs[i] == 0.0f);
    free(logits), free(probs), free(losses);
}
END_TEST

START_TEST(test_xent_aliasing_and_extremes) {
    /* Rows spread over +-1e4 (exp underflows to 0 for all but the max); in-place use
     * (probs = logits, dlogits = probs) gives the same bits as separate buffers. */
    joule_rng rng;
    joule_rng_seed(&rng, 18);
    int32_t tgt[XN];
    for (int n = 0; n < XN; n++) tgt[n] = (int32_t)joule_rng_below(&rng, XV);
    float *logits = fbuf(XN * XV), *probs = fbuf(XN * XV), *losses = fbuf(XN);
    float *dl = fbuf(XN * XV), *inplace = fbuf(XN * XV), *losses2 = fbuf(XN);
    gc_fill_uniform(logits, XN * XV, -1e4f, 1e4f, &rng);
    double *x = dbuf(XN * XV), *rl = dbuf(XN);
    gc_to_double(x, logits, XN * XV);
    memcpy(inplace, logits, sizeof(float) * XN * XV);

    double mean = joule_xent_forward(losses, probs, logits, tgt, XN, XV);
    double rmean = ref_xent(rl, NULL, x, tgt, XN, XV);
    ck_assert(isfinite(mean));
    check_err("xent forward losses, logits spread 1e4", gc_rel_err(losses, rl, XN), FWD_TOL);
    ck_assert_double_eq_tol(mean, rmean, 1e-5 * rmean);
    joule_xent_backward(dl, probs, tgt, XN, XV, 0.5f);

    double mean2 = joule_xent_forward(losses2, inplace, inplace, tgt, XN, XV);
    ck_assert(mean2 == mean);
    ck_assert_mem_eq(inplace, probs, sizeof(float) * XN * XV);
    joule_xent_backward(inplace, inplace, tgt, XN, XV, 0.5f);
    ck_assert_mem_eq(inplace, dl, sizeof(float) * XN * XV);
    free(logits), free(probs), free(losses), free(dl), free(inplace), free(losses2), free(x),
        free(rl);
}
END_TEST

START_TEST(test_xent_exp_range) {
    /* Two classes {0, x}: p1 = 1 / (1 + e^-x) down to ~1e-35, checked entry by entry
     * (relative to itself, not to the row max), so the exp used inside must be accurate
     * over the whole normal float range, not just near 0. */
    enum { N = 1601 };
    float *logits = fbuf(2 * N), *probs = fbuf(2 * N), *losses = fbuf(N);
    int32_t *tgt = malloc(N * sizeof *tgt);
    for (int n = 0; n < N; n++) {
        logits[2 * n] = 0.0f;
        logits[2 * n + 1] = -80.0f + 0.1f * n;
        tgt[n] = 1;
    }
    joule_xent_forward(losses, probs, logits, tgt, N, 2);
    double worst_p = 0;
    for (int n = 0; n < N; n++) {
        double x = logits[2 * n + 1];
        double p1 = 1.0 / (1.0 + exp(-x)), p0 = 1.0 / (1.0 + exp(x));
        double loss = log1p(exp(-x));
        worst_p = fmax(worst_p, fabs(probs[2 * n + 1] - p1) / p1);
        worst_p = fmax(worst_p, fabs(probs[2 * n] - p0) / p0);
        /* log of a float sum near 1: absolute error ~1 ulp of 1 */
        ck_assert_double_eq_tol(losses[n], loss, 3e-7 + 1e-6 * loss);
    }
    report("xent probs over exp range [-80, 80] (entrywise)", worst_p);
    ck_assert_double_lt(worst_p, 2e-6);
    free(logits), free(probs), free(losses), free(tgt);
}
END_TEST

/* ==================================================================================== */
/* determinism                                                                          */

START_TEST(test_determinism_two_threads) {
    omp_set_num_threads(2);
    joule_rng rng;
    joule_rng_seed(&rng, 19);

    { /* attention backward */
        enum { B = 2, T = 100, C = 32, H = 4 };
        size_t nqkv = (size_t)B * T * 3 * C, natt = (size_t)B * H * T * T;
        float *qkv = fbuf(nqkv), *out = fbuf(B * T * C), *att = fbuf(natt);
        float *datt = fbuf(natt), *dout = fbuf(B * T * C), *d1 = fbuf(nqkv), *d2 = fbuf(nqkv);
        gc_fill_uniform(qkv, nqkv, -1, 1, &rng);
        gc_fill_uniform(dout, B * T * C, -1, 1, &rng);
        joule_attention_forward(out, att, qkv, B, T, C, H);
        joule_attention_backward(d1, datt, dout, qkv, att, B, T, C, H);
        joule_attention_backward(d2, datt, dout, qkv, att, B, T, C, H);
        ck_assert_mem_eq(d1, d2, nqkv * sizeof(float));
        free(qkv), free(out), free(att), free(datt), free(dout), free(d1), free(d2);
    }
    { /* rmsnorm backward (dgain sums over rows) */
        enum { N = 301, C = 200 };
        float *in = fbuf(N * C), *gain = fbuf(C), *out = fbuf(N * C), *rstd = fbuf(N);
        float *dout = fbuf(N * C), *din1 = fbuf(N * C), *din2 = fbuf(N * C);
        float *dg1 = fbuf(C), *dg2 = fbuf(C);
        gc_fill_uniform(in, N * C, -1, 1, &rng);
        gc_fill_uniform(gain, C, 0.5f, 1.5f, &rng);
        gc_fill_uniform(dout, N * C, -1, 1, &rng);
        joule_rmsnorm_forward(out, rstd, in, gain, N, C, 1e-5f);
        joule_rmsnorm_backward(din1, dg1, dout, in, gain, rstd, N, C);
        joule_rmsnorm_backward(din2, dg2, dout, in, gain, rstd, N, C);
        ck_assert_mem_eq(din1, din2, N * C * sizeof(float));
        ck_assert_mem_eq(dg1, dg2, C * sizeof(float));
        free(in), free(gain), free(out), free(rstd), free(dout), free(din1), free(din2),
            free(dg1), free(dg2);
    }
}
END_TEST

/* ==================================================================================== */
/* arenas on huge pages                                                                 */

/* AnonHugePages (kB) of the mapping of /proc/self/smaps that holds p, or -1. */
static long anon_huge_kb(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    bool in = false;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb;
}

/* The kernel's THP mode is not [never] (huge pages may be had by madvise). */
static bool thp_available(void) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char buf[128] = "";
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
        fclose(f);
    }
    return buf[0] && !strstr(buf, "[never]");
}

/* Arenas of 4 MiB or more come back 2 MiB-aligned, zeroed, and (where the kernel has
 * transparent huge pages) on huge pages: what makes a decode step's weight stream cheap. */
START_TEST(test_alloc_huge_pages) {
    const size_t n = (size_t)9 << 20;
    unsigned char *p = joule_alloc(n);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t)p % ((size_t)2 << 20), 0);
    for (size_t i = 0; i < n; i += 4093) ck_assert_uint_eq(p[i], 0);
    ck_assert_uint_eq(p[n - 1], 0);
    unsigned char *small = joule_alloc(1000);
    ck_assert_ptr_nonnull(small);
    ck_assert_uint_eq((uintptr_t)small % 64, 0);
#if !defined(__SANITIZE_ADDRESS__) /* ASan's allocator places large blocks its own way */
    if (thp_available()) {
        const long kb = anon_huge_kb(p);
        if (getenv("JOULE_TEST_VERBOSE")) printf("  9 MiB arena: AnonHugePages %ld kB\n", kb);
        ck_assert_msg(kb >= 2048, "a 9 MiB arena has %ld kB on huge pages (THP is on)", kb);
    }
#endif
    joule_free(small);
    joule_free(p);
}
END_TEST

/* ==================================================================================== */

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    struct {
        const char *name;
        const TTest *test;
    } tests[] = {
        {"sgemm", test_sgemm_counts_flops},
        {"embedding", test_embedding},
        {"embedding_repeats", test_embedding_repeated_tokens},
        {"rmsnorm", test_rmsnorm},
        {"rmsnorm_unit_rms", test_rmsnorm_unit_rms},
        {"rope_tables", test_rope_tables},
        {"rope", test_rope},
        {"rope_norm_inverse", test_rope_norm_and_inverse},
        {"attention_small", test_attention_small},
        {"attention_t64", test_attention_t64},
        {"attention_multiblock", test_attention_multiblock},
        {"attention_rows", test_attention_rows},
        {"attention_causality", test_attention_causality},
        {"swiglu", test_swiglu},
        {"swiglu_extremes", test_swiglu_extremes},
        {"xent", test_xent},
        {"xent_zero_ignored", test_xent_zero_logits_and_ignored},
        {"xent_alias_extremes", test_xent_aliasing_and_extremes},
        {"xent_exp_range", test_xent_exp_range},
        {"determinism", test_determinism_two_threads},
        {"alloc_huge_pages", test_alloc_huge_pages},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        TCase *tc = tcase_create(tests[i].name);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, tests[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void) {
    return tu_run_suite(ops_suite());
}
