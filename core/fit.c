/* Scaling-law fits (docs/ACCOUNTING.md §7): Huber loss on log residuals, a grid over the
 * exponents with the linear parameters by weighted least squares, a Nelder-Mead polish in
 * log space and an iteratively-reweighted Levenberg-Marquardt finish. */
#include "joule/fit.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAXP 5

/* A model: log Lhat of run i at parameters th[np], and (optionally) its gradient. */
typedef struct {
    int np;
    const joule_run *runs;
    size_t n;
    double delta;
    double (*log_pred)(const double *th, const joule_run *r, double *grad);
} fit_problem;

static double huber(double r, double delta) {
    double a = fabs(r);
    return a <= delta ? 0.5 * r * r : delta * (a - 0.5 * delta);
}

static double objective(const fit_problem *p, const double *th) {
    double s = 0;
    for (size_t i = 0; i < p->n; i++) {
        double lp = p->log_pred(th, &p->runs[i], NULL);
        if (!isfinite(lp)) return INFINITY;
        s += huber(lp - log(p->runs[i].loss), p->delta);
    }
    return s;
}

/* Nelder-Mead (standard coefficients) from th with initial steps; returns the best value. */
static double nelder_mead(const fit_problem *p, double *th, const double *step, int max_iter) {
    const int np = p->np;
    double x[MAXP + 1][MAXP], f[MAXP + 1];
    for (int i = 0; i <= np; i++) {
        memcpy(x[i], th, sizeof(double) * (size_t)np);
        if (i) x[i][i - 1] += step[i - 1];
        f[i] = objective(p, x[i]);
    }
    for (int it = 0; it < max_iter; it++) {
        /* order: best first */
        for (int i = 1; i <= np; i++)
            for (int j = i; j > 0 && f[j] < f[j - 1]; j--) {
                double t = f[j];
                f[j] = f[j - 1];
                f[j - 1] = t;
                for (int k = 0; k < np; k++) {
                    t = x[j][k];
                    x[j][k] = x[j - 1][k];
                    x[j - 1][k] = t;
                }
            }
        if (fabs(f[np] - f[0]) <= 1e-13 * (fabs(f[0]) + 1e-300)) {
            double spread = 0;
            for (int i = 1; i <= np; i++)
                for (int k = 0; k < np; k++)
                    spread = fmax(spread, fabs(x[i][k] - x[0][k]));
            if (spread < 1e-9) break;
        }
        double c[MAXP] = {0}, xr[MAXP], xe[MAXP], xc[MAXP];
        for (int i = 0; i < np; i++)
            for (int k = 0; k < np; k++)
                c[k] += x[i][k] / np;
        for (int k = 0; k < np; k++)
            xr[k] = c[k] + (c[k] - x[np][k]);
        double fr = objective(p, xr);
        if (fr < f[0]) {
            for (int k = 0; k < np; k++)
                xe[k] = c[k] + 2 * (c[k] - x[np][k]);
            double fe = objective(p, xe);
            if (fe < fr) {
                memcpy(x[np], xe, sizeof xe);
                f[np] = fe;
            } else {
                memcpy(x[np], xr, sizeof xr);
                f[np] = fr;
            }
            continue;
        }
        if (fr < f[np - 1]) {
            memcpy(x[np], xr, sizeof xr);
            f[np] = fr;
            continue;
        }
        bool outside = fr < f[np];
        for (int k = 0; k < np; k++)
            xc[k] = outside ? c[k] + 0.5 * (xr[k] - c[k]) : c[k] + 0.5 * (x[np][k] - c[k]);
        double fc = objective(p, xc);
        if (fc < (outside ? fr : f[np])) {
            memcpy(x[np], xc, sizeof xc);
            f[np] = fc;
            continue;
        }
        for (int i = 1; i <= np; i++) { /* shrink towards the best */
            for (int k = 0; k < np; k++)
                x[i][k] = x[0][k] + 0.5 * (x[i][k] - x[0][k]);
            f[i] = objective(p, x[i]);
        }
    }
    int best = 0;
    for (int i = 1; i <= np; i++)
        if (f[i] < f[best]) best = i;
    memcpy(th, x[best], sizeof(double) * (size_t)np);
    return f[best];
}

/* Solves A x = b (n <= MAXP) by Gaussian elimination with partial pivoting. */
static bool solve(int n, double A[MAXP][MAXP], double *b, double *x) {
    for (int c = 0; c < n; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(A[r][c]) > fabs(A[piv][c])) piv = r;
        if (!(fabs(A[piv][c]) > 1e-300)) return false;
        if (piv != c) {
            for (int k = 0; k < n; k++) {
                double t = A[c][k];
                A[c][k] = A[piv][k];
                A[piv][k] = t;
            }
            double t = b[c];
            b[c] = b[piv];
            b[piv] = t;
        }
        for (int r = c + 1; r < n; r++) {
            double m = A[r][c] / A[c][c];
            for (int k = c; k < n; k++)
                A[r][k] -= m * A[c][k];
            b[r] -= m * b[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double s = b[r];
        for (int k = r + 1; k < n; k++)
            s -= A[r][k] * x[k];
        x[r] = s / A[r][r];
    }
    return true;
}

/* Levenberg-Marquardt on Huber-reweighted log residuals (IRLS): exact where every residual
 * is inside delta, the Huber minimiser otherwise. Only accepts improvements. */
static double lm_polish(const fit_problem *p, double *th, double f0, int max_iter) {
    const int np = p->np;
    double lambda = 1e-3, f = f0;
    for (int it = 0; it < max_iter; it++) {
        double JtJ[MAXP][MAXP] = {{0}}, g[MAXP] = {0}, grad[MAXP];
        for (size_t i = 0; i < p->n; i++) {
            double r = p->log_pred(th, &p->runs[i], grad) - log(p->runs[i].loss);
            double w = fabs(r) <= p->delta ? 1.0 : p->delta / fabs(r);
            for (int a = 0; a < np; a++) {
                g[a] += w * grad[a] * r;
                for (int b = 0; b < np; b++)
                    JtJ[a][b] += w * grad[a] * grad[b];
            }
        }
        bool improved = false;
        for (int tries = 0; tries < 12 && !improved; tries++) {
            double A[MAXP][MAXP], rhs[MAXP], step[MAXP], cand[MAXP];
            for (int a = 0; a < np; a++) {
                for (int b = 0; b < np; b++)
                    A[a][b] = JtJ[a][b];
                A[a][a] += lambda * (JtJ[a][a] + 1e-30);
                rhs[a] = -g[a];
            }
            if (!solve(np, A, rhs, step)) {
                lambda *= 10;
                continue;
            }
            for (int a = 0; a < np; a++)
                cand[a] = th[a] + step[a];
            double fc = objective(p, cand);
            if (fc < f) {
                double rel = (f - fc) / (f + 1e-300);
                memcpy(th, cand, sizeof(double) * (size_t)np);
                f = fc;
                lambda = fmax(lambda * 0.3, 1e-12);
                improved = true;
                if (rel < 1e-15) return f;
            } else {
                lambda *= 10;
            }
        }
        if (!improved) break;
    }
    return f;
}

static double polish(const fit_problem *p, double *th, const double *step) {
    double f = objective(p, th), prev;
    int restarts = 0;
    do { /* restarted Nelder-Mead until a restart gains (almost) nothing */
        prev = f;
        f = nelder_mead(p, th, step, 2000);
    } while (f < prev * (1 - 1e-10) && ++restarts < 8);
    return lm_polish(p, th, f, 200);
}

/* ---------------------------------------------------------------- Chinchilla */

/* th = (log E, log A, log B, alpha, beta) */
static double chin_log_pred(const double *th, const joule_run *r, double *grad) {
    const double E = exp(th[0]), xa = exp(th[1] - th[3] * log(r->N)), xb = exp(th[2] - th[4] * log(r->D));
    const double L = E + xa + xb;
    if (grad) {
        grad[0] = E / L;
        grad[1] = xa / L;
        grad[2] = xb / L;
        grad[3] = -xa * log(r->N) / L;
        grad[4] = -xb * log(r->D) / L;
    }
    return log(L);
}

static int check_runs(const joule_run *runs, size_t n, size_t min_n, bool need_nd) {
    if (n < min_n) return joule_fail(JOULE_ERR_ARG, "a fit needs at least %zu runs, got %zu", min_n, n);
    for (size_t i = 0; i < n; i++) {
        const joule_run *r = &runs[i];
        if (!(r->loss > 0) || !isfinite(r->loss) || (need_nd && !(r->N > 0 && r->D > 0)) || (!need_nd && !(r->C > 0)))
            return joule_fail(JOULE_ERR_ARG, "run %zu: needs a positive loss and %s", i + 1,
                              need_nd ? "positive N and D" : "a positive compute C");
    }
    return JOULE_OK;
}

static void chin_from_th(const double *th, double f, joule_chin_fit *out) {
    out->E = exp(th[0]);
    out->A = exp(th[1]);
    out->B = exp(th[2]);
    out->alpha = th[3];
    out->beta = th[4];
    out->objective = f;
}

int joule_fit_chinchilla_from(const joule_run *runs, size_t n, double delta, const joule_chin_fit *start,
                              joule_chin_fit *out) {
    int rc = check_runs(runs, n, 5, true);
    if (rc) return rc;
    fit_problem p = {5, runs, n, delta > 0 ? delta : JOULE_FIT_DELTA, chin_log_pred};
    double th[5] = {log(start->E), log(start->A), log(start->B), start->alpha, start->beta};
    const double step[5] = {0.05, 0.3, 0.3, 0.02, 0.02};
    double f = polish(&p, th, step);
    chin_from_th(th, f, out);
    return JOULE_OK;
}

int joule_fit_chinchilla(const joule_run *runs, size_t n, double delta, joule_chin_fit *out) {
    int rc = check_runs(runs, n, 5, true);
    if (rc) return rc;
    fit_problem p = {5, runs, n, delta > 0 ? delta : JOULE_FIT_DELTA, chin_log_pred};
    double best = INFINITY, bth[5] = {0};
    double *xa = malloc(n * sizeof *xa), *xb = malloc(n * sizeof *xb);
    if (!xa || !xb) {
        free(xa);
        free(xb);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    /* grid over the exponents; E, A, B by least squares weighted by 1/L^2 (a residual in L
     * divided by L is the log residual to first order) */
    for (int ia = 0; ia <= 100; ia++) {
        const double alpha = 0.01 * ia;
        for (size_t i = 0; i < n; i++)
            xa[i] = exp(-alpha * log(runs[i].N));
        for (int ib = 0; ib <= 100; ib++) {
            const double beta = 0.01 * ib;
            double M[MAXP][MAXP] = {{0}}, v[MAXP] = {0}, s[3] = {1, 0, 0}, sol[3];
            for (size_t i = 0; i < n; i++) {
                xb[i] = exp(-beta * log(runs[i].D));
                s[1] = fmax(s[1], xa[i]);
                s[2] = fmax(s[2], xb[i]);
            }
            for (size_t i = 0; i < n; i++) {
                const double f[3] = {1, xa[i] / s[1], xb[i] / s[2]}, w = 1 / (runs[i].loss * runs[i].loss);
                for (int a = 0; a < 3; a++) {
                    v[a] += w * f[a] * runs[i].loss;
                    for (int b = 0; b < 3; b++)
                        M[a][b] += w * f[a] * f[b];
                }
            }
            if (!solve(3, M, v, sol)) continue;
            const double E = sol[0], A = sol[1] / s[1], B = sol[2] / s[2];
            if (!(E > 0 && A > 0 && B > 0)) continue;
            double th[5] = {log(E), log(A), log(B), alpha, beta};
            double f = objective(&p, th);
            if (f < best) {
                best = f;
                memcpy(bth, th, sizeof th);
            }
        }
    }
    free(xa);
    free(xb);
    if (!isfinite(best)) return joule_fail(JOULE_ERR_RUNTIME, "Chinchilla fit: no grid point gives E, A, B > 0");
    joule_chin_fit start;
    chin_from_th(bth, best, &start);
    return joule_fit_chinchilla_from(runs, n, delta, &start, out);
}

double joule_chin_loss(const joule_chin_fit *f, double N, double D) {
    return f->E + f->A * pow(N, -f->alpha) + f->B * pow(D, -f->beta);
}

void joule_chin_optimal(const joule_chin_fit *f, double C, double *N, double *D) {
    /* minimise A N^-a + B (C/6N)^-b: N = G (C/6)^(b/(a+b)), G = (a A / (b B))^(1/(a+b)) */
    const double a = f->alpha, b = f->beta;
    const double G = pow(a * f->A / (b * f->B), 1 / (a + b));
    *N = G * pow(C / 6, b / (a + b));
    *D = C / (6 * *N);
}

static double chin_frontier(const joule_chin_fit *f, double C) {
    double N, D;
    joule_chin_optimal(f, C, &N, &D);
    return joule_chin_loss(f, N, D);
}

double joule_chin_compute_for(const joule_chin_fit *f, double loss) {
    if (!(loss > f->E)) return INFINITY;
    double lo = 0, hi = 60; /* log10 C; L*(C) decreases with C */
    if (chin_frontier(f, 1) <= loss) return 0;
    if (chin_frontier(f, pow(10, hi)) > loss) return INFINITY;
    for (int i = 0; i < 200 && hi - lo > 1e-13; i++) {
        double mid = 0.5 * (lo + hi);
        if (chin_frontier(f, pow(10, mid)) > loss) lo = mid;
        else hi = mid;
    }
    return pow(10, 0.5 * (lo + hi));
}

/* ---------------------------------------------------------------- power law in C */

/* th = (log a, b, log c) */
static double pow_log_pred(const double *th, const joule_run *r, double *grad) {
    const double x = exp(th[0] + th[1] * log(r->C)), c = exp(th[2]), L = x + c;
    if (grad) {
        grad[0] = x / L;
        grad[1] = x * log(r->C) / L;
        grad[2] = c / L;
    }
    return log(L);
}

static void pow_from_th(const double *th, double f, joule_pow_fit *out) {
    out->a = exp(th[0]);
    out->b = th[1];
    out->c = exp(th[2]);
    out->objective = f;
}

int joule_fit_power_from(const joule_run *runs, size_t n, double delta, const joule_pow_fit *start,
                         joule_pow_fit *out) {
    int rc = check_runs(runs, n, 3, false);
    if (rc) return rc;
    fit_problem p = {3, runs, n, delta > 0 ? delta : JOULE_FIT_DELTA, pow_log_pred};
    double th[3] = {log(start->a), start->b, log(fmax(start->c, 1e-300))};
    const double step[3] = {0.3, 0.01, 0.05};
    double f = polish(&p, th, step);
    pow_from_th(th, f, out);
    return JOULE_OK;
}

int joule_fit_power(const joule_run *runs, size_t n, double delta, joule_pow_fit *out) {
    int rc = check_runs(runs, n, 3, false);
    if (rc) return rc;
    fit_problem p = {3, runs, n, delta > 0 ? delta : JOULE_FIT_DELTA, pow_log_pred};
    double best = INFINITY, bth[3] = {0};
    for (int ib = 1; ib <= 400; ib++) {
        const double b = -0.0025 * ib;
        double M[MAXP][MAXP] = {{0}}, v[MAXP] = {0}, s = 0, sol[2];
        for (size_t i = 0; i < n; i++)
            s = fmax(s, exp(b * log(runs[i].C)));
        for (size_t i = 0; i < n; i++) {
            const double f[2] = {exp(b * log(runs[i].C)) / s, 1}, w = 1 / (runs[i].loss * runs[i].loss);
            for (int a = 0; a < 2; a++) {
                v[a] += w * f[a] * runs[i].loss;
                for (int k = 0; k < 2; k++)
                    M[a][k] += w * f[a] * f[k];
            }
        }
        if (!solve(2, M, v, sol)) continue;
        const double a = sol[0] / s, c = sol[1];
        if (!(a > 0 && c > 0)) continue;
        double th[3] = {log(a), b, log(c)};
        double f = objective(&p, th);
        if (f < best) {
            best = f;
            memcpy(bth, th, sizeof th);
        }
    }
    if (!isfinite(best)) return joule_fail(JOULE_ERR_RUNTIME, "power-law fit: no exponent gives a > 0 and c > 0");
    joule_pow_fit start;
    pow_from_th(bth, best, &start);
    return joule_fit_power_from(runs, n, delta, &start, out);
}

double joule_pow_loss(const joule_pow_fit *f, double C) { return f->a * pow(C, f->b) + f->c; }

double joule_pow_compute_for(const joule_pow_fit *f, double loss) {
    if (!(loss > f->c)) return INFINITY;
    return pow((loss - f->c) / f->a, 1 / f->b);
}

/* ---------------------------------------------------------------- bootstrap, intervals */

/* Refits `reps` resamples of the runs with replacement (rep k draws from the stream
 * (seed, k), so results do not depend on order or threads); refit(ctx, buf, n, k) stores fit k. */
static int bootstrap(const joule_run *runs, size_t n, int reps, uint64_t seed,
                     int (*refit)(void *ctx, const joule_run *buf, size_t n, int k), void *ctx,
                     joule_fit_progress progress, void *pctx) {
    if (reps < 2) return joule_fail(JOULE_ERR_ARG, "bootstrap needs >= 2 resamples");
    joule_run *buf = malloc((n ? n : 1) * sizeof *buf);
    if (!buf) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = JOULE_OK;
    for (int k = 0; k < reps && !rc; k++) {
        joule_rng r;
        joule_rng_seed(&r, joule_mix64(seed, (uint64_t)k));
        for (size_t i = 0; i < n; i++)
            buf[i] = runs[joule_rng_below(&r, n)];
        rc = refit(ctx, buf, n, k);
        if (progress) progress(pctx, k + 1, reps);
    }
    free(buf);
    return rc;
}

typedef struct {
    double delta;
    const void *full;
    void *fits;
} boot_ctx;

static int refit_chin(void *ctx, const joule_run *buf, size_t n, int k) {
    boot_ctx *b = ctx;
    return joule_fit_chinchilla_from(buf, n, b->delta, b->full, (joule_chin_fit *)b->fits + k);
}

static int refit_pow(void *ctx, const joule_run *buf, size_t n, int k) {
    boot_ctx *b = ctx;
    return joule_fit_power_from(buf, n, b->delta, b->full, (joule_pow_fit *)b->fits + k);
}

int joule_bootstrap_chinchilla(const joule_run *runs, size_t n, double delta, const joule_chin_fit *full, int reps,
                               uint64_t seed, joule_fit_progress progress, void *pctx, joule_chin_fit **out) {
    boot_ctx b = {delta, full, calloc(reps > 0 ? (size_t)reps : 1, sizeof **out)};
    int rc = b.fits ? bootstrap(runs, n, reps, seed, refit_chin, &b, progress, pctx)
                    : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (rc) free(b.fits);
    *out = rc ? NULL : b.fits;
    return rc;
}

int joule_bootstrap_power(const joule_run *runs, size_t n, double delta, const joule_pow_fit *full, int reps,
                          uint64_t seed, joule_fit_progress progress, void *pctx, joule_pow_fit **out) {
    boot_ctx b = {delta, full, calloc(reps > 0 ? (size_t)reps : 1, sizeof **out)};
    int rc = b.fits ? bootstrap(runs, n, reps, seed, refit_pow, &b, progress, pctx)
                    : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (rc) free(b.fits);
    *out = rc ? NULL : b.fits;
    return rc;
}

void joule_interval(double *x, size_t n, double level, double *lo, double *hi, double *sd) {
    *lo = *hi = *sd = NAN;
    if (n == 0) return;
    qsort(x, n, sizeof *x, joule_cmp_double);
    double q = (1 - level) / 2, mean = 0, ss = 0;
    /* linear interpolation between order statistics */
    double pl = q * (double)(n - 1), ph = (1 - q) * (double)(n - 1);
    size_t il = (size_t)pl, ih = (size_t)ph;
    *lo = x[il] + (il + 1 < n ? (pl - (double)il) * (x[il + 1] - x[il]) : 0);
    *hi = x[ih] + (ih + 1 < n ? (ph - (double)ih) * (x[ih + 1] - x[ih]) : 0);
    for (size_t i = 0; i < n; i++)
        mean += x[i] / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - mean) * (x[i] - mean);
    *sd = n > 1 ? sqrt(ss / (double)(n - 1)) : 0;
}

int joule_runs_drop_highest_loss(const joule_run *runs, size_t n, size_t k, joule_run **out, size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (k > n) return joule_fail(JOULE_ERR_ARG, "cannot drop %zu of %zu runs", k, n);
    double *l = malloc((n ? n : 1) * sizeof *l);
    joule_run *dst = malloc((n ? n : 1) * sizeof *dst);
    if (!l || !dst) {
        free(l);
        free(dst);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        l[i] = runs[i].loss;
    qsort(l, n, sizeof *l, joule_cmp_double);
    /* drop the k largest; ties at the threshold are dropped in input order until k are gone */
    double thr = k ? l[n - k] : INFINITY;
    size_t above = 0, m = 0;
    for (size_t i = 0; i < n; i++)
        above += runs[i].loss > thr;
    size_t ties_to_drop = k - above;
    for (size_t i = 0; i < n; i++) {
        if (runs[i].loss > thr) continue;
        if (runs[i].loss == thr && ties_to_drop) {
            ties_to_drop--;
            continue;
        }
        dst[m++] = runs[i];
    }
    free(l);
    *out = dst;
    *n_out = m;
    return JOULE_OK;
}
