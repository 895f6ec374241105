/* Model configuration: defaults, validation and the JSON form stored in checkpoints. */
#include <cjson/cJSON.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "joule/model.h"

joule_config joule_config_default(int n_layers, int d_model, int n_heads, int d_ff, int ctx) {
    joule_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.arch, "dense");
    c.n_layers = n_layers;
    c.d_model = d_model;
    c.n_heads = n_heads;
    c.d_ff = d_ff;
    c.ctx = ctx;
    c.vocab = 256;
    c.tied = true;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.init_std = 0.02f;
    return c;
}

bool joule_config_has_moe(const joule_config *c) {
    for (int l = 0; l < c->n_layers && l < JOULE_MAX_LAYERS; l++)
        if (c->kinds[l].ffn == JOULE_FFN_MOE) return true;
    return false;
}

bool joule_config_has_cca(const joule_config *c) {
    for (int l = 0; l < c->n_layers && l < JOULE_MAX_LAYERS; l++)
        if (c->kinds[l].cca) return true;
    return false;
}

static int validate_moe(const joule_moe_config *e, const char *what) {
    if (e->n_experts < 1 || e->n_experts > 4096)
        return joule_fail(JOULE_ERR_ARG, "%s: moe.experts %d outside [1, 4096]", what, e->n_experts);
    if (e->top_k < 1 || e->top_k > 2 || e->top_k > e->n_experts)
        return joule_fail(JOULE_ERR_ARG, "%s: moe.top_k %d must be 1 or 2 and <= experts", what, e->top_k);
    if (e->every < 1) return joule_fail(JOULE_ERR_ARG, "%s: moe.every %d must be >= 1", what, e->every);
    if (e->d_ff_expert < 1 || e->d_ff_expert > 1 << 20)
        return joule_fail(JOULE_ERR_ARG, "%s: moe.d_ff_expert %d outside [1, 1048576]", what, e->d_ff_expert);
    if (!(e->capacity_train >= 0) || !(e->capacity_eval >= 0) || !(e->aux_alpha >= 0) || !(e->z_beta >= 0))
        return joule_fail(JOULE_ERR_ARG, "%s: moe capacity factors and loss weights must be >= 0", what);
    return JOULE_OK;
}

static int validate_retro(const joule_retro_config *r, const joule_config *c, const char *what) {
    if (r->chunk < 1 || r->chunk > c->ctx)
        return joule_fail(JOULE_ERR_ARG, "%s: retro.chunk %d outside [1, ctx=%d]", what, r->chunk, c->ctx);
    if (r->k < 0 || r->k > 64) return joule_fail(JOULE_ERR_ARG, "%s: retro.k %d outside [0, 64]", what, r->k);
    if (r->enc_layers < 1 || r->enc_layers > JOULE_MAX_LAYERS || r->enc_d_model < 2 || r->enc_heads < 1 ||
        r->enc_d_model % r->enc_heads != 0 || (r->enc_d_model / r->enc_heads) % 2 != 0 || r->enc_d_ff < 1)
        return joule_fail(JOULE_ERR_ARG,
                          "%s: retro encoder sizes invalid (layers %d, d_model %d, heads %d, d_ff %d)", what,
                          r->enc_layers, r->enc_d_model, r->enc_heads, r->enc_d_ff);
    return JOULE_OK;
}

int joule_config_validate(const joule_config *c, const char *what) {
    if (strcmp(c->arch, "dense") != 0 && strcmp(c->arch, "moe") != 0 && strcmp(c->arch, "retro") != 0)
        return joule_fail(JOULE_ERR_ARG, "%s: arch '%s' is not one of dense, moe, retro", what, joule_q(c->arch));
    if (c->n_layers < 1 || c->n_layers > JOULE_MAX_LAYERS)
        return joule_fail(JOULE_ERR_ARG, "%s: n_layers %d outside [1, %d]", what, c->n_layers,
                          JOULE_MAX_LAYERS);
    if (c->d_model < 2 || c->d_model > 65536)
        return joule_fail(JOULE_ERR_ARG, "%s: d_model %d outside [2, 65536]", what, c->d_model);
    if (c->n_heads < 1 || c->d_model % c->n_heads != 0)
        return joule_fail(JOULE_ERR_ARG, "%s: d_model %d is not a multiple of n_heads %d", what,
                          c->d_model, c->n_heads);
    if ((c->d_model / c->n_heads) % 2 != 0)
        return joule_fail(JOULE_ERR_ARG, "%s: head size %d must be even for rotary embeddings",
                          what, c->d_model / c->n_heads);
    if (c->d_ff < 1 || c->d_ff > 1 << 20)
        return joule_fail(JOULE_ERR_ARG, "%s: d_ff %d outside [1, 1048576]", what, c->d_ff);
    if (c->ctx < 1 || c->ctx > 1 << 16)
        return joule_fail(JOULE_ERR_ARG, "%s: ctx %d outside [1, 65536]", what, c->ctx);
    if (c->vocab != 256)
        return joule_fail(JOULE_ERR_ARG, "%s: vocab must be 256 (bytes), got %d", what, c->vocab);
    if (!(c->rope_theta > 0) || !(c->norm_eps > 0) || !(c->init_std > 0))
        return joule_fail(JOULE_ERR_ARG, "%s: rope_theta, norm_eps and init_std must be > 0", what);
    for (int l = 0; l < c->n_layers; l++)
        if (c->kinds[l].ffn != JOULE_FFN_DENSE && c->kinds[l].ffn != JOULE_FFN_MOE)
            return joule_fail(JOULE_ERR_ARG, "%s: layer %d has an unknown FFN kind", what, l);
    int rc;
    if (joule_config_has_moe(c) && (rc = validate_moe(&c->moe, what))) return rc;
    if (joule_config_has_cca(c) && (rc = validate_retro(&c->retro, c, what))) return rc;
    return JOULE_OK;
}

char *joule_config_to_json(const joule_config *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "arch", c->arch);
    cJSON_AddNumberToObject(o, "n_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "d_model", c->d_model);
    cJSON_AddNumberToObject(o, "n_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "d_ff", c->d_ff);
    cJSON_AddNumberToObject(o, "ctx", c->ctx);
    cJSON_AddNumberToObject(o, "vocab", c->vocab);
    cJSON_AddBoolToObject(o, "tied", c->tied);
    cJSON_AddNumberToObject(o, "rope_theta", joule_float_for_json(c->rope_theta));
    cJSON_AddNumberToObject(o, "norm_eps", joule_float_for_json(c->norm_eps));
    cJSON_AddNumberToObject(o, "init_std", joule_float_for_json(c->init_std));
    cJSON *kinds = cJSON_AddArrayToObject(o, "layers");
    for (int l = 0; l < c->n_layers; l++) {
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "ffn", c->kinds[l].ffn == JOULE_FFN_MOE ? "moe" : "dense");
        cJSON_AddBoolToObject(k, "cca", c->kinds[l].cca);
        cJSON_AddItemToArray(kinds, k);
    }
    if (joule_config_has_moe(c)) {
        const joule_moe_config *e = &c->moe;
        cJSON *mo = cJSON_AddObjectToObject(o, "moe");
        cJSON_AddNumberToObject(mo, "experts", e->n_experts);
        cJSON_AddNumberToObject(mo, "top_k", e->top_k);
        cJSON_AddNumberToObject(mo, "every", e->every);
        cJSON_AddNumberToObject(mo, "d_ff_expert", e->d_ff_expert);
        cJSON_AddNumberToObject(mo, "capacity_train", joule_float_for_json(e->capacity_train));
        cJSON_AddNumberToObject(mo, "capacity_eval", joule_float_for_json(e->capacity_eval));
        cJSON_AddBoolToObject(mo, "renormalize", e->renormalize);
        cJSON_AddBoolToObject(mo, "random_second", e->random_second);
        cJSON_AddNumberToObject(mo, "aux_alpha", joule_float_for_json(e->aux_alpha));
        cJSON_AddNumberToObject(mo, "z_beta", joule_float_for_json(e->z_beta));
    }
    if (joule_config_has_cca(c)) {
        const joule_retro_config *r = &c->retro;
        cJSON *ro = cJSON_AddObjectToObject(o, "retro");
        cJSON_AddNumberToObject(ro, "chunk", r->chunk);
        cJSON_AddNumberToObject(ro, "k", r->k);
        cJSON_AddNumberToObject(ro, "cca_start", r->cca_start);
        cJSON_AddNumberToObject(ro, "cca_every", r->cca_every);
        cJSON_AddNumberToObject(ro, "enc_layers", r->enc_layers);
        cJSON_AddNumberToObject(ro, "enc_d_model", r->enc_d_model);
        cJSON_AddNumberToObject(ro, "enc_heads", r->enc_heads);
        cJSON_AddNumberToObject(ro, "enc_d_ff", r->enc_d_ff);
        cJSON_AddStringToObject(ro, "positions", r->positions == JOULE_RETRO_POS_NONE ? "none" : "rope");
        cJSON_AddStringToObject(ro, "db_id", r->db_id);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Range before conversion: casting a double outside int's range (1e30, NaN) is undefined. */
static int get_int(const cJSON *o, const char *key, int *out, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= INT_MIN && d <= INT_MAX) || d != floor(d))
        return joule_fail(JOULE_ERR_FORMAT, "%s: config field '%s' missing or not an integer in [%d, %d]", what, key,
                          INT_MIN, INT_MAX);
    *out = (int)d;
    return JOULE_OK;
}

/* The same for float: |value| <= FLT_MAX, and finite (cJSON reads 1e999 as infinity). */
static int get_float(const cJSON *o, const char *key, float *out, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return JOULE_OK; /* optional: keep the default */
    if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) <= FLT_MAX))
        return joule_fail(JOULE_ERR_FORMAT, "%s: config field '%s' is not a finite number", what, key);
    *out = (float)v->valuedouble;
    return JOULE_OK;
}

static int get_bool(const cJSON *o, const char *key, bool *out, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return JOULE_OK;
    if (!cJSON_IsBool(v)) return joule_fail(JOULE_ERR_FORMAT, "%s: config field '%s' is not a boolean", what, key);
    *out = cJSON_IsTrue(v);
    return JOULE_OK;
}

static int moe_from_json(joule_moe_config *e, const cJSON *mo, const char *what) {
    if (!cJSON_IsObject(mo)) return joule_fail(JOULE_ERR_FORMAT, "%s: config 'moe' must be an object", what);
    int rc;
    if ((rc = get_int(mo, "experts", &e->n_experts, what)) || (rc = get_int(mo, "top_k", &e->top_k, what)) ||
        (rc = get_int(mo, "every", &e->every, what)) || (rc = get_int(mo, "d_ff_expert", &e->d_ff_expert, what)) ||
        (rc = get_float(mo, "capacity_train", &e->capacity_train, what)) ||
        (rc = get_float(mo, "capacity_eval", &e->capacity_eval, what)) ||
        (rc = get_bool(mo, "renormalize", &e->renormalize, what)) ||
        (rc = get_bool(mo, "random_second", &e->random_second, what)) ||
        (rc = get_float(mo, "aux_alpha", &e->aux_alpha, what)) || (rc = get_float(mo, "z_beta", &e->z_beta, what)))
        return rc;
    return JOULE_OK;
}

static int retro_from_json(joule_retro_config *r, const cJSON *ro, const char *what) {
    if (!cJSON_IsObject(ro)) return joule_fail(JOULE_ERR_FORMAT, "%s: config 'retro' must be an object", what);
    int rc;
    if ((rc = get_int(ro, "chunk", &r->chunk, what)) || (rc = get_int(ro, "k", &r->k, what)) ||
        (rc = get_int(ro, "cca_start", &r->cca_start, what)) || (rc = get_int(ro, "cca_every", &r->cca_every, what)) ||
        (rc = get_int(ro, "enc_layers", &r->enc_layers, what)) ||
        (rc = get_int(ro, "enc_d_model", &r->enc_d_model, what)) ||
        (rc = get_int(ro, "enc_heads", &r->enc_heads, what)) || (rc = get_int(ro, "enc_d_ff", &r->enc_d_ff, what)))
        return rc;
    /* Written since the cross-attentions have positions; older checkpoints have none. */
    const cJSON *pos = cJSON_GetObjectItemCaseSensitive(ro, "positions");
    r->positions = JOULE_RETRO_POS_NONE;
    if (pos) {
        if (cJSON_IsString(pos) && strcmp(pos->valuestring, "rope") == 0) r->positions = JOULE_RETRO_POS_ROPE;
        else if (!cJSON_IsString(pos) || strcmp(pos->valuestring, "none") != 0)
            return joule_fail(JOULE_ERR_FORMAT, "%s: config field 'retro.positions' must be \"rope\" or \"none\"", what);
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ro, "db_id");
    if (id) {
        if (!cJSON_IsString(id) || strlen(id->valuestring) >= sizeof r->db_id)
            return joule_fail(JOULE_ERR_FORMAT, "%s: config field 'retro.db_id' is invalid", what);
        strcpy(r->db_id, id->valuestring);
    }
    return JOULE_OK;
}

int joule_config_from_json(joule_config *c, const char *json, const char *what) {
    cJSON *o = cJSON_Parse(json);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return joule_fail(JOULE_ERR_FORMAT, "%s: config is not a JSON object", what);
    }
    int rc = JOULE_OK;
    joule_config d = joule_config_default(1, 2, 1, 1, 1);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(o, "arch");
    if (!cJSON_IsString(arch) || strlen(arch->valuestring) >= sizeof d.arch) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: config field 'arch' missing or invalid", what);
        goto done;
    }
    strcpy(d.arch, arch->valuestring);
    if ((rc = get_int(o, "n_layers", &d.n_layers, what)) || (rc = get_int(o, "d_model", &d.d_model, what)) ||
        (rc = get_int(o, "n_heads", &d.n_heads, what)) || (rc = get_int(o, "d_ff", &d.d_ff, what)) ||
        (rc = get_int(o, "ctx", &d.ctx, what)) || (rc = get_int(o, "vocab", &d.vocab, what)) ||
        (rc = get_float(o, "rope_theta", &d.rope_theta, what)) ||
        (rc = get_float(o, "norm_eps", &d.norm_eps, what)) ||
        (rc = get_float(o, "init_std", &d.init_std, what)))
        goto done;
    const cJSON *tied = cJSON_GetObjectItemCaseSensitive(o, "tied");
    if (tied) {
        if (!cJSON_IsBool(tied)) {
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: config field 'tied' is not a boolean", what);
            goto done;
        }
        d.tied = cJSON_IsTrue(tied);
    }
    if (d.n_layers < 1 || d.n_layers > JOULE_MAX_LAYERS) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: n_layers %d outside [1, %d]", what, d.n_layers, JOULE_MAX_LAYERS);
        goto done;
    }
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    if (layers) {
        if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) != d.n_layers) {
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: config 'layers' must list %d layer kinds", what, d.n_layers);
            goto done;
        }
        int l = 0;
        const cJSON *k;
        cJSON_ArrayForEach(k, layers) {
            const cJSON *ffn = cJSON_GetObjectItemCaseSensitive(k, "ffn");
            const cJSON *cca = cJSON_GetObjectItemCaseSensitive(k, "cca");
            if (!cJSON_IsString(ffn) || (strcmp(ffn->valuestring, "dense") && strcmp(ffn->valuestring, "moe")) ||
                (cca && !cJSON_IsBool(cca))) {
                rc = joule_fail(JOULE_ERR_FORMAT, "%s: config layer %d kind is invalid", what, l);
                goto done;
            }
            d.kinds[l].ffn = strcmp(ffn->valuestring, "moe") == 0 ? JOULE_FFN_MOE : JOULE_FFN_DENSE;
            d.kinds[l].cca = cca && cJSON_IsTrue(cca);
            l++;
        }
    }
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(o, "moe");
    if (mo && (rc = moe_from_json(&d.moe, mo, what))) goto done;
    const cJSON *ro = cJSON_GetObjectItemCaseSensitive(o, "retro");
    if (ro && (rc = retro_from_json(&d.retro, ro, what))) goto done;
    rc = joule_config_validate(&d, what);
    if (rc == JOULE_ERR_ARG) rc = JOULE_ERR_FORMAT; /* it came from a file */
    if (rc == JOULE_OK) *c = d;
done:
    cJSON_Delete(o);
    return rc;
}
