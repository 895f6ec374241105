/* The comparison's report from its rows: the dense L(C) fit with bootstrap intervals, the
 * effective compute multiplier of every other run, the predictable-scaling backtests of the
 * loss and of the exact-match metric, fit.json, report.md and the two SVG plots.
 * docs/COMPARE.md states each procedure. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compare_report.h"
#include "compare_svg.h"

static int by_budget(const void *a, const void *b) {
    const joule_compare_row *x = *(const joule_compare_row *const *)a, *y = *(const joule_compare_row *const *)b;
    return (x->budget > y->budget) - (x->budget < y->budget);
}

static void collect(const joule_compare_row *rows, int n, const char *arch, arch_runs *out) {
    out->n = 0;
    for (int i = 0; i < n && out->n < MAX_ROWS; i++)
        if (rows[i].ok && strcmp(rows[i].arch, arch) == 0 && rows[i].val_bpb > 0 && rows[i].flops_counted > 0)
            out->rows[out->n++] = &rows[i];
    qsort(out->rows, (size_t)out->n, sizeof out->rows[0], by_budget);
    for (int i = 0; i < out->n; i++) {
        const joule_compare_row *r = out->rows[i];
        out->pts[i] = (joule_run){(double)r->params_total, (double)r->tokens, (double)r->flops_counted, r->val_bpb};
    }
}

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

static cJSON *pow_json(const joule_pow_fit *f, int n) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "a", f->a);
    cJSON_AddNumberToObject(o, "b", f->b);
    cJSON_AddNumberToObject(o, "c", f->c);
    cJSON_AddNumberToObject(o, "objective", f->objective);
    cJSON_AddNumberToObject(o, "runs", n);
    return o;
}

/* ---- predictable scaling ---- */

/* L(C) on the runs below the largest budget, predicting the largest. */
static cJSON *loss_backtest(const arch_runs *r, char *md, size_t md_n, const char *arch) {
    if (r->n < 4) {
        snprintf(md, md_n, "| %s | needs 4 budgets, has %d | | | |\n", arch, r->n);
        return NULL;
    }
    joule_pow_fit f;
    if (joule_fit_power(r->pts, (size_t)r->n - 1, 0, &f)) {
        snprintf(md, md_n, "| %s | fit failed: %s | | | |\n", arch, joule_last_error());
        return NULL;
    }
    const joule_run *last = &r->pts[r->n - 1];
    double pred = joule_pow_loss(&f, last->C), err = (pred - last->loss) / last->loss;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "fit", pow_json(&f, r->n - 1));
    cJSON_AddNumberToObject(o, "held_out_budget", r->rows[r->n - 1]->budget);
    cJSON_AddNumberToObject(o, "held_out_flops", last->C);
    cJSON_AddNumberToObject(o, "predicted_bpb", pred);
    cJSON_AddNumberToObject(o, "actual_bpb", last->loss);
    cJSON_AddNumberToObject(o, "relative_error", err);
    snprintf(md, md_n, "| %s | %d runs below %.3g | %.4f | %.4f | %+.2f%% |\n", arch, r->n - 1,
             r->rows[r->n - 1]->budget, pred, last->loss, 100 * err);
    return o;
}

/* -log(metric) = alpha C^-k, i.e. log(-log m) = log alpha - k log C, least squares over the
 * smaller budgets' runs with 0 < m < 1 (the others carry no information on this scale). */
static cJSON *metric_backtest(const arch_runs *r, char *md, size_t md_n, const char *arch) {
    if (r->n < 3) {
        snprintf(md, md_n, "| %s | needs 3 budgets, has %d | | | |\n", arch, r->n);
        return NULL;
    }
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int m = 0;
    for (int i = 0; i < r->n - 1; i++) {
        double em = r->rows[i]->exact_match;
        if (!(em > 0 && em < 1)) continue;
        double x = log(r->pts[i].C), y = log(-log(em));
        sx += x, sy += y, sxx += x * x, sxy += x * y;
        m++;
    }
    double den = m * sxx - sx * sx;
    if (m < 2 || !(fabs(den) > 0)) {
        snprintf(md, md_n, "| %s | %d smaller-budget runs with 0 < exact match < 1; needs 2 | | | |\n", arch, m);
        return NULL;
    }
    double slope = (m * sxy - sx * sy) / den, icpt = (sy - slope * sx) / m;
    double alpha = exp(icpt), k = -slope;
    const joule_compare_row *last = r->rows[r->n - 1];
    double pred = exp(-alpha * pow(r->pts[r->n - 1].C, -k)), act = last->exact_match;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "alpha", alpha);
    cJSON_AddNumberToObject(o, "k", k);
    cJSON_AddNumberToObject(o, "runs", m);
    cJSON_AddNumberToObject(o, "held_out_budget", last->budget);
    cJSON_AddNumberToObject(o, "predicted", pred);
    cJSON_AddNumberToObject(o, "actual", act);
    cJSON_AddNumberToObject(o, "error", pred - act);
    snprintf(md, md_n, "| %s | %d runs below %.3g: alpha %.4g, k %.4g | %.4f | %.4f | %+.4f |\n", arch, m,
             last->budget, alpha, k, pred, act, pred - act);
    return o;
}

/* ---- effective compute ---- */

typedef struct {
    double mult, lo, hi;
    bool have;
} multiplier;

/* Dense compute reaching r's loss over C (the run's counted FLOPs, or less a part of them). */
static multiplier effective_over(const joule_pow_fit *full, const joule_pow_fit *boot, int reps, double level,
                                 const joule_compare_row *r, double C) {
    multiplier m = {NAN, NAN, NAN, false};
    m.mult = joule_pow_compute_for(full, r->val_bpb) / C;
    m.have = true;
    if (!boot || reps < 2) return m;
    double *v = malloc((size_t)reps * sizeof *v);
    if (!v) return m;
    for (int i = 0; i < reps; i++) v[i] = joule_pow_compute_for(&boot[i], r->val_bpb) / C;
    /* nearest-rank percentiles: a resample whose floor c lies above the loss gives an
     * infinite multiplier, which interpolation would turn into NaN */
    qsort(v, (size_t)reps, sizeof *v, joule_cmp_double);
    double q = (1 - level) / 2;
    m.lo = v[(size_t)floor(q * (reps - 1))];
    m.hi = v[(size_t)ceil((1 - q) * (reps - 1))];
    free(v);
    return m;
}

static multiplier effective(const joule_pow_fit *full, const joule_pow_fit *boot, int reps, double level,
                            const joule_compare_row *r) {
    return effective_over(full, boot, reps, level, r, (double)r->flops_counted);
}

/* The same without the encoder's and CCA's FLOPs (RETRO, RETRO-fit): what retrieval buys
 * per FLOP of the decoder it sits in. NaN multiplier for the other archs. */
static multiplier effective_no_enc(const joule_pow_fit *full, const joule_pow_fit *boot, int reps, double level,
                                   const joule_compare_row *r) {
    multiplier none = {NAN, NAN, NAN, false};
    if (!r->flops_encoder_cca) return none;
    return effective_over(full, boot, reps, level, r, (double)(r->flops_counted - r->flops_encoder_cca));
}

static const char *fmt_mult(char *buf, size_t n, double v) {
    if (isinf(v)) snprintf(buf, n, "inf");
    else if (isnan(v)) snprintf(buf, n, "-");
    else snprintf(buf, n, "%.3g", v);
    return buf;
}

/* "m [lo, hi]", or "-" for none. */
static const char *fmt_interval(char *buf, size_t n, const multiplier *m) {
    char a[32], b[32], c[32];
    if (!m->have) snprintf(buf, n, "-");
    else snprintf(buf, n, "%s [%s, %s]", fmt_mult(a, sizeof a, m->mult), fmt_mult(b, sizeof b, m->lo),
                  fmt_mult(c, sizeof c, m->hi));
    return buf;
}

/* The answer first: each arch at the largest budget that every arch finished, against the
 * dense run of that budget (loss, effective compute, energy per query). */
static void write_headline(FILE *f, const arch_runs *runs, const joule_pow_fit *dense, const joule_pow_fit *boot,
                           int reps, double level) {
    const arch_runs *d = &runs[JOULE_ARCH_DENSE];
    const joule_compare_row *base = NULL;
    for (int i = d->n - 1; i >= 0 && !base; i--) {
        bool all = true;
        for (int a = 1; a < JOULE_ARCH_COUNT; a++) {
            if (runs[a].n == 0) continue;
            bool found = false;
            for (int j = 0; j < runs[a].n; j++) found |= runs[a].rows[j]->budget == d->rows[i]->budget;
            all &= found;
        }
        if (all) base = d->rows[i];
    }
    if (!base) return;
    fprintf(f, "## At %.3g FLOPs\n\nThe largest budget every architecture finished, against its dense run; "
               "effective compute from the dense fit (%.0f%% interval).\n\n"
               "| arch | val bpb | vs dense | effective compute x | without encoder+CCA | exact match | J/query | vs dense |\n"
               "|---|---|---|---|---|---|---|---|\n",
            base->budget, 100 * level);
    for (int a = 0; a < JOULE_ARCH_COUNT; a++)
        for (int j = 0; j < runs[a].n; j++) {
            const joule_compare_row *r = runs[a].rows[j];
            if (r->budget != base->budget) continue;
            char mult[112] = "1 (reference)", noenc[112] = "-", q[32] = "-", qr[32] = "-";
            if (a != JOULE_ARCH_DENSE) {
                if (dense) {
                    multiplier m = effective(dense, boot, reps, level, r), e = effective_no_enc(dense, boot, reps, level, r);
                    fmt_interval(mult, sizeof mult, &m);
                    fmt_interval(noenc, sizeof noenc, &e);
                } else {
                    snprintf(mult, sizeof mult, "- (no dense fit)");
                }
            }
            if (isfinite(r->query_j)) snprintf(q, sizeof q, "%.4g", r->query_j);
            if (isfinite(r->query_j) && isfinite(base->query_j) && base->query_j > 0)
                snprintf(qr, sizeof qr, "x%.2f", r->query_j / base->query_j);
            fprintf(f, "| %s | %.4f | %+.4f | %s | %s | %.4f | %s | %s |\n", r->arch, r->val_bpb,
                    r->val_bpb - base->val_bpb, mult, noenc, r->exact_match, q, qr);
        }
    fprintf(f, "\n");
}

/* The multiplier of every run against the dense fit, with and without the encoder's and
 * CCA's FLOPs; report.md's table, fit.json's effective_compute and the summary table. */
static void write_multipliers(FILE *f, FILE *fs, cJSON *fit, const arch_runs *runs, const joule_pow_fit *dense,
                              const joule_pow_fit *boot, int reps, double level) {
    fprintf(f, "\n## Effective compute multiplier\n\nDense compute that reaches the run's loss on the dense fit, over "
               "the compute the run spent (> 1: the architecture buys more than its FLOPs); for RETRO also over the "
               "compute less its encoder and CCA FLOPs (what retrieval buys per decoder FLOP). Interval: %.0f%% "
               "bootstrap percentiles over %d resamples of the dense runs. RETRO-fit's compute is its dense run's "
               "plus the fitting stage's.\n\n| arch | budget | val bpb | multiplier [interval] | without encoder+CCA |\n"
               "|---|---|---|---|---|\n",
            100 * level, reps);
    fprintf(fs, "| arch | budget | params active | val bpb | exact match | eff. compute x [%.0f%%] | w/o enc+CCA | J/query |\n"
                "|---|---|---|---|---|---|---|---|\n", 100 * level);
    cJSON *eff = cJSON_AddArrayToObject(fit, "effective_compute");
    for (int a = 0; a < JOULE_ARCH_COUNT; a++)
        for (int i = 0; i < runs[a].n; i++) {
            const joule_compare_row *r = runs[a].rows[i];
            char q[32] = "-", cell[128] = "-", cell2[128] = "-";
            if (isfinite(r->query_j)) snprintf(q, sizeof q, "%.4g", r->query_j);
            if (dense && a != JOULE_ARCH_DENSE) {
                multiplier m = effective(dense, boot, reps, level, r), e = effective_no_enc(dense, boot, reps, level, r);
                fmt_interval(cell, sizeof cell, &m);
                fmt_interval(cell2, sizeof cell2, &e);
                fprintf(f, "| %s | %.3g | %.4f | %s | %s |\n", r->arch, r->budget, r->val_bpb, cell, cell2);
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "arch", r->arch);
                cJSON_AddNumberToObject(o, "budget", r->budget);
                cJSON_AddNumberToObject(o, "flops", (double)r->flops_counted);
                cJSON_AddNumberToObject(o, "flops_encoder_cca", (double)r->flops_encoder_cca);
                cJSON_AddNumberToObject(o, "val_bpb", r->val_bpb);
                cJSON_AddItemToObject(o, "dense_compute", num_or_null(m.mult * (double)r->flops_counted));
                cJSON_AddItemToObject(o, "multiplier", num_or_null(m.mult));
                cJSON_AddItemToObject(o, "lo", num_or_null(m.lo));
                cJSON_AddItemToObject(o, "hi", num_or_null(m.hi));
                cJSON_AddItemToObject(o, "multiplier_without_encoder_cca", num_or_null(e.mult));
                cJSON_AddItemToObject(o, "lo_without_encoder_cca", num_or_null(e.lo));
                cJSON_AddItemToObject(o, "hi_without_encoder_cca", num_or_null(e.hi));
                cJSON_AddItemToArray(eff, o);
            } else if (a == JOULE_ARCH_DENSE) {
                snprintf(cell, sizeof cell, "1 (reference)");
            }
            fprintf(fs, "| %s | %.3g | %llu | %.4f | %.4f | %s | %s | %s |\n", r->arch, r->budget,
                    (unsigned long long)r->params_active, r->val_bpb, r->exact_match, cell, cell2, q);
        }
}

/* RETRO's leakage table (DIR/runs/<run>.leakage.json, written by the run) for the largest
 * budget of each retrieving arch that has one. */
static void add_leakage(FILE *f, cJSON *fit, const arch_runs *runs) {
    bool header = false;
    for (int a = JOULE_ARCH_RETRO; a <= JOULE_ARCH_RETROFIT; a++)
        for (int i = runs[a].n - 1; i >= 0; i--) {
            const joule_compare_row *r = runs[a].rows[i];
            char path[600];
            snprintf(path, sizeof path, "%.*s.leakage.json", (int)(strlen(r->checkpoint) - strlen(".safetensors")),
                     r->checkpoint);
            joule_mmap map;
            cJSON *j = NULL;
            if (access(path, R_OK) == 0 && joule_mmap_open(&map, path) == JOULE_OK) {
                j = cJSON_ParseWithLength((const char *)map.data, map.size);
                joule_mmap_close(&map);
            }
            const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "rows");
            if (!cJSON_IsArray(rows)) {
                cJSON_Delete(j);
                continue;
            }
            if (!header)
                fprintf(f, "\n## Leakage (RETRO)\n\nAs in the RETRO paper: each evaluated validation chunk's r is the "
                           "longest run of bytes it shares with one of its 10 nearest database entries (own document "
                           "excluded), over the chunk length; bits-per-byte over the chunks with r <= alpha, for the "
                           "model with retrieval on and off and for the dense run of the same budget on the same "
                           "bytes. With byte tokens nearly every chunk shares a byte or two, so r = 0 is rare.\n");
            header = true;
            fprintf(f, "\n%s at %.3g FLOPs:\n\n| r <= | chunks | bytes | bpb retrieval on | off | dense |\n"
                       "|---|---|---|---|---|---|\n", r->arch, r->budget);
            const cJSON *x;
            cJSON_ArrayForEach(x, rows) {
                double v[6];
                static const char *const key[6] = {"alpha", "chunks", "bytes", "bpb_retrieval", "bpb_no_retrieval",
                                                   "bpb_dense"};
                for (int k = 0; k < 6; k++) {
                    const cJSON *e = cJSON_GetObjectItemCaseSensitive(x, key[k]);
                    v[k] = cJSON_IsNumber(e) ? e->valuedouble : NAN;
                }
                fprintf(f, "| %.3g | %.0f | %.0f | %.4f | %.4f | %.4f |\n", v[0], v[1], v[2], v[3], v[4], v[5]);
            }
            cJSON *lk = cJSON_GetObjectItemCaseSensitive(fit, "leakage");
            if (!lk) lk = cJSON_AddObjectToObject(fit, "leakage");
            cJSON_AddNumberToObject(j, "budget", r->budget);
            cJSON_AddItemToObject(lk, r->arch, j);
            break;
        }
}

/* ---- files ---- */

static int write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!text) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    return joule_write_file_atomic(path, text, strlen(text));
}

/* RETRO's retrieval: the database's one-off cost (DIR/retrieval.json) and each run's search
 * FLOPs, which FAISS spends outside the counted budget. */
static void add_retrieval(const char *dir, FILE *f, cJSON *fit, const joule_compare_row *rows, int n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/retrieval.json", dir);
    FILE *in = fopen(path, "r");
    if (!in) return;
    char buf[4096];
    size_t got = fread(buf, 1, sizeof buf - 1, in);
    fclose(in);
    buf[got] = '\0';
    cJSON *j = cJSON_Parse(buf);
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(j, "search_flops");
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(j, "index");
    const cJSON *ent = cJSON_GetObjectItemCaseSensitive(j, "entries");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "build_s");
    const cJSON *ns = cJSON_GetObjectItemCaseSensitive(j, "neighbours_s");
    const bool files = cJSON_IsNumber(ns);
    if (!cJSON_IsNumber(sf) || !cJSON_IsString(idx) || !cJSON_IsNumber(ent) || !(files || cJSON_IsNull(ns))) {
        fprintf(f, "\n## Retrieval (RETRO)\n\n%s is not a valid record; not reported.\n", path);
        cJSON_Delete(j);
        return;
    }
    char built[64] = "by an earlier invocation";
    if (cJSON_IsNumber(bs)) snprintf(built, sizeof built, "in %.1f s", bs->valuedouble);
    char nbr[160];
    if (files)
        snprintf(nbr, sizeof nbr, "neighbour files of the train and validation splits computed in %.1f s",
                 ns->valuedouble);
    else
        snprintf(nbr, sizeof nbr, "neighbours searched on demand, when a batch first reads a chunk");
    fprintf(f, "\n## Retrieval (RETRO)\n\nDatabase: %.0f chunks of the train split, FAISS index %s; built %s; "
               "%s (same-document neighbours excluded). One search costs %.4g FLOPs (analytic, FAISS's work: not in "
               "the counted budget); a run is charged one search per training chunk it reads.\n\n"
               "| budget | training chunks read | search FLOPs | share of the budget | chunks searched | search time |\n"
               "|---|---|---|---|---|---|\n",
            ent->valuedouble, idx->valuestring, built, nbr, sf->valuedouble);
    for (int i = 0; i < n; i++) {
        const joule_compare_row *r = &rows[i];
        if (!r->ok || strcmp(r->arch, "retro") != 0) continue;
        char secs[32] = "-";
        if (isfinite(r->retrieval_s) && r->retrieval_searches > 0)
            snprintf(secs, sizeof secs, "%.1f s (%.0f%% of training)", r->retrieval_s,
                     100 * r->retrieval_s / r->train_s);
        fprintf(f, "| %.3g | %.0f | %.4g | %.3g%% | %" PRIu64 " | %s |\n", r->budget,
                r->retrieval_flops / sf->valuedouble, r->retrieval_flops, 100 * r->retrieval_flops / r->budget,
                r->retrieval_searches, secs);
    }
    cJSON_AddItemToObject(fit, "retrieval", j);
}

/* energy_vs_bpb.svg with one series per (arch, precision) from the precision points. */
static int energy_plot_prec(const char *dir, const joule_compare_prec_row *pr, int n_pr) {
    enum { NS = JOULE_ARCH_COUNT * 3 };
    static const char *const PREC[3] = {"fp32", "bf16", "int8"};
    compare_series es[NS];
    char names[NS][32];
    double (*v)[3][MAX_ROWS] = calloc(NS, sizeof *v); /* bpb, J/query, budget */
    if (!v) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int ns = 0, nq = 0;
    for (int a = 0; a < JOULE_ARCH_COUNT; a++)
        for (int k = 0; k < 3; k++) {
            int q = 0;
            for (int i = 0; i < n_pr && q < MAX_ROWS; i++) {
                const joule_compare_prec_row *r = &pr[i];
                if (!r->ok || strcmp(r->arch, joule_arch_names[a]) || strcmp(r->precision, PREC[k]) ||
                    !isfinite(r->query_j))
                    continue;
                v[ns][0][q] = r->val_bpb;
                v[ns][1][q] = r->query_j;
                v[ns][2][q++] = r->budget;
            }
            if (!q) continue;
            snprintf(names[ns], sizeof names[ns], "%s %s", joule_arch_names[a], PREC[k]);
            es[ns] = (compare_series){names[ns], v[ns][0], v[ns][1], v[ns][2], q};
            nq += q;
            ns++;
        }
    compare_plot ep = {"Energy per query vs validation bits per byte, per precision (labels: budget in FLOPs)",
                       "val bits per byte", "joules per query", false, true, es, ns, NULL, NULL, NULL, NULL, NULL, NULL,
                       nq ? NULL : "no energy-per-query measurements yet (run the energy benchmark)", false};
    char *svg = compare_svg(&ep);
    free(v);
    int rc = write_text(dir, "energy_vs_bpb.svg", svg);
    free(svg);
    return rc;
}

/* Both plots; the loss plot with the dense fit and its bootstrap interval when there are;
 * the energy plot per precision when there are precision points. */
static int write_plots(const char *dir, const arch_runs *runs, const joule_pow_fit *dense, const joule_pow_fit *boot,
                       int reps, double level, const joule_compare_prec_row *pr, int n_pr) {
    compare_series s[JOULE_ARCH_COUNT];
    double xs[JOULE_ARCH_COUNT][MAX_ROWS], ys[JOULE_ARCH_COUNT][MAX_ROWS], bs[JOULE_ARCH_COUNT][MAX_ROWS];
    double ex[JOULE_ARCH_COUNT][MAX_ROWS], ey[JOULE_ARCH_COUNT][MAX_ROWS], eb[JOULE_ARCH_COUNT][MAX_ROWS];
    compare_series es[JOULE_ARCH_COUNT];
    int ns = 0, nq = 0;
    for (int a = 0; a < JOULE_ARCH_COUNT; a++) {
        if (runs[a].n == 0) continue;
        int q = 0;
        for (int i = 0; i < runs[a].n; i++) {
            xs[ns][i] = runs[a].pts[i].C;
            ys[ns][i] = runs[a].pts[i].loss;
            bs[ns][i] = runs[a].rows[i]->budget;
            if (isfinite(runs[a].rows[i]->query_j)) {
                ex[ns][q] = runs[a].rows[i]->val_bpb;
                eb[ns][q] = runs[a].rows[i]->budget;
                ey[ns][q++] = runs[a].rows[i]->query_j;
            }
        }
        s[ns] = (compare_series){joule_arch_names[a], xs[ns], ys[ns], bs[ns], runs[a].n};
        es[ns] = (compare_series){joule_arch_names[a], ex[ns], ey[ns], eb[ns], q};
        nq += q;
        ns++;
    }
    char label[128], band[64];
    if (dense) snprintf(label, sizeof label, "dense fit %.3g C^%.3f + %.3g", dense->a, dense->b, dense->c);
    snprintf(band, sizeof band, "%.0f%% bootstrap interval (%d resamples)", 100 * level, reps);
    double *scratch = boot && reps >= 2 ? malloc((size_t)reps * sizeof *scratch) : NULL;
    joule_svg_pow fc = {dense, scratch ? boot : NULL, reps, level, scratch};
    compare_plot lp = {"Validation bits per byte vs training compute (labels: budget in FLOPs)",
                       "training FLOPs (counted)", "val bits per byte", true, true, s, ns,
                       dense ? joule_svg_pow_loss : NULL, &fc, label,
                       scratch ? joule_svg_pow_lo : NULL, scratch ? joule_svg_pow_hi : NULL, band, NULL, false};
    char *svg = compare_svg(&lp);
    free(scratch);
    int rc = write_text(dir, "loss_vs_compute.svg", svg);
    free(svg);
    if (rc) return rc;
    if (n_pr > 0) return energy_plot_prec(dir, pr, n_pr);
    compare_plot ep = {"Energy per query vs validation bits per byte (labels: budget in FLOPs)", "val bits per byte",
                       "joules per query", false, true, es, ns, NULL, NULL, NULL, NULL, NULL, NULL,
                       nq ? NULL : "no energy-per-query measurements yet (run the energy benchmark)", false};
    svg = compare_svg(&ep);
    rc = write_text(dir, "energy_vs_bpb.svg", svg);
    free(svg);
    return rc;
}

/* The dense fit L(C) = a C^b + c and its bootstrap into fit.json; false (note says why)
 * when there is none. */
static bool dense_fit(const arch_runs *d, const joule_compare_report_opts *o, cJSON *fit, joule_pow_fit *dense,
                      joule_pow_fit **boot, char *note, size_t note_n) {
    if (!(d->n >= 3 && joule_fit_power(d->pts, (size_t)d->n, 0, dense) == JOULE_OK)) {
        snprintf(note, note_n, "no dense fit: %s", d->n < 3 ? "it needs 3 finished dense budgets" : joule_last_error());
        cJSON_AddStringToObject(fit, "dense_fit_missing", note);
        return false;
    }
    cJSON *df = pow_json(dense, d->n);
    if (o->bootstrap >= 2 &&
        joule_bootstrap_power(d->pts, (size_t)d->n, 0, dense, o->bootstrap, o->seed, NULL, NULL, boot) == JOULE_OK) {
        cJSON *iv = cJSON_AddObjectToObject(df, "interval");
        cJSON_AddNumberToObject(iv, "level", o->level);
        cJSON_AddNumberToObject(iv, "resamples", o->bootstrap);
        for (int p = 0; p < 3; p++) {
            double *v = malloc((size_t)o->bootstrap * sizeof *v), lo, hi, sd;
            if (!v) break;
            for (int i = 0; i < o->bootstrap; i++) v[i] = p == 0 ? (*boot)[i].a : p == 1 ? (*boot)[i].b : (*boot)[i].c;
            joule_interval(v, (size_t)o->bootstrap, o->level, &lo, &hi, &sd);
            free(v);
            cJSON *pair = cJSON_AddArrayToObject(iv, p == 0 ? "a" : p == 1 ? "b" : "c");
            cJSON_AddItemToArray(pair, num_or_null(lo));
            cJSON_AddItemToArray(pair, num_or_null(hi));
        }
    }
    cJSON_AddItemToObject(fit, "dense_fit", df);
    return true;
}

/* report.md's table of finished runs, then the failed ones (also into fit.json). */
static void write_runs(FILE *f, cJSON *fit, const joule_compare_row *rows, int n) {
    fprintf(f, "## Runs\n\n| arch | budget | layers x d_model | experts | params total | params active | tokens | "
               "counted FLOPs | spent/budget | val bpb | exact match | train s | train energy | J/query |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    int failed = 0;
    for (int i = 0; i < n; i++) {
        const joule_compare_row *r = &rows[i];
        if (!r->ok) {
            failed++;
            continue;
        }
        char ex[32] = "-", q[32] = "-";
        if (r->experts) snprintf(ex, sizeof ex, "%d x top-%d", r->experts, r->top_k);
        if (isfinite(r->query_j)) snprintf(q, sizeof q, "%.4g", r->query_j);
        fprintf(f, "| %s | %.3g | %d x %d | %s | %llu | %llu | %llu | %.4g | %.4f | %.4f | %.4f | %.1f | %.4g J [%s] | %s |\n",
                r->arch, r->budget, r->n_layers, r->d_model, ex, (unsigned long long)r->params_total,
                (unsigned long long)r->params_active, (unsigned long long)r->tokens, (double)r->flops_counted,
                r->spent, r->val_bpb, r->exact_match, r->train_s, r->energy_j,
                r->energy_method[0] ? r->energy_method : "not measured", q);
    }
    if (!failed) return;
    fprintf(f, "\n## Failed runs\n\n| arch | budget | error |\n|---|---|---|\n");
    cJSON *fa = cJSON_AddArrayToObject(fit, "failed");
    for (int i = 0; i < n; i++) {
        if (rows[i].ok) continue;
        fprintf(f, "| %s | %.3g | %s |\n", rows[i].arch, rows[i].budget, rows[i].error);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "arch", rows[i].arch);
        cJSON_AddNumberToObject(e, "budget", rows[i].budget);
        cJSON_AddStringToObject(e, "error", rows[i].error);
        cJSON_AddItemToArray(fa, e);
    }
}

/* Predictable scaling: the loss and the exact-match backtests of every arch. */
static void write_backtests(FILE *f, cJSON *fit, const arch_runs *runs) {
    fprintf(f, "\n## Predictable scaling: loss\n\nL(C) fitted on the smaller budgets only, predicting the largest.\n\n"
               "| arch | fitted on | predicted bpb | actual bpb | error |\n|---|---|---|---|---|\n");
    cJSON *bt = cJSON_AddObjectToObject(fit, "backtest_loss");
    for (int a = 0; a < JOULE_ARCH_COUNT; a++) {
        if (runs[a].n == 0) continue;
        char line[512];
        cJSON *o1 = loss_backtest(&runs[a], line, sizeof line, joule_arch_names[a]);
        fputs(line, f);
        if (o1) cJSON_AddItemToObject(bt, joule_arch_names[a], o1);
    }
    fprintf(f, "\n## Predictable scaling: exact match\n\n-log(exact match) = alpha C^-k fitted on the smaller "
               "budgets, predicting the largest (the GPT-4 report's HumanEval procedure).\n\n"
               "| arch | fitted on | predicted | actual | error |\n|---|---|---|---|---|\n");
    cJSON *mb = cJSON_AddObjectToObject(fit, "backtest_exact_match");
    for (int a = 0; a < JOULE_ARCH_COUNT; a++) {
        if (runs[a].n == 0) continue;
        char line[512];
        cJSON *o1 = metric_backtest(&runs[a], line, sizeof line, joule_arch_names[a]);
        fputs(line, f);
        if (o1) cJSON_AddItemToObject(mb, joule_arch_names[a], o1);
    }
}

int joule_compare_report(const char *dir, const joule_compare_row *rows, int n, const joule_compare_report_opts *o,
                         char **summary) {
    if (summary) *summary = NULL;
    arch_runs *runs = calloc(JOULE_ARCH_COUNT, sizeof *runs);
    char *md = NULL, *sum = NULL;
    size_t md_len = 0, sum_len = 0;
    FILE *f = open_memstream(&md, &md_len), *fs = open_memstream(&sum, &sum_len);
    cJSON *fit = cJSON_CreateObject();
    joule_pow_fit dense, *boot = NULL;
    joule_compare_prec_row *prec = NULL;
    int rc = JOULE_OK, n_prec = 0;
    if (!runs || !f || !fs || !fit) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int a = 0; a < JOULE_ARCH_COUNT; a++) collect(rows, n, joule_arch_names[a], &runs[a]);
    cJSON_AddNumberToObject(fit, "format_version", 1);
    cJSON_AddStringToObject(fit, "loss", "validation bits per byte");
    cJSON_AddStringToObject(fit, "compute", "counted training FLOPs");
    const arch_runs *d = &runs[JOULE_ARCH_DENSE];
    char note[256] = "";
    const bool have_dense = dense_fit(d, o, fit, &dense, &boot, note, sizeof note);

    fprintf(f, "# joule compare: equal-compute comparison\n\n");
    int nbytes = JOULE_COMPARE_EM_BYTES;
    for (int i = 0; i < n; i++)
        if (rows[i].ok && rows[i].match_bytes > 0) nbytes = rows[i].match_bytes;
    fprintf(f, "Loss is validation bits per byte; compute is the counted training FLOPs (every matmul, router and "
               "extension included); exact match is the share of validation prompts whose next %d bytes greedy "
               "decoding reproduces. Energy is the training run's measurement window (method in brackets).\n\n",
            nbytes);
    write_headline(f, runs, have_dense ? &dense : NULL, boot, boot ? o->bootstrap : 0, o->level);
    write_runs(f, fit, rows, n);
    /* the dense fit and the effective compute multipliers */
    fprintf(f, "\n## Dense scaling law L(C) = a C^b + c\n\n");
    if (have_dense)
        fprintf(f, "a = %.5g, b = %.5f, c = %.5g (%d dense runs; Huber objective %.3g)%s\n", dense.a, dense.b, dense.c,
                d->n, dense.objective, boot ? "" : "; no bootstrap");
    else
        fprintf(f, "%s\n", note);
    write_multipliers(f, fs, fit, runs, have_dense ? &dense : NULL, boot, boot ? o->bootstrap : 0, o->level);
    write_backtests(f, fit, runs);
    compare_capability(f, fit, runs, o);
    rc = compare_emergence(dir, f, fit, runs);
    add_retrieval(dir, f, fit, rows, n);
    add_leakage(f, fit, runs);
    if (!rc) rc = compare_prec_section(dir, f, fit, &prec, &n_prec);
    fprintf(f, "\n## Plots\n\n![loss vs compute](loss_vs_compute.svg)\n\n![energy per query vs bpb](energy_vs_bpb.svg)\n\n"
               "![emergence panel](emergence.svg)\n");
    fclose(f);
    f = NULL;
    fclose(fs);
    fs = NULL;
    char *json = rc ? NULL : cJSON_Print(fit);
    if (!rc && (rc = write_text(dir, "fit.json", json)) == JOULE_OK && (rc = write_text(dir, "report.md", md)) == JOULE_OK)
        rc = write_plots(dir, runs, have_dense ? &dense : NULL, boot, boot ? o->bootstrap : 0, o->level, prec, n_prec);
    free(json);
    if (!rc && summary) {
        *summary = sum;
        sum = NULL;
    }
done:
    if (f) fclose(f);
    if (fs) fclose(fs);
    free(md);
    free(sum);
    free(boot);
    free(prec);
    free(runs);
    cJSON_Delete(fit);
    return rc;
}
