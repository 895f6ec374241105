/* retro/retro_internal.h — what the retrieval database's files share inside retro/:
 * the chunk store (chunks.bin), the chunker that cuts token files into entries, and a
 * file checksum. Not installed; cli/ and the model use include/joule/retro_db.h. */
#ifndef JOULE_RETRO_INTERNAL_H
#define JOULE_RETRO_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/common.h"
#include "joule/data.h"

#define JOULE_CHUNKS_MAGIC "JOULECHK"
#define JOULE_CHUNKS_VERSION 1u
#define JOULE_CHUNKS_HEADER 64u
#define JOULE_DB_MAX_CHUNK 4096

/* One entry as stored: chunk tokens [0, chunk_len), continuation [m, m + cont_len). */
typedef struct {
    uint64_t doc_id;
    uint32_t chunk_len; /* 1..m */
    uint32_t cont_len;  /* 0..m */
    uint8_t tokens[];   /* 2m bytes, then zero padding to the record size */
} joule_chunk_record;

/* Bytes per record for chunk size m: 16 + 2m rounded up to 8. */
static inline size_t joule_chunk_record_bytes(int m) { return 16 + (((size_t)2 * (size_t)m + 7) & ~(size_t)7); }

/* The memory-mapped chunk store. */
typedef struct {
    int m;
    uint64_t n;
    size_t rec;
    const uint8_t *base; /* first record */
    joule_mmap map;
} joule_chunk_store;

int joule_chunk_store_open(joule_chunk_store *s, const char *path, int m, uint64_t n);
void joule_chunk_store_close(joule_chunk_store *s);
static inline const joule_chunk_record *joule_chunk_store_get(const joule_chunk_store *s, uint64_t i) {
    return (const joule_chunk_record *)(s->base + i * s->rec);
}
/* Checks every record's lengths and padding; message names path. */
int joule_chunk_store_check(const joule_chunk_store *s, const char *path);
/* 2m tokens of record r: the chunk, then the continuation, JOULE_DB_PAD past the document. */
void joule_chunk_record_tokens(const joule_chunk_record *r, int m, int32_t *out);

/* Header of chunks.bin for m and n entries (JOULE_CHUNKS_HEADER bytes). */
void joule_chunk_store_header(uint8_t *hdr, int m, uint64_t n);

/* Walks the entries of a list of token files in order: every document cut into chunks
 * of m tokens (the last one shorter), each with its continuation. */
typedef struct {
    joule_tokens *files;
    int n_files;
    int m;
    int f;          /* current file */
    uint64_t d;     /* current document in it */
    uint64_t pos;   /* token position of the next chunk */
} joule_chunker;

int joule_chunker_open(joule_chunker *c, const char *const *paths, int n, int m);
void joule_chunker_close(joule_chunker *c);
/* Total entries of the files (one pass over the document indexes). */
uint64_t joule_chunker_count(const joule_chunker *c);
/* Fills the next record (record size joule_chunk_record_bytes(m)); false at the end. */
bool joule_chunker_next(joule_chunker *c, joule_chunk_record *r);
/* Skips n entries (resume). */
void joule_chunker_skip(joule_chunker *c, uint64_t n);

/* crc32 (zlib) and size of a whole file; message names path on failure. */
int joule_file_crc32(const char *path, uint32_t *crc, uint64_t *size);


/* 64-bit FNV-1a of bytes, as 16 lowercase hex digits into hex[17]. */
void joule_hash_hex(const void *data, size_t len, char hex[17]);
/* "<dir>/<name>" into a malloc'd string (NULL when out of memory). */
char *joule_path_join(const char *dir, const char *name);

#define JOULE_DB_FORMAT_VERSION 2 /* written only for sharded databases; 1 still read */
#define JOULE_DB_MANIFEST "manifest.json"
#define JOULE_DB_INDEX "index.faiss"
#define JOULE_DB_CHUNKS "chunks.bin"

/* Sets the message to "<what>: <FAISS's last error, one line>" and returns code. */
int joule_faiss_fail(int code, const char *what);

/* ---- the chunk grid of a token file (grid.c; docs/MODEL.md §7) ----
 * Every document is cut into chunks of m tokens from its first token on, the last one
 * shorter: the database's entries and every query chunk are cut this way. A chunk is
 * retrieved for when it has m tokens and does not end its document (the end-of-document
 * token is not among them); its neighbours are read from its last token on. */
typedef struct {
    const joule_tokens *t;
    int m;
    uint64_t *first;    /* [n_docs + 1]: chunks before document d; first[n_docs] = n_chunks */
    uint64_t n_chunks;
} joule_grid;

int joule_grid_open(joule_grid *g, const joule_tokens *t, int m);
void joule_grid_close(joule_grid *g);
/* Chunk c (< n_chunks): its document, first token and length. */
void joule_grid_chunk(const joule_grid *g, uint64_t c, uint64_t *doc, uint64_t *start, int *len);
bool joule_grid_retrieved(const joule_grid *g, uint64_t c);
/* The chunk holding token pos (< n_tokens). */
uint64_t joule_grid_chunk_at(const joule_grid *g, uint64_t pos);
/* The retrieved chunks that window [a, a + T) reads (their last token in [a - m + 1,
 * a + T - 1]), in order: ids and last tokens relative to a. Room for
 * retro_max_chunks(m, T) of each; returns how many. */
int joule_grid_window(const joule_grid *g, uint64_t a, int T, uint64_t *ids, int *last);
/* B training windows of micro-batch (step, micro): each starts at the last token of a chunk
 * drawn uniformly (so its targets start on a chunk boundary and its first row already reads
 * neighbours), among those leaving T + 1 tokens. */
int joule_grid_sample(const joule_grid *g, uint64_t seed, uint64_t step, int micro, int B, int T, uint64_t *starts);

/* Size check of a FAISS index file of n vectors of dimension d before FAISS reads it
 * (faiss_check.c): flat indexes are checked whole, others only for a readable header. */
int joule_faiss_precheck(const char *path, int d, uint64_t n);
/* Writes index to path and fsyncs it (no rename: callers name temporary files). */
struct FaissIndex_H;
int joule_faiss_write(const struct FaissIndex_H *index, const char *path);

/* A whole number in [0, 2^53] at o[key] (a JSON object), range-checked before conversion;
 * false when absent, not a number, fractional or out of range. */
struct cJSON;
bool joule_json_u64(const struct cJSON *o, const char *key, uint64_t *v);

/* ---- the unfinished build folder <out>.partial/ (db_partial.c) ---- */
#define JOULE_DB_STATE "state.json"
/* index snapshots of resume points: index.ckpt.<entries>.faiss */
#define JOULE_DB_SNAPSHOT_PREFIX "index.ckpt."
#define JOULE_DB_SNAPSHOT_SUFFIX ".faiss"
/* Whether name is a snapshot's, and of how many entries (done may be NULL). */
bool joule_db_snapshot_name(const char *name, uint64_t *done);
/* Removes the folder when it holds only files a build writes there; JOULE_ERR_ARG naming
 * the first other file otherwise. A missing folder is fine. */
int joule_db_partial_remove(const char *partial);
/* Removes the snapshots in dir other than the one of `keep` entries, and their temporary
 * files; best effort. */
void joule_db_snapshots_drop(const char *dir, uint64_t keep);
/* The build parameters a manifest records, in make_params' canonical JSON (caller frees);
 * NULL when the manifest lacks them. */
char *joule_db_manifest_params(const char *manifest_text);

/* ---- neighbour search for listed chunks of a token file (neighbours.c) ----
 * Shared by the neighbour files (every retrieved chunk of the grid, in order) and on-demand
 * neighbours (retro_train.c: the chunks a batch needs). A chunk excludes its document. */
#define JOULE_NBR_BATCH 1024 /* queries per FAISS call */
typedef struct {
    int32_t *rows;         /* [JOULE_NBR_BATCH * m] query tokens */
    uint64_t *chunk;       /* [JOULE_NBR_BATCH] chunk indices, for callers */
    const uint64_t **excl; /* [JOULE_NBR_BATCH] */
    int *n_excl;           /* [JOULE_NBR_BATCH] */
    int64_t *ids;          /* [JOULE_NBR_BATCH * k], for callers */
} joule_neighbours_scratch;
int joule_neighbours_scratch_init(joule_neighbours_scratch *s, int m, int k);
void joule_neighbours_scratch_free(joule_neighbours_scratch *s);
/* ids[n][k] of grid chunks chunk[0..n) (any n: searched JOULE_NBR_BATCH at a time), each
 * excluding its own document unless own_doc. */
struct joule_retro_db;
int joule_neighbours_search(struct joule_retro_db *db, const joule_grid *g, const uint64_t *chunk, int n, int k,
                            bool own_doc, joule_neighbours_scratch *s, int64_t *ids);

/* For leakage.c: the grid of token file t in rd (t must be one rd was opened with), and
 * whether rd searches with the own document allowed. */
struct joule_retro_data;
int joule_retro_data_grid(struct joule_retro_data *rd, const joule_tokens *t, const joule_grid **grid);
bool joule_retro_data_own_doc(const struct joule_retro_data *rd);

#endif
