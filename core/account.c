/* The accountant: parameters, FLOPs and memory of a configuration. Formulas and sources are
 * in docs/ACCOUNTING.md; a config joule builds is counted from the model's own tables. */
#include "joule/account.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/ext.h"
#include "joule/ops.h"

static const char *const CONV_NAMES[] = {"joule", "kaplan", "palm"};

int joule_attn_convention_parse(const char *s, joule_attn_convention *out) {
    for (int i = 0; i < 3; i++)
        if (strcmp(s, CONV_NAMES[i]) == 0) {
            *out = (joule_attn_convention)i;
            return JOULE_OK;
        }
    return joule_fail(JOULE_ERR_ARG, "attention convention '%s' is not one of joule, kaplan, palm", s);
}

const char *joule_attn_convention_name(joule_attn_convention c) { return (unsigned)c < 3 ? CONV_NAMES[c] : "?"; }

void joule_acct_opts_init(joule_acct_opts *o) {
    memset(o, 0, sizeof *o);
    o->conv = JOULE_ATTN_JOULE;
    o->bytes_per_param = 4;
}

void joule_acct_from_config(joule_acct_model *a, const joule_config *c) {
    memset(a, 0, sizeof *a);
    a->cfg = *c;
    snprintf(a->name, sizeof a->name, "%s", c->arch);
    strcpy(a->pos_emb, "rope");
    a->head_dim = c->d_model / c->n_heads;
    a->kv_heads = c->n_heads;
    a->buildable = joule_config_validate(c, "config") == JOULE_OK;
}

/* ---------------------------------------------------------------- parsing */

static int opt_num(const cJSON *o, const char *key, double *out, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return JOULE_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || !isfinite(v->valuedouble))
        return joule_fail(JOULE_ERR_FORMAT, "%s: field '%s' must be a number >= 0", what, key);
    *out = v->valuedouble;
    return JOULE_OK;
}

static int opt_int(const cJSON *o, const char *key, int *out, int lo, int hi, const char *what) {
    double d = *out;
    int rc = opt_num(o, key, &d, what);
    if (rc) return rc;
    if (d != floor(d) || d < lo || d > hi)
        return joule_fail(JOULE_ERR_FORMAT, "%s: field '%s' must be a whole number in [%d, %d]", what, key, lo, hi);
    *out = (int)d;
    return JOULE_OK;
}

static int opt_str(const cJSON *o, const char *key, char *out, size_t n, const char *const *allowed, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return JOULE_OK;
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n)
        return joule_fail(JOULE_ERR_FORMAT, "%s: field '%s' must be a string", what, key);
    for (int i = 0; allowed && allowed[i]; i++)
        if (strcmp(v->valuestring, allowed[i]) == 0) {
            strcpy(out, v->valuestring);
            return JOULE_OK;
        }
    if (!allowed) { /* free text from the file, shown as it is printed: escaped */
        joule_escape(out, n, v->valuestring);
        return JOULE_OK;
    }
    char list[128] = "";
    for (int i = 0; allowed[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", allowed[i]);
    return joule_fail(JOULE_ERR_FORMAT, "%s: field '%s' is '%s', not one of %s", what, key, joule_q(v->valuestring),
                      list);
}

/* Layer kinds from the moe/retro blocks when the config lists no "layers": an MoE FFN in
 * every `every`-th block (the last of each group, GLaM's interleaving), CCA from cca_start
 * every cca_every layers (RETRO). */
static int default_kinds(joule_config *c, const cJSON *o, const char *what) {
    if (cJSON_GetObjectItemCaseSensitive(o, "layers")) return JOULE_OK;
    if (cJSON_GetObjectItemCaseSensitive(o, "moe")) {
        if (c->moe.every < 1) return joule_fail(JOULE_ERR_FORMAT, "%s: moe.every must be >= 1", what);
        for (int l = 0; l < c->n_layers; l++)
            if (l % c->moe.every == c->moe.every - 1) c->kinds[l].ffn = JOULE_FFN_MOE;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, "retro")) {
        if (c->retro.cca_every < 1 || c->retro.cca_start < 0)
            return joule_fail(JOULE_ERR_FORMAT, "%s: retro.cca_start must be >= 0 and cca_every >= 1", what);
        for (int l = c->retro.cca_start; l < c->n_layers; l += c->retro.cca_every)
            c->kinds[l].cca = true;
    }
    return JOULE_OK;
}

static int check_blocks(const joule_acct_model *a, const char *what) {
    const joule_config *c = &a->cfg;
    if (joule_config_has_moe(c)) {
        const joule_moe_config *e = &c->moe;
        if (e->n_experts < 1 || e->top_k < 1 || e->top_k > e->n_experts || e->d_ff_expert < 1)
            return joule_fail(JOULE_ERR_FORMAT, "%s: moe needs experts >= 1, 1 <= top_k <= experts, d_ff_expert >= 1",
                              what);
    }
    if (joule_config_has_cca(c)) {
        const joule_retro_config *r = &c->retro;
        if (r->chunk < 1 || r->k < 0 || r->enc_layers < 1 || r->enc_d_model < 1 || r->enc_heads < 1 || r->enc_d_ff < 1)
            return joule_fail(JOULE_ERR_FORMAT,
                              "%s: retro needs chunk >= 1, k >= 0 and positive encoder sizes (enc_layers, enc_d_model, "
                              "enc_heads, enc_d_ff)",
                              what);
    }
    return JOULE_OK;
}

static int parse_published(joule_acct_model *a, const cJSON *o, const char *what) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "published");
    if (!p) return JOULE_OK;
    if (!cJSON_IsObject(p)) return joule_fail(JOULE_ERR_FORMAT, "%s: 'published' must be an object", what);
    int rc;
    if ((rc = opt_num(p, "params", &a->pub_params, what)) ||
        (rc = opt_num(p, "active_params", &a->pub_active_params, what)) ||
        (rc = opt_num(p, "tokens", &a->pub_tokens, what)) ||
        (rc = opt_num(p, "train_flops", &a->pub_train_flops, what)) ||
        (rc = opt_num(p, "flops_per_token", &a->pub_flops_per_token, what)) ||
        (rc = opt_str(p, "source", a->source, sizeof a->source, NULL, what)))
        return rc;
    return JOULE_OK;
}

static int parse_retrieval(joule_acct_model *a, const cJSON *o, const char *what) {
    static const char *const INDEXES[] = {"flat", "ivf", "ivfpq", "hnsw", NULL};
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "retrieval");
    a->retr_dim = 768;
    a->nlist = 4096;
    a->nprobe = 16;
    a->pq_bytes = 64;
    a->hnsw_m = 32;
    a->ef_search = 64;
    if (!r) return JOULE_OK;
    if (!cJSON_IsObject(r)) return joule_fail(JOULE_ERR_FORMAT, "%s: 'retrieval' must be an object", what);
    int rc;
    if ((rc = opt_str(r, "index", a->index, sizeof a->index, INDEXES, what)) ||
        (rc = opt_num(r, "db_tokens", &a->db_tokens, what)) ||
        (rc = opt_num(r, "retriever_params", &a->retr_params, what)) ||
        (rc = opt_int(r, "dim", &a->retr_dim, 1, 1 << 20, what)) ||
        (rc = opt_int(r, "nlist", &a->nlist, 1, 1 << 30, what)) ||
        (rc = opt_int(r, "nprobe", &a->nprobe, 1, 1 << 30, what)) ||
        (rc = opt_int(r, "pq_bytes", &a->pq_bytes, 1, 4096, what)) ||
        (rc = opt_int(r, "hnsw_m", &a->hnsw_m, 2, 4096, what)) ||
        (rc = opt_int(r, "ef_search", &a->ef_search, 1, 1 << 20, what)))
        return rc;
    if (a->nprobe > a->nlist) return joule_fail(JOULE_ERR_FORMAT, "%s: retrieval.nprobe exceeds nlist", what);
    return JOULE_OK;
}

int joule_acct_from_json(joule_acct_model *a, const char *json, const char *what) {
    static const char *const FFNS[] = {"swiglu", "gelu", NULL};
    static const char *const POS[] = {"rope", "learned", "relative", NULL};
    memset(a, 0, sizeof *a);
    cJSON *o = cJSON_Parse(json);
    int rc = JOULE_OK;
    char *rest = NULL;
    if (!cJSON_IsObject(o)) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: not a JSON object", what);
        goto done;
    }
    /* The joule part is read by joule's own reader, with the vocabulary set aside (joule
     * builds bytes only; the accountant takes any size). */
    int vocab = 256;
    if ((rc = opt_int(o, "vocab", &vocab, 1, 1 << 30, what))) goto done;
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "vocab");
    if (v)
        cJSON_SetNumberValue(v, 256);
    else
        cJSON_AddNumberToObject(o, "vocab", 256);
    rest = cJSON_PrintUnformatted(o);
    if (!rest) {
        rc = joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", what);
        goto done;
    }
    if ((rc = joule_config_from_json(&a->cfg, rest, what))) goto done;
    a->cfg.vocab = vocab;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    joule_escape(a->name, sizeof a->name, cJSON_IsString(name) ? name->valuestring : a->cfg.arch); /* printed */
    char ffn[16] = "swiglu", moe_ffn[16] = "";
    strcpy(a->pos_emb, "rope");
    a->head_dim = a->cfg.d_model / a->cfg.n_heads;
    a->kv_heads = a->cfg.n_heads;
    const cJSON *biases = cJSON_GetObjectItemCaseSensitive(o, "biases");
    if (biases && !cJSON_IsBool(biases)) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: field 'biases' must be true or false", what);
        goto done;
    }
    a->biases = cJSON_IsTrue(biases);
    if ((rc = opt_str(o, "ffn", ffn, sizeof ffn, FFNS, what)) ||
        (rc = opt_str(o, "moe_ffn", moe_ffn, sizeof moe_ffn, FFNS, what)) ||
        (rc = opt_str(o, "pos_emb", a->pos_emb, sizeof a->pos_emb, POS, what)) ||
        (rc = opt_int(o, "head_dim", &a->head_dim, 1, 1 << 16, what)) ||
        (rc = opt_int(o, "kv_heads", &a->kv_heads, 1, a->cfg.n_heads, what)) ||
        (rc = default_kinds(&a->cfg, o, what)) || (rc = check_blocks(a, what)) || (rc = parse_retrieval(a, o, what)) ||
        (rc = parse_published(a, o, what)))
        goto done;
    a->gelu = strcmp(ffn, "gelu") == 0;
    a->expert_gelu = moe_ffn[0] ? strcmp(moe_ffn, "gelu") == 0 : a->gelu;
    a->buildable = vocab == 256 && !a->gelu && !a->expert_gelu && !a->biases && strcmp(a->pos_emb, "rope") == 0 &&
                   a->head_dim * a->cfg.n_heads == a->cfg.d_model && a->kv_heads == a->cfg.n_heads &&
                   joule_config_validate(&a->cfg, what) == JOULE_OK;
done:
    free(rest);
    cJSON_Delete(o);
    return rc;
}

/* ---------------------------------------------------------------- parameters */

static double ffn_matrices(bool gelu) { return gelu ? 2.0 : 3.0; }

static double ffn_params(const joule_acct_model *a, bool gelu, double d, double F) {
    double p = ffn_matrices(gelu) * d * F;
    if (a->biases) p += (ffn_matrices(gelu) - 1) * F + d;
    return p;
}

static double norm_params(const joule_acct_model *a, double d) { return a->biases ? 2 * d : d; }

static double attn_params(const joule_acct_model *a) {
    const double d = a->cfg.d_model, da = (double)a->cfg.n_heads * a->head_dim, dkv = (double)a->kv_heads * a->head_dim;
    double p = 2 * d * da + 2 * d * dkv;
    if (a->biases) p += da + 2 * dkv + d;
    if (strcmp(a->pos_emb, "relative") == 0) p += d * da + 2 * da; /* W_r, u, v (Transformer-XL) */
    return p;
}

/* RETRO's chunked cross-attention sub-layer: queries from the decoder (d), keys and values
 * from the encoded neighbours (d_enc), output back to d, plus its norm. */
static double cca_params(const joule_acct_model *a) {
    const double d = a->cfg.d_model, de = a->cfg.retro.enc_d_model;
    return 2 * d * d + 2 * de * d + norm_params(a, d);
}

/* The neighbour encoder: bidirectional self-attention, cross-attention to the decoder's
 * chunk activations, FFN; neighbours embedded with the decoder's embedding, projected to
 * d_enc when the widths differ. */
static double encoder_params(const joule_acct_model *a) {
    const joule_retro_config *r = &a->cfg.retro;
    const double d = a->cfg.d_model, de = r->enc_d_model;
    double layer =
        4 * de * de + (2 * de * de + 2 * d * de) + ffn_params(a, a->gelu, de, r->enc_d_ff) + 3 * norm_params(a, de);
    return r->enc_layers * layer + norm_params(a, de) + (de != d ? d * de : 0);
}

static void analytic_params(const joule_acct_model *a, joule_acct_result *r) {
    const joule_config *c = &a->cfg;
    const double d = c->d_model, V = c->vocab;
    double emb = V * d * (c->tied ? 1 : 2);
    if (strcmp(a->pos_emb, "learned") == 0) emb += (double)c->ctx * d;
    double body = norm_params(a, d);
    for (int l = 0; l < c->n_layers; l++) {
        body += attn_params(a) + 2 * norm_params(a, d);
        if (c->kinds[l].cca) body += cca_params(a);
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            double experts = c->moe.n_experts * ffn_params(a, a->expert_gelu, d, c->moe.d_ff_expert);
            body += d * c->moe.n_experts + experts;
            r->params_experts += experts;
        } else {
            body += ffn_params(a, a->gelu, d, c->d_ff);
        }
    }
    if (joule_config_has_cca(c)) body += encoder_params(a);
    r->params_embedding = emb;
    r->params_non_embedding = body;
    r->params = emb + body;
}

static int exact_params(const joule_acct_model *a, joule_acct_result *r) {
    joule_model *m;
    int rc = joule_model_describe(&m, &a->cfg);
    if (rc) return rc;
    joule_param_counts pc = joule_model_param_counts(m);
    r->params = (double)pc.total;
    r->params_embedding = (double)pc.embedding;
    r->params_non_embedding = (double)pc.non_embedding;
    for (int i = 0; i < m->n_tensors; i++)
        if (strstr(m->tensors[i].name, ".moe.experts.")) r->params_experts += (double)m->tensors[i].numel;
    joule_model_free(m);
    return JOULE_OK;
}

/* ---------------------------------------------------------------- FLOPs */

static void add_term(joule_acct_result *r, const char *name, double flops) {
    for (int i = 0; i < r->n_terms; i++)
        if (strcmp(r->terms[i].name, name) == 0) {
            r->terms[i].flops += flops;
            return;
        }
    if (r->n_terms == JOULE_ACCT_MAX_TERMS) return;
    snprintf(r->terms[r->n_terms].name, sizeof r->terms[0].name, "%s", name);
    r->terms[r->n_terms++].flops = flops;
}

/* Score and value products per token per layer at context T. */
static double attention_per_token(const joule_acct_model *a, joule_attn_convention conv, int T) {
    const double da = (double)a->cfg.n_heads * a->head_dim;
    switch (conv) {
    case JOULE_ATTN_KAPLAN: return 2.0 * T * da;
    case JOULE_ATTN_PALM: return 4.0 * T * da;
    default: return (double)joule_attention_forward_flops(1, T, a->cfg.n_heads * a->head_dim) / T;
    }
}

/* The registered extension's own terms for layer l (exact for configs joule builds). */
static bool ext_terms(const joule_acct_model *a, joule_ext_kind kind, int l, int T, joule_acct_result *r) {
    const joule_ext_ops *ops = joule_ext_get(kind);
    if (!ops || !ops->flop_terms) return false;
    const char *names[16];
    uint64_t fl[16];
    int n = ops->flop_terms(&a->cfg, l, 1, T, names, fl, 16);
    for (int i = 0; i < n && i < 16; i++)
        add_term(r, names[i], (double)fl[i] / T);
    return true;
}

/* RETRO's analytic costs per decoder token (configs joule does not build): CCA's q, o and
 * attention for a row that reads a chunk's neighbours; the keys/values, encoder and
 * retriever work of one chunk, amortised over its m tokens. */
typedef struct {
    double cca_row, cca_kv, encoder, retriever;
} retro_cost;

static retro_cost retro_analytic(const joule_acct_model *a) {
    const joule_config *c = &a->cfg;
    const joule_retro_config *rc = &c->retro;
    const double d = c->d_model, de = rc->enc_d_model, m = rc->chunk, k = rc->k;
    int n_cca = 0;
    for (int l = 0; l < c->n_layers; l++)
        n_cca += c->kinds[l].cca;
    retro_cost o;
    /* per CCA layer: q and o (2d^2 each), attention over k x 2m positions, keys/values of
     * the k neighbours' 2m encoded tokens */
    o.cca_row = n_cca * (4 * d * d + 4 * k * 2 * m * d);
    o.cca_kv = n_cca * (k * 2 * m / m) * 4 * de * d;
    /* the encoder runs once per chunk over k neighbours of 2m tokens: 2k encoder tokens per
     * decoder token; its cross-attention keys/values come from the chunk's m decoder tokens */
    double enc_tok = 8 * de * de + 4 * (2 * m) * de                   /* self-attention, bidirectional over 2m */
                     + 4 * de * de + 4 * m * de                       /* cross-attention q, o and products */
                     + 2 * ffn_matrices(a->gelu) * de * rc->enc_d_ff; /* FFN */
    o.encoder = 2 * k * (rc->enc_layers * enc_tok + (de != d ? 2 * d * de : 0)) + rc->enc_layers * 4 * d * de;
    o.retriever = 2 * a->retr_params; /* frozen BERT over each chunk */
    return o;
}

static void retro_terms(const joule_acct_model *a, joule_acct_result *r) {
    const double m = a->cfg.retro.chunk;
    const retro_cost o = retro_analytic(a);
    add_term(r, "cca", o.cca_row + o.cca_kv);
    add_term(r, "encoder", o.encoder);
    if (a->retr_params > 0) add_term(r, "retriever", o.retriever);
    r->retrievals_per_token = 1.0 / m;
    if (a->index[0] && a->db_tokens > 0)
        r->search_per_query = joule_search_flops(a->index, a->db_tokens / m, a->retr_dim, a->nlist, a->nprobe,
                                                 a->pq_bytes, a->hnsw_m, a->ef_search);
}

static void forward_terms(const joule_acct_model *a, joule_attn_convention conv, int T, bool exact,
                          joule_acct_result *r) {
    const joule_config *c = &a->cfg;
    const double d = c->d_model, da = (double)c->n_heads * a->head_dim, dkv = (double)a->kv_heads * a->head_dim;
    const double L = c->n_layers;
    add_term(r, "qkv", L * 2 * d * (da + 2 * dkv));
    add_term(r, "attention", L * attention_per_token(a, conv, T));
    add_term(r, "out_proj", L * 2 * da * d);
    if (strcmp(a->pos_emb, "relative") == 0) add_term(r, "relative_pos", L * 2 * d * da);
    bool cca_done = false;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->kinds[l].ffn == JOULE_FFN_MOE) {
            if (!(exact && ext_terms(a, JOULE_EXT_MOE, l, T, r))) {
                add_term(r, "router", 2 * d * c->moe.n_experts);
                add_term(r, "experts", c->moe.top_k * 2 * ffn_matrices(a->expert_gelu) * d * c->moe.d_ff_expert);
            }
        } else {
            add_term(r, "ffn", 2 * ffn_matrices(a->gelu) * d * c->d_ff);
        }
        if (c->kinds[l].cca && exact && ext_terms(a, JOULE_EXT_CCA, l, T, r)) cca_done = true;
    }
    if (joule_config_has_cca(c)) {
        if (cca_done) {
            r->retrievals_per_token = 1.0 / c->retro.chunk;
            if (a->index[0] && a->db_tokens > 0)
                r->search_per_query = joule_search_flops(a->index, a->db_tokens / c->retro.chunk, a->retr_dim, a->nlist,
                                                         a->nprobe, a->pq_bytes, a->hnsw_m, a->ef_search);
        } else {
            retro_terms(a, r);
        }
    }
    add_term(r, "logits", 2 * d * c->vocab);
}

double joule_search_flops(const char *index, double n_db, int dim, int nlist, int nprobe, int pq_bytes, int hnsw_m,
                          int ef_search) {
    const double dd = dim;
    if (!index || n_db <= 0) return 0;
    if (strcmp(index, "flat") == 0) return 2 * dd * n_db;
    double per_list = n_db / (nlist > 0 ? nlist : 1);
    if (strcmp(index, "ivf") == 0) return 2 * dd * nlist + nprobe * per_list * 2 * dd;
    if (strcmp(index, "ivfpq") == 0) return 2 * dd * nlist + 256.0 * 2 * dd + nprobe * per_list * pq_bytes;
    if (strcmp(index, "hnsw") == 0) return 2 * dd * hnsw_m * ef_search * (1 + log(n_db) / log(hnsw_m));
    return 0;
}

int joule_account(const joule_acct_model *a, const joule_acct_opts *o, joule_acct_result *r) {
    memset(r, 0, sizeof *r);
    const joule_config *c = &a->cfg;
    int T = o->ctx > 0 ? o->ctx : c->ctx;
    if (T < 1 || T > 1 << 24) return joule_fail(JOULE_ERR_ARG, "context %d outside [1, 16777216]", T);
    r->ctx = T;
    r->conv = o->conv;
    r->bytes_per_param = o->bytes_per_param > 0 ? o->bytes_per_param : 4;
    /* exact: joule builds it, every extension it needs is registered */
    bool exact = a->buildable && T <= c->ctx && (!joule_config_has_moe(c) || joule_ext_get(JOULE_EXT_MOE)) &&
                 (!joule_config_has_cca(c) || joule_ext_get(JOULE_EXT_CCA));
    if (exact && exact_params(a, r) != JOULE_OK) exact = false;
    if (!exact) {
        r->params_experts = 0;
        analytic_params(a, r);
    }
    r->exact = exact;
    r->params_active = r->params;
    if (joule_config_has_moe(c))
        r->params_active = r->params - (1.0 - (double)c->moe.top_k / c->moe.n_experts) * r->params_experts;
    forward_terms(a, o->conv, T, exact, r);
    for (int i = 0; i < r->n_terms; i++)
        r->fwd_per_token += r->terms[i].flops;
    if (exact) r->fwd_sequence = joule_model_forward_flops(c, 1, T);
    r->tokens = o->tokens > 0 ? o->tokens : a->pub_tokens;
    r->train_6nd = 6 * r->params_active * r->tokens;
    r->train_exact = 3 * r->fwd_per_token * r->tokens;
    r->train_search = r->search_per_query * r->retrievals_per_token * r->tokens;
    /* memory: weights at the stated width; fp32 gradients and AdamW moments (plus fp32
     * master weights when the weights are narrower); activations as joule's arena holds them */
    const double bpp = r->bytes_per_param;
    r->mem_weights = r->params * bpp;
    r->mem_grads = r->params * bpp;
    r->mem_optimizer = r->params * (8 + (bpp < 4 ? 4 : 0));
    const double d = c->d_model, da = (double)c->n_heads * a->head_dim, dkv = (double)a->kv_heads * a->head_dim;
    double per_layer = 0;
    for (int l = 0; l < c->n_layers; l++) {
        double F = c->kinds[l].ffn == JOULE_FFN_MOE ? (double)c->moe.top_k * c->moe.d_ff_expert : c->d_ff;
        per_layer += 5 * d + 2 + (da + 2 * dkv) + (double)c->n_heads * T + da + 3 * F;
    }
    r->mem_activations_per_token = 4 * (per_layer + 2 * d + 1 + 2.0 * c->vocab + 3);
    return JOULE_OK;
}

static double term_flops(const joule_acct_result *r, const char *name) {
    for (int i = 0; i < r->n_terms; i++)
        if (strcmp(r->terms[i].name, name) == 0) return r->terms[i].flops;
    return 0;
}

/* RETRO's FLOPs at decode position pos: the registered extension's own count when exact,
 * else the analytic costs laid out as joule decodes (a chunk's work where it completes, CCA
 * rows from m-1 on). */
static void retro_at(const joule_acct_model *a, bool exact, int pos, double *enc, double *cca, double *retr) {
    const joule_config *c = &a->cfg;
    const int m = c->retro.chunk;
    const bool completes = (pos + 1) % m == 0;
    *enc = *cca = *retr = 0;
    if (!exact) {
        const retro_cost o = retro_analytic(a);
        *cca = (pos >= m - 1 ? o.cca_row : 0) + (completes ? m * o.cca_kv : 0);
        *enc = completes ? m * o.encoder : 0;
        *retr = completes ? m * o.retriever : 0;
        return;
    }
    const joule_ext_ops *ops = joule_ext_get(JOULE_EXT_CCA);
    const char *names[16];
    uint64_t fl[16];
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->kinds[l].cca) continue;
        int n = ops->decode_flop_terms ? ops->decode_flop_terms(c, l, pos, names, fl, 16)
                                       : ops->flop_terms(c, l, 1, 1, names, fl, 16);
        for (int i = 0; i < n && i < 16; i++)
            *(strcmp(names[i], "encoder") == 0 ? enc : cca) += (double)fl[i];
    }
}

int joule_account_query(const joule_acct_model *a, const joule_acct_opts *o, int prompt, int generate,
                        joule_acct_query *q) {
    memset(q, 0, sizeof *q);
    if (prompt < 1 || generate < 0)
        return joule_fail(JOULE_ERR_ARG, "a query needs >= 1 prompt token and >= 0 generated");
    joule_acct_opts po = *o;
    po.ctx = prompt;
    joule_acct_result r;
    int rc = joule_account(a, &po, &r);
    if (rc) return rc;
    const bool retro = joule_config_has_cca(&a->cfg);
    const double L = a->cfg.n_layers, da = (double)a->cfg.n_heads * a->head_dim;
    /* RETRO's per-token terms spread a batched forward's chunk work over every position;
     * a query pays it position by position instead (retro_at) */
    const double spread = retro ? term_flops(&r, "cca") + term_flops(&r, "encoder") + term_flops(&r, "retriever") : 0;
    double rest = r.fwd_per_token - term_flops(&r, "attention") - spread;
    /* exact: a whole number of FLOPs per token (the matmuls), which the division of the
     * sequence's terms by the prompt length may leave off by a rounding error */
    if (r.exact) rest = nearbyint(rest);
    q->prefill = (r.fwd_per_token - spread) * prompt;
    if (r.exact) { /* in integers: what joule_decoder_prefill counts, plus P-1 logits rows */
        uint64_t seq = r.fwd_sequence;
        const joule_ext_ops *ops = retro ? joule_ext_get(JOULE_EXT_CCA) : NULL;
        for (int l = 0; ops && l < a->cfg.n_layers; l++)
            if (a->cfg.kinds[l].cca) seq -= ops->forward_flops(&a->cfg, l, 1, prompt);
        q->prefill = (double)seq;
    }
    for (int pos = 0; pos < prompt + generate; pos++) {
        double enc = 0, cca = 0, retr = 0;
        if (retro) retro_at(a, r.exact, pos, &enc, &cca, &retr);
        q->encoder += enc;
        q->cca += cca;
        /* a one-token step attends to every cached position and itself */
        const double step = rest + L * 4.0 * da * (pos + 1) + enc + cca + retr;
        if (pos < prompt) {
            q->prefill += enc + cca + retr;
            q->prefill_steps += step;
        } else {
            q->decode += step;
        }
    }
    q->total = q->prefill + q->decode;
    if (retro) q->search = (double)((prompt + generate) / a->cfg.retro.chunk) * r.search_per_query;
    q->kv_cache_bytes = L * (prompt + generate) * 2.0 * a->kv_heads * a->head_dim * r.bytes_per_param;
    return JOULE_OK;
}

int joule_account_cost(double flops, const joule_hw_profile *hw, const char *precision, double util, int devices,
                       double pue, double grid_g_per_kwh, joule_acct_cost *out) {
    memset(out, 0, sizeof *out);
    int p = joule_hw_precision_index(precision);
    if (p < 0)
        return joule_fail(JOULE_ERR_ARG, "precision '%s' is not one of fp64 fp32 tf32 bf16 fp16 int8", precision);
    if (!(hw->peak_flops[p] > 0))
        return joule_fail(JOULE_ERR_ARG, "hardware profile '%s' gives no %s peak", hw->name, precision);
    if (!(util > 0 && util <= 1)) return joule_fail(JOULE_ERR_ARG, "utilisation %g outside (0, 1]", util);
    if (devices < 1) return joule_fail(JOULE_ERR_ARG, "devices must be >= 1");
    if (!(pue >= 1)) return joule_fail(JOULE_ERR_ARG, "PUE %g must be >= 1", pue);
    if (!(grid_g_per_kwh >= 0)) return joule_fail(JOULE_ERR_ARG, "grid intensity must be >= 0");
    out->peak_flops = hw->peak_flops[p];
    out->seconds = flops / (devices * hw->peak_flops[p] * util);
    out->device_j = devices * hw->tdp_w * out->seconds;
    out->facility_kwh = out->device_j * pue / 3.6e6;
    out->kg_co2e = out->facility_kwh * grid_g_per_kwh / 1000.0;
    return JOULE_OK;
}
