/* `joule serve`: GET /metrics in Prometheus's text format (version 0.0.4). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static const double BOUNDS[SRV_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25,  0.5,    1,     2.5,  5,     10,  30};

void srv_hist_add(srv_hist *h, double seconds) {
    h->sum += seconds;
    h->count++;
    for (int i = 0; i < SRV_BUCKETS; i++)
        if (seconds <= BOUNDS[i]) h->le[i]++;
}

typedef struct {
    char *buf;
    size_t n, cap;
    bool failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
    for (int tries = 0; tries < 2 && !t->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->buf ? t->buf + t->n : NULL, t->buf ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) t->failed = true;
        else if (t->buf && t->n + (size_t)k < t->cap) {
            t->n += (size_t)k;
            return;
        } else {
            size_t cap = 2 * (t->cap + (size_t)k) + 256;
            char *b = realloc(t->buf, cap);
            if (!b) t->failed = true;
            else t->buf = b, t->cap = cap;
        }
    }
}

static void metric(text *t, const char *name, const char *type, const char *help) {
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist(text *t, const char *name, const char *help, const srv_hist *h) {
    metric(t, name, "histogram", help);
    for (int i = 0; i < SRV_BUCKETS; i++) put(t, "%s_bucket{le=\"%g\"} %llu\n", name, BOUNDS[i], (unsigned long long)h->le[i]);
    put(t, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, (unsigned long long)h->count, name, h->sum,
        name, (unsigned long long)h->count);
}

static void energy(text *t, server *s) {
    joule_energy_report r;
    if (!s->energy_ok || joule_energy_window_stop(&s->win, &r)) return;
    metric(t, "joule_energy_joules_total", "counter",
           "Device energy since the server started, with its method (measured or modeled).");
    put(t, "joule_energy_joules_total{method=\"%s\"} %.6f\n", r.method, r.joules);
    joule_energy_report b;
    const bool open = s->busy && joule_energy_window_stop(&s->busy_win, &b) == JOULE_OK;
    metric(t, "joule_energy_busy_joules_total", "counter",
           "Device energy while a request was open (from its acceptance to its response's end), same method.");
    put(t, "joule_energy_busy_joules_total{method=\"%s\"} %.6f\n", r.method, s->busy_j + (open ? b.joules : 0));
    /* the modeled meter's two inputs over the same windows: idle W x wall + active W x CPU */
    metric(t, "joule_energy_busy_seconds_total", "counter", "Wall time while a request was open.");
    put(t, "joule_energy_busy_seconds_total %.6f\n", s->busy_s + (open ? b.duration_s : 0));
    metric(t, "joule_energy_busy_cpu_seconds_total", "counter",
           "CPU time of the whole server process (all threads) while a request was open.");
    put(t, "joule_energy_busy_cpu_seconds_total %.6f\n", s->busy_cpu_s + (open ? b.cpu_s : 0));
    metric(t, "joule_energy_seconds_total", "counter", "Wall time of the energy window.");
    put(t, "joule_energy_seconds_total %.6f\n", r.duration_s);
}

char *srv_metrics_text(server *s) {
    text t = {0};
    const joule_sched_stats st = s->st;
    metric(&t, "joule_requests_total", "counter", "HTTP requests answered, by status code.");
    for (int i = 0; i < SRV_CODES; i++)
        if (srv_codes[i]) put(&t, "joule_requests_total{code=\"%d\"} %llu\n", srv_codes[i], (unsigned long long)s->by_code[i]);
        else put(&t, "joule_requests_total{code=\"other\"} %llu\n", (unsigned long long)s->by_code[i]);
    metric(&t, "joule_connections_shed_total", "counter", "Connections closed unanswered: over --max-connections.");
    put(&t, "joule_connections_shed_total %llu\n", (unsigned long long)atomic_load(&s->shed));
    metric(&t, "joule_client_disconnects_total", "counter", "Streams whose client went away before the end.");
    put(&t, "joule_client_disconnects_total %llu\n", (unsigned long long)s->disconnects);
    metric(&t, "joule_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.");
    put(&t, "joule_prompt_tokens_total %llu\n", (unsigned long long)s->prompt_tokens);
    metric(&t, "joule_generation_tokens_total", "counter", "Tokens generated.");
    put(&t, "joule_generation_tokens_total %llu\n", (unsigned long long)st.generated);
    metric(&t, "joule_scheduler_steps_total", "counter", "Scheduler steps.");
    put(&t, "joule_scheduler_steps_total %llu\n", (unsigned long long)st.steps);
    metric(&t, "joule_queue_depth", "gauge", "Requests waiting for a batch slot.");
    put(&t, "joule_queue_depth %d\n", st.queued);
    metric(&t, "joule_running_requests", "gauge", "Requests holding a batch slot.");
    put(&t, "joule_running_requests %d\n", st.running);
    metric(&t, "joule_batch_size", "gauge", "Sequences decoded together in the last step.");
    put(&t, "joule_batch_size %d\n", st.last_batch);
    metric(&t, "joule_scheduler_threads", "gauge", "Threads of the scheduler thread's steps (--threads).");
    put(&t, "joule_scheduler_threads %d\n", s->loop_threads);
    metric(&t, "joule_queue_rejected_total", "counter", "Requests refused with 429: the queue was full.");
    put(&t, "joule_queue_rejected_total %llu\n", (unsigned long long)s->by_code[5]);
    hist(&t, "joule_time_to_first_token_seconds", "From arrival to the first generated token.", &s->ttft);
    hist(&t, "joule_time_per_output_token_seconds", "Mean time between tokens after the first, per request.", &s->tpot);
    hist(&t, "joule_e2e_request_latency_seconds", "From arrival to the last token.", &s->e2e);
    energy(&t, s);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
