/* joule/fit.h — scaling-law fits: L(C) = a C^b + c and Chinchilla's
 * L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Approach 3), with seeded
 * bootstrap intervals, predictions, compute-optimal allocation, backtests and the effective
 * compute multiplier of another model (docs/ACCOUNTING.md §7 states the procedure).
 *
 * Both fits minimise SUM_i Huber_delta(log Lhat_i - log L_i): a grid over the exponents
 * with the linear parameters solved by weighted least squares, then a Nelder-Mead polish
 * of all parameters in log space and an iteratively-reweighted Gauss-Newton finish.
 * Ownership: joule_runs_load returns an array the caller frees with free().
 */
#ifndef JOULE_FIT_H
#define JOULE_FIT_H

#include <stddef.h>
#include <stdint.h>

#include "joule/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double N; /* parameters (0 when unknown) */
    double D; /* training tokens (0 when unknown) */
    double C; /* training FLOPs; 6 N D when not given */
    double loss;
} joule_run;

/* CSV with a header row, or JSON lines. Column/key names (case-insensitive): N | params |
 * model size; D | tokens; C | flops | compute | training flop; loss | L. Rows need a loss
 * and either C or both N and D; a missing D is C / (6 N), a missing C is 6 N D. Every
 * value, given or derived, must be finite and at most JOULE_FIT_MAX (JOULE_ERR_FORMAT
 * naming the line otherwise). */
#define JOULE_FIT_MAX 1e40
int joule_runs_load(const char *path, joule_run **runs, size_t *n);

#define JOULE_FIT_DELTA 1e-3

typedef struct {
    double E, A, B, alpha, beta;
    double objective; /* sum of Huber losses at the optimum */
} joule_chin_fit;

typedef struct {
    double a, b, c; /* L = a C^b + c, a > 0, b < 0, c >= 0 */
    double objective;
} joule_pow_fit;

/* Fits of all n runs (needs N and D, n >= 5 / C, n >= 3). delta <= 0 means JOULE_FIT_DELTA. */
int joule_fit_chinchilla(const joule_run *runs, size_t n, double delta, joule_chin_fit *out);
int joule_fit_power(const joule_run *runs, size_t n, double delta, joule_pow_fit *out);
/* Polishes from a start (the bootstrap refits every resample this way). */
int joule_fit_chinchilla_from(const joule_run *runs, size_t n, double delta, const joule_chin_fit *start,
                              joule_chin_fit *out);
int joule_fit_power_from(const joule_run *runs, size_t n, double delta, const joule_pow_fit *start, joule_pow_fit *out);

double joule_chin_loss(const joule_chin_fit *f, double N, double D);
double joule_pow_loss(const joule_pow_fit *f, double C);
/* Compute-optimal N and D for a budget C = 6 N D (closed form of Hoffmann et al. eq. 4). */
void joule_chin_optimal(const joule_chin_fit *f, double C, double *N, double *D);
/* Dense compute reaching `loss` on the power-law fit (infinite when loss <= c). */
double joule_pow_compute_for(const joule_pow_fit *f, double loss);
/* Compute C at which the compute-optimal loss L*(C) (N, D from joule_chin_optimal) equals
 * `loss` (bisection in log C; infinite when loss <= E, 0 when above L*(1 FLOP)). */
double joule_chin_compute_for(const joule_chin_fit *f, double loss);

/* Seeded bootstrap: `reps` resamples of the runs with replacement (the same seed gives the
 * same draws), each refitted from the full-data fit. Arrays of reps fits, caller frees.
 * progress (may be NULL) is called after each resample with (done, reps). */
typedef void (*joule_fit_progress)(void *ctx, int done, int total);
int joule_bootstrap_chinchilla(const joule_run *runs, size_t n, double delta, const joule_chin_fit *full, int reps,
                               uint64_t seed, joule_fit_progress progress, void *ctx, joule_chin_fit **out);
int joule_bootstrap_power(const joule_run *runs, size_t n, double delta, const joule_pow_fit *full, int reps,
                          uint64_t seed, joule_fit_progress progress, void *ctx, joule_pow_fit **out);

/* Percentile interval [lo, hi] (e.g. level 0.95 -> 2.5% and 97.5%) and standard deviation of
 * x[n] (x is sorted in place). */
void joule_interval(double *x, size_t n, double level, double *lo, double *hi, double *sd);

/* The runs minus the `k` of highest loss (a copy, sorted as given; caller frees). */
int joule_runs_drop_highest_loss(const joule_run *runs, size_t n, size_t k, joule_run **out, size_t *n_out);

#ifdef __cplusplus
}
#endif
#endif
