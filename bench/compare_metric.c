/* The discontinuous metric of the comparison: exact match of the next 8 bytes under greedy
 * decoding. All-or-nothing per prompt, so it can sit near zero and then rise sharply while
 * bits-per-byte improves smoothly (the "emergence" the report puts side by side). */
#include <inttypes.h>
#include <stdlib.h>

#include "joule/compare.h"
#include "joule/data.h"
#include "joule/retro.h"
#include "joule/sample.h"

typedef struct {
    const uint8_t *want;
    int matched;
} em_state;

/* Stops generation at the first wrong byte: the metric gives no partial credit. */
static int on_token(void *ctx, int32_t token) {
    em_state *s = ctx;
    if (token != s->want[s->matched]) return 1;
    s->matched++;
    return 0;
}

int joule_exact_match(const joule_model *m, struct joule_retro_db *db, const char *val_path, int prompt, int windows,
                      double *rate, uint64_t *hits) {
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
    const joule_sampler greedy = {0.0f, 0, 1.0f};
    /* windows evenly spaced over the file: the same prompts for every model */
    const uint64_t room = t.n_tokens - span;
    for (int w = 0; w < windows && !rc; w++) {
        uint64_t start = windows > 1 ? room * (uint64_t)w / (uint64_t)(windows - 1) : 0;
        em_state s = {t.tok + start + prompt, 0};
        if (joule_config_has_cca(&m->cfg)) {
            joule_retro_gen_stats st;
            /* the prompt's place on its document's chunk grid, so its chunks are the database's */
            const int phase = (int)((start - t.doc_offsets[joule_tokens_doc_at(&t, start)]) % (uint64_t)m->cfg.retro.chunk);
            rc = joule_retro_generate(m, db, t.tok + start, prompt, phase, JOULE_COMPARE_EM_BYTES, &greedy, 1, on_token,
                                      &s, &st);
        } else {
            rc = joule_generate(m, t.tok + start, prompt, JOULE_COMPARE_EM_BYTES, &greedy, 1, on_token, &s);
        }
        if (s.matched == JOULE_COMPARE_EM_BYTES) (*hits)++;
    }
    joule_tokens_close(&t);
    if (rc) return rc;
    *rate = (double)*hits / windows;
    return JOULE_OK;
}
