/* Evaluation of a model against a reference (a quantised model against its fp32 source):
 * the model's loss and the mean KL divergence of its next-byte distributions from the
 * reference's, over the same windows joule_evaluate scores. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ops.h"
#include "joule/quant.h"
#include "joule/train.h"

/* Sum over rows of KL(softmax(ref) || softmax(q)) in nats. */
static double kl_rows(const float *ref, const float *q, size_t rows, int V) {
    double sum = 0;
    for (size_t r = 0; r < rows; r++) {
        const float *a = ref + r * (size_t)V, *b = q + r * (size_t)V;
        double ma = -INFINITY, mb = -INFINITY, za = 0, zb = 0, s = 0;
        for (int v = 0; v < V; v++) ma = fmax(ma, a[v]), mb = fmax(mb, b[v]);
        for (int v = 0; v < V; v++) za += exp(a[v] - ma), zb += exp(b[v] - mb);
        const double la = ma + log(za), lb = mb + log(zb);
        for (int v = 0; v < V; v++) s += exp(a[v] - la) * ((a[v] - la) - (b[v] - lb));
        sum += s > 0 ? s : 0; /* rounding can leave -1e-17 for equal rows */
    }
    return sum;
}

typedef struct {
    joule_batch_prepare_fn prepare;
    void *prepare_ctx;
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *ctx;
} kl_hooks;

static int evaluate_kl(joule_model *m, joule_model *ref, const joule_tokens *t, int T, int B, uint64_t max_windows,
                       const kl_hooks *h, joule_eval_result *r, double *kl_nats, double *ref_loss) {
    memset(r, 0, sizeof *r);
    if (m->cfg.vocab != ref->cfg.vocab || T > ref->cfg.ctx)
        return joule_fail(JOULE_ERR_ARG, "the reference model has another vocabulary or a context below %d", T);
    if (B > m->max_batch) B = m->max_batch;
    if (B > ref->max_batch) B = ref->max_batch;
    uint64_t nw = joule_eval_windows(t, T);
    if (max_windows && nw > max_windows) nw = max_windows;
    if (nw == 0) return joule_fail(JOULE_ERR_ARG, "%s: too short for one window of %d", t->path, T);
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    uint64_t *starts = malloc((size_t)B * sizeof *starts);
    if (!in || !tg || !starts) {
        free(in);
        free(tg);
        free(starts);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    double sum = 0, rsum = 0, kl = 0;
    int rc = JOULE_OK;
    for (uint64_t w = 0; w < nw && !rc; w += (uint64_t)B) {
        const int b = (int)((nw - w) < (uint64_t)B ? (nw - w) : (uint64_t)B);
        for (int i = 0; i < b; i++) {
            joule_eval_window(t, T, w + (uint64_t)i, in + (size_t)i * T, tg + (size_t)i * T);
            starts[i] = (w + (uint64_t)i) * (uint64_t)T; /* as joule_evaluate_prepared's */
        }
        double loss = 0, rloss = 0;
        if (h->prepare && ((rc = h->prepare(h->prepare_ctx, m, t, starts, b, T)) ||
                           (rc = h->prepare(h->prepare_ctx, ref, t, starts, b, T))))
            break;
        /* only the model's own forward is timed and counted */
        const double t0 = joule_now();
        const uint64_t f0 = joule_flops_counted();
        rc = joule_model_forward(m, in, tg, b, T, &loss);
        r->wall_s += joule_now() - t0;
        r->flops += joule_flops_counted() - f0;
        if (!rc) rc = joule_model_forward(ref, in, tg, b, T, &rloss);
        if (rc) break;
        sum += loss * (double)b * T;
        rsum += rloss * (double)b * T;
        kl += kl_rows(joule_model_logits(ref), joule_model_logits(m), (size_t)b * T, m->cfg.vocab);
        if (h->progress) h->progress(h->ctx, w + (uint64_t)b, nw);
    }
    free(in);
    free(tg);
    free(starts);
    if (rc) return rc;
    r->windows = nw;
    r->tokens = nw * (uint64_t)T;
    r->loss = sum / (double)r->tokens;
    r->bpb = r->loss / M_LN2;
    *kl_nats = kl / (double)r->tokens;
    *ref_loss = rsum / (double)r->tokens;
    return JOULE_OK;
}

int joule_evaluate_kl(joule_model *m, joule_model *ref, const joule_tokens *t, int T, int B, uint64_t max_windows,
                      joule_eval_result *r, double *kl_nats, double *ref_loss,
                      void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx) {
    const kl_hooks h = {NULL, NULL, progress, ctx};
    return evaluate_kl(m, ref, t, T, B, max_windows, &h, r, kl_nats, ref_loss);
}

int joule_evaluate_kl_prepared(joule_model *m, joule_model *ref, const joule_tokens *t, int T, int B,
                               uint64_t max_windows, joule_batch_prepare_fn prepare, void *prepare_ctx,
                               joule_eval_result *r, double *kl_nats, double *ref_loss) {
    const kl_hooks h = {prepare, prepare_ctx, NULL, NULL};
    return evaluate_kl(m, ref, t, T, B, max_windows, &h, r, kl_nats, ref_loss);
}
