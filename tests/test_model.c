/* The dense model as a whole: gradients, causality, KV cache, training behaviour,
 * determinism, exact resume and the model-level checkpoint checks.
 * Check forks each test; nothing threaded runs in main(). */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "joule/optim.h"
#include "joule/safetensors.h"
#include "joule/train.h"
#include "testutil.h"

static joule_config tiny_config(void) {
    joule_config c = joule_config_default(2, 16, 2, 24, 16);
    return c;
}

/* ---------------------------------------------------------------- gradients */

/* Whole-model gradient against central differences of the float forward. Weights are
 * scaled up so gradients stand well above float rounding of the loss; a handful of
 * entries of every tensor is checked, and the error is relative to the largest
 * gradient of that tensor sample, so a wrong backward fails by orders of magnitude. */
static void check_model_grad(bool tied) {
    joule_config c = tiny_config();
    c.tied = tied;
    c.init_std = 0.3f;
    const int B = 2, T = 8, N = B * T;
    joule_model *m = tu_model(&c, B, 7);
    int32_t in[16], tg[16];
    tu_random_tokens(in, N, 1);
    tu_random_tokens(tg, N, 2);
    tg[3] = -1; /* an ignored target must not contribute */
    double loss;
    joule_model_zero_grad(m);
    ck_assert_int_eq(joule_model_forward(m, in, tg, B, T, &loss), JOULE_OK);
    ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
    const float eps = 1e-2f;
    double worst = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const joule_param_info *t = &m->tensors[ti];
        double num[6], ana[6];
        int k = 0;
        for (size_t j = 0; j < t->numel && k < 6; j += t->numel / 6 + 1, k++) {
            float *p = m->params + t->offset + j;
            float saved = *p;
            double lp, lm;
            *p = saved + eps;
            joule_model_forward(m, in, tg, B, T, &lp);
            *p = saved - eps;
            joule_model_forward(m, in, tg, B, T, &lm);
            *p = saved;
            num[k] = (lp - lm) / (2.0 * eps);
            ana[k] = m->grads[t->offset + j];
        }
        double maxg = 0, maxd = 0;
        for (int i = 0; i < k; i++) {
            maxg = fmax(maxg, fabs(num[i]));
            maxd = fmax(maxd, fabs(num[i] - ana[i]));
        }
        double rel = maxd / (maxg + 1e-4);
        if (rel > worst) worst = rel;
        ck_assert_msg(rel < 2e-2, "tensor %s: max |numeric - analytic| %.3g vs max |g| %.3g", t->name, maxd, maxg);
    }
    fprintf(stderr, "model gradient (%s): worst relative error %.2e\n", tied ? "tied" : "untied", worst);
    joule_model_free(m);
}

START_TEST(test_model_gradient_tied) { check_model_grad(true); }
END_TEST

START_TEST(test_model_gradient_untied) { check_model_grad(false); }
END_TEST

/* Gradient accumulation: two half-scaled backward passes equal one full one. */
START_TEST(test_grad_accumulation_scales) {
    joule_config c = tiny_config();
    const int B = 2, T = 8, N = B * T;
    joule_model *m = tu_model(&c, B, 3);
    int32_t in[16], tg[16];
    tu_random_tokens(in, N, 5);
    tu_random_tokens(tg, N, 6);
    double loss;
    joule_model_zero_grad(m);
    joule_model_forward(m, in, tg, B, T, &loss);
    joule_model_backward(m, 1.0f);
    float *full = malloc(m->n_params * sizeof(float));
    memcpy(full, m->grads, m->n_params * sizeof(float));
    joule_model_zero_grad(m);
    for (int i = 0; i < 2; i++) {
        joule_model_forward(m, in, tg, B, T, &loss);
        joule_model_backward(m, 0.5f);
    }
    for (size_t i = 0; i < m->n_params; i++) ck_assert_float_eq_tol(m->grads[i], full[i], 1e-6f + 1e-5f * fabsf(full[i]));
    free(full);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- causality, cache */

START_TEST(test_causality) {
    joule_config c = tiny_config();
    const int T = 16;
    joule_model *m = tu_model(&c, 1, 11);
    const int V = c.vocab;
    int32_t in[16];
    tu_random_tokens(in, T, 9);
    float *ref = malloc((size_t)T * V * sizeof(float));
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, T, NULL), JOULE_OK);
    memcpy(ref, joule_model_logits(m), (size_t)T * V * sizeof(float));
    for (int t = 0; t < T; t++) {
        int32_t changed[16];
        memcpy(changed, in, sizeof changed);
        changed[t] = (in[t] + 101) % V;
        joule_model_forward(m, changed, NULL, 1, T, NULL);
        const float *lg = joule_model_logits(m);
        /* bit-identical before t, different at t */
        ck_assert_msg(memcmp(lg, ref, (size_t)t * V * sizeof(float)) == 0, "logits before %d changed", t);
        ck_assert(memcmp(lg + (size_t)t * V, ref + (size_t)t * V, (size_t)V * sizeof(float)) != 0);
    }
    free(ref);
    joule_model_free(m);
}
END_TEST

START_TEST(test_kv_cache_matches_forward) {
    joule_config c = tiny_config();
    const int T = 16, V = c.vocab;
    joule_model *m = tu_model(&c, 1, 13);
    int32_t in[16];
    tu_random_tokens(in, T, 4);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 1, T, NULL), JOULE_OK);
    const float *full = joule_model_logits(m);
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    for (int t = 0; t < T; t++) {
        const float *lg;
        ck_assert_int_eq(joule_decoder_step(d, in[t], &lg), JOULE_OK);
        for (int v = 0; v < V; v++)
            ck_assert_msg(fabsf(lg[v] - full[(size_t)t * V + v]) < 1e-4f, "pos %d token %d: %g vs %g", t, v,
                          lg[v], full[(size_t)t * V + v]);
    }
    const float *lg;
    ck_assert_int_eq(joule_decoder_step(d, 1, &lg), JOULE_ERR_ARG); /* cache full */
    joule_decoder_free(d);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- training */

static double train_steps(joule_model *m, const int32_t *in, const int32_t *tg, int B, int T, int steps,
                          double *losses) {
    joule_adamw opt;
    joule_adamw_opts p = joule_adamw_defaults();
    p.lr = 3e-3f;
    p.min_lr = 3e-4f;
    p.warmup_steps = 10;
    p.weight_decay = 0.0f;
    ck_assert_int_eq(joule_adamw_init(&opt, m->n_params), JOULE_OK);
    double loss = 0;
    for (int s = 0; s < steps; s++) {
        joule_model_zero_grad(m);
        ck_assert_int_eq(joule_model_forward(m, in, tg, B, T, &loss), JOULE_OK);
        ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
        double norm = joule_grad_norm(m);
        float clip = norm > p.grad_clip ? (float)(p.grad_clip / norm) : 1.0f;
        joule_adamw_update(&opt, m, &p, joule_lr_at(&p, (uint64_t)s, (uint64_t)steps), clip);
        if (losses) losses[s] = loss;
    }
    joule_adamw_free(&opt);
    return loss;
}

START_TEST(test_overfit_short_text) {
    const char *text = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs!";
    joule_config c = joule_config_default(2, 64, 4, 128, 64);
    const int T = 64;
    joule_model *m = tu_model(&c, 1, 21);
    int32_t in[64], tg[64];
    for (int i = 0; i < T; i++) {
        in[i] = (uint8_t)text[i];
        tg[i] = (uint8_t)text[i + 1];
    }
    double first;
    joule_model_forward(m, in, tg, 1, T, &first);
    double last = train_steps(m, in, tg, 1, T, 300, NULL);
    fprintf(stderr, "overfit: loss %.4f -> %.4f\n", first, last);
    ck_assert_msg(first > 5.0, "initial loss %.3f should be near ln 256", first);
    ck_assert_msg(last < 0.05, "loss after 300 steps is %.4f", last);
    joule_model_free(m);
}
END_TEST

START_TEST(test_determinism_two_threads) {
    joule_set_threads(2);
    joule_config c = joule_config_default(2, 32, 2, 48, 32);
    const int B = 4, T = 32, N = B * T;
    int32_t in[128], tg[128];
    tu_random_tokens(in, N, 31);
    tu_random_tokens(tg, N, 32);
    double l1[20], l2[20];
    joule_model *a = tu_model(&c, B, 5), *b = tu_model(&c, B, 5);
    train_steps(a, in, tg, B, T, 20, l1);
    train_steps(b, in, tg, B, T, 20, l2);
    ck_assert(memcmp(l1, l2, sizeof l1) == 0);
    ck_assert(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0);
    joule_model_free(a);
    joule_model_free(b);
}
END_TEST

/* A small token file made of real-looking text for the training-loop tests. */
static void write_corpus(const char *bin) {
    joule_token_writer *w = tu_tokens_open(bin);
    const char *lines[] = {"to be or not to be, that is the question. ", "all that glitters is not gold. ",
                           "a journey of a thousand miles begins with a single step. "};
    for (int d = 0; d < 30; d++) tu_tokens_doc(w, (uint64_t)d, lines[d % 3], strlen(lines[d % 3]), d % 4 + 1);
    tu_tokens_commit(w);
}

static void train_run(const char *name, uint64_t stop_after, int resume, const char *bin) {
    joule_config c = joule_config_default(2, 32, 2, 48, 32);
    joule_train_opts o;
    tu_train_opts(&o, name, bin, stop_after, resume);
    joule_model *m = tu_train_model(o.out_path, resume, &c, 4);
    o.max_steps = 16;
    o.eval_windows = 4;
    joule_train_progress last;
    int rc = joule_train(m, &o, &last);
    ck_assert_msg(rc == JOULE_OK, "train failed: %s", joule_last_error());
    joule_model_free(m);
}

START_TEST(test_resume_equals_straight_run) {
    joule_set_threads(2);
    tu_make_dir("joule_model_");
    const char *dir = tu_dir;
    char bin[4200], a[4200], b[4200];
    snprintf(bin, sizeof bin, "%s/corpus.bin", dir);
    write_corpus(bin);
    train_run("straight", 0, 0, bin);
    train_run("split", 8, 0, bin);
    train_run("split", 0, 1, bin);
    snprintf(a, sizeof a, "%s/straight.safetensors", dir);
    snprintf(b, sizeof b, "%s/split.safetensors", dir);
    joule_model *ma, *mb;
    joule_train_state sa, sb;
    ck_assert_int_eq(joule_checkpoint_load(&ma, a, &sa), JOULE_OK);
    ck_assert_int_eq(joule_checkpoint_load(&mb, b, &sb), JOULE_OK);
    ck_assert_uint_eq(sa.step, 16);
    ck_assert_uint_eq(sb.step, 16);
    ck_assert_uint_eq(sa.tokens, sb.tokens);
    ck_assert_uint_eq(sa.flops, sb.flops);
    ck_assert(memcmp(ma->params, mb->params, ma->n_params * sizeof(float)) == 0);
    /* the two logs agree line for line on the loss */
    char la[4200], lb[4200];
    snprintf(la, sizeof la, "%s/straight.jsonl", dir);
    snprintf(lb, sizeof lb, "%s/split.jsonl", dir);
    FILE *fa = fopen(la, "r"), *fb = fopen(lb, "r");
    char x[1024], y[1024];
    int lines = 0;
    while (fgets(x, sizeof x, fa) && fgets(y, sizeof y, fb)) {
        const char *px = strstr(x, "\"loss\""), *py = strstr(y, "\"loss\"");
        ck_assert(px && py);
        ck_assert(strncmp(px, py, 16) == 0);
        lines++;
    }
    ck_assert_int_eq(lines, 16);
    fclose(fa);
    fclose(fb);
    joule_model_free(ma);
    joule_model_free(mb);
    tu_remove_dir();
}
END_TEST

START_TEST(test_resume_refuses_other_options) {
    tu_make_dir("joule_model_");
    const char *dir = tu_dir;
    char bin[4200], out[4200];
    snprintf(bin, sizeof bin, "%s/corpus.bin", dir);
    write_corpus(bin);
    train_run("run", 4, 0, bin);
    snprintf(out, sizeof out, "%s/run.safetensors", dir);
    joule_model *m;
    ck_assert_int_eq(joule_checkpoint_load(&m, out, NULL), JOULE_OK);
    ck_assert_int_eq(joule_model_alloc_train(m, 4), JOULE_OK);
    joule_train_opts o;
    joule_train_opts_init(&o);
    o.train_path = bin;
    o.out_path = out;
    o.resume = 1;
    o.batch = 4; /* differs from the saved run */
    o.accum = 2;
    o.seed = 77;
    o.max_steps = 16;
    ck_assert_int_eq(joule_train(m, &o, NULL), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "different options"));
    joule_model_free(m);
    tu_remove_dir();
}
END_TEST

/* ---------------------------------------------------------------- checkpoints */

static char *saved_tiny(const char *dir, bool tied) {
    joule_config c = tiny_config();
    c.tied = tied;
    joule_model *m;
    ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
    joule_model_init(m, 3);
    char *path;
    ck_assert(asprintf(&path, "%s/m%d.safetensors", dir, tied) > 0);
    ck_assert_int_eq(joule_checkpoint_save(m, path, NULL, NULL), JOULE_OK);
    joule_model_free(m);
    return path;
}

START_TEST(test_checkpoint_round_trip) {
    tu_make_dir("joule_model_");
    const char *dir = tu_dir;
    for (int tied = 0; tied < 2; tied++) {
        joule_config c = tiny_config();
        c.tied = tied;
        joule_model *m, *r;
        ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
        joule_model_init(m, 3);
        char *path = saved_tiny(dir, tied);
        ck_assert_int_eq(joule_checkpoint_load(&r, path, NULL), JOULE_OK);
        ck_assert_uint_eq(r->n_params, m->n_params);
        ck_assert(memcmp(r->params, m->params, m->n_params * sizeof(float)) == 0);
        ck_assert_int_eq(r->cfg.tied, tied);
        /* PyTorch names and [out, in] shapes */
        joule_st_file *f;
        ck_assert_int_eq(joule_st_open(&f, path), JOULE_OK);
        const joule_st_tensor *w1 = joule_st_find(f, "layers.1.ffn.w1.weight");
        ck_assert_ptr_nonnull(w1);
        ck_assert_int_eq(w1->shape[0], c.d_ff);
        ck_assert_int_eq(w1->shape[1], c.d_model);
        ck_assert_ptr_nonnull(joule_st_find(f, "layers.0.attn.wk.weight"));
        ck_assert_int_eq(joule_st_find(f, "lm_head.weight") != NULL, !tied);
        joule_st_close(f);
        free(path);
        joule_model_free(m);
        joule_model_free(r);
    }
    tu_remove_dir();
}
END_TEST

/* Rewrites a saved checkpoint with one tensor dropped, renamed or reshaped, or one
 * metadata value replaced, and checks the loader's refusal names the problem. */
typedef enum { DROP_TENSOR, RESHAPE_TENSOR, BAD_VERSION, BAD_CONFIG, NO_CONFIG } mutation;

static int load_mutated(const char *dir, mutation mu, const char *victim) {
    char *src = saved_tiny(dir, true);
    joule_st_file *f;
    ck_assert_int_eq(joule_st_open(&f, src), JOULE_OK);
    joule_st_writer *w;
    ck_assert_int_eq(joule_st_writer_new(&w), JOULE_OK);
    for (size_t i = 0; i < joule_st_meta_count(f); i++) {
        const char *k, *v;
        joule_st_meta_at(f, i, &k, &v);
        if (mu == BAD_VERSION && strcmp(k, "format_version") == 0) v = "99";
        if (mu == BAD_CONFIG && strcmp(k, "config") == 0) v = "{\"arch\":\"dense\",\"n_layers\":2}";
        if (mu == NO_CONFIG && strcmp(k, "config") == 0) continue;
        joule_st_writer_add_meta(w, k, v);
    }
    float *bigger = calloc(4096, sizeof(float));
    for (size_t i = 0; i < joule_st_count(f); i++) {
        const joule_st_tensor *t = joule_st_at(f, i);
        if (victim && strcmp(t->name, victim) == 0) {
            if (mu == DROP_TENSOR) continue;
            if (mu == RESHAPE_TENSOR) {
                int64_t shape[2] = {t->shape[0] + 1, t->shape[1]};
                joule_st_writer_add(w, t->name, t->dtype, shape, t->ndim, bigger);
                continue;
            }
        }
        joule_st_writer_add(w, t->name, t->dtype, t->shape, t->ndim, t->data);
    }
    char *dst;
    ck_assert(asprintf(&dst, "%s/mutated.safetensors", dir) > 0);
    ck_assert_int_eq(joule_st_writer_write(w, dst), JOULE_OK);
    joule_st_writer_free(w);
    joule_st_close(f);
    joule_model *m = NULL;
    int rc = joule_checkpoint_load(&m, dst, NULL);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "mutated.safetensors"));
    free(bigger);
    free(dst);
    free(src);
    return rc;
}

START_TEST(test_checkpoint_rejects_missing_tensor) {
    tu_make_dir("joule_model_");
    const char *dir = tu_dir;
    ck_assert_int_eq(load_mutated(dir, DROP_TENSOR, "layers.1.attn.wv.weight"), JOULE_ERR_FORMAT);
    tu_remove_dir();
}
END_TEST

START_TEST(test_checkpoint_rejects_wrong_shape) {
    tu_make_dir("joule_model_");
    const char *dir = tu_dir;
    ck_assert_int_eq(load_mutated(dir, RESHAPE_TENSOR, "layers.0.ffn.w2.weight"), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "layers.0.ffn.w2.weight"));
    tu_remove_dir();
}
END_TEST

START_TEST(test_checkpoint_rejects_version_and_config) {
    tu_make_dir("joule_model_");
    const char *dir = tu_dir;
    ck_assert_int_eq(load_mutated(dir, BAD_VERSION, NULL), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "format_version"));
    ck_assert_int_eq(load_mutated(dir, BAD_CONFIG, NULL), JOULE_ERR_FORMAT);
    ck_assert_int_eq(load_mutated(dir, NO_CONFIG, NULL), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "config"));
    tu_remove_dir();
}
END_TEST

START_TEST(test_config_json_round_trip) {
    joule_config c = joule_config_default(6, 384, 6, 1024, 256);
    c.tied = false;
    char *s = joule_config_to_json(&c);
    joule_config r;
    ck_assert_int_eq(joule_config_from_json(&r, s, "test"), JOULE_OK);
    ck_assert_int_eq(r.n_layers, 6);
    ck_assert_int_eq(r.d_ff, 1024);
    ck_assert(!r.tied);
    ck_assert_int_eq(joule_config_from_json(&r, "{\"arch\":\"dense\",\"n_layers\":2,\"d_model\":30,\"n_heads\":4,"
                                               "\"d_ff\":8,\"ctx\":8,\"vocab\":256}", "cfg.json"),
                     JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "cfg.json"));
    free(s);
}
END_TEST

START_TEST(test_param_counts_and_flops) {
    joule_config c = joule_config_default(6, 384, 6, 1024, 256);
    joule_model *m;
    ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
    joule_param_counts pc = joule_model_param_counts(m);
    uint64_t per_layer = 4ull * 384 * 384 + 3ull * 384 * 1024 + 2 * 384;
    ck_assert_uint_eq(pc.non_embedding, 6 * per_layer + 384);
    ck_assert_uint_eq(pc.embedding, 256ull * 384);
    ck_assert_uint_eq(pc.total, pc.embedding + pc.non_embedding);
    joule_model_free(m);
    /* counted FLOPs of a forward + backward equal the analytic count, for lengths below,
     * at and between multiples of the attention block */
    joule_config t = joule_config_default(2, 16, 2, 24, 200);
    joule_model *s = tu_model(&t, 2, 1);
    int32_t in[400], tg[400];
    tu_random_tokens(in, 400, 1);
    tu_random_tokens(tg, 400, 2);
    const int lengths[] = {16, 64, 150, 200};
    for (int i = 0; i < 4; i++) {
        int T = lengths[i];
        double loss;
        joule_flops_reset();
        joule_model_forward(s, in, tg, 2, T, &loss);
        ck_assert_uint_eq(joule_flops_counted(), joule_model_forward_flops(&t, 2, T));
        joule_model_backward(s, 1.0f);
        ck_assert_uint_eq(joule_flops_counted(), 3 * joule_model_forward_flops(&t, 2, T));
    }
    joule_model_free(s);
}
END_TEST

static Suite *model_suite(void) {
    Suite *s = suite_create("model");
    TCase *g = tu_tcase(s, "gradients", 120, NULL, NULL);
    tcase_add_test(g, test_model_gradient_tied);
    tcase_add_test(g, test_model_gradient_untied);
    tcase_add_test(g, test_grad_accumulation_scales);
    TCase *c = tu_tcase(s, "inference", 60, NULL, NULL);
    tcase_add_test(c, test_causality);
    tcase_add_test(c, test_kv_cache_matches_forward);
    tcase_add_test(c, test_param_counts_and_flops);
    tcase_add_test(c, test_config_json_round_trip);
    TCase *t = tu_tcase(s, "training", 300, NULL, NULL);
    tcase_add_test(t, test_overfit_short_text);
    tcase_add_test(t, test_determinism_two_threads);
    tcase_add_test(t, test_resume_equals_straight_run);
    tcase_add_test(t, test_resume_refuses_other_options);
    TCase *k = tu_tcase(s, "checkpoint", 60, NULL, NULL);
    tcase_add_test(k, test_checkpoint_round_trip);
    tcase_add_test(k, test_checkpoint_rejects_missing_tensor);
    tcase_add_test(k, test_checkpoint_rejects_wrong_shape);
    tcase_add_test(k, test_checkpoint_rejects_version_and_config);
    return s;
}

int main(void) {
    return tu_run_suite(model_suite());
}
