/* joule/bench_dist.h — what data and expert parallelism cost a training step
 * (bench/bench_dist.c).
 *
 * One measurement on the calling ranks: the reference-style dense model (or its MoE
 * version: 8 experts of d_ff / 2, top-2, every other layer, capacity factor 1.25), each rank
 * `accum` micro-batches of random tokens (different per rank and micro-batch), gradients
 * summed with joule_train_allreduce_grads (the training loop's own buckets), the global
 * norm, AdamW. Run by one process it is the single-process side of the comparison (with
 * accum = the ranks it stands for); under mpirun every rank must call it. */
#ifndef JOULE_BENCH_DIST_H
#define JOULE_BENCH_DIST_H

#include "joule/bench.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int ranks, accum, threads;
    double tokens_per_step;   /* ranks x accum x batch x ctx */
    double step_s;            /* median over steps of the slowest rank's whole step */
    double allreduce_s;       /* median over steps of the slowest rank's gradient all-reduce,
                                 timed after a barrier: the transfer alone */
    double skew_s;            /* median over steps of the longest wait at that barrier for
                                 the other ranks' backward (load imbalance) */
    double allreduce_share;   /* median over steps of allreduce / step (slowest rank's each) */
    double grad_bytes;        /* gradient bytes each rank all-reduces per step (4 x params) */
    double sent_bytes;        /* per rank per step by a ring all-reduce: 2 (N-1)/N x grad_bytes */
    double params;
    /* the MoE layers' all-to-alls (expert parallelism; 0 otherwise): median over steps of
     * the slowest rank's seconds inside them (their waits for other ranks included) and of
     * that over its step; bytes this rank sent to others per step (rows, both directions,
     * forward and backward, and the row counts), the largest over ranks */
    double alltoall_s, alltoall_share, alltoall_bytes;
} joule_bench_dist_result;

typedef enum {
    JOULE_BENCH_DIST_DENSE = 0, /* the dense model, data parallel */
    JOULE_BENCH_DIST_MOE = 1,   /* its MoE version, data parallel (every rank all experts) */
    JOULE_BENCH_DIST_EP = 2     /* its MoE version, expert parallel (joule_train_expert_parallel) */
} joule_bench_dist_mode;

/* o: the model, batch (per micro-batch), steps and warm-up (o->window is ignored). */
int joule_bench_dist(const joule_bench_model_opts *o, int accum, joule_bench_dist_mode mode,
                     joule_bench_dist_result *r);

#ifdef __cplusplus
}
#endif
#endif
