/* `joule serve`: the HTTP front on libmicrohttpd, one thread per connection (a connection
 * waits for its request's progress while it runs). Every answer is JSON (or
 * Prometheus text, or server-sent events), every error an OpenAI-style error object. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "serve.h"

/* Per connection: the body as it arrives. */
typedef struct {
    char *body;
    size_t n;
    bool too_big;
} conn_ctx;

static enum MHD_Result answer(server *s, struct MHD_Connection *c, int code, char *body, const char *type) {
    pthread_mutex_lock(&s->mu);
    srv_count(s, body ? code : 500);
    pthread_mutex_unlock(&s->mu);
    if (!body) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result error(server *s, struct MHD_Connection *c, int code, const char *msg, const char *param) {
    const char *type = code == 429 ? "rate_limit_error" : code >= 500 ? "server_error" : "invalid_request_error";
    return answer(s, c, code, srv_error_json(msg, type, param), "application/json");
}

/* ---- streaming: one server-sent event per batch of new text ---- */

/* The next event into r->out, or false when the stream has ended. mu held. */
static bool next_event(srv_req *r) {
    server *s = r->srv;
    char *json = NULL;
    const size_t to = srv_streamable(r);
    if (r->stream_state == 2) return false;
    if (to > r->sent) {
        json = srv_completion_json(r, s->model_id, true, r->sent, to, false);
        r->sent = to;
    } else if (r->done && r->stream_state == 0) {
        json = srv_completion_json(r, s->model_id, true, to, to, true);
        r->stream_state = 1;
    } else if (r->stream_state == 1) {
        r->stream_state = 2;
        free(r->out);
        r->out = strdup("data: [DONE]\n\n");
        r->out_n = r->out ? strlen(r->out) : 0;
        r->out_off = 0;
        return r->out != NULL;
    }
    if (!json) return false;
    free(r->out);
    r->out_n = strlen(json) + 8;
    r->out = malloc(r->out_n + 1);
    if (r->out) snprintf(r->out, r->out_n + 1, "data: %s\n\n", json);
    r->out_off = 0;
    free(json);
    return r->out != NULL;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    srv_req *r = cls;
    server *s = r->srv;
    (void)pos;
    pthread_mutex_lock(&s->mu);
    ssize_t k = 0;
    while (r->out_off >= r->out_n) {
        const bool ready = srv_event_due(r);
        if (ready && !next_event(r)) {
            k = r->stream_state == 2 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        if (!ready && s->stopping) {
            k = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        if (!ready) srv_wait(r);
    }
    if (k == 0) {
        k = (ssize_t)(r->out_n - r->out_off < max ? r->out_n - r->out_off : max);
        memcpy(buf, r->out + r->out_off, (size_t)k);
        r->out_off += (size_t)k;
    }
    pthread_mutex_unlock(&s->mu);
    return k;
}

/* The response is gone: sent, or the client went away (then the request is cancelled). */
static void stream_free(void *cls) {
    srv_req *r = cls;
    server *s = r->srv;
    pthread_mutex_lock(&s->mu);
    srv_release(r, r->stream_state != 2);
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result stream(server *s, struct MHD_Connection *c, srv_req *r) {
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, r, stream_free);
    if (!resp) {
        pthread_mutex_lock(&s->mu);
        srv_release(r, false);
        pthread_mutex_unlock(&s->mu);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    pthread_mutex_lock(&s->mu);
    srv_count(s, 200);
    pthread_mutex_unlock(&s->mu);
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* ---- POST /v1/completions ---- */

static enum MHD_Result completions(server *s, struct MHD_Connection *c, conn_ctx *cc) {
    if (cc->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the body is over %zu bytes (--max-body)", s->o.max_body);
        return error(s, c, 413, msg, NULL);
    }
    srv_params p;
    char err[256];
    const char *param;
    if (srv_parse_completion(cc->body ? cc->body : "", cc->n, s->m->cfg.ctx, s->o.max_tokens, &p, err, sizeof err,
                             &param))
        return error(s, c, 400, err, param);
    pthread_mutex_lock(&s->mu);
    srv_req *r;
    const int code = srv_submit(s, &p, &r);
    pthread_mutex_unlock(&s->mu);
    srv_params_free(&p);
    if (code == 429) return error(s, c, 429, "the queue is full; retry later", NULL);
    if (code != 200) return error(s, c, code, code == 503 ? "the server is stopping" : joule_last_error(), NULL);
    if (r->p.stream) return stream(s, c, r);
    pthread_mutex_lock(&s->mu);
    while (!r->done && !s->stopping) srv_wait(r);
    const bool ok = r->done && r->why != JOULE_FINISH_ERROR;
    char *body = ok ? srv_completion_json(r, s->model_id, false, 0, r->n, true) : NULL;
    srv_release(r, false);
    pthread_mutex_unlock(&s->mu);
    if (!ok) return error(s, c, s->stopping ? 503 : 500, s->stopping ? "the server is stopping" : "generation failed", NULL);
    return answer(s, c, 200, body, "application/json");
}

static enum MHD_Result route(server *s, struct MHD_Connection *c, const char *url, const char *method, conn_ctx *cc) {
    const bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/v1/completions"))
        return post ? completions(s, c, cc) : error(s, c, 405, "use POST for /v1/completions", NULL);
    if (!strcmp(url, "/health") || !strcmp(url, "/v1/models") || !strcmp(url, "/metrics")) {
        if (!get) return error(s, c, 405, "use GET here", NULL);
        if (!strcmp(url, "/health")) return answer(s, c, 200, strdup("{\"status\":\"ok\"}"), "application/json");
        if (!strcmp(url, "/v1/models")) return answer(s, c, 200, srv_models_json(s->model_id, s->m), "application/json");
        pthread_mutex_lock(&s->mu);
        srv_count(s, 200); /* counted before the text, so a scrape sees itself */
        char *t = srv_metrics_text(s);
        pthread_mutex_unlock(&s->mu);
        if (!t) return MHD_NO;
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(t), t, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ok;
    }
    return error(s, c, 404, "no such endpoint (POST /v1/completions, GET /v1/models, /health, /metrics)", NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *data_size, void **con_cls) {
    server *s = cls;
    (void)version;
    conn_ctx *cc = *con_cls;
    if (!cc) {
        if (!(cc = calloc(1, sizeof *cc))) return MHD_NO;
        *con_cls = cc;
        return MHD_YES;
    }
    if (*data_size) { /* more of the body: kept up to the limit, the rest read and dropped */
        if (!cc->too_big && cc->n + *data_size <= s->o.max_body) {
            char *b = realloc(cc->body, cc->n + *data_size + 1);
            if (!b) return MHD_NO;
            memcpy(b + cc->n, data, *data_size);
            cc->body = b;
            cc->n += *data_size;
        } else {
            cc->too_big = true;
        }
        *data_size = 0;
        return MHD_YES;
    }
    return route(s, c, url, method, cc);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    (void)cls, (void)c, (void)why;
    conn_ctx *cc = *con_cls;
    if (cc) free(cc->body);
    free(cc);
    *con_cls = NULL;
}

/* Connections past max_conns are closed at once (shed) and counted. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len) {
    server *s = cls;
    (void)addr, (void)len;
    if (atomic_load(&s->conns) >= s->o.max_conns) {
        atomic_fetch_add(&s->shed, 1);
        return MHD_NO;
    }
    return MHD_YES;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx, enum MHD_ConnectionNotificationCode t) {
    server *s = cls;
    (void)socket_ctx;
    atomic_fetch_add(&s->conns, t == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int one = 1;
    /* each streamed event is a small write: without this, Nagle's algorithm holds it until
     * the client's delayed ACK of the previous one (tens of ms per token) */
    if (t == MHD_CONNECTION_NOTIFY_STARTED && ci) setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int srv_http_start(server *s, const char *host, int port, struct MHD_Daemon **d, int *bound_port) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return joule_fail(JOULE_ERR_ARG, "--host: '%s' is not an IPv4 address", joule_q(host));
    *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, (uint16_t)port,
                          on_accept, s, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512 * 1024),
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)(4 * s->o.max_conns + 16), MHD_OPTION_END);
    if (!*d) return joule_fail(JOULE_ERR_IO, "cannot listen on %s:%d (in use, or not allowed)", joule_q(host), port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(*d, MHD_DAEMON_INFO_BIND_PORT);
    *bound_port = info ? info->port : port;
    return JOULE_OK;
}
