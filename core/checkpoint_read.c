/* Reading model and optimizer checkpoints. Everything a file claims (config sizes, tensor
 * shapes and offsets, state) is checked against the file before memory is allocated for
 * it, so a small hostile file cannot make joule allocate what its config says. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joule/checkpoint.h"
#include "joule/quant.h"
#include "joule/safetensors.h"

static int parse_u64(const joule_st_file *f, const char *key, uint64_t *out) {
    const char *s = joule_st_meta(f, key);
    if (!s) return joule_fail(JOULE_ERR_FORMAT, "%s: metadata '%s' missing", joule_st_path(f), key);
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || (v == ULLONG_MAX && strcmp(s, "18446744073709551615") != 0))
        return joule_fail(JOULE_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an unsigned integer",
                          joule_st_path(f), key, joule_q(s));
    *out = v;
    return JOULE_OK;
}

/* A run id is printed and compared: letters, digits, '-' and '_' only. */
static bool run_id_ok(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n >= sizeof ((joule_train_state *)0)->run_id) return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') ||
              id[i] == '-' || id[i] == '_'))
            return false;
    return true;
}

static int read_state(const joule_st_file *f, joule_train_state *st) {
    memset(st, 0, sizeof *st);
    if (!joule_st_meta(f, "step")) return JOULE_OK; /* weights saved outside training */
    int rc;
    if ((rc = parse_u64(f, "step", &st->step)) || (rc = parse_u64(f, "total_steps", &st->total_steps)) ||
        (rc = parse_u64(f, "tokens", &st->tokens)) || (rc = parse_u64(f, "flops", &st->flops)) ||
        (rc = parse_u64(f, "seed", &st->seed)))
        return rc;
    /* wall_s, written by earlier versions, is ignored */
    const char *id = joule_st_meta(f, "run_id"), *opts = joule_st_meta(f, "train_opts");
    if (!id || !opts || strlen(opts) >= sizeof st->opts_json)
        return joule_fail(JOULE_ERR_FORMAT, "%s: training state metadata incomplete or too long", joule_st_path(f));
    if (!run_id_ok(id))
        return joule_fail(JOULE_ERR_FORMAT, "%s: run_id '%s' is not 1 to 39 letters, digits, '-' or '_'",
                          joule_st_path(f), joule_q(id));
    strcpy(st->run_id, id);
    strcpy(st->opts_json, opts);
    return JOULE_OK;
}

static int expect_format(const joule_st_file *f, const char *format) {
    int rc = joule_st_expect_meta(f, "format", format);
    if (!rc) rc = joule_st_expect_meta(f, "format_version", JOULE_FORMAT_VERSION);
    return rc;
}

/* The file holds exactly the tensors <prefix><name> of m for each prefix, F32, with m's
 * shapes; m may be a description without an arena. */
static int check_tensors(const joule_st_file *f, const joule_model *m, const char *const *prefix, int n_prefix) {
    if (joule_st_count(f) != (size_t)m->n_tensors * (size_t)n_prefix)
        return joule_fail(JOULE_ERR_FORMAT, "%s: %zu tensors, the config needs %zu", joule_st_path(f), joule_st_count(f),
                          (size_t)m->n_tensors * (size_t)n_prefix);
    char name[160];
    for (int i = 0; i < m->n_tensors; i++)
        for (int p = 0; p < n_prefix; p++) {
            const float *src;
            snprintf(name, sizeof name, "%s%s", prefix[p], m->tensors[i].name);
            int rc = joule_st_expect_f32(f, name, m->tensors[i].shape, m->tensors[i].ndim, &src);
            if (rc) return rc;
        }
    return JOULE_OK;
}

/* Copies tensors <prefix><name> of f into dst at m's offsets (checked by check_tensors). */
static void copy_tensors(const joule_st_file *f, const joule_model *m, const char *prefix, float *dst) {
    char name[160];
    for (int i = 0; i < m->n_tensors; i++) {
        const joule_param_info *t = &m->tensors[i];
        const float *src;
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        joule_st_expect_f32(f, name, t->shape, t->ndim, &src);
        memcpy(dst + t->offset, src, t->numel * sizeof(float));
    }
}

/* The config of a weights file, validated, and its tensors checked against a description
 * of that config (no arena yet). */
static int check_weights(const joule_st_file *f, joule_config *cfg, joule_precision *prec) {
    const char *path = joule_st_path(f);
    int rc = expect_format(f, "joule");
    if (rc) return rc;
    const char *cfg_json = joule_st_meta(f, "config");
    if (!cfg_json) return joule_fail(JOULE_ERR_FORMAT, "%s: metadata 'config' missing", path);
    if ((rc = joule_config_from_json(cfg, cfg_json, path))) return rc;
    joule_model *d = NULL;
    if ((rc = joule_model_describe(&d, cfg))) return joule_fail(rc, "%s: %s", path, joule_last_error());
    static const char *const none[1] = {""};
    if (!(rc = joule_quant_file_precision(f, prec)))
        rc = *prec == JOULE_PREC_F32 ? check_tensors(f, d, none, 1) : joule_quant_check_file(f, d, *prec);
    joule_model_free(d);
    return rc;
}

int joule_checkpoint_load(joule_model **out, const char *path, joule_train_state *st) {
    *out = NULL;
    joule_st_file *f;
    int rc = joule_st_open(&f, path);
    if (rc) return rc;
    joule_model *m = NULL;
    joule_config cfg;
    joule_precision prec = JOULE_PREC_F32;
    if (!(rc = check_weights(f, &cfg, &prec)) && st) rc = read_state(f, st);
    /* the tensors fit in the file, so the arena is no larger than the file */
    if (!rc && (rc = joule_model_create(&m, &cfg))) rc = joule_fail(rc, "%s: %s", path, joule_last_error());
    if (!rc && prec == JOULE_PREC_F32) copy_tensors(f, m, "", m->params);
    else if (!rc) rc = joule_quant_load_file(f, m, prec);
    joule_st_close(f);
    if (rc) joule_model_free(m);
    else *out = m;
    return rc;
}

/* Opens candidate optimizer file opath when its training state is (run, step) of the
 * weights; *f stays NULL when the file is absent or belongs to another step. */
static int open_matching(const char *opath, const joule_train_state *w, joule_st_file **f, joule_train_state *st) {
    *f = NULL;
    int rc = joule_st_open(f, opath);
    if (rc) return rc;
    if (!(rc = expect_format(*f, "joule-optim")) && !(rc = read_state(*f, st)) && !joule_st_meta(*f, "step"))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: no training state", opath);
    if (!rc && (strcmp(w->run_id, st->run_id) != 0 || w->step != st->step))
        rc = joule_fail(JOULE_ERR_FORMAT, "%s: optimizer state (run %s, step %" PRIu64
                        ") does not match the weights (run %s, step %" PRIu64 ")",
                        opath, st->run_id, st->step, w->run_id, w->step);
    if (rc) {
        joule_st_close(*f);
        *f = NULL;
    }
    return rc;
}

/* The optimizer file that pairs with the weights at path: <stem>.optim.safetensors, or
 * <stem>.optim.next.safetensors when a save was killed between its last two renames. */
static int find_optim(const char *path, const joule_train_state *w, joule_st_file **f, joule_train_state *st) {
    char *cur = joule_checkpoint_optim_path(path), *next = joule_checkpoint_optim_next_path(path);
    if (!cur || !next) {
        free(cur);
        free(next);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    int rc = open_matching(cur, w, f, st);
    if (rc) {
        char why[1024]; /* the current file's problem is the one to report */
        snprintf(why, sizeof why, "%s", joule_last_error());
        if (open_matching(next, w, f, st) != JOULE_OK) joule_fail(rc, "%s", why);
        else rc = JOULE_OK;
    }
    free(cur);
    free(next);
    return rc;
}

int joule_checkpoint_load_optim(const char *path, const joule_model *m, joule_adamw *opt,
                                joule_train_state *st) {
    joule_st_file *wf = NULL, *f = NULL;
    joule_train_state wst;
    int rc = joule_st_open(&wf, path);
    if (!rc) rc = read_state(wf, &wst);
    joule_st_close(wf);
    if (rc) return rc;
    if (!wst.run_id[0]) return joule_fail(JOULE_ERR_FORMAT, "%s: no training state to resume", path);
    if ((rc = find_optim(path, &wst, &f, st))) return rc;
    static const char *const mv[2] = {"m.", "v."};
    uint64_t t;
    if (!(rc = check_tensors(f, m, mv, 2)) && !(rc = parse_u64(f, "adam_t", &t)) &&
        !(rc = joule_adamw_init(opt, m->n_params))) {
        opt->t = t;
        copy_tensors(f, m, "m.", opt->m);
        copy_tensors(f, m, "v.", opt->v);
    }
    joule_st_close(f);
    return rc;
}
