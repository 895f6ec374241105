/* retro/db_build_shards.c — the end of a sharded build (joule db build --shards S): S index
 * files, each a complete index over a contiguous range of entries, and their manifest list.
 *
 * The build itself runs as for one index (so resume points are unchanged); at the end the
 * trained index is emptied and S copies of it are filled with their ranges' entries,
 * embedded again from chunks.bin in the same order. A kill while the shards are written
 * leaves no manifest, so --resume goes back to the last resume point and writes them again. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/clone_index_c.h>

#include "db_build.h"
#include "db_shards.h"

static char *shard_path(const build *b, int s) {
    char name[32];
    snprintf(name, sizeof name, JOULE_DB_SHARD_FMT, s);
    return joule_path_join(b->partial, name);
}

static int fill_shard(build *b, FaissIndex *ix, const joule_chunk_store *st, uint64_t first, uint64_t end) {
    for (uint64_t i = first; i < end;) {
        int count = end - i < (uint64_t)b->o->batch ? (int)(end - i) : b->o->batch;
        memcpy(b->recs, joule_chunk_store_get(st, i), (size_t)count * b->rec);
        int rc = db_embed_batch(b, count, b->vecs);
        if (rc) return rc;
        double t0 = joule_now();
        if (faiss_Index_add(ix, count, b->vecs) != 0) return joule_faiss_fail(JOULE_ERR_RUNTIME, "adding to a shard");
        b->index_s += joule_now() - t0;
        i += (uint64_t)count;
    }
    return JOULE_OK;
}

static int write_shard(build *b, const FaissIndex *empty, const joule_chunk_store *st, int s) {
    const int S = b->o->shards;
    FaissIndex *ix = NULL;
    char *path = shard_path(b, s);
    if (!path) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = faiss_clone_index(empty, &ix) != 0 ? joule_faiss_fail(JOULE_ERR_RUNTIME, "copying the trained index") : JOULE_OK;
    if (!rc) rc = fill_shard(b, ix, st, joule_db_shard_first(b->n, S, s), joule_db_shard_first(b->n, S, s + 1));
    double t0 = joule_now();
    if (!rc) rc = joule_faiss_write(ix, path);
    b->index_s += joule_now() - t0;
    if (rc) unlink(path); /* a full disk: resume writes it again */
    if (ix) faiss_Index_free(ix);
    free(path);
    return rc;
}

int db_write_shards(build *b) {
    /* the whole index is not written when sharded: emptied, it is the shards' template
     * (trained, with its search defaults set) */
    if (faiss_Index_reset(b->index) != 0) return joule_faiss_fail(JOULE_ERR_RUNTIME, "emptying the index");
    joule_chunk_store st;
    int rc = joule_chunk_store_open(&st, b->chunks_path, b->o->chunk, b->n);
    if (rc) return rc;
    for (int s = 0; s < b->o->shards && !rc; s++) rc = write_shard(b, b->index, &st, s);
    joule_chunk_store_close(&st);
    return rc;
}

int db_shards_manifest(build *b, cJSON *manifest) {
    cJSON *list = cJSON_AddArrayToObject(manifest, "shards");
    if (!list) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    const int S = b->o->shards;
    for (int s = 0; s < S; s++) {
        char *path = shard_path(b, s), hex[9], name[32];
        uint32_t crc;
        uint64_t size;
        int rc = path ? joule_file_crc32(path, &crc, &size) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
        free(path);
        if (rc) return rc;
        cJSON *o = cJSON_CreateObject();
        if (!o) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        cJSON_AddItemToArray(list, o);
        uint64_t first = joule_db_shard_first(b->n, S, s), end = joule_db_shard_first(b->n, S, s + 1);
        snprintf(name, sizeof name, JOULE_DB_SHARD_FMT, s);
        snprintf(hex, sizeof hex, "%08x", crc);
        cJSON_AddStringToObject(o, "file", name);
        cJSON_AddNumberToObject(o, "first", (double)first);
        cJSON_AddNumberToObject(o, "entries", (double)(end - first));
        cJSON_AddNumberToObject(o, "bytes", (double)size);
        cJSON_AddStringToObject(o, "crc32", hex);
    }
    return JOULE_OK;
}
