/* The report's Precision section (docs/COMPARE.md §9): every run's points of
 * DIR/precisions.jsonl beside its fp32 numbers, in report.md and fit.json. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare_report.h"

static int prec_rank(const char *p) { return !strcmp(p, "fp32") ? 0 : !strcmp(p, "bf16") ? 1 : 2; }

static int arch_rank(const char *a) {
    for (int i = 0; i < JOULE_ARCH_COUNT; i++)
        if (!strcmp(joule_arch_names[i], a)) return i;
    return JOULE_ARCH_COUNT;
}

/* arch, then budget, then fp32 / bf16 / int8 */
static int by_run(const void *a, const void *b) {
    const joule_compare_prec_row *x = a, *y = b;
    if (arch_rank(x->arch) != arch_rank(y->arch)) return arch_rank(x->arch) - arch_rank(y->arch);
    if (x->budget != y->budget) return (x->budget > y->budget) - (x->budget < y->budget);
    return prec_rank(x->precision) - prec_rank(y->precision);
}

static const joule_compare_prec_row *fp32_of(const joule_compare_prec_row *rows, int n, const joule_compare_prec_row *r) {
    for (int i = 0; i < n; i++)
        if (rows[i].ok && !strcmp(rows[i].precision, "fp32") && !strcmp(rows[i].arch, r->arch) &&
            rows[i].budget == r->budget)
            return &rows[i];
    return NULL;
}

/* "x0.42" of v over base, or "-" */
static const char *ratio(char *buf, size_t n, double v, double base) {
    if (isfinite(v) && isfinite(base) && base > 0) snprintf(buf, n, "x%.2f", v / base);
    else snprintf(buf, n, "-");
    return buf;
}

static const char *num(char *buf, size_t n, const char *fmt, double v) {
    if (isfinite(v)) snprintf(buf, n, fmt, v);
    else snprintf(buf, n, "-");
    return buf;
}

static cJSON *point_json(const joule_compare_prec_row *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "arch", r->arch);
    cJSON_AddNumberToObject(o, "budget", r->budget);
    cJSON_AddStringToObject(o, "precision", r->precision);
    cJSON_AddStringToObject(o, "kernels", r->kernels);
    cJSON_AddNumberToObject(o, "weight_bytes_per_token", r->weight_bytes);
    const double v[5] = {r->val_bpb, r->kl_bits, r->query_j, r->query_s, r->tokens_per_s};
    static const char *const key[5] = {"val_bpb", "kl_bits_per_byte", "query_j", "query_s", "tokens_per_s"};
    for (int k = 0; k < 5; k++)
        cJSON_AddItemToObject(o, key[k], isfinite(v[k]) ? cJSON_CreateNumber(v[k]) : cJSON_CreateNull());
    cJSON_AddStringToObject(o, "checkpoint", r->checkpoint);
    return o;
}

int compare_prec_section(const char *dir, FILE *f, cJSON *fit, joule_compare_prec_row **out, int *n_out) {
    joule_compare_prec_row *rows = NULL;
    int n = 0, rc = joule_compare_prec_load(dir, &rows, &n);
    *out = NULL;
    *n_out = 0;
    if (rc || n == 0) return rc;
    qsort(rows, (size_t)n, sizeof *rows, by_run);
    fprintf(f, "\n## Precision\n\nEvery run quantised (`--precisions`): val bpb on the run's windows, mean KL of "
               "the next-byte distribution from the fp32 model's (bits per byte), energy per query and its p50 "
               "latency with the run's benchmark settings, bytes of weights a batch-1 decode step reads. fp32 is "
               "the run itself.\n\n| arch | budget | precision | kernels | weights MB/token | val bpb | vs fp32 | "
               "KL bits/byte | J/query | vs fp32 | query s | vs fp32 |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    cJSON *arr = cJSON_AddArrayToObject(fit, "precisions");
    int failed = 0;
    for (int i = 0; i < n; i++) {
        const joule_compare_prec_row *r = &rows[i], *b = fp32_of(rows, n, r);
        if (!r->ok) {
            failed++;
            continue;
        }
        char c[6][32];
        fprintf(f, "| %s | %.3g | %s | %s | %.4g | %.4f | %s | %s | %s | %s | %s | %s |\n", r->arch, r->budget,
                r->precision, r->kernels, r->weight_bytes / 1e6, r->val_bpb,
                b ? num(c[0], 32, "%+.4f", r->val_bpb - b->val_bpb) : "-", num(c[1], 32, "%.3g", r->kl_bits),
                num(c[2], 32, "%.4g", r->query_j), ratio(c[3], 32, r->query_j, b ? b->query_j : NAN),
                num(c[4], 32, "%.4g", r->query_s), ratio(c[5], 32, r->query_s, b ? b->query_s : NAN));
        cJSON_AddItemToArray(arr, point_json(r));
    }
    if (failed) {
        fprintf(f, "\nFailed precision points (rerun to retry):\n\n| arch | budget | precision | error |\n|---|---|---|---|\n");
        for (int i = 0; i < n; i++)
            if (!rows[i].ok) fprintf(f, "| %s | %.3g | %s | %s |\n", rows[i].arch, rows[i].budget, rows[i].precision,
                                     rows[i].error);
    }
    *out = rows;
    *n_out = n;
    return JOULE_OK;
}
