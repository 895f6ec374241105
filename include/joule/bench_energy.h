/* joule/bench_energy.h — energy per query: `joule bench energy` and `joule compare` share it.
 *
 * A query is P prompt tokens drawn from a corpus's validation split, one batched prefill
 * (joule_decoder_prefill) whose last logits give the first generated token, then G-1
 * greedy KV-cache decode steps: G generated tokens. RETRO models (with db_dir) search
 * each chunk of the prompt before the prefill and each generated chunk as it completes,
 * like `joule generate --db`. Queries run `batch` at a time: prompts prefilled one after
 * another, then the batch's sequences decode in lock-step, one token each per
 * joule_decoder_step_batch (every weight matrix read once for the batch; RETRO steps
 * decoder by decoder); a query's latency is its batch's.
 * `warmup` queries run first and are excluded; the measurement window (energy, counted
 * FLOPs, wall time, latencies) spans the measured queries only, in the spirit of
 * ML.ENERGY's steady-state window. docs/BENCH.md states every figure.
 *
 * Energy comes from the caller's open meter set (joule_energy_open) and carries its method
 * ("measured:rapl", "modeled:tdp", ...): on a machine without a meter it is modelled.
 *
 * Implemented in bench/energy_query.c (runner) and bench/energy_report.c (writers), part of
 * libjoule (bench/ drives the rest of the library like a user would).
 * Ownership: plain value types; the caller owns the model, the meters and every buffer.
 */
#ifndef JOULE_BENCH_ENERGY_H
#define JOULE_BENCH_ENERGY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "joule/energy.h"
#include "joule/model.h"

#ifdef __cplusplus
extern "C" {
#endif

struct joule_retro_db;

typedef struct {
    const char *data_dir; /* prepared corpus: prompts come from <data_dir>/val.bin */
    const char *db_dir;   /* RETRO database for RETRO checkpoints (NULL otherwise) */
    const char *db_params; /* FAISS search parameters for it, e.g. "nprobe=4"; NULL: the index's defaults */
    /* Optional: an open database to search instead of opening db_dir (borrowed: not closed,
     * db_params not applied; joule compare passes its run's, whose index takes seconds to
     * load). NULL: db_dir. */
    struct joule_retro_db *db;
    int queries;          /* measured queries (32) */
    int prompt;           /* P tokens per prompt (64) */
    int generate;         /* G generated tokens per query (32), >= 1; P + G - 1 <= ctx */
    int batch;            /* queries run together (1) */
    int warmup;           /* queries run before the window, not measured (4) */
    uint64_t seed;        /* prompt draws: the same seed draws the same prompts (1) */
    double pue;           /* facility overhead, >= 1 (JOULE_DEFAULT_PUE) */
    double grid_g_per_kwh; /* grid carbon intensity (JOULE_DEFAULT_GRID_G_PER_KWH) */
    const joule_energy *meters; /* open meter set; required */
    /* Optional: called after every query (warm-up ones included), done out of total. */
    void (*progress)(void *ctx, int done, int total);
    void *ctx;
} joule_bench_energy_opts;

/* Defaults as above; meters NULL. */
void joule_bench_energy_opts_init(joule_bench_energy_opts *o);

typedef struct {
    char label[128]; /* the model's name (file name without folder and .safetensors) */
    char arch[16];   /* "dense", "moe" or "retro" */
    double params, params_active;
    int prompt, generate, batch, queries, warmup, threads;
    uint64_t seed;
    uint64_t tokens_digest; /* hash of every measured prompt and generated token, in order:
                               equal digests, equal work (same seed, model and threads) */
    char blas_core[32]; /* joule_blas_corename() */
    /* latency, seconds: per query (its batch's wall time), time to first token (prefill),
     * and per generated token (each decode step of a batch, all its sequences) */
    double query_p50, query_p95, query_p99;
    double ttft_p50, ttft_p95, ttft_p99;
    double token_p50, token_p95, token_p99;
    double tokens_per_s; /* generated tokens / window wall time */
    double wall_s;       /* the window */
    /* FLOPs per query: analytic (the accountant, docs/ACCOUNTING.md: the model's prefill +
     * decode) and counted (joule_flops_counted over the window / queries: the model, and
     * RETRO's query embedding when it uses matmuls). FAISS's search is neither: flops_search
     * is its analytic cost (searches per query x joule_retro_search_cost). */
    double flops_analytic, flops_counted;
    double flops_prefill_analytic, flops_decode_analytic;
    double flops_search;
    /* energy over the window */
    joule_energy_report energy; /* method, joules, duration, cpu_s, tokens, queries, pue, grid */
    double j_per_query, j_per_token; /* device energy / measured queries, / generated tokens */
    double wh_per_1k_queries;        /* facility energy (x PUE) */
    double g_co2e_per_1k_queries;
    /* retrieval (RETRO; false and 0 otherwise): searches per query; the share of the
     * window's time spent embedding, searching and fetching neighbours; the share of
     * (counted + search) FLOPs that is search + embedding */
    bool retrieval;
    double searches_per_query;
    double retrieval_time_share, retrieval_flops_share;
    char search_method[96]; /* joule_retro_search_cost's formula, or why it is unknown */
    /* memory: peak resident set (VmHWM); reset before the model was loaded when the kernel
     * allows it (/proc/self/clear_refs), else the process's high-water mark so far */
    uint64_t peak_rss_bytes;
    bool peak_rss_reset; /* set by the caller that called joule_bench_energy_reset_peak_rss */
    /* precision of the weights (joule/quant.h) and its kernels; bytes of weights a batch-1
     * decode step reads (joule_quant_decode_weight_bytes) */
    char precision[8], kernels[16];
    double weight_bytes_per_token;
    /* set by the caller (joule bench energy --quality-windows): bpb over the first windows
     * of the validation split and mean KL (bits per byte) from the first model's */
    bool quality;
    double bpb, kl_bits;
} joule_bench_energy_result;

/* Resets the process's peak-RSS mark (Linux /proc/self/clear_refs "5"); true when done.
 * Call before loading a model so that its result's peak_rss is its own. */
bool joule_bench_energy_reset_peak_rss(void);

/* Runs the benchmark on one loaded checkpoint. `label` names it in results and messages.
 * The model is used read-only. Fails (message naming the corpus or the problem) on a
 * missing/invalid corpus, a validation split shorter than P, P + G - 1 > ctx, bad options,
 * or a RETRO model without its database. */
int joule_bench_energy_run(const joule_model *m, const char *label, const joule_bench_energy_opts *o,
                           joule_bench_energy_result *r);

/* Writers (atomic: temp name, fsync, rename). JSON: {"bench":"energy","models":[...]}; CSV:
 * a header and one row per model; SVG: a bar chart of energy per query and tokens/s. */
int joule_bench_energy_write_json(const char *path, const joule_bench_energy_result *r, int n);
int joule_bench_energy_write_csv(const char *path, const joule_bench_energy_result *r, int n);
int joule_bench_energy_write_svg(const char *path, const joule_bench_energy_result *r, int n);
/* The models side by side (one column each), for humans; and the one-model summary. */
void joule_bench_energy_print_compare(FILE *f, const joule_bench_energy_result *r, int n);
void joule_bench_energy_print(FILE *f, const joule_bench_energy_result *r);

#ifdef __cplusplus
}
#endif
#endif
