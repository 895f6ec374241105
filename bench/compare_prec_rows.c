/* DIR/precisions.jsonl: one line per (run, precision) point of `joule compare --precisions`
 * (docs/COMPARE.md §9), the record a rerun resumes from; rewritten atomically after each. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/compare.h"
#include "compare_run.h"

typedef struct {
    const char *name;
    size_t off;
} num_field;

#define F(name) {#name, offsetof(joule_compare_prec_row, name)}
static const num_field NUMS[] = {F(budget),  F(weight_bytes), F(val_bpb),      F(kl_bits),
                                 F(query_j), F(query_s),      F(tokens_per_s), F(wall_s)};
#undef F
#define N_NUMS (sizeof NUMS / sizeof NUMS[0])

typedef struct {
    const char *name;
    size_t off, size;
} str_field;

#define S(name) {#name, offsetof(joule_compare_prec_row, name), sizeof(((joule_compare_prec_row *)0)->name)}
static const str_field STRS[] = {S(arch), S(precision), S(error), S(query_method), S(kernels), S(checkpoint)};
#undef S
#define N_STRS (sizeof STRS / sizeof STRS[0])

static char *row_json(const joule_compare_prec_row *r) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "status", r->ok ? "ok" : "failed");
    for (size_t i = 0; i < N_STRS; i++) cJSON_AddStringToObject(j, STRS[i].name, (const char *)r + STRS[i].off);
    for (size_t i = 0; i < N_NUMS; i++) {
        const double v = *(const double *)((const char *)r + NUMS[i].off);
        if (isfinite(v)) cJSON_AddNumberToObject(j, NUMS[i].name, v);
        else cJSON_AddNullToObject(j, NUMS[i].name);
    }
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

static int parse_row(const char *text, joule_compare_prec_row *r, const char *path, int line) {
    memset(r, 0, sizeof *r);
    cJSON *j = cJSON_Parse(text);
    int rc = cJSON_IsObject(j) ? JOULE_OK : joule_fail(JOULE_ERR_FORMAT, "%s:%d: not a JSON object", path, line);
    for (size_t i = 0; i < N_STRS && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, STRS[i].name);
        if (!cJSON_IsString(v) || strlen(v->valuestring) >= STRS[i].size)
            rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: '%s' is missing or not a string of < %zu bytes", path, line,
                            STRS[i].name, STRS[i].size);
        else memcpy((char *)r + STRS[i].off, v->valuestring, strlen(v->valuestring) + 1);
    }
    for (size_t i = 0; i < N_NUMS && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, NUMS[i].name);
        double *dst = (double *)((char *)r + NUMS[i].off);
        if (cJSON_IsNull(v)) *dst = NAN;
        else if (cJSON_IsNumber(v)) *dst = v->valuedouble;
        else rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: '%s' is missing or not a number", path, line, NUMS[i].name);
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    joule_precision p;
    if (!rc && !(cJSON_IsString(st) && (!strcmp(st->valuestring, "ok") || !strcmp(st->valuestring, "failed"))))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: status is not ok or failed", path, line);
    else if (!rc && joule_precision_parse(r->precision, &p))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: precision '%s' is not fp32, bf16 or int8", path, line,
                        joule_q(r->precision));
    else if (!rc && !(r->budget > 0))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: budget must be positive", path, line);
    if (!rc) r->ok = strcmp(st->valuestring, "ok") == 0;
    cJSON_Delete(j);
    return rc;
}

static int parse_any_row(const char *text, void *row, const char *path, int line) {
    return parse_row(text, row, path, line);
}

int joule_compare_prec_load(const char *dir, joule_compare_prec_row **rows, int *n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/precisions.jsonl", dir);
    void *out;
    int rc = compare_jsonl_load(path, sizeof **rows, parse_any_row, &out, n);
    *rows = out;
    return rc;
}

int joule_compare_prec_save(const char *dir, const joule_compare_prec_row *rows, int n) {
    char *buf = NULL, path[4096];
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    bool ok = true;
    for (int i = 0; i < n; i++) {
        char *s = row_json(&rows[i]);
        ok &= s != NULL;
        if (s) fprintf(f, "%s\n", s);
        free(s);
    }
    if (fclose(f) || !ok) {
        free(buf);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    snprintf(path, sizeof path, "%s/precisions.jsonl", dir);
    int rc = joule_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}
