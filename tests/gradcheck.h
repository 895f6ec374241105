/* gradcheck.h — finite-difference helpers shared by the test suites.
 *
 * The pattern: write a plain double-precision reference of an op's forward in the test,
 * form a scalar loss L(x) = sum(ref(x) * R) with a fixed random R, take central differences
 * of L (in double, so they are accurate to ~1e-9), and compare them with the float backward
 * of the real op fed dout = R. Errors are measured relative to the largest reference value,
 * so a tolerance like 1e-3 is meaningful whatever the scale of the gradient.
 */
#ifndef JOULE_TESTS_GRADCHECK_H
#define JOULE_TESTS_GRADCHECK_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "joule/common.h"

/* Uniform in [lo, hi). */
static inline void gc_fill_uniform(float *x, size_t n, float lo, float hi, joule_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * joule_rng_float(rng);
}

static inline void gc_fill_normal(float *x, size_t n, float stddev, joule_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = stddev * joule_rng_normal(rng);
}

static inline void gc_fill_value(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static inline void gc_to_double(double *d, const float *f, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = (double)f[i];
}

static inline double gc_max_abs(const double *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(b[i]));
    return m;
}

/* max|a - b| / (max|b| + 1e-6): a is the float result under test, b the reference.
 * NaN anywhere in a gives +inf, so a NaN can never pass a tolerance. */
static inline double gc_rel_err(const float *a, const double *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d != d) return INFINITY;
        worst = fmax(worst, d);
    }
    return worst / (gc_max_abs(b, n) + 1e-6);
}

/* Same, both in double (e.g. a = float result after - before, converted). */
static inline double gc_rel_err_d(const double *a, const double *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d != d) return INFINITY;
        worst = fmax(worst, d);
    }
    return worst / (gc_max_abs(b, n) + 1e-6);
}

static inline double gc_dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* A scalar function of the vector x; ctx carries everything else it needs. */
typedef double (*gc_scalar_fn)(const double *x, void *ctx);

/* grad[k] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) for i = idx[k], k < nidx.
 * x is perturbed in place and restored exactly. */
static inline void gc_numgrad_at(gc_scalar_fn f, void *ctx, double *x, const size_t *idx,
                                 size_t nidx, double eps, double *grad) {
    for (size_t k = 0; k < nidx; k++) {
        size_t i = idx[k];
        double saved = x[i];
        x[i] = saved + eps;
        double fp = f(x, ctx);
        x[i] = saved - eps;
        double fm = f(x, ctx);
        x[i] = saved;
        grad[k] = (fp - fm) / (2.0 * eps);
    }
}

/* Central differences for every coordinate of x[0..n). */
static inline void gc_numgrad(gc_scalar_fn f, void *ctx, double *x, size_t n, double eps,
                              double *grad) {
    size_t *idx = (size_t *)malloc(n * sizeof *idx);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    gc_numgrad_at(f, ctx, x, idx, n, eps, grad);
    free(idx);
}

/* `count` distinct-ish random indices in [0, n) (sampling large inputs). */
static inline void gc_sample_indices(size_t *idx, size_t count, size_t n, joule_rng *rng) {
    for (size_t k = 0; k < count; k++) idx[k] = (size_t)joule_rng_below(rng, n);
}

#endif
