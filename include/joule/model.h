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
#define JOULE_MAX_PARAMS 65536 /* tensors per model */
#define JOULE_FORMAT_VERSION "1"

/* What a layer holds besides self-attention. The dense core implements DENSE FFNs; the
 * MoE and RETRO modules provide the other kinds. */
typedef enum { JOULE_FFN_DENSE = 0, JOULE_FFN_MOE = 1 } joule_ffn_kind;
typedef struct {
    joule_ffn_kind ffn;
    bool cca; /* chunked cross-attention sub-layer between attention and FFN (RETRO) */
} joule_layer_kind;

/* Mixture-of-experts settings (moe/ implements them; docs/MODEL.md §7 states the maths). */
typedef struct {
    int n_experts;          /* E */
    int top_k;              /* 1 or 2 */
    int every;              /* an MoE FFN in every `every`-th block (GLaM: 2) */
    int d_ff_expert;        /* hidden size of each expert's SwiGLU */
    float capacity_train;   /* capacity factor while training; 0 = dropless */
    float capacity_eval;    /* capacity factor in evaluation/inference; 0 = dropless */
    bool renormalize;       /* gates of the chosen experts renormalised to sum to 1 */
    bool random_second;     /* GShard: keep the 2nd expert with probability 2*g2 */
    float aux_alpha;        /* load-balancing loss weight */
    float z_beta;           /* router z-loss weight */
} joule_moe_config;

/* Positions in RETRO's cross-attentions: RoPE at the distance of a position from its
 * neighbour's tokens (the default), or none (checkpoints written before joule had them). */
typedef enum { JOULE_RETRO_POS_ROPE = 0, JOULE_RETRO_POS_NONE = 1 } joule_retro_positions;

/* RETRO settings (retro/ implements them; docs/MODEL.md §7). */
typedef struct {
    int chunk;              /* m: tokens per chunk */
    int k;                  /* neighbours per chunk */
    int cca_start;          /* first CCA layer */
    int cca_every;          /* then every cca_every-th layer */
    int enc_layers, enc_d_model, enc_heads, enc_d_ff; /* neighbour encoder */
    joule_retro_positions positions;
    char db_id[72];         /* manifest checksum of the database trained with ("" = any) */
} joule_retro_config;

typedef struct {
    char arch[16];   /* "dense", "moe" or "retro" */
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
    joule_moe_config moe;     /* meaningful when some layer has ffn == MOE */
    joule_retro_config retro; /* meaningful when some layer has cca */
} joule_config;

/* Does any layer use the MoE FFN / chunked cross-attention? */
bool joule_config_has_moe(const joule_config *c);
bool joule_config_has_cca(const joule_config *c);

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
    float init_mult; /* matrices: N(0, init_std * init_mult); 0 gives zeros. Vectors: ones. */
    bool frozen;     /* training leaves it bit-identical (RETRO-fitting's --freeze-base) */
    int owner;       /* expert parallelism: the one rank that holds and trains it (its
                      * gradient is not all-reduced; the other ranks' copies are stale
                      * until joule_train syncs them); -1 (the default): every rank */
} joule_param_info;

/* Per-layer views into the parameter (or gradient) arena. wq|wk|wv are adjacent, so
 * wqkv is one [3C, C] matrix; w1|w3 likewise form w13 [2F, C]. */
typedef struct {
    float *attn_norm; /* [C] */
    float *wqkv;      /* [3C, C] */
    float *wo;        /* [C, C] */
    float *ffn_norm;  /* [C] */
    float *w13;       /* [2F, C]; NULL in MoE layers */
    float *w2;        /* [C, F]; NULL in MoE layers */
} joule_layer_weights;

typedef struct {
    float *tok_emb;  /* [V, C] */
    joule_layer_weights layers[JOULE_MAX_LAYERS];
    float *norm;     /* [C] */
    float *lm_head;  /* [V, C]; == tok_emb when tied */
} joule_weights;

typedef struct joule_acts joule_acts; /* activation arena, private to core/model.c */
/* Defined, with each field marked public / read-only / private, in joule/ext.h (included at
 * the end of this header): the fields are the extensions' contract as much as the callers'. */
typedef struct joule_model joule_model;
typedef struct joule_decoder joule_decoder;

/* Builds the parameter table and arena (zeroed). Caller frees with joule_model_free. */
int joule_model_create(joule_model **out, const joule_config *cfg);
void joule_model_free(joule_model *m);
/* The parameter table only (names, shapes, counts): no arena, so any size works (the
 * accountant describes GPT-3 this way). params is NULL; free with joule_model_free. */
int joule_model_describe(joule_model **out, const joule_config *cfg);
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
/* The final-norm output of the last forward ([B*T, C], the lm_head's input; same validity).
 * RETRO's model embedder averages it over a chunk. */
const float *joule_model_hidden(const joule_model *m);
/* Backward of the last forward (which must have had targets). Gradients ACCUMULATE into
 * m->grads scaled by grad_scale (1/accumulation steps): zero them with
 * joule_model_zero_grad at the start of a step. */
int joule_model_backward(joule_model *m, float grad_scale);
/* Weighted auxiliary losses of the last forward (MoE load balancing + z-loss; 0 for dense).
 * Training minimises loss + aux; backward includes the aux gradients. */
double joule_model_aux_loss(const joule_model *m);
/* Training behaviour (MoE capacity_train, random choices) in forward; default false. */
void joule_model_set_training(joule_model *m, bool train);
void joule_model_zero_grad(joule_model *m);

/* Matmul FLOPs of one forward pass over B sequences of length T, counted exactly as the
 * implementation performs them (causal attention skips the blocks above the diagonal:
 * joule_attention_forward_flops). Backward costs twice this. */
uint64_t joule_model_forward_flops(const joule_config *c, int B, int T);

/* ---- inference with a KV cache ---- */
/* Caller frees with joule_decoder_free. */
int joule_decoder_create(joule_decoder **out, const joule_model *m);
void joule_decoder_free(joule_decoder *d);
void joule_decoder_reset(joule_decoder *d);
/* Drops the tokens after the first pos (0 <= pos <= d->pos): the next step appends at pos,
 * overwriting what the cache held there, and decodes exactly (bit for bit) as it did the
 * first time. Lets a caller decode several continuations of one prompt after a single
 * prefill. Models with chunked cross-attention (RETRO) get back the chunk in view at pos and
 * drop the neighbours handed for chunks ending at or after pos; truncating one into its
 * prefill (0 < pos < the prefill's rows) is refused (JOULE_ERR_ARG). */
int joule_decoder_truncate(joule_decoder *d, int pos);
/* Appends one token at position d->pos and returns its next-token logits [V] (owned by the
 * decoder, valid until the next call). Fails when the cache is full (pos == ctx). */
int joule_decoder_step(joule_decoder *d, int32_t token, const float **logits);
/* Appends n tokens like n joule_decoder_step calls (the same cache and logits, to float
 * rounding) but as one batched pass over an empty cache: matrix products over the n rows,
 * the blocked causal attention, MoE FFNs through the extension's rows op (decode_rows),
 * chunked cross-attention through its rows op (neighbours of the prompt's chunks handed
 * first), logits for the last token only. A non-empty cache goes token by token. Returns
 * the last token's next-token logits. */
int joule_decoder_prefill(joule_decoder *d, const int32_t *tokens, int n, const float **logits);

/* ---- batched decoding: one token for each of n sequences ----
 * Each sequence keeps its own joule_decoder (KV cache, position); a joule_decoder_batch
 * holds the scratch of a step over up to max_n of them, allocated once at creation.
 * Ownership: the caller frees the batch with joule_decoder_batch_free; it never owns the
 * decoders passed to it. */
typedef struct joule_decoder_batch joule_decoder_batch;
int joule_decoder_batch_create(joule_decoder_batch **out, const joule_model *m, int max_n);
void joule_decoder_batch_free(joule_decoder_batch *b);
/* Appends tokens[i] to ds[i] at its own position ds[i]->pos, for i < n (n <= max_n; n
 * distinct decoders of the batch's model, positions may differ), with the same caches and
 * logits as n joule_decoder_step calls (to float rounding) but each weight matrix applied
 * to the n rows at once: attention per sequence over its own cache, MoE FFNs through the
 * rows op over the n rows, the logits [n, V] in the same product. When max_n >= 2 (and
 * the model is fp32 without CCA) the batch packs a second copy of the dense weights at
 * creation and every step, of any n, multiplies through it by a kernel whose every output
 * is one multiply-add chain over the input in order, so a row's logits do not depend on n
 * or on the other rows (core/rows_kernel.h); a batch of max_n 1 runs gemvs, the
 * arithmetic of joule_decoder_step. The batch reads the model's weights when it is created: it must be
 * recreated after the weights change. MoE experts run row by row below 4 rows per thread,
 * else through sgemm (OpenBLAS packs the weights at every call, which costs more than it
 * saves for so few rows; same FLOPs). The logits
 * are owned by the batch, valid until its next step (ds[i]->logits are not updated).
 * Models with chunked cross-attention (RETRO) step decoder by decoder (their CCA op is
 * one-token and per sequence) and copy each row into the batch's logits. Checks every
 * decoder and token before touching any; a later failure (out of memory) advances no
 * position, except in the decoder-by-decoder path. */
int joule_decoder_step_batch(joule_decoder_batch *b, joule_decoder *const *ds, int n, const int32_t *tokens,
                             const float **logits);
/* joule_decoder_prefill of d (a decoder of the batch's model) through the batch's prefill
 * scratch (ctx rows, allocated with the batch) instead of d's own: the decoders a batch
 * steps prefill one at a time, so they share one scratch and none allocates (or first
 * touches) its own inside a serving step. The same arithmetic as joule_decoder_prefill. */
int joule_decoder_batch_prefill(joule_decoder_batch *b, joule_decoder *d, const int32_t *tokens, int n,
                                const float **logits);

#ifdef __cplusplus
}
#endif

#include "joule/ext.h" /* struct joule_model, struct joule_decoder, the extension table */
#endif
