/* `joule serve`: the OpenAI-compatible bodies. A completions request is checked field by
 * field; each problem gets one message naming the field (the 400's error.param). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "serve.h"

void srv_params_free(srv_params *p) {
    free(p->prompt);
    p->prompt = NULL;
}

static int bad(char *err, size_t errn, const char **param, const char *name, const char *msg) {
    snprintf(err, errn, "%s%s%s", name ? name : "", name ? ": " : "", msg);
    *param = name;
    return 400;
}

/* prompt: a string, or an array holding one string (the batch form, of one). */
static int parse_prompt(const cJSON *o, int ctx, srv_params *p, char *err, size_t errn, const char **param) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1) v = cJSON_GetArrayItem(v, 0);
    if (!cJSON_IsString(v)) return bad(err, errn, param, "prompt", "must be a string (or an array of one string)");
    const size_t n = strlen(v->valuestring);
    if (n > (size_t)ctx) {
        snprintf(err, errn, "prompt: %zu bytes, longer than the model's context of %d tokens (one per byte)", n, ctx);
        *param = "prompt";
        return 400;
    }
    if (!(p->prompt = malloc(n + 1))) return bad(err, errn, param, NULL, "out of memory");
    memcpy(p->prompt, v->valuestring, n + 1);
    p->n_prompt = (int)n;
    return 0;
}

/* A number field in [lo, hi] (absent: *out unchanged); integral when asked. */
static int number(const cJSON *o, const char *name, double lo, double hi, bool integral, double *out, char *err,
                  size_t errn, const char **param) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    const double x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!cJSON_IsNumber(v) || !(x >= lo && x <= hi) || (integral && x != floor(x))) {
        snprintf(err, errn, "%s: must be %s in [%g, %g]", name, integral ? "an integer" : "a number", lo, hi);
        *param = name;
        return 400;
    }
    *out = x;
    return 0;
}

static int parse_stop(const cJSON *o, srv_params *p, char *err, size_t errn, const char **param) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "stop");
    if (!v || cJSON_IsNull(v)) return 0;
    const cJSON *one[1] = {v};
    const int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0 || n > SRV_MAX_STOP) return bad(err, errn, param, "stop", "must be a string or an array of up to 4 strings");
    for (int i = 0; i < n; i++) {
        const cJSON *s = cJSON_IsString(v) ? one[0] : cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(s) || !*s->valuestring || strlen(s->valuestring) > SRV_STOP_LEN)
            return bad(err, errn, param, "stop", "each stop sequence must be a non-empty string of at most 64 bytes");
        snprintf(p->stop[p->n_stop++], SRV_STOP_LEN + 1, "%s", s->valuestring);
    }
    return 0;
}

/* Fields joule cannot honour are refused rather than ignored. */
static int unsupported(const cJSON *o, char *err, size_t errn, const char **param) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "n"), *b = cJSON_GetObjectItemCaseSensitive(o, "best_of");
    if ((n && !cJSON_IsNull(n) && !(cJSON_IsNumber(n) && n->valuedouble == 1)) ||
        (b && !cJSON_IsNull(b) && !(cJSON_IsNumber(b) && b->valuedouble == 1)))
        return bad(err, errn, param, n ? "n" : "best_of", "only 1 completion per request is supported");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "echo"), *l = cJSON_GetObjectItemCaseSensitive(o, "logprobs");
    if (cJSON_IsTrue(e)) return bad(err, errn, param, "echo", "is not supported");
    if (l && !cJSON_IsNull(l) && !(cJSON_IsNumber(l) && l->valuedouble == 0))
        return bad(err, errn, param, "logprobs", "is not supported");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "stream");
    if (s && !cJSON_IsNull(s) && !cJSON_IsBool(s)) return bad(err, errn, param, "stream", "must be true or false");
    const cJSON *ie = cJSON_GetObjectItemCaseSensitive(o, "ignore_eos");
    if (ie && !cJSON_IsNull(ie) && !cJSON_IsBool(ie)) return bad(err, errn, param, "ignore_eos", "must be true or false");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
    if (m && !cJSON_IsNull(m) && !cJSON_IsString(m)) return bad(err, errn, param, "model", "must be a string");
    return 0;
}

int srv_parse_completion(const char *body, size_t n, int ctx, int max_tokens, srv_params *p, char *err, size_t errn,
                         const char **param) {
    memset(p, 0, sizeof *p);
    *param = NULL;
    p->max_tokens = 16 < max_tokens ? 16 : max_tokens; /* OpenAI's default */
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    cJSON *o = cJSON_ParseWithLength(body, n);
    int rc = 0;
    double mt = p->max_tokens, t = 1.0, tp = 1.0, seed = -1;
    if (!cJSON_IsObject(o)) rc = bad(err, errn, param, NULL, "the body is not a JSON object");
    if (!rc) rc = unsupported(o, err, errn, param);
    if (!rc) rc = parse_prompt(o, ctx, p, err, errn, param);
    if (!rc) rc = number(o, "max_tokens", 1, max_tokens, true, &mt, err, errn, param);
    if (!rc) rc = number(o, "temperature", 0, 2, false, &t, err, errn, param);
    if (!rc) rc = number(o, "top_p", 0, 1, false, &tp, err, errn, param);
    if (!rc && tp <= 0) rc = bad(err, errn, param, "top_p", "must be in (0, 1]");
    if (!rc) rc = number(o, "seed", 0, 9007199254740991.0, true, &seed, err, errn, param);
    if (!rc) rc = parse_stop(o, p, err, errn, param);
    if (!rc) {
        p->max_tokens = (int)mt;
        p->temperature = (float)t;
        p->top_p = (float)tp;
        p->have_seed = seed >= 0;
        p->seed = p->have_seed ? (uint64_t)seed : 0;
        p->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "stream"));
        p->ignore_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ignore_eos"));
    } else {
        srv_params_free(p);
    }
    cJSON_Delete(o);
    return rc;
}

static char *print(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

char *srv_error_json(const char *message, const char *type, const char *param) {
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    return print(o);
}

char *srv_utf8_clean(const char *s, size_t n) {
    char *out = malloc(3 * n + 1), *w = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        const unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 && c >= 0xC2 ? 2 : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 && c <= 0xF4 ? 4 : 0;
        for (size_t k = 1; k < len; k++)
            if (i + k >= n || ((unsigned char)s[i + k] & 0xC0) != 0x80) len = 0;
        if (len == 0) { /* one invalid byte: U+FFFD */
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            i++;
            continue;
        }
        memcpy(w, s + i, len);
        w += len;
        i += len;
    }
    *w = '\0';
    return out;
}

static const char *finish_reason(const srv_req *r) { return r->why == JOULE_FINISH_LENGTH ? "length" : "stop"; }

/* A completion (chunk: one server-sent event's object, the text s[from..to)). */
char *srv_completion_json(const srv_req *r, const char *model_id, bool chunk, size_t from, size_t to, bool final) {
    char id[64], *text = srv_utf8_clean(r->text + from, to - from);
    if (!text) return NULL;
    snprintf(id, sizeof id, "cmpl-joule-%llu", (unsigned long long)r->num);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "model", model_id);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "text", text);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON_AddNullToObject(c, "logprobs");
    if (final) cJSON_AddStringToObject(c, "finish_reason", finish_reason(r));
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), c);
    if (!chunk || final) {
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", r->p.n_prompt);
        cJSON_AddNumberToObject(u, "completion_tokens", r->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", r->p.n_prompt + r->completion_tokens);
    }
    free(text);
    return print(o);
}

char *srv_models_json(const char *model_id, const joule_model *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "id", model_id);
    cJSON_AddStringToObject(e, "object", "model");
    cJSON_AddNumberToObject(e, "created", 0);
    cJSON_AddStringToObject(e, "owned_by", "joule");
    cJSON_AddStringToObject(e, "arch", m->cfg.arch);
    cJSON_AddNumberToObject(e, "context_length", m->cfg.ctx);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), e);
    return print(o);
}
