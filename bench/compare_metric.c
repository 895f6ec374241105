/* The discontinuous metric of the comparison: exact match of the next 8 bytes under greedy
 * decoding. All-or-nothing per prompt, so it can sit near zero and then rise sharply while
 * bits-per-byte improves smoothly (the "emergence" the report puts side by side). */
#include <inttypes.h>
#include <stdlib.h>

#include "joule/compare.h"
#include "joule/data.h"

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i; /* ties: the lower byte, deterministically */
    return best;
}

/* Greedy continuation of prompt p[0..P-1]: true when it reproduces want[0..K-1]. Stops at
 * the first wrong byte: the metric gives no partial credit, so the rest would be wasted. */
static int continues(joule_decoder *d, const uint8_t *p, int P, const uint8_t *want, bool *hit) {
    joule_decoder_reset(d);
    const float *logits = NULL;
    int V = d->m->cfg.vocab;
    for (int i = 0; i < P; i++) {
        int rc = joule_decoder_step(d, p[i], &logits);
        if (rc) return rc;
    }
    *hit = false;
    for (int k = 0; k < JOULE_COMPARE_EM_BYTES; k++) {
        int next = argmax(logits, V);
        if (next != want[k]) return JOULE_OK;
        if (k + 1 < JOULE_COMPARE_EM_BYTES) {
            int rc = joule_decoder_step(d, next, &logits);
            if (rc) return rc;
        }
    }
    *hit = true;
    return JOULE_OK;
}

int joule_exact_match(const joule_model *m, const char *val_path, int prompt, int windows, double *rate,
                      uint64_t *hits) {
    *rate = 0;
    *hits = 0;
    if (prompt < 1 || windows < 1)
        return joule_fail(JOULE_ERR_ARG, "exact match needs a prompt of >= 1 byte and >= 1 window (got %d, %d)",
                          prompt, windows);
    if (prompt + JOULE_COMPARE_EM_BYTES > m->cfg.ctx)
        return joule_fail(JOULE_ERR_ARG, "exact match: prompt %d + %d bytes exceed the model's context %d", prompt,
                          JOULE_COMPARE_EM_BYTES, m->cfg.ctx);
    joule_tokens t = {0};
    int rc = joule_tokens_open(&t, val_path);
    if (rc) return rc;
    const uint64_t span = (uint64_t)prompt + JOULE_COMPARE_EM_BYTES;
    if (t.n_tokens < span) {
        rc = joule_fail(JOULE_ERR_ARG, "%s: %" PRIu64 " tokens is too short for one exact-match window of %" PRIu64,
                        val_path, t.n_tokens, span);
        joule_tokens_close(&t);
        return rc;
    }
    joule_decoder *d = NULL;
    if ((rc = joule_decoder_create(&d, m))) {
        joule_tokens_close(&t);
        return rc;
    }
    /* windows evenly spaced over the file: the same prompts for every model */
    const uint64_t room = t.n_tokens - span;
    for (int w = 0; w < windows && !rc; w++) {
        uint64_t start = windows > 1 ? room * (uint64_t)w / (uint64_t)(windows - 1) : 0;
        bool hit = false;
        rc = continues(d, t.tok + start, prompt, t.tok + start + prompt, &hit);
        if (hit) (*hits)++;
    }
    joule_decoder_free(d);
    joule_tokens_close(&t);
    if (rc) return rc;
    *rate = (double)*hits / windows;
    return JOULE_OK;
}
