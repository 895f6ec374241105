/* Metrics on the same prompts, pass rates from samples, difficulty buckets, the GPT-4
 * style capability prediction and the emergence panel (bench/compare_prompts.c,
 * compare_predict.c, compare_emerge.c; docs/COMPARE.md sections 3 and 5). */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/compare.h"
#include "joule/data.h"
#include "joule/ops.h"
#include "joule/sample.h"
#include "testutil.h"

/* ---- the definitions on hand-made texts and logits ---- */

START_TEST(test_edit_distance) {
    const uint8_t *k = (const uint8_t *)"kitten", *s = (const uint8_t *)"sitting";
    ck_assert_int_eq(joule_edit_distance(k, 6, s, 7), 3); /* two substitutions, one insertion */
    ck_assert_int_eq(joule_edit_distance(s, 7, k, 6), 3);
    ck_assert_int_eq(joule_edit_distance(k, 6, k, 6), 0);
    ck_assert_int_eq(joule_edit_distance(k, 0, (const uint8_t *)"abc", 3), 3);
    ck_assert_int_eq(joule_edit_distance((const uint8_t *)"abc", 3, (const uint8_t *)"acb", 3), 2); /* no transposition */
    ck_assert_int_eq(joule_edit_distance((const uint8_t *)"flaw", 4, (const uint8_t *)"lawn", 4), 2);
    ck_assert_int_eq(joule_edit_distance(k, JOULE_PROMPT_MAX_BYTES + 1, k, 1), -1);
}
END_TEST

START_TEST(test_teacher_forced) {
    /* V = 4. Row 0 uniform: argmax byte 0 (ties to the lower), p(target 1) = 1/4. Row 1:
     * p(0) = 3/6, argmax 0 = target. Row 2: bytes 2 and 3 tie at 5/12, argmax 2 = target. */
    const float l3 = logf(3), l5 = logf(5);
    const float logits[3][4] = {{0, 0, 0, 0}, {l3, 0, 0, 0}, {0, 0, l5, l5}};
    const uint8_t target[3] = {1, 0, 2};
    int correct = -1;
    double lp = 0;
    joule_teacher_forced(&logits[0][0], 4, target, 3, &correct, &lp);
    ck_assert_int_eq(correct, 2);
    ck_assert_double_eq_tol(lp, (log(0.25) + log(0.5) + log(5.0 / 12)) / 3, 1e-6);
    /* one row: the byte's own log-probability, shift-invariant */
    const float shifted[4] = {100, 100, 100 + l3, 100};
    joule_teacher_forced(shifted, 4, (const uint8_t *)"\x02", 1, &correct, &lp);
    ck_assert_int_eq(correct, 1);
    ck_assert_double_eq_tol(lp, log(0.5), 1e-5); /* 100 + ln 3 in float */
}
END_TEST

/* ---- on a real model: a 1-layer model whose embeddings are scaled up so its next-byte
 * distribution is peaked, and a validation file it wrote itself (greedy), so targets are
 * likely bytes and pass rates are far from 0 ---- */

static joule_model *g_model;
static joule_tokens g_tok;

static void model_setup(void) {
    tu_make_dir("joule_test_emerge.");
    joule_set_threads(1); /* a tiny model: threads only wait on each other */
    joule_config c = joule_config_default(1, 16, 2, 48, 24);
    g_model = tu_model(&c, 4, 5);
    const joule_param_info *e = joule_model_find(g_model, "tok_emb.weight");
    for (size_t i = 0; i < e->numel; i++) g_model->params[e->offset + i] *= 40;
    /* 4 documents of text sampled from the model at temperature 1 (so targets are neither
     * always the argmax nor rare bytes) */
    joule_token_writer *w = tu_tokens_open(tu_path("val.bin"));
    for (int d = 0; d < 4; d++) {
        uint8_t text[200];
        joule_rng r;
        joule_rng_seed(&r, 90 + d);
        int32_t tok = 'a' + d;
        joule_decoder *dec;
        ck_assert_int_eq(joule_decoder_create(&dec, g_model), JOULE_OK);
        float scratch[512];
        const joule_sampler s = {1.0f, 0, 1.0f};
        for (int i = 0; i < 200; i++) {
            if (dec->pos == 24) joule_decoder_reset(dec);
            const float *l;
            ck_assert_int_eq(joule_decoder_step(dec, tok, &l), JOULE_OK);
            tok = joule_sample(l, 256, &s, &r, scratch);
            text[i] = tok ? (uint8_t)tok : 1; /* no end-of-document byte inside */
        }
        joule_decoder_free(dec);
        tu_tokens_doc(w, (uint64_t)d, text, sizeof text, 1);
    }
    tu_tokens_commit(w);
    ck_assert_int_eq(joule_tokens_open(&g_tok, tu_path("val.bin")), JOULE_OK);
}

static void model_teardown(void) {
    joule_tokens_close(&g_tok);
    joule_model_free(g_model);
    tu_remove_dir();
}

#define W 24

static joule_prompt_opts opts(int n, int samples, float temp, uint64_t seed) {
    return (joule_prompt_opts){24 - n, n, W, samples, temp, seed};
}

/* Greedy decoding continues along the target exactly when every teacher-forced argmax is
 * the target byte: exact match and teacher forcing agree on every prompt (the decoder's
 * prefill and the batched forward are two code paths). */
START_TEST(test_greedy_agrees_with_teacher_forcing) {
    for (int n = 1; n <= 3; n++) {
        joule_prompt_score sc[W];
        joule_prompt_means mean;
        joule_prompt_opts o = opts(n, 0, 1, 1);
        ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, sc, &mean), JOULE_OK);
        int exact = 0;
        for (int w = 0; w < W; w++) {
            ck_assert_msg((sc[w].edit == 0) == (sc[w].tf_correct == n), "n %d prompt %d: edit %d, %d of %d argmax", n, w,
                          sc[w].edit, sc[w].tf_correct, n);
            ck_assert(sc[w].logprob < 0 && sc[w].edit >= 0 && sc[w].edit <= n);
            exact += sc[w].edit == 0;
        }
        ck_assert_double_eq_tol(mean.exact_match, (double)exact / W, 1e-12);
        ck_assert(isnan(mean.pass_rate));
        if (n == 1) ck_assert_msg(exact > 0 && exact < W, "n = 1: %d of %d exact; the test needs both", exact, W);
    }
}
END_TEST

/* At temperature 1 a one-byte sample equals the target with the probability teacher
 * forcing gives it: the mean pass rate matches the mean exp(log-prob) within sampling
 * error. At a tiny temperature sampling is greedy: all samples pass or none. */
START_TEST(test_pass_rate_follows_the_model) {
    enum { S = 300 };
    joule_prompt_score sc[W];
    joule_prompt_means mean;
    joule_prompt_opts o = opts(1, S, 1.0f, 7);
    ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, sc, &mean), JOULE_OK);
    double p = 0;
    for (int w = 0; w < W; w++) p += exp(sc[w].logprob) / W;
    ck_assert_msg(p > 0.2 && p < 0.95, "mean p(target) %g: the test needs a peaked model", p);
    const double se = sqrt(p * (1 - p) / (W * S));
    ck_assert_msg(fabs(mean.pass_rate - p) < 5 * se + 0.01, "pass rate %g, mean p(target) %g", mean.pass_rate, p);
    o = opts(1, 5, 1e-4f, 7);
    ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, sc, &mean), JOULE_OK);
    for (int w = 0; w < W; w++) ck_assert_int_eq(sc[w].passes, sc[w].edit == 0 ? 5 : 0);
}
END_TEST

START_TEST(test_sampling_is_deterministic) {
    joule_prompt_score a[W], b[W], c[W];
    memset(a, 0, sizeof a), memset(b, 0, sizeof b); /* padding, for the byte comparison */
    joule_prompt_means ma, mb, mc;
    joule_prompt_opts o = opts(2, 20, 1.0f, 11);
    ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, a, &ma), JOULE_OK);
    ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, b, &mb), JOULE_OK);
    ck_assert_mem_eq(a, b, sizeof a);
    o.seed = 12;
    ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, c, &mc), JOULE_OK);
    int differ = 0;
    for (int w = 0; w < W; w++) differ += a[w].passes != c[w].passes;
    ck_assert_msg(differ > 0, "another seed drew the same pass counts on all %d prompts", W);
    ck_assert(joule_prompt_seed(11, 0, 1) != joule_prompt_seed(11, 1, 0));
    /* the file round-trips */
    ck_assert_int_eq(joule_prompt_scores_save(tu_path("p.jsonl"), &o, a, W), JOULE_OK);
    joule_prompt_score *back = NULL;
    int n = 0, samples = 0;
    ck_assert_int_eq(joule_prompt_scores_load(tu_path("p.jsonl"), &back, &n, &samples), JOULE_OK);
    ck_assert_int_eq(n, W);
    ck_assert_int_eq(samples, 20);
    for (int w = 0; w < W; w++)
        ck_assert(back[w].start == a[w].start && back[w].edit == a[w].edit && back[w].tf_correct == a[w].tf_correct &&
                  back[w].logprob == a[w].logprob && back[w].passes == a[w].passes);
    free(back);
    /* bad input: named, refused */
    o.samples = 1;
    o.temperature = 0;
    ck_assert_int_eq(joule_prompt_metrics(g_model, NULL, &g_tok, &o, a, &ma), JOULE_ERR_ARG);
    tu_write_text(tu_path("bad.jsonl"), "{\"n\":2,\"samples\":3,\"prompts\":1}\n{\"prompt\":0,\"start\":0,\"edit\":0,"
                                        "\"tf_correct\":2,\"logprob\":-1,\"passes\":4}\n");
    ck_assert_int_eq(joule_prompt_scores_load(tu_path("bad.jsonl"), &back, &n, &samples), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "bad.jsonl:2: 'passes'"));
}
END_TEST

/* ---- buckets and the fit ---- */

START_TEST(test_buckets) {
    const double rate[6] = {0.9, 0.1, 0.5, 0.5, 0.7, 0.0};
    int b[6];
    joule_difficulty_buckets(rate, 6, 3, b);
    const int want[6] = {0, 2, 1, 1, 0, 2}; /* easiest first; the tie keeps index order */
    ck_assert_mem_eq(b, want, sizeof want);
    double r7[7];
    int b7[7], size[3] = {0, 0, 0};
    for (int i = 0; i < 7; i++) r7[i] = i / 10.0;
    joule_difficulty_buckets(r7, 7, 3, b7);
    for (int i = 0; i < 7; i++) size[b7[i]]++;
    ck_assert(size[0] == 3 && size[1] == 2 && size[2] == 2);
    ck_assert_int_eq(b7[6], 0); /* the highest pass rate is in the easiest bucket */
    ck_assert_int_eq(b7[0], 2);
}
END_TEST

START_TEST(test_fit_recovers_alpha_and_k) {
    const double C[4] = {1e12, 3e12, 1e13, 5e13};
    double y[4], alpha, k;
    for (int i = 0; i < 4; i++) y[i] = 40 * pow(C[i], -0.1);
    ck_assert_int_eq(joule_capability_fit(C, y, 4, &alpha, &k), 4);
    ck_assert_double_eq_tol(k, 0.1, 1e-9);
    ck_assert_double_eq_tol(alpha / 40, 1, 1e-9);
    /* a point with y = 0 (every prompt always passes) carries no information */
    y[1] = 0;
    ck_assert_int_eq(joule_capability_fit(C, y, 4, &alpha, &k), 3);
    ck_assert_double_eq_tol(k, 0.1, 1e-9);
    ck_assert_int_eq(joule_capability_fit(C, y, 2, &alpha, &k), 1);
    ck_assert(isnan(alpha) && isnan(k));
}
END_TEST

/* ---- the report: synthetic runs whose pass rates are made by the formula ---- */

#define P 12
static const double BUDGETS[4] = {1e12, 2e12, 4e12, 8e12};

/* A finished run of arch at budget i with the given metrics; its prompt file (samples
 * 2^24, pass rates rate[P]) next to its checkpoint path. */
static joule_compare_row run(const char *arch, int i, const double m[6], const double *rate) {
    joule_compare_row r;
    memset(&r, 0, sizeof r);
    snprintf(r.arch, sizeof r.arch, "%s", arch);
    r.ok = true;
    r.budget = BUDGETS[i];
    r.flops_counted = (uint64_t)BUDGETS[i];
    r.params_total = r.params_active = 1000;
    r.tokens = 1000;
    r.exact_match = m[0], r.byte_accuracy = m[1], r.logprob = m[2], r.edit_distance = m[3], r.pass_rate = m[4];
    r.val_bpb = m[5];
    r.query_j = r.query_s = r.retrieval_s = NAN;
    r.match_bytes = 8;
    snprintf(r.checkpoint, sizeof r.checkpoint, "%s", tu_path("%s-%d.safetensors", arch, i));
    joule_prompt_opts o = {8, 8, P, 1 << 24, 1.0f, 1};
    joule_prompt_score sc[P];
    for (int p = 0; p < P; p++)
        sc[p] = (joule_prompt_score){(uint64_t)p * 10, 8, 0, -1.0, (int)lround(rate[p] * (1 << 24))};
    ck_assert_int_eq(joule_prompt_scores_save(tu_path("%s-%d.prompts.jsonl", arch, i), &o, sc, P), JOULE_OK);
    return r;
}

static cJSON *g_fit;

/* dense: -log pass_rate = d_p 40 C^-0.1 (prompt 11 never solved by the 4e12 run); moe: the
 * same with C^+0.1 (worse with compute: k < 0); retro: only two prompts ever solved.
 * Metrics: dense's exact match jumps alone, moe's with byte accuracy, retro's never moves. */
static void report_setup(void) {
    tu_make_dir("joule_test_emerge_report.");
    joule_compare_row rows[12];
    int n = 0;
    for (int i = 0; i < 4; i++) {
        double rd[P], rm[P], rr[P];
        for (int p = 0; p < P; p++) {
            const double d = 0.5 + 0.25 * p;
            rd[p] = exp(-d * 40 * pow(BUDGETS[i], -0.1));
            rm[p] = exp(-d * 40 * pow(BUDGETS[i], 0.1) / 1e3);
            rr[p] = p < 2 ? 0.5 : 0;
        }
        if (i == 2) rd[P - 1] = 0;
        const double em[4] = {0, 0.01, 0.02, 0.7};
        const double md[6] = {em[i], 0.3 + 0.1 * i, -2 + 0.2 * i, 6 - 0.5 * i, 0.1 * i, 3 - 0.2 * i};
        const double mm[6] = {em[i], i < 3 ? 0.3 + 0.01 * i : 0.9, -2 + 0.2 * i, 6 - 0.5 * i, 0.1 * i, 3 - 0.2 * i};
        const double mr[6] = {0, 0.3 + 0.1 * i, -2 + 0.2 * i, 6 - 0.5 * i, 0.1 * i, 3 - 0.2 * i};
        rows[n++] = run("dense", i, md, rd);
        rows[n++] = run("moe", i, mm, rm);
        rows[n++] = run("retro", i, mr, rr);
    }
    joule_compare_report_opts o = {50, 0.9, 1, 3};
    ck_assert_msg(joule_compare_report(tu_dir, rows, n, &o, NULL) == JOULE_OK, "%s", joule_last_error());
    char *text = tu_read_in("fit.json", NULL);
    g_fit = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(g_fit);
}

static void report_teardown(void) {
    cJSON_Delete(g_fit);
    tu_remove_dir();
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "'%s' is not a number", key);
    return v->valuedouble;
}

START_TEST(test_prediction_recovers_the_formula) {
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(g_fit, "capability_prediction"),
                                                      "dense");
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq((int)num(d, "kept"), P - 1); /* prompt 11: not solved at least once by every run */
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(d, "buckets");
    ck_assert_int_eq(cJSON_GetArraySize(bs), 3);
    /* buckets of 4, 4, 3 prompts by the smaller runs' pass rates: d = 0.5..1.25, 1.5..2.25, 2.5..3 */
    const double mean_d[3] = {0.875, 1.875, 2.75};
    const int size[3] = {4, 4, 3};
    for (int b = 0; b < 3; b++) {
        const cJSON *x = cJSON_GetArrayItem(bs, b);
        ck_assert_int_eq((int)num(x, "prompts"), size[b]);
        ck_assert_msg(!cJSON_GetObjectItemCaseSensitive(x, "degenerate"), "bucket %d degenerate", b);
        ck_assert_double_eq_tol(num(x, "k"), 0.1, 1e-3);
        ck_assert_double_eq_tol(num(x, "alpha") / (40 * mean_d[b]), 1, 1e-2);
        ck_assert_double_eq_tol(num(x, "predicted") / num(x, "actual"), 1, 1e-3);
        const cJSON *iv = cJSON_GetObjectItemCaseSensitive(x, "predicted_interval");
        ck_assert(cJSON_GetArraySize(iv) == 2);
        ck_assert(cJSON_GetArrayItem(iv, 0)->valuedouble <= num(x, "predicted") * 1.001);
        ck_assert(cJSON_GetArrayItem(iv, 1)->valuedouble >= num(x, "predicted") * 0.999);
    }
    tu_expect_in("report.md", "## Capability prediction (GPT-4 report, section 3.2)");
    tu_expect_in("report.md", "| dense | 1 | 4 |");
}
END_TEST

START_TEST(test_degenerate_fits_are_said) {
    const cJSON *cp = cJSON_GetObjectItemCaseSensitive(g_fit, "capability_prediction");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cp, "moe"), "buckets");
    const cJSON *x;
    cJSON_ArrayForEach(x, bs) {
        const cJSON *why = cJSON_GetObjectItemCaseSensitive(x, "degenerate");
        ck_assert_msg(cJSON_IsString(why) && strstr(why->valuestring, "<= 0"), "moe bucket not degenerate");
        ck_assert_double_eq_tol(num(x, "k"), -0.1, 1e-3);
        ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(x, "predicted"));
    }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(cp, "retro");
    ck_assert_int_eq((int)num(r, "kept"), 2);
    ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItemCaseSensitive(r, "degenerate")->valuestring, "2 of 12 prompts"));
    tu_expect_in("report.md", "| retro | | 2 | | degenerate: 2 of 12 prompts solved at least once by every run");
    tu_expect_in("report.md", "degenerate: k = -0.1 <= 0");
}
END_TEST

static const char *verdict(const char *arch) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(g_fit, "emergence"), arch);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "verdict");
    ck_assert_msg(cJSON_IsString(v), "%s: no verdict", arch);
    return v->valuestring;
}

START_TEST(test_emergence_panel) {
    /* dense: exact match gains 97% of its range in the last step, the smooth metrics 33% */
    ck_assert_msg(strstr(verdict("dense"), "exact match jumps: 97% of its range in one step (4e+12 -> 8e+12 FLOPs)") &&
                      strstr(verdict("dense"), "at most 33%") && strstr(verdict("dense"), "the metric's"),
                  "%s", verdict("dense"));
    /* moe: byte accuracy jumps in the same step */
    ck_assert_msg(strstr(verdict("moe"), "matched by byte accuracy's 97%"), "%s", verdict("moe"));
    ck_assert_msg(strstr(verdict("retro"), "exact match is 0.0000 at every budget"), "%s", verdict("retro"));
    const cJSON *ed = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(g_fit, "emergence"), "dense"), "edit_distance");
    /* lower is better: the first run is the worst (0), the last the best (1) */
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(ed, "normalised");
    ck_assert_double_eq_tol(cJSON_GetArrayItem(norm, 0)->valuedouble, 0, 1e-12);
    ck_assert_double_eq_tol(cJSON_GetArrayItem(norm, 3)->valuedouble, 1, 1e-12);
    ck_assert_double_eq_tol(num(ed, "worst"), 6, 1e-12);
    tu_expect_in("report.md", "## Emergence panel");
    tu_expect_in("report.md", "| 8e+12 | 8e+12 | 1.00 (0.7) | 1.00 (0.6) |");
    char *svg = tu_read_in("emergence.svg", NULL);
    ck_assert_ptr_nonnull(svg);
    int panels = 0;
    for (const char *p = svg; (p = strstr(p, "<svg x=")); p++) panels++;
    ck_assert_int_eq(panels, 3);
    ck_assert_ptr_nonnull(strstr(svg, ">byte accuracy<"));
    free(svg);
}
END_TEST

int main(void) {
    Suite *s = suite_create("emerge");
    TCase *tc = tu_tcase(s, "definitions", 30, NULL, NULL);
    tcase_add_test(tc, test_edit_distance);
    tcase_add_test(tc, test_teacher_forced);
    tcase_add_test(tc, test_buckets);
    tcase_add_test(tc, test_fit_recovers_alpha_and_k);
    /* per test, in the forked child: OpenMP's threads do not survive a fork */
    tc = tu_tcase(s, "model", 60, model_setup, model_teardown);
    tcase_add_test(tc, test_greedy_agrees_with_teacher_forcing);
    tcase_add_test(tc, test_pass_rate_follows_the_model);
    tcase_add_test(tc, test_sampling_is_deterministic);
    tc = tu_tcase(s, "report", 60, NULL, NULL);
    tcase_add_unchecked_fixture(tc, report_setup, report_teardown);
    tcase_add_test(tc, test_prediction_recovers_the_formula);
    tcase_add_test(tc, test_degenerate_fits_are_said);
    tcase_add_test(tc, test_emergence_panel);
    return tu_run_suite(s);
}
