/* joule/ext.h — the contract between the core and its extensions (moe/, retro/).
 *
 * The core never includes moe/ or retro/. A layer kind other than the dense FFN is an
 * extension: a table of functions (joule_ext_ops) the module registers once
 * (joule_moe_register(), joule_retro_register()) and core/model.c, core/decode.c and the
 * accountant call at fixed points:
 *   JOULE_EXT_MOE  replaces a layer's FFN:   y += FFN(xn), xn = RMSNorm_ffn(x) (norm stays in core)
 *   JOULE_EXT_CCA  a residual sub-layer between attention and FFN: y = x + CCA(x, ...)
 * Both are op pairs with explicit buffers; an extension keeps its activations in its own
 * state (m->ext[kind], d->ext[kind]), allocated by its alloc / decoder_create hooks, never
 * inside forward, backward or a decode step.
 *
 * Hooks marked "required" are called unchecked wherever the config uses the kind; an
 * "optional" hook may be NULL and the comment says what the core does then.
 *
 * Fields of joule_model and joule_decoder are marked as libuv marks its handles':
 *   public      anyone (caller, extension) may read and write
 *   read-only   set by the core; read, never write (the pointee's floats may be written
 *               where the field's comment says)
 *   extension   owned by the extension of that kind: the core only hands it over
 *   private     core only; may change without notice
 *
 * The config rules (joule_moe_config, joule_retro_config: their JSON keys and validation)
 * stay in core/config.c rather than behind hooks here: a config is data the core owns and
 * reads without building a model (checkpoint headers, `joule account --config`, the
 * accountant describing GLaM), so it must parse and validate the same, with the same
 * messages, whether or not a module is registered: a registry-dependent parser would accept
 * a malformed "moe" block in a program that never called joule_moe_register(). Both blocks
 * are plain fields of joule_config, so the rules are a few lines of data checks each, not
 * behaviour; a hook would add an indirection and a registration order for no gain.
 *
 * model.h includes this header for the struct definitions; include it directly to write an
 * extension. Not thread-safe: register before creating models.
 */
#ifndef JOULE_EXT_H
#define JOULE_EXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { JOULE_EXT_MOE = 0, JOULE_EXT_CCA = 1, JOULE_EXT_COUNT = 2 } joule_ext_kind;

typedef struct {
    /* required: the key of this kind's statistics in the training log */
    const char *name;
    /* required: appends layer l's tensors with joule_model_add_tensor (called while the
     * layout is built; the first tensor's index is m->ext_first[l][kind], the count
     * m->ext_count). It may set the flags (decay, embedding, init_mult) of the tensors it
     * adds, and may stop at the first that fails (-1: joule_model_create then fails). */
    void (*layout)(joule_model *m, int l);
    /* required: activation state for batches up to max_batch (training); stores it in
     * m->ext[kind]. */
    int (*alloc)(joule_model *m, int max_batch);
    /* optional: frees m->ext[kind] (called when it is non-NULL). NULL: nothing to free. */
    void (*free)(joule_model *m);
    /* required. MOE: y[N,C] += FFN_l(xn[N,C]).  CCA: y[N,C] = x[N,C] + CCA_l(x).  `train`
     * selects training behaviour (capacity factor, random choices). */
    int (*forward)(joule_model *m, int l, const float *x, float *y, int B, int T, bool train);
    /* required. MOE: dx[N,C] = dL/dxn given dy (overwrites).  CCA: dres holds dL/dy on
     * entry and dL/dx on return. Parameter gradients accumulate into m->grads, auxiliary
     * losses' gradients scaled by grad_scale. */
    int (*backward)(joule_model *m, int l, const float *dy, float *dx, int B, int T, float grad_scale);
    /* required: analytic matmul FLOPs of forward for layer l over B x T tokens (no drops). */
    uint64_t (*forward_flops)(const joule_config *c, int l, int B, int T);
    /* required: the same FLOPs by named term (e.g. "router", "experts"; "cca", "encoder"):
     * fills up to max (name, flops) pairs and returns how many; the terms sum to
     * forward_flops. The accountant's query cost and `joule info` call it. */
    int (*flop_terms)(const joule_config *c, int l, int B, int T, const char **names, uint64_t *flops, int max);
    /* optional: adds this kind's statistics of the last forward (e.g. routing) to a cJSON
     * object (void* so this header needs no cJSON). NULL: the log has no such key. */
    void (*stats_json)(const joule_model *m, void *cjson_object);
    /* optional: sum of auxiliary losses (already weighted) of the last forward. NULL: 0. */
    double (*aux_loss)(const joule_model *m);
    /* optional: state per decoder in d->ext[kind]. NULL: the kind decodes without state. */
    int (*decoder_create)(joule_decoder *d);
    /* optional: frees d->ext[kind] (called when it is non-NULL). */
    void (*decoder_free)(joule_decoder *d);
    /* required: one-token inference; x[C] is the residual stream at layer l (MOE: xn is
     * its normed input and x receives += FFN(xn); CCA: xn is NULL). */
    int (*decode_step)(joule_decoder *d, int l, const float *xn, float *x);
    /* optional, MOE: n rows at once, x[n,C] += FFN_l(xn[n,C]), each row as decode_step
     * would (to float rounding); the rows may be one prompt's or one token of each of n
     * sequences. NULL: the core calls decode_step row by row. */
    int (*decode_rows)(joule_decoder *d, int l, const float *xn, float *x, int n);
    /* optional: FLOPs decode_step counts in layer l at position pos, by named term as
     * flop_terms (the accountant's query cost). NULL: a token costs flop_terms(c, l, 1, 1)
     * at any position. CCA: "encoder" where pos completes a chunk, "cca" where a chunk's
     * neighbours are in view, every completed chunk's neighbours handed. */
    int (*decode_flop_terms)(const joule_config *c, int l, int pos, const char **names, uint64_t *flops, int max);
    /* optional, CCA: batched prefill; x[n, C] holds the residual rows of positions 0 .. n-1
     * of an empty cache at layer l; changes them as n decode_step calls would. NULL: a
     * model with this kind is prefilled token by token. */
    int (*prefill_rows)(joule_decoder *d, int l, float *x, int n);
    /* optional: joule_decoder_truncate to pos (0 <= pos <= d->pos, checked; d->pos not yet
     * changed): restores the kind's state at pos, or refuses (JOULE_ERR_ARG). NULL: the kind
     * keeps nothing that depends on the positions decoded. CCA: the chunk in view at pos,
     * exactly as it was; refused inside a prefill (0 < pos < its rows). */
    int (*decoder_truncate)(joule_decoder *d, int pos);
    /* optional, MOE: expert parallelism over `ranks` ranks of the MPI job (joule/dist.h),
     * this one `rank`: sets the owner of each tensor held by one rank and makes training
     * forwards and backwards exchange rows with the other ranks (every rank must then run
     * them in step); ranks 1 turns it off. JOULE_ERR_ARG when the model cannot be split
     * so. NULL: the kind has no expert parallelism. */
    int (*expert_parallel)(joule_model *m, int ranks, int rank);
} joule_ext_ops;

/* Registers (or replaces) the implementation of an extension kind. Not thread-safe:
 * call before creating models. */
void joule_ext_register(joule_ext_kind kind, const joule_ext_ops *ops);
/* NULL when the kind has not been registered. */
const joule_ext_ops *joule_ext_get(joule_ext_kind kind);

struct joule_model {
    /* read-only: fixed by joule_model_create */
    joule_config cfg;
    size_t n_params;                 /* floats in the arena */
    int n_tensors;
    joule_param_info *tensors;       /* n_tensors of them; layout hooks set the flags of the
                                      * tensors they add, RETRO-fitting sets frozen */
    float *params;                   /* the arena; its floats are written by loaders and the
                                      * optimizer, the pointer never */
    float *grads;                    /* mirrors params; NULL until joule_model_alloc_train;
                                      * backward hooks accumulate into it */
    joule_weights w;                 /* views into params */
    joule_weights g;                 /* views into grads */
    const joule_ext_ops *ext_ops[JOULE_EXT_COUNT]; /* non-NULL for kinds the config uses */
    int ext_first[JOULE_MAX_LAYERS][JOULE_EXT_COUNT]; /* first tensor index per layer and kind (-1 if absent) */
    int ext_count[JOULE_MAX_LAYERS][JOULE_EXT_COUNT]; /* tensors per layer and kind (0 if absent) */
    struct joule_quant *quant;       /* bf16/int8 weights of a quantised checkpoint (joule/quant.h),
                                      * owned by the model; NULL for fp32 */
    /* read-only: set by joule_model_alloc_train / joule_model_set_training */
    int max_batch;
    bool training;
    /* public */
    uint64_t noise_seed;             /* random choices of a training forward (MoE random second
                                      * expert); core/train.c sets it per (seed, step, micro) */
    /* extension */
    void *ext[JOULE_EXT_COUNT];      /* each kind's activation state (alloc / free hooks) */
    /* private */
    int cap_tensors;
    bool layout_failed;              /* joule_model_add_tensor ran out of room */
    float *rope_cos, *rope_sin;      /* [ctx, hs/2] */
    joule_acts *acts;                /* NULL until joule_model_alloc_train */
};

struct joule_decoder {
    /* read-only */
    const joule_model *m;
    int pos;            /* tokens in the cache */
    float *k_cache;     /* [L, ctx, C] */
    float *v_cache;     /* [L, ctx, C] */
    /* extension */
    void *ext[JOULE_EXT_COUNT]; /* each kind's state (decoder_create / decoder_free hooks) */
    /* private */
    float *x, *xn, *qkv, *att_out, *h13, *g, *scores, *logits; /* one-token scratch */
    float *pf; /* joule_decoder_prefill's scratch for ctx rows, allocated at its first call */
};

/* Parameter / gradient pointer of tensor index i (grads NULL before alloc_train). */
static inline float *joule_model_param(const joule_model *m, int i) { return m->params + m->tensors[i].offset; }
static inline float *joule_model_grad(const joule_model *m, int i) {
    return m->grads ? m->grads + m->tensors[i].offset : NULL;
}
/* For layout hooks: appends a tensor (d1 = 0 for a vector). Returns its index, or -1 when
 * out of memory or past JOULE_MAX_PARAMS (joule_model_create then fails). */
int joule_model_add_tensor(joule_model *m, const char *name, int64_t d0, int64_t d1);

#ifdef __cplusplus
}
#endif
#endif
