/* The training loop: budgeted schedule, accumulation, clipping, AdamW, periodic
 * validation and checkpoints, a JSON-lines log of every step, exact resume. */
#include "joule/train.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/dist.h"
#include "joule/ops.h"

int joule_evaluate(joule_model *m, const joule_tokens *t, int T, int B, uint64_t max_windows,
                   joule_eval_result *r, void (*progress)(void *ctx, uint64_t done, uint64_t total),
                   void *ctx) {
    return joule_evaluate_prepared(m, t, T, B, max_windows, NULL, NULL, r, progress, ctx);
}

int joule_evaluate_prepared(joule_model *m, const joule_tokens *t, int T, int B, uint64_t max_windows,
                            joule_batch_prepare_fn prepare, void *prepare_ctx, joule_eval_result *r,
                            void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx) {
    memset(r, 0, sizeof *r);
    if (B > m->max_batch) B = m->max_batch;
    uint64_t nw = joule_eval_windows(t, T);
    if (max_windows && nw > max_windows) nw = max_windows;
    if (nw == 0)
        return joule_fail(JOULE_ERR_ARG, "%s: %" PRIu64 " tokens is too short for one window of %d",
                          t->path, t->n_tokens, T);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    uint64_t *starts = malloc((size_t)B * sizeof *starts);
    if (!in || !tg || !starts) {
        free(in);
        free(tg);
        free(starts);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    double t0 = joule_now(), sum = 0.0;
    uint64_t f0 = joule_flops_counted();
    int rc = JOULE_OK;
    for (uint64_t w = 0; w < nw && !rc; w += (uint64_t)B) {
        int b = (int)((nw - w) < (uint64_t)B ? (nw - w) : (uint64_t)B);
        for (int i = 0; i < b; i++) {
            joule_eval_window(t, T, w + (uint64_t)i, in + (size_t)i * T, tg + (size_t)i * T);
            starts[i] = (w + (uint64_t)i) * (uint64_t)T;
        }
        double loss = 0.0;
        if (prepare && (rc = prepare(prepare_ctx, m, t, starts, b, T))) break;
        rc = joule_model_forward(m, in, tg, b, T, &loss);
        sum += loss * (double)b * T; /* every target of an eval window is valid */
        if (progress && !rc) progress(ctx, w + (uint64_t)b, nw);
    }
    free(in);
    free(tg);
    free(starts);
    if (rc) return rc;
    r->windows = nw;
    r->tokens = nw * (uint64_t)T;
    r->loss = sum / (double)r->tokens;
    r->bpb = r->loss / M_LN2;
    r->flops = joule_flops_counted() - f0;
    r->wall_s = joule_now() - t0;
    return JOULE_OK;
}

uint64_t joule_train_plan_steps(const joule_train_opts *o, const joule_config *c) {
    const int T = o->seq ? o->seq : c->ctx;
    const uint64_t micros = (uint64_t)o->accum * (uint64_t)joule_train_ranks(o);
    uint64_t tokens_per_step = (uint64_t)o->batch * (uint64_t)T * micros;
    if (o->max_steps) return o->max_steps;
    if (o->max_tokens) return o->max_tokens / tokens_per_step + (o->max_tokens % tokens_per_step != 0);
    if (o->max_flops > 0) {
        double per_step = 3.0 * (double)joule_model_forward_flops(c, o->batch, T) * (double)micros;
        double s = floor(o->max_flops / per_step);
        /* converting a double past 2^64 is undefined: more than 2^53 steps is "forever" anyway */
        if (!(s < 9007199254740992.0)) s = 9007199254740992.0;
        return s >= 1 ? (uint64_t)s : 1;
    }
    return 0;
}

/* Extensions' statistics of the last training forward (MoE routing, ...) as
 * ,"name":{...} fields; taken before validation runs its own forwards. Caller frees. */
static char *ext_stats(const joule_model *m) {
    size_t cap = 1, len = 0;
    char *out = calloc(1, cap);
    for (int k = 0; k < JOULE_EXT_COUNT && out; k++) {
        const joule_ext_ops *ops = m->ext_ops[k];
        if (!ops || !ops->stats_json) continue;
        cJSON *o = cJSON_CreateObject();
        ops->stats_json(m, o);
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!s) continue;
        size_t need = len + strlen(ops->name) + strlen(s) + 8;
        char *grown = realloc(out, need);
        if (grown) {
            out = grown;
            len += (size_t)snprintf(out + len, need - len, ",\"%s\":%s", ops->name, s);
        }
        free(s);
    }
    return out;
}

static void log_step(FILE *log, const joule_train_progress *p, const char *ext, const char *comm) {
    if (!log) return;
    fprintf(log,
            "{\"step\":%" PRIu64 ",\"tokens\":%" PRIu64 ",\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,"
            "\"wall_s\":%.3f,\"flops\":%" PRIu64 ",\"flops_analytic\":%" PRIu64 ",\"tokens_per_s\":%.1f",
            p->step, p->tokens, p->loss, p->lr, p->grad_norm, p->wall_s, p->flops, p->flops_analytic,
            p->tokens_per_s);
    if (p->mfu > 0) fprintf(log, ",\"mfu\":%.4f", p->mfu);
    if (!isnan(p->val_loss))
        fprintf(log, ",\"val_loss\":%.6f,\"val_bpb\":%.6f", p->val_loss, p->val_loss / M_LN2);
    if (ext) fputs(ext, log);
    if (comm) fputs(comm, log);
    fputs("}\n", log);
    fflush(log);
}

/* A function of everything that determines the run's files (seed, trajectory options,
 * model config, training data size), so two identical runs write identical checkpoints
 * while files of different runs do not pair up. */
static void make_run_id(char *buf, size_t n, uint64_t seed, const char *traj, const joule_model *m,
                        const joule_tokens *train) {
    char *cfg = joule_config_to_json(&m->cfg);
    uint64_t h = joule_mix64(seed, train->n_tokens);
    for (const char *s = traj; s && *s; s++) h = joule_mix64(h, (unsigned char)*s);
    for (const char *s = cfg; s && *s; s++) h = joule_mix64(h, (unsigned char)*s);
    free(cfg);
    snprintf(buf, n, "%016" PRIx64, h);
}

/* Window starts of micro-batch (step, micro), the sampler's or uniform. */
static int draw_starts(const joule_train_opts *o, const joule_tokens *t, uint64_t step, int micro, int T,
                       uint64_t *starts) {
    if (o->sample_windows) return o->sample_windows(o->prepare_ctx, t, o->seed, step, micro, o->batch, T, starts);
    return joule_batch_sample_aligned(t, o->seed, step, micro, o->batch, T, 1, NULL, NULL, starts);
}

/* Analytic FLOPs of training step `step`: 3 x the forward of each micro-batch of every
 * rank (the step of a data-parallel run is all ranks' micro-batches). */
static int step_analytic(const joule_train_opts *o, const joule_config *c, const joule_tokens *t, uint64_t step,
                         int T, uint64_t *starts, uint64_t *out) {
    *out = 0;
    const int micros = o->accum * joule_train_ranks(o);
    if (!o->batch_flops) {
        *out = 3 * joule_model_forward_flops(c, o->batch, T) * (uint64_t)micros;
        return JOULE_OK;
    }
    for (int micro = 0; micro < micros; micro++) {
        uint64_t f = 0;
        int rc = draw_starts(o, t, step, micro, T, starts);
        if (!rc) rc = o->batch_flops(o->prepare_ctx, c, t, starts, o->batch, T, &f);
        if (rc) return rc;
        *out += 3 * f;
    }
    return JOULE_OK;
}

/* The schedule's length: a FLOP budget with batch_flops buys the steps whose own FLOPs fit
 * it (the batches are known before training: they depend on (seed, step, micro) alone). */
static int plan_total(const joule_train_opts *o, const joule_config *c, const joule_tokens *t, int T,
                      uint64_t *starts, uint64_t *total) {
    *total = joule_train_plan_steps(o, c);
    if (o->max_steps || o->max_tokens || !(o->max_flops > 0) || !o->batch_flops) return JOULE_OK;
    double spent = 0;
    uint64_t s = 0, f;
    for (;; s++) {
        int rc = step_analytic(o, c, t, s, T, starts, &f);
        if (rc) return rc;
        if (spent + (double)f > o->max_flops) break;
        spent += (double)f;
    }
    *total = s ? s : 1;
    return JOULE_OK;
}

/* Analytic FLOPs of the first n steps. */
static int analytic_upto(const joule_train_opts *o, const joule_config *c, const joule_tokens *t, uint64_t n, int T,
                         uint64_t *starts, uint64_t *sum) {
    *sum = 0;
    for (uint64_t s = 0; s < n; s++) {
        uint64_t f;
        int rc = step_analytic(o, c, t, s, T, starts, &f);
        if (rc) return rc;
        *sum += f;
    }
    return JOULE_OK;
}

static int draw_batch(const joule_train_opts *o, const joule_tokens *t, uint64_t step, int micro, int T, int32_t *in,
                      int32_t *tg, uint64_t *starts) {
    int rc = draw_starts(o, t, step, micro, T, starts);
    return rc ? rc : joule_batch_windows(t, starts, o->batch, T, in, tg);
}

/* One call of joule_train: its options (warm-up resolved), files, optimizer and buffers. */
typedef struct {
    joule_train_opts o;
    int T;
    uint64_t total;
    joule_tokens train, val;
    joule_adamw opt;
    joule_train_state st;
    FILE *log;
    int32_t *in, *tg;
    uint64_t *starts;
    uint64_t analytic_done; /* analytic FLOPs of the steps done */
    joule_train_progress p;
    int rank, ranks;        /* of the data-parallel step: 0 and 1 in a plain run, or without data_parallel */
    int ep;                 /* expert parallelism is on (expert_parallel over ranks > 1) */
    int stop_asked;         /* some rank was interrupted during the last step */
    int64_t fail_step;      /* test hook: fail at this step on rank fail_rank; -1 = never */
    int fail_rank;
    joule_dist_stats comm0; /* the collectives' totals when the step began */
    char comm[256];         /* the step's collectives as a log field ("" for one rank) */
} train_run;

/* The step's all-reduces and all-to-alls on this rank since comm0, as a log field. */
static void step_comm(train_run *r) {
    const joule_dist_stats *s = joule_dist_get_stats();
    r->comm[0] = '\0';
    if (r->ranks < 2) return;
    const int A = JOULE_DIST_ALLREDUCE, X = JOULE_DIST_ALLTOALL;
    snprintf(r->comm, sizeof r->comm,
             ",\"comm\":{\"allreduce_s\":%.6f,\"allreduce_bytes\":%.0f,\"alltoall_s\":%.6f,\"alltoall_bytes\":%.0f}",
             s->seconds[A] - r->comm0.seconds[A], s->bytes[A] - r->comm0.bytes[A], s->seconds[X] - r->comm0.seconds[X],
             s->bytes[X] - r->comm0.bytes[X]);
}

static int check_opts(const joule_model *m, const joule_train_opts *o, int T) {
    const joule_config *c = &m->cfg;
    if (T < 1 || T > c->ctx) return joule_fail(JOULE_ERR_ARG, "sequence length %d outside [1, %d]", T, c->ctx);
    if (o->batch < 1 || o->accum < 1) return joule_fail(JOULE_ERR_ARG, "batch and accum must be >= 1");
    if (!m->acts || m->max_batch < o->batch)
        return joule_fail(JOULE_ERR_ARG, "model buffers hold batch %d, training needs %d", m->max_batch, o->batch);
    if (!(o->max_flops >= 0 && o->max_flops <= JOULE_TRAIN_MAX_FLOPS))
        return joule_fail(JOULE_ERR_ARG, "FLOP budget %g outside [0, %g]", o->max_flops, JOULE_TRAIN_MAX_FLOPS);
    int rc = joule_adamw_opts_check(&o->adam);
    if (rc) return rc;
    if (joule_train_plan_steps(o, c) == 0) return joule_fail(JOULE_ERR_ARG, "no budget: give max steps, tokens or FLOPs");
    if (o->expert_parallel && !o->data_parallel)
        return joule_fail(JOULE_ERR_ARG, "expert parallelism needs data_parallel (the step spans the ranks)");
    if (o->expert_parallel && (o->prepare || o->sample_windows || o->batch_flops))
        return joule_fail(JOULE_ERR_ARG, "expert parallelism: not with per-batch preparation or window samplers (RETRO)");
    return JOULE_OK;
}

/* A data-parallel run's batches depend on its ranks (each draws accum micro-batches), so a
 * resume needs the number of ranks that saved the run. */
static int check_ranks(const char *path, const char *opts_json, int ranks) {
    cJSON *j = cJSON_Parse(opts_json);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "ranks");
    double saved = cJSON_IsNumber(v) ? v->valuedouble : 1;
    cJSON_Delete(j);
    if (saved == (double)ranks) return JOULE_OK;
    return joule_fail(JOULE_ERR_ARG, "%s: saved by a run of %g rank%s, resuming with %d (resume with the same mpirun -np)",
                      path, saved, saved == 1 ? "" : "s", ranks);
}

/* The optimizer and training state: the saved ones, which must have been saved with the
 * same options (traj) and seed, or fresh ones. */
static int load_or_start(train_run *r, joule_model *m, const char *traj) {
    const joule_train_opts *o = &r->o;
    if (!o->resume) {
        int rc = joule_adamw_init(&r->opt, m->n_params);
        if (rc) return rc;
        r->st.seed = o->seed;
        r->st.total_steps = r->total;
        make_run_id(r->st.run_id, sizeof r->st.run_id, o->seed, traj, m, &r->train);
        snprintf(r->st.opts_json, sizeof r->st.opts_json, "%s", traj);
        return JOULE_OK;
    }
    /* rank 0 alone finishes an interrupted save (renames), the others then read the files */
    int rc = r->rank == 0 ? joule_checkpoint_recover(o->out_path) : JOULE_OK;
    if (rc || (r->ranks > 1 && (rc = joule_dist_barrier())) ||
        (rc = joule_checkpoint_load_optim(o->out_path, m, &r->opt, &r->st)))
        return rc;
    if ((rc = check_ranks(o->out_path, r->st.opts_json, r->ranks))) return rc;
    if (strcmp(r->st.opts_json, traj) != 0)
        return joule_fail(JOULE_ERR_ARG, "%s: cannot resume with different options (saved %s, now %s)", o->out_path,
                          r->st.opts_json, traj);
    if (r->st.seed != o->seed)
        return joule_fail(JOULE_ERR_ARG, "%s: saved with seed %" PRIu64 ", resuming with %" PRIu64, o->out_path,
                          r->st.seed, o->seed);
    return JOULE_OK;
}

/* Everything before the first step: the token files, the schedule, the state (fresh or
 * saved), the log (a resume drops the lines of steps after the checkpoint) and buffers. */
static int run_open(train_run *r, joule_model *m) {
    const joule_train_opts *o = &r->o;
    const joule_config *c = &m->cfg;
    int frozen = 0;
    for (int i = 0; i < m->n_tensors; i++) frozen += m->tensors[i].frozen;
    /* expert parallelism draws every rank's windows of a micro-batch */
    r->starts = malloc((size_t)o->batch * (size_t)(r->ep ? r->ranks : 1) * sizeof *r->starts);
    if (!r->starts) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = joule_tokens_open(&r->train, o->train_path);
    if (rc || (rc = plan_total(o, c, &r->train, r->T, r->starts, &r->total))) return rc;
    char *traj = joule_train_opts_to_json(o, r->T, r->total, frozen);
    if (!traj) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (o->val_path) rc = joule_tokens_open(&r->val, o->val_path);
    if (!rc) rc = load_or_start(r, m, traj);
    free(traj);
    if (rc) return rc;
    double wall0 = 0;
    /* only rank 0 writes the log (and the checkpoints) */
    const char *log_path = r->rank == 0 ? o->log_path : NULL;
    if (o->resume && log_path && (rc = joule_train_log_resume(log_path, r->st.step, &wall0))) return rc;
    if (log_path && !(r->log = fopen(log_path, o->resume ? "a" : "w")))
        return joule_fail(JOULE_ERR_IO, "%s: cannot open log for writing", o->log_path);
    r->in = malloc((size_t)o->batch * r->T * sizeof *r->in);
    r->tg = malloc((size_t)o->batch * r->T * sizeof *r->tg);
    if (!r->in || !r->tg) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if ((rc = analytic_upto(o, c, &r->train, r->st.step, r->T, r->starts, &r->analytic_done))) return rc;
    joule_train_progress *p = &r->p;
    p->val_loss = NAN;
    p->step = r->st.step;
    p->total_steps = r->total;
    p->tokens = r->st.tokens;
    p->flops = r->st.flops;
    p->flops_analytic = r->analytic_done;
    p->wall_s = wall0;
    return r->ep ? joule_train_expert_parallel(m, r->ranks) : JOULE_OK;
}

static void run_close(train_run *r, joule_model *m) {
    joule_model_set_training(m, false);
    if (r->ep) joule_train_expert_parallel(m, 1); /* off: later forwards are this process's */
    if (r->log) fclose(r->log);
    free(r->in);
    free(r->tg);
    free(r->starts);
    joule_adamw_free(&r->opt);
    joule_tokens_close(&r->train);
    if (r->o.val_path) joule_tokens_close(&r->val);
}

/* Buckets of the floats [lo, hi) of the gradient arena. */
static int allreduce_range(joule_model *m, size_t lo, size_t hi) {
    for (size_t at = lo; at < hi; at += JOULE_TRAIN_GRAD_BUCKET) {
        size_t n = hi - at < JOULE_TRAIN_GRAD_BUCKET ? hi - at : JOULE_TRAIN_GRAD_BUCKET;
        int rc = joule_dist_allreduce_sum_f32(m->grads + at, n);
        if (rc) return rc;
    }
    return JOULE_OK;
}

int joule_train_allreduce_grads(joule_model *m) {
    /* runs of adjacent shared tensors; without expert parallelism, the whole arena */
    size_t lo = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (t->owner < 0) continue;
        int rc = allreduce_range(m, lo, t->offset);
        if (rc) return rc;
        lo = t->offset + t->numel;
    }
    return allreduce_range(m, lo, m->n_params);
}

/* Expert parallelism: the N x batch windows of micro-batch `micro`, as one process with
 * batch N x batch draws them; this rank's are windows rank*batch .. rank*batch+batch-1. */
static int draw_ep_batch(train_run *r, int micro) {
    const joule_train_opts *o = &r->o;
    int rc = joule_batch_sample_aligned(&r->train, o->seed, r->st.step, micro, o->batch * r->ranks, r->T, 1, NULL,
                                        NULL, r->starts);
    return rc ? rc
              : joule_batch_windows(&r->train, r->starts + (size_t)r->rank * (size_t)o->batch, o->batch, r->T, r->in,
                                    r->tg);
}

/* The micro-batches of this rank: global micro-batches rank*accum .. rank*accum+accum-1 of
 * the step, so N ranks see exactly the batches of one process with accumulation N x accum;
 * gradients scaled by 1 / (N x accum) and summed over ranks. */
static int run_micros(train_run *r, joule_model *m, double *loss_sum) {
    const joule_train_opts *o = &r->o;
    const int T = r->T, micros = o->accum * r->ranks;
    for (int a = 0; a < o->accum; a++) {
        /* expert parallelism: every rank takes its rows of the step's micro-batch a */
        const int micro = r->ep ? a : r->rank * o->accum + a;
        double loss;
        /* Random routing choices depend on (seed, step, micro) only, so resume is exact. */
        m->noise_seed = joule_mix64(joule_mix64(joule_mix64(o->seed, r->st.step), (uint64_t)micro), 0x6d6f65);
        int rc = r->ep ? draw_ep_batch(r, micro) : draw_batch(o, &r->train, r->st.step, micro, T, r->in, r->tg, r->starts);
        if (rc || (o->prepare && (rc = o->prepare(o->prepare_ctx, m, &r->train, r->starts, o->batch, T))) ||
            (rc = joule_model_forward(m, r->in, r->tg, o->batch, T, &loss)) ||
            (rc = joule_model_backward(m, 1.0f / (float)micros)))
            return rc;
        *loss_sum += loss;
    }
    if (r->fail_step == (int64_t)r->st.step && r->fail_rank == joule_dist_rank())
        return joule_fail(JOULE_ERR_RUNTIME, "step %" PRIu64 ": failing as JOULE_TEST_FAIL_RANK asks", r->st.step);
    return JOULE_OK;
}

/* One optimizer step: accumulate the micro-batches' gradients (all ranks'), clip, update;
 * the progress of the step in r->p (its validation loss still NaN). analytic: the step's
 * analytic FLOPs. */
static int run_step(train_run *r, joule_model *m, uint64_t analytic) {
    const joule_train_opts *o = &r->o;
    const int T = r->T, micros = o->accum * r->ranks;
    double t0 = joule_now();
    uint64_t f0 = joule_flops_counted();
    r->comm0 = *joule_dist_get_stats();
    joule_model_zero_grad(m);
    joule_model_set_training(m, true);
    /* loss, counted FLOPs and "interrupted" of this rank, summed over ranks */
    double sums[3] = {0, 0, 0};
    int rc = run_micros(r, m, &sums[0]);
    if (rc) return rc;
    sums[1] = (double)(joule_flops_counted() - f0);
    sums[2] = o->interrupt && *o->interrupt;
    if (r->ranks > 1 && ((rc = joule_train_allreduce_grads(m)) || (rc = joule_dist_allreduce_sum_f64(sums, 3))))
        return rc;
    r->stop_asked = sums[2] > 0;
    for (int i = 0; i < m->n_tensors; i++) /* frozen tensors neither clip nor move */
        if (m->tensors[i].frozen) memset(joule_model_grad(m, i), 0, m->tensors[i].numel * sizeof(float));
    double norm = r->ep ? 0 : joule_grad_norm(m);
    if (r->ep && (rc = joule_train_grad_norm_owned(m, &norm))) return rc;
    if (!isfinite(norm))
        return joule_fail(JOULE_ERR_RUNTIME, "step %" PRIu64 ": gradient norm is %g (diverged)", r->st.step, norm);
    float clip = (o->adam.grad_clip > 0 && norm > o->adam.grad_clip) ? (float)(o->adam.grad_clip / norm) : 1.0f;
    float lr = joule_lr_at(&o->adam, r->st.step, r->total);
    joule_adamw_update(&r->opt, m, &o->adam, lr, clip);
    double dt = joule_now() - t0;
    step_comm(r);

    joule_train_progress *p = &r->p;
    const uint64_t step_tokens = (uint64_t)o->batch * T * (uint64_t)micros;
    r->st.step++;
    r->st.tokens += step_tokens;
    r->st.flops += (uint64_t)sums[1];
    p->step = r->st.step;
    p->tokens = r->st.tokens;
    p->flops = r->st.flops;
    r->analytic_done += analytic;
    p->flops_analytic = r->analytic_done;
    p->loss = sums[0] / micros;
    p->lr = lr;
    p->grad_norm = norm;
    p->wall_s += dt;
    p->run_wall_s += dt;
    p->tokens_per_s = (double)step_tokens / dt;
    p->mfu = o->peak_flops > 0 ? (double)analytic / dt / o->peak_flops / r->ranks : 0;
    p->val_loss = NAN;
    return JOULE_OK;
}

/* After a step: validation when due, the log line, the callback, a save when due. */
static int after_step(train_run *r, joule_model *m, bool finished, bool stopping) {
    const joule_train_opts *o = &r->o;
    joule_model_set_training(m, false);
    char *stats = r->log ? ext_stats(m) : NULL;
    const bool validate = o->val_path && ((o->eval_every && r->st.step % (uint64_t)o->eval_every == 0) || finished);
    const bool save = stopping || (o->save_every && r->st.step % (uint64_t)o->save_every == 0);
    /* expert parallelism: every expert to every rank first (their moments too for a save) */
    int rc = r->ep && (validate || save) ? joule_train_sync_owned(m, save ? &r->opt : NULL) : JOULE_OK;
    if (rc) {
        free(stats);
        return rc;
    }
    /* rank 0 validates, logs and saves; the others go on to the next step's all-reduce */
    if (r->rank == 0 && validate) {
        joule_eval_result er;
        rc = joule_evaluate_prepared(m, &r->val, r->T, o->batch, o->eval_windows, o->prepare, o->prepare_ctx, &er,
                                     NULL, NULL);
        if (rc) {
            free(stats);
            return rc;
        }
        r->p.val_loss = er.loss;
    }
    log_step(r->log, &r->p, stats, r->comm);
    free(stats);
    if (o->on_step) o->on_step(o->ctx, &r->p);
    if (r->rank == 0 && save) return joule_checkpoint_save(m, o->out_path, &r->opt, &r->st);
    return JOULE_OK;
}

/* Test hook: JOULE_TEST_FAIL_RANK=R:step=S makes rank R fail in step S (after its
 * backward, before the all-reduce), to test that a failing rank ends the job. */
static int fail_hook(train_run *r) {
    r->fail_step = -1;
    const char *s = getenv("JOULE_TEST_FAIL_RANK");
    if (!s || !*s) return JOULE_OK;
    int rank, n = 0;
    long long step;
    if (sscanf(s, "%d:step=%lld%n", &rank, &step, &n) != 2 || s[n] || rank < 0 || step < 0)
        return joule_fail(JOULE_ERR_ARG, "JOULE_TEST_FAIL_RANK: '%s' is not RANK:step=STEP", s);
    r->fail_rank = rank;
    r->fail_step = step;
    return JOULE_OK;
}

int joule_train(joule_model *m, const joule_train_opts *o, joule_train_progress *last) {
    train_run r;
    memset(&r, 0, sizeof r);
    r.o = *o;
    r.o.adam.warmup_steps = joule_train_warmup_steps(o, &m->cfg);
    r.T = o->seq ? o->seq : m->cfg.ctx;
    r.ranks = joule_train_ranks(o);
    r.rank = r.ranks > 1 ? joule_dist_rank() : 0;
    r.ep = o->expert_parallel && r.ranks > 1;
    int rc = check_opts(m, &r.o, r.T);
    if (rc || (rc = fail_hook(&r))) return rc;
    rc = run_open(&r, m);
    while (!rc && r.st.step < r.total) {
        uint64_t analytic;
        if ((rc = step_analytic(&r.o, &m->cfg, &r.train, r.st.step, r.T, r.starts, &analytic)) ||
            (rc = run_step(&r, m, analytic)))
            break;
        bool finished = r.st.step == r.total;
        bool stopping =
            finished || (o->stop_after && r.st.step >= o->stop_after) || r.stop_asked;
        if ((rc = after_step(&r, m, finished, stopping)) || stopping) break;
    }
    /* expert parallelism: the caller gets the whole model on every rank */
    if (!rc && r.ep) rc = joule_train_sync_owned(m, NULL);
    if (!rc && last) *last = r.p;
    run_close(&r, m);
    return rc;
}
