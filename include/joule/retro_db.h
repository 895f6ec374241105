/* joule/retro_db.h — RETRO retrieval databases: chunks of a prepared corpus, their
 * embeddings indexed with FAISS (through the FAISS C API), and precomputed neighbour files.
 *
 * A database is a directory {manifest.json, index.faiss, chunks.bin} (docs/FORMATS.md).
 * Entry i holds chunk i (m tokens) and its continuation (the next m tokens of the same
 * document; shorter at a document's end, padded with JOULE_DB_PAD and masked), and the
 * document id. Queries are embedded with the embedder named in the manifest.
 *
 * Ownership: every joule_retro_db returned is freed by the caller with joule_db_close.
 * Functions return a joule_status; the message is joule_last_error().
 */
#ifndef JOULE_RETRO_DB_H
#define JOULE_RETRO_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_DB_PAD (-1) /* token value of padding in a neighbour (masked out) */

typedef struct joule_retro_db joule_retro_db;

/* Opens and validates a database (manifest, sizes, checksums of the small files; the
 * full check is joule_db_verify). */
int joule_db_open(joule_retro_db **out, const char *dir);
void joule_db_close(joule_retro_db *db);

int joule_db_chunk(const joule_retro_db *db);        /* m */
uint64_t joule_db_size(const joule_retro_db *db);    /* entries */
const char *joule_db_id(const joule_retro_db *db);   /* manifest checksum (hex) */

/* Embeds n chunks of m tokens each (row-major) and searches the index: ids[n*k],
 * dist[n*k] (either may be NULL), nearest first; -1 ids when fewer than k exist.
 * Entries whose document id equals exclude_doc[i] (when exclude_doc != NULL and
 * exclude_doc[i] != UINT64_MAX) are skipped for query i. */
int joule_db_search(joule_retro_db *db, const int32_t *chunks, int n, int k, const uint64_t *exclude_doc,
                    int64_t *ids, float *dist);

/* Entry id's 2m tokens (chunk then continuation; JOULE_DB_PAD past the document's end)
 * and its document id (either output may be NULL). id must be < joule_db_size. */
int joule_db_entry(const joule_retro_db *db, int64_t id, int32_t *tokens, uint64_t *doc_id);

/* ---- neighbour files: the neighbours of every chunk-aligned position of a token file ----
 * For token file t and chunk size m, chunk c covers tokens [c*m, (c+1)*m); its k
 * neighbours were searched with those tokens, excluding entries from any document that
 * the chunk's tokens belong to. Written next to the token file, e.g. train.nbr. */
typedef struct joule_neighbours joule_neighbours;

/* Computes and writes the neighbour file for a token file (streams, with progress). */
int joule_neighbours_build(joule_retro_db *db, const char *tokens_path, const char *out_path, int k,
                           void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx);
/* Memory-maps a neighbour file; checks it matches the database (id) and token file. */
int joule_neighbours_open(joule_neighbours **out, const char *path, const joule_retro_db *db);
void joule_neighbours_close(joule_neighbours *nb);
int joule_neighbours_k(const joule_neighbours *nb);
/* The k neighbour ids of chunk c (pointer into the map; -1 for missing). */
const int64_t *joule_neighbours_of(const joule_neighbours *nb, uint64_t chunk);

/* ======================= additions beyond the first contract =======================
 * (the declarations above keep their meaning) */

/* ---- embedders: token chunks -> L2-normalised float vectors ----
 * Specs: "ngram" (default, model-free: signed hashed byte n-grams, n = 1..4, dim 128),
 * "ngram:DIM" (another dimension, 8..4096), "model:<ckpt>" (the mean over the chunk's
 * tokens of a joule checkpoint's final-norm hidden states, frozen; dim = d_model).
 * PAD tokens (JOULE_DB_PAD) end a chunk: only the tokens before the first PAD count. */
typedef struct joule_embedder joule_embedder;
int joule_embedder_create(joule_embedder **out, const char *spec);
void joule_embedder_free(joule_embedder *e);
int joule_embedder_dim(const joule_embedder *e);
/* The spec as stored in the manifest (e.g. "ngram:128", "model:/abs/path.safetensors"). */
const char *joule_embedder_spec(const joule_embedder *e);
/* n chunks of m tokens (row-major) -> out[n * dim]. Not thread-safe per embedder. */
int joule_embedder_embed(joule_embedder *e, const int32_t *chunks, int n, int m, float *out);

/* ---- building ---- */
typedef struct {
    const char *const *sources; /* token files (.bin with their .idx), entries in this order */
    int n_sources;
    const char *out_dir;        /* the database directory; must not exist (but see resume) */
    int chunk;                  /* m (default 64) */
    const char *embedder;       /* spec (default "ngram") */
    const char *index;          /* FAISS index_factory string; NULL = by size (joule_db_default_index) */
    uint64_t seed;              /* training sample (default 1) */
    uint64_t max_chunks;        /* 0 = all; else only the first max_chunks entries */
    int batch;                  /* entries embedded and added per batch (default 4096) */
    int checkpoint_every;       /* resume point every N batches or 60 s, whichever comes first;
                                 * 0 = 16 batches (default) */
    int shards;                 /* S > 1: S index files over contiguous entry ranges
                                 * (shard s from floor(s*n/S)); 0 or 1: one index.faiss */
    bool resume;                /* continue <out_dir>.partial instead of starting afresh; also
                                 * finishes a build killed after its manifest, accepts an
                                 * out_dir already built with the same parameters, and starts
                                 * afresh when the kill came before the first resume point */
    /* progress(ctx, phase, done, total): phase "train" (embedding the sample) or "add";
     * returning false stops the build after saving a resume point (interrupt). */
    bool (*progress)(void *ctx, const char *phase, uint64_t done, uint64_t total);
    void *ctx;
} joule_db_build_opts;

void joule_db_build_opts_init(joule_db_build_opts *o);
/* Default factory string for n entries: "Flat" below 50000, else "IVF<nlist>,Flat" with
 * nlist = the power of two nearest 4*sqrt(n). buf gets at most n_buf bytes. */
void joule_db_default_index(uint64_t n, char *buf, size_t n_buf);
/* The IVF part of that rule alone: "IVF<nlist>,Flat" for n entries. */
void joule_db_ivf_index(uint64_t n, char *buf, size_t n_buf);
/* Builds into <out_dir>.partial/ and renames it to out_dir at the end; a kill at any
 * instant leaves a state that resume finishes (docs/FORMATS.md, "Building: resume points
 * and crash windows"). Stopped by progress: returns JOULE_ERR_RUNTIME with an
 * "interrupted" message and leaves the partial directory for resume. A failure before the
 * first resume point removes the partial directory it made. Timings (seconds) go to
 * *embed_s / *index_s when non-NULL. */
int joule_db_build(const joule_db_build_opts *o, double *embed_s, double *index_s);

/* ---- inspection ---- */
const char *joule_db_manifest_json(const joule_retro_db *db); /* the manifest text */
const char *joule_db_factory(const joule_retro_db *db);
int joule_db_dim(const joule_retro_db *db);
/* Index files: 1 (index.faiss) or the S shards of a database built with shards. */
int joule_db_n_shards(const joule_retro_db *db);
const joule_embedder *joule_db_embedder(const joule_retro_db *db);
/* Full check: checksums of every file, every store record, the index's size and
 * dimension, and that a seeded sample of entries finds itself (Flat: always; others:
 * at least half of the sample within the first 10 results). *self_recall may be NULL. */
int joule_db_verify(joule_retro_db *db, double *self_recall);

/* ---- searching ---- */
/* Search parameters for the following searches, FAISS ParameterSpace syntax, e.g.
 * "nprobe=16" or "efSearch=64" or "nprobe=8,efSearch=32"; "" or NULL resets nothing. */
int joule_db_set_params(joule_retro_db *db, const char *params);
/* Searches already embedded queries (n x dim) — what joule_db_search does after
 * embedding. excl[i] (sorted doc ids, n_excl[i] of them) are skipped for query i when
 * excl != NULL. The exclusion rule: fetch k' = 2k + 16 results; a query left with fewer
 * than k whose k' results were all valid ids is fetched again with k' *= 4 (at most the
 * database size). Searches use scratch buffers kept in the handle: one handle per thread. */
int joule_db_search_vectors(joule_retro_db *db, const float *q, int n, int k, const uint64_t *const *excl,
                            const int *n_excl, int64_t *ids, float *dist);
/* joule_db_search with several excluded documents per query: excl[i] lists n_excl[i]
 * document ids in increasing order (NULL or 0 for none). */
int joule_db_search_ex(joule_retro_db *db, const int32_t *chunks, int n, int k, const uint64_t *const *excl,
                       const int *n_excl, int64_t *ids, float *dist);
/* Recall@k of db's search against exact's (a Flat database over the same entries and
 * embedder) for n query chunks (n x m tokens): mean |top-k(db) ∩ top-k(exact)| / k. */
int joule_db_recall(joule_retro_db *db, joule_retro_db *exact, const int32_t *chunks, int n, int k,
                    double *recall);
/* Seeded sample of n chunk-aligned query chunks (m tokens each) from a token file. */
int joule_db_sample_queries(const char *tokens_path, int m, int n, uint64_t seed, int32_t *chunks);

/* ---- neighbour files ---- */
uint64_t joule_neighbours_count(const joule_neighbours *nb); /* chunks covered */

#ifdef __cplusplus
}
#endif
#endif
