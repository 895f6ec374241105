/* Expert parallelism in the training loop: tensors held by one rank (joule_param_info.owner,
 * set by the MoE extension's expert_parallel hook) are left out of the gradient
 * all-reduce, enter the global gradient norm once, and are brought back to every rank by
 * their owner (MPI_Bcast) before a validation or a save, so rank 0 evaluates and writes
 * a whole, ordinary checkpoint. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/dist.h"
#include "joule/ext.h"
#include "joule/train.h"

int joule_train_expert_parallel(joule_model *m, int ranks) {
    const int rank = ranks > 1 ? joule_dist_rank() : 0;
    bool any = false;
    for (int k = 0; k < JOULE_EXT_COUNT; k++) {
        const joule_ext_ops *ops = m->ext_ops[k];
        if (!ops || !ops->expert_parallel) continue;
        any = true;
        int rc = ops->expert_parallel(m, ranks, rank);
        if (rc) return rc;
    }
    if (!any && ranks > 1) return joule_fail(JOULE_ERR_ARG, "expert parallelism needs an MoE model (this one has no experts)");
    return JOULE_OK;
}

int joule_train_sync_owned(joule_model *m, joule_adamw *opt) {
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if (t->owner < 0) continue;
        const size_t bytes = t->numel * sizeof(float);
        int rc = joule_dist_bcast(m->params + t->offset, bytes, t->owner);
        if (!rc && opt) rc = joule_dist_bcast(opt->m + t->offset, bytes, t->owner);
        if (!rc && opt) rc = joule_dist_bcast(opt->v + t->offset, bytes, t->owner);
        if (rc) return rc;
    }
    return JOULE_OK;
}

/* Sum of squares of the gradients of the tensors that `mine` selects, each tensor summed
 * in order and the tensors in order: independent of the thread count. */
static double sumsq(const joule_model *m, bool owned, double *partial) {
    const int rank = joule_dist_rank();
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        double s = 0.0;
        if (owned ? t->owner == rank : t->owner < 0)
            for (size_t j = 0; j < t->numel; j++) s += (double)m->grads[t->offset + j] * m->grads[t->offset + j];
        partial[i] = s;
    }
    double total = 0.0;
    for (int i = 0; i < m->n_tensors; i++) total += partial[i];
    return total;
}

int joule_train_grad_norm_owned(const joule_model *m, double *norm) {
    double *partial = malloc((size_t)m->n_tensors * sizeof *partial);
    if (!partial) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    double shared = sumsq(m, false, partial), mine = sumsq(m, true, partial);
    free(partial);
    /* the all-reduced gradients are the same on every rank; the owned ones are each one rank's */
    int rc = joule_dist_allreduce_sum_f64(&mine, 1);
    *norm = sqrt(shared + mine);
    return rc;
}
