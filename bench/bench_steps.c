/* `joule bench decode`'s batched part: one decode step of n sequences against one of a
 * single sequence, through the same decoder batch (the packed weights, core/rows_kernel.c)
 * and through joule_decoder_step (gemv), alternated in rounds from the same positions, so
 * that the ratio is like for like: what continuous batching buys per step. */
#include "joule/bench.h"
#include "joule/ops.h"

enum { PROMPT = 16, STEPS = 64, ROUNDS = 5 };

/* Seconds per step of `steps` steps of ds[0..n) (n = 0: ds[0] token by token through
 * joule_decoder_step), every decoder first truncated back to its prompt. */
static int time_steps(joule_decoder_batch *b, joule_decoder **ds, int n, int steps, double *s) {
    int32_t tok[JOULE_BENCH_MAX_ROWS];
    const float *lg;
    const int seqs = n ? n : 1;
    int rc = JOULE_OK;
    for (int i = 0; i < seqs && !rc; i++) rc = joule_decoder_truncate(ds[i], PROMPT);
    const double t0 = joule_now();
    for (int k = 0; k < steps && !rc; k++) {
        for (int i = 0; i < seqs; i++) tok[i] = 32 + (k * 7 + i * 13) % 90;
        rc = n ? joule_decoder_step_batch(b, ds, n, tok, &lg) : joule_decoder_step(ds[0], tok[0], &lg);
    }
    *s = (joule_now() - t0) / steps;
    return rc;
}

static int run(joule_decoder_batch *b, joule_decoder **ds, int n, joule_bench_decode_result *r) {
    double t[3][ROUNDS];
    const int rows[3] = {0, 1, n}; /* gemv, one packed row, n packed rows */
    int rc = JOULE_OK;
    for (int round = 0; round < ROUNDS && !rc; round++)
        for (int v = 0; v < 3 && !rc; v++) rc = time_steps(b, ds, rows[v], STEPS, &t[v][round]);
    if (rc) return rc;
    double *out[3] = {&r->step_gemv_s, &r->step_one_s, &r->step_rows_s};
    for (int v = 0; v < 3; v++) *out[v] = joule_median(t[v], ROUNDS);
    joule_flops_reset();
    rc = time_steps(b, ds, n, 1, &t[0][0]);
    r->step_rows_flops = (double)joule_flops_counted();
    return rc;
}

int joule_bench_decode_rows(const joule_model *m, int n, joule_bench_decode_result *r) {
    if (n < 2 || n > JOULE_BENCH_MAX_ROWS)
        return joule_fail(JOULE_ERR_ARG, "bench decode: --rows %d (2 to %d)", n, JOULE_BENCH_MAX_ROWS);
    if (m->cfg.ctx < PROMPT + STEPS + 1)
        return joule_fail(JOULE_ERR_ARG, "bench decode: the batched steps need a context of %d, not %d",
                          PROMPT + STEPS + 1, m->cfg.ctx);
    joule_decoder *ds[JOULE_BENCH_MAX_ROWS] = {0};
    joule_decoder_batch *b = NULL;
    int rc = joule_decoder_batch_create(&b, m, n);
    int32_t prompt[PROMPT];
    for (int k = 0; k < PROMPT; k++) prompt[k] = 'a' + k;
    for (int i = 0; i < n && !rc; i++) {
        const float *lg;
        if (!(rc = joule_decoder_create(&ds[i], m))) rc = joule_decoder_batch_prefill(b, ds[i], prompt, PROMPT, &lg);
    }
    r->rows = n;
    r->positions = PROMPT;
    r->steps = STEPS;
    if (!rc) rc = run(b, ds, n, r);
    for (int i = 0; i < n; i++) joule_decoder_free(ds[i]);
    joule_decoder_batch_free(b);
    return rc;
}
