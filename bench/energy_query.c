/* The energy-per-query runner: prompts from the validation split, warm-up queries outside
 * the window, then the measured queries (prefill + greedy decode) inside one measurement
 * window of the caller's meters. docs/BENCH.md states what each figure means. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "joule/account.h"
#include "joule/bench_energy.h"
#include "joule/quant.h"
#include "joule/data.h"
#include "joule/ops.h"
#include "joule/retro.h"
#include "joule/retro_db.h"
#include "joule/sample.h"

/* Prompt streams: measured query q uses (seed, 0, q), warm-up query q (seed, 1, q), so the
 * measured prompts do not depend on the number of warm-up queries. */
enum { STREAM_MEASURED = 0, STREAM_WARMUP = 1 };

void joule_bench_energy_opts_init(joule_bench_energy_opts *o) {
    memset(o, 0, sizeof *o);
    o->queries = 32;
    o->prompt = 64;
    o->generate = 32;
    o->batch = 1;
    o->warmup = 4;
    o->seed = 1;
    o->pue = JOULE_DEFAULT_PUE;
    o->grid_g_per_kwh = JOULE_DEFAULT_GRID_G_PER_KWH;
}

bool joule_bench_energy_reset_peak_rss(void) {
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd < 0) return false;
    bool ok = write(fd, "5", 1) == 1; /* "5": reset the peak RSS (Linux >= 4.0) */
    close(fd);
    return ok;
}

/* VmHWM from /proc/self/status, else getrusage's maximum RSS; bytes. */
static uint64_t peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0;
    bool found = false;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) {
            found = true;
            break;
        }
    if (f) fclose(f);
    if (!found) {
        struct rusage ru;
        kb = getrusage(RUSAGE_SELF, &ru) == 0 ? (unsigned long long)ru.ru_maxrss : 0;
    }
    return (uint64_t)kb * 1024;
}

/* Nearest-rank percentiles of v[n] (sorted here). */
static void percentiles(double *v, int n, double *p50, double *p95, double *p99) {
    qsort(v, (size_t)n, sizeof *v, joule_cmp_double);
    const double p[3] = {0.50, 0.95, 0.99};
    double *out[3] = {p50, p95, p99};
    for (int i = 0; i < 3; i++) {
        int k = (int)ceil(p[i] * n) - 1;
        *out[i] = n > 0 ? v[k < 0 ? 0 : k] : 0;
    }
}

static void draw_prompt(const joule_tokens *t, uint64_t seed, int stream, int q, int P, int32_t *out) {
    joule_rng r;
    joule_rng_seed(&r, joule_mix64(joule_mix64(seed, (uint64_t)stream), (uint64_t)q));
    uint64_t at = joule_rng_below(&r, t->n_tokens - (uint64_t)P + 1);
    for (int i = 0; i < P; i++) out[i] = t->tok[at + (uint64_t)i];
}

/* Analytic FLOPs of one query from the accountant: the prefill is joule_account_query's
 * (a forward over P tokens; RETRO's chunks encoded once, CCA where neighbours are in view)
 * less the P-1 logits rows it does not compute; the decode is its G-1 one-token steps. */
static int analytic_flops(const joule_model *m, int P, int G, joule_bench_energy_result *r) {
    joule_acct_model a;
    joule_acct_from_config(&a, &m->cfg);
    joule_acct_opts ao;
    joule_acct_opts_init(&ao);
    ao.ctx = P;
    joule_acct_result ar;
    joule_acct_query q;
    int rc = joule_account(&a, &ao, &ar);
    if (!rc) rc = joule_account_query(&a, &ao, P, G - 1, &q);
    if (rc) return rc;
    double logits = 0;
    for (int i = 0; i < ar.n_terms; i++)
        if (!strcmp(ar.terms[i].name, "logits")) logits = ar.terms[i].flops;
    r->params = ar.params;
    r->params_active = ar.params_active;
    r->flops_prefill_analytic = q.prefill - logits * (P - 1);
    r->flops_decode_analytic = q.decode;
    r->flops_analytic = r->flops_prefill_analytic + r->flops_decode_analytic;
    return JOULE_OK;
}

static int check_opts(const joule_model *m, const char *label, const joule_bench_energy_opts *o) {
    const int ctx = m->cfg.ctx;
    if (!o->meters) return joule_fail(JOULE_ERR_ARG, "bench energy: no energy meters given");
    if (o->queries < 1 || o->batch < 1 || o->warmup < 0)
        return joule_fail(JOULE_ERR_ARG, "bench energy: needs >= 1 query, batch >= 1 and warm-up >= 0");
    if (o->prompt < 1 || o->generate < 1)
        return joule_fail(JOULE_ERR_ARG, "bench energy: needs a prompt of >= 1 token and >= 1 generated token");
    if ((long)o->prompt + o->generate - 1 > ctx)
        return joule_fail(JOULE_ERR_ARG, "%s: prompt %d + generated %d - 1 tokens exceed the model's context %d",
                          label, o->prompt, o->generate, ctx);
    if (!(o->pue >= 1) || !(o->grid_g_per_kwh >= 0))
        return joule_fail(JOULE_ERR_ARG, "bench energy: PUE must be >= 1 and grid intensity >= 0");
    if (!o->data_dir) return joule_fail(JOULE_ERR_ARG, "bench energy: no corpus folder given");
    if (joule_config_has_cca(&m->cfg) && !o->db_dir && !o->db)
        return joule_fail(JOULE_ERR_ARG, "%s: a RETRO model needs its retrieval database (--db DIR)", label);
    return JOULE_OK;
}

/* Buffers of a run, allocated before the window opens. */
typedef struct {
    joule_decoder **dec;
    joule_decoder_batch *batch; /* batch > 1 without CCA: the sequences step as one batch */
    const float **logits;
    int32_t *prompts; /* [batch, P] */
    int32_t *next;    /* [batch] */
    uint64_t digest;  /* of the measured queries' tokens */
    float *scratch;   /* joule_sample's 2V */
    double *lat_query, *lat_ttft, *lat_token;
    /* RETRO: the database, the tokens of each sequence by position [batch][ctx], one
     * chunk's neighbours [k][2m], and what retrieval cost in the window */
    joule_retro_db *db;
    bool db_borrowed; /* o->db: the caller's, not closed here */
    int chunk, k, ctx;
    int32_t *win, *nbr;
    joule_retro_grid *grid; /* [batch] each sequence's chunk grid */
    int64_t *ids;
    double retr_s;
    uint64_t retr_flops, searches;
} run_bufs;

static void free_bufs(run_bufs *b, int batch) {
    for (int i = 0; b->dec && i < batch; i++) joule_decoder_free(b->dec[i]);
    joule_decoder_batch_free(b->batch);
    free(b->dec);
    free(b->logits);
    free(b->prompts);
    free(b->next);
    free(b->scratch);
    free(b->lat_query);
    free(b->lat_ttft);
    free(b->lat_token);
    free(b->win);
    free(b->grid);
    free(b->nbr);
    free(b->ids);
    if (!b->db_borrowed) joule_db_close(b->db);
}

static int alloc_bufs(run_bufs *b, const joule_model *m, const joule_bench_energy_opts *o, int n_steps) {
    memset(b, 0, sizeof *b);
    const size_t B = (size_t)o->batch;
    b->dec = calloc(B, sizeof *b->dec);
    b->logits = calloc(B, sizeof *b->logits);
    b->prompts = malloc(B * (size_t)o->prompt * sizeof *b->prompts);
    b->next = malloc(B * sizeof *b->next);
    b->scratch = malloc(2 * (size_t)m->cfg.vocab * sizeof *b->scratch);
    b->lat_query = calloc((size_t)o->queries, sizeof(double));
    b->lat_ttft = calloc((size_t)o->queries, sizeof(double));
    b->lat_token = calloc((size_t)(n_steps > 0 ? n_steps : 1), sizeof(double));
    if (!b->dec || !b->logits || !b->prompts || !b->next || !b->scratch || !b->lat_query || !b->lat_ttft ||
        !b->lat_token)
        return joule_fail(JOULE_ERR_NOMEM, "bench energy: out of memory");
    for (size_t i = 0; i < B; i++) {
        int rc = joule_decoder_create(&b->dec[i], m);
        if (rc) return rc;
    }
    if (!joule_config_has_cca(&m->cfg)) return o->batch > 1 ? joule_decoder_batch_create(&b->batch, m, o->batch) : JOULE_OK;
    const joule_retro_config *rc = &m->cfg.retro;
    b->chunk = rc->chunk;
    b->k = rc->k;
    b->ctx = m->cfg.ctx;
    b->win = malloc(B * (size_t)b->ctx * sizeof *b->win);
    b->nbr = malloc(((size_t)b->k * 2 * b->chunk + 1) * sizeof *b->nbr);
    b->ids = malloc(((size_t)b->k + 1) * sizeof *b->ids);
    b->grid = calloc(B, sizeof *b->grid);
    if (!b->win || !b->nbr || !b->ids || !b->grid) return joule_fail(JOULE_ERR_NOMEM, "bench energy: out of memory");
    const char *db_name = o->db_dir ? o->db_dir : "the run's database";
    b->db_borrowed = o->db != NULL;
    int st = b->db_borrowed ? JOULE_OK : joule_db_open(&b->db, o->db_dir);
    if (b->db_borrowed) b->db = o->db;
    else if (!st && o->db_params) st = joule_db_set_params(b->db, o->db_params);
    if (st) return st;
    if (joule_db_chunk(b->db) != rc->chunk)
        return joule_fail(JOULE_ERR_ARG, "%s: database chunks are %d tokens, the model's are %d", db_name,
                          joule_db_chunk(b->db), rc->chunk);
    if (rc->db_id[0] && strcmp(rc->db_id, joule_db_id(b->db)) != 0)
        return joule_fail(JOULE_ERR_ARG, "%s: not the database the model was trained with (id %s, model's %s)",
                          db_name, joule_db_id(b->db), rc->db_id);
    return JOULE_OK;
}

/* RETRO: the chunk of sequence `win` ending at position last is complete; search it and
 * hand the decoder its k neighbours (chunk + continuation), as live generation does
 * (retro/retro_generate.c). Time and counted FLOPs (the query embedding) are retrieval's. */
static int retrieve(run_bufs *b, joule_decoder *d, const int32_t *win, int last) {
    const double t0 = joule_now();
    const uint64_t f0 = joule_flops_counted();
    int rc = joule_retro_decoder_retrieve(d, b->db, win + last + 1 - b->chunk, last, b->ids, b->nbr);
    b->retr_s += joule_now() - t0;
    b->retr_flops += joule_flops_counted() - f0;
    b->searches++;
    return rc;
}

/* Token `tok` into sequence i at its next position (RETRO: retrieving first when that
 * position completes a retrieved chunk of the sequence's grid). */
static int feed(run_bufs *b, int i, int32_t tok) {
    joule_decoder *d = b->dec[i];
    if (b->db) {
        int32_t *win = b->win + (size_t)i * b->ctx;
        win[d->pos] = tok;
        int rc = joule_retro_grid_feed(&b->grid[i], tok) ? retrieve(b, d, win, d->pos) : JOULE_OK;
        if (rc) return rc;
    }
    return joule_decoder_step(d, tok, &b->logits[i]);
}

/* Sequence i's prompt, a stream from its first byte: one batched prefill (RETRO: each
 * retrieved chunk of the prompt searched first, as feed() would when it completes). */
static int prefill(run_bufs *b, int i, const int32_t *prompt, int P) {
    joule_decoder *d = b->dec[i];
    joule_decoder_reset(d);
    int rc = JOULE_OK;
    if (b->db) {
        int32_t *win = b->win + (size_t)i * b->ctx;
        memcpy(win, prompt, (size_t)P * sizeof *win);
        rc = joule_retro_decoder_clear(d);
        joule_retro_grid_init(&b->grid[i], b->chunk);
        for (int p = 0; p < P && !rc; p++)
            if (joule_retro_grid_feed(&b->grid[i], prompt[p])) rc = retrieve(b, d, win, p);
    }
    return rc ? rc : joule_decoder_prefill(d, prompt, P, &b->logits[i]);
}

/* Step t of all n sequences: one batched step (each weight matrix read once for the n
 * rows), or sequence by sequence (batch 1, and RETRO, which retrieves per sequence). */
static int step_all(run_bufs *b, int n, int V) {
    if (!b->batch) {
        for (int i = 0; i < n; i++) {
            int rc = feed(b, i, b->next[i]);
            if (rc) return rc;
        }
        return JOULE_OK;
    }
    const float *rows;
    int rc = joule_decoder_step_batch(b->batch, b->dec, n, b->next, &rows);
    for (int i = 0; i < n && !rc; i++) b->logits[i] = rows + (size_t)i * V;
    return rc;
}

/* One batch of n queries (first query index q0 of `stream`): prefill each, then G-1 greedy
 * steps in lock-step. Records latencies when `lat` (measured batches). */
static int run_batch(run_bufs *b, const joule_tokens *val, const joule_bench_energy_opts *o, int V, int stream,
                     int q0, int n, bool lat, int *step_at) {
    const joule_sampler greedy = {0.0f, 0, 1.0f};
    joule_rng unused;
    joule_rng_seed(&unused, 0);
    for (int i = 0; i < n; i++) draw_prompt(val, o->seed, stream, q0 + i, o->prompt, b->prompts + (size_t)i * o->prompt);
    int rc;
    double t0 = joule_now();
    for (int i = 0; i < n; i++) {
        if ((rc = prefill(b, i, b->prompts + (size_t)i * o->prompt, o->prompt))) return rc;
        if (lat) b->lat_ttft[q0 + i] = joule_now() - t0;
    }
    for (int i = 0; lat && i < n * o->prompt; i++) b->digest = joule_mix64(b->digest, (uint64_t)b->prompts[i]);
    for (int s = 1; s < o->generate; s++) {
        double ts = joule_now();
        for (int i = 0; i < n; i++) b->next[i] = joule_sample(b->logits[i], V, &greedy, &unused, b->scratch);
        if ((rc = step_all(b, n, V))) return rc;
        for (int i = 0; lat && i < n; i++) b->digest = joule_mix64(b->digest, (uint64_t)b->next[i]);
        if (lat) b->lat_token[(*step_at)++] = joule_now() - ts;
    }
    for (int i = 0; i < n; i++) b->next[i] = joule_sample(b->logits[i], V, &greedy, &unused, b->scratch);
    for (int i = 0; lat && i < n; i++) b->digest = joule_mix64(b->digest, (uint64_t)b->next[i]);
    double dt = joule_now() - t0;
    for (int i = 0; lat && i < n; i++) b->lat_query[q0 + i] = dt;
    return JOULE_OK;
}

/* Retrieval's share of the window: time, and FLOPs counting FAISS's search at its analytic
 * cost (it is not a joule_sgemm, so not counted) beside joule's counted FLOPs. */
static void retrieval_figures(const run_bufs *b, joule_bench_energy_result *r) {
    const double Q = r->queries;
    joule_search_cost sc;
    bool known = joule_retro_db_search_cost(b->db, &sc) == JOULE_OK;
    snprintf(r->search_method, sizeof r->search_method, "%s", known ? sc.method : joule_last_error());
    r->retrieval = true;
    r->searches_per_query = (double)b->searches / Q;
    r->flops_search = known ? r->searches_per_query * sc.flops : 0;
    r->retrieval_time_share = r->wall_s > 0 ? b->retr_s / r->wall_s : 0;
    const double retr = r->flops_search + (double)b->retr_flops / Q, all = r->flops_counted + r->flops_search;
    r->retrieval_flops_share = all > 0 ? retr / all : 0;
}

static void label_of(const char *label, char *out, size_t n) {
    const char *base = strrchr(label, '/');
    base = base ? base + 1 : label;
    snprintf(out, n, "%s", base);
    size_t len = strlen(out), ext = strlen(".safetensors");
    if (len > ext && !strcmp(out + len - ext, ".safetensors")) out[len - ext] = '\0';
}

int joule_bench_energy_run(const joule_model *m, const char *label, const joule_bench_energy_opts *o,
                           joule_bench_energy_result *r) {
    memset(r, 0, sizeof *r);
    int rc = check_opts(m, label, o);
    if (rc) return rc;
    label_of(label, r->label, sizeof r->label);
    snprintf(r->arch, sizeof r->arch, "%s", m->cfg.arch);
    r->prompt = o->prompt;
    r->generate = o->generate;
    r->batch = o->batch;
    r->queries = o->queries;
    r->warmup = o->warmup;
    r->seed = o->seed;
    r->threads = joule_get_threads();
    snprintf(r->blas_core, sizeof r->blas_core, "%s", joule_blas_corename());
    const joule_precision prec = m->quant ? m->quant->prec : JOULE_PREC_F32;
    snprintf(r->precision, sizeof r->precision, "%s", joule_precision_name(prec));
    /* fp32 steps of a batch > 1 multiply through the batch's packed weights (joule/model.h) */
    const bool packed = prec == JOULE_PREC_F32 && o->batch > 1 && !joule_config_has_cca(&m->cfg);
    snprintf(r->kernels, sizeof r->kernels, "%s", packed ? "packed" : joule_quant_kernel_name(prec));
    r->weight_bytes_per_token = (double)joule_quant_decode_weight_bytes(m);
    if ((rc = analytic_flops(m, o->prompt, o->generate, r))) return rc;

    char path[4096];
    snprintf(path, sizeof path, "%s/val.bin", o->data_dir);
    joule_tokens val;
    if ((rc = joule_tokens_open(&val, path))) return rc;
    if (val.n_tokens < (uint64_t)o->prompt) {
        joule_tokens_close(&val);
        return joule_fail(JOULE_ERR_FORMAT, "%s: the validation split has %llu tokens, fewer than the prompt's %d",
                          path, (unsigned long long)val.n_tokens, o->prompt);
    }
    const int n_batches = (o->queries + o->batch - 1) / o->batch;
    run_bufs b;
    if ((rc = alloc_bufs(&b, m, o, n_batches * (o->generate - 1)))) goto done;
    const int total = o->warmup + o->queries, V = m->cfg.vocab;
    int done = 0, steps = 0;
    for (int q = 0; q < o->warmup; q += o->batch) {
        int n = o->warmup - q < o->batch ? o->warmup - q : o->batch;
        if ((rc = run_batch(&b, &val, o, V, STREAM_WARMUP, q, n, false, &steps))) goto done;
        done += n;
        if (o->progress) o->progress(o->ctx, done, total);
    }
    b.retr_s = 0;
    b.retr_flops = b.searches = 0;
    joule_energy_window win;
    if ((rc = joule_energy_window_start(&win, o->meters))) goto done;
    double t0 = joule_now();
    for (int q = 0; q < o->queries; q += o->batch) {
        int n = o->queries - q < o->batch ? o->queries - q : o->batch;
        if ((rc = run_batch(&b, &val, o, V, STREAM_MEASURED, q, n, true, &steps))) goto done;
        done += n;
        if (o->progress) o->progress(o->ctx, done, total);
    }
    r->wall_s = joule_now() - t0;
    if ((rc = joule_energy_window_stop(&win, &r->energy))) goto done;
    r->peak_rss_bytes = peak_rss_bytes();
    r->tokens_digest = b.digest;

    const double Q = o->queries, tokens = Q * o->generate;
    r->energy.queries = (uint64_t)o->queries;
    r->energy.tokens = (uint64_t)tokens;
    r->energy.pue = o->pue;
    r->energy.grid_g_per_kwh = o->grid_g_per_kwh;
    r->flops_counted = (double)r->energy.flops / Q;
    r->tokens_per_s = tokens / r->wall_s;
    r->j_per_query = r->energy.joules / Q;
    r->j_per_token = r->energy.joules / tokens;
    r->wh_per_1k_queries = joule_energy_kwh(&r->energy) * 1e6 / Q;
    r->g_co2e_per_1k_queries = joule_energy_kg_co2e(&r->energy) * 1e6 / Q;
    if (b.db) retrieval_figures(&b, r);
    percentiles(b.lat_query, o->queries, &r->query_p50, &r->query_p95, &r->query_p99);
    percentiles(b.lat_ttft, o->queries, &r->ttft_p50, &r->ttft_p95, &r->ttft_p99);
    percentiles(b.lat_token, steps, &r->token_p50, &r->token_p95, &r->token_p99);
done:
    free_bufs(&b, o->batch);
    joule_tokens_close(&val);
    return rc;
}
