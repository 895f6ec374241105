/* Training options: their defaults, the options a run saves in its checkpoint, and the
 * rules by which a resume takes them back. One table names the saved options, so what is
 * written and what is read cannot drift apart. */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "joule/dist.h"
#include "joule/train.h"

void joule_train_opts_init(joule_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch = 8;
    o->accum = 1;
    o->seed = 1;
    o->adam = joule_adamw_defaults();
    o->adam.warmup_steps = JOULE_TRAIN_WARMUP_AUTO;
    o->eval_every = 100;
    o->eval_windows = 64;
}

int joule_train_ranks(const joule_train_opts *o) { return o->data_parallel ? joule_dist_size() : 1; }

int joule_train_warmup_steps(const joule_train_opts *o, const joule_config *c) {
    if (o->adam.warmup_steps != JOULE_TRAIN_WARMUP_AUTO) return o->adam.warmup_steps;
    uint64_t total = joule_train_plan_steps(o, c);
    return (int)(total / 5 < 100 ? total / 5 : 100);
}

enum { INT, REAL, TOTAL };

/* The saved options in the order they are written (the checkpoint's bytes depend on it). */
static const struct {
    const char *key;
    int kind;       /* INT or REAL field of joule_train_opts; TOTAL: the schedule length */
    size_t off;
    double lo, hi;  /* the range the option accepts; a saved value outside it is refused */
    unsigned given; /* options that, given to the resume, keep the field as given */
} SAVED[] = {
    {"batch", INT, offsetof(joule_train_opts, batch), 1, 1 << 16, JOULE_TRAIN_GIVEN_BATCH},
    {"accum", INT, offsetof(joule_train_opts, accum), 1, 1 << 16, JOULE_TRAIN_GIVEN_ACCUM},
    {"seq", INT, offsetof(joule_train_opts, seq), 1, 1 << 16, JOULE_TRAIN_GIVEN_SEQ},
    {"total_steps", TOTAL, 0, 0, 0, 0},
    {"lr", REAL, offsetof(joule_train_opts, adam.lr), JOULE_LR_MIN, JOULE_LR_MAX, JOULE_TRAIN_GIVEN_LR},
    /* a new peak brings its own floor */
    {"min_lr", REAL, offsetof(joule_train_opts, adam.min_lr), 0, JOULE_LR_MAX,
     JOULE_TRAIN_GIVEN_LR | JOULE_TRAIN_GIVEN_MIN_LR},
    /* no option sets the betas and eps: always the saved ones */
    {"beta1", REAL, offsetof(joule_train_opts, adam.beta1), 0, 0.99999, 0},
    {"beta2", REAL, offsetof(joule_train_opts, adam.beta2), 0, 0.99999, 0},
    {"eps", REAL, offsetof(joule_train_opts, adam.eps), 1e-30, 1, 0},
    {"weight_decay", REAL, offsetof(joule_train_opts, adam.weight_decay), 0, 100, JOULE_TRAIN_GIVEN_WEIGHT_DECAY},
    {"grad_clip", REAL, offsetof(joule_train_opts, adam.grad_clip), 0, 1e6, JOULE_TRAIN_GIVEN_GRAD_CLIP},
    {"warmup_steps", INT, offsetof(joule_train_opts, adam.warmup_steps), 0, INT32_MAX, JOULE_TRAIN_GIVEN_WARMUP},
};
#define N_SAVED (sizeof SAVED / sizeof SAVED[0])

char *joule_train_opts_to_json(const joule_train_opts *o, int seq, uint64_t total_steps, int frozen) {
    joule_train_opts w = *o;
    w.seq = seq;
    cJSON *j = cJSON_CreateObject();
    for (size_t i = 0; i < N_SAVED; i++) {
        const char *field = (const char *)&w + SAVED[i].off;
        double v = SAVED[i].kind == TOTAL ? (double)total_steps
                   : SAVED[i].kind == INT ? *(const int *)field
                                          : joule_float_for_json(*(const float *)field);
        cJSON_AddNumberToObject(j, SAVED[i].key, v);
    }
    if (o->sample_windows) cJSON_AddStringToObject(j, "windows", o->windows_name ? o->windows_name : "custom");
    if (frozen) cJSON_AddNumberToObject(j, "frozen_tensors", frozen);
    /* the batches a step sees depend on the ranks (accum per rank); a single process writes
     * nothing, so its checkpoints are byte-identical to those before data parallelism */
    if (joule_train_ranks(o) > 1) cJSON_AddNumberToObject(j, "ranks", joule_train_ranks(o));
    /* expert parallelism draws other batches than data parallelism over as many ranks */
    if (joule_train_ranks(o) > 1 && o->expert_parallel) cJSON_AddNumberToObject(j, "expert_parallel", 1);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

int joule_train_opts_resume(joule_train_opts *o, const joule_train_state *st, unsigned given, const char *path) {
    cJSON *saved = cJSON_Parse(st->opts_json);
    int rc = JOULE_OK;
    for (size_t i = 0; i < N_SAVED && saved && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(saved, SAVED[i].key);
        if (SAVED[i].kind == TOTAL || (given & SAVED[i].given) || !v) continue;
        double x = v->valuedouble;
        char *field = (char *)o + SAVED[i].off;
        if (!cJSON_IsNumber(v) || !(x >= SAVED[i].lo && x <= SAVED[i].hi))
            rc = joule_fail(JOULE_ERR_ARG, "%s: saved option '%s' is not a number in [%g, %g]", path, SAVED[i].key,
                            SAVED[i].lo, SAVED[i].hi);
        else if (SAVED[i].kind == REAL) *(float *)field = (float)x;
        else if (x != (double)(int)x)
            rc = joule_fail(JOULE_ERR_ARG, "%s: saved option '%s' is not a whole number", path, SAVED[i].key);
        else *(int *)field = (int)x;
    }
    cJSON_Delete(saved);
    if (rc) return rc;
    if (!(given & JOULE_TRAIN_GIVEN_SEED)) o->seed = st->seed;
    if (!(given & JOULE_TRAIN_GIVEN_BUDGET)) o->max_steps = st->total_steps;
    return JOULE_OK;
}
