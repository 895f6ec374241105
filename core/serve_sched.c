/* Continuous batching over joule_decoder_step_batch (joule/serve.h states the policy).
 * Slots are fixed at creation (a decoder each), so a step allocates nothing but the
 * history of a request it admits. */
#include <stdlib.h>
#include <string.h>

#include "joule/serve.h"

typedef enum { SLOT_FREE = 0, SLOT_PREFILL, SLOT_DECODE } slot_state;

typedef struct {
    uint64_t id;
    joule_sched_request r; /* r.prompt points at prompt */
    uint8_t *prompt;
    bool cancelled;
} request;

typedef struct {
    slot_state st;
    request q;
    joule_decoder *d;
    void *fs;        /* the feeder's state of this sequence */
    int32_t *hist;   /* prompt (or the document start 0) then generated tokens */
    size_t n, cap;
    joule_rng rng;
    int generated;
    uint64_t order;  /* admission order: prefills go oldest first */
} slot;

struct joule_sched {
    const joule_model *m;
    joule_sched_opts o;
    joule_sched_feeder feeder; /* zeros when none */
    slot *slots;
    joule_decoder **ds;        /* step scratch: the rows of a batched step */
    int32_t *toks;
    int *rows;
    joule_decoder_batch *batch;
    request *queue;            /* ring of max_queue */
    int qhead, qlen;
    float *scratch;            /* joule_sample's 2V */
    uint64_t next_id, admitted;
    joule_sched_stats st;
};

void joule_sched_free(joule_sched *s);

int joule_sched_create(joule_sched **out, const joule_model *m, const joule_sched_opts *o) {
    *out = NULL;
    if (o->max_batch < 1 || o->max_queue < 0 || o->step_tokens < 1)
        return joule_fail(JOULE_ERR_ARG, "scheduler: max_batch %d, max_queue %d, step_tokens %d (need >= 1, >= 0, >= 1)",
                          o->max_batch, o->max_queue, o->step_tokens);
    joule_sched *s = calloc(1, sizeof *s);
    if (!s) return joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the scheduler");
    s->m = m;
    s->o = *o;
    if (o->feeder) s->feeder = *o->feeder;
    s->o.feeder = NULL;
    const size_t B = (size_t)o->max_batch;
    s->slots = calloc(B, sizeof *s->slots);
    s->ds = calloc(B, sizeof *s->ds);
    s->toks = calloc(B, sizeof *s->toks);
    s->rows = calloc(B, sizeof *s->rows);
    s->queue = calloc((size_t)o->max_queue + 1, sizeof *s->queue);
    s->scratch = malloc(2 * (size_t)m->cfg.vocab * sizeof *s->scratch);
    int rc = !s->slots || !s->ds || !s->toks || !s->rows || !s->queue || !s->scratch
                 ? joule_fail(JOULE_ERR_NOMEM, "out of memory allocating the scheduler")
                 : joule_decoder_batch_create(&s->batch, m, o->max_batch);
    for (int i = 0; i < o->max_batch && !rc; i++) rc = joule_decoder_create(&s->slots[i].d, m);
    if (rc) {
        joule_sched_free(s);
        return rc;
    }
    s->next_id = 1;
    *out = s;
    return JOULE_OK;
}

static void request_done(request *q, joule_sched_finish why, int status) {
    if (q->r.on_finish) q->r.on_finish(q->r.ctx, why, status);
    free(q->prompt);
    memset(q, 0, sizeof *q);
}

/* The sequence leaves its slot now: the slot is free for the next admission. */
static void finish(joule_sched *s, slot *q, joule_sched_finish why, int status) {
    if (q->fs && s->feeder.end) s->feeder.end(q->fs);
    q->fs = NULL;
    free(q->hist);
    q->hist = NULL;
    q->n = q->cap = 0;
    q->st = SLOT_FREE;
    s->st.finished++;
    request_done(&q->q, why, status);
}

void joule_sched_free(joule_sched *s) {
    if (!s) return;
    for (int i = 0; s->slots && i < s->o.max_batch; i++) {
        if (s->slots[i].st != SLOT_FREE) finish(s, &s->slots[i], JOULE_FINISH_CANCEL, JOULE_OK);
        joule_decoder_free(s->slots[i].d);
    }
    for (; s->queue && s->qlen > 0; s->qlen--, s->qhead = (s->qhead + 1) % (s->o.max_queue + 1))
        request_done(&s->queue[s->qhead], JOULE_FINISH_CANCEL, JOULE_OK);
    joule_decoder_batch_free(s->batch);
    free(s->slots);
    free(s->ds);
    free(s->toks);
    free(s->rows);
    free(s->queue);
    free(s->scratch);
    free(s);
}

bool joule_sched_full(const joule_sched *s) { return s->qlen >= s->o.max_queue; }

int joule_sched_submit(joule_sched *s, const joule_sched_request *r, uint64_t *id) {
    const int T = s->m->cfg.ctx;
    if (r->n_prompt < 0 || r->n_prompt > T || (r->n_prompt && !r->prompt))
        return joule_fail(JOULE_ERR_ARG, "a prompt of %d tokens (this model's context holds %d)", r->n_prompt, T);
    if (r->max_tokens < 1 || r->max_tokens > INT32_MAX / 2)
        return joule_fail(JOULE_ERR_ARG, "max_tokens %d (need >= 1)", r->max_tokens);
    if (joule_sched_full(s)) {
        s->st.rejected++;
        return joule_fail(JOULE_ERR_RUNTIME, "the queue is full (%d requests waiting)", s->qlen);
    }
    request q = {.id = s->next_id++, .r = *r};
    if (!(q.prompt = malloc((size_t)r->n_prompt + 1))) return joule_fail(JOULE_ERR_NOMEM, "out of memory queueing a request");
    if (r->n_prompt) memcpy(q.prompt, r->prompt, (size_t)r->n_prompt);
    q.r.prompt = q.prompt;
    s->queue[(s->qhead + s->qlen) % (s->o.max_queue + 1)] = q;
    s->qlen++;
    if (id) *id = q.id;
    return JOULE_OK;
}

void joule_sched_cancel(joule_sched *s, uint64_t id) {
    for (int i = 0; i < s->qlen; i++) {
        request *q = &s->queue[(s->qhead + i) % (s->o.max_queue + 1)];
        if (q->id == id) q->cancelled = true;
    }
    for (int i = 0; i < s->o.max_batch; i++)
        if (s->slots[i].st != SLOT_FREE && s->slots[i].q.id == id) s->slots[i].q.cancelled = true;
}

/* The request's history (the prompt, or the document start 0) in slot q, told to the
 * feeder; the slot waits for its prefill. */
static int admit_one(joule_sched *s, slot *q, request *r) {
    q->q = *r;
    q->generated = 0;
    q->n = 0;
    q->cap = (size_t)r->r.n_prompt + (size_t)r->r.max_tokens + 1;
    joule_rng_seed(&q->rng, r->r.seed);
    q->st = SLOT_PREFILL;
    q->order = s->admitted++;
    if (!(q->hist = malloc(q->cap * sizeof *q->hist)))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory admitting a request of %zu tokens", q->cap);
    if (s->feeder.begin && !(q->fs = s->feeder.begin(s->feeder.ctx, q->d, q->cap)))
        return joule_fail(JOULE_ERR_NOMEM, "out of memory admitting a request");
    if (r->r.n_prompt == 0) q->hist[q->n++] = 0;
    for (int i = 0; i < r->r.n_prompt; i++) q->hist[q->n++] = r->r.prompt[i];
    for (size_t i = 0; s->feeder.append && i < q->n; i++) s->feeder.append(q->fs, q->hist[i]);
    return JOULE_OK;
}

/* Queued requests into free slots, cancelled ones dropped on the way. */
static void admit(joule_sched *s) {
    for (int i = 0; i < s->o.max_batch && s->qlen > 0; i++) {
        slot *q = &s->slots[i];
        if (q->st != SLOT_FREE) continue;
        request r = s->queue[s->qhead];
        s->qhead = (s->qhead + 1) % (s->o.max_queue + 1);
        s->qlen--;
        if (r.cancelled) {
            request_done(&r, JOULE_FINISH_CANCEL, JOULE_OK);
            i--;
            continue;
        }
        int rc = admit_one(s, q, &r);
        if (rc) finish(s, q, JOULE_FINISH_ERROR, rc);
    }
}

/* A sampled token: the request sees it, then stops or waits for the next decode row. */
static void emit(joule_sched *s, slot *q, const float *logits) {
    const int32_t tok = joule_sample(logits, s->m->cfg.vocab, &q->q.r.sampler, &q->rng, s->scratch);
    q->generated++;
    s->st.generated++;
    if (q->q.r.stop_at_eod && tok == 0) {
        finish(s, q, JOULE_FINISH_STOP, JOULE_OK);
        return;
    }
    if (q->q.r.on_token && q->q.r.on_token(q->q.r.ctx, tok)) {
        finish(s, q, JOULE_FINISH_STOP, JOULE_OK);
        return;
    }
    if (q->generated >= q->q.r.max_tokens) {
        finish(s, q, JOULE_FINISH_LENGTH, JOULE_OK);
        return;
    }
    q->hist[q->n++] = tok;
    if (s->feeder.append) s->feeder.append(q->fs, tok);
    q->st = SLOT_DECODE;
}

/* Fills q's reset cache from history index `from` on (the feeder may move the start) and
 * samples the next token. Returns the tokens prefilled. */
static int fill_window(joule_sched *s, slot *q, size_t from) {
    joule_decoder_reset(q->d);
    size_t w0 = from;
    const float *logits;
    int rc = s->feeder.before_window ? s->feeder.before_window(q->fs, q->d, from, &w0) : JOULE_OK;
    if (!rc) rc = joule_decoder_batch_prefill(s->batch, q->d, q->hist + w0, (int)(q->n - w0), &logits);
    if (rc) {
        finish(s, q, JOULE_FINISH_ERROR, rc);
        return 0;
    }
    s->st.prefill_tokens += q->n - w0;
    emit(s, q, logits);
    return (int)(q->n - w0);
}

static void drop_cancelled(joule_sched *s) {
    for (int i = 0; i < s->o.max_batch; i++)
        if (s->slots[i].st != SLOT_FREE && s->slots[i].q.cancelled)
            finish(s, &s->slots[i], JOULE_FINISH_CANCEL, JOULE_OK);
}

/* Every decoding sequence advances by its last token in one batched step; a full cache is
 * refilled from its last ctx/2 tokens instead (as joule_generate). Returns the rows. */
static int decode(joule_sched *s) {
    const int T = s->m->cfg.ctx, V = s->m->cfg.vocab;
    int n = 0, rc;
    for (int i = 0; i < s->o.max_batch; i++) {
        slot *q = &s->slots[i];
        if (q->st != SLOT_DECODE) continue;
        if (q->d->pos >= T) {
            fill_window(s, q, q->n - (size_t)(T / 2 > 0 ? T / 2 : 1));
            continue;
        }
        if (s->feeder.before_step && (rc = s->feeder.before_step(q->fs, q->d))) {
            finish(s, q, JOULE_FINISH_ERROR, rc);
            continue;
        }
        s->ds[n] = q->d;
        s->toks[n] = q->hist[q->n - 1];
        s->rows[n++] = i;
    }
    if (n == 0) return 0;
    const float *logits;
    if ((rc = joule_decoder_step_batch(s->batch, s->ds, n, s->toks, &logits))) {
        for (int j = 0; j < n; j++) finish(s, &s->slots[s->rows[j]], JOULE_FINISH_ERROR, rc);
        return n;
    }
    s->st.decode_tokens += (uint64_t)n;
    for (int j = 0; j < n; j++) emit(s, &s->slots[s->rows[j]], logits + (size_t)j * V);
    return n;
}

/* Admitted prompts, oldest first, while the budget lasts (the first always runs). */
static void prefill(joule_sched *s, int budget) {
    const size_t T = (size_t)s->m->cfg.ctx;
    for (bool first = true;; first = false) {
        slot *q = NULL;
        for (int i = 0; i < s->o.max_batch; i++)
            if (s->slots[i].st == SLOT_PREFILL && (!q || s->slots[i].order < q->order)) q = &s->slots[i];
        if (!q) return;
        const size_t from = q->n > T ? q->n - T : 0;
        const int cost = (int)(q->n - from);
        if (!first && cost > budget) return;
        fill_window(s, q, from);
        budget -= cost;
    }
}

static int count(const joule_sched *s, slot_state st) {
    int k = 0;
    for (int i = 0; i < s->o.max_batch; i++) k += s->slots[i].st == st;
    return k;
}

int joule_sched_step(joule_sched *s, bool *busy) {
    drop_cancelled(s);
    admit(s);
    const int rows = decode(s);
    prefill(s, s->o.step_tokens - rows);
    s->st.steps++;
    s->st.last_batch = rows;
    s->st.queued = s->qlen;
    s->st.running = s->o.max_batch - count(s, SLOT_FREE);
    if (busy) *busy = s->st.running > 0 || s->qlen > 0;
    return JOULE_OK;
}

joule_sched_stats joule_sched_get_stats(const joule_sched *s) {
    joule_sched_stats st = s->st;
    st.queued = s->qlen;
    st.running = s->o.max_batch - count(s, SLOT_FREE);
    return st;
}
