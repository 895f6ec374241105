/* The training loop: budgeted schedule, accumulation, clipping, AdamW, periodic
 * validation and checkpoints, a JSON-lines log of every step, exact resume. */
#include "joule/train.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"

void joule_train_opts_init(joule_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch = 8;
    o->accum = 1;
    o->seed = 1;
    o->adam = joule_adamw_defaults();
    o->eval_windows = 64;
}

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

/* Options that shape the trajectory; a resume must use the same ones. */
static char *trajectory_json(const joule_train_opts *o, int T, uint64_t total_steps, int frozen) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "batch", o->batch);
    cJSON_AddNumberToObject(j, "accum", o->accum);
    cJSON_AddNumberToObject(j, "seq", T);
    cJSON_AddNumberToObject(j, "total_steps", (double)total_steps);
    cJSON_AddNumberToObject(j, "lr", joule_float_for_json(o->adam.lr));
    cJSON_AddNumberToObject(j, "min_lr", joule_float_for_json(o->adam.min_lr));
    cJSON_AddNumberToObject(j, "beta1", joule_float_for_json(o->adam.beta1));
    cJSON_AddNumberToObject(j, "beta2", joule_float_for_json(o->adam.beta2));
    cJSON_AddNumberToObject(j, "eps", joule_float_for_json(o->adam.eps));
    cJSON_AddNumberToObject(j, "weight_decay", joule_float_for_json(o->adam.weight_decay));
    cJSON_AddNumberToObject(j, "grad_clip", joule_float_for_json(o->adam.grad_clip));
    cJSON_AddNumberToObject(j, "warmup_steps", o->adam.warmup_steps);
    if (o->sample_windows) cJSON_AddStringToObject(j, "windows", o->windows_name ? o->windows_name : "custom");
    if (frozen) cJSON_AddNumberToObject(j, "frozen_tensors", frozen);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

uint64_t joule_train_plan_steps(const joule_train_opts *o, const joule_config *c) {
    const int T = o->seq ? o->seq : c->ctx;
    uint64_t tokens_per_step = (uint64_t)o->batch * (uint64_t)T * (uint64_t)o->accum;
    if (o->max_steps) return o->max_steps;
    if (o->max_tokens) return o->max_tokens / tokens_per_step + (o->max_tokens % tokens_per_step != 0);
    if (o->max_flops > 0) {
        double per_step = 3.0 * (double)joule_model_forward_flops(c, o->batch, T) * o->accum;
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

static void log_step(FILE *log, const joule_train_progress *p, const char *ext) {
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

/* Analytic FLOPs of training step `step`: 3 x the forward of each micro-batch. */
static int step_analytic(const joule_train_opts *o, const joule_config *c, const joule_tokens *t, uint64_t step,
                         int T, uint64_t *starts, uint64_t *out) {
    *out = 0;
    if (!o->batch_flops) {
        *out = 3 * joule_model_forward_flops(c, o->batch, T) * (uint64_t)o->accum;
        return JOULE_OK;
    }
    for (int micro = 0; micro < o->accum; micro++) {
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

int joule_train(joule_model *m, const joule_train_opts *o, joule_train_progress *last) {
    const joule_config *c = &m->cfg;
    const int T = o->seq ? o->seq : c->ctx;
    if (T < 1 || T > c->ctx) return joule_fail(JOULE_ERR_ARG, "sequence length %d outside [1, %d]", T, c->ctx);
    if (o->batch < 1 || o->accum < 1) return joule_fail(JOULE_ERR_ARG, "batch and accum must be >= 1");
    if (!m->acts || m->max_batch < o->batch)
        return joule_fail(JOULE_ERR_ARG, "model buffers hold batch %d, training needs %d", m->max_batch, o->batch);
    if (!(o->max_flops >= 0 && o->max_flops <= JOULE_TRAIN_MAX_FLOPS))
        return joule_fail(JOULE_ERR_ARG, "FLOP budget %g outside [0, %g]", o->max_flops, JOULE_TRAIN_MAX_FLOPS);
    int rc = joule_adamw_opts_check(&o->adam);
    if (rc) return rc;
    if (joule_train_plan_steps(o, c) == 0) return joule_fail(JOULE_ERR_ARG, "no budget: give max steps, tokens or FLOPs");

    uint64_t total = 0;
    joule_tokens train = {0}, val = {0};
    joule_adamw opt = {0};
    joule_train_state st;
    memset(&st, 0, sizeof st);
    FILE *log = NULL;
    int32_t *in = NULL, *tg = NULL;
    uint64_t *starts = NULL;
    int frozen = 0;
    for (int i = 0; i < m->n_tensors; i++) frozen += m->tensors[i].frozen;
    char *traj = NULL;
    starts = malloc((size_t)o->batch * sizeof *starts);
    if (!starts) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    rc = joule_tokens_open(&train, o->train_path);
    if (rc || (rc = plan_total(o, c, &train, T, starts, &total))) goto done;
    if (!(traj = trajectory_json(o, T, total, frozen))) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (o->val_path && (rc = joule_tokens_open(&val, o->val_path))) goto done;

    if (o->resume) {
        if ((rc = joule_checkpoint_recover(o->out_path)) ||
            (rc = joule_checkpoint_load_optim(o->out_path, m, &opt, &st)))
            goto done;
        if (strcmp(st.opts_json, traj) != 0) {
            rc = joule_fail(JOULE_ERR_ARG, "%s: cannot resume with different options (saved %s, now %s)",
                            o->out_path, st.opts_json, traj);
            goto done;
        }
        if (st.seed != o->seed) {
            rc = joule_fail(JOULE_ERR_ARG, "%s: saved with seed %" PRIu64 ", resuming with %" PRIu64,
                            o->out_path, st.seed, o->seed);
            goto done;
        }
    } else {
        if ((rc = joule_adamw_init(&opt, m->n_params))) goto done;
        st.seed = o->seed;
        st.total_steps = total;
        make_run_id(st.run_id, sizeof st.run_id, o->seed, traj, m, &train);
        snprintf(st.opts_json, sizeof st.opts_json, "%s", traj);
    }
    double wall0 = 0;
    if (o->resume && o->log_path && (rc = joule_train_log_resume(o->log_path, st.step, &wall0))) goto done;
    if (o->log_path) {
        log = fopen(o->log_path, o->resume ? "a" : "w");
        if (!log) {
            rc = joule_fail(JOULE_ERR_IO, "%s: cannot open log for writing", o->log_path);
            goto done;
        }
    }
    in = malloc((size_t)o->batch * T * sizeof *in);
    tg = malloc((size_t)o->batch * T * sizeof *tg);
    if (!in || !tg) {
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        goto done;
    }

    uint64_t analytic_done = 0, analytic_step = 0;
    if ((rc = analytic_upto(o, c, &train, st.step, T, starts, &analytic_done))) goto done;
    joule_train_progress p;
    memset(&p, 0, sizeof p);
    p.val_loss = NAN;
    p.step = st.step;
    p.total_steps = total;
    p.tokens = st.tokens;
    p.flops = st.flops;
    p.flops_analytic = analytic_done;
    p.wall_s = wall0;
    while (st.step < total) {
        if ((rc = step_analytic(o, c, &train, st.step, T, starts, &analytic_step))) goto done;
        double t0 = joule_now();
        uint64_t f0 = joule_flops_counted();
        joule_model_zero_grad(m);
        joule_model_set_training(m, true);
        double loss_sum = 0.0;
        for (int micro = 0; micro < o->accum; micro++) {
            double loss;
            /* Random routing choices depend on (seed, step, micro) only, so resume is exact. */
            m->noise_seed = joule_mix64(joule_mix64(joule_mix64(o->seed, st.step), (uint64_t)micro), 0x6d6f65);
            if ((rc = draw_batch(o, &train, st.step, micro, T, in, tg, starts)) ||
                (o->prepare && (rc = o->prepare(o->prepare_ctx, m, &train, starts, o->batch, T))) ||
                (rc = joule_model_forward(m, in, tg, o->batch, T, &loss)) ||
                (rc = joule_model_backward(m, 1.0f / (float)o->accum)))
                goto done;
            loss_sum += loss;
        }
        /* (distributed training: all-reduce m->grads here) */
        for (int i = 0; i < m->n_tensors; i++) /* frozen tensors neither clip nor move */
            if (m->tensors[i].frozen) memset(joule_model_grad(m, i), 0, m->tensors[i].numel * sizeof(float));
        double norm = joule_grad_norm(m);
        if (!isfinite(norm)) {
            rc = joule_fail(JOULE_ERR_RUNTIME, "step %" PRIu64 ": gradient norm is %g (diverged)", st.step, norm);
            goto done;
        }
        float clip = (o->adam.grad_clip > 0 && norm > o->adam.grad_clip) ? (float)(o->adam.grad_clip / norm) : 1.0f;
        float lr = joule_lr_at(&o->adam, st.step, total);
        joule_adamw_update(&opt, m, &o->adam, lr, clip);
        double dt = joule_now() - t0;

        st.step++;
        st.tokens += (uint64_t)o->batch * T * (uint64_t)o->accum;
        st.flops += joule_flops_counted() - f0;
        p.step = st.step;
        p.tokens = st.tokens;
        p.flops = st.flops;
        analytic_done += analytic_step;
        p.flops_analytic = analytic_done;
        p.loss = loss_sum / o->accum;
        p.lr = lr;
        p.grad_norm = norm;
        p.wall_s += dt;
        p.run_wall_s += dt;
        p.tokens_per_s = (double)o->batch * T * o->accum / dt;
        p.mfu = o->peak_flops > 0 ? (double)analytic_step / dt / o->peak_flops : 0;
        p.val_loss = NAN;

        bool finished = st.step == total;
        bool stopping = finished || (o->stop_after && st.step >= o->stop_after) || (o->interrupt && *o->interrupt);
        joule_model_set_training(m, false);
        char *stats = log ? ext_stats(m) : NULL;
        if (o->val_path && ((o->eval_every && st.step % (uint64_t)o->eval_every == 0) || finished)) {
            joule_eval_result er;
            if ((rc = joule_evaluate_prepared(m, &val, T, o->batch, o->eval_windows, o->prepare, o->prepare_ctx,
                                              &er, NULL, NULL))) {
                free(stats);
                goto done;
            }
            p.val_loss = er.loss;
        }
        log_step(log, &p, stats);
        free(stats);
        if (o->on_step) o->on_step(o->ctx, &p);
        if (stopping || (o->save_every && st.step % (uint64_t)o->save_every == 0))
            if ((rc = joule_checkpoint_save(m, o->out_path, &opt, &st))) goto done;
        if (stopping) break;
    }
    if (last) *last = p;
done:
    joule_model_set_training(m, false);
    if (log) fclose(log);
    free(in);
    free(tg);
    free(starts);
    free(traj);
    joule_adamw_free(&opt);
    joule_tokens_close(&train);
    if (o->val_path) joule_tokens_close(&val);
    return rc;
}
