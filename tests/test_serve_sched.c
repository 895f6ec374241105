/* Continuous batching (joule/serve.h): many requests of different prompts and lengths
 * through one scheduler give each exactly the text it gets alone from joule_generate (or
 * joule_retro_generate with live retrieval), dense, MoE and RETRO; requests join at step
 * boundaries, leave when they finish, the queue is bounded, cancellation frees the slot. */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/moe.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/serve.h"
#include "testutil.h"

enum { NREQ = 12, MAXTOK = 80, CTX = 32 };

typedef struct {
    int32_t tok[MAXTOK];
    int n;
    int finished;
    joule_sched_finish why;
    uint64_t first_step; /* the scheduler step that produced its first token */
    const uint64_t *step;
    int stop_after; /* on_token asks to stop after this many tokens; 0: never */
} result;

static int on_token(void *ctx, int32_t tok) {
    result *r = ctx;
    if (r->n == 0) r->first_step = *r->step;
    ck_assert_int_lt(r->n, MAXTOK);
    r->tok[r->n++] = tok;
    return r->stop_after && r->n >= r->stop_after;
}

static void on_finish(void *ctx, joule_sched_finish why, int status) {
    result *r = ctx;
    ck_assert_int_eq(status, JOULE_OK);
    r->finished++;
    r->why = why;
}

static int collect(void *ctx, int32_t tok) {
    result *r = ctx;
    r->tok[r->n++] = tok;
    return 0;
}

static const char *PROMPTS[NREQ] = {"the rain in spain", "a", "alpha beta gamma river stone", "",
                                    "many hands make light work", "quiet ocean", "seven green tables in a row here",
                                    "north", "paper cloud apple", "xyzzy", "stone stone stone stone", "bq"};

static joule_sched_request request(int i, result *r) {
    return (joule_sched_request){.prompt = (const uint8_t *)PROMPTS[i], .n_prompt = (int)strlen(PROMPTS[i]),
                                 .max_tokens = 5 + (i * 7) % (MAXTOK - 5), /* some pass the context: the window slides */
                                 .sampler = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f},
                                 .seed = (uint64_t)i + 1, .stop_at_eod = false, .on_token = on_token,
                                 .on_finish = on_finish, .ctx = r};
}

/* Every request alone, then all through one scheduler of max_batch slots (half of them
 * submitted while the first half runs): the same tokens, each finished once. */
static void check_equivalence(const joule_model *m, joule_retro_db *db, int max_batch, int step_tokens) {
    static result alone[NREQ], batched[NREQ];
    uint64_t step = 0;
    for (int i = 0; i < NREQ; i++) {
        memset(&alone[i], 0, sizeof alone[i]);
        joule_sched_request q = request(i, &alone[i]);
        joule_retro_gen_stats rs;
        int rc = db ? joule_retro_generate(m, db, q.prompt, q.n_prompt, 0, q.max_tokens, &q.sampler, q.seed, collect,
                                           &alone[i], &rs)
                    : joule_generate(m, q.prompt, q.n_prompt, q.max_tokens, &q.sampler, q.seed, collect, &alone[i]);
        ck_assert_msg(rc == JOULE_OK, "%s", joule_last_error());
        ck_assert_int_eq(alone[i].n, q.max_tokens);
    }
    joule_retro_feed feed = {.db = db};
    joule_sched_feeder f;
    joule_retro_feeder(&f, &feed);
    joule_sched_opts o = {.max_batch = max_batch, .max_queue = NREQ, .step_tokens = step_tokens,
                          .feeder = joule_config_has_cca(&m->cfg) ? &f : NULL};
    joule_sched *s;
    ck_assert_msg(joule_sched_create(&s, m, &o) == JOULE_OK, "%s", joule_last_error());
    int max_rows = 0;
    bool busy = true;
    for (int i = 0; i < NREQ || busy; step++) {
        /* half up front, then one more every third step: requests join a running batch */
        for (int late = 0; i < NREQ && (i < NREQ / 2 || (step % 3 == 0 && !late++)); i++) {
            memset(&batched[i], 0, sizeof batched[i]);
            batched[i].step = &step;
            joule_sched_request q = request(i, &batched[i]);
            ck_assert_int_eq(joule_sched_submit(s, &q, NULL), JOULE_OK);
        }
        ck_assert_int_eq(joule_sched_step(s, &busy), JOULE_OK);
        joule_sched_stats st = joule_sched_get_stats(s);
        ck_assert_int_le(st.running, max_batch);
        max_rows = st.last_batch > max_rows ? st.last_batch : max_rows;
        ck_assert_uint_lt(step, 100000);
    }
    ck_assert_int_eq(max_rows, max_batch); /* it did batch, to the limit */
    for (int i = 0; i < NREQ; i++) {
        ck_assert_int_eq(batched[i].finished, 1);
        ck_assert_int_eq(batched[i].why, JOULE_FINISH_LENGTH);
        ck_assert_int_eq(batched[i].n, alone[i].n);
        ck_assert_msg(memcmp(batched[i].tok, alone[i].tok, sizeof alone[i].tok[0] * (size_t)alone[i].n) == 0,
                      "request %d (prompt '%s') differs from its generation alone", i, PROMPTS[i]);
    }
    joule_sched_stats st = joule_sched_get_stats(s);
    ck_assert_uint_eq(st.finished, NREQ);
    ck_assert_int_eq(st.running + st.queued, 0);
    if (db) ck_assert_uint_gt(feed.stats.retrievals, 0);
    joule_sched_free(s);
}

START_TEST(test_dense_equivalence) {
    joule_config c = joule_config_default(2, 32, 4, 64, CTX);
    joule_model *m = tu_model(&c, 1, 5);
    check_equivalence(m, NULL, 6, 16); /* 6 rows: the sgemm path at one thread */
    check_equivalence(m, NULL, 3, 1);  /* gemv rows, one prefill per step */
    joule_model_free(m);
}
END_TEST

START_TEST(test_moe_equivalence) {
    joule_config c = joule_config_default(2, 32, 4, 64, CTX);
    joule_moe_config e = joule_moe_config_default(64);
    e.n_experts = 4;
    e.top_k = 2;
    e.every = 1;
    e.d_ff_expert = 24;
    joule_moe_apply(&c, &e);
    joule_model *m = tu_model(&c, 1, 6);
    check_equivalence(m, NULL, 6, 16);
    joule_model_free(m);
}
END_TEST

static void write_corpus(const char *bin) {
    static const char *words[] = {"alpha ", "beta ", "gamma ", "delta ", "river ", "stone ", "light ", "north ",
                                  "apple ", "table ", "cloud ", "seven ", "green ", "quiet ", "ocean ", "paper "};
    joule_token_writer *w = tu_tokens_open(bin);
    joule_rng r;
    joule_rng_seed(&r, 3);
    for (int d = 0; d < 20; d++) {
        char buf[256];
        int n = 0;
        const int len = 40 + (int)joule_rng_below(&r, 120);
        while (n < len)
            for (const char *ch = words[joule_rng_below(&r, 16)]; *ch && n < len; ch++) buf[n++] = *ch;
        tu_tokens_doc(w, (uint64_t)d, buf, (size_t)len, 1);
    }
    tu_tokens_commit(w);
}

START_TEST(test_retro_live_equivalence) {
    tu_make_dir("joule_sched_");
    const char *bin = tu_path("train.bin"), *dbdir = tu_path("db");
    write_corpus(bin);
    joule_db_build_opts bo;
    joule_db_build_opts_init(&bo);
    bo.sources = &bin;
    bo.n_sources = 1;
    bo.out_dir = dbdir;
    bo.chunk = 8;
    bo.index = "Flat";
    ck_assert_msg(joule_db_build(&bo, NULL, NULL) == JOULE_OK, "%s", joule_last_error());
    joule_config c = joule_config_default(2, 16, 2, 32, CTX);
    tu_retro_apply(&c, 8, 2, 1, 16);
    joule_model *m = tu_model(&c, 1, 21);
    tu_randomise_cca_out(m, 0.5f, 22);
    joule_retro_db *db;
    ck_assert_int_eq(joule_db_open(&db, dbdir), JOULE_OK);
    check_equivalence(m, db, 5, 16);
    check_equivalence(m, NULL, 5, 16); /* retrieval off: the feeder hands nothing */
    joule_db_close(db);
    joule_model_free(m);
    tu_remove_dir();
}
END_TEST

/* A full queue refuses (and counts it); a request stopped by its caller or cancelled
 * leaves its slot in that step, and the next queued request takes it at the next step. */
START_TEST(test_queue_stop_cancel) {
    joule_config c = joule_config_default(1, 16, 2, 32, CTX);
    joule_model *m = tu_model(&c, 1, 7);
    joule_sched_opts o = {.max_batch = 1, .max_queue = 2, .step_tokens = 64};
    joule_sched *s;
    ck_assert_int_eq(joule_sched_create(&s, m, &o), JOULE_OK);
    uint64_t step = 0, ids[3];
    result r[4] = {{.step = &step, .stop_after = 3}, {.step = &step}, {.step = &step}, {.step = &step}};
    for (int i = 0; i < 2; i++) {
        joule_sched_request q = request(i, &r[i]);
        q.max_tokens = 50;
        ck_assert_int_eq(joule_sched_submit(s, &q, &ids[i]), JOULE_OK);
    }
    ck_assert(joule_sched_full(s));
    joule_sched_request q3 = request(2, &r[2]);
    ck_assert_int_eq(joule_sched_submit(s, &q3, NULL), JOULE_ERR_RUNTIME);
    ck_assert_uint_eq(joule_sched_get_stats(s).rejected, 1);
    joule_sched_request bad = request(3, &r[3]);
    bad.max_tokens = 0;
    ck_assert_int_eq(joule_sched_submit(s, &bad, NULL), JOULE_ERR_ARG);
    bad.max_tokens = 4;
    bad.n_prompt = CTX + 1;
    ck_assert_int_eq(joule_sched_submit(s, &bad, NULL), JOULE_ERR_ARG);
    /* step 0: request 0 prefilled (token 1); steps 1, 2: tokens 2, 3, and it stops */
    for (; step < 3; step++) ck_assert_int_eq(joule_sched_step(s, NULL), JOULE_OK);
    ck_assert_int_eq(r[0].n, 3);
    ck_assert_int_eq(r[0].finished, 1);
    ck_assert_int_eq(r[0].why, JOULE_FINISH_STOP);
    ck_assert_int_eq(joule_sched_get_stats(s).running, 0);
    ck_assert_int_eq(r[1].n, 0);
    ck_assert_int_eq(joule_sched_step(s, NULL), JOULE_OK); /* step 3: request 1 admitted and prefilled */
    ck_assert_int_eq(r[1].n, 1);
    ck_assert_uint_eq(r[1].first_step, 3);
    step++;
    joule_sched_cancel(s, ids[1]);
    ck_assert_int_eq(joule_sched_step(s, NULL), JOULE_OK);
    ck_assert_int_eq(r[1].finished, 1);
    ck_assert_int_eq(r[1].why, JOULE_FINISH_CANCEL);
    ck_assert_int_eq(r[1].n, 1); /* cancelled before its next token */
    ck_assert(!joule_sched_full(s));
    /* freeing with work queued finishes it as cancelled */
    joule_sched_request q4 = request(3, &r[3]);
    ck_assert_int_eq(joule_sched_submit(s, &q4, NULL), JOULE_OK);
    joule_sched_free(s);
    ck_assert_int_eq(r[3].finished, 1);
    ck_assert_int_eq(r[3].why, JOULE_FINISH_CANCEL);
    joule_model_free(m);
}
END_TEST

int main(void) {
    joule_moe_register();
    joule_retro_register();
    Suite *s = suite_create("serve_sched");
    TCase *t = tu_tcase(s, "sched", 120, NULL, NULL);
    tcase_add_test(t, test_dense_equivalence);
    tcase_add_test(t, test_moe_equivalence);
    tcase_add_test(t, test_retro_live_equivalence);
    tcase_add_test(t, test_queue_stop_cancel);
    return tu_run_suite(s);
}
