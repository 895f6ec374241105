/* `mpirun -np 2 joule compare` (docs/COMPARE.md §8) against `joule compare` in one process
 * on the tiny corpus of test_compare.c:
 * - the spread comparison writes the same rows (every field but times and energy), the same
 *   fit.json, leakage tables and report.md (time columns masked) as the serial one, with runs
 *   on both ranks;
 * - a rank that fails (its row file cannot be written) ends the job, with its one-line
 *   message, instead of leaving the other rank waiting; the runs finished before are kept
 *   and a rerun in one process resumes from them;
 * - a job whose ranks are killed (kill -9) mid-run is resumed under mpirun: the runs it
 *   finished are skipped, checkpoints untouched.
 * - the plan (compare_spread_plan) gives every run still to do to exactly one rank, RETRO
 *   and RETRO-fit after a dense run of their budget that is also to do, balanced as its rule says.
 * Every job runs under `timeout`, so a hang fails the test instead of stalling ctest. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../bench/compare_dist.h"
#include "testutil.h"

/* test_compare.c's settings with 10 steps at least, so that budgets of 1.5e8 FLOPs train
 * RETRO's smallest model and the whole grid takes seconds under ASan too */
#define SETTINGS                                                                                                  \
    "--ctx 16 --batch 4 --eval-windows 16 --em-windows 8 --queries 0 --bootstrap 20 --retro-chunk 4 --min-steps 10"
#define GRID "--budgets 1e3,1.5e8,3e8,6e8 --archs dense,moe,retro,retro-fit"
#define COMPARE "compare --data ../d --out cmp " SETTINGS

/* Keeps Open MPI's components loaded and unwinds slowly so the ASan build's leak
 * suppressions match (tests/lsan.supp), as CMake does for tests/mpi_*.c. */
#define MPI_ENV "env OMPI_MCA_mca_base_component_disable_dlclose=1 ASAN_OPTIONS=\"$ASAN_OPTIONS:fast_unwind_on_malloc=0\" "

static int g_serial_rc = -1, g_spread_rc = -1;

/* `joule ARGS` in tu_dir/sub, under mpirun -np 2 when mpi, with stdout in sub/out.txt and
 * stderr in sub/err.txt; the exit status (124: timed out). */
static int joule_in(const char *sub, bool mpi, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int joule_in(const char *sub, bool mpi, const char *fmt, ...) {
    const char *bin = getenv("JOULE_BIN"), *mpirun = getenv("JOULE_MPIRUN");
    ck_assert_msg(bin && mpirun, "JOULE_BIN and JOULE_MPIRUN are set by CMake");
    char args[4096], cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/%s' && cd '%s/%s' && %s timeout 300 %s %s '%s' %s > out.txt 2> err.txt",
             tu_dir, sub, tu_dir, sub, mpi ? MPI_ENV : "", mpi ? mpirun : "", mpi ? "-np 2" : "", bin, args);
    int st = system(cmd);
    ck_assert_int_ne(st, -1);
    return WIFSIGNALED(st) ? 1000 + WTERMSIG(st) : WEXITSTATUS(st);
}

/* The corpus of test_compare.c: short made-up words in lines. */
static void make_corpus(void) {
    static const char *const syll[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "ba", "do"};
    FILE *f = fopen(tu_path("corpus.txt"), "w");
    ck_assert_ptr_nonnull(f);
    unsigned x = 7;
    for (int line = 0; line < 400; line++) {
        for (int w = 0; w < 8; w++) {
            x = x * 1664525u + 1013904223u;
            int n = 1 + (int)((x >> 24) % 3);
            for (int k = 0; k < n; k++) fputs(syll[(x >> (4 * k)) % 12], f);
            fputc(w == 7 ? '.' : ' ', f);
        }
        fputs(line % 5 == 4 ? "\n\n" : "\n", f);
    }
    fclose(f);
}

/* The reference: the grid in one process at one thread (the per-run threads of the spread
 * form's default), and the same grid spread over two ranks. */
static void setup(void) {
    tu_make_dir("joule_test_compare_spread.");
    make_corpus();
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --out d --split blank-line --val-fraction 0.2"), 0);
    g_serial_rc = joule_in("serial", false, COMPARE " " GRID " --threads 1");
    g_spread_rc = joule_in("spread", true, COMPARE " " GRID);
}

static cJSON *load_json(const char *name) {
    char *text = tu_read_in(name, NULL);
    ck_assert_msg(text != NULL, "%s is missing", name);
    cJSON *j = cJSON_Parse(text);
    ck_assert_msg(j != NULL, "%s does not parse", name);
    free(text);
    return j;
}

/* results.jsonl of folder sub as an array of rows. */
static cJSON *load_rows(const char *sub) {
    char *text = tu_read(tu_path("%s/cmp/results.jsonl", sub), NULL);
    ck_assert_msg(text != NULL, "%s/cmp/results.jsonl is missing", sub);
    cJSON *rows = cJSON_CreateArray();
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *r = cJSON_Parse(line);
        ck_assert_msg(cJSON_IsObject(r), "not a row: %s", line);
        cJSON_AddItemToArray(rows, r);
    }
    free(text);
    return rows;
}

/* What depends on the clock (durations, energy from CPU time) differs between any two runs. */
static bool timed(const char *key) {
    const size_t n = strlen(key);
    return (n > 2 && strcmp(key + n - 2, "_s") == 0) || (n > 2 && strcmp(key + n - 2, "_j") == 0) ||
           strstr(key, "energy_j") != NULL;
}

/* a == b, value for value, except the timed keys; `where` names the place for the message. */
static void expect_same(const cJSON *a, const cJSON *b, const char *where) {
    ck_assert_msg(a->type == b->type, "%s: types differ", where);
    if (cJSON_IsNumber(a)) {
        ck_assert_msg(a->valuedouble == b->valuedouble, "%s: %.17g vs %.17g", where, a->valuedouble, b->valuedouble);
    } else if (cJSON_IsString(a)) {
        ck_assert_msg(strcmp(a->valuestring, b->valuestring) == 0, "%s: '%s' vs '%s'", where, a->valuestring,
                      b->valuestring);
    } else if (cJSON_IsArray(a) || cJSON_IsObject(a)) {
        ck_assert_msg(cJSON_GetArraySize(a) == cJSON_GetArraySize(b), "%s: %d vs %d entries", where,
                      cJSON_GetArraySize(a), cJSON_GetArraySize(b));
        const cJSON *x = a->child, *y = b->child;
        for (int i = 0; x && y; x = x->next, y = y->next, i++) {
            char sub[512];
            if (cJSON_IsObject(a)) {
                ck_assert_msg(strcmp(x->string, y->string) == 0, "%s: key %s vs %s", where, x->string, y->string);
                if (timed(x->string)) continue;
                snprintf(sub, sizeof sub, "%s.%s", where, x->string);
            } else {
                snprintf(sub, sizeof sub, "%s[%d]", where, i);
            }
            expect_same(x, y, sub);
        }
    }
}

/* The rows of `sub` equal the reference's rows of the same runs (in the reference's order
 * when `ordered`: a resumed folder lists the runs it adopted first, in one process too). */
static void expect_rows_of_reference(const char *sub, int expect_n, bool ordered) {
    cJSON *ref = load_rows("serial"), *rows = load_rows(sub);
    ck_assert_int_eq(cJSON_GetArraySize(rows), expect_n);
    int last = -1;
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        const char *arch = cJSON_GetObjectItem(r, "arch")->valuestring;
        double budget = cJSON_GetObjectItem(r, "budget")->valuedouble;
        int at = 0;
        const cJSON *q = NULL;
        cJSON_ArrayForEach(q, ref) {
            if (strcmp(cJSON_GetObjectItem(q, "arch")->valuestring, arch) == 0 &&
                cJSON_GetObjectItem(q, "budget")->valuedouble == budget)
                break;
            at++;
        }
        ck_assert_msg(q != NULL, "%s %g: no such run in the reference", arch, budget);
        ck_assert_msg(!ordered || at > last, "%s %g: rows not in the reference's order", arch, budget);
        last = at;
        char where[128];
        snprintf(where, sizeof where, "%s/results.jsonl %s %g", sub, arch, budget);
        expect_same(q, r, where);
    }
    cJSON_Delete(ref);
    cJSON_Delete(rows);
}

/* report.md with what depends on the clock blanked: table columns headed by a time or an
 * energy, and "<number> s" in the text. */
static char *masked_report(const char *sub) {
    char *text = tu_read(tu_path("%s/cmp/report.md", sub), NULL);
    ck_assert_msg(text != NULL, "%s/cmp/report.md is missing", sub);
    size_t cap = 2 * strlen(text) + 16, len = 0;
    char *out = malloc(cap);
    bool drop[64] = {false}, in_table = false;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] != '|') {
            in_table = false;
            for (char *p = line; *p; p++) /* "built in 0.1 s" */
                if (*p >= '0' && *p <= '9' && (p == line || p[-1] == ' ')) {
                    char *e = p;
                    while ((*e >= '0' && *e <= '9') || *e == '.') e++;
                    if (e[0] == ' ' && e[1] == 's') memset(p, '#', (size_t)(e - p));
                }
            len += (size_t)snprintf(out + len, cap - len, "%s\n", line);
            continue;
        }
        int col = 0;
        for (char *save2 = NULL, *cell = strtok_r(line, "|", &save2); cell; cell = strtok_r(NULL, "|", &save2), col++) {
            if (col >= 64) break;
            if (!in_table) /* the header */
                drop[col] = strstr(cell, " s ") || strstr(cell, "energy") || strstr(cell, "time") ||
                            strstr(cell, "J/query") || strstr(cell, "latency");
            if (!drop[col]) len += (size_t)snprintf(out + len, cap - len, "|%s", cell);
        }
        len += (size_t)snprintf(out + len, cap - len, "|\n");
        in_table = true;
    }
    free(text);
    return out;
}

START_TEST(test_spread_equals_serial) {
    ck_assert_int_eq(g_serial_rc, 1); /* the 1e3 budget fails in both, as a row */
    ck_assert_int_eq(g_spread_rc, g_serial_rc);
    expect_rows_of_reference("spread", 16, true);
    /* both ranks ran runs, all 16 of them between them */
    ck_assert(tu_file_has("spread/out.txt", "rank 0: run 1 of"));
    ck_assert(tu_file_has("spread/out.txt", "rank 1: run 1 of"));
    ck_assert(tu_file_has("spread/out.txt", "16 runs done, 0 already finished, 4 failed"));
    /* the fits, intervals, multipliers, backtests and leakage tables */
    cJSON *a = load_json("serial/cmp/fit.json"), *b = load_json("spread/cmp/fit.json");
    expect_same(a, b, "fit.json");
    cJSON_Delete(a);
    cJSON_Delete(b);
    const char *leak[] = {"retro-1.5e08", "retro-6e08", "retro-fit-3e08"};
    for (int i = 0; i < 3; i++) {
        char s[128], p[128];
        snprintf(s, sizeof s, "serial/cmp/runs/%s.leakage.json", leak[i]);
        snprintf(p, sizeof p, "spread/cmp/runs/%s.leakage.json", leak[i]);
        a = load_json(s);
        b = load_json(p);
        expect_same(a, b, p);
        cJSON_Delete(a);
        cJSON_Delete(b);
    }
    char *ra = masked_report("serial"), *rb = masked_report("spread");
    ck_assert_msg(strcmp(ra, rb) == 0, "report.md differs:\n%s\n----\n%s", ra, rb);
    ck_assert_ptr_nonnull(strstr(ra, "| retro-fit | 6e+08 |"));
    free(ra);
    free(rb);
    /* rank 0 gathered every row: no row file is left */
    DIR *d = opendir(tu_path("spread/cmp/runs"));
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) ck_assert_msg(!strstr(e->d_name, ".row.json"), "%s left", e->d_name);
    closedir(d);
}
END_TEST

static double mtime_of(const char *rel) {
    struct stat st;
    ck_assert_msg(stat(tu_path("%s", rel), &st) == 0, "%s is missing", rel);
    return (double)st.st_mtim.tv_sec + 1e-9 * (double)st.st_mtim.tv_nsec;
}

static bool is_file(const char *rel) {
    struct stat st;
    return stat(tu_path("%s", rel), &st) == 0 && S_ISREG(st.st_mode);
}

/* Rank 1's second run cannot record its row (a folder sits where its row file goes): the
 * job ends at once with that rank's line, though rank 0 is still running or waiting. */
START_TEST(test_failing_rank_ends_the_job) {
    /* the plan: moe-3e8 and then moe-1.5e8 on rank 1, the dense runs on rank 0 */
    ck_assert_int_eq(mkdir(tu_path("fail"), 0777), 0);
    ck_assert_int_eq(mkdir(tu_path("fail/cmp"), 0777), 0);
    ck_assert_int_eq(mkdir(tu_path("fail/cmp/runs"), 0777), 0);
    ck_assert_int_eq(mkdir(tu_path("fail/cmp/runs/moe-1.5e08.row.json"), 0777), 0);
    int rc = joule_in("fail", true, COMPARE " --budgets 1.5e8,3e8 --archs dense,moe");
    ck_assert_msg(rc != 0 && rc != 124, "exit status %d (124: it hung)", rc);
    char *err = tu_read_in("fail/err.txt", NULL);
    ck_assert_ptr_nonnull(err);
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(err, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        /* mpirun's notice of the abort; rank 0 told to stop by the SIGTERM mpirun sends first */
        if (strncmp(l, "joule", 5) != 0 || strncmp(l, "joule compare: interrupt: ", 26) == 0) continue;
        lines++;
        ck_assert_msg(strstr(l, "joule compare: rank 1: ") && strstr(l, "moe-1.5e08.row.json"), "%s", l);
    }
    ck_assert_int_eq(lines, 1);
    free(err);
    /* rank 1's first run was finished and recorded */
    ck_assert(is_file("fail/cmp/runs/moe-3e08.row.json"));
    const double before = mtime_of("fail/cmp/runs/moe-3e08.safetensors");
    /* cause removed, the same comparison in one process takes the finished runs over */
    ck_assert_int_eq(rmdir(tu_path("fail/cmp/runs/moe-1.5e08.row.json")), 0);
    ck_assert_int_eq(joule_in("fail", false, COMPARE " --budgets 1.5e8,3e8 --archs dense,moe --threads 1"), 0);
    ck_assert(tu_file_has("fail/out.txt", "already finished"));
    ck_assert_double_eq(mtime_of("fail/cmp/runs/moe-3e08.safetensors"), before);
    ck_assert(!is_file("fail/cmp/runs/moe-3e08.row.json"));
    expect_rows_of_reference("fail", 4, false);
}
END_TEST

/* The pids whose parent is `parent`. */
static int children(pid_t parent, pid_t *out, int max) {
    int n = 0;
    DIR *d = opendir("/proc");
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d)) != NULL && n < max;) {
        char path[300], buf[512];
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t got = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[got] = '\0';
        const char *close = strrchr(buf, ')'); /* "pid (comm) state ppid ..." */
        char state;
        int ppid;
        if (close && sscanf(close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent) out[n++] = atoi(e->d_name);
    }
    closedir(d);
    return n;
}

/* kill -9 of both ranks while rank 0 trains a long run and rank 1 has finished its two: a
 * rerun under mpirun finds those two finished and redoes nothing. */
START_TEST(test_resume_after_kill) {
    const char *bin = getenv("JOULE_BIN"), *mpirun = getenv("JOULE_MPIRUN");
    ck_assert_int_eq(mkdir(tu_path("kill"), 0777), 0);
    /* the plan: dense-1e12 on rank 0, dense-3e8 then dense-1.5e8 on rank 1 */
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "exec " MPI_ENV "%s -np 2 '%s' " COMPARE " --budgets 1.5e8,3e8,1e12 --archs dense", mpirun,
             bin);
    pid_t sh = fork();
    ck_assert_int_ge(sh, 0);
    if (sh == 0) {
        if (chdir(tu_path("kill")) != 0 || !freopen("out.txt", "w", stdout) || !freopen("err.txt", "w", stderr)) _exit(99);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(98);
    }
    bool ready = false; /* rank 1's rows recorded, rank 0 in its long run's steps */
    for (int i = 0; i < 2400 && !ready; i++) {
        usleep(50 * 1000);
        char *log = tu_read_in("kill/cmp/runs/dense-1e12.log.jsonl", NULL);
        ready = is_file("kill/cmp/runs/dense-1.5e08.row.json") && is_file("kill/cmp/runs/dense-3e08.row.json") && log &&
                strchr(log, '\n') && strchr(strchr(log, '\n') + 1, '\n');
        free(log);
    }
    pid_t ranks[8];
    int n = children(sh, ranks, 8); /* sh exec'd mpirun, whose children are the ranks */
    for (int i = 0; i < n; i++) kill(ranks[i], SIGKILL);
    int status = 0;
    pid_t w = 0;
    for (int i = 0; i < 1200 && (w = waitpid(sh, &status, WNOHANG)) == 0; i++) usleep(50 * 1000);
    if (w == 0) {
        kill(sh, SIGKILL);
        waitpid(sh, &status, 0);
    }
    ck_assert_msg(ready, "rank 1's runs never finished while rank 0 trained");
    ck_assert_msg(n == 2 && w == sh && !(WIFEXITED(status) && WEXITSTATUS(status) == 0), "%d ranks; mpirun: %d", n,
                  status);
    const double a = mtime_of("kill/cmp/runs/dense-1.5e08.safetensors"), b = mtime_of("kill/cmp/runs/dense-3e08.safetensors");
    /* resumed under mpirun, the long budget left out */
    ck_assert_int_eq(joule_in("kill", true, COMPARE " --budgets 1.5e8,3e8 --archs dense"), 0);
    ck_assert(tu_file_has("kill/out.txt", "0 runs done, 2 already finished, 0 failed"));
    ck_assert_double_eq(mtime_of("kill/cmp/runs/dense-1.5e08.safetensors"), a);
    ck_assert_double_eq(mtime_of("kill/cmp/runs/dense-3e08.safetensors"), b);
    ck_assert(!is_file("kill/cmp/runs/dense-1.5e08.row.json"));
    expect_rows_of_reference("kill", 2, true);
}
END_TEST

/* The plan as rank r of `size` sees it, for a grid of 5 budgets x 4 archs in which dense 5e11
 * is finished and retro 1e12 failed earlier. */
static void plan_as(int r, int size, compare_spread *sp, joule_compare_settings *st, joule_compare_plan *p,
                    joule_compare_outcome *out) {
    static const double budgets[5] = {1e3, 5e11, 1e12, 2e12, 4e12};
    static joule_compare_row rows[2];
    memset(rows, 0, sizeof rows);
    snprintf(rows[0].arch, sizeof rows[0].arch, "dense");
    rows[0].budget = 5e11;
    rows[0].ok = true;
    snprintf(rows[1].arch, sizeof rows[1].arch, "retro");
    rows[1].budget = 1e12;
    joule_compare_settings_init(st);
    memset(p, 0, sizeof *p);
    p->settings = st;
    p->budgets = budgets;
    p->n_budgets = 5;
    for (int a = 0; a < JOULE_ARCH_COUNT; a++) p->archs[a] = true;
    memset(out, 0, sizeof *out);
    out->rows = rows;
    out->n_rows = 2;
    compare_spread_init(sp);
    sp->rank = r;
    sp->size = size;
    ck_assert_int_eq(compare_spread_plan(sp, p, out), JOULE_OK);
}

START_TEST(test_plan_covers_every_run_once) {
    const int sizes[4] = {1, 2, 3, 7};
    for (int si = 0; si < 4; si++) {
        const int size = sizes[si];
        int seen[5][JOULE_ARCH_COUNT] = {{0}}, phase_of[5][JOULE_ARCH_COUNT];
        double load[2][8] = {{0}}, biggest[2] = {0, 0};
        for (int r = 0; r < size; r++) {
            compare_spread sp;
            joule_compare_settings st;
            joule_compare_plan p;
            joule_compare_outcome out;
            plan_as(r, size, &sp, &st, &p, &out);
            ck_assert_int_eq(sp.n_phases, size == 1 ? 1 : 2);
            for (int i = 0; i < sp.n_cells; i++) {
                const compare_cell *c = &sp.cells[i];
                int b = 0;
                while (b < 5 && p.budgets[b] != c->budget) b++;
                ck_assert_int_lt(b, 5);
                seen[b][c->arch]++;
                const int ph = i < sp.phase_end[0] ? 0 : 1;
                phase_of[b][c->arch] = ph;
                load[ph][r] += c->cost;
                if (c->cost > biggest[ph]) biggest[ph] = c->cost;
                /* one process: grid order; spread, each rank longest first within a phase */
                if (i > 0 && (size > 1 ? i != sp.phase_end[0] : true))
                    ck_assert(size == 1 ? (c->budget > c[-1].budget || (c->budget == c[-1].budget && c->arch > c[-1].arch))
                                        : c->cost <= c[-1].cost);
            }
            compare_spread_free(&sp);
        }
        for (int b = 0; b < 5; b++)
            for (int a = 0; a < JOULE_ARCH_COUNT; a++) {
                /* dense 5e11 is finished; everything else, the failed retro 1e12 included, to do */
                ck_assert_int_eq(seen[b][a], b == 1 && a == JOULE_ARCH_DENSE ? 0 : 1);
                if (size == 1 || !seen[b][a]) continue;
                /* after the dense run of its budget when that one is to do, else at once */
                const bool waits = a >= JOULE_ARCH_RETRO && b != 1;
                ck_assert_int_eq(phase_of[b][a], waits ? 1 : 0);
            }
        /* the greedy rule: no rank ends a phase more than its largest run above another */
        for (int ph = 0; ph < 2 && size > 1; ph++)
            for (int r = 0; r < size; r++)
                for (int q = 0; q < size; q++) ck_assert(load[ph][r] - load[ph][q] <= biggest[ph]);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("compare_spread");
    /* the fixture's two comparisons take ~5 s here, about a minute under ASan */
    TCase *tc = tu_tcase(s, "compare_spread", 600, NULL, NULL);
    tcase_add_unchecked_fixture(tc, setup, tu_remove_dir);
    tcase_add_test(tc, test_spread_equals_serial);
    tcase_add_test(tc, test_failing_rank_ends_the_job);
    tcase_add_test(tc, test_resume_after_kill);
    TCase *plan = tu_tcase(s, "plan", 30, NULL, NULL);
    tcase_add_test(plan, test_plan_covers_every_run_once);
    return tu_run_suite(s);
}
