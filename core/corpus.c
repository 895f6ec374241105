/* Corpus preparation: read text sources (user files and folders, or the GCIDE +
 * fortunes preset), cut them into documents, assign each document to train or
 * validation, and stream them into token files (core/data.c) plus meta.json.
 *
 * Data flow:  source reader -> [line splitter] -> document sink -> token writers.
 * Nothing holds more than one read chunk of text at a time, except the line
 * splitter, which holds back the current line only while it may still turn out to
 * be a separator or blank line. */
#define _GNU_SOURCE
#include "joule/data.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>


enum {
    CHUNK_BYTES = 1 << 20,          /* read size */
    BINARY_SNIFF_BYTES = 8192,      /* a NUL in this prefix marks a file as binary */
    PROGRESS_STEP = 1 << 20,
    TRAIN = 0,
    VAL = 1
};

static const char *const SPLIT_NAMES[2] = {"train", "val"};
static const char *const PRESET_HINT =
    "install it with `apt-get install dict-gcide fortunes` (or `make setup`)";

/* ======================================================================
 * Preparation state
 * ==================================================================== */

typedef struct {
    const joule_prepare_opts *o;
    joule_prepare_report rep;
    joule_token_writer *w[2];
    uint64_t n_docs;      /* documents begun so far = ordinal of the next one */
    int open_side;        /* side of the document being written, or -1 */
    uint64_t done, total, reported;
    uint8_t *chunk;       /* CHUNK_BYTES read buffer */
    char *out_real;       /* realpath of the output folder, never read as input */
} prep;

static void progress_add(prep *p, uint64_t n) {
    p->done += n;
    if (!p->o->progress || p->done - p->reported < PROGRESS_STEP) return;
    p->reported = p->done;
    p->o->progress(p->o->ctx, p->done < p->total ? p->done : p->total, p->total);
}

static void progress_finish(prep *p) {
    if (p->o->progress) p->o->progress(p->o->ctx, p->total, p->total);
}

static void warnf(prep *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(prep *p, const char *fmt, ...) {
    if (!p->o->warn) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->o->warn(p->o->ctx, msg);
}

/* ======================================================================
 * Document sink: numbering, the seeded split, NUL removal
 * ==================================================================== */

static int side_of(uint64_t seed, uint64_t doc, double val_fraction) {
    double u = (double)(joule_mix64(seed, doc) >> 11) * 0x1.0p-53;
    return u < val_fraction ? VAL : TRAIN;
}

/* A document is begun lazily at its first byte, so empty documents never get an
 * ordinal and ids stay dense. */
static int sink_put_run(prep *p, const uint8_t *s, size_t n) {
    if (n == 0) return JOULE_OK;
    if (p->open_side < 0) {
        p->open_side = side_of(p->o->seed, p->n_docs, p->o->val_fraction);
        int rc = joule_token_writer_begin_doc(p->w[p->open_side], p->n_docs);
        if (rc) return rc;
        p->n_docs++;
    }
    return joule_token_writer_append(p->w[p->open_side], s, n);
}

/* NUL is the end-of-document token, so it is dropped from text. */
static int sink_bytes(prep *p, const uint8_t *s, size_t n) {
    while (n > 0) {
        const uint8_t *nul = memchr(s, 0, n);
        size_t run = nul ? (size_t)(nul - s) : n;
        int rc = sink_put_run(p, s, run);
        if (rc) return rc;
        if (!nul) break;
        s += run + 1;
        n -= run + 1;
    }
    return JOULE_OK;
}

static int sink_end_doc(prep *p) {
    if (p->open_side < 0) return JOULE_OK;
    int side = p->open_side;
    p->open_side = -1;
    return joule_token_writer_end_doc(p->w[side]);
}

/* The correction described in data.h: both splits non-empty whenever possible. */
static int sink_balance(prep *p) {
    uint64_t train = joule_token_writer_docs(p->w[TRAIN]), val = joule_token_writer_docs(p->w[VAL]);
    if (train == 0 && val >= 1) return joule_token_writer_move_last_doc(p->w[VAL], p->w[TRAIN]);
    if (val == 0 && train >= 2) return joule_token_writer_move_last_doc(p->w[TRAIN], p->w[VAL]);
    return JOULE_OK;
}

/* ======================================================================
 * Line splitter: documents separated by blank lines or by separator lines
 * ==================================================================== */

typedef struct {
    joule_split_mode mode;
    const char *sep;
    size_t sep_len;
    int line_may_split;  /* the current line may still be a separator/blank line */
    uint8_t *pend;       /* its bytes so far, held back until that is decided */
    size_t pend_len, pend_cap;
} splitter;

static void splitter_init(splitter *s, joule_split_mode mode, const char *sep) {
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->sep = sep ? sep : "";
    s->sep_len = strlen(s->sep);
    s->line_may_split = 1;
}

static void splitter_free(splitter *s) { free(s->pend); }

static int is_blank_byte(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

/* Could the held-back bytes still be the start of a splitting line? */
static int pend_may_split(const splitter *s) {
    if (s->mode == JOULE_SPLIT_BLANK_LINE) return s->pend_len == 0 || is_blank_byte(s->pend[s->pend_len - 1]);
    size_t n = s->pend_len;
    if (n <= s->sep_len) return memcmp(s->pend, s->sep, n) == 0;
    return n == s->sep_len + 1 && s->pend[n - 1] == '\r' && memcmp(s->pend, s->sep, s->sep_len) == 0;
}

/* Is the held-back line, now complete, a splitting line? */
static int pend_splits(const splitter *s) {
    if (s->mode == JOULE_SPLIT_BLANK_LINE) return 1; /* only blank bytes were held back */
    return s->pend_len == s->sep_len || (s->pend_len == s->sep_len + 1 && s->pend[s->sep_len] == '\r');
}

static int pend_push(splitter *s, uint8_t c) {
    if (s->pend_len == s->pend_cap) {
        size_t cap = s->pend_cap ? 2 * s->pend_cap : 256;
        uint8_t *q = realloc(s->pend, cap);
        if (!q) return joule_fail(JOULE_ERR_NOMEM, "out of memory splitting lines");
        s->pend = q;
        s->pend_cap = cap;
    }
    s->pend[s->pend_len++] = c;
    return JOULE_OK;
}

static int splitter_end_line(prep *p, splitter *s, int newline) {
    int rc;
    if (pend_splits(s)) {
        rc = sink_end_doc(p);
    } else {
        rc = sink_bytes(p, s->pend, s->pend_len);
        if (!rc && newline) rc = sink_bytes(p, (const uint8_t *)"\n", 1);
    }
    s->pend_len = 0;
    s->line_may_split = 1;
    return rc;
}

static int splitter_feed(prep *p, splitter *s, const uint8_t *d, size_t n) {
    if (s->mode == JOULE_SPLIT_FILE) return sink_bytes(p, d, n);
    size_t i = 0;
    int rc = JOULE_OK;
    while (!rc && i < n) {
        if (!s->line_may_split) {
            /* Fast path: an ordinary line goes straight through up to its newline. */
            const uint8_t *nl = memchr(d + i, '\n', n - i);
            size_t end = nl ? (size_t)(nl - d) + 1 : n;
            rc = sink_bytes(p, d + i, end - i);
            i = end;
            if (nl) s->line_may_split = 1;
            continue;
        }
        uint8_t c = d[i++];
        if (c == '\n') {
            rc = splitter_end_line(p, s, 1);
            continue;
        }
        rc = pend_push(s, c);
        if (!rc && !pend_may_split(s)) {
            rc = sink_bytes(p, s->pend, s->pend_len);
            s->pend_len = 0;
            s->line_may_split = 0;
        }
    }
    return rc;
}

/* End of a source file: a last line without newline is judged like any other, and a
 * document never continues into the next file. */
static int splitter_finish(prep *p, splitter *s) {
    int rc = JOULE_OK;
    if (s->pend_len > 0) rc = splitter_end_line(p, s, 0);
    s->pend_len = 0;
    s->line_may_split = 1;
    if (!rc) rc = sink_end_doc(p);
    return rc;
}

/* ======================================================================
 * Reading one text file
 * ==================================================================== */

static ssize_t read_full(int fd, uint8_t *buf, size_t cap) {
    size_t got = 0;
    while (got < cap) {
        ssize_t n = read(fd, buf + got, cap - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int feed_fd(prep *p, splitter *s, int fd, const char *path, ssize_t n) {
    int rc = JOULE_OK;
    while (!rc && n > 0) {
        p->rep.input_bytes += (uint64_t)n;
        rc = splitter_feed(p, s, p->chunk, (size_t)n);
        progress_add(p, (uint64_t)n);
        if (!rc) n = read_full(fd, p->chunk, CHUNK_BYTES);
    }
    if (!rc && n < 0) rc = joule_fail(JOULE_ERR_IO, "%s: read failed: %s", path, strerror(errno));
    if (!rc) rc = splitter_finish(p, s);
    return rc;
}

/* Read `path` through splitter `s`; a binary file is skipped with a warning. */
static int read_text_file(prep *p, splitter *s, const char *path, uint64_t size, int sniff) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    ssize_t n = read_full(fd, p->chunk, CHUNK_BYTES);
    int rc = JOULE_OK;
    if (n < 0) {
        rc = joule_fail(JOULE_ERR_IO, "%s: read failed: %s", path, strerror(errno));
    } else if (sniff && memchr(p->chunk, 0, (size_t)n < BINARY_SNIFF_BYTES ? (size_t)n : BINARY_SNIFF_BYTES)) {
        p->rep.skipped_binary++;
        warnf(p, "%s: skipped: looks binary (NUL byte in the first 8 KiB)", path);
        progress_add(p, size);
    } else {
        p->rep.n_files++;
        rc = feed_fd(p, s, fd, path, n);
    }
    close(fd);
    return rc;
}

/* ======================================================================
 * User inputs: files and folders
 * ==================================================================== */

typedef struct {
    char **path;
    uint64_t *size;
    size_t n, cap;
} file_list;

static void file_list_free(file_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->path[i]);
    free(l->path);
    free(l->size);
    memset(l, 0, sizeof *l);
}

static int file_list_add(file_list *l, const char *path, uint64_t size) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **pv = realloc(l->path, cap * sizeof *pv);
        if (pv) l->path = pv;
        uint64_t *sv = realloc(l->size, cap * sizeof *sv);
        if (sv) l->size = sv;
        if (!pv || !sv) return joule_fail(JOULE_ERR_NOMEM, "out of memory listing input files");
        l->cap = cap;
    }
    char *copy = strdup(path);
    if (!copy) return joule_fail(JOULE_ERR_NOMEM, "out of memory listing input files");
    l->path[l->n] = copy;
    l->size[l->n] = size;
    l->n++;
    return JOULE_OK;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Entry names of a folder, without "." and "..", sorted byte-wise for determinism. */
static int list_dir(const char *dir, char ***names_out, size_t *n_out) {
    *names_out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) return joule_fail(JOULE_ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = JOULE_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **q = realloc(names, cap * sizeof *q);
            if (!q) {
                rc = joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", dir);
                break;
            }
            names = q;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) rc = joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", dir);
        else n++;
    }
    closedir(d);
    if (rc) {
        for (size_t i = 0; i < n; i++) free(names[i]);
        free(names);
        return rc;
    }
    qsort(names, n, sizeof *names, cmp_names);
    *names_out = names;
    *n_out = n;
    return JOULE_OK;
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int is_out_dir(const prep *p, const char *dir) {
    char *real = realpath(dir, NULL);
    int same = real && p->out_real && strcmp(real, p->out_real) == 0;
    free(real);
    return same;
}

static int collect_dir(prep *p, file_list *l, const char *dir);

/* One entry found inside a folder. Symlinked files are followed; symlinked folders
 * are not, which rules out cycles. */
static int collect_entry(prep *p, file_list *l, const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return joule_fail(JOULE_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    int link = S_ISLNK(st.st_mode);
    if (link && stat(path, &st) != 0) {
        p->rep.skipped_other++;
        warnf(p, "%s: skipped: broken symbolic link", path);
        return JOULE_OK;
    }
    if (S_ISREG(st.st_mode)) return file_list_add(l, path, (uint64_t)st.st_size);
    if (S_ISDIR(st.st_mode) && !link) return collect_dir(p, l, path);
    p->rep.skipped_other++;
    warnf(p, "%s: skipped: %s", path, S_ISDIR(st.st_mode) ? "symbolic link to a folder" : "not a regular file");
    return JOULE_OK;
}

static int collect_dir(prep *p, file_list *l, const char *dir) {
    if (is_out_dir(p, dir)) {
        warnf(p, "%s: skipped: it is the output folder", dir);
        return JOULE_OK;
    }
    char **names;
    size_t n;
    int rc = list_dir(dir, &names, &n);
    for (size_t i = 0; !rc && i < n; i++) {
        if (names[i][0] == '.') {
            p->rep.skipped_hidden++;
            continue;
        }
        char *child;
        if (asprintf(&child, "%s/%s", dir, names[i]) < 0) {
            rc = joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        rc = collect_entry(p, l, child);
        free(child);
    }
    free_names(names, n);
    return rc;
}

/* A path named by the user: a missing one is an error, a hidden one is read. */
static int collect_input(prep *p, file_list *l, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return joule_fail(JOULE_ERR_IO, "%s: cannot read input: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return collect_dir(p, l, path);
    if (S_ISREG(st.st_mode)) return file_list_add(l, path, (uint64_t)st.st_size);
    return joule_fail(JOULE_ERR_ARG, "%s: input is neither a file nor a folder", path);
}

static int plan_inputs(prep *p, file_list *l) {
    int rc = JOULE_OK;
    for (int i = 0; !rc && i < p->o->n_inputs; i++) rc = collect_input(p, l, p->o->inputs[i]);
    for (size_t i = 0; !rc && i < l->n; i++) p->total += l->size[i];
    return rc;
}

static int read_inputs(prep *p, const file_list *l) {
    splitter s;
    splitter_init(&s, p->o->split, p->o->separator);
    int rc = JOULE_OK;
    for (size_t i = 0; !rc && i < l->n; i++) rc = read_text_file(p, &s, l->path[i], l->size[i], 1);
    splitter_free(&s);
    return rc;
}

/* ======================================================================
 * Preset: GCIDE dictionary (dictzip + index) and fortunes
 * ==================================================================== */

typedef struct {
    uint64_t off, len;
    int header;
} span;

typedef struct {
    char *dict, *index, *fortune_dir;
    span *spans;            /* one per dictionary article, sorted, non-overlapping */
    size_t n_spans;
    file_list fortunes;
} preset_plan;

static void preset_plan_free(preset_plan *pl) {
    free(pl->dict);
    free(pl->index);
    free(pl->fortune_dir);
    free(pl->spans);
    file_list_free(&pl->fortunes);
}

/* DICT index numbers: base64 digits, most significant first. */
static int dict_b64_decode(const char *s, size_t n, uint64_t *out) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t v = 0;
    if (n == 0 || n > 10) return -1; /* 10 digits = 60 bits, plenty */
    for (size_t i = 0; i < n; i++) {
        const char *q = memchr(alphabet, s[i], 64);
        if (!q || s[i] == 0) return -1;
        v = v * 64 + (uint64_t)(q - alphabet);
    }
    *out = v;
    return 0;
}

/* "headword\toffset\tlength" -> span. */
static int parse_index_line(char *line, span *sp) {
    char *t1 = strchr(line, '\t');
    if (!t1) return -1;
    char *t2 = strchr(t1 + 1, '\t');
    if (!t2) return -1;
    size_t len_n = strcspn(t2 + 1, "\r\n");
    sp->header = strncmp(line, "00-database-", 12) == 0;
    if (dict_b64_decode(t1 + 1, (size_t)(t2 - t1 - 1), &sp->off)) return -1;
    return dict_b64_decode(t2 + 1, len_n, &sp->len);
}

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

/* Many headwords share one article: keep one span per distinct offset, drop every
 * offset that a 00-database-* header uses (its aliases like 00-web1913-info too), and
 * clip each article at the next one so the text can be streamed in one pass. */
static void normalize_spans(preset_plan *pl) {
    qsort(pl->spans, pl->n_spans, sizeof(span), cmp_span);
    size_t out = 0;
    for (size_t i = 0; i < pl->n_spans;) {
        size_t j = i;
        span g = pl->spans[i];
        for (; j < pl->n_spans && pl->spans[j].off == g.off; j++) {
            g.header |= pl->spans[j].header;
            if (pl->spans[j].len > g.len) g.len = pl->spans[j].len;
        }
        if (!g.header) pl->spans[out++] = g;
        i = j;
    }
    pl->n_spans = out;
    for (size_t i = 0; i + 1 < out; i++) {
        uint64_t room = pl->spans[i + 1].off - pl->spans[i].off;
        if (pl->spans[i].len > room) pl->spans[i].len = room;
    }
}

static int load_dict_index(preset_plan *pl) {
    FILE *f = fopen(pl->index, "r");
    if (!f) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", pl->index, strerror(errno));
    char *line = NULL;
    size_t line_cap = 0, cap = 0;
    uint64_t line_no = 0;
    int rc = JOULE_OK;
    while (!rc && getline(&line, &line_cap, f) >= 0) {
        line_no++;
        if (pl->n_spans == cap) {
            cap = cap ? 2 * cap : 65536;
            span *q = realloc(pl->spans, cap * sizeof *q);
            if (!q) {
                rc = joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", pl->index);
                break;
            }
            pl->spans = q;
        }
        if (parse_index_line(line, &pl->spans[pl->n_spans]) != 0)
            rc = joule_fail(JOULE_ERR_FORMAT, "%s:%" PRIu64 ": not a `headword<TAB>offset<TAB>length` line",
                            pl->index, line_no);
        else pl->n_spans++;
    }
    if (!rc && ferror(f)) rc = joule_fail(JOULE_ERR_IO, "%s: read failed", pl->index);
    free(line);
    fclose(f);
    if (rc) return rc;
    normalize_spans(pl);
    if (pl->n_spans == 0) return joule_fail(JOULE_ERR_FORMAT, "%s: no dictionary articles listed", pl->index);
    return JOULE_OK;
}

static int require_file(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return joule_fail(JOULE_ERR_IO, "%s: missing preset file; %s", path, PRESET_HINT);
    return JOULE_OK;
}

/* Fortune files: plain files of the folder, except the strfile indexes (*.dat), the
 * UTF-8 alias links (*.u8) and the offensive ones (the off/ subfolder, not read). */
static int is_fortune_name(const char *name) {
    size_t n = strlen(name);
    if (name[0] == '.') return 0;
    if (n >= 4 && !strcmp(name + n - 4, ".dat")) return 0;
    if (n >= 3 && !strcmp(name + n - 3, ".u8")) return 0;
    return 1;
}

static int list_fortunes(preset_plan *pl) {
    struct stat st;
    if (stat(pl->fortune_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return joule_fail(JOULE_ERR_IO, "%s: missing preset folder; %s", pl->fortune_dir, PRESET_HINT);
    char **names;
    size_t n;
    int rc = list_dir(pl->fortune_dir, &names, &n);
    for (size_t i = 0; !rc && i < n; i++) {
        if (!is_fortune_name(names[i])) continue;
        char *path;
        if (asprintf(&path, "%s/%s", pl->fortune_dir, names[i]) < 0) {
            rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
            break;
        }
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode))
            rc = file_list_add(&pl->fortunes, path, (uint64_t)st.st_size);
        free(path);
    }
    free_names(names, n);
    if (!rc && pl->fortunes.n == 0)
        rc = joule_fail(JOULE_ERR_IO, "%s: no fortune files; %s", pl->fortune_dir, PRESET_HINT);
    return rc;
}

/* Check every preset file before any output is created. */
static int plan_preset(prep *p, preset_plan *pl) {
    const char *name = p->o->preset, *root = p->o->preset_root ? p->o->preset_root : "/usr/share";
    int want_dict = !strcmp(name, "default") || !strcmp(name, "gcide");
    int want_fortunes = !strcmp(name, "default") || !strcmp(name, "fortunes");
    if (!want_dict && !want_fortunes)
        return joule_fail(JOULE_ERR_ARG, "unknown preset '%s' (known: default, gcide, fortunes)", name);
    if (asprintf(&pl->dict, "%s/dictd/gcide.dict.dz", root) < 0 ||
        asprintf(&pl->index, "%s/dictd/gcide.index", root) < 0 ||
        asprintf(&pl->fortune_dir, "%s/games/fortunes", root) < 0)
        return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = JOULE_OK;
    if (want_dict) {
        rc = require_file(pl->dict);
        if (!rc) rc = require_file(pl->index);
        if (!rc) rc = load_dict_index(pl);
        if (!rc) p->total += pl->spans[pl->n_spans - 1].off + pl->spans[pl->n_spans - 1].len;
    }
    if (!rc && want_fortunes) {
        rc = list_fortunes(pl);
        for (size_t i = 0; !rc && i < pl->fortunes.n; i++) p->total += pl->fortunes.size[i];
    }
    return rc;
}

/* Pass the bytes of chunk [pos, pos+n) that lie inside articles to the sink, ending
 * each article's document when its last byte has passed. *k is the next article. */
static int route_dict_chunk(prep *p, const preset_plan *pl, size_t *k, uint64_t pos, const uint8_t *d, size_t n) {
    uint64_t chunk_end = pos + n;
    while (*k < pl->n_spans && pl->spans[*k].off < chunk_end) {
        const span *sp = &pl->spans[*k];
        uint64_t from = sp->off > pos ? sp->off : pos, to = sp->off + sp->len;
        if (to > chunk_end) return sink_bytes(p, d + (from - pos), (size_t)(chunk_end - from));
        int rc = sink_bytes(p, d + (from - pos), (size_t)(to - from));
        if (!rc) rc = sink_end_doc(p);
        if (rc) return rc;
        ++*k;
    }
    return JOULE_OK;
}

/* The dictzip file is gzip-compatible; it is decompressed as one stream, chunk by
 * chunk (a 40 MB text never sits in memory), and articles are cut out on the way. */
static int read_dict(prep *p, const preset_plan *pl) {
    gzFile gz = gzopen(pl->dict, "rb");
    if (!gz) return joule_fail(JOULE_ERR_IO, "%s: cannot open: %s", pl->dict, strerror(errno));
    gzbuffer(gz, 256 * 1024);
    size_t k = 0;
    uint64_t pos = 0;
    int rc = JOULE_OK;
    while (!rc && k < pl->n_spans) {
        int n = gzread(gz, p->chunk, CHUNK_BYTES);
        if (n < 0) {
            int err;
            const char *msg = gzerror(gz, &err);
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: corrupt compressed data: %s", pl->dict, msg);
            break;
        }
        if (n == 0) {
            rc = joule_fail(JOULE_ERR_FORMAT, "%s: ends at byte %" PRIu64 " but the index lists text beyond it",
                            pl->dict, pos);
            break;
        }
        rc = route_dict_chunk(p, pl, &k, pos, p->chunk, (size_t)n);
        pos += (uint64_t)n;
        p->rep.input_bytes += (uint64_t)n;
        progress_add(p, (uint64_t)n);
    }
    gzclose(gz);
    if (!rc) p->rep.n_files++;
    return rc;
}

static int read_preset(prep *p, preset_plan *pl) {
    int rc = JOULE_OK;
    if (pl->n_spans) rc = read_dict(p, pl);
    splitter s;
    splitter_init(&s, JOULE_SPLIT_SEPARATOR, "%");
    for (size_t i = 0; !rc && i < pl->fortunes.n; i++)
        rc = read_text_file(p, &s, pl->fortunes.path[i], pl->fortunes.size[i], 0);
    splitter_free(&s);
    return rc;
}

/* ======================================================================
 * meta.json
 * ==================================================================== */

/* u64 as an exact JSON number (cJSON numbers are doubles). */
static void add_u64(cJSON *obj, const char *key, uint64_t v) {
    char s[32];
    snprintf(s, sizeof s, "%" PRIu64, v);
    cJSON_AddItemToObject(obj, key, cJSON_CreateRaw(s));
}

static const char *split_mode_name(const joule_prepare_opts *o) {
    if (o->preset) return "preset";
    if (o->split == JOULE_SPLIT_BLANK_LINE) return "blank-line";
    if (o->split == JOULE_SPLIT_SEPARATOR) return "separator";
    return "file";
}

static cJSON *meta_sources(const prep *p, const preset_plan *pl) {
    cJSON *a = cJSON_CreateArray();
    if (!p->o->preset) {
        for (int i = 0; i < p->o->n_inputs; i++) cJSON_AddItemToArray(a, cJSON_CreateString(p->o->inputs[i]));
        return a;
    }
    if (pl->n_spans) {
        cJSON_AddItemToArray(a, cJSON_CreateString(pl->dict));
        cJSON_AddItemToArray(a, cJSON_CreateString(pl->index));
    }
    if (pl->fortunes.n) cJSON_AddItemToArray(a, cJSON_CreateString(pl->fortune_dir));
    return a;
}

static cJSON *meta_split(uint64_t docs, uint64_t tokens) {
    cJSON *s = cJSON_CreateObject();
    add_u64(s, "documents", docs);
    add_u64(s, "tokens", tokens);
    return s;
}

static int write_meta(const prep *p, const preset_plan *pl, const char *path) {
    const joule_prepare_opts *o = p->o;
    const joule_prepare_report *r = &p->rep;
    cJSON *m = cJSON_CreateObject();
    add_u64(m, "format_version", JOULE_DATA_FORMAT_VERSION);
    cJSON_AddStringToObject(m, "tokenizer", "bytes");
    add_u64(m, "vocab_size", 256);
    add_u64(m, "eod_token", JOULE_EOD_TOKEN);
    if (o->preset) cJSON_AddStringToObject(m, "preset", o->preset);
    else cJSON_AddNullToObject(m, "preset");
    cJSON_AddItemToObject(m, "sources", meta_sources(p, pl));
    add_u64(m, "n_files", r->n_files);
    cJSON_AddStringToObject(m, "split_mode", split_mode_name(o));
    if (!o->preset && o->split == JOULE_SPLIT_SEPARATOR) cJSON_AddStringToObject(m, "separator", o->separator);
    add_u64(m, "seed", o->seed);
    cJSON_AddNumberToObject(m, "val_fraction", o->val_fraction);
    add_u64(m, "documents", r->n_docs);
    cJSON_AddItemToObject(m, "train", meta_split(r->train_docs, r->train_tokens));
    cJSON_AddItemToObject(m, "val", meta_split(r->val_docs, r->val_tokens));
    cJSON *skipped = cJSON_CreateObject();
    add_u64(skipped, "hidden", r->skipped_hidden);
    add_u64(skipped, "binary", r->skipped_binary);
    add_u64(skipped, "other", r->skipped_other);
    cJSON_AddItemToObject(m, "skipped", skipped);
    cJSON_AddStringToObject(m, "created_by", "joule " JOULE_VERSION_STRING);
    char *text = cJSON_Print(m);
    cJSON_Delete(m);
    if (!text) return joule_fail(JOULE_ERR_NOMEM, "%s: out of memory", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* overwrite the terminator: the file ends with a newline */
    int rc = joule_write_file_atomic(path, text, len + 1);
    cJSON_free(text);
    return rc;
}

/* ======================================================================
 * Orchestration
 * ==================================================================== */

void joule_prepare_opts_init(joule_prepare_opts *o) {
    memset(o, 0, sizeof *o);
    o->val_fraction = 0.05;
    o->seed = 1;
    o->split = JOULE_SPLIT_FILE;
}

int joule_prepare_parse_split(joule_prepare_opts *o, const char *spec) {
    if (!strcmp(spec, "file")) {
        o->split = JOULE_SPLIT_FILE;
    } else if (!strcmp(spec, "blank-line")) {
        o->split = JOULE_SPLIT_BLANK_LINE;
    } else if (!strncmp(spec, "sep:", 4) && spec[4] && !strchr(spec + 4, '\n')) {
        o->split = JOULE_SPLIT_SEPARATOR;
        o->separator = spec + 4;
    } else {
        return joule_fail(JOULE_ERR_ARG, "bad split mode '%s' (expected file, blank-line or sep:LINE)", spec);
    }
    return JOULE_OK;
}

static int check_opts(const joule_prepare_opts *o) {
    if (!o->out_dir || !*o->out_dir) return joule_fail(JOULE_ERR_ARG, "prepare: no output folder given");
    int has_inputs = o->n_inputs > 0;
    if (has_inputs == (o->preset != NULL))
        return joule_fail(JOULE_ERR_ARG, "prepare: give either input paths or a preset, not %s",
                          has_inputs ? "both" : "neither");
    if (has_inputs && !o->inputs) return joule_fail(JOULE_ERR_ARG, "prepare: n_inputs > 0 but no input list");
    if (!(o->val_fraction > 0.0 && o->val_fraction < 1.0))
        return joule_fail(JOULE_ERR_ARG, "prepare: validation fraction %g is not in (0, 1)", o->val_fraction);
    if (o->split < JOULE_SPLIT_FILE || o->split > JOULE_SPLIT_SEPARATOR)
        return joule_fail(JOULE_ERR_ARG, "prepare: unknown split mode %d", (int)o->split);
    if (o->split == JOULE_SPLIT_SEPARATOR && (!o->separator || !*o->separator || strchr(o->separator, '\n')))
        return joule_fail(JOULE_ERR_ARG, "prepare: separator mode needs a non-empty one-line separator");
    return JOULE_OK;
}

/* mkdir -p */
static int make_dirs(const char *dir) {
    char *path = strdup(dir);
    if (!path) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
    int rc = JOULE_OK;
    for (char *q = path + 1;; q++) {
        if (*q != '/' && *q != '\0') continue;
        char saved = *q;
        *q = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            rc = joule_fail(JOULE_ERR_IO, "%s: cannot create folder: %s", path, strerror(errno));
            break;
        }
        *q = saved;
        if (saved == '\0') break;
    }
    free(path);
    struct stat st;
    if (!rc && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = joule_fail(JOULE_ERR_IO, "%s: output path is not a folder", dir);
    return rc;
}

static char *out_path(const char *dir, const char *name) {
    char *s;
    return asprintf(&s, "%s/%s", dir, name) < 0 ? NULL : s;
}

static int open_writers(prep *p) {
    for (int side = 0; side < 2; side++) {
        char name[16];
        snprintf(name, sizeof name, "%s.bin", SPLIT_NAMES[side]);
        char *path = out_path(p->o->out_dir, name);
        if (!path) return joule_fail(JOULE_ERR_NOMEM, "out of memory");
        int rc = joule_token_writer_open(&p->w[side], path);
        free(path);
        if (rc) return rc;
    }
    return JOULE_OK;
}

/* Counts go into the report before commit frees the writers. */
static int finish_outputs(prep *p, const preset_plan *pl) {
    int rc = sink_balance(p);
    if (rc) return rc;
    if (p->n_docs == 0) return joule_fail(JOULE_ERR_ARG, "prepare: the inputs contain no text");
    p->rep.n_docs = p->n_docs;
    p->rep.train_docs = joule_token_writer_docs(p->w[TRAIN]);
    p->rep.train_tokens = joule_token_writer_tokens(p->w[TRAIN]);
    p->rep.val_docs = joule_token_writer_docs(p->w[VAL]);
    p->rep.val_tokens = joule_token_writer_tokens(p->w[VAL]);
    for (int side = 0; !rc && side < 2; side++) {
        rc = joule_token_writer_commit(p->w[side]);
        p->w[side] = NULL;
    }
    char *meta = out_path(p->o->out_dir, "meta.json");
    if (!rc) rc = meta ? write_meta(p, pl, meta) : joule_fail(JOULE_ERR_NOMEM, "out of memory");
    free(meta);
    return rc;
}

int joule_data_prepare(const joule_prepare_opts *o, joule_prepare_report *report) {
    double t0 = joule_now();
    int rc = check_opts(o);
    if (rc) return rc;
    prep p = {.o = o, .open_side = -1};
    preset_plan pl = {0};
    file_list inputs = {0};
    rc = make_dirs(o->out_dir);
    if (!rc) {
        p.out_real = realpath(o->out_dir, NULL);
        p.chunk = malloc(CHUNK_BYTES);
        if (!p.chunk) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
    }
    /* Every input is found and checked before any output file is created. */
    if (!rc) rc = o->preset ? plan_preset(&p, &pl) : plan_inputs(&p, &inputs);
    if (!rc) {
        /* meta.json is written last and marks a complete folder: drop a previous one first,
         * so an interrupted re-prepare never looks complete. */
        char *meta = out_path(o->out_dir, "meta.json");
        if (!meta) rc = joule_fail(JOULE_ERR_NOMEM, "out of memory");
        else if (unlink(meta) != 0 && errno != ENOENT)
            rc = joule_fail(JOULE_ERR_IO, "%s: cannot remove: %s", meta, strerror(errno));
        free(meta);
    }
    if (!rc) rc = open_writers(&p);
    if (!rc) rc = o->preset ? read_preset(&p, &pl) : read_inputs(&p, &inputs);
    if (!rc) rc = finish_outputs(&p, &pl);
    if (!rc) progress_finish(&p);
    for (int side = 0; side < 2; side++) joule_token_writer_abort(p.w[side]);
    preset_plan_free(&pl);
    file_list_free(&inputs);
    free(p.chunk);
    free(p.out_real);
    p.rep.seconds = joule_now() - t0;
    if (report) *report = p.rep;
    return rc;
}
