/* Energy per query: the batched prefill, the MoE rows op and the batched step over n
 * sequences against token-at-a-time decoding, the runner on a tiny dense and a tiny MoE
 * checkpoint (trained 2 steps here), its outputs, its refusals, and `joule bench energy`
 * end to end ($JOULE_BIN). Everything runs in a temp folder. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "joule/bench_energy.h"
#include "joule/checkpoint.h"
#include "joule/model.h"
#include "joule/retro_db.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "testutil.h"

#define TINY "--layers 2 --d-model 32 --heads 2 --d-ff 64 --ctx 64 --batch 2 --steps 2 --threads 1"

/* One-line error on stderr containing needle. */
static void expect_error(const char *needle) {
    char *e = tu_read_in("err.txt", NULL);
    ck_assert_ptr_nonnull(e);
    ck_assert_msg(strstr(e, needle) != NULL, "stderr lacks '%s': %s", needle, e);
    const char *nl = strchr(e, '\n');
    ck_assert_msg((nl && nl[1] == '\0') || strstr(e, "--help"), "not one line: %s", e);
    free(e);
}

/* A corpus of varied sentences in paragraphs, prepared into d/, and two checkpoints. */
static void suite_setup(void) {
    tu_make_dir("joule_test_bench_energy.");
    FILE *f = fopen(tu_path("corpus.txt"), "w");
    ck_assert_ptr_nonnull(f);
    static const char *w[] = {"river", "lamp", "quietly", "seven", "ordinary", "glass", "north", "painted"};
    for (int p = 0; p < 120; p++) {
        for (int s = 0; s < 6; s++) fprintf(f, "The %s %s the %s. ", w[(p + s) % 8], w[(p * 3 + s) % 8], w[(s * 5 + p) % 8]);
        fputs("\n\n", f);
    }
    fclose(f);
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --out d --split blank-line --val-fraction 0.2"), 0);
    ck_assert_int_eq(tu_joule("train --data d " TINY " --out dense.safetensors"), 0);
    ck_assert_int_eq(tu_joule("train --data d " TINY " --arch moe --experts 4 --d-ff-expert 32 --out moe.safetensors"), 0);
    ck_assert_int_eq(tu_joule("db build --data d --out db --chunk 8 --threads 1"), 0);
    ck_assert_int_eq(tu_joule("train --data d " TINY " --arch retro --db db --out retro.safetensors"), 0);
}

/* ---------------------------------------------------------------- batched prefill */

static joule_model *random_model(bool moe) {
    joule_config c = joule_config_default(2, 32, 4, 64, 48);
    if (moe) {
        joule_moe_config e = joule_moe_config_default(64);
        e.n_experts = 4;
        e.top_k = 2;
        e.every = 1; /* both layers MoE */
        e.d_ff_expert = 32;
        joule_moe_apply(&c, &e);
    }
    joule_model *m;
    ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
    joule_model_init(m, 7);
    /* larger weights than the init so that errors would show */
    for (size_t i = 0; i < m->n_params; i++) m->params[i] *= 4.0f;
    return m;
}

static void check_prefill(bool moe) {
    joule_model *m = random_model(moe);
    const joule_config *c = &m->cfg;
    const int n = 37, C = c->d_model, V = c->vocab, L = c->n_layers;
    int32_t tok[37];
    joule_rng r;
    joule_rng_seed(&r, 3);
    for (int i = 0; i < n; i++) tok[i] = (int32_t)joule_rng_below(&r, 256);
    joule_decoder *a, *b;
    ck_assert_int_eq(joule_decoder_create(&a, m), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&b, m), JOULE_OK);
    const float *la = NULL, *lb = NULL;
    for (int i = 0; i < n; i++) ck_assert_int_eq(joule_decoder_step(a, tok[i], &la), JOULE_OK);
    joule_flops_reset();
    ck_assert_int_eq(joule_decoder_prefill(b, tok, n, &lb), JOULE_OK);
    /* one forward over n tokens, less the n-1 logits rows a prefill does not need */
    ck_assert_uint_eq(joule_flops_counted(), joule_model_forward_flops(c, 1, n) - 2ull * C * V * (n - 1));
    ck_assert_int_eq(b->pos, n);
    /* Float32 sums in other orders (blocked attention, sgemm against the per-token path):
     * the largest difference seen is 1.1e-5, the MoE model's, after head_dot's fixed tree. */
    tu_expect_near(lb, la, (size_t)V, 3e-5, "logits");
    const size_t T = (size_t)c->ctx;
    for (int l = 0; l < L; l++) {
        tu_expect_near(b->k_cache + l * T * C, a->k_cache + l * T * C, (size_t)n * C, 1e-5, "k cache");
        tu_expect_near(b->v_cache + l * T * C, a->v_cache + l * T * C, (size_t)n * C, 1e-5, "v cache");
    }
    /* decoding on from either cache gives the same next logits */
    ck_assert_int_eq(joule_decoder_step(a, 65, &la), JOULE_OK);
    ck_assert_int_eq(joule_decoder_step(b, 65, &lb), JOULE_OK);
    tu_expect_near(lb, la, (size_t)V, 3e-5, "logits after prefill");
    /* a non-empty cache continues token by token; too many tokens are refused */
    joule_decoder_reset(a);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(joule_decoder_step(a, tok[i], &la), JOULE_OK);
    ck_assert_int_eq(joule_decoder_prefill(a, tok + 3, n - 3, &la), JOULE_OK);
    joule_decoder_reset(b);
    ck_assert_int_eq(joule_decoder_prefill(b, tok, n, &lb), JOULE_OK);
    tu_expect_near(lb, la, (size_t)V, 3e-5, "logits, cache continued");
    joule_decoder_reset(b);
    int32_t many[49] = {0};
    ck_assert_int_eq(joule_decoder_prefill(b, many, 49, &lb), JOULE_ERR_ARG);
    many[5] = 300;
    ck_assert_int_eq(joule_decoder_prefill(b, many, 10, &lb), JOULE_ERR_ARG);
    joule_decoder_free(a);
    joule_decoder_free(b);
    joule_model_free(m);
}

START_TEST(test_prefill_equals_steps_dense) { check_prefill(false); }
END_TEST

START_TEST(test_prefill_equals_steps_moe) { check_prefill(true); }
END_TEST

/* The MoE rows op against the one-token op row by row: same sums, same counted FLOPs; rows
 * wider than the context grow its buffers. */
START_TEST(test_moe_rows_equal_one_token) {
    joule_model *m = random_model(true);
    const int C = m->cfg.d_model, n = 60;
    const joule_ext_ops *ops = m->ext_ops[JOULE_EXT_MOE];
    ck_assert_ptr_nonnull(ops->decode_rows);
    float *xn = malloc((size_t)n * C * sizeof(float)), *xa = malloc((size_t)n * C * sizeof(float));
    float *xb = malloc((size_t)n * C * sizeof(float));
    ck_assert(xn && xa && xb);
    joule_rng r;
    joule_rng_seed(&r, 5);
    for (int i = 0; i < n * C; i++) {
        xn[i] = 2.0f * joule_rng_float(&r) - 1.0f;
        xa[i] = xb[i] = joule_rng_float(&r);
    }
    joule_decoder *d;
    ck_assert_int_eq(joule_decoder_create(&d, m), JOULE_OK);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        joule_flops_reset();
        for (int t = 0; t < n; t++)
            ck_assert_int_eq(ops->decode_step(d, l, xn + (size_t)t * C, xa + (size_t)t * C), JOULE_OK);
        const uint64_t one = joule_flops_counted();
        joule_flops_reset();
        for (int part = 0; part < 2; part++) /* 5 rows (buffers for ctx = 48 rows), then 55 */
            ck_assert_int_eq(ops->decode_rows(d, l, xn + (size_t)part * 5 * C, xb + (size_t)part * 5 * C,
                                              part ? n - 5 : 5),
                             JOULE_OK);
        ck_assert_uint_eq(joule_flops_counted(), one);
        ck_assert_uint_eq(one, ops->forward_flops(&m->cfg, l, 1, n));
        tu_expect_near(xb, xa, (size_t)n * C, 1e-5, "rows op");
    }
    joule_decoder_free(d);
    joule_model_free(m);
    free(xn);
    free(xa);
    free(xb);
}
END_TEST

/* ---------------------------------------------------------------- batched step */

/* FLOPs of one-token steps at positions pos[0..n): the projections, attention over p+1
 * keys, the FFN (MoE: the extension's analytic figure for one token) and the logits. */
static uint64_t step_flops(const joule_model *m, const int *pos, int n) {
    const joule_config *c = &m->cfg;
    const uint64_t C = (uint64_t)c->d_model, F = (uint64_t)c->d_ff, V = (uint64_t)c->vocab;
    uint64_t f = 0;
    for (int i = 0; i < n; i++) {
        f += 2 * V * C;
        for (int l = 0; l < c->n_layers; l++)
            f += 8 * C * C + 4 * (uint64_t)(pos[i] + 1) * C +
                 (c->kinds[l].ffn == JOULE_FFN_MOE ? m->ext_ops[JOULE_EXT_MOE]->forward_flops(c, l, 1, 1) : 6 * C * F);
    }
    return f;
}

/* Decoders ds (batched) and ref (single steps) hold the same sequences: feed tokens tok[i]
 * to sequences idx[0..n) both ways and compare logits, positions, caches and FLOPs. */
static void batch_vs_single(joule_decoder_batch *bt, joule_decoder **ds, joule_decoder **ref, const int *idx, int n,
                            const int32_t *tok) {
    const joule_model *m = ds[0]->m;
    const int V = m->cfg.vocab, C = m->cfg.d_model, T = m->cfg.ctx;
    joule_decoder *sel[8];
    int pos[8];
    for (int i = 0; i < n; i++) {
        sel[i] = ds[idx[i]];
        pos[i] = sel[i]->pos;
    }
    const float *lb;
    joule_flops_reset();
    ck_assert_msg(joule_decoder_step_batch(bt, sel, n, tok, &lb) == JOULE_OK, "%s", joule_last_error());
    ck_assert_uint_eq(joule_flops_counted(), step_flops(m, pos, n));
    for (int i = 0; i < n; i++) {
        const float *la;
        joule_decoder *a = ref[idx[i]];
        ck_assert_int_eq(joule_decoder_step(a, tok[i], &la), JOULE_OK);
        ck_assert_int_eq(sel[i]->pos, pos[i] + 1);
        tu_expect_near(lb + (size_t)i * V, la, (size_t)V, 1e-5, "batched logits");
        for (int l = 0; l < m->cfg.n_layers; l++) {
            const size_t at = ((size_t)l * T + (size_t)pos[i]) * C;
            tu_expect_near(sel[i]->k_cache + at, a->k_cache + at, (size_t)C, 1e-5, "batched k cache");
            tu_expect_near(sel[i]->v_cache + at, a->v_cache + at, (size_t)C, 1e-5, "batched v cache");
        }
    }
}

static void check_batch(joule_model *m) {
    enum { N = 4 };
    /* 1 thread: the 4-row and 2-row steps run through the batch's packed weights */
    joule_set_threads(1);
    const int plen[N] = {1, 9, 20, 33}; /* every sequence at its own position */
    joule_decoder *ds[N], *ref[N];
    joule_rng r;
    joule_rng_seed(&r, 11);
    int32_t prompt[33], tok[N];
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(joule_decoder_create(&ds[i], m), JOULE_OK);
        ck_assert_int_eq(joule_decoder_create(&ref[i], m), JOULE_OK);
        for (int t = 0; t < plen[i]; t++) prompt[t] = (int32_t)joule_rng_below(&r, 256);
        const float *lg;
        ck_assert_int_eq(joule_decoder_prefill(ds[i], prompt, plen[i], &lg), JOULE_OK);
        ck_assert_int_eq(joule_decoder_prefill(ref[i], prompt, plen[i], &lg), JOULE_OK);
    }
    joule_decoder_batch *bt;
    ck_assert_int_eq(joule_decoder_batch_create(&bt, m, N), JOULE_OK);
    const int all[N] = {0, 1, 2, 3}, some[2] = {3, 1};
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < N; i++) tok[i] = (int32_t)joule_rng_below(&r, 256);
        batch_vs_single(bt, ds, ref, all, N, tok);
    }
    batch_vs_single(bt, ds, ref, some, 2, tok); /* a subset, in another order */
    /* refusals touch no decoder */
    const float *lg;
    joule_decoder *dup[2] = {ds[0], ds[0]};
    ck_assert_int_eq(joule_decoder_step_batch(bt, ds, 0, tok, &lg), JOULE_ERR_ARG);
    ck_assert_int_eq(joule_decoder_step_batch(bt, ds, N + 1, tok, &lg), JOULE_ERR_ARG);
    ck_assert_int_eq(joule_decoder_step_batch(bt, dup, 2, tok, &lg), JOULE_ERR_ARG);
    tok[2] = 256;
    ck_assert_int_eq(joule_decoder_step_batch(bt, ds, N, tok, &lg), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "sequence 2"));
    tok[2] = 1;
    const int full = ds[1]->pos;
    ds[1]->pos = m->cfg.ctx;
    ck_assert_int_eq(joule_decoder_step_batch(bt, ds, N, tok, &lg), JOULE_ERR_ARG);
    ds[1]->pos = full;
    for (int i = 0; i < N; i++) ck_assert_int_eq(ds[i]->pos, ref[i]->pos);
    joule_decoder_batch *none;
    ck_assert_int_eq(joule_decoder_batch_create(&none, m, 0), JOULE_ERR_ARG);
    joule_decoder_batch_free(bt);
    for (int i = 0; i < N; i++) {
        joule_decoder_free(ds[i]);
        joule_decoder_free(ref[i]);
    }
}

START_TEST(test_batch_step_dense) {
    joule_model *m = random_model(false);
    check_batch(m);
    joule_model_free(m);
}
END_TEST

START_TEST(test_batch_step_moe) {
    joule_model *m = random_model(true);
    check_batch(m);
    joule_model_free(m);
}
END_TEST

/* Chunked cross-attention goes decoder by decoder, with the same results. */
START_TEST(test_batch_step_retro) {
    joule_config c = joule_config_default(3, 16, 2, 24, 48);
    snprintf(c.arch, sizeof c.arch, "retro");
    c.retro.chunk = 4;
    c.retro.cca_start = 1;
    c.retro.cca_every = 1;
    joule_retro_config_apply(&c);
    joule_model *m;
    ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
    joule_model_init(m, 3);
    joule_decoder *ds[2], *ref[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(joule_decoder_create(&ds[i], m), JOULE_OK);
        ck_assert_int_eq(joule_decoder_create(&ref[i], m), JOULE_OK);
    }
    joule_decoder_batch *bt;
    ck_assert_int_eq(joule_decoder_batch_create(&bt, m, 2), JOULE_OK);
    for (int step = 0; step < 6; step++) {
        const int32_t tok[2] = {(int32_t)(7 * step + 1), (int32_t)(200 - step)};
        const float *lb, *la;
        ck_assert_int_eq(joule_decoder_step_batch(bt, ds, 2, tok, &lb), JOULE_OK);
        for (int i = 0; i < 2; i++) {
            ck_assert_int_eq(joule_decoder_step(ref[i], tok[i], &la), JOULE_OK);
            tu_expect_near(lb + (size_t)i * c.vocab, la, (size_t)c.vocab, 1e-5, "retro batched logits");
        }
    }
    joule_decoder_batch_free(bt);
    for (int i = 0; i < 2; i++) {
        joule_decoder_free(ds[i]);
        joule_decoder_free(ref[i]);
    }
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- the runner */

static void open_meters(joule_energy *e) {
    joule_energy_opts o;
    joule_energy_opts_init(&o);
    o.want[JOULE_METER_MODELED] = true;
    char dirs[1024];
    const char *src = getenv("JOULE_TEST_SRC");
    ck_assert_ptr_nonnull(src);
    snprintf(dirs, sizeof dirs, "%s/docs/hardware", src);
    ck_assert_int_eq(joule_hw_load(&o.cpu, "amd-epyc-7763", dirs), JOULE_OK);
    o.have_cpu_profile = true;
    ck_assert_int_eq(joule_energy_open(e, &o), JOULE_OK);
}

static joule_model *load(const char *name) {
    joule_model *m;
    ck_assert_msg(joule_checkpoint_load(&m, tu_path("%s", name), NULL) == JOULE_OK, "%s", joule_last_error());
    return m;
}

static void small_opts(joule_bench_energy_opts *o, const joule_energy *e, char *data, size_t n) {
    joule_bench_energy_opts_init(o);
    snprintf(data, n, "%s", tu_path("d"));
    o->data_dir = data;
    o->meters = e;
    o->queries = 5;
    o->prompt = 16;
    o->generate = 8;
    o->batch = 2;
    o->warmup = 3;
}

static void check_runner(const char *name, const char *arch) {
    joule_energy e;
    open_meters(&e);
    joule_model *m = load(name);
    joule_bench_energy_opts o;
    char data[512];
    small_opts(&o, &e, data, sizeof data);
    joule_bench_energy_result r;
    ck_assert_msg(joule_bench_energy_run(m, name, &o, &r) == JOULE_OK, "%s", joule_last_error());
    ck_assert_str_eq(r.arch, arch);
    ck_assert_int_eq(r.queries, 5);
    /* counted FLOPs per query (prefill + decode) against the accountant's */
    ck_assert_msg(fabs(r.flops_counted - r.flops_analytic) <= 0.01 * r.flops_analytic, "counted %g analytic %g",
                  r.flops_counted, r.flops_analytic);
    ck_assert(r.flops_prefill_analytic > 0 && r.flops_decode_analytic > 0);
    /* the window holds the 5 measured queries only, not the 3 warm-up ones */
    ck_assert_uint_eq(r.energy.queries, 5);
    ck_assert_uint_eq(r.energy.tokens, 5 * 8);
    ck_assert_msg(fabs((double)r.energy.flops - 5 * r.flops_analytic) <= 0.01 * 5 * r.flops_analytic,
                  "window FLOPs %g for 5 queries of %g", (double)r.energy.flops, r.flops_analytic);
    ck_assert_str_eq(r.energy.method, "modeled:tdp");
    ck_assert(r.j_per_query > 0 && r.j_per_token > 0);
    ck_assert(fabs(r.j_per_query - 8 * r.j_per_token) <= 1e-9 * r.j_per_query);
    ck_assert(r.wh_per_1k_queries > 0 && r.g_co2e_per_1k_queries > 0);
    ck_assert(r.query_p50 > 0 && r.query_p50 <= r.query_p95 && r.query_p95 <= r.query_p99);
    ck_assert(r.ttft_p50 > 0 && r.ttft_p50 <= r.query_p99);
    ck_assert(r.token_p50 > 0 && r.token_p50 <= r.token_p99);
    ck_assert(r.tokens_per_s > 0 && r.peak_rss_bytes > 0);
    ck_assert(!r.retrieval);
    ck_assert_int_eq(r.threads, joule_get_threads());
    ck_assert_str_eq(r.blas_core, joule_blas_corename());
    if (!strcmp(arch, "moe")) ck_assert(r.params_active < r.params);
    joule_model_free(m);
    joule_energy_close(&e);
}

START_TEST(test_runner_dense) { check_runner("dense.safetensors", "dense"); }
END_TEST

START_TEST(test_runner_moe) { check_runner("moe.safetensors", "moe"); }
END_TEST

/* RETRO with its database: one search per chunk completed in the cache (positions 0 to
 * P+G-2), retrieval's shares in (0, 1), FAISS's search FLOPs apart from the counted ones. */
START_TEST(test_runner_retro) {
    joule_energy e;
    open_meters(&e);
    joule_model *m = load("retro.safetensors");
    joule_bench_energy_opts o;
    char data[512], db[512];
    small_opts(&o, &e, data, sizeof data);
    joule_bench_energy_result r;
    ck_assert_int_eq(joule_bench_energy_run(m, "retro", &o, &r), JOULE_ERR_ARG); /* no database */
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "--db"));
    snprintf(db, sizeof db, "%s", tu_path("db"));
    o.db_dir = db;
    ck_assert_msg(joule_bench_energy_run(m, "retro", &o, &r) == JOULE_OK, "%s", joule_last_error());
    ck_assert_str_eq(r.arch, "retro");
    ck_assert(r.retrieval);
    ck_assert_double_eq(r.searches_per_query, (16 + 8 - 1) / m->cfg.retro.chunk);
    ck_assert(r.retrieval_time_share > 0 && r.retrieval_time_share < 1);
    ck_assert(r.retrieval_flops_share > 0 && r.retrieval_flops_share < 1);
    ck_assert(r.flops_search > 0 && r.search_method[0]);
    ck_assert_uint_eq(r.energy.queries, 5);
    ck_assert_str_eq(r.energy.method, "modeled:tdp");
    /* an open database instead of the folder: the same work, and it stays open */
    joule_retro_db *open_db;
    ck_assert_int_eq(joule_db_open(&open_db, db), JOULE_OK);
    joule_bench_energy_opts ob = o;
    ob.db_dir = NULL;
    ob.db = open_db;
    joule_bench_energy_result rb;
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(joule_bench_energy_run(m, "retro", &ob, &rb) == JOULE_OK, "%s", joule_last_error());
        ck_assert_uint_eq(rb.tokens_digest, r.tokens_digest);
        ck_assert_double_eq(rb.searches_per_query, r.searches_per_query);
    }
    ck_assert_int_eq(joule_db_size(open_db) > 0, 1);
    joule_db_close(open_db);
    /* the accountant's query counts what decoding does: each completed chunk's neighbours
     * encoded once, CCA from position m-1 on; the prompt fed token by token */
    ck_assert_msg(r.flops_counted > 0 && fabs(r.flops_counted - r.flops_analytic) <= 0.01 * r.flops_analytic,
                  "counted %.0f analytic %.0f", r.flops_counted, r.flops_analytic);
    ck_assert_msg(fabs((double)r.energy.flops - 5 * r.flops_analytic) <= 0.01 * 5 * r.flops_analytic,
                  "window FLOPs %g for 5 queries of %g", (double)r.energy.flops, r.flops_analytic);
    /* `joule account` prints the same query: its prefill computes all 16 logits rows */
    ck_assert_int_eq(tu_joule("account --model retro.safetensors --prompt 16 --generate 7 --json"), 0);
    char *js = tu_read_in("out.txt", NULL);
    cJSON *acc = cJSON_Parse(js), *aq = cJSON_GetObjectItem(acc, "query");
    ck_assert_ptr_nonnull(aq);
    const double logits = 2.0 * m->cfg.d_model * m->cfg.vocab;
    ck_assert_double_eq(cJSON_GetObjectItem(aq, "flops_prefill")->valuedouble - 15 * logits, r.flops_prefill_analytic);
    ck_assert_double_eq(cJSON_GetObjectItem(aq, "flops_decode")->valuedouble, r.flops_decode_analytic);
    cJSON_Delete(acc);
    free(js);
    joule_model_free(m);
    joule_energy_close(&e);
}
END_TEST

START_TEST(test_same_seed_same_prompts) {
    joule_energy e;
    open_meters(&e);
    joule_model *m = load("dense.safetensors");
    joule_bench_energy_opts o;
    char data[512];
    small_opts(&o, &e, data, sizeof data);
    joule_bench_energy_result a, b, c, d;
    ck_assert_int_eq(joule_bench_energy_run(m, "x", &o, &a), JOULE_OK);
    ck_assert_int_eq(joule_bench_energy_run(m, "x", &o, &b), JOULE_OK);
    ck_assert_uint_eq(a.tokens_digest, b.tokens_digest);
    o.warmup = 0; /* measured prompts do not depend on the warm-up */
    ck_assert_int_eq(joule_bench_energy_run(m, "x", &o, &c), JOULE_OK);
    ck_assert_uint_eq(a.tokens_digest, c.tokens_digest);
    o.seed = 2;
    ck_assert_int_eq(joule_bench_energy_run(m, "x", &o, &d), JOULE_OK);
    ck_assert_uint_ne(a.tokens_digest, d.tokens_digest);
    joule_model_free(m);
    joule_energy_close(&e);
}
END_TEST

START_TEST(test_bad_input_refused) {
    joule_energy e;
    open_meters(&e);
    joule_model *m = load("dense.safetensors");
    joule_bench_energy_opts o;
    char data[512];
    joule_bench_energy_result r;
    small_opts(&o, &e, data, sizeof data);
    o.prompt = 60; /* 60 + 8 - 1 > ctx 64 */
    ck_assert_int_eq(joule_bench_energy_run(m, "tiny", &o, &r), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "context 64"));
    small_opts(&o, &e, data, sizeof data);
    o.meters = NULL;
    ck_assert_int_eq(joule_bench_energy_run(m, "tiny", &o, &r), JOULE_ERR_ARG);
    small_opts(&o, &e, data, sizeof data);
    o.queries = 0;
    ck_assert_int_eq(joule_bench_energy_run(m, "tiny", &o, &r), JOULE_ERR_ARG);
    small_opts(&o, &e, data, sizeof data);
    o.data_dir = "/nonexistent/corpus"; /* a missing input: the caller's error (exit 2) */
    ck_assert_int_eq(joule_bench_energy_run(m, "tiny", &o, &r), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "/nonexistent/corpus/val.bin"));
    joule_model_free(m);
    joule_energy_close(&e);
}
END_TEST

/* ---------------------------------------------------------------- outputs */

START_TEST(test_outputs_parse) {
    joule_energy e;
    open_meters(&e);
    joule_bench_energy_opts o;
    char data[512], path[512];
    small_opts(&o, &e, data, sizeof data);
    joule_bench_energy_result r[2];
    const char *names[2] = {"dense.safetensors", "moe.safetensors"};
    for (int i = 0; i < 2; i++) {
        joule_model *m = load(names[i]);
        snprintf(path, sizeof path, "%s", tu_path("%s", names[i]));
        ck_assert_int_eq(joule_bench_energy_run(m, path, &o, &r[i]), JOULE_OK);
        joule_model_free(m);
    }
    ck_assert_str_eq(r[0].label, "dense");
    ck_assert_int_eq(joule_bench_energy_write_json(tu_path("e.json"), r, 2), JOULE_OK);
    ck_assert_int_eq(joule_bench_energy_write_csv(tu_path("e.csv"), r, 2), JOULE_OK);
    ck_assert_int_eq(joule_bench_energy_write_svg(tu_path("e.svg"), r, 2), JOULE_OK);

    char *s = tu_read_in("e.json", NULL);
    cJSON *j = cJSON_Parse(s);
    ck_assert_msg(j != NULL, "not JSON: %s", s);
    cJSON *models = cJSON_GetObjectItem(j, "models");
    ck_assert_int_eq(cJSON_GetArraySize(models), 2);
    cJSON *moe = cJSON_GetArrayItem(models, 1);
    ck_assert_str_eq(cJSON_GetObjectItem(moe, "label")->valuestring, "moe");
    ck_assert_str_eq(cJSON_GetObjectItem(moe, "energy_method")->valuestring, "modeled:tdp");
    cJSON *fl = cJSON_GetObjectItem(moe, "flops_per_query");
    ck_assert_double_eq(cJSON_GetObjectItem(fl, "counted")->valuedouble, r[1].flops_counted);
    cJSON *lat = cJSON_GetObjectItem(cJSON_GetObjectItem(moe, "latency_s"), "query");
    ck_assert_double_eq_tol(cJSON_GetObjectItem(lat, "p99")->valuedouble, r[1].query_p99, 1e-12);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(moe, "retrieval")));
    ck_assert_double_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(moe, "energy"), "queries")->valuedouble, 5);
    cJSON_Delete(j);
    free(s);

    s = tu_read_in("e.csv", NULL);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(!strncmp(s, "label,arch,params,", 18), "CSV header: %.60s", s);
    int lines = 0, commas_header = 0, commas_row = 0;
    for (const char *p = s; *p; p++) {
        if (*p == ',') *(lines == 0 ? &commas_header : &commas_row) += 1;
        lines += *p == '\n';
    }
    ck_assert_int_eq(lines, 3);
    ck_assert_int_eq(commas_row, 2 * commas_header);
    ck_assert_ptr_nonnull(strstr(s, "\nmoe,moe,"));
    free(s);

    s = tu_read_in("e.svg", NULL);
    ck_assert(!strncmp(s, "<svg", 4) && strstr(s, "</svg>\n") && strstr(s, "Energy per query"));
    free(s);
    joule_energy_close(&e);
}
END_TEST

/* ---------------------------------------------------------------- CLI */

START_TEST(test_cli_end_to_end) {
    ck_assert_int_eq(tu_joule("bench energy --help"), 0);
    ck_assert_int_eq(tu_joule("bench energy --model dense.safetensors --model moe.safetensors --data d --queries 3 "
                           "--prompt 12 --generate 6 --warmup 1 --batch 2 --out res --compare --threads 1"),
                     0);
    char *out = tu_read_in("out.txt", NULL);
    ck_assert_msg(strstr(out, "FLOPs/query analytic / counted") && strstr(out, "modeled:tdp") &&
                      strstr(out, "| moe"),
                  "%s", out);
    free(out);
    char *j = tu_read_in("res/energy.json", NULL), *csv = tu_read_in("res/energy.csv", NULL), *svg = tu_read_in("res/energy.svg", NULL);
    ck_assert(j && csv && svg);
    cJSON *p = cJSON_Parse(j);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(p, "models")), 2);
    /* batch 2 of an fp32 model steps through the batch's packed weights, and says so */
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(p, "models"), 0), "kernels")->valuestring,
                     "packed");
    cJSON_Delete(p);
    free(j);
    free(csv);
    free(svg);
}
END_TEST

START_TEST(test_cli_bad_input) {
    ck_assert_int_eq(tu_joule("bench energy --model missing.safetensors --data d"), 2);
    expect_error("missing.safetensors");
    ck_assert_int_eq(tu_joule("bench energy --model dense.safetensors --data nowhere"), 2);
    expect_error("nowhere/val.bin");
    ck_assert_int_eq(tu_joule("bench energy --model dense.safetensors --data d --prompt 100 --threads 1"), 2);
    expect_error("exceed the model's context 64");
    ck_assert_int_eq(tu_joule("bench energy --model dense.safetensors --data d --queries 0"), 2);
    expect_error("--queries");
    ck_assert_int_eq(tu_joule("bench energy --data d"), 2);
    expect_error("--model");
    ck_assert_int_eq(tu_joule("bench energy --model dense.safetensors --data d --pue 0.5"), 2);
    expect_error("--pue");
    ck_assert_int_eq(tu_joule("bench energy --model corpus.txt --data d --threads 1"), 2);
    expect_error("corpus.txt");
}
END_TEST

static Suite *bench_energy_suite(void) {
    Suite *s = suite_create("bench_energy");
    TCase *p = tu_tcase(s, "prefill", 60, NULL, NULL);
    tcase_add_test(p, test_prefill_equals_steps_dense);
    tcase_add_test(p, test_prefill_equals_steps_moe);
    tcase_add_test(p, test_moe_rows_equal_one_token);
    TCase *bt = tu_tcase(s, "batch", 60, NULL, NULL);
    tcase_add_test(bt, test_batch_step_dense);
    tcase_add_test(bt, test_batch_step_moe);
    tcase_add_test(bt, test_batch_step_retro);
    TCase *r = tu_tcase(s, "runner", 120, NULL, NULL);
    tcase_add_unchecked_fixture(r, suite_setup, tu_remove_dir);
    tcase_add_test(r, test_runner_dense);
    tcase_add_test(r, test_runner_moe);
    tcase_add_test(r, test_runner_retro);
    tcase_add_test(r, test_same_seed_same_prompts);
    tcase_add_test(r, test_bad_input_refused);
    tcase_add_test(r, test_outputs_parse);
    tcase_add_test(r, test_cli_end_to_end);
    tcase_add_test(r, test_cli_bad_input);
    return s;
}

int main(void) {
    joule_moe_register();
    joule_retro_register();
    return tu_run_suite(bench_energy_suite());
}
