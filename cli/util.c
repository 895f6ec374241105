/* Shared CLI helpers: parsing, errors, progress display, threads. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "joule/common.h"
#include "joule/dist.h"
#include "joule/ops.h"

/* Under mpirun a message names its rank ("rank 1: "), so the job's one line says which
 * process failed; a plain run prints nothing extra. */
static const char *rank_prefix(void) {
    static char buf[32];
    if (joule_dist_size() <= 1) return "";
    snprintf(buf, sizeof buf, "rank %d: ", joule_dist_rank());
    return buf;
}

/* "joule <cmd>: <message><tail>" on one line: the message may quote arguments and file
 * contents, so it is sanitised (joule_sanitize_line) before it reaches the terminal. */
static void print_error(const char *cmd, const char *tail, const char *fmt, va_list ap) {
    char raw[4096], safe[4096];
    vsnprintf(raw, sizeof raw, fmt, ap);
    fprintf(stderr, "joule%s%s: %s%s%s\n", *cmd ? " " : "", cmd, rank_prefix(),
            joule_sanitize_line(safe, sizeof safe, raw), tail);
}

const char *cli_text(const char *s) {
    static char ring[4][4096];
    static unsigned next;
    return s ? joule_escape(ring[next++ % 4], sizeof ring[0], s) : "?";
}

int cli_error(int code, const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_error(cmd, "", fmt, ap);
    va_end(ap);
    return code;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    char tail[128];
    snprintf(tail, sizeof tail, " (see 'joule%s%s --help')", *cmd ? " " : "", cmd);
    va_list ap;
    va_start(ap, fmt);
    print_error(cmd, tail, fmt, ap);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_bad_option(const char *cmd, int c, char **argv) {
    /* After getopt_long, optind points past the offending element for long options and
     * missing values; for an unknown short option inside a cluster it may not. */
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':') {
        if (optopt > 0 && optopt < 256 && arg[0] == '-' && arg[1] != '-')
            return cli_usage_error(cmd, "option -%c needs a value", optopt);
        return cli_usage_error(cmd, "option '%s' needs a value", arg);
    }
    if (optopt > 0 && optopt < 256 && !(arg[0] == '-' && arg[1] == '-'))
        return cli_usage_error(cmd, "unknown option -%c", optopt);
    if (optopt > 0) /* a long option that takes no value was given one */
        return cli_usage_error(cmd, "option '%s' takes no value", arg);
    return cli_usage_error(cmd, "unknown option '%s'", arg);
}

int cli_check_input(const char *cmd, const char *path, const char *hint) {
    struct stat st;
    const char *problem = NULL;
    if (stat(path, &st) != 0) problem = strerror(errno);
    else if (S_ISDIR(st.st_mode)) problem = "is a folder, not a file";
    else if (!S_ISREG(st.st_mode)) problem = "not a regular file";
    else if (access(path, R_OK) != 0) problem = strerror(errno);
    if (!problem) return 0;
    return cli_error(EXIT_USAGE, cmd, "%s: %s%s%s", path, problem, hint ? "; " : "", hint ? hint : "");
}

int cli_check_output(const char *cmd, const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return cli_error(EXIT_USAGE, cmd, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a folder; give a file name" : "not a regular file");
    return cli_check_writable_parent(cmd, path);
}

int cli_check_writable_parent(const char *cmd, const char *path) {
    char *copy = strdup(path);
    if (!copy) return cli_error(EXIT_RUNTIME, cmd, "out of memory");
    char *slash = strrchr(copy, '/');
    const char *dir = slash == copy ? "/" : slash ? (*slash = '\0', copy) : ".";
    int rc = access(dir, W_OK | X_OK) == 0 ? 0 : cli_error(EXIT_USAGE, cmd, "%s: cannot write in folder %s: %s", path, dir, strerror(errno));
    free(copy);
    return rc;
}

int cli_make_parent_dirs(const char *cmd, const char *path) {
    size_t n = strlen(path);
    char *dir = malloc(n + 1);
    if (!dir) {
        fprintf(stderr, "joule %s: out of memory\n", cmd);
        return EXIT_RUNTIME;
    }
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        free(dir);
        return 0;
    }
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        bool end = *p == '\0';
        if (*p == '/' || end) {
            char saved = *p;
            *p = '\0';
            struct stat st;
            if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
                cli_error(0, cmd, "cannot create folder %s: %s", dir, strerror(errno));
                free(dir);
                return EXIT_RUNTIME;
            }
            if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
                cli_error(0, cmd, "%s exists and is not a folder", dir);
                free(dir);
                return EXIT_RUNTIME;
            }
            *p = saved;
        }
        if (end) break;
    }
    free(dir);
    return 0;
}

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                errno = ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                int e = errno ? errno : EIO;
                free(buf);
                buf = NULL;
                errno = e;
            }
            break;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

int cli_fail(const char *cmd, int status) {
    fprintf(stderr, "joule%s%s: %s%s\n", *cmd ? " " : "", cmd, rank_prefix(), joule_last_error());
    return joule_exit_code(status);
}

bool cli_parse_double(const char *s, double *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, float *out) {
    double v;
    /* a double past FLT_MAX has no float: converting it is undefined */
    if (!cli_parse_double(s, &v) || fabs(v) > FLT_MAX) return false;
    *out = (float)v;
    return true;
}

bool cli_parse_int(const char *s, int lo, int hi, int *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

int cli_int_option(const char *cmd, const char *name, const char *arg, int lo, int hi, int *out) {
    if (!cli_parse_int(arg, lo, hi, out))
        return cli_usage_error(cmd, "%s: '%s' is not an integer in [%d, %d]", name, arg, lo, hi);
    return 0;
}

int cli_u64_option(const char *cmd, const char *name, const char *arg, uint64_t *out) {
    if (!cli_parse_u64(arg, out)) return cli_usage_error(cmd, "%s: '%s' is not a non-negative integer", name, arg);
    return 0;
}

int cli_number_option(const char *cmd, const char *name, const char *arg, bool positive, double *out) {
    if (!cli_parse_double(arg, out) || (positive ? !(*out > 0) : *out < 0))
        return cli_usage_error(cmd, "%s: '%s' is not a %s number", name, arg, positive ? "positive" : "non-negative");
    return 0;
}

int cli_range_option(const char *cmd, const char *name, const char *arg, double lo, double hi, double *out) {
    if (!cli_parse_double(arg, out) || !(*out >= lo && *out <= hi))
        return cli_usage_error(cmd, "%s: '%s' is not a number in [%g, %g]", name, arg, lo, hi);
    return 0;
}

void cli_opt_start(void) {
    optind = 0; /* glibc: 0 starts over, for a new argv */
    opterr = 0;
}

int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts, const char *usage) {
    int c = getopt_long(argc, argv, shortopts, longopts, NULL);
    if (c != 'h') return c;
    fputs(usage, stdout);
    return CLI_HELP;
}

int cli_parse_options(int argc, char **argv, const char *cmd, const char *shortopts, const struct option *longopts,
                      const char *usage, int (*option)(void *args, int c, char **argv), void *args) {
    int c;
    cli_opt_start();
    while ((c = cli_getopt(argc, argv, shortopts, longopts, usage)) != -1) {
        if (c == CLI_HELP) return -1;
        CLI_CHECK(option(args, c, argv));
    }
    if (optind < argc) return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    return 0;
}

void cli_json_numbers(cJSON *o, const cli_json_number *f, size_t n) {
    for (size_t i = 0; i < n; i++) cJSON_AddNumberToObject(o, f[i].key, f[i].value);
}

void cli_print_json(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    if (s) puts(s);
    free(s);
    cJSON_Delete(o);
}

bool cli_parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-') return false;
    size_t n = strlen(s);
    double mult = 1;
    char last = s[n - 1];
    if (last == 'k' || last == 'K') mult = 1e3;
    else if (last == 'M') mult = 1e6;
    else if (last == 'G') mult = 1e9;
    else if (last == 'T') mult = 1e12;
    char buf[64];
    if (n >= sizeof buf) return false;
    memcpy(buf, s, n + 1);
    if (mult != 1) buf[n - 1] = '\0';
    char *end;
    errno = 0;
    unsigned long long iv = strtoull(buf, &end, 10);
    if (!errno && !*end && mult == 1) {
        *out = iv;
        return true;
    }
    double v;
    if (!cli_parse_double(buf, &v)) return false;
    v *= mult;
    if (v < 0 || v >= 1.8e19 || v != floor(v)) return false;
    *out = (uint64_t)v;
    return true;
}

void cli_setup_threads(int threads) {
    if (threads <= 0) {
        /* ranks sharing a node share its cores */
        long n = sysconf(_SC_NPROCESSORS_ONLN) / joule_dist_local_size();
        threads = n > 0 ? (int)n : 1;
    }
    joule_set_threads(threads);
}

const char *cli_fmt_count(char *buf, size_t n, double v) {
    const char *suf[] = {"", "k", "M", "G", "T", "P", "E"};
    int i = 0;
    while (fabs(v) >= 1000 && i < 6) {
        v /= 1000;
        i++;
    }
    snprintf(buf, n, i ? "%.3g%s" : "%.4g%s", v, suf[i]);
    return buf;
}

const char *cli_fmt_duration(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 10) snprintf(buf, n, "%.1fs", s);
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    return buf;
}

void cli_progress_start(cli_progress *p, const char *label, const char *unit, double total) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->t0 = p->last_print = joule_now();
    p->tty = isatty(fileno(stderr));
}

static void progress_print(cli_progress *p, double done, const char *extra, bool final) {
    double now = joule_now(), el = now - p->t0;
    double rate = el > 0 ? done / el : 0;
    double eta = rate > 0 && p->total > done ? (p->total - done) / rate : 0;
    char r[32], d[32], t[32], e[32], tt[32];
    cli_fmt_count(r, sizeof r, rate);
    cli_fmt_count(d, sizeof d, done);
    cli_fmt_count(t, sizeof t, p->total);
    cli_fmt_duration(e, sizeof e, final ? el : eta);
    cli_fmt_duration(tt, sizeof tt, el);
    double frac = p->total > 0 ? done / p->total : 0;
    if (frac > 1) frac = 1;
    if (p->tty) {
        char bar[31];
        int filled = (int)(frac * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < filled ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r%s [%s] %3.0f%% %s/%s %s  %s %s/s  %s %s%s%s\033[K", p->label, bar, 100 * frac, d, t,
                p->unit, r, p->unit, final ? "in" : "ETA", e, extra ? "  " : "", extra ? extra : "");
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s: %3.0f%% %s/%s %s, %s %s/s, %s %s, elapsed %s%s%s\n", p->label, 100 * frac, d, t,
                p->unit, r, p->unit, final ? "done in" : "ETA", e, tt, extra ? ", " : "", extra ? extra : "");
    }
    fflush(stderr);
    p->last_print = now;
    p->printed++;
}

void cli_progress_update(cli_progress *p, double done, const char *extra) {
    double now = joule_now();
    double every = p->tty ? 0.2 : 10.0;
    /* A terminal gets the bar at once; a log gets its first line after `every` seconds. */
    if ((p->printed || !p->tty) && now - p->last_print < every) return;
    progress_print(p, done, extra, false);
}

void cli_progress_finish(cli_progress *p, double done, const char *extra) { progress_print(p, done, extra, true); }

bool cli_phase_begin(cli_phases *p, const char *phase, const char *label, const char *unit, double total) {
    if (p->phase && strcmp(p->phase, phase) == 0) return false;
    if (p->phase) cli_progress_finish(&p->bar, p->bar.total, NULL);
    cli_progress_start(&p->bar, label, unit, total);
    p->phase = phase;
    return true;
}

void cli_phase_end(cli_phases *p, bool ok) {
    if (!p->phase) return;
    if (ok) cli_progress_finish(&p->bar, p->bar.total, NULL);
    else if (p->bar.tty) fputc('\n', stderr);
}

