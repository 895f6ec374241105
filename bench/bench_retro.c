/* What retrieval costs a RETRO model. Training steps (forward + backward) with neighbours
 * against the same model with retrieval off (the dense base's work), and generation with
 * live retrieval against generation without, with the share of generation time spent
 * embedding, searching and fetching. Runs alternate, medians reported, so the ratios come
 * from one run on the same machine state. */
#include <stdlib.h>
#include <string.h>

#include "joule/bench.h"
#include "joule/ops.h"
#include "joule/retro.h"

/* One training step's work on random tokens and neighbours of the chunks training windows
 * read (retrieval off: nb NULL). */
static int timed_step(joule_model *m, const int32_t *in, const int32_t *tg, const joule_retro_chunk *ch, int nch,
                      const int32_t *nb, int B, int T, double *secs, uint64_t *flops) {
    double t0 = joule_now();
    uint64_t f0 = joule_flops_counted();
    double loss;
    int rc = joule_retro_set_chunks(m, ch, nch, nb, B, T);
    if (!rc) rc = joule_model_forward(m, in, tg, B, T, &loss);
    if (!rc) rc = joule_model_backward(m, 1.0f);
    *secs = joule_now() - t0;
    *flops = joule_flops_counted() - f0;
    return rc;
}

static int no_output(void *ctx, int32_t tok) {
    (void)ctx;
    (void)tok;
    return 0;
}

/* The buffers of one run: random tokens and neighbours, the chunk grid, timings. */
typedef struct {
    int32_t *in, *tg, *nb;
    joule_retro_chunk *ch;
    int n_ch;
    double *t_on, *t_off, *g_on, *g_off, *share;
} retro_bufs;

static void free_bufs(retro_bufs *b) {
    free(b->in);
    free(b->tg);
    free(b->nb);
    free(b->ch);
    free(b->t_on);
    free(b->t_off);
    free(b->g_on);
    free(b->g_off);
    free(b->share);
}

static int alloc_bufs(retro_bufs *b, const joule_config *cfg, int batch, int steps, int T) {
    memset(b, 0, sizeof *b);
    const int nch = T / cfg->retro.chunk;
    const size_t N = (size_t)batch * T, R = (size_t)batch * nch * cfg->retro.k * 2 * cfg->retro.chunk;
    b->in = malloc(N * sizeof *b->in);
    b->tg = malloc(N * sizeof *b->tg);
    b->nb = malloc((R + 1) * sizeof *b->nb);
    b->ch = malloc(((size_t)batch * nch + 1) * sizeof *b->ch);
    double **t[5] = {&b->t_on, &b->t_off, &b->g_on, &b->g_off, &b->share};
    for (int i = 0; i < 5; i++) *t[i] = calloc((size_t)steps, sizeof(double));
    if (!b->in || !b->tg || !b->nb || !b->ch || !b->t_on || !b->t_off || !b->g_on || !b->g_off || !b->share) {
        free_bufs(b);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    joule_rng r;
    joule_rng_seed(&r, 1);
    for (size_t i = 0; i < N; i++) b->in[i] = (int32_t)joule_rng_below(&r, 256), b->tg[i] = (int32_t)joule_rng_below(&r, 256);
    for (size_t i = 0; i < R; i++) b->nb[i] = (int32_t)joule_rng_below(&r, 256);
    b->n_ch = joule_retro_regular_chunks(cfg->retro.chunk, batch, T, b->ch);
    return JOULE_OK;
}

/* Round i (-1 warms up): a step with retrieval, one without, a generation with live
 * retrieval, one without. */
static int round_of(joule_model *m, joule_retro_db *db, const retro_bufs *b, int batch, int T, int n_gen, int i,
                    joule_bench_retro_result *r) {
    joule_sampler greedy = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f};
    joule_retro_gen_stats gs;
    double s_on, s_off;
    int st;
    if ((st = timed_step(m, b->in, b->tg, b->ch, b->n_ch, b->nb, batch, T, &s_on, &r->flops_on)) ||
        (st = timed_step(m, b->in, b->tg, b->ch, b->n_ch, NULL, batch, T, &s_off, &r->flops_off)))
        return st;
    if ((st = joule_retro_generate(m, db, NULL, 0, 0, n_gen, &greedy, 1, no_output, NULL, &gs))) return st;
    double gen_on = gs.total_s, sh = gs.retrieval_s / gs.total_s;
    if ((st = joule_retro_generate(m, NULL, NULL, 0, 0, n_gen, &greedy, 1, no_output, NULL, &gs))) return st;
    if (i >= 0) b->t_on[i] = s_on, b->t_off[i] = s_off, b->g_on[i] = gen_on, b->g_off[i] = gs.total_s, b->share[i] = sh;
    return JOULE_OK;
}

int joule_bench_retro(joule_model *m, joule_retro_db *db, const joule_bench_retro_opts *o,
                      joule_bench_retro_result *r) {
    memset(r, 0, sizeof *r);
    const joule_config *cfg = &m->cfg;
    const int T = cfg->ctx / cfg->retro.chunk * cfg->retro.chunk;
    retro_bufs b;
    int st = alloc_bufs(&b, cfg, o->batch, o->steps, T);
    if (st) return st;
    if ((st = joule_model_alloc_train(m, o->batch))) {
        free_bufs(&b);
        return st;
    }
    const int n_gen = o->tokens < cfg->ctx ? o->tokens : cfg->ctx; /* no sliding window: one search per chunk */
    for (int i = -1; i < o->steps && !st; i++) st = round_of(m, db, &b, o->batch, T, n_gen, i, r);
    if (!st) {
        r->seq = T;
        r->gen_tokens = n_gen;
        r->train_on_s = joule_median(b.t_on, o->steps);
        r->train_off_s = joule_median(b.t_off, o->steps);
        r->gen_on_s = joule_median(b.g_on, o->steps);
        r->gen_off_s = joule_median(b.g_off, o->steps);
        r->retrieval_share = joule_median(b.share, o->steps);
    }
    free_bufs(&b);
    return st;
}
