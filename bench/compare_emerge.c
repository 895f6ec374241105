/* The emergence panel: every metric against compute for each architecture, normalised to
 * [0, 1] between its worst and best value over the arch's runs, so exact match's jumps can
 * be set beside the smooth metrics on the same prompts (Schaeffer et al. 2023: a jump that
 * only the all-or-nothing metric shows is the metric's, not the model's). The verdict per
 * arch is computed from the largest single-step gain of each metric as a share of its
 * range. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compare_report.h"
#include "compare_svg.h"

#define N_METRICS 6
#define JUMP_MARGIN 0.25 /* exact match's step over the smooth metrics' that calls it the metric's jump */

static const char *const NAMES[N_METRICS] = {"exact match", "byte accuracy", "log-prob", "edit distance",
                                             "pass rate",   "val bpb"};
static const char *const KEYS[N_METRICS] = {"exact_match", "byte_accuracy", "logprob", "edit_distance",
                                            "pass_rate",   "val_bpb"};
static const bool HIGHER_BETTER[N_METRICS] = {true, true, true, false, true, false};
/* pass rate (index 4) comes from samples, not the same greedy prompts' scoring: it is
 * neither the discontinuous metric nor a smooth one for the verdict */
static const bool SMOOTH[N_METRICS] = {false, true, true, true, false, true};

static double metric_of(const joule_compare_row *r, int k) {
    const double v[N_METRICS] = {r->exact_match, r->byte_accuracy, r->logprob, r->edit_distance, r->pass_rate,
                                 r->val_bpb};
    return v[k];
}

/* One metric of one arch: values normalised (NaN when it has no range or a run lacks it)
 * and the largest gain between consecutive budgets as a share of the range. */
typedef struct {
    double norm[MAX_ROWS];
    double lo, hi;   /* worst and best raw values */
    double step;     /* largest normalised gain in one budget step (NaN: none) */
    int step_at;     /* it ends at run step_at */
    bool have, flat; /* every run has it; best == worst */
} metric_series;

static void normalise(const arch_runs *r, int k, metric_series *s) {
    memset(s, 0, sizeof *s);
    s->step = NAN;
    s->have = r->n > 0;
    double worst = NAN, best = NAN;
    for (int i = 0; i < r->n; i++) {
        const double v = metric_of(r->rows[i], k);
        if (!isfinite(v)) s->have = false;
        if (isnan(worst) || (HIGHER_BETTER[k] ? v < worst : v > worst)) worst = v;
        if (isnan(best) || (HIGHER_BETTER[k] ? v > best : v < best)) best = v;
    }
    if (!s->have) return;
    s->lo = worst, s->hi = best;
    s->flat = best == worst;
    for (int i = 0; i < r->n; i++)
        s->norm[i] = s->flat ? NAN : (metric_of(r->rows[i], k) - worst) / (best - worst) + 0.0; /* no -0 */
    for (int i = 1; i < r->n && !s->flat; i++)
        if (isnan(s->step) || s->norm[i] - s->norm[i - 1] > s->step) s->step = s->norm[i] - s->norm[i - 1], s->step_at = i;
}

/* The one-line verdict: exact match's largest step against the smooth metrics'. */
static void verdict(char *out, size_t n, const arch_runs *r, const metric_series *m) {
    const metric_series *em = &m[0];
    if (r->n < 3) {
        snprintf(out, n, "needs 3 budgets for a step to stand out, has %d", r->n);
        return;
    }
    if (!em->have) {
        snprintf(out, n, "no exact match in every run");
        return;
    }
    if (em->flat) {
        snprintf(out, n, "exact match is %.4f at every budget: nothing emerges here, whatever the smooth metrics do",
                 em->lo);
        return;
    }
    int best = -1;
    for (int k = 0; k < N_METRICS; k++)
        if (SMOOTH[k] && m[k].have && !m[k].flat && (best < 0 || m[k].step > m[best].step)) best = k;
    const double J = em->step, S = best >= 0 ? m[best].step : 0;
    char where[64];
    snprintf(where, sizeof where, "%.3g -> %.3g FLOPs", r->rows[em->step_at - 1]->budget, r->rows[em->step_at]->budget);
    if (J - S >= JUMP_MARGIN)
        snprintf(out, n, "exact match jumps: %.0f%% of its range in one step (%s), the smooth metrics at most %.0f%% "
                         "(%s): the jump is the metric's",
                 100 * J, where, 100 * S, best >= 0 ? NAMES[best] : "none");
    else if (J >= 0.5)
        snprintf(out, n, "exact match's largest step, %.0f%% of its range (%s), is matched by %s's %.0f%%: the model "
                         "changes there, not only the metric",
                 100 * J, where, NAMES[best], 100 * S);
    else
        snprintf(out, n, "no jump: exact match's largest step is %.0f%% of its range (%s), the smooth metrics' up to "
                         "%.0f%% (%s)",
                 100 * J, where, 100 * S, best >= 0 ? NAMES[best] : "none");
}

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

/* One arch's table of normalised values and its verdict; fit.json's object. */
static cJSON *panel_arch(FILE *f, const char *arch, const arch_runs *r, metric_series *m) {
    for (int k = 0; k < N_METRICS; k++) normalise(r, k, &m[k]);
    char line[512];
    verdict(line, sizeof line, r, m);
    fprintf(f, "\n**%s**: %s.\n\n| budget | counted FLOPs |", arch, line);
    for (int k = 0; k < N_METRICS; k++) fprintf(f, " %s |", NAMES[k]);
    fprintf(f, "\n|---|---|---|---|---|---|---|---|\n");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "verdict", line);
    for (int i = 0; i < r->n; i++) {
        fprintf(f, "| %.3g | %.4g |", r->rows[i]->budget, r->pts[i].C);
        for (int k = 0; k < N_METRICS; k++) {
            if (!m[k].have) fprintf(f, " - |");
            else if (m[k].flat) fprintf(f, " flat (%.4g) |", m[k].lo);
            else fprintf(f, " %.2f (%.4g) |", m[k].norm[i], metric_of(r->rows[i], k));
        }
        fputc('\n', f);
    }
    for (int k = 0; k < N_METRICS; k++) {
        cJSON *x = cJSON_AddObjectToObject(o, KEYS[k]);
        cJSON_AddItemToObject(x, "worst", num_or_null(m[k].have ? m[k].lo : NAN));
        cJSON_AddItemToObject(x, "best", num_or_null(m[k].have ? m[k].hi : NAN));
        cJSON_AddItemToObject(x, "largest_step_share", num_or_null(m[k].step));
        cJSON *v = cJSON_AddArrayToObject(x, "normalised");
        for (int i = 0; i < r->n; i++) cJSON_AddItemToArray(v, num_or_null(m[k].have ? m[k].norm[i] : NAN));
    }
    return o;
}

/* One arch's plot: a series per metric that moves, x = counted FLOPs, y normalised. */
static char *panel_svg(const char *arch, const arch_runs *r, const metric_series *m) {
    compare_series s[N_METRICS];
    double x[MAX_ROWS], b[MAX_ROWS];
    int ns = 0;
    for (int i = 0; i < r->n; i++) x[i] = r->pts[i].C, b[i] = r->rows[i]->budget;
    for (int k = 0; k < N_METRICS; k++)
        if (m[k].have && !m[k].flat) s[ns++] = (compare_series){NAMES[k], x, m[k].norm, b, r->n};
    char title[96];
    snprintf(title, sizeof title, "%s: each metric normalised to [0, 1], worst to best", arch);
    compare_plot p = {title, "training FLOPs (counted)", "normalised metric (1 = best)", true, false, s, ns,
                      NULL, NULL, NULL, NULL, NULL, NULL, ns ? NULL : "no metric moves across these runs", true};
    return compare_svg(&p);
}

/* The archs' plots side by side, two per row, as nested SVG documents. */
static int write_svg(const char *dir, char *const *panels, int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    const int cols = n > 1 ? 2 : 1, rows = n > 0 ? (n + 1) / 2 : 1;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\">\n", cols * COMPARE_SVG_W,
            rows * COMPARE_SVG_H);
    for (int i = 0; i < n; i++)
        if (panels[i] && strncmp(panels[i], "<svg ", 5) == 0)
            fprintf(f, "<svg x=\"%d\" y=\"%d\" %s", (i % 2) * COMPARE_SVG_W, (i / 2) * COMPARE_SVG_H, panels[i] + 5);
    fputs("</svg>\n", f);
    if (fclose(f)) {
        free(buf);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/emergence.svg", dir);
    int rc = joule_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

int compare_emergence(const char *dir, FILE *f, cJSON *fit, const arch_runs *runs) {
    fprintf(f, "\n## Emergence panel\n\nEach metric against compute, normalised to [0, 1] between its worst and best "
               "value over the architecture's runs (1 = best; raw value in brackets). Exact match and the smooth "
               "metrics (per-byte accuracy and mean log-probability under teacher forcing, edit distance of the "
               "greedy continuation) are measured on the same prompts, val bpb on the validation windows; a jump that exact match shows and "
               "they do not is the metric's (Schaeffer et al. 2023). Verdict: exact match's largest single-step gain "
               "as a share of its range against the smooth metrics' (a margin of %.0f%% calls it the metric's). Plot: "
               "emergence.svg.\n",
            100 * JUMP_MARGIN);
    cJSON *out = cJSON_AddObjectToObject(fit, "emergence");
    char *panels[JOULE_ARCH_COUNT] = {NULL};
    metric_series *m = malloc(N_METRICS * sizeof *m);
    int np = 0, rc = m ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int a = 0; a < JOULE_ARCH_COUNT && !rc; a++) {
        if (runs[a].n == 0) continue;
        cJSON_AddItemToObject(out, joule_arch_names[a], panel_arch(f, joule_arch_names[a], &runs[a], m));
        if (!(panels[np++] = panel_svg(joule_arch_names[a], &runs[a], m))) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    if (!rc) rc = write_svg(dir, panels, np);
    for (int i = 0; i < np; i++) free(panels[i]);
    free(m);
    return rc;
}
