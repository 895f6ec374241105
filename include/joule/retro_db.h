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

#ifdef __cplusplus
}
#endif
#endif
