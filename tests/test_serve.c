/* `joule serve` under bad and hostile input, driven with curl and raw sockets: every bad
 * request gets a 4xx JSON error naming the problem, a full queue 429, a client that leaves
 * mid-stream cancels its request, a burst of 1,000 connections is served or shed, /metrics
 * counts each, the server keeps serving and stops cleanly (under ASan: without leaks). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "joule/checkpoint.h"
#include "testutil.h"

static int g_port;
static pid_t g_pid;

/* Starts `joule serve` on a fresh tiny model with extra options; waits for its address. */
static void start(const char *extra) {
    tu_make_dir("joule_serve_");
    joule_config c = joule_config_default(2, 64, 4, 128, 64);
    c.tied = false;
    joule_model *m = tu_model(&c, 1, 3);
    /* byte 0 (end of document, which ends a completion) scores 0 while the best of 255
     * random logits is positive: greedy completions run to max_tokens */
    memset(m->w.lm_head, 0, (size_t)c.d_model * sizeof(float));
    ck_assert_int_eq(joule_checkpoint_save(m, tu_path("m.safetensors"), NULL, NULL), JOULE_OK);
    joule_model_free(m);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "cd '%s' && { '%s' serve --model m.safetensors --port 0 --threads 1 %s >serve.out 2>serve.err & echo $! >pid; }",
             tu_dir, getenv("JOULE_BIN"), extra);
    ck_assert_int_eq(system(cmd), 0);
    char *out = NULL, *pid = NULL;
    for (int i = 0; i < 200 && !(out && strstr(out, "listening")); i++) {
        usleep(50000);
        free(out);
        out = tu_read_in("serve.out", NULL);
    }
    pid = tu_read_in("pid", NULL);
    const char *at = out ? strstr(out, "127.0.0.1:") : NULL;
    ck_assert_msg(at && pid, "the server did not start: %s", tu_read_in("serve.err", NULL));
    g_port = atoi(at + strlen("127.0.0.1:"));
    g_pid = (pid_t)atoi(pid);
    free(out);
    free(pid);
}

/* SIGTERM; the server must exit 0 (ASan's leak check makes a leak a failure). */
static void stop(void) {
    ck_assert_int_eq(kill(g_pid, SIGTERM), 0);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "while kill -0 %d 2>/dev/null; do sleep 0.05; done", (int)g_pid);
    ck_assert_int_eq(system(cmd), 0);
    char *err = tu_read_in("serve.err", NULL);
    ck_assert_msg(err && strstr(err, "stopping") && !strstr(err, "ERROR: "), "serve stderr: %s", err ? err : "?");
    free(err);
    tu_remove_dir();
}

/* curl with args; the HTTP code, the body in body.txt. */
static int curl(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int curl(const char *fmt, ...) {
    char args[8192], cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && curl -s -o body.txt -w '%%{http_code}' %s > code.txt", tu_dir, args);
    system(cmd);
    char *code = tu_read_in("code.txt", NULL);
    int k = code ? atoi(code) : -1;
    free(code);
    return k;
}

static int post(const char *json) {
    tu_write_text(tu_path("req.json"), json);
    return curl("http://127.0.0.1:%d/v1/completions -H 'Content-Type: application/json' --data-binary @req.json", g_port);
}

/* The value of one metric line (name with labels) of /metrics; -1 when absent. */
static double metric(const char *name) {
    ck_assert_int_eq(curl("http://127.0.0.1:%d/metrics", g_port), 200);
    char *t = tu_read_in("body.txt", NULL), key[256];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = t ? strstr(t, key) : NULL;
    double v = at ? atof(at + strlen(key)) : -1;
    free(t);
    return v;
}

static void expect_error(const char *json, int code, const char *needle) {
    ck_assert_int_eq(post(json), code);
    ck_assert_msg(tu_file_has("body.txt", "\"error\"") && tu_file_has("body.txt", needle), "%s -> %s", json,
                  tu_read_in("body.txt", NULL));
}

START_TEST(test_bad_requests) {
    start("--max-body 4096 --max-tokens 1000");
    expect_error("{\"prompt\": \"abc\"", 400, "not a JSON object");
    expect_error("[1, 2]", 400, "not a JSON object");
    expect_error("{\"prompt\": 7}", 400, "\"param\":\"prompt\"");
    expect_error("{\"prompt\": \"a\", \"max_tokens\": \"10\"}", 400, "max_tokens");
    expect_error("{\"prompt\": \"a\", \"max_tokens\": 0}", 400, "max_tokens");
    expect_error("{\"prompt\": \"a\", \"max_tokens\": -3}", 400, "max_tokens");
    expect_error("{\"prompt\": \"a\", \"max_tokens\": 1e12}", 400, "max_tokens");
    expect_error("{\"prompt\": \"a\", \"max_tokens\": 2.5}", 400, "max_tokens");
    expect_error("{\"prompt\": \"a\", \"temperature\": \"hot\"}", 400, "temperature");
    expect_error("{\"prompt\": \"a\", \"top_p\": 0}", 400, "top_p");
    expect_error("{\"prompt\": \"a\", \"stream\": 1}", 400, "stream");
    expect_error("{\"prompt\": \"a\", \"stop\": [1]}", 400, "stop");
    expect_error("{\"prompt\": \"a\", \"n\": 3}", 400, "\"param\":\"n\"");
    char long_prompt[256];
    snprintf(long_prompt, sizeof long_prompt, "{\"prompt\": \"%065d\"}", 0); /* 65 bytes, ctx 64 */
    expect_error(long_prompt, 400, "longer than the model's context");
    char *big = malloc(8192);
    snprintf(big, 8192, "{\"prompt\": \"%06000d\"}", 0);
    expect_error(big, 413, "--max-body");
    free(big);
    ck_assert_int_eq(curl("http://127.0.0.1:%d/v1/nothing", g_port), 404);
    ck_assert_int_eq(curl("http://127.0.0.1:%d/v1/completions", g_port), 405); /* GET */
    /* after all that, it serves */
    ck_assert_int_eq(post("{\"prompt\": \"hello\", \"max_tokens\": 5, \"temperature\": 0}"), 200);
    ck_assert(tu_file_has("body.txt", "\"completion_tokens\":5") || tu_file_has("body.txt", "\"finish_reason\":\"stop\""));
    ck_assert_int_eq((int)metric("joule_requests_total{code=\"400\"}"), 14);
    ck_assert_int_eq((int)metric("joule_requests_total{code=\"413\"}"), 1);
    ck_assert_int_eq((int)metric("joule_requests_total{code=\"404\"}"), 1);
    ck_assert_int_eq((int)metric("joule_requests_total{code=\"405\"}"), 1);
    ck_assert(metric("joule_generation_tokens_total") >= 1);
    stop();
}
END_TEST

/* One slot and a queue of one: a third request gets 429; a client that leaves mid-stream
 * has its request cancelled and counted. */
START_TEST(test_queue_full_and_disconnect) {
    start("--max-batch 1 --max-queue 1 --max-tokens 10000000");
    const char *slow = "{\"prompt\": \"x\", \"max_tokens\": 10000000, \"stream\": true, \"temperature\": 0}";
    tu_write_text(tu_path("slow.json"), slow);
    /* the second is sent once the first holds the slot, so it waits in the queue */
    const char *gauge[2] = {"joule_running_requests", "joule_queue_depth"};
    for (int k = 0; k < 2; k++) {
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && (curl -sN --max-time 10 http://127.0.0.1:%d/v1/completions --data-binary @slow.json"
                 " >/dev/null 2>&1 &)",
                 tu_dir, g_port);
        ck_assert_int_eq(system(cmd), 0);
        for (int i = 0; i < 200 && metric(gauge[k]) != 1; i++) usleep(50000); /* a loaded machine */
    }
    ck_assert_int_eq((int)metric("joule_running_requests"), 1);
    ck_assert_int_eq((int)metric("joule_queue_depth"), 1);
    expect_error("{\"prompt\": \"y\", \"max_tokens\": 3}", 429, "rate_limit_error");
    /* both clients give up after 10 s: both requests are cancelled, the slot frees */
    for (int i = 0; i < 300 && metric("joule_client_disconnects_total") < 2; i++) usleep(100000);
    ck_assert_int_eq((int)metric("joule_client_disconnects_total"), 2);
    for (int i = 0; i < 50 && metric("joule_running_requests") != 0; i++) usleep(100000); /* the next step drops it */
    ck_assert_int_eq((int)metric("joule_running_requests"), 0);
    ck_assert_int_eq((int)metric("joule_queue_rejected_total"), 1);
    ck_assert_int_eq(post("{\"prompt\": \"hello\", \"max_tokens\": 4, \"temperature\": 0}"), 200);
    stop();
}
END_TEST

/* 1,000 connections at once, each asking for /health: each is answered or closed unanswered
 * (shed), /metrics counts exactly those shed, and the server serves on. */
START_TEST(test_connection_burst) {
    start("--max-connections 16");
    enum { N = 1000 };
    static int fd[N];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    const char *req = "GET /health HTTP/1.0\r\n\r\n";
    for (int i = 0; i < N; i++) {
        fd[i] = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_ge(fd[i], 0);
        ck_assert_int_eq(connect(fd[i], (struct sockaddr *)&a, sizeof a), 0);
        (void)!write(fd[i], req, strlen(req)); /* a shed connection may already be closed */
    }
    int answered = 0, shed = 0;
    for (int i = 0; i < N; i++) {
        char buf[512];
        ssize_t k = read(fd[i], buf, sizeof buf - 1);
        if (k > 0 && !strncmp(buf, "HTTP/1.", 7)) answered++;
        else shed++;
        close(fd[i]);
    }
    ck_assert_int_eq(answered + shed, N);
    ck_assert_int_gt(answered, 0);
    ck_assert_int_eq((int)metric("joule_connections_shed_total"), shed);
    ck_assert_int_eq(curl("http://127.0.0.1:%d/health", g_port), 200);
    ck_assert_int_eq(post("{\"prompt\": \"hello\", \"max_tokens\": 4}"), 200);
    stop();
}
END_TEST

/* The completion's text from body.txt (caller frees). */
static char *completion_text(const char **finish) {
    char *t = tu_read_in("body.txt", NULL);
    cJSON *o = cJSON_Parse(t);
    free(t);
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    ck_assert_msg(cJSON_IsString(cJSON_GetObjectItem(c, "text")), "no text");
    char *text = strdup(cJSON_GetObjectItem(c, "text")->valuestring);
    static char fin[16];
    snprintf(fin, sizeof fin, "%s", cJSON_GetObjectItem(c, "finish_reason")->valuestring);
    *finish = fin;
    cJSON_Delete(o);
    return text;
}

/* A stop string cuts the text before it (finish_reason stop); the stream's events add up
 * to the text of the same request unstreamed; the same seed gives the same sample. */
START_TEST(test_stop_and_stream) {
    start("");
    /* --threads 1 reaches the scheduler's own thread (OpenMP's team size is per thread) */
    ck_assert_int_eq((int)metric("joule_scheduler_threads"), 1);
    ck_assert_int_eq((int)metric("joule_energy_busy_seconds_total"), 0); /* nothing served yet */
    const char *fin;
    ck_assert_int_eq(post("{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 0}"), 200);
    char *full = completion_text(&fin);
    /* that request's busy window: some wall and CPU time, within the server's whole window */
    const double busy_s = metric("joule_energy_busy_seconds_total"), cpu_s = metric("joule_energy_busy_cpu_seconds_total");
    ck_assert(busy_s > 0 && cpu_s > 0 && busy_s < metric("joule_energy_seconds_total"));
    ck_assert_str_eq(fin, "length");
    ck_assert_int_ge((int)strlen(full), 12);
    /* 3 printable ASCII bytes after the first two as the stop string (JSON-safe) */
    char stop_s[4] = {0}, req[512];
    for (size_t i = 2; i + 3 <= strlen(full) && !stop_s[0]; i++) {
        bool ok = true;
        for (int k = 0; k < 3; k++) ok &= full[i + k] >= 32 && full[i + k] < 127 && full[i + k] != '"' && full[i + k] != '\\';
        if (ok) memcpy(stop_s, full + i, 3);
    }
    ck_assert_msg(stop_s[0], "no printable run in %s", full);
    snprintf(req, sizeof req, "{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 0, \"stop\": [\"%s\"]}", stop_s);
    ck_assert_int_eq(post(req), 200);
    char *cut = completion_text(&fin);
    ck_assert_str_eq(fin, "stop");
    const size_t at = (size_t)(strstr(full, stop_s) - full);
    ck_assert_uint_eq(strlen(cut), at);
    ck_assert_int_eq(strncmp(cut, full, at), 0);
    free(cut);
    /* streamed: "data: {...}" events, then "data: [DONE]" */
    tu_write_text(tu_path("req.json"), "{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}");
    ck_assert_int_eq(curl("-N http://127.0.0.1:%d/v1/completions --data-binary @req.json", g_port), 200);
    char *sse = tu_read_in("body.txt", NULL), *acc = calloc(1, strlen(sse) + 1);
    ck_assert(strstr(sse, "data: [DONE]\n\n") != NULL);
    for (char *p = strstr(sse, "data: {"); p; p = strstr(p + 1, "data: {")) {
        char *end = strstr(p, "\n\n");
        *end = 0;
        cJSON *o = cJSON_Parse(p + 6);
        strcat(acc, cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "text")->valuestring);
        cJSON_Delete(o);
        p = end;
    }
    ck_assert_str_eq(acc, full);
    free(sse);
    free(acc);
    /* sampling: the same seed, the same text; another seed, another */
    char *a, *b, *c;
    ck_assert_int_eq(post("{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 1, \"seed\": 5}"), 200);
    a = completion_text(&fin);
    ck_assert_int_eq(post("{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 1, \"seed\": 5}"), 200);
    b = completion_text(&fin);
    ck_assert_int_eq(post("{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 1, \"seed\": 6}"), 200);
    c = completion_text(&fin);
    ck_assert_str_eq(a, b);
    ck_assert_str_ne(a, c);
    free(a), free(b), free(c);
    free(full);
    stop();
}
END_TEST

/* --stream-interval 100 with 24 tokens: no event until the end, so the text comes in one
 * event (every token gets its own event or a few share one without it); the events still
 * add up to the whole text. A bad value is refused. (What fewer events buy is measured in
 * docs/BENCH.md, "Server overhead".) */
START_TEST(test_stream_interval) {
    start("--stream-interval 100");
    const char *fin;
    ck_assert_int_eq(post("{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 0}"), 200);
    char *full = completion_text(&fin);
    tu_write_text(tu_path("req.json"), "{\"prompt\": \"abc\", \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}");
    ck_assert_int_eq(curl("-N http://127.0.0.1:%d/v1/completions --data-binary @req.json", g_port), 200);
    char *sse = tu_read_in("body.txt", NULL), *acc = calloc(1, strlen(sse) + 1);
    int events = 0;
    for (char *p = strstr(sse, "data: {"); p; p = strstr(p + 1, "data: {")) {
        char *end = strstr(p, "\n\n");
        *end = 0;
        cJSON *o = cJSON_Parse(p + 6);
        const char *t = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "text")->valuestring;
        events += t[0] != 0;
        strcat(acc, t);
        cJSON_Delete(o);
        p = end;
    }
    ck_assert_str_eq(acc, full);
    ck_assert_msg(events == 1, "%d events with text for 24 tokens at 100 per event", events);
    free(sse);
    free(acc);
    free(full);
    ck_assert_int_eq(tu_joule("serve --model m.safetensors --stream-interval 0"), 2);
    ck_assert(tu_file_has("err.txt", "--stream-interval"));
    stop();
}
END_TEST

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("serve");
    TCase *t = tu_tcase(s, "http", 120, NULL, NULL);
    tcase_add_test(t, test_bad_requests);
    tcase_add_test(t, test_queue_full_and_disconnect);
    tcase_add_test(t, test_connection_burst);
    tcase_add_test(t, test_stop_and_stream);
    tcase_add_test(t, test_stream_interval);
    return tu_run_suite(s);
}
