/* The accountant: hand-computed small cases, the exact path (joule's own tables and a
 * registered extension's terms), counted = analytic FLOPs of a real training step, the
 * published presets, and `joule account` end to end. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "joule/account.h"
#include "joule/checkpoint.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "testutil.h"

static void load_json(joule_acct_model *a, const char *json) {
    int rc = joule_acct_from_json(a, json, "test config");
    ck_assert_msg(rc == JOULE_OK, "%s", joule_last_error());
}

static joule_acct_result account(const joule_acct_model *a, int ctx, joule_attn_convention conv, double tokens) {
    joule_acct_opts o;
    joule_acct_opts_init(&o);
    o.ctx = ctx;
    o.conv = conv;
    o.tokens = tokens;
    joule_acct_result r;
    ck_assert_int_eq(joule_account(a, &o, &r), JOULE_OK);
    return r;
}

static double term(const joule_acct_result *r, const char *name) {
    for (int i = 0; i < r->n_terms; i++)
        if (!strcmp(r->terms[i].name, name)) return r->terms[i].flops;
    return -1;
}

#define DENSE_TINY                                                                                                     \
    "{\"arch\":\"dense\",\"n_layers\":2,\"d_model\":32,\"n_heads\":2,\"d_ff\":64,\"ctx\":16,\"vocab\":256}"

/* V d + L (4 d^2 + 3 d F + 2 d) + d = 8192 + 2 (4096 + 6144 + 64) + 32 */
START_TEST(test_dense_params_exact_and_analytic) {
    joule_acct_model a;
    load_json(&a, DENSE_TINY);
    ck_assert(a.buildable);
    joule_acct_result r = account(&a, 0, JOULE_ATTN_JOULE, 1000);
    ck_assert(r.exact);
    ck_assert_double_eq(r.params, 28832);
    ck_assert_double_eq(r.params_embedding, 8192);
    ck_assert_double_eq(r.params_active, 28832);
    ck_assert_double_eq(r.train_6nd, 6.0 * 28832 * 1000);
    a.buildable = false; /* the formulas must give the same for what joule builds */
    joule_acct_result s = account(&a, 0, JOULE_ATTN_JOULE, 1000);
    ck_assert(!s.exact);
    ck_assert_double_eq(s.params, 28832);
    ck_assert_double_eq_tol(s.fwd_per_token, r.fwd_per_token, 1e-9 * r.fwd_per_token);
}
END_TEST

/* per token: qkv 6 d^2 L, out 2 d^2 L, ffn 6 d F L, logits 2 d V; attention by convention */
START_TEST(test_dense_flops_terms_and_conventions) {
    joule_acct_model a;
    load_json(&a, DENSE_TINY);
    joule_acct_result r = account(&a, 16, JOULE_ATTN_JOULE, 0);
    ck_assert_double_eq(term(&r, "qkv"), 2 * 6.0 * 32 * 32);
    ck_assert_double_eq(term(&r, "out_proj"), 2 * 2.0 * 32 * 32);
    ck_assert_double_eq(term(&r, "ffn"), 2 * 6.0 * 32 * 64);
    ck_assert_double_eq(term(&r, "logits"), 2.0 * 32 * 256);
    /* exact: per-token sum times T is joule_model_forward_flops */
    ck_assert_uint_eq(r.fwd_sequence, joule_model_forward_flops(&a.cfg, 1, 16));
    ck_assert_double_eq_tol(r.fwd_per_token * 16, (double)r.fwd_sequence, 1e-6);
    joule_acct_result k = account(&a, 16, JOULE_ATTN_KAPLAN, 0);
    ck_assert_double_eq(term(&k, "attention"), 2 * 2.0 * 16 * 32);
    joule_acct_result p = account(&a, 16, JOULE_ATTN_PALM, 0);
    ck_assert_double_eq(term(&p, "attention"), 2 * 4.0 * 16 * 32);
}
END_TEST

/* GPT-style: learned positions (ctx d), LayerNorm (2d), biases, 2-matrix GELU FFN.
 * d=4, L=1, F=16, V=10, ctx=8: emb 40 + 32; attn 64 + 16; norms 2x8 + 8; ffn 128 + 16 + 4. */
START_TEST(test_gpt_style_params_by_hand) {
    joule_acct_model a;
    load_json(&a, "{\"arch\":\"dense\",\"n_layers\":1,\"d_model\":4,\"n_heads\":1,\"d_ff\":16,\"ctx\":8,\"vocab\":10,"
                  "\"ffn\":\"gelu\",\"pos_emb\":\"learned\",\"biases\":true}");
    ck_assert(!a.buildable);
    joule_acct_result r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    ck_assert(!r.exact);
    ck_assert_double_eq(r.params_embedding, 72);
    ck_assert_double_eq(r.params, 72 + 80 + 24 + 148);
    ck_assert_double_eq(term(&r, "ffn"), 2 * 2.0 * 4 * 16);
}
END_TEST

/* Multi-query, head_dim != d/H (PaLM-style): q d*H*hd, k and v d*hd each, o H*hd*d. */
START_TEST(test_multi_query_attention_by_hand) {
    joule_acct_model a;
    load_json(&a, "{\"arch\":\"dense\",\"n_layers\":1,\"d_model\":8,\"n_heads\":2,\"head_dim\":6,\"kv_heads\":1,"
                  "\"d_ff\":4,\"ctx\":8,\"vocab\":5}");
    joule_acct_result r = account(&a, 0, JOULE_ATTN_KAPLAN, 0);
    /* emb 40; attn 8*12 + 2*8*6 + 12*8 = 288; ffn 3*8*4 = 96; norms 3*8 */
    ck_assert_double_eq(r.params, 40 + 288 + 96 + 24);
    ck_assert_double_eq(term(&r, "qkv"), 2.0 * 8 * (12 + 12));
    ck_assert_double_eq(term(&r, "attention"), 2.0 * 8 * 12);
}
END_TEST

/* MoE formula: router 2 d E, top_k experts; active = total - (1 - k/E) experts. */
START_TEST(test_moe_analytic) {
    joule_acct_model a;
    load_json(&a, "{\"arch\":\"moe\",\"n_layers\":2,\"d_model\":8,\"n_heads\":2,\"d_ff\":16,\"ctx\":8,\"vocab\":300,"
                  "\"moe\":{\"experts\":4,\"top_k\":2,\"every\":2,\"d_ff_expert\":16}}");
    ck_assert(a.cfg.kinds[1].ffn == JOULE_FFN_MOE && a.cfg.kinds[0].ffn == JOULE_FFN_DENSE);
    joule_acct_result r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    const double experts = 4 * 3.0 * 8 * 16;
    ck_assert_double_eq(r.params_experts, experts);
    ck_assert_double_eq(r.params, 300 * 8 + 2 * (4 * 64 + 16) + 3 * 8 * 16 + 8 * 4 + experts + 8);
    ck_assert_double_eq(r.params_active, r.params - 0.5 * experts);
    ck_assert_double_eq(term(&r, "router"), 2.0 * 8 * 4);
    ck_assert_double_eq(term(&r, "experts"), 2 * 2 * 3.0 * 8 * 16);
}
END_TEST

/* ---- a stand-in MoE extension: the accountant must use the registered tables ---- */
static void fake_layout(joule_model *m, int l) {
    char name[96];
    const joule_config *c = &m->cfg;
    snprintf(name, sizeof name, "layers.%d.moe.router.weight", l);
    joule_model_add_tensor(m, name, c->moe.n_experts, c->d_model);
    for (int e = 0; e < c->moe.n_experts; e++) {
        snprintf(name, sizeof name, "layers.%d.moe.experts.%d.w13.weight", l, e);
        joule_model_add_tensor(m, name, 2 * c->moe.d_ff_expert, c->d_model);
        snprintf(name, sizeof name, "layers.%d.moe.experts.%d.w2.weight", l, e);
        joule_model_add_tensor(m, name, c->d_model, c->moe.d_ff_expert);
    }
}
static int fake_terms(const joule_config *c, int l, int B, int T, const char **names, uint64_t *fl, int max) {
    (void)l;
    if (max < 2) return 0;
    uint64_t N = (uint64_t)B * (uint64_t)T, C = (uint64_t)c->d_model;
    names[0] = "router";
    fl[0] = 2 * N * C * (uint64_t)c->moe.n_experts + 7 * N; /* +7N: a term only the extension knows */
    names[1] = "experts";
    fl[1] = (uint64_t)c->moe.top_k * 6 * N * C * (uint64_t)c->moe.d_ff_expert;
    return 2;
}
static uint64_t fake_flops(const joule_config *c, int l, int B, int T) {
    const char *n[2];
    uint64_t f[2];
    fake_terms(c, l, B, T, n, f, 2);
    return f[0] + f[1];
}

START_TEST(test_exact_uses_registered_extension) {
    static const joule_ext_ops fake = {
        .name = "fake_moe", .layout = fake_layout, .forward_flops = fake_flops, .flop_terms = fake_terms};
    const joule_ext_ops *saved = joule_ext_get(JOULE_EXT_MOE);
    joule_ext_register(JOULE_EXT_MOE, &fake);
    joule_acct_model a;
    load_json(&a, "{\"arch\":\"moe\",\"n_layers\":2,\"d_model\":8,\"n_heads\":2,\"d_ff\":16,\"ctx\":8,\"vocab\":256,"
                  "\"layers\":[{\"ffn\":\"dense\"},{\"ffn\":\"moe\"}],"
                  "\"moe\":{\"experts\":4,\"top_k\":2,\"every\":2,\"d_ff_expert\":16}}");
    ck_assert(a.buildable);
    joule_acct_result r = account(&a, 8, JOULE_ATTN_JOULE, 0);
    ck_assert(r.exact);
    ck_assert_double_eq(r.params_experts, 4 * 3.0 * 8 * 16);
    ck_assert_double_eq(r.params_active, r.params - 0.5 * r.params_experts);
    ck_assert_double_eq(term(&r, "router"), 2.0 * 8 * 4 + 7);
    ck_assert_double_eq_tol(r.fwd_per_token * 8, (double)joule_model_forward_flops(&a.cfg, 1, 8), 1e-6);
    joule_ext_register(JOULE_EXT_MOE, saved);
}
END_TEST

/* RETRO: CCA and encoder terms by the stated formulas; search line apart. */
START_TEST(test_retro_terms_and_search) {
    joule_acct_model a;
    load_json(&a, "{\"arch\":\"retro\",\"n_layers\":3,\"d_model\":8,\"n_heads\":2,\"d_ff\":16,\"ctx\":16,\"vocab\":300,"
                  "\"retro\":{\"chunk\":4,\"k\":2,\"cca_start\":1,\"cca_every\":2,\"enc_layers\":1,\"enc_d_model\":8,"
                  "\"enc_heads\":2,\"enc_d_ff\":16},\"retrieval\":{\"index\":\"flat\",\"db_tokens\":4000,\"dim\":6}}");
    ck_assert(a.cfg.kinds[1].cca && !a.cfg.kinds[0].cca && !a.cfg.kinds[2].cca);
    joule_acct_result r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    /* one CCA layer: 4 d^2 + (2k) 4 d_enc d + 4 k 2m d */
    ck_assert_double_eq(term(&r, "cca"), 4.0 * 64 + 4 * 4.0 * 64 + 4.0 * 2 * 8 * 8);
    ck_assert(term(&r, "encoder") > 0);
    ck_assert_double_eq(r.search_per_query, 2.0 * 6 * 1000); /* flat: 2 d N, N = 4000 / 4 chunks */
    ck_assert_double_eq(r.retrievals_per_token, 0.25);
    ck_assert_double_eq(joule_search_flops("ivf", 1000, 6, 10, 2, 0, 0, 0), 2.0 * 6 * 10 + 2 * 100 * 2.0 * 6);
    /* a query of 6 + 5 tokens pays the chunk work where decoding does: chunks complete at
     * positions 3 (prompt) and 7 (decode), each encoded once with its keys/values (2k x m x
     * 4 d_enc d); q, o and attention (768) at positions 3 .. 10 */
    joule_acct_opts o;
    joule_acct_opts_init(&o);
    joule_acct_query q;
    ck_assert_int_eq(joule_account_query(&a, &o, 6, 5, &q), JOULE_OK);
    joule_acct_result r6 = account(&a, 6, JOULE_ATTN_JOULE, 0);
    const double enc = term(&r6, "encoder"), chunk = 4 * 4.0 * 8 * 8 * 4 + 4 * enc, row = 768;
    const double rest = r6.fwd_per_token - term(&r6, "attention") - term(&r6, "cca") - enc;
    ck_assert_double_eq_tol(q.cca, 8 * row + 2 * 4 * 4.0 * 8 * 8 * 4, 1e-6);
    ck_assert_double_eq_tol(q.encoder, 2 * 4 * enc, 1e-6);
    ck_assert_double_eq_tol(q.prefill, (rest + term(&r6, "attention")) * 6 + 3 * row + chunk, 1e-6);
    ck_assert_double_eq_tol(q.decode, 5 * rest + 3 * 4.0 * 8 * (7 + 8 + 9 + 10 + 11) + 5 * row + chunk, 1e-6);
    ck_assert_double_eq(q.search, 2 * r6.search_per_query);
}
END_TEST

START_TEST(test_query_and_cost) {
    joule_acct_model a;
    load_json(&a, DENSE_TINY);
    joule_acct_opts o;
    joule_acct_opts_init(&o);
    joule_acct_query q;
    ck_assert_int_eq(joule_account_query(&a, &o, 4, 2, &q), JOULE_OK);
    joule_acct_result r4 = account(&a, 4, JOULE_ATTN_JOULE, 0);
    const double rest = r4.fwd_per_token - term(&r4, "attention");
    ck_assert_double_eq_tol(q.prefill, r4.fwd_per_token * 4, 1e-6);
    ck_assert_double_eq_tol(q.decode, 2 * rest + 2 * 4.0 * 32 * (5 + 6), 1e-6);
    ck_assert_double_eq(q.kv_cache_bytes, 2.0 * 6 * 2 * 32 * 4);
    joule_hw_profile hw;
    memset(&hw, 0, sizeof hw);
    strcpy(hw.name, "t");
    hw.peak_flops[joule_hw_precision_index("bf16")] = 1e15;
    hw.tdp_w = 400;
    joule_acct_cost c;
    ck_assert_int_eq(joule_account_cost(1e18, &hw, "bf16", 0.5, 2, 1.2, 500, &c), JOULE_OK);
    ck_assert_double_eq_tol(c.seconds, 1000, 1e-9);
    ck_assert_double_eq_tol(c.device_j, 800e3, 1e-6);
    ck_assert_double_eq_tol(c.facility_kwh, 800e3 * 1.2 / 3.6e6, 1e-12);
    ck_assert_double_eq_tol(c.kg_co2e, c.facility_kwh * 0.5, 1e-12);
    ck_assert_int_eq(joule_account_cost(1e18, &hw, "fp32", 0.5, 1, 1, 1, &c), JOULE_ERR_ARG);
}
END_TEST

START_TEST(test_bad_accounting_configs) {
    joule_acct_model a;
    ck_assert_int_ne(joule_acct_from_json(&a, "[1]", "x.json"), JOULE_OK);
    ck_assert_int_ne(joule_acct_from_json(&a,
                                          "{\"arch\":\"dense\",\"n_layers\":2,\"d_model\":32,\"n_heads\":2,"
                                          "\"d_ff\":64,\"ctx\":16,\"vocab\":256,\"ffn\":\"relu\"}",
                                          "x.json"),
                     JOULE_OK);
    ck_assert_msg(strstr(joule_last_error(), "x.json") && strstr(joule_last_error(), "ffn"), "%s", joule_last_error());
    ck_assert_int_ne(joule_acct_from_json(&a,
                                          "{\"arch\":\"dense\",\"n_layers\":2,\"d_model\":32,\"n_heads\":2,"
                                          "\"d_ff\":64,\"ctx\":16,\"vocab\":-3}",
                                          "x.json"),
                     JOULE_OK);
    /* joule's own validation is unchanged: vocab 300 is not buildable */
    load_json(&a,
              "{\"arch\":\"dense\",\"n_layers\":2,\"d_model\":32,\"n_heads\":2,\"d_ff\":64,\"ctx\":16,\"vocab\":300}");
    ck_assert(!a.buildable);
    ck_assert_int_ne(joule_config_validate(&a.cfg, "x"), JOULE_OK);
}
END_TEST

/* Counted FLOPs of a real forward+backward equal 3x the analytic forward within 1%. */
START_TEST(test_counted_equals_analytic_dense) {
    joule_set_threads(1);
    joule_config c = joule_config_default(2, 64, 4, 128, 64);
    joule_model *m = tu_model(&c, 2, 1);
    int32_t in[2 * 64], tg[2 * 64];
    for (int i = 0; i < 128; i++) {
        in[i] = (i * 7) % 256;
        tg[i] = (i * 13 + 1) % 256;
    }
    uint64_t f0 = joule_flops_counted();
    double loss;
    joule_model_zero_grad(m);
    ck_assert_int_eq(joule_model_forward(m, in, tg, 2, 64, &loss), JOULE_OK);
    ck_assert_int_eq(joule_model_backward(m, 1.0f), JOULE_OK);
    double counted = (double)(joule_flops_counted() - f0);
    joule_acct_model a;
    joule_acct_from_config(&a, &c);
    joule_acct_result r = account(&a, 64, JOULE_ATTN_JOULE, 128);
    ck_assert(r.exact);
    double analytic = r.train_exact; /* 3 x forward per token x 128 tokens */
    ck_assert_msg(fabs(counted - analytic) <= 0.01 * analytic, "counted %.6g vs analytic %.6g", counted, analytic);
    joule_model_free(m);
}
END_TEST

/* ---- published presets ---- */
static void preset(joule_acct_model *a, const char *name) {
    const char *src = getenv("JOULE_TEST_SRC");
    ck_assert_msg(src != NULL, "JOULE_TEST_SRC is not set (run through ctest)");
    char dirs[4096], path[4096];
    snprintf(dirs, sizeof dirs, "%s/docs/presets", src);
    ck_assert_msg(joule_find_data_file(name, dirs, path, sizeof path) == JOULE_OK, "%s", joule_last_error());
    char *text;
    ck_assert_msg(joule_read_text(path, (size_t)64 << 20, &text) == JOULE_OK, "%s", joule_last_error());
    int rc = joule_acct_from_json(a, text, path);
    free(text);
    ck_assert_msg(rc == JOULE_OK, "%s", joule_last_error());
}

static void within(double ours, double published, double pct, const char *what) {
    ck_assert_msg(published > 0, "%s: no published number", what);
    double d = 100 * (ours - published) / published;
    ck_assert_msg(fabs(d) <= pct, "%s: %.6g vs published %.6g (%+.2f%%, allowed %g%%)", what, ours, published, d, pct);
}

START_TEST(test_presets_agree_with_published) {
    joule_acct_model a;
    joule_acct_result r;
    preset(&a, "gpt3");
    r = account(&a, 0, JOULE_ATTN_JOULE, 300e9);
    within(r.params, a.pub_params, 1, "gpt3 params");
    within(r.train_6nd, a.pub_train_flops, 1, "gpt3 6ND");
    within(r.train_exact, a.pub_train_flops, 3, "gpt3 exact training FLOPs");
    preset(&a, "chinchilla");
    r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    within(r.params, a.pub_params, 1, "chinchilla params");
    within(r.train_6nd, a.pub_train_flops, 3, "chinchilla 6ND");
    preset(&a, "palm");
    r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    within(r.params, a.pub_params, 0.5, "palm params");
    preset(&a, "glam");
    r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    within(r.params, a.pub_params, 5, "glam total params");
    within(r.params_active, a.pub_active_params, 1, "glam active params");
    preset(&a, "retro");
    r = account(&a, 0, JOULE_ATTN_JOULE, 0);
    within(r.params, a.pub_params, 3, "retro params");
    ck_assert(r.search_per_query > 0);
}
END_TEST

/* ---- the command ---- */
static int run_joule(const char *args, char **out) {
    const char *bin = getenv("JOULE_BIN");
    ck_assert_msg(bin != NULL, "JOULE_BIN is not set (run through ctest)");
    char cmd[8192], path[] = "/tmp/joule_acct_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    snprintf(cmd, sizeof cmd, "'%s' %s > '%s' 2>&1", bin, args, path);
    int st = system(cmd);
    *out = tu_must_read(path, NULL);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1000;
}

START_TEST(test_cli_account) {
    char *out, args[1024];
    const char *src = getenv("JOULE_TEST_SRC");
    ck_assert_ptr_nonnull(src);
    ck_assert_int_eq(run_joule("account --preset gpt3 --tokens 300e9 --json", &out), 0);
    cJSON *o = cJSON_Parse(out);
    ck_assert_msg(o != NULL, "not JSON: %s", out);
    double d = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "published"), "train_6nd_diff_pct")->valuedouble;
    ck_assert_msg(fabs(d) < 1, "6ND differs by %g%%", d);
    cJSON_Delete(o);
    free(out);
    /* RETRO: the query's encoder and CCA FLOPs, as the accountant gives them */
    joule_acct_model rm;
    joule_acct_opts ro;
    joule_acct_query rq;
    preset(&rm, "retro");
    joule_acct_opts_init(&ro);
    ck_assert_int_eq(joule_account_query(&rm, &ro, 100, 20, &rq), JOULE_OK);
    ck_assert_int_eq(run_joule("account --preset retro --prompt 100 --generate 20 --json", &out), 0);
    ck_assert_ptr_nonnull(o = cJSON_Parse(out));
    const cJSON *qj = cJSON_GetObjectItem(o, "query");
    ck_assert(rq.encoder > 0 && cJSON_GetObjectItem(qj, "flops_encoder")->valuedouble == rq.encoder);
    ck_assert(rq.cca > 0 && cJSON_GetObjectItem(qj, "flops_cca")->valuedouble == rq.cca);
    cJSON_Delete(o);
    free(out);
    snprintf(args, sizeof args, "account --preset chinchilla --hardware nvidia-a100-sxm4-80gb --devices 1024");
    ck_assert_int_eq(run_joule(args, &out), 0);
    ck_assert_msg(strstr(out, "modeled:tdp") && strstr(out, "kWh"), "%s", out);
    free(out);
    ck_assert_int_eq(run_joule("account --meters --power-watts 30", &out), 0);
    ck_assert_msg(strstr(out, "rapl") && strstr(out, "measured:constant"), "%s", out);
    free(out);
    ck_assert_int_eq(run_joule("account --preset nosuch", &out), 2);
    ck_assert_msg(strstr(out, "nosuch"), "%s", out);
    free(out);
    ck_assert_int_eq(run_joule("account --config /nonexistent.json", &out), 2);
    free(out);
    ck_assert_int_eq(run_joule("account --preset gpt3 --utilization 2", &out), 2);
    free(out);
    /* a checkpoint: exact counting, the same parameters as the model itself */
    joule_config cfg = joule_config_default(2, 32, 2, 64, 16);
    joule_model *m;
    ck_assert_int_eq(joule_model_create(&m, &cfg), JOULE_OK);
    tu_make_dir("joule_acct_ckpt_");
    const char *path = tu_path("m.safetensors");
    ck_assert_int_eq(joule_checkpoint_save(m, path, NULL, NULL), JOULE_OK);
    joule_param_counts pc = joule_model_param_counts(m);
    joule_model_free(m);
    snprintf(args, sizeof args, "account --model %s --json", path);
    ck_assert_int_eq(run_joule(args, &out), 0);
    o = cJSON_Parse(out);
    ck_assert_msg(o != NULL, "not JSON: %s", out);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "counting")->valuestring, "exact");
    ck_assert_double_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "params"), "total")->valuedouble, (double)pc.total);
    cJSON_Delete(o);
    free(out);
    tu_remove_dir();
    ck_assert_int_eq(run_joule("account --help", &out), 0);
    ck_assert_msg(strstr(out, "--attention"), "%s", out);
    free(out);
}
END_TEST

static Suite *account_suite(void) {
    Suite *s = suite_create("account");
    TCase *f = tu_tcase(s, "formulas", 60, NULL, NULL);
    tcase_add_test(f, test_dense_params_exact_and_analytic);
    tcase_add_test(f, test_dense_flops_terms_and_conventions);
    tcase_add_test(f, test_gpt_style_params_by_hand);
    tcase_add_test(f, test_multi_query_attention_by_hand);
    tcase_add_test(f, test_moe_analytic);
    tcase_add_test(f, test_exact_uses_registered_extension);
    tcase_add_test(f, test_retro_terms_and_search);
    tcase_add_test(f, test_query_and_cost);
    tcase_add_test(f, test_bad_accounting_configs);
    TCase *c = tu_tcase(s, "counted", 120, NULL, NULL);
    tcase_add_test(c, test_counted_equals_analytic_dense);
    TCase *p = tu_tcase(s, "presets", 60, NULL, NULL);
    tcase_add_test(p, test_presets_agree_with_published);
    TCase *k = tu_tcase(s, "cli", 120, NULL, NULL);
    tcase_add_test(k, test_cli_account);
    return s;
}

int main(void) {
    return tu_run_suite(account_suite());
}
