/* retro_model.h — private to retro/ (model half): sizes, weight views, the chunk layout of a
 * forward, the CCA op pair and the neighbour encoder's op pair with its activation buffers.
 * docs/MODEL.md §7. */
#ifndef JOULE_RETRO_MODEL_H
#define JOULE_RETRO_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/ext.h"
#include "joule/model.h"
#include "joule/retro.h"

typedef struct {
    int C, H, hs;           /* decoder width, heads, head size */
    int D, He, hse, Fe, Le; /* encoder width, heads, head size, FFN size, layers */
    int m, k, V, ctx;
    int l0, l_last, ncca;   /* first and last CCA layer, how many */
    int ord[JOULE_MAX_LAYERS]; /* CCA ordinal of layer l; -1 when l has none */
    bool rope;              /* relative positions in both cross-attentions */
    float eps, theta;
} retro_dims;

void retro_dims_from_config(retro_dims *d, const joule_config *c);
/* Chunks a window of T tokens can hand: last in [1-m, T-1], at least m apart. */
static inline int retro_max_chunks(int m, int T) { return (T + m - 2) / m + 1; }

/* Tensors per encoder layer and their order in the layout (retro.c lays them out). */
enum { ENC_LAYER_TENSORS = 14, CCA_TENSORS = 5 };

typedef struct {
    float *norm; /* [C] */
    float *wq;   /* [C, C] */
    float *wkv;  /* [2C, D]: wk | wv */
    float *wo;   /* [C, C] */
} cca_w;

typedef struct {
    float *attn_norm, *wqkv, *wo;      /* [D], [3D, D], [D, D] */
    float *xnorm, *xwq, *xwkv, *xwo;   /* [D], [D, D], [2D, C], [D, D] */
    float *ffn_norm, *w13, *w2;        /* [D], [2Fe, D], [D, Fe] */
} enc_layer_w;

typedef struct {
    float *tok_emb; /* [V, D] */
    enc_layer_w *layers; /* Le of them (caller-provided array) */
    float *norm;    /* [D] */
} enc_w;

/* Views of layer l's CCA tensors and (for l == l0) the encoder's, in base (params or
 * grads; NULL base gives NULL views). */
void retro_cca_views(const joule_model *m, const float *base, int l, cca_w *w);
void retro_enc_views(const joule_model *m, const float *base, const retro_dims *d, enc_w *w);

/* ---- the chunks of one forward (layout.c) ----
 * Chunk g (sequence seq[g], last token at window position last[g]) is read by the rows
 * [qrow[g], qrow[g] + nq[g]) of the batch (positions max(last, 0) .. min(last + m, T) - 1),
 * which the CCA compacts at qoff[g] (NQ rows in all); its own rows inside the window, batch
 * rows [hrow[g], hrow[g] + hlen[g]) (hlen 0 when it ended before the window), are what the
 * encoder cross-attends to, compacted at hoff[g] (NH rows). Relative positions, within the
 * chunk (its first token 0): qpos of a reading row p - last + m - 1 (m-1 .. 2m-2), hpos of
 * a chunk row m - hlen + r. */
typedef struct {
    int cap_g, cap_rows;            /* capacity: chunks, rows (B x T) */
    int B, T, G, NQ, NH;
    int *seq, *last;                /* [cap_g] */
    int *qrow, *nq, *qoff, *hrow, *hlen, *hoff, *krow; /* [cap_g]; krow[g] = g * k * 2m */
    int *qpos, *hpos;               /* [cap_rows] */
} retro_layout;

int retro_layout_alloc(retro_layout *L, int cap_g, int cap_rows);
void retro_layout_free(retro_layout *L);
/* Validates chunks (order, spacing, range) for B x T and fills L; message on failure. */
int retro_layout_build(retro_layout *L, const retro_dims *d, const joule_retro_chunk *ch, int G, int B, int T);
/* Copies the layout's rows of src ([*, C], batch rows) into dst compacted (reading rows for
 * `reading`, chunk rows otherwise), or adds compacted rows back (scatter_add). */
void retro_gather_rows(float *dst, const float *src, const retro_layout *L, bool reading, int C);
void retro_scatter_add_rows(float *dst, const float *src, const retro_layout *L, bool reading, int C);

/* ---- CCA sub-layer (cca.c) ----
 * Per CCA layer, what its backward needs. */
typedef struct {
    float *q;  /* [NQ, C] rotated queries of the reading rows */
    float *kv; /* [R, 2C] keys (rotated) | values of the encoded neighbours */
    float *P;  /* [G][H][m][k*2m] probabilities */
    float *O;  /* [NQ, C] attention output */
} cca_acts;
/* Scratch shared by the layers: gathered rows [NQ, C] twice, dkv [R, 2C], dS like P. */
typedef struct {
    float *rows, *rows2, *dkv, *dS;
} cca_scratch;
/* Rotary tables for positions 0 .. 2m-1 of head size hs. */
typedef struct {
    float *cos, *sin;
} retro_rope;

/* y[N,C] = x + scatter(O Wo^T), O = GAttn(q = gather(xn) Wq^T, kv = E Wkv^T) over the
 * layout's chunks: each reading row attends to its chunk's k*2m neighbour tokens (PAD
 * masked by valid). xn = RMSNorm(x) is computed by the caller. */
void retro_cca_forward(float *y, cca_acts *a, cca_scratch *s, const float *x, const float *xn, const float *E,
                       const uint8_t *valid, const cca_w *w, const retro_layout *L, const retro_dims *d,
                       const retro_rope *rope);
/* dxn[N,C] = dL/dxn (overwritten); dE[R,D] += dL/dE; parameter gradients accumulate. */
void retro_cca_backward(float *dxn, float *dE, const float *dy, const cca_acts *a, cca_scratch *s, const float *xn,
                        const float *E, const uint8_t *valid, const cca_w *w, const cca_w *g, const retro_layout *L,
                        const retro_dims *d, const retro_rope *rope);
/* FLOPs of one CCA layer over G chunks read by NQ rows. */
uint64_t retro_cca_flops(const retro_dims *d, uint64_t G, uint64_t NQ);
/* The reading plan of a layout (queries compacted, keys k*2m per chunk). */
joule_gattn_plan retro_cca_plan(const retro_layout *L, const retro_dims *d, const uint8_t *valid);
/* One-query CCA of decoding: o[C] from q[C] (rotated for its position) over kv of one
 * chunk. P [H, k*2m] scratch. */
void retro_cca_one(float *o, float *P, const float *q, const float *kv, const uint8_t *valid, const retro_dims *d);

/* ---- neighbour encoder (encoder.c) ---- */
typedef struct {
    int cap_rows, cap_hrows; /* neighbour tokens R, chunk rows NH the encoder reads */
    bool train;              /* backward buffers allocated */
    int G, R, NH;            /* sizes of the last forward */
    const int32_t *tok;      /* [R] of the last forward (PAD mapped to 0) */
    const uint8_t *valid;    /* [R] */
    float *res;              /* [Le+1][R,D] residual entering each layer; [Le] before the final norm */
    float *n1, *rstd1, *qkv, *P1, *o1, *mid1;
    float *n2, *rstd2, *qx, *kvx, *P2, *o2, *mid2;
    float *n3, *rstd3, *h13, *g;
    float *out, *rstdf;      /* E [R,D] = RMSNorm(res[Le]) */
    int *qrow_s, *nq_s, *qrow_x, *nq_x, *krow_x, *nk_x;
    float *rope_cos, *rope_sin; /* [2m, hse/2] */
    float *dres, *dn, *dqkv, *dq, *dkvx, *dh13, *dg, *dS;
} enc_acts;

int retro_enc_alloc(enc_acts *a, const retro_dims *d, int rows, int hrows, bool train);
void retro_enc_free(enc_acts *a);
/* E = encoder(tok, valid | Hc) for G chunks of k neighbours (2m tokens each); chunk g's
 * neighbours cross-attend to its hlen[g] rows of Hc at hoff[g] (hpos their positions in
 * the chunk). Result in a->out. */
typedef struct {
    int G, NH;
    const int *hoff, *hlen, *hpos; /* [G], [G], [NH] */
} enc_chunks;
void retro_enc_forward(enc_acts *a, const retro_dims *d, const enc_w *w, const int32_t *tok, const uint8_t *valid,
                       const enc_chunks *ch, const float *Hc);
/* Backward of the last forward given dE [R,D]: parameter gradients accumulate into g, and
 * dHc [NH, C] = dL/dHc (overwritten). */
void retro_enc_backward(enc_acts *a, const retro_dims *d, const enc_w *w, const enc_w *g, const float *dE,
                        const enc_chunks *ch, const float *Hc, float *dHc);
/* FLOPs of encoding G chunks' neighbours against NH chunk rows in all. */
uint64_t retro_enc_flops(const retro_dims *d, uint64_t G, uint64_t NH);

/* The regular layout of B windows of T (joule_retro_regular_chunks): chunks, chunk rows and
 * reading rows per window. */
void retro_regular_counts(int m, int T, int *G, int *NH, int *NQ);

/* ---- one-token decoding (retro_decode.c): the op table's decoder entries ---- */
int retro_decoder_create(joule_decoder *d);
void retro_decoder_free(joule_decoder *d);
int retro_decode_step(joule_decoder *d, int l, const float *xn, float *x);
/* The op table's prefill_rows: CCA over the rows of an empty cache's batched prefill. */
int retro_prefill_rows(joule_decoder *d, int l, float *x, int n);
/* The op table's decoder_truncate: the chunk in view at pos restored from its slot. */
int retro_decoder_truncate(joule_decoder *d, int pos);
/* The op table's decode_flop_terms (retro_cost.c): what retro_decode_step counts. */
int retro_decode_flop_terms(const joule_config *c, int l, int pos, const char **names, uint64_t *flops, int max);

#endif
