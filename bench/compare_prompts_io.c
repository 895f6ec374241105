/* <stem>.prompts.jsonl: a run's metrics per prompt, the record the capability prediction
 * and anyone re-analysing the prompts read. A header line, then one line per prompt. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/compare.h"

int joule_prompt_scores_save(const char *path, const joule_prompt_opts *o, const joule_prompt_score *s, int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    fprintf(f, "{\"n\":%d,\"samples\":%d,\"temperature\":%.9g,\"prompts\":%d}\n", o->n, o->samples, o->temperature, n);
    for (int w = 0; w < n; w++)
        fprintf(f, "{\"prompt\":%d,\"start\":%llu,\"exact\":%d,\"edit\":%d,\"tf_correct\":%d,\"logprob\":%.17g,"
                   "\"passes\":%d}\n",
                w, (unsigned long long)s[w].start, s[w].edit == 0, s[w].edit, s[w].tf_correct, s[w].logprob,
                s[w].passes);
    if (fclose(f)) {
        free(buf);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    int rc = joule_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

/* The integer at key in [lo, hi], else an error naming path:line. */
static int get_int(const cJSON *j, const char *key, double lo, double hi, double *v, const char *path, int line) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= lo && x->valuedouble <= hi) || x->valuedouble != floor(x->valuedouble))
        return joule_fail(JOULE_ERR_FORMAT, "%s:%d: '%s' is missing or not an integer in [%.0f, %.0f]", path, line, key,
                          lo, hi);
    *v = x->valuedouble;
    return JOULE_OK;
}

/* One prompt's line; header holds n and samples. */
static int parse_score(const char *text, int w, int n, int samples, joule_prompt_score *s, const char *path, int line) {
    cJSON *j = cJSON_Parse(text);
    double v[6] = {0, 0, 0, 0, 0, 0};
    int rc = cJSON_IsObject(j) ? JOULE_OK : joule_fail(JOULE_ERR_FORMAT, "%s:%d: not a JSON object", path, line);
    if (!rc) rc = get_int(j, "prompt", w, w, &v[0], path, line);
    if (!rc) rc = get_int(j, "start", 0, 9007199254740992.0, &v[1], path, line);
    if (!rc) rc = get_int(j, "edit", 0, n, &v[2], path, line);
    if (!rc) rc = get_int(j, "tf_correct", 0, n, &v[3], path, line);
    if (!rc) rc = get_int(j, "passes", 0, samples, &v[4], path, line);
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(j, "logprob");
    if (!rc && !(cJSON_IsNumber(lp) && lp->valuedouble <= 0))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: 'logprob' is missing or not a number <= 0", path, line);
    if (!rc) {
        v[5] = lp->valuedouble;
        *s = (joule_prompt_score){(uint64_t)v[1], (int)v[2], (int)v[3], v[5], (int)v[4]};
    }
    cJSON_Delete(j);
    return rc;
}

int joule_prompt_scores_load(const char *path, joule_prompt_score **scores, int *n, int *samples) {
    *scores = NULL;
    *n = *samples = 0;
    FILE *f = fopen(path, "r");
    if (!f) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int rc = JOULE_OK, lineno = 1, have = 0;
    double hn = 0, hs = 0, hp = 0;
    joule_prompt_score *out = NULL;
    if (getline(&line, &cap, f) <= 0) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s:1: no header line", path);
    } else {
        cJSON *h = cJSON_Parse(line);
        rc = get_int(h, "n", 1, JOULE_PROMPT_MAX_BYTES, &hn, path, 1);
        if (!rc) rc = get_int(h, "samples", 0, 1 << 24, &hs, path, 1);
        if (!rc) rc = get_int(h, "prompts", 1, 1 << 24, &hp, path, 1);
        cJSON_Delete(h);
    }
    if (!rc && !(out = malloc((size_t)hp * sizeof *out))) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    while (!rc && getline(&line, &cap, f) > 0) {
        lineno++;
        if (have == (int)hp) rc = joule_fail(JOULE_ERR_FORMAT, "%s:%d: more prompts than the header's %.0f", path, lineno, hp);
        else rc = parse_score(line, have, (int)hn, (int)hs, &out[have], path, lineno);
        have += !rc;
    }
    if (!rc && have != (int)hp)
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: %d prompts, the header says %.0f", path, have, hp);
    free(line);
    fclose(f);
    if (rc) {
        free(out);
        return rc;
    }
    *scores = out;
    *n = have;
    *samples = (int)hs;
    return JOULE_OK;
}
