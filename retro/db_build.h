/* retro/db_build.h — what the two halves of a database build share inside retro/: the
 * state of one build (db_build.c cuts, embeds and adds; db_resume.c keeps the resume
 * points and finishes or resumes an unfinished build). Not installed. */
#ifndef JOULE_RETRO_DB_BUILD_H
#define JOULE_RETRO_DB_BUILD_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include <faiss/c_api/Index_c.h>

#include "joule/retro_db.h"
#include "retro_internal.h"

typedef struct {
    const joule_db_build_opts *o;
    char *partial, *chunks_path, *index_path, *state_path, *manifest_path;
    char factory[256];
    char default_params[64]; /* search parameters stored in the index, "" if none */
    char *params;            /* canonical JSON of what determines the result */
    cJSON *sources;          /* [{path, tokens, documents, crc32}] */
    uint64_t n, docs, done, trained_on;
    joule_chunker ck;
    joule_embedder *emb;
    FaissIndex *index;
    int fd;                  /* chunks.bin */
    size_t rec;
    uint8_t *recs;           /* batch records */
    int32_t *toks;           /* batch chunk tokens [batch, m] */
    float *vecs;             /* batch vectors [batch, dim] */
    double embed_s, index_s;
    bool created;            /* this call made <out>.partial (removed again on failure...) */
    bool have_point;         /* ...unless it holds a resume point */
    bool complete;           /* the manifest is written: only the final rename is left */
    bool built;              /* <out> is already the finished database (resume found it) */
} build;

/* "<path>: <what> failed: <errno text>", JOULE_ERR_IO. */
int db_fail_errno(const char *path, const char *what);
/* fsync of a file, or of a folder when dir. */
int db_fsync_path(const char *path, bool dir);

/* db_build.c: embeds the records in b->recs[0, count) into out (timed). */
int db_embed_batch(build *b, int count, float *out);

/* db_build_shards.c (o->shards > 1): empties b->index and writes the shard files from
 * chunks.bin (complete, synced); then the manifest's "shards" list of them. */
int db_write_shards(build *b);
struct cJSON;
int db_shards_manifest(build *b, struct cJSON *manifest);

/* db_build.c: a new build in a fresh <out>.partial (trains the index when it needs it). */
int db_start_fresh(build *b);

/* db_resume.c */
/* A resume point: chunks.bin synced up to b->done, an index snapshot of b->done entries,
 * then state.json naming them (written last), then older snapshots dropped. */
int db_checkpoint(build *b);
/* --resume: picks up <out>.partial at its last resume point, or finds the build finished
 * (b->complete, or b->built when <out> is already there), or starts afresh when the kill
 * came before the first resume point. */
int db_resume(build *b);
/* After the manifest: drops the resume files, renames <out>.partial to <out>, syncs. */
int db_commit(build *b);

#endif
