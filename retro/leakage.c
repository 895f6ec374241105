/* Leakage evaluation (Borgeaud et al. 2021, §2.6 and fig. 6): how much of RETRO's gain comes
 * from evaluation text that is (nearly) in the database. Each evaluated chunk C gets
 * r(C) = (longest token run C shares with one of its nearest database entries) / m, and
 * bits-per-byte are reported over the chunks with r(C) <= alpha, for RETRO with retrieval on
 * and off and for a dense baseline on the very same target bytes. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/retro.h"
#include "joule/retro_db.h"
#include "retro_internal.h"

static const double ALPHAS[JOULE_LEAKAGE_ALPHAS] = {0.0, 0.125, 0.25, 0.5, 0.75, 1.0};

enum { ON, OFF, DENSE, N_MODELS };

/* Per evaluated chunk (grid ids c0 .. c0 + n - 1): summed target losses of each model and
 * how many targets. */
typedef struct {
    uint64_t c0, n;
    double *sum[N_MODELS];
    uint64_t *count;
} chunk_sums;

/* Adds each target's -log p (nats) from the last forward's logits to its chunk's sum. */
static void add_losses(chunk_sums *cs, const joule_grid *g, const joule_model *m, int which, const uint64_t *starts,
                       const int32_t *tg, int B, int T) {
    const float *logits = joule_model_logits(m);
    const int V = m->cfg.vocab;
    for (int r = 0; r < B * T; r++) {
        const float *z = logits + (size_t)r * V;
        double mx = z[0], s = 0;
        for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        for (int v = 0; v < V; v++) s += exp((double)z[v] - mx);
        const uint64_t pos = starts[r / T] + (uint64_t)(r % T) + 1; /* the target's place in the file */
        const uint64_t c = joule_grid_chunk_at(g, pos) - cs->c0;
        cs->sum[which][c] += mx + log(s) - (double)z[tg[r]];
        if (which == ON) cs->count[c]++;
    }
}

/* Forward passes over the evaluated windows: RETRO on and off, and the baseline. */
static int score_windows(joule_model *retro, joule_model *dense, joule_retro_data *rd, const joule_tokens *t,
                         const joule_grid *g, int T, int B, uint64_t nw, chunk_sums *cs) {
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    uint64_t *starts = malloc((size_t)B * sizeof *starts);
    int rc = in && tg && starts ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (uint64_t w = 0; w < nw && !rc; w += (uint64_t)B) {
        const int b = (int)(nw - w < (uint64_t)B ? nw - w : (uint64_t)B);
        for (int i = 0; i < b; i++) {
            joule_eval_window(t, T, w + (uint64_t)i, in + (size_t)i * T, tg + (size_t)i * T);
            starts[i] = (w + (uint64_t)i) * (uint64_t)T;
        }
        for (int which = ON; which <= DENSE && !rc; which++) {
            joule_model *m = which == DENSE ? dense : retro;
            if (!m) continue;
            if (which != DENSE) {
                joule_retro_data_set_retrieval(rd, which == ON);
                rc = joule_retro_prepare(rd, m, t, starts, b, T);
            }
            if (!rc) rc = joule_model_forward(m, in, NULL, b, T, NULL);
            if (!rc) add_losses(cs, g, m, which, starts, tg, b, T);
        }
    }
    joule_retro_data_set_retrieval(rd, true);
    free(in);
    free(tg);
    free(starts);
    return rc;
}

/* Longest common run of tokens of a [na] and b [nb] (PAD never matches). */
static int longest_common_run(const int32_t *a, int na, const int32_t *b, int nb, int *row) {
    int best = 0;
    memset(row, 0, (size_t)(nb + 1) * sizeof *row);
    for (int i = 0; i < na; i++)
        for (int j = nb - 1; j >= 0; j--) { /* row[j+1] holds the run ending at (i-1, j) */
            row[j + 1] = a[i] != JOULE_DB_PAD && a[i] == b[j] ? row[j] + 1 : 0;
            best = row[j + 1] > best ? row[j + 1] : best;
        }
    return best;
}

/* r(C) of every evaluated chunk, its nearest entries searched in batches. */
static int overlaps(joule_retro_db *db, const joule_grid *g, bool own_doc, int k, const chunk_sums *cs, double *r) {
    const int m = g->m;
    joule_neighbours_scratch sc;
    int rc = joule_neighbours_scratch_init(&sc, m, k);
    int64_t *ids = malloc((size_t)JOULE_NBR_BATCH * k * sizeof *ids);
    int32_t *entry = malloc((size_t)2 * m * sizeof *entry), *chunk = malloc((size_t)m * sizeof *chunk);
    int *row = malloc((size_t)(2 * m + 1) * sizeof *row);
    uint64_t *list = malloc(JOULE_NBR_BATCH * sizeof *list);
    if (!rc && (!ids || !entry || !chunk || !row || !list)) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (uint64_t i0 = 0; i0 < cs->n && !rc; i0 += JOULE_NBR_BATCH) {
        const int n = (int)(cs->n - i0 < JOULE_NBR_BATCH ? cs->n - i0 : JOULE_NBR_BATCH);
        for (int i = 0; i < n; i++) list[i] = cs->c0 + i0 + (uint64_t)i;
        rc = joule_neighbours_search(db, g, list, n, k, own_doc, &sc, ids);
        for (int i = 0; i < n && !rc; i++) {
            uint64_t start;
            int len, best = 0;
            joule_grid_chunk(g, list[i], NULL, &start, &len);
            for (int j = 0; j < len; j++) chunk[j] = g->t->tok[start + (uint64_t)j];
            for (int j = 0; j < k && !rc; j++) {
                if (ids[(size_t)i * k + j] < 0) continue;
                rc = joule_db_entry(db, ids[(size_t)i * k + j], entry, NULL);
                const int run = rc ? 0 : longest_common_run(chunk, len, entry, 2 * m, row);
                best = run > best ? run : best;
            }
            r[i0 + (uint64_t)i] = (double)best / m;
        }
    }
    joule_neighbours_scratch_free(&sc);
    free(ids);
    free(entry);
    free(chunk);
    free(row);
    free(list);
    return rc;
}

static void fill_rows(const chunk_sums *cs, const double *r, bool dense, joule_leakage_result *out) {
    for (int a = 0; a < JOULE_LEAKAGE_ALPHAS; a++) {
        joule_leakage_row *row = &out->rows[a];
        double sum[N_MODELS] = {0, 0, 0};
        row->alpha = ALPHAS[a];
        for (uint64_t c = 0; c < cs->n; c++) {
            if (!cs->count[c] || r[c] > ALPHAS[a] + 1e-12) continue;
            row->chunks++;
            row->bytes += cs->count[c];
            for (int w = 0; w < N_MODELS; w++) sum[w] += cs->sum[w][c];
        }
        const double per = row->bytes ? 1.0 / ((double)row->bytes * M_LN2) : NAN;
        row->bpb_on = sum[ON] * per;
        row->bpb_off = sum[OFF] * per;
        row->bpb_dense = dense ? sum[DENSE] * per : NAN;
    }
}

int joule_retro_leakage(joule_model *retro, joule_model *dense, joule_retro_data *rd, const joule_tokens *t, int T,
                        int B, uint64_t windows, int neighbours, joule_leakage_result *out) {
    memset(out, 0, sizeof *out);
    const double t0 = joule_now();
    uint64_t nw = joule_eval_windows(t, T);
    if (windows && nw > windows) nw = windows;
    if (nw == 0 || neighbours < 1 || B < 1)
        return joule_fail(JOULE_ERR_ARG, "%s: leakage needs >= 1 window of %d tokens and >= 1 neighbour", t->path, T);
    if (dense && (dense->cfg.vocab != retro->cfg.vocab || dense->cfg.ctx < T))
        return joule_fail(JOULE_ERR_ARG, "leakage: the baseline's vocabulary or context does not fit windows of %d", T);
    const joule_grid *g;
    int rc = joule_retro_data_grid(rd, t, &g);
    if (rc) return rc;
    chunk_sums cs = {.c0 = joule_grid_chunk_at(g, 1)};
    cs.n = joule_grid_chunk_at(g, nw * (uint64_t)T) - cs.c0 + 1;
    double *r = calloc(cs.n, sizeof *r);
    cs.count = calloc(cs.n, sizeof *cs.count);
    for (int w = 0; w < N_MODELS; w++) cs.sum[w] = calloc(cs.n, sizeof(double));
    if (!r || !cs.count || !cs.sum[ON] || !cs.sum[OFF] || !cs.sum[DENSE])
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory for %llu chunks", (unsigned long long)cs.n);
    if (!rc) rc = score_windows(retro, dense, rd, t, g, T, B, nw, &cs);
    out->own_document = joule_retro_data_own_doc(rd);
    if (!rc) rc = overlaps(joule_retro_data_db(rd), g, out->own_document, neighbours, &cs, r);
    if (!rc) {
        fill_rows(&cs, r, dense != NULL, out);
        out->chunks = out->rows[JOULE_LEAKAGE_ALPHAS - 1].chunks;
        out->bytes = out->rows[JOULE_LEAKAGE_ALPHAS - 1].bytes;
        out->windows = nw;
        out->neighbours = neighbours;
        out->wall_s = joule_now() - t0;
    }
    free(r);
    free(cs.count);
    for (int w = 0; w < N_MODELS; w++) free(cs.sum[w]);
    return rc;
}

void *joule_retro_leakage_json(const joule_leakage_result *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "neighbours", r->neighbours);
    cJSON_AddNumberToObject(o, "chunks", (double)r->chunks);
    cJSON_AddNumberToObject(o, "bytes", (double)r->bytes);
    cJSON_AddNumberToObject(o, "windows", (double)r->windows);
    cJSON_AddBoolToObject(o, "own_document", r->own_document);
    cJSON *rows = cJSON_AddArrayToObject(o, "rows");
    for (int a = 0; a < JOULE_LEAKAGE_ALPHAS; a++) {
        const joule_leakage_row *w = &r->rows[a];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "alpha", w->alpha);
        cJSON_AddNumberToObject(x, "chunks", (double)w->chunks);
        cJSON_AddNumberToObject(x, "bytes", (double)w->bytes);
        const double v[3] = {w->bpb_on, w->bpb_off, w->bpb_dense};
        static const char *const key[3] = {"bpb_retrieval", "bpb_no_retrieval", "bpb_dense"};
        for (int i = 0; i < 3; i++)
            cJSON_AddItemToObject(x, key[i], isnan(v[i]) ? cJSON_CreateNull() : cJSON_CreateNumber(v[i]));
        cJSON_AddItemToArray(rows, x);
    }
    return o;
}
