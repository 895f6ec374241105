/* Writing model and optimizer checkpoints (reading: core/checkpoint_read.c).
 *
 * A save must survive a kill at any instant, so the optimizer file of the previous step is
 * kept until the new pair is complete (docs/FORMATS.md §7):
 *   1. the new optimizer state goes to <stem>.optim.next.safetensors (atomic write);
 *   2. the weights replace <stem>.safetensors (atomic write): the commit point;
 *   3. the .next file is renamed onto <stem>.optim.safetensors.
 * Before 2 the old weights pair with the old optimizer file; after it the new weights pair
 * with the .next file until 3 lands; the reader looks in both. */
#define _GNU_SOURCE
#include "joule/checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "joule/safetensors.h"

/* <path without .safetensors><suffix>; NULL when out of memory. */
static char *sibling_path(const char *path, const char *suffix) {
    size_t n = strlen(path);
    const char *ext = ".safetensors";
    size_t e = strlen(ext);
    if (n > e && strcmp(path + n - e, ext) == 0) n -= e;
    char *out = NULL;
    if (asprintf(&out, "%.*s%s", (int)n, path, suffix) < 0) out = NULL;
    return out;
}

char *joule_checkpoint_optim_path(const char *path) { return sibling_path(path, ".optim.safetensors"); }

char *joule_checkpoint_optim_next_path(const char *path) { return sibling_path(path, ".optim.next.safetensors"); }

static int add_u64_meta(joule_st_writer *w, const char *key, uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return joule_st_writer_add_meta(w, key, buf);
}

/* No wall time: two identical runs must write identical files (it goes to the log). */
static int add_state_meta(joule_st_writer *w, const joule_train_state *st) {
    int rc;
    if ((rc = add_u64_meta(w, "step", st->step)) || (rc = add_u64_meta(w, "total_steps", st->total_steps)) ||
        (rc = add_u64_meta(w, "tokens", st->tokens)) || (rc = add_u64_meta(w, "flops", st->flops)) ||
        (rc = add_u64_meta(w, "seed", st->seed)) || (rc = joule_st_writer_add_meta(w, "run_id", st->run_id)) ||
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

static int write_optim(const joule_model *m, const char *opath, const joule_adamw *opt,
                       const joule_train_state *st) {
    joule_st_writer *w;
    int rc = joule_st_writer_new(&w);
    if (rc) return rc;
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
    return rc;
}

int joule_checkpoint_save(const joule_model *m, const char *path, const joule_adamw *opt,
                          const joule_train_state *st) {
    if (!opt || !st) return write_weights(m, path, NULL);
    char *cur = joule_checkpoint_optim_path(path), *next = joule_checkpoint_optim_next_path(path);
    int rc = cur && next ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = write_optim(m, next, opt, st);
    /* weights that did not land (a full disk) leave the old pair standing: drop the half */
    if (!rc && (rc = write_weights(m, path, st)) != JOULE_OK) unlink(next);
    if (!rc) rc = joule_rename_durable(next, cur);
    free(cur);
    free(next);
    return rc;
}

/* Training state of a checkpoint file; false when it cannot be read or has none. */
static bool state_of(const char *path, joule_train_state *st, bool optim) {
    joule_st_file *f;
    if (joule_st_open(&f, path) != JOULE_OK) return false;
    const char *id = joule_st_meta(f, "run_id"), *step = joule_st_meta(f, "step");
    bool ok = id && step && strlen(id) < sizeof st->run_id && joule_st_meta(f, "format") &&
              strcmp(joule_st_meta(f, "format"), optim ? "joule-optim" : "joule") == 0;
    if (ok) {
        snprintf(st->run_id, sizeof st->run_id, "%s", id);
        st->step = strtoull(step, NULL, 10);
    }
    joule_st_close(f);
    return ok;
}

int joule_checkpoint_recover(const char *path) {
    char *cur = joule_checkpoint_optim_path(path), *next = joule_checkpoint_optim_next_path(path);
    int rc = cur && next ? JOULE_OK : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    struct stat sb;
    joule_train_state w, n;
    if (!rc && stat(next, &sb) == 0 && state_of(path, &w, false)) {
        bool pairs = state_of(next, &n, true) && strcmp(w.run_id, n.run_id) == 0 && w.step == n.step;
        /* pairs: the save was killed after its weights landed, so finish it; else it was
         * killed before, and the half it left is dropped */
        if (pairs) rc = joule_rename_durable(next, cur);
        else if (unlink(next) != 0) rc = joule_fail(JOULE_ERR_IO, "%s: cannot remove: %s", next, strerror(errno));
    }
    free(cur);
    free(next);
    return rc;
}
