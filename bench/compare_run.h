/* bench/compare_run.h — the driver's private piece: one run (bench/compare.c), which the
 * loop over budgets x archs (bench/compare_loop.c, joule_compare_grid) calls. */
#ifndef JOULE_COMPARE_RUN_H
#define JOULE_COMPARE_RUN_H

#include "joule/compare.h"
#include "joule/energy.h"
#include "joule/train.h"

/* RETRO-fit's fitting budget for the dense model c of `budget`: retrofit_fraction of it, at
 * least min_steps steps of the RETRO model. */
double compare_fit_budget(const joule_compare_settings *s, const joule_config *c, double budget);

/* The index of the row of (arch, budget) in rows, or -1. */
int compare_find_row(const joule_compare_row *rows, int n, const char *arch, double budget);
/* Is (arch a, budget) asked for by p and not finished in out->rows? */
bool compare_to_do(const joule_compare_plan *p, const joule_compare_outcome *out, int a, double budget);

/* compare_run_one's result when Ctrl-C stopped the training: no row is recorded. */
#define COMPARE_INTERRUPTED 100

typedef struct {
    const joule_compare_settings *settings;
    const char *data_dir, *train_path, *val_path;
    const char *log_path;    /* the run's step log */
    const joule_energy *meters; /* NULL: energy not measured */
    volatile int *interrupt;
    void (*on_step)(void *ctx, const joule_train_progress *p);
    void *step_ctx;
    /* RETRO: the folder's database (NULL when it could not be built: retro_error says why)
     * and the analytic FLOPs of one search in it */
    const char *db_dir;
    const char *db_params; /* search parameters every run applies ("nprobe=4"); NULL: stored */
    const char *retro_error;
    double search_flops;
    /* the dense run of the budget being run, when finished: RETRO-fit starts from it and the
     * leakage table scores it beside RETRO (NULL: none) */
    const joule_compare_row *dense;
} compare_run_ctx;

/* Sizes, trains (checkpoint at r->checkpoint, set by the caller), evaluates and measures
 * one run into r. JOULE_OK with r->ok, an error (r->error holds it) or COMPARE_INTERRUPTED. */
int compare_run_one(const compare_run_ctx *x, joule_arch arch, double budget, joule_compare_row *r);

#endif
