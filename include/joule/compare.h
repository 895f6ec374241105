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

#include "joule/energy.h"
#include "joule/model.h"
#include "joule/train.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_COMPARE_MAX_BUDGETS 32
#define JOULE_COMPARE_EM_BYTES 8 /* exact match of the next 8 bytes */

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
    int em_windows;        /* exact-match prompts */
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
    double exact_match;  /* fraction of em_windows prompts whose next 8 bytes are matched */
    uint64_t em_windows;
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

/* ---- the discontinuous metric (bench/compare_metric.c) ---- */

/* Greedy decoding: for `windows` prompts of `prompt` bytes evenly spaced over the token
 * file, decode JOULE_COMPARE_EM_BYTES bytes with the KV cache and count a hit when all of
 * them equal the file's next bytes. *rate = hits / windows. A RETRO model retrieves from
 * db (its database) for every completed chunk, as in generation; db is NULL otherwise. */
struct joule_retro_db;
int joule_exact_match(const joule_model *m, struct joule_retro_db *db, const char *val_path, int prompt, int windows,
                      double *rate, uint64_t *hits);

/* ---- the driver (bench/compare_loop.c) ---- */

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
} joule_compare_plan;

typedef struct {
    joule_compare_row *rows; /* every row of the folder, caller frees */
    int n_rows;
    int ran, skipped, failed; /* this invocation: runs done, found finished, failed (incl. earlier) */
    bool interrupted;
} joule_compare_outcome;

int joule_compare_grid(const joule_compare_plan *p, joule_compare_outcome *out);


/* ---- the report (bench/compare_report.c) ---- */

typedef struct {
    int bootstrap;    /* resamples for the intervals */
    double level;     /* interval level, e.g. 0.9 */
    uint64_t seed;
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
