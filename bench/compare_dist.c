/* The comparison grid spread over mpirun's ranks: the plan (who runs what), the row files a
 * rank records its runs in, and the exchanges that give every rank every row
 * (bench/compare_dist.h says how; docs/COMPARE.md §8 what it guarantees). */
#include "compare_dist.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compare_run.h"
#include "joule/dist.h"

void compare_spread_init(compare_spread *s) {
    memset(s, 0, sizeof *s);
    s->rank = joule_dist_rank();
    s->size = joule_dist_size();
    s->n_phases = 1;
}

void compare_spread_free(compare_spread *s) {
    free(s->cells);
    free(s->done);
    s->cells = NULL;
    s->done = NULL;
    s->n_cells = s->n_done = 0;
}

static int arch_index(const char *name) {
    int a = 0;
    while (a < JOULE_ARCH_COUNT && strcmp(joule_arch_names[a], name) != 0) a++;
    return a;
}

/* The training FLOPs the run plans to spend (RETRO-fit: its fitting stage); 0 when sizing
 * fails, since such a run fails at once. */
static double planned_flops(const joule_compare_settings *s, int a, double budget) {
    joule_config c;
    uint64_t steps;
    if (joule_compare_size(s, (joule_arch)a, budget, &c, &steps) != JOULE_OK) return 0;
    return a == JOULE_ARCH_RETROFIT ? compare_fit_budget(s, &c, budget) : budget;
}

/* Longest first; equal costs keep grid order, so every rank sorts alike. */
static int by_cost(const void *x, const void *y) {
    const compare_cell *a = x, *b = y;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;
    if (a->budget != b->budget) return a->budget < b->budget ? -1 : 1;
    return a->arch - b->arch;
}

/* Cells of one phase to ranks: each, longest first, to the rank with the fewest planned
 * FLOPs so far (the lowest rank on a tie); this rank's are appended to s->cells. */
static int assign(compare_spread *s, compare_cell *phase, int n) {
    qsort(phase, (size_t)n, sizeof *phase, by_cost);
    double *load = calloc((size_t)s->size, sizeof *load);
    if (!load) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        int r = 0;
        for (int k = 1; k < s->size; k++)
            if (load[k] < load[r]) r = k;
        load[r] += phase[i].cost;
        if (r == s->rank) s->cells[s->n_cells++] = phase[i];
    }
    free(load);
    return JOULE_OK;
}

int compare_spread_plan(compare_spread *s, const joule_compare_plan *p, const joule_compare_outcome *out) {
    s->n_loaded = out->n_rows;
    s->n_cells = 0;
    const size_t max = (size_t)p->n_budgets * JOULE_ARCH_COUNT;
    compare_cell *todo = malloc((max ? max : 1) * 2 * sizeof *todo);
    s->cells = malloc((max ? max : 1) * sizeof *s->cells);
    if (!todo || !s->cells) {
        free(todo);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    /* phase 2: RETRO and RETRO-fit runs whose dense run of the budget is also to do (they
     * read its checkpoint and its row); phase 1: the rest */
    compare_cell *first = todo, *second = todo + max;
    int n1 = 0, n2 = 0;
    for (int b = 0; b < p->n_budgets; b++)
        for (int a = 0; a < JOULE_ARCH_COUNT; a++) {
            const double budget = p->budgets[b];
            if (!compare_to_do(p, out, a, budget)) continue;
            compare_cell c = {a, budget, s->size > 1 ? planned_flops(p->settings, a, budget) : budget};
            const bool waits = a >= JOULE_ARCH_RETRO && compare_to_do(p, out, JOULE_ARCH_DENSE, budget);
            if (waits && s->size > 1) second[n2++] = c;
            else first[n1++] = c;
        }
    int rc = JOULE_OK;
    if (s->size == 1) { /* one process: grid order, as the runs were always done */
        memcpy(s->cells, first, (size_t)n1 * sizeof *first);
        s->n_cells = s->phase_end[0] = s->phase_end[1] = n1;
        s->n_phases = 1;
    } else {
        rc = assign(s, first, n1);
        s->phase_end[0] = s->n_cells;
        if (!rc) rc = assign(s, second, n2);
        s->phase_end[1] = s->n_cells;
        s->n_phases = 2;
    }
    free(todo);
    return rc;
}

int compare_spread_share_rows(const compare_spread *s, joule_compare_outcome *out) {
    int64_t n = out->n_rows;
    int rc = joule_dist_bcast(&n, sizeof n, 0);
    if (rc) return rc;
    if (s->rank != 0) {
        if (n < 0 || n > INT_MAX || (uint64_t)n > SIZE_MAX / sizeof *out->rows)
            return joule_fail(JOULE_ERR_RUNTIME, "rank 0 sent %lld rows", (long long)n);
        out->rows = n ? malloc((size_t)n * sizeof *out->rows) : NULL;
        if (n && !out->rows) return joule_fail(JOULE_ERR_NOMEM, "out of memory for %lld rows", (long long)n);
        out->n_rows = (int)n;
    }
    return joule_dist_bcast(out->rows, (size_t)n * sizeof *out->rows, 0);
}

int compare_spread_share_retrieval(const compare_spread *s, compare_retrieval_info *info) {
    (void)s;
    return joule_dist_bcast(info, sizeof *info, 0);
}

/* runs/<arch>-<budget>.row.json beside runs/<arch>-<budget>.safetensors */
static void row_file(char *buf, size_t n, const char *checkpoint) {
    static const char ext[] = ".safetensors";
    size_t len = strlen(checkpoint), e = sizeof ext - 1;
    if (len >= e && strcmp(checkpoint + len - e, ext) == 0) len -= e;
    snprintf(buf, n, "%.*s.row.json", (int)len, checkpoint);
}

static int write_row_file(const joule_compare_row *r) {
    char path[sizeof r->checkpoint + 16];
    row_file(path, sizeof path, r->checkpoint);
    char *json = joule_compare_row_json(r);
    if (!json) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    size_t len = strlen(json);
    char *line = realloc(json, len + 2);
    if (!line) {
        free(json);
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    memcpy(line + len, "\n", 2);
    int rc = joule_write_file_atomic(path, line, len + 1);
    free(line);
    return rc;
}

int compare_spread_record(compare_spread *s, const joule_compare_row *r) {
    int rc = write_row_file(r);
    if (rc) return rc;
    joule_compare_row *g = realloc(s->done, (size_t)(s->n_done + 1) * sizeof *g);
    if (!g) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    s->done = g;
    s->done[s->n_done++] = *r;
    return JOULE_OK;
}

/* r replaces the row of its run, or joins the rows at the end. */
static int place(joule_compare_outcome *out, const joule_compare_row *r) {
    int i = compare_find_row(out->rows, out->n_rows, r->arch, r->budget);
    if (i >= 0) {
        out->rows[i] = *r;
        return JOULE_OK;
    }
    joule_compare_row *g = realloc(out->rows, (size_t)(out->n_rows + 1) * sizeof *g);
    if (!g) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    out->rows = g;
    out->rows[out->n_rows++] = *r;
    return JOULE_OK;
}

/* Grid order: budget, then arch. */
static int by_grid(const void *x, const void *y) {
    const joule_compare_row *a = x, *b = y;
    if (a->budget != b->budget) return a->budget < b->budget ? -1 : 1;
    return arch_index(a->arch) - arch_index(b->arch);
}

static void remove_row_files(const joule_compare_row *rows, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char path[sizeof rows[i].checkpoint + 16];
        row_file(path, sizeof path, rows[i].checkpoint);
        /* a file left behind is adopted again next time, which is harmless */
        if (unlink(path) != 0 && errno != ENOENT) fprintf(stderr, "joule: warning: %s: cannot remove: %s\n", path, strerror(errno));
    }
}

/* Every rank's rows of this phase into all, rank by rank (caller frees); *total their
 * number, *own where this rank's begin. */
static int gather_rows(const compare_spread *s, joule_compare_row **all, size_t *total, size_t *own) {
    int64_t mine = s->n_done;
    int64_t *counts = malloc((size_t)s->size * sizeof *counts);
    size_t *bytes = malloc(2 * (size_t)s->size * sizeof *bytes);
    int rc = counts && bytes ? joule_dist_allgather(&mine, counts, sizeof mine) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    size_t n = 0;
    for (int r = 0; r < s->size && !rc; r++) {
        if (counts[r] < 0 || counts[r] > JOULE_COMPARE_MAX_BUDGETS * JOULE_ARCH_COUNT)
            rc = joule_fail(JOULE_ERR_RUNTIME, "rank %d reports %lld runs", r, (long long)counts[r]);
        bytes[r] = (size_t)counts[r] * sizeof **all;
        bytes[s->size + r] = n * sizeof **all;
        if (r == s->rank) *own = n;
        n += (size_t)counts[r];
    }
    *all = NULL;
    if (!rc && !(*all = malloc((n ? n : 1) * sizeof **all))) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    if (!rc) rc = joule_dist_allgatherv(s->done, (size_t)s->n_done * sizeof *s->done, *all, bytes, bytes + s->size);
    *total = n;
    free(counts);
    free(bytes);
    return rc;
}

int compare_spread_exchange(compare_spread *s, const joule_compare_plan *p, joule_compare_outcome *out) {
    double stop = out->interrupted ? 1 : 0; /* Ctrl-C on any rank stops them all */
    int rc = joule_dist_allreduce_max_f64(&stop, 1);
    joule_compare_row *all = NULL;
    size_t n = 0, own = 0;
    if (!rc) rc = gather_rows(s, &all, &n, &own);
    /* this rank's own rows are in place already; the others' join them */
    for (size_t i = 0; i < n && !rc; i++)
        if (i < own || i >= own + (size_t)s->n_done) rc = place(out, &all[i]);
    if (!rc && out->n_rows > s->n_loaded)
        qsort(out->rows + s->n_loaded, (size_t)(out->n_rows - s->n_loaded), sizeof *out->rows, by_grid);
    if (!rc && s->rank == 0 && n > 0) {
        rc = joule_compare_rows_save(p->out_dir, out->rows, out->n_rows);
        if (!rc) remove_row_files(all, n);
    }
    free(all);
    s->ran += (int)n;
    out->ran = s->ran;
    s->n_done = 0;
    out->interrupted = stop > 0;
    return rc;
}

/* Names of the regular files dir/runs/<x>.row.json, in directory order (caller frees). */
static int list_row_files(const char *runs, char ***names, int *n) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(runs);
    if (!d) return errno == ENOENT ? JOULE_OK : joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", runs, strerror(errno));
    static const char ext[] = ".row.json";
    int rc = JOULE_OK;
    for (struct dirent *e; (e = readdir(d)) != NULL && !rc;) {
        size_t len = strlen(e->d_name);
        if (len <= sizeof ext - 1 || strcmp(e->d_name + len - (sizeof ext - 1), ext) != 0) continue;
        char path[8192];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", runs, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue; /* not a row someone wrote */
        char **g = realloc(*names, (size_t)(*n + 1) * sizeof *g);
        char *copy = strdup(path);
        if (g) *names = g;
        if (!g || !copy) {
            free(copy);
            rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        } else {
            (*names)[(*n)++] = copy;
        }
    }
    closedir(d);
    return rc;
}

static int load_row_file(const char *path, joule_compare_row *r) {
    joule_compare_row *rows = NULL;
    int n = 0, rc = joule_compare_rows_load(path, &rows, &n);
    if (!rc && n != 1) rc = joule_fail(JOULE_ERR_FORMAT, "%s: holds %d rows, not 1", path, n);
    if (!rc) *r = rows[0];
    free(rows);
    return rc;
}

int compare_rows_adopt(const char *dir, joule_compare_outcome *out) {
    char runs[4200];
    snprintf(runs, sizeof runs, "%s/runs", dir);
    char **names = NULL;
    int n = 0, rc = list_row_files(runs, &names, &n);
    joule_compare_row *found = n ? malloc((size_t)n * sizeof *found) : NULL;
    if (!rc && n && !found) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !rc; i++) rc = load_row_file(names[i], &found[i]);
    if (!rc && n) {
        /* in grid order, as the runs would have been saved by one process */
        qsort(found, (size_t)n, sizeof *found, by_grid);
        for (int i = 0; i < n && !rc; i++) rc = place(out, &found[i]);
        if (!rc) rc = joule_compare_rows_save(dir, out->rows, out->n_rows);
        for (int i = 0; i < n && !rc; i++)
            if (unlink(names[i]) != 0 && errno != ENOENT)
                rc = joule_fail(JOULE_ERR_IO, "%s: cannot remove: %s", names[i], strerror(errno));
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    free(found);
    return rc;
}
