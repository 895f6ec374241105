/* Runs for the scaling-law fits: CSV with a header, or JSON lines. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "joule/account.h"
#include "joule/fit.h"

enum { COL_N, COL_D, COL_C, COL_LOSS, COL_COUNT };

/* Which field a column or key name means, or -1. */
static int field_of(const char *name) {
    static const char *const NAMES[COL_COUNT][6] = {
        {"n", "params", "parameters", "model size", "model_size", NULL},
        {"d", "tokens", "data size", "training tokens", NULL},
        {"c", "flops", "compute", "training flop", "training flops", "training_flops"},
        {"loss", "l", "final loss", "val_loss", NULL},
    };
    for (int f = 0; f < COL_COUNT; f++)
        for (int k = 0; k < 6 && NAMES[f][k]; k++)
            if (strcasecmp(name, NAMES[f][k]) == 0) return f;
    return -1;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s) || *s == '"')
        s++;
    size_t n = strlen(s);
    while (n && (isspace((unsigned char)s[n - 1]) || s[n - 1] == '"'))
        s[--n] = '\0';
    return s;
}

/* Completes a run from what it has; fails naming the line. */
static int finish_run(joule_run *r, const bool *has, const char *path, size_t line) {
    static const char *const NAME[COL_COUNT] = {"N", "D", "C", "loss"};
    double *dst[COL_COUNT] = {&r->N, &r->D, &r->C, &r->loss};
    if (!has[COL_LOSS]) return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: no loss", path, line);
    if (!has[COL_C] && !(has[COL_N] && has[COL_D]))
        return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: needs compute C, or both N and D", path, line);
    /* each value finite and at most JOULE_FIT_MAX first, so C = 6ND stays finite */
    for (int f = 0; f < COL_COUNT; f++)
        if (has[f] && !(fabs(*dst[f]) <= JOULE_FIT_MAX))
            return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: %s is not a finite number up to %g", path, line, NAME[f],
                              JOULE_FIT_MAX);
    if (!has[COL_C]) r->C = 6 * r->N * r->D;
    if (!has[COL_D] && has[COL_N]) r->D = r->C / (6 * r->N);
    if (!(r->loss > 0) || !(r->C > 0) || (has[COL_N] && !(r->N > 0)) || !(r->D >= 0))
        return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: loss, N, D and C must be positive", path, line);
    if (!(r->C <= JOULE_FIT_MAX))
        return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: compute C = 6 N D = %g is past %g", path, line, r->C, JOULE_FIT_MAX);
    return JOULE_OK;
}

static int push(joule_run **runs, size_t *n, size_t *cap, const joule_run *r) {
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        joule_run *g = realloc(*runs, nc * sizeof *g);
        if (!g) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        *runs = g;
        *cap = nc;
    }
    (*runs)[(*n)++] = *r;
    return JOULE_OK;
}

static int parse_number(const char *s, double *out, const char *path, size_t line, const char *col) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: column '%s': '%s' is not a finite number", path, line,
                          joule_q(col), joule_q(s));
    *out = v;
    return JOULE_OK;
}

static int load_jsonl(char *text, const char *path, joule_run **runs, size_t *n, size_t *cap) {
    size_t line = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        line++;
        if (!*trim(l)) continue;
        cJSON *o = cJSON_Parse(l);
        if (!cJSON_IsObject(o)) {
            cJSON_Delete(o);
            return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: not a JSON object", path, line);
        }
        joule_run r = {0, 0, 0, 0};
        bool has[COL_COUNT] = {false};
        double *dst[COL_COUNT] = {&r.N, &r.D, &r.C, &r.loss};
        const cJSON *it;
        int rc = JOULE_OK;
        cJSON_ArrayForEach(it, o) {
            int f = field_of(it->string);
            if (f < 0) continue;
            /* cJSON reads 1e999 as infinity */
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) {
                rc = joule_fail(JOULE_ERR_FORMAT, "%s:%zu: key '%s' is not a finite number", path, line,
                                joule_q(it->string));
                break;
            }
            *dst[f] = it->valuedouble;
            has[f] = true;
        }
        cJSON_Delete(o);
        if (rc || (rc = finish_run(&r, has, path, line)) || (rc = push(runs, n, cap, &r))) return rc;
    }
    return JOULE_OK;
}

static int load_csv(char *text, const char *path, joule_run **runs, size_t *n, size_t *cap) {
    int col_field[64];
    char col_name[64][32];
    int ncol = 0;
    size_t line = 0;
    bool header = false;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        line++;
        l[strcspn(l, "\r")] = '\0';
        if (!*trim(l) || l[0] == '#') continue;
        char *cells[64];
        int nc = 0;
        for (char *s2 = NULL, *c = strtok_r(l, ",", &s2); c && nc < 64; c = strtok_r(NULL, ",", &s2))
            cells[nc++] = c;
        if (!header) {
            bool seen[COL_COUNT] = {false};
            for (int i = 0; i < nc; i++) {
                char *name = trim(cells[i]);
                col_field[i] = field_of(name);
                snprintf(col_name[i], sizeof col_name[i], "%s", name);
                if (col_field[i] >= 0) {
                    if (seen[col_field[i]])
                        return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: two columns mean the same field ('%s')", path,
                                          line, joule_q(name));
                    seen[col_field[i]] = true;
                }
            }
            ncol = nc;
            if (!seen[COL_LOSS])
                return joule_fail(JOULE_ERR_FORMAT,
                                  "%s:%zu: header has no loss column (names: N|params, D|tokens, C|flops, loss)", path,
                                  line);
            header = true;
            continue;
        }
        if (nc != ncol)
            return joule_fail(JOULE_ERR_FORMAT, "%s:%zu: %d fields, the header has %d", path, line, nc, ncol);
        joule_run r = {0, 0, 0, 0};
        bool has[COL_COUNT] = {false};
        double *dst[COL_COUNT] = {&r.N, &r.D, &r.C, &r.loss};
        for (int i = 0; i < nc; i++) {
            if (col_field[i] < 0) continue;
            char *v = trim(cells[i]);
            if (!*v) continue;
            int rc = parse_number(v, dst[col_field[i]], path, line, col_name[i]);
            if (rc) return rc;
            has[col_field[i]] = true;
        }
        int rc = finish_run(&r, has, path, line);
        if (rc || (rc = push(runs, n, cap, &r))) return rc;
    }
    if (!header) return joule_fail(JOULE_ERR_FORMAT, "%s: empty (no header row)", path);
    return JOULE_OK;
}

int joule_runs_load(const char *path, joule_run **runs, size_t *n) {
    *runs = NULL;
    *n = 0;
    char *text;
    int rc = joule_read_text(path, (size_t)64 << 20, &text);
    if (rc) return rc;
    size_t cap = 0;
    const char *p = text;
    while (isspace((unsigned char)*p))
        p++;
    rc = *p == '{' ? load_jsonl(text, path, runs, n, &cap) : load_csv(text, path, runs, n, &cap);
    free(text);
    if (!rc && *n == 0) rc = joule_fail(JOULE_ERR_FORMAT, "%s: no runs", path);
    if (rc) {
        free(*runs);
        *runs = NULL;
        *n = 0;
    }
    return rc;
}
