/* joule fit — scaling laws from training runs: L(C) = a C^b + c and Chinchilla's
 * L(N, D) = E + A/N^alpha + B/D^beta, bootstrap intervals, predictions, compute-optimal
 * allocation, backtest and effective compute. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acct_cli.h"
#include "cli.h"
#include "fit_cli.h"
#include "joule/fit.h"

static const char USAGE[] =
    "Usage: joule fit --runs FILE [options]\n"
    "\n"
    "Fits L(C) = a C^b + c (loss against training compute) and, when every run has N and D,\n"
    "Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3): Huber\n"
    "loss (delta 1e-3) on log residuals summed over the runs, a grid over the exponents with\n"
    "the linear parameters by weighted least squares, then a local polish of all parameters.\n"
    "Intervals come from a seeded bootstrap over the runs. docs/ACCOUNTING.md states it all.\n"
    "\n"
    "FILE: CSV with a header, or JSON lines. Fields: N|params|model size, D|tokens,\n"
    "C|flops|compute|training flop, loss. Each run needs a loss and C, or N and D (C = 6ND).\n"
    "\n"
    "Options:\n"
    "  --runs FILE         the runs (required)\n"
    "  --drop-highest K    leave out the K runs of highest loss (default 0)\n"
    "  --delta X           Huber delta (default 1e-3)\n"
    "  --bootstrap N       bootstrap resamples for intervals, 0 = none (default 200)\n"
    "  --seed S            bootstrap seed (default 1)\n"
    "  --level P           interval level (default 0.95)\n"
    "  --predict C         predicted loss at compute C, with its interval\n"
    "  --budget C          compute-optimal N and D for a budget C = 6ND (needs N and D)\n"
    "  --backtest          fit on all but the largest-compute runs and report the error of the\n"
    "                      prediction for them\n"
    "  --effective C:L     another model reaching loss L with compute C: the dense compute that\n"
    "                      reaches L on the L(C) fit, and the effective compute multiplier\n"
    "  --out FILE          write the results as JSON to FILE\n"
    "  --svg FILE          write a log-log plot of loss against compute with the fits\n"
    "  --json              print the JSON instead of text\n"
    "  -h, --help          show this help and exit\n";

enum {
    OPT_RUNS = 256,
    OPT_DROP,
    OPT_DELTA,
    OPT_BOOT,
    OPT_SEED,
    OPT_LEVEL,
    OPT_PREDICT,
    OPT_BUDGET,
    OPT_BACKTEST,
    OPT_EFFECTIVE,
    OPT_OUT,
    OPT_SVG,
    OPT_JSON
};

static const char *CMD = "fit";

typedef struct {
    const char *runs, *out, *svg;
    int drop, boot;
    uint64_t seed;
    double delta, level, predict, budget, eff_c, eff_l;
    bool backtest, json;
} fit_args;

/* An interval of a derived quantity over the bootstrap fits. */
typedef struct {
    double lo, hi, sd;
} interval;

static interval over(double *x, int n, double level) {
    interval iv = {NAN, NAN, NAN};
    if (n >= 2) joule_interval(x, (size_t)n, level, &iv.lo, &iv.hi, &iv.sd);
    return iv;
}

static void add_iv(cJSON *o, const char *key, double value, interval iv) {
    cJSON *v = cJSON_AddObjectToObject(o, key);
    cJSON_AddNumberToObject(v, "value", value);
    if (isfinite(iv.lo)) {
        cJSON_AddNumberToObject(v, "lo", iv.lo);
        cJSON_AddNumberToObject(v, "hi", iv.hi);
        cJSON_AddNumberToObject(v, "se", iv.sd);
    }
}

static void print_iv(const char *name, double value, interval iv, double level) {
    if (isfinite(iv.lo))
        printf("  %-10s %.6g  [%.6g, %.6g] %g%%, bootstrap SE %.3g\n", name, value, iv.lo, iv.hi, level * 100, iv.sd);
    else
        printf("  %-10s %.6g\n", name, value);
}

typedef struct {
    bool have_pow, have_chin;
    joule_pow_fit pow;
    joule_chin_fit chin;
    joule_pow_fit *bpow;
    joule_chin_fit *bchin;
    int nb;
} fits;

typedef struct {
    cli_progress *bar;
    int offset; /* resamples done by earlier bootstraps */
} fit_progress;

static void on_resample(void *ctx, int done, int total) {
    fit_progress *fp = ctx;
    (void)total;
    cli_progress_update(fp->bar, fp->offset + done, NULL);
}

static int fit_all(const fit_args *a, const joule_run *runs, size_t n, bool nd, fits *f, cli_progress *bar) {
    memset(f, 0, sizeof *f);
    int rc;
    if ((rc = joule_fit_power(runs, n, a->delta, &f->pow))) return rc;
    f->have_pow = true;
    if (nd) {
        if ((rc = joule_fit_chinchilla(runs, n, a->delta, &f->chin))) return rc;
        f->have_chin = true;
    }
    if (a->boot > 0) {
        f->nb = a->boot;
        fit_progress fp = {bar, 0};
        if ((rc = joule_bootstrap_power(runs, n, a->delta, &f->pow, a->boot, a->seed, on_resample, &fp, &f->bpow)))
            return rc;
        fp.offset = a->boot;
        if (nd && (rc = joule_bootstrap_chinchilla(runs, n, a->delta, &f->chin, a->boot, a->seed, on_resample, &fp,
                                                   &f->bchin)))
            return rc;
    }
    return JOULE_OK;
}

static void free_fits(fits *f) {
    free(f->bpow);
    free(f->bchin);
}

/* Bootstrap distribution of g(fit) for each kind. */
typedef double (*pow_fn)(const joule_pow_fit *f, const void *ctx);
typedef double (*chin_fn)(const joule_chin_fit *f, const void *ctx);

static interval pow_iv(const fits *f, pow_fn g, const void *ctx, double level, double *x) {
    for (int k = 0; k < f->nb; k++)
        x[k] = g(&f->bpow[k], ctx);
    return over(x, f->bpow ? f->nb : 0, level);
}

static interval chin_iv(const fits *f, chin_fn g, const void *ctx, double level, double *x) {
    for (int k = 0; k < f->nb; k++)
        x[k] = g(&f->bchin[k], ctx);
    return over(x, f->bchin ? f->nb : 0, level);
}

static double p_a(const joule_pow_fit *f, const void *c) {
    (void)c;
    return f->a;
}
static double p_b(const joule_pow_fit *f, const void *c) {
    (void)c;
    return f->b;
}
static double p_c(const joule_pow_fit *f, const void *c) {
    (void)c;
    return f->c;
}
static double p_pred(const joule_pow_fit *f, const void *c) { return joule_pow_loss(f, *(const double *)c); }
static double p_eff(const joule_pow_fit *f, const void *c) {
    const double *cl = c;
    return joule_pow_compute_for(f, cl[1]) / cl[0];
}
static double c_eff(const joule_chin_fit *f, const void *c) {
    const double *cl = c;
    return joule_chin_compute_for(f, cl[1]) / cl[0];
}
static double c_E(const joule_chin_fit *f, const void *c) {
    (void)c;
    return f->E;
}
static double c_A(const joule_chin_fit *f, const void *c) {
    (void)c;
    return f->A;
}
static double c_B(const joule_chin_fit *f, const void *c) {
    (void)c;
    return f->B;
}
static double c_al(const joule_chin_fit *f, const void *c) {
    (void)c;
    return f->alpha;
}
static double c_be(const joule_chin_fit *f, const void *c) {
    (void)c;
    return f->beta;
}
static double c_N(const joule_chin_fit *f, const void *c) {
    double N, D;
    joule_chin_optimal(f, *(const double *)c, &N, &D);
    return N;
}
static double c_D(const joule_chin_fit *f, const void *c) {
    double N, D;
    joule_chin_optimal(f, *(const double *)c, &N, &D);
    return D;
}
static double c_pred(const joule_chin_fit *f, const void *c) {
    double N, D;
    joule_chin_optimal(f, *(const double *)c, &N, &D);
    return joule_chin_loss(f, N, D);
}

/* Fit on the runs below the largest compute (within 1%), predict those. */
static int backtest(const fit_args *a, const joule_run *runs, size_t n, bool nd, cJSON *out, bool *held) {
    double cmax = 0;
    for (size_t i = 0; i < n; i++)
        cmax = fmax(cmax, runs[i].C);
    joule_run *train = malloc(n * sizeof *train);
    if (!train) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        held[i] = runs[i].C >= cmax / 1.01;
        if (!held[i]) train[m++] = runs[i];
    }
    joule_pow_fit pf;
    joule_chin_fit cf;
    int rc = joule_fit_power(train, m, a->delta, &pf);
    if (!rc && nd) rc = joule_fit_chinchilla(train, m, a->delta, &cf);
    free(train);
    if (rc) return rc;
    cJSON *bt = cJSON_AddObjectToObject(out, "backtest");
    cJSON_AddNumberToObject(bt, "train_runs", (double)m);
    cJSON_AddNumberToObject(bt, "held_out_compute", cmax);
    cJSON *arr = cJSON_AddArrayToObject(bt, "held_out");
    double ep = 0, ec = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!held[i]) continue;
        cJSON *h = cJSON_CreateObject();
        double lp = joule_pow_loss(&pf, runs[i].C);
        cJSON_AddNumberToObject(h, "C", runs[i].C);
        cJSON_AddNumberToObject(h, "loss", runs[i].loss);
        cJSON_AddNumberToObject(h, "pred_power", lp);
        ep += fabs(lp - runs[i].loss) / runs[i].loss;
        if (nd) {
            double lc = joule_chin_loss(&cf, runs[i].N, runs[i].D);
            cJSON_AddNumberToObject(h, "N", runs[i].N);
            cJSON_AddNumberToObject(h, "pred_chinchilla", lc);
            ec += fabs(lc - runs[i].loss) / runs[i].loss;
        }
        cJSON_AddItemToArray(arr, h);
        k++;
    }
    cJSON_AddNumberToObject(bt, "mean_abs_rel_error_power", ep / (double)k);
    if (nd) cJSON_AddNumberToObject(bt, "mean_abs_rel_error_chinchilla", ec / (double)k);
    return JOULE_OK;
}

static int parse_args(int argc, char **argv, fit_args *a) {
    static const struct option LONG[] = {
        {"runs", required_argument, NULL, OPT_RUNS},
        {"drop-highest", required_argument, NULL, OPT_DROP},
        {"delta", required_argument, NULL, OPT_DELTA},
        {"bootstrap", required_argument, NULL, OPT_BOOT},
        {"seed", required_argument, NULL, OPT_SEED},
        {"level", required_argument, NULL, OPT_LEVEL},
        {"predict", required_argument, NULL, OPT_PREDICT},
        {"budget", required_argument, NULL, OPT_BUDGET},
        {"backtest", no_argument, NULL, OPT_BACKTEST},
        {"effective", required_argument, NULL, OPT_EFFECTIVE},
        {"out", required_argument, NULL, OPT_OUT},
        {"svg", required_argument, NULL, OPT_SVG},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", LONG, USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return -1;
        case OPT_RUNS: a->runs = optarg; break;
        case OPT_DROP:
            if (!cli_parse_int(optarg, 0, 1 << 30, &a->drop))
                return cli_usage_error(CMD, "--drop-highest: '%s' is not a count", optarg);
            break;
        case OPT_DELTA: CLI_CHECK(cli_number_option(CMD, "--delta", optarg, true, &a->delta)); break;
        case OPT_BOOT:
            if (!cli_parse_int(optarg, 0, 100000, &a->boot) || a->boot == 1)
                return cli_usage_error(CMD, "--bootstrap: '%s' is not 0 or in [2, 100000]", optarg);
            break;
        case OPT_SEED:
            if (!cli_parse_u64(optarg, &a->seed))
                return cli_usage_error(CMD, "--seed: '%s' is not an unsigned integer", optarg);
            break;
        case OPT_LEVEL:
            if (!cli_parse_double(optarg, &a->level) || !(a->level > 0 && a->level < 1))
                return cli_usage_error(CMD, "--level: '%s' is not in (0, 1)", optarg);
            break;
        case OPT_PREDICT:
            if (!cli_parse_double(optarg, &a->predict) || !(a->predict > 0))
                return cli_usage_error(CMD, "--predict: '%s' is not a positive compute", optarg);
            break;
        case OPT_BUDGET:
            if (!cli_parse_double(optarg, &a->budget) || !(a->budget > 0))
                return cli_usage_error(CMD, "--budget: '%s' is not a positive compute", optarg);
            break;
        case OPT_BACKTEST: a->backtest = true; break;
        case OPT_EFFECTIVE: {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", optarg);
            char *colon = strchr(buf, ':');
            if (colon) *colon = '\0';
            if (!colon || !cli_parse_double(buf, &a->eff_c) || !cli_parse_double(colon + 1, &a->eff_l) ||
                !(a->eff_c > 0) || !(a->eff_l > 0))
                return cli_usage_error(CMD, "--effective: '%s' is not C:L with positive compute and loss", optarg);
            break;
        }
        case OPT_OUT: a->out = optarg; break;
        case OPT_SVG: a->svg = optarg; break;
        case OPT_JSON: a->json = true; break;
        default: return cli_bad_option(CMD, c, argv);
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!a->runs) return cli_usage_error(CMD, "--runs FILE is required");
    return 0;
}

static int write_text(const char *path, const char *text) {
    int rc = joule_write_file_atomic(path, text, strlen(text));
    if (rc) return cli_fail(CMD, rc);
    return 0;
}

/* What a fit reports, into the JSON object and (unless --json) as text. */
typedef struct {
    const fit_args *a;
    fits *f;
    cJSON *o;
    double *x; /* scratch of the bootstrap intervals */
    bool text;
} fit_out;

static void report_power(const fit_out *r, size_t n) {
    const fit_args *a = r->a;
    fits *f = r->f;
    const double lv = a->level;
    cJSON_AddStringToObject(r->o, "runs_file", a->runs);
    cJSON_AddNumberToObject(r->o, "runs", (double)n);
    cJSON_AddNumberToObject(r->o, "dropped_highest_loss", a->drop);
    cJSON_AddNumberToObject(r->o, "huber_delta", a->delta);
    cJSON_AddNumberToObject(r->o, "bootstrap", a->boot);
    cJSON_AddNumberToObject(r->o, "seed", (double)a->seed);
    cJSON_AddNumberToObject(r->o, "level", lv);
    cJSON *po = cJSON_AddObjectToObject(r->o, "power_law");
    cJSON_AddStringToObject(po, "form", "L = a C^b + c");
    add_iv(po, "a", f->pow.a, pow_iv(f, p_a, NULL, lv, r->x));
    add_iv(po, "b", f->pow.b, pow_iv(f, p_b, NULL, lv, r->x));
    add_iv(po, "c", f->pow.c, pow_iv(f, p_c, NULL, lv, r->x));
    cJSON_AddNumberToObject(po, "objective", f->pow.objective);
    if (!r->text) return;
    printf("%zu runs from %s%s; Huber delta %g; %d bootstrap resamples (seed %llu)\n", n, a->runs,
           a->drop ? " (highest-loss runs dropped)" : "", a->delta, a->boot, (unsigned long long)a->seed);
    printf("L(C) = a C^b + c   objective %.6g\n", f->pow.objective);
    print_iv("a", f->pow.a, pow_iv(f, p_a, NULL, lv, r->x), lv);
    print_iv("b", f->pow.b, pow_iv(f, p_b, NULL, lv, r->x), lv);
    print_iv("c", f->pow.c, pow_iv(f, p_c, NULL, lv, r->x), lv);
}

static void report_chinchilla(const fit_out *r) {
    fits *f = r->f;
    const double lv = r->a->level;
    cJSON *co = cJSON_AddObjectToObject(r->o, "chinchilla");
    cJSON_AddStringToObject(co, "form", "L = E + A/N^alpha + B/D^beta");
    const struct { const char *name; double v; chin_fn g; } P[] = {
        {"E", f->chin.E, c_E}, {"A", f->chin.A, c_A}, {"B", f->chin.B, c_B},
        {"alpha", f->chin.alpha, c_al}, {"beta", f->chin.beta, c_be}};
    for (int i = 0; i < 5; i++) add_iv(co, P[i].name, P[i].v, chin_iv(f, P[i].g, NULL, lv, r->x));
    cJSON_AddNumberToObject(co, "objective", f->chin.objective);
    if (!r->text) return;
    printf("L(N, D) = E + A/N^alpha + B/D^beta   objective %.6g\n", f->chin.objective);
    for (int i = 0; i < 5; i++) print_iv(P[i].name, P[i].v, chin_iv(f, P[i].g, NULL, lv, r->x), lv);
}

/* --predict C: the loss at C on each fit. */
static void report_prediction(const fit_out *r) {
    fits *f = r->f;
    const double lv = r->a->level, *c = &r->a->predict;
    cJSON *pr = cJSON_AddObjectToObject(r->o, "prediction");
    cJSON_AddNumberToObject(pr, "C", *c);
    interval ip = pow_iv(f, p_pred, c, lv, r->x);
    add_iv(pr, "loss_power", joule_pow_loss(&f->pow, *c), ip);
    if (r->text) printf("prediction at C = %.4g:\n", *c), print_iv("L(C)", joule_pow_loss(&f->pow, *c), ip, lv);
    if (f->have_chin) {
        interval ic = chin_iv(f, c_pred, c, lv, r->x);
        add_iv(pr, "loss_chinchilla_optimal", c_pred(&f->chin, c), ic);
        if (r->text) print_iv("L*(C)", c_pred(&f->chin, c), ic, lv);
    }
}

/* --budget C: the compute-optimal N, D and loss of the Chinchilla fit. */
static void report_budget(const fit_out *r) {
    fits *f = r->f;
    const double lv = r->a->level, *c = &r->a->budget;
    cJSON *bu = cJSON_AddObjectToObject(r->o, "compute_optimal");
    cJSON_AddNumberToObject(bu, "C", *c);
    interval iN = chin_iv(f, c_N, c, lv, r->x);
    add_iv(bu, "N", c_N(&f->chin, c), iN);
    interval iD = chin_iv(f, c_D, c, lv, r->x);
    add_iv(bu, "D", c_D(&f->chin, c), iD);
    interval iL = chin_iv(f, c_pred, c, lv, r->x);
    add_iv(bu, "loss", c_pred(&f->chin, c), iL);
    if (!r->text) return;
    printf("compute-optimal at C = %.4g (C = 6ND):\n", *c);
    print_iv("N", c_N(&f->chin, c), iN, lv);
    print_iv("D", c_D(&f->chin, c), iD, lv);
    print_iv("loss", c_pred(&f->chin, c), iL, lv);
}

/* --effective C:L: the dense compute reaching L, and the multiplier over C. */
static void report_effective(const fit_out *r) {
    const fit_args *a = r->a;
    fits *f = r->f;
    const double lv = a->level;
    double cl[2] = {a->eff_c, a->eff_l};
    double cd = joule_pow_compute_for(&f->pow, a->eff_l);
    interval im = pow_iv(f, p_eff, cl, lv, r->x);
    cJSON *ef = cJSON_AddObjectToObject(r->o, "effective_compute");
    cJSON_AddNumberToObject(ef, "C", a->eff_c);
    cJSON_AddNumberToObject(ef, "loss", a->eff_l);
    cJSON_AddNumberToObject(ef, "dense_compute", isfinite(cd) ? cd : -1);
    add_iv(ef, "multiplier", isfinite(cd) ? cd / a->eff_c : -1, im);
    double cc = f->have_chin ? joule_chin_compute_for(&f->chin, a->eff_l) : NAN;
    interval ic = f->have_chin ? chin_iv(f, c_eff, cl, lv, r->x) : (interval){NAN, NAN, NAN};
    if (f->have_chin) {
        cJSON_AddNumberToObject(ef, "dense_compute_chinchilla_optimal", isfinite(cc) ? cc : -1);
        add_iv(ef, "multiplier_chinchilla_optimal", isfinite(cc) ? cc / a->eff_c : -1, ic);
    }
    if (!r->text) return;
    if (isfinite(cd))
        printf("effective compute of (C %.4g, loss %.4g): L(C) needs C = %.4g; multiplier %.4g\n", a->eff_c,
               a->eff_l, cd, cd / a->eff_c);
    else
        printf("effective compute: loss %.4g is at or below the L(C) fit's irreducible loss c = %.4g "
               "(unreachable densely)\n",
               a->eff_l, f->pow.c);
    print_iv("multiplier", isfinite(cd) ? cd / a->eff_c : INFINITY, im, lv);
    if (f->have_chin) {
        printf("  on the compute-optimal L*(C) of the Chinchilla fit: C = %.4g\n", cc);
        print_iv("multiplier", isfinite(cc) ? cc / a->eff_c : INFINITY, ic, lv);
    }
}

/* --backtest: fitted below the largest compute, the error on the runs held out. */
static int report_backtest(const fit_out *r, const joule_run *runs, size_t n, bool nd, bool *held) {
    int rc = backtest(r->a, runs, n, nd, r->o, held);
    if (rc || !r->text) return rc;
    cJSON *bt = cJSON_GetObjectItem(r->o, "backtest");
    printf("backtest: fitted on %d runs below C = %.4g; mean |relative error| on the held-out runs: L(C) %.4g",
           (int)cJSON_GetObjectItem(bt, "train_runs")->valuedouble,
           cJSON_GetObjectItem(bt, "held_out_compute")->valuedouble,
           cJSON_GetObjectItem(bt, "mean_abs_rel_error_power")->valuedouble);
    if (nd) printf(", L(N, D) %.4g", cJSON_GetObjectItem(bt, "mean_abs_rel_error_chinchilla")->valuedouble);
    printf("\n");
    return 0;
}

/* The JSON (printed with --json, written with --out) and the --svg plot; the exit status. */
static int write_outputs(const fit_args *a, cJSON *o, const joule_run *runs, size_t n, const bool *held,
                         const fits *f) {
    char *js = cJSON_PrintUnformatted(o);
    int ret = 0;
    if (!js) ret = cli_fail(CMD, joule_fail(JOULE_ERR_NOMEM, "out of memory"));
    if (!ret && a->json) printf("%s\n", js);
    if (!ret && a->out) {
        size_t len = strlen(js);
        char *withnl = malloc(len + 2);
        if (withnl) {
            memcpy(withnl, js, len);
            memcpy(withnl + len, "\n", 2);
            ret = write_text(a->out, withnl);
            free(withnl);
        }
        if (!ret && !a->json) printf("wrote %s\n", a->out);
    }
    if (!ret && a->svg) {
        fit_plot p = {"joule fit: loss against compute", runs,    n,
                      a->backtest ? held : NULL,         &f->pow, f->have_chin ? &f->chin : NULL,
                      fmax(a->predict, a->budget),        f->bpow, f->nb, a->level};
        char *svg = fit_svg(&p);
        ret = svg ? write_text(a->svg, svg) : cli_fail(CMD, joule_fail(JOULE_ERR_NOMEM, "out of memory"));
        free(svg);
        if (!ret && !a->json) printf("wrote %s\n", a->svg);
    }
    free(js);
    return ret;
}

/* The runs of --runs, less the --drop-highest; *nd: every run has N and D. Caller frees. */
static int load_runs(const fit_args *a, joule_run **runs, size_t *n, bool *nd) {
    if (cli_check_input(CMD, a->runs, NULL)) return EXIT_USAGE;
    joule_run *all;
    size_t n_all;
    int rc = joule_runs_load(a->runs, &all, &n_all);
    if (rc) return cli_fail(CMD, rc);
    rc = joule_runs_drop_highest_loss(all, n_all, (size_t)a->drop, runs, n);
    free(all);
    if (rc) return cli_usage_error(CMD, "--drop-highest: %s", joule_last_error());
    *nd = true;
    for (size_t i = 0; i < *n; i++)
        *nd &= (*runs)[i].N > 0 && (*runs)[i].D > 0;
    if (a->budget > 0 && !*nd) {
        free(*runs);
        *runs = NULL;
        return cli_usage_error(CMD, "--budget needs N and D for every run (%s)", a->runs);
    }
    return 0;
}

/* The fits and their bootstrap, then every section the options ask for. */
static int fit_and_report(const fit_args *a, joule_run *runs, size_t n, bool nd) {
    fits f;
    cli_progress bar;
    const double total_fits = (nd ? 2.0 : 1.0) * a->boot;
    cli_progress_start(&bar, "bootstrap", "fit", total_fits);
    int rc = fit_all(a, runs, n, nd, &f, &bar);
    if (bar.printed) cli_progress_finish(&bar, total_fits, NULL);
    fit_out r = {a, &f, cJSON_CreateObject(), malloc((size_t)(a->boot > 0 ? a->boot : 1) * sizeof(double)),
                 !a->json};
    bool *held = calloc(n, sizeof *held);
    if (!rc && (!r.x || !held || !r.o)) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) {
        report_power(&r, n);
        if (f.have_chin) report_chinchilla(&r);
        if (a->predict > 0) report_prediction(&r);
        if (a->budget > 0) report_budget(&r);
        if (a->eff_c > 0) report_effective(&r);
        if (a->backtest) rc = report_backtest(&r, runs, n, nd, held);
    }
    int ret = rc ? cli_fail(CMD, rc) : write_outputs(a, r.o, runs, n, held, &f);
    free(r.x);
    free(held);
    cJSON_Delete(r.o);
    free_fits(&f);
    return ret;
}

int cmd_fit(int argc, char **argv) {
    fit_args a = {NULL, NULL, NULL, 0, 200, 1, JOULE_FIT_DELTA, 0.95, 0, 0, 0, 0, false, false};
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    joule_run *runs = NULL;
    size_t n;
    bool nd = true;
    if ((rc = load_runs(&a, &runs, &n, &nd))) return rc;
    rc = fit_and_report(&a, runs, n, nd);
    free(runs);
    return rc;
}
