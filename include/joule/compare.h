/* joule/compare.h — the equal-compute comparison behind `joule compare` (docs/COMPARE.md).
 *
 * For every budget C (training FLOPs) and architecture the driver sizes a model by the
 * documented rule (joule_compare_size), trains it until the trainer's counted budget
 * (3 x joule_model_forward_flops per micro-batch, router and every other extension term
 * included) is spent, evaluates validation bits-per-byte and the exact-match metric, and
 * measures the training energy in an accountant window. Each finished run is a checkpoint
 * plus a row of DIR/results.jsonl; a rerun skips finished rows. The report (fit.json,
 * report.md, SVGs) is rebuilt from the rows.
 *
 * The implementation lives in bench/, part of libjoule (it drives the library like a user
 * would); the CLI (cli/cmd_compare.c) parses flags and prints. Ownership: rows are plain values; arrays
 * returned through pointers are malloc'd and freed by the caller with free().
 */
#ifndef JOULE_COMPARE_H
#define JOULE_COMPARE_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/data.h"
#include "joule/energy.h"
#include "joule/model.h"
#include "joule/quant.h"
#include "joule/train.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_COMPARE_MAX_BUDGETS 32
#define JOULE_COMPARE_EM_BYTES 8 /* default n: exact match of the next 8 bytes */
#define JOULE_PROMPT_MAX_BYTES 256 /* largest n */

/* RETROFIT: the dense run of the same budget, frozen, with CCA and an encoder trained on
 * top (the paper's cheap path); its compute is the dense run's plus the fitting's. */
typedef enum {
    JOULE_ARCH_DENSE = 0,
    JOULE_ARCH_MOE = 1,
    JOULE_ARCH_RETRO = 2,
    JOULE_ARCH_RETROFIT = 3,
    JOULE_ARCH_COUNT = 4
} joule_arch;
extern const char *const joule_arch_names[JOULE_ARCH_COUNT]; /* "dense", "moe", "retro", "retro-fit" */

/* Everything that shapes a run; a comparison folder records it (compare.json) and refuses
 * to mix runs made with different settings. */
typedef struct {
    /* sizing rule (docs/COMPARE.md §1) */
    double tokens_per_param; /* D = r N for the compute-optimal size (Chinchilla: ~20) */
    int aspect;              /* d_model / n_layers of the family */
    int head_dim;            /* heads = d_model / head_dim */
    int ffn_mult;            /* d_ff = ffn_mult x d_model */
    int width_step;          /* d_model is a multiple of this */
    int ctx;                 /* context = training sequence length */
    int min_steps;           /* a model must get at least this many steps of the budget */
    /* MoE: the dense model of the same budget with E experts of d_ff / top_k, so a token
     * costs the same matmul FLOPs plus the router */
    int experts, top_k, moe_every;
    /* RETRO: the dense backbone plus CCA where joule_retro_config_apply puts it and an
     * encoder of retro_enc_layers x retro_enc_d_model (0: about d_model / 6, a multiple of
     * 8, at least 8; d_ff ffn_mult x that), chunks of retro_chunk tokens; the database holds
     * the first db_chunks chunks of the train split (0 = all), indexed by db_index (a FAISS
     * factory string; "" = Flat below 50000 entries, else IVF<sqrt N>,Flat), built once per
     * comparison folder */
    int retro_chunk;
    int retro_enc_layers, retro_enc_d_model;
    uint64_t db_chunks;
    char db_index[64];
    /* IVF lists probed per search (0: the index's stored default, 16): each run searches every
     * chunk it reads, and at 16 the search cost more than the model's step at demo sizes */
    int db_nprobe;
    /* RETRO-fit: the fitting stage's budget, as a fraction of the dense run's (at least
     * min_steps steps) */
    double retrofit_fraction;
    /* neighbours of the chunks training and evaluation read: searched on demand, the first
     * time a batch needs them (default; a run pays for the chunks it reads), or from
     * neighbour files of the whole train and validation splits computed up front */
    bool neighbour_files;
    /* training */
    int batch;
    double lr;
    uint64_t seed;
    /* evaluation */
    uint64_t eval_windows; /* validation windows of ctx bytes for bpb; 0 = all */
    int em_windows;        /* prompts of the metrics on the same prompts (exact match and the rest) */
    int match_bytes;       /* n: each prompt's target is the next n bytes (default 8) */
    int samples;           /* S continuations sampled per prompt for the pass rate; 0 = none */
    double temperature;    /* of the samples (> 0; default 1) */
    /* energy per query (joule/bench_energy.h): queries of ctx/2 prompt and ctx/2 generated
     * tokens after 2 warm-up ones; 0 = not measured */
    int queries;
} joule_compare_settings;

void joule_compare_settings_init(joule_compare_settings *s);
/* Compact JSON of s (caller frees); equal settings give equal strings. */
char *joule_compare_settings_json(const joule_compare_settings *s);

/* The model of `arch` for budget C under the sizing rule: the family member whose total
 * parameter count is nearest (in log) to N* = sqrt(C / (6 r)), moved down the family until
 * the budget buys at least min_steps steps. Fails (JOULE_ERR_ARG, message says why) when
 * even the smallest member does not. *steps receives the planned steps. */
int joule_compare_size(const joule_compare_settings *s, joule_arch arch, double budget, joule_config *out,
                       uint64_t *steps);

/* One run: one line of results.jsonl / results.csv. */
typedef struct {
    char arch[16];
    double budget;       /* FLOPs asked for */
    bool ok;
    char error[512];     /* why it failed ("" when ok) */
    int n_layers, d_model, n_heads, d_ff, ctx;
    int experts, top_k, d_ff_expert; /* 0 for dense */
    uint64_t params_total, params_active, params_non_embedding;
    uint64_t steps, tokens;
    uint64_t flops_counted, flops_analytic; /* training, counted by joule_sgemm and analytic */
    double spent;        /* flops_counted / budget */
    double val_bpb;
    double exact_match;  /* fraction of em_windows prompts whose next match_bytes bytes greedy decoding matches */
    uint64_t em_windows;
    /* the smooth metrics on the same prompts (joule_prompt_means; NaN in rows of an older
     * folder) and the pass rate from samples (NaN without samples); per prompt in
     * <checkpoint stem>.prompts.jsonl */
    int match_bytes, samples;
    double byte_accuracy, logprob, edit_distance, pass_rate;
    double prompts_s;    /* wall time of those metrics (part of wall_s) */
    double wall_s;       /* whole run: training, evaluation, metric */
    double train_s;
    double energy_j;     /* training window */
    char energy_method[96];
    /* energy per query from the energy benchmark (NaN when not run) */
    double query_j, query_s;
    char query_method[96];
    /* RETRO: analytic FAISS search FLOPs of the chunks the training consumed (one search per
     * chunk; FAISS's work, outside the counted budget) */
    double retrieval_flops;
    /* RETRO and RETRO-fit: the encoder's and CCA's part of flops_counted (the multiplier is
     * also reported without it) */
    uint64_t flops_encoder_cca;
    /* RETRO-fit: the dense run's counted FLOPs, included in flops_counted, and the fitting
     * stage's budget (spent = the stage's counted FLOPs over it); 0 for the others */
    uint64_t flops_base;
    double fit_budget;
    /* on demand: chunks searched for training's batches and the wall time it took (part
     * of train_s); 0 / null with neighbour files */
    uint64_t retrieval_searches;
    double retrieval_s;
    char checkpoint[512];
} joule_compare_row;

/* Rows <-> JSON lines. Reading checks every field it needs and names path:line. */
char *joule_compare_row_json(const joule_compare_row *r);
int joule_compare_rows_load(const char *path, joule_compare_row **rows, int *n);
/* results.jsonl and results.csv in dir, both written atomically. */
int joule_compare_rows_save(const char *dir, const joule_compare_row *rows, int n);

/* ---- metrics on the same prompts (bench/compare_prompts.c) ----
 * The discontinuous metric (exact match of the next n bytes under greedy decoding) and
 * smooth ones on the very same prompts, so a report can tell a real jump from one the
 * metric makes (Schaeffer et al. 2023), and pass rates from samples for capability
 * prediction (GPT-4 technical report, section 3.2). docs/COMPARE.md section 3. */

struct joule_retro_data;

typedef struct {
    int prompt;        /* bytes of each prompt (prompt + n <= the model's ctx) */
    int n;             /* its target: the next n bytes of the file (1..JOULE_PROMPT_MAX_BYTES) */
    int windows;       /* prompts, evenly spaced over the file: the same for every model */
    int samples;       /* continuations sampled per prompt; 0 = no pass rate */
    float temperature; /* of the samples (> 0) */
    uint64_t seed;     /* of the samples: sample j of prompt w uses joule_prompt_seed(seed, w, j) */
} joule_prompt_opts;

typedef struct {
    uint64_t start;  /* token offset of the prompt in the file */
    int edit;        /* Levenshtein distance of the greedy continuation (n bytes) to the target */
    int tf_correct;  /* target bytes that are the argmax given the true bytes before them */
    double logprob;  /* mean ln p(target byte | true bytes before it), nats */
    int passes;      /* sampled continuations equal to the target */
} joule_prompt_score;

/* Means over the prompts. exact_match = share with edit == 0; byte_accuracy = mean
 * tf_correct / n; pass_rate = mean passes / samples (NaN without samples). */
typedef struct {
    double exact_match, byte_accuracy, logprob, edit_distance, pass_rate;
} joule_prompt_means;

/* Scores o->windows prompts of t into scores[o->windows] (caller's) and their means.
 * Teacher forcing runs batched forwards of up to m->max_batch windows (m needs
 * joule_model_alloc_train); rd (NULL unless RETRO) hands them their neighbours, and
 * greedy decoding and samples retrieve live from its database, as joule generate --db.
 * Deterministic in o->seed. */
int joule_prompt_metrics(joule_model *m, struct joule_retro_data *rd, const joule_tokens *t, const joule_prompt_opts *o,
                         joule_prompt_score *scores, joule_prompt_means *means);

/* The definitions, for tests: Levenshtein distance of a[na] and b[nb] (na, nb <=
 * JOULE_PROMPT_MAX_BYTES; unit costs); teacher-forced hits and mean ln p of target[n]
 * given logits [n][V] (row i predicts target[i]; argmax ties go to the lower byte, as
 * greedy decoding's); the seed of sample j of prompt w. */
int joule_edit_distance(const uint8_t *a, int na, const uint8_t *b, int nb);
void joule_teacher_forced(const float *logits, int V, const uint8_t *target, int n, int *correct, double *logprob);
uint64_t joule_prompt_seed(uint64_t seed, int w, int j);

/* <stem>.prompts.jsonl: one line per prompt (prompt, start, exact, edit, tf_correct,
 * logprob, passes) after a header line (n, samples, temperature). Written atomically;
 * loading checks every field and names path:line; *scores is the caller's to free. */
int joule_prompt_scores_save(const char *path, const joule_prompt_opts *o, const joule_prompt_score *s, int n);
int joule_prompt_scores_load(const char *path, joule_prompt_score **scores, int *n, int *samples);

/* ---- capability prediction (bench/compare_predict.c; GPT-4 report section 3.2) ---- */

/* Difficulty buckets: prompts ordered by rate[] descending (ties by index), cut into
 * n_buckets groups of sizes differing by at most one; bucket[i] = 0 for the easiest. */
void joule_difficulty_buckets(const double *rate, int n, int n_buckets, int *bucket);

/* y = alpha C^-k by least squares of log y on log C over the points with y > 0 and C > 0.
 * Returns the points used; alpha and k NaN when fewer than 2 or the C are all equal. */
int joule_capability_fit(const double *C, const double *y, int n, double *alpha, double *k);

/* ---- the driver (bench/compare_loop.c) ---- */

struct joule_compare_prec_row;

/* The whole grid: budgets (ascending) x archs, skipping the runs results.jsonl records as
 * finished, rerunning failed ones, saving the rows after every run. Creates out_dir (its
 * parent must exist) and pins the settings in out_dir/compare.json. JOULE_OK also when a
 * run failed (its row says why) or *interrupt stopped the grid (out->interrupted); an error
 * when the folder or its files cannot be used. out->rows is the caller's to free, also on
 * error. The callbacks are optional. */
typedef struct {
    const joule_compare_settings *settings;
    const char *data_dir, *out_dir;
    const double *budgets;
    int n_budgets;
    bool archs[JOULE_ARCH_COUNT];
    const joule_energy *meters;
    volatile int *interrupt;
    /* k of n runs (1-based, over the runs still to do), with the ETA of the remaining ones
     * in seconds (NaN before the first run ends) */
    void (*on_run_start)(void *ctx, int k, int n, const char *arch, double budget, const joule_config *c,
                         uint64_t steps, double eta_s);
    void (*on_run_end)(void *ctx, const joule_compare_row *r);
    /* RETRO's one-off set-up (database build, neighbour files): a phase and its progress */
    void (*on_retrieval)(void *ctx, const char *what, uint64_t done, uint64_t total);
    void (*on_step)(void *ctx, const joule_train_progress *p);
    void *ctx;
    /* Precisions (docs/COMPARE.md §9): after the grid, every finished run of it is quantised
     * to each of these but fp32 and measured like the run (NULL / 0: none; fp32 alone adds
     * nothing). Spread, rank 0 does this phase alone. on_precision (optional) is called
     * after each point measured or reused. */
    const joule_precision *precisions;
    int n_precisions;
    void (*on_precision)(void *ctx, const struct joule_compare_prec_row *r, bool reused);
} joule_compare_plan;

typedef struct {
    joule_compare_row *rows; /* every row of the folder, caller frees */
    int n_rows;
    int ran, skipped, failed; /* this invocation: runs done, found finished, failed (incl. earlier) */
    bool interrupted;
    /* the precision phase: points measured, found in precisions.jsonl, failed (all of them) */
    int prec_measured, prec_reused, prec_failed;
} joule_compare_outcome;

int joule_compare_grid(const joule_compare_plan *p, joule_compare_outcome *out);

/* ---- precisions (bench/compare_prec.c, docs/COMPARE.md §9) ----
 * One point per (run, precision): DIR/precisions.jsonl, rewritten atomically after each.
 * fp32 points copy the run's row (val bpb, J/query, latency); bf16 and int8 points load
 * (or first write, atomically) runs/<arch>-<budget>.<precision>.safetensors and measure
 * val bpb on the run's windows, the mean KL of its next-byte distributions from the fp32
 * model's, and energy per query with the run's benchmark settings. */
typedef struct joule_compare_prec_row {
    char arch[16];
    double budget;
    char precision[8]; /* "fp32", "bf16", "int8" */
    bool ok;
    char error[512];
    double weight_bytes;   /* weights a batch-1 decode step reads (joule_quant_decode_weight_bytes) */
    double val_bpb;        /* on the run's validation windows */
    double kl_bits;        /* mean KL(fp32 || this) per byte, in bits (0 for fp32) */
    double query_j, query_s, tokens_per_s; /* NaN when not measured; fp32's tokens_per_s is NaN */
    char query_method[96];
    char kernels[16];      /* joule_quant_kernel_name */
    double wall_s;         /* quantising, evaluating and measuring this point */
    char checkpoint[512];  /* the file measured */
} joule_compare_prec_row;

/* DIR/precisions.jsonl (a missing file is no rows; *rows caller frees) and its writer. */
int joule_compare_prec_load(const char *dir, joule_compare_prec_row **rows, int *n);
int joule_compare_prec_save(const char *dir, const joule_compare_prec_row *rows, int n);


/* ---- the report (bench/compare_report.c) ---- */

typedef struct {
    int bootstrap;    /* resamples for the intervals */
    double level;     /* interval level, e.g. 0.9 */
    uint64_t seed;
    int buckets;      /* difficulty buckets of the capability prediction (0: 3) */
} joule_compare_report_opts;

/* fit.json, report.md, loss_vs_compute.svg and energy_vs_bpb.svg in dir from the rows
 * (failed rows are listed, not fitted). Writes what the rows allow: the dense fit needs
 * three dense budgets, the backtests four. `summary` (may be NULL) receives the markdown
 * summary table (caller frees). */
int joule_compare_report(const char *dir, const joule_compare_row *rows, int n, const joule_compare_report_opts *o,
                         char **summary);

#ifdef __cplusplus
}
#endif
#endif
