/* joule/account.h — the accountant: parameters, FLOPs, memory, time, energy and CO2 of a
 * model configuration, at any scale (docs/ACCOUNTING.md states every formula and its source).
 *
 * Input: joule's config JSON (the form in checkpoints) plus optional accounting-only fields
 * for models joule does not build (any "vocab", "ffn" and "moe_ffn": "swiglu"|"gelu", "pos_emb":
 * "rope"|"learned"|"relative", "biases", "head_dim", "kv_heads", a "retrieval" block) and a
 * "published" block of the numbers a paper reports. A config joule can build is counted
 * exactly as joule computes it (joule_model_describe, joule_model_forward_flops and the
 * registered extensions' flop_terms); any other config by the analytic formulas.
 *
 * Ownership: plain value types; nothing to free.
 */
#ifndef JOULE_ACCOUNT_H
#define JOULE_ACCOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/energy.h"
#include "joule/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How self-attention's score and value products are counted per token at context T. */
typedef enum {
    JOULE_ATTN_JOULE = 0,  /* what joule's blocked causal kernel does (joule_attention_forward_flops) */
    JOULE_ATTN_KAPLAN = 1, /* Kaplan et al. 2020: 2 * n_ctx * d_attn per layer, no causal halving */
    JOULE_ATTN_PALM = 2    /* Chowdhery et al. 2022: 4 * T * d_attn per layer forward (12LHQT / 3) */
} joule_attn_convention;

int joule_attn_convention_parse(const char *s, joule_attn_convention *out);
const char *joule_attn_convention_name(joule_attn_convention c);

typedef struct {
    char name[64];
    joule_config cfg; /* sizes and layer kinds; cfg.vocab may be any size here */
    bool gelu;        /* FFN with two matrices (GPT-3); otherwise gated, three (SwiGLU/GEGLU) */
    bool expert_gelu; /* the same for MoE experts ("moe_ffn"; default: as "ffn") */
    char pos_emb[16]; /* "rope" (no parameters), "learned" (ctx x d), "relative" (Transformer-XL: d x d
                         and 2 d-vectors per layer) */
    bool biases;      /* linear biases and LayerNorm shifts (GPT-3 style) */
    int head_dim;     /* per head (PaLM: 256 with d_model/heads = 384) */
    int kv_heads;     /* key/value heads (1 = multi-query) */
    bool buildable;   /* joule builds this config: counts come from the model itself */
    /* retrieval (RETRO): database and index for the search-cost line */
    char index[16];     /* "flat", "ivf", "ivfpq", "hnsw"; "" = none */
    double db_tokens;   /* tokens in the database (chunks = db_tokens / chunk) */
    int retr_dim;       /* embedding size of the retriever (BERT: 768) */
    double retr_params; /* retriever encoder parameters (frozen BERT: 110e6); 0 = not counted */
    int nlist, nprobe, pq_bytes, hnsw_m, ef_search;
    /* published numbers (0 = not given) */
    double pub_params, pub_active_params, pub_tokens, pub_train_flops, pub_flops_per_token;
    char source[768];
} joule_acct_model;

/* Parses the accounting form; `what` names the file. Counted "buildable" when, with the
 * accounting-only fields at joule's own choices, joule_config_validate accepts it. */
int joule_acct_from_json(joule_acct_model *a, const char *json, const char *what);
/* A model joule builds (e.g. from a checkpoint's config). */
void joule_acct_from_config(joule_acct_model *a, const joule_config *c);

#define JOULE_ACCT_MAX_TERMS 24
typedef struct {
    char name[32];
    double flops; /* forward FLOPs per token at the stated context */
} joule_acct_term;

typedef struct {
    /* parameters */
    double params, params_embedding, params_non_embedding, params_active;
    double params_experts; /* MoE expert tensors, all experts */
    bool exact;            /* parameter and FLOP counts come from joule's own model */
    /* forward FLOPs per token at context `ctx` (the sequence length) */
    int ctx;
    joule_attn_convention conv;
    joule_acct_term terms[JOULE_ACCT_MAX_TERMS];
    int n_terms;
    double fwd_per_token;    /* sum of the terms */
    uint64_t fwd_sequence;   /* joule_model_forward_flops(cfg, 1, ctx) when exact; else 0 */
    double search_per_query; /* retrieval search FLOPs per retrieval (per chunk), not in the terms */
    double retrievals_per_token;
    /* training over `tokens` */
    double tokens;
    double train_6nd;    /* 6 x active params x tokens */
    double train_exact;  /* 3 x forward per token x tokens (+ retrieval search, stated apart) */
    double train_search; /* retrieval searches for the training tokens */
    /* memory, bytes */
    double mem_weights, mem_grads, mem_optimizer, mem_activations_per_token;
    int bytes_per_param;
} joule_acct_result;

typedef struct {
    int ctx;       /* 0 = the config's ctx */
    double tokens; /* training tokens; 0 = published tokens or none */
    joule_attn_convention conv;
    int bytes_per_param; /* 4 (fp32, default) or 2 */
} joule_acct_opts;

void joule_acct_opts_init(joule_acct_opts *o);
int joule_account(const joule_acct_model *a, const joule_acct_opts *o, joule_acct_result *r);

/* Inference of one query: `prompt` tokens processed as one sequence, then `generate`
 * tokens one at a time with a KV cache (each attends to every cached position). RETRO
 * (docs/ACCOUNTING.md §4): as joule decodes, each completed chunk's neighbours encoded once
 * where the chunk completes, CCA only at positions that see a chunk's neighbours (from m-1
 * on); for a config joule builds this equals the FLOPs joule counts. */
typedef struct {
    double prefill, decode, total;
    double prefill_steps;  /* the prompt fed one token at a time instead (joule_decoder_step,
                              logits at every position) */
    double encoder, cca;   /* RETRO: the neighbour encoder's and CCA's FLOPs within total */
    double search;         /* retrieval searches (RETRO: one per chunk completed in the query) */
    double kv_cache_bytes; /* at the end of the query */
} joule_acct_query;
int joule_account_query(const joule_acct_model *a, const joule_acct_opts *o, int prompt, int generate,
                        joule_acct_query *q);

/* Retrieval search FLOPs of one query vector against the database (docs/ACCOUNTING.md §5):
 * flat 2 d N; IVF 2 d nlist + nprobe (N / nlist) 2 d; IVFPQ 2 d nlist + 256 x 2 d (tables)
 * + nprobe (N / nlist) pq_bytes; HNSW 2 d M efSearch (1 + ln N / ln M). */
double joule_search_flops(const char *index, double n_db, int dim, int nlist, int nprobe, int pq_bytes, int hnsw_m,
                          int ef_search);

/* Time and energy of `flops` on `devices` devices of profile hw at utilisation `util`
 * (fraction of the peak at `precision`), drawing TDP while busy: CodeCarbon's approach for
 * a plan. */
typedef struct {
    double seconds, device_j, facility_kwh, kg_co2e;
    double peak_flops; /* per device at the precision */
} joule_acct_cost;
int joule_account_cost(double flops, const joule_hw_profile *hw, const char *precision, double util, int devices,
                       double pue, double grid_g_per_kwh, joule_acct_cost *out);

/* Whole-file helpers shared by the accountant's loaders (core/hardware.c). */
/* `name` with '/' or ending ".json" is a path; else <dir>/<name>.json in ':'-separated dirs. */
int joule_find_data_file(const char *name, const char *dirs, char *path, size_t n);

#ifdef __cplusplus
}
#endif
#endif
