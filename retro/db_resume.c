/* retro/db_resume.c — resume points of a database build and the end of one, arranged so
 * that a kill at any instant leaves <out>.partial/ (or <out>) in a state that --resume
 * finishes or a fresh build replaces (docs/FORMATS.md, "Building: resume points").
 *
 * <out>.partial/state.json (written atomically, last) names a resume point: the build's
 * parameters and `done` entries, which chunks.bin holds in its first bytes and the index
 * snapshot index.ckpt.<done>.faiss holds; the snapshot of the previous point is removed
 * only after the new state names the new one. A manifest.json in the folder means the
 * build is complete: --resume then only renames the folder. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/index_io_c.h>

#include "db_build.h"

/* <partial>/index.ckpt.<done>.faiss[.tmp] (caller frees). */
static char *snapshot_path(const build *b, uint64_t done, bool tmp) {
    char name[96];
    snprintf(name, sizeof name, "%s%" PRIu64 "%s%s", JOULE_DB_SNAPSHOT_PREFIX, done, JOULE_DB_SNAPSHOT_SUFFIX,
             tmp ? ".tmp" : "");
    return joule_path_join(b->partial, name);
}

static int write_state(build *b) {
    cJSON *s = cJSON_CreateObject();
    cJSON *p = cJSON_Parse(b->params);
    if (!s || !p) {
        cJSON_Delete(s);
        cJSON_Delete(p);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    cJSON_AddItemToObject(s, "params", p);
    cJSON_AddNumberToObject(s, "done", (double)b->done);
    cJSON_AddNumberToObject(s, "trained_on", (double)b->trained_on);
    cJSON_AddNumberToObject(s, "chunks_bytes", (double)(JOULE_CHUNKS_HEADER + b->done * b->rec));
    char *text = cJSON_Print(s);
    cJSON_Delete(s);
    if (!text) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = joule_write_file_atomic(b->state_path, text, strlen(text));
    free(text);
    return rc;
}

int db_checkpoint(build *b) {
    if (fsync(b->fd) != 0) return db_fail_errno(b->chunks_path, "fsync");
    double t0 = joule_now();
    char *tmp = snapshot_path(b, b->done, true), *snap = snapshot_path(b, b->done, false);
    int rc = tmp && snap ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = joule_faiss_write(b->index, tmp);
    /* the snapshot's name is durable before the state that names it */
    if (!rc) rc = joule_rename_durable(tmp, snap);
    if (!rc) rc = write_state(b);
    if (!rc) {
        joule_db_snapshots_drop(b->partial, b->done);
        b->have_point = true;
    } else if (tmp) {
        unlink(tmp); /* a full disk: give back what the half-written snapshot holds */
    }
    b->index_s += joule_now() - t0;
    free(tmp);
    free(snap);
    return rc;
}

/* The resume point state.json names, range-checked (it is a file); b->done etc. set. */
static int read_state(build *b) {
    char *text = NULL;
    int rc = joule_read_text(b->state_path, 1u << 20, &text);
    if (rc) return joule_fail(JOULE_ERR_FORMAT, "cannot resume: %s (run without --resume to start again)",
                              joule_last_error());
    cJSON *s = cJSON_Parse(text);
    free(text);
    cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "params");
    char *have = p ? cJSON_PrintUnformatted(p) : NULL;
    uint64_t done, trained, bytes;
    if (!have || !joule_json_u64(s, "done", &done) || !joule_json_u64(s, "trained_on", &trained) ||
        !joule_json_u64(s, "chunks_bytes", &bytes) || done > b->n)
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: cannot resume: the state file is invalid", b->state_path);
    else if (strcmp(have, b->params) != 0)
        rc = joule_fail(JOULE_ERR_ARG, "%s: cannot resume: it was started with other data or options (%s)", b->partial,
                        joule_q(have));
    else if (bytes != JOULE_CHUNKS_HEADER + done * b->rec)
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: cannot resume: the state file is inconsistent", b->state_path);
    if (!rc) {
        b->done = done;
        b->trained_on = trained;
    }
    free(have);
    cJSON_Delete(s);
    return rc;
}

/* chunks.bin cut back to the resume point and the snapshot of that point read. */
static int reopen_point(build *b) {
    struct stat st;
    b->fd = open(b->chunks_path, O_WRONLY | O_CLOEXEC);
    if (b->fd < 0) return db_fail_errno(b->chunks_path, "open");
    if (fstat(b->fd, &st) != 0) return db_fail_errno(b->chunks_path, "stat");
    uint64_t keep = JOULE_CHUNKS_HEADER + b->done * b->rec;
    if ((uint64_t)st.st_size < keep)
        return joule_fail(JOULE_ERR_FORMAT, "%s: cannot resume: shorter than the resume point", b->chunks_path);
    if (ftruncate(b->fd, (off_t)keep) != 0) return db_fail_errno(b->chunks_path, "ftruncate");
    if (lseek(b->fd, (off_t)keep, SEEK_SET) < 0) return db_fail_errno(b->chunks_path, "lseek");
    char *snap = snapshot_path(b, b->done, false);
    if (!snap) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = joule_faiss_precheck(snap, joule_embedder_dim(b->emb), b->done);
    if (!rc && faiss_read_index_fname(snap, 0, &b->index) != 0) rc = joule_faiss_fail(JOULE_ERR_FORMAT, snap);
    else if (!rc && ((uint64_t)faiss_Index_ntotal(b->index) != b->done || faiss_Index_d(b->index) != joule_embedder_dim(b->emb)))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: cannot resume: the snapshot does not match the state", snap);
    free(snap);
    if (rc) return rc;
    joule_db_snapshots_drop(b->partial, b->done); /* a later one a kill left unnamed */
    joule_chunker_skip(&b->ck, b->done);
    b->have_point = true;
    return JOULE_OK;
}

/* Whether the manifest in dir records this build's parameters; JOULE_ERR_ARG naming it
 * when it records another build's. */
static int same_build(const build *b, const char *dir) {
    char *path = joule_path_join(dir, JOULE_DB_MANIFEST), *text = NULL, *have = NULL;
    int rc = path ? joule_read_text(path, 1u << 20, &text) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc && (!(have = joule_db_manifest_params(text)) || strcmp(have, b->params) != 0))
        rc = joule_fail(JOULE_ERR_ARG, "%s: a database built with other data or options is already there", dir);
    free(have);
    free(text);
    free(path);
    return rc;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int db_resume(build *b) {
    bool out = exists(b->o->out_dir), part = exists(b->partial);
    if (out && part) return joule_fail(JOULE_ERR_ARG, "%s: both it and %s exist; remove one", b->o->out_dir, b->partial);
    if (out) { /* killed after the final rename: nothing is left to do */
        int rc = same_build(b, b->o->out_dir);
        b->built = b->complete = rc == JOULE_OK;
        return rc;
    }
    if (!part)
        return joule_fail(JOULE_ERR_ARG, "%s: no unfinished build to resume (run without --resume)", b->partial);
    if (exists(b->manifest_path)) { /* killed between the manifest and the rename */
        int rc = same_build(b, b->partial);
        b->complete = rc == JOULE_OK;
        return rc;
    }
    if (!exists(b->state_path)) return db_start_fresh(b); /* killed before the first resume point */
    int rc = read_state(b);
    return rc ? rc : reopen_point(b);
}

int db_commit(build *b) {
    /* the manifest marks the folder complete, so the resume files can go first */
    if (unlink(b->state_path) != 0 && errno != ENOENT) return db_fail_errno(b->state_path, "unlink");
    joule_db_snapshots_drop(b->partial, UINT64_MAX);
    int rc = db_fsync_path(b->partial, true);
    if (!rc) rc = joule_rename_durable(b->partial, b->o->out_dir);
    return rc;
}
