/* joule/optim.h — AdamW over the flat parameter arena, the learning-rate schedule and the
 * global gradient norm. */
#ifndef JOULE_OPTIM_H
#define JOULE_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "joule/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float lr;           /* peak learning rate */
    float min_lr;       /* floor of the cosine decay */
    float beta1, beta2, eps;
    float weight_decay; /* decoupled, on matrices only */
    float grad_clip;    /* max global L2 norm; <= 0 disables clipping */
    int warmup_steps;
} joule_adamw_opts;

/* lr 1e-3, min_lr its joule_adamw_min_lr, betas 0.9 and 0.95, eps 1e-8, weight decay 0.1,
 * gradient clip 1.0, 100 warm-up steps. */
joule_adamw_opts joule_adamw_defaults(void);
/* The floor of the cosine decay that a peak learning rate brings when none is given:
 * lr / 10, rounded to float once (from the double, so every caller agrees to the bit). */
float joule_adamw_min_lr(double lr);
/* JOULE_ERR_ARG unless every value is finite and in its range: lr in [JOULE_LR_MIN,
 * JOULE_LR_MAX] (below it float32 updates vanish against weights of ~0.02), min_lr in
 * [0, JOULE_LR_MAX], betas in [0, 1), eps > 0, weight_decay in [0, 100], grad_clip
 * in [0, 1e6], warmup_steps >= 0. */
#define JOULE_LR_MIN 1e-9
#define JOULE_LR_MAX 10.0
int joule_adamw_opts_check(const joule_adamw_opts *p);

/* First and second moments, mirroring the parameter arena. Free with joule_adamw_free. */
typedef struct {
    float *m, *v;
    size_t n;
    uint64_t t; /* updates applied */
} joule_adamw;

int joule_adamw_init(joule_adamw *o, size_t n_params);
void joule_adamw_free(joule_adamw *o);

/* Step counts from 0. Warm-up: lr * (step + 1) / warmup_steps for step < warmup_steps (so
 * the first step uses lr / warmup_steps and step warmup_steps - 1 uses lr); then cosine
 * decay from lr towards min_lr, reached at step == total_steps (one past the last step). */
float joule_lr_at(const joule_adamw_opts *p, uint64_t step, uint64_t total_steps);

/* Global L2 norm of the gradients, summed in double in a fixed order (thread-count
 * independent). */
double joule_grad_norm(const joule_model *m);

/* One AdamW update with learning rate lr; gradients are first scaled by clip_scale
 * (1 when not clipping). */
void joule_adamw_update(joule_adamw *o, joule_model *m, const joule_adamw_opts *p, float lr,
                        float clip_scale);

#ifdef __cplusplus
}
#endif
#endif
