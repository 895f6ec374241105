/* Hardware profiles: JSON files in docs/hardware/, plus "local", measured here. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/account.h"
#include "joule/energy.h"
#include "joule/ops.h"

const char *const joule_hw_precision_names[JOULE_HW_PRECISIONS] = {"fp64", "fp32", "tf32", "bf16", "fp16", "int8"};

int joule_hw_precision_index(const char *precision) {
    for (int i = 0; i < JOULE_HW_PRECISIONS; i++)
        if (precision && strcmp(precision, joule_hw_precision_names[i]) == 0) return i;
    return -1;
}

static int num_field(const cJSON *o, const char *key, double *out, bool required, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return required ? joule_fail(JOULE_ERR_FORMAT, "%s: field '%s' is missing", what, key) : JOULE_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || !isfinite(v->valuedouble))
        return joule_fail(JOULE_ERR_FORMAT, "%s: field '%s' must be a number >= 0", what, key);
    *out = v->valuedouble;
    return JOULE_OK;
}

int joule_hw_from_json(joule_hw_profile *hw, const char *json, const char *what) {
    memset(hw, 0, sizeof *hw);
    cJSON *o = cJSON_Parse(json);
    int rc = JOULE_OK;
    if (!cJSON_IsObject(o)) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: not a JSON object", what);
        goto done;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(o, "source");
    if (!cJSON_IsString(name) || strlen(name->valuestring) >= sizeof hw->name) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: field 'name' missing or longer than %zu bytes", what,
                        sizeof hw->name - 1);
        goto done;
    }
    if (!cJSON_IsString(kind) || (strcmp(kind->valuestring, "cpu") && strcmp(kind->valuestring, "gpu"))) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: field 'kind' must be \"cpu\" or \"gpu\"", what);
        goto done;
    }
    joule_escape(hw->name, sizeof hw->name, name->valuestring); /* printed: escaped */
    strcpy(hw->kind, kind->valuestring);
    if (cJSON_IsString(src)) joule_escape(hw->source, sizeof hw->source, src->valuestring);
    const cJSON *peak = cJSON_GetObjectItemCaseSensitive(o, "peak_flops");
    if (!cJSON_IsObject(peak)) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: field 'peak_flops' must be an object of FLOP/s by precision", what);
        goto done;
    }
    const cJSON *p;
    bool any = false;
    cJSON_ArrayForEach(p, peak) {
        int i = joule_hw_precision_index(p->string);
        if (i < 0) {
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: peak_flops precision '%s' unknown (fp64 fp32 tf32 bf16 fp16 int8)",
                            what, joule_q(p->string));
            goto done;
        }
        if ((rc = num_field(peak, p->string, &hw->peak_flops[i], true, what))) goto done;
        any |= hw->peak_flops[i] > 0;
    }
    if (!any) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: peak_flops gives no positive peak", what);
        goto done;
    }
    double cores = 0;
    if ((rc = num_field(o, "tdp_w", &hw->tdp_w, true, what)) ||
        (rc = num_field(o, "idle_w", &hw->idle_w, true, what)) ||
        (rc = num_field(o, "mem_bw_gbs", &hw->mem_bw_gbs, false, what)) ||
        (rc = num_field(o, "cores", &cores, false, what)))
        goto done;
    if (hw->idle_w > hw->tdp_w) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: idle_w %g exceeds tdp_w %g", what, hw->idle_w, hw->tdp_w);
        goto done;
    }
    if (cores > 1e6 || cores != floor(cores)) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: cores must be a whole number", what);
        goto done;
    }
    hw->cores = (int)cores;
done:
    cJSON_Delete(o);
    return rc;
}

/* Looks `name` up as <dir>/<name>.json in each ':'-separated dir; a name containing '/' or
 * ending in .json is a path. */
int joule_find_data_file(const char *name, const char *dirs, char *path, size_t n) {
    size_t len = strlen(name);
    if (strchr(name, '/') || (len > 5 && strcmp(name + len - 5, ".json") == 0)) {
        snprintf(path, n, "%s", name);
        return JOULE_OK;
    }
    for (const char *d = dirs ? dirs : ""; *d;) {
        const char *end = strchr(d, ':');
        size_t dl = end ? (size_t)(end - d) : strlen(d);
        if (dl) {
            snprintf(path, n, "%.*s/%s.json", (int)dl, d, name);
            if (access(path, R_OK) == 0) return JOULE_OK;
        }
        d += dl + (end ? 1 : 0);
    }
    return joule_fail(JOULE_ERR_ARG, "'%s' not found (looked for %s.json in %s)", name, name,
                      dirs && *dirs ? dirs : "no folders");
}

int joule_hw_load(joule_hw_profile *hw, const char *name_or_path, const char *dirs) {
    char path[4096];
    char *text;
    int rc = joule_find_data_file(name_or_path, dirs, path, sizeof path);
    if (rc || (rc = joule_read_text(path, (size_t)64 << 20, &text))) return rc;
    rc = joule_hw_from_json(hw, text, path);
    free(text);
    return rc;
}

double joule_sgemm_peak_gflops(int n, double seconds) {
    float *a = joule_alloc((size_t)n * n * sizeof(float));
    float *b = joule_alloc((size_t)n * n * sizeof(float));
    float *c = joule_alloc((size_t)n * n * sizeof(float));
    double best = NAN;
    if (a && b && c) {
        for (size_t i = 0; i < (size_t)n * n; i++) {
            a[i] = (float)(i % 13) * 0.01f;
            b[i] = (float)(i % 7) * 0.01f;
        }
        best = 0;
        double t_end = joule_now() + seconds;
        joule_sgemm(false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up: pages, pool */
        do {
            double t0 = joule_now();
            joule_sgemm(false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            double g = 2.0 * n * (double)n * n / (joule_now() - t0) / 1e9;
            if (g > best) best = g;
        } while (joule_now() < t_end);
    }
    joule_free(a);
    joule_free(b);
    joule_free(c);
    return best;
}

void joule_hw_local(joule_hw_profile *hw, double seconds, const joule_hw_profile *power) {
    memset(hw, 0, sizeof *hw);
    snprintf(hw->name, sizeof hw->name, "local");
    snprintf(hw->kind, sizeof hw->kind, "cpu");
    double g = seconds > 0 ? joule_sgemm_peak_gflops(seconds < 0.5 ? 1024 : 2048, seconds) : 0;
    hw->peak_flops[joule_hw_precision_index("fp32")] = isfinite(g) ? g * 1e9 : 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    hw->cores = cpus > 0 ? (int)cpus : 1;
    if (power) {
        /* this machine may be a slice (VM, container) of the profiled CPU: its share */
        double share = power->cores > hw->cores ? (double)hw->cores / power->cores : 1.0;
        hw->tdp_w = power->tdp_w * share;
        hw->idle_w = power->idle_w * share;
        hw->mem_bw_gbs = power->mem_bw_gbs * share;
    }
    snprintf(hw->source, sizeof hw->source,
             "fp32 peak measured here: best sgemm over %.1f s with OpenBLAS kernels %s, %d threads%s%s%s", seconds,
             joule_blas_corename(), joule_get_threads(),
             power ? "; power: this machine's share of the cores of profile " : "", power ? power->name : "",
             power ? " (TDP and idle scaled by CPUs / cores)" : "");
}
