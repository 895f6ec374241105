/* Expert parallelism: each of R ranks holds E/R experts of every MoE layer (expert e on rank
 * e / (E/R)) and routes its own tokens; the routed rows go to their experts' ranks and back
 * with MPI_Alltoallv (joule/dist.h), in the forward and again in the backward. Capacity and
 * drops are decided in the single process's placement order over every rank's tokens
 * (rank-major), so a training step equals one process whose micro-batch is the ranks'
 * micro-batches concatenated (docs/SCALING.md, "Expert parallelism"). */
#include <stdlib.h>
#include <string.h>

#include "joule/dist.h"
#include "joule/ext.h"
#include "joule/ops.h"
#include "moe_internal.h"

/* One MoE layer's exchange: who sends what to whom, and the owner side's activations. */
typedef struct {
    int32_t *scnt, *rcnt; /* [R*Eq] rows sent to (rank q, its expert j) / received from (rank p, my expert j) */
    int32_t *off, *order; /* [Eq+1], [Eq]: received rows grouped by my expert (expert-major) */
    uint64_t *keys;       /* [Eq] scratch of the order */
    int32_t *perm;        /* [rows_max] expert-major row -> row of the receive buffer (rank-major) */
    size_t *sc, *sd, *rc, *rd; /* [R] each, floats: sent to / received from each rank */
    int rows_in;          /* rows received in the last forward */
    float *xin, *h13, *g, *out; /* [rows_max] x C, 2Fe, Fe, C: my experts' rows, kept for the backward */
} ep_layer;

struct moe_ep {
    int ranks, rank, Eq, rows_max;
    ep_layer *layers;
    int rec_n;                  /* doubles in one rank's routing record */
    double *rec, *all, *tot, *pre; /* [rec_n], [R*rec_n], [rec_n], [k*E] */
    int32_t *start, *cur;       /* [k*E] fills where this rank's tokens start; [R] */
    float *buf, *dbuf, *dg, *dh13; /* shared scratch: [max(rows_max, N k)] x C, C, Fe, 2Fe */
    double a2a_s, a2a_bytes;    /* all-to-alls of the MoE layers since the stats reset */
    int64_t a2a_calls;
};

static void layer_free(ep_layer *el) {
    void *p[] = {el->scnt, el->rcnt, el->off, el->order, el->keys, el->perm, el->sc, el->sd, el->rc, el->rd};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    float *f[] = {el->xin, el->h13, el->g, el->out};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) joule_free(f[i]);
}

void moe_ep_free(moe_state *st) {
    struct moe_ep *ep = st->ep;
    if (!ep) return;
    for (int i = 0; ep->layers && i < st->n; i++) layer_free(&ep->layers[i]);
    free(ep->layers);
    void *p[] = {ep->rec, ep->all, ep->tot, ep->pre, ep->start, ep->cur};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    float *f[] = {ep->buf, ep->dbuf, ep->dg, ep->dh13};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) joule_free(f[i]);
    free(ep);
    st->ep = NULL;
}

static bool layer_alloc(ep_layer *el, int R, int Eq, size_t rows, size_t C, size_t Fe) {
    const size_t n = (size_t)R * (size_t)Eq, f = sizeof(float);
    el->scnt = malloc(n * sizeof(int32_t));
    el->rcnt = malloc(n * sizeof(int32_t));
    el->off = malloc(((size_t)Eq + 1) * sizeof(int32_t));
    el->order = malloc((size_t)Eq * sizeof(int32_t));
    el->keys = malloc((size_t)Eq * sizeof(uint64_t));
    el->perm = malloc(rows * sizeof(int32_t) + 1);
    el->sc = malloc((size_t)R * sizeof(size_t));
    el->sd = malloc((size_t)R * sizeof(size_t));
    el->rc = malloc((size_t)R * sizeof(size_t));
    el->rd = malloc((size_t)R * sizeof(size_t));
    el->xin = joule_alloc(rows * C * f + f);
    el->h13 = joule_alloc(rows * 2 * Fe * f + f);
    el->g = joule_alloc(rows * Fe * f + f);
    el->out = joule_alloc(rows * C * f + f);
    return el->scnt && el->rcnt && el->off && el->order && el->keys && el->perm && el->sc && el->sd && el->rc &&
           el->rd && el->xin && el->h13 && el->g && el->out;
}

/* Rows one rank's experts can receive in a forward of up to max_batch sequences on every
 * rank: all assignments of all ranks when dropless, else E/R experts at capacity. */
static size_t rows_bound(const joule_config *c, int max_batch, int R) {
    const size_t A = (size_t)max_batch * (size_t)c->ctx * (size_t)c->moe.top_k;
    const int n_total = R * max_batch * c->ctx;
    const int cap = joule_moe_capacity(c->moe.capacity_train, c->moe.top_k, n_total, c->moe.n_experts);
    const size_t at_cap = (size_t)cap * (size_t)(c->moe.n_experts / R);
    return cap && at_cap < (size_t)R * A ? at_cap : (size_t)R * A;
}

static int ep_alloc(moe_state *st, const joule_model *m, int R, int rank) {
    const joule_config *c = &m->cfg;
    const int E = c->moe.n_experts, k = c->moe.top_k;
    const size_t C = (size_t)c->d_model, Fe = (size_t)c->moe.d_ff_expert;
    const size_t rows = rows_bound(c, m->max_batch, R), A = (size_t)m->max_batch * (size_t)c->ctx * (size_t)k;
    const size_t brows = rows > A ? rows : A, f = sizeof(float);
    if (rows > (size_t)INT32_MAX) return joule_fail(JOULE_ERR_ARG, "expert parallelism: %zu rows per rank is too many", rows);
    struct moe_ep *ep = calloc(1, sizeof *ep);
    if (!ep) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating expert parallelism");
    st->ep = ep;
    ep->ranks = R;
    ep->rank = rank;
    ep->Eq = E / R;
    ep->rows_max = (int)rows;
    ep->rec_n = k * E + E + 4;
    ep->layers = calloc((size_t)st->n, sizeof *ep->layers);
    ep->rec = malloc((size_t)ep->rec_n * sizeof(double));
    ep->all = malloc((size_t)R * (size_t)ep->rec_n * sizeof(double));
    ep->tot = malloc((size_t)ep->rec_n * sizeof(double));
    ep->pre = malloc((size_t)k * E * sizeof(double));
    ep->start = malloc((size_t)k * E * sizeof(int32_t));
    ep->cur = malloc((size_t)R * sizeof(int32_t));
    ep->buf = joule_alloc(brows * C * f + f);
    ep->dbuf = joule_alloc(rows * C * f + f);
    ep->dg = joule_alloc(rows * Fe * f + f);
    ep->dh13 = joule_alloc(rows * 2 * Fe * f + f);
    bool ok = ep->layers && ep->rec && ep->all && ep->tot && ep->pre && ep->start && ep->cur && ep->buf && ep->dbuf &&
              ep->dg && ep->dh13;
    for (int i = 0; ok && i < st->n; i++) ok = layer_alloc(&ep->layers[i], R, ep->Eq, rows, C, Fe);
    if (ok) return JOULE_OK;
    moe_ep_free(st);
    return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating expert parallelism for %zu rows per layer", rows);
}

/* Expert tensors of layer l: the router, then w1, w3, w2 of each expert (moe.c's layout). */
static void set_owners(joule_model *m, int Eq) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const int first = m->ext_first[l][JOULE_EXT_MOE];
        if (first < 0 || m->ext_count[l][JOULE_EXT_MOE] < 1) continue;
        for (int e = 0; e < m->cfg.moe.n_experts; e++)
            for (int w = 0; w < 3; w++) m->tensors[first + 1 + 3 * e + w].owner = Eq ? e / Eq : -1;
    }
}

int moe_ep_enable(joule_model *m, int ranks, int rank) {
    moe_state *st = m->ext[JOULE_EXT_MOE];
    if (!st) return joule_fail(JOULE_ERR_ARG, "expert parallelism needs training buffers (joule_model_alloc_train)");
    moe_ep_free(st);
    set_owners(m, 0);
    if (ranks <= 1) return JOULE_OK;
    const int E = m->cfg.moe.n_experts;
    if (E % ranks != 0)
        return joule_fail(JOULE_ERR_ARG, "expert parallelism: %d experts do not split evenly over %d ranks (E %% N must be 0)",
                          E, ranks);
    int rc = ep_alloc(st, m, ranks, rank);
    if (rc) return rc;
    set_owners(m, E / ranks);
    return JOULE_OK;
}

/* ---------------------------------------------------------------- routing over ranks */

/* This rank's routing record: kept (sampled) assignments per (choice, expert), the sums of
 * probabilities, entropies and squared lse, second choices not sampled, and N. */
static void fill_record(struct moe_ep *ep, const joule_moe_route *r, int E, int k) {
    double *rec = ep->rec;
    memset(rec, 0, (size_t)ep->rec_n * sizeof *rec);
    for (int n = 0; n < r->N; n++)
        for (int s = 0; s < k; s++) {
            const size_t a = (size_t)n * k + s;
            if (r->kept[a]) rec[s * E + r->expert[a]] += 1;
            else rec[k * E + E + 2] += 1;
        }
    joule_moe_route_sums(r, E, rec + k * E, &rec[k * E + E], &rec[k * E + E + 1]);
    rec[k * E + E + 3] = r->N;
}

/* Every rank's records summed in rank order (tot) and over the ranks before this one (pre). */
static void sum_records(struct moe_ep *ep, int kE) {
    memset(ep->tot, 0, (size_t)ep->rec_n * sizeof *ep->tot);
    memset(ep->pre, 0, (size_t)kE * sizeof *ep->pre);
    for (int p = 0; p < ep->ranks; p++) {
        const double *rec = ep->all + (size_t)p * ep->rec_n;
        for (int i = 0; i < ep->rec_n; i++) ep->tot[i] += rec[i];
        if (p < ep->rank)
            for (int i = 0; i < kE; i++) ep->pre[i] += rec[i];
    }
}

/* Capacity over every rank's tokens, the fills this rank's placement starts from, its
 * drops; the route's statistics and losses then become the whole batch's. */
static int route_global(struct moe_ep *ep, joule_moe_route *r, const joule_moe_router_opts *o) {
    const int E = o->n_experts, k = o->top_k;
    fill_record(ep, r, E, k);
    int rc = joule_dist_allgather(ep->rec, ep->all, (size_t)ep->rec_n * sizeof(double));
    if (rc) return rc;
    sum_records(ep, k * E);
    const double *tot = ep->tot;
    const int n_total = (int)tot[k * E + E + 3];
    const int cap = joule_moe_capacity(o->capacity_factor, k, n_total, E);
    double dropped[2] = {0, 0};
    for (int e = 0; e < E; e++) {
        double fill = 0; /* kept rows of e before choice s of rank 0's first token */
        for (int s = 0; s < k; s++) {
            const double before = fill, here = fill + ep->pre[s * E + e], after = fill + tot[s * E + e];
            ep->start[s * E + e] = (int32_t)(cap && here > cap ? cap : here);
            fill = cap && after > cap ? cap : after;
            dropped[s] += tot[s * E + e] - (fill - before);
        }
    }
    joule_moe_route_place(r, o, cap, ep->start);
    for (int e = 0; e < E; e++) {
        r->first[e] = (int32_t)tot[e];
        r->routed[e] = (int32_t)(tot[e] + (k == 2 ? tot[E + e] : 0));
    }
    r->dropped[0] = (int)dropped[0];
    r->dropped[1] = (int)dropped[1];
    r->skipped = (int)tot[k * E + E + 2];
    joule_moe_route_losses(r, o, tot + k * E, tot[k * E + E], tot[k * E + E + 1], n_total);
    return JOULE_OK;
}

/* ---------------------------------------------------------------- the exchanges */

/* Rows per (rank, expert) both ways, the alltoallv counts, and the permutation that groups
 * the received rows by expert in rank-major order (the single process's token order). */
static int plan_exchange(struct moe_ep *ep, ep_layer *el, const joule_moe_dispatch *d, int C) {
    const int R = ep->ranks, Eq = ep->Eq;
    for (int i = 0; i < R * Eq; i++) el->scnt[i] = d->offset[i + 1] - d->offset[i];
    const joule_dist_stats *s = joule_dist_get_stats();
    const double t0 = s->seconds[JOULE_DIST_ALLTOALL], b0 = s->bytes[JOULE_DIST_ALLTOALL];
    int rc = joule_dist_alltoall_int(el->scnt, el->rcnt, Eq);
    ep->a2a_s += s->seconds[JOULE_DIST_ALLTOALL] - t0;
    ep->a2a_bytes += s->bytes[JOULE_DIST_ALLTOALL] - b0;
    ep->a2a_calls++;
    if (rc) return rc;
    int64_t rows = 0;
    for (int p = 0; p < R; p++) {
        el->sc[p] = (size_t)(d->offset[(p + 1) * Eq] - d->offset[p * Eq]) * C;
        el->sd[p] = (size_t)d->offset[p * Eq] * C;
        ep->cur[p] = (int32_t)rows;
        el->rd[p] = (size_t)rows * C;
        int64_t from_p = 0;
        for (int j = 0; j < Eq; j++) from_p += el->rcnt[p * Eq + j];
        el->rc[p] = (size_t)from_p * C;
        rows += from_p;
    }
    if (rows > ep->rows_max)
        return joule_fail(JOULE_ERR_RUNTIME, "expert parallelism: rank %d received %lld rows, over its bound %d",
                          ep->rank, (long long)rows, ep->rows_max);
    el->rows_in = (int)rows;
    int32_t at = 0;
    for (int j = 0; j < Eq; j++) {
        el->off[j] = at;
        for (int p = 0; p < R; p++)
            for (int32_t i = 0; i < el->rcnt[p * Eq + j]; i++) el->perm[at++] = ep->cur[p]++;
    }
    el->off[Eq] = at;
    moe_order_experts(el->order, el->keys, el->off, Eq);
    return JOULE_OK;
}

/* joule_dist_alltoallv_f32, its cost added to the MoE layers' all-to-all totals. */
static int exchange(struct moe_ep *ep, const float *send, const size_t *sc, const size_t *sd, float *recv,
                    const size_t *rc, const size_t *rd) {
    const joule_dist_stats *s = joule_dist_get_stats();
    const double t0 = s->seconds[JOULE_DIST_ALLTOALL], b0 = s->bytes[JOULE_DIST_ALLTOALL];
    int st = joule_dist_alltoallv_f32(send, sc, sd, recv, rc, rd);
    ep->a2a_s += s->seconds[JOULE_DIST_ALLTOALL] - t0;
    ep->a2a_bytes += s->bytes[JOULE_DIST_ALLTOALL] - b0;
    ep->a2a_calls++;
    return st;
}

/* dst[r] = src[perm[r]] (to expert-major), or dst[perm[r]] = src[r] (back). */
static void permute_rows(float *dst, const float *src, const int32_t *perm, int rows, int C, bool to_experts) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const size_t a = (size_t)(to_experts ? r : perm[r]) * C, b = (size_t)(to_experts ? perm[r] : r) * C;
        memcpy(dst + a, src + b, (size_t)C * sizeof(float));
    }
}

/* ---------------------------------------------------------------- forward / backward */

int moe_ep_forward(joule_model *m, int l, moe_layer *ly, const float *x, float *y, int N,
                   const joule_moe_router_opts *o) {
    moe_state *st = m->ext[JOULE_EXT_MOE];
    struct moe_ep *ep = st->ep;
    ep_layer *el = &ep->layers[st->slot[l]];
    const joule_config *c = &m->cfg;
    const joule_moe_dims dm = {c->d_model, c->moe.d_ff_expert, c->moe.n_experts, c->moe.top_k};
    const int first = m->ext_first[l][JOULE_EXT_MOE], C = dm.C;
    const float *Wr = joule_model_param(m, first);
    const float *W = joule_model_param(m, first + 1) + (size_t)ep->rank * ep->Eq * 3 * dm.Fe * C;
    ly->opts = *o;
    ly->opts.token_base = ep->rank * N; /* random second choices keyed by the global token */
    double t0 = joule_now();
    joule_linear_forward(ly->logits, x, Wr, N, C, dm.E);
    joule_moe_route_tokens(&ly->route, ly->logits, N, &ly->opts);
    int rc = route_global(ep, &ly->route, &ly->opts);
    if (rc) return rc;
    joule_moe_dispatch_build(&ly->disp, &ly->route, dm.E, dm.k);
    moe_gather_rows(st->xperm, x, &ly->disp, C, dm.k);
    st->timing.route_fwd += joule_now() - t0;
    if ((rc = plan_exchange(ep, el, &ly->disp, C)) ||
        (rc = exchange(ep, st->xperm, el->sc, el->sd, ep->buf, el->rc, el->rd)))
        return rc;
    t0 = joule_now();
    permute_rows(el->xin, ep->buf, el->perm, el->rows_in, C, true);
    moe_ffn_forward(el->h13, el->g, el->out, el->xin, W, el->off, el->order, ep->Eq, &dm);
    permute_rows(ep->buf, el->out, el->perm, el->rows_in, C, false);
    st->timing.experts_fwd += joule_now() - t0;
    if ((rc = exchange(ep, ep->buf, el->rc, el->rd, ly->out, el->sc, el->sd))) return rc;
    t0 = joule_now();
    moe_combine(y, ly->out, &ly->disp, ly->route.gate, C, dm.k);
    st->timing.permute_fwd += joule_now() - t0;
    return JOULE_OK;
}

int moe_ep_backward(joule_model *m, int l, moe_layer *ly, const float *dy, float *dx, float grad_scale) {
    moe_state *st = m->ext[JOULE_EXT_MOE];
    struct moe_ep *ep = st->ep;
    ep_layer *el = &ep->layers[st->slot[l]];
    const joule_config *c = &m->cfg;
    const joule_moe_dims dm = {c->d_model, c->moe.d_ff_expert, c->moe.n_experts, c->moe.top_k};
    const int first = m->ext_first[l][JOULE_EXT_MOE], C = dm.C, N = ly->route.N;
    const size_t mine = (size_t)ep->rank * ep->Eq * 3 * dm.Fe * C;
    const float *Wr = joule_model_param(m, first), *W = joule_model_param(m, first + 1) + mine;
    float *dWr = joule_model_grad(m, first), *dW = joule_model_grad(m, first + 1) + mine;
    double t0 = joule_now();
    moe_gated_dout(st->dout, st->dgate, dy, ly->out, &ly->disp, ly->route.gate, C, dm.k);
    st->timing.permute_bwd += joule_now() - t0;
    int rc = exchange(ep, st->dout, el->sc, el->sd, ep->buf, el->rc, el->rd);
    if (rc) return rc;
    t0 = joule_now();
    permute_rows(ep->dbuf, ep->buf, el->perm, el->rows_in, C, true);
    /* xin becomes the gradient of the rows it held */
    moe_ffn_backward(el->xin, dW, ep->dg, ep->dh13, ep->dbuf, W, el->h13, el->g, el->off, el->order, ep->Eq, &dm);
    permute_rows(ep->buf, el->xin, el->perm, el->rows_in, C, false);
    st->timing.experts_bwd += joule_now() - t0;
    if ((rc = exchange(ep, ep->buf, el->rc, el->rd, st->xperm, el->sc, el->sd))) return rc;
    t0 = joule_now();
    moe_sum_dx(dx, st->xperm, &ly->disp, C, dm.k);
    /* grad_scale carries 1/ranks for the per-rank cross-entropy means; the aux losses are
     * means over every rank's tokens already (route.n_total), so they take it back. */
    joule_moe_route_backward(st->dlogits, &ly->route, st->dgate, &ly->opts, grad_scale * (float)ep->ranks);
    joule_linear_backward(dx, dWr, st->dlogits, ly->x, Wr, N, C, dm.E, true);
    st->timing.route_bwd += joule_now() - t0;
    return JOULE_OK;
}

void moe_ep_stats(const moe_state *st, double *seconds, double *bytes, int64_t *calls, int *ranks) {
    const struct moe_ep *ep = st->ep;
    *seconds = ep ? ep->a2a_s : 0;
    *bytes = ep ? ep->a2a_bytes : 0;
    *calls = ep ? ep->a2a_calls : 0;
    *ranks = ep ? ep->ranks : 1;
}

void moe_ep_stats_reset(moe_state *st) {
    if (!st->ep) return;
    st->ep->a2a_s = st->ep->a2a_bytes = 0;
    st->ep->a2a_calls = 0;
}
