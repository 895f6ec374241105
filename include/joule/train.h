/* joule/train.h — the training loop and evaluation.
 *
 * A step: zero gradients; for each of `accum` micro-batches, forward + backward (gradients
 * accumulate scaled by 1/(accum x ranks)); the gradients summed over ranks (MPI_Allreduce
 * in buckets, joule_train_allreduce_grads; nothing in a plain run); global-norm clipping;
 * one AdamW update. Batches come from (seed, step, micro) alone, so a resumed run sees
 * exactly the batches it would have seen.
 *
 * Data parallel (`mpirun -np N`, joule/dist.h, with opts.data_parallel set): a step is
 * N x accum micro-batches, rank r
 * drawing micro-batches r*accum .. r*accum+accum-1, so N ranks see exactly the batches of
 * one process with accum N x accum; every rank applies the same update to the same
 * weights. Rank 0 alone validates and writes the log and the checkpoints; the step's
 * loss, counted FLOPs and tokens are over all ranks (its extension statistics, e.g. MoE
 * routing, are rank 0's last micro-batch's; its "comm" field holds rank 0's all-reduce and
 * all-to-all seconds and bytes of the step). The saved options record "ranks" (when
 * N > 1) and a resume with another N is refused. Test hook: JOULE_TEST_FAIL_RANK=R:step=S
 * in the environment makes rank R fail in step S (tests/test_dist_train.c).
 *
 * Expert parallel (opts.expert_parallel too, MoE): see the field; the routing statistics
 * are then the global micro-batch's, and the experts are synced to every rank
 * (joule_train_sync_owned) before each validation and save and at the end of the call.
 */
#ifndef JOULE_TRAIN_H
#define JOULE_TRAIN_H

#include <stdint.h>

#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/model.h"
#include "joule/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint64_t step, total_steps;
    uint64_t tokens;
    uint64_t flops;          /* counted */
    uint64_t flops_analytic; /* 3 x the analytic forward of each micro-batch (batch_flops, or
                              * joule_model_forward_flops) */
    double loss, lr, grad_norm;
    double wall_s;           /* steps' wall time since the run began (resumes continue the log's) */
    double run_wall_s;       /* steps' wall time in this call of joule_train */
    double tokens_per_s;     /* of the last step */
    double val_loss;         /* NaN when not evaluated at this step */
    double mfu;              /* analytic FLOPs/s of the last step over opts.peak_flops; 0 without a peak */
} joule_train_progress;

/* Where the B windows of micro-batch (step, micro) of t start (each needs T + 1 tokens from
 * there): RETRO draws them on its chunk grid. Must depend only on (seed, step, micro), so a
 * resumed run sees the same batches. */
typedef int (*joule_window_sampler_fn)(void *ctx, const joule_tokens *t, uint64_t seed, uint64_t step, int micro,
                                       int B, int T, uint64_t *starts);

/* Analytic forward FLOPs of the B windows of T tokens at starts, for models whose work
 * depends on the data (RETRO: the chunks the windows read). */
typedef int (*joule_batch_flops_fn)(void *ctx, const joule_config *c, const joule_tokens *t, const uint64_t *starts,
                                    int B, int T, uint64_t *flops);

/* Per-batch preparation (RETRO hands the windows' neighbours to the model here): called
 * before each training and validation forward with the token file and the B window start
 * offsets of the batch, each window T tokens. */
typedef int (*joule_batch_prepare_fn)(void *ctx, joule_model *m, const joule_tokens *t, const uint64_t *starts,
                                      int B, int T);

typedef struct {
    const char *train_path; /* token file (.bin) */
    const char *val_path;   /* may be NULL: no validation */
    const char *out_path;   /* checkpoint to write (and to resume from) */
    const char *log_path;   /* JSON-lines step log; NULL for none */
    int resume;             /* continue from out_path and its optimizer file */
    /* 1: the step spans every rank of the MPI job (joule_train_ranks); 0 (the default):
     * this process alone, even under mpirun (callers that train different runs on
     * different ranks, such as a spread comparison, keep 0) */
    int data_parallel;
    /* 1 (with data_parallel, under mpirun with N > 1 ranks): expert parallelism for an MoE
     * model. Each rank holds all non-expert parameters (all-reduced as in data parallel)
     * and E/N experts of each MoE layer (expert e on rank e / (E/N); their gradients are not
     * all-reduced); routed rows go to their experts' ranks by all-to-all. Rank r's
     * micro-batch a is rows r*batch .. r*batch+batch-1 of micro-batch a of batch N x batch,
     * so a step equals one process with --batch N x batch (docs/SCALING.md). Needs E % N
     * == 0 and no window sampler or batch preparation (RETRO); with N == 1 it does nothing. */
    int expert_parallel;
    int batch, accum, seq;  /* seq <= ctx; 0 means ctx */
    uint64_t seed;
    /* Budget: the first non-zero of max_steps, max_tokens, max_flops fixes the schedule. */
    uint64_t max_steps;
    uint64_t max_tokens;
    double max_flops;
    uint64_t stop_after;    /* stop (saving) once this many steps are done; 0 = run out */
    joule_adamw_opts adam;
    int eval_every;         /* steps; 0 = only at the end */
    uint64_t eval_windows;  /* validation windows per evaluation; 0 = all */
    int save_every;         /* steps; 0 = only at the end */
    volatile int *interrupt; /* when set non-zero, save and stop after the current step */
    double peak_flops;      /* FLOP/s the step log's "mfu" is measured against; 0 = no mfu */
    void (*on_step)(void *ctx, const joule_train_progress *p);
    void *ctx;
    joule_batch_prepare_fn prepare; /* may be NULL */
    /* May be NULL: joule_batch_sample's uniform windows. Its name goes into the options a
     * resume must match. */
    joule_window_sampler_fn sample_windows;
    const char *windows_name;
    /* May be NULL: every step costs 3 x joule_model_forward_flops(batch, seq) per micro-batch.
     * When set, a FLOP budget buys the steps whose batches' FLOPs fit it, each step's own. */
    joule_batch_flops_fn batch_flops;
    void *prepare_ctx;              /* passed to prepare and sample_windows */
} joule_train_opts;

/* The defaults of every training option, the one place they are written (the command's
 * help quotes them): batch 8, accum 1, seq 0 (the model's ctx), seed 1, AdamW as
 * joule_adamw_defaults except the warm-up (JOULE_TRAIN_WARMUP_AUTO), validation every 100
 * steps on 64 windows; no budget, no paths, no hooks. */
void joule_train_opts_init(joule_train_opts *o);

/* adam.warmup_steps meaning min(100, planned steps / 5): joule_train_warmup_steps. */
#define JOULE_TRAIN_WARMUP_AUTO (-1)

/* The warm-up o asks for on a model of config c: adam.warmup_steps, or with
 * JOULE_TRAIN_WARMUP_AUTO min(100, joule_train_plan_steps / 5). */
int joule_train_warmup_steps(const joule_train_opts *o, const joule_config *c);

/* The options a run saves in its checkpoint ("train_opts" of the optimizer file): those
 * that shape the trajectory, which a resume must repeat. seq is the resolved length,
 * total_steps the schedule's, frozen the count of frozen tensors (written when non-zero),
 * and the window sampler's name when one is set. NULL when out of memory; caller frees. */
char *joule_train_opts_to_json(const joule_train_opts *o, int seq, uint64_t total_steps, int frozen);

/* Bits of `given` for joule_train_opts_resume: the options the caller set itself. */
enum {
    JOULE_TRAIN_GIVEN_BATCH = 1u << 0,
    JOULE_TRAIN_GIVEN_ACCUM = 1u << 1,
    JOULE_TRAIN_GIVEN_SEQ = 1u << 2,
    JOULE_TRAIN_GIVEN_LR = 1u << 3,
    JOULE_TRAIN_GIVEN_MIN_LR = 1u << 4,
    JOULE_TRAIN_GIVEN_WEIGHT_DECAY = 1u << 5,
    JOULE_TRAIN_GIVEN_GRAD_CLIP = 1u << 6,
    JOULE_TRAIN_GIVEN_WARMUP = 1u << 7,
    JOULE_TRAIN_GIVEN_SEED = 1u << 8,
    JOULE_TRAIN_GIVEN_BUDGET = 1u << 9, /* any of max_steps, max_tokens, max_flops */
};

/* The resume rules, in one place: the options of o that `given` does not name take the
 * values of the run saved at path (st as joule_checkpoint_load filled it). From
 * st->opts_json: batch, accum, seq, lr, weight_decay, grad_clip, warmup_steps; min_lr
 * unless lr or min_lr is given (a new peak brings its own floor); AdamW's betas and eps
 * always (no option sets them). The seed comes from st->seed, and without a budget
 * max_steps from st->total_steps. A saved option that is absent, or an opts_json that is
 * not JSON, leaves the field as it is (joule_train then refuses the mismatch). Checkpoint
 * metadata is untrusted: JOULE_ERR_ARG, naming path and the option, when a saved value is
 * not a number in the range its option accepts (or not whole, for a count); o may then be
 * partly filled. Nothing of st is kept. */
int joule_train_opts_resume(joule_train_opts *o, const joule_train_state *st, unsigned given, const char *path);

/* Largest FLOP budget joule_train accepts (1e30: far past any run, and finite). */
#define JOULE_TRAIN_MAX_FLOPS 1e30

/* Optimizer steps the budget of o buys for a model of config c (the schedule length
 * joule_train uses without batch_flops; with it, a FLOP budget is planned over the training
 * file's batches, step by step); 0 when o gives no budget. */
uint64_t joule_train_plan_steps(const joule_train_opts *o, const joule_config *c);

/* The ranks a step of o spans: joule_dist_size() when o->data_parallel, else 1. */
int joule_train_ranks(const joule_train_opts *o);

/* Floats per MPI_Allreduce of the gradients (4 MiB): several calls for a large model, so
 * no single call is huge; measured in docs/SCALING.md. */
#define JOULE_TRAIN_GRAD_BUCKET ((size_t)1 << 20)

/* Sums m->grads over the ranks in buckets of JOULE_TRAIN_GRAD_BUCKET floats (a no-op
 * without mpirun), leaving out tensors held by one rank (expert parallelism). Every rank
 * must call it with the same model. */
int joule_train_allreduce_grads(joule_model *m);

/* Expert parallelism on m over `ranks` ranks of the MPI job (its extensions'
 * expert_parallel hooks; ranks 1 turns it off). JOULE_ERR_ARG when m has no experts or E
 * does not split over the ranks. While on, training forwards (joule_model_set_training
 * true) are collective and use each expert on its owner; a forward with training off runs
 * locally on this rank's copies, stale for other ranks' experts until
 * joule_train_sync_owned. joule_train turns it on and off itself; exposed for tests and
 * bench dist. */
int joule_train_expert_parallel(joule_model *m, int ranks);
/* Every tensor held by one rank (joule_param_info.owner >= 0) broadcast from its owner to
 * all ranks, with its AdamW moments when opt is non-NULL. Collective. */
int joule_train_sync_owned(joule_model *m, joule_adamw *opt);
/* Global gradient norm under expert parallelism, after the all-reduce of the shared
 * gradients: shared ones once, each rank's owned ones summed over ranks. Collective. */
int joule_train_grad_norm_owned(const joule_model *m, double *norm);

/* Trains m (already initialised or loaded from out_path when resuming) under o. m must
 * have training buffers (joule_model_alloc_train with batch >= o->batch). On return *last
 * holds the final progress. */
int joule_train(joule_model *m, const joule_train_opts *o, joule_train_progress *last);

/* On resume at `step`: the cumulative wall_s of the log's line for that step (0 when the
 * log or the line is missing), and the log rewritten without the lines of later steps (a
 * killed run may have logged steps after its last checkpoint). */
int joule_train_log_resume(const char *log_path, uint64_t step, double *wall_s);

typedef struct {
    double loss;     /* mean next-token cross-entropy in nats */
    double bpb;      /* loss / ln 2 */
    uint64_t tokens; /* targets scored */
    uint64_t windows;
    uint64_t flops;  /* counted */
    double wall_s;
} joule_eval_result;

/* Mean loss over consecutive non-overlapping windows of T tokens (inputs tok[wT..wT+T-1],
 * targets shifted by one), B windows per forward, at most max_windows (0 = all).
 * progress (may be NULL) is called after every forward with windows done and total. */
int joule_evaluate(joule_model *m, const joule_tokens *t, int T, int B, uint64_t max_windows,
                   joule_eval_result *r, void (*progress)(void *ctx, uint64_t done, uint64_t total),
                   void *ctx);
/* The same, calling prepare (when non-NULL) before every forward. */
int joule_evaluate_prepared(joule_model *m, const joule_tokens *t, int T, int B, uint64_t max_windows,
                            joule_batch_prepare_fn prepare, void *prepare_ctx, joule_eval_result *r,
                            void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx);

#ifdef __cplusplus
}
#endif
#endif
