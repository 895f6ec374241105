/* The training log on --resume: the checkpoint holds no wall time (identical runs write
 * identical checkpoints), so the log is where the cumulative wall time of the steps lives.
 * A resumed run takes it from the log line of the step it resumes at, and drops the lines
 * a killed run logged after its last checkpoint, so the log reads like one run's. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "joule/train.h"

#define LOG_MAX ((size_t)1 << 30)

/* The line's step and wall_s; false for a line that is not one of ours (a partial write). */
static bool line_fields(const char *line, size_t len, double *step, double *wall) {
    cJSON *o = cJSON_ParseWithLength(line, len);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "step"), *w = cJSON_GetObjectItemCaseSensitive(o, "wall_s");
    bool ok = cJSON_IsNumber(s) && cJSON_IsNumber(w);
    if (ok) {
        *step = s->valuedouble;
        *wall = w->valuedouble;
    }
    cJSON_Delete(o);
    return ok;
}

int joule_train_log_resume(const char *path, uint64_t step, double *wall_s) {
    *wall_s = 0;
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) return JOULE_OK; /* no log yet: nothing to keep */
    char *text = NULL;
    int rc = joule_read_text(path, LOG_MAX, &text);
    if (rc) return rc;
    size_t n = strlen(text), keep = 0;
    bool cut = false;
    for (size_t at = 0; at < n;) {
        const char *nl = memchr(text + at, '\n', n - at);
        size_t len = nl ? (size_t)(nl - (text + at)) : n - at;
        double s, w;
        /* a line without its newline was cut by the kill */
        if (!nl || !line_fields(text + at, len, &s, &w) || s > (double)step) {
            cut = true;
            break;
        }
        if (s == (double)step) *wall_s = w;
        keep = at + len + 1;
        at = keep;
    }
    if (cut) rc = joule_write_file_atomic(path, text, keep);
    free(text);
    return rc;
}
