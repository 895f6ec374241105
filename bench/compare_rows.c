/* The comparison's results rows: results.jsonl (the record a rerun resumes from) and
 * results.csv (the same rows for spreadsheets), both rewritten atomically after each run. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/compare.h"
#include "compare_run.h"

/* Numeric fields in file order: name, offset and type. */
typedef struct {
    const char *name;
    size_t off;
    char type; /* 'i' int, 'u' uint64_t, 'd' double */
} field;

#define F(name, t) {#name, offsetof(joule_compare_row, name), t}
static const field FIELDS[] = {
    F(budget, 'd'),        F(n_layers, 'i'),      F(d_model, 'i'),       F(n_heads, 'i'),
    F(d_ff, 'i'),          F(ctx, 'i'),           F(experts, 'i'),       F(top_k, 'i'),
    F(d_ff_expert, 'i'),   F(params_total, 'u'),  F(params_active, 'u'), F(params_non_embedding, 'u'),
    F(steps, 'u'),         F(tokens, 'u'),        F(flops_counted, 'u'), F(flops_analytic, 'u'),
    F(spent, 'd'),         F(val_bpb, 'd'),       F(exact_match, 'd'),   F(em_windows, 'u'),
    F(wall_s, 'd'),        F(train_s, 'd'),       F(energy_j, 'd'),      F(query_j, 'd'),
    F(query_s, 'd'),       F(retrieval_flops, 'd'), F(retrieval_searches, 'u'), F(retrieval_s, 'd'),
    F(flops_encoder_cca, 'u'), F(flops_base, 'u'),     F(fit_budget, 'd'),
    /* the metrics on the same prompts: absent (NaN) in rows written before them */
    F(match_bytes, 'i'),   F(samples, 'i'),       F(byte_accuracy, 'd'), F(logprob, 'd'),
    F(edit_distance, 'd'), F(pass_rate, 'd'),     F(prompts_s, 'd'),
};
#define FIRST_OPTIONAL 31 /* FIELDS[31..] may be missing */
#undef F
#define N_FIELDS (sizeof FIELDS / sizeof FIELDS[0])

static double get_num(const joule_compare_row *r, const field *f) {
    const char *p = (const char *)r + f->off;
    if (f->type == 'i') return *(const int *)p;
    if (f->type == 'u') return (double)*(const uint64_t *)p;
    return *(const double *)p;
}

static void set_num(joule_compare_row *r, const field *f, double v) {
    char *p = (char *)r + f->off;
    if (f->type == 'i') *(int *)p = (int)v;
    else if (f->type == 'u') *(uint64_t *)p = (uint64_t)v;
    else *(double *)p = v;
}

char *joule_compare_row_json(const joule_compare_row *r) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "arch", r->arch);
    cJSON_AddStringToObject(j, "status", r->ok ? "ok" : "failed");
    cJSON_AddStringToObject(j, "error", r->error);
    for (size_t i = 0; i < N_FIELDS; i++) {
        double v = get_num(r, &FIELDS[i]);
        if (isfinite(v)) cJSON_AddNumberToObject(j, FIELDS[i].name, v);
        else cJSON_AddNullToObject(j, FIELDS[i].name);
    }
    cJSON_AddStringToObject(j, "energy_method", r->energy_method);
    cJSON_AddStringToObject(j, "query_method", r->query_method);
    cJSON_AddStringToObject(j, "checkpoint", r->checkpoint);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

static int get_str(const cJSON *j, const char *key, char *dst, size_t n, const char *path, int line) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n)
        return joule_fail(JOULE_ERR_FORMAT, "%s:%d: '%s' is missing or not a string of < %zu bytes", path, line, key,
                          n);
    memcpy(dst, v->valuestring, strlen(v->valuestring) + 1);
    return JOULE_OK;
}

static int parse_row(const char *text, joule_compare_row *r, const char *path, int line) {
    memset(r, 0, sizeof *r);
    cJSON *j = cJSON_Parse(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return joule_fail(JOULE_ERR_FORMAT, "%s:%d: not a JSON object", path, line);
    }
    char status[16];
    int rc = get_str(j, "arch", r->arch, sizeof r->arch, path, line);
    if (!rc) rc = get_str(j, "status", status, sizeof status, path, line);
    if (!rc) rc = get_str(j, "error", r->error, sizeof r->error, path, line);
    if (!rc) rc = get_str(j, "energy_method", r->energy_method, sizeof r->energy_method, path, line);
    if (!rc) rc = get_str(j, "query_method", r->query_method, sizeof r->query_method, path, line);
    if (!rc) rc = get_str(j, "checkpoint", r->checkpoint, sizeof r->checkpoint, path, line);
    for (size_t i = 0; i < N_FIELDS && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, FIELDS[i].name);
        if (!v && i >= FIRST_OPTIONAL) set_num(r, &FIELDS[i], FIELDS[i].type == 'd' ? NAN : 0);
        else if (cJSON_IsNull(v)) set_num(r, &FIELDS[i], NAN);
        else if (cJSON_IsNumber(v) && (FIELDS[i].type == 'd' || v->valuedouble >= 0)) set_num(r, &FIELDS[i], v->valuedouble);
        else rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: '%s' is missing or not a valid number", path, line, FIELDS[i].name);
    }
    if (!rc) {
        r->ok = strcmp(status, "ok") == 0;
        if (!r->ok && strcmp(status, "failed") != 0)
            rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: status '%s' is not ok or failed", path, line, status);
        else if (!(r->budget > 0))
            rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: budget must be positive", path, line);
    }
    cJSON_Delete(j);
    return rc;
}

int compare_jsonl_load(const char *path, size_t size, int (*parse)(const char *text, void *row, const char *path, int line),
                       void **rows, int *n) {
    *rows = NULL;
    *n = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return JOULE_OK; /* a fresh comparison */
        return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    char *line = NULL, *out = NULL;
    size_t cap = 0;
    int rc = JOULE_OK, lineno = 0, have = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        if (line[0] == '\n') continue;
        char *g = realloc(out, (size_t)(have + 1) * size);
        if (!g) {
            rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
            break;
        }
        out = g;
        if ((rc = parse(line, out + (size_t)have * size, path, lineno))) break;
        have++;
    }
    if (!rc && ferror(f)) rc = joule_fail(JOULE_ERR_IO, "%s: read error", path);
    free(line);
    fclose(f);
    if (rc) {
        free(out);
        return rc;
    }
    *rows = out;
    *n = have;
    return JOULE_OK;
}

static int parse_any_row(const char *text, void *row, const char *path, int line) {
    return parse_row(text, row, path, line);
}

int joule_compare_rows_load(const char *path, joule_compare_row **rows, int *n) {
    void *out;
    int rc = compare_jsonl_load(path, sizeof **rows, parse_any_row, &out, n);
    *rows = out;
    return rc;
}

static void csv_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s == '\n' ? ' ' : *s, f);
    }
    fputc('"', f);
}

int joule_compare_rows_save(const char *dir, const joule_compare_row *rows, int n) {
    char path[4096];
    for (int kind = 0; kind < 2; kind++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        if (kind == 1) {
            fputs("arch,status", f);
            for (size_t i = 0; i < N_FIELDS; i++) fprintf(f, ",%s", FIELDS[i].name);
            fputs(",energy_method,query_method,checkpoint,error\n", f);
        }
        for (int r = 0; r < n; r++) {
            if (kind == 0) {
                char *s = joule_compare_row_json(&rows[r]);
                if (s) fprintf(f, "%s\n", s);
                free(s);
                continue;
            }
            fprintf(f, "%s,%s", rows[r].arch, rows[r].ok ? "ok" : "failed");
            for (size_t i = 0; i < N_FIELDS; i++) {
                double v = get_num(&rows[r], &FIELDS[i]);
                if (!isfinite(v)) fputc(',', f);
                else if (FIELDS[i].type == 'd') fprintf(f, ",%.6g", v);
                else fprintf(f, ",%.0f", v);
            }
            fputc(',', f);
            csv_str(f, rows[r].energy_method);
            fputc(',', f);
            csv_str(f, rows[r].query_method);
            fputc(',', f);
            csv_str(f, rows[r].checkpoint);
            fputc(',', f);
            csv_str(f, rows[r].error);
            fputc('\n', f);
        }
        if (fclose(f)) {
            free(buf);
            return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        }
        snprintf(path, sizeof path, "%s/%s", dir, kind == 0 ? "results.jsonl" : "results.csv");
        int rc = joule_write_file_atomic(path, buf, len);
        free(buf);
        if (rc) return rc;
    }
    return JOULE_OK;
}
