/* The comparison's grid of runs, resumable: the folder's compare.json pins the settings,
 * results.jsonl records every finished (or failed) run, and a rerun does only what is
 * missing or failed. Rows are saved after each run, so Ctrl-C loses at most one run. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compare_dist.h"
#include "compare_run.h"
#include "joule/retro.h"
#include "joule/retro_db.h"

#define COMPARE_FORMAT_VERSION 1

/* compare.json: written on the first run, compared on every later one. */
static int pin_settings(const char *dir, const joule_compare_settings *s) {
    char path[4096];
    snprintf(path, sizeof path, "%s/compare.json", dir);
    char *mine = joule_compare_settings_json(s);
    if (!mine) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    FILE *f = fopen(path, "r");
    int rc = JOULE_OK;
    if (!f && errno == ENOENT) {
        char doc[8192];
        int len = snprintf(doc, sizeof doc, "{\"format_version\":%d,\"settings\":%s}\n", COMPARE_FORMAT_VERSION, mine);
        rc = len > 0 && (size_t)len < sizeof doc ? joule_write_file_atomic(path, doc, (size_t)len)
                                                 : joule_fail(JOULE_ERR_RUNTIME, "settings too long");
    } else if (!f) {
        rc = joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    } else {
        char doc[8192];
        size_t got = fread(doc, 1, sizeof doc - 1, f);
        doc[got] = '\0';
        fclose(f);
        cJSON *j = cJSON_Parse(doc);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "format_version");
        const cJSON *saved = cJSON_GetObjectItemCaseSensitive(j, "settings");
        char *theirs = cJSON_IsObject(saved) ? cJSON_PrintUnformatted(saved) : NULL;
        if (!cJSON_IsNumber(v) || v->valueint != COMPARE_FORMAT_VERSION || !theirs)
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: not a joule compare file of format version %d", path,
                            COMPARE_FORMAT_VERSION);
        else if (strcmp(theirs, mine) != 0)
            rc = joule_fail(JOULE_ERR_ARG,
                            "%s: this folder holds runs made with other settings (%s, now %s); use another --out or "
                            "the same options",
                            path, theirs, mine);
        free(theirs);
        cJSON_Delete(j);
    }
    free(mine);
    return rc;
}

/* ---- RETRO's database: built once per folder from the train split ---- */

typedef struct {
    const joule_compare_plan *p;
} retrieval_progress;

static bool on_build(void *ctx, const char *phase, uint64_t done, uint64_t total) {
    const retrieval_progress *rp = ctx;
    const char *what = strcmp(phase, "train") == 0 ? "database: index training sample" : "database: adding chunks";
    if (rp->p->on_retrieval) rp->p->on_retrieval(rp->p->ctx, what, done, total);
    return !(rp->p->interrupt && *rp->p->interrupt);
}

static void on_neighbours(void *ctx, const char *what, uint64_t done, uint64_t total) {
    const retrieval_progress *rp = ctx;
    if (rp->p->on_retrieval) rp->p->on_retrieval(rp->p->ctx, what, done, total);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The comparison's default index for the train split's chunks: exact search for a small
 * database; else IVF with about sqrt(N) lists, which builds the whole default corpus (1.33M
 * chunks of 32) in about a minute here, where joule db build's 4 sqrt(N) took 161 s. */
static int default_index(const joule_compare_settings *s, const char *train_path, char *out, size_t n) {
    joule_tokens t;
    int rc = joule_tokens_open(&t, train_path);
    if (rc) return rc;
    uint64_t chunks = 0;
    for (uint64_t d = 0; d < t.n_docs; d++)
        chunks += (t.doc_offsets[d + 1] - t.doc_offsets[d] + (uint64_t)s->retro_chunk - 1) / (uint64_t)s->retro_chunk;
    joule_tokens_close(&t);
    if (s->db_chunks && chunks > s->db_chunks) chunks = s->db_chunks;
    if (chunks < 50000) snprintf(out, n, "Flat");
    else snprintf(out, n, "IVF%d,Flat", (int)lround(sqrt((double)chunks)));
    return JOULE_OK;
}

/* Builds DIR/db (resuming an interrupted build), computes the neighbour files of the train
 * and validation splits when the settings ask for files (next to them, shared by every
 * RETRO run; on demand, each run searches what it reads), records what it cost in
 * DIR/retrieval.json, and gives the analytic FLOPs of one search and the search parameters
 * every run applies ("" for the index's own). */
static int setup_retrieval(const joule_compare_plan *p, const char *train_path, const char *val_path, const char *db_dir,
                           double *search_flops, char params[32]) {
    const joule_compare_settings *s = p->settings;
    retrieval_progress rp = {p};
    double build_s = NAN, t0 = joule_now();
    char partial[4300];
    snprintf(partial, sizeof partial, "%s.partial", db_dir);
    int rc = JOULE_OK;
    if (!is_dir(db_dir)) {
        joule_db_build_opts o;
        joule_db_build_opts_init(&o);
        const char *src[1] = {train_path};
        o.sources = src;
        o.n_sources = 1;
        o.out_dir = db_dir;
        o.chunk = s->retro_chunk;
        o.max_chunks = s->db_chunks;
        char index[64];
        if (s->db_index[0]) snprintf(index, sizeof index, "%s", s->db_index);
        else if ((rc = default_index(s, train_path, index, sizeof index))) return rc;
        o.index = index;
        o.seed = s->seed;
        o.resume = is_dir(partial);
        o.progress = on_build;
        o.ctx = &rp;
        if ((rc = joule_db_build(&o, NULL, NULL))) return rc;
        build_s = joule_now() - t0;
    }
    /* any RETRO config of these settings: the neighbour files depend on chunk and k only */
    joule_config c = joule_config_default(1, 2 * s->head_dim, 2, 2 * s->head_dim * s->ffn_mult, s->ctx);
    c.retro.chunk = s->retro_chunk;
    joule_retro_config_apply(&c);
    joule_retro_data *rd = NULL;
    const char *paths[2] = {train_path, val_path};
    joule_retro_data_opts ro;
    joule_retro_data_opts_init(&ro);
    ro.on_demand = !s->neighbour_files;
    ro.progress = on_neighbours;
    ro.ctx = &rp;
    double t1 = joule_now();
    if ((rc = joule_retro_data_open_opts(&rd, &c, db_dir, paths, 2, &ro))) return rc;
    double nbr_s = joule_now() - t1;
    joule_retro_db *db = joule_retro_data_db(rd);
    joule_search_cost cost;
    if (s->db_nprobe > 0 && strncmp(joule_db_factory(db), "IVF", 3) == 0) { /* what every run applies */
        snprintf(params, 32, "nprobe=%d", s->db_nprobe);
        rc = joule_db_set_params(db, params);
    }
    if (!rc) rc = joule_retro_db_search_cost(db, &cost);
    if (!rc) {
        *search_flops = cost.flops;
        char path[4200];
        snprintf(path, sizeof path, "%s/retrieval.json", p->out_dir);
        struct stat st;
        /* a later invocation that finds the database keeps the record of its build */
        if (!isnan(build_s) || stat(path, &st) != 0) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "database", db_dir);
            cJSON_AddStringToObject(j, "id", joule_db_id(db));
            cJSON_AddNumberToObject(j, "entries", (double)joule_db_size(db));
            cJSON_AddNumberToObject(j, "chunk", c.retro.chunk);
            cJSON_AddNumberToObject(j, "k", c.retro.k);
            cJSON_AddStringToObject(j, "index", joule_db_factory(db));
            cJSON_AddNumberToObject(j, "dim", joule_db_dim(db));
            cJSON_AddNumberToObject(j, "search_flops", cost.flops);
            cJSON_AddStringToObject(j, "search_method", cost.method);
            if (isnan(build_s)) cJSON_AddNullToObject(j, "build_s");
            else cJSON_AddNumberToObject(j, "build_s", build_s);
            cJSON_AddStringToObject(j, "neighbours", s->neighbour_files ? "files" : "on-demand");
            if (s->neighbour_files) cJSON_AddNumberToObject(j, "neighbours_s", nbr_s);
            else cJSON_AddNullToObject(j, "neighbours_s");
            char *doc = cJSON_Print(j);
            cJSON_Delete(j);
            rc = doc ? joule_write_file_atomic(path, doc, strlen(doc)) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
            free(doc);
        }
    }
    joule_retro_data_close(rd);
    return rc;
}

static bool same_budget(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(fabs(a), fabs(b)); }

int compare_find_row(const joule_compare_row *rows, int n, const char *arch, double budget) {
    for (int i = 0; i < n; i++)
        if (strcmp(rows[i].arch, arch) == 0 && same_budget(rows[i].budget, budget)) return i;
    return -1;
}

/* runs/<arch>-<budget>: "dense-2e12", "moe-1.5e13" */
static void run_stem(char *buf, size_t n, const char *dir, const char *arch, double budget) {
    char b[32], *o = b;
    snprintf(b, sizeof b, "%.4g", budget);
    for (const char *p = b; *p; p++)
        if (*p != '+') *o++ = *p;
    *o = '\0';
    snprintf(buf, n, "%s/runs/%s-%s", dir, arch, b);
}

static int add_row(joule_compare_outcome *out, const joule_compare_row *r) {
    joule_compare_row *g = realloc(out->rows, (size_t)(out->n_rows + 1) * sizeof *g);
    if (!g) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    out->rows = g;
    out->rows[out->n_rows++] = *r;
    return JOULE_OK;
}

/* Does any run that retrieves (RETRO, RETRO-fit) remain to be done? */
static bool todo_retro(const joule_compare_plan *p, const joule_compare_outcome *out) {
    for (int b = 0; b < p->n_budgets; b++)
        for (int a = JOULE_ARCH_RETRO; a <= JOULE_ARCH_RETROFIT; a++) {
            int i = compare_find_row(out->rows, out->n_rows, joule_arch_names[a], p->budgets[b]);
            if (p->archs[a] && !(i >= 0 && out->rows[i].ok)) return true;
        }
    return false;
}

/* The folder: created, its settings pinned, its rows loaded. */
static int open_folder(const joule_compare_plan *p, joule_compare_outcome *out) {
    char path[4096];
    snprintf(path, sizeof path, "%s/runs", p->out_dir);
    if (mkdir(p->out_dir, 0777) && errno != EEXIST)
        return joule_fail(JOULE_ERR_IO, "%s: cannot create: %s", p->out_dir, strerror(errno));
    if (mkdir(path, 0777) && errno != EEXIST)
        return joule_fail(JOULE_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (strlen(p->out_dir) > 400) return joule_fail(JOULE_ERR_ARG, "%s: folder name too long", p->out_dir);
    int rc = pin_settings(p->out_dir, p->settings);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/results.jsonl", p->out_dir);
    rc = joule_compare_rows_load(path, &out->rows, &out->n_rows);
    /* runs a killed spread job finished (docs/COMPARE.md §8) count as finished here too */
    return rc ? rc : compare_rows_adopt(p->out_dir, out);
}

bool compare_to_do(const joule_compare_plan *p, const joule_compare_outcome *out, int a, double budget) {
    if (!p->archs[a]) return false;
    int i = compare_find_row(out->rows, out->n_rows, joule_arch_names[a], budget);
    return !(i >= 0 && out->rows[i].ok);
}

/* The ETA's bookkeeping: FLOPs and seconds of the finished runs, FLOPs left. */
typedef struct {
    double flops_done, secs_done, flops_left;
    int k, todo; /* runs started, runs to do */
} grid_clock;

/* One cell of the grid: sizes (for the progress line), runs, records and saves the row. */
static int run_cell(const joule_compare_plan *p, compare_spread *sp, compare_run_ctx *x, char *log_path, size_t log_n,
                    joule_compare_outcome *out, int a, double budget, grid_clock *clk) {
    const char *arch = joule_arch_names[a];
    int i = compare_find_row(out->rows, out->n_rows, arch, budget);
    joule_compare_row r;
    memset(&r, 0, sizeof r);
    snprintf(r.arch, sizeof r.arch, "%s", arch);
    r.budget = budget;
    r.val_bpb = r.exact_match = r.query_j = r.query_s = r.retrieval_s = NAN;
    r.byte_accuracy = r.logprob = r.edit_distance = r.pass_rate = r.prompts_s = NAN;
    char stem[sizeof r.checkpoint - 16];
    run_stem(stem, sizeof stem, p->out_dir, arch, budget);
    snprintf(r.checkpoint, sizeof r.checkpoint, "%s.safetensors", stem);
    snprintf(log_path, log_n, "%s.log.jsonl", stem);
    if (p->on_run_start) {
        joule_config c;
        uint64_t steps = 0;
        bool sized = joule_compare_size(p->settings, (joule_arch)a, budget, &c, &steps) == JOULE_OK;
        double eta = clk->secs_done > 0 ? clk->secs_done / clk->flops_done * clk->flops_left : NAN;
        p->on_run_start(p->ctx, ++clk->k, clk->todo, arch, budget, sized ? &c : NULL, steps, eta);
    }
    const int di = compare_find_row(out->rows, out->n_rows, "dense", budget);
    x->dense = di >= 0 && out->rows[di].ok ? &out->rows[di] : NULL;
    if (compare_run_one(x, (joule_arch)a, budget, &r) == COMPARE_INTERRUPTED) {
        out->interrupted = true;
        return JOULE_OK;
    }
    clk->flops_left -= budget;
    if (r.ok) { /* a failed run says nothing about the time a budget takes */
        clk->flops_done += budget;
        clk->secs_done += r.wall_s;
    }
    out->ran++;
    int rc = JOULE_OK;
    if (i >= 0) out->rows[i] = r;
    else if ((rc = add_row(out, &r))) return rc;
    if (p->on_run_end) p->on_run_end(p->ctx, &r);
    /* spread: the row file now, results.jsonl at the phase's end on rank 0 */
    rc = sp->size > 1 ? compare_spread_record(sp, &r) : joule_compare_rows_save(p->out_dir, out->rows, out->n_rows);
    if (p->interrupt && *p->interrupt) out->interrupted = true;
    return rc;
}

/* RETRO's database and search cost: set up by rank 0 (the only rank in one process), what it
 * found shared with the others. */
static int prepare_retrieval(const joule_compare_plan *p, const compare_spread *sp, const char *train_path,
                             const char *val_path, compare_run_ctx *x, char db_dir[600], char db_params[32],
                             char retro_error[512], joule_compare_outcome *out) {
    compare_retrieval_info info;
    memset(&info, 0, sizeof info);
    snprintf(db_dir, 600, "%s/db", p->out_dir);
    if (sp->rank == 0) {
        info.ok = setup_retrieval(p, train_path, val_path, db_dir, &info.search_flops, info.params) == JOULE_OK;
        if (!info.ok) snprintf(info.error, sizeof info.error, "%s", joule_last_error());
        info.interrupted = !info.ok && p->interrupt && *p->interrupt;
    }
    int rc = sp->size > 1 ? compare_spread_share_retrieval(sp, &info) : JOULE_OK;
    if (rc) return rc;
    if (info.ok) {
        snprintf(db_params, 32, "%s", info.params);
        x->db_dir = db_dir;
        x->db_params = db_params[0] ? db_params : NULL;
        x->search_flops = info.search_flops;
    } else {
        snprintf(retro_error, 512, "%s", info.error);
    }
    x->retro_error = retro_error;
    out->interrupted = info.interrupted;
    return JOULE_OK;
}

/* The runs of this rank, phase by phase; spread, the rows are exchanged after each phase. */
static int run_cells(const joule_compare_plan *p, compare_spread *sp, compare_run_ctx *x, joule_compare_outcome *out,
                     grid_clock *clk) {
    char log_path[4200];
    x->log_path = log_path;
    int rc = JOULE_OK;
    for (int ph = 0; ph < sp->n_phases && !rc; ph++) {
        for (int i = ph ? sp->phase_end[ph - 1] : 0; i < sp->phase_end[ph] && !rc && !out->interrupted; i++)
            rc = run_cell(p, sp, x, log_path, sizeof log_path, out, sp->cells[i].arch, sp->cells[i].budget, clk);
        if (!rc && sp->size > 1) rc = compare_spread_exchange(sp, p, out);
        if (out->interrupted) break;
    }
    return rc;
}

int joule_compare_grid(const joule_compare_plan *p, joule_compare_outcome *out) {
    memset(out, 0, sizeof *out);
    compare_spread sp;
    compare_spread_init(&sp);
    /* rank 0 alone creates and reads the folder, so every rank plans from the same rows */
    int rc = sp.rank == 0 ? open_folder(p, out) : JOULE_OK;
    if (!rc && sp.size > 1) rc = compare_spread_share_rows(&sp, out);
    if (!rc) rc = compare_spread_plan(&sp, p, out);
    char train_path[4096], val_path[4096];
    snprintf(train_path, sizeof train_path, "%s/train.bin", p->data_dir);
    snprintf(val_path, sizeof val_path, "%s/val.bin", p->data_dir);
    grid_clock clk = {0, 0, 0, 0, sp.n_cells};
    for (int i = 0; i < sp.n_cells; i++) clk.flops_left += sp.cells[i].budget;
    for (int b = 0; b < p->n_budgets && !rc; b++)
        for (int a = 0; a < JOULE_ARCH_COUNT; a++)
            if (p->archs[a] && !compare_to_do(p, out, a, p->budgets[b])) out->skipped++;
    compare_run_ctx x = {p->settings, p->data_dir, train_path, val_path, NULL, p->meters, p->interrupt, p->on_step, p->ctx,
                         NULL, NULL, NULL, 0, NULL};
    char db_params[32] = "", db_dir[600], retro_error[512] = "";
    /* quantised RETRO models are evaluated and benchmarked with the folder's database too */
    const bool quantise = p->n_precisions > 1 || (p->n_precisions == 1 && p->precisions[0] != JOULE_PREC_F32);
    const bool quantise_retro = quantise && (p->archs[JOULE_ARCH_RETRO] || p->archs[JOULE_ARCH_RETROFIT]);
    if (!rc && (todo_retro(p, out) || quantise_retro))
        rc = prepare_retrieval(p, &sp, train_path, val_path, &x, db_dir, db_params, retro_error, out);
    if (!rc && !out->interrupted) rc = run_cells(p, &sp, &x, out, &clk);
    /* spread, every rank now holds every row: rank 0 measures the precisions alone */
    if (!rc && !out->interrupted && quantise && sp.rank == 0) rc = compare_precisions(p, &x, out);
    compare_spread_free(&sp);
    for (int i = 0; i < out->n_rows; i++)
        if (!out->rows[i].ok) out->failed++;
    return rc;
}
