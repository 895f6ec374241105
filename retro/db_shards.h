/* retro/db_shards.h — the FAISS index files of a retrieval database, inside retro/.
 * A database holds one index (index.faiss, format 1) or S shards (shard.<s>.faiss,
 * format 2), each a complete index over the contiguous entries [first, first + entries).
 * Searching goes through joule_db_shards_search, which merges the shards' results into the
 * order a single index gives: distance, then lower global id first (docs/FORMATS.md). */
#ifndef JOULE_DB_SHARDS_H
#define JOULE_DB_SHARDS_H

#include <stdbool.h>
#include <stdint.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>

#define JOULE_DB_MAX_SHARDS 256
#define JOULE_DB_SHARD_FMT "shard.%d.faiss"

typedef struct {
    char file[32];           /* name inside the database folder */
    uint64_t first, entries; /* the global ids it holds */
    uint64_t bytes;
    uint32_t crc;
    FaissIndex *index;       /* owned; NULL until opened */
    const float *xb;         /* a Flat index's vectors [entries * dim] (in index), else NULL */
    int dim;
} joule_db_shard;

typedef struct {
    int n;              /* 1 for a single-index database */
    bool sharded;       /* the manifest lists shards (format 2) */
    joule_db_shard *s;  /* [n], owned */
    float *d;           /* per-shard results scratch (grown as needed) */
    int64_t *id;
    size_t cap;
    float *fd;          /* FAISS's candidates before exact distances (Flat) */
    int64_t *fid;
    size_t fcap;
} joule_db_shards;

struct cJSON;
/* The index files a manifest lists (its "shards", or files/index.faiss), checked: names,
 * contiguous ranges covering the n entries, sizes and checksums present; the message
 * names mpath. sh must be zeroed; joule_db_shards_close frees it either way. */
int joule_db_shards_parse(joule_db_shards *sh, const struct cJSON *manifest, uint64_t n, const char *mpath);
/* Checks every file's size (and crc32 when full) against the manifest; the message names
 * the file. */
int joule_db_shards_check(const joule_db_shards *sh, const char *dir, bool full);
/* Reads every index (after joule_db_shards_check); each must hold its entries at dim. */
int joule_db_shards_open(joule_db_shards *sh, const char *dir, int dim);
void joule_db_shards_close(joule_db_shards *sh);
/* FAISS ParameterSpace parameters applied to every shard. */
int joule_db_shards_set_params(joule_db_shards *sh, FaissParameterSpace *ps, const char *params, const char *dir,
                               const char *factory);
/* The kk nearest of n queries over all shards: global ids (-1 past the end, with +inf),
 * ordered by (distance, id). Flat indexes: distances are joule's exact ones (double sums,
 * rounded once), the same whatever the shard layout; FAISS only proposes candidates
 * (kk + 8), and a query whose candidates may miss an entry within FAISS's rounding of the
 * kk-th distance is searched by brute force. Not thread-safe (scratch in sh). */
int joule_db_shards_search(joule_db_shards *sh, const char *dir, const float *q, int n, int64_t kk, float *dist,
                           int64_t *ids);
/* Size and checksum of one database file against the manifest (crc32 only when full);
 * the message names the file. */
int joule_db_check_file(const char *path, uint64_t bytes, uint32_t crc, bool full);
/* An 8-hex-digit crc32 string at o[key]. */
bool joule_json_crc(const struct cJSON *o, const char *key, uint32_t *v);
/* Entry ranges of S shards over n entries: shard s starts at floor(s * n / S). */
static inline uint64_t joule_db_shard_first(uint64_t n, int S, int s) {
    return (uint64_t)((unsigned __int128)n * (unsigned)s / (unsigned)S);
}

#endif
