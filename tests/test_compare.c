/* `joule compare` end to end on a tiny corpus: every run of every arch (dense, MoE, RETRO,
 * RETRO-fit) spends its budget within 2% (counted FLOPs; RETRO-fit its fitting budget), a budget too small to train is a failed row with its error
 * and exit 1, a rerun skips the finished runs, and the report files parse.
 * The binary comes from $JOULE_BIN; everything happens in a temp folder. One comparison is
 * run by the fixture and inspected by the tests. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <signal.h>
#include <utime.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static int g_first_rc = -1;

/* Three budgets (the fewest a dense fit takes; RETRO's smallest model needs ~5e8 for its 50
 * steps) plus one too small for any model. */
#define BUDGETS "1e3,6e8,1.2e9,2.4e9"
#define SETTINGS                                                                                              \
    "--ctx 16 --batch 4 --eval-windows 16 --em-windows 8 --samples 3 --queries 2 --bootstrap 20 --threads 1 "     \
    "--retro-chunk 4 " \
    "--archs dense,moe,retro,retro-fit"
#define COMPARE "compare --data d --out c --budgets " BUDGETS " " SETTINGS

static double mtime_of(const char *name) {
    const char *path = tu_path("%s", name);
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "%s is missing", path);
    return (double)st.st_mtim.tv_sec + 1e-9 * (double)st.st_mtim.tv_nsec;
}

/* Short made-up words in lines: enough bytes for random training windows and a validation
 * split with several exact-match prompts. */
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

static void setup(void) {
    tu_make_dir("joule_test_compare.");
    make_corpus();
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --out d --split blank-line --val-fraction 0.2"), 0);
    g_first_rc = tu_joule(COMPARE);
}

/* results.jsonl as a cJSON array of its rows. */
static cJSON *load_rows(void) {
    char *text = tu_read_in("c/results.jsonl", NULL);
    ck_assert_ptr_nonnull(text);
    cJSON *rows = cJSON_CreateArray();
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *r = cJSON_Parse(line);
        ck_assert_msg(cJSON_IsObject(r), "results.jsonl: not an object: %s", line);
        cJSON_AddItemToArray(rows, r);
    }
    free(text);
    return rows;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "field '%s' is not a number", key);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsString(v), "field '%s' is not a string", key);
    return v->valuestring;
}

START_TEST(test_every_arch_spends_its_budget) {
    cJSON *rows = load_rows();
    int ok[4] = {0, 0, 0, 0};
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        if (strcmp(str(r, "status"), "ok") != 0) continue;
        const char *arch = str(r, "arch");
        int a = strcmp(arch, "dense") == 0 ? 0 : strcmp(arch, "moe") == 0 ? 1 : strcmp(arch, "retro") == 0 ? 2
                : strcmp(arch, "retro-fit") == 0                                                       ? 3
                                                                                                       : -1;
        ck_assert_msg(a >= 0, "arch %s", arch);
        ok[a]++;
        /* RETRO-fit: the dense run's FLOPs and tokens, then its fitting stage's, whose own
         * budget `spent` is measured against */
        const double base = num(r, "flops_base"), counted = num(r, "flops_counted") - base;
        const double budget = a == 3 ? num(r, "fit_budget") : num(r, "budget");
        ck_assert_msg(counted <= budget * 1.0001 && counted >= 0.98 * budget,
                      "%s at %g FLOPs spent %g (%.2f%%)", arch, budget, counted, 100 * counted / budget);
        ck_assert_double_eq_tol(num(r, "spent"), counted / budget, 1e-9);
        if (a == 3) ck_assert(base > 0 && num(r, "fit_budget") >= 0.25 * num(r, "budget"));
        else ck_assert_double_eq(base, 0);
        /* the encoder's and CCA's part of the counted FLOPs */
        ck_assert(a >= 2 ? num(r, "flops_encoder_cca") > 0 && num(r, "flops_encoder_cca") < counted
                         : num(r, "flops_encoder_cca") == 0);
        /* the steps really ran: tokens = steps x batch 4 x ctx 16 */
        if (a != 3) ck_assert_double_eq(num(r, "tokens"), num(r, "steps") * 4 * 16);
        ck_assert(num(r, "steps") >= 50);
        double bpb = num(r, "val_bpb"), em = num(r, "exact_match");
        ck_assert_msg(bpb > 0 && bpb < 9, "val bpb %g", bpb);
        ck_assert(em >= 0 && em <= 1);
        /* the smooth metrics on the same prompts, and the pass rate of 3 samples each */
        ck_assert_int_eq((int)num(r, "match_bytes"), 8);
        ck_assert_int_eq((int)num(r, "samples"), 3);
        ck_assert(num(r, "byte_accuracy") >= 0 && num(r, "byte_accuracy") <= 1);
        ck_assert(num(r, "logprob") < 0);
        ck_assert(num(r, "edit_distance") >= 0 && num(r, "edit_distance") <= 8);
        ck_assert(num(r, "pass_rate") >= 0 && num(r, "pass_rate") <= 1);
        char *prompts = tu_read(tu_path("%.*s.prompts.jsonl", (int)strlen(str(r, "checkpoint")) - 12, str(r, "checkpoint")),
                                NULL);
        ck_assert_msg(prompts && tu_count_lines(prompts) == 1 + 8, "%s: no prompt file of 8 prompts", str(r, "checkpoint"));
        free(prompts);
        ck_assert(num(r, "params_active") <= num(r, "params_total"));
        if (strcmp(arch, "moe") == 0) {
            ck_assert_int_eq((int)num(r, "experts"), 8);
            ck_assert(num(r, "params_active") < num(r, "params_total"));
        }
        ck_assert_msg(str(r, "energy_method")[0] != '\0', "no energy method");
        /* searches happen outside the counted budget and are reported apart */
        if (a >= 2) ck_assert(num(r, "retrieval_flops") > 0);
        else ck_assert_double_eq(num(r, "retrieval_flops"), 0);
        /* on demand (the default): each chunk the run reads is searched at most once */
        if (a == 2)
            ck_assert_msg(num(r, "retrieval_searches") > 0 && num(r, "retrieval_searches") <= num(r, "tokens") / 4,
                          "%g searches for %g tokens", num(r, "retrieval_searches"), num(r, "tokens"));
        ck_assert_msg(num(r, "query_j") > 0, "%s: no energy per query", arch);
        ck_assert_str_eq(str(r, "query_method"), str(r, "energy_method"));
    }
    ck_assert_int_eq(ok[0], 3);
    ck_assert_int_eq(ok[1], 3);
    ck_assert_int_eq(ok[2], 3);
    ck_assert_int_eq(ok[3], 3);
    cJSON_Delete(rows);
}
END_TEST

START_TEST(test_failed_run_is_a_row) {
    ck_assert_int_eq(g_first_rc, 1);
    cJSON *rows = load_rows();
    int failed = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        if (strcmp(str(r, "status"), "failed") != 0) continue;
        failed++;
        ck_assert_double_eq(num(r, "budget"), 1e3);
        ck_assert_msg(strstr(str(r, "error"), "buys 0 steps") != NULL, "error: %s", str(r, "error"));
    }
    ck_assert_int_eq(failed, 4);
    cJSON_Delete(rows);
    tu_expect_in("c/report.md", "## Failed runs");
}
END_TEST

START_TEST(test_rerun_skips_finished_runs) {
    const char *ckpt = "c/runs/dense-6e08.safetensors";
    double before = mtime_of(ckpt);
    char *rows_before = tu_read_in("c/results.jsonl", NULL);
    ck_assert_int_eq(tu_joule(COMPARE), 1); /* the failed budget is retried and fails again */
    tu_expect_in("out.txt", "4 runs done, 12 already finished, 4 failed");
    char *out = tu_read_in("out.txt", NULL);
    ck_assert_ptr_null(strstr(out, "run 5 of")); /* only the four failed ones were redone */
    free(out);
    ck_assert_double_eq(mtime_of(ckpt), before);
    char *rows_after = tu_read_in("c/results.jsonl", NULL);
    ck_assert_ptr_nonnull(rows_after);
    /* finished rows are kept byte for byte (failed ones are rewritten by their retry) */
    int kept = 0;
    for (char *save = NULL, *line = strtok_r(rows_before, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strstr(line, "\"status\":\"ok\"")) continue;
        ck_assert_msg(strstr(rows_after, line) != NULL, "row changed: %s", line);
        kept++;
    }
    ck_assert_int_eq(kept, 12);
    free(rows_before);
    free(rows_after);
    /* other settings in the same folder are refused */
    ck_assert_int_eq(tu_joule("compare --data d --out c --budgets 6e8 --ctx 32 --threads 1"), 2);
    tu_expect_in("err.txt", "c/compare.json");
}
END_TEST

START_TEST(test_report_files_parse) {
    char *text = tu_read_in("c/fit.json", NULL);
    ck_assert_ptr_nonnull(text);
    cJSON *fit = cJSON_Parse(text);
    free(text);
    ck_assert_msg(cJSON_IsObject(fit), "fit.json does not parse");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(fit, "dense_fit");
    ck_assert_msg(cJSON_IsObject(d), "no dense fit");
    ck_assert(num(d, "a") > 0 && num(d, "b") < 0 && num(d, "c") >= 0);
    ck_assert_int_eq((int)num(d, "runs"), 3);
    const cJSON *iv = cJSON_GetObjectItemCaseSensitive(d, "interval");
    ck_assert(cJSON_IsObject(iv) && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(iv, "b")) == 2);
    const cJSON *eff = cJSON_GetObjectItemCaseSensitive(fit, "effective_compute");
    ck_assert_int_eq(cJSON_GetArraySize(eff), 9);
    const cJSON *e;
    cJSON_ArrayForEach(e, eff) {
        const bool retro = strncmp(str(e, "arch"), "retro", 5) == 0;
        ck_assert(strcmp(str(e, "arch"), "moe") == 0 || retro);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "multiplier");
        ck_assert(cJSON_IsNull(m) || (cJSON_IsNumber(m) && m->valuedouble > 0));
        /* without the encoder and CCA, retrieval's multiplier is over fewer FLOPs: larger */
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(e, "multiplier_without_encoder_cca");
        if (retro && cJSON_IsNumber(m) && cJSON_IsNumber(w) && isfinite(m->valuedouble))
            ck_assert(w->valuedouble > m->valuedouble);
        if (!retro) ck_assert(cJSON_IsNull(w));
    }
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(fit, "failed")), 4);
    /* the leakage tables: RETRO and RETRO-fit beside the dense run of the largest budget */
    const cJSON *lk = cJSON_GetObjectItemCaseSensitive(fit, "leakage");
    ck_assert_msg(cJSON_IsObject(lk), "no leakage record");
    for (int i = 0; i < 2; i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(lk, i ? "retro-fit" : "retro");
        ck_assert(cJSON_IsObject(t) && num(t, "budget") == 2.4e9);
        const cJSON *rows = cJSON_GetObjectItemCaseSensitive(t, "rows");
        ck_assert_int_eq(cJSON_GetArraySize(rows), 6);
        const cJSON *all = cJSON_GetArrayItem(rows, 5);
        ck_assert(num(all, "alpha") == 1 && num(all, "bytes") == 16 * 16);
        ck_assert(num(all, "bpb_dense") > 0 && num(all, "bpb_retrieval") > 0);
    }
    const cJSON *ret = cJSON_GetObjectItemCaseSensitive(fit, "retrieval");
    ck_assert_msg(cJSON_IsObject(ret) && num(ret, "search_flops") > 0, "no retrieval record");
    ck_assert_str_eq(str(ret, "neighbours"), "on-demand");
    const char *nbr = tu_path("d/train.%s.nbr", str(ret, "id"));
    ck_assert_msg(access(nbr, F_OK) != 0, "%s: a neighbour file was computed in on-demand mode", nbr);

    char *csv = tu_read_in("c/results.csv", NULL);
    ck_assert_ptr_nonnull(csv);
    ck_assert_int_eq(strncmp(csv, "arch,status,budget,", 19), 0);
    int lines = 0;
    for (const char *p = csv; *p; p++) lines += *p == '\n';
    ck_assert_int_eq(lines, 1 + 16);
    free(csv);
    const char *svgs[] = {"c/loss_vs_compute.svg", "c/energy_vs_bpb.svg"};
    for (int i = 0; i < 2; i++) {
        char *svg = tu_read_in(svgs[i], NULL);
        ck_assert_msg(svg && strncmp(svg, "<svg", 4) == 0 && strstr(svg, "</svg>"), "%s", svgs[i]);
        ck_assert_ptr_nonnull(strstr(svg, "<circle"));
        free(svg);
    }
    /* points labelled with their budgets, the dense fit's bootstrap interval shaded */
    tu_expect_in("c/loss_vs_compute.svg", ">1.2e9</text>");
    tu_expect_in("c/loss_vs_compute.svg", "bootstrap interval");
    tu_expect_in("c/report.md", "## Effective compute multiplier");
    tu_expect_in("c/report.md", "## Leakage (RETRO)");
    tu_expect_in("c/report.md", "without encoder+CCA");
    tu_expect_in("c/report.md", "## At 2.4e+09 FLOPs"); /* the headline: the largest budget all archs finished */
    tu_expect_in("c/report.md", "| dense | ");
    tu_expect_in("c/report.md", "needs 4 budgets, has 3"); /* the loss backtest holds one out */
    tu_expect_in("c/report.md", "## Emergence panel");
    tu_expect_in("c/report.md", "## Capability prediction (GPT-4 report, section 3.2)");
    tu_expect_in("c/report.md", "| retro-fit | 6e+08 | ");
    tu_expect_in("c/emergence.svg", "<svg x=");
    const cJSON *em = cJSON_GetObjectItemCaseSensitive(fit, "emergence");
    ck_assert_int_eq(cJSON_GetArraySize(em), 4);
    cJSON_Delete(fit);
    /* --report-only rebuilds the same report from the rows */
    ck_assert_int_eq(tu_joule("compare --out c --report-only --bootstrap 20"), 1);
    tu_expect_in("out.txt", "| retro | 2.4e+09 |");
}
END_TEST

/* precisions.jsonl as an array of its points. */
static cJSON *load_points(void) {
    char *text = tu_read_in("c/precisions.jsonl", NULL);
    ck_assert_ptr_nonnull(text);
    cJSON *pts = cJSON_CreateArray();
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        cJSON_AddItemToArray(pts, cJSON_Parse(line));
    free(text);
    return pts;
}

static const cJSON *point_of(const cJSON *pts, const char *arch, double budget, const char *prec) {
    const cJSON *p;
    cJSON_ArrayForEach(p, pts) {
        if (!strcmp(str(p, "arch"), arch) && num(p, "budget") == budget && !strcmp(str(p, "precision"), prec)) return p;
    }
    ck_abort_msg("no %s point of %s %g", prec, arch, budget);
    return NULL;
}

/* --precisions on the finished folder: the runs are untouched (results.jsonl byte for byte),
 * each run gets a bf16 and an int8 point measured from its quantised file, close to fp32
 * and cheaper to read; a rerun reuses points and files, a stale file is requantised to the
 * same numbers. */
START_TEST(test_precisions) {
    char *rows_before = tu_read_in("c/results.jsonl", NULL);
    ck_assert_int_eq(tu_joule(COMPARE " --precisions bf16,int8"), 1); /* the 1e3 rows still fail */
    tu_expect_in("out.txt", "precisions: 36 points measured, 0 reused, 0 failed");
    char *rows_after = tu_read_in("c/results.jsonl", NULL);
    /* the finished rows byte for byte (the failed 1e3 runs are retried and rewritten) */
    int same = 0;
    for (char *save = NULL, *line = strtok_r(rows_before, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (strstr(line, "\"status\":\"ok\"")) same += strstr(rows_after, line) != NULL;
    ck_assert_int_eq(same, 12);
    free(rows_before);
    free(rows_after);
    cJSON *pts = load_points(), *rows = load_rows();
    ck_assert_int_eq(cJSON_GetArraySize(pts), 36);
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        if (strcmp(str(r, "status"), "ok") != 0) continue;
        const char *arch = str(r, "arch");
        const double budget = num(r, "budget");
        const cJSON *f = point_of(pts, arch, budget, "fp32"), *b = point_of(pts, arch, budget, "bf16"),
                    *q = point_of(pts, arch, budget, "int8");
        /* fp32 is the run itself */
        ck_assert_double_eq(num(f, "val_bpb"), num(r, "val_bpb"));
        ck_assert_double_eq(num(f, "query_j"), num(r, "query_j"));
        ck_assert_double_eq(num(f, "kl_bits"), 0);
        ck_assert_str_eq(str(f, "checkpoint"), str(r, "checkpoint"));
        /* quantised: measured on their own files, near fp32, fewer bytes per token */
        const cJSON *qp[2] = {b, q};
        for (int k = 0; k < 2; k++) {
            ck_assert_str_eq(str(qp[k], "status"), "ok");
            /* rows of 8-48 weights: int8's rounding is coarse here (KL up to ~0.07 seen) */
            ck_assert_msg(num(qp[k], "kl_bits") > 0 && num(qp[k], "kl_bits") < (k ? 0.2 : 0.02), "%s %g %s: KL %g",
                          arch, budget, str(qp[k], "precision"), num(qp[k], "kl_bits"));
            ck_assert_msg(fabs(num(qp[k], "val_bpb") - num(r, "val_bpb")) < (k ? 0.1 : 0.02), "%s %g %s: bpb %g vs %g",
                          arch, budget, str(qp[k], "precision"), num(qp[k], "val_bpb"), num(r, "val_bpb"));
            ck_assert(num(qp[k], "query_j") > 0 && num(qp[k], "tokens_per_s") > 0);
            ck_assert_msg(access(tu_path("%s", str(qp[k], "checkpoint")), R_OK) == 0, "%s", str(qp[k], "checkpoint"));
        }
        ck_assert(num(q, "weight_bytes") < num(b, "weight_bytes") && num(b, "weight_bytes") < num(f, "weight_bytes"));
    }
    tu_expect_in("c/report.md", "## Precision");
    tu_expect_in("c/report.md", "| dense | 6e+08 | int8 | ");
    tu_expect_in("c/energy_vs_bpb.svg", "retro-fit bf16");
    /* the quantised files load as what they say */
    ck_assert_int_eq(tu_joule("info --model c/runs/moe-1.2e09.int8.safetensors"), 0);
    tu_expect_in("out.txt", "precision:  int8");
    /* a rerun reuses every point */
    const double kept = mtime_of("c/runs/dense-1.2e09.int8.safetensors");
    ck_assert_int_eq(tu_joule(COMPARE " --precisions fp32,bf16,int8"), 1);
    tu_expect_in("out.txt", "precisions: 0 points measured, 36 reused, 0 failed");
    /* without the record, and with one checkpoint newer than its quantised files: only those
     * are written again, and every point measures the same */
    ck_assert_int_eq(unlink(tu_path("c/precisions.jsonl")), 0);
    ck_assert_int_eq(utime(tu_path("c/runs/moe-6e08.safetensors"), NULL), 0);
    const double stale = mtime_of("c/runs/moe-6e08.int8.safetensors");
    ck_assert_int_eq(tu_joule(COMPARE " --precisions int8"), 1);
    tu_expect_in("out.txt", "precisions: 24 points measured, 0 reused, 0 failed");
    ck_assert_double_eq(mtime_of("c/runs/dense-1.2e09.int8.safetensors"), kept);
    ck_assert(mtime_of("c/runs/moe-6e08.int8.safetensors") > stale);
    cJSON *again = load_points();
    cJSON_ArrayForEach(r, again) {
        const cJSON *p = point_of(pts, str(r, "arch"), num(r, "budget"), str(r, "precision"));
        ck_assert_double_eq(num(r, "val_bpb"), num(p, "val_bpb"));
        if (strcmp(str(r, "precision"), "fp32")) ck_assert_double_eq(num(r, "kl_bits"), num(p, "kl_bits"));
    }
    cJSON_Delete(again);
    cJSON_Delete(pts);
    cJSON_Delete(rows);
    ck_assert_int_eq(tu_joule("compare --data d --out u --budgets 1e9 --precisions fp16"), 2);
    tu_expect_one_line("err.txt", "--precisions: 'fp16' is not one of fp32, bf16, int8");
}
END_TEST

/* The same seed and threads give the same per-prompt files (samples included); joule eval
 * --prompts scores the same prompts as compare did. */
START_TEST(test_prompt_metrics_repeat) {
    ck_assert_int_eq(tu_joule("compare --data d --out c2 --budgets 6e8 " SETTINGS), 0);
    const char *runs[] = {"dense-6e08", "moe-6e08", "retro-6e08", "retro-fit-6e08"};
    for (int i = 0; i < 4; i++) {
        size_t la = 0, lb = 0;
        char *a = tu_read(tu_path("c/runs/%s.prompts.jsonl", runs[i]), &la);
        char *b = tu_read(tu_path("c2/runs/%s.prompts.jsonl", runs[i]), &lb);
        ck_assert_msg(a && b && la == lb && memcmp(a, b, la) == 0, "%s: the prompt files differ", runs[i]);
        free(a);
        free(b);
    }
    ck_assert_int_eq(tu_joule("eval --model c/runs/dense-6e08.safetensors --data d --prompts 8 --samples 3 --json "
                              "--threads 1"), 0);
    char *text = tu_read_in("out.txt", NULL);
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "prompts"), "per_prompt");
    ck_assert_int_eq(cJSON_GetArraySize(pp), 8);
    char *file = tu_read_in("c/runs/dense-6e08.prompts.jsonl", NULL);
    int w = 0;
    for (char *save = NULL, *line = strtok_r(file, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *row = cJSON_Parse(line);
        if (cJSON_GetObjectItemCaseSensitive(row, "prompt")) {
            const cJSON *e = cJSON_GetArrayItem(pp, w++);
            static const char *const keys[4] = {"start", "edit", "tf_correct", "passes"};
            for (int k = 0; k < 4; k++) ck_assert_double_eq(num(e, keys[k]), num(row, keys[k]));
            ck_assert_double_eq_tol(num(e, "logprob"), num(row, "logprob"), 1e-5);
        }
        cJSON_Delete(row);
    }
    ck_assert_int_eq(w, 8);
    free(file);
    cJSON_Delete(j);
    ck_assert_int_eq(tu_joule("eval --model c/runs/dense-6e08.safetensors --data d --samples 3"), 2);
    tu_expect_in("err.txt", "--samples go with --prompts");
    ck_assert_int_eq(tu_joule("compare --data d --out u --budgets 1e9 --ctx 16 --match-bytes 16"), 2);
    tu_expect_in("err.txt", "--match-bytes 16 leaves no prompt");
}
END_TEST

START_TEST(test_usage_errors) {
    ck_assert_int_eq(tu_joule("compare --help"), 0);
    tu_expect_in("out.txt", "--budgets");
    ck_assert_int_eq(tu_joule("compare --data d --out u"), 2);             /* no budgets */
    ck_assert_int_eq(tu_joule("compare --data d --out u --budgets 0"), 2); /* not positive */
    ck_assert_int_eq(tu_joule("compare --data d --out u --budgets 1e9 --archs dense,gpt"), 2);
    ck_assert_int_eq(tu_joule("compare --data nowhere --out u --budgets 1e9"), 2);
    ck_assert_int_eq(tu_joule("compare --out nowhere --report-only"), 2);
    char *err = tu_read_in("err.txt", NULL);
    ck_assert_msg(strchr(err, '\n') == err + strlen(err) - 1, "not one line: %s", err);
    free(err);
}
END_TEST

/* Ctrl-C during the second run: the first run's row stays, the second leaves none, exit 130. */
START_TEST(test_interrupt_keeps_finished_runs) {
    const char *bin = getenv("JOULE_BIN");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (chdir(tu_dir) != 0 || !freopen("int.out", "w", stdout) || !freopen("int.err", "w", stderr)) _exit(99);
        execl(bin, bin, "compare", "--data", "d", "--out", "i", "--budgets", "6e8,1e12", "--archs", "dense",
              "--ctx", "16", "--batch", "4", "--queries", "0", "--threads", "1", (char *)NULL);
        _exit(98);
    }
    /* wait until the second run has logged a few training steps */
    bool training = false;
    for (int i = 0; i < 1200 && !training; i++) {
        usleep(50 * 1000);
        char *log = tu_read_in("i/runs/dense-1e12.log.jsonl", NULL);
        training = log && strchr(log, '\n') && strchr(strchr(log, '\n') + 1, '\n');
        free(log);
    }
    ck_assert_msg(training, "the second run never started");
    ck_assert_int_eq(kill(pid, SIGINT), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 130, "status %d", status);
    tu_expect_in("int.err", "interrupted; finished runs are kept");
    char *text = tu_read_in("i/results.jsonl", NULL);
    ck_assert_ptr_nonnull(text);
    ck_assert_msg(strstr(text, "\"budget\":600000000") && !strstr(text, "\"budget\":1000000000000"), "%s", text);
    free(text);
}
END_TEST

int main(void) {
    Suite *s = suite_create("compare");
    TCase *tc = tu_tcase(s, "compare", 180, NULL, NULL); /* the fixture's comparison takes ~1 s here, ~10 s under ASan */
    tcase_add_unchecked_fixture(tc, setup, tu_remove_dir);
    tcase_add_test(tc, test_every_arch_spends_its_budget);
    tcase_add_test(tc, test_failed_run_is_a_row);
    tcase_add_test(tc, test_report_files_parse);
    tcase_add_test(tc, test_rerun_skips_finished_runs);
    tcase_add_test(tc, test_precisions);
    tcase_add_test(tc, test_prompt_metrics_repeat);
    tcase_add_test(tc, test_usage_errors);
    tcase_add_test(tc, test_interrupt_keeps_finished_runs);
    return tu_run_suite(s);
}
