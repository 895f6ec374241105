/* `joule serve`: the scheduler's loop thread and the life of a request (cli/serve.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "joule/ops.h"
#include "serve.h"

const int srv_codes[SRV_CODES] = {200, 400, 404, 405, 413, 429, 500, 503, 0};

void srv_count(server *s, int code) {
    int k = 0;
    while (k < SRV_CODES - 1 && srv_codes[k] != code) k++;
    s->by_code[k]++;
}

/* Busy energy: a window from the moment a request is accepted while none is open to the
 * moment the last open one is freed (its response sent, or its client gone), so it holds
 * every thread's work on requests: connections, the scheduler, the streams. mu held. */
static void busy_edge(server *s, bool busy) {
    joule_energy_report r;
    if (!s->energy_ok || busy == s->busy) return;
    if (busy) s->busy = joule_energy_window_start(&s->busy_win, &s->meters) == JOULE_OK;
    else {
        if (joule_energy_window_stop(&s->busy_win, &r) == JOULE_OK) {
            s->busy_j += r.joules;
            s->busy_s += r.duration_s;
            s->busy_cpu_s += r.cpu_s;
        }
        s->busy = false;
    }
}

static void req_free(srv_req *r) {
    server *s = r->srv;
    if (r->prev_open) r->prev_open->next_open = r->next_open;
    else s->open_list = r->next_open;
    if (r->next_open) r->next_open->prev_open = r->prev_open;
    pthread_cond_destroy(&r->grew);
    srv_params_free(&r->p);
    free(r->text);
    free(r->out);
    free(r);
}

static void unref(srv_req *r) {
    if (--r->refs > 0) return;
    server *s = r->srv;
    req_free(r);
    if (!s->open_list) busy_edge(s, false);
}

/* Scheduler callback (loop thread, mu held): the byte joins the text; a completed stop
 * string is cut off and ends the request. */
static int on_token(void *ctx, int32_t tok) {
    srv_req *r = ctx;
    const double now = joule_now();
    int stop = 0;
    pthread_mutex_lock(&r->srv->mu);
    if (r->completion_tokens++ == 0) r->t_first = now;
    r->t_last = now;
    if (r->n < r->cap) r->text[r->n++] = (char)(uint8_t)tok;
    for (int i = 0; i < r->p.n_stop && !stop; i++) {
        const size_t k = strlen(r->p.stop[i]);
        if (k <= r->n && memcmp(r->text + r->n - k, r->p.stop[i], k) == 0) {
            r->n -= k;
            stop = 1;
        }
    }
    /* a stream's connection wakes when an event is due (--stream-interval); a whole
     * answer's only at the end (on_finish) */
    const bool wake = r->p.stream && srv_event_due(r);
    pthread_mutex_unlock(&r->srv->mu);
    /* After the unlock: woken under it, the connection preempted this thread on a shared
     * core only to block on the mutex, then again at the unlock (two preemptions an event,
     * docs/BENCH.md). r stays alive: the scheduler holds its reference until on_finish. */
    if (wake) pthread_cond_signal(&r->grew);
    return stop;
}

static void on_finish(void *ctx, joule_sched_finish why, int status) {
    srv_req *r = ctx;
    server *s = r->srv;
    pthread_mutex_lock(&s->mu);
    r->done = true;
    r->why = why;
    r->status = status;
    pthread_cond_signal(&r->grew);
    s->completion_tokens += (uint64_t)r->completion_tokens;
    if (why != JOULE_FINISH_CANCEL && why != JOULE_FINISH_ERROR) {
        const double now = joule_now();
        if (r->completion_tokens > 0) srv_hist_add(&s->ttft, r->t_first - r->t_submit);
        if (r->completion_tokens > 1) srv_hist_add(&s->tpot, (r->t_last - r->t_first) / (r->completion_tokens - 1));
        srv_hist_add(&s->e2e, now - r->t_submit);
    }
    unref(r);
    pthread_mutex_unlock(&s->mu);
}

int srv_submit(server *s, srv_params *p, srv_req **out) {
    *out = NULL;
    if (s->stopping) return 503;
    if (s->st.queued + s->inbox_n >= s->o.sched.max_queue) return 429;
    srv_req *r = calloc(1, sizeof *r);
    if (!r || !(r->text = malloc((size_t)p->max_tokens + 1))) {
        free(r);
        joule_fail(JOULE_ERR_NOMEM, "out of memory accepting a request");
        return 500;
    }
    pthread_cond_init(&r->grew, NULL);
    r->srv = s;
    r->next_open = s->open_list;
    if (s->open_list) s->open_list->prev_open = r;
    s->open_list = r;
    r->p = *p;
    memset(p, 0, sizeof *p);
    r->cap = (size_t)r->p.max_tokens;
    r->num = ++s->next_num;
    r->t_submit = joule_now();
    r->refs = 2;
    if (!r->next_open) busy_edge(s, true); /* the only open request */
    if (s->inbox_tail) s->inbox_tail->next_in = r;
    else s->inbox = r;
    s->inbox_tail = r;
    s->inbox_n++;
    s->prompt_tokens += (uint64_t)r->p.n_prompt;
    pthread_cond_signal(&s->work);
    *out = r;
    return 200;
}

/* Loop thread, mu held: the inbox into the scheduler (its callbacks do not run here). */
static void take_inbox(server *s) {
    for (srv_req *r = s->inbox, *next; r; r = next) {
        next = r->next_in;
        joule_sched_request q = {.prompt = (const uint8_t *)r->p.prompt, .n_prompt = r->p.n_prompt,
                                 .max_tokens = r->p.max_tokens,
                                 .sampler = {.temperature = r->p.temperature, .top_k = 0, .top_p = r->p.top_p},
                                 .seed = r->p.have_seed ? r->p.seed : r->num, .stop_at_eod = !r->p.ignore_eos,
                                 .on_token = on_token, .on_finish = on_finish, .ctx = r};
        if (joule_sched_submit(s->sched, &q, &r->id)) { /* cannot happen: srv_submit kept room */
            r->done = true;
            r->why = JOULE_FINISH_ERROR;
            r->status = JOULE_ERR_RUNTIME;
            unref(r);
        }
    }
    s->inbox = s->inbox_tail = NULL;
    s->inbox_n = 0;
    for (srv_req *r = s->cancels, *next; r; r = next) {
        next = r->next_cancel;
        joule_sched_cancel(s->sched, r->id);
        unref(r); /* the cancel list's ref */
    }
    s->cancels = NULL;
}

void srv_release(srv_req *r, bool disconnected) {
    if (!r->done && !r->cancelling) { /* the loop thread cancels it before its next step */
        r->cancelling = true;
        r->refs++;
        r->next_cancel = r->srv->cancels;
        r->srv->cancels = r;
        pthread_cond_signal(&r->srv->work);
    }
    if (disconnected) r->srv->disconnects++;
    unref(r);
}

/* Length of s[0..n) short of a UTF-8 character whose last bytes have not come yet. */
static size_t utf8_whole(const char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        const unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

size_t srv_streamable(const srv_req *r) {
    if (r->done) return r->n;
    size_t hold = 0;
    for (int i = 0; i < r->p.n_stop; i++) {
        const size_t k = strlen(r->p.stop[i]);
        if (k - 1 > hold) hold = k - 1;
    }
    size_t n = r->n > hold ? r->n - hold : 0;
    n = utf8_whole(r->text, n);
    return n > r->sent ? n : r->sent;
}

bool srv_event_due(const srv_req *r) {
    return r->done || srv_streamable(r) >= r->sent + (size_t)r->srv->o.stream_interval;
}

void srv_wait(srv_req *r) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += 1;
    pthread_cond_timedwait(&r->grew, &r->srv->mu, &t);
}

/* One step whenever there is work, outside the lock (the callbacks wake the connections). */
static void *loop(void *arg) {
    server *s = arg;
    /* OpenMP's team size is per thread: a new thread starts from the default (every core),
     * not from what main set, and a team larger than --threads contends with the
     * connections and spin-waits between steps (CPU time the energy meters count). */
    joule_set_threads(s->o.threads);
    pthread_mutex_lock(&s->mu);
    s->loop_threads = joule_get_threads();
    while (!s->stopping) {
        take_inbox(s);
        s->st = joule_sched_get_stats(s->sched);
        if (s->st.running + s->st.queued == 0) {
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        joule_sched_step(s->sched, NULL);
        pthread_mutex_lock(&s->mu);
        s->st = joule_sched_get_stats(s->sched);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int srv_init(server *s, const joule_model *m, const char *model_id, const srv_opts *o, joule_energy *meters) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    s->m = m;
    s->o = *o;
    snprintf(s->model_id, sizeof s->model_id, "%s", model_id);
    if (meters) {
        s->meters = *meters;
        s->energy_ok = joule_energy_window_start(&s->win, &s->meters) == JOULE_OK;
    }
    int rc = joule_sched_create(&s->sched, m, &o->sched);
    if (rc) return rc;
    if ((errno = pthread_create(&s->loop, NULL, loop, s)))
        return joule_fail(JOULE_ERR_RUNTIME, "cannot start the scheduler thread: %s", strerror(errno));
    s->loop_started = true;
    return JOULE_OK;
}

void srv_stop(server *s) {
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->work);
    for (srv_req *r = s->open_list; r; r = r->next_open) pthread_cond_broadcast(&r->grew);
    pthread_mutex_unlock(&s->mu);
    if (s->loop_started) pthread_join(s->loop, NULL);
    s->loop_started = false;
}

void srv_free(server *s) {
    srv_stop(s);
    pthread_mutex_lock(&s->mu);
    take_inbox(s); /* what is left reaches the scheduler, to be cancelled with the rest */
    pthread_mutex_unlock(&s->mu);
    joule_sched_free(s->sched); /* on_finish(CANCEL), which takes mu, for whatever is left */
    s->sched = NULL;
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
}
