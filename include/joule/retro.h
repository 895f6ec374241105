/* joule/retro.h — the RETRO model: chunked cross-attention (CCA) sub-layers and the
 * neighbour encoder, plugged into the core as the JOULE_EXT_CCA extension
 * (docs/MODEL.md §7 states the maths, the m-1 shift and the encoder).
 *
 * Use: joule_retro_register() once at start-up, then a config with some kinds[l].cca
 * (joule_retro_config_apply sets the defaults) builds like any other model. Before each
 * joule_model_forward hand the neighbours with joule_retro_set_neighbours (or NULL for
 * retrieval off: every CCA sub-layer is then the identity and the logits are the base
 * model's exactly). One-token decoding gets each completed chunk's neighbours through
 * joule_retro_decoder_set_neighbours.
 *
 * Neighbour tokens: for B sequences of T tokens, nch = T / m chunks each; chunk u of
 * sequence b has k neighbours of 2m tokens (the retrieved chunk and its continuation),
 * laid out [B][nch][k][2m]; JOULE_RETRO_PAD marks padding (masked out).
 */
#ifndef JOULE_RETRO_H
#define JOULE_RETRO_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/data.h"
#include "joule/model.h"
#include "joule/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_RETRO_PAD (-1) /* equals JOULE_DB_PAD of joule/retro_db.h */

/* Registers the JOULE_EXT_CCA implementation (idempotent). */
void joule_retro_register(void);

/* Turns c into a RETRO config: arch "retro", the retro block filled with the defaults of
 * docs/MODEL.md §7 for fields that are 0 (chunk 16 for ctx <= 128 else 32, k 2,
 * cca_start n_layers/3, cca_every 3, encoder 2 layers, d_model/2, heads n_heads/2 (>= 1),
 * d_ff d_ff/2), and kinds[l].cca for l = cca_start, cca_start + cca_every, ... */
void joule_retro_config_apply(joule_config *c);

/* Hands the neighbours of the next joule_model_forward: tokens [B][nch][k][2m] (copied),
 * nch must equal T / m of that forward, which consumes them (a forward with none handed
 * runs with retrieval off). tokens == NULL turns retrieval off. */
int joule_retro_set_neighbours(joule_model *m, const int32_t *tokens, int B, int nch);

/* Decoding: the k neighbours [k][2m] of chunk `chunk` (tokens [chunk*m, (chunk+1)*m)),
 * used from position (chunk+1)*m - 1 on; hand them before the step that feeds that
 * position, or before a joule_decoder_prefill that completes the chunk (hand every chunk
 * of the prompt). They serve one encoding. NULL: no retrieval for that chunk; chunk -1
 * with NULL: forget every chunk's. */
int joule_retro_decoder_set_neighbours(joule_decoder *d, int chunk, const int32_t *tokens);

/* ---- training and evaluation with a database (retro_train.c) ----
 * A joule_retro_data holds the database and the neighbour files of some token files:
 * <tokens without .bin>.<database id>.nbr next to each, computed on first use (k of the
 * model's config, same-document neighbours excluded). joule_retro_prepare is the
 * joule_batch_prepare_fn of joule/train.h: it hands the model the neighbours of the
 * chunk-aligned windows of a batch (or none when retrieval is off). */
typedef struct joule_retro_data joule_retro_data;
typedef void (*joule_retro_progress_fn)(void *ctx, const char *what, uint64_t done, uint64_t total);

/* Refuses a database whose chunk size differs from the model's, or whose id differs from
 * c->retro.db_id (when set) unless allow_db_mismatch. Neighbour files as above. */
int joule_retro_data_open(joule_retro_data **out, const joule_config *c, const char *db_dir,
                          const char *const *tokens_paths, int n, bool allow_db_mismatch,
                          joule_retro_progress_fn progress, void *ctx);
/* The same with options. on_demand: no neighbour files; each chunk is searched (same
 * rule: its documents excluded) the first time a batch needs it and kept in memory
 * (k x 8 bytes per chunk of each token file) for the life of rd. A short run then pays
 * only for the chunks it reads, not for a whole corpus; the same batches in the same
 * order give the same neighbours. */
typedef struct {
    bool allow_db_mismatch;
    bool on_demand;
    joule_retro_progress_fn progress; /* neighbour files being computed; may be NULL */
    void *ctx;
} joule_retro_data_opts;
void joule_retro_data_opts_init(joule_retro_data_opts *o); /* all off */
int joule_retro_data_open_opts(joule_retro_data **out, const joule_config *c, const char *db_dir,
                               const char *const *tokens_paths, int n, const joule_retro_data_opts *o);
/* On-demand searches made so far (chunks) and the wall time they took. */
void joule_retro_data_search_stats(const joule_retro_data *rd, uint64_t *searches, double *seconds);
void joule_retro_data_close(joule_retro_data *rd);
void joule_retro_data_set_retrieval(joule_retro_data *rd, bool on);
/* Evaluation's leaky upper bound: search each batch's chunks live with nothing excluded, so
 * a chunk may retrieve its own document (never for training). Default false. */
void joule_retro_data_set_own_document(joule_retro_data *rd, bool allowed);
const char *joule_retro_data_db_id(const joule_retro_data *rd);
struct joule_retro_db *joule_retro_data_db(joule_retro_data *rd);
/* Neighbours dropped because they came from a document of the chunk (0 with files built
 * by joule_neighbours_build, which excludes them). */
uint64_t joule_retro_data_same_doc_dropped(const joule_retro_data *rd);
/* The neighbour file path for a token file and database id. Caller frees. */
char *joule_retro_neighbours_path(const char *tokens_path, const char *db_id);
int joule_retro_prepare(void *rd, joule_model *m, const joule_tokens *t, const uint64_t *starts, int B, int T);
/* What prepare hands the model: out[B][T/m][k][2m] for windows at starts (multiples of m)
 * of t (one of the token files rd was opened with). */
int joule_retro_batch_neighbours(joule_retro_data *rd, const joule_tokens *t, const uint64_t *starts, int B, int T,
                                 int32_t *out);

/* RETRO-fitting: copies every tensor of a dense model into m by name (shapes must match;
 * `what` names the source in errors), and marks every tensor outside the CCA layers and
 * the encoder frozen. */
int joule_retro_init_from(joule_model *m, const joule_model *base, const char *what);
void joule_retro_freeze_base(joule_model *m);

/* ---- generation with live retrieval (retro_generate.c) ----
 * joule_generate's loop (prompt, sampling, sliding window) where each chunk completed in
 * the cache is searched in db (no document excluded) and its k neighbours are encoded
 * before the position that completes it is decoded. db NULL: retrieval off. */
typedef struct {
    uint64_t tokens;     /* generated */
    uint64_t retrievals; /* searches (one per completed chunk, prompt included) */
    double retrieval_s;  /* embedding + search + fetching entries */
    double total_s;      /* the whole call */
} joule_retro_gen_stats;
/* Live retrieval while decoding: searches chunk u of win (the sequence's tokens by
 * position; nothing excluded) in db and hands d its k neighbours (chunk + continuation,
 * padding for a missing one) through joule_retro_decoder_set_neighbours. ids [k] and nbr
 * [k * 2m] are the caller's scratch. */
int joule_retro_decoder_retrieve(joule_decoder *d, struct joule_retro_db *db, const int32_t *win, int u, int64_t *ids,
                                 int32_t *nbr);
int joule_retro_generate(const joule_model *m, struct joule_retro_db *db, const uint8_t *prompt, int n_prompt,
                         int n_gen, const joule_sampler *s, uint64_t seed, int (*on_token)(void *ctx, int32_t token),
                         void *ctx, joule_retro_gen_stats *stats);

/* ---- accounting (retro_cost.c) ----
 * Analytic FLOPs of one search of a FAISS index built with `factory` ("Flat", "IVF<nlist>[,
 * Flat|PQ<M>|...]", "HNSW<M>") over n vectors of dim d, at nprobe / efSearch (<= 0: FAISS's
 * defaults 1 / 16). FAISS does this work, so joule reports it apart from counted FLOPs. */
typedef struct {
    double flops;
    char method[96]; /* the formula used, e.g. "Flat: 2*d*N" */
} joule_search_cost;
int joule_retro_search_cost(const char *factory, int dim, uint64_t n, int nprobe, int ef_search, joule_search_cost *out);

/* ---- grouped attention: the one kernel behind CCA and the encoder's attentions ----
 * Group g: queries q rows [qrow[g], qrow[g] + nq[g]) attend (no causal mask) to the nk
 * keys/values at rows [krow[g], krow[g] + nk), keys with kmask[g*nk + j] == 0 excluded
 * (kmask NULL: all valid); a query with no valid key gets 0. Heads: H of size hs in
 * consecutive columns. P [G][H][max_q][nk] keeps the probabilities for backward. */
typedef struct {
    int G, H, hs, max_q, nk;
    const int *qrow, *nq, *krow;
    const uint8_t *kmask;
    bool shared_keys; /* groups share key rows: backward accumulates per head in order */
} joule_gattn_plan;

/* out rows of every group are overwritten; other rows are left alone. */
void joule_gattn_forward(float *out, int ldo, float *P, const float *q, int ldq, const float *k,
                         int ldk, const float *v, int ldv, const joule_gattn_plan *p);
/* dq, dk, dv accumulate (+=). dS is scratch of the size of P. */
void joule_gattn_backward(float *dq, int ldq, float *dk, int ldk, float *dv, int ldv, float *dS,
                          const float *dout, int ldo, const float *q, const float *k, const float *v,
                          const float *P, const joule_gattn_plan *p);
/* FLOPs joule_gattn_forward counts: 4 * hs * H * nk * sum nq; the backward counts twice. */
uint64_t joule_gattn_forward_flops(const joule_gattn_plan *p);

#ifdef __cplusplus
}
#endif
#endif
