/* tests/test_dist_train.c — data-parallel training: `mpirun -np 2 joule train` against one
 * process with --accum 2 (dense, MoE, RETRO), determinism at a fixed number of ranks,
 * resume, and a rank failing mid-run. A Check suite driving the joule binary under mpirun
 * ($JOULE_MPIRUN), so the ranks are real processes as a user runs them. */
#define _GNU_SOURCE
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "joule/checkpoint.h"
#include "joule/model.h"
#include "joule/moe.h"
#include "joule/retro.h"
#include "testutil.h"

#define TINY "--data d --layers 2 --d-model 32 --heads 2 --d-ff 64 --ctx 64 --batch 2 --seq 32 --steps 4 " \
             "--threads 1 --eval-every 0 --eval-windows 2 --lr 3e-3 --warmup 0"
#define MOE "--arch moe --experts 4 --d-ff-expert 32"
#define RETRO "--arch retro --db db --cca-start 1 --enc-layers 1"

/* Stated tolerances of 2 ranks against 1 process with accumulation 2: the same batches and
 * the same arithmetic except the order in which the two micro-batches' gradients are
 * added (per element in the backward kernels vs one MPI sum), a float rounding each. */
#define LOSS_TOL 1e-5
#define WEIGHT_TOL 1e-5

/* `ENV $JOULE_MPIRUN -np 2 joule ARGS` in the test folder; its exit status. */
static int mpi_joule(const char *env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int mpi_joule(const char *env, const char *fmt, ...) {
    const char *mpirun = getenv("JOULE_MPIRUN"), *bin = getenv("JOULE_BIN");
    ck_assert_msg(mpirun && bin, "JOULE_MPIRUN and JOULE_BIN are set by CMake");
    char args[4096], cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && %s %s -np 2 '%s' %s > out.txt 2> err.txt", tu_dir, env ? env : "", mpirun,
             bin, args);
    int st = system(cmd);
    ck_assert_int_ne(st, -1);
    return WIFSIGNALED(st) ? 1000 + WTERMSIG(st) : WEXITSTATUS(st);
}

static void suite_setup(void) {
    joule_moe_register();
    joule_retro_register();
    /* as for the mpi_* tests (CMakeLists.txt): Open MPI's components stay loaded so that
     * LeakSanitizer can name (and tests/lsan.supp suppress) their finalize leaks */
    setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 1);
    const char *asan = getenv("ASAN_OPTIONS");
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%sfast_unwind_on_malloc=0", asan ? asan : "", asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", buf, 1);
    tu_make_dir("joule_test_dist_train.");
    FILE *f = fopen(tu_path("corpus.txt"), "w");
    ck_assert_ptr_nonnull(f);
    static const char *w[] = {"river", "lamp", "quietly", "seven", "ordinary", "glass", "north", "painted"};
    for (int p = 0; p < 120; p++) {
        for (int s = 0; s < 6; s++) fprintf(f, "The %s %s the %s. ", w[(p + s) % 8], w[(p * 3 + s) % 8], w[(s * 5 + p) % 8]);
        fputs("\n\n", f);
    }
    fclose(f);
    ck_assert_int_eq(tu_joule("data prepare corpus.txt --out d --split blank-line --val-fraction 0.2"), 0);
    ck_assert_int_eq(tu_joule("db build --data d --out db --chunk 8 --threads 1"), 0);
}

static void suite_teardown(void) { tu_remove_dir(); }

/* The "loss" of each line of a step log, at most cap. */
static int log_losses(const char *name, double *loss, int cap) {
    char *text = tu_read_in(name, NULL);
    ck_assert_ptr_nonnull(text);
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < cap; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "loss");
        ck_assert(cJSON_IsNumber(l));
        loss[n++] = l->valuedouble;
        cJSON_Delete(o);
    }
    free(text);
    return n;
}

/* Largest |a - b| over the parameters of two checkpoints of the same model. */
static double weight_diff(const char *a, const char *b) {
    joule_model *ma = NULL, *mb = NULL;
    joule_train_state sa, sb;
    ck_assert_msg(joule_checkpoint_load(&ma, tu_path("%s", a), &sa) == JOULE_OK, "%s", joule_last_error());
    ck_assert_msg(joule_checkpoint_load(&mb, tu_path("%s", b), &sb) == JOULE_OK, "%s", joule_last_error());
    ck_assert_uint_eq(ma->n_params, mb->n_params);
    ck_assert_uint_eq(sa.step, sb.step);
    ck_assert_uint_eq(sa.tokens, sb.tokens);
    double d = 0;
    for (size_t i = 0; i < ma->n_params; i++) d = fmax(d, fabs((double)ma->params[i] - mb->params[i]));
    joule_model_free(ma);
    joule_model_free(mb);
    return d;
}

static bool same_bytes(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = tu_read_in(a, &na), *y = tu_read_in(b, &nb);
    bool same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* 2 ranks x accum 1 == 1 process x accum 2 (loss per step and final weights), and two
 * 2-rank runs write identical checkpoints and losses. */
static void check_equivalence(const char *tag, const char *arch) {
    ck_assert_msg(tu_joule("train " TINY " %s --accum 2 --out %s1.safetensors", arch, tag) == 0, "%s",
                  tu_read_in("err.txt", NULL));
    ck_assert_msg(mpi_joule(NULL, "train " TINY " %s --out %s2.safetensors", arch, tag) == 0, "%s",
                  tu_read_in("err.txt", NULL));
    ck_assert(tu_file_has("out.txt", "data parallel: 2 ranks x batch 2 x accum 1"));
    ck_assert_int_eq(mpi_joule(NULL, "train " TINY " %s --out %s2b.safetensors", arch, tag), 0);
    double l1[8], l2[8], l2b[8];
    char n1[64], n2[64], n2b[64];
    snprintf(n1, sizeof n1, "%s1.log.jsonl", tag);
    snprintf(n2, sizeof n2, "%s2.log.jsonl", tag);
    snprintf(n2b, sizeof n2b, "%s2b.log.jsonl", tag);
    ck_assert_int_eq(log_losses(n1, l1, 8), 4);
    ck_assert_int_eq(log_losses(n2, l2, 8), 4); /* rank 0 alone wrote the log */
    ck_assert_int_eq(log_losses(n2b, l2b, 8), 4);
    double worst = 0;
    for (int s = 0; s < 4; s++) {
        worst = fmax(worst, fabs(l1[s] - l2[s]) / fabs(l1[s]));
        ck_assert_msg(fabs(l1[s] - l2[s]) <= LOSS_TOL * fabs(l1[s]), "%s step %d: loss %.9g (accum 2) vs %.9g (2 ranks)",
                      tag, s + 1, l1[s], l2[s]);
        ck_assert_msg(l2[s] == l2b[s], "%s step %d: two 2-rank runs differ", tag, s + 1);
    }
    char a[64], b[64], c[64];
    snprintf(a, sizeof a, "%s1.safetensors", tag);
    snprintf(b, sizeof b, "%s2.safetensors", tag);
    snprintf(c, sizeof c, "%s2b.safetensors", tag);
    double d = weight_diff(a, b);
    ck_assert_msg(d <= WEIGHT_TOL, "%s: final weights differ by %g (tolerance %g)", tag, d, WEIGHT_TOL);
    printf("%s: 2 ranks vs accum 2: loss relative difference <= %.3g, weights differ by <= %.3g\n", tag, worst, d);
    ck_assert_msg(weight_diff(b, c) == 0 && same_bytes(b, c), "%s: two 2-rank runs wrote different checkpoints", tag);
    /* and the weights did move: the comparison is not of two untouched inits */
    joule_model *m;
    joule_train_state st;
    ck_assert_int_eq(joule_checkpoint_load(&m, tu_path("%s", b), &st), JOULE_OK);
    ck_assert_uint_eq(st.step, 4);
    joule_model_free(m);
    ck_assert(l2[3] < l2[0]);
}

START_TEST(test_dense) { check_equivalence("dense", ""); }
END_TEST

START_TEST(test_moe) { check_equivalence("moe", MOE); }
END_TEST

START_TEST(test_retro) { check_equivalence("retro", RETRO); }
END_TEST

/* --expert-parallel: 2 ranks x batch 2 equal one process with --batch 4 (capacity 0.5 drops
 * rows, so the global placement order matters); rank 0 writes a checkpoint `joule eval`
 * reads as any other; the step log carries the all-to-alls; refusals are one line, exit 2. */
START_TEST(test_expert_parallel) {
#define EP_MOE MOE " --capacity-factor 0.5 --eval-every 2"
    ck_assert_msg(mpi_joule(NULL, "train " TINY " " EP_MOE " --expert-parallel --out ep2.safetensors") == 0, "%s",
                  tu_read_in("err.txt", NULL));
    ck_assert(tu_file_has("out.txt", "expert parallel: 2 ranks x batch 2 x accum 1, 2 of 4 experts per rank"));
    ck_assert(tu_joule("train " TINY " " EP_MOE " --batch 4 --out ep1.safetensors") == 0);
    double l1[8], l2[8];
    ck_assert_int_eq(log_losses("ep1.log.jsonl", l1, 8), 4);
    ck_assert_int_eq(log_losses("ep2.log.jsonl", l2, 8), 4);
    for (int s = 0; s < 4; s++)
        ck_assert_msg(fabs(l1[s] - l2[s]) <= LOSS_TOL * fabs(l1[s]), "step %d: loss %.9g (batch 4) vs %.9g (EP)", s + 1,
                      l1[s], l2[s]);
    double d = weight_diff("ep1.safetensors", "ep2.safetensors");
    ck_assert_msg(d <= WEIGHT_TOL, "expert parallel: final weights differ by %g (tolerance %g)", d, WEIGHT_TOL);
    printf("expert parallel: 2 ranks x batch 2 vs batch 4: weights differ by <= %.3g\n", d);
    ck_assert(tu_file_has("ep2.log.jsonl", "\"alltoall\":{\"ranks\":2,\"bytes\":"));
    ck_assert(tu_file_has("ep2.log.jsonl", "\"drop_first\":0."));
    /* and every step's own collectives, the all-to-alls included */
    ck_assert(tu_file_has("ep2.log.jsonl", "\"comm\":{\"allreduce_s\":"));
    ck_assert(!tu_file_has("ep2.log.jsonl", "\"alltoall_bytes\":0}"));
    ck_assert_int_eq(tu_joule("eval --model ep2.safetensors --data d --windows 2 --threads 1"), 0);
    /* E % N, a dense model (even as one process) */
    ck_assert_int_eq(mpi_joule(NULL, "train " TINY " --arch moe --experts 3 --expert-parallel --out bad.safetensors"), 2);
    char *e = tu_read_in("err.txt", NULL);
    /* one line from joule (rank 0's; every rank has the same verdict), then mpirun's notice */
    const char *hit = strstr(e, "joule train: rank 0: --expert-parallel: 3 experts do not split over 2 ranks (E % N must be 0)");
    ck_assert_msg(hit && !strstr(hit + 1, "joule train:") && !strstr(e, "rank 1:"), "%s", e);
    free(e);
    ck_assert_int_eq(tu_joule("train " TINY " --expert-parallel --out bad.safetensors"), 2);
    e = tu_read_in("err.txt", NULL);
    ck_assert_msg(strstr(e, "--expert-parallel needs an MoE model (--arch moe); this one is dense") &&
                      strchr(e, '\n')[1] == '\0', "%s", e);
    free(e);
    ck_assert(!tu_exists(tu_path("bad.safetensors")));
}
END_TEST

/* A run split by --stop-after and resumed with the same ranks equals the whole run; a
 * resume with another number of ranks is refused with one line. */
START_TEST(test_resume) {
    ck_assert_int_eq(mpi_joule(NULL, "train " TINY " --out whole.safetensors"), 0);
    ck_assert_int_eq(mpi_joule(NULL, "train " TINY " --stop-after 2 --out split.safetensors"), 0);
    ck_assert_msg(mpi_joule(NULL, "train --resume --data d --threads 1 --eval-windows 2 --out split.safetensors") == 0,
                  "%s", tu_read_in("err.txt", NULL));
    ck_assert(same_bytes("whole.safetensors", "split.safetensors"));
    ck_assert(same_bytes("whole.optim.safetensors", "split.optim.safetensors"));
    double lw[8], ls[8];
    ck_assert_int_eq(log_losses("whole.log.jsonl", lw, 8), 4);
    ck_assert_int_eq(log_losses("split.log.jsonl", ls, 8), 4);
    for (int i = 0; i < 4; i++) ck_assert(lw[i] == ls[i]);
    ck_assert_int_eq(mpi_joule(NULL, "train " TINY " --stop-after 2 --out other.safetensors"), 0);
    ck_assert_int_eq(tu_joule("train --resume --data d --threads 1 --out other.safetensors"), 2);
    char *e = tu_read_in("err.txt", NULL);
    ck_assert_msg(strstr(e, "saved by a run of 2 ranks, resuming with 1") && strchr(e, '\n')[1] == '\0', "%s", e);
    free(e);
}
END_TEST

/* Rank 1 fails in step 3: the job ends at once (no hang: the test's timeout is short) with
 * a non-zero exit and rank 1's one-line message; no checkpoint is written. */
START_TEST(test_rank_fails) {
    time_t t0 = time(NULL);
    int rc = mpi_joule("JOULE_TEST_FAIL_RANK=1:step=2", "train " TINY " --out failed.safetensors");
    ck_assert_int_ne(rc, 0);
    ck_assert(time(NULL) - t0 < 30);
    ck_assert(tu_file_has("err.txt", "joule train: rank 1: step 2: failing as JOULE_TEST_FAIL_RANK asks"));
    ck_assert(!tu_exists(tu_path("failed.safetensors")));
    /* and a plain run honours the hook too, as rank 0 of 1 */
    ck_assert_int_eq(tu_joule("train " TINY " --out plain.safetensors --no-log"), 0);
    ck_assert_int_eq(setenv("JOULE_TEST_FAIL_RANK", "0:step=1", 1), 0);
    ck_assert_int_eq(tu_joule("train " TINY " --out plainfail.safetensors"), 1);
    unsetenv("JOULE_TEST_FAIL_RANK");
    ck_assert(tu_file_has("err.txt", "joule train: step 1: failing as JOULE_TEST_FAIL_RANK asks"));
}
END_TEST

/* bench dist runs both sides (the 2-rank one under the launcher it is given) and reports
 * the all-reduce of the model's whole gradient: 4 bytes per parameter. */
START_TEST(test_bench_dist) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "bench dist --layers 1 --d-model 32 --heads 2 --d-ff 64 --ctx 32 --batch 2 --steps 2 --warmup 0 "
             "--rounds 1 --json --mpirun '%s'",
             getenv("JOULE_MPIRUN"));
    ck_assert_msg(tu_joule("%s", cmd) == 0, "%s", tu_read_in("err.txt", NULL));
    ck_assert(tu_file_has("out.txt", "2 ranks x 1 thread"));
    char *out = tu_read_in("out.txt", NULL);
    const char *line = strstr(out, "{\"bench\":\"dist_compare\"");
    ck_assert_ptr_nonnull(line);
    cJSON *j = cJSON_Parse(line);
    ck_assert_ptr_nonnull(j);
    joule_config c = joule_config_default(1, 32, 2, 64, 32);
    joule_model *m;
    ck_assert_int_eq(joule_model_create(&m, &c), JOULE_OK);
    ck_assert_double_eq(cJSON_GetObjectItem(j, "grad_bytes")->valuedouble, 4.0 * (double)m->n_params);
    ck_assert_double_eq(cJSON_GetObjectItem(j, "sent_bytes")->valuedouble, 4.0 * (double)m->n_params);
    double share = cJSON_GetObjectItem(j, "allreduce_share")->valuedouble;
    ck_assert(share > 0 && share < 1);
    ck_assert(cJSON_GetObjectItem(j, "tokens_per_s_1rank")->valuedouble > 0);
    ck_assert(cJSON_GetObjectItem(j, "tokens_per_s_2ranks")->valuedouble > 0);
    joule_model_free(m);
    cJSON_Delete(j);
    free(out);
    /* --expert-parallel: the MoE version, data against expert parallel; the all-to-alls
     * move bytes and take part of the step, and the experts leave the all-reduce */
    snprintf(cmd, sizeof cmd,
             "bench dist --expert-parallel --layers 2 --d-model 32 --heads 2 --d-ff 64 --ctx 32 --batch 2 --steps 2 "
             "--warmup 0 --rounds 1 --json --mpirun '%s'",
             getenv("JOULE_MPIRUN"));
    ck_assert_msg(tu_joule("%s", cmd) == 0, "%s", tu_read_in("err.txt", NULL));
    out = tu_read_in("out.txt", NULL);
    line = strstr(out, "{\"bench\":\"dist_ep_compare\"");
    ck_assert_ptr_nonnull(line);
    j = cJSON_Parse(line);
    ck_assert_ptr_nonnull(j);
    share = cJSON_GetObjectItem(j, "alltoall_share")->valuedouble;
    ck_assert(share > 0 && share < 1);
    ck_assert(cJSON_GetObjectItem(j, "alltoall_bytes")->valuedouble > 0);
    /* the 8 experts of d_ff 32 in layer 1 (3 x 32 x 32 floats each) are not all-reduced */
    const double dp = cJSON_GetObjectItem(j, "grad_bytes_dp")->valuedouble, ep = cJSON_GetObjectItem(j, "grad_bytes_ep")->valuedouble;
    ck_assert_double_eq(dp - ep, 4.0 * 8 * 3 * 32 * 32);
    cJSON_Delete(j);
    free(out);
}
END_TEST

int main(void) {
    Suite *s = suite_create("dist_train");
    TCase *tc = tcase_create("data parallel");
    tcase_add_unchecked_fixture(tc, suite_setup, suite_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dense);
    tcase_add_test(tc, test_moe);
    tcase_add_test(tc, test_retro);
    tcase_add_test(tc, test_expert_parallel);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_rank_fails);
    tcase_add_test(tc, test_bench_dist);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
