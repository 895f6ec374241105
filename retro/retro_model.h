/* retro_model.h — private to retro/ (model half): sizes, weight views, the CCA op pair and
 * the neighbour encoder's op pair with its activation buffers. docs/MODEL.md §7. */
#ifndef JOULE_RETRO_MODEL_H
#define JOULE_RETRO_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "joule/model.h"
#include "joule/retro.h"

typedef struct {
    int C, H, hs;           /* decoder width, heads, head size */
    int D, He, hse, Fe, Le; /* encoder width, heads, head size, FFN size, layers */
    int m, k, V, ctx;
    int l0, l_last, ncca;   /* first and last CCA layer, how many */
    int ord[JOULE_MAX_LAYERS]; /* CCA ordinal of layer l; -1 when l has none */
    float eps, theta;
} retro_dims;

void retro_dims_from_config(retro_dims *d, const joule_config *c);

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

/* ---- CCA sub-layer (cca.c) ----
 * y[N,C] = x + O Wo^T, O = GAttn(q = xn Wq^T, kv = E Wkv^T) over the plan's groups (rows
 * outside every group get O = 0). xn = RMSNorm(x) is computed by the caller. */
void retro_cca_forward(float *y, float *O, float *P, float *q, float *kv, const float *x, const float *xn,
                       const float *E, const cca_w *w, const joule_gattn_plan *p, int N, int R, int C, int D);
/* dxn[N,C] = dL/dxn (overwritten); dE[R,D] += dL/dE; parameter gradients accumulate. */
void retro_cca_backward(float *dxn, float *dE, float *dO, float *dq, float *dkv, float *dS, const float *dy,
                        const float *O, const float *P, const float *q, const float *kv, const float *xn,
                        const float *E, const cca_w *w, const cca_w *g, const joule_gattn_plan *p, int N, int R,
                        int C, int D);
uint64_t retro_cca_flops(const retro_dims *d, int B, int T);
/* The decoder groups for B x T: group (b, u) = queries [b*T + (u+1)m - 1, ...) over the
 * k*2m neighbour tokens of chunk u. */
void retro_cca_plan(joule_gattn_plan *p, int *qrow, int *nq, int *krow, const uint8_t *valid, const retro_dims *d,
                    int B, int T);

/* ---- neighbour encoder (encoder.c) ---- */
typedef struct {
    int cap_rows, cap_hrows; /* neighbour tokens R, decoder rows the encoder reads */
    bool train;              /* backward buffers allocated */
    int B, nch, T, R;        /* sizes of the last forward */
    const int32_t *tok;      /* [R] of the last forward (PAD mapped to 0) */
    const uint8_t *valid;    /* [R] */
    float *res;              /* [Le+1][R,D] residual entering each layer; [Le] before the final norm */
    float *n1, *rstd1, *qkv, *P1, *o1, *mid1;
    float *n2, *rstd2, *qx, *kvx, *P2, *o2, *mid2;
    float *n3, *rstd3, *h13, *g;
    float *out, *rstdf;      /* E [R,D] = RMSNorm(res[Le]) */
    int *qrow_s, *nq_s, *qrow_x, *nq_x, *krow_x;
    float *rope_cos, *rope_sin; /* [2m, hse/2] */
    float *dres, *dn, *dqkv, *dq, *dkvx, *dh13, *dg, *dS;
} enc_acts;

int retro_enc_alloc(enc_acts *a, const retro_dims *d, int rows, int hrows, bool train);
void retro_enc_free(enc_acts *a);
/* E = encoder(tok, valid | H) for B sequences of T decoder rows (H [B*T, C], nch chunks
 * each, k neighbours of 2m tokens per chunk). Result in a->out. */
void retro_enc_forward(enc_acts *a, const retro_dims *d, const enc_w *w, const int32_t *tok, const uint8_t *valid,
                       int B, int nch, int T, const float *H);
/* Backward of the last forward given dE [R,D]: parameter gradients accumulate into g, and
 * dH [B*T, C] += dL/dH. */
void retro_enc_backward(enc_acts *a, const retro_dims *d, const enc_w *w, const enc_w *g, const float *dE,
                        const float *H, float *dH);
uint64_t retro_enc_flops(const retro_dims *d, int B, int T);

/* ---- one-token decoding (retro_decode.c): the op table's decoder entries ---- */
int retro_decoder_create(joule_decoder *d);
void retro_decoder_free(joule_decoder *d);
int retro_decode_step(joule_decoder *d, int l, const float *xn, float *x);
/* The op table's prefill_rows: CCA over the rows of an empty cache's batched prefill. */
int retro_prefill_rows(joule_decoder *d, int l, float *x, int n);
/* The op table's decode_flop_terms (retro_cost.c): what retro_decode_step counts. */
int retro_decode_flop_terms(const joule_config *c, int l, int pos, const char **names, uint64_t *flops, int max);

#endif
