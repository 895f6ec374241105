/* joule/bench.h — the measurements behind `joule bench train|decode|moe|retro|db`
 * (bench/bench_model.c, bench_moe.c, bench_retro.c, bench_db.c; docs/BENCH.md). The
 * energy-per-query benchmark has its own header, joule/bench_energy.h.
 *
 * Every function runs the measurement and fills a result struct of plain values; the CLI
 * prints it. Return codes as everywhere in joule: JOULE_OK, or an error whose message
 * joule_last_error() gives. Machines here are shared and noisy: runs of the things compared
 * alternate and medians are reported, so only ratios from one call should be quoted.
 * Ownership: the caller owns every model, database and buffer it passes; results hold no
 * pointers.
 */
#ifndef JOULE_BENCH_H
#define JOULE_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/model.h"
#include "joule/retro_db.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- a dense model: training step and batch-1 decode (bench/bench_model.c) ---- */

typedef struct {
    int layers, d_model, heads, d_ff, ctx; /* the model (joule_config_default) */
    int batch, steps, warmup;              /* training: sequences per step, timed and untimed steps */
    int tokens;                            /* decode: tokens decoded (at most ctx) */
    int rows;                              /* decode: sequences of the batched steps; 0 = none */
    /* Optional: called with true just before the work an energy meter should see (the
     * training steps, warm-up included; the timed decode) and with false just after. */
    void (*window)(void *window_ctx, bool begin);
    void *window_ctx;
} joule_bench_model_opts;

typedef struct {
    joule_param_counts params;
    double peak_gflops;         /* best sgemm of 2048^3 for 2 s, same threads and kernels */
    double step_s;              /* median forward + backward */
    double full_step_s;         /* median forward + backward + optimizer step (gradient norm,
                                   clipping, AdamW): what a framework's training step does */
    double model_flops_per_token;   /* 6 N_mm + 12 L T d (PaLM's convention) */
    double counted_flops_per_token; /* joule_flops_counted over the last timed step / tokens */
} joule_bench_train_result;

/* Random tokens, `warmup` untimed then `steps` timed training steps of batch x ctx tokens,
 * AdamW at its defaults. */
int joule_bench_train(const joule_bench_model_opts *o, joule_bench_train_result *r);

typedef struct {
    int tokens;                  /* decoded: min(o->tokens, ctx) */
    double seconds;              /* for all of them, from an empty cache */
    double weight_bytes;         /* read per token: every matrix, one row of the embedding */
    double read_gbs_working_set; /* summing a buffer of weight_bytes, best of 1 s */
    double read_gbs_1gib;        /* the same for 1 GiB */
    /* Batched steps (o->rows > 0; bench/bench_steps.c): median seconds per step over 5
     * alternated rounds of `steps` steps from position `positions`, each sequence's own: */
    int rows, positions, steps;
    double step_gemv_s;     /* one sequence, joule_decoder_step (gemv) */
    double step_one_s;      /* one sequence through a decoder batch of `rows` (packed weights) */
    double step_rows_s;     /* `rows` sequences through the same batch */
    double step_rows_flops; /* counted FLOPs of one `rows` step */
} joule_bench_decode_result;

#define JOULE_BENCH_MAX_ROWS 256

/* Batch-1 decode of o->tokens tokens from an empty cache; then, when o->rows > 0, the
 * batched steps above on the same model. */
int joule_bench_decode(const joule_bench_model_opts *o, joule_bench_decode_result *r);
/* The batched steps alone, on m (2 <= n <= JOULE_BENCH_MAX_ROWS, ctx >= 81). */
int joule_bench_decode_rows(const joule_model *m, int n, joule_bench_decode_result *r);

/* ---- MoE over dense at equal active FLOPs (bench/bench_moe.c) ---- */

typedef struct {
    int layers, d_model, heads, d_ff, ctx; /* the dense reference */
    int batch, steps, warmup, tokens;      /* training steps per model; tokens decoded per round */
    int experts, top_k, every, d_ff_expert; /* the MoE FFNs (d_ff_expert > 0) */
    float capacity;                         /* training capacity factor; 0 = dropless */
} joule_bench_moe_opts;

typedef struct {
    double dense_params, moe_params, moe_active_params;
    double dense_flops, moe_flops; /* forward FLOPs per token, analytic */
    /* training steps (forward + backward), interleaved: medians and best */
    double dense_step_s, moe_step_s, dense_best_s, moe_best_s;
    double moe_counted_flops;   /* counted FLOPs of the last MoE step / 3 / tokens */
    double dropped_fraction;    /* of the last step's expert assignments */
    double moe_step_mean_ms;    /* mean MoE step */
    double routing_ms, permutation_ms, experts_ms; /* MoE layers' parts per step, means */
    /* batch-1 decode of decode_tokens tokens, 5 interleaved rounds: medians and best */
    int decode_tokens;
    double dense_decode_s, moe_decode_s, dense_decode_best_s, moe_decode_best_s;
} joule_bench_moe_result;

int joule_bench_moe(const joule_bench_moe_opts *o, joule_bench_moe_result *r);

/* ---- what retrieval costs a RETRO model (bench/bench_retro.c) ---- */

typedef struct {
    int batch, steps; /* sequences per training step; timed steps and generations of each kind */
    int tokens;       /* generated per generation (at most ctx) */
} joule_bench_retro_opts;

typedef struct {
    int seq;                        /* training window: ctx rounded down to whole chunks */
    double train_on_s, train_off_s; /* median steps with neighbours / retrieval off */
    uint64_t flops_on, flops_off;   /* counted, last step of each */
    int gen_tokens;
    double gen_on_s, gen_off_s;     /* median greedy generations, live retrieval / none */
    double retrieval_share;         /* median share of generation time embedding, searching, fetching */
} joule_bench_retro_result;

/* m: a RETRO model (its training buffers are allocated here); db: its database. */
int joule_bench_retro(joule_model *m, joule_retro_db *db, const joule_bench_retro_opts *o,
                      joule_bench_retro_result *r);

/* ---- retrieval databases (bench/bench_db.c) ---- */

typedef struct {
    char factory[64];
    double entries;
    double wall_s, embed_s, index_s; /* index: train + add + write */
} joule_bench_db_build_result;

/* Builds the database `dir` (must not exist) from the first max_chunks chunks (0 = all) of
 * the token file `src`, ngram embedder. */
int joule_bench_db_build(const char *src, const char *dir, const char *factory, int chunk, uint64_t max_chunks,
                         joule_bench_db_build_result *r);

typedef struct {
    char name[300];       /* factory and search parameters */
    double p50_s, p90_s;  /* latency at batch 1 */
    double batch_s;       /* median of reps searches of all nq queries at once */
    double recall;        /* recall@k against flat (1 without flat) */
} joule_bench_db_query_result;

/* Opens dir, applies `params` ("" for the index's own), searches the nq query chunks q
 * one by one, then all at once reps times. */
int joule_bench_db_query(const char *dir, const char *params, joule_retro_db *flat, const int32_t *q, int nq, int k,
                         int reps, joule_bench_db_query_result *r);

typedef struct {
    char factory[64];
    double joule_s, faiss_s;          /* medians of reps */
    double ratio_median, ratio_min;   /* median of joule/faiss ratios; ratio of the minima */
} joule_bench_db_overhead_result;

/* joule_db_search_vectors against faiss_Index_search on the same pre-embedded queries and
 * the same index file (loaded twice), nq queries in batches of `batch`, alternating. */
int joule_bench_db_overhead(const char *dir, const int32_t *q, int nq, int batch, int k, int reps,
                            joule_bench_db_overhead_result *r);

#ifdef __cplusplus
}
#endif
#endif
