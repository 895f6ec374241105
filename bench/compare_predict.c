/* Capability prediction as in the GPT-4 technical report (section 3.2): the prompts every
 * run of an architecture solves at least once (pass rate > 0 from its samples) are split
 * into difficulty buckets by the smaller runs' pass rates; per bucket
 * -mean log pass_rate = alpha C^-k is fitted on every budget but the largest and predicts
 * the largest, with bootstrap intervals over the bucket's prompts. A fit with k <= 0 or
 * too few prompts or budgets is reported as degenerate, not as a prediction. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compare_report.h"

#define MIN_BUCKET_PROMPTS 3 /* fewer: the mean over a bucket is one or two prompts' noise */

typedef struct {
    double r;
    int i;
} ranked;

static int by_rate_desc(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->r != y->r) return x->r < y->r ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

void joule_difficulty_buckets(const double *rate, int n, int n_buckets, int *bucket) {
    ranked *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (!v || n_buckets < 1) {
        for (int i = 0; i < n; i++) bucket[i] = 0;
        free(v);
        return;
    }
    for (int i = 0; i < n; i++) v[i] = (ranked){rate[i], i};
    qsort(v, (size_t)n, sizeof *v, by_rate_desc);
    for (int q = 0; q < n; q++) bucket[v[q].i] = (int)((int64_t)q * n_buckets / n);
    free(v);
}

int joule_capability_fit(const double *C, const double *y, int n, double *alpha, double *k) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (!(y[i] > 0 && C[i] > 0) || !isfinite(y[i])) continue;
        const double x = log(C[i]), l = log(y[i]);
        sx += x, sy += l, sxx += x * x, sxy += x * l;
        m++;
    }
    const double den = m * sxx - sx * sx;
    if (m < 2 || !(fabs(den) > 1e-12 * m * sxx)) {
        *alpha = *k = NAN;
        return m;
    }
    const double slope = (m * sxy - sx * sy) / den;
    *k = -slope;
    *alpha = exp((sy - slope * sx) / m);
    return m;
}

/* Pass rates [models][prompts] of one arch's runs, from their prompt files. */
typedef struct {
    int models, prompts;
    double *rate;
    double C[MAX_ROWS];
} pass_table;

/* false (why in note) when a run has no prompt file, no samples, or other prompts. */
static bool load_table(const arch_runs *r, pass_table *t, char *note, size_t note_n) {
    memset(t, 0, sizeof *t);
    t->models = r->n;
    uint64_t *starts = NULL;
    bool ok = true;
    for (int i = 0; i < r->n && ok; i++) {
        const joule_compare_row *row = r->rows[i];
        char path[600];
        snprintf(path, sizeof path, "%.*s.prompts.jsonl", (int)(strlen(row->checkpoint) - strlen(".safetensors")),
                 row->checkpoint);
        joule_prompt_score *s = NULL;
        int n = 0, samples = 0;
        if (joule_prompt_scores_load(path, &s, &n, &samples)) {
            snprintf(note, note_n, "%s", joule_last_error());
            ok = false;
        } else if (samples < 1) {
            snprintf(note, note_n, "no samples (run with --samples S)");
            ok = false;
        } else if (i > 0 && n != t->prompts) {
            snprintf(note, note_n, "%s: %d prompts, the smaller runs have %d", path, n, t->prompts);
            ok = false;
        } else {
            if (i == 0) {
                t->prompts = n;
                t->rate = malloc((size_t)r->n * (size_t)n * sizeof *t->rate);
                starts = malloc((size_t)n * sizeof *starts);
                if (!t->rate || !starts) ok = false, snprintf(note, note_n, "out of memory");
            }
            for (int p = 0; p < n && ok; p++) {
                if (i == 0) starts[p] = s[p].start;
                else if (starts[p] != s[p].start) ok = false, snprintf(note, note_n, "%s: other prompts", path);
                t->rate[(size_t)i * n + p] = (double)s[p].passes / samples;
            }
            t->C[i] = (double)row->flops_counted;
        }
        free(s);
    }
    free(starts);
    if (!ok) free(t->rate), t->rate = NULL;
    return ok;
}

typedef struct {
    double alpha, k, pred, actual;
    int used;
} bucket_fit;

/* -mean log pass rate of each run over the prompts idx[np]; the fit on all runs but the
 * last, its prediction of the last. */
static bucket_fit fit_bucket(const pass_table *t, const int *idx, int np) {
    double y[MAX_ROWS];
    for (int i = 0; i < t->models; i++) {
        double s = 0;
        for (int p = 0; p < np; p++) s -= log(t->rate[(size_t)i * t->prompts + idx[p]]);
        y[i] = s / np;
    }
    bucket_fit b;
    const int L = t->models - 1;
    b.used = joule_capability_fit(t->C, y, L, &b.alpha, &b.k);
    b.pred = b.alpha * pow(t->C[L], -b.k);
    b.actual = y[L];
    return b;
}

/* Percentile intervals of the prediction and the actual over resamples of the bucket's
 * prompts (with replacement); resamples whose fit fails are left out. */
static void bootstrap_bucket(const pass_table *t, const int *idx, int np, const joule_compare_report_opts *o,
                             uint64_t seed, double ci[4]) {
    ci[0] = ci[1] = ci[2] = ci[3] = NAN;
    int *pick = malloc((size_t)np * sizeof *pick);
    double *pred = malloc((size_t)(o->bootstrap + 1) * sizeof *pred), *act = malloc((size_t)(o->bootstrap + 1) * sizeof *act);
    int m = 0;
    joule_rng rng;
    joule_rng_seed(&rng, seed);
    for (int r = 0; pick && pred && act && r < o->bootstrap; r++) {
        for (int p = 0; p < np; p++) pick[p] = idx[joule_rng_below(&rng, (uint64_t)np)];
        bucket_fit b = fit_bucket(t, pick, np);
        if (isfinite(b.pred) && isfinite(b.actual)) pred[m] = b.pred, act[m++] = b.actual;
    }
    double sd;
    if (m >= 2) {
        joule_interval(pred, (size_t)m, o->level, &ci[0], &ci[1], &sd);
        joule_interval(act, (size_t)m, o->level, &ci[2], &ci[3], &sd);
    }
    free(pick);
    free(pred);
    free(act);
}

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

/* One bucket's row of report.md and its fit.json object. */
static cJSON *report_bucket(FILE *f, const char *arch, int b, const pass_table *t, const int *idx, int np,
                            const joule_compare_report_opts *o) {
    const int L = t->models - 1;
    double easy = 0;
    for (int p = 0; p < np; p++)
        for (int i = 0; i < L; i++) easy += t->rate[(size_t)i * t->prompts + idx[p]] / (np * L);
    bucket_fit fb = np > 0 ? fit_bucket(t, idx, np) : (bucket_fit){NAN, NAN, NAN, NAN, 0};
    char why[160] = "";
    if (np < MIN_BUCKET_PROMPTS) snprintf(why, sizeof why, "degenerate: %d prompts (needs %d)", np, MIN_BUCKET_PROMPTS);
    else if (fb.used < 2)
        snprintf(why, sizeof why, "degenerate: %d smaller budgets with -mean log pass rate > 0 (needs 2)", fb.used);
    else if (!(fb.k > 0)) snprintf(why, sizeof why, "degenerate: k = %.3g <= 0 (no improvement with compute)", fb.k);
    cJSON *o1 = cJSON_CreateObject();
    cJSON_AddNumberToObject(o1, "bucket", b);
    cJSON_AddNumberToObject(o1, "prompts", np);
    cJSON_AddItemToObject(o1, "smaller_mean_pass_rate", num_or_null(easy));
    cJSON_AddItemToObject(o1, "alpha", num_or_null(fb.alpha));
    cJSON_AddItemToObject(o1, "k", num_or_null(fb.k));
    cJSON_AddItemToObject(o1, "actual", num_or_null(fb.actual));
    if (why[0]) {
        cJSON_AddStringToObject(o1, "degenerate", why);
        fprintf(f, "| %s | %d | %d | %.3f | %s | | %.4g | |\n", arch, b + 1, np, easy, why, fb.actual);
        return o1;
    }
    double ci[4];
    bootstrap_bucket(t, idx, np, o, o->seed + (uint64_t)b, ci);
    cJSON_AddNumberToObject(o1, "predicted", fb.pred);
    cJSON *iv = cJSON_AddArrayToObject(o1, "predicted_interval");
    cJSON_AddItemToArray(iv, num_or_null(ci[0]));
    cJSON_AddItemToArray(iv, num_or_null(ci[1]));
    iv = cJSON_AddArrayToObject(o1, "actual_interval");
    cJSON_AddItemToArray(iv, num_or_null(ci[2]));
    cJSON_AddItemToArray(iv, num_or_null(ci[3]));
    fprintf(f, "| %s | %d | %d | %.3f | alpha %.4g, k %.4g | %.4g [%.4g, %.4g] | %.4g [%.4g, %.4g] | %+.4g |\n", arch,
            b + 1, np, easy, fb.alpha, fb.k, fb.pred, ci[0], ci[1], fb.actual, ci[2], ci[3], fb.pred - fb.actual);
    return o1;
}

/* One arch: the kept prompts, their buckets, each bucket's fit. */
static void predict_arch(FILE *f, cJSON *out, const char *arch, const pass_table *t, const joule_compare_report_opts *o) {
    const int P = t->prompts, L = t->models - 1, nb = o->buckets > 0 ? o->buckets : 3;
    int *keep = malloc((size_t)P * sizeof *keep), *bucket = malloc((size_t)P * sizeof *bucket), nk = 0;
    double *easy = malloc((size_t)P * sizeof *easy);
    if (!keep || !bucket || !easy) goto done;
    for (int p = 0; p < P; p++) {
        bool all = true;
        for (int i = 0; i < t->models; i++) all &= t->rate[(size_t)i * P + p] > 0;
        if (!all) continue;
        easy[nk] = 0;
        for (int i = 0; i < L; i++) easy[nk] += t->rate[(size_t)i * P + p] / L;
        keep[nk++] = p;
    }
    cJSON *a = cJSON_AddObjectToObject(out, arch);
    cJSON_AddNumberToObject(a, "prompts", P);
    cJSON_AddNumberToObject(a, "kept", nk);
    cJSON_AddNumberToObject(a, "held_out_flops", t->C[L]);
    cJSON *bs = cJSON_AddArrayToObject(a, "buckets");
    if (nk < MIN_BUCKET_PROMPTS) {
        char why[160];
        snprintf(why, sizeof why, "degenerate: %d of %d prompts solved at least once by every run (needs %d)", nk, P,
                 MIN_BUCKET_PROMPTS);
        cJSON_AddStringToObject(a, "degenerate", why);
        fprintf(f, "| %s | | %d | | %s | | | |\n", arch, nk, why);
        goto done;
    }
    joule_difficulty_buckets(easy, nk, nb, bucket);
    int *idx = malloc((size_t)(nk > 0 ? nk : 1) * sizeof *idx);
    for (int b = 0; idx && b < nb; b++) {
        int np = 0;
        for (int q = 0; q < nk; q++)
            if (bucket[q] == b) idx[np++] = keep[q];
        cJSON_AddItemToArray(bs, report_bucket(f, arch, b, t, idx, np, o));
    }
    free(idx);
done:
    free(keep);
    free(bucket);
    free(easy);
}

void compare_capability(FILE *f, cJSON *fit, const arch_runs *runs, const joule_compare_report_opts *o) {
    fprintf(f, "\n## Capability prediction (GPT-4 report, section 3.2)\n\nPer architecture: the prompts every run "
               "solves at least once (pass rate > 0 over its samples), split into %d difficulty buckets by the "
               "smaller runs' mean pass rate (1 = easiest); per bucket -mean log pass_rate = alpha C^-k fitted on "
               "every budget but the largest, predicting the largest. Predicted and actual -mean log pass rate with "
               "%.0f%% bootstrap intervals over the bucket's prompts (%d resamples); lower is better.\n\n"
               "| arch | bucket | prompts | smaller runs' pass rate | fit | predicted | actual | error |\n"
               "|---|---|---|---|---|---|---|---|\n",
            o->buckets > 0 ? o->buckets : 3, 100 * o->level, o->bootstrap);
    cJSON *out = cJSON_AddObjectToObject(fit, "capability_prediction");
    for (int a = 0; a < JOULE_ARCH_COUNT; a++) {
        if (runs[a].n == 0) continue;
        const char *arch = joule_arch_names[a];
        if (runs[a].n < 3) {
            fprintf(f, "| %s | | | | needs 3 budgets, has %d | | | |\n", arch, runs[a].n);
            continue;
        }
        pass_table t;
        char note[1024];
        if (!load_table(&runs[a], &t, note, sizeof note)) {
            fprintf(f, "| %s | | | | %s | | | |\n", arch, note);
            continue;
        }
        predict_arch(f, out, arch, &t, o);
        free(t.rate);
    }
}
