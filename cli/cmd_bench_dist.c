/* `joule bench dist`: the reference model's training step as 1 rank x 2 threads against
 * 2 ranks x 1 thread (bench/bench_dist.c). Run plainly, the command measures the
 * single-process side itself and re-launches itself under mpirun for the 2-rank side,
 * alternating the two for --rounds rounds in one run; run under mpirun it measures the
 * ranks it was given and prints one line (and JSON). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "joule/bench_dist.h"
#include "joule/dist.h"
#include "joule/ops.h"

static const char *CMD = "bench dist";

static const char USAGE[] =
    "usage: joule bench dist [options]\n"
    "       mpirun -np N joule bench dist [options]\n"
    "\n"
    "Data-parallel training step of the reference model (bench train's): tokens/s of 1 rank\n"
    "x 2 threads (accumulating 2 micro-batches) against 2 ranks x 1 thread (a micro-batch\n"
    "each, gradients summed with MPI_Allreduce in joule train's buckets), the same 2 x batch x\n"
    "ctx tokens per step; the share of the step spent in the all-reduce (timed after a\n"
    "barrier; the wait at that barrier for the slower rank is shown apart) and the bytes moved.\n"
    "Run plainly, it measures the 1-rank side in this process and runs the 2-rank side as\n"
    "'MPIRUN -np 2 joule bench dist ... --threads 1', alternating for --rounds rounds;\n"
    "medians of steps, then of rounds. Under mpirun it measures the N ranks it was given.\n"
    "With --expert-parallel it compares, both at 2 ranks x 1 thread, the MoE version of the\n"
    "model (bench moe's: 8 experts of d_ff/2, top-2, every other layer, capacity 1.25) trained\n"
    "data parallel (every rank all experts) against expert parallel (4 experts per rank,\n"
    "routed rows by MPI_Alltoallv): tokens/s, the all-to-alls' share of the step (seconds\n"
    "inside them, waits included) and the bytes they and the all-reduce move per rank.\n"
    "\n"
    "options:\n"
    "  --layers N      layers (6)\n"
    "  --d-model N     model width (384)\n"
    "  --heads N       attention heads (6)\n"
    "  --d-ff N        SwiGLU hidden size (1024)\n"
    "  --ctx N         sequence length (256)\n"
    "  --batch N       sequences per micro-batch (8)\n"
    "  --steps N       timed steps per side and round (5; the median is used)\n"
    "  --warmup N      untimed steps first (1)\n"
    "  --rounds N      alternations of the two sides, plain run only (3)\n"
    "  --threads N     threads of the 1-rank side (2); under mpirun, per rank (cores / ranks)\n"
    "  --mpirun CMD    launcher of the 2-rank side (\"mpirun --bind-to none\", with\n"
    "                  --allow-run-as-root added for root)\n"
    "  --moe           the MoE version of the model (data parallel)\n"
    "  --expert-parallel  the MoE version, expert parallel against data parallel (above)\n"
    "  --json          also print one JSON line of results\n"
    "  -h, --help      this help\n"
    "Goal (issue 14): 2 ranks x 1 thread >= 0.9x the tokens/s of 1 rank x 2 threads, and the\n"
    "all-reduce <= 10% of the step.\n";

typedef struct {
    joule_bench_model_opts run;
    int rounds, threads;
    bool threads_given, json;
    const char *mpirun;
    joule_bench_dist_mode mode;
} dist_opts;

static int parse(int argc, char **argv, dist_opts *o) {
    static const struct option opts[] = {
        {"layers", 1, 0, 'L'}, {"d-model", 1, 0, 'd'}, {"heads", 1, 0, 'H'}, {"d-ff", 1, 0, 'f'},
        {"ctx", 1, 0, 'c'},    {"batch", 1, 0, 'b'},   {"steps", 1, 0, 's'}, {"warmup", 1, 0, 'w'},
        {"rounds", 1, 0, 'r'}, {"threads", 1, 0, 't'}, {"mpirun", 1, 0, 'm'}, {"json", 0, 0, 'j'},
        {"moe", 0, 0, 'M'},    {"expert-parallel", 0, 0, 'E'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, ":h", opts, USAGE)) != -1) {
        switch (c) {
        case CLI_HELP: return -1;
        case 'L': CLI_CHECK(cli_int_option(CMD, "--layers", optarg, 1, 1024, &o->run.layers)); break;
        case 'd': CLI_CHECK(cli_int_option(CMD, "--d-model", optarg, 2, 65536, &o->run.d_model)); break;
        case 'H': CLI_CHECK(cli_int_option(CMD, "--heads", optarg, 1, 65536, &o->run.heads)); break;
        case 'f': CLI_CHECK(cli_int_option(CMD, "--d-ff", optarg, 1, 1 << 20, &o->run.d_ff)); break;
        case 'c': CLI_CHECK(cli_int_option(CMD, "--ctx", optarg, 1, 1 << 16, &o->run.ctx)); break;
        case 'b': CLI_CHECK(cli_int_option(CMD, "--batch", optarg, 1, 1 << 16, &o->run.batch)); break;
        case 's': CLI_CHECK(cli_int_option(CMD, "--steps", optarg, 1, 1 << 20, &o->run.steps)); break;
        case 'w': CLI_CHECK(cli_int_option(CMD, "--warmup", optarg, 0, 1 << 20, &o->run.warmup)); break;
        case 'r': CLI_CHECK(cli_int_option(CMD, "--rounds", optarg, 1, 1000, &o->rounds)); break;
        case 't':
            CLI_CHECK(cli_int_option(CMD, "--threads", optarg, 0, 4096, &o->threads));
            o->threads_given = true;
            break;
        case 'm': o->mpirun = optarg; break;
        case 'j': o->json = true; break;
        case 'M': o->mode = o->mode == JOULE_BENCH_DIST_EP ? o->mode : JOULE_BENCH_DIST_MOE; break;
        case 'E': o->mode = JOULE_BENCH_DIST_EP; break;
        default: return cli_bad_option(CMD, c, argv);
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    return 0;
}

/* Under mpirun: this job's ranks, one line (and JSON) from rank 0. */
static int run_ranks(const dist_opts *o) {
    cli_setup_threads(o->threads_given ? o->threads : 0);
    joule_bench_dist_result r;
    int rc = joule_bench_dist(&o->run, 1, o->mode, &r);
    if (rc) return cli_fail(CMD, rc);
    if (joule_dist_rank() != 0) return 0;
    if (o->mode == JOULE_BENCH_DIST_EP)
        printf("expert parallel: all-to-alls %.1f ms = %.1f%% of the step, %.2f MB sent per rank per step\n",
               r.alltoall_s * 1e3, 100 * r.alltoall_share, r.alltoall_bytes / 1e6);
    printf("%d ranks x %d thread%s: %.0f tokens/s (step %.1f ms), all-reduce %.1f ms = %.1f%% of the step, "
           "waiting for the slowest rank %.1f ms, %.1f MB of gradients all-reduced per rank per step (ring: %.1f MB "
           "sent per rank)\n",
           r.ranks, r.threads, r.threads == 1 ? "" : "s", r.tokens_per_step / r.step_s, r.step_s * 1e3,
           r.allreduce_s * 1e3, 100 * r.allreduce_share, r.skew_s * 1e3, r.grad_bytes / 1e6, r.sent_bytes / 1e6);
    if (o->json)
        printf("{\"bench\":\"dist\",\"ranks\":%d,\"threads\":%d,\"tokens_per_step\":%.0f,\"step_ms\":%.3f,"
               "\"tokens_per_s\":%.1f,\"allreduce_ms\":%.3f,\"allreduce_share\":%.5f,\"skew_ms\":%.3f,"
               "\"grad_bytes\":%.0f,\"sent_bytes\":%.0f,\"mode\":%d,\"alltoall_ms\":%.3f,\"alltoall_share\":%.5f,"
               "\"alltoall_bytes\":%.0f}\n",
               r.ranks, r.threads, r.tokens_per_step, r.step_s * 1e3, r.tokens_per_step / r.step_s,
               r.allreduce_s * 1e3, r.allreduce_share, r.skew_s * 1e3, r.grad_bytes, r.sent_bytes, (int)o->mode,
               r.alltoall_s * 1e3, r.alltoall_share, r.alltoall_bytes);
    return 0;
}

typedef struct {
    double tps, step_ms, allreduce_ms, share, grad_bytes, sent_bytes, skew_ms, a2a_ms, a2a_share, a2a_bytes;
} side;

/* The 2-rank side in `mode`: this binary under the launcher, its JSON line read back. */
static int run_child(const dist_opts *o, joule_bench_dist_mode mode, side *s) {
    char exe[4096], cmd[8192];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return cli_error(EXIT_RUNTIME, CMD, "/proc/self/exe: cannot read the path of joule");
    exe[n] = '\0';
    const char *root = geteuid() == 0 ? " --allow-run-as-root" : "";
    const joule_bench_model_opts *r = &o->run;
    snprintf(cmd, sizeof cmd,
             "%s%s -np 2 '%s' bench dist --layers %d --d-model %d --heads %d --d-ff %d --ctx %d --batch %d "
             "--steps %d --warmup %d --threads 1 --json%s",
             o->mpirun ? o->mpirun : "mpirun --bind-to none", o->mpirun ? "" : root, exe, r->layers, r->d_model,
             r->heads, r->d_ff, r->ctx, r->batch, r->steps, r->warmup,
             mode == JOULE_BENCH_DIST_EP ? " --expert-parallel" : mode == JOULE_BENCH_DIST_MOE ? " --moe" : "");
    FILE *p = popen(cmd, "r");
    if (!p) return cli_error(EXIT_RUNTIME, CMD, "cannot run '%s'", cmd);
    char line[4096];
    cJSON *j = NULL;
    while (fgets(line, sizeof line, p))
        if (!j && strncmp(line, "{\"bench\":\"dist\"", 15) == 0) j = cJSON_Parse(line);
    int st = pclose(p);
    if (!j || st != 0) {
        cJSON_Delete(j);
        return cli_error(EXIT_RUNTIME, CMD, "the 2-rank side failed (exit %d): %s", st, cmd);
    }
    const char *keys[] = {"tokens_per_s", "step_ms",  "allreduce_ms",   "allreduce_share", "grad_bytes",
                          "sent_bytes",   "skew_ms", "alltoall_ms", "alltoall_share", "alltoall_bytes"};
    double *dst[] = {&s->tps,        &s->step_ms, &s->allreduce_ms, &s->share,     &s->grad_bytes,
                     &s->sent_bytes, &s->skew_ms, &s->a2a_ms,       &s->a2a_share, &s->a2a_bytes};
    for (int i = 0; i < 10; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        *dst[i] = cJSON_IsNumber(v) ? v->valuedouble : 0;
    }
    cJSON_Delete(j);
    return 0;
}

/* The 1-rank side: this process, accumulating 2 micro-batches. */
static int run_single(const dist_opts *o, side *s) {
    joule_bench_dist_result r;
    int rc = joule_bench_dist(&o->run, 2, o->mode, &r);
    if (rc) return cli_fail(CMD, rc);
    s->tps = r.tokens_per_step / r.step_s;
    s->step_ms = r.step_s * 1e3;
    return 0;
}

static int compare(const dist_opts *o) {
    cli_setup_threads(o->threads_given ? o->threads : 2);
    const int T = joule_get_threads();
    const char *core = getenv("OPENBLAS_CORETYPE");
    printf("joule bench dist: BLAS kernels %s (OPENBLAS_CORETYPE=%s), model layers %d, d_model %d, heads %d, d_ff "
           "%d, ctx %d; %d tokens/step = 2 micro-batches of batch %d; medians of %d steps per side and round\n",
           joule_blas_corename(), core ? core : "unset", o->run.layers, o->run.d_model, o->run.heads, o->run.d_ff,
           o->run.ctx, 2 * o->run.batch * o->run.ctx, o->run.batch, o->run.steps);
    double ratio[1000], one[1000], two[1000], share[1000], ar[1000];
    side a = {0}, b = {0};
    for (int i = 0; i < o->rounds; i++) {
        CLI_CHECK(run_single(o, &a));
        CLI_CHECK(run_child(o, o->mode, &b));
        one[i] = a.tps, two[i] = b.tps, ratio[i] = b.tps / a.tps, share[i] = b.share, ar[i] = b.allreduce_ms;
        printf("round %d: 1 rank x %d threads %.0f tokens/s (step %.0f ms); 2 ranks x 1 thread %.0f tokens/s (step "
               "%.0f ms, all-reduce %.1f ms = %.1f%%, waiting for the slower rank %.1f ms); ratio %.3f\n",
               i + 1, T, a.tps, a.step_ms, b.tps, b.step_ms, b.allreduce_ms, 100 * b.share, b.skew_ms, ratio[i]);
        fflush(stdout);
    }
    double mr = joule_median(ratio, o->rounds), ms = joule_median(share, o->rounds);
    printf("median of %d rounds: 1 rank x %d threads %.0f tokens/s, 2 ranks x 1 thread %.0f tokens/s, ratio %.3f "
           "(goal >= 0.9: %s); all-reduce %.1f ms = %.1f%% of the step (goal <= 10%%: %s)\n",
           o->rounds, T, joule_median(one, o->rounds), joule_median(two, o->rounds), mr, mr >= 0.9 ? "met" : "NOT met",
           joule_median(ar, o->rounds), 100 * ms, ms <= 0.1 ? "met" : "NOT met");
    printf("bytes per step: %.1f MB of gradients all-reduced per rank (ring all-reduce: %.1f MB sent per rank); "
           "all-to-all: none (data parallel; see --expert-parallel)\n",
           b.grad_bytes / 1e6, b.sent_bytes / 1e6);
    if (o->json)
        printf("{\"bench\":\"dist_compare\",\"rounds\":%d,\"threads_1rank\":%d,\"tokens_per_s_1rank\":%.1f,"
               "\"tokens_per_s_2ranks\":%.1f,\"ratio\":%.4f,\"allreduce_ms\":%.3f,\"allreduce_share\":%.5f,"
               "\"grad_bytes\":%.0f,\"sent_bytes\":%.0f}\n",
               o->rounds, T, joule_median(one, o->rounds), joule_median(two, o->rounds), mr,
               joule_median(ar, o->rounds), ms, b.grad_bytes, b.sent_bytes);
    return 0;
}

/* --expert-parallel, run plainly: the MoE model at 2 ranks x 1 thread, data parallel
 * against expert parallel, alternating for --rounds rounds. */
static int compare_ep(const dist_opts *o) {
    const char *core = getenv("OPENBLAS_CORETYPE");
    printf("joule bench dist --expert-parallel: BLAS kernels %s (OPENBLAS_CORETYPE=%s), MoE model layers %d, d_model "
           "%d, heads %d, 8 experts of d_ff %d (top-2, every other layer, capacity 1.25), ctx %d; 2 ranks x 1 thread x "
           "batch %d; medians of %d steps per side and round\n",
           joule_blas_corename(), core ? core : "unset", o->run.layers, o->run.d_model, o->run.heads, o->run.d_ff / 2,
           o->run.ctx, o->run.batch, o->run.steps);
    double ratio[1000], dp[1000], ep[1000], share[1000], a2a[1000];
    side a = {0}, b = {0};
    for (int i = 0; i < o->rounds; i++) {
        CLI_CHECK(run_child(o, JOULE_BENCH_DIST_MOE, &a));
        CLI_CHECK(run_child(o, JOULE_BENCH_DIST_EP, &b));
        dp[i] = a.tps, ep[i] = b.tps, ratio[i] = b.tps / a.tps, share[i] = b.a2a_share, a2a[i] = b.a2a_ms;
        printf("round %d: data parallel %.0f tokens/s (step %.0f ms, all-reduce %.1f ms = %.1f%%); expert parallel "
               "%.0f tokens/s (step %.0f ms, all-to-alls %.1f ms = %.1f%%, all-reduce %.1f ms = %.1f%%); ratio %.3f\n",
               i + 1, a.tps, a.step_ms, a.allreduce_ms, 100 * a.share, b.tps, b.step_ms, b.a2a_ms, 100 * b.a2a_share,
               b.allreduce_ms, 100 * b.share, ratio[i]);
        fflush(stdout);
    }
    const int n = o->rounds;
    printf("median of %d rounds: data parallel %.0f tokens/s, expert parallel %.0f tokens/s, ratio %.3f; all-to-alls "
           "%.1f ms = %.1f%% of the expert-parallel step\n",
           n, joule_median(dp, n), joule_median(ep, n), joule_median(ratio, n), joule_median(a2a, n),
           100 * joule_median(share, n));
    printf("bytes per step and rank: all-to-alls %.2f MB sent; all-reduce %.1f MB of gradients (data parallel %.1f MB: "
           "expert parallel leaves the experts out)\n",
           b.a2a_bytes / 1e6, b.grad_bytes / 1e6, a.grad_bytes / 1e6);
    if (o->json)
        printf("{\"bench\":\"dist_ep_compare\",\"rounds\":%d,\"tokens_per_s_dp\":%.1f,\"tokens_per_s_ep\":%.1f,"
               "\"ratio\":%.4f,\"alltoall_ms\":%.3f,\"alltoall_share\":%.5f,\"alltoall_bytes\":%.0f,"
               "\"grad_bytes_ep\":%.0f,\"grad_bytes_dp\":%.0f}\n",
               n, joule_median(dp, n), joule_median(ep, n), joule_median(ratio, n), joule_median(a2a, n),
               joule_median(share, n), b.a2a_bytes, b.grad_bytes, a.grad_bytes);
    return 0;
}

int cmd_bench_dist(int argc, char **argv) {
    dist_opts o = {.run = {.layers = 6, .d_model = 384, .heads = 6, .d_ff = 1024, .ctx = 256, .batch = 8,
                           .steps = 5, .warmup = 1},
                   .rounds = 3};
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (joule_dist_size() > 1) return run_ranks(&o);
    return o.mode == JOULE_BENCH_DIST_EP ? compare_ep(&o) : compare(&o);
}
