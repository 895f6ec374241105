/* retro/db_partial.c — the unfinished build folder <out>.partial/ of retro/db_build.c:
 * recognising the files joule writes there (so a stale folder can be removed without
 * touching anything else), dropping superseded index snapshots, and reading back the
 * build parameters a finished manifest records (so a build killed after its manifest was
 * written can be finished by --resume). Layout and crash windows: docs/FORMATS.md. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/retro_db.h"
#include "retro_internal.h"

/* "<digits>" exactly, read into *v (NULL: not wanted). */
static bool all_digits(const char *s, size_t n, uint64_t *v) {
    uint64_t x = 0;
    if (n == 0 || n > 19) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        x = 10 * x + (uint64_t)(s[i] - '0');
    }
    if (v) *v = x;
    return true;
}

bool joule_db_snapshot_name(const char *name, uint64_t *done) {
    const char *pre = JOULE_DB_SNAPSHOT_PREFIX, *suf = JOULE_DB_SNAPSHOT_SUFFIX;
    size_t n = strlen(name), p = strlen(pre), s = strlen(suf);
    return n > p + s && strncmp(name, pre, p) == 0 && strcmp(name + n - s, suf) == 0 &&
           all_digits(name + p, n - p - s, done);
}

/* Whether a folder entry is one of the files a build writes: the database files, the
 * state, snapshots, and the temporary names of all of these. */
static bool ours(const char *name) {
    static const char *const fixed[] = {JOULE_DB_CHUNKS, JOULE_DB_INDEX, JOULE_DB_MANIFEST, JOULE_DB_STATE};
    char base[256];
    snprintf(base, sizeof base, "%s", name);
    char *tmp = strstr(base, ".tmp");
    if (tmp && (strcmp(tmp, ".tmp") == 0 || (strncmp(tmp, ".tmp.", 5) == 0 && all_digits(tmp + 5, strlen(tmp + 5), NULL))))
        *tmp = '\0'; /* <name>.tmp (FAISS snapshots) or <name>.tmp.<pid> (atomic writes) */
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (strcmp(base, fixed[i]) == 0) return true;
    if (strncmp(base, "shard.", 6) == 0 && strlen(base) > 12 && strcmp(base + strlen(base) - 6, ".faiss") == 0)
        return all_digits(base + 6, strlen(base) - 12, NULL); /* shard.<s>.faiss */
    return joule_db_snapshot_name(base, NULL);
}

int joule_db_partial_remove(const char *partial) {
    DIR *d = opendir(partial);
    if (!d) {
        if (errno == ENOENT) return JOULE_OK; /* nothing was left behind */
        return joule_fail(JOULE_ERR_IO, "%s: cannot read the unfinished build: %s", partial, strerror(errno));
    }
    int rc = JOULE_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (!ours(e->d_name))
            rc = joule_fail(JOULE_ERR_ARG, "%s: holds '%s', which joule did not write there; remove the folder yourself",
                            partial, joule_q(e->d_name));
        else if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT)
            rc = joule_fail(JOULE_ERR_IO, "%s/%s: cannot remove: %s", partial, joule_q(e->d_name), strerror(errno));
    }
    closedir(d);
    if (!rc && rmdir(partial) != 0 && errno != ENOENT)
        rc = joule_fail(JOULE_ERR_IO, "%s: cannot remove the unfinished build: %s", partial, strerror(errno));
    return rc;
}

void joule_db_snapshots_drop(const char *dir, uint64_t keep) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    uint64_t done;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        bool tmp = n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0;
        char base[256];
        snprintf(base, sizeof base, "%.*s", (int)(tmp ? n - 4 : n), e->d_name);
        if (joule_db_snapshot_name(base, &done) && (tmp || done != keep)) unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

char *joule_db_manifest_params(const char *manifest_text) {
    cJSON *m = cJSON_Parse(manifest_text), *p = cJSON_CreateObject();
    const cJSON *emb = cJSON_GetObjectItemCaseSensitive(m, "embedder"), *ix = cJSON_GetObjectItemCaseSensitive(m, "index");
    const cJSON *chunk = cJSON_GetObjectItemCaseSensitive(m, "chunk"), *entries = cJSON_GetObjectItemCaseSensitive(m, "entries");
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(emb, "spec"), *fac = cJSON_GetObjectItemCaseSensitive(ix, "factory");
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(ix, "seed"), *src = cJSON_GetObjectItemCaseSensitive(m, "sources");
    char *out = NULL;
    /* the same keys, in the same order, as db_build.c's make_params */
    if (p && cJSON_IsNumber(chunk) && cJSON_IsString(spec) && cJSON_IsString(fac) && cJSON_IsNumber(seed) &&
        cJSON_IsNumber(entries) && cJSON_IsArray(src)) {
        cJSON_AddNumberToObject(p, "chunk", chunk->valuedouble);
        cJSON_AddStringToObject(p, "embedder", spec->valuestring);
        cJSON_AddStringToObject(p, "factory", fac->valuestring);
        cJSON_AddNumberToObject(p, "seed", seed->valuedouble);
        cJSON_AddNumberToObject(p, "entries", entries->valuedouble);
        cJSON_AddItemReferenceToObject(p, "sources", (cJSON *)src);
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(m, "shards");
        if (cJSON_IsArray(sh)) cJSON_AddNumberToObject(p, "shards", cJSON_GetArraySize(sh));
        out = cJSON_PrintUnformatted(p);
    }
    cJSON_Delete(p);
    cJSON_Delete(m);
    return out;
}
