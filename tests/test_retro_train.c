/* RETRO with a real database: the neighbours training reads (same-document exclusion,
 * padded continuations), exact resume, RETRO-fitting with a frozen base, database
 * mismatch refusal, evaluation with retrieval on/off and generation with live retrieval.
 * Each test builds a tiny corpus and Flat database in its own temp dir; FAISS and OpenMP
 * run only in Check's forked children. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/checkpoint.h"
#include "joule/data.h"
#include "joule/model.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/train.h"
#include "testutil.h"

enum { M = 8, T = 32, NCH = T / M, K = 2 };

static char g_train[4200], g_val[4200], g_db[4200];

/* A corpus of word-salad documents; documents 2i and 2i+1 (i < 4) have the same text, so
 * each has an exact duplicate in another document but must never retrieve itself. */
static void write_corpus(const char *bin, int n_docs, uint64_t first_id, uint64_t seed) {
    static const char *words[] = {"alpha ", "beta ", "gamma ", "delta ", "river ", "stone ", "light ", "north ",
                                  "apple ", "table ", "cloud ", "seven ", "green ", "quiet ", "ocean ", "paper "};
    joule_token_writer *w = tu_tokens_open(bin);
    joule_rng r;
    for (int d = 0; d < n_docs; d++) {
        joule_rng_seed(&r, seed * 1000 + (uint64_t)(d < 8 ? d / 2 : d));
        const int len = 40 + (int)joule_rng_below(&r, 120);
        char buf[256];
        int n = 0;
        while (n < len) {
            const char *wd = words[joule_rng_below(&r, 16)];
            for (const char *c = wd; *c && n < len; c++) buf[n++] = *c;
        }
        tu_tokens_doc(w, first_id + 3 * (uint64_t)d, buf, (size_t)len, 1);
    }
    tu_tokens_commit(w);
}

static void setup(void) {
    tu_make_dir("joule_retrotrain_");
    snprintf(g_train, sizeof g_train, "%s/train.bin", tu_dir);
    snprintf(g_val, sizeof g_val, "%s/val.bin", tu_dir);
    snprintf(g_db, sizeof g_db, "%s/db", tu_dir);
    write_corpus(g_train, 40, 0, 1);
    write_corpus(g_val, 8, 1, 2);
    joule_db_build_opts o;
    joule_db_build_opts_init(&o);
    const char *src = g_train;
    o.sources = &src;
    o.n_sources = 1;
    o.out_dir = g_db;
    o.chunk = M;
    o.index = "Flat";
    ck_assert_int_eq(joule_db_build(&o, NULL, NULL), JOULE_OK);
}

static joule_config retro_config(void) {
    joule_config c = joule_config_default(2, 16, 2, 32, T);
    tu_retro_apply(&c, M, K, 1, 16);
    return c;
}

static joule_retro_data *open_data(const joule_config *c) {
    const char *paths[2] = {g_train, g_val};
    joule_retro_data *rd;
    ck_assert_msg(joule_retro_data_open(&rd, c, g_db, paths, 2, false, NULL, NULL) == JOULE_OK, "%s",
                  joule_last_error());
    return rd;
}

/* The grid id of the chunk whose last token is at position abs of t: documents are cut
 * every M tokens from their first (docs/MODEL.md §7). */
static uint64_t grid_id(const joule_tokens *t, uint64_t abs) {
    const uint64_t d = joule_tokens_doc_at(t, abs);
    uint64_t id = 0;
    for (uint64_t e = 0; e < d; e++) id += (t->doc_offsets[e + 1] - t->doc_offsets[e] + M - 1) / M;
    return id + (abs - t->doc_offsets[d]) / M;
}

/* Windows at every offset: each chunk handed is M tokens of one document ending on its grid,
 * without the end-of-document token, its neighbours the entries the neighbour file names,
 * never from its own document; every chunk a window's rows read is handed; missing
 * neighbours and continuations past a document's end are padding. */
START_TEST(test_training_neighbours) {
    joule_config c = retro_config();
    joule_retro_data *rd = open_data(&c);
    joule_retro_db *db = joule_retro_data_db(rd);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, g_train), JOULE_OK);
    char *nbr_path = joule_retro_neighbours_path(g_train, joule_db_id(db));
    joule_neighbours *nb;
    ck_assert_int_eq(joule_neighbours_open(&nb, nbr_path, db), JOULE_OK);
    const int per = 2 * M;
    int32_t entry[2 * M];
    uint64_t checked = 0, padded = 0, dup_hits = 0, chunks = 0;
    for (uint64_t s = 0; s + T + 1 <= t.n_tokens; s += 5) {
        joule_retro_chunk *ch;
        const int32_t *out;
        int n;
        ck_assert_int_eq(joule_retro_batch_chunks(rd, &t, &s, 1, T, &ch, &out, &n), JOULE_OK);
        int expect = 0; /* every grid chunk of M tokens without the EOD whose last token reads in the window */
        for (uint64_t e = s >= M - 1 ? s - (M - 1) : 0; e < s + T; e++) {
            const uint64_t d = joule_tokens_doc_at(&t, e), off = e - t.doc_offsets[d];
            expect += (off + 1) % M == 0 && e + 1 < t.doc_offsets[d + 1];
        }
        ck_assert_int_eq(n, expect);
        for (int i = 0; i < n; i++) {
            const uint64_t abs = s + (uint64_t)ch[i].last, d = joule_tokens_doc_at(&t, abs);
            ck_assert_int_eq(ch[i].seq, 0);
            ck_assert_uint_eq((abs - t.doc_offsets[d] + 1) % M, 0);
            for (int j = 0; j < M; j++) ck_assert_int_ne(t.tok[abs - (uint64_t)j], 0);
            ck_assert_uint_eq(joule_tokens_doc_at(&t, abs + 1 - M), d);
            const int64_t *ids = joule_neighbours_of(nb, grid_id(&t, abs));
            chunks++;
            for (int j = 0; j < K; j++) {
                const int32_t *got = out + ((size_t)i * K + j) * per;
                if (ids[j] < 0) {
                    for (int q = 0; q < per; q++) ck_assert_int_eq(got[q], JOULE_RETRO_PAD);
                    continue;
                }
                uint64_t doc;
                ck_assert_int_eq(joule_db_entry(db, ids[j], entry, &doc), JOULE_OK);
                ck_assert_int_eq(memcmp(got, entry, sizeof entry), 0);
                ck_assert_uint_ne(doc, t.doc_ids[d]);
                /* the duplicated documents' twins: the very same chunk, then its continuation */
                if (d < 8 && doc == t.doc_ids[d ^ 1] && j == 0) {
                    for (int q = 0; q < M; q++) ck_assert_int_eq(got[q], t.tok[abs + 1 - M + (uint64_t)q]);
                    dup_hits++;
                }
                padded += got[per - 1] == JOULE_RETRO_PAD;
                checked++;
            }
        }
    }
    ck_assert_uint_gt(chunks, 100);
    ck_assert_uint_gt(checked, 100);
    ck_assert_uint_gt(padded, 0);
    ck_assert_uint_gt(dup_hits, 20);
    ck_assert_uint_eq(joule_retro_data_same_doc_dropped(rd), 0);
    /* a window past the end is refused */
    joule_retro_chunk *ch;
    const int32_t *out;
    int n;
    uint64_t bad = t.n_tokens - 3;
    ck_assert_int_eq(joule_retro_batch_chunks(rd, &t, &bad, 1, T, &ch, &out, &n), JOULE_ERR_ARG);
    joule_neighbours_close(nb);
    free(nbr_path);
    joule_tokens_close(&t);
    joule_retro_data_close(rd);
}
END_TEST

/* Similarity (inner product of the database's embeddings) of a query chunk and the chunk
 * part of a handed neighbour (its first m tokens); -INFINITY for a padded one. */
static float similarity(joule_embedder *e, const int32_t *query, const int32_t *nbr) {
    if (nbr[0] == JOULE_RETRO_PAD) return -INFINITY;
    int32_t rows[2 * M];
    float v[2 * 4096];
    const int dim = joule_embedder_dim(e);
    ck_assert_int_le(dim, 4096);
    memcpy(rows, query, M * sizeof *rows);
    memcpy(rows + M, nbr, M * sizeof *rows);
    ck_assert_int_eq(joule_embedder_embed(e, rows, 2, M, v), JOULE_OK);
    float s = 0;
    for (int i = 0; i < dim; i++) s += v[i] * v[dim + i];
    return s;
}

/* Chunk q's neighbours in a and b are equally near, rank by rank: the same search result
 * up to the order of near-ties (FAISS's distance kernel depends on the batch's size, and
 * the tiny corpus here is full of exact ties). Returns whether the entries differ. */
static bool same_search_result(joule_embedder *e, const int32_t *query, const int32_t *a, const int32_t *b, int q) {
    const size_t per = 2 * M;
    for (int j = 0; j < K; j++) {
        const float sa = similarity(e, query, a + ((size_t)q * K + j) * per);
        const float sb = similarity(e, query, b + ((size_t)q * K + j) * per);
        ck_assert_msg(sa == sb || fabsf(sa - sb) < 1e-5f, "chunk %d rank %d: similarity %g (file) vs %g (on demand)", q,
                      j, sa, sb);
    }
    return memcmp(a + (size_t)q * K * per, b + (size_t)q * K * per, K * per * sizeof *a) != 0;
}

/* On-demand neighbours (no files): the neighbour file's entries for batches of windows in
 * any order, each chunk searched once, and two on-demand runs over the same batches hand
 * the model the same bytes. */
START_TEST(test_on_demand_neighbours) {
    joule_config c = retro_config();
    const char *paths[2] = {g_train, g_val};
    joule_retro_data_opts oo;
    joule_retro_data_opts_init(&oo);
    oo.on_demand = true;
    joule_retro_data *od, *od2;
    ck_assert_msg(joule_retro_data_open_opts(&od, &c, g_db, paths, 2, &oo) == JOULE_OK, "%s", joule_last_error());
    ck_assert_int_eq(joule_retro_data_open_opts(&od2, &c, g_db, paths, 2, &oo), JOULE_OK);
    /* no neighbour file is needed or written in this mode */
    char *nbr = joule_retro_neighbours_path(g_train, joule_retro_data_db_id(od));
    ck_assert_int_ne(access(nbr, F_OK), 0);
    free(nbr);
    joule_retro_data *files = open_data(&c);
    joule_embedder *e;
    ck_assert_int_eq(joule_embedder_create(&e, joule_embedder_spec(joule_db_embedder(joule_retro_data_db(od)))),
                     JOULE_OK);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, g_train), JOULE_OK);
    enum { B = 6 };
    int32_t b2[B * (NCH + 1) * K * 2 * M];
    const uint64_t n_win = t.n_tokens - T - 1;
    uint64_t listed = 0, reordered = 0, chunks = 0;
    for (int round = 0; round < 2; round++) /* the second round finds everything searched */
        for (uint64_t w0 = 0; w0 + B <= n_win; w0 += 3 * B) {
            uint64_t starts[B];
            for (int i = 0; i < B; i++) /* overlapping windows, out of order */
                starts[i] = (w0 + (uint64_t)i * 37) % n_win;
            joule_retro_chunk *cf, *co, *co2;
            const int32_t *a, *b, *bb;
            int nf, no, no2;
            ck_assert_int_eq(joule_retro_batch_chunks(files, &t, starts, B, T, &cf, &a, &nf), JOULE_OK);
            ck_assert_int_eq(joule_retro_batch_chunks(od, &t, starts, B, T, &co, &b, &no), JOULE_OK);
            ck_assert_int_eq(joule_retro_batch_chunks(od2, &t, starts, B, T, &co2, &bb, &no2), JOULE_OK);
            ck_assert_int_eq(nf, no);
            ck_assert_int_eq(no, no2);
            ck_assert_int_eq(memcmp(cf, co, (size_t)nf * sizeof *cf), 0);
            memcpy(b2, bb, (size_t)no2 * K * 2 * M * sizeof *b2);
            ck_assert_int_eq(memcmp(b, b2, (size_t)no * K * 2 * M * sizeof *b), 0);
            for (int q = 0; q < nf; q++) {
                int32_t query[M];
                const uint64_t first = starts[cf[q].seq] + (uint64_t)cf[q].last + 1 - M;
                for (int i = 0; i < M; i++) query[i] = t.tok[first + (uint64_t)i];
                reordered += same_search_result(e, query, a, b, q);
            }
            chunks += (uint64_t)nf;
            listed += round == 0 ? (uint64_t)nf : 0;
        }
    ck_assert_uint_lt(reordered * 4, chunks); /* most chunks get the very same entries */
    uint64_t searches;
    double secs;
    joule_retro_data_search_stats(od, &searches, &secs);
    ck_assert_uint_gt(searches, 0);
    ck_assert_uint_lt(searches, listed); /* overlapping windows share chunks: searched once */
    ck_assert_uint_le(searches, t.n_tokens / M);
    ck_assert(secs >= 0);
    joule_retro_data_search_stats(files, &searches, NULL);
    ck_assert_uint_eq(searches, 0);
    joule_tokens_close(&t);
    joule_retro_data_close(files);
    joule_retro_data_close(od);
    joule_retro_data_close(od2);
    joule_embedder_free(e);
}
END_TEST

/* The leaky upper bound for evaluation: chunks searched live with nothing excluded hand
 * exactly the search's entries, and some come from the chunk's own document. */
START_TEST(test_own_document_mode) {
    joule_config c = retro_config();
    joule_retro_data *rd = open_data(&c);
    joule_retro_data_set_own_document(rd, true);
    joule_retro_db *db = joule_retro_data_db(rd);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, g_train), JOULE_OK);
    int32_t entry[2 * M];
    int64_t ids[K];
    uint64_t own = 0;
    for (uint64_t s = 0; s + T + 1 <= t.n_tokens; s += T) {
        joule_retro_chunk *ch;
        const int32_t *out;
        int n;
        ck_assert_int_eq(joule_retro_batch_chunks(rd, &t, &s, 1, T, &ch, &out, &n), JOULE_OK);
        for (int c0 = 0; c0 < n; c0++) {
            const uint64_t abs = s + (uint64_t)ch[c0].last;
            int32_t q[M];
            for (int i = 0; i < M; i++) q[i] = t.tok[abs + 1 - M + (uint64_t)i];
            ck_assert_int_eq(joule_db_search(db, q, 1, K, NULL, ids, NULL), JOULE_OK);
            for (int i = 0; i < K; i++) {
                uint64_t doc;
                ck_assert_int_ge(ids[i], 0);
                ck_assert_int_eq(joule_db_entry(db, ids[i], entry, &doc), JOULE_OK);
                ck_assert_int_eq(memcmp(out + ((size_t)c0 * K + i) * 2 * M, entry, sizeof entry), 0);
                own += doc == t.doc_ids[joule_tokens_doc_at(&t, abs)];
            }
        }
    }
    ck_assert_uint_gt(own, 0);
    joule_tokens_close(&t);
    joule_retro_data_close(rd);
}
END_TEST

static void train_opts(joule_train_opts *o, const char *out, joule_retro_data *rd, uint64_t steps) {
    joule_train_opts_init(o);
    o->train_path = g_train;
    o->val_path = g_val;
    o->out_path = out;
    o->batch = 2;
    o->seq = T;
    o->max_steps = steps;
    o->eval_windows = 2;
    o->adam.warmup_steps = 1;
    joule_retro_train_hooks(o, rd);
}

/* Training split by a checkpoint and resumed equals one straight run, bit for bit. */
START_TEST(test_resume_equals_straight_run) {
    joule_set_threads(2);
    joule_config c = retro_config();
    joule_retro_data *rd = open_data(&c);
    char a[4400], b[4400];
    snprintf(a, sizeof a, "%s/a.safetensors", tu_dir);
    snprintf(b, sizeof b, "%s/b.safetensors", tu_dir);
    joule_train_opts o;
    joule_train_progress p;
    joule_model *m = tu_model(&c, 2, 5);
    train_opts(&o, a, rd, 4);
    ck_assert_int_eq(joule_train(m, &o, &p), JOULE_OK);
    ck_assert_uint_eq(p.flops, p.flops_analytic); /* counted == analytic (validation not included) */
    joule_model *m2 = tu_model(&c, 2, 5);
    train_opts(&o, b, rd, 4);
    o.stop_after = 2;
    ck_assert_int_eq(joule_train(m2, &o, &p), JOULE_OK);
    joule_model_free(m2);
    ck_assert_int_eq(joule_checkpoint_load(&m2, b, NULL), JOULE_OK);
    ck_assert_int_eq(joule_model_alloc_train(m2, 2), JOULE_OK);
    o.stop_after = 0;
    o.resume = 1;
    ck_assert_int_eq(joule_train(m2, &o, &p), JOULE_OK);
    ck_assert_uint_eq(p.step, 4);
    ck_assert_int_eq(memcmp(m->params, m2->params, m->n_params * sizeof(float)), 0);
    /* and it learned something through the CCA path: the output projections moved off 0 */
    const joule_param_info *wo = joule_model_find(m, "layers.1.cca.wo.weight");
    double s = 0;
    for (size_t i = 0; i < wo->numel; i++) s += fabs(m->params[wo->offset + i]);
    ck_assert(s > 0);
    joule_model_free(m);
    joule_model_free(m2);
    joule_retro_data_close(rd);
}
END_TEST

/* RETRO-fitting: only the encoder and CCA move; the base stays bit-identical and, with
 * retrieval off, the logits are the dense model's exactly. */
START_TEST(test_retrofit_frozen_base) {
    joule_config c = retro_config();
    joule_config dc = joule_config_default(2, 16, 2, 32, T);
    joule_model *dense = tu_model(&dc, 2, 77);
    joule_model *m = tu_model(&c, 2, 3); /* another seed: the copy must set every base tensor */
    ck_assert_int_eq(joule_retro_init_from(m, dense, "dense"), JOULE_OK);
    joule_retro_freeze_base(m);
    joule_retro_data *rd = open_data(&c);
    char out[4400];
    snprintf(out, sizeof out, "%s/fit.safetensors", tu_dir);
    joule_train_opts o;
    train_opts(&o, out, rd, 3);
    o.adam.lr = 1e-2f;
    joule_train_progress p;
    float *before = malloc(m->n_params * sizeof(float));
    memcpy(before, m->params, m->n_params * sizeof(float));
    ck_assert_int_eq(joule_train(m, &o, &p), JOULE_OK);
    int moved = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        const bool same = memcmp(before + t->offset, m->params + t->offset, t->numel * sizeof(float)) == 0;
        const joule_param_info *dt = joule_model_find(dense, t->name);
        if (dt) {
            ck_assert_msg(t->frozen && same, "%s changed", t->name);
            ck_assert_int_eq(memcmp(dense->params + dt->offset, m->params + t->offset, t->numel * sizeof(float)), 0);
        } else {
            ck_assert(!t->frozen);
            moved += !same;
        }
    }
    ck_assert_int_gt(moved, 5);
    int32_t in[2 * T];
    joule_rng r;
    joule_rng_seed(&r, 9);
    for (int i = 0; i < 2 * T; i++) in[i] = (int32_t)joule_rng_below(&r, 256);
    ck_assert_int_eq(joule_retro_set_neighbours(m, NULL, 2, NCH), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(m, in, NULL, 2, T, NULL), JOULE_OK);
    ck_assert_int_eq(joule_model_forward(dense, in, NULL, 2, T, NULL), JOULE_OK);
    ck_assert_int_eq(memcmp(joule_model_logits(m), joule_model_logits(dense), sizeof(float) * 2 * T * 256), 0);
    free(before);
    joule_model_free(m);
    joule_model_free(dense);
    joule_retro_data_close(rd);
}
END_TEST

START_TEST(test_database_mismatch_refused) {
    joule_config c = retro_config();
    const char *paths[1] = {g_val};
    joule_retro_data *rd;
    snprintf(c.retro.db_id, sizeof c.retro.db_id, "0123456789abcdef");
    ck_assert_int_eq(joule_retro_data_open(&rd, &c, g_db, paths, 1, false, NULL, NULL), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "--allow-db-mismatch"));
    ck_assert_int_eq(joule_retro_data_open(&rd, &c, g_db, paths, 1, true, NULL, NULL), JOULE_OK);
    joule_retro_data_close(rd);
    c.retro.db_id[0] = '\0';
    c.retro.chunk = 2 * M;
    ck_assert_int_eq(joule_retro_data_open(&rd, &c, g_db, paths, 1, false, NULL, NULL), JOULE_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(joule_last_error(), "chunks"));
}
END_TEST

/* Retrieval off gives exactly the plain evaluation; on, the neighbours change the loss. */
START_TEST(test_eval_retrieval_on_off) {
    joule_config c = retro_config();
    joule_model *m = tu_model(&c, 2, 11);
    tu_randomise_cca_out(m, 0.2f, 12);
    joule_retro_data *rd = open_data(&c);
    joule_tokens t;
    ck_assert_int_eq(joule_tokens_open(&t, g_val), JOULE_OK);
    joule_eval_result on, off, plain;
    ck_assert_int_eq(joule_evaluate_prepared(m, &t, T, 2, 0, joule_retro_prepare, rd, &on, NULL, NULL), JOULE_OK);
    joule_retro_data_set_retrieval(rd, false);
    ck_assert_int_eq(joule_evaluate_prepared(m, &t, T, 2, 0, joule_retro_prepare, rd, &off, NULL, NULL), JOULE_OK);
    ck_assert_int_eq(joule_retro_set_neighbours(m, NULL, 1, 0), JOULE_OK);
    ck_assert_int_eq(joule_evaluate(m, &t, T, 2, 0, &plain, NULL, NULL), JOULE_OK);
    ck_assert(off.loss == plain.loss);
    ck_assert(on.loss != off.loss);
    ck_assert_uint_gt(on.flops, off.flops);
    joule_tokens_close(&t);
    joule_model_free(m);
    joule_retro_data_close(rd);
}
END_TEST

typedef struct {
    int32_t tok[128];
    int n;
} collected;

static int collect(void *ctx, int32_t tok) {
    collected *c = ctx;
    c->tok[c->n++] = tok;
    return 0;
}

/* Live retrieval searches once per completed chunk; without a database the text is
 * exactly joule_generate's. */
START_TEST(test_generate_live_retrieval) {
    joule_config c = retro_config();
    joule_model *m = tu_model(&c, 1, 21);
    tu_randomise_cca_out(m, 0.5f, 22);
    joule_retro_db *db;
    ck_assert_int_eq(joule_db_open(&db, g_db), JOULE_OK);
    const char *prompt = "alpha beta gamma river";
    const int np = (int)strlen(prompt), ng = 10; /* np + ng - 1 <= ctx: no sliding window */
    joule_sampler s = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f};
    collected with = {0}, without = {0}, plain = {0};
    joule_retro_gen_stats st;
    ck_assert_int_eq(joule_retro_generate(m, db, (const uint8_t *)prompt, np, 0, ng, &s, 1, collect, &with, &st), JOULE_OK);
    ck_assert_uint_eq(st.tokens, ng);
    ck_assert_uint_eq(st.retrievals, (uint64_t)(np + ng - 1) / M); /* the last token is not fed */
    ck_assert(st.retrieval_s > 0 && st.retrieval_s < st.total_s);
    ck_assert_int_eq(joule_retro_generate(m, NULL, (const uint8_t *)prompt, np, 0, ng, &s, 1, collect, &without, &st),
                     JOULE_OK);
    ck_assert_uint_eq(st.retrievals, 0);
    ck_assert_int_eq(joule_generate(m, (const uint8_t *)prompt, np, ng, &s, 1, collect, &plain), JOULE_OK);
    ck_assert_int_eq(memcmp(without.tok, plain.tok, sizeof plain.tok), 0);
    ck_assert_int_ne(memcmp(with.tok, plain.tok, sizeof plain.tok), 0);
    /* past the context the window slides (it restarts at a chunk's last token, its chunks
     * searched again) and generation goes on; no end-of-document stop here */
    collected longer = {0};
    ck_assert_msg(joule_retro_generate(m, db, (const uint8_t *)prompt, np, 0, 60, &s, 1, collect, &longer, &st) ==
                      JOULE_OK,
                  "%s", joule_last_error());
    ck_assert_uint_eq(st.tokens, 60);
    ck_assert_uint_gt(st.retrievals, (uint64_t)(np + 59) / M);
    joule_db_close(db);
    joule_model_free(m);
}
END_TEST

enum { NSEQ = 6 };

/* continuation seq's tokens; the third stops at its 4th token, as a missed sample does */
static int collect_each(void *ctx, int seq, int32_t tok) {
    collected *c = ctx;
    c[seq].tok[c[seq].n++] = tok;
    return seq == 2 && c[seq].n == 4;
}

static int collect_stop4(void *ctx, int32_t tok) {
    collected *c = ctx;
    c->tok[c->n++] = tok;
    return c->n == 4;
}

/* Continuations from one prefill are, token for token, the continuations joule_retro_generate
 * decodes alone (greedy and sampled, crossing chunk ends, one stopped early, with and
 * without a sliding window), with fewer searches: the prompt's chunks once. */
START_TEST(test_generate_each_equals_alone) {
    joule_config c = retro_config();
    joule_model *m = tu_model(&c, 1, 23);
    tu_randomise_cca_out(m, 0.5f, 24);
    joule_retro_db *db;
    ck_assert_int_eq(joule_db_open(&db, g_db), JOULE_OK);
    const char *prompt = "alpha beta gamma river stone";
    const int np = (int)strlen(prompt);
    joule_sampler s[NSEQ];
    uint64_t seeds[NSEQ];
    for (int i = 0; i < NSEQ; i++) {
        s[i] = (joule_sampler){.temperature = i == 0 ? 0.0f : 1.5f, .top_k = 0, .top_p = 1.0f};
        seeds[i] = 100 + (uint64_t)i;
    }
    static const int lengths[] = {5, 12, 40}; /* within one chunk; across chunk ends; past the context */
    for (int phase = 0; phase < 2; phase++)
        for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
            const int ng = lengths[li];
            collected each[NSEQ];
            memset(each, 0, sizeof each);
            joule_retro_gen_stats st, st1;
            ck_assert_msg(joule_retro_generate_each(m, db, (const uint8_t *)prompt, np, 3 * phase, ng, NSEQ, s, seeds,
                                                    collect_each, each, &st) == JOULE_OK,
                          "%s", joule_last_error());
            uint64_t alone_searches = 0;
            for (int i = 0; i < NSEQ; i++) {
                collected one = {0};
                ck_assert_int_eq(joule_retro_generate(m, db, (const uint8_t *)prompt, np, 3 * phase, ng, &s[i], seeds[i],
                                                      i == 2 ? collect_stop4 : collect, &one, &st1),
                                 JOULE_OK);
                alone_searches += st1.retrievals;
                ck_assert_int_eq(each[i].n, one.n);
                ck_assert_msg(memcmp(each[i].tok, one.tok, sizeof one.tok) == 0, "phase %d, %d tokens, continuation %d differs",
                              3 * phase, ng, i);
            }
            /* the sampled ones differ from each other (the test would pass on copies otherwise) */
            ck_assert_int_ne(memcmp(each[3].tok, each[4].tok, sizeof each[3].tok), 0);
            ck_assert_uint_lt(st.retrievals, alone_searches);
        }
    joule_db_close(db);
    joule_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- the CLI */

#define RTINY "--train train.bin --val val.bin --layers 2 --d-model 16 --heads 2 --d-ff 32 --ctx 32 --batch 2 " \
              "--eval-windows 2 --no-log"

/* train --arch retro, eval --db (on/off), generate --db, RETRO-fitting, and the refusals. */
START_TEST(test_cli_end_to_end) {
    ck_assert_int_eq(tu_joule("train --arch retro --db db --cca-start 1 --enc-layers 1 --steps 2 --out r.safetensors " RTINY), 0);
    ck_assert(tu_file_has("out.txt", "retro: chunk 8, 2 neighbours, CCA in layers 1"));
    /* on demand: the same training without neighbour files */
    ck_assert_int_eq(tu_joule("train --arch retro --db db --cca-start 1 --enc-layers 1 --steps 2 --neighbours-on-demand "
                           "--out od.safetensors " RTINY),
                     0);
    ck_assert_int_eq(tu_joule("train --steps 1 --neighbours-on-demand --out x.safetensors " RTINY), 2);
    ck_assert_int_eq(tu_joule("eval --model r.safetensors --tokens val.bin --db db --json"), 0);
    ck_assert(tu_file_has("out.txt", "\"bpb_retrieval\":") && tu_file_has("out.txt", "\"bpb_no_retrieval\":"));
    ck_assert_int_eq(tu_joule("eval --model r.safetensors --tokens val.bin --db db --include-own-doc"), 0);
    ck_assert(tu_file_has("out.txt", "own document allowed"));
    ck_assert_int_eq(tu_joule("eval --model r.safetensors --tokens val.bin --include-own-doc"), 2);
    ck_assert_int_eq(tu_joule("generate --model r.safetensors --prompt 'alpha beta gamma' -n 20 --db db"), 0);
    /* it stops at the end of a document after 10 bytes: 16 + 9 tokens fed, chunks end at 7, 15, 23 */
    ck_assert_msg(tu_file_has("err.txt", "(retrieval: 3 searches"), "%s", tu_read_in("err.txt", NULL));
    ck_assert_int_eq(tu_joule("info --model r.safetensors"), 0);
    ck_assert(tu_file_has("out.txt", "retro:      chunk 8, 2 neighbours"));
    ck_assert_int_eq(tu_joule("bench retro --model r.safetensors --db db --steps 1 --batch 1 --tokens 16"), 0);
    ck_assert(tu_file_has("out.txt", "train step (batch 1 x 32)") && tu_file_has("out.txt", "of generation time"));
    /* RETRO-fitting a dense checkpoint */
    ck_assert_int_eq(tu_joule("train --steps 2 --out d.safetensors " RTINY), 0);
    ck_assert_int_eq(tu_joule("train --arch retro --db db --init d.safetensors --freeze-base --steps 2 --out f.safetensors "
                           "--train train.bin --val val.bin --batch 2 --eval-windows 2 --no-log"), 0);
    ck_assert(tu_file_has("out.txt", "base parameters frozen"));
    /* a RETRO-fit resumes only with the base still frozen */
    ck_assert_int_eq(tu_joule("train --arch retro --db db --init d.safetensors --freeze-base --steps 3 --stop-after 1 "
                           "--out g.safetensors --train train.bin --val val.bin --batch 2 --eval-windows 2 --no-log"), 0);
    ck_assert_int_eq(tu_joule("train --resume --db db --out g.safetensors --train train.bin --val val.bin --no-log"), 2);
    ck_assert(tu_file_has("err.txt", "frozen_tensors"));
    ck_assert_int_eq(tu_joule("train --resume --db db --freeze-base --out g.safetensors --train train.bin --val val.bin "
                           "--no-log"), 0);
    /* usage errors: exit 2 with one line naming the problem */
    ck_assert_int_eq(tu_joule("train --arch retro --steps 1 --out x.safetensors " RTINY), 2);
    ck_assert(tu_file_has("err.txt", "--db"));
    ck_assert_int_eq(tu_joule("train --freeze-base --steps 1 --out x.safetensors " RTINY), 2);
    ck_assert_int_eq(tu_joule("eval --model d.safetensors --tokens val.bin --db db"), 2);
    ck_assert(tu_file_has("err.txt", "RETRO model"));
    /* another database (same chunk length, other embedder): refused unless allowed */
    joule_db_build_opts o;
    joule_db_build_opts_init(&o);
    const char *src = g_train;
    char db2[4400];
    snprintf(db2, sizeof db2, "%s/db2", tu_dir);
    o.sources = &src;
    o.n_sources = 1;
    o.out_dir = db2;
    o.chunk = M;
    o.embedder = "ngram:64";
    o.index = "Flat";
    ck_assert_int_eq(joule_db_build(&o, NULL, NULL), JOULE_OK);
    ck_assert_int_eq(tu_joule("eval --model r.safetensors --tokens val.bin --db db2"), 2);
    ck_assert(tu_file_has("err.txt", "--allow-db-mismatch"));
    ck_assert_int_eq(tu_joule("generate --model r.safetensors -n 4 --db db2"), 2);
    ck_assert_int_eq(tu_joule("eval --model r.safetensors --tokens val.bin --db db2 --allow-db-mismatch"), 0);
    ck_assert(tu_file_has("out.txt", "with retrieval"));
    ck_assert_int_eq(tu_joule("train --help"), 0);
    ck_assert(tu_file_has("out.txt", "--freeze-base"));
    ck_assert_int_eq(tu_joule("eval --model r.safetensors --tokens val.bin --db db --neighbours-on-demand"), 0);
    ck_assert(tu_file_has("out.txt", "on demand"));
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("retro_train");
    TCase *tc = tu_tcase(s, "with_database", 120, setup, tu_remove_dir);
    tcase_add_test(tc, test_training_neighbours);
    tcase_add_test(tc, test_on_demand_neighbours);
    tcase_add_test(tc, test_own_document_mode);
    tcase_add_test(tc, test_resume_equals_straight_run);
    tcase_add_test(tc, test_retrofit_frozen_base);
    tcase_add_test(tc, test_database_mismatch_refused);
    tcase_add_test(tc, test_eval_retrieval_on_off);
    tcase_add_test(tc, test_generate_live_retrieval);
    tcase_add_test(tc, test_generate_each_equals_alone);
    tcase_add_test(tc, test_cli_end_to_end);
    return s;
}

int main(void) {
    joule_retro_register();
    return tu_run_suite(suite());
}
