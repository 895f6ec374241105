/* joule/serve.h — continuous batching: many generation requests over one model.
 *
 * A joule_sched holds up to max_batch running sequences (each its own joule_decoder) and a
 * bounded queue of waiting requests. joule_sched_step is one scheduling step:
 *   1. queued requests take free slots (admission happens only here, at step boundaries);
 *   2. every running sequence that has a token to feed advances by one token, all of them
 *      in one joule_decoder_step_batch, and samples its next token;
 *   3. admitted prompts are prefilled (joule_decoder_batch_prefill), oldest first, while the
 *      step's token budget (step_tokens, counting the decode rows of 2) lasts; the first
 *      prefill of a step always runs, so a prompt longer than the budget still starts;
 *      each prefilled sequence samples its first token in the same step.
 * A sequence that finishes (max_tokens, the end-of-document byte, its on_token asking to
 * stop, or cancellation) leaves its slot in the step it finishes, and on_finish is called.
 * Sampling is per request (its sampler, its seed's generator), so a request's tokens do not
 * depend on what else is in the batch: with max_batch >= 2 every product runs on the
 * batch's packed weights, whose rows' bits do not depend on the other rows (model.h), and
 * greedy output equals joule_generate's (whose gemv/sgemm products differ from those only
 * by float rounding; tests/test_serve_sched.c checks the tokens). When a
 * sequence's cache fills, its cache is refilled from the last ctx/2 tokens as
 * joule_generate does (the refill counts as a prefill).
 *
 * Not thread-safe: one thread calls submit, cancel and step, or the caller locks.
 * Ownership: joule_sched_create returns a scheduler freed with joule_sched_free; the model
 * (and whatever the feeder refers to) must outlive it. Requests' prompts are copied.
 */
#ifndef JOULE_SERVE_H
#define JOULE_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "joule/model.h"
#include "joule/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How a sequence's tokens reach its decoder when the model needs more than its tokens
 * (RETRO's live retrieval: joule_retro_feeder). Per sequence: begin returns its state
 * (NULL: out of memory) for a history of up to cap tokens; append is told every token
 * (prompt, then generated); before_step runs before the last appended token is fed at
 * d->pos; before_window runs after d was reset, before hist[*w0 ..) is prefilled: it
 * chooses *w0 >= from and prepares d. All but ctx may be NULL (nothing to do). */
typedef struct {
    void *ctx;
    void *(*begin)(void *ctx, joule_decoder *d, size_t cap);
    void (*end)(void *seq);
    void (*append)(void *seq, int32_t token);
    int (*before_step)(void *seq, joule_decoder *d);
    int (*before_window)(void *seq, joule_decoder *d, size_t from, size_t *w0);
} joule_sched_feeder;

typedef struct {
    int max_batch;   /* sequences running at once (>= 1) */
    int max_queue;   /* requests waiting for a slot (>= 0); submit fails beyond it */
    int step_tokens; /* token budget of one step: decode rows + prefill tokens (>= 1) */
    const joule_sched_feeder *feeder; /* NULL: tokens only (dense, MoE, RETRO without db) */
} joule_sched_opts;

typedef enum {
    JOULE_FINISH_LENGTH = 0, /* max_tokens generated */
    JOULE_FINISH_STOP = 1,   /* end of document, or on_token asked to stop */
    JOULE_FINISH_CANCEL = 2, /* joule_sched_cancel */
    JOULE_FINISH_ERROR = 3   /* status != JOULE_OK; joule_last_error() of the stepping thread */
} joule_sched_finish;

typedef struct {
    const uint8_t *prompt; /* copied by submit; n_prompt 0: starts as a document */
    int n_prompt;          /* 0 .. ctx (the caller rejects longer prompts) */
    int max_tokens;        /* >= 1 */
    joule_sampler sampler;
    uint64_t seed;
    bool stop_at_eod;      /* byte 0 ends the request (not passed to on_token) */
    /* Each generated token; non-zero stops the request (JOULE_FINISH_STOP) after it. */
    int (*on_token)(void *ctx, int32_t token);
    /* Once, when the request leaves (or is dropped by joule_sched_free: CANCEL). */
    void (*on_finish)(void *ctx, joule_sched_finish why, int status);
    void *ctx;
} joule_sched_request;

typedef struct {
    uint64_t steps, decode_tokens, prefill_tokens, generated, finished, rejected;
    int running, queued, last_batch; /* last_batch: decode rows of the last step */
} joule_sched_stats;

typedef struct joule_sched joule_sched;

int joule_sched_create(joule_sched **out, const joule_model *m, const joule_sched_opts *o);
/* Cancels (on_finish CANCEL) everything still queued or running, then frees. */
void joule_sched_free(joule_sched *s);
/* Whether submit would find the queue full (the caller answers 429 then). */
bool joule_sched_full(const joule_sched *s);
/* Queues a request; *id names it for cancel. JOULE_ERR_ARG for a bad request,
 * JOULE_ERR_RUNTIME when the queue is full (counted in stats.rejected). */
int joule_sched_submit(joule_sched *s, const joule_sched_request *r, uint64_t *id);
/* The request leaves at the next step (on_finish CANCEL then); unknown ids are ignored. */
void joule_sched_cancel(joule_sched *s, uint64_t id);
/* One step (above). Returns JOULE_OK (a failing sequence finishes with ERROR; the others
 * go on). *busy (may be NULL): whether anything is queued or running afterwards. */
int joule_sched_step(joule_sched *s, bool *busy);
joule_sched_stats joule_sched_get_stats(const joule_sched *s);

#ifdef __cplusplus
}
#endif
#endif
