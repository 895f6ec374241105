/* The chunks of one forward and what follows from them (docs/MODEL.md §7): which rows read
 * which chunk's neighbours, which rows the encoder reads for each chunk, their positions
 * inside the chunk, and the compaction of both row sets so that every product runs only
 * over rows that take part. */
#include <stdlib.h>
#include <string.h>

#include "retro_model.h"

int retro_layout_alloc(retro_layout *L, int cap_g, int cap_rows) {
    memset(L, 0, sizeof *L);
    L->cap_g = cap_g;
    L->cap_rows = cap_rows;
    int **g[] = {&L->seq, &L->last, &L->qrow, &L->nq, &L->qoff, &L->hrow, &L->hlen, &L->hoff, &L->krow};
    bool ok = true;
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) ok = ok && (*g[i] = calloc((size_t)cap_g + 1, sizeof(int)));
    ok = ok && (L->qpos = calloc((size_t)cap_rows + 1, sizeof(int))) && (L->hpos = calloc((size_t)cap_rows + 1, sizeof(int)));
    if (!ok) {
        retro_layout_free(L);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the RETRO chunk layout");
    }
    return JOULE_OK;
}

void retro_layout_free(retro_layout *L) {
    int *p[] = {L->seq, L->last, L->qrow, L->nq, L->qoff, L->hrow, L->hlen, L->hoff, L->krow, L->qpos, L->hpos};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    memset(L, 0, sizeof *L);
}

static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

int retro_layout_build(retro_layout *L, const retro_dims *d, const joule_retro_chunk *ch, int G, int B, int T) {
    const int m = d->m;
    if (G < 0 || G > L->cap_g || (size_t)B * T > (size_t)L->cap_rows)
        return joule_fail(JOULE_ERR_ARG, "RETRO chunks: %d chunks over %d x %d exceed the buffers (%d chunks, %d rows)",
                          G, B, T, L->cap_g, L->cap_rows);
    int NQ = 0, NH = 0;
    for (int g = 0; g < G; g++) {
        const int b = ch[g].seq, last = ch[g].last;
        if (b < 0 || b >= B || last < 1 - m || last > T - 1)
            return joule_fail(JOULE_ERR_ARG, "RETRO chunk %d (sequence %d, last token %d) outside %d x [%d, %d]", g, b,
                              last, B, 1 - m, T - 1);
        if (g > 0 && (b < ch[g - 1].seq || (b == ch[g - 1].seq && last < ch[g - 1].last + m)))
            return joule_fail(JOULE_ERR_ARG,
                              "RETRO chunk %d (sequence %d, last token %d) does not follow chunk %d at least %d "
                              "positions later",
                              g, b, last, g - 1, m);
        L->seq[g] = b;
        L->last[g] = last;
        const int q0 = imax(last, 0), q1 = imin(last + m, T), h0 = imax(last - m + 1, 0), h1 = last + 1;
        L->qrow[g] = b * T + q0;
        L->nq[g] = q1 - q0;
        L->qoff[g] = NQ;
        for (int p = q0; p < q1; p++) L->qpos[NQ++] = p - last + m - 1;
        L->hrow[g] = b * T + h0;
        L->hlen[g] = imax(h1 - h0, 0);
        L->hoff[g] = NH;
        for (int p = h0; p < h1; p++) L->hpos[NH++] = p - (last - m + 1);
        L->krow[g] = g * d->k * 2 * m;
    }
    L->B = B;
    L->T = T;
    L->G = G;
    L->NQ = NQ;
    L->NH = NH;
    return JOULE_OK;
}

void retro_gather_rows(float *dst, const float *src, const retro_layout *L, bool reading, int C) {
    for (int g = 0; g < L->G; g++) {
        const int row = reading ? L->qrow[g] : L->hrow[g], n = reading ? L->nq[g] : L->hlen[g];
        const int off = reading ? L->qoff[g] : L->hoff[g];
        memcpy(dst + (size_t)off * C, src + (size_t)row * C, (size_t)n * C * sizeof(float));
    }
}

void retro_scatter_add_rows(float *dst, const float *src, const retro_layout *L, bool reading, int C) {
    for (int g = 0; g < L->G; g++) {
        const int row = reading ? L->qrow[g] : L->hrow[g], n = reading ? L->nq[g] : L->hlen[g];
        const int off = reading ? L->qoff[g] : L->hoff[g];
        float *o = dst + (size_t)row * C;
        const float *in = src + (size_t)off * C;
        for (size_t i = 0; i < (size_t)n * C; i++) o[i] += in[i];
    }
}

int joule_retro_regular_chunks(int m, int B, int T, joule_retro_chunk *out) {
    int n = 0;
    for (int b = 0; b < B; b++)
        for (int last = 0; last < T; last += m) out[n++] = (joule_retro_chunk){.seq = b, .last = last};
    return n;
}

void retro_regular_counts(int m, int T, int *G, int *NH, int *NQ) {
    *G = T > 0 ? (T - 1) / m + 1 : 0;
    *NH = *G > 0 ? 1 + (*G - 1) * m : 0; /* the first chunk's last token is the window's first */
    *NQ = T;                              /* chunk u is read by rows u*m .. u*m + m - 1 */
}

/* ---------------------------------------------------------------- a stream's grid */

void joule_retro_grid_init(joule_retro_grid *g, int m) {
    g->m = m;
    g->fill = 0;
}

bool joule_retro_grid_feed(joule_retro_grid *g, int32_t token) {
    g->fill++;
    if (token == JOULE_EOD_TOKEN) { /* the document's last chunk: never retrieved for */
        g->fill = 0;
        return false;
    }
    if (g->fill < g->m) return false;
    g->fill = 0;
    return true;
}

void joule_retro_grid_mark(int m, const int32_t *tok, int n, uint8_t *ends) {
    joule_retro_grid g;
    joule_retro_grid_init(&g, m);
    for (int i = 0; i < n; i++) {
        const bool retrieved = joule_retro_grid_feed(&g, tok[i]);
        ends[i] = retrieved ? 2 : g.fill == 0 ? 1 : 0;
    }
}
