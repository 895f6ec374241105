/* joule/model.h — the decoder-only Transformer shared by every architecture joule builds.
 *
 * Layout (docs/MODEL.md states it exactly):
 *   x = tok_emb[tokens]
 *   for each layer l:  x += Wo Attn(RoPE(Wq n), RoPE(Wk n), Wv n),  n = RMSNorm(x)
 *                      [x += CCA(RMSNorm(x), neighbours)      when kind.cca — RETRO]
 *                      x += FFN_l(RMSNorm(x))                 FFN = SwiGLU or MoE by kind
 *   logits = lm_head(RMSNorm(x))   (lm_head = tok_emb when tied)
 *
 * Memory: one arena of parameters (gradients and AdamW moments mirror it exactly, so the
 * optimizer is one flat loop for every kind), one arena of activations sized at build
 * time for a maximum batch; nothing is allocated inside forward or backward.
 * Ownership: joule_model_create returns a model the caller frees with joule_model_free.
 */
#ifndef JOULE_MODEL_H
#define JOULE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOULE_MAX_LAYERS 256
#define JOULE_MAX_PARAMS 4096
#define JOULE_FORMAT_VERSION "1"

/* What a layer holds besides self-attention. The dense core implements DENSE FFNs; the
 * MoE and RETRO modules provide the other kinds. */
typedef enum { JOULE_FFN_DENSE = 0, JOULE_FFN_MOE = 1 } joule_ffn_kind;
typedef struct {
    joule_ffn_kind ffn;
    bool cca; /* chunked cross-attention sub-layer between attention and FFN (RETRO) */
} joule_layer_kind;

typedef struct {
    char arch[16];   /* "dense" (later "moe", "retro") */
    int n_layers;
    int d_model;
    int n_heads;
    int d_ff;
    int ctx;         /* maximum sequence length */
    int vocab;       /* 256: bytes */
    bool tied;       /* lm_head shares tok_emb */
    float rope_theta;
    float norm_eps;
    float init_std;
    joule_layer_kind kinds[JOULE_MAX_LAYERS];
} joule_config;

/* A dense config with the defaults of docs/MODEL.md for the given sizes. */
joule_config joule_config_default(int n_layers, int d_model, int n_heads, int d_ff, int ctx);
/* Checks sizes and their relations; message names `what` (e.g. a file) on failure. */
int joule_config_validate(const joule_config *c, const char *what);
/* JSON (compact, the form stored in checkpoints). Caller frees the string with free(). */
char *joule_config_to_json(const joule_config *c);
int joule_config_from_json(joule_config *c, const char *json, const char *what);

/* One named tensor of the parameter arena. */
typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats from the arena start */
    size_t numel;
    bool decay;    /* AdamW weight decay applies (matrices only) */
    bool embedding;
} joule_param_info;

/* Per-layer views into the parameter (or gradient) arena. wq|wk|wv are adjacent, so
 * wqkv is one [3C, C] matrix; w1|w3 likewise form w13 [2F, C]. */
typedef struct {
    float *attn_norm; /* [C] */
    float *wqkv;      /* [3C, C] */
    float *wo;        /* [C, C] */
    float *ffn_norm;  /* [C] */
    float *w13;       /* [2F, C] */
    float *w2;        /* [C, F] */
} joule_layer_weights;

typedef struct {
    float *tok_emb;  /* [V, C] */
    joule_layer_weights layers[JOULE_MAX_LAYERS];
    float *norm;     /* [C] */
    float *lm_head;  /* [V, C]; == tok_emb when tied */
} joule_weights;

typedef struct joule_acts joule_acts; /* activation arena, private to core/model.c */

typedef struct {
    joule_config cfg;
    size_t n_params;                 /* floats in the arena */
    int n_tensors;
    joule_param_info tensors[JOULE_MAX_PARAMS];
    float *params;                   /* owned */
    float *grads;                    /* owned; NULL until joule_model_alloc_train */
    joule_weights w;                 /* views into params */
    joule_weights g;                 /* views into grads */
    float *rope_cos, *rope_sin;      /* [ctx, hs/2] */
    joule_acts *acts;                /* NULL until joule_model_alloc_train */
    int max_batch;
} joule_model;

/* Builds the parameter table and arena (zeroed). Caller frees with joule_model_free. */
int joule_model_create(joule_model **out, const joule_config *cfg);
void joule_model_free(joule_model *m);
/* N(0, init_std) everywhere matrices are, output projections (wo, w2) scaled by
 * 1/sqrt(2L), norm gains 1. Deterministic in seed. */
void joule_model_init(joule_model *m, uint64_t seed);
/* Allocates gradients and activations for batches of up to max_batch sequences of up to
 * ctx tokens. */
int joule_model_alloc_train(joule_model *m, int max_batch);
const joule_param_info *joule_model_find(const joule_model *m, const char *name);

/* Parameter counts: total, embedding (tok_emb, plus lm_head when untied), non-embedding. */
typedef struct {
    uint64_t total, embedding, non_embedding;
} joule_param_counts;
joule_param_counts joule_model_param_counts(const joule_model *m);

/* Forward over B sequences of T tokens (B <= max_batch, T <= ctx). When targets != NULL,
 * returns the mean cross-entropy over valid targets in *loss. Logits of the last forward
 * are available from joule_model_logits ([B*T, V], valid until the next forward or
 * backward). */
int joule_model_forward(joule_model *m, const int32_t *inputs, const int32_t *targets, int B,
                        int T, double *loss);
const float *joule_model_logits(const joule_model *m);
/* Backward of the last forward (which must have had targets). Gradients ACCUMULATE into
 * m->grads scaled by grad_scale (1/accumulation steps): zero them with
 * joule_model_zero_grad at the start of a step. */
int joule_model_backward(joule_model *m, float grad_scale);
void joule_model_zero_grad(joule_model *m);

/* Matmul FLOPs of one forward pass over B sequences of length T, counted exactly as the
 * implementation performs them (causal attention skips the blocks above the diagonal:
 * joule_attention_forward_flops). Backward costs twice this. */
uint64_t joule_model_forward_flops(const joule_config *c, int B, int T);

/* ---- inference with a KV cache ---- */
typedef struct {
    const joule_model *m;
    int pos;            /* tokens in the cache */
    float *k_cache;     /* [L, ctx, C] */
    float *v_cache;     /* [L, ctx, C] */
    float *x, *xn, *qkv, *att_out, *h13, *g, *scores, *logits; /* one-token scratch */
} joule_decoder;

/* Caller frees with joule_decoder_free. */
int joule_decoder_create(joule_decoder **out, const joule_model *m);
void joule_decoder_free(joule_decoder *d);
void joule_decoder_reset(joule_decoder *d);
/* Appends one token at position d->pos and returns its next-token logits [V] (owned by the
 * decoder, valid until the next call). Fails when the cache is full (pos == ctx). */
int joule_decoder_step(joule_decoder *d, int32_t token, const float **logits);

#ifdef __cplusplus
}
#endif
#endif
