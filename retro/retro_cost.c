/* RETRO's costs for the accountant: what one-token decoding counts per layer and position
 * (retro_decode.c), and the analytic cost of one retrieval: FLOPs of a FAISS search by index
 * type and database size (FAISS does this work, so it is estimated, never counted).
 * docs/MODEL.md §7 and docs/ACCOUNTING.md state the formulas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/retro.h"
#include "retro_model.h"

/* retro_decode_step at position pos, neighbours handed for every completed chunk: the
 * position completing chunk u encodes u's k neighbours once (in the first CCA layer) and
 * every CCA layer projects them to keys/values once; positions (u+1)m-1 .. (u+2)m-2 query
 * them (the m-1 shift), so nothing before m-1. */
int retro_decode_flop_terms(const joule_config *c, int l, int pos, const char **names, uint64_t *flops, int max) {
    retro_dims d;
    retro_dims_from_config(&d, c);
    const uint64_t C = (uint64_t)d.C, R = (uint64_t)d.k * 2 * (uint64_t)d.m;
    if (R == 0 || pos < d.m - 1 || d.ord[l] < 0) return 0;
    const bool completes = (pos + 1) % d.m == 0;
    int n = 0;
    if (n < max) {
        names[n] = "cca";
        flops[n++] = 2 * C * C            /* wq */
                     + 4 * C * R          /* scores and values over the k x 2m neighbour tokens */
                     + 2 * C * C          /* wo */
                     + (completes ? 2 * R * (uint64_t)d.D * 2 * C : 0); /* wk, wv of the new encoding */
    }
    if (completes && l == d.l0 && n < max) {
        names[n] = "encoder";
        flops[n++] = retro_enc_flops(&d, 1, d.m); /* one chunk: k neighbours reading its m rows */
    }
    return n;
}

/* Parses an integer suffix at s (e.g. "1024" of "IVF1024"); def when absent. */
static double suffix_num(const char *s, double def) {
    char *end;
    long v = strtol(s, &end, 10);
    return end != s && v > 0 ? (double)v : def;
}

int joule_retro_search_cost(const char *factory, int dim, uint64_t n, int nprobe, int ef_search,
                            joule_search_cost *out) {
    memset(out, 0, sizeof *out);
    const double d = dim, N = (double)n;
    if (!factory || dim < 1) return joule_fail(JOULE_ERR_ARG, "search cost: no index description");
    if (nprobe < 1) nprobe = 1;        /* FAISS's default */
    if (ef_search < 1) ef_search = 16; /* FAISS's default */
    const char *comma = strchr(factory, ',');
    const char *second = comma ? comma + 1 : "";
    if (strcmp(factory, "Flat") == 0) {
        out->flops = 2.0 * d * N; /* every vector's distance */
        snprintf(out->method, sizeof out->method, "Flat: 2*d*N");
    } else if (strncmp(factory, "IVF", 3) == 0) {
        const double nlist = suffix_num(factory + 3, 1), probed = N * (double)nprobe / nlist;
        const double coarse = 2.0 * d * nlist;
        if (strncmp(second, "PQ", 2) == 0) {
            const double mpq = suffix_num(second + 2, 8);
            /* per probed list: a d x 256 distance table, then mpq lookups-and-adds per code */
            out->flops = coarse + (double)nprobe * 2.0 * d * 256.0 + probed * mpq;
            snprintf(out->method, sizeof out->method, "IVF-PQ: 2*d*nlist + nprobe*2*d*256 + nprobe*N/nlist*M (nprobe %d)",
                     nprobe);
        } else {
            out->flops = coarse + 2.0 * d * probed;
            snprintf(out->method, sizeof out->method, "IVF: 2*d*nlist + 2*d*nprobe*N/nlist (nprobe %d)", nprobe);
        }
    } else if (strncmp(factory, "HNSW", 4) == 0) {
        const double M = suffix_num(factory + 4, 32);
        /* the base layer visits about efSearch candidates, each scoring its 2M neighbours */
        out->flops = 2.0 * d * (double)ef_search * 2.0 * M;
        snprintf(out->method, sizeof out->method, "HNSW: 2*d*efSearch*2M (efSearch %d, approximate)", ef_search);
    } else {
        return joule_fail(JOULE_ERR_ARG, "search cost: no formula for index '%s'", factory);
    }
    return JOULE_OK;
}
