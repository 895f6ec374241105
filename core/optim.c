/* AdamW, learning-rate schedule and gradient norm over the flat parameter arena. */
#include "joule/optim.h"
#include "joule/dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

float joule_adamw_min_lr(double lr) {
    return (float)(lr / 10);
}

joule_adamw_opts joule_adamw_defaults(void) {
    joule_adamw_opts p = {
        .lr = 1e-3f,
        .min_lr = joule_adamw_min_lr(1e-3),
        .beta1 = 0.9f,
        .beta2 = 0.95f,
        .eps = 1e-8f,
        .weight_decay = 0.1f,
        .grad_clip = 1.0f,
        .warmup_steps = 100,
    };
    return p;
}

int joule_adamw_opts_check(const joule_adamw_opts *p) {
    /* written as !(in range) so that NaN fails too */
    if (!(p->lr >= JOULE_LR_MIN && p->lr <= JOULE_LR_MAX))
        return joule_fail(JOULE_ERR_ARG, "learning rate %g outside [%g, %g]", p->lr, JOULE_LR_MIN, JOULE_LR_MAX);
    if (!(p->min_lr >= 0 && p->min_lr <= JOULE_LR_MAX))
        return joule_fail(JOULE_ERR_ARG, "minimum learning rate %g outside [0, %g]", p->min_lr, JOULE_LR_MAX);
    if (!(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1))
        return joule_fail(JOULE_ERR_ARG, "AdamW betas %g, %g outside [0, 1)", p->beta1, p->beta2);
    if (!(p->eps > 0 && p->eps <= 1)) return joule_fail(JOULE_ERR_ARG, "AdamW eps %g outside (0, 1]", p->eps);
    if (!(p->weight_decay >= 0 && p->weight_decay <= 100))
        return joule_fail(JOULE_ERR_ARG, "weight decay %g outside [0, 100]", p->weight_decay);
    if (!(p->grad_clip >= 0 && p->grad_clip <= 1e6))
        return joule_fail(JOULE_ERR_ARG, "gradient clip %g outside [0, 1e6]", p->grad_clip);
    if (p->warmup_steps < 0) return joule_fail(JOULE_ERR_ARG, "warm-up steps %d < 0", p->warmup_steps);
    return JOULE_OK;
}

int joule_adamw_init(joule_adamw *o, size_t n_params) {
    memset(o, 0, sizeof *o);
    o->m = joule_alloc(n_params * sizeof(float));
    o->v = joule_alloc(n_params * sizeof(float));
    if (!o->m || !o->v) {
        joule_adamw_free(o);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating optimizer state");
    }
    o->n = n_params;
    return JOULE_OK;
}

void joule_adamw_free(joule_adamw *o) {
    joule_free(o->m);
    joule_free(o->v);
    o->m = o->v = NULL;
    o->n = 0;
}

float joule_lr_at(const joule_adamw_opts *p, uint64_t step, uint64_t total_steps) {
    if (p->warmup_steps > 0 && step < (uint64_t)p->warmup_steps)
        return p->lr * (float)(step + 1) / (float)p->warmup_steps;
    if (total_steps <= (uint64_t)p->warmup_steps) return p->lr;
    double progress = (double)(step - (uint64_t)p->warmup_steps) /
                      (double)(total_steps - (uint64_t)p->warmup_steps);
    if (progress > 1.0) progress = 1.0;
    double cosine = 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(p->min_lr + (p->lr - p->min_lr) * cosine);
}

/* A fixed number of chunks, each summed sequentially and then combined in order, makes
 * the norm independent of how OpenMP splits the work. */
#define NORM_CHUNKS 256

double joule_grad_norm(const joule_model *m) {
    double partial[NORM_CHUNKS];
    const size_t n = m->n_params;
    const size_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < NORM_CHUNKS; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)m->grads[i] * (double)m->grads[i];
        partial[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < NORM_CHUNKS; c++) total += partial[c];
    return sqrt(total);
}

void joule_adamw_update(joule_adamw *o, joule_model *m, const joule_adamw_opts *p, float lr,
                        float clip_scale) {
    o->t++;
    const float b1 = p->beta1, b2 = p->beta2;
    const float bc1 = 1.0f - powf(b1, (float)o->t), bc2 = 1.0f - powf(b2, (float)o->t);
    const int rank = joule_dist_rank();
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const joule_param_info *t = &m->tensors[ti];
        /* expert parallelism: another rank trains it (this copy is refreshed from there) */
        if (t->frozen || (t->owner >= 0 && t->owner != rank)) continue;
        const float wd = t->decay ? p->weight_decay : 0.0f;
        float *w = m->params + t->offset, *g = m->grads + t->offset;
        float *mm = o->m + t->offset, *vv = o->v + t->offset;
        const size_t n = t->numel;
#pragma omp parallel for schedule(static) if (n > 16384)
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * clip_scale;
            mm[i] = b1 * mm[i] + (1.0f - b1) * gi;
            vv[i] = b2 * vv[i] + (1.0f - b2) * gi * gi;
            float mhat = mm[i] / bc1, vhat = vv[i] / bc2;
            w[i] -= lr * (mhat / (sqrtf(vhat) + p->eps) + wd * w[i]);
        }
    }
}
