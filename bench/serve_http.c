/* `joule bench serve --url`: the open-loop load against an OpenAI-compatible server. One
 * thread per request in flight (started at its arrival time) posts a streamed completion
 * over HTTP/1.0 and timestamps each server-sent event; a sampler thread adds a timeline
 * point every 50 ms with the server's energy from /metrics, over one kept connection. */
#define _GNU_SOURCE
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "joule/bench_serve.h"

typedef struct {
    char host[256], port[16];
} url_parts;

static int parse_url(const char *url, url_parts *u) {
    if (strncmp(url, "http://", 7)) return joule_fail(JOULE_ERR_ARG, "url '%s': only http:// is supported", joule_q(url));
    const char *h = url + 7, *end = h + strcspn(h, "/"), *colon = memchr(h, ':', (size_t)(end - h));
    const size_t hl = (size_t)((colon ? colon : end) - h);
    if (hl == 0 || hl >= sizeof u->host) return joule_fail(JOULE_ERR_ARG, "url '%s': no host", joule_q(url));
    memcpy(u->host, h, hl);
    u->host[hl] = '\0';
    snprintf(u->port, sizeof u->port, "%.*s", colon ? (int)(end - colon - 1) : 2, colon ? colon + 1 : "80");
    return JOULE_OK;
}

static int dial(const url_parts *u) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(u->host, u->port, &hints, &res)) return -1;
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen)) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

static bool send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return false;
        p += k, n -= (size_t)k;
    }
    return true;
}

/* GET requests over one kept-alive HTTP/1.1 connection: a scrape on a new connection cost
 * a libmicrohttpd server 0.6 ms of CPU (a thread started per connection), one on a kept
 * connection 0.05 ms, and the sampler's 20 scrapes a second fall inside the busy windows
 * it measures. */
typedef struct {
    url_parts u;
    int fd; /* -1: none open */
} scraper;

/* Receives into *buf after its first n bytes, doubling it (*cap bytes) first when fewer
 * than room + 1 are free; keeps it NUL-terminated. The bytes received, <= 0 at the end of
 * the stream or on failure (*buf stays the caller's to free). */
static ssize_t recv_more(int fd, char **buf, size_t *cap, size_t n, size_t room) {
    if (n + room + 1 >= *cap) {
        char *b = realloc(*buf, 2 * *cap);
        if (!b) return -1;
        *buf = b;
        *cap *= 2;
    }
    ssize_t k = recv(fd, *buf + n, *cap - n - 1, 0);
    if (k > 0) (*buf)[n + (size_t)k] = '\0';
    return k;
}

/* Reads one response: status, then Content-Length bytes of body (malloc'd). */
static char *read_response(int fd) {
    size_t n = 0, cap = 8192, body_at = 0, want = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (body_at && n - body_at >= want) break;
        ssize_t k = recv_more(fd, &buf, &cap, n, 4096);
        if (k <= 0) break;
        n += (size_t)k;
        char *e = body_at ? NULL : strstr(buf, "\r\n\r\n");
        if (e) {
            const char *cl = strcasestr(buf, "\r\ncontent-length:");
            if (strncmp(buf, "HTTP/1.", 7) || atoi(buf + 9) != 200 || !cl || cl > e) break;
            want = strtoul(cl + 17, NULL, 10);
            body_at = (size_t)(e + 4 - buf);
        }
    }
    if (!buf || !body_at || n - body_at < want) {
        free(buf);
        return NULL;
    }
    memmove(buf, buf + body_at, want);
    buf[want] = '\0';
    return buf;
}

/* GET path: the whole body (malloc'd), NULL on failure; a kept connection that fails is
 * replaced once (the server may have closed it). */
static char *scrape_get(scraper *s, const char *path) {
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, s->u.host);
    for (int attempt = 0; attempt < 2; attempt++) {
        const bool fresh = s->fd < 0;
        if (fresh && (s->fd = dial(&s->u)) < 0) return NULL;
        char *body = send_all(s->fd, req, strlen(req)) ? read_response(s->fd) : NULL;
        if (body) return body;
        close(s->fd);
        s->fd = -1;
        if (fresh) return NULL;
    }
    return NULL;
}

static int scrape_energy(scraper *s, const char *url, double *joules, double *busy, char *method, size_t method_n) {
    char *t = scrape_get(s, "/metrics");
    const char *k = "\njoule_energy_joules_total{method=\"", *b = "\njoule_energy_busy_joules_total{";
    const char *at = t ? strstr(t, k) : NULL, *bt = t ? strstr(t, b) : NULL;
    if (!at) {
        free(t);
        return joule_fail(JOULE_ERR_IO, "%s/metrics: no joule_energy_joules_total", joule_q(url));
    }
    at += strlen(k);
    snprintf(method, method_n, "%.*s", (int)strcspn(at, "\""), at);
    *joules = atof(strchr(at, '}') + 1);
    *busy = bt ? atof(strchr(bt, '}') + 1) : NAN;
    free(t);
    return JOULE_OK;
}

int joule_serve_scrape_energy(const char *url, double *joules, double *busy, char *method, size_t method_n) {
    scraper s = {.fd = -1};
    int rc = parse_url(url, &s.u);
    if (!rc) rc = scrape_energy(&s, url, joules, busy, method, method_n);
    if (s.fd >= 0) close(s.fd);
    return rc;
}

typedef struct {
    url_parts u;
    scraper scr; /* the sampler's, and the first and last scrapes' (never two at once) */
    const char *model;
    const joule_serve_load *l;
    joule_serve_trace *tr;
    double t0;
    pthread_mutex_t mu;
    int in_flight, done;
    uint64_t tokens;
} run_ctx;

typedef struct {
    run_ctx *rc;
    int i;
} req_arg;

/* The body of request i: streamed, greedy, exactly max_tokens ("ignore_eos", vLLM's name). */
static char *request_body(const run_ctx *c, int i) {
    cJSON *o = cJSON_CreateObject();
    char *prompt = malloc((size_t)c->l->n_prompt[i] + 1);
    if (!o || !prompt) {
        cJSON_Delete(o);
        free(prompt);
        return NULL;
    }
    memcpy(prompt, c->l->prompts[i], (size_t)c->l->n_prompt[i]);
    prompt[c->l->n_prompt[i]] = '\0';
    if (c->model) cJSON_AddStringToObject(o, "model", c->model);
    cJSON_AddStringToObject(o, "prompt", prompt);
    cJSON_AddNumberToObject(o, "max_tokens", c->l->max_tokens[i]);
    cJSON_AddNumberToObject(o, "temperature", 0);
    cJSON_AddBoolToObject(o, "stream", 1);
    cJSON_AddBoolToObject(o, "ignore_eos", 1);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    free(prompt);
    return s;
}

/* One event's JSON: its text's tokens (bytes, as joule's byte-level models emit them) get
 * the event's time; usage.completion_tokens, when sent, is the request's count. */
static void on_event(run_ctx *c, joule_serve_req *q, const char *json, double t, int cap) {
    cJSON *o = cJSON_Parse(json);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    const cJSON *text = cJSON_GetObjectItem(ch, "text"), *u = cJSON_GetObjectItem(o, "usage");
    int k = cJSON_IsString(text) ? (int)strlen(text->valuestring) : 0;
    pthread_mutex_lock(&c->mu);
    for (int j = 0; j < k && q->output_tokens < cap; j++) {
        if (q->output_tokens == 0) q->first = t;
        q->token_t[q->output_tokens++] = t;
        c->tokens++;
    }
    const cJSON *ct = cJSON_GetObjectItem(u, "completion_tokens");
    if (cJSON_IsNumber(ct) && ct->valueint <= cap && ct->valueint > q->output_tokens) {
        for (int j = q->output_tokens; j < ct->valueint; j++) q->token_t[j] = t;
        c->tokens += (uint64_t)(ct->valueint - q->output_tokens);
        q->output_tokens = ct->valueint;
        if (isnan(q->first)) q->first = t;
    }
    pthread_mutex_unlock(&c->mu);
    cJSON_Delete(o);
}

/* Reads the stream, splitting it into "data: ..." events. */
static bool read_stream(run_ctx *c, int fd, joule_serve_req *q, int cap) {
    size_t n = 0, size = 1 << 16;
    char *buf = malloc(size);
    bool headers = false, ok = false, ended = false;
    while (buf) {
        ssize_t k = recv_more(fd, &buf, &size, n, 0);
        if (k <= 0) break;
        n += (size_t)k;
        const double t = joule_now() - c->t0;
        char *p = buf, *e;
        if (!headers) {
            if (!(e = strstr(buf, "\r\n\r\n"))) continue;
            ok = !strncmp(buf, "HTTP/1.", 7) && atoi(buf + 9) == 200;
            headers = true;
            p = e + 4;
        }
        while ((e = strstr(p, "\n\n"))) {
            *e = '\0';
            if (!strncmp(p, "data: [DONE]", 12)) ended = true;
            else if (!strncmp(p, "data: ", 6)) on_event(c, q, p + 6, t, cap);
            p = e + 2;
        }
        n = strlen(p);
        memmove(buf, p, n + 1);
    }
    free(buf);
    return ok && ended;
}

static void *one_request(void *arg) {
    req_arg *a = arg;
    run_ctx *c = a->rc;
    joule_serve_req *q = &c->tr->req[a->i];
    char *body = request_body(c, a->i), head[512];
    int fd = body ? dial(&c->u) : -1;
    bool ok = false;
    if (fd >= 0) {
        snprintf(head, sizeof head,
                 "POST /v1/completions HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                 c->u.host, strlen(body));
        ok = send_all(fd, head, strlen(head)) && send_all(fd, body, strlen(body)) &&
             read_stream(c, fd, q, c->l->max_tokens[a->i]);
        close(fd);
    }
    free(body);
    pthread_mutex_lock(&c->mu);
    q->end = joule_now() - c->t0;
    q->ok = ok && q->output_tokens == c->l->max_tokens[a->i];
    c->in_flight--;
    c->done++;
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void sleep_until(double t0, double t) {
    double d = t - (joule_now() - t0);
    if (d <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)d, .tv_nsec = (long)((d - floor(d)) * 1e9)};
    nanosleep(&ts, NULL);
}

/* A timeline point now, with the server's energy. */
static void sample(run_ctx *c, const char *url) {
    double j = NAN, busy;
    char method[96];
    if (scrape_energy(&c->scr, url, &j, &busy, method, sizeof method) == JOULE_OK)
        snprintf(c->tr->method, sizeof c->tr->method, "%s", method);
    joule_serve_trace *tr = c->tr;
    pthread_mutex_lock(&c->mu);
    if (tr->n_pt < tr->cap_pt)
        tr->pt[tr->n_pt++] = (joule_serve_point){.t = joule_now() - c->t0, .in_flight = c->in_flight, .running = c->in_flight,
                                                 .tokens = c->tokens, .joules = j};
    pthread_mutex_unlock(&c->mu);
}

typedef struct {
    run_ctx *c;
    const char *url;
    volatile int stop;
} sampler_arg;

static void *sampler(void *arg) {
    sampler_arg *s = arg;
    while (!s->stop) {
        sample(s->c, s->url);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int joule_serve_run_url(const char *url, const char *model, const joule_serve_load *l, joule_serve_trace *tr) {
    run_ctx c = {.scr.fd = -1, .model = model, .l = l, .tr = tr};
    int rc = parse_url(url, &c.u);
    c.scr.u = c.u;
    if (!rc) rc = joule_serve_trace_alloc(l, tr);
    pthread_t *th = rc ? NULL : calloc((size_t)l->n, sizeof *th);
    req_arg *args = rc ? NULL : calloc((size_t)l->n, sizeof *args);
    tr->cap_pt = 1 << 18;
    if (!rc && (!th || !args || !(tr->pt = calloc((size_t)tr->cap_pt, sizeof *tr->pt))))
        rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    double j0 = NAN, b0 = NAN, j1, b1;
    char method[96] = "none";
    if (!rc && scrape_energy(&c.scr, url, &j0, &b0, method, sizeof method)) j0 = b0 = NAN;
    snprintf(tr->method, sizeof tr->method, "%s", method);
    pthread_mutex_init(&c.mu, NULL);
    c.t0 = joule_now();
    sampler_arg sa = {.c = &c, .url = url};
    pthread_t st;
    const bool sampling = !rc && pthread_create(&st, NULL, sampler, &sa) == 0;
    int started = 0;
    for (; !rc && started < l->n; started++) {
        sleep_until(c.t0, l->arrivals[started]);
        args[started] = (req_arg){&c, started};
        pthread_mutex_lock(&c.mu);
        c.in_flight++;
        pthread_mutex_unlock(&c.mu);
        if (pthread_create(&th[started], NULL, one_request, &args[started])) rc = joule_fail(JOULE_ERR_RUNTIME, "cannot start a client thread");
    }
    for (int i = 0; i < started - (rc ? 1 : 0); i++) pthread_join(th[i], NULL);
    sa.stop = 1;
    if (sampling) pthread_join(st, NULL);
    if (!rc) sample(&c, url);
    if (!rc && isfinite(b0) && scrape_energy(&c.scr, url, &j1, &b1, method, sizeof method) == JOULE_OK)
        tr->busy_joules = b1 - b0;
    tr->wall_s = joule_now() - c.t0;
    if (c.scr.fd >= 0) close(c.scr.fd);
    pthread_mutex_destroy(&c.mu);
    free(th);
    free(args);
    if (rc) joule_serve_trace_free(tr);
    return rc;
}
