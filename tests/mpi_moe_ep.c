/* tests/mpi_moe_ep.c — expert parallelism (2 ranks) against the single process it stands
 * for: one process whose micro-batch is the ranks' micro-batches concatenated (batch 2B).
 * A tiny MoE (E = 4, top-2, both layers MoE) with a capacity factor low enough that rows
 * ARE dropped, so the global placement order is exercised: per-rank capacity would drop
 * other rows and fail every comparison below.
 *   1. one forward and backward: loss, aux loss, drop counts, every gradient (experts
 *      gathered from their owners; a non-owner's expert gradient must be exactly 0);
 *   2. 3 training steps (joule_train) against 3 single-process steps at batch 2B;
 *   3. a run stopped after 2 steps and resumed equals the 3-step run bit for bit (the
 *      experts' AdamW moments went through rank 0's checkpoint and back);
 *   4. E = 3 over 2 ranks is refused (JOULE_ERR_ARG, one line naming E % N).
 * Tolerances: the arithmetic is the same except the grouping of float sums (the gradients
 * of shared weights summed per rank, then by MPI; the losses' sums in another order), so
 * GRAD_TOL and WEIGHT_TOL are a few float roundings of the largest magnitudes involved. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/checkpoint.h"
#include "joule/common.h"
#include "joule/data.h"
#include "joule/dist.h"
#include "joule/model.h"
#include "joule/moe.h"
#include "joule/train.h"

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            char m_[512];                                                                     \
            snprintf(m_, sizeof m_, "%s:%d: check failed: %s (%s)", __FILE__, __LINE__, #cond, \
                     joule_last_error());                                                     \
            joule_dist_abort(1, m_);                                                          \
        }                                                                                     \
    } while (0)

#define B 2 /* sequences per rank */
#define T 16
#define LOSS_TOL 1e-6   /* relative, forward loss and aux loss */
#define GRAD_TOL 1e-5   /* max |difference| over max |gradient|, per tensor */
#define WEIGHT_TOL 1e-5 /* max |difference| of any weight after 3 steps (weights are O(0.1..1)) */

static char g_dir[256];

static joule_config tiny(int experts) {
    joule_config c = joule_config_default(2, 16, 2, 32, T);
    joule_moe_config e = joule_moe_config_default(32);
    e.n_experts = experts;
    e.every = 1;
    e.d_ff_expert = 24;
    e.capacity_train = 0.5f;
    joule_moe_apply(&c, &e);
    return c;
}

static joule_model *fresh(int experts, int batch) {
    joule_config c = tiny(experts);
    joule_model *m;
    CHECK(joule_model_create(&m, &c) == JOULE_OK);
    joule_model_init(m, 3);
    CHECK(joule_model_alloc_train(m, batch) == JOULE_OK);
    return m;
}

static void write_tokens(const char *path) {
    joule_token_writer *w;
    CHECK(joule_token_writer_open(&w, path) == JOULE_OK);
    for (int d = 0; d < 60; d++) {
        char text[128];
        int n = snprintf(text, sizeof text, "doc %d: %d quick foxes and %d lazy dogs met %d times.", d, d * 7, d % 5,
                         d * d % 11);
        CHECK(joule_token_writer_begin_doc(w, (uint64_t)d) == JOULE_OK);
        CHECK(joule_token_writer_append(w, (const uint8_t *)text, (size_t)n) == JOULE_OK);
        CHECK(joule_token_writer_end_doc(w) == JOULE_OK);
    }
    CHECK(joule_token_writer_commit(w) == JOULE_OK);
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs((double)a[i] - b[i]) > m ? fabs((double)a[i] - b[i]) : m;
    return m;
}

/* 1: one forward and backward of micro-batch (step 0, micro 0) of batch 2B. */
static void check_step_gradients(const char *tokens, double *worst_grad, int *drops) {
    const int R = joule_dist_size(), rank = joule_dist_rank();
    joule_tokens t;
    CHECK(joule_tokens_open(&t, tokens) == JOULE_OK);
    uint64_t starts[B * 2];
    int32_t in[B * 2 * T], tg[B * 2 * T];
    CHECK(joule_batch_sample_aligned(&t, 9, 0, 0, B * R, T, 1, NULL, NULL, starts) == JOULE_OK);
    CHECK(joule_batch_windows(&t, starts, B * R, T, in, tg) == JOULE_OK);
    joule_tokens_close(&t);

    joule_model *one = fresh(4, B * R), *ep = fresh(4, B);
    double l1, lp;
    joule_model_set_training(one, true);
    joule_model_zero_grad(one);
    CHECK(joule_model_forward(one, in, tg, B * R, T, &l1) == JOULE_OK);
    CHECK(joule_model_backward(one, 1.0f) == JOULE_OK);

    CHECK(joule_train_expert_parallel(ep, R) == JOULE_OK);
    joule_model_set_training(ep, true);
    joule_model_zero_grad(ep);
    CHECK(joule_model_forward(ep, in + (size_t)rank * B * T, tg + (size_t)rank * B * T, B, T, &lp) == JOULE_OK);
    CHECK(joule_model_backward(ep, 1.0f / (float)R) == JOULE_OK);
    double aux1 = joule_model_aux_loss(one), auxp = joule_model_aux_loss(ep);
    CHECK(joule_dist_allreduce_sum_f64(&lp, 1) == JOULE_OK);
    lp /= R;
    CHECK(fabs(lp - l1) <= LOSS_TOL * fabs(l1) && fabs(auxp - aux1) <= LOSS_TOL * fabs(aux1));
    /* the same rows dropped: global counts equal the single process's, and some exist */
    *drops = 0;
    for (int l = 0; l < 2; l++) {
        const joule_moe_route *a = joule_moe_last_route(one, l), *b = joule_moe_last_route(ep, l);
        CHECK(a && b && a->capacity == b->capacity && b->n_total == a->N);
        CHECK(a->dropped[0] == b->dropped[0] && a->dropped[1] == b->dropped[1]);
        for (int e = 0; e < 4; e++) CHECK(a->routed[e] == b->routed[e]);
        *drops += a->dropped[0] + a->dropped[1];
    }
    CHECK(*drops > 0);
    /* shared gradients summed as training does; each expert's only on its owner */
    CHECK(joule_train_allreduce_grads(ep) == JOULE_OK);
    int owned = 0;
    for (int i = 0; i < ep->n_tensors; i++) {
        const joule_param_info *ti = &ep->tensors[i];
        if (ti->owner < 0) continue;
        owned++;
        float *g = joule_model_grad(ep, i);
        if (ti->owner != rank) CHECK(max_abs(g, ti->numel) == 0.0);
        CHECK(joule_dist_allreduce_sum_f32(g, ti->numel) == JOULE_OK); /* gather: the others hold 0 */
    }
    CHECK(owned == 2 * 4 * 3);
    *worst_grad = 0;
    for (int i = 0; i < one->n_tensors; i++) {
        const size_t n = one->tensors[i].numel;
        const float *a = joule_model_grad(one, i), *b = joule_model_grad(ep, i);
        const double scale = max_abs(a, n), d = max_diff(a, b, n) / (scale > 0 ? scale : 1);
        if (d > GRAD_TOL) {
            char msg[256];
            snprintf(msg, sizeof msg, "gradient of %s differs by %.3g of its largest", one->tensors[i].name, d);
            joule_dist_abort(1, msg);
        }
        *worst_grad = d > *worst_grad ? d : *worst_grad;
    }
    CHECK(joule_train_expert_parallel(ep, 1) == JOULE_OK);
    joule_model_free(one);
    joule_model_free(ep);
}

static joule_train_opts opts(const char *tokens, const char *out, int batch, int ep) {
    joule_train_opts o;
    joule_train_opts_init(&o);
    o.train_path = tokens;
    o.out_path = out;
    o.batch = batch;
    o.max_steps = 3;
    o.seed = 9;
    o.adam.lr = 3e-3f;
    o.adam.warmup_steps = 0;
    o.data_parallel = ep;
    o.expert_parallel = ep;
    return o;
}

/* 2 and 3. Returns the largest weight difference to the single process. */
static double check_training(const char *tokens, int *resumed_equal) {
    const int R = joule_dist_size(), rank = joule_dist_rank();
    char out_ep[400], out_split[400], out_one[400];
    snprintf(out_ep, sizeof out_ep, "%s/ep.safetensors", g_dir);
    snprintf(out_split, sizeof out_split, "%s/split.safetensors", g_dir);
    snprintf(out_one, sizeof out_one, "%s/one%d.safetensors", g_dir, rank);
    joule_train_progress pe, p1, ps;
    joule_model *ep = fresh(4, B), *one = fresh(4, B * R);
    joule_train_opts o = opts(tokens, out_ep, B, 1);
    CHECK(joule_train(ep, &o, &pe) == JOULE_OK && pe.step == 3);
    o = opts(tokens, out_one, B * R, 0);
    CHECK(joule_train(one, &o, &p1) == JOULE_OK && p1.step == 3);
    CHECK(fabs(pe.loss - p1.loss) <= LOSS_TOL * fabs(p1.loss));
    double worst = max_diff(ep->params, one->params, ep->n_params);
    CHECK(worst <= WEIGHT_TOL);
    /* rank 0's checkpoint is the whole model: every rank reads the synced weights back */
    CHECK(joule_dist_barrier() == JOULE_OK);
    joule_model *saved;
    joule_train_state st;
    CHECK(joule_checkpoint_load(&saved, out_ep, &st) == JOULE_OK);
    CHECK(memcmp(saved->params, ep->params, ep->n_params * sizeof(float)) == 0);
    joule_model_free(saved);

    joule_model *split = fresh(4, B);
    o = opts(tokens, out_split, B, 1);
    o.stop_after = 2;
    CHECK(joule_train(split, &o, &ps) == JOULE_OK && ps.step == 2);
    joule_model_free(split);
    CHECK(joule_dist_barrier() == JOULE_OK);
    CHECK(joule_checkpoint_load(&split, out_split, &st) == JOULE_OK);
    CHECK(joule_model_alloc_train(split, B) == JOULE_OK);
    o = opts(tokens, out_split, B, 1);
    o.resume = 1;
    CHECK(joule_train(split, &o, &ps) == JOULE_OK && ps.step == 3);
    *resumed_equal = memcmp(split->params, ep->params, ep->n_params * sizeof(float)) == 0;
    CHECK(*resumed_equal);
    joule_model_free(split);
    joule_model_free(ep);
    joule_model_free(one);
    return worst;
}

/* 4: E = 3 does not split over 2 ranks. */
static void check_refusal(const char *tokens) {
    char out[400];
    snprintf(out, sizeof out, "%s/bad.safetensors", g_dir);
    joule_model *m = fresh(3, B);
    joule_train_opts o = opts(tokens, out, B, 1);
    joule_train_progress p;
    CHECK(joule_train(m, &o, &p) == JOULE_ERR_ARG);
    CHECK(strstr(joule_last_error(), "3 experts do not split evenly over 2 ranks (E % N must be 0)") &&
          !strchr(joule_last_error(), '\n'));
    joule_model_free(m);
}

int main(int argc, char **argv) {
    CHECK(joule_dist_init(&argc, &argv) == JOULE_OK);
    joule_moe_register();
    CHECK(joule_dist_size() == 2);
    /* one folder for the job: rank 0 makes it, the others learn its name */
    if (joule_dist_rank() == 0) {
        snprintf(g_dir, sizeof g_dir, "/tmp/joule_mpi_moe_ep.XXXXXX");
        CHECK(mkdtemp(g_dir) != NULL);
    }
    CHECK(joule_dist_bcast(g_dir, sizeof g_dir, 0) == JOULE_OK);
    char tokens[400];
    snprintf(tokens, sizeof tokens, "%s/train.bin", g_dir);
    if (joule_dist_rank() == 0) write_tokens(tokens);
    CHECK(joule_dist_barrier() == JOULE_OK);

    double worst_grad, worst_weight;
    int drops, resumed;
    check_step_gradients(tokens, &worst_grad, &drops);
    worst_weight = check_training(tokens, &resumed);
    check_refusal(tokens);

    CHECK(joule_dist_barrier() == JOULE_OK);
    if (joule_dist_rank() == 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        CHECK(system(cmd) == 0);
        printf("mpi_moe_ep: %d rows dropped; gradients within %.3g of their largest (tolerance %g); weights after 3 "
               "steps within %.3g (tolerance %g); resumed run bit-identical: %s\n",
               drops, worst_grad, GRAD_TOL, worst_weight, WEIGHT_TOL, resumed ? "yes" : "no");
    }
    joule_dist_finalize();
    return 0;
}
