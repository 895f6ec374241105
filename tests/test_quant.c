/* bf16 / int8 inference: kernels against the fp32 product (stated bounds), the portable
 * fallback against the native kernels, quantised checkpoints (the safetensors layout
 * parsed byte by byte, round trip, decoding), and the CLI's quantize and refusals. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/moe.h"
#include "joule/quant.h"
#include "joule/safetensors.h"
#include "testutil.h"

static void setup(void) { tu_make_dir("quant"); }

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    joule_rng r;
    joule_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * joule_rng_normal(&r);
}

/* Shapes that cross the kernels' blocks: IC not a multiple of 32/64, rows past 4 and 16. */
static const int SHAPES[][3] = {{1, 384, 1152}, {5, 100, 37}, {17, 1024, 64}, {3, 7, 5}};
#define N_SHAPES 4

/* bf16: |y - sum bf(x) bf(w)| <= 1e-5 sum |x w| (fp32 sums in any order), and the
 * rounding of x and w costs at most 2^-8 sum |x w| against the fp32 product. */
START_TEST(test_bf16_kernel_bounds) {
    const int n = SHAPES[_i][0], IC = SHAPES[_i][1], OC = SHAPES[_i][2];
    float *x = malloc(sizeof(float) * n * IC), *w = malloc(sizeof(float) * OC * IC), *y = malloc(sizeof(float) * n * OC);
    uint16_t *wb = malloc(2 * (size_t)OC * IC);
    fill(x, (size_t)n * IC, 1, 1.0f);
    fill(w, (size_t)OC * IC, 2, 0.05f);
    for (size_t k = 0; k < (size_t)OC * IC; k++) wb[k] = joule_f32_to_bf16(w[k]);
    for (int portable = 0; portable < 2; portable++) {
        joule_quant_force_portable(portable);
        for (int i = 0; i < n * OC; i++) y[i] = 0.5f;
        joule_bf16_matmul(y, x, wb, n, IC, OC, 1.0f);
        for (int i = 0; i < n; i++)
            for (int o = 0; o < OC; o++) {
                double exact = 0, rounded = 0, mag = 0;
                for (int k = 0; k < IC; k++) {
                    const float xv = x[(size_t)i * IC + k], wv = w[(size_t)o * IC + k];
                    exact += (double)xv * wv;
                    rounded += (double)joule_bf16_to_f32(joule_f32_to_bf16(xv)) * joule_bf16_to_f32(wb[(size_t)o * IC + k]);
                    mag += fabs((double)xv * wv);
                }
                const double got = y[(size_t)i * OC + o] - 0.5;
                ck_assert_msg(fabs(got - rounded) <= 1e-5 * mag + 1e-6, "%s [%d,%d]: %g vs %g", portable ? "portable" : "native",
                              i, o, got, rounded);
                ck_assert_msg(fabs(got - exact) <= 0x1p-8 * mag + 1e-6, "[%d,%d] vs fp32: %g vs %g", i, o, got, exact);
            }
    }
    free(x), free(w), free(y), free(wb);
}
END_TEST

/* int8: native and portable bit-identical; against the fp32 product within the bound
 * the two roundings give: sum_k |x_k| s_w/2 + |w_k| s_x/2 + s_x s_w/4. */
START_TEST(test_int8_kernel_bounds) {
    const int n = SHAPES[_i][0], IC = SHAPES[_i][1], OC = SHAPES[_i][2];
    float *x = malloc(sizeof(float) * n * IC), *w = malloc(sizeof(float) * OC * IC);
    float *y[2] = {malloc(sizeof(float) * n * OC), malloc(sizeof(float) * n * OC)}, *ws = malloc(sizeof(float) * OC);
    int8_t *wq = malloc((size_t)OC * IC), *xq = malloc(IC);
    int32_t *wsum = malloc(sizeof(int32_t) * OC);
    fill(x, (size_t)n * IC, 3, 1.0f);
    fill(w, (size_t)OC * IC, 4, 0.05f);
    for (int o = 0; o < OC; o++) {
        ws[o] = joule_i8_quantize_row(wq + (size_t)o * IC, w + (size_t)o * IC, IC);
        wsum[o] = 0;
        for (int k = 0; k < IC; k++) wsum[o] += wq[(size_t)o * IC + k];
    }
    for (int portable = 0; portable < 2; portable++) {
        joule_quant_force_portable(portable);
        joule_i8_matmul(y[portable], x, wq, ws, wsum, n, IC, OC, 0.0f);
    }
    ck_assert_msg(memcmp(y[0], y[1], sizeof(float) * n * OC) == 0, "native and portable int8 differ");
    for (int i = 0; i < n; i++) {
        const float sx = joule_i8_quantize_row(xq, x + (size_t)i * IC, IC);
        for (int o = 0; o < OC; o++) {
            double exact = 0, bound = 0;
            for (int k = 0; k < IC; k++) {
                const double xv = x[(size_t)i * IC + k], wv = w[(size_t)o * IC + k];
                exact += xv * wv;
                bound += fabs(xv) * ws[o] / 2 + fabs(wv) * sx / 2 + (double)sx * ws[o] / 4;
            }
            ck_assert_msg(fabs(y[0][(size_t)i * OC + o] - exact) <= bound * 1.001 + 1e-6, "[%d,%d]: %g vs %g (bound %g)", i, o,
                          y[0][(size_t)i * OC + o], exact, bound);
        }
    }
    free(x), free(w), free(y[0]), free(y[1]), free(ws), free(wq), free(xq), free(wsum);
}
END_TEST

START_TEST(test_env_forces_portable) {
    setenv("JOULE_KERNELS", "portable", 1);
    ck_assert(joule_quant_portable_forced());
    ck_assert_str_eq(joule_quant_kernel_name(JOULE_PREC_INT8), "portable");
    ck_assert_str_eq(joule_quant_kernel_name(JOULE_PREC_BF16), "portable");
}
END_TEST

static joule_config small_config(bool tied) {
    joule_config c = joule_config_default(2, 64, 4, 96, 32);
    c.tied = tied;
    return c;
}

/* A quantised copy of an initialised model written to tu_dir/q.safetensors. */
static joule_model *write_quantised(joule_precision p, bool tied, joule_model **fp32) {
    joule_config c = small_config(tied);
    joule_model *m = tu_model(&c, 1, 7), *q = tu_model(&c, 1, 7);
    joule_quant *qq;
    ck_assert_int_eq(joule_quant_from_model(&qq, q, p), JOULE_OK);
    q->quant = qq;
    ck_assert_msg(joule_quant_save(q, tu_path("q.safetensors")) == JOULE_OK, "%s", joule_last_error());
    *fp32 = m;
    return q;
}

/* The file exactly as the safetensors spec lays it out: u64 LE header size, a JSON object
 * of {dtype, shape, data_offsets} per tensor plus __metadata__ (strings), offsets tiling
 * the data section from 0 to the end of the file; int8 matrices with F32 NAME.scale [rows]. */
static int cmp_span(const void *a, const void *b) {
    const size_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

START_TEST(test_file_layout_is_safetensors) {
    joule_model *m, *q = write_quantised(_i ? JOULE_PREC_INT8 : JOULE_PREC_BF16, false, &m);
    size_t len;
    char *buf = tu_must_read(tu_path("q.safetensors"), &len);
    uint64_t hn = 0;
    for (int b = 0; b < 8; b++) hn |= (uint64_t)(uint8_t)buf[b] << (8 * b);
    ck_assert(8 + hn <= len);
    cJSON *h = cJSON_ParseWithLength(buf + 8, hn);
    ck_assert_ptr_nonnull(h);
    const size_t data = 8 + hn, dlen = len - data;
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(h, "__metadata__"), "precision")->valuestring,
                     _i ? "int8" : "bf16");
    size_t covered = 0, n = 0, spans[256][2];
    for (cJSON *t = h->child; t; t = t->next) {
        if (!strcmp(t->string, "__metadata__")) continue;
        const char *dt = cJSON_GetObjectItem(t, "dtype")->valuestring;
        const size_t es = !strcmp(dt, "F32") ? 4 : !strcmp(dt, "BF16") ? 2 : !strcmp(dt, "I8") ? 1 : 0;
        ck_assert_msg(es, "dtype %s", dt);
        size_t numel = 1;
        cJSON *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(t, "shape")) numel *= (size_t)d->valuedouble;
        cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
        const size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble, e = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        ck_assert_uint_eq(e - b, numel * es);
        ck_assert_uint_le(e, dlen);
        if (es == 4) ck_assert_uint_eq((data + b) % 4, 0);
        covered += e - b;
        ck_assert_uint_lt(n, 256);
        spans[n][0] = b;
        spans[n][1] = e;
        n++;
        const joule_param_info *pi = joule_model_find(q, t->string);
        if (pi && joule_quant_applies(pi)) {
            ck_assert_str_eq(dt, _i ? "I8" : "BF16");
            /* the bytes are the quantised weights */
            const void *want = _i ? (const void *)(q->quant->i8 + pi->offset) : (const void *)(q->quant->bf16 + pi->offset);
            ck_assert(memcmp(buf + data + b, want, numel * es) == 0);
            if (_i) {
                char sn[160];
                snprintf(sn, sizeof sn, "%s.scale", t->string);
                cJSON *s = cJSON_GetObjectItem(h, sn);
                ck_assert_ptr_nonnull(s);
                ck_assert_str_eq(cJSON_GetObjectItem(s, "dtype")->valuestring, "F32");
                ck_assert_int_eq((int)cJSON_GetArrayItem(cJSON_GetObjectItem(s, "shape"), 0)->valuedouble, (int)pi->shape[0]);
            }
        } else if (pi) {
            ck_assert_str_eq(dt, "F32");
        }
    }
    ck_assert_uint_eq(covered, dlen);
    qsort(spans, n, sizeof *spans, cmp_span);
    for (size_t k = 0; k < n; k++) ck_assert_uint_eq(spans[k][0], k ? spans[k - 1][1] : 0); /* no gap, no overlap */
    size_t want = (size_t)q->n_tensors;
    for (int i = 0; _i && i < q->n_tensors; i++) want += q->quant->quantised[i];
    ck_assert_uint_eq(n, want);
    cJSON_Delete(h);
    free(buf);
    joule_model_free(m);
    joule_model_free(q);
}
END_TEST

/* Loading gives the same arena and kernels as the model that was quantised in memory; its
 * decoding matches its own forward (same kernels), stays near the fp32 model, and reads
 * about 1/2 or 1/4 of the fp32 bytes per token. */
START_TEST(test_load_decode_matches) {
    const joule_precision p = _i ? JOULE_PREC_INT8 : JOULE_PREC_BF16;
    joule_model *m, *q = write_quantised(p, _i, &m), *l;
    ck_assert_msg(joule_checkpoint_load(&l, tu_path("q.safetensors"), NULL) == JOULE_OK, "%s", joule_last_error());
    ck_assert_ptr_nonnull(l->quant);
    ck_assert_int_eq(l->quant->prec, p);
    ck_assert(memcmp(l->params, q->params, q->n_params * sizeof(float)) == 0);
    enum { T = 12 };
    int32_t tok[T];
    tu_random_tokens(tok, T, 5);
    ck_assert_int_eq(joule_model_alloc_train(l, 1), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(l, tok, NULL, 1, T, NULL), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, tok, NULL, 1, T, NULL), JOULE_OK);
    const int V = l->cfg.vocab;
    joule_decoder *dl, *dq, *dm;
    ck_assert_int_eq(joule_decoder_create(&dl, l), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&dq, q), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&dm, m), JOULE_OK);
    double diff_fp32 = 0, diff_plain = 0;
    for (int t = 0; t < T; t++) {
        const float *a, *b, *c;
        ck_assert_int_eq(joule_decoder_step(dl, tok[t], &a), JOULE_OK);
        ck_assert_int_eq(joule_decoder_step(dq, tok[t], &b), JOULE_OK);
        ck_assert_int_eq(joule_decoder_step(dm, tok[t], &c), JOULE_OK);
        ck_assert(memcmp(a, b, (size_t)V * sizeof(float)) == 0);
        tu_expect_near(a, joule_model_logits(l) + (size_t)t * V, (size_t)V, 1e-4, "step vs forward");
        for (int v = 0; v < V; v++) {
            diff_fp32 = fmax(diff_fp32, fabs(a[v] - c[v]));
            diff_plain = fmax(diff_plain, fabs(joule_model_logits(m)[(size_t)t * V + v] - c[v]));
        }
    }
    /* near the fp32 model, but not equal to it: the quantised kernels ran */
    ck_assert_msg(diff_fp32 > 0 && diff_fp32 < (_i ? 0.05 : 0.01), "max |logit - fp32| = %g", diff_fp32);
    ck_assert(diff_plain < 1e-4);
    const double ratio = (double)joule_quant_decode_weight_bytes(l) / (double)joule_quant_decode_weight_bytes(m);
    /* the tiny model's fp32 embedding and lm_head weigh much, so not 1/4 and 1/2 */
    ck_assert_msg(ratio < (_i ? 0.45 : 0.62), "bytes per token ratio %g", ratio);
    joule_decoder_free(dl), joule_decoder_free(dq), joule_decoder_free(dm);
    joule_model_free(l), joule_model_free(q), joule_model_free(m);
}
END_TEST

/* Batched steps and prefill of a quantised model agree with its one-token steps. */
START_TEST(test_batch_and_prefill_match_steps) {
    joule_model *m, *q = write_quantised(_i ? JOULE_PREC_INT8 : JOULE_PREC_BF16, true, &m);
    enum { T = 9, NB = 3 };
    const int V = q->cfg.vocab;
    int32_t tok[T];
    tu_random_tokens(tok, T, 6);
    joule_decoder *a, *b, *ds[NB];
    ck_assert_int_eq(joule_decoder_create(&a, q), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&b, q), JOULE_OK);
    const float *la, *lb;
    for (int t = 0; t < T; t++) ck_assert_int_eq(joule_decoder_step(a, tok[t], &la), JOULE_OK);
    ck_assert_int_eq(joule_decoder_prefill(b, tok, T, &lb), JOULE_OK);
    tu_expect_near(lb, la, (size_t)V, 1e-4, "prefill vs steps");
    joule_decoder_batch *bt;
    ck_assert_int_eq(joule_decoder_batch_create(&bt, q, NB), JOULE_OK);
    for (int i = 0; i < NB; i++) ck_assert_int_eq(joule_decoder_create(&ds[i], q), JOULE_OK);
    const float *lg = NULL;
    for (int t = 0; t < T; t++) {
        int32_t row[NB] = {tok[t], tok[t], tok[t]};
        ck_assert_int_eq(joule_decoder_step_batch(bt, ds, NB, row, &lg), JOULE_OK);
    }
    for (int i = 0; i < NB; i++) tu_expect_near(lg + (size_t)i * V, la, (size_t)V, 1e-4, "batched vs steps");
    for (int i = 0; i < NB; i++) joule_decoder_free(ds[i]);
    joule_decoder_batch_free(bt);
    joule_decoder_free(a), joule_decoder_free(b);
    joule_model_free(q), joule_model_free(m);
}
END_TEST

/* The command: quantize, load it with info, refuse bad --to, a quantised input, and
 * training from a quantised file, each with one line and exit 2. */
START_TEST(test_cli) {
    joule_config c = small_config(true);
    joule_model *m = tu_model(&c, 1, 3);
    ck_assert_int_eq(joule_checkpoint_save(m, tu_path("m.safetensors"), NULL, NULL), JOULE_OK);
    joule_model_free(m);
    ck_assert_int_eq(tu_joule("quantize --model m.safetensors --to int8 --out q.safetensors"), 0);
    tu_expect_in("out.txt", "int8, 14 matrices quantised");
    ck_assert_int_eq(tu_joule("info --model q.safetensors"), 0);
    tu_expect_in("out.txt", "int8");
    ck_assert_int_eq(tu_joule("quantize --model m.safetensors --to fp8 --out x.safetensors"), 2);
    tu_expect_one_line("err.txt", "--to: 'fp8' is not bf16 or int8");
    ck_assert_int_eq(tu_joule("quantize --model q.safetensors --to bf16 --out x.safetensors"), 2);
    tu_expect_one_line("err.txt", "already int8");
    joule_token_writer *w = tu_tokens_open(tu_path("t.bin"));
    tu_tokens_doc(w, 0, "the quick brown fox jumps over the lazy dog. ", 45, 20);
    tu_tokens_commit(w);
    ck_assert_int_eq(tu_joule("eval --model q.safetensors --tokens t.bin --windows 4"), 0);
    tu_expect_in("out.txt", "bpb:");
    /* KL from the fp32 model: positive for the int8 copy, exactly 0 for the model itself */
    for (int self = 0; self < 2; self++) {
        ck_assert_int_eq(tu_joule("eval --model %s --reference m.safetensors --tokens t.bin --windows 4 --json",
                                  self ? "m.safetensors" : "q.safetensors"), 0);
        char *out = tu_read_in("out.txt", NULL);
        cJSON *o = cJSON_Parse(out);
        ck_assert_ptr_nonnull(o);
        const double kl = cJSON_GetObjectItem(o, "kl_bits")->valuedouble;
        ck_assert_msg(self ? kl == 0 : kl > 1e-9 && kl < 0.01, "kl %g", kl);
        ck_assert_str_eq(cJSON_GetObjectItem(o, "precision")->valuestring, self ? "fp32" : "int8");
        cJSON_Delete(o);
        free(out);
    }
    ck_assert_int_eq(tu_joule("account --model q.safetensors --hardware nvidia-a100-sxm4-80gb"), 0);
    tu_expect_in("out.txt", "at int8, utilisation");
    /* the energy table with precision, bytes per token, bpb and KL */
    ck_assert_int_eq(mkdir(tu_path("d"), 0755), 0);
    ck_assert_int_eq(rename(tu_path("t.bin"), tu_path("d/val.bin")), 0);
    ck_assert_int_eq(rename(tu_path("t.idx"), tu_path("d/val.idx")), 0);
    ck_assert_int_eq(tu_joule("bench energy --model m.safetensors --model q.safetensors --data d --queries 1 --prompt 4 "
                              "--generate 2 --warmup 0 --quality-windows 2 --compare --out e --meter tdp"), 0);
    tu_expect_in("out.txt", "precision (kernels)              | fp32 (sgemm)");
    tu_expect_in("out.txt", "| int8 (");
    tu_expect_in("out.txt", "bpb / KL bits (vs 1st model)     | ");
    ck_assert(tu_file_has("e/energy.json", "\"kl_bits\""));
    ck_assert_int_eq(rename(tu_path("d/val.bin"), tu_path("t.bin")), 0);
    ck_assert_int_eq(rename(tu_path("d/val.idx"), tu_path("t.idx")), 0);
    ck_assert_int_eq(tu_joule("train --resume --out q.safetensors --steps 1 --train t.bin"), 2);
    tu_expect_one_line("err.txt", "q.safetensors: a int8 (quantised) checkpoint is for inference only");
    ck_assert(!tu_exists(tu_path("x.safetensors")));
}
END_TEST

/* A file that says int8 but holds a bad scale or an F32 matrix is refused by name. */
START_TEST(test_rejects_damaged) {
    joule_model *m, *q = write_quantised(JOULE_PREC_INT8, true, &m);
    q->quant->scale[3] = -1.0f;
    ck_assert_int_eq(joule_quant_save(q, tu_path("bad.safetensors")), JOULE_OK);
    joule_model *l = NULL;
    ck_assert_int_eq(joule_checkpoint_load(&l, tu_path("bad.safetensors"), NULL), JOULE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "scale -1"));
    ck_assert_ptr_null(l);
    joule_model_free(q), joule_model_free(m);
}
END_TEST

/* MoE models share the loader: router and experts are stored int8 and dequantised into the
 * arena (their products stay fp32); the attention and dense layers run the kernels. */
START_TEST(test_moe_loads_and_decodes) {
    joule_config c = joule_config_default(2, 32, 2, 48, 16);
    joule_moe_config e = joule_moe_config_default(48);
    e.n_experts = 4;
    e.every = 2;
    e.d_ff_expert = 24;
    joule_moe_apply(&c, &e);
    joule_model *m = tu_model(&c, 1, 9), *q = tu_model(&c, 1, 9), *l;
    joule_quant *qq;
    ck_assert_int_eq(joule_quant_from_model(&qq, q, JOULE_PREC_INT8), JOULE_OK);
    q->quant = qq;
    const joule_param_info *router = joule_model_find(q, "layers.1.moe.router.weight");
    ck_assert_ptr_nonnull(router);
    ck_assert(qq->quantised[router - q->tensors]);
    ck_assert_int_eq(joule_quant_save(q, tu_path("moe.safetensors")), JOULE_OK);
    ck_assert_msg(joule_checkpoint_load(&l, tu_path("moe.safetensors"), NULL) == JOULE_OK, "%s", joule_last_error());
    ck_assert(memcmp(l->params, q->params, q->n_params * sizeof(float)) == 0);
    joule_decoder *dl, *dm;
    ck_assert_int_eq(joule_decoder_create(&dl, l), JOULE_OK);
    ck_assert_int_eq(joule_decoder_create(&dm, m), JOULE_OK);
    int32_t tok[8];
    tu_random_tokens(tok, 8, 11);
    for (int t = 0; t < 8; t++) {
        const float *a, *b;
        ck_assert_int_eq(joule_decoder_step(dl, tok[t], &a), JOULE_OK);
        ck_assert_int_eq(joule_decoder_step(dm, tok[t], &b), JOULE_OK);
        tu_expect_near(a, b, (size_t)c.vocab, 0.05, "int8 MoE vs fp32");
    }
    joule_decoder_free(dl), joule_decoder_free(dm);
    joule_model_free(l), joule_model_free(q), joule_model_free(m);
}
END_TEST

/* Large products: a bf16 forward of >= 128 rows runs sgemm on the dequantised arena (the
 * same logits, bit for bit, as the model without its quantised copy); below 128 rows, and
 * for int8 at any size, the quantised kernels run (the logits differ from fp32's). */
START_TEST(test_large_products_path) {
    const joule_precision p = _i ? JOULE_PREC_INT8 : JOULE_PREC_BF16;
    joule_model *m, *q = write_quantised(p, true, &m);
    enum { T = 32 };
    int32_t tok[4 * T];
    tu_random_tokens(tok, 4 * T, 13);
    ck_assert_int_eq(joule_model_alloc_train(q, 4), JOULE_OK);
    const size_t V = (size_t)q->cfg.vocab;
    for (int B = 3; B <= 4; B++) { /* 96 and 128 rows */
        float *quant = malloc(sizeof(float) * (size_t)B * T * V);
        ck_assert_int_eq(joule_model_forward(q, tok, NULL, B, T, NULL), JOULE_OK);
        memcpy(quant, joule_model_logits(q), sizeof(float) * (size_t)B * T * V);
        joule_quant *keep = q->quant;
        q->quant = NULL; /* the same weights, dequantised, through the fp32 path */
        ck_assert_int_eq(joule_model_forward(q, tok, NULL, B, T, NULL), JOULE_OK);
        q->quant = keep;
        const bool same = memcmp(quant, joule_model_logits(q), sizeof(float) * (size_t)B * T * V) == 0;
        ck_assert_msg(same == (p == JOULE_PREC_BF16 && B * T >= 128), "%s, %d rows: %s the fp32 path",
                      joule_precision_name(p), B * T, same ? "same as" : "differs from");
        free(quant);
    }
    joule_model_free(q), joule_model_free(m);
}
END_TEST

static Suite *quant_suite(void) {
    Suite *s = suite_create("quant");
    TCase *tc = tu_tcase(s, "core", 60, setup, tu_remove_dir);
    tcase_add_loop_test(tc, test_bf16_kernel_bounds, 0, N_SHAPES);
    tcase_add_loop_test(tc, test_int8_kernel_bounds, 0, N_SHAPES);
    tcase_add_test(tc, test_env_forces_portable);
    tcase_add_loop_test(tc, test_file_layout_is_safetensors, 0, 2);
    tcase_add_loop_test(tc, test_load_decode_matches, 0, 2);
    tcase_add_loop_test(tc, test_batch_and_prefill_match_steps, 0, 2);
    tcase_add_test(tc, test_cli);
    tcase_add_test(tc, test_rejects_damaged);
    tcase_add_test(tc, test_moe_loads_and_decodes);
    tcase_add_loop_test(tc, test_large_products_path, 0, 2);
    return s;
}

int main(void) {
    joule_moe_register();
    return tu_run_suite(quant_suite());
}
