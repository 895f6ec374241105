/* joule — the command-line front end: global options and subcommand dispatch. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acct_cli.h"
#include "cli.h"
#include "joule/dist.h"
#include "joule/moe.h"
#include "joule/ops.h"
#include "joule/retro.h"

static const char USAGE[] =
    "Usage: joule [--version] [--threads N] <command> [options]\n"
    "\n"
    "Train and cost small byte-level Transformers on the CPU.\n"
    "\n"
    "Commands:\n"
    "  data prepare    turn text files or a preset corpus into train/val token files\n"
    "  data info       show what a prepared corpus folder holds\n"
    "  train           train a model under a step, token or FLOP budget\n"
    "  eval            validation loss and bits-per-byte of a checkpoint\n"
    "  generate        sample text from a checkpoint\n"
    "  serve           OpenAI-compatible HTTP server with continuous batching\n"
    "  quantize        a bf16 or int8 copy of a checkpoint for inference\n"
    "  info            a checkpoint's config, parameter counts, FLOPs and training state\n"
    "  db              RETRO retrieval databases: build, info, query, verify, recall, neighbours\n"
    "  bench train     training-step throughput and MFU against the measured sgemm peak\n"
    "  bench decode    KV-cache decoding speed\n"
    "  bench moe       MoE over dense tokens/s at the same active FLOPs (train, decode)\n"
    "  bench db        retrieval database build and search speed, recall, overhead over FAISS\n"
    "  bench retro     RETRO train step and generation with retrieval on vs off\n"
    "  bench dist      data-parallel training (MPI): 1 rank x 2 threads vs 2 ranks x 1 thread\n"
    "  bench energy    energy per query of checkpoints (latency, tokens/s, FLOPs, J, gCO2e)\n"
    "  bench serve     open-loop load at request rates: TTFT, TPOT, goodput, J/request\n"
    "  account         parameters, FLOPs, memory, time, energy and CO2 of a config or preset\n"
    "  fit             scaling-law fits (L(C) and Chinchilla L(N, D)) of training runs\n"
    "  compare         dense vs MoE vs RETRO at equal training compute: fits, multipliers, energy\n"
    "  help [COMMAND]  this list, or the options of COMMAND\n"
    "\n"
    "Global options (before the command):\n"
    "  -h, --help      show this help and exit\n"
    "  -V, --version   print the version and exit\n"
    "  --threads N     threads for the compute commands (train, eval, generate, bench, compare);\n"
    "                  the same as giving --threads N to the command (default 0 = all cores)\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure, 2 bad usage or bad input (bad option or value,\n"
    "missing or invalid input file), 130 stopped by Ctrl-C after saving (train, db build,\n"
    "compare).\n"
    "Run 'joule <command> --help' for the options of a command.\n";

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    bool computes; /* accepts --threads */
} command;

int cmd_compare(int argc, char **argv); /* cli/cmd_compare.c */

static const command COMMANDS[] = {
    {"data", cmd_data, false},       {"train", cmd_train, true}, {"eval", cmd_eval, true},
    {"generate", cmd_generate, true}, {"info", cmd_info, false},  {"bench", cmd_bench, true},
    {"account", cmd_account, false}, {"fit", cmd_fit, false},
    {"db", cmd_db, true},
    {"compare", cmd_compare, true},
    {"serve", cmd_serve, true},
    {"quantize", cmd_quantize, false},
};

static const command *find_command(const char *name) {
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (strcmp(COMMANDS[i].name, name) == 0) return &COMMANDS[i];
    return NULL;
}

static int unknown_command(const char *name) {
    return cli_error(EXIT_USAGE, "", "unknown command '%s' (run 'joule --help' for the list)", name);
}

/* `joule help [COMMAND [SUB]]`: the command list, or the command's own --help. */
static int cmd_help(int argc, char **argv) {
    if (argc < 2) {
        fputs(USAGE, stdout);
        return 0;
    }
    const command *c = find_command(argv[1]);
    if (!c) return unknown_command(argv[1]);
    char *args[4] = {argv[1], NULL, NULL, NULL};
    int n = 1;
    if (argc >= 3) args[n++] = argv[2];
    args[n++] = "--help";
    return c->fn(n, args);
}

enum { OPT_THREADS = 256 };

/* joule links OpenBLAS's OpenMP build (pinned by rpath) so BLAS and our loops share one
 * pool. If a pthread build is loaded anyway (LD_LIBRARY_PATH, LD_PRELOAD), two pools
 * compete: measured here, training ran 5.8x slower with both spinning and 4.5x with
 * OpenMP waiting passively. Say so, and re-run once with passive waiting (libgomp reads
 * OMP_WAIT_POLICY only at start-up), the less bad of the two. */
static void avoid_two_spinning_pools(char **argv) {
    if (strcmp(joule_blas_threading(), "pthreads") != 0) return;
    if (getenv("OMP_WAIT_POLICY")) {
        fprintf(stderr, "joule: warning: the pthread build of OpenBLAS is loaded (LD_LIBRARY_PATH?); joule is "
                        "built for the OpenMP build and runs several times slower with two thread pools\n");
        return;
    }
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on, slower rather than not at all */
}

static int run(int argc, char **argv) {
    static const struct option LONG[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"threads", required_argument, NULL, OPT_THREADS},
        {NULL, 0, NULL, 0},
    };
    const char *threads = NULL;
    int c;
    opterr = 0;
    optind = 0;
    /* '+': stop at the command name; the rest belongs to the command. */
    while ((c = getopt_long(argc, argv, "+:hV", LONG, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(USAGE, stdout);
            return 0;
        case 'V':
            printf("joule %s\n", JOULE_VERSION_STRING);
            return 0;
        case OPT_THREADS: {
            int n;
            int bad = cli_int_option("", "--threads", optarg, 0, 4096, &n);
            if (bad) return bad;
            threads = optarg;
            break;
        }
        default:
            return cli_bad_option("", c, argv);
        }
    }
    if (optind >= argc) {
        fputs(USAGE, stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        if (threads) return cli_usage_error("help", "--threads is not used by 'help'");
        return cmd_help(argc - optind, argv + optind);
    }
    const command *cmd = find_command(name);
    if (!cmd) return unknown_command(name);
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    char **with_threads = NULL;
    if (threads) {
        if (!cmd->computes) {
            return cli_error(EXIT_USAGE, "", "--threads applies to train, eval, generate and bench, not '%s'", name);
        }
        /* Pass it on as the command's own option, after its other arguments (subcommand
         * names such as 'bench train' stay first) but before a "--" that ends options. */
        with_threads = malloc((size_t)(sub_argc + 3) * sizeof *with_threads);
        if (!with_threads) {
            fprintf(stderr, "joule: out of memory\n");
            return EXIT_RUNTIME;
        }
        int at = 1;
        while (at < sub_argc && strcmp(sub_argv[at], "--") != 0) at++;
        int k = 0;
        for (int i = 0; i < at; i++) with_threads[k++] = sub_argv[i];
        with_threads[k++] = "--threads";
        with_threads[k++] = (char *)threads;
        for (int i = at; i < sub_argc; i++) with_threads[k++] = sub_argv[i];
        with_threads[k] = NULL;
        sub_argv = with_threads;
        sub_argc += 2;
    }
    optind = 0;
    int rc = cmd->fn(sub_argc, sub_argv);
    free(with_threads);
    fflush(stdout);
    if (ferror(stdout)) {
        fprintf(stderr, "joule %s: error writing to standard output\n", name);
        if (rc == 0) rc = EXIT_RUNTIME;
    }
    return rc;
}

/* Under mpirun every rank runs the same command. A rank whose command fails has already
 * said why; it then ends the whole job (MPI_Abort) so no other rank waits for it forever. */
int main(int argc, char **argv) {
    joule_moe_register();
    avoid_two_spinning_pools(argv);
    joule_retro_register();
    if (joule_dist_init(&argc, &argv) != JOULE_OK) {
        fprintf(stderr, "joule: %s\n", joule_last_error());
        return EXIT_RUNTIME;
    }
    int rc = run(argc, argv);
    if (rc != 0 && joule_dist_size() > 1) joule_dist_abort(rc, NULL);
    joule_dist_finalize();
    return rc;
}
