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
#include "joule/serve.h"
#include "joule/train.h"

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

/* ---- where a forward retrieves (docs/MODEL.md §7) ----
 * A chunk is m consecutive tokens of one document. Chunk (seq, last) of a batch has its
 * last token at window position `last` of sequence seq (its tokens are last-m+1 .. last, some
 * before the window when last < m-1); window positions last .. last+m-1 read its
 * neighbours (the m-1 shift). A forward is handed the chunks one of its positions reads,
 * 1-m <= last <= T-1, in increasing (seq, last), chunks of a sequence at least m apart
 * (they never overlap), with their k neighbours of 2m tokens each, [n][k][2m]. */
typedef struct {
    int seq;
    int last;
} joule_retro_chunk;

/* Hands the chunks of the next joule_model_forward over B x T (copied; that forward, which
 * must be over B x T, consumes them; one without any handed runs with retrieval off).
 * tokens == NULL turns retrieval off. */
int joule_retro_set_chunks(joule_model *m, const joule_retro_chunk *chunks, int n, const int32_t *tokens, int B,
                           int T);
/* The same for windows that start at a chunk boundary of one long document: nch chunks per
 * sequence, chunk u = window tokens [u*m, (u+1)*m) (last = (u+1)m - 1); tokens
 * [B][nch][k][2m]. NULL turns retrieval off. The forward must be over B x T with
 * T / m == nch. */
int joule_retro_set_neighbours(joule_model *m, const int32_t *tokens, int B, int nch);
/* The chunks of B windows whose first token is the last token of a chunk of one long
 * document (how training draws its windows): last = 0, m, 2m, ... < T in each sequence.
 * Fills out (room for B * ((T - 1) / m + 1)) and returns the count. This is the layout
 * joule_model_forward_flops counts. */
int joule_retro_regular_chunks(int m, int B, int T, joule_retro_chunk *out);

/* Analytic forward FLOPs of a batch of B x T whose windows read these chunks: counted
 * FLOPs equal them exactly (joule_model_forward_flops is the regular layout's). */
uint64_t joule_retro_chunks_flops(const joule_config *c, const joule_retro_chunk *chunks, int n, int B, int T);

/* Decoding: the k neighbours [k][2m] of the chunk whose last token is at cache position
 * `last`, read by positions last .. last+m-1. Hand them before the step that feeds
 * position last, or before a joule_decoder_prefill of an empty cache that reaches it (hand
 * every chunk of the prompt; a prefill also takes a chunk that ended before its first row,
 * 1-m <= last < 0, and encodes it without rows of its own). They serve one encoding. NULL
 * tokens: no retrieval for that chunk. */
int joule_retro_decoder_set_neighbours(joule_decoder *d, int last, const int32_t *tokens);
/* Forgets every chunk's neighbours handed and not yet encoded. */
int joule_retro_decoder_clear(joule_decoder *d);

/* The chunk grid of a token stream that starts at a document's start (generation, the
 * energy benchmark's queries): a chunk ends after its m-th token or at an end-of-document
 * token, whichever comes first. joule_retro_grid_feed returns true when the token it is fed
 * ends a chunk that is retrieved for: m tokens of one document, none of them the
 * end-of-document token. */
typedef struct {
    int m;    /* public: chunk size */
    int fill; /* read-only: tokens of the current chunk */
} joule_retro_grid;
void joule_retro_grid_init(joule_retro_grid *g, int m);
bool joule_retro_grid_feed(joule_retro_grid *g, int32_t token);
/* Marks the tokens of tok [n] (a stream from a document's start) that end a chunk
 * (ends[i] = 1) and those that end a retrieved chunk (2); the rest 0. */
void joule_retro_grid_mark(int m, const int32_t *tok, int n, uint8_t *ends);

/* ---- training and evaluation with a database (retro_train.c) ----
 * A joule_retro_data holds the database and the neighbour files of some token files:
 * <tokens without .bin>.<database id>.nbr next to each, computed on first use (k of the
 * model's config, same-document neighbours excluded). joule_retro_prepare is the
 * joule_batch_prepare_fn of joule/train.h: it hands the model the chunks a batch's windows
 * read, on the token file's chunk grid, with their neighbours (or none when retrieval is
 * off). */
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
/* The joule_window_sampler_fn of joule/train.h: training windows that start at the last
 * token of a chunk drawn uniformly from t's grid, so their targets start on a chunk
 * boundary and every position reads neighbours (docs/MODEL.md §7). */
int joule_retro_sample_windows(void *rd, const joule_tokens *t, uint64_t seed, uint64_t step, int micro, int B, int T,
                               uint64_t *starts);
/* The joule_batch_flops_fn of joule/train.h: joule_retro_chunks_flops of the chunks the
 * windows read (retrieval on; with it off, the regular formula's base part). */
int joule_retro_batch_flops(void *rd, const joule_config *c, const joule_tokens *t, const uint64_t *starts, int B,
                            int T, uint64_t *flops);
/* Sets o's prepare hook, window sampler (named "retro-grid" in the resume options), batch
 * FLOPs and their context to rd: what training a RETRO model with a database takes. */
void joule_retro_train_hooks(joule_train_opts *o, joule_retro_data *rd);
/* What prepare hands the model for windows of T tokens at starts of t (one of the token
 * files rd was opened with): the chunks the windows read and their neighbour tokens
 * [n][k][2m] (both owned by rd, valid until its next call). */
int joule_retro_batch_chunks(joule_retro_data *rd, const joule_tokens *t, const uint64_t *starts, int B, int T,
                             joule_retro_chunk **chunks, const int32_t **tokens, int *n);

/* ---- leakage evaluation (leakage.c), as in the RETRO paper ----
 * Over the first `windows` evaluation windows of T tokens of t (0 = all): every target
 * byte belongs to a chunk of t's grid; each such chunk C gets r(C) = the longest run of
 * tokens C shares with one of its `neighbours` nearest database entries (chunk +
 * continuation), over m, searched with its own document excluded unless rd's own-document
 * mode is on. For each threshold alpha, bits-per-byte over the targets whose chunk has
 * r(C) <= alpha: of the RETRO model with retrieval on and off, and of a dense baseline on
 * the same windows when one is given. */
#define JOULE_LEAKAGE_ALPHAS 6 /* 0, 1/8, 1/4, 1/2, 3/4, 1 */
typedef struct {
    double alpha;
    uint64_t chunks, bytes; /* chunks with r <= alpha, and their scored target bytes */
    double bpb_on, bpb_off, bpb_dense; /* NaN where nothing is scored (or no baseline) */
} joule_leakage_row;
typedef struct {
    joule_leakage_row rows[JOULE_LEAKAGE_ALPHAS];
    uint64_t chunks, bytes, windows;
    int neighbours;
    bool own_document;
    double wall_s;
} joule_leakage_result;
/* retro needs training buffers for batch B (joule_model_alloc_train), dense too when given.
 * rd must have been opened with t's path. */
int joule_retro_leakage(joule_model *retro, joule_model *dense, joule_retro_data *rd, const joule_tokens *t, int T,
                        int B, uint64_t windows, int neighbours, joule_leakage_result *out);

/* The result as a cJSON object (void * keeps cJSON out of this header; the caller frees it
 * with cJSON_Delete): neighbours, chunks, bytes, windows, own_document, and rows of alpha,
 * chunks, bytes, bpb_retrieval, bpb_no_retrieval, bpb_dense (null where not scored). */
void *joule_retro_leakage_json(const joule_leakage_result *r);

/* RETRO-fitting: copies every tensor of a dense model into m by name (shapes must match;
 * `what` names the source in errors), and marks every tensor outside the CCA layers and
 * the encoder frozen. */
int joule_retro_init_from(joule_model *m, const joule_model *base, const char *what);
void joule_retro_freeze_base(joule_model *m);

/* ---- generation with live retrieval (retro_generate.c) ----
 * joule_generate's loop (prompt, sampling, sliding window) where each retrieved chunk of the
 * history's grid (joule_retro_grid) is searched in db when it completes (no document
 * excluded) and its k neighbours are encoded before the position that completes it is
 * decoded. phase: tokens of the prompt's first chunk that precede the prompt in its
 * document (0 when the prompt starts a document); that chunk is not searched. A sliding
 * window restarts at a chunk's last token, as training windows do. db NULL: retrieval off. */
typedef struct {
    uint64_t tokens;     /* generated */
    uint64_t retrievals; /* searches (one per completed chunk, prompt included) */
    double retrieval_s;  /* embedding + search + fetching entries */
    double total_s;      /* the whole call */
} joule_retro_gen_stats;
/* Live retrieval while decoding: searches the m tokens at chunk (the chunk whose last token
 * is at cache position last; nothing excluded) in db and hands d its k neighbours (chunk +
 * continuation, padding for a missing one) through joule_retro_decoder_set_neighbours.
 * ids [k] and nbr [k * 2m] are the caller's scratch. */
int joule_retro_decoder_retrieve(joule_decoder *d, struct joule_retro_db *db, const int32_t *chunk, int last,
                                 int64_t *ids, int32_t *nbr);
int joule_retro_generate(const joule_model *m, struct joule_retro_db *db, const uint8_t *prompt, int n_prompt,
                         int phase, int n_gen, const joule_sampler *s, uint64_t seed, int (*on_token)(void *ctx, int32_t token),
                         void *ctx, joule_retro_gen_stats *stats);
/* n_seqs continuations of one prompt, continuation i decoded with samplers[i] and seeds[i]
 * exactly (bit for bit) as joule_retro_generate would decode it alone, but from one prefill
 * of the prompt and one search of its chunks: between continuations the decoder is
 * truncated back to the prompt (joule_decoder_truncate), and only the chunks a continuation
 * completes are searched (a continuation that slides the window refills the prompt's).
 * on_token(ctx, i, token) as joule_retro_generate's (non-zero ends continuation i); stats
 * add up over the continuations. */
int joule_retro_generate_each(const joule_model *m, struct joule_retro_db *db, const uint8_t *prompt, int n_prompt,
                              int phase, int n_gen, int n_seqs, const joule_sampler *samplers, const uint64_t *seeds,
                              int (*on_token)(void *ctx, int seq, int32_t token), void *ctx,
                              joule_retro_gen_stats *stats);
/* Continuous batching with live retrieval (retro_feeder.c): a joule_sched_feeder that
 * decodes each sequence as joule_retro_generate does (phase 0), searching db (NULL:
 * retrieval off) and adding every sequence's searches to stats. The caller owns the
 * joule_retro_feed and keeps it (and db) alive while the scheduler runs. */
typedef struct {
    struct joule_retro_db *db;
    joule_retro_gen_stats stats;
} joule_retro_feed;
void joule_retro_feeder(joule_sched_feeder *f, joule_retro_feed *feed);

/* ---- accounting (retro_cost.c) ----
 * Analytic FLOPs of one search of a FAISS index built with `factory` ("Flat", "IVF<nlist>[,
 * Flat|PQ<M>|...]", "HNSW<M>") over n vectors of dim d, at nprobe / efSearch (<= 0: FAISS's
 * defaults 1 / 16). FAISS does this work, so joule reports it apart from counted FLOPs. */
typedef struct {
    double flops;
    char method[96]; /* the formula used, e.g. "Flat: 2*d*N" */
} joule_search_cost;
int joule_retro_search_cost(const char *factory, int dim, uint64_t n, int nprobe, int ef_search, joule_search_cost *out);
/* The same for one search of db at the parameters in effect: the IVF lists it probes now,
 * HNSW's efSearch as its manifest stores it (the C API cannot read it back). */
int joule_retro_db_search_cost(const struct joule_retro_db *db, joule_search_cost *out);

/* ---- grouped attention: the one kernel behind CCA and the encoder's attentions ----
 * Group g: queries q rows [qrow[g], qrow[g] + nq[g]) attend (no causal mask) to the nk
 * keys/values at rows [krow[g], krow[g] + nk), keys with kmask[g*nk + j] == 0 excluded
 * (kmask NULL: all valid); a query with no valid key gets 0. Heads: H of size hs in
 * consecutive columns. P [G][H][max_q][nk] keeps the probabilities for backward. */
typedef struct {
    int G, H, hs, max_q, nk;
    const int *qrow, *nq, *krow;
    const int *nkg;   /* keys of each group (<= nk); NULL: nk for every group */
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
/* FLOPs joule_gattn_forward counts: 4 * hs * H * sum nq * nkg; the backward counts twice. */
uint64_t joule_gattn_forward_flops(const joule_gattn_plan *p);

#ifdef __cplusplus
}
#endif
#endif
