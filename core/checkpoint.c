/* Model and optimizer checkpoints on top of the generic safetensors reader/writer. */
#define _GNU_SOURCE
#include "joule/checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/safetensors.h"

char *joule_checkpoint_optim_path(const char *path) {
    size_t n = strlen(path);
    const char *ext = ".safetensors";
    size_t e = strlen(ext);
    char *out = NULL;
    if (n > e && strcmp(path + n - e, ext) == 0) {
        if (asprintf(&out, "%.*s.optim.safetensors", (int)(n - e), path) < 0) out = NULL;
    } else if (asprintf(&out, "%s.optim.safetensors", path) < 0) {
        out = NULL;
    }
    return out;
}

static int add_u64_meta(joule_st_writer *w, const char *key, uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return joule_st_writer_add_meta(w, key, buf);
}

static int add_state_meta(joule_st_writer *w, const joule_train_state *st) {
    char wall[64];
    snprintf(wall, sizeof wall, "%.17g", st->wall_s);
    int rc;
    if ((rc = add_u64_meta(w, "step", st->step)) || (rc = add_u64_meta(w, "total_steps", st->total_steps)) ||
        (rc = add_u64_meta(w, "tokens", st->tokens)) || (rc = add_u64_meta(w, "flops", st->flops)) ||
        (rc = add_u64_meta(w, "seed", st->seed)) || (rc = joule_st_writer_add_meta(w, "wall_s", wall)) ||
        (rc = joule_st_writer_add_meta(w, "run_id", st->run_id)) ||
        (rc = joule_st_writer_add_meta(w, "train_opts", st->opts_json)))
        return rc;
    return JOULE_OK;
}

static int write_weights(const joule_model *m, const char *path, const joule_train_state *st) {
    joule_st_writer *w;
    int rc = joule_st_writer_new(&w);
    if (rc) return rc;
    char *cfg = joule_config_to_json(&m->cfg);
    if (!cfg) {
        joule_st_writer_free(w);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    if ((rc = joule_st_writer_add_meta(w, "format", "joule")) ||
        (rc = joule_st_writer_add_meta(w, "format_version", JOULE_FORMAT_VERSION)) ||
        (rc = joule_st_writer_add_meta(w, "config", cfg)))
        goto done;
    if (st && (rc = add_state_meta(w, st))) goto done;
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        if ((rc = joule_st_writer_add(w, t->name, JOULE_ST_F32, t->shape, t->ndim, m->params + t->offset)))
            goto done;
    }
    rc = joule_st_writer_write(w, path);
done:
    free(cfg);
    joule_st_writer_free(w);
    return rc;
}

static int write_optim(const joule_model *m, const char *path, const joule_adamw *opt,
                       const joule_train_state *st) {
    char *opath = joule_checkpoint_optim_path(path);
    if (!opath) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    joule_st_writer *w;
    int rc = joule_st_writer_new(&w);
    if (rc) {
        free(opath);
        return rc;
    }
    char name[128];
    if ((rc = joule_st_writer_add_meta(w, "format", "joule-optim")) ||
        (rc = joule_st_writer_add_meta(w, "format_version", JOULE_FORMAT_VERSION)) ||
        (rc = add_u64_meta(w, "adam_t", opt->t)) || (rc = add_state_meta(w, st)))
        goto done;
    for (int i = 0; i < m->n_tensors && !rc; i++) {
        const joule_param_info *t = &m->tensors[i];
        snprintf(name, sizeof name, "m.%s", t->name);
        rc = joule_st_writer_add(w, name, JOULE_ST_F32, t->shape, t->ndim, opt->m + t->offset);
        if (rc) break;
        snprintf(name, sizeof name, "v.%s", t->name);
        rc = joule_st_writer_add(w, name, JOULE_ST_F32, t->shape, t->ndim, opt->v + t->offset);
    }
    if (!rc) rc = joule_st_writer_write(w, opath);
done:
    joule_st_writer_free(w);
    free(opath);
    return rc;
}

int joule_checkpoint_save(const joule_model *m, const char *path, const joule_adamw *opt,
                          const joule_train_state *st) {
    /* Optimizer first: a crash between the two renames leaves the old weights with newer
     * moments, which the run_id/step check on resume refuses rather than silently using. */
    int rc;
    if (opt && st && (rc = write_optim(m, path, opt, st))) return rc;
    return write_weights(m, path, st);
}

static int parse_u64(const joule_st_file *f, const char *key, uint64_t *out) {
    const char *s = joule_st_meta(f, key);
    if (!s) return joule_fail(JOULE_ERR_FORMAT, "%s: metadata '%s' missing", joule_st_path(f), key);
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *end != '\0' || *s == '-')
        return joule_fail(JOULE_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an unsigned integer",
                          joule_st_path(f), key, s);
    *out = v;
    return JOULE_OK;
}

static int read_state(const joule_st_file *f, joule_train_state *st) {
    memset(st, 0, sizeof *st);
    if (!joule_st_meta(f, "step")) return JOULE_OK; /* weights saved outside training */
    int rc;
    if ((rc = parse_u64(f, "step", &st->step)) || (rc = parse_u64(f, "total_steps", &st->total_steps)) ||
        (rc = parse_u64(f, "tokens", &st->tokens)) || (rc = parse_u64(f, "flops", &st->flops)) ||
        (rc = parse_u64(f, "seed", &st->seed)))
        return rc;
    const char *wall = joule_st_meta(f, "wall_s"), *id = joule_st_meta(f, "run_id");
    const char *opts = joule_st_meta(f, "train_opts");
    if (!wall || !id || !opts || strlen(id) >= sizeof st->run_id || strlen(opts) >= sizeof st->opts_json)
        return joule_fail(JOULE_ERR_FORMAT, "%s: training state metadata incomplete or too long", joule_st_path(f));
    st->wall_s = strtod(wall, NULL);
    strcpy(st->run_id, id);
    strcpy(st->opts_json, opts);
    return JOULE_OK;
}

static int expect_format(const joule_st_file *f, const char *format) {
    int rc = joule_st_expect_meta(f, "format", format);
    if (!rc) rc = joule_st_expect_meta(f, "format_version", JOULE_FORMAT_VERSION);
    return rc;
}

int joule_checkpoint_load(joule_model **out, const char *path, joule_train_state *st) {
    *out = NULL;
    joule_st_file *f;
    int rc = joule_st_open(&f, path);
    if (rc) return rc;
    joule_model *m = NULL;
    joule_config cfg;
    if ((rc = expect_format(f, "joule"))) goto fail;
    const char *cfg_json = joule_st_meta(f, "config");
    if (!cfg_json) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: metadata 'config' missing", path);
        goto fail;
    }
    if ((rc = joule_config_from_json(&cfg, cfg_json, path))) goto fail;
    if ((rc = joule_model_create(&m, &cfg))) goto fail;
    if (joule_st_count(f) != (size_t)m->n_tensors) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: %zu tensors, the config needs %d", path, joule_st_count(f),
                        m->n_tensors);
        goto fail;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        const float *src;
        if ((rc = joule_st_expect_f32(f, t->name, t->shape, t->ndim, &src))) goto fail;
        memcpy(m->params + t->offset, src, t->numel * sizeof(float));
    }
    if (st && (rc = read_state(f, st))) goto fail;
    joule_st_close(f);
    *out = m;
    return JOULE_OK;
fail:
    joule_model_free(m);
    joule_st_close(f);
    return rc;
}

int joule_checkpoint_load_optim(const char *path, const joule_model *m, joule_adamw *opt,
                                joule_train_state *st) {
    char *opath = joule_checkpoint_optim_path(path);
    if (!opath) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    joule_st_file *f = NULL, *wf = NULL;
    joule_train_state wst;
    int rc = joule_st_open(&f, opath);
    if (rc) goto done;
    if ((rc = expect_format(f, "joule-optim")) || (rc = read_state(f, st))) goto done;
    if (!joule_st_meta(f, "step")) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: no training state", opath);
        goto done;
    }
    /* The weights file must come from the same run and step. */
    if ((rc = joule_st_open(&wf, path)) || (rc = read_state(wf, &wst))) goto done;
    if (strcmp(wst.run_id, st->run_id) != 0 || wst.step != st->step) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: optimizer state (run %s, step %" PRIu64
                        ") does not match the weights (run %s, step %" PRIu64 ")",
                        opath, st->run_id, st->step, wst.run_id, wst.step);
        goto done;
    }
    if (joule_st_count(f) != 2 * (size_t)m->n_tensors) {
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: %zu tensors, the model needs %d", opath, joule_st_count(f),
                        2 * m->n_tensors);
        goto done;
    }
    uint64_t t;
    if ((rc = parse_u64(f, "adam_t", &t))) goto done;
    if ((rc = joule_adamw_init(opt, m->n_params))) goto done;
    opt->t = t;
    char name[128];
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *ti = &m->tensors[i];
        const float *src;
        snprintf(name, sizeof name, "m.%s", ti->name);
        if ((rc = joule_st_expect_f32(f, name, ti->shape, ti->ndim, &src))) break;
        memcpy(opt->m + ti->offset, src, ti->numel * sizeof(float));
        snprintf(name, sizeof name, "v.%s", ti->name);
        if ((rc = joule_st_expect_f32(f, name, ti->shape, ti->ndim, &src))) break;
        memcpy(opt->v + ti->offset, src, ti->numel * sizeof(float));
    }
    if (rc) joule_adamw_free(opt);
done:
    joule_st_close(wf);
    joule_st_close(f);
    free(opath);
    return rc;
}
