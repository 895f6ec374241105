/* cli/cli.h — what every `joule` subcommand shares: number parsing, usage errors,
 * progress display, thread set-up. Only cli/ prints for humans. */
#ifndef JOULE_CLI_H
#define JOULE_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad input. */
#define EXIT_USAGE 2
#define EXIT_RUNTIME 1
/* `joule train` stopped by Ctrl-C (after saving): 128 + SIGINT, as shells report it. */
#define EXIT_INTERRUPTED 130

#ifndef JOULE_VERSION_STRING
#define JOULE_VERSION_STRING "0.1.0"
#endif

/* Prints "joule <cmd>: <message>" and a hint to run --help to stderr; returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "joule <cmd>: <message>" (printf-style, sanitised to one line) to stderr and
 * returns code. */
int cli_error(int code, const char *cmd, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Text read from a file, escaped for printing (joule_escape; "?" for NULL): one of 4
 * rotating buffers of 4 KiB, valid until 4 more calls. */
const char *cli_text(const char *s);
/* Prints "joule <cmd>: <joule_last_error()>" and returns joule_exit_code(status). */
int cli_fail(const char *cmd, int status);
/* For getopt_long's ':' (missing value) and '?' (unknown option) results, with optstring
 * starting with ':' and opterr = 0: prints one usage line naming the option, returns
 * EXIT_USAGE. */
int cli_bad_option(const char *cmd, int c, char **argv);
/* An input file must exist and be a readable regular file: otherwise prints
 * "joule <cmd>: <path>: <problem>" (plus `hint` when not NULL) and returns EXIT_USAGE
 * (a missing input is bad input, exit 2). Returns 0 when the file is usable. */
int cli_check_input(const char *cmd, const char *path, const char *hint);
/* An output file about to be written: it must not be a folder (or other non-file) and its
 * folder must be writable; checked before the work, so nothing is computed for nothing.
 * 0, or EXIT_USAGE after one line naming the path. */
int cli_check_output(const char *cmd, const char *path);
/* The folder that will hold `path` (a file or folder to create) is writable: 0, or
 * EXIT_USAGE after one line. */
int cli_check_writable_parent(const char *cmd, const char *path);
/* Creates the folders leading to file `path` (mkdir -p of its dirname). 0 or EXIT_RUNTIME
 * after printing the problem. */
int cli_make_parent_dirs(const char *cmd, const char *path);
/* Reads a whole file into a NUL-terminated malloc'd buffer (*len without the NUL). NULL
 * with errno set on failure. */
char *cli_read_file(const char *path, size_t *len);

/* Strict parsers: the whole string must parse and fit. Accept 1e9, 3.2e18 for doubles and
 * for u64 (when integral), and k/M/G/T suffixes for u64 (powers of 1000). */
bool cli_parse_int(const char *s, int lo, int hi, int *out);
/* An integer option in [lo, hi]: 0, or EXIT_USAGE after printing "NAME: 'ARG' is not an
 * integer in [lo, hi]". */
int cli_int_option(const char *cmd, const char *name, const char *arg, int lo, int hi, int *out);
bool cli_parse_u64(const char *s, uint64_t *out);
bool cli_parse_double(const char *s, double *out);
bool cli_parse_float(const char *s, float *out);

/* The same for other values: "NAME: 'ARG' is not a non-negative integer" (k/M/G/T
 * allowed), and "... is not a positive number" or, with positive false, "... is not a
 * non-negative number". */
int cli_u64_option(const char *cmd, const char *name, const char *arg, uint64_t *out);
int cli_number_option(const char *cmd, const char *name, const char *arg, bool positive, double *out);
/* A finite number in [lo, hi]: 0, or EXIT_USAGE after "NAME: 'ARG' is not a number in [lo, hi]". */
int cli_range_option(const char *cmd, const char *name, const char *arg, double lo, double hi, double *out);
/* In a command's option switch: returns the exit code of a failed *_option call. */
#define CLI_CHECK(call)                                                                                       \
    do {                                                                                                      \
        int bad_ = (call);                                                                                    \
        if (bad_) return bad_;                                                                                \
    } while (0)

/* Option parsing as every subcommand does it: cli_opt_start() rewinds getopt for the
 * command's own argv and silences it (':' and '?' come back for cli_bad_option); then
 * cli_getopt() is getopt_long, except that 'h' (-h, --help) prints `usage` to stdout and
 * comes back as CLI_HELP, upon which the command returns 0. */
#define CLI_HELP (-2)
struct option;
void cli_opt_start(void);
int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts, const char *usage);
/* The whole loop for a command whose options are handled by option(args, c, argv), which
 * returns 0 or an exit code: -1 after --help, the exit code of a bad option, EXIT_USAGE
 * after "CMD: unexpected argument 'ARG'" for a left-over argument, else 0. */
int cli_parse_options(int argc, char **argv, const char *cmd, const char *shortopts, const struct option *longopts,
                      const char *usage, int (*option)(void *args, int c, char **argv), void *args);

/* JSON output: numbers added to an object in the order listed, and the object printed on
 * one line to stdout, then freed. */
struct cJSON;
typedef struct {
    const char *key;
    double value;
} cli_json_number;
void cli_json_numbers(struct cJSON *o, const cli_json_number *f, size_t n);
#define CLI_JSON_NUMBERS(o, ...)                                                                              \
    cli_json_numbers((o), (const cli_json_number[]){__VA_ARGS__},                                             \
                     sizeof((const cli_json_number[]){__VA_ARGS__}) / sizeof(cli_json_number))
void cli_print_json(struct cJSON *o);

/* Applies --threads (0 = all cores; under mpirun, the cores divided among the node's ranks)
 * to OpenMP and BLAS. */
void cli_setup_threads(int threads);

/* Progress: a redrawn bar with rate and ETA on a terminal, plain lines every few seconds
 * otherwise. `unit` names what is counted ("tok", "MB", "step"). */
typedef struct {
    const char *label;
    const char *unit;
    double total;
    double t0, last_print;
    bool tty;
    int printed;
} cli_progress;

void cli_progress_start(cli_progress *p, const char *label, const char *unit, double total);
/* `extra` (may be NULL) is appended, e.g. "loss 1.234". */
void cli_progress_update(cli_progress *p, double done, const char *extra);
void cli_progress_finish(cli_progress *p, double done, const char *extra);

/* A job in phases, a bar each. cli_phase_begin: when `phase` is not the one shown
 * (compared by content), finishes that one's bar and starts one for `phase` under `label`;
 * true for a new phase. The caller then updates p->bar. cli_phase_end, after the job:
 * finishes the last bar (ok) or ends its line on a terminal (failed). */
typedef struct {
    cli_progress bar;
    const char *phase;
} cli_phases;
bool cli_phase_begin(cli_phases *p, const char *phase, const char *label, const char *unit, double total);
void cli_phase_end(cli_phases *p, bool ok);

/* Human formats into a caller buffer: 1.23M, 4.5e15, 1m02s. */
const char *cli_fmt_count(char *buf, size_t n, double v);
const char *cli_fmt_duration(char *buf, size_t n, double seconds);

/* Subcommands (argv[0] is the subcommand name). */
int cmd_data(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_quantize(int argc, char **argv); /* cli/cmd_quantize.c */
/* "PATH: a bf16 (quantised) checkpoint is for inference only; ...", exit 2 (training paths). */
struct joule_model;
int cli_quantised_refusal(const char *cmd, const char *path, const struct joule_model *m);
int cmd_generate(int argc, char **argv);
int cmd_serve(int argc, char **argv); /* cli/cmd_serve.c, cli/serve_*.c */
int cmd_info(int argc, char **argv);
int cmd_db(int argc, char **argv);
/* `joule bench ...` (cli/cmd_bench*.c; the measurements are bench/'s, joule/bench.h):
 * cmd_bench dispatches; moe and energy take the whole argv, db and retro argv + 1. */
int cmd_bench(int argc, char **argv);
int cmd_bench_moe(int argc, char **argv);
int cmd_bench_energy(int argc, char **argv);
int cmd_bench_db(int argc, char **argv);
int cmd_bench_retro(int argc, char **argv);
int cmd_bench_serve(int argc, char **argv); /* argv + 1, as db and retro */

#endif
